"""Train a merg-jax system.

    python launch/train.py --config=configs/<system>.py[:preset] --workdir=DIR [--config.key=value ...]

Runs the config's stages in order and resumes automatically from DIR's newest good
checkpoint.  SIGTERM saves and exits; a NaN/Inf loss stops with exit status 3.
Multi-host: export MERG_COORDINATOR=host:port MERG_NUM_PROCESSES=N MERG_PROCESS_ID=i
on every process (TPU pods and SLURM are detected automatically).
The console shows a progress bar per stage and warnings; every log line goes to
DIR/logs/train.log (--verbosity=1 shows INFO on the console too).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from merg_jax.core import console

config_flags.DEFINE_config_file("config", None, "configs/<system>.py[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and outputs go here.", required=True)
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    from merg_jax.systems.jobs import make_trainer
    from merg_jax.train.trainer import TrainingDiverged

    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/meria.py:smoke")
    process = os.environ.get("MERG_PROCESS_ID", "0")  # one file per process of a multi-host run
    console.setup(os.path.join(FLAGS.workdir, "logs"), FLAGS.verbosity,
                  "train" if process == "0" else f"train.{process}")
    try:
        trainer = make_trainer(FLAGS.config, FLAGS.workdir)
        trainer.setup()
    except ValueError as e:  # config errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = trainer.train()
    except TrainingDiverged as e:
        logging.error("%s", e)
        return 3
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    app.run(main)
