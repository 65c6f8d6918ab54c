"""MERIA's Uncertainty-Gated Fusion (paper §3.2, eq. 6–8) and the soft-prompt projectors (§3.3).

UGF turns the PDR posteriors of one utterance into the signals the M-CoE LLM sees:
a fused shared emotion Z_S^F (modalities weighted by how certain their *private*
posterior is), the concatenated identity Z_I^F, the private means Z_P^A, Z_P^V and a
conflict signal (the paper draws one in Fig. 2 but never defines it; ours is below).
MERIA builds one M-CoE sample per dialogue, so per-utterance signals are averaged
over present utterances (`pool_rows` / `pool_fusion`) before the projectors map each
signal to K virtual tokens that are prepended to the dialogue.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from merg_jax.models.layers import Linear
from merg_jax.models.pdr import MODALITIES, PDROutput

PAIRS = tuple(itertools.combinations(MODALITIES, 2))  # (audio,video), (audio,text), (video,text)
CONFLICT_DIM = 1 + len(PAIRS)
SIGNALS = ("fused", "identity", "private_audio", "private_video", "conflict")


class FusionOutput(NamedTuple):
    """Per-row UGF signals; every field has the PDR's leading dims."""
    shared: jax.Array         # Z_S^F [..., L] (eq. 8)
    identity: jax.Array       # Z_I^F = [μ_I^A, μ_I^V] [..., 2L], zeros for an absent modality
    private_audio: jax.Array  # Z_P^A = μ_P^A [..., L], zeros where audio is absent
    private_video: jax.Array  # Z_P^V = μ_P^V [..., L], zeros where video is absent
    conflict: jax.Array       # [..., CONFLICT_DIM]: see `conflict_signal`
    weights: jax.Array        # gate w [..., 3] in MODALITIES order, 0 for absent modalities
    certainty: jax.Array      # T^M [..., 3] (eq. 6), 0 for absent modalities


def _masks(out: PDROutput, masks: Mapping[str, jax.Array] | None) -> jax.Array:
    lead = out.latents[MODALITIES[0]]["S"].mu.shape[:-1]
    masks = dict(masks or {})
    return jnp.stack([jnp.broadcast_to(jnp.asarray(masks.get(m, True), bool), lead) for m in MODALITIES], -1)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to `mask`; all-masked rows give all zeros."""
    top = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # all-masked row: avoid inf - inf
    e = jnp.where(mask, jnp.exp(jnp.where(mask, logits - top, 0.0)), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(e.dtype).tiny)


def conflict_signal(mu_s: jax.Array, fused: jax.Array, weights: jax.Array, present: jax.Array,
                    eps: float = 1e-6) -> jax.Array:
    """[..., 1 + 3]: gate-weighted dispersion Σ_M w^M ‖μ_S^M − Z_S^F‖², then 1 − cos(μ_S^M, μ_S^N)
    for each pair in PAIRS (0 when either is absent).

    Why: the dispersion says *how much* the shared-emotion estimates disagree around the
    consensus the LLM receives, counted as much as each modality counts in it; the
    scale-free pairwise cosines say *which* modalities disagree (e.g. text vs a sarcastic
    face), which the M-CoE template's per-modality observations need.
    mu_s: [..., 3, L] in MODALITIES order; present: [..., 3] bool.
    """
    dispersion = jnp.sum(weights * jnp.sum(jnp.square(mu_s - fused[..., None, :]), axis=-1), axis=-1)
    cols = [dispersion]
    for a, b in PAIRS:
        i, j = MODALITIES.index(a), MODALITIES.index(b)
        x, y = mu_s[..., i, :], mu_s[..., j, :]
        norm = jnp.sqrt(jnp.sum(x * x, -1) * jnp.sum(y * y, -1) + eps * eps)
        cos = jnp.sum(x * y, -1) / norm
        cols.append(jnp.where(present[..., i] & present[..., j], 1.0 - cos, 0.0))
    return jnp.stack(cols, axis=-1)


def ugf(out: PDROutput, masks: Mapping[str, jax.Array] | None = None, *, eps: float = 1e-6,
        use_ugf: bool = True) -> FusionOutput:
    """Eq. 6–8 on the posterior means.  T^M = 1 / (mean_d σ²_P^M + ε), w = softmax over the
    present modalities (an absent one gets weight 0), Z_S^F = Σ_M w^M μ_S^M.  use_ugf=False
    is the paper's "w/o UGF" ablation: a plain mean over present modalities.  Note the
    softmax is over raw certainties (no temperature in the paper), so once σ²_P is small the
    gate is nearly a hard argmax.
    """
    present = _masks(out, masks)
    var_p = jnp.stack([jnp.mean(jnp.exp(out.latents[m]["P"].logvar), -1) for m in MODALITIES], -1)
    certainty = jnp.where(present, 1.0 / (var_p + eps), 0.0)
    if use_ugf:
        weights = masked_softmax(certainty, present)
    else:
        count = jnp.sum(present, -1, keepdims=True)
        weights = present / jnp.maximum(count, 1)
    mu_s = jnp.stack([out.latents[m]["S"].mu for m in MODALITIES], -2)  # [..., 3, L]
    mu_s = jnp.where(present[..., None], mu_s, 0.0)
    fused = jnp.einsum("...m,...ml->...l", weights, mu_s)

    def mean_of(m: str, k: str) -> jax.Array:
        return jnp.where(present[..., MODALITIES.index(m), None], out.latents[m][k].mu, 0.0)

    identity = jnp.concatenate([mean_of("audio", "I"), mean_of("video", "I")], -1)
    return FusionOutput(shared=fused, identity=identity, private_audio=mean_of("audio", "P"),
                        private_video=mean_of("video", "P"),
                        conflict=conflict_signal(mu_s, fused, weights, present, eps),
                        weights=weights, certainty=certainty)


def pool_rows(x: jax.Array, mask: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean of x [..., U, D] over the utterance axis where mask [..., U] holds (zeros if none);
    with `weights` [..., U] (summing to 1 over the present rows) their weighted sum instead."""
    if weights is not None:
        return jnp.sum(jnp.where(mask[..., None], weights[..., None] * x, 0.0), axis=-2)
    m = mask[..., None].astype(x.dtype)
    return jnp.sum(jnp.where(mask[..., None], x, 0.0), axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1)


