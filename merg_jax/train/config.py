"""Start-up validation of a run config.

The defaults live in configs/common.py (configs are data and load no runtime);
`validate` runs before any device work so a wrong value fails in the first
second with the field to change.
"""
from __future__ import annotations

import ml_collections


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
        if (s.steps or 0) < 0 or (s.epochs or 0) < 0:
            bad(f"stages.{name}: steps={s.steps} epochs={s.epochs}; set steps or epochs to a positive "
                "number (both 0: a stage that trains nothing, e.g. an untrained baseline)")
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
