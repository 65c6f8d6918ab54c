"""BERTScore (Zhang et al. 2020) with our Flax encoder, numerically matching `bert-score` 0.3.13.

Definition, for a candidate x (tokens x_i) and a reference y (tokens y_j), with
e(.) the L2-normalised hidden states of encoder layer `layer` (run on each
sentence alone, with its [CLS]/[SEP] or <s>/</s>):
    P = sum_i w(x_i) max_j e(x_i).e(y_j) / sum_i w(x_i)
    R = sum_j w(y_j) max_i e(x_i).e(y_j) / sum_j w(y_j)
    F1 = 2PR / (P + R)
Weights: w = 1 (idf=False) or w(t) = log((M+1)/(df(t)+1)) (idf=True), M the number
of references and df(t) how many references contain token id t (unseen tokens:
log(M+1)); either way w([CLS]) = w([SEP]) = 0.  As in bert-score, the special
tokens are not scored (weight 0) but stay candidates inside the max.  A sentence
that is empty after strip() scores P = R = F1 = 0.  The early-fusion paper reports BERTScore
with roberta-large (bert-score's default layer 17); our default encoder is the
local all-MiniLM-L6-v2 (`merg_jax.core.assets.minilm_dir()`).

Known difference: bert-score takes each max over a zero-padded similarity
matrix, so a token whose best cosine is negative gets 0 when its partner sentence
was padded in the batch (a batch-dependent artefact); we take the max over real
tokens only.  Contextual-embedding cosines are positive in practice.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.models import bert

log = logging.getLogger(__name__)

__all__ = ["BertScorer", "BertScoreResult", "bertscore", "default_layer", "idf_weights", "LAYERS"]

# Layer used per model (`bert_score.utils.model2layers`, v0.3.13), keyed by HF name.
LAYERS: dict[str, int] = {
    "roberta-large": 17, "roberta-base": 10, "bert-base-uncased": 9, "bert-large-uncased": 18,
    "distilbert-base-uncased": 5, "distilroberta-base": 5, "microsoft/deberta-xlarge-mnli": 40,
    # OURS: model2layers has no all-MiniLM-L6-v2 entry (its config names the base model
    # nreimers/MiniLM-L6-H384-uncased); every 6-layer uncased BERT in the table
    # (google/bert_uncased_L-6_H-*, distilbert-base-uncased) uses layer 5.
    "nreimers/MiniLM-L6-H384-uncased": 5, "sentence-transformers/all-MiniLM-L6-v2": 5,
    "all-MiniLM-L6-v2": 5,
}


class BertScoreResult(NamedTuple):
    precision: np.ndarray  # float32[N], one per (candidate, reference) pair
    recall: np.ndarray
    f1: np.ndarray


def default_layer(model_dir: str) -> int:
    """bert-score's layer for the model in `model_dir` (LAYERS), else its last layer."""
    with open(os.path.join(model_dir, "config.json")) as fh:
        cfg = json.load(fh)
    names = [cfg.get("_name_or_path", ""), os.path.basename(os.path.normpath(model_dir)),
             os.path.basename(os.path.dirname(os.path.normpath(model_dir)))]
    for name in names:
        if name in LAYERS:
            return LAYERS[name]
    n = int(cfg.get("num_hidden_layers", cfg.get("n_layers", 0)))
    log.warning("no BERTScore layer known for %s (%s); using its last layer %d",
                model_dir, names[0] or "unnamed", n)
    return n


def _special_ids(tokenizer: Any) -> set[int]:
    return {int(t) for t in (tokenizer.cls_token_id, tokenizer.sep_token_id) if t is not None}


def idf_weights(token_ids: Sequence[Sequence[int]], special: set[int]) -> dict[int, float]:
    """bert-score's IDF over reference token-id lists: log((M+1)/(df+1)), special ids 0.

    Look up unseen ids with `.get(t, log(M+1))`.
    """
    m = len(token_ids)
    df = Counter(t for ids in token_ids for t in set(ids))
    out = {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}
    out.update({t: 0.0 for t in special})
    return out


def _bucket(n: int, limit: int) -> int:
    return min(max(8, 1 << (n - 1).bit_length()), limit)


@jax.jit
def _greedy(h, h_mask, h_w, r, r_mask, r_w):
    """P, R, F1 for padded, normalised pair batches (see the module docstring)."""
    sim = jnp.einsum("bie,bje->bij", h, r, precision="highest")
    valid = (h_mask[:, :, None] > 0) & (r_mask[:, None, :] > 0)
    sim = jnp.where(valid, sim, -jnp.inf)
    word_p = jnp.where(h_mask > 0, sim.max(axis=2), 0.0)
    word_r = jnp.where(r_mask > 0, sim.max(axis=1), 0.0)
    p = jnp.sum(word_p * h_w, 1) / jnp.maximum(jnp.sum(h_w, 1), 1e-30)
    rc = jnp.sum(word_r * r_w, 1) / jnp.maximum(jnp.sum(r_w, 1), 1e-30)
    empty = (h_mask.sum(1) <= 2) | (r_mask.sum(1) <= 2)  # only [CLS] [SEP]
    p, rc = jnp.where(empty, 0.0, p), jnp.where(empty, 0.0, rc)
    f = jnp.where(p + rc > 0, 2 * p * rc / jnp.where(p + rc > 0, p + rc, 1.0), 0.0)
    return p, rc, f


