"""BERT/RoBERTa port and text extractor against transformers' PyTorch models (fp32).

Padded positions of BERT's last hidden state are excluded from the MiniLM comparison:
they are never used (pooling masks them) and PyTorch's own fp32 result there differs
from its fp64 result by ~7e-5, so they would measure noise, not the port.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import jax.numpy as jnp  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from input_pipeline.features import registry  # noqa: E402
from input_pipeline.features import text as text_features  # noqa: E402,F401  (registers)
from input_pipeline.features.registry import MediaError  # noqa: E402
from merg_jax.core.assets import minilm_dir  # noqa: E402
from merg_jax.models import bert  # noqa: E402

TOL = 1e-4
SENTENCES = [
    "I finally got the job I have been dreaming about for years!",
    "ok",
    "My grandmother passed away last night and I keep thinking about all the summers "
    "we spent together at her house by the lake.",
    "Why does nobody ever listen to me?",
    "That's wonderful news, congratulations.",
]


def _torch_sentence_embedding(hidden: "torch.Tensor", mask: "torch.Tensor") -> np.ndarray:
    """sentence-transformers' Pooling(mean) + Normalize, written in torch."""
    m = mask.unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def minilm_reference():
    path = minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    ref = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        out = ref(**batch)
    return {"batch": batch, "hidden": out.last_hidden_state.numpy(),
            "pooled": out.pooler_output.numpy(),
            "embedding": _torch_sentence_embedding(out.last_hidden_state, batch["attention_mask"])}


def test_minilm_matches_pytorch(minilm_reference):
    model, tok = bert.load_bert(minilm_dir())
    batch = minilm_reference["batch"]
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert mask.min() == 0 and mask.sum(1).min() < mask.shape[1] // 2  # padding is exercised
    out = model(ids, mask, batch["token_type_ids"].numpy())
    valid = mask.astype(bool)
    hidden_err = np.abs(np.asarray(out.last_hidden_state) - minilm_reference["hidden"])[valid].max()
    pooled_err = np.abs(np.asarray(out.pooler_output) - minilm_reference["pooled"]).max()
    emb = np.asarray(bert.make_sentence_encoder(model)(ids, mask))
    emb_err = np.abs(emb - minilm_reference["embedding"]).max()
    print(f"MiniLM max abs diff: hidden {hidden_err:.2e} pooler {pooled_err:.2e} embedding {emb_err:.2e}")
    assert hidden_err < TOL and pooled_err < TOL and emb_err < TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # our tokenizer is the same files' tokenizer
    assert tok(SENTENCES[0])["input_ids"] == batch["input_ids"][0][: int(mask[0].sum())].tolist()


