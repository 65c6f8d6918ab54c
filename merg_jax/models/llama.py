"""Decoder-only transformer covering Llama-3 / Vicuna, Mistral, Qwen2 and Qwen3 by config.

Layout and numerics follow Hugging Face's PyTorch models so that weights load
unchanged and logits match: RoPE in rotate-half layout, RMSNorm in float32,
softmax in float32.  The layer stack is one module with a leading `layers`
axis, run with `lax.scan` (optionally rematerialised), and the forward pass
takes embeddings, masks and positions so callers can prepend soft prompts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from merg_jax.core.sharding import constrain
from merg_jax.models.layers import Embed, Linear, LoraConfig, RMSNorm

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # (("rope_type", "llama3"), ("factor", 8.0), ...) — a tuple so the config stays hashable.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    qkv_bias: bool = False  # Qwen2
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral
    max_position_embeddings: int = 4096
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots
    scan_unroll: int = 1

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported architecture {self.model_type!r}; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {REMAT_POLICIES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16", "float64"):
                raise ValueError(f"{name}={getattr(self, name)!r}; use float32, bfloat16 or float16")
        rope_type = dict(self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "llama3", "linear"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported "
                             "(supported: default, linear, llama3)")

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "LlamaConfig":
        """From an HF `config.json` dict; unsupported architectures fail with a clear error."""
        model_type = hf.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = hf.get("architectures")
            raise ValueError(f"unsupported architecture model_type={model_type!r} "
                             f"(architectures={archs}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
        theta = hf.get("rope_theta")
        if isinstance(scaling, dict):
            theta = scaling.get("rope_theta", theta)
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            scaling.setdefault("rope_type", scaling.pop("type", "default"))
            scaling = None if scaling.get("rope_type") == "default" else tuple(sorted(scaling.items()))
        eos = hf.get("eos_token_id")
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", model_type == "mistral") else None
        if sliding and model_type in ("qwen2", "qwen3") and hf.get("max_window_layers", 0) < hf["num_hidden_layers"]:
            raise ValueError(f"{model_type} with use_sliding_window=True windows only layers >= max_window_layers="
                             f"{hf.get('max_window_layers')}; per-layer windows are not supported "
                             "(set use_sliding_window=false, as released Qwen checkpoints do)")
        kw = dict(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or 0, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta or 10000.0), rope_scaling=scaling,
            qkv_bias=bool(hf.get("attention_bias", False)) or model_type == "qwen2",
            o_bias=bool(hf.get("attention_bias", False)) and model_type != "qwen2",
            mlp_bias=bool(hf.get("mlp_bias", False)), qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=sliding, max_position_embeddings=hf.get("max_position_embeddings", 4096),
            model_type=model_type, bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"))
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self, torch_dtype: str = "float32") -> dict:
        """The HF `config.json` dict for this architecture."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]
        out = dict(
            architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size,
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.dim_head,
            rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            tie_word_embeddings=self.tie_word_embeddings, hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id, pad_token_id=self.pad_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            torch_dtype=torch_dtype, dtype=torch_dtype)
        if self.model_type in ("llama", "mistral"):
            out.update(attention_bias=self.o_bias, mlp_bias=self.mlp_bias)
        if self.model_type == "qwen3":
            out.update(attention_bias=self.qkv_bias)
        if self.model_type in ("mistral", "qwen2", "qwen3"):
            out.update(sliding_window=self.sliding_window,
                       use_sliding_window=self.sliding_window is not None)
        return out


# --------------------------------------------------------------------------- RoPE

