"""LoRA utilities: which parameters train, merging adapters, and PEFT-format adapters.

The adapters themselves live in `merg_jax.models.layers.Linear` (`lora_a` [in, r],
`lora_b` [r, out], stacked with a leading `layers` axis inside the scanned
block).  This module is the bookkeeping around them:

* `trainable_filter` selects what the optimizer sees (only `LoRAParam`s);
* `merge` / `unmerge` fold scale·A·B into the kernels for inference speed;
* `save_peft` / `load_peft` exchange adapters with Hugging Face PEFT
  (`adapter_config.json` + `adapter_model.safetensors`, keys without the
  adapter name, A as [r, in] and B as [out, r] — torch's [out, in] layout).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.convert.hf import hf_name
from merg_jax.core.weights import SafetensorsFile, save_file
from merg_jax.models.layers import Linear, LoraConfig, LoRAParam
from merg_jax.models.llama import CausalLM

log = logging.getLogger(__name__)

# The optimizer / nnx.grad filter: only the low-rank adapters train.
trainable_filter = LoRAParam

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def adapted_linears(model: nnx.Module) -> Iterator[tuple[tuple[str, ...], Linear]]:
    """(state path, module) of every Linear that carries LoRA adapters."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Linear) and node.lora_a is not None:
            yield tuple(str(p) for p in path), node


def has_lora(model: nnx.Module) -> bool:
    return any(True for _ in adapted_linears(model))


def lora_state(model: nnx.Module) -> nnx.State:
    """The adapter weights only (what a LoRA checkpoint needs to store)."""
    return nnx.state(model, LoRAParam)


def count_params(model: nnx.Module, wrt=trainable_filter) -> tuple[int, int]:
    """(trainable, total) parameter counts; `trainable` counts what `wrt` selects."""
    def size(state) -> int:
        return sum(int(math.prod(np.shape(v))) for v in jax.tree.leaves(state))
    return size(nnx.state(model, wrt)), size(nnx.state(model, nnx.Param))


def _set_kernel(module: Linear, value: jax.Array) -> None:
    old = module.kernel.get_value()
    value = value.astype(old.dtype)
    if isinstance(old, jax.Array) and hasattr(old, "sharding"):
        value = jax.device_put(value, old.sharding)
    module.kernel.set_value(value)


def merge(model: nnx.Module) -> nnx.Module:
    """Folds scale·A·B into every adapted kernel in place (faster inference, same outputs).

    The adapters are kept, so `unmerge` can undo it (up to float rounding of
    the kernel dtype).  Merging an already merged layer is a no-op.
    """
    n = 0
    for _, lin in adapted_linears(model):
        if lin.merged:
            continue
        kernel = lin.kernel.get_value().astype(jnp.float32)
        _set_kernel(lin, kernel + lin.lora_delta())
        lin.merged = True
        n += 1
    log.debug("merged LoRA into %d linear module(s)", n)
    return model


def unmerge(model: nnx.Module) -> nnx.Module:
    """Subtracts the adapters that `merge` folded in, so they are applied on the fly again."""
    for _, lin in adapted_linears(model):
        if not lin.merged:
            continue
        kernel = lin.kernel.get_value().astype(jnp.float32)
        _set_kernel(lin, kernel - lin.lora_delta())
        lin.merged = False
    return model


