"""Device mesh and the one rule list that maps logical axis names to mesh axes.

Parameters and activations are annotated with *logical* names (``embed``,
``mlp``, ``heads`` ...).  Only this file knows how those names land on the
physical ``(data, fsdp, tensor)`` mesh, so a new parallelism layout is a change
to ``LOGICAL_RULES`` (or a config override), never to model code.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Ordered (logical name, mesh axes) pairs.  Parameters are split over `fsdp` on
# their embedding dimension (ZeRO-3 style) and over `tensor` on the dimension
# Megatron would split; activations are split over the batch axes.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("act_embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("lora_rank", None),
    ("norm", None),
)

_ACTIVE_RULES: list[Sequence[tuple[str, str | tuple[str, ...] | None]]] = [LOGICAL_RULES]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one size may be -1 to take the rest."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: at most one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh "
                             f"{dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} are available; set the sizes so their product matches "
                         "(or use -1 for one axis)")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


@contextlib.contextmanager
def logical_rules(rules: Iterable[tuple[str, str | tuple[str, ...] | None]] | None):
    """Temporarily replaces the rule list (a config's mesh.rules; None or empty = LOGICAL_RULES).
    Lists from a JSON round trip (a saved config.json) become the tuples the lookups want."""
    rules = rules or LOGICAL_RULES
    _ACTIVE_RULES.append(tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.pop()


def logical_to_spec(names: Sequence[str | None] | None) -> PartitionSpec:
    """Maps logical names to a PartitionSpec; a mesh axis is used at most once."""
    if names is None:
        return PartitionSpec()
    rules = dict(_ACTIVE_RULES[-1])
    used: set[str] = set()
    out = []
    for name in names:
        axes = rules.get(name) if name is not None else None
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        out.append(axes_t[0] if len(axes_t) == 1 else (axes_t or None))
    return PartitionSpec(*out)


def _fits(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide a dimension (replicating it instead)."""
    fixed = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fixed.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in axes_t)
        fixed.append(axes if dim % size == 0 else None)
    return PartitionSpec(*fixed)


def named_sharding(mesh: Mesh, names: Sequence[str | None] | None,
                   shape: Sequence[int] | None = None) -> NamedSharding:
    spec = logical_to_spec(names)
    if shape is not None:
        spec = _fits(shape, spec, mesh)
    return NamedSharding(mesh, spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh context."""
    mesh = _current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, x.shape))


def _current_mesh() -> Mesh | None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every variable of an NNX state from its logical names.

    Variables carry their logical axis names as `out_sharding` metadata, created
    with `eager_sharding=False` so that Flax keeps them as names (resolved here,
    through LOGICAL_RULES) instead of needing a mesh at construction.
    """
    def one(var):
        names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
        return named_sharding(mesh, names, var.get_value().shape)
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places a model's variables on the mesh according to their logical names."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh)
    # `shardings` has a NamedSharding where `state` has a whole Variable, so it leads the map.
    placed = jax.tree.map(lambda s, v: v.replace(value=jax.device_put(v.get_value(), s)), shardings, state,
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    nnx.update(model, placed)
    return model


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch-major array: first axis over the batch mesh axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def global_batch(local: dict | np.ndarray, mesh: Mesh):
    """Forms global arrays from each process's own slice of the batch."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), np.asarray(x)),
        local)
