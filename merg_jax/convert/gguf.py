"""GGUF files (llama.cpp) -> HF-named float tensors and an HF-style config.

Quantized tensors are dequantized with the `gguf` package.  llama.cpp stores
Llama-architecture q/k projections permuted for its interleaved RoPE; we undo
that so the weights fit HF's rotate-half layout (getting this wrong loads fine
and generates garbage).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Iterator, Mapping

import numpy as np

log = logging.getLogger(__name__)

_ARCH_TO_MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (pairs interleaved -> halves)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint(Mapping[str, np.ndarray]):
    """HF-named, dequantized float32 tensors of a GGUF file (dequantized on first access)."""

    def __init__(self, path: str):
        import gguf  # heavy import, only when a GGUF is actually loaded

        if not os.path.exists(path):
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        self.path = path
        try:
            self._reader = gguf.GGUFReader(path)
        except Exception as err:
            raise ValueError(f"{path}: not a readable GGUF file ({err})") from err
        self._dequantize = gguf.quants.dequantize
        self.fields = {}
        for key, field in self._reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in ("tokens", "scores", "token_type", "merges"):
                continue
            try:
                self.fields[key] = field.contents()
            except Exception:  # noqa: BLE001 - exotic metadata types are not needed
                pass
        self.arch = self.fields.get("general.architecture", "")
        if self.arch not in _ARCH_TO_MODEL_TYPE:
            raise ValueError(f"{path}: unsupported GGUF architecture {self.arch!r}; "
                             f"supported: {', '.join(_ARCH_TO_MODEL_TYPE)}")
        self._tensors = {}
        for t in self._reader.tensors:
            name = self._hf_name(t.name)
            if name is None:
                log.warning("%s: ignoring unknown tensor %s", path, t.name)
                continue
            self._tensors[name] = t
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _hf_name(gguf_name: str) -> str | None:
        if gguf_name in _GLOBAL:
            return _GLOBAL[gguf_name]
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
        if not m or m.group(2) not in _BLOCK:
            return None
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"

    def hf_config(self) -> dict:
        f, a = self.fields, self.arch
        n_head = int(f[f"{a}.attention.head_count"])
        hidden = int(f[f"{a}.embedding_length"])
        vocab = f.get(f"{a}.vocab_size") or self._tensors["model.embed_tokens.weight"].shape[-1]
        cfg = {
            "model_type": _ARCH_TO_MODEL_TYPE[a], "vocab_size": int(vocab), "hidden_size": hidden,
            "intermediate_size": int(f[f"{a}.feed_forward_length"]),
            "num_hidden_layers": int(f[f"{a}.block_count"]), "num_attention_heads": n_head,
            "num_key_value_heads": int(f.get(f"{a}.attention.head_count_kv", n_head)),
            "head_dim": int(f.get(f"{a}.attention.key_length", hidden // n_head)),
            "rms_norm_eps": float(f.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(f.get(f"{a}.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(f.get(f"{a}.context_length", 4096)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": f.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": f.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": f.get("tokenizer.ggml.padding_token_id"),
        }
        if a == "qwen2":
            cfg["attention_bias"] = True
        return cfg

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cache:
            return self._cache[name]
        if name not in self._tensors:
            raise KeyError(f"tensor {name!r} is missing from {self.path}")
        t = self._tensors[name]
        arr = np.asarray(self._dequantize(t.data, t.tensor_type), dtype=np.float32)
        if self.arch == "llama" and re.search(r"self_attn\.(q|k)_proj\.weight$", name):
            heads = self.fields["llama.attention.head_count"]
            if ".k_proj" in name:
                heads = self.fields.get("llama.attention.head_count_kv", heads)
            arr = _unpermute(arr, int(heads))
        self._cache[name] = arr
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)
