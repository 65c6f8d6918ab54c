"""The one decoder on embeddings: `Generator.generate_embeds` against a decode without any cache.

A random tiny Llama (random weights make the argmax move from step to step) continues
random prompt embeddings of different lengths, padded on the right as training batches
are; the reference runs the full forward over the prompt + the tokens chosen so far at
every step, so neither the KV cache nor the padding layout can hide a mistake.
"""
from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.generation import Generator, SamplingConfig
from merg_jax.models.llama import CausalLM, LlamaConfig

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  eos_token_id=None)
NEW = 6


class _Tok:
    """The few tokenizer members the Generator uses (ids are printed as words)."""
    pad_token_id, eos_token_id = 0, None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def setup():
    model = CausalLM(CFG, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    lengths = [5, 9, 2]
    emb = rng.standard_normal((3, 12, CFG.hidden_size)).astype(np.float32)
    mask = np.zeros((3, 12), np.int32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        emb[i, n:] = 7.0  # padding rows hold junk: it must not matter
    return types.SimpleNamespace(model=model, emb=emb, mask=mask, lengths=lengths)


def _reference(model, emb, n, steps):
    x, out = jnp.asarray(emb[None, :n]), []
    for _ in range(steps):
        nxt = int(jnp.argmax(model(inputs_embeds=x, logits="last").logits[0, -1]))
        out.append(nxt)
        x = jnp.concatenate([x, model.embed(jnp.asarray([[nxt]]))], axis=1)
    return out


def test_generate_embeds_matches_a_cache_free_greedy_decode(setup):
    gen = Generator(setup.model, _Tok())
    res = gen.generate_embeds(jnp.asarray(setup.emb), setup.mask, SamplingConfig(max_new_tokens=NEW))
    want = [_reference(setup.model, setup.emb[i], n, NEW) for i, n in enumerate(setup.lengths)]
    assert res.tokens == want
    assert len({tuple(w) for w in want}) > 1 and any(len(set(w)) > 1 for w in want)  # the check can fail


def test_padding_side_does_not_matter(setup):
    """The same prompts padded on the left give the same continuation."""
    left_emb, left_mask = np.zeros_like(setup.emb), np.zeros_like(setup.mask)
    for i, n in enumerate(setup.lengths):
        left_emb[i, -n:], left_mask[i, -n:] = setup.emb[i, :n], 1
    gen = Generator(setup.model, _Tok())
    cfg = SamplingConfig(max_new_tokens=NEW)
    right = gen.generate_embeds(jnp.asarray(setup.emb), setup.mask, cfg).tokens
    assert gen.generate_embeds(jnp.asarray(left_emb), left_mask, cfg).tokens == right


def test_token_prompts_and_their_embeddings_agree(setup):
    ids = [[5, 9, 11, 3], [7, 1]]
    gen = Generator(setup.model, _Tok())
    cfg = SamplingConfig(max_new_tokens=NEW)
    emb = np.zeros((2, 4, CFG.hidden_size), np.float32)
    mask = np.zeros((2, 4), np.int32)
    for i, row in enumerate(ids):
        emb[i, :len(row)] = np.asarray(setup.model.embed(jnp.asarray([row]))[0])
        mask[i, :len(row)] = 1
    assert gen.generate_embeds(jnp.asarray(emb), mask, cfg).tokens == gen.generate_ids(ids, cfg).tokens


def test_bad_shapes_say_what_is_expected(setup):
    gen = Generator(setup.model, _Tok())
    with pytest.raises(ValueError, match=r"\[B, P, E\]"):
        gen.generate_embeds(jnp.zeros((2, 4)), np.ones((2, 4)), SamplingConfig(max_new_tokens=2))
