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
is only the output directory, so scripts can capture it.
"""
from __future__ import annotations

import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

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

log = logging.getLogger("export_hf")

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


class ExportError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def parse_size(text: str) -> int:
    """'2GB' -> 2e9 bytes (decimal units as HF; KiB/MiB/GiB binary); a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ExportError(f"--max_shard_size={text!r}: use a size like 2GB, 500MB, 4GiB or a byte count")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ExportError(f"--max_shard_size={text!r} must be positive")
    return size


def load_for_export(path: str, *, which: str = "response", step: int | None = None, best: bool = False):
    """(model, tokenizer or None).  Missing tokenizer files only warn: weights still export."""
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.systems.workdir import is_workdir, load_workdir

    if is_workdir(path):
        model, _, info = load_workdir(path, which=which, step=step, best=best, with_tokenizer=False)
        tok_source = info["tokenizer_path"]
    else:
        if step is not None or best:
            raise ExportError(f"--step/--best need a training workdir; {path} is not one")
        model, _ = load_pretrained(path, with_tokenizer=False)
        tok_source = os.path.abspath(os.path.expanduser(path))
    try:
        tokenizer = load_tokenizer(tok_source)
    except Exception as err:  # noqa: BLE001 - a checkpoint without tokenizer files is still exportable
        log.warning("no tokenizer found for %s (%s); exporting weights and config only", path, err)
        tokenizer = None
    return model, tokenizer


def default_base_name(path: str, which: str = "response") -> str:
    """What adapter_config.json records as the base: a workdir's base weights, else `path` itself."""
    from merg_jax.systems.workdir import base_path, is_workdir, read_config

    path = os.path.abspath(os.path.expanduser(path))
    if is_workdir(path):
        import ml_collections
        return base_path(ml_collections.ConfigDict(read_config(path)), which)
    return path


def export(model, tokenizer, output_dir: str, *, adapter_only: bool = False, dtype: str = "float32",
           max_shard_bytes: int = 2 * 10 ** 9, base_model_name_or_path: str = "") -> str:
    """Writes the merged HF directory or the PEFT adapter; returns the output directory."""
    from merg_jax.convert import lora
    from merg_jax.convert.hf import save_hf

    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    if adapter_only:
        if not lora.has_lora(model):
            raise ExportError("--adapter_only: the model has no LoRA adapters (a plain HF directory or "
                              "GGUF file carries none); export without --adapter_only instead")
        lora.save_peft(model, output_dir, base_model_name_or_path=base_model_name_or_path, dtype=dtype)
    else:
        save_hf(model, output_dir, tokenizer=tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return output_dir


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
