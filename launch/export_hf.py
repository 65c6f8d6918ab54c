"""CLI: export a model as a Hugging Face directory (LoRA merged in) or as a PEFT adapter.

    python launch/export_hf.py --model=PATH --output_dir=DIR \
        [--adapter_only] [--dtype=float32|bfloat16] [--max_shard_size=2GB] \
        [--which=response] [--step=N | --best]

PATH is anything `merg_jax.systems.workdir.load_model` understands: an HF directory, a
.gguf file, or a training workdir (its newest good checkpoint, or --step /
--best; --which picks the LLM of a system with several, e.g. MERIA's "mcoe" or
"response"; the adapter's base_model_name_or_path defaults to the base weights
the run was trained on, and the tokenizer is the one it trained with).  Without
--adapter_only the output is a merged HF directory (config.json, safetensors
shard(s) with an index when sharded, tokenizer files, generation_config.json)
that `AutoModelForCausalLM.from_pretrained` loads; with it, a PEFT LoRA adapter
(adapter_config.json + adapter_model.safetensors).  Logs go to stderr; stdout
is only the output directory, so scripts can capture it.  The engine is
merg_jax/systems/export.py.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from merg_jax.systems.export import ExportError, default_base_name, export, load_for_export, parse_size

flags.DEFINE_string("model", None, "HF model directory, .gguf file or training workdir to export.", required=True)
flags.DEFINE_string("output_dir", None, "Directory to write.", required=True)
flags.DEFINE_bool("adapter_only", False, "Write only the LoRA adapter in PEFT format.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the written tensors.")
flags.DEFINE_string("max_shard_size", "2GB", "Largest safetensors shard, e.g. 2GB, 500MB, 4GiB or bytes.")
flags.DEFINE_string("base_model_name_or_path", "", "Recorded in adapter_config.json (--adapter_only); "
                    "default: --model, or a training workdir's base weights.")
flags.DEFINE_string("which", "response", "Training workdir only: which LLM of the system (e.g. mcoe, response).")
flags.DEFINE_integer("step", None, "Training workdir only: checkpoint step (default: the newest good one).")
flags.DEFINE_bool("best", False, "Training workdir only: export best/ (kept with checkpoint.best_by_eval).")


def main(argv) -> int:
    del argv
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    f = flags.FLAGS
    try:
        max_shard = parse_size(f.max_shard_size)
        if not os.path.exists(os.path.expanduser(f.model)):
            raise ExportError(f"--model={f.model}: no such file or directory")
        model, tokenizer = load_for_export(f.model, which=f.which, step=f.step, best=f.best)
        out = export(model, tokenizer, f.output_dir, adapter_only=f.adapter_only, dtype=f.dtype,
                     max_shard_bytes=max_shard,
                     base_model_name_or_path=f.base_model_name_or_path or default_base_name(f.model, f.which))
    except (ExportError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"export_hf: error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    app.run(main)
