"""Our decoder vs transformers' PyTorch models (fp32), on tiny random configs of every family.

Each family is checked on a left-padded batch longer than the llama3 rope
scaling's original context (32) and than Mistral's sliding window (8), so
both actually change the result.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.convert.hf import load_hf
from tiny_hf import hf_logits, left_padded_batch, make_hf, masked_max_diff, save_hf_model

pytest.importorskip("torch")

SEQ = 40
PADS = (0, 7, 3)
TOL = 1e-4


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, attention_mask=mask).logits


@pytest.fixture(scope="module", params=["llama3", "mistral", "qwen2", "qwen3"])
def family(request, tmp_path_factory):
    """(name, hf model, checkpoint dir, our model, ids, mask, hf logits) for one family."""
    name = request.param
    hf = make_hf(name, seed=1)
    directory = save_hf_model(hf, str(tmp_path_factory.mktemp(name)))
    ids, mask = left_padded_batch(hf.config.vocab_size, SEQ, PADS, seed=2)
    return name, hf, directory, load_hf(directory), ids, mask, hf_logits(hf, ids, mask)


def test_logits_match_hf(family):
    name, hf, _, model, ids, mask, ref = family
    ours = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0, "reference logits too small for the tolerance to mean anything"
    diff = masked_max_diff(ours, ref, mask)
    print(f"{name}: max |ours - hf| = {diff:.2e}")
    assert diff <= TOL, f"{name}: max abs diff {diff}"


def test_family_features_are_active(family):
    """The feature each config exercises is really there (otherwise the parity test proves little)."""
    name, hf, _, model, ids, mask, ref = family
    cfg = model.config
    if name == "llama3":
        assert dict(cfg.rope_scaling)["rope_type"] == "llama3" and SEQ > 32
        assert cfg.num_heads // cfg.num_kv_heads == 2
        # Without the llama3 frequency scaling the logits change.
        plain = load_hf(family[2], rope_scaling=None)
        unscaled = np.asarray(_forward(plain, jnp.asarray(ids), jnp.asarray(mask)))
        assert masked_max_diff(unscaled, ref, mask) > 1e-2
    elif name == "mistral":
        assert cfg.sliding_window == 8 < SEQ and cfg.num_heads == cfg.num_kv_heads
        # Without the window the last position's logits change.
        full = load_hf(family[2], sliding_window=None)
        nowin = np.asarray(_forward(full, jnp.asarray(ids), jnp.asarray(mask)))
        assert masked_max_diff(nowin, ref, mask) > 1e-2
    elif name == "qwen2":
        assert cfg.qkv_bias
        bias = np.asarray(model.layers.self_attn.q_proj.bias.get_value())
        assert np.abs(bias).min() > 0 and bias.shape[0] == cfg.num_layers
    elif name == "qwen3":
        assert cfg.qk_norm and cfg.tie_word_embeddings and model.lm_head is None
        assert cfg.dim_head == 16 != cfg.hidden_size // cfg.num_heads
        scale = np.asarray(model.layers.self_attn.q_norm.scale.get_value())
        assert np.abs(scale - 1).max() > 0.1


def test_unpadded_rows_match_padded(family):
    """Left padding does not change the real tokens' logits."""
    _, _, _, model, ids, mask, _ = family
    p = PADS[1]
    batch = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(_forward(model, jnp.asarray(ids[1:2, p:]), jnp.ones((1, SEQ - p), jnp.int32)))
    assert np.abs(batch[1, p:] - alone[0]).max() <= 1e-4


@pytest.mark.parametrize("family", ["llama3", "qwen3"], indirect=True)
def test_inputs_embeds_equals_input_ids(family):
    name, _, _, model, ids, mask, _ = family
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    a = _forward(model, ids_j, mask_j)
    b = nnx.jit(lambda m, i, k: m(inputs_embeds=m.embed(i), attention_mask=k).logits)(model, ids_j, mask_j)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@nnx.jit
def _loss_and_grad(model, ids, mask):
    def loss(m):
        logits = m(ids, attention_mask=mask).logits
        return jnp.mean(jax.nn.logsumexp(logits, -1) * mask)
    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize("family", ["llama3"], indirect=True)
def test_remat_policies_identical(family):
    """Rematerialisation changes memory, never values: same logits, and same grads under "full"."""
    _, _, directory, model, ids, mask, _ = family
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    base = np.asarray(_forward(model, ids_j, mask_j))
    for policy in ("full", "dots"):
        m = load_hf(directory, remat=policy)
        assert m.config.remat == policy
        np.testing.assert_allclose(np.asarray(_forward(m, ids_j, mask_j)), base, rtol=0, atol=1e-6)
    # Gradients through the checkpointed scan (one policy: each grad compile costs seconds).
    loss0, g0 = _loss_and_grad(model, ids_j, mask_j)
    loss, g = _loss_and_grad(load_hf(directory, remat="full"), ids_j, mask_j)
    assert abs(float(loss) - float(loss0)) <= 1e-6
    k0 = np.asarray(g0["layers"]["self_attn"]["q_proj"]["kernel"].get_value())
    k1 = np.asarray(g["layers"]["self_attn"]["q_proj"]["kernel"].get_value())
    assert np.abs(k0).max() > 0
    np.testing.assert_allclose(k1, k0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama3", "qwen3"], indirect=True)
def test_bf16_compute_close(family):
    name, _, directory, _, ids, mask, ref = family
    m = load_hf(directory, dtype="bfloat16")
    assert m.layers.self_attn.q_proj.dtype == jnp.bfloat16
    out = _forward(m, jnp.asarray(ids), jnp.asarray(mask))
    assert out.dtype == jnp.float32
    out = np.asarray(out)
    assert np.isfinite(out).all()
    rel = masked_max_diff(out, ref, mask) / np.abs(ref).max()
    print(f"{name}: bf16 max relative diff {rel:.2e}")
    assert 0 < rel < 0.08


@pytest.mark.parametrize("family", ["qwen2"], indirect=True)
def test_sharded_checkpoint_loads(family, tmp_path):
    name, hf, _, _, ids, mask, ref = family
    directory = save_hf_model(hf, str(tmp_path / "sharded"), max_shard_size="20KB")
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    assert len(files) > 1 and os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    model = load_hf(directory)
    ours = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert masked_max_diff(ours, ref, mask) <= TOL
