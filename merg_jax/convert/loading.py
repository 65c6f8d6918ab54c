"""Pretrained weights as a CausalLM: an HF directory (safetensors) or a GGUF file.

A training workdir is loaded one layer up, by `merg_jax.systems.workdir.load_model`, which
rebuilds the system that trained it and calls this for the frozen base.
"""
from __future__ import annotations

import logging
import os

from merg_jax.convert import hf as hf_convert
from merg_jax.core.tokenizer import load_tokenizer
from merg_jax.models.layers import LoraConfig
from merg_jax.models.llama import CausalLM, LlamaConfig

log = logging.getLogger(__name__)


def load_pretrained(path: str, *, lora: LoraConfig | None = None, mesh=None, with_tokenizer: bool = True,
                    **overrides) -> tuple[CausalLM, object]:
    """(model, tokenizer or None) of an HF directory or .gguf file.  `overrides` are LlamaConfig
    fields (dtype, param_dtype, remat ...); `lora` adds fresh adapters."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    if path.endswith(".gguf"):
        from merg_jax.convert.gguf import GGUFCheckpoint

        ckpt = GGUFCheckpoint(path)
        cfg = LlamaConfig.from_hf(ckpt.hf_config(), **overrides)
        log.info("loading GGUF %s (%s, %d layers)", path, cfg.model_type, cfg.num_layers)
        model = hf_convert.build_model(cfg, ckpt, lora=lora, mesh=mesh, where=lambda name: path)
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        model = hf_convert.load_hf(path, lora=lora, mesh=mesh, **overrides)
    else:
        raise ValueError(f"{path} is neither a .gguf file nor an HF model directory with config.json "
                         "(a training workdir loads with merg_jax.systems.workdir.load_model)")
    tokenizer = load_tokenizer(path) if with_tokenizer else None
    return model, tokenizer
