"""BERTScore against the `bert-score` package, and the Flax sequence classifiers against
transformers' PyTorch `*ForSequenceClassification` (the emotion-polarity path)."""
from __future__ import annotations

import logging
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path must never turn into a download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from merg_jax.core.assets import minilm_dir  # noqa: E402
from merg_jax.evaluation import bertscore, polarity  # noqa: E402
from merg_jax.models import bert, bert_classifier  # noqa: E402

CANDS = ["I am so sorry to hear that, it must be hard.", "That's great news! Congratulations!",
         "ok", "The weather is nice today.", "Don't worry, you will pass the exam next time."]
REFS = ["I'm really sorry, that sounds so difficult.", "Wow, congratulations on the new job!",
        "Okay, I understand how you feel.", "The weather is nice today.",
        "I believe in you; the next exam will go better."]


@pytest.fixture(scope="module")
def scorer():
    return bertscore.BertScorer(minilm_dir())


def test_default_layer_for_minilm(scorer):
    assert bertscore.default_layer(minilm_dir()) == 5 and scorer.layer == 5


@pytest.mark.parametrize("idf", [False, True])
def test_matches_bert_score(scorer, idf):
    bert_score = pytest.importorskip("bert_score")
    ours = np.stack(scorer.score(CANDS, REFS, idf=idf), -1)
    p, r, f = bert_score.score(CANDS, REFS, model_type=minilm_dir(), num_layers=scorer.layer, idf=idf,
                               nthreads=0, device="cpu", batch_size=3)
    ref = np.stack([p.numpy(), r.numpy(), f.numpy()], -1)
    err = np.abs(ours - ref).max()
    print(f"BERTScore (MiniLM layer {scorer.layer}, idf={idf}) max abs diff vs bert-score: {err:.2e}")
    assert err < 1e-4
    np.testing.assert_allclose(ours[3], 1.0, atol=1e-5)  # identical pair
    assert ours[:, 0].std() > 0.05  # the pairs differ: a constant output would not pass


def test_idf_changes_scores_and_weights(scorer):
    plain = np.stack(scorer.score(CANDS, REFS), -1)
    idf = np.stack(scorer.score(CANDS, REFS, idf=True), -1)
    assert np.abs(plain - idf).max() > 1e-3
    w = scorer.idf(["a b", "a c"])  # M = 2; "a" in both refs: log(3/3) = 0; "b": log(3/2)
    tok = scorer.tokenizer
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    assert w[a] == pytest.approx(0.0) and w[b] == pytest.approx(np.log(1.5))
    assert w[tok.cls_token_id] == 0.0 and w[tok.sep_token_id] == 0.0


def test_empty_and_layer_choice(scorer):
    got = scorer.score(["", "fine"], ["hello there", ""])
    np.testing.assert_array_equal(np.stack(got), 0.0)  # bert-score's convention for empty sides
    low = bertscore.BertScorer(minilm_dir(), layer=1, model=scorer.model, tokenizer=scorer.tokenizer)
    assert np.abs(np.asarray(low.score(CANDS[:2], REFS[:2]).f1)
                  - np.asarray(scorer.score(CANDS[:2], REFS[:2]).f1)).max() > 1e-3
    with pytest.raises(ValueError):
        bertscore.BertScorer(minilm_dir(), layer=7, model=scorer.model, tokenizer=scorer.tokenizer)


def test_bert_num_layers_matches_hf_hidden_states(tmp_path):
    ref = transformers.BertModel(transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=40))
    _randomize(ref)
    ref.eval().save_pretrained(str(tmp_path))
    ours, _ = bert.load_bert(str(tmp_path), with_tokenizer=False)
    ids = np.random.default_rng(0).integers(3, 97, size=(2, 9))
    ids[1, 5:] = 0
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        hs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 output_hidden_states=True).hidden_states
    for n in (0, 2):  # 0: the embeddings; the full depth is covered by tests/test_bert.py
        got = np.asarray(ours(ids, mask, num_layers=n).last_hidden_state)
        err = np.abs(got - hs[n].numpy())[mask.astype(bool)].max()
        assert err < 1e-5, (n, err)


