"""Sequence classifiers on the Flax BERT encoder: HF `{Bert,Roberta,DistilBert}ForSequenceClassification`.

Used by the emotion-polarity metric (the early-fusion paper, §5.1 scores responses with
bhadresh-savani/distilbert-base-uncased-emotion).  The heads follow HF exactly
(inference, no dropout):
  bert        logits = W pooler(h)           pooler(h) = tanh(W_p h[:, 0] + b_p)
  roberta     logits = W_o tanh(W_d h[:, 0] + b_d) + b_o      (RobertaClassificationHead)
  distilbert  logits = W_c relu(W_p h[:, 0] + b_p) + b_c      (pre_classifier, classifier)
DistilBERT's encoder is BERT's post-LN layer without token types, so it runs on
`BertModel` with one all-zero token-type row and its tensors renamed here.
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


def _distilbert_encoder(path: str, raw: dict, weights: TensorDirectory, dtype, param_dtype,
                        precision) -> bert.BertModel:
    """DistilBERT's tensors into a `BertModel` (type_vocab_size 1, zero token types)."""
    if raw.get("sinusoidal_pos_embds"):
        log.info("%s: sinusoidal positions are read from the stored table", path)
    cfg = bert.BertConfig(
        vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["dim"]), num_layers=int(raw["n_layers"]),
        num_heads=int(raw["n_heads"]), intermediate_size=int(raw["hidden_dim"]),
        max_position_embeddings=int(raw.get("max_position_embeddings", 512)), type_vocab_size=1,
        layer_norm_eps=1e-12, pad_token_id=int(raw.get("pad_token_id") or 0),
        hidden_act=str(raw.get("activation", "gelu")), model_type="bert")
    model = nnx.eval_shape(lambda: bert.BertModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                  add_pooler=False, precision=precision,
                                                  rngs=nnx.Rngs(0)))
    e, L = cfg.hidden_size, range(cfg.num_layers)
    pre = "distilbert."
    emb = {"word": "embeddings.word_embeddings.weight", "position": "embeddings.position_embeddings.weight",
           "ln_scale": "embeddings.LayerNorm.weight", "ln_bias": "embeddings.LayerNorm.bias"}
    for ours, theirs in emb.items():
        var = getattr(model.embeddings, ours)
        var.set_value(jnp.asarray(_tensor(weights, pre + theirs, tuple(var.get_value().shape)),
                                  param_dtype))
    model.embeddings.token_type.set_value(jnp.zeros((1, e), param_dtype))
    layer = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
             "o": "attention.out_lin", "mlp_in": "ffn.lin1", "mlp_out": "ffn.lin2"}
    names = {}
    for ours, theirs in layer.items():
        names[f"{ours}_kernel"] = (theirs + ".weight", True)
        names[f"{ours}_bias"] = (theirs + ".bias", False)
    for ours, theirs in (("attn_ln", "sa_layer_norm"), ("out_ln", "output_layer_norm")):
        names[f"{ours}_scale"] = (theirs + ".weight", False)
        names[f"{ours}_bias"] = (theirs + ".bias", False)
    for ours, (theirs, transpose) in names.items():
        var = getattr(model.encoder, ours)
        want = tuple(var.get_value().shape[1:])
        stack = []
        for i in L:
            arr = _tensor(weights, f"{pre}transformer.layer.{i}.{theirs}",
                          tuple(reversed(want)) if transpose else want)
            stack.append(arr.T if transpose else arr)
        var.set_value(jnp.asarray(np.stack(stack), param_dtype))
    return model


def load_bert_classifier(path: str, dtype=jnp.float32, param_dtype=jnp.float32, precision: Any = None,
                         with_tokenizer: bool = True) -> tuple[BertClassifier, Any]:
    """`(classifier, tokenizer)` from a local HF `*ForSequenceClassification` directory.

    Supports model_type bert, roberta, xlm-roberta and distilbert; labels come from
    the config's id2label.  Nothing is downloaded.
    """
    path = os.path.abspath(os.path.expanduser(path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} does not exist (need a local HF classifier directory)")
    with open(cfg_path) as fh:
        raw = json.load(fh)
    model_type = raw.get("model_type")
    weights = TensorDirectory(path)
    if model_type == "distilbert":
        head = "distilbert"
        encoder = _distilbert_encoder(path, raw, weights, dtype, param_dtype, precision)
        e = encoder.cfg.hidden_size
        w = {"dense_kernel": _tensor(weights, "pre_classifier.weight", (e, e)).T,
             "dense_bias": _tensor(weights, "pre_classifier.bias", (e,))}
        out_w, out_b = "classifier.weight", "classifier.bias"
    else:
        encoder = bert.load_bert_model(path, dtype=dtype, param_dtype=param_dtype, precision=precision)
        e = encoder.cfg.hidden_size
        if "classifier.out_proj.weight" in list(weights):
            head = "roberta"
            w = {"dense_kernel": _tensor(weights, "classifier.dense.weight", (e, e)).T,
                 "dense_bias": _tensor(weights, "classifier.dense.bias", (e,))}
            out_w, out_b = "classifier.out_proj.weight", "classifier.out_proj.bias"
        else:
            head, w = "bert", {}
            if encoder.pooler is None:
                raise KeyError(f"{path}: a BERT classifier needs the pooler tensors "
                               "(bert.pooler.dense.*), which the checkpoint lacks")
            out_w, out_b = "classifier.weight", "classifier.bias"
    kernel = _tensor(weights, out_w)
    if kernel.ndim != 2 or kernel.shape[1] != e:
        raise ValueError(f"tensor {out_w!r} has shape {kernel.shape}, expected (num_labels, {e})")
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
