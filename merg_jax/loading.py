"""One entry point for every place a model can come from: HF directory, GGUF file or training workdir."""
from __future__ import annotations

import logging
import os

from merg_jax.convert import hf as hf_convert
from merg_jax.models.layers import LoraConfig
from merg_jax.models.llama import CausalLM, LlamaConfig
from merg_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def load_model(path: str, *, lora: LoraConfig | None = None, mesh=None, with_tokenizer: bool = True,
               which: str = "response", **overrides) -> tuple[CausalLM, object]:
    """Returns (model, tokenizer).  `overrides` are LlamaConfig fields (dtype, remat ...).

    A training workdir (config.json with a `system` key, checkpoints/) loads its newest good
    checkpoint through `merg_jax.train.restore.load_workdir`: the LLM `which` names (systems with
    several LLMs, e.g. MERIA's "mcoe" and "response"), its trained LoRA adapters unmerged.  Its
    adapters come from its config, so `lora` must be None, and only dtype / param_dtype / remat
    may be overridden.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    from merg_jax.train.restore import is_workdir
    if is_workdir(path):
        if lora is not None:
            raise ValueError(f"{path} is a training workdir, which defines its own adapters (its config's "
                             "model.lora); load it with lora=None")
        from merg_jax.train.restore import load_workdir
        model, tokenizer, _ = load_workdir(path, which=which, mesh=mesh, with_tokenizer=with_tokenizer,
                                           overrides=overrides)
        return model, tokenizer
    if path.endswith(".gguf"):
        from merg_jax.convert.gguf import GGUFCheckpoint

        ckpt = GGUFCheckpoint(path)
        cfg = LlamaConfig.from_hf(ckpt.hf_config(), **overrides)
        log.info("loading GGUF %s (%s, %d layers)", path, cfg.model_type, cfg.num_layers)
        model = hf_convert.build_model(cfg, ckpt, lora=lora, mesh=mesh, where=lambda name: path)
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        model = hf_convert.load_hf(path, lora=lora, mesh=mesh, **overrides)
    else:
        raise ValueError(f"{path} is neither a .gguf file, an HF model directory with config.json, nor a "
                         "training workdir")
    tokenizer = load_tokenizer(path) if with_tokenizer else None
    return model, tokenizer
