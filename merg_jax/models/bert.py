"""BERT / RoBERTa / DistilBERT encoder in Flax NNX, plus a loader for local HF checkpoints.

The text side of the pipeline needs a frozen sentence encoder (all-MiniLM-L6-v2 by
default) whose outputs match the PyTorch reference, so the layer maths follows HF's
`BertModel` exactly (post-LayerNorm, erf GELU, additive key mask).  Layer weights are
stacked on a leading `layers` axis and run under `jax.lax.scan`, which keeps the
compile time flat in depth.  Parameters carry logical axis names (flax 0.12 stores
them under the `out_sharding` metadata key) that `merg_jax.core.sharding` maps to a mesh.

DistilBERT lives here rather than in a file of its own because it IS this encoder: HF's
`DistilBertModel` is BERT's post-LN layer (erf GELU by default, LayerNorm eps 1e-12,
additive key mask, q scaled by 1/sqrt(d)) with no token-type embeddings and no pooler,
only its tensor and config names differ.  It runs with one all-zero token-type row, so
every encoder path (BERTScore, sentence features, the emotion classifier) takes it.
Weights: safetensors, or a `pytorch_model.bin` converted through `merg_jax.core.torch_bin`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merg_jax.core.sharding import constrain
from merg_jax.core.torch_bin import tensor_directory
from merg_jax.core.weights import TensorDirectory

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert")
_ROBERTA_LIKE = ("roberta", "xlm-roberta")
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"
    model_type: str = "bert"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; "
                             f"supported: {list(SUPPORTED_MODEL_TYPES)}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; "
                             f"supported: {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def roberta_positions(self) -> bool:
        """RoBERTa numbers positions from pad_token_id + 1 and skips pad tokens."""
        return self.model_type in _ROBERTA_LIKE

    @property
    def max_tokens(self) -> int:
        """Longest input the position table allows (RoBERTa loses pad_id + 1 slots)."""
        offset = self.pad_token_id + 1 if self.roberta_positions else 0
        return self.max_position_embeddings - offset

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "BertConfig":
        """Builds the config from an HF `config.json` dict."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported by merg_jax.models.bert; "
                             f"supported: {list(SUPPORTED_MODEL_TYPES)}")
        if model_type == "distilbert":
            return cls._from_distilbert(cfg)
        pos_type = cfg.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} is not supported; only 'absolute'")
        try:
            return cls(
                vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
                intermediate_size=int(cfg["intermediate_size"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
                type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                pad_token_id=_pad_id(cfg),
                hidden_act=str(cfg.get("hidden_act", "gelu")), model_type=model_type)
        except KeyError as err:
            raise ValueError(f"HF config lacks required field {err.args[0]!r}") from None

    @classmethod
    def _from_distilbert(cls, cfg: dict[str, Any]) -> "BertConfig":
        """DistilBertConfig's names (dim, n_layers, n_heads, hidden_dim, activation); one zero
        token-type row; HF hard-codes LayerNorm eps 1e-12.  Sinusoidal positions are read from
        the stored table like learned ones (HF saves it)."""
        try:
            return cls(
                vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["dim"]), num_layers=int(cfg["n_layers"]),
                num_heads=int(cfg["n_heads"]), intermediate_size=int(cfg["hidden_dim"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 512)), type_vocab_size=1,
                layer_norm_eps=1e-12, pad_token_id=int(cfg.get("pad_token_id") or 0),
                hidden_act=str(cfg.get("activation", "gelu")), model_type="distilbert")
        except KeyError as err:
            raise ValueError(f"DistilBERT config lacks required field {err.args[0]!r}") from None


def _pad_id(cfg: dict[str, Any]) -> int:
    pad = cfg.get("pad_token_id")
    if pad is None:  # HF's defaults: BERT pads with 0, RoBERTa with 1
        pad = 0 if cfg.get("model_type") == "bert" else 1
    return int(pad)


def _param(value: jax.Array, names: tuple[str | None, ...]) -> nnx.Param:
    # Logical names only; the mesh placement happens later in merg_jax.core.sharding,
    # so flax must not try to shard eagerly (it would need a mesh and our rules).
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: Sequence[int], dtype) -> jax.Array:
    return (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm with fp32 statistics whatever the compute dtype."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class BertOutput(NamedTuple):
    last_hidden_state: jax.Array  # (batch, length, hidden)
    pooler_output: jax.Array | None  # (batch, hidden): tanh(dense(h[:, 0])) when a pooler exists


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, param_dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.word = _param(_normal(rngs, (cfg.vocab_size, e), param_dtype), ("vocab", "embed"))
        self.position = _param(_normal(rngs, (cfg.max_position_embeddings, e), param_dtype),
                               (None, "embed"))
        self.token_type = _param(_normal(rngs, (cfg.type_vocab_size, e), param_dtype), (None, "embed"))
        self.ln_scale = _param(jnp.ones((e,), param_dtype), ("norm",))
        self.ln_bias = _param(jnp.zeros((e,), param_dtype), ("norm",))

    def __call__(self, input_ids, token_type_ids, position_ids, *, eps: float, dtype) -> jax.Array:
        x = (jnp.take(self.word[...], input_ids, axis=0)
             + jnp.take(self.position[...], position_ids, axis=0)
             + jnp.take(self.token_type[...], token_type_ids, axis=0))
        return _layer_norm(x.astype(dtype), self.ln_scale[...], self.ln_bias[...], eps)


# name -> (per-layer shape as a function of (E, I), logical names without `layers`)
_LAYER_PARAMS: dict[str, tuple[Callable[[int, int], tuple[int, ...]], tuple[str | None, ...]]] = {
    "q_kernel": (lambda e, i: (e, e), ("embed", "heads")),
    "q_bias": (lambda e, i: (e,), ("heads",)),
    "k_kernel": (lambda e, i: (e, e), ("embed", "heads")),
    "k_bias": (lambda e, i: (e,), ("heads",)),
    "v_kernel": (lambda e, i: (e, e), ("embed", "heads")),
    "v_bias": (lambda e, i: (e,), ("heads",)),
    "o_kernel": (lambda e, i: (e, e), ("heads", "embed")),
    "o_bias": (lambda e, i: (e,), ("embed",)),
    "attn_ln_scale": (lambda e, i: (e,), ("norm",)),
    "attn_ln_bias": (lambda e, i: (e,), ("norm",)),
    "mlp_in_kernel": (lambda e, i: (e, i), ("embed", "mlp")),
    "mlp_in_bias": (lambda e, i: (i,), ("mlp",)),
    "mlp_out_kernel": (lambda e, i: (i, e), ("mlp", "embed")),
    "mlp_out_bias": (lambda e, i: (e,), ("embed",)),
    "out_ln_scale": (lambda e, i: (e,), ("norm",)),
    "out_ln_bias": (lambda e, i: (e,), ("norm",)),
}


class BertEncoder(nnx.Module):
    """All layers, each parameter stacked on a leading `layers` axis for `lax.scan`."""

    def __init__(self, cfg: BertConfig, *, param_dtype, rngs: nnx.Rngs):
        for name, (shape_fn, names) in _LAYER_PARAMS.items():
            shape = (cfg.num_layers,) + shape_fn(cfg.hidden_size, cfg.intermediate_size)
            if name.endswith("_kernel"):
                value = _normal(rngs, shape, param_dtype)
            elif name.endswith("_scale"):
                value = jnp.ones(shape, param_dtype)
            else:
                value = jnp.zeros(shape, param_dtype)
            setattr(self, name, _param(value, ("layers",) + names))

    def __call__(self, x: jax.Array, key_bias: jax.Array, cfg: BertConfig, *, dtype,
                 precision, num_layers: int | None = None) -> jax.Array:
        # num_layers: run only the first n layers (BERTScore reads an inner layer).
        stacked = {name: getattr(self, name)[...][:num_layers] for name in _LAYER_PARAMS}
        act = _ACTIVATIONS[cfg.hidden_act]
        b, t, e = x.shape
        h, d = cfg.num_heads, cfg.head_dim

        def dense(y, p, w, bias):
            out = jnp.einsum("...i,io->...o", y, p[w].astype(dtype), precision=precision)
            return out + p[bias].astype(dtype)

        def layer(carry, p):
            q = dense(carry, p, "q_kernel", "q_bias").reshape(b, t, h, d)
            k = dense(carry, p, "k_kernel", "k_bias").reshape(b, t, h, d)
            v = dense(carry, p, "v_kernel", "v_bias").reshape(b, t, h, d)
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32)
            probs = jax.nn.softmax(scores * (d ** -0.5) + key_bias, axis=-1).astype(dtype)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=precision).reshape(b, t, e)
            y = _layer_norm(dense(ctx, p, "o_kernel", "o_bias") + carry,
                            p["attn_ln_scale"], p["attn_ln_bias"], cfg.layer_norm_eps)
            mid = act(dense(y, p, "mlp_in_kernel", "mlp_in_bias"))
            out = _layer_norm(dense(mid, p, "mlp_out_kernel", "mlp_out_bias") + y,
                              p["out_ln_scale"], p["out_ln_bias"], cfg.layer_norm_eps)
            return constrain(out, ("batch", "length", "act_embed")), None

        x, _ = jax.lax.scan(layer, x, stacked)
        return x


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, param_dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.kernel = _param(_normal(rngs, (e, e), param_dtype), ("embed", None))
        self.bias = _param(jnp.zeros((e,), param_dtype), (None,))

    def __call__(self, first_token: jax.Array, *, dtype, precision) -> jax.Array:
        y = jnp.einsum("bi,io->bo", first_token, self.kernel[...].astype(dtype), precision=precision)
        return jnp.tanh(y + self.bias[...].astype(dtype))


