"""MERIA inference: the M-CoE chain from soft prompts, then the Response LLM's answer.

Decoding goes through the one decoder, `merg_jax.generation.Generator`: the soft
prompts are spliced into the token embeddings by `merg_jax.models.meria.soft_embeds`
(jitted here) and the Generator continues them (`generate_embeds`).

Stage 3 of the MERIA paper trains the Response LLM on the chains the trained M-CoE LLM
writes; `prepare_generated_data` writes them under WORKDIR/stage_outputs/:
  mcoe_{split}.jsonl   one {example_id: text} object per line (skipped when present: resume)
  data/                the original shards with `generated_mcoe` set on every record that
                       has a generation + manifest.json, written last (marks it complete)
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from input_pipeline import extract_io, records
from input_pipeline.pipeline import make_iterator
from input_pipeline.prompts import PromptBuilder
from merg_jax.core import io
from merg_jax.core.assets import smollm2_gguf
from merg_jax.core.console import Progress
from merg_jax.core.tokenizer import load_tokenizer
from merg_jax.generation import Generator, SamplingConfig
from merg_jax.models import meria as meria_model
from merg_jax.systems import common
from merg_jax.train.data import split_size

log = logging.getLogger(__name__)

GENERATED_DIR = "stage_outputs"


def agreement_temperature(config: ml_collections.ConfigDict) -> float:
    """config.fusion.agreement_temperature (ours; 0 = the paper's plain mean over utterances;
    configs saved before the option existed have no fusion block)."""
    return float((config.get("fusion") or {}).get("agreement_temperature", 0.0))


class SoftPromptDecoder:
    """Greedy continuation of soft-prompt batches by one LLM of a MERIA model tree."""

    def __init__(self, model: meria_model.MeriaModel, llm_name: str, tokenizer_path: str, *,
                 max_utterances: int, use_ugf: bool, agreement_temperature: float = 0.0):
        self.model, self.llm_name = model, llm_name
        self.tokenizer = load_tokenizer(tokenizer_path or smollm2_gguf())
        llm = getattr(model, llm_name)
        self.generator = Generator(llm, self.tokenizer)
        graphdef, state = nnx.split(model)

        @jax.jit
        def embeds(state, batch):
            m = nnx.merge(graphdef, state)
            return meria_model.soft_embeds(m, getattr(m, llm_name), batch, max_utterances=max_utterances,
                                           use_ugf=use_ugf, agreement_temperature=agreement_temperature)
        self._embeds = lambda batch: embeds(state, batch)

    def decode(self, batch: dict, max_new_tokens: int) -> list[str]:
        """One text per row of `batch` (padding rows included), EOS cut, whitespace stripped."""
        dev = {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
        if max_new_tokens <= 0:
            return [""] * len(batch["input_ids"])
        out = self.generator.generate_embeds(self._embeds(dev), batch["attention_mask"],
                                             SamplingConfig(max_new_tokens=int(max_new_tokens)))
        return [t.strip() for t in out.texts]


def generate_split(decoder: SoftPromptDecoder, view: ml_collections.ConfigDict, *, max_new_tokens: int,
                   limit: int = 0) -> dict[str, str]:
    """{example_id: M-CoE text} for every example of the prompt-only `view` (or the first `limit`)."""
    texts: dict[str, str] = {}
    total = split_size(view.data_dir, view.split)
    total = min(total, limit) if limit else total
    bar = Progress(f"M-CoE chains {view.split}", total, every=max(int(view.global_batch_size), total // 20 or 1),
                   unit="example", enabled=jax.process_index() == 0)
    for batch in make_iterator(view):
        rows = decoder.decode(batch, max_new_tokens)
        for ex_id, keep, text in zip(batch["example_id"], batch["example_mask"], rows):
            if keep and ex_id:
                texts[str(ex_id)] = text
        bar.update(min(len(texts), total) if total else 0)
        if limit and len(texts) >= limit:
            break
    bar.close()
    log.info("M-CoE generation (%s): %d examples, %d empty", view.split, len(texts),
             sum(not t for t in texts.values()))
    return texts


def generated_path(workdir: str, split: str) -> str:
    return os.path.join(workdir, GENERATED_DIR, f"mcoe_{split}.jsonl")


def read_generated(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for row in io.read_jsonl(path):
        out.update(row)
    return out


def _write_derived(src_dir: str, dst_dir: str, generated: dict[str, dict[str, str]]) -> None:
    """The source shards with `generated_mcoe` set; manifest.json last (marks it complete)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    man = io.read_json(os.path.join(src_dir, "manifest.json"))
    os.makedirs(dst_dir, exist_ok=True)
    empty: dict[str, int] = {}
    for split in man.get("splits", {}):
        recs = extract_io.read_records(src_dir, split)
        if not recs:
            continue
        texts = generated.get(split, {})
        w = ArrayRecordWriter(os.path.join(dst_dir, f"{split}-00000-of-00001.array_record"), "group_size:1")
        for rec in recs:
            # a record without a generation trains on an empty chain ("generated" prompts never
            # fall back to gold): count them
            rec["generated_mcoe"] = texts.get(str(rec.get("example_id", ""))) or ""
            empty[split] = empty.get(split, 0) + (not rec["generated_mcoe"])
            w.write(records.encode(rec))
        w.close()
        if empty.get(split):
            log.warning("stage 3 data: %d of %d %s examples have an empty generated chain", empty[split],
                        len(recs), split)
    io.write_json(os.path.join(dst_dir, "manifest.json"),
                  dict(man, generated_mcoe={s: len(t) for s, t in generated.items()},
                       generated_mcoe_empty=empty, derived_from=os.path.abspath(src_dir)), indent=None)


