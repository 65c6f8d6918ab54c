"""The contract between a system and the training runtime.

The runtime owns the mesh, the optimizer, the checkpoints and the loop; a system
owns its module tree, its data view per stage and its loss.  Stages select what
trains by parameter-path regexes on the one module tree the system builds, so
stage outputs (a trained PDR, a LoRA) carry over simply by staying in the tree.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from input_pipeline.prompts import TEMPLATES
from merg_jax.core import assets
from merg_jax.models.layers import LoraConfig
from merg_jax.systems.common import eval_template, prompt_ids

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ResponsePrompts:
    """What a system's response-writing LLM reads before the response, for the real rows of a
    prompt-only batch (evaluation scores `ppl_response` after it and writes `ids` decoded into
    predictions.jsonl as the exact response prompt)."""
    llm: Any  # the CausalLM that writes the response
    ids: list[list[int]]  # prompt token ids per real row (placeholder ids at soft slots)
    embeds: jax.Array | None = None  # [B_real, P, E] with soft prompts spliced in; None: embed `ids`
    mask: np.ndarray | None = None  # [B_real, P], with `embeds`
    template: str = ""  # input_pipeline.prompts.TEMPLATES name whose target the response follows


class System:
    name = ""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # -- set-up ---------------------------------------------------------------
    def resolve(self) -> None:
        """Turns the config's system switches (ablations) into stages, in place and idempotent;
        the runtime calls it before validate()."""

    def validate(self) -> None:
        """Config checks specific to the system (raise ValueError saying what to change); reads
        the config, never changes it."""

    def build(self, mesh: jax.sharding.Mesh) -> nnx.Module:
        raise NotImplementedError

    def bases(self) -> dict[str, dict]:
        """Frozen weights the trained state depends on: name -> {path, checksum}."""
        return {}

    def data_config(self, stage: ml_collections.ConfigDict, split: str, *, train: bool
                    ) -> ml_collections.ConfigDict:
        """The input-pipeline config of a stage's data view."""
        raise NotImplementedError

    def prepare_stage(self, stage: ml_collections.ConfigDict, model: nnx.Module, workdir: str,
                      mesh: jax.sharding.Mesh) -> None:
        """Runs before a stage starts (e.g. generating inputs from an earlier stage's model)."""

    # -- step -----------------------------------------------------------------
    def loss(self, model: nnx.Module, batch: dict, key: jax.Array, stage: ml_collections.ConfigDict,
             *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, aux); aux carries `tokens` (supervised count) and other scalars."""
        raise NotImplementedError

    def loss_name(self, stage: ml_collections.ConfigDict) -> str:
        """What the stage's loss is, for metric names: "lm_nll" (a mean token NLL, so the
        trainer also reports a perplexity) or the system's own name (MERIA's "pdr_loss")."""
        return "lm_nll"

    def step_flops(self, model: nnx.Module, batch_shape: tuple[int, int], stage) -> float:
        """Analytic FLOPs of one optimizer step over a [B, L] batch (0 = unknown)."""
        return 0.0

    # -- evaluation -----------------------------------------------------------
    def eval_stage(self) -> ml_collections.ConfigDict:
        """The stage whose data view evaluation uses (the last one by default)."""
        return self.config.stages[self.config.stage_order[-1]]

    def predict(self, model: nnx.Module, batch: dict, tokenizer, *, max_new_tokens: int) -> list[dict]:
        """Generated outputs for the real examples of a prompt-only batch: one dict per
        example with generated_chain, response and predicted_emotion (text)."""
        raise NotImplementedError(f"system {self.name!r} has no predict()")

    def eval_template(self) -> str:
        """The template of the evaluated stage (its data override, else config.data.template)."""
        return eval_template(self.config, self.eval_stage())

    def response_template(self) -> str:
        """The template whose target the response is written in (the evaluated stage's by
        default; MERIA's Response LLM reads another prompt than its chain stage)."""
        return self.eval_template()

    def states_emotion(self) -> bool:
        """Whether the response target states the emotion ("Emotion: X"), i.e. whether emotion
        accuracy means anything for this system (Listing 1's bare next line does not)."""
        return bool({"emotion", "speaker_emotion"} & set(TEMPLATES[self.response_template()].target_fields))

    def response_prompts(self, model: nnx.Module, batch: dict, rows: list[dict]) -> ResponsePrompts:
        """The response LLM's inputs for the real rows of a prompt-only batch, after predict()
        returned `rows` for it.  Default: a text-only system whose response LLM reads the
        batch's own prompt tokens."""
        if "soft_mask" in batch and np.asarray(batch["soft_mask"]).any():
            raise NotImplementedError(f"system {self.name!r} splices soft prompts: it must override "
                                      "response_prompts() to return its prompt embeddings")
        return ResponsePrompts(self.llm(model), prompt_ids(batch), template=self.response_template())

    # -- outputs --------------------------------------------------------------
    def llm(self, model: nnx.Module, which: str = "response"):
        """The CausalLM that `launch/generate.py --model=WORKDIR` and export use."""
        return model


def model_path(path: str) -> str:
    """'' means the SmolLM2-135M-Instruct GGUF installed with the project."""
    if path:
        p = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(p):
            raise ValueError(f"model path {p} does not exist; set --config.model.path (or the "
                             "preset's weights flag) to a local HF directory or .gguf file")
        return p
    return assets.smollm2_gguf()


def lora_config(c: ml_collections.ConfigDict) -> LoraConfig | None:
    if not c or not c.rank:
        return None
    return LoraConfig(rank=int(c.rank), alpha=float(c.alpha), dropout=float(c.dropout),
                      targets=tuple(c.targets))


def build_llm(c: ml_collections.ConfigDict, mesh, seed: int):
    """(CausalLM, base reference) from a model config block."""
    from merg_jax.convert import hf as hf_convert
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.train.checkpoint import file_checksum

    path = model_path(c.path)
    overrides = dict(dtype=c.dtype, param_dtype=c.param_dtype, remat=c.remat)
    lora = lora_config(c.lora)
    if c.init == "random":
        from merg_jax.models.llama import LlamaConfig
        if path.endswith(".gguf"):
            from merg_jax.convert.gguf import GGUFCheckpoint
            hf_cfg = GGUFCheckpoint(path).hf_config()
        else:
            hf_cfg = hf_convert.read_config(path)
        cfg = LlamaConfig.from_hf(hf_cfg, **overrides)
        model = _random_init(cfg, lora, mesh, seed)
        return model, {"path": path, "checksum": "random-init", "init": "random"}
    model, _ = load_pretrained(path, lora=lora, mesh=mesh, with_tokenizer=False, **overrides)
    return model, {"path": path, "checksum": file_checksum(path)}


def _random_init(cfg, lora, mesh, seed):
    """Random weights created directly in their shards (no host copy of a large model)."""
    from merg_jax.core.sharding import state_shardings
    from merg_jax.models.llama import CausalLM

    abstract = nnx.eval_shape(lambda: CausalLM(cfg, lora=lora, rngs=nnx.Rngs(seed)))
    shardings = state_shardings(nnx.state(abstract), mesh)

    make = jax.jit(lambda: nnx.state(CausalLM(cfg, lora=lora, rngs=nnx.Rngs(seed))),
                   out_shardings=shardings)
    graphdef = nnx.graphdef(abstract)
    return nnx.merge(graphdef, make())