def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies in float32, with Llama-3 or linear scaling applied."""
    dim = cfg.dim_head
    inv = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))))
    inv = inv.astype(np.float32)
    scaling = dict(cfg.rope_scaling or {})
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv = inv / np.float32(scaling["factor"])
    elif kind == "llama3":
        factor = np.float32(scaling["factor"])
        low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
        old_len = np.float32(scaling["original_max_position_embeddings"])
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_cos_sin(inv_freq: np.ndarray, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # rotate-half layout
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, S, heads, D]; cos/sin: [B, S, D]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------- blocks

class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, lora: LoraConfig | None, stack: int, rngs: nnx.Rngs):
        e, d, h, k = cfg.hidden_size, cfg.dim_head, cfg.num_heads, cfg.num_kv_heads
        common = dict(lora=lora, stack=stack, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype, rngs=rngs)
        self.q_proj = Linear(e, h * d, name="q_proj", names=("embed", "heads"), use_bias=cfg.qkv_bias, **common)
        self.k_proj = Linear(e, k * d, name="k_proj", names=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **common)
        self.v_proj = Linear(e, k * d, name="v_proj", names=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **common)
        self.o_proj = Linear(h * d, e, name="o_proj", names=("heads", "embed"), use_bias=cfg.o_bias, **common)
        norm = dict(eps=cfg.rms_norm_eps, stack=stack, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
        self.q_norm = RMSNorm(d, **norm) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, **norm) if cfg.qk_norm else None
        self.num_heads, self.num_kv_heads, self.head_dim = h, k, d

    def __call__(self, x, cos, sin, bias, kv_cache, write_index, keys):
        b, s, _ = x.shape
        q = self.q_proj(x, keys[0]).reshape(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x, keys[1]).reshape(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, keys[2]).reshape(b, s, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        new_cache = None
        if kv_cache is not None:
            ck, cv = kv_cache
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_index, 0, 0))
            new_cache = (k, v)
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim")).astype(q.dtype)
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim")).astype(q.dtype)
        groups = self.num_heads // self.num_kv_heads
        qg = q.reshape(b, s, self.num_kv_heads, groups, self.head_dim)
        scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
        scores = scores * np.float32(self.head_dim ** -0.5) + bias[:, None, None, :, :]
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)
        out = out.reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out, keys[3]), new_cache


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, lora: LoraConfig | None, stack: int, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        common = dict(lora=lora, stack=stack, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                      use_bias=cfg.mlp_bias, rngs=rngs)
        self.gate_proj = Linear(e, m, name="gate_proj", names=("embed", "mlp"), **common)
        self.up_proj = Linear(e, m, name="up_proj", names=("embed", "mlp"), **common)
        self.down_proj = Linear(m, e, name="down_proj", names=("mlp", "embed"), **common)

    def __call__(self, x, keys):
        h = jax.nn.silu(self.gate_proj(x, keys[0])) * self.up_proj(x, keys[1])
        h = constrain(h, ("batch", "length", "mlp"))
        return self.down_proj(h, keys[2])


class Block(nnx.Module):
    """One pre-norm decoder layer; built with `stack=L` it holds all L layers' weights."""

    def __init__(self, cfg: LlamaConfig, *, lora: LoraConfig | None, stack: int, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, stack=stack, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = Attention(cfg, lora=lora, stack=stack, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = MLP(cfg, lora=lora, stack=stack, rngs=rngs)

    def __call__(self, x, cos, sin, bias, kv_cache, write_index, key):
        keys = [None] * 7 if key is None else list(jax.random.split(key, 7))
        h, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, bias, kv_cache, write_index, keys[:4])
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x), keys[4:])
        return constrain(x, ("batch", "length", "act_embed")), new_cache


# --------------------------------------------------------------------------- cache and model

@struct.dataclass
class KVCache:
    """Keys/values for every layer plus which slots hold real tokens.

    Slots are written left to right for the whole batch at once (`index`);
    `next_pos` is each row's next RoPE position, so left-padded rows keep
    HF-compatible positions.
    """
    k: jax.Array | tuple[jax.Array, ...]  # [L, B, T, kv_heads, D], or L arrays [B, T, kv_heads, D]
    v: jax.Array | tuple[jax.Array, ...]
    mask: jax.Array  # [B, T] int32, 1 where a real token was written
    index: jax.Array  # [] int32, next slot to write
    next_pos: jax.Array  # [B] int32

    @classmethod
    def init(cls, cfg: LlamaConfig, batch: int, max_len: int, dtype=None, per_layer: bool = False) -> "KVCache":
        """`per_layer`: one array per layer, for the unrolled decode path (updated in place)."""
        shape = (batch, max_len, cfg.num_kv_heads, cfg.dim_head)
        dtype = dtype or cfg.jnp_dtype
        if per_layer:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        else:
            k = v = jnp.zeros((cfg.num_layers, *shape), dtype)
        return cls(k=k, v=v,
                   mask=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32),
                   next_pos=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1] if isinstance(self.k, tuple) else self.k.shape[2]


class ModelOutput(NamedTuple):
    logits: jax.Array | None  # float32
    hidden: jax.Array  # final-normed hidden states
    cache: KVCache | None