def prepare_generated_data(model: meria_model.MeriaModel, config: ml_collections.ConfigDict,
                           mcoe_view: Callable[[str], ml_collections.ConfigDict], workdir: str) -> str:
    """Generates the missing mcoe_{split}.jsonl files and the derived data dir; returns its path.
    `mcoe_view(split)` is the M-CoE stage's prompt-only data view of that split."""
    g = config.generation
    out_dir = os.path.join(workdir, GENERATED_DIR)
    data_dir = os.path.join(out_dir, "data")
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        log.info("M-CoE generations already in %s", data_dir)
        return data_dir
    os.makedirs(out_dir, exist_ok=True)
    present = io.read_json(os.path.join(config.data.data_dir, "manifest.json")).get("splits", {})
    generated, decoder = {}, None
    for split in [s for s in g.splits if s in present]:
        path = generated_path(workdir, split)
        if os.path.exists(path):
            generated[split] = read_generated(path)
            continue
        view = mcoe_view(split)
        with view.unlocked():
            view.include_target = False
            view.global_batch_size = int(g.batch_size)
        if decoder is None:
            decoder = SoftPromptDecoder(model, "mcoe_llm", view.tokenizer_path,
                                        max_utterances=int(config.data.max_utterances), use_ugf=bool(config.use_ugf),
                                        agreement_temperature=agreement_temperature(config))
        log.info("generating M-CoE for the %s split with the trained M-CoE LLM", split)
        generated[split] = generate_split(decoder, view, max_new_tokens=int(g.max_new_tokens),
                                          limit=int(g.get("limit", 0) or 0))
        if jax.process_index() == 0:
            io.write_jsonl(path, ({k: v} for k, v in generated[split].items()))
    if jax.process_index() == 0:
        _write_derived(config.data.data_dir, data_dir, generated)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("meria generated data")
    return data_dir


class MeriaPredictor:
    """predict() for evaluation, with the decoders and prompt builder built once per model.
    No gold field reaches either LLM: the chain prompt is soft tokens + dialogue, and the
    response prompt is built in inference mode (an empty chain stays empty, `chain_empty`).

    use_mcoe: soft prompts -> the M-CoE LLM writes the chain (budget: generation.max_new_tokens,
    the one stage 3 generated with) -> the Response LLM reads it + the dialogue
    (`response_builder`'s template) and writes 'Emotion: X\\nResponse: Y'.
    use_mcoe=False: the Response LLM decodes from the soft tokens + dialogue directly.
    """

    def __init__(self, model: meria_model.MeriaModel, config: ml_collections.ConfigDict,
                 soft_view: ml_collections.ConfigDict, response_builder: PromptBuilder | None):
        self.model, self.config = model, config
        self.use_mcoe = bool(config.use_mcoe)
        self.chain_decoder = SoftPromptDecoder(
            model, "mcoe_llm" if self.use_mcoe else "response_llm", soft_view.tokenizer_path,
            max_utterances=int(config.data.max_utterances), use_ugf=bool(config.use_ugf),
            agreement_temperature=agreement_temperature(config))
        self.response_builder = response_builder
        self.response_generator = None
        if self.use_mcoe:
            self.response_generator = Generator(model.response_llm, self.chain_decoder.tokenizer)

    def predict(self, batch: dict, recs: dict[str, dict], *, max_new_tokens: int) -> list[dict]:
        """One dict per real example of the prompt-only batch: generated_chain, response,
        predicted_emotion and raw (the Response LLM's text).
        `recs`: example_id -> raw record (the response prompt is rendered from it)."""
        keep = [bool(k) for k in batch["example_mask"]]
        ids = [str(x) for x, k in zip(batch["example_id"], keep) if k]
        first = int(self.config.generation.max_new_tokens) if self.use_mcoe else max_new_tokens
        texts = [t for t, k in zip(self.chain_decoder.decode(batch, first), keep) if k]
        prompts: list[list[int]] = []
        if not self.use_mcoe:
            raws, chains = texts, [""] * len(texts)
        else:
            for e, chain in zip(ids, texts):
                if e not in recs:
                    raise KeyError(f"example {e!r} has no record in the evaluated data")
                prompts.append(self.response_builder.build(dict(recs[e], generated_mcoe=chain)).tokens.tolist())
            raws = self.response_generator.generate_ids(
                prompts, SamplingConfig(max_new_tokens=max_new_tokens)).texts if prompts else []
            chains = texts
        rows = []
        for i, (chain, raw) in enumerate(zip(chains, raws)):
            emotion, response = common.split_emotion_response(raw)
            row = {"generated_chain": chain, "response": response, "predicted_emotion": emotion, "raw": raw}
            if self.use_mcoe:  # the Response LLM's exact prompt; an empty chain is shown as empty
                row.update(chain_empty=not chain, response_prompt_ids=prompts[i])
            rows.append(row)
        return rows

    def soft_prompts(self, batch: dict):
        """The chain decoder's prompt embeddings of a batch (soft prompts spliced in)."""
        dev = {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
        return self.chain_decoder._embeds(dev)
