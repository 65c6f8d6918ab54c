"""LoRA: merge/unmerge, what trains, dropout, and PEFT interchange (vs transformers + peft)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from merg_jax.convert import lora as L
from merg_jax.convert.hf import load_hf
from merg_jax.models.layers import LoraConfig, LoRAParam

from tiny_hf import hf_logits, make_hf, randomize_lora, save_hf_model

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ATTN = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
MLP_HEAD = LoraConfig(rank=2, alpha=6.0, targets=("gate_proj", "up_proj", "down_proj", "lm_head"))


@nnx.jit
def _forward(model, ids):
    return model(ids).logits


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    return save_hf_model(make_hf("llama3", seed=3), str(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def ids() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).integers(0, 96, size=(2, 12)), jnp.int32)


def _lora_model(base_dir: str, cfg: LoraConfig = ATTN, seed: int = 1):
    model = load_hf(base_dir, lora=cfg)
    randomize_lora(model, seed)
    return model


def _params(model, filt) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, filt))}


def test_count_params(base_dir):
    model = _lora_model(base_dir)
    trainable, total = L.count_params(model)
    c = model.config
    d, kv = c.dim_head, c.num_kv_heads * c.dim_head
    e, r = c.hidden_size, ATTN.rank
    per_layer = r * ((e + c.num_heads * d) * 2 + (e + kv) * 2)
    assert trainable == c.num_layers * per_layer
    base_trainable, base_total = L.count_params(load_hf(base_dir))
    assert base_trainable == 0 and total == base_total + trainable


def test_merge_unmerge(base_dir, ids):
    model = _lora_model(base_dir)
    base = np.asarray(_forward(load_hf(base_dir), ids))
    unmerged = np.asarray(_forward(model, ids))
    assert np.abs(unmerged - base).max() > 1e-2, "adapters should change the logits"
    kernels = _params(model, lambda path, v: path[-1] == "kernel")

    L.merge(model)
    assert all(lin.merged for _, lin in L.adapted_linears(model))
    merged_kernels = _params(model, lambda path, v: path[-1] == "kernel")
    q = ("layers", "self_attn", "q_proj", "kernel")
    assert np.abs(merged_kernels[q] - kernels[q]).max() > 1e-3
    g = ("layers", "mlp", "gate_proj", "kernel")  # not adapted: untouched
    np.testing.assert_array_equal(merged_kernels[g], kernels[g])
    merged = np.asarray(_forward(model, ids))
    print(f"merged vs unmerged logits: {np.abs(merged - unmerged).max():.2e}")
    np.testing.assert_allclose(merged, unmerged, rtol=0, atol=1e-5)
    L.merge(model)  # idempotent
    np.testing.assert_array_equal(np.asarray(_forward(model, ids)), merged)

    L.unmerge(model)
    assert not any(lin.merged for _, lin in L.adapted_linears(model))
    restored = _params(model, lambda path, v: path[-1] == "kernel")
    for path, k in kernels.items():
        np.testing.assert_allclose(restored[path], k, rtol=0, atol=1e-6, err_msg=str(path))
    np.testing.assert_allclose(np.asarray(_forward(model, ids)), unmerged, rtol=0, atol=1e-5)


@nnx.jit
def _lora_grads(model, ids):
    def loss(m):
        logits = m(ids).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return nnx.grad(loss, argnums=nnx.DiffState(0, LoRAParam))(model)


def test_only_lora_params_get_grads(base_dir, ids):
    model = _lora_model(base_dir)
    grads = _lora_grads(model, ids)
    flat = nnx.to_flat_state(grads)
    lora_paths = {p for p, _ in nnx.to_flat_state(L.lora_state(model))}
    assert {p for p, _ in flat} == lora_paths and len(lora_paths) == 8
    for path, g in flat:
        assert path[-1] in ("lora_a", "lora_b")
        per_layer = np.abs(np.asarray(g.get_value())).reshape(model.config.num_layers, -1).max(axis=1)
        assert per_layer.min() > 0, f"{path}: zero gradient in some layer"

    base_before = _params(model, lambda path, v: not isinstance(v, LoRAParam))
    lora_before = _params(model, LoRAParam)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=L.trainable_filter)
    opt.update(model, grads)
    base_after = _params(model, lambda path, v: not isinstance(v, LoRAParam))
    assert base_after.keys() == base_before.keys()
    for path, v in base_before.items():
        np.testing.assert_array_equal(base_after[path], v, err_msg=str(path))
    lora_after = _params(model, LoRAParam)
    for path, v in lora_before.items():
        assert np.abs(lora_after[path] - v).min() > 0, f"{path} did not move"


def test_dropout_only_with_key(base_dir, ids):
    model = _lora_model(base_dir, LoraConfig(rank=4, alpha=8.0, dropout=0.5))
    fwd = nnx.jit(lambda m, i, k: m(i, dropout_key=k).logits)
    plain = np.asarray(_forward(model, ids))
    np.testing.assert_array_equal(np.asarray(_forward(model, ids)), plain)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    d1, d1b, d2 = (np.asarray(fwd(model, ids, k)) for k in (k1, k1, k2))
    assert np.abs(d1 - plain).max() > 1e-2
    assert np.abs(d1 - d2).max() > 1e-2
    np.testing.assert_array_equal(d1, d1b)
    # Without LoRA dropout the key changes nothing.
    nodrop = _lora_model(base_dir)
    np.testing.assert_allclose(np.asarray(fwd(nodrop, ids, k1)), np.asarray(_forward(nodrop, ids)),
                               rtol=0, atol=1e-6)


def _peft_logits(base_dir: str, adapter_dir: str, ids) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(hf, adapter_dir).eval()
    return hf_logits(pm, np.asarray(ids, np.int64))


@pytest.mark.parametrize("cfg", [ATTN, MLP_HEAD], ids=["attention", "mlp+lm_head"])
def test_peft_export_matches_peft(base_dir, ids, tmp_path, cfg):
    model = _lora_model(base_dir, cfg, seed=4)
    adapter_dir = L.save_peft(model, str(tmp_path / "adapter"), base_model_name_or_path=base_dir)
    with open(os.path.join(adapter_dir, "adapter_config.json")) as fh:
        conf = json.load(fh)
    assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM"
    assert conf["r"] == cfg.rank and conf["lora_alpha"] == cfg.alpha
    assert sorted(conf["target_modules"]) == sorted(cfg.targets)
    ours = np.asarray(_forward(model, ids))
    ref = _peft_logits(base_dir, adapter_dir, ids)
    base = hf_logits(make_hf("llama3", seed=3), np.asarray(ids, np.int64))
    assert np.abs(ref - base).max() > 1e-2, "PEFT did not apply the adapter"
    diff = np.abs(ours - ref).max()
    print(f"{cfg.targets}: max |ours - peft| = {diff:.2e}")
    assert diff <= 1e-4


def test_load_peft_round_trip(base_dir, ids, tmp_path):
    model = _lora_model(base_dir, MLP_HEAD, seed=5)
    want = np.asarray(_forward(model, ids))
    adapter_dir = L.save_peft(model, str(tmp_path / "adapter"))
    # Into a model without adapters: they are created for the modules in the file.
    loaded = L.load_peft(load_hf(base_dir), adapter_dir)
    assert sorted({lin.name for _, lin in L.adapted_linears(loaded)}) == sorted(MLP_HEAD.targets)
    np.testing.assert_allclose(np.asarray(_forward(loaded, ids)), want, rtol=0, atol=1e-6)
    # Into a model that already has (different) adapters of the same rank.
    other = _lora_model(base_dir, MLP_HEAD, seed=6)
    assert np.abs(np.asarray(_forward(other, ids)) - want).max() > 1e-2
    other = L.load_peft(other, adapter_dir)
    np.testing.assert_allclose(np.asarray(_forward(other, ids)), want, rtol=0, atol=1e-6)
    for path, v in _params(model, LoRAParam).items():
        np.testing.assert_array_equal(_params(other, LoRAParam)[path], v)
    # A rank mismatch is refused with a message naming the rank.
    with pytest.raises(ValueError, match="rank"):
        L.load_peft(_lora_model(base_dir, LoraConfig(rank=3, targets=MLP_HEAD.targets)), adapter_dir)


def test_load_peft_reads_peft_saved_adapter(base_dir, ids, tmp_path):
    """An adapter written by peft itself (incl. lm_head's base_layer copy) loads and matches."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape))
    pm.eval()
    ref = hf_logits(pm, np.asarray(ids, np.int64))
    pm.save_pretrained(str(tmp_path / "peft"))
    model = L.load_peft(load_hf(base_dir), str(tmp_path / "peft"))
    assert model.lora_config.rank == 3 and model.layers.self_attn.q_proj.lora_scale == pytest.approx(5 / 3)
    assert model.layers.self_attn.k_proj.lora_a is None
    diff = np.abs(np.asarray(_forward(model, ids)) - ref).max()
    assert diff <= 1e-4, diff


def test_save_peft_without_adapters_fails(base_dir, tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        L.save_peft(load_hf(base_dir), str(tmp_path / "x"))


def test_apply_lora_adds_inert_adapters(base_dir, ids):
    base = load_hf(base_dir)
    model = L.apply_lora(base, MLP_HEAD, seed=0)
    assert not L.has_lora(base) and L.has_lora(model)
    assert model.lm_head.lora_a is not None and model.layers.self_attn.q_proj.lora_a is None
    assert model.layers.mlp.up_proj.kernel.get_value() is base.layers.mlp.up_proj.kernel.get_value()
    assert np.abs(np.asarray(model.layers.mlp.up_proj.lora_a.get_value())).max() > 0
    np.testing.assert_array_equal(np.asarray(_forward(model, ids)), np.asarray(_forward(base, ids)))
    with pytest.raises(ValueError, match="already has LoRA"):
        L.apply_lora(model, MLP_HEAD)