class BertModel(nnx.Module):
    """HF `BertModel` / `RobertaModel` forward (inference: no dropout)."""

    def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 add_pooler: bool = True, precision: Any = None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        # fp32 parity with PyTorch needs full-precision matmuls on GPUs/TPUs (TF32/bf16 passes
        # otherwise); lower compute dtypes keep the backend default.
        if precision is None and jnp.dtype(dtype) == jnp.float32:
            precision = "highest"
        self.precision = precision
        self.embeddings = BertEmbeddings(cfg, param_dtype=param_dtype, rngs=rngs)
        self.encoder = BertEncoder(cfg, param_dtype=param_dtype, rngs=rngs)
        self.pooler = BertPooler(cfg, param_dtype=param_dtype, rngs=rngs) if add_pooler else None

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """Default position ids: 0.. for BERT; pad_id+1.. over non-pad tokens for RoBERTa."""
        if self.cfg.roberta_positions:
            keep = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(keep, axis=1) * keep + self.cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None,
                 position_ids: jax.Array | None = None,
                 num_layers: int | None = None) -> BertOutput:
        """`num_layers=n` stops after layer n (0: the embeddings), as HF's `hidden_states[n]`;
        the pooler then reads that layer.  None runs every layer."""
        if num_layers is not None and not 0 <= num_layers <= self.cfg.num_layers:
            raise ValueError(f"num_layers={num_layers} outside [0, {self.cfg.num_layers}]")
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids,
                            eps=self.cfg.layer_norm_eps, dtype=self.dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        # (batch, 1, 1, keys): 0 for real tokens, the most negative float for padding.
        key_bias = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0,
                             jnp.finfo(jnp.float32).min).astype(jnp.float32)
        if num_layers != 0:
            x = self.encoder(x, key_bias, self.cfg, dtype=self.dtype, precision=self.precision,
                             num_layers=num_layers)
        pooled = (self.pooler(x[:, 0], dtype=self.dtype, precision=self.precision)
                  if self.pooler is not None else None)
        return BertOutput(x, pooled)


