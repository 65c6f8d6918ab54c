"""Seed 004's MERIA on the shared runtime (see configs/meria.py for stages, ablations, presets).

One module tree, `MeriaModel`:
  pdr           PDR: 8 β-VAE encoders, 3 decoders, 2 profile classifiers (models/pdr.py)
  adapter       only with use_pdr=False: per-modality Linear D_m -> |latents(m)|·L that stands
                in for the PDR posterior means (log-variance 0); trained with the projectors
  projectors    MeriaProjectors: the five UGF signals -> K virtual tokens each (d_model of the
                LLM that reads them: the M-CoE LLM, or the Response LLM with use_mcoe=False)
  mcoe_llm      CausalLM + LoRA from config.mcoe_model (absent with use_mcoe=False)
  response_llm  CausalLM + LoRA from config.response_model (always a separate copy)

Soft tokens: the `mcoe` template's <Prefix> holds dialogue-level slots, one per MERIA
signal (prompts.MERIA_SIGNALS, MODALITY_IDS 4..8) with K = data.soft_tokens_per_slot tokens
each.  Each slot's value is looked up by (packed segment -soft_utterance-1, signal
soft_modality-4, token soft_index) in a [B, P, 5, K, E] table built from the PDR/UGF
signals pooled over the valid utterance rows of the segment, so the splice does not
depend on the slot order in the prompt.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from merg_jax.models import fusion as fusion_lib
from merg_jax.models import pdr as pdr_lib
from merg_jax.models.layers import Linear
from merg_jax.systems import common
from merg_jax.systems.base import System, build_llm

log = logging.getLogger(__name__)

SIGNAL_BASE = 4  # prompts.MODALITY_IDS["fused"]; signals 4..8 in fusion.SIGNALS order
DIRECT_TEMPLATE = "meria_direct"
GENERATED_DIR = "stage_outputs"


# ----------------------------------------------------------------------------- templates

def register_direct_template() -> None:
    """`meria_direct` (use_mcoe=False): the mcoe prefix slots + dialogue -> emotion + response.

    Registered at import into prompts.TEMPLATES (wording ours) until input_pipeline/prompts.py
    carries it; a definition already there wins.
    """
    from input_pipeline import prompts
    if DIRECT_TEMPLATE in prompts.TEMPLATES:
        return
    prompts.TEMPLATES[DIRECT_TEMPLATE] = prompts.PromptTemplate(
        name=DIRECT_TEMPLATE,
        source="MERIA (seed 004) 'w/o M-CoE' ablation: the five PDR/UGF soft-prompt signals + "
               "the dialogue -> emotion and response, no chain of empathy; wording is ours",
        prompt="<Prefix>The soft tokens above carry the dialogue's fused emotion, the speakers' "
               "identity, what only the voice and only the face show, and how much voice and "
               "face disagree.\n\n" + prompts._CONTEXT
               + "\nState the speaker's emotion and give an empathetic response.\n",
        utterance="$role:$text\n",
        target=("Emotion: $emotion\n", "Response: $response"),
        prefix=prompts.MERIA_SIGNALS)


register_direct_template()


# ----------------------------------------------------------------------------- config

def stage_kind(stage: ml_collections.ConfigDict) -> str:
    kind = stage.get("kind") or stage.name
    if kind not in ("pdr", "mcoe", "response"):
        raise ValueError(f"stage {stage.name!r}: MERIA stages are pdr, mcoe, response; set "
                         "stages.<name>.kind to one of them")
    return kind


def resolve_stages(config: ml_collections.ConfigDict) -> None:
    """Applies the ablation switches to stage_order / trainables / templates (idempotent)."""
    with config.unlocked():
        order = list(config.stage_order)
        kinds = {n: stage_kind(config.stages[n]) for n in order}
        if not config.use_pdr:
            order = [n for n in order if kinds[n] != "pdr"]
        if not config.use_mcoe:
            order = [n for n in order if kinds[n] != "mcoe"]
        soft_stage = next((n for n in order if kinds[n] == ("mcoe" if config.use_mcoe else "response")), None)
        for n in order:
            s = config.stages[n]
            t = list(s.trainable)
            if n == soft_stage:
                for rx in ([r"projectors/.*"] + ([] if config.use_pdr else [r"adapter/.*"])):
                    if rx not in t:
                        t.append(rx)
                if not config.use_mcoe:
                    s.data.template = DIRECT_TEMPLATE
            s.trainable = tuple(t)
        config.stage_order = tuple(order)


def _pdr_config(config, dims: dict[str, int]) -> pdr_lib.PDRConfig:
    p = config.pdr
    return pdr_lib.PDRConfig(feature_dims=dims, latent_dim=int(p.latent_dim), hidden_dim=int(p.hidden_dim),
                             num_hidden_layers=int(p.num_hidden_layers), dropout=float(p.dropout),
                             beta=float(p.beta), alpha=float(p.alpha), gamma=float(p.gamma),
                             delta1=float(p.delta1), delta2=float(p.delta2),
                             triplet_margin=float(p.triplet_margin))


def feature_dims(config) -> dict[str, int]:
    if config.data.get("feature_dims"):
        return {m: int(config.data.feature_dims[m]) for m in pdr_lib.MODALITIES}
    from merg_jax.train.data import manifest
    dims = manifest(config.data.data_dir).get("feature_dims") or {}
    missing = [m for m in pdr_lib.MODALITIES if not dims.get(m)]
    if missing:
        raise ValueError(f"{config.data.data_dir}/manifest.json has no feature_dims for {missing}; "
                         "re-run feature extraction or set --config.data.feature_dims")
    return {m: int(dims[m]) for m in pdr_lib.MODALITIES}


# ----------------------------------------------------------------------------- modules

class LinearAdapter(nnx.Module):
    """use_pdr=False: per-modality Linear D_m -> |LATENTS[m]|·L, split into the S/P(/I) means;
    log-variance 0 (σ² = 1 everywhere, so UGF's gate is uniform = a plain mean)."""

    def __init__(self, dims: dict[str, int], latent_dim: int, *, rngs: nnx.Rngs):
        self.maps = nnx.Dict({m: Linear(dims[m], len(pdr_lib.LATENTS[m]) * latent_dim, name=m,
                                        names=(None, None), use_bias=True, rngs=rngs)
                              for m in pdr_lib.MODALITIES})
        self.latent_dim = latent_dim

    def __call__(self, features) -> pdr_lib.PDROutput:
        latents = {}
        for m in pdr_lib.MODALITIES:
            h = self.maps[m](features[m])
            parts = jnp.split(h, len(pdr_lib.LATENTS[m]), axis=-1)
            latents[m] = {k: pdr_lib.Latent(mu, jnp.zeros_like(mu), mu)
                          for k, mu in zip(pdr_lib.LATENTS[m], parts)}
        return pdr_lib.PDROutput(latents, {}, {})


class MeriaModel(nnx.Module):
    def __init__(self, pdr, adapter, projectors, mcoe_llm, response_llm, norm=None):
        self.norm = norm  # common.FeatureNormModule: fixed train-split feature statistics
        self.pdr = pdr
        self.adapter = adapter
        self.projectors = projectors
        self.mcoe_llm = mcoe_llm
        self.response_llm = response_llm


# ----------------------------------------------------------------------------- pieces

def _features(batch, model=None) -> tuple[dict, dict]:
    """Standardised features (train-split statistics) and presence masks."""
    norm = getattr(model, "norm", None)
    feats = {m: batch[m].astype(jnp.float32) for m in pdr_lib.MODALITIES}
    if norm is not None:
        feats = {m: norm(m, x) for m, x in feats.items()}
    masks = {m: batch[m + "_mask"].astype(bool) for m in pdr_lib.MODALITIES}
    return feats, masks


def soft_table(model: MeriaModel, batch: dict, *, max_utterances: int, use_ugf: bool) -> jax.Array:
    """[B, P, 5, K, E]: per packed segment, the projected virtual tokens of every signal."""
    feats, masks = _features(batch, model)
    if model.pdr is not None and model.adapter is None:
        out = model.pdr(feats, deterministic=True)
        out = jax.tree.map(jax.lax.stop_gradient, out)  # frozen after stage 1
    else:
        out = model.adapter(feats)
    fused = fusion_lib.ugf(out, masks, use_ugf=use_ugf)  # per row [B, P*U, ...]
    b, rows = batch["audio"].shape[:2]
    u = max_utterances
    p = max(1, rows // u)
    row_mask = masks["audio"] | masks["video"] | masks["text"]
    seg = lambda x: x.reshape(b, p, rows // p, *x.shape[2:])  # noqa: E731
    pooled = fusion_lib.pool_fusion(fusion_lib.FusionOutput(*(seg(f) for f in fused)), seg(row_mask))
    per = model.projectors(pooled)  # signal -> [B, P, K, E]
    return jnp.stack([per[s] for s in fusion_lib.SIGNALS], axis=2)


def soft_values(table: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Values [B, S, E] for every slot, and the mask [B, S] of the MERIA-signal slots."""
    _, p, n_sig, k, _ = table.shape
    mod = batch["soft_modality"] - SIGNAL_BASE
    seg = jnp.clip(-batch["soft_utterance"] - 1, 0, p - 1)
    idx = jnp.clip(batch["soft_index"], 0, k - 1)
    ok = (batch["soft_mask"] > 0) & (mod >= 0) & (mod < n_sig) & (batch["soft_index"] < k)
    bi = jnp.arange(table.shape[0])[:, None]
    vals = table[bi, seg, jnp.clip(mod, 0, n_sig - 1), idx]
    return vals, ok


def soft_embeds(model: MeriaModel, llm, batch: dict, *, max_utterances: int, use_ugf: bool) -> jax.Array:
    """The token embeddings of input_ids with the virtual tokens spliced at the slots."""
    table = soft_table(model, batch, max_utterances=max_utterances, use_ugf=use_ugf)
    vals, ok = soft_values(table, batch)
    emb = llm.embed(batch["input_ids"])
    return common.splice(emb, batch["soft_positions"], ok, vals)


# ----------------------------------------------------------------------------- system

class Meria(System):
    name = "meria"

    def __init__(self, config):
        super().__init__(config)
        self._bases: dict[str, dict] = {}

    def resolve(self) -> None:
        resolve_stages(self.config)

    def validate(self) -> None:
        c = self.config
        if c.response_mcoe not in ("gold", "generated"):
            raise ValueError(f"response_mcoe={c.response_mcoe!r}; use 'gold' (annotated M-CoE) or "
                             "'generated' (the M-CoE LLM's output, paper stage 3)")
        if c.response_mcoe == "generated" and not c.use_mcoe:
            raise ValueError("response_mcoe='generated' needs use_mcoe=True (there is no M-CoE LLM); "
                             "set --config.response_mcoe=gold or use_mcoe=True")
        if c.data.get("packing"):
            raise ValueError("data.packing is not supported by MERIA (the LLMs have no segment "
                             "masking); set --config.data.packing=False")
        from input_pipeline import prompts
        for n in c.stage_order:
            s = c.stages[n]
            kind = stage_kind(s)
            tmpl = prompts.TEMPLATES[s.data.get("template") or c.data.template]
            soft = kind == "mcoe" or (kind == "response" and not c.use_mcoe)
            if soft and tuple(tmpl.prefix) != tuple(prompts.MERIA_SIGNALS):
                raise ValueError(f"stages.{n}.data.template={tmpl.name!r} lacks the MERIA signal "
                                 f"prefix {prompts.MERIA_SIGNALS}; use 'mcoe' (or '{DIRECT_TEMPLATE}')")
            if kind == "response" and c.use_mcoe and tmpl.modalities:
                raise ValueError(f"stages.{n}.data.template={tmpl.name!r} has soft slots; the "
                                 "response stage reads text only: use 'mcoe_response'")

    # -- build ---------------------------------------------------------------
    def build(self, mesh) -> nnx.Module:
        c = self.config
        dims = feature_dims(c)
        pcfg = _pdr_config(c, dims)
        rngs = nnx.Rngs(int(c.seed))
        pdr = pdr_lib.PDR(pcfg, rngs=rngs)
        adapter = None if c.use_pdr else LinearAdapter(dims, pcfg.latent_dim, rngs=rngs)
        mcoe_llm = None
        if c.use_mcoe:
            mcoe_llm, self._bases["mcoe_llm"] = build_llm(c.mcoe_model, mesh, int(c.seed))
        response_llm, self._bases["response_llm"] = build_llm(c.response_model, mesh, int(c.seed) + 1)
        reader = mcoe_llm if c.use_mcoe else response_llm
        k = int(c.data.soft_tokens_per_slot)
        proj_cfg = fusion_lib.ProjectorConfig(d_model=reader.config.hidden_size,
                                              hidden_dim=int(c.projector.hidden_dim) or None,
                                              tokens={s: k for s in fusion_lib.SIGNALS})
        projectors = fusion_lib.MeriaProjectors(proj_cfg, pcfg.latent_dim, rngs=rngs)
        self.pdr_config = pcfg
        norm = None
        if c.data.get("normalize_features", True):
            norm = common.FeatureNormModule(common.FeatureNorm.from_data(
                c.data.data_dir, c.data.get("train_split", "train")))
        return MeriaModel(pdr, adapter, projectors, mcoe_llm, response_llm, norm)

    def bases(self) -> dict[str, dict]:
        return dict(self._bases)

    # -- data ----------------------------------------------------------------
    def data_config(self, stage, split, *, train):
        c = self.config
        view = common.data_view(c, stage, split, train=train)
        kind = stage_kind(stage)
        with view.unlocked():
            if not view.tokenizer_path:
                m = c.response_model if kind == "response" else (c.mcoe_model if c.use_mcoe
                                                                 else c.response_model)
                view.tokenizer_path = m.path or ""
            if kind == "response" and c.use_mcoe and c.response_mcoe == "generated":
                view.data_dir = self._generated_data_dir(split)
        if not train:
            self._last_view = (view.data_dir, split)  # predict() reads raw records from here
        return view

    def _generated_data_dir(self, split: str) -> str:
        d = getattr(self, "_gen_dir", None) or self.config.generation.get("data_dir") or None
        if d is None:
            raise ValueError("response_mcoe='generated': the response stage's data is written by "
                             "its prepare step (Meria.prepare_stage), which has not run in this process")
        return d

    def prepare_stage(self, stage, model, workdir, mesh) -> None:
        c = self.config
        if stage_kind(stage) != "response" or not c.use_mcoe or c.response_mcoe != "generated":
            return
        from merg_jax.systems import meria_generate
        self._gen_dir = meria_generate.prepare_generated_data(self, stage, model, workdir, mesh)

    # -- loss ----------------------------------------------------------------
    def loss(self, model, batch, key, stage, *, train):
        kind = stage_kind(stage)
        c = self.config
        if kind == "pdr":
            return self._pdr_loss(model, batch, key, train)
        if kind == "mcoe" or not c.use_mcoe:
            llm = model.mcoe_llm if kind == "mcoe" else model.response_llm
            emb = soft_embeds(model, llm, batch, max_utterances=int(c.data.max_utterances),
                              use_ugf=bool(c.use_ugf))
            out = llm(inputs_embeds=emb, attention_mask=batch["attention_mask"], positions=batch["positions"],
                      dropout_key=key if train else None)
        else:
            out = model.response_llm(batch["input_ids"], attention_mask=batch["attention_mask"],
                                     positions=batch["positions"], dropout_key=key if train else None)
        return common.lm_loss(out.logits, batch["targets"], batch["loss_mask"])

    def _pdr_loss(self, model, batch, key, train):
        feats, masks = _features(batch, model)
        deterministic = not train or key is None
        out = model.pdr(feats, key=None if deterministic else key, deterministic=deterministic)
        labels = {a: batch[f"profile_{a}"] for a in model.pdr.cfg.profile_classes if f"profile_{a}" in batch}
        total, terms = pdr_lib.pdr_losses(model.pdr.cfg, out, feats, masks,
                                          speaker_ids=batch.get("speaker_ids"), profile_labels=labels)
        rows = (masks["audio"] | masks["video"] | masks["text"]).astype(jnp.float32).sum()
        aux = {k: terms[k] for k in ("recon", "kl", "align", "ortho", "triplet", "cls")}
        # "token_accuracy": profile-attribute accuracy of the audio identity classifier (a probe).
        hits = n = jnp.zeros((), jnp.float32)
        for a, lab in labels.items():
            known = masks["audio"] & (lab >= 0)
            pred = jnp.argmax(out.profile_logits["audio"][a], axis=-1)
            hits += jnp.sum((pred == lab) & known)
            n += jnp.sum(known)
        aux.update(tokens=rows, token_accuracy=hits / jnp.maximum(n, 1.0), nll_sum=total * rows)
        return total, aux

    def step_flops(self, model, batch_shape, stage) -> float:
        kind = stage_kind(stage)
        if kind == "pdr":
            return 0.0
        llm = model.mcoe_llm if kind == "mcoe" else model.response_llm
        return common.llm_step_flops(llm, batch_shape, frozen_base=True)

    # -- evaluation ----------------------------------------------------------
    def eval_stage(self):
        """The view evaluation iterates: the M-CoE LLM's prompt (soft slots + dialogue); with
        use_mcoe=False the response stage's `meria_direct` prompt."""
        c = self.config
        want = "mcoe" if c.use_mcoe else "response"
        name = next((n for n in c.stage_order if stage_kind(c.stages[n]) == want), None)
        if name is None:
            raise ValueError(f"MERIA evaluation needs a {want} stage in stage_order")
        return c.stages[name]

    def _soft_decoder(self, model, llm_name: str, view, max_new_tokens: int):
        """(jitted greedy decoder over soft-prompt batches, its tokenizer, its EOS ids), cached."""
        from flax import nnx

        from input_pipeline.prompts import PromptBuilder
        from merg_jax.systems import meria_generate
        key = (id(model), llm_name, view.template, view.tokenizer_path, int(max_new_tokens))
        cache = self.__dict__.setdefault("_decoders", {})
        hit = cache.get(key)
        if hit is not None and hit[0] is model:
            return hit[1:]
        builder = PromptBuilder(view.template, view.tokenizer_path or meria_generate._default_tokenizer(),
                                max_length=2, max_utterances=1)
        llm = getattr(model, llm_name)
        eos = meria_generate.eos_ids_for(builder.tokenizer, llm)
        eos_arr, pad_id = jnp.asarray(eos, jnp.int32), builder.ids["pad"]
        graphdef, state = nnx.split(model)
        c = self.config

        @jax.jit
        def run(state, batch):
            m = nnx.merge(graphdef, state)
            return meria_generate.greedy_decode(
                m, batch, max_new_tokens=int(max_new_tokens), eos_ids=eos_arr, pad_id=pad_id,
                max_utterances=int(c.data.max_utterances), use_ugf=bool(c.use_ugf), llm=getattr(m, llm_name))

        fn = lambda batch: run(state, batch)  # noqa: E731
        cache.clear()
        cache[key] = (model, fn, builder.tokenizer, eos)
        return fn, builder.tokenizer, eos

    def _eval_records(self, data_dir: str, split: str) -> dict[str, dict]:
        """example_id -> raw record of data_dir/split (cached per (data_dir, split))."""
        from array_record.python.array_record_module import ArrayRecordReader

        from input_pipeline import records
        from input_pipeline.config import shard_files
        cache = self.__dict__.setdefault("_records", {})
        key = (os.path.abspath(data_dir), split)
        if key not in cache:
            out = {}
            for path in shard_files(data_dir, split):
                reader = ArrayRecordReader(path)
                for i in range(reader.num_records()):
                    rec = records.decode(reader.read([i])[0])
                    out[str(rec.get("example_id", ""))] = rec
                reader.close()
            cache[key] = out
        return cache[key]

    def _response_builder(self, split: str):
        """PromptBuilder of the response stage's text prompt (`mcoe_response`), prompt only."""
        from input_pipeline.prompts import PromptBuilder
        from merg_jax.systems import meria_generate
        c = self.config
        stage = next(c.stages[n] for n in c.stage_order if stage_kind(c.stages[n]) == "response")
        v = common.data_view(c, stage, split, train=False)
        tok = v.tokenizer_path or c.response_model.path or meria_generate._default_tokenizer()
        key = (v.template, tok, tuple(v.seq_buckets), int(v.max_utterances), bool(v.chat_template),
               v.system_prompt, v.placeholder_token)
        hit = getattr(self, "_resp_builder", None)
        if hit is None or hit[0] != key:
            b = PromptBuilder(v.template, tok, max_length=int(v.seq_buckets[-1]),
                              max_utterances=int(v.max_utterances), chat_template=v.chat_template,
                              system_prompt=v.system_prompt, placeholder_token=v.placeholder_token,
                              include_target=False)
            self._resp_builder = hit = (key, b)
        return hit[1]

    def predict(self, model, batch, tokenizer, *, max_new_tokens):
        """MERIA inference on a prompt-only batch of the eval view (see eval_stage).

        use_mcoe: soft prompts -> M-CoE LLM greedily generates the chain -> the Response LLM
        reads it + the dialogue (`mcoe_response`) and generates 'Emotion: X\nResponse: Y'.
        use_mcoe=False: the Response LLM decodes from the soft tokens + dialogue directly.
        `max_new_tokens` bounds the response; the chain gets config.generation.max_new_tokens
        (the budget stage 3 generates chains with), so a short response budget cannot cut it.
        The batch carries no raw records: they are read by example_id from the data dir/split
        of the last non-train data view built (evaluation builds it just before iterating),
        falling back to every split of that data dir."""
        import numpy as np

        from merg_jax.generation import Generator, SamplingConfig
        from merg_jax.systems import meria_generate
        c = self.config
        keep = [bool(k) for k in batch["example_mask"]]
        ids = [str(x) for x in batch["example_id"]]
        dev = {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
        data_dir, split = getattr(self, "_last_view", None) or (c.data.data_dir, "test")
        view = self.data_config(self.eval_stage(), split, train=False)
        self._last_view = (data_dir, split)  # data_config above must not move it
        llm_name = "mcoe_llm" if c.use_mcoe else "response_llm"
        first = int(c.generation.max_new_tokens) if c.use_mcoe else max_new_tokens
        fn, tok, eos = self._soft_decoder(model, llm_name, view, first)
        texts = meria_generate.decode_rows(fn(dev), tok, eos)
        texts = [t for t, k in zip(texts, keep) if k]
        if not c.use_mcoe:
            raws, chains = texts, [""] * len(texts)
        else:
            recs = self._eval_records(data_dir, split)
            want = [e for e, k in zip(ids, keep) if k]
            if any(e not in recs for e in want):
                from merg_jax.train.data import manifest
                for s in manifest(data_dir).get("splits", {}):
                    recs = {**self._eval_records(data_dir, s), **recs}
            builder = self._response_builder(split)
            prompts = []
            for e, chain in zip(want, texts):
                if e not in recs:
                    raise KeyError(f"example {e!r} is not in {data_dir}")
                prompts.append(builder.build(dict(recs[e], generated_mcoe=chain)).tokens.tolist())
            gen = getattr(self, "_resp_generator", None)
            if gen is None or gen[0] is not model or gen[1] is not tokenizer:
                self._resp_generator = gen = (model, tokenizer, Generator(model.response_llm, tokenizer))
            raws = gen[2].generate_ids(prompts, SamplingConfig(max_new_tokens=max_new_tokens)).texts \
                if prompts else []
            chains = texts
        rows = []
        for chain, raw in zip(chains, raws):
            emotion, response = common.split_emotion_response(raw)
            rows.append({"generated_chain": chain, "response": response, "predicted_emotion": emotion,
                         "raw": raw})
        return rows

    def pdr_latents(self, model, batch) -> dict:
        """Per-row posterior means, fused Z_S^F, presence masks (evaluation.latents); with
        use_pdr=False the linear adapter's latents."""
        feats, masks = _features(batch, model)
        out = model.pdr(feats, deterministic=True) if model.adapter is None else model.adapter(feats)
        fused = fusion_lib.ugf(out, masks, use_ugf=bool(self.config.use_ugf))
        return {"mu": {(m, k): lat.mu for m in pdr_lib.MODALITIES for k, lat in out.latents[m].items()},
                "fused": fused.shared, "present": masks,
                "row_mask": masks["audio"] | masks["video"] | masks["text"]}

    def llm(self, model, which: str = "response"):
        if which == "mcoe":
            if model.mcoe_llm is None:
                raise ValueError("this MERIA run has no M-CoE LLM (use_mcoe=False)")
            return model.mcoe_llm
        return model.response_llm


def read_generated(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                out.update(json.loads(line))
    return out


def generated_path(workdir: str, split: str) -> str:
    return os.path.join(workdir, GENERATED_DIR, f"mcoe_{split}.jsonl")