def _randomize(model: "torch.nn.Module") -> None:
    """Default init leaves biases 0 and LayerNorms 1; perturb all so mis-mapping shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _tiny(kind: str, path: str, **save_kwargs) -> "torch.nn.Module":
    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=40)
    if kind == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(
            **common, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    else:
        model = transformers.BertModel(transformers.BertConfig(**common, type_vocab_size=2))
    _randomize(model)
    model.eval().save_pretrained(path, **save_kwargs)
    return model


def _padded_ids(pad: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, size=(3, 12))
    for row, n in enumerate((12, 7, 3)):
        ids[row, n:] = pad
    return ids


def _compare(ours: bert.BertModel, ref: "torch.nn.Module", ids: np.ndarray, pad: int) -> float:
    mask = (ids != pad).astype(np.int64)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    got = ours(ids, mask)
    err = max(np.abs(np.asarray(got.last_hidden_state) - want.last_hidden_state.numpy()).max(),
              np.abs(np.asarray(got.pooler_output) - want.pooler_output.numpy()).max())
    return float(err)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("roberta"))
    return path, _tiny("roberta", path)


def test_tiny_roberta_matches_pytorch(tiny_roberta):
    path, ref = tiny_roberta
    ours, tok = bert.load_bert(path, with_tokenizer=False)
    assert tok is None and ours.cfg.roberta_positions
    ids = _padded_ids(pad=1)
    err = _compare(ours, ref, ids, pad=1)
    print(f"tiny RoBERTa max abs diff: {err:.2e}")
    assert err < TOL
    # the offset matters: positions counted from 0 (BERT style) must not match
    mask = (ids != 1).astype(np.int64)
    bert_pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    wrong = ours(ids, mask, position_ids=bert_pos).last_hidden_state
    assert np.abs(np.asarray(wrong) - want.numpy()).max() > 100 * TOL


def test_params_carry_logical_axis_names(tiny_roberta):
    model, _ = bert.load_bert(tiny_roberta[0], param_dtype=jnp.bfloat16, with_tokenizer=False)
    from flax import nnx
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) == 5 + 16 + 2
    allowed = {"vocab", "embed", "mlp", "heads", "norm", "layers", None}
    for path, var in params:
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.get_value().ndim and set(names) <= allowed, path
        assert var.get_value().dtype == jnp.bfloat16
        assert (names[0] == "layers") == (path[0] == "encoder"), path
    assert model.encoder.q_kernel.get_value().shape == (2, 32, 32)


def test_sharded_checkpoint_loads(tmp_path):
    ref = _tiny("bert", str(tmp_path), max_shard_size="20KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    ours, _ = bert.load_bert(str(tmp_path), with_tokenizer=False)
    assert not ours.cfg.roberta_positions
    err = _compare(ours, ref, _padded_ids(pad=0), pad=0)
    print(f"tiny sharded BERT max abs diff: {err:.2e}")
    assert err < TOL
    os.remove(tmp_path / sorted(shards)[-1])
    with pytest.raises(FileNotFoundError, match=sorted(shards)[-1]):
        bert.load_bert(str(tmp_path), with_tokenizer=False)


@pytest.fixture
def broken_copy(tiny_roberta, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_roberta[0], dst)
    return dst


def test_missing_config(broken_copy):
    os.remove(broken_copy / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.load_bert(str(broken_copy), with_tokenizer=False)


def test_missing_weights_file(broken_copy):
    os.remove(broken_copy / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        bert.load_bert(str(broken_copy), with_tokenizer=False)


def test_missing_tokenizer_is_named(broken_copy):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        bert.load_bert(str(broken_copy))


def _edit_tensors(path, edit) -> str:
    file = str(path / "model.safetensors")
    tensors = load_file(file)
    name = next(k for k in tensors if k.endswith("encoder.layer.1.attention.self.key.weight"))
    edit(tensors, name)
    save_file(tensors, file, metadata={"format": "pt"})
    return name


def test_missing_tensor_is_named(broken_copy):
    name = _edit_tensors(broken_copy, lambda t, n: t.pop(n))
    with pytest.raises(KeyError, match=name.replace(".", r"\.")) as info:
        bert.load_bert(str(broken_copy), with_tokenizer=False)
    assert "model.safetensors" in str(info.value)


def test_misshaped_tensor_is_named(broken_copy):
    def shrink(t, n):
        t[n] = t[n][:, :16].contiguous()
    name = _edit_tensors(broken_copy, shrink)
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + r".*\(32, 16\)"):
        bert.load_bert(str(broken_copy), with_tokenizer=False)


def test_unsupported_model_type(broken_copy):
    cfg = json.loads((broken_copy / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (broken_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"'gpt2'.*bert.*roberta"):
        bert.load_bert(str(broken_copy), with_tokenizer=False)


def test_text_extractor(minilm_reference):
    ex = registry.create("minilm", batch_size=4)
    assert ex.modality == "text"
    settings = ex.settings()
    assert (settings["pooling"], settings["normalize"], settings["max_length"]) == ("mean", True, 256)
    assert ex.output_spec() == {"text_embedding": ((384,), "float32")}
    items = SENTENCES + ["", "   \n"]
    batch = ex.extract_batch(items)
    for i, text in enumerate(SENTENCES):
        one = ex.extract(text)["text_embedding"]
        assert one.shape == (384,) and one.dtype == np.float32
        np.testing.assert_allclose(batch[i]["text_embedding"], one, atol=1e-5)
    got = np.stack([batch[i]["text_embedding"] for i in range(len(SENTENCES))])
    err = np.abs(got - minilm_reference["embedding"]).max()
    print(f"text extractor vs PyTorch mean-pooled embedding: max abs diff {err:.2e}")
    assert err < TOL
    for bad in batch[len(SENTENCES):]:
        assert isinstance(bad, MediaError) and bad.reason == "empty utterance"
    with pytest.raises(MediaError, match="empty utterance"):
        ex.extract("")
