"""MERIA's module tree (the MERIA paper): PDR -> UGF -> soft-prompt projectors -> the two LLMs.

`MeriaModel` holds every part the three stages train or read:
  norm          fixed train-split feature statistics (standardises raw extractor outputs)
  pdr           PDR: 8 β-VAE encoders, 3 decoders, 2 profile classifiers (models/pdr.py)
  adapter       only with use_pdr=False: per-modality Linear D_m -> |latents(m)|·L that stands
                in for the PDR posterior means (log-variance 0); trained with the projectors
  projectors    MeriaProjectors: the five UGF signals -> K virtual tokens each (d_model of the
                LLM that reads them: the M-CoE LLM, or the Response LLM with use_mcoe=False)
  mcoe_llm      CausalLM + LoRA (absent with use_mcoe=False)
  response_llm  CausalLM + LoRA

Soft tokens: the `mcoe` template's <Prefix> holds dialogue-level slots, one per MERIA
signal (MODALITY_IDS 4..8 of input_pipeline/prompts.py) with K tokens each.  Each slot's
value is looked up by (packed segment -soft_utterance-1, signal soft_modality-4, token
soft_index) in a [B, P, 5, K, E] table built from the PDR/UGF signals pooled over the
valid utterance rows of the segment, so the splice does not depend on the slot order.
The system (stages, losses, data views) is merg_jax/systems/meria.py; decoding is
merg_jax/systems/meria_inference.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from merg_jax.models import fusion as fusion_lib
from merg_jax.models import pdr as pdr_lib
from merg_jax.models.layers import Linear, splice

SIGNAL_BASE = 4  # input_pipeline.prompts.MODALITY_IDS["fused"]; signals 4..8 in fusion.SIGNALS order


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
        self.norm = norm  # systems.common.FeatureNormModule: fixed train-split feature statistics
        self.pdr = pdr
        self.adapter = adapter
        self.projectors = projectors
        self.mcoe_llm = mcoe_llm
        self.response_llm = response_llm


def features(batch, model=None) -> tuple[dict, dict]:
    """Standardised features (train-split statistics) and presence masks."""
    norm = getattr(model, "norm", None)
    feats = {m: batch[m].astype(jnp.float32) for m in pdr_lib.MODALITIES}
    if norm is not None:
        feats = {m: norm(m, x) for m, x in feats.items()}
    masks = {m: batch[m + "_mask"].astype(bool) for m in pdr_lib.MODALITIES}
    return feats, masks


def soft_table(model: MeriaModel, batch: dict, *, max_utterances: int, use_ugf: bool,
               agreement_temperature: float = 0.0) -> jax.Array:
    """[B, P, 5, K, E]: per packed segment, the projected virtual tokens of every signal
    (utterances pooled by `fusion.pool_fusion`, agreement-weighted when the temperature > 0)."""
    feats, masks = features(batch, model)
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
    seg = lambda x: x.reshape(b, p, rows // p, *x.shape[2:])
    pooled = fusion_lib.pool_fusion(fusion_lib.FusionOutput(*(seg(f) for f in fused)), seg(row_mask),
                                    agreement_temperature)
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


def soft_embeds(model: MeriaModel, llm, batch: dict, *, max_utterances: int, use_ugf: bool,
                agreement_temperature: float = 0.0) -> jax.Array:
    """The token embeddings of input_ids with the virtual tokens spliced at the slots."""
    table = soft_table(model, batch, max_utterances=max_utterances, use_ugf=use_ugf,
                       agreement_temperature=agreement_temperature)
    vals, ok = soft_values(table, batch)
    emb = llm.embed(batch["input_ids"])
    return splice(emb, batch["soft_positions"], ok, vals)


def pdr_latents(model: MeriaModel, batch: dict, *, use_ugf: bool) -> dict:
    """Per-row posterior means, fused Z_S^F, presence masks (evaluation.latents); with
    use_pdr=False the linear adapter's latents."""
    feats, masks = features(batch, model)
    out = model.pdr(feats, deterministic=True) if model.adapter is None else model.adapter(feats)
    fused = fusion_lib.ugf(out, masks, use_ugf=use_ugf)
    return {"mu": {(m, k): lat.mu for m in pdr_lib.MODALITIES for k, lat in out.latents[m].items()},
            "fused": fused.shared, "present": masks,
            "row_mask": masks["audio"] | masks["video"] | masks["text"]}