# ----------------------------------------------------------------------------
# Sentence embeddings (sentence-transformers' Pooling + Normalize modules)
# ----------------------------------------------------------------------------

def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Average of the real-token vectors; all-pad rows give zeros, not NaN."""
    mask = jnp.asarray(attention_mask, jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(mask.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


POOLINGS = ("mean", "cls")


def sentence_embedding(model: BertModel, input_ids: jax.Array, attention_mask: jax.Array,
                       pooling: str = "mean", normalize: bool = True) -> jax.Array:
    """(batch, hidden) fp32 sentence vectors, as sentence-transformers computes them."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not supported; supported: {list(POOLINGS)}")
    hidden = model(input_ids, attention_mask).last_hidden_state
    emb = mean_pool(hidden, attention_mask) if pooling == "mean" else hidden[:, 0].astype(jnp.float32)
    return l2_normalize(emb) if normalize else emb


def make_sentence_encoder(model: BertModel, pooling: str = "mean", normalize: bool = True
                          ) -> Callable[[np.ndarray, np.ndarray], jax.Array]:
    """A jitted `(input_ids, attention_mask) -> embeddings`; weights are an argument, not
    constants baked into the compiled program, so compiling per shape stays cheap.  It
    snapshots the model's weights: later in-place updates to `model` are not seen."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        return sentence_embedding(nnx.merge(graphdef, state), ids, mask, pooling, normalize)

    return lambda ids, mask: run(state, ids, mask)


# ----------------------------------------------------------------------------
# Loading a local HF checkpoint
# ----------------------------------------------------------------------------

def _hf_names(cfg: BertConfig) -> dict[tuple[str, str], tuple[list[str], bool]]:
    """(module, param) -> (HF tensor names, one per layer for stacked params; transposed?)."""
    if cfg.model_type == "distilbert":
        return _distilbert_names(cfg)
    L = range(cfg.num_layers)
    emb = {("embeddings", "word"): "embeddings.word_embeddings.weight",
           ("embeddings", "position"): "embeddings.position_embeddings.weight",
           ("embeddings", "token_type"): "embeddings.token_type_embeddings.weight",
           ("embeddings", "ln_scale"): "embeddings.LayerNorm.weight",
           ("embeddings", "ln_bias"): "embeddings.LayerNorm.bias"}
    out = {k: ([v], False) for k, v in emb.items()}
    out.update(_layer_names("encoder.layer", L, {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"},
        {"attn_ln": "attention.output.LayerNorm", "out_ln": "output.LayerNorm"}))
    out[("pooler", "kernel")] = (["pooler.dense.weight"], True)
    out[("pooler", "bias")] = (["pooler.dense.bias"], False)
    return out


def _distilbert_names(cfg: BertConfig) -> dict[tuple[str, str], tuple[list[str], bool]]:
    """DistilBERT's tensor names (no token types, no pooler)."""
    L = range(cfg.num_layers)
    emb = {"word": "embeddings.word_embeddings.weight", "position": "embeddings.position_embeddings.weight",
           "ln_scale": "embeddings.LayerNorm.weight", "ln_bias": "embeddings.LayerNorm.bias"}
    out = {("embeddings", k): ([v], False) for k, v in emb.items()}
    out.update(_layer_names("transformer.layer", L, {
        "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
        "mlp_in": "ffn.lin1", "mlp_out": "ffn.lin2"}, {"attn_ln": "sa_layer_norm", "out_ln": "output_layer_norm"}))
    return out


