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


def test_bf16_linear_value_and_grads_match_fp32():
    """The 16-bit matmul (custom VJP, float32 accumulation) against float64 on the same bf16 inputs.

    A transposed or mis-scaled backward rule, or a forward that rounds before
    accumulating, is off by far more than one bf16 rounding (~4e-3 relative).
    """
    from merg_jax.models.layers import Linear, LoraConfig

    lin = Linear(48, 40, name="q_proj", names=("embed", "heads"), lora=LoraConfig(rank=4, alpha=8.0),
                 dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    lin.lora_b[...] = (0.1 * jax.random.normal(jax.random.key(1), lin.lora_b.shape)).astype(jnp.bfloat16)
    x = jax.random.normal(jax.random.key(2), (3, 5, 48)).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(3), (3, 5, 40))

    graphdef, state = nnx.split(lin)

    def ours(x, state):
        return jnp.sum(nnx.merge(graphdef, state)(x).astype(jnp.float32) * g)

    def ref(x, k, a, b):  # numpy float64 on the same bf16 values
        x, k, a, b = (np.asarray(t, np.float64) for t in (x, k, a, b))
        y = x @ k + lin.lora_scale * (x @ a) @ b
        dy = np.asarray(g, np.float64)
        return (np.sum(y * dy), dy @ k.T + lin.lora_scale * (dy @ b.T) @ a.T,
                np.einsum("bsi,bso->io", x, dy), lin.lora_scale * np.einsum("bsi,bsr->ir", x, dy @ b.T),
                lin.lora_scale * np.einsum("bsr,bso->ro", x @ a, dy))

    value, (gx, gs) = jax.value_and_grad(ours, argnums=(0, 1))(x, state)
    want = ref(x, lin.kernel[...], lin.lora_a[...], lin.lora_b[...])
    grads = (gx, gs["kernel"][...], gs["lora_a"][...], gs["lora_b"][...])
    np.testing.assert_allclose(float(value), want[0], rtol=2e-2)
    for got, exp, name in zip(grads, want[1:], ("x", "kernel", "lora_a", "lora_b")):
        assert got.dtype == jnp.bfloat16, name
        err = np.abs(np.asarray(got, np.float64) - exp).max() / np.abs(exp).max()
        assert err < 2e-2, (name, err)
