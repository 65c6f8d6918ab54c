"""Writes a synthetic AvaMERG-format corpus (JSON splits + wav + mp4) for tests and demos.

Usage:
  python launch/make_synthetic.py --output_dir=DIR --num_dialogues=N --seed=S \
      [--conflict_rate=R] [--text_leak=P] [--workers=N] [--no_test_coe] [--verbosity=1]

The console shows a progress bar and warnings; the log goes to DIR/logs/make_synthetic.log.
"""
from __future__ import annotations

import os

from absl import app, flags

from input_pipeline.synthetic.corpus import generate_corpus
from merg_jax.core import console

flags.DEFINE_string("output_dir", None, "Where the corpus goes.", required=True)
flags.DEFINE_integer("num_dialogues", 200, "Dialogues to render.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_float("conflict_rate", 0.0, "Fraction of utterances whose audio or video shows another emotion or noise.")
flags.DEFINE_float("text_leak", 0.0, "Fraction of history utterances that name the emotion in their text.")
flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1), "Render processes.")
flags.DEFINE_bool("no_test_coe", False, "Omit chain_of_empathy from test.json, as in the real AvaMERG release.")
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    log_file = console.setup(os.path.join(FLAGS.output_dir, "logs"), FLAGS.verbosity, "make_synthetic")
    meta = generate_corpus(FLAGS.output_dir, FLAGS.num_dialogues, seed=FLAGS.seed, conflict_rate=FLAGS.conflict_rate,
                           text_leak=FLAGS.text_leak, workers=FLAGS.workers,
                           test_chain_of_empathy=not FLAGS.no_test_coe)
    print(f"wrote {meta['num_utterances']} utterances for {meta['num_dialogues']} dialogues to "
          f"{FLAGS.output_dir}; log: {log_file}")
    return 0


if __name__ == "__main__":
    app.run(main)
