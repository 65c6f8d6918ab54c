"""Which parameters train: selection by regex over '/'-joined parameter paths.

A stage names its trainable set as patterns ("llm/.*lora_[ab]", "projectors/.*"),
never as code, so a config can move from "LoRA only" to "whole encoder" without
touching a system.  The train step works on plain nested dicts of arrays (what
`nnx.to_pure_dict` gives) because optax and Orbax handle those natively.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def path_str(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path)


def param_paths(model: nnx.Module) -> list[str]:
    return [path_str(p) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def matcher(patterns: Sequence[str]):
    """nnx filter: a Param whose path fully matches one of `patterns`."""
    compiled = [re.compile(p) for p in patterns]

    def keep(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(c.fullmatch(path_str(path)) for c in compiled)
    return keep


def check_patterns(model: nnx.Module, patterns: Sequence[str], what: str) -> None:
    """Fails at start when a pattern matches nothing: a typo would otherwise freeze everything."""
    paths = param_paths(model)
    for p in patterns:
        try:
            rx = re.compile(p)
        except re.error as e:
            raise ValueError(f"{what}: pattern {p!r} is not a valid regex ({e})") from None
        if not any(rx.fullmatch(q) for q in paths):
            sample = ", ".join(paths[:8])
            raise ValueError(f"{what}: pattern {p!r} matches no parameter; paths look like: {sample} ...")


def split(model: nnx.Module, patterns: Sequence[str]):
    """(graphdef, trainable State, rest State)."""
    return nnx.split(model, matcher(patterns), ...)


def to_params(state: nnx.State, dtype=None) -> dict:
    """Pure nested dict; floating leaves cast to `dtype` (fp32 master weights) when given."""
    d = nnx.to_pure_dict(state)
    if dtype is None:
        return d
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, d)


def merge(graphdef, template: nnx.State, params: dict, rest: nnx.State) -> nnx.Module:
    """Rebuilds the module with `params` in place of the trainable variables (traceable)."""
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state, rest)


def set_params(model: nnx.Module, patterns: Sequence[str], params: dict) -> None:
    """Writes (float32) params into the model's variables at `patterns`, each cast to the
    variable's own dtype (a bf16 frozen layer stays bf16)."""
    state = nnx.state(model, matcher(patterns))
    params = jax.tree.map(lambda p, t: p.astype(t.dtype), params, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def union(stages) -> list[str]:
    """Every pattern some stage trains: what a checkpoint stores."""
    return sorted({p for s in stages for p in s.trainable})


def flat(params: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat(v, key))
        else:
            out[key] = v
    return out