# ---------------------------------------------------------------------------
# Sequence classifiers
# ---------------------------------------------------------------------------
def _randomize(model) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


LABELS = {0: "anger", 1: "joy", 2: "sadness"}


def _tiny_classifier(kind: str, path: str, vocab: int = 97):
    if kind == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4,
                                            hidden_dim=48, max_position_embeddings=40)
        cls = transformers.DistilBertForSequenceClassification
    else:
        common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=40)
        if kind == "roberta":
            cfg = transformers.RobertaConfig(**common, type_vocab_size=1, pad_token_id=1,
                                             bos_token_id=0, eos_token_id=2)
            cls = transformers.RobertaForSequenceClassification
        else:
            cfg = transformers.BertConfig(**common)
            cls = transformers.BertForSequenceClassification
    cfg.num_labels, cfg.id2label = 3, dict(LABELS)
    cfg.label2id = {v: k for k, v in LABELS.items()}
    torch.manual_seed(0)
    model = cls(cfg)
    _randomize(model)
    model.eval().save_pretrained(path)
    return model


@pytest.mark.parametrize("kind,pad", [("bert", 0), ("roberta", 1), ("distilbert", 0)])
def test_classifier_matches_pytorch(tmp_path, kind, pad):
    ref = _tiny_classifier(kind, str(tmp_path))
    ours, tok = bert_classifier.load_bert_classifier(str(tmp_path), with_tokenizer=False)
    assert tok is None and ours.head == kind and ours.labels == ("anger", "joy", "sadness")
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 97, size=(3, 11))
    for row, n in enumerate((11, 6, 3)):
        ids[row, n:] = pad
    mask = (ids != pad).astype(np.int64)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(ours(ids, mask))
    err = np.abs(got - want).max()
    print(f"tiny {kind} classifier logits max abs diff: {err:.2e}")
    assert err < 1e-5 and np.abs(want).max() > 0.1


class _HashTokenizer:
    """[CLS]=1 word ids... [SEP]=2 (ids in [3, 97)), enough for classify_probs."""

    def __call__(self, texts, truncation=True, max_length=None):
        rows = [[1] + [3 + sum(map(ord, w)) % 94 for w in t.lower().split()] + [2] for t in texts]
        return {"input_ids": [r[:max_length] for r in rows]}


def test_emotion_match_and_polarity(tmp_path, caplog):
    ref = _tiny_classifier("bert", str(tmp_path))
    model, _ = bert_classifier.load_bert_classifier(str(tmp_path), with_tokenizer=False)
    tok = _HashTokenizer()
    hist = [["I failed my exam", "I feel awful"], ["what a great day"], []]
    resp = ["I am sorry to hear that", "so happy for you", "hello"]
    got = polarity.emotion_match(resp, hist, model, tok, batch_size=2)

    def probs(texts):
        enc = tok(texts)["input_ids"]
        width = max(map(len, enc))
        ids = np.array([r + [0] * (width - len(r)) for r in enc])
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor((ids != 0) * 1)).logits
        return torch.softmax(logits, -1).numpy().astype(np.float64)

    for i in range(2):  # cos(mean of history softmaxes, response softmax)
        h, r = probs(hist[i]).mean(0), probs([resp[i]])[0]
        assert got[i] == pytest.approx(h @ r / np.linalg.norm(h) / np.linalg.norm(r), abs=1e-5)
    assert np.isnan(got[2]) and 0 < got[0] <= 1

    # end to end from a directory, with a real tokenizer copied next to the weights
    full = tmp_path / "full"
    _tiny_classifier("bert", str(full), vocab=30522)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir(), name), full / name)
    scores = polarity.polarity_scores(resp[:2], hist[:2], classifier_dir=str(full))
    s = scores.summary()
    assert set(s) == {"polarity_sentiment", "polarity_emotion", "polarity_empathy"}
    assert s["polarity_empathy"] == pytest.approx((s["polarity_sentiment"] + s["polarity_emotion"]) / 2)
    with caplog.at_level(logging.WARNING):
        assert polarity.polarity_scores(resp, hist).emotion is None
    assert "emotion polarity skipped" in caplog.text
