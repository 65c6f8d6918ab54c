"""A training workdir as a model: the system rebuilt from config.json, the trained params restored.

    llm, tokenizer, info = load_workdir("runs/text_baseline")        # newest good checkpoint
    llm, tokenizer, info = load_workdir(w, best=True)                 # best/<step> by eval loss
    llm, tokenizer, info = load_workdir(w, which="mcoe", step=1200)   # one LLM of a multi-LLM system
    llm, tokenizer = load_model(path)            # a workdir, an HF directory or a .gguf file

The frozen base comes from the paths in the saved config (checked against the
checksums the checkpoint recorded); the checkpoint's "params" item (every
parameter some stage trains, float32) is written over it.  LoRA adapters stay
unmerged, so the result exports as a PEFT adapter as well as merged weights.
The checkpoint is picked by the same loop the trainer resumes with
(`merg_jax.train.checkpoint.restore_newest`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from merg_jax.convert.loading import load_pretrained
from merg_jax.core import sharding as shd
from merg_jax.core.tokenizer import load_tokenizer
from merg_jax.models.layers import LoraConfig
from merg_jax.systems import get_system
from merg_jax.systems.base import model_path
from merg_jax.train import checkpoint as ckpt_lib
from merg_jax.train import partition

log = logging.getLogger(__name__)

# Model-block fields a caller may override at load time (inference-only knobs).
MODEL_OVERRIDES = ("dtype", "param_dtype", "remat")
# Config paths an evaluation may change on top of a workdir's saved config: how it decodes and
# reads data, never what was trained (shapes, system, adapters, stages).
EVAL_OVERRIDE_PREFIXES = ("generation.", "data.", "mesh.", "log.", "distributed.")
FROZEN_DATA_FIELDS = ("data.feature_dims", "data.soft_tokens_per_slot", "data.soft_modalities",
                      "data.normalize_features", "data.train_split")


def check_eval_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Raises ValueError on an override that would change the trained model or that names no field."""
    for path in overrides:
        model_knob = path.rsplit(".", 1)[-1] in MODEL_OVERRIDES and path.split(".", 1)[0].endswith("model")
        if not (model_knob or path.startswith(EVAL_OVERRIDE_PREFIXES)) or path in FROZEN_DATA_FIELDS:
            raise ValueError(
                f"--config.{path} would change the trained model (its shapes, system, adapters or "
                f"stages are fixed by the workdir's config.json); an evaluation may override "
                f"{', '.join(p + '*' for p in EVAL_OVERRIDE_PREFIXES)} (except {', '.join(FROZEN_DATA_FIELDS)}) "
                f"and <model block>.{{{','.join(MODEL_OVERRIDES)}}}")
        node = config
        parts = path.split(".")
        for key in parts[:-1]:
            node = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
            raise ValueError(f"--config.{path}: the workdir's config.json has no such field")


