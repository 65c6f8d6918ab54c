"""Tiny random Hugging Face decoders (PyTorch) used as references by the model tests.

Weights are re-drawn with O(1) scale (norm weights around 1, non-zero biases)
so that logits are O(1) and a 1e-4 tolerance means something; HF's default
init (std 0.02, unit norms, zero biases) would hide layout mistakes.
"""
from __future__ import annotations

import numpy as np

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              rms_norm_eps=1e-6, max_position_embeddings=256)

# family -> (config class name, model class name, config overrides)
FAMILIES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(num_attention_heads=4, num_key_value_heads=2, rope_scaling=LLAMA3_ROPE,
                    rope_theta=500000.0)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(num_attention_heads=4, num_key_value_heads=4, sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)),
}


def randomize(model, seed: int = 0) -> None:
    """O(1) weights: kaiming-ish matrices, unit-ish embeddings, norms 1±0.3, biases ±0.3."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[1]))


def make_hf(family: str, seed: int = 0, attn: str = "eager", **overrides):
    """A randomly initialised tiny HF causal LM of `family` (eval mode, fp32)."""
    import torch
    import transformers

    cfg_name, model_name, kw = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_name)(**{**COMMON, **kw, **overrides})
    cfg._attn_implementation = attn
    model = getattr(transformers, model_name)(cfg).eval()
    randomize(model, seed)
    return model


def save_hf_model(model, directory: str, max_shard_size: str | None = None) -> str:
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, safe_serialization=True, **kw)
    return directory


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """Positions HF's `generate` uses for a left-padded batch (running count of real tokens)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def hf_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    kw = {}
    if mask is not None:
        kw = dict(attention_mask=torch.tensor(mask), position_ids=torch.tensor(hf_positions(mask)))
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), **kw).logits.float().numpy()


def left_padded_batch(vocab: int, seq: int, pads: tuple[int, ...], seed: int = 0):
    """(ids, mask) with row r left-padded by pads[r] tokens (pad id 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(len(pads), seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for r, p in enumerate(pads):
        ids[r, :p] = 0
        mask[r, :p] = 0
    return ids, mask


def masked_max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    """Max |a - b| over real (unpadded) positions."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if mask is not None:
        d = d[np.asarray(mask, bool)]
    return float(d.max())


def randomize_lora(model, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero adapters (B is zero at init, which would make every LoRA test vacuous)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from merg_jax.models.layers import LoRAParam

    state = nnx.state(model, LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)  # numpy: no per-shape XLA compiles
    new = [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    nnx.update(model, jax.tree.unflatten(treedef, new))