class BertScorer:
    """Holds the encoder, tokenizer and jitted layer-`layer` embedder; call `score`."""

    def __init__(self, model_dir: str | None = None, layer: int | None = None, *,
                 batch_size: int = 64, model: bert.BertModel | None = None, tokenizer: Any = None):
        if model_dir is None:
            from merg_jax.core.assets import minilm_dir
            model_dir = minilm_dir()
        self.model_dir = model_dir
        if model is None or tokenizer is None:
            model, tokenizer = bert.load_bert(model_dir)
        self.model, self.tokenizer = model, tokenizer
        self.layer = default_layer(model_dir) if layer is None else int(layer)
        if not 0 <= self.layer <= model.cfg.num_layers:
            raise ValueError(f"layer {self.layer} outside [0, {model.cfg.num_layers}] for {model_dir}")
        self.batch_size = batch_size
        self.special = _special_ids(tokenizer)
        limit = getattr(tokenizer, "model_max_length", None) or model.cfg.max_tokens
        self.max_length = int(min(limit, model.cfg.max_tokens))
        graphdef, state = nnx.split(model)
        layer_n = self.layer

        @jax.jit
        def embed(state, ids, mask):
            h = nnx.merge(graphdef, state)(ids, mask, num_layers=layer_n).last_hidden_state
            h = h.astype(jnp.float32)
            return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

        self._embed = lambda ids, mask: embed(state, ids, mask)

    def encode(self, text: str) -> list[int]:
        """bert-score's `sent_encode`: strip, special tokens, truncation; RoBERTa gets a
        leading space (its add_prefix_space=True)."""
        text = text.strip()
        if not text:  # [CLS] [SEP] (bert-score: build_inputs_with_special_tokens([]))
            return list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        if self.model.cfg.roberta_positions:
            text = " " + text
        return list(self.tokenizer(text, add_special_tokens=True, truncation=True,
                                   max_length=self.max_length)["input_ids"])

    def embed(self, token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Normalised layer-`layer` states float32[T_i, E], one per id list (batched, jitted)."""
        order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        out: list[np.ndarray | None] = [None] * len(token_ids)
        pad = self.model.cfg.pad_token_id
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            width = _bucket(max(len(token_ids[i]) for i in chunk), self.max_length)
            rows = _bucket(len(chunk), self.batch_size)  # few distinct batch shapes
            ids = np.full((rows, width), pad, np.int32)
            mask = np.zeros((rows, width), np.int32)
            for r, i in enumerate(chunk):
                ids[r, :len(token_ids[i])] = token_ids[i]
                mask[r, :len(token_ids[i])] = 1
            mask[len(chunk):, 0] = 1  # filler rows: one real token, no NaN
            hidden = np.asarray(self._embed(ids, mask))
            for r, i in enumerate(chunk):
                out[i] = hidden[r, :len(token_ids[i])]
        return out  # type: ignore[return-value]

    def idf(self, refs: Sequence[str]) -> dict[int, float]:
        """IDF weights from a reference corpus (bert-score's `get_idf_dict`)."""
        return idf_weights([self.encode(t) for t in refs], self.special)

    def score(self, cands: Sequence[str], refs: Sequence[str],
              idf: bool | Mapping[int, float] = False) -> BertScoreResult:
        """P/R/F1 per pair; `idf=True` computes IDF from `refs`, a mapping is used as is."""
        if len(cands) != len(refs):
            raise ValueError(f"{len(cands)} candidates for {len(refs)} references")
        if not len(cands):
            empty = np.zeros((0,), np.float32)
            return BertScoreResult(empty, empty, empty)
        uniq = list(dict.fromkeys(list(cands) + list(refs)))
        ids = [self.encode(t) for t in uniq]
        tok = dict(zip(uniq, ids))
        if idf is True:
            weights = idf_weights([tok[t] for t in refs], self.special)
            unseen = math.log(len(refs) + 1)
        elif idf is False:
            weights, unseen = {t: 0.0 for t in self.special}, 1.0
        else:
            weights, unseen = dict(idf), math.log(len(refs) + 1)
        emb = dict(zip(uniq, self.embed(ids)))
        outs = []
        for s in range(0, len(cands), self.batch_size):
            pairs = list(zip(cands[s:s + self.batch_size], refs[s:s + self.batch_size]))
            arrays = []
            for side in (0, 1):
                texts = [p[side] for p in pairs]
                width = _bucket(max(len(tok[t]) for t in texts), self.max_length)
                rows = _bucket(len(texts), self.batch_size)
                e = np.zeros((rows, width, emb[texts[0]].shape[-1]), np.float32)
                m = np.zeros((rows, width), np.int32)
                w = np.zeros((rows, width), np.float32)
                for r, t in enumerate(texts):
                    n = len(tok[t])
                    e[r, :n], m[r, :n] = emb[t], 1
                    w[r, :n] = [weights.get(i, unseen) for i in tok[t]]
                arrays += [e, m, w]
            p, r, f = (np.asarray(x)[:len(pairs)] for x in _greedy(*arrays))
            outs.append(np.stack([p, r, f], -1))
        allp = np.concatenate(outs).astype(np.float32)
        return BertScoreResult(allp[:, 0], allp[:, 1], allp[:, 2])


def bertscore(cands: Sequence[str], refs: Sequence[str], model_dir: str | None = None,
              layer: int | None = None, idf: bool | Mapping[int, float] = False,
              batch_size: int = 64) -> BertScoreResult:
    """One-shot `BertScorer(model_dir, layer).score(cands, refs, idf)`."""
    return BertScorer(model_dir, layer, batch_size=batch_size).score(cands, refs, idf)