def apply_eval_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets the checked `overrides` ({dotted path: value}) on `config`, in place."""
    check_eval_overrides(config, overrides)
    with config.unlocked():
        for path, value in overrides.items():
            *parents, leaf = path.split(".")
            node = config
            for key in parents:
                node = node[key]
            node[leaf] = list(value) if isinstance(value, tuple) and isinstance(node[leaf], list) else value


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
    return model_path(model_block(config, which).path)


def tokenizer_path(config: ml_collections.ConfigDict, which: str = "response") -> str:
    """data.tokenizer_path when set (what training tokenized with), else the base weights."""
    data = config.get("data")
    tok = data.get("tokenizer_path") if data is not None else None
    if tok:
        return os.path.abspath(os.path.expanduser(tok))
    return base_path(config, which)


def load_workdir(workdir: str, *, which: str = "response", mesh=None, step: int | None = None,
                 best: bool = False, with_tokenizer: bool = True, overrides: dict | None = None,
                 config_overrides: dict | None = None) -> tuple[Any, Any, dict]:
    """(CausalLM, tokenizer or None, info) of a training workdir.

    `step` picks a checkpoint (no fallback); without it the newest one that restores is used and
    a broken newest one falls back to the one before with a warning.  `best` reads best/ (kept
    when checkpoint.best_by_eval is on) instead of checkpoints/.  `overrides` may set the LLM
    block's dtype / param_dtype / remat (e.g. float32 activations for generation).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    conf = read_config(workdir)
    if conf is None or "system" not in conf:
        raise ValueError(f"{workdir} is not a training workdir (no config.json with a 'system' key; "
                         "launch/train.py writes one)")
    config = ml_collections.ConfigDict(conf)
    if config_overrides:
        apply_eval_overrides(config, config_overrides)
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

    mngr = ckpt_lib.open_reader(ckpt_dir, best=best)
    try:
        available = ckpt_lib.candidate_steps(mngr, best=best)
        if not available:
            raise FileNotFoundError(
                f"{ckpt_dir} holds no checkpoint: " + (
                    "no evaluation ever ran (set log.eval_every and checkpoint.best_by_eval)" if best else
                    f"train first: python launch/train.py --config=... --workdir={workdir}"))
        if step is not None and int(step) not in available:
            raise ValueError(f"{ckpt_dir} has no step {step}; it has {sorted(available)}")

        system = get_system(config.system)(config)
        mesh = mesh if mesh is not None else shd.make_mesh(1, -1, 1)
        rules = config.mesh.get("rules") if config.get("mesh") is not None else None
        with shd.logical_rules(rules):
            model = system.build(mesh)

        def restore(s: int, meta: dict):
            import orbax.checkpoint as ocp
            union = meta.get("union") or partition.union(config.stages[n] for n in config.stage_order)
            abstract = ckpt_lib.abstract_like(
                partition.to_params(nnx.state(model, partition.matcher(union)), jnp.float32))
            params = mngr.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))["params"]
            return union, params

        s, meta, (union, params) = ckpt_lib.restore_newest(
            mngr, restore, steps=[int(step)] if step is not None else available, bases=system.bases(),
            where=ckpt_dir, exact=step is not None)
        partition.set_params(model, union, params)
        llm = system.llm(model, which)
        tok_path = tokenizer_path(config, which)
        tokenizer = load_tokenizer(tok_path) if with_tokenizer else None
        info = {"workdir": workdir, "checkpoint_dir": ckpt_dir, "step": s, "stage": meta.get("stage"),
                "stage_index": meta.get("stage_index"), "system": config.system, "which": which,
                "base_path": base_path(config, which), "tokenizer_path": tok_path, "meta": meta,
                "config": config, "union": union, "model": model, "system_obj": system}
        log.info("loaded %s step %d (stage %s) of %s (system %s, LLM %r)", sub, s, meta.get("stage"),
                 workdir, config.system, which)
        return llm, tokenizer, info
    finally:
        with ckpt_lib.quiet_orbax():
            mngr.close()


def load_model(path: str, *, lora: LoraConfig | None = None, mesh=None, with_tokenizer: bool = True,
               which: str = "response", **overrides) -> tuple[Any, Any]:
    """(model, tokenizer) from anywhere a model can come from: a training workdir (its newest
    good checkpoint; `which` names the LLM of a system with several, e.g. MERIA's "mcoe" and
    "response"), an HF directory or a .gguf file.  `overrides` are LlamaConfig fields; a
    workdir defines its own adapters, so `lora` must be None and only dtype / param_dtype /
    remat may be overridden."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    if not is_workdir(path):
        return load_pretrained(path, lora=lora, mesh=mesh, with_tokenizer=with_tokenizer, **overrides)
    if lora is not None:
        raise ValueError(f"{path} is a training workdir, which defines its own adapters (its config's "
                         "model.lora); load it with lora=None")
    model, tokenizer, _ = load_workdir(path, which=which, mesh=mesh, with_tokenizer=with_tokenizer,
                                       overrides=overrides)
    return model, tokenizer
