"""KV-cache generation: one jitted prefill, then a jitted `while_loop` decode.

Prompts (token ids, or embeddings with soft prompts spliced in) are left-padded
to a shared length so the whole batch writes the same cache slot each step;
positions come from the running count of real tokens, as in HF, so padded and
unpadded prompts see the same RoPE angles.
The decode loop runs on device for up to `chunk` tokens at a time; between
chunks the host checks stop strings, so long generations pay no per-token
Python cost and stop-string runs still stop early.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.models.llama import CausalLM, KVCache, unstack_layers

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's / model's EOS

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass
class GenerationResult:
    texts: list[str]
    tokens: list[list[int]]  # generated ids per prompt, EOS excluded
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Next token from [B, V] logits; temperature/top_k/top_p are static."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        srt = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        cutoff = jnp.min(jnp.where(before < top_p, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Generator:
    """Batched text generation for a CausalLM with its tokenizer."""

    def __init__(self, model: CausalLM, tokenizer, *, chunk: int = 64, pad_multiple: int = 16,
                 unstack: bool = True):
        """`unstack`: decode with a per-layer copy of the layer weights (no per-step
        slice copies inside the layer scan; costs one extra copy of the weights)."""
        self.graphdef, self.state = nnx.split(model)
        self.layers = unstack_layers(model) if unstack else None
        self.config = model.config
        self.tokenizer = tokenizer
        self.chunk = chunk
        self.pad_multiple = pad_multiple
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- compiled pieces ---------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
    def _prefill(self, state, layers, inputs, mask, cache, key, temperature, top_k, top_p):
        model = nnx.merge(self.graphdef, state)
        if inputs.ndim == 3:  # embeddings [B, P, E] (soft prompts spliced in)
            out = model(inputs_embeds=inputs, attention_mask=mask, cache=cache, logits="last", layers=layers)
        else:
            out = model(inputs, attention_mask=mask, cache=cache, logits="last", layers=layers)
        return sample_logits(out.logits[:, -1], key, temperature, top_k, top_p), out.cache

    @functools.partial(jax.jit, static_argnums=(0, 10, 11, 12), donate_argnums=(3, 4, 5))
    def _decode(self, state, layers, cache, buf, done, step, limit, key, eos, temperature, top_k, top_p):
        model = nnx.merge(self.graphdef, state)

        def cond(c):
            _, _, done, step = c
            return (step < limit) & ~jnp.all(done)

        def body(c):
            cache, buf, done, step = c
            prev = jax.lax.dynamic_index_in_dim(buf, step - 1, axis=1, keepdims=True)
            out = model(prev, cache=cache, logits="last", layers=layers)
            nxt = sample_logits(out.logits[:, -1], jax.random.fold_in(key, step), temperature, top_k, top_p)
            nxt = jnp.where(done, self.pad_id, nxt)
            buf = jax.lax.dynamic_update_index_in_dim(buf, nxt[:, None], step, axis=1)
            done = done | jnp.isin(nxt, eos)
            return out.cache, buf, done, step + 1

        cache, buf, done, step = jax.lax.while_loop(cond, body, (cache, buf, done, step))
        return cache, buf, done, step

    def __hash__(self):  # jit treats `self` as static: identity semantics
        return id(self)

    def __eq__(self, other):
        return self is other

    # -- host side ---------------------------------------------------------
    def encode(self, prompts: Sequence[str], chat: bool = False) -> list[list[int]]:
        out = []
        for p in prompts:
            if chat:
                ids = self.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                         add_generation_prompt=True, tokenize=True,
                                                         return_dict=False)
            else:
                ids = self.tokenizer(p)["input_ids"]
            if not ids:
                raise ValueError(f"prompt {p!r} encodes to no tokens")
            out.append(list(ids))
        return out

    def _eos_ids(self, cfg: SamplingConfig) -> tuple[int, ...]:
        if cfg.eos_token_ids is not None:
            return tuple(cfg.eos_token_ids)
        ids = set()
        for src in (self.tokenizer.eos_token_id, self.config.eos_token_id):
            if src is None:
                continue
            ids.update(src if isinstance(src, (tuple, list)) else [src])
        return tuple(sorted(ids)) or (-1,)

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig) -> GenerationResult:
        b = len(prompt_ids)
        p = _round_up(max(len(x) for x in prompt_ids), self.pad_multiple)
        ids = np.full((b, p), self.pad_id, np.int32)
        mask = np.zeros((b, p), np.int32)
        for i, x in enumerate(prompt_ids):  # left padding
            ids[i, p - len(x):] = x
            mask[i, p - len(x):] = 1
        return self._generate(jnp.asarray(ids), mask, cfg)

    def generate_embeds(self, inputs_embeds: jax.Array, attention_mask, cfg: SamplingConfig) -> GenerationResult:
        """Continues prompts given as embeddings [B, P, E] (e.g. soft prompts spliced into the
        token embeddings) with their mask [B, P].  Padding may sit on either side: the cache
        keeps it masked out and each row's positions count its real tokens, as in training."""
        mask = np.asarray(attention_mask, np.int32)
        if inputs_embeds.ndim != 3 or mask.shape != tuple(inputs_embeds.shape[:2]):
            raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} and attention_mask {mask.shape} "
                             "must be [B, P, E] and [B, P]")
        # Real tokens to the end of each row, order kept: "last" logits then read a real token.
        order = np.argsort(mask, axis=1, kind="stable")
        inputs = jnp.take_along_axis(jnp.asarray(inputs_embeds), jnp.asarray(order)[..., None], axis=1)
        return self._generate(inputs, np.take_along_axis(mask, order, axis=1), cfg)

    def _generate(self, inputs: jax.Array, mask: np.ndarray, cfg: SamplingConfig) -> GenerationResult:
        b, p = mask.shape
        cache = KVCache.init(self.config, b, _round_up(p + cfg.max_new_tokens, self.pad_multiple),
                             per_layer=self.layers is not None)
        key = jax.random.PRNGKey(cfg.seed)
        sampling = (float(cfg.temperature), int(cfg.top_k), float(cfg.top_p))
        eos = jnp.asarray(self._eos_ids(cfg), jnp.int32)

        t0 = time.perf_counter()
        first, cache = self._prefill(self.state, self.layers, inputs, jnp.asarray(mask), cache,
                                     jax.random.fold_in(key, 0), *sampling)
        first = jax.block_until_ready(first)
        t1 = time.perf_counter()
        buf = jnp.zeros((b, cfg.max_new_tokens), jnp.int32).at[:, 0].set(first)
        done = jnp.isin(first, eos) | jnp.asarray(mask.sum(axis=1) == 0)  # an empty row generates nothing
        step = jnp.asarray(1, jnp.int32)
        stop_hit = np.zeros(b, bool)
        while True:
            chunk_end = cfg.max_new_tokens if not cfg.stop_strings else int(step) + self.chunk
            limit = jnp.asarray(min(chunk_end, cfg.max_new_tokens), jnp.int32)
            cache, buf, done, step = self._decode(self.state, self.layers, cache, buf, done, step, limit, key, eos,
                                                  *sampling)
            if int(step) >= cfg.max_new_tokens or bool(jnp.all(done)):
                break
            # stop strings: mark rows whose text already contains one as finished
            host = np.asarray(buf)[:, : int(step)]
            for i in range(b):
                if not stop_hit[i] and self._stop_index(self.tokenizer.decode(host[i]), cfg) is not None:
                    stop_hit[i] = True
            if stop_hit.all():
                break
            done = done | jnp.asarray(stop_hit)
        jax.block_until_ready(buf)
        t2 = time.perf_counter()

        host, eos_set = np.asarray(buf)[:, : int(step)], set(self._eos_ids(cfg))
        tokens, texts = [], []
        for i in range(b):
            row = []
            for t in host[i].tolist():
                if t in eos_set:
                    break
                row.append(t)
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            cut = self._stop_index(text, cfg)
            tokens.append(row)
            texts.append(text if cut is None else text[:cut])
        new = sum(len(r) for r in tokens)
        return GenerationResult(texts, tokens, int(mask.sum()), new, t1 - t0, t2 - t1)

    @staticmethod
    def _stop_index(text: str, cfg: SamplingConfig) -> int | None:
        hits = [text.find(s) for s in cfg.stop_strings if s and s in text]
        return min(hits) if hits else None

    def generate(self, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig(),
                 chat: bool = False) -> GenerationResult:
        return self.generate_ids(self.encode(prompts, chat), cfg)
