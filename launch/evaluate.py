"""Evaluate a trained run the way the seeds do.

    python launch/evaluate.py --config=configs/<system>.py[:preset] --workdir=W [--split=test]
        [--output_dir=O] [--max_examples=N] [--classifier_dir=DIR] [--nobertscore]

Writes predictions.jsonl, metrics.json, metrics.md, submission.json and PNG plots to
O (default W/eval_<split>) and prints the metrics table.  The model comes from W (its
own config.json); --config names the system and must agree with it, and its `--config.*`
overrides are applied on top of the saved config: the ones that change how the run is
evaluated (generation.*, data.*, mesh.*, the LLM blocks' dtype/remat), e.g.
`--config.generation.max_new_tokens=0` (no chain: the Response LLM alone); one that would
change the trained model (shapes, system, LoRA, stages) stops with an error.  Logs go to
W/logs/evaluate.log (--verbosity=1: INFO on the console too).
"""
from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from merg_jax.core import console

config_flags.DEFINE_config_file("config", None, "configs/<system>.py[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_string("output_dir", "", "Default: WORKDIR/eval_<split>.")
flags.DEFINE_integer("max_examples", 0, "Evaluate at most N examples (0: all).")
flags.DEFINE_integer("batch_size", 8, "Generation batch size.")
flags.DEFINE_integer("max_new_tokens", 96, "Generation length limit.")
flags.DEFINE_string("classifier_dir", "", "Local HF text-emotion classifier for emotion polarity.")
flags.DEFINE_bool("bertscore", True, "Compute BERTScore with the local all-MiniLM-L6-v2.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    from merg_jax.systems.jobs import evaluate_workdir
    from merg_jax.systems.workdir import check_eval_overrides, read_config

    console.setup(os.path.join(FLAGS.workdir, "logs"), FLAGS.verbosity, "evaluate")
    saved = read_config(FLAGS.workdir) or {}
    if FLAGS.config is not None and saved.get("system") and saved["system"] != FLAGS.config.system:
        print(f"error: {FLAGS.workdir} was trained as system {saved['system']!r}, but --config is "
              f"{FLAGS.config.system!r}", file=sys.stderr)
        return 2
    overrides = config_flags.get_override_values(FLAGS["config"]) if FLAGS.config is not None else {}
    try:
        check_eval_overrides(ml_collections.ConfigDict(saved), overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = evaluate_workdir(FLAGS.workdir, split=FLAGS.split, config_overrides=overrides,
                               output_dir=FLAGS.output_dir, max_examples=FLAGS.max_examples,
                               batch_size=FLAGS.batch_size, max_new_tokens=FLAGS.max_new_tokens,
                               bertscore=FLAGS.bertscore, classifier_dir=FLAGS.classifier_dir, step=FLAGS.step)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, f"eval_{FLAGS.split}")
    print(open(os.path.join(out, "metrics.md")).read())
    print(f"outputs: {out}")
    return 0 if metrics["n"] else 1


if __name__ == "__main__":
    app.run(main)
