"""AdamW with warmup + decay, clipping, weight-decay masks and per-pattern learning rates.

Built from optax primitives (clip -> adam moments -> decoupled decay -> lr ->
per-parameter multiplier) rather than `optax.adamw` so that one chain carries
both the decay mask and learning-rate groups without `multi_transform`'s
duplicated states.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import optax


def schedule(opt: ml_collections.ConfigDict, total_steps: int, lr: float) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to lr·end_factor, or constant."""
    warmup = opt.warmup_steps if opt.warmup_steps >= 0 else int(opt.warmup_ratio * total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = lr * opt.end_lr_factor
    if opt.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=opt.end_lr_factor)
    elif opt.schedule == "linear":
        after = optax.linear_schedule(lr, end, decay_steps)
    elif opt.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optimizer.schedule={opt.schedule!r}; use cosine, linear or constant")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _tree_of(params: dict, fn) -> dict:
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fn("/".join(str(getattr(k, "key", k)) for k in path), x), params)


def decay_mask(params: dict, exclude: Sequence[str]) -> dict:
    """Decay matrices only; norms, biases and anything matching `exclude` are left alone."""
    rx = [re.compile(p) for p in exclude]
    return _tree_of(params, lambda p, x: x.ndim >= 2 and not any(r.fullmatch(p) for r in rx))


def lr_multipliers(params: dict, groups: Sequence[Sequence[Any]]) -> dict:
    """Per-parameter multiplier: the first (pattern, multiplier) group whose pattern matches."""
    rx = [(re.compile(p), float(m)) for p, m in groups]

    def one(p: str, x) -> float:
        return next((m for r, m in rx if r.fullmatch(p)), 1.0)
    return _tree_of(params, one)


def _scale_by_tree(mults: dict) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m if m != 1.0 else u, updates, mults), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt: ml_collections.ConfigDict, params: dict, total_steps: int,
                   lr: float | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The stage's optimizer over `params` (pure dict of the trainable set) and its schedule."""
    if opt.name != "adamw":
        raise ValueError(f"optimizer.name={opt.name!r}; only 'adamw' is implemented")
    sched = schedule(opt, total_steps, opt.learning_rate if lr is None else lr)
    chain = []
    if opt.clip_norm and opt.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.clip_norm))
    chain.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
    if opt.weight_decay:
        chain.append(optax.add_decayed_weights(opt.weight_decay,
                                               mask=decay_mask(params, opt.weight_decay_exclude)))
    chain.append(optax.scale_by_learning_rate(sched))
    if opt.lr_groups:
        chain.append(_scale_by_tree(lr_multipliers(params, opt.lr_groups)))
    return optax.chain(*chain), sched


def init_state(tx: optax.GradientTransformation, params: Any, mesh: jax.sharding.Mesh) -> Any:
    """`tx.init(params)` placed as the jitted step returns it: moments follow their
    parameters' shardings, scalars (step counts) are replicated on `mesh`.  Left on one
    device, the counts would make the step's second call compile again."""
    from jax.sharding import NamedSharding, PartitionSpec
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
                        else jax.device_put(x, rep), jax.jit(tx.init)(params))
