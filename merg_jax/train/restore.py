"""A training workdir as a model: the system rebuilt from config.json, the trained params restored.

    llm, tokenizer, info = load_workdir("runs/text_baseline")        # newest good checkpoint
    llm, tokenizer, info = load_workdir(w, best=True)                 # best/<step> by eval loss
    llm, tokenizer, info = load_workdir(w, which="mcoe", step=1200)   # one LLM of a multi-LLM system

The frozen base comes from the paths in the saved config (checked against the
checksums the checkpoint recorded); the checkpoint's "params" item (every
parameter some stage trains, float32) is written over it.  LoRA adapters stay
unmerged, so the result exports as a PEFT adapter as well as merged weights.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "data", "meta")
BEST_ITEMS = ("params", "meta")
# Model-block fields a caller may override at load time (inference-only knobs).
MODEL_OVERRIDES = ("dtype", "param_dtype", "remat")


def read_config(workdir: str) -> dict | None:
    """The saved config dict, or None when `workdir` has no readable config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            conf = json.load(fh)
    except (OSError, ValueError):
        return None
    return conf if isinstance(conf, dict) else None


def is_workdir(path: str) -> bool:
    """A training workdir: a directory whose config.json is a run config (has `system`) and that
    has (or, for a run that never saved, at least declares stages for) a checkpoints/ directory."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        return False
    conf = read_config(path)
    if conf is None or "system" not in conf:
        return False
    return os.path.isdir(os.path.join(path, "checkpoints")) or "stage_order" in conf


def model_block(config: ml_collections.ConfigDict, which: str) -> ml_collections.ConfigDict:
    """The config block of the LLM `which` names: `<which>_model` when the system has one
    (MERIA: mcoe_model, response_model), else `model`."""
    block = config.get(f"{which}_model")
    if block is None:
        block = config.get("model")
    if block is None:
        raise ValueError(f"config has neither {which}_model nor model; cannot tell which base weights "
                         "the LLM was built on")
    return block


def base_path(config: ml_collections.ConfigDict, which: str = "response") -> str:
    from merg_jax.systems.base import model_path
    return model_path(model_block(config, which).path)


def tokenizer_path(config: ml_collections.ConfigDict, which: str = "response") -> str:
    """data.tokenizer_path when set (what training tokenized with), else the base weights."""
    data = config.get("data")
    tok = data.get("tokenizer_path") if data is not None else None
    if tok:
        return os.path.abspath(os.path.expanduser(tok))
    return base_path(config, which)


def _rules(rules) -> tuple:
    """config.mesh.rules after a JSON round trip (lists) -> the tuples `logical_rules` wants."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def _union(config: ml_collections.ConfigDict, meta: dict) -> list[str]:
    if meta.get("union"):
        return list(meta["union"])
    return sorted({p for name in config.stage_order for p in config.stages[name].trainable})


def _set_params(model: nnx.Module, patterns, params: dict) -> None:
    """Writes (float32) params into the model, each cast to the variable's own dtype
    (as `merg_jax.train.trainer._set_params`)."""
    import jax

    from merg_jax.train import partition
    state = nnx.state(model, partition.matcher(patterns))
    params = jax.tree.map(lambda p, t: p.astype(t.dtype), params, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


@contextlib.contextmanager
def _quiet_orbax(level: int = logging.WARNING):
    """Orbax logs every restore step at INFO through absl; a CLI's stderr should not drown in it."""
    absl_log = logging.getLogger("absl")
    old = absl_log.level
    absl_log.setLevel(max(old, level))
    try:
        yield
    finally:
        absl_log.setLevel(old)


def _manager(directory: str, items, best: bool = False):
    import orbax.checkpoint as ocp
    kw = {}
    if best:  # ranks best/ the way Checkpointer saved it (lowest eval_loss is best)
        kw = dict(best_fn=lambda m: m.get("eval_loss", float("inf")), best_mode="min",
                  keep_checkpoints_without_metrics=True)
    with _quiet_orbax(logging.ERROR):  # also its "directory is read only" notices
        opts = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False,
                                            **kw)
        return ocp.CheckpointManager(directory, options=opts, item_names=items)


def _best_order(mngr) -> list[int]:
    """Steps of a best/ manager: the best one first, then the others newest first."""
    steps = sorted(mngr.all_steps(), reverse=True)
    top = mngr.best_step()
    return ([top] if top is not None else []) + [s for s in steps if s != top]


