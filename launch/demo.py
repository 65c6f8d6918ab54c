"""The main job: MERIA at smoke scale on the synthetic corpus with the real SmolLM2 backbone.

    python launch/demo.py [--workdir=runs/meria-smoke] [--max_examples=32]

Generates the synthetic corpus and extracts its features when absent, trains the
three stages (PDR, M-CoE LLM, Response LLM), evaluates on the test split, exports
the Response LLM as an HF directory, and prints a results table and where every
output went.  Re-running resumes / reuses what is done.  The old SmolLM2 chat demo
is launch/chat_demo.py.
"""
from __future__ import annotations

import importlib.util
import os
import time

from absl import app, flags

from merg_jax.core import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("workdir", os.path.join(REPO, "runs", "meria-smoke"), "Training workdir.")
flags.DEFINE_integer("max_examples", 32, "Test examples to evaluate (0: the whole split).")
flags.DEFINE_bool("bertscore", True, "Compute BERTScore (local all-MiniLM-L6-v2).")
flags.DEFINE_integer("log_every_steps", 50, "Training: a plain progress line every N steps where stderr is "
                     "not a terminal (a terminal gets live bars); the log file gets them too.")
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    workdir = os.path.abspath(FLAGS.workdir)  # before the chdir below
    log_file = console.setup(os.path.join(workdir, "logs"), FLAGS.verbosity, "demo")
    print(f"MERIA smoke demo: 3 training stages, evaluation, HF export; log: {log_file}", flush=True)
    os.chdir(REPO)  # the smoke preset's data paths are relative to the repository
    from merg_jax.systems.export import export, load_for_export
    from merg_jax.systems.jobs import evaluate_workdir, make_trainer
    spec = importlib.util.spec_from_file_location("meria_config", os.path.join(REPO, "configs", "meria.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("smoke")
    config.log.every_steps = FLAGS.log_every_steps

    t0 = time.perf_counter()
    print(f"training into {workdir}", flush=True)
    summary = make_trainer(config, workdir).train()
    t_train = time.perf_counter() - t0
    eval_dir = os.path.join(workdir, "eval_test")
    print(f"evaluating the test split into {eval_dir}", flush=True)
    evaluate_workdir(workdir, split="test", output_dir=eval_dir, max_examples=FLAGS.max_examples,
                     bertscore=FLAGS.bertscore)
    t_eval = time.perf_counter() - t0 - t_train

    export_dir = os.path.join(workdir, "export", "response_llm")
    print(f"exporting the Response LLM to {export_dir}", flush=True)
    model, tok = load_for_export(workdir, which="response")
    export(model, tok, export_dir)

    with open(os.path.join(eval_dir, "metrics.md"), encoding="utf-8") as f:
        print(f.read().rstrip())
    print(f"training {summary.get('status')} at step {summary.get('step')}: {t_train:.0f} s, "
          f"evaluation {t_eval:.0f} s")
    print(f"workdir (checkpoints, TensorBoard): {workdir}")
    print(f"evaluation (predictions, metrics, submission, plots): {eval_dir}")
    print(f"Response LLM as an HF directory: {export_dir}")
    print(f"log (library output, every progress line): {log_file}")
    return 0


if __name__ == "__main__":
    app.run(main)
