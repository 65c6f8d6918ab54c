"""MERIA's Parallel Disentangled Representation (PDR) module and its loss (paper §3.1, eq. 1–5).

Eight β-VAE encoders split each utterance's frozen features into a shared-emotion
latent S, a modality-private latent P and (audio/video only: text carries no
age/gender cue) a speaker-identity latent I.  Per-modality decoders rebuild the
features from the concatenated latents and an MLP classifier on each I predicts
the avatar's profile attributes.  Every input is a batch of rows with arbitrary
leading dims (e.g. [B, U] dialogues × utterances); masks say which rows are present.

Every loss uses the *sampled* latent Z as the paper writes it (with
``deterministic=True`` Z is the mean, so evaluation uses μ).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from merg_jax.models.layers import Linear

MODALITIES = ("audio", "video", "text")
IDENTITY_MODALITIES = ("audio", "video")
LATENTS = {"audio": ("S", "P", "I"), "video": ("S", "P", "I"), "text": ("S", "P")}


def _avamerg_profile_classes() -> dict[str, int]:
    """Class counts of the AvaMERG profile vocabularies (input_pipeline.schema.PROFILE_*; the
    system passes them from there, tests/test_pdr.py checks they agree)."""
    return {"age": 4, "gender": 2, "timbre": 3}


@dataclasses.dataclass(frozen=True)
class PDRConfig:
    """PDR sizes and loss weights.  The paper gives the architecture but no numbers."""
    # Input feature size per modality (ours: whatever the frozen extractors emit;
    # the paper uses RoBERTa / Emotion2Vec+ / LibreFace but gives no sizes).
    feature_dims: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"audio": 1024, "video": 512, "text": 1024})
    latent_dim: int = 32            # ours: paper gives no latent size
    hidden_dim: int = 256           # ours: width of every encoder/decoder/classifier MLP
    num_hidden_layers: int = 2      # ours: hidden layers per MLP (paper says only "MLP")
    dropout: float = 0.1            # ours
    # Loss weights of eq. 1 and 5; the paper names them but gives no values (all ours).
    # recon is a per-element MSE, so β-VAE's β on a summed SSE corresponds to β·D_m here.
    beta: float = 1e-3              # ours: KL weight
    alpha: float = 1.0              # ours: cross-modal alignment (eq. 3)
    gamma: float = 0.01             # ours: orthogonality (eq. 4)
    delta1: float = 1.0             # ours: triplet (eq. 5); eq. 1's outer δ is folded in
    delta2: float = 1.0             # ours: profile cross-entropy (eq. 5)
    triplet_margin: float = 1.0     # ours: margin on Euclidean distances between Z_I
    # Avatar profile attributes -> number of classes (ours: AvaMERG's profile fields).
    # Defaults follow input_pipeline.schema's vocabularies (the batch's profile_age/gender/timbre).
    profile_classes: Mapping[str, int] = dataclasses.field(default_factory=_avamerg_profile_classes)

    def __post_init__(self):
        if set(self.feature_dims) != set(MODALITIES):
            raise ValueError(f"feature_dims must have exactly the keys {list(MODALITIES)}, "
                             f"got {sorted(self.feature_dims)}")
        for m, d in self.feature_dims.items():
            if int(d) <= 0:
                raise ValueError(f"feature_dims[{m!r}] = {d}: set it to the extractor's output size (> 0)")
        for name in ("latent_dim", "hidden_dim", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: set it to 1 or more")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout = {self.dropout}: set it in [0, 1)")
        for name in ("beta", "alpha", "gamma", "delta1", "delta2", "triplet_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: loss weights/margins must be >= 0")
        for attr, n in self.profile_classes.items():
            if int(n) < 2:
                raise ValueError(f"profile_classes[{attr!r}] = {n}: a class head needs 2+ classes "
                                 "(drop the attribute instead)")


class Latent(NamedTuple):
    """A diagonal-Gaussian posterior and the sample drawn from it, each [..., latent_dim]."""
    mu: jax.Array
    logvar: jax.Array
    z: jax.Array


class PDROutput(NamedTuple):
    latents: dict[str, dict[str, Latent]]          # modality -> {"S","P"[,"I"]} -> Latent
    recon: dict[str, jax.Array]                    # modality -> [..., D_m]
    profile_logits: dict[str, dict[str, jax.Array]]  # audio/video -> attribute -> [..., classes]


def reparameterize(mu: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """z = μ + exp(½ log σ²) · ε with ε = jax.random.normal(key, μ.shape, μ.dtype)."""
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def kl_standard_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(μ, σ²) || N(0, I)) summed over the last (latent) axis: shape [...]."""
    return 0.5 * jnp.sum(mu * mu + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


class MLP(nnx.Module):
    """Linear+GELU(+dropout) stack; with out_dim a final plain Linear follows."""

    def __init__(self, in_dim: int, hidden_dim: int, num_hidden: int, out_dim: int | None,
                 *, dropout: float, rngs: nnx.Rngs):
        dims = [in_dim] + [hidden_dim] * num_hidden + ([out_dim] if out_dim is not None else [])
        # Megatron-style alternation of logical axes so consecutive layers shard compatibly.
        names = [("embed", "mlp"), ("mlp", "embed")]
        self.layers = nnx.List([Linear(a, b, name=f"fc{i}", names=names[i % 2], use_bias=True, rngs=rngs)
                                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.num_hidden = num_hidden
        self.dropout = dropout

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_hidden:
                x = jax.nn.gelu(x)
                if self.dropout > 0.0 and dropout_key is not None:
                    keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1.0 - self.dropout, x.shape)
                    x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
        return x


class VAEEncoder(nnx.Module):
    """x -> (μ, log σ²) of q(Z|X), then the reparameterised sample."""

    def __init__(self, in_dim: int, cfg: PDRConfig, *, rngs: nnx.Rngs):
        self.trunk = MLP(in_dim, cfg.hidden_dim, cfg.num_hidden_layers, None, dropout=cfg.dropout, rngs=rngs)
        n = "embed" if cfg.num_hidden_layers % 2 == 0 else "mlp"  # trunk's last output axis name
        self.mu = Linear(cfg.hidden_dim, cfg.latent_dim, name="mu", names=(n, None), use_bias=True, rngs=rngs)
        self.logvar = Linear(cfg.hidden_dim, cfg.latent_dim, name="logvar", names=(n, None), use_bias=True,
                             rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None, deterministic: bool) -> Latent:
        h = self.trunk(x, None if deterministic or key is None else jax.random.fold_in(key, 1))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu if deterministic else reparameterize(mu, logvar, jax.random.fold_in(key, 0))
        return Latent(mu, logvar, z)


class ProfileClassifier(nnx.Module):
    """MLP on Z_I with one logit head per profile attribute."""

    def __init__(self, cfg: PDRConfig, *, rngs: nnx.Rngs):
        self.trunk = MLP(cfg.latent_dim, cfg.hidden_dim, cfg.num_hidden_layers, None, dropout=cfg.dropout,
                         rngs=rngs)
        n = "embed" if cfg.num_hidden_layers % 2 == 0 else "mlp"
        self.heads = nnx.Dict({a: Linear(cfg.hidden_dim, int(c), name=a, names=(n, None), use_bias=True, rngs=rngs)
                               for a, c in cfg.profile_classes.items()})

    def __call__(self, z: jax.Array, dropout_key: jax.Array | None) -> dict[str, jax.Array]:
        h = self.trunk(z, dropout_key)
        return {a: head(h) for a, head in self.heads.items()}


class PDR(nnx.Module):
    """Eight β-VAE encoders, three decoders and two profile classifiers (paper Fig. 2–3)."""

    def __init__(self, cfg: PDRConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoders = nnx.Dict({f"{m}_{k}": VAEEncoder(cfg.feature_dims[m], cfg, rngs=rngs)
                                  for m in MODALITIES for k in LATENTS[m]})
        self.decoders = nnx.Dict({m: MLP(len(LATENTS[m]) * cfg.latent_dim, cfg.hidden_dim, cfg.num_hidden_layers,
                                         cfg.feature_dims[m], dropout=cfg.dropout, rngs=rngs)
                                  for m in MODALITIES})
        self.classifiers = nnx.Dict({m: ProfileClassifier(cfg, rngs=rngs) for m in IDENTITY_MODALITIES
                                     if cfg.profile_classes})

    def __call__(self, features: Mapping[str, jax.Array], *, key: jax.Array | None = None,
                 deterministic: bool = False) -> PDROutput:
        """features[m]: [..., D_m] for every modality (absent rows: any finite values, e.g. zeros).

        key seeds every ε and dropout mask; deterministic=True gives Z = μ and no dropout.
        """
        missing = [m for m in MODALITIES if m not in features]
        if missing:
            raise ValueError(f"features lacks {missing}; pass zeros for absent modalities and mark them in masks")
        if not deterministic and key is None:
            raise ValueError("training mode samples Z and needs key=; pass a PRNG key or deterministic=True")
        for m in MODALITIES:
            if features[m].shape[-1] != self.cfg.feature_dims[m]:
                raise ValueError(f"features[{m!r}] has last dim {features[m].shape[-1]}, the config says "
                                 f"{self.cfg.feature_dims[m]}: fix PDRConfig.feature_dims")
        slot = itertools.count()
        next_key = lambda: None if deterministic else jax.random.fold_in(key, next(slot))
        latents, recon, logits = {}, {}, {}
        for m in MODALITIES:
            latents[m] = {k: self.encoders[f"{m}_{k}"](features[m], next_key(), deterministic)
                          for k in LATENTS[m]}
            z = jnp.concatenate([latents[m][k].z for k in LATENTS[m]], axis=-1)
            recon[m] = self.decoders[m](z, next_key())
        for m in IDENTITY_MODALITIES:
            key_m = next_key()
            logits[m] = self.classifiers[m](latents[m]["I"].z, key_m) if m in self.classifiers else {}
        return PDROutput(latents, recon, logits)


# ----------------------------------------------------------------------------- losses

def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over rows where `mask` holds; 0 when none does (no NaN, no gradient leak)."""
    mask = jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1)


def _sqdist(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(a - b), axis=-1)


def batch_hard_triplet(z: jax.Array, speaker: jax.Array, valid: jax.Array, margin: float) -> jax.Array:
    """Batch-hard triplet loss (Hermans et al. 2017) over all rows of z [..., L].

    Each valid anchor takes its farthest same-speaker row and nearest other-speaker
    row (Euclidean distance); loss = mean of relu(d_pos - d_neg + margin) over anchors
    that have at least one positive and one negative.  Batch-hard (not batch-all) so the
    few hard pairs are not averaged away among many easy ones.
    """
    z = z.reshape(-1, z.shape[-1])
    speaker, valid = speaker.reshape(-1), valid.reshape(-1)
    sq = jnp.sum(z * z, axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    d = jnp.sqrt(d2 + 1e-12)
    both = valid[:, None] & valid[None, :]
    same = (speaker[:, None] == speaker[None, :]) & both
    pos = same & ~jnp.eye(z.shape[0], dtype=bool)
    neg = both & ~same
    d_pos = jnp.max(jnp.where(pos, d, 0.0), axis=1)
    d_neg = jnp.min(jnp.where(neg, d, jnp.finfo(d.dtype).max), axis=1)
    ok = valid & jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    per_anchor = jax.nn.relu(jnp.where(ok, d_pos - d_neg + margin, 0.0))
    return masked_mean(per_anchor, ok)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean CE over rows in `mask` whose label is known (label -1 = unknown, ignored)."""
    known = mask & (labels >= 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    return masked_mean(nll, known)


def pdr_losses(cfg: PDRConfig, out: PDROutput, features: Mapping[str, jax.Array],
               masks: Mapping[str, jax.Array] | None = None, speaker_ids: jax.Array | None = None,
               profile_labels: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_PDR = recon + β KL + α align + γ ortho + δ1 triplet + δ2 cls (eq. 1–5).

    Reductions (ours where the paper is silent): recon = per-element MSE averaged over
    present rows, summed over modalities (eq. 2's Σ_M); KL = closed form summed over
    latent dims, averaged over present rows, summed over all 8 latents; align (eq. 3)
    sums ‖Z_S^M − Z_S^N‖² over *ordered* pairs M ≠ N as the paper writes (each
    unordered pair counts twice), each pair averaged over rows where both are present;
    ortho (eq. 4) is per row, averaged over present rows, summed over modalities (text:
    the S·P term only); triplet is batch-hard on Z_I per audio/video, summed; cls is CE
    per attribute and modality, summed.  masks[m] (missing key = all present) marks rows
    where m exists; speaker_ids / profile_labels use -1 for unknown (None = term is 0).
    Returned terms are unweighted except "identity" (eq. 5) and "total".
    """
    masks = dict(masks or {})
    lead = features[MODALITIES[0]].shape[:-1]
    mask = {m: jnp.broadcast_to(jnp.asarray(masks.get(m, True), bool), lead) for m in MODALITIES}
    terms: dict[str, jax.Array] = {}
    zero = jnp.zeros((), jnp.float32)

    for m in MODALITIES:
        err = jnp.mean(jnp.square(out.recon[m].astype(jnp.float32) - features[m].astype(jnp.float32)), axis=-1)
        terms[f"recon/{m}"] = masked_mean(err, mask[m])
        terms[f"kl/{m}"] = sum(masked_mean(kl_standard_normal(lat.mu, lat.logvar), mask[m])
                               for lat in out.latents[m].values())
    terms["recon"] = sum(terms[f"recon/{m}"] for m in MODALITIES)
    terms["kl"] = sum(terms[f"kl/{m}"] for m in MODALITIES)

    align = zero
    for a, b in itertools.permutations(MODALITIES, 2):  # ordered pairs, as eq. 3
        d = _sqdist(out.latents[a]["S"].z, out.latents[b]["S"].z)
        align = align + masked_mean(d, mask[a] & mask[b])
    terms["align"] = align

    ortho = zero
    for m in MODALITIES:
        zs = [out.latents[m][k].z for k in LATENTS[m]]
        per_row = sum(jnp.square(jnp.sum(x * y, axis=-1)) for x, y in itertools.combinations(zs, 2))
        ortho = ortho + masked_mean(per_row, mask[m])
    terms["ortho"] = ortho

    triplet, cls = zero, zero
    for m in IDENTITY_MODALITIES:
        if speaker_ids is not None:
            spk = jnp.broadcast_to(speaker_ids, lead)
            triplet = triplet + batch_hard_triplet(out.latents[m]["I"].z, spk, mask[m] & (spk >= 0),
                                                   cfg.triplet_margin)
        for attr, labels in (profile_labels or {}).items():
            if attr not in out.profile_logits[m]:
                raise KeyError(f"profile label {attr!r} has no classifier head; "
                               f"add it to PDRConfig.profile_classes (known: {sorted(out.profile_logits[m])})")
            cls = cls + masked_cross_entropy(out.profile_logits[m][attr], jnp.broadcast_to(labels, lead), mask[m])
    terms["triplet"], terms["cls"] = triplet, cls
    terms["identity"] = cfg.delta1 * triplet + cfg.delta2 * cls
    terms["total"] = (terms["recon"] + cfg.beta * terms["kl"] + cfg.alpha * align + cfg.gamma * ortho
                      + terms["identity"])
    return terms["total"], terms
