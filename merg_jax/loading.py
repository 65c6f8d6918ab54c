"""One entry point for every place a model can come from: HF directory or GGUF file."""
from __future__ import annotations

import logging
import os

from merg_jax.convert import hf as hf_convert
from merg_jax.models.layers import LoraConfig
from merg_jax.models.llama import CausalLM, LlamaConfig
from merg_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def load_model(path: str, *, lora: LoraConfig | None = None, mesh=None, with_tokenizer: bool = True,
               **overrides) -> tuple[CausalLM, object]:
    """Returns (model, tokenizer).  `overrides` are LlamaConfig fields (dtype, remat ...)."""
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
        raise ValueError(f"{path} is neither a .gguf file nor an HF model directory with config.json")
    tokenizer = load_tokenizer(path) if with_tokenizer else None
    return model, tokenizer