def agreement_row_weights(fusion: FusionOutput, mask: jax.Array, temperature: float) -> jax.Array:
    """[..., U] pooling weights softmax_u(-τ · (1 − cos(μ_S^A, μ_S^V))) over present rows.

    OURS, not the paper's: eq. 7's gate is per utterance and reads each modality's own private
    variance, which a clip that shows another emotion does not raise (the encoder of one
    modality cannot know what the other shows).  Cross-modal disagreement can: utterances whose
    voice and face disagree count less in the dialogue-level signals.  τ = 0: the plain mean.
    """
    return masked_softmax(-temperature * fusion.conflict[..., 1], mask)


def pool_fusion(fusion: FusionOutput, mask: jax.Array, agreement_temperature: float = 0.0) -> FusionOutput:
    """Dialogue-level signals: every FusionOutput field pooled over present utterances (the
    mean; with agreement_temperature > 0 weighted by `agreement_row_weights`)."""
    w = agreement_row_weights(fusion, mask, agreement_temperature) if agreement_temperature else None
    return FusionOutput(*(pool_rows(f, mask, w) for f in fusion))


def fusion_signals(fusion: FusionOutput) -> dict[str, jax.Array]:
    """The FusionOutput fields each projector in SIGNALS consumes."""
    return {"fused": fusion.shared, "identity": fusion.identity, "private_audio": fusion.private_audio,
            "private_video": fusion.private_video, "conflict": fusion.conflict}


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Soft-prompt sizes.  The paper says "fixed-length" virtual tokens but gives no K (ours)."""
    d_model: int                    # the LLM's hidden size
    hidden_dim: int | None = None   # ours: MLP width, None = d_model
    tokens: Mapping[str, int] = dataclasses.field(default_factory=lambda: {
        "fused": 4, "identity": 2, "private_audio": 2, "private_video": 2, "conflict": 1})  # ours

    def __post_init__(self):
        if self.d_model < 1:
            raise ValueError(f"d_model = {self.d_model}: set it to the LLM's hidden size")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"hidden_dim = {self.hidden_dim}: set it to 1 or more, or None for d_model")
        if set(self.tokens) != set(SIGNALS):
            raise ValueError(f"tokens must give K for exactly {list(SIGNALS)}, got {sorted(self.tokens)}")
        bad = {k: v for k, v in self.tokens.items() if int(v) < 1}
        if bad:
            raise ValueError(f"tokens {bad}: every signal needs K >= 1 virtual tokens")


def signal_dims(latent_dim: int) -> dict[str, int]:
    """Input size of each signal for a PDR latent size."""
    return {"fused": latent_dim, "identity": 2 * latent_dim, "private_audio": latent_dim,
            "private_video": latent_dim, "conflict": CONFLICT_DIM}


class SoftPromptProjector(nnx.Module):
    """in_dim vector -> K virtual token embeddings [..., K, d_model] (Linear, GELU, Linear)."""

    def __init__(self, in_dim: int, num_tokens: int, d_model: int, *, hidden_dim: int | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = hidden_dim or d_model
        common = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(in_dim, hidden, name="fc1", names=(None, "mlp"), **common)
        self.fc2 = Linear(hidden, num_tokens * d_model, name="fc2", names=("mlp", "embed"), **common)
        self.num_tokens, self.d_model = num_tokens, d_model

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.fc2(jax.nn.gelu(self.fc1(x)))
        return y.reshape(*y.shape[:-1], self.num_tokens, self.d_model)


class MeriaProjectors(nnx.Module):
    """One SoftPromptProjector per signal in SIGNALS, K from ProjectorConfig.tokens."""

    def __init__(self, cfg: ProjectorConfig, latent_dim: int, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        dims = signal_dims(latent_dim)
        self.projectors = nnx.Dict({
            s: SoftPromptProjector(dims[s], int(cfg.tokens[s]), cfg.d_model, hidden_dim=cfg.hidden_dim,
                                   dtype=dtype, param_dtype=param_dtype, rngs=rngs) for s in SIGNALS})

    def __call__(self, fusion: FusionOutput) -> dict[str, jax.Array]:
        signals = fusion_signals(fusion)
        return {s: self.projectors[s](signals[s]) for s in SIGNALS}

    def prompt(self, fusion: FusionOutput) -> jax.Array:
        """All virtual tokens in SIGNALS order: [..., ΣK, d_model], ready to prepend."""
        per = self(fusion)
        return jnp.concatenate([per[s] for s in SIGNALS], axis=-2)