def apply_lora(model: CausalLM, lora: LoraConfig, seed: int = 0) -> CausalLM:
    """A copy of a LoRA-free model with fresh adapters (A random, B zero: outputs unchanged).

    Base arrays are shared with `model`, not copied; new adapters are placed on
    the same mesh as the kernel they adapt when the model is sharded.
    """
    if has_lora(model):
        raise ValueError("model already has LoRA adapters; apply_lora needs a model without them")
    cfg = model.config
    make = lambda: CausalLM(cfg, lora=lora, rngs=nnx.Rngs(seed))
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    fresh = dict(nnx.to_flat_state(jax.jit(lambda: nnx.state(make(), LoRAParam))()))
    old = dict(nnx.to_flat_state(nnx.state(model)))
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        if isinstance(var, LoRAParam):
            value = fresh[path].get_value()
            kernel = old.get(path[:-1] + ("kernel",))
            sharding = getattr(kernel.get_value(), "sharding", None) if kernel is not None else None
            if isinstance(sharding, jax.sharding.NamedSharding):
                from merg_jax.core.sharding import named_sharding
                value = jax.device_put(value, named_sharding(sharding.mesh, var.get_metadata()["out_sharding"],
                                                             value.shape))
        else:
            if path not in old:
                raise KeyError(f"parameter {'/'.join(map(str, path))} is missing from the model")
            value = old[path].get_value()
        flat.append((path, var.replace(value=value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --------------------------------------------------------------------------- PEFT format

def _peft_module_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Our Linear path -> (HF module name with `{i}` for the layer, stacked?)."""
    template, _, stacked = hf_name(path + ("kernel",))
    return template[: -len(".weight")], stacked


def peft_state_dict(model: nnx.Module, dtype=np.float32) -> dict[str, np.ndarray]:
    """PEFT-named adapter tensors: `base_model.model.<module>.lora_A.weight` [r, in], `lora_B` [out, r]."""
    out: dict[str, np.ndarray] = {}
    for path, lin in adapted_linears(model):
        module, stacked = _peft_module_name(path)
        a = np.asarray(jax.device_get(lin.lora_a.get_value()), np.float32)
        b = np.asarray(jax.device_get(lin.lora_b.get_value()), np.float32)
        for i in range(a.shape[0] if stacked else 1):
            name = _PEFT_PREFIX + module.format(i=i)
            out[name + ".lora_A.weight"] = np.ascontiguousarray((a[i] if stacked else a).T).astype(dtype)
            out[name + ".lora_B.weight"] = np.ascontiguousarray((b[i] if stacked else b).T).astype(dtype)
    return out


def save_peft(model: CausalLM, out_dir: str, base_model_name_or_path: str = "",
              dtype: str = "float32") -> str:
    """Writes the adapters as a PEFT LoRA adapter that `PeftModel.from_pretrained` loads."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"adapter dtype {dtype!r}: use float32 or bfloat16")
    linears = list(adapted_linears(model))
    if not linears:
        raise ValueError("model has no LoRA adapters to save (load or build it with `lora=`)")
    lora: LoraConfig | None = getattr(model, "lora_config", None)
    rank = int(linears[0][1].lora_a.get_value().shape[-1])
    scale = float(linears[0][1].lora_scale)
    dropout = float(lora.dropout) if lora is not None else float(linears[0][1].lora_dropout)
    targets = sorted({lin.name for _, lin in linears})
    os.makedirs(out_dir, exist_ok=True)
    alpha = float(lora.alpha) if lora is not None and lora.rank == rank else scale * rank
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout, "target_modules": targets, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path or None, "inference_mode": True,
        "revision": None,
    }
    arch = model.config.to_hf()["architectures"][0] if isinstance(model, CausalLM) else None
    if arch:
        config["auto_mapping"] = {"base_model_class": arch,
                                  "parent_library": f"transformers.models.{model.config.model_type}."
                                                    f"modeling_{model.config.model_type}"}
    tensors = peft_state_dict(model, np.float32 if dtype == "float32" else jnp.bfloat16)
    save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS))
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as fh:
        json.dump(config, fh, indent=2)
    log.info("saved PEFT adapter (r=%d, alpha=%g, %d tensors, targets %s) to %s",
             rank, alpha, len(tensors), targets, out_dir)
    return out_dir


