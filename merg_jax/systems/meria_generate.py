"""MERIA stage-3 inputs: greedy M-CoE generation with soft prompts, and the derived data dir.

`merg_jax.generation.Generator` works on token ids only; the M-CoE LLM needs the PDR/UGF
virtual tokens spliced into its input embeddings, so this module has its own small greedy
decoder (prefill on inputs_embeds into a KV cache, then one token per step inside a
`lax.while_loop`; the whole thing is one jitted function per batch shape).

Outputs under WORKDIR/stage_outputs/:
  mcoe_{split}.jsonl   one {example_id: text} object per line (skipped when present: resume)
  data/                the original shards with `generated_mcoe` set on every record that
                       has a generation (the prompt builder's $mcoe then uses it; records
                       without one fall back to the gold rendering) + manifest.json, which
                       is written last and marks the directory complete
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.models.llama import KVCache
from merg_jax.systems import meria as meria_lib

log = logging.getLogger(__name__)


def _head(llm, h: jax.Array) -> jax.Array:
    if llm.lm_head is None:
        return llm.embed_tokens.attend(h).astype(jnp.float32)
    return llm.lm_head(h).astype(jnp.float32)


def greedy_decode(model, batch: dict, *, max_new_tokens: int, eos_ids: jax.Array, pad_id: int,
                  max_utterances: int, use_ugf: bool, llm=None) -> jax.Array:
    """Greedy continuation [B, max_new_tokens] of right-padded prompts with soft slots (traceable).

    `llm` is the LLM that reads the soft tokens (default the M-CoE LLM; the Response LLM with
    use_mcoe=False).  The prompt's padding stays in the cache masked out, so each row
    continues from its own last real token with positions = its count of real tokens (as in
    training)."""
    llm = model.mcoe_llm if llm is None else llm
    emb = meria_lib.soft_embeds(model, llm, batch, max_utterances=max_utterances, use_ugf=use_ugf)
    mask = batch["attention_mask"]
    b, length = mask.shape
    cache = KVCache.init(llm.config, b, length + max_new_tokens)
    out = llm(inputs_embeds=emb, attention_mask=mask, cache=cache, logits="none")
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    h = out.hidden[jnp.arange(b), last][:, None]
    first = jnp.argmax(_head(llm, h)[:, -1], axis=-1).astype(jnp.int32)
    buf = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos_ids) | (mask.sum(axis=1) == 0)

    def cond(c):
        _, _, done, step = c
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(c):
        cache, buf, done, step = c
        prev = jax.lax.dynamic_index_in_dim(buf, step - 1, axis=1, keepdims=True)
        o = llm(prev, cache=cache, logits="last")
        nxt = jnp.argmax(o.logits[:, -1], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        buf = jax.lax.dynamic_update_index_in_dim(buf, nxt[:, None], step, axis=1)
        return o.cache, buf, done | jnp.isin(nxt, eos_ids), step + 1

    _, buf, _, _ = jax.lax.while_loop(cond, body, (out.cache, buf, done, jnp.asarray(1, jnp.int32)))
    return buf


def eos_ids_for(tok, llm) -> list[int]:
    """The tokenizer's EOS plus the model config's EOS id(s)."""
    eos = {int(tok.eos_token_id)}
    e = llm.config.eos_token_id
    eos.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    return sorted(eos)


def decode_rows(ids, tok, eos) -> list[str]:
    """Token rows [B, N] -> texts, each cut at its first EOS."""
    eos = set(int(e) for e in eos)
    texts = []
    for r in np.asarray(ids).tolist():
        row = []
        for t in r:
            if t in eos:
                break
            row.append(t)
        texts.append(tok.decode(row, skip_special_tokens=True).strip())
    return texts


def generate_split(system, stage_mcoe, model, split: str, mesh) -> dict[str, str]:
    """{example_id: M-CoE text} for every example of `split` (or the first generation.limit)."""
    from input_pipeline.pipeline import make_iterator, to_global
    from input_pipeline.prompts import PromptBuilder

    c = system.config
    g = c.generation
    cfg = system.data_config(stage_mcoe, split, train=False)
    with cfg.unlocked():
        cfg.include_target = False
        cfg.global_batch_size = int(g.batch_size)
    builder = PromptBuilder(cfg.template, cfg.tokenizer_path or _default_tokenizer(), max_length=2,
                            max_utterances=1)
    tok = builder.tokenizer
    eos = {int(tok.eos_token_id)}
    e = model.mcoe_llm.config.eos_token_id
    eos.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    eos_ids = jnp.asarray(sorted(eos), jnp.int32)
    pad_id = builder.ids["pad"]
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, batch):
        m = nnx.merge(graphdef, state)
        return greedy_decode(m, batch, max_new_tokens=int(g.max_new_tokens), eos_ids=eos_ids, pad_id=pad_id,
                             max_utterances=int(c.data.max_utterances), use_ugf=bool(c.use_ugf))

    texts: dict[str, str] = {}
    limit = int(g.get("limit", 0) or 0)
    for batch in make_iterator(cfg):
        ids = np.asarray(run(state, to_global(batch, mesh)))
        for i, ex_id in enumerate(batch["example_id"]):
            if not batch["example_mask"][i] or not ex_id:
                continue
            row = []
            for t in ids[i].tolist():
                if t in eos:
                    break
                row.append(t)
            texts[str(ex_id)] = tok.decode(row, skip_special_tokens=True).strip()
        if limit and len(texts) >= limit:
            break
        log.info("M-CoE generation (%s): %d examples", split, len(texts))
    return texts


def _default_tokenizer() -> str:
    from merg_jax.core.assets import smollm2_gguf
    return smollm2_gguf()


def _write_jsonl(path: str, texts: dict[str, str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for k, v in texts.items():
            f.write(json.dumps({k: v}) + "\n")
    os.replace(tmp, path)


def _write_derived(src_dir: str, dst_dir: str, generated: dict[str, dict[str, str]]) -> None:
    import grain
    from array_record.python.array_record_module import ArrayRecordWriter

    from input_pipeline import records
    from input_pipeline.config import shard_files
    from merg_jax.train.data import manifest

    man = manifest(src_dir)
    os.makedirs(dst_dir, exist_ok=True)
    for split in man.get("splits", {}):
        files = shard_files(src_dir, split)
        if not files:
            continue
        source = grain.sources.ArrayRecordDataSource(files)
        texts = generated.get(split, {})
        w = ArrayRecordWriter(os.path.join(dst_dir, f"{split}-00000-of-00001.array_record"), "group_size:1")
        for i in range(len(source)):
            rec = records.decode(bytes(source[i]))
            text = texts.get(str(rec.get("example_id", "")))
            if text:
                rec["generated_mcoe"] = text
            w.write(records.encode(rec))
        w.close()
    man = dict(man, generated_mcoe={s: len(t) for s, t in generated.items()}, derived_from=os.path.abspath(src_dir))
    tmp = os.path.join(dst_dir, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(man, f)
    os.replace(tmp, os.path.join(dst_dir, "manifest.json"))


def prepare_generated_data(system, stage, model, workdir: str, mesh) -> str:
    """Generates missing mcoe_{split}.jsonl files and the derived data dir; returns its path."""
    from merg_jax.train.data import manifest

    c = system.config
    out_dir = os.path.join(workdir, meria_lib.GENERATED_DIR)
    data_dir = os.path.join(out_dir, "data")
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        log.info("M-CoE generations already in %s", data_dir)
        return data_dir
    os.makedirs(out_dir, exist_ok=True)
    mcoe_stage = next((c.stages[n] for n in c.stage_order if meria_lib.stage_kind(c.stages[n]) == "mcoe"), None)
    if mcoe_stage is None:
        raise ValueError("response_mcoe='generated' needs an mcoe stage in stage_order")
    splits = [s for s in c.generation.splits if s in manifest(c.data.data_dir).get("splits", {})]
    generated = {}
    for split in splits:
        path = meria_lib.generated_path(workdir, split)
        if os.path.exists(path):
            generated[split] = meria_lib.read_generated(path)
            continue
        log.info("generating M-CoE for the %s split with the trained M-CoE LLM", split)
        generated[split] = generate_split(system, mcoe_stage, model, split, mesh)
        if jax.process_index() == 0:
            _write_jsonl(path, generated[split])
    if jax.process_index() == 0:
        _write_derived(c.data.data_dir, data_dir, generated)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("meria generated data")
    return data_dir