class CausalLM(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, lora: LoraConfig | None = None, rngs: nnx.Rngs):
        self.config = cfg
        self.lora_config = lora
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                                  param_dtype=cfg.jnp_param_dtype, rngs=rngs)
        self.layers = Block(cfg, lora=lora, stack=cfg.num_layers, rngs=rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=cfg.jnp_dtype,
                            param_dtype=cfg.jnp_param_dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, name="lm_head", names=("embed", "vocab"), lora=lora,
            dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype, rngs=rngs)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens(input_ids)

    def __call__(self, input_ids: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 cache: KVCache | None = None, dropout_key: jax.Array | None = None,
                 logits: str = "all", layers: Sequence[nnx.State] | None = None) -> ModelOutput:
        """Runs the decoder.

        Either `input_ids` [B, S] or `inputs_embeds` [B, S, E] (soft prompts
        already spliced in).  `attention_mask` [B, S] marks real tokens;
        `positions` [B, S] default to the running count of real tokens, which
        is what HF uses for left-padded batches.  `logits`: "all", "last" or "none".
        `layers`: per-layer states from `unstack_layers`; when given, layers run
        in a Python loop instead of the scan.  Decoding uses this: inside a scan
        every step would copy each layer's weight slice before its matmul.
        """
        cfg = self.config
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
        b, s = x.shape[:2]
        mask = jnp.ones((b, s), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        start = jnp.zeros((b,), jnp.int32) if cache is None else cache.next_pos
        if positions is None:
            positions = start[:, None] + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        cos, sin = rope_cos_sin(rope_inv_freq(cfg), positions)
        x = constrain(x, ("batch", "length", "act_embed"))

        if cache is None:
            kv_valid, q_slot, t = mask, jnp.arange(s), s
            write_index = None
        else:
            write_index = cache.index
            kv_valid = jax.lax.dynamic_update_slice(cache.mask, mask, (0, write_index))
            q_slot, t = write_index + jnp.arange(s), cache.max_len
        k_slot = jnp.arange(t)
        allowed = (k_slot[None, :] <= q_slot[:, None])[None] & (kv_valid[:, None, :] > 0)
        if cfg.sliding_window is not None:
            allowed &= (q_slot[:, None] - k_slot[None, :] < cfg.sliding_window)[None]
        bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)

        graphdef, layer_state = nnx.split(self.layers)
        layer_keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.num_layers)
        kv = None if cache is None else (cache.k, cache.v)

        def body(h, xs):
            state, layer_kv, key = xs
            h, new_kv = nnx.merge(graphdef, state)(h, cos, sin, bias, layer_kv, write_index, key)
            return h, new_kv

        if cfg.remat == "full":
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        elif cfg.remat == "dots":
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        if layers is None:
            if kv is not None and isinstance(kv[0], tuple):
                raise ValueError("a per-layer KV cache needs `layers=` (unstack_layers); "
                                 "use KVCache.init(..., per_layer=False) for the scanned stack")
            x, new_kv = jax.lax.scan(body, x, (layer_state, kv, layer_keys), unroll=cfg.scan_unroll)
        else:
            if kv is not None and not isinstance(kv[0], tuple):
                raise ValueError("`layers=` needs a per-layer cache: KVCache.init(..., per_layer=True)")
            ks, vs = [], []
            for i, state in enumerate(layers):
                key = None if layer_keys is None else layer_keys[i]
                x, layer_kv = body(x, (state, None if kv is None else (kv[0][i], kv[1][i]), key))
                if kv is not None:
                    ks.append(layer_kv[0])
                    vs.append(layer_kv[1])
            new_kv = (tuple(ks), tuple(vs)) if kv is not None else None

        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=new_kv[0], v=new_kv[1], mask=kv_valid, index=cache.index + s,
                                next_pos=cache.next_pos + mask.sum(axis=1))
        x = self.norm(x)
        out_logits = None
        if logits != "none":
            h = x[:, -1:] if logits == "last" else x
            if self.lm_head is None:
                out_logits = self.embed_tokens.attend(h)
            else:
                out_logits = self.lm_head(h).astype(jnp.float32)
            out_logits = constrain(out_logits, ("batch", "length", "vocab"))
        return ModelOutput(out_logits, x, new_cache)


def unstack_layers(model: CausalLM) -> list[nnx.State]:
    """The stacked layer state split into one state per layer (for `layers=`)."""
    _, state = nnx.split(model.layers)
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(model.config.num_layers)]