def read_peft_config(adapter_dir: str) -> dict:
    """`adapter_config.json`, checked for the LoRA variants we can represent."""
    path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (need a PEFT adapter directory)")
    with open(path) as fh:
        cfg = json.load(fh)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for key, ok in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False)):
        if bool(cfg.get(key, False)) != ok:
            raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ValueError(f"{path}: per-module {key} is not supported")
    if cfg.get("layers_to_transform") is not None:
        raise ValueError(f"{path}: layers_to_transform is not supported (adapters must cover every layer)")
    return cfg


def load_peft(model: CausalLM, adapter_dir: str) -> CausalLM:
    """Loads a PEFT LoRA adapter into `model` and returns it.

    A model without adapters first gets them (`apply_lora`) for the modules the
    adapter file covers, so the result is a new object in that case; use the
    return value.  Every adapter the model has must be present in the file.
    """
    cfg = read_peft_config(adapter_dir)
    wpath = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not os.path.exists(wpath):
        raise FileNotFoundError(f"{wpath} does not exist")
    tensors = SafetensorsFile(wpath)
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    dropout = float(cfg.get("lora_dropout", 0.0) or 0.0)
    if not has_lora(model):
        short = sorted({m.group(1) for k in tensors.keys()
                        if (m := re.search(r"\.(\w+)\.lora_A(?:\.\w+)?\.weight$", k))})
        if not short:
            raise ValueError(f"{wpath} holds no lora_A tensors")
        model = apply_lora(model, LoraConfig(rank=rank, alpha=alpha, dropout=dropout,
                                             targets=tuple(re.escape(s) for s in short)))
    expected = set()
    for path, lin in adapted_linears(model):
        if lin.merged:
            raise ValueError("load_peft on a merged model: call unmerge(model) first")
        module, stacked = _peft_module_name(path)
        a_var, b_var = lin.lora_a, lin.lora_b
        got_rank = a_var.get_value().shape[-1]
        if got_rank != rank:
            raise ValueError(f"{adapter_dir}: adapter rank r={rank} but the model's {module} has rank {got_rank}")
        n = a_var.get_value().shape[0] if stacked else 1
        parts = {"lora_A": [], "lora_B": []}
        for i in range(n):
            for kind in parts:
                name = _PEFT_PREFIX + module.format(i=i) + f".{kind}.weight"
                if name not in tensors:
                    alt = name.replace(f".{kind}.weight", f".{kind}.default.weight")
                    if alt not in tensors:
                        raise KeyError(f"tensor {name!r} is missing from {wpath}")
                    name = alt
                expected.add(name)
                parts[kind].append(np.asarray(tensors[name], np.float32).T)
        for kind, var in (("lora_A", a_var), ("lora_B", b_var)):
            value = np.stack(parts[kind]) if stacked else parts[kind][0]
            old = var.get_value()
            if value.shape != old.shape:
                raise ValueError(f"{wpath}: {kind} tensors of {module} give shape {value.shape}, "
                                 f"the model expects {old.shape}")
            new = jnp.asarray(value, old.dtype)
            if hasattr(old, "sharding"):
                new = jax.device_put(new, old.sharding)
            var.set_value(new)
        lin.lora_scale = alpha / rank
        lin.lora_dropout = dropout
    extra = [k for k in tensors.keys() if k not in expected and "lora_" in k]  # incl. lora_embedding_A
    if extra:
        raise ValueError(f"{wpath} has adapters for modules the model does not adapt, e.g. {extra[0]!r}")
    ignored = [k for k in tensors.keys() if k not in expected]
    if ignored:
        log.warning("%s: ignoring %d non-LoRA tensor(s), e.g. %s", wpath, len(ignored), ignored[0])
    if isinstance(getattr(model, "lora_config", None), LoraConfig):
        model.lora_config = LoraConfig(rank=rank, alpha=alpha, dropout=dropout,
                                       targets=model.lora_config.targets)
    log.info("loaded PEFT adapter from %s (r=%d, alpha=%g)", adapter_dir, rank, alpha)
    return model