def _layer_names(prefix: str, layers: range, linears: dict[str, str], norms: dict[str, str]
                 ) -> dict[tuple[str, str], tuple[list[str], bool]]:
    """Stacked per-layer tensor names: each linear's kernel (transposed) and bias, each
    LayerNorm's scale and bias, as `<prefix>.<i>.<module>.weight|bias` for every layer i."""
    out = {}
    for ours, theirs in linears.items():
        out[("encoder", f"{ours}_kernel")] = ([f"{prefix}.{i}.{theirs}.weight" for i in layers], True)
        out[("encoder", f"{ours}_bias")] = ([f"{prefix}.{i}.{theirs}.bias" for i in layers], False)
    for ours, theirs in norms.items():
        out[("encoder", f"{ours}_scale")] = ([f"{prefix}.{i}.{theirs}.weight" for i in layers], False)
        out[("encoder", f"{ours}_bias")] = ([f"{prefix}.{i}.{theirs}.bias" for i in layers], False)
    return out


def _find_prefix(names: Sequence[str], path: str) -> str:
    for prefix in ("", "bert.", "roberta.", "distilbert.", "model."):
        if prefix + "embeddings.word_embeddings.weight" in names:
            return prefix
    raise KeyError(f"tensor 'embeddings.word_embeddings.weight' (with or without a 'bert.'/"
                   f"'roberta.'/'distilbert.' prefix) not found in the checkpoint at {path}")


