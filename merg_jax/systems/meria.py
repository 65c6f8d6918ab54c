"""MERIA (the MERIA paper) on the shared runtime: stages, losses and data views.

See configs/meria.py for the stages, ablations and presets.  The module tree is
merg_jax/models/meria.py (`MeriaModel`); decoding (the M-CoE chain, the response,
stage 3's generated chains) is merg_jax/systems/meria_inference.py.
"""
from __future__ import annotations

import logging
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from input_pipeline import extract_io, prompts
from input_pipeline.pipeline import feature_dims as data_feature_dims
from input_pipeline.schema import PROFILE_AGES, PROFILE_GENDERS, PROFILE_TIMBRES
from merg_jax.core.assets import smollm2_gguf
from merg_jax.models import fusion as fusion_lib
from merg_jax.models import meria as meria_model
from merg_jax.models import pdr as pdr_lib
from merg_jax.systems import common, meria_inference
from merg_jax.systems.base import ResponsePrompts, System, build_llm

log = logging.getLogger(__name__)

DIRECT_TEMPLATE = "meria_direct"  # input_pipeline/prompts.py: the use_mcoe=False prompt


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
                             triplet_margin=float(p.triplet_margin),
                             profile_classes={"age": len(PROFILE_AGES), "gender": len(PROFILE_GENDERS),
                                              "timbre": len(PROFILE_TIMBRES)})


