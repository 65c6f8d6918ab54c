"""The main job: MERIA at smoke scale on the synthetic corpus with the real SmolLM2 backbone.

    python launch/demo.py [--workdir=runs/meria-smoke] [--max_examples=32]

Generates the synthetic corpus and extracts its features when absent, trains the
three stages (PDR, M-CoE LLM, Response LLM), evaluates on the test split, exports
the Response LLM as an HF directory, and prints a results table and where every
output went.  Re-running resumes / reuses what is done.  The old SmolLM2 chat demo
is launch/chat_demo.py.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", os.path.join(REPO, "runs", "meria-smoke"), "Training workdir.")
flags.DEFINE_integer("max_examples", 32, "Test examples to evaluate (0: the whole split).")
flags.DEFINE_bool("bertscore", True, "Compute BERTScore (local all-MiniLM-L6-v2).")
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    logging.getLogger().setLevel(logging.INFO)
    os.chdir(REPO)  # the smoke preset's data paths are relative to the repository
    import importlib.util

    from merg_jax.systems.jobs import evaluate_workdir, make_trainer
    spec = importlib.util.spec_from_file_location("meria_config", os.path.join(REPO, "configs", "meria.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("smoke")

    t0 = time.perf_counter()
    summary = make_trainer(config, FLAGS.workdir).train()
    t_train = time.perf_counter() - t0
    eval_dir = os.path.join(FLAGS.workdir, "eval_test")
    metrics = evaluate_workdir(FLAGS.workdir, split="test", output_dir=eval_dir, max_examples=FLAGS.max_examples,
                       bertscore=FLAGS.bertscore)
    t_eval = time.perf_counter() - t0 - t_train

    sys.path.insert(0, os.path.join(REPO, "launch"))
    from export_hf import export, load_for_export
    export_dir = os.path.join(FLAGS.workdir, "export", "response_llm")
    model, tok = load_for_export(FLAGS.workdir, which="response")
    export(model, tok, export_dir)

    print(open(os.path.join(eval_dir, "metrics.md")).read())
    print(json.dumps({k: v for k, v in summary.items() if k != "stages"}, default=str))
    print(f"train {t_train:.0f} s, evaluation {t_eval:.0f} s")
    print(f"workdir (checkpoints, TensorBoard): {FLAGS.workdir}")
    print(f"evaluation (predictions, metrics, submission, plots): {eval_dir}")
    print(f"Response LLM as an HF directory: {export_dir}")
    return 0


if __name__ == "__main__":
    app.run(main)
