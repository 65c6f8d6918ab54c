"""Generate text with a merg-jax model.

    python launch/generate.py --model=PATH --prompt=TEXT [--chat] [--max_new_tokens=N]
        [--temperature=T] [--top_p=P] [--top_k=K] [--seed=S] [--stop=STR ...]
        [--which=response] [--step=N | --best]

PATH: a local HF directory, a .gguf file, or a training workdir (the newest good
checkpoint, or --step / --best; --which picks the LLM of a system with several,
e.g. MERIA's "mcoe" or "response").  Greedy when the temperature is 0 (the default).  stdout carries only the generated
continuation; logs go to stderr.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

flags.DEFINE_string("model", None, "HF directory, .gguf file or training workdir.", required=True)
flags.DEFINE_string("prompt", None, "Prompt text.", required=True)
flags.DEFINE_bool("chat", False, "Wrap the prompt as one user message with the chat template.")
flags.DEFINE_integer("max_new_tokens", 128, "Maximum number of generated tokens.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("top_k", 0, "Top-k sampling; 0 disables it.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_multi_string("stop", [], "Stop string (repeatable).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_string("which", "response", "Training workdir only: which LLM of the system (e.g. mcoe, response).")
flags.DEFINE_integer("step", None, "Training workdir only: checkpoint step (default: the newest good one).")
flags.DEFINE_bool("best", False, "Training workdir only: load best/ (kept with checkpoint.best_by_eval).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from merg_jax.generation import Generator, SamplingConfig
    from merg_jax.systems.workdir import is_workdir, load_model, load_workdir

    sampling = SamplingConfig(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                              top_p=FLAGS.top_p, top_k=FLAGS.top_k, seed=FLAGS.seed,
                              stop_strings=tuple(FLAGS.stop))
    if FLAGS.step is not None or FLAGS.best:
        if not is_workdir(FLAGS.model):
            raise app.UsageError(f"--step/--best need a training workdir; {FLAGS.model} is not one")
        model, tokenizer, _ = load_workdir(FLAGS.model, which=FLAGS.which, step=FLAGS.step, best=FLAGS.best,
                                           overrides={"dtype": FLAGS.dtype})
    else:
        model, tokenizer = load_model(FLAGS.model, dtype=FLAGS.dtype, which=FLAGS.which)
    result = Generator(model, tokenizer).generate([FLAGS.prompt], sampling, chat=FLAGS.chat)
    logging.info("prefill %.2fs, %d new tokens in %.2fs", result.prefill_s, result.new_tokens, result.decode_s)
    sys.stdout.write(result.texts[0] + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app.run(main)
