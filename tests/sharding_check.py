"""Sharded forward == single-device forward, on 8 fake CPU devices.

Run by tests/test_sharding.py in a subprocess (the device count is fixed when
JAX initialises, and the main pytest process already has 1 CPU device).
Prints one JSON line with the measured differences and parameter specs.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from merg_jax.convert.hf import build_model, hf_state_dict  # noqa: E402
from merg_jax.core.sharding import batch_sharding, constrain, make_mesh, shard_model  # noqa: E402
from merg_jax.models.layers import LoraConfig, LoRAParam  # noqa: E402
from merg_jax.models.llama import CausalLM, LlamaConfig  # noqa: E402

CFG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, qkv_bias=True, model_type="qwen2")
LORA = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))


@nnx.jit
def forward(model, ids, mask):
    return model(ids, attention_mask=mask).logits


def set_lora(model, seed: int) -> None:
    """Non-zero adapters, keeping each variable's sharding."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, LoRAParam)):
        old = var.get_value()
        var.set_value(jax.device_put(jnp.asarray(0.3 * rng.standard_normal(old.shape), old.dtype), old.sharding))


def spec_of(model) -> dict:
    k = model.layers.self_attn.q_proj.kernel.get_value()
    return {"spec": [None if a is None else (a if isinstance(a, str) else list(a)) for a in k.sharding.spec],
            "global": list(k.shape), "shard": list(k.addressable_shards[0].data.shape),
            "lora_a_spec": str(model.layers.self_attn.q_proj.lora_a.get_value().sharding.spec)}


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    tensors = hf_state_dict(CausalLM(CFG, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for k, v in tensors.items():  # non-trivial norms and biases
        if "norm" in k or k.endswith("bias"):
            tensors[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32)
    ids = rng.integers(0, CFG.vocab_size, size=(4, 24)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    mask[3, :11] = 0

    single = build_model(CFG, tensors, lora=LORA)
    set_lora(single, 2)
    ref = np.asarray(forward(single, jnp.asarray(ids), jnp.asarray(mask)))
    out = {"ref_scale": float(np.abs(ref).max()), "results": {}}

    for name, sizes in (("fsdp4_tensor2", dict(data=1, fsdp=4, tensor=2)),
                        ("data2_fsdp2_tensor2", dict(data=2, fsdp=2, tensor=2))):
        mesh = make_mesh(**sizes)
        if name == "fsdp4_tensor2":  # straight onto the devices while loading
            model = build_model(CFG, tensors, lora=LORA, mesh=mesh)
        else:  # or placed after the fact
            model = shard_model(build_model(CFG, tensors, lora=LORA), mesh)
        set_lora(model, 2)
        with jax.set_mesh(mesh):
            gids = jax.device_put(ids, batch_sharding(mesh, 2))
            gmask = jax.device_put(mask, batch_sharding(mesh, 2))
            logits = forward(model, gids, gmask)
            probe = jax.jit(lambda x: constrain(x, ("batch", "vocab")))(jnp.zeros((8, 4)))
        res = spec_of(model)
        res["constrain_spec"] = str(probe.sharding.spec)
        res["max_diff"] = float(np.abs(np.asarray(logits) - ref).max())
        res["logits_spec"] = str(logits.sharding.spec)
        out["results"][name] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
