"""Sequence classifiers on the Flax BERT encoder: HF `{Bert,Roberta,DistilBert}ForSequenceClassification`.

Used by the emotion-polarity metric (the early-fusion paper, §5.1 scores responses with
bhadresh-savani/distilbert-base-uncased-emotion).  The heads follow HF exactly
(inference, no dropout):
  bert        logits = W pooler(h)           pooler(h) = tanh(W_p h[:, 0] + b_p)
  roberta     logits = W_o tanh(W_d h[:, 0] + b_d) + b_o      (RobertaClassificationHead)
  distilbert  logits = W_c relu(W_p h[:, 0] + b_p) + b_c      (pre_classifier, classifier)
DistilBERT's encoder is BERT's post-LN layer without token types: `merg_jax.models.bert`
loads it (one all-zero token-type row); this file adds only the heads.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.core.torch_bin import tensor_directory
from merg_jax.core.weights import TensorDirectory
from merg_jax.models import bert

log = logging.getLogger(__name__)

__all__ = ["BertClassifier", "load_bert_classifier", "classify_probs"]
HEADS = ("bert", "roberta", "distilbert")


def _param(value) -> nnx.Param:
    return nnx.Param(jnp.asarray(value), out_sharding=(None,) * np.ndim(value), eager_sharding=False)


class BertClassifier(nnx.Module):
    """An encoder plus an HF classification head; `__call__` returns float32 logits."""

    def __init__(self, encoder: bert.BertModel, head: str, weights: dict[str, np.ndarray],
                 labels: Sequence[str]):
        if head not in HEADS:
            raise ValueError(f"head {head!r} is not supported; supported: {list(HEADS)}")
        self.encoder = encoder
        self.head = head
        self.labels = tuple(labels)
        self.dense_kernel = _param(weights["dense_kernel"]) if "dense_kernel" in weights else None
        self.dense_bias = _param(weights["dense_bias"]) if "dense_bias" in weights else None
        self.out_kernel = _param(weights["out_kernel"])
        self.out_bias = _param(weights["out_bias"])

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        if self.head == "distilbert":
            token_type_ids = None  # DistilBERT has no segment embeddings (ours is one zero row)
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        prec = self.encoder.precision
        if self.head == "bert":
            x = out.pooler_output
        else:
            x = jnp.einsum("bi,io->bo", out.last_hidden_state[:, 0], self.dense_kernel[...],
                           precision=prec) + self.dense_bias[...]
            x = jnp.tanh(x) if self.head == "roberta" else jax.nn.relu(x)
        logits = jnp.einsum("bi,io->bo", x, self.out_kernel[...], precision=prec) + self.out_bias[...]
        return logits.astype(jnp.float32)


def _labels(cfg: dict, n: int) -> list[str]:
    id2label = cfg.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def _tensor(weights: TensorDirectory, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(weights[name], np.float32)  # KeyError names the files
    if shape is not None and arr.shape != shape:
        raise ValueError(f"tensor {name!r} in {weights.file_of(name)} has shape {arr.shape}, "
                         f"expected {shape}")
    return arr


NOT_A_CLASSIFIER = ("pass a directory saved from an HF *ForSequenceClassification model (config.json + "
                    "model.safetensors or pytorch_model.bin), e.g. bhadresh-savani/distilbert-base-uncased-emotion")


def _head_tensors(path: str, model_type: str, weights: TensorDirectory, e: int
                  ) -> tuple[str, dict[str, np.ndarray], str, str]:
    """(head kind, dense weights, output kernel name, output bias name) of the checkpoint."""
    names = set(weights)
    if model_type == "distilbert":
        head, dense, out = "distilbert", "pre_classifier", "classifier"
    elif "classifier.out_proj.weight" in names:
        head, dense, out = "roberta", "classifier.dense", "classifier.out_proj"
    else:
        head, dense, out = "bert", None, "classifier"
    if f"{out}.weight" not in names:
        raise ValueError(f"{path} has no sequence-classification head (no tensor {out}.weight; "
                         f"architectures {_architectures(path)}): {NOT_A_CLASSIFIER}")
    w = {}
    if dense is not None:
        w = {"dense_kernel": _tensor(weights, f"{dense}.weight", (e, e)).T,
             "dense_bias": _tensor(weights, f"{dense}.bias", (e,))}
    return head, w, f"{out}.weight", f"{out}.bias"


def _architectures(path: str) -> list:
    with open(os.path.join(path, "config.json")) as fh:
        return list(json.load(fh).get("architectures") or [])


def load_bert_classifier(path: str, dtype=jnp.float32, param_dtype=jnp.float32, precision: Any = None,
                         with_tokenizer: bool = True) -> tuple[BertClassifier, Any]:
    """`(classifier, tokenizer)` from a local HF `*ForSequenceClassification` directory.

    Supports model_type bert, roberta, xlm-roberta and distilbert (the encoder is
    merg_jax.models.bert's for all of them), weights as safetensors or pytorch_model.bin
    (converted once, merg_jax.core.torch_bin); labels come from the config's id2label.
    Nothing is downloaded.
    """
    path = os.path.abspath(os.path.expanduser(path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} does not exist: {path} is not an HF model directory; "
                                f"{NOT_A_CLASSIFIER}")
    with open(cfg_path) as fh:
        try:
            raw = json.load(fh)
        except ValueError as err:
            raise ValueError(f"{cfg_path}: invalid JSON ({err})") from None
    bert.read_config(path)  # an unsupported model_type fails here, naming the file, before any weight is read
    weights = tensor_directory(path)
    encoder = bert.load_bert_model(path, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                   weights=weights)
    e = encoder.cfg.hidden_size
    head, w, out_w, out_b = _head_tensors(path, raw.get("model_type"), weights, e)
    if head == "bert" and encoder.pooler is None:
        raise ValueError(f"{path}: a BERT classifier needs the pooler tensors (bert.pooler.dense.*), which "
                         f"the checkpoint lacks: {NOT_A_CLASSIFIER}")
    kernel = _tensor(weights, out_w)
    if kernel.ndim != 2 or kernel.shape[1] != e:
        raise ValueError(f"tensor {out_w!r} in {weights.file_of(out_w)} has shape {kernel.shape}, "
                         f"expected (num_labels, {e})")
    w.update(out_kernel=kernel.T, out_bias=_tensor(weights, out_b, (kernel.shape[0],)))
    w = {k: v.astype(jnp.dtype(param_dtype)) for k, v in w.items()}
    model = BertClassifier(encoder, head, w, _labels(raw, kernel.shape[0]))
    log.info("loaded classifier %s (%s head, %d labels: %s)", path, head, len(model.labels),
             ", ".join(model.labels))
    if not with_tokenizer:
        return model, None
    from merg_jax.core.tokenizer import load_tokenizer
    return model, load_tokenizer(path)


def classify_probs(model: BertClassifier, tokenizer: Any, texts: Sequence[str], *,
                   batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
    """Softmax class probabilities float32[N, C] (columns follow `model.labels`).

    Texts are tokenised with the model's tokenizer (special tokens, truncation to
    `max_length`, default the position table's limit); batches are padded to a
    power-of-two length so the jitted forward compiles a few shapes only.
    """
    limit = model.encoder.cfg.max_tokens
    max_length = min(max_length or limit, limit)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        logits = nnx.merge(graphdef, state)(ids, mask)
        return jax.nn.softmax(logits, axis=-1)

    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        width = min(max(8, 1 << (max(len(x) for x in ids) - 1).bit_length()), max_length)
        arr = np.full((len(ids), width), model.encoder.cfg.pad_token_id, np.int32)
        mask = np.zeros((len(ids), width), np.int32)
        for r, row in enumerate(ids):
            arr[r, :len(row)] = row
            mask[r, :len(row)] = 1
        out.append(np.asarray(run(state, arr, mask)))
    n_labels = len(model.labels)
    return np.concatenate(out) if out else np.zeros((0, n_labels), np.float32)