def load_workdir(workdir: str, *, which: str = "response", mesh=None, step: int | None = None,
                 best: bool = False, with_tokenizer: bool = True, overrides: dict | None = None
                 ) -> tuple[Any, Any, dict]:
    """(CausalLM, tokenizer or None, info) of a training workdir.

    `step` picks a checkpoint (no fallback); without it the newest one that restores is used and
    a broken newest one falls back to the one before with a warning.  `best` reads best/ (kept
    when checkpoint.best_by_eval is on) instead of checkpoints/.  `overrides` may set the LLM
    block's dtype / param_dtype / remat (e.g. float32 activations for generation).
    """
    import orbax.checkpoint as ocp

    from merg_jax import sharding as shd
    from merg_jax.systems import get_system
    from merg_jax.train import checkpoint as ckpt_lib
    from merg_jax.train import partition

    workdir = os.path.abspath(os.path.expanduser(workdir))
    conf = read_config(workdir)
    if conf is None or "system" not in conf:
        raise ValueError(f"{workdir} is not a training workdir (no config.json with a 'system' key; "
                         "launch/train.py writes one)")
    config = ml_collections.ConfigDict(conf)
    sub = "best" if best else "checkpoints"
    ckpt_dir = os.path.join(workdir, sub)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"{ckpt_dir} does not exist: " + ("no best checkpoint was kept; train with "
                                             "--config.checkpoint.best_by_eval=True (and log.eval_every) or load "
                                             "without best" if best else
                                             f"train first: python launch/train.py --config=... --workdir={workdir}"))
    model_block(config, which)  # no LLM block at all: say so before building anything
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in MODEL_OVERRIDES:
            raise ValueError(f"{workdir} is a training workdir: only {', '.join(MODEL_OVERRIDES)} can be "
                             f"overridden at load time, not {k!r} (the rest is fixed by its config.json)")
        for b in ("model", "mcoe_model", "response_model", f"{which}_model"):
            if config.get(b) is not None and k in config[b]:
                config[b][k] = v

    mngr = _manager(ckpt_dir, BEST_ITEMS if best else ITEMS, best)
    try:
        available = _best_order(mngr) if best else sorted(mngr.all_steps(), reverse=True)
        if not available:
            raise FileNotFoundError(
                f"{ckpt_dir} holds no checkpoint: " + (
                    "no evaluation ever ran (set log.eval_every and checkpoint.best_by_eval)" if best else
                    f"train first: python launch/train.py --config=... --workdir={workdir}"))
        if step is not None:
            if int(step) not in available:
                raise ValueError(f"{ckpt_dir} has no step {step}; it has {sorted(available)}")
            candidates = [int(step)]
        else:
            candidates = available

        system = get_system(config.system)(config)
        mesh = mesh if mesh is not None else shd.make_mesh(1, -1, 1)
        rules = config.mesh.get("rules") if config.get("mesh") is not None else None
        with shd.logical_rules(_rules(rules) if rules else shd.LOGICAL_RULES):
            model = system.build(mesh)
        bases = system.bases()

        errors = []
        for s in candidates:
            try:
                with _quiet_orbax():
                    meta = dict(mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                if step is not None:
                    raise
                log.warning("checkpoint %d in %s has no readable meta (%s: %s); trying the one before",
                            s, ckpt_dir, type(e).__name__, e)
                errors.append((s, e))
                continue
            ckpt_lib.check_base(meta, bases)  # a different base is an error, never a fallback
            union = _union(config, meta)
            try:
                abstract = ckpt_lib.abstract_like(
                    partition.to_params(nnx.state(model, partition.matcher(union)), jnp.float32))
                with _quiet_orbax():
                    params = mngr.restore(s, args=ocp.args.Composite(
                        params=ocp.args.StandardRestore(abstract)))["params"]
            except Exception as e:  # noqa: BLE001
                if step is not None:
                    raise
                log.warning("checkpoint %d in %s could not be restored (%s: %s); trying the one before",
                            s, ckpt_dir, type(e).__name__, str(e)[:300])
                errors.append((s, e))
                continue
            _set_params(model, union, params)
            llm = system.llm(model, which)
            tok_path = tokenizer_path(config, which)
            tokenizer = None
            if with_tokenizer:
                from merg_jax.tokenizer import load_tokenizer
                tokenizer = load_tokenizer(tok_path)
            info = {"workdir": workdir, "checkpoint_dir": ckpt_dir, "step": s, "stage": meta.get("stage"),
                    "stage_index": meta.get("stage_index"), "system": config.system, "which": which,
                    "base_path": base_path(config, which), "tokenizer_path": tok_path, "meta": meta,
                    "config": config, "union": union, "model": model, "system_obj": system}
            log.info("loaded %s step %d (stage %s) of %s (system %s, LLM %r)", sub, s, meta.get("stage"),
                     workdir, config.system, which)
            return llm, tokenizer, info
        tried = ", ".join(f"{s} ({type(e).__name__}: {str(e)[:120]})" for s, e in errors)
        raise ValueError(f"no checkpoint in {ckpt_dir} could be restored; tried {tried}")
    finally:
        with _quiet_orbax():
            mngr.close()
