"""The two jobs a user runs on a system: train a config into a workdir, evaluate a workdir.

`launch/train.py`, `launch/evaluate.py` and `launch/demo.py` are flags around these.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from merg_jax.evaluation import run as evaluation_run
from merg_jax.systems import get_system
from merg_jax.systems.workdir import load_workdir
from merg_jax.train.trainer import Trainer


def make_trainer(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The runtime's Trainer for `config.system` (config errors raise ValueError here)."""
    return Trainer(config, workdir, get_system(config.system)(config))


def evaluate_workdir(workdir: str, *, step: int | None = None, config_overrides: dict | None = None,
                     **kw) -> dict[str, Any]:
    """Loads the workdir's newest good checkpoint (or `step`) and scores it; `config_overrides`
    ({dotted path: value}) change how it is evaluated (see workdir.check_eval_overrides); `kw` as
    `merg_jax.evaluation.run.evaluate` (split, output_dir, max_examples, ...)."""
    llm, tokenizer, info = load_workdir(workdir, which="response", step=step, config_overrides=config_overrides)
    return evaluation_run.evaluate(llm, tokenizer, info, **kw)
