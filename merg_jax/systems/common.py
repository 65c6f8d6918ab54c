"""Pieces several systems share: the LM loss, soft-prompt splicing, the data view."""
from __future__ import annotations

import copy
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from configs.common import pipeline_defaults
from input_pipeline.extract_io import iter_records


def lm_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token NLL over supervised tokens, and token accuracy (float32)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    m = loss_mask.astype(jnp.float32)
    tokens = m.sum()
    denom = jnp.maximum(tokens, 1.0)
    loss = ((lse - picked) * m).sum() / denom
    correct = ((jnp.argmax(logits, axis=-1) == targets) * m).sum()
    return loss, {"tokens": tokens, "token_accuracy": correct / denom, "nll_sum": ((lse - picked) * m).sum()}


def data_view(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, split: str, *,
              train: bool) -> ml_collections.ConfigDict:
    """Pipeline config: defaults <- config.data <- stage.data, then split/eval switches."""
    c = pipeline_defaults()
    with c.unlocked():
        for src in (config.data, stage.get("data") or {}):
            for k, v in dict(src).items():
                if k in c:
                    c[k] = copy.deepcopy(v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
        c.split = split
        c.seed = int(config.seed)
        if not c.tokenizer_path and config.get("model") is not None and config.model.path:
            c.tokenizer_path = config.model.path
        if not train:
            c.shuffle = False
            c.num_epochs = 1
            c.drop_remainder = False
    return c


def llm_step_flops(llm, batch_shape: tuple[int, int], *, frozen_base: bool) -> float:
    """Analytic FLOPs of a train step of `llm` over a [B, L] batch (see train.metrics)."""
    from flax import nnx

    from merg_jax.train.metrics import llm_train_flops
    cfg = llm.config
    n = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(llm, nnx.Param)))
    n -= cfg.vocab_size * cfg.hidden_size  # the input embedding is a lookup, not a matmul
    if cfg.tie_word_embeddings:
        n += cfg.vocab_size * cfg.hidden_size  # ... but the tied head is one
    b, l = batch_shape
    return llm_train_flops(n, cfg.num_layers, cfg.num_heads * cfg.dim_head, l, b * l, frozen_base)


def prompt_ids(batch: dict) -> list[list[int]]:
    """Per real example, the prompt tokens of a prompt-only (include_target=False) batch."""
    keep = batch["example_mask"] if "example_mask" in batch else [1] * len(batch["input_ids"])
    return [list(map(int, row[:int(n)])) for row, n, k in
            zip(batch["input_ids"], batch["prompt_length"], keep) if k]


def split_emotion_response(text: str) -> tuple[str, str]:
    """'Emotion: X\nResponse: Y' -> (X, Y); a text without the markers is all response."""
    import re
    emo = re.search(r"Emotion:\s*([^\n]*)", text)
    resp = re.search(r"Response:\s*(.*)", text, flags=re.S)
    return (emo.group(1).strip() if emo else "",
            (resp.group(1) if resp else text if not emo else "").strip())


def eval_template(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict) -> str:
    """The prompt template a stage's data view uses (stage.data overrides config.data)."""
    return (stage.get("data") or {}).get("template") or config.data.template


def single_line_target(template: str) -> bool:
    """Whether the template's target is the bare next line (Listing 1: "generating **only the
    next line**"), so that a response is one line."""
    from input_pipeline import prompts
    t = prompts.TEMPLATES.get(template)
    return t is not None and tuple(t.target) == ("$response",)


def first_line(text: str) -> str:
    """The first non-empty line, stripped ("" for blank text).  Ours: an untrained instruct
    model often answers and then goes on writing the prompt's pattern (a new "### TASK ###",
    more dialogue); Listing 1 asks for one line, so the response is the first."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class FeatureNorm:
    """Per-dimension standardisation of the extracted features, from the training split.

    Raw extractor outputs live on very different scales (prosody in Hz, up to ~7e3;
    face statistics in [0, 8]; unit-norm sentence embeddings), which makes an
    unnormalised β-VAE or projector diverge on its first step.  The statistics are
    computed once from the present rows of the train split (deterministic, so a
    restored run recomputes the same values) and kept out of the optimizer.
    """

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.stats = {m: (jnp.asarray(mu), jnp.asarray(sd)) for m, (mu, sd) in stats.items()}

    def __call__(self, modality: str, x: jax.Array) -> jax.Array:
        if modality not in self.stats:
            return x
        mu, sd = self.stats[modality]
        return (x - mu) / sd

    @classmethod
    def from_data(cls, data_dir: str, split: str = "train", modalities=("audio", "video", "text"),
                  max_records: int = 5000) -> "FeatureNorm":
        sums: dict[str, list] = {}
        for rec in itertools.islice(iter_records(data_dir, split), max_records):
            for m in modalities:
                x = np.asarray(rec["features"].get(m), np.float64)
                mask = np.asarray(rec["feature_mask"].get(m), bool)
                if x.ndim != 2 or not mask.any():
                    continue
                rows = x[mask]
                acc = sums.setdefault(m, [0.0, 0.0, 0])
                acc[0] = acc[0] + rows.sum(0)
                acc[1] = acc[1] + (rows ** 2).sum(0)
                acc[2] += len(rows)
        if not sums:
            raise ValueError(f"no feature rows in {data_dir} split {split!r} to normalise with")
        stats = {}
        for m, (s1, s2, n) in sums.items():
            mu = s1 / n
            sd = np.sqrt(np.maximum(s2 / n - mu ** 2, 0.0))
            stats[m] = (mu.astype(np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32))
        return cls(stats)


class FeatureStat(nnx.Variable):
    """A fixed statistic: carried with the model (and through jit as frozen state), never trained."""


class FeatureNormModule(nnx.Module):
    """`FeatureNorm` as part of a model tree, for systems whose modules read raw features."""

    def __init__(self, norm: FeatureNorm):
        self.modalities = tuple(sorted(norm.stats))
        for m in self.modalities:
            mu, sd = norm.stats[m]
            setattr(self, f"{m}_mean", FeatureStat(mu))
            setattr(self, f"{m}_std", FeatureStat(sd))

    def __call__(self, modality: str, x: jax.Array) -> jax.Array:
        if modality not in self.modalities:
            return x
        return (x - getattr(self, f"{modality}_mean")[...]) / getattr(self, f"{modality}_std")[...]
