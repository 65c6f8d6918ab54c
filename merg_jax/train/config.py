"""Runtime config blocks shared by every system's config file, and start-up validation.

A config file (configs/<system>.py) calls `base_config()` and fills in the
system's model, data and stages; `validate` runs before any device work so a
wrong value fails in the first second with the field to change.
"""
from __future__ import annotations

import ml_collections

from merg_jax.train import distributed, optim


def stage(name: str, *, trainable, steps: int = 0, epochs: float = 0.0, loss_weights: dict | None = None,
          data: dict | None = None, learning_rate: float = 0.0, **extra) -> ml_collections.ConfigDict:
    """One stage: what trains (regexes over parameter paths), how long, with which losses and data."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.trainable = tuple(trainable)
    c.steps = steps  # > 0 wins over epochs
    c.epochs = epochs
    c.loss_weights = ml_collections.ConfigDict(loss_weights or {})
    c.data = ml_collections.ConfigDict(data or {})  # overrides of config.data for this stage's view
    c.learning_rate = learning_rate  # 0 = optimizer.learning_rate
    c.update(extra)
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.system = ""
    c.preset = ""
    c.seed = 0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.mesh.rules = ()  # () = merg_jax.core.sharding.LOGICAL_RULES; else ((logical, mesh axes), ...)
    c.optimizer = optim.default_config()
    c.stages = ml_collections.ConfigDict()
    c.stage_order = ()
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=2, keep_best=1, best_by_eval=False,
                                                  async_save=True))
    # inject_nan_at: fault injection for tests (the loss of that stage step becomes NaN); 0 = off
    c.log = ml_collections.ConfigDict(dict(every_steps=10, eval_every=0, eval_batches=0, peak_flops=0.0,
                                           inject_nan_at=0))
    c.distributed = distributed.defaults()
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    def bad(msg: str):
        raise ValueError(f"config: {msg}")

    if not c.system:
        bad("system is empty; use a config file from configs/ (e.g. --config=configs/meria.py:smoke)")
    if not c.stage_order:
        bad("stage_order is empty; list the stages to run, e.g. ('pdr', 'mcoe', 'response')")
    for name in c.stage_order:
        if name not in c.stages:
            bad(f"stage_order names {name!r} but stages has only {sorted(c.stages)}")
        s = c.stages[name]
        if not s.trainable:
            bad(f"stages.{name}.trainable is empty; give regexes over parameter paths")
        if not (s.steps and s.steps > 0) and not (s.epochs and s.epochs > 0):
            bad(f"stages.{name}: set steps or epochs to a positive number")
    for axis in ("data", "fsdp", "tensor"):
        v = c.mesh[axis]
        if not isinstance(v, int) or (v < 1 and v != -1):
            bad(f"mesh.{axis}={v!r} must be a positive int or -1 (fill the remaining devices)")
    for block in ("model", "mcoe_model", "response_model"):
        m = c.get(block)
        if m is not None and m.get("path", "") is None:
            hint = m.get("path_hint", "the model's HF directory or .gguf file")
            bad(f"{block}.path is not set; this preset needs local weights: "
                f"--config.{block}.path=/path/to/{hint}")
    o = c.optimizer
    if o.learning_rate <= 0:
        bad(f"optimizer.learning_rate={o.learning_rate} must be positive")
    if not isinstance(o.grad_accum, int) or o.grad_accum < 1:
        bad(f"optimizer.grad_accum={o.grad_accum!r} must be an int >= 1")
    if o.grad_accum > 1 and c.data.global_batch_size % o.grad_accum:
        bad(f"data.global_batch_size={c.data.global_batch_size} is not divisible by optimizer.grad_accum="
            f"{o.grad_accum}")
    if o.schedule not in ("cosine", "linear", "constant"):
        bad(f"optimizer.schedule={o.schedule!r}; use cosine, linear or constant")
    if c.checkpoint.keep < 1:
        bad("checkpoint.keep must be >= 1")


def select_preset(presets: dict, preset: str, default: str):
    """The preset's builder, or a ValueError listing the known ones."""
    name = preset or default
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(presets))} "
                         "(use --config=configs/<system>.py:<preset>)")
    return name, presets[name]