def feature_dims(config) -> dict[str, int]:
    """Each modality's feature width: data.feature_dims when set, else the data's manifest."""
    dims = data_feature_dims(config.data.data_dir, config.data.get("train_split", "train"),
                        override=config.data.get("feature_dims"))
    missing = [m for m in pdr_lib.MODALITIES if not dims.get(m)]
    if missing:
        raise ValueError(f"{config.data.data_dir}/manifest.json has no feature_dims for {missing}; "
                         "re-run feature extraction or set --config.data.feature_dims")
    return {m: int(dims[m]) for m in pdr_lib.MODALITIES}


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
        adapter = None if c.use_pdr else meria_model.LinearAdapter(dims, pcfg.latent_dim, rngs=rngs)
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
        return meria_model.MeriaModel(pdr, adapter, projectors, mcoe_llm, response_llm, norm)

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
            if kind == "response" and c.use_mcoe:
                view.chain_source = c.response_mcoe  # gold only in the gold-chain ablation
                if c.response_mcoe == "generated":
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
        mcoe = next((c.stages[n] for n in c.stage_order if stage_kind(c.stages[n]) == "mcoe"), None)
        if mcoe is None:
            raise ValueError("response_mcoe='generated' needs an mcoe stage in stage_order")
        self._gen_dir = meria_inference.prepare_generated_data(
            model, c, lambda split: self.data_config(mcoe, split, train=False), workdir)

    # -- loss ----------------------------------------------------------------
    def loss(self, model, batch, key, stage, *, train):
        kind = stage_kind(stage)
        c = self.config
        if kind == "pdr":
            return self._pdr_loss(model, batch, key, train)
        if kind == "mcoe" or not c.use_mcoe:
            llm = model.mcoe_llm if kind == "mcoe" else model.response_llm
            emb = meria_model.soft_embeds(model, llm, batch, max_utterances=int(c.data.max_utterances),
                                          use_ugf=bool(c.use_ugf), agreement_temperature=meria_inference.agreement_temperature(c))
            out = llm(inputs_embeds=emb, attention_mask=batch["attention_mask"], positions=batch["positions"],
                      dropout_key=key if train else None)
        else:
            out = model.response_llm(batch["input_ids"], attention_mask=batch["attention_mask"],
                                     positions=batch["positions"], dropout_key=key if train else None)
        return common.lm_loss(out.logits, batch["targets"], batch["loss_mask"])

    def _pdr_loss(self, model, batch, key, train):
        feats, masks = meria_model.features(batch, model)
        deterministic = not train or key is None
        out = model.pdr(feats, key=None if deterministic else key, deterministic=deterministic)
        labels = {a: batch[f"profile_{a}"] for a in model.pdr.cfg.profile_classes if f"profile_{a}" in batch}
        total, terms = pdr_lib.pdr_losses(model.pdr.cfg, out, feats, masks,
                                          speaker_ids=batch.get("speaker_ids"), profile_labels=labels)
        rows = (masks["audio"] | masks["video"] | masks["text"]).astype(jnp.float32).sum()
        aux = {k: terms[k] for k in ("recon", "kl", "align", "ortho", "triplet", "cls")}
        # profile_accuracy: how often the audio identity classifier gets the speaker's age /
        # gender / timbre right (a probe of the identity latent, not a token accuracy).
        hits = n = jnp.zeros((), jnp.float32)
        for a, lab in labels.items():
            known = masks["audio"] & (lab >= 0)
            pred = jnp.argmax(out.profile_logits["audio"][a], axis=-1)
            hits += jnp.sum((pred == lab) & known)
            n += jnp.sum(known)
        aux.update(pdr_loss=total, tokens=rows, profile_accuracy=hits / jnp.maximum(n, 1.0), nll_sum=total * rows)
        return total, aux

    def loss_name(self, stage) -> str:
        return "pdr_loss" if stage_kind(stage) == "pdr" else "lm_nll"

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

    def _response_builder(self, split: str) -> prompts.PromptBuilder:
        """PromptBuilder of the response stage's text prompt (`mcoe_response`), prompt only."""
        c = self.config
        stage = next(c.stages[n] for n in c.stage_order if stage_kind(c.stages[n]) == "response")
        v = common.data_view(c, stage, split, train=False)
        tok = v.tokenizer_path or c.response_model.path or smollm2_gguf()
        return prompts.PromptBuilder(v.template, tok, max_length=int(v.seq_buckets[-1]),
                                     max_utterances=int(v.max_utterances), chat_template=v.chat_template,
                                     system_prompt=v.system_prompt, placeholder_token=v.placeholder_token,
                                     include_target=False, mode="inference")

    def _eval_records(self, data_dir: str, split: str) -> dict[str, dict]:
        """example_id -> raw record of data_dir/split (cached per (data_dir, split))."""
        cache = self.__dict__.setdefault("_records", {})
        key = (os.path.abspath(data_dir), split)
        if key not in cache:
            cache[key] = {str(r.get("example_id", "")): r for r in extract_io.read_records(data_dir, split)}
        return cache[key]

    def predict(self, model, batch, tokenizer, *, max_new_tokens):
        """MERIA inference on a prompt-only batch of the eval view (see eval_stage and
        meria_inference.MeriaPredictor).  The batch carries no raw records: they are read by
        example_id from the data dir/split of the last non-train data view built (evaluation
        builds it just before iterating), falling back to every split of that data dir."""
        c = self.config
        data_dir, split = getattr(self, "_last_view", None) or (c.data.data_dir, "test")
        view = self.data_config(self.eval_stage(), split, train=False)
        self._last_view = (data_dir, split)  # data_config above must not move it
        hit = getattr(self, "_predictor", None)
        if hit is None or hit[0] is not model or hit[1] != split:
            builder = self._response_builder(split) if c.use_mcoe else None
            self._predictor = hit = (model, split, meria_inference.MeriaPredictor(model, c, view, builder))
        recs = {}
        if c.use_mcoe:
            recs = self._eval_records(data_dir, split)
            wanted = [str(e) for e, k in zip(batch["example_id"], batch["example_mask"]) if k]
            if any(e not in recs for e in wanted):
                for s in extract_io.read_manifest(data_dir).get("splits", {}):
                    recs = {**self._eval_records(data_dir, s), **recs}
        return hit[2].predict(batch, recs, max_new_tokens=max_new_tokens)

    def response_prompts(self, model, batch, rows) -> ResponsePrompts:
        """use_mcoe: the text prompt with the generated chain that predict() built; else the
        soft tokens + dialogue the Response LLM decoded from."""
        if self.config.use_mcoe:
            return ResponsePrompts(model.response_llm, [r["response_prompt_ids"] for r in rows],
                                   template=self.response_template())
        keep = np.asarray(batch["example_mask"], bool)
        embeds = self._predictor[2].soft_prompts(batch)
        return ResponsePrompts(model.response_llm, common.prompt_ids(batch), embeds[keep],
                               np.asarray(batch["attention_mask"])[keep], self.response_template())

    def response_template(self) -> str:
        """use_mcoe: the response stage's text template (mcoe_response); else the direct one."""
        c = self.config
        stage = next(c.stages[n] for n in c.stage_order if stage_kind(c.stages[n]) == "response")
        return common.eval_template(c, stage)

    def pdr_latents(self, model, batch) -> dict:
        """Per-row posterior means, fused Z_S^F, presence masks (evaluation.latents)."""
        return meria_model.pdr_latents(model, batch, use_ugf=bool(self.config.use_ugf))

    def llm(self, model, which: str = "response"):
        if which == "mcoe":
            if model.mcoe_llm is None:
                raise ValueError("this MERIA run has no M-CoE LLM (use_mcoe=False)")
            return model.mcoe_llm
        return model.response_llm