def _legacy_name(name: str) -> str:
    """Old TF-converted checkpoints call LayerNorm weight/bias gamma/beta."""
    return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")


def read_config(path: str) -> BertConfig:
    """`BertConfig` from `<path>/config.json`, with errors that name the file."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} does not exist (need a local HF model directory)")
    try:
        with open(cfg_path) as fh:
            raw = json.load(fh)
    except ValueError as err:
        raise ValueError(f"{cfg_path}: invalid JSON ({err})") from None
    try:
        return BertConfig.from_hf(raw)
    except ValueError as err:
        raise ValueError(f"{cfg_path}: {err}") from None


def load_bert_model(path: str, dtype=jnp.float32, param_dtype=jnp.float32,
                    precision: Any = None, weights: TensorDirectory | None = None) -> BertModel:
    """A `BertModel` with the weights of a local HF BERT/RoBERTa/DistilBERT directory (no
    downloads); `weights`: its tensors when the caller has them open already."""
    path = os.path.abspath(os.path.expanduser(path))
    cfg = read_config(path)
    weights = weights if weights is not None else tensor_directory(path)
    prefix = _find_prefix(list(weights), path)
    add_pooler = prefix + "pooler.dense.weight" in weights
    model = nnx.eval_shape(lambda: BertModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                             add_pooler=add_pooler, precision=precision,
                                             rngs=nnx.Rngs(0)))
    if cfg.model_type == "distilbert":  # no segment embeddings: one zero row, token types all 0
        model.embeddings.token_type.set_value(jnp.zeros((1, cfg.hidden_size), param_dtype))
    for (module, pname), (names, transpose) in _hf_names(cfg).items():
        if module == "pooler" and not add_pooler:
            continue
        var = getattr(getattr(model, module), pname)
        target = tuple(var.get_value().shape)
        per_layer = target[1:] if module == "encoder" else target
        expected = tuple(reversed(per_layer)) if transpose else per_layer
        arrays = []
        for name in names:
            full = prefix + name
            if full not in weights and prefix + _legacy_name(name) in weights:
                full = prefix + _legacy_name(name)
            if full not in weights:
                raise KeyError(f"tensor {full!r} is missing from {', '.join(weights.files)}")
            arr = weights[full]
            if tuple(arr.shape) != expected:
                raise ValueError(f"tensor {full!r} in {weights.file_of(full)} has shape {tuple(arr.shape)}, "
                                 f"expected {expected} from {os.path.join(path, 'config.json')}")
            arr = np.asarray(arr, dtype=np.float32)
            arrays.append(arr.T if transpose else arr)
        value = np.stack(arrays) if module == "encoder" else arrays[0]
        var.set_value(jnp.asarray(value, dtype=param_dtype))
    log.info("loaded %s (%s, %d layers, hidden %d, pooler=%s)", path, cfg.model_type,
             cfg.num_layers, cfg.hidden_size, add_pooler)
    return model


def load_bert(path: str, dtype=jnp.float32, param_dtype=jnp.float32, precision: Any = None,
              with_tokenizer: bool = True):
    """`(model, tokenizer)` from a local HF directory; tokenizer is None if not requested."""
    model = load_bert_model(path, dtype=dtype, param_dtype=param_dtype, precision=precision)
    if not with_tokenizer:
        return model, None
    path = os.path.abspath(os.path.expanduser(path))
    tok_files = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model")
    if not any(os.path.exists(os.path.join(path, n)) for n in tok_files):
        raise FileNotFoundError(f"no tokenizer files in {path}: expected one of {list(tok_files)}")
    from merg_jax.core.tokenizer import load_tokenizer  # transformers import is slow; only when needed
    return model, load_tokenizer(path)
