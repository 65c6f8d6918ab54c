"""Hugging Face checkpoints <-> our parameter tree.

Our module names mirror HF's (`self_attn.q_proj`, `mlp.gate_proj`, ...), so the
mapping is mechanical: stacked `layers.*` parameters become
`model.layers.{i}.*`, kernels are stored [in, out] here and [out, in] in HF.
Loading builds the model abstractly and fills each parameter straight onto its
devices (`make_array_from_callback`), so a large checkpoint is never
materialised twice nor whole on one host.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.core.sharding import named_sharding
from merg_jax.core.weights import TensorDirectory, save_file
from merg_jax.models.layers import LoraConfig, LoRAParam
from merg_jax.models.llama import CausalLM, LlamaConfig

log = logging.getLogger(__name__)
_LEAF_SUFFIX = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def hf_name(path: tuple[str, ...]) -> tuple[str, bool, bool]:
    """Our state path -> (HF name with `{i}` for the layer, transpose?, stacked?)."""
    *mods, leaf = path
    suffix = _LEAF_SUFFIX[leaf]
    transpose = leaf == "kernel"
    if mods[0] == "layers":
        return "model.layers.{i}." + ".".join(mods[1:]) + "." + suffix, transpose, True
    if mods[0] == "lm_head":
        return "lm_head." + suffix, transpose, False
    return "model." + ".".join(mods) + "." + suffix, transpose, False


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (need an HF model directory with config.json)")
    with open(path) as fh:
        return json.load(fh)


def _reader(tensors: Mapping[str, np.ndarray], template: str, transpose: bool, stacked: bool,
            shape: tuple[int, ...], dtype, where: Callable[[str], str]) -> Callable:
    """Returns f(index) -> the requested slice of the (stacked, transposed) parameter."""
    names = [template.format(i=i) for i in range(shape[0])] if stacked else [template]
    one_shape = shape[1:] if stacked else shape
    expected = one_shape[::-1] if transpose else one_shape
    for name in names:
        if name not in tensors:
            raise KeyError(f"tensor {name!r} is missing from {where(name)}")
        got = tuple(tensors[name].shape)
        if got != tuple(expected):
            raise ValueError(f"tensor {name!r} in {where(name)} has shape {got}, expected {tuple(expected)}")

    def one(name: str, idx: tuple) -> np.ndarray:
        arr = tensors[name]
        arr = arr.T if transpose else arr
        return np.asarray(arr[idx]).astype(dtype)

    def read(index: tuple) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if not stacked:
            return one(names[0], index)
        layers = range(*index[0].indices(shape[0]))
        return np.stack([one(names[i], index[1:]) for i in layers])
    return read


@functools.lru_cache(maxsize=16)
def _lora_init(cfg: LlamaConfig, lora: LoraConfig, seed: int) -> Callable[[], nnx.State]:
    """Jitted initialiser of the adapters alone (XLA drops the unused base init); cached per config."""
    return jax.jit(lambda: nnx.state(CausalLM(cfg, lora=lora, rngs=nnx.Rngs(seed)), LoRAParam))


def build_model(cfg: LlamaConfig, tensors: Mapping[str, np.ndarray], *, lora: LoraConfig | None = None,
                mesh: jax.sharding.Mesh | None = None, seed: int = 0,
                where: Callable[[str], str] = lambda name: "the checkpoint") -> CausalLM:
    """Creates a CausalLM whose base weights come from HF-named `tensors`."""
    make = lambda: CausalLM(cfg, lora=lora, rngs=nnx.Rngs(seed))
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    lora_state = None
    if lora is not None:
        lora_state = {p: v for p, v in nnx.to_flat_state(_lora_init(cfg, lora, seed)())}
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if isinstance(var, LoRAParam):
            value = lora_state[path].get_value()
            if mesh is not None:
                value = jax.device_put(value, named_sharding(mesh, var.get_metadata()["out_sharding"], shape))
        else:
            template, transpose, stacked = hf_name(path)
            read = _reader(tensors, template, transpose, stacked, shape, np.dtype(dtype), where)
            if mesh is None:
                value = jnp.asarray(read(()))
            else:
                sharding = named_sharding(mesh, var.get_metadata()["out_sharding"], shape)
                value = jax.make_array_from_callback(shape, sharding, read)
        flat.append((path, var.replace(value=value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_hf(directory: str, *, lora: LoraConfig | None = None, mesh=None, **overrides) -> CausalLM:
    """Loads an HF directory (config.json + safetensors, single or sharded)."""
    cfg = LlamaConfig.from_hf(read_config(directory), **overrides)
    tensors = TensorDirectory(directory)
    where = lambda name: tensors.file_of(name) if name in tensors else ", ".join(tensors.files)
    log.info("loading %s (%s, %d layers) from %s", cfg.model_type, cfg.param_dtype, cfg.num_layers, directory)
    return build_model(cfg, tensors, lora=lora, mesh=mesh, where=where)


def merged_kernel(module) -> jax.Array:
    """A linear layer's kernel with its LoRA delta folded in (when present and not merged yet)."""
    kernel = module.kernel[...]
    if getattr(module, "lora_a", None) is not None and not module.merged:
        kernel = (kernel.astype(jnp.float32) + module.lora_delta()).astype(kernel.dtype)
    return kernel


def hf_state_dict(model: CausalLM, dtype=np.float32) -> dict[str, np.ndarray]:
    """HF-named numpy tensors of the model with LoRA merged in (the model is unchanged)."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if isinstance(var, LoRAParam):
            continue
        value = var.get_value()
        if path[-1] == "kernel":
            module = model
            for p in path[:-1]:
                module = getattr(module, p)
            value = merged_kernel(module)
        arr = np.asarray(jax.device_get(value)).astype(dtype)
        template, transpose, stacked = hf_name(path)
        for i in range(arr.shape[0] if stacked else 1):
            one = arr[i] if stacked else arr
            out[template.format(i=i)] = np.ascontiguousarray(one.T if transpose else one)
    return out


def save_hf(model: CausalLM, out_dir: str, *, tokenizer=None, dtype: str = "float32",
            max_shard_bytes: int = 2 * 1024 ** 3, generation_config: dict | None = None) -> None:
    """Writes an HF directory (merged weights) that `from_pretrained` loads."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"export dtype {dtype!r}: use float32 or bfloat16")
    np_dtype = np.float32 if dtype == "float32" else jnp.bfloat16
    os.makedirs(out_dir, exist_ok=True)
    tensors = hf_state_dict(model, np_dtype)
    shards, current, size = [], {}, 0
    for name, arr in tensors.items():
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"))
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fname))
            weight_map.update({name: fname for name in shard})
        total = sum(a.nbytes for a in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    cfg = model.config
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(cfg.to_hf(dtype), fh, indent=2)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.to_hf()["eos_token_id"],
           "pad_token_id": cfg.pad_token_id, **(generation_config or {})}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as fh:
        json.dump({k: v for k, v in gen.items() if v is not None}, fh, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    log.info("exported %d tensors in %d shard(s) to %s", len(tensors), len(shards), out_dir)
