"""The emotion-polarity classifier (the early-fusion paper, §5.1: bhadresh-savani/distilbert-base-uncased-emotion)
from local HF directories, against transformers' PyTorch models (fp32): DistilBERT, BERT and RoBERTa
sequence classifiers saved as safetensors or as a pickled pytorch_model.bin (converted once through
torch.load(weights_only=True)), the polarity score end to end, and the errors bad directories give.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from merg_jax.core import torch_bin  # noqa: E402
from merg_jax.core.assets import minilm_dir  # noqa: E402
from merg_jax.evaluation import polarity  # noqa: E402
from merg_jax.models import bert, bert_classifier  # noqa: E402

TOL = 1e-4
LABELS = {0: "sadness", 1: "joy", 2: "love", 3: "anger", 4: "fear", 5: "surprise"}  # the paper classifier's
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
HISTORIES = [["I failed my exam again.", "I studied so hard, it is not fair."],
             ["We are getting married next spring!"],
             ["My cat ran away and I cannot find her.", "I looked everywhere.", "Maybe she is scared."],
             []]
RESPONSES = ["I am so sorry, that must hurt.", "Congratulations, that is wonderful news!",
             "She will come back, cats often hide.", "Hello."]


def _tiny(kind: str, path: str, *, vocab: int = 30522, sharp: float = 1.0, spread: float = 0.3,
          head: bool = True):
    """A random tiny classifier (or bare encoder) saved with save_pretrained; every weight
    perturbed (std `spread`) so that a mis-mapped tensor shows, the head scaled by `sharp`.
    Large values make the softmaxes depend on the text (the polarity scores then spread)."""
    common = dict(vocab_size=vocab, max_position_embeddings=64)
    if kind == "distilbert":
        cfg = transformers.DistilBertConfig(**common, dim=32, n_layers=2, n_heads=4, hidden_dim=48)
        cls = transformers.DistilBertForSequenceClassification if head else transformers.DistilBertModel
    else:
        common.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
        if kind == "roberta":
            cfg = transformers.RobertaConfig(**common, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                             eos_token_id=2)
            cls = transformers.RobertaForSequenceClassification
        else:
            cfg = transformers.BertConfig(**common)
            cls = transformers.BertForSequenceClassification
    cfg.num_labels, cfg.id2label = len(LABELS), dict(LABELS)
    cfg.label2id = {v: k for k, v in LABELS.items()}
    torch.manual_seed(0)
    model = cls(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(spread * torch.randn(p.shape, generator=gen))
            if "classifier" in name and name.endswith("weight"):
                p.mul_(sharp)
    model.eval().save_pretrained(path)
    return model


def _with_tokenizer(path: str) -> str:
    """BERT's uncased WordPiece (vocab 30522, as DistilBERT's) copied next to the weights."""
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_dir(), name), os.path.join(path, name))
    return path


def _to_bin(path: str) -> None:
    """The legacy layout: the state dict pickled as pytorch_model.bin, no safetensors."""
    from safetensors.torch import load_file
    state = load_file(os.path.join(path, "model.safetensors"))
    os.remove(os.path.join(path, "model.safetensors"))
    torch.save(state, os.path.join(path, "pytorch_model.bin"))


def _padded(pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(2).integers(1000, 30000, size=(3, 13))
    for row, n in enumerate((13, 7, 3)):
        ids[row, n:] = pad
    return ids, (ids != pad).astype(np.int64)


def _torch_logits(ref, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERG_CACHE_DIR", str(tmp_path / "cache"))


def test_distilbert_classifier_and_encoder_match_pytorch(tmp_path):
    ref = _tiny("distilbert", str(tmp_path))
    ours, tok = bert_classifier.load_bert_classifier(str(tmp_path), with_tokenizer=False)
    assert tok is None and ours.head == "distilbert" and ours.labels == tuple(LABELS.values())
    assert ours.encoder.cfg.model_type == "distilbert" and ours.encoder.pooler is None
    ids, mask = _padded(pad=0)
    want = _torch_logits(ref, ids, mask)
    err = np.abs(np.asarray(ours(ids, mask)) - want).max()
    print(f"tiny DistilBERT classifier logits max abs diff {err:.2e}")
    assert err < TOL and np.abs(want).max() > 0.1
    # the encoder alone, through the general loader (BERTScore / feature paths), on real tokens
    enc = bert.load_bert_model(str(tmp_path))
    with torch.no_grad():
        hidden = ref.distilbert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    got = np.asarray(enc(ids, mask).last_hidden_state)
    assert np.abs(got - hidden.numpy())[mask.astype(bool)].max() < TOL


def test_distilbert_polarity_scores_match_pytorch(tmp_path):
    """polarity_scores(classifier_dir=...) == cos(mean history softmax, response softmax) computed
    with the PyTorch model and HF's tokenizer; empathy = (emotion + sentiment) / 2."""
    path = str(tmp_path / "clf")
    ref = _tiny("distilbert", path)
    _with_tokenizer(path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)

    def probs(text: str) -> np.ndarray:
        enc = hf_tok(text, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            logits = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        return torch.softmax(logits, -1).numpy()[0].astype(np.float64)

    scores = polarity.polarity_scores(RESPONSES, HISTORIES, classifier_dir=path)
    for i, hist in enumerate(HISTORIES[:3]):
        h, r = np.mean([probs(u) for u in hist], axis=0), probs(RESPONSES[i])
        assert scores.emotion[i] == pytest.approx(h @ r / np.linalg.norm(h) / np.linalg.norm(r), abs=1e-5)
    assert np.isnan(scores.emotion[3])  # no history, no score
    assert np.ptp(scores.emotion[:3]) > 0.05  # the scores spread: a wrong model would not pass by luck
    s = scores.summary()
    assert s["polarity_emotion"] == pytest.approx(np.mean(scores.emotion[:3]))
    assert s["polarity_empathy"] == pytest.approx(np.nanmean((scores.emotion + scores.sentiment) / 2))


@pytest.mark.parametrize("kind,pad", [("distilbert", 0), ("bert", 0), ("roberta", 1)])
def test_pytorch_bin_directory_is_converted_once(tmp_path, kind, pad, monkeypatch):
    src = tmp_path / "clf"
    ref = _tiny(kind, str(src), vocab=30522)
    _to_bin(str(src))
    before = sorted(os.listdir(src))
    assert "pytorch_model.bin" in before and "model.safetensors" not in before
    ours, _ = bert_classifier.load_bert_classifier(str(src), with_tokenizer=False)
    ids, mask = _padded(pad)
    assert np.abs(np.asarray(ours(ids, mask)) - _torch_logits(ref, ids, mask)).max() < TOL
    assert sorted(os.listdir(src)) == before  # the source directory is only read
    converted = [d for d in os.listdir(tmp_path / "cache" / "safetensors")]
    assert len(converted) == 1
    assert os.path.isfile(tmp_path / "cache" / "safetensors" / converted[0] / "model.safetensors")

    def no_second_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(torch_bin, "convert", no_second_conversion)
    again, _ = bert_classifier.load_bert_classifier(str(src), with_tokenizer=False)
    np.testing.assert_array_equal(np.asarray(again(ids, mask)), np.asarray(ours(ids, mask)))


def test_sharded_pytorch_bin_converts(tmp_path):
    src = str(tmp_path / "clf")
    ref = _tiny("distilbert", src)
    _to_bin(src)
    state = torch.load(os.path.join(src, "pytorch_model.bin"), weights_only=True)
    os.remove(os.path.join(src, "pytorch_model.bin"))
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for f, keys in shards.items():
        torch.save({k: state[k] for k in keys}, os.path.join(src, f))
    with open(os.path.join(src, "pytorch_model.bin.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}, fh)
    ours, _ = bert_classifier.load_bert_classifier(src, with_tokenizer=False)
    ids, mask = _padded(0)
    assert np.abs(np.asarray(ours(ids, mask)) - _torch_logits(ref, ids, mask)).max() < TOL


class _NotATensor:
    pass


def test_bad_directories_say_what_is_wrong(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist.*ForSequenceClassification"):
        bert_classifier.load_bert_classifier(str(empty))
    good = tmp_path / "good"
    _tiny("distilbert", str(good))

    unknown = tmp_path / "unknown"
    shutil.copytree(good, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    with pytest.raises(ValueError, match=r"unknown/config\.json.*'gpt2'.*distilbert"):
        bert_classifier.load_bert_classifier(str(unknown))

    bare = tmp_path / "bare"  # an encoder without a classification head
    _tiny("distilbert", str(bare), head=False)
    with pytest.raises(ValueError, match=r"bare has no sequence-classification head.*DistilBertModel"):
        bert_classifier.load_bert_classifier(str(bare), with_tokenizer=False)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(good / "config.json", no_weights / "config.json")
    with pytest.raises(FileNotFoundError, match=r"no weights in .*no_weights.*model\.safetensors.*pytorch_model\.bin"):
        bert_classifier.load_bert_classifier(str(no_weights))

    pickled = tmp_path / "pickled"  # a pickle that needs more than tensors is refused, not run
    pickled.mkdir()
    shutil.copy(good / "config.json", pickled / "config.json")
    torch.save({"w": torch.zeros(2), "obj": _NotATensor()}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a plain tensor state dict.*weights_only=True"):
        bert_classifier.load_bert_classifier(str(pickled))
