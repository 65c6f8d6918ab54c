"""Building blocks shared by the decoder families: linear with LoRA, RMSNorm, embedding.

Every module takes an optional `stack` size: with it, parameters get a leading
`layers` axis so that a whole stack of transformer blocks is one module whose
state can be scanned over (flat compile time whatever the depth).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class LoRAParam(nnx.Param):
    """Trainable low-rank adapter weights; the filter that selects what the optimizer sees."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which linear layers get adapters, and their hyperparameters (PEFT semantics)."""
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # Regexes matched (re.fullmatch) against a linear layer's name, e.g. "q_proj".
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, name: str) -> bool:
        return any(re.fullmatch(p, name) for p in self.targets)

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"lora rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")


def _param(value: jax.Array, names: Sequence[str | None], kind=nnx.Param) -> nnx.Param:
    return kind(value, out_sharding=tuple(names), eager_sharding=False)


def _stacked(stack: int | None, shape: tuple[int, ...], names: Sequence[str | None]):
    if stack is None:
        return shape, tuple(names)
    return (stack, *shape), ("layers", *names)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., i] @ w [i, o]; in a 16-bit dtype accumulated in float32, forward and backward.

    Same numerics as a bf16 matmul in PyTorch.  The custom VJP keeps the backward
    matmuls in bf16 x bf16 -> f32 too: autodiff of the forward would transpose into
    f32 x bf16 dots, and XLA:CPU runs both that and a plain bf16-result dot on a slow
    path (~4x slower than accumulating in float32 with AVX512-BF16).
    """
    if x.dtype == jnp.float32:
        return jnp.einsum("...i,io->...o", x, w)
    return _low_precision_matmul(x, w)


@jax.custom_vjp
def _low_precision_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _lpm_fwd(x, w):
    return _low_precision_matmul(x, w), (x, w)


def _lpm_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.einsum("...o,io->...i", g, w, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw


_low_precision_matmul.defvjp(_lpm_fwd, _lpm_bwd)


class Linear(nnx.Module):
    """y = x W (+ b) (+ scale · dropout(x) A B) with W stored [in, out]."""

    def __init__(self, in_features: int, out_features: int, *, name: str,
                 names: tuple[str | None, str | None], use_bias: bool = False,
                 lora: LoraConfig | None = None, stack: int | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.name = name
        self.dtype = dtype
        shape, axes = _stacked(stack, (in_features, out_features), names)
        std = 1.0 / math.sqrt(in_features)
        self.kernel = _param(jax.random.normal(rngs.params(), shape, param_dtype) * std, axes)
        bshape, baxes = _stacked(stack, (out_features,), names[1:])
        self.bias = _param(jnp.zeros(bshape, param_dtype), baxes) if use_bias else None
        self.lora_scale = 0.0
        self.lora_dropout = 0.0
        self.merged = False
        if lora is None or not lora.matches(name):
            self.lora_a = self.lora_b = None
        else:
            ashape, aaxes = _stacked(stack, (in_features, lora.rank), (names[0], "lora_rank"))
            bshape, baxes = _stacked(stack, (lora.rank, out_features), ("lora_rank", names[1]))
            bound = 1.0 / math.sqrt(in_features)  # PEFT's kaiming-uniform(a=sqrt 5) bound
            self.lora_a = _param(jax.random.uniform(rngs.params(), ashape, param_dtype, -bound, bound),
                                 aaxes, LoRAParam)
            self.lora_b = _param(jnp.zeros(bshape, param_dtype), baxes, LoRAParam)
            self.lora_scale = lora.scale
            self.lora_dropout = lora.dropout

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        y = _matmul(x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None and not self.merged:
            h = x
            if self.lora_dropout > 0.0 and dropout_key is not None:
                keep = jax.random.bernoulli(dropout_key, 1.0 - self.lora_dropout, x.shape)
                h = jnp.where(keep, x / (1.0 - self.lora_dropout), 0.0).astype(self.dtype)
            h = _matmul(h, self.lora_a[...].astype(self.dtype))
            y = y + self.lora_scale * _matmul(h, self.lora_b[...].astype(self.dtype))
        return y

    def lora_delta(self) -> jax.Array:
        """scale · A B in the kernel's layout (with the stack axis when stacked)."""
        a = self.lora_a[...].astype(jnp.float32)
        b = self.lora_b[...].astype(jnp.float32)
        return self.lora_scale * jnp.einsum("...ir,...ro->...io", a, b)


class RMSNorm(nnx.Module):
    """RMS normalisation computed in float32, weight applied in the compute dtype (as HF)."""

    def __init__(self, dim: int, *, eps: float, stack: int | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        shape, axes = _stacked(stack, (dim,), ("norm",))
        self.scale = _param(jnp.ones(shape, param_dtype), axes)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


class Embed(nnx.Module):
    def __init__(self, vocab: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.embedding = _param(jax.random.normal(rngs.params(), (vocab, dim), param_dtype) * 0.02,
                                ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection: logits = x Eᵀ, accumulated in float32."""
        return jnp.einsum("...e,ve->...v", x, self.embedding[...].astype(x.dtype),
                          preferred_element_type=jnp.float32)


def splice(embeds: jax.Array, positions: jax.Array, mask: jax.Array, values: jax.Array) -> jax.Array:
    """Writes values [B, N, E] at token positions [B, N] where mask [B, N] is set (soft prompts
    into token embeddings); masked-off slots are dropped, not written."""
    b = jnp.arange(embeds.shape[0])[:, None]
    pos = jnp.where(mask > 0, positions, embeds.shape[1])  # out of range -> dropped
    return embeds.at[b, pos].set(values.astype(embeds.dtype), mode="drop")
