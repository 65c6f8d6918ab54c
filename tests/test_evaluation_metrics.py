"""Evaluation metrics on hand-worked examples (expected numbers derived in the comments)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.evaluation import distinct, emotion, perplexity, polarity, report, submission

# ---------------------------------------------------------------------------
# Distinct-n
# ---------------------------------------------------------------------------
TEXTS = ["I am happy.", "I am sad, I am.", "Wow!"]
# tokens: [i, am, happy, .]  [i, am, sad, ",", i, am, .]  [wow, !]


def test_tokenize():
    assert distinct.tokenize("I am sad, I am.") == ["i", "am", "sad", ",", "i", "am", "."]
    assert distinct.tokenize("Don't STOP!!") == ["don't", "stop", "!", "!"]


def test_dist_corpus():
    # unigrams: 4 + 7 + 2 = 13 in all; distinct {i, am, happy, ., sad, ",", wow, !} = 8
    assert distinct.dist_n_corpus(TEXTS, 1) == pytest.approx(8 / 13)
    # bigrams: 3 + 6 + 1 = 10; distinct: (i am) (am happy) (happy .) (am sad) (sad ,) (, i)
    # (am .) (wow !) = 8; (i am) occurs 3 times
    assert distinct.dist_n_corpus(TEXTS, 2) == pytest.approx(8 / 10)
    # n-grams never cross responses: ["a b", "a b"] has 2 bigrams, 1 distinct (no "b a")
    assert distinct.dist_n_corpus(["a b", "a b"], 2) == pytest.approx(0.5)
    assert distinct.dist_n_corpus([], 2) == 0.0


def test_dist_mean():
    # dist-1 per response: 4/4, 5/7 ({i, am, sad, ",", .}), 2/2 -> mean (1 + 5/7 + 1)/3 = 19/21
    assert distinct.dist_n_mean(TEXTS, 1) == pytest.approx(19 / 21)
    # dist-2: 3/3, 5/6, 1/1 -> (1 + 5/6 + 1)/3 = 17/18
    assert distinct.dist_n_mean(TEXTS, 2) == pytest.approx(17 / 18)
    # dist-3: "I am sad, I am." has 5 trigrams, all distinct; "Wow!" has none:
    #   skip -> mean(1, 1) = 1;  zero -> (1 + 1 + 0)/3 = 2/3
    assert distinct.dist_n_mean(TEXTS, 3) == pytest.approx(1.0)
    assert distinct.dist_n_mean(TEXTS, 3, short="zero") == pytest.approx(2 / 3)
    # the two definitions differ: corpus dist-1 8/13 = 0.615 vs mean 0.905
    assert distinct.dist_n_corpus(TEXTS, 1) < distinct.dist_n_mean(TEXTS, 1) - 0.2
    assert distinct.dist_n_mean(["hi"], 2) == 0.0
    with pytest.raises(ValueError):
        distinct.dist_n_mean(TEXTS, 2, short="drop")


# ---------------------------------------------------------------------------
# Emotion accuracy
# ---------------------------------------------------------------------------
def test_parse_emotion_templates():
    assert emotion.parse_emotion("Emotion: Sad\nResponse: I'm sorry.") == "Sad"
    coe = ("Firstly, the event scenario of this conversation is: lost a job\n"
           "Secondly, the emotion of the speaker is: disappointed\n"
           "Thirdly, the emotion cause is: the layoff\nFinally, the response is: Sorry.")
    assert emotion.parse_emotion(coe) == "disappointed"
    mcoe = ("Visual observation: frown; emotion: sad; confidence: high\n"
            "Audio observation: shaky; emotion: angry; confidence: low\n"
            "Event scenario: exam\nSpeaker emotion: anxious\nEmotion cause: the exam")
    assert emotion.parse_emotion(mcoe) == "anxious"  # the speaker line, not the cue lines
    assert emotion.parse_emotion("I'm so sorry you feel sad.") is None  # no marker: no guess
    assert emotion.parse_emotion(None) is None


def test_normalize_emotion():
    assert emotion.normalize_emotion("Very Anxious.") == ("anxious", "fear")
    assert emotion.normalize_emotion("joy") == ("happy", "happy")  # coarse alias
    assert emotion.normalize_emotion("terrified") == ("terrified", "fear")
    assert emotion.normalize_emotion("the speaker feels lonely") == ("lonely", "sad")
    assert emotion.normalize_emotion("blah") is None
    assert emotion.normalize_emotion("") is None


def test_label_of_tidies_the_generated_field():
    # what MERIA's Response LLM wrote when it dropped the newline after the label
    assert emotion.label_of("surprised. Confidence: high. Response: Wow!") == "surprised"
    assert emotion.label_of("sad.") == "sad"
    assert emotion.label_of("joy") == "happy"
    assert emotion.label_of("no idea") == "" and emotion.label_of(None) == ""


def test_emotion_accuracy_hand_worked():
    preds = ["anxious", "afraid", "joy", None, "gibberish", "Sad"]
    golds = ["anxious", "terrified", "excited", "sad", "angry", "devastated"]
    # 1 anxious/anxious: fine + coarse hit (fear)      2 afraid/terrified: coarse only (fear)
    # 3 joy->happy / excited->happy: coarse only        4 None: unparseable, wrong
    # 5 gibberish: unparseable, wrong                   6 sad / devastated->sad: coarse only
    # fine 1/6, coarse 4/6, n 6, unparseable 2
    got = emotion.emotion_accuracy(preds, golds)
    assert got == {"acc_fine": pytest.approx(1 / 6), "acc_coarse": pytest.approx(4 / 6),
                   "n": 6, "n_unparseable": 2}
    # a coarse-only gold (synthetic corpus) matches the same coarse word at fine level
    assert emotion.emotion_accuracy(["happy"], ["happy"])["acc_fine"] == 1.0
    with pytest.raises(ValueError, match="not a known emotion"):
        emotion.emotion_accuracy(["sad"], ["meh"])
    with pytest.raises(ValueError):
        emotion.emotion_accuracy(["sad"], [])


# ---------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------
def test_perplexity_token_weighted():
    # NLL sums 2 and 4 nats over 1 and 3 tokens: exp(6/4) = exp(1.5) = 4.481689...
    # (the mean of per-example PPLs, (e^2 + e^(4/3))/2 = 5.59, would be wrong)
    assert perplexity.perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    assert perplexity.perplexity(jnp.array([2.0, 4.0]), np.array([1, 3])) == pytest.approx(4.4816891)
    with pytest.raises(ValueError):
        perplexity.perplexity([0.0], [0])


class _Bigram(nnx.Module):
    """logits[b, t] = table[input_ids[b, t]]: next-token log-probs we know by hand."""

    def __init__(self, table):
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None):
        return types.SimpleNamespace(logits=self.table[...][input_ids])


def test_target_nll_hand_worked():
    table = np.log([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    batch = {  # row 0: tokens 0 1 2, both transitions are targets; row 1: prompt 2, target 2 -> 0
        "input_ids": np.array([[0, 1, 2], [2, 2, 0]]),
        "targets": np.array([[1, 2, 0], [2, 0, 0]]),
        "loss_mask": np.array([[1, 1, 0], [0, 1, 0]]),
        "attention_mask": np.array([[1, 1, 1], [1, 1, 0]]),
        "positions": np.array([[0, 1, 2], [0, 1, 0]]),
        "example_id": np.array(["a", "b"]),  # strings are ignored
    }
    nll, count = perplexity.target_nll(_Bigram(table), batch)
    # row 0: -log p(1|0) - log p(2|1) = log 4 + log 1.25 = log 5;  row 1: -log p(0|2) = log 3
    np.testing.assert_allclose(np.asarray(nll), [math.log(5), math.log(3)], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(count), [2, 1])
    # PPL = exp((log 5 + log 3) / 3) = 15^(1/3)
    assert perplexity.perplexity(nll, count) == pytest.approx(15 ** (1 / 3), rel=1e-6)
    packed = dict(batch, segment_ids=np.array([[1, 1, 2], [1, 1, 0]]))
    with pytest.raises(ValueError, match="packed"):
        perplexity.target_nll(_Bigram(table), packed)
    with pytest.raises(KeyError, match="positions"):
        perplexity.target_nll(_Bigram(table), {k: v for k, v in batch.items() if k != "positions"})


class _CharTokenizer:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return {"input_ids": [ord(c) - ord("a") + 10 for c in text]}


def test_context_free_batch_layout():
    b = perplexity.context_free_batch(_CharTokenizer(), ["ab", "abcd"], pad_multiple=8)
    assert b["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(b["input_ids"][0], [1, 10, 11, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["targets"][0], [10, 11, 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["loss_mask"].sum(1), [3, 5])  # response tokens + EOS
    np.testing.assert_array_equal(b["positions"][1], [0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(b["attention_mask"][1], [1] * 6 + [0] * 2)
    cut = perplexity.context_free_batch(_CharTokenizer(), ["abcdef"], max_length=4)
    np.testing.assert_array_equal(cut["input_ids"][0, :4], [1, 10, 11, 2])  # EOS kept
    no_bos = _CharTokenizer()
    no_bos.bos_token_id = None
    assert perplexity.context_free_batch(no_bos, ["a"])["input_ids"][0, 0] == 2  # EOS starts


def test_target_nll_matches_numpy_on_causal_lm():
    from merg_jax.models.llama import CausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, tie_word_embeddings=True)
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    emb = model.embed_tokens.embedding  # O(1) embeddings: peaked logits, so an off-by-one shows
    emb.set_value(jax.random.normal(jax.random.key(1), emb.get_value().shape))
    b = perplexity.context_free_batch(_CharTokenizer(), ["abc", "bcdefg"], pad_multiple=4)
    b["loss_mask"][1, :2] = 0  # pretend the first two tokens of row 1 are context
    nll, count = perplexity.target_nll(model, b)
    forward = nnx.jit(lambda m, i, a, p: m(i, attention_mask=a, positions=p).logits)
    logits = np.asarray(forward(model, b["input_ids"], b["attention_mask"], b["positions"]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -(np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0] * b["loss_mask"]).sum(1)
    np.testing.assert_allclose(np.asarray(nll), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(count), [4, 5])
    assert np.std(logits) > 1.0  # the check above is not between near-uniform distributions
    # soft-prompt path: the same tokens given as embeddings score the same
    soft = dict(b, inputs_embeds=np.asarray(model.embed(jnp.asarray(b["input_ids"]))))
    np.testing.assert_allclose(np.asarray(perplexity.target_nll(model, soft)[0]), want, rtol=1e-5)


# ---------------------------------------------------------------------------
# Polarity (VADER path)
# ---------------------------------------------------------------------------
def test_sentiment_match_against_vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    sia = SentimentIntensityAnalyzer()
    hist = [["I love this, it is wonderful!", "This is terrible and I hate it."],
            ["The table is brown."], []]
    resp = ["ok", "The chair is brown.", "ok"]
    got = polarity.sentiment_match(resp, hist)
    # vaderSentiment 3.3.2 compounds: +0.8478, -0.7783, "ok" +0.296, "...brown." 0.0
    # row 0: s_hist = (0.8478 - 0.7783)/2 = 0.03475 -> 1 - |0.03475 - 0.296| = 0.73875
    # row 1: 1 - |0 - 0| = 1;  row 2: no history -> NaN
    assert got[0] == pytest.approx(0.73875, abs=1e-9) and got[1] == 1.0 and np.isnan(got[2])
    direct = 1 - abs(np.mean([sia.polarity_scores(u)["compound"] for u in hist[0]])
                     - sia.polarity_scores(resp[0])["compound"])
    assert got[0] == pytest.approx(direct, abs=1e-12)
    joined = polarity.sentiment_match(resp[:1], hist[:1], history="joined")
    assert joined[0] == pytest.approx(
        1 - abs(sia.polarity_scores("\n".join(hist[0]))["compound"] - 0.296), abs=1e-12)
    gold = polarity.sentiment_match_gold(["ok"], ["I love this, it is wonderful!"])
    assert gold[0] == pytest.approx(1 - abs(0.296 - 0.8478), abs=1e-9)
    scores = polarity.polarity_scores(resp, hist)  # no classifier: sentiment only
    assert scores.emotion is None and scores.empathy is None
    # summary skips the NaN row: (0.73875 + 1) / 2
    assert scores.summary() == {"polarity_sentiment": pytest.approx((0.73875 + 1) / 2)}
    both = polarity.PolarityScores(np.array([0.5, 1.0, np.nan]), np.array([0.1, 0.3, np.nan]))
    # empathy per example (0.3, 0.65) -> mean 0.475
    assert both.summary()["polarity_empathy"] == pytest.approx(0.475)


# ---------------------------------------------------------------------------
# Submission and prediction files
# ---------------------------------------------------------------------------
def _row(conv, turn, response, emo):
    return {"conversation_id": conv, "turn_id": turn, "prompt": "p", "generated_chain": "c",
            "response": response, "predicted_emotion": emo, "gold_emotion": "sad",
            "gold_response": "g"}


def test_submission_grouping(tmp_path):
    rows = [_row("07", "2", "r2", "sad"), _row("03", "0", "only", "joyful"),
            _row("07", "10", "r10", None), _row("07", "1", "r1", "angry")]
    sub = submission.build_submission(rows)
    # first-seen conversation order; turns sorted numerically 1, 2, 10 (not "10" < "2");
    # emotion = last turn with a prediction: turn 10 has none -> turn 2's "sad"
    assert sub == [
        {"conversation_id": "07", "emotion": "sad",
         "turns": [{"turn_id": "1", "response": "r1"}, {"turn_id": "2", "response": "r2"},
                   {"turn_id": "10", "response": "r10"}]},
        {"conversation_id": "03", "emotion": "joyful", "turns": [{"turn_id": "0", "response": "only"}]},
    ]
    path = tmp_path / "sub" / "submission.json"
    submission.write_submission(str(path), rows)
    assert json.loads(path.read_text()) == sub
    with pytest.raises(ValueError, match="duplicate"):
        submission.build_submission(rows + [_row("07", "2", "again", "sad")])


def test_predictions_jsonl_roundtrip(tmp_path):
    rows = [_row("1", 0, "héllo", "sad"), dict(_row("1", 1, None, None), extra=[1, 2])]
    path = str(tmp_path / "pred.jsonl")
    submission.write_predictions_jsonl(path, rows)
    assert submission.read_predictions_jsonl(path) == rows
    first = json.loads(open(path, encoding="utf-8").readline())
    assert tuple(first) == submission.PREDICTION_KEYS
    with pytest.raises(KeyError, match="gold_response"):
        submission.write_predictions_jsonl(path, [{k: v for k, v in rows[0].items() if k != "gold_response"}])
    with open(path, "a") as fh:
        fh.write('{"conversation_id": 1}\n')
    with pytest.raises(ValueError, match=r"pred\.jsonl:3"):
        submission.read_predictions_jsonl(path)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def test_metrics_markdown():
    text = report.metrics_markdown(
        {"text-only": {"ppl_context": 23.5612, "dist_2_corpus": 0.3}, "ours": {"dist_2_corpus": 0.25, "n": 7}},
        "Results")
    lines = text.splitlines()
    assert lines[:6] == ["## Results", "",
                         "| variant | ppl_context | dist_2_corpus | n |",
                         "| --- | --- | --- | --- |",
                         "| text-only | 23.5612 | 0.3000 | – |",
                         "| ours | – | 0.2500 | 7 |"]
    assert any(line.startswith("- `dist_2_corpus`: distinct 2-grams") for line in lines)
    flat = report.metrics_markdown({"acc_coarse": 0.5, "ppl_context_free": float("nan")}, "T",
                                   definitions=False)
    assert flat == "## T\n\n| metric | value |\n| --- | --- |\n| acc_coarse | 0.5000 |\n| ppl_context_free | – |\n"


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------
def _png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_tsne_plot_separates_clusters(tmp_path):
    from merg_jax.evaluation import plots
    rng = np.random.default_rng(0)
    centres = 10.0 * np.eye(3, 8)  # three emotions 10 apart, unit noise
    labels = np.repeat(["happy", "sad", "angry"], 12)
    x = centres[np.repeat(np.arange(3), 12)] + rng.normal(size=(36, 8))
    mods = np.tile(["audio", "video", "text"], 12)
    xy = plots.plot_tsne(x, labels, str(tmp_path / "tsne.png"), modalities=mods, max_iter=300)
    assert xy.shape == (36, 2) and _png(tmp_path / "tsne.png")
    # nearest-centroid in the 2-D map recovers every label
    cents = {lab: xy[labels == lab].mean(0) for lab in ("happy", "sad", "angry")}
    names = list(cents)
    pred = [names[int(np.argmin([np.linalg.norm(p - cents[n]) for n in names]))] for p in xy]
    assert list(pred) == list(labels)


def test_polarity_hist(tmp_path):
    from merg_jax.evaluation import plots
    got = plots.plot_polarity_hist({"sentiment": [0.05, 0.15, 0.15, 0.95, np.nan],
                                    "emotion": [0.5, 0.5]}, str(tmp_path / "h.png"), bins=10)
    # bins of width 0.1: 0.05 -> bin 0, 0.15 twice -> bin 1, 0.95 -> bin 9; NaN dropped
    np.testing.assert_array_equal(got["sentiment"][0], [1, 2, 0, 0, 0, 0, 0, 0, 0, 1])
    assert got["emotion"][0][5] == 2 and _png(tmp_path / "h.png")


def test_training_curves_from_tensorboardx(tmp_path):
    from tensorboardX import SummaryWriter

    from merg_jax.evaluation import plots
    logdir = tmp_path / "tb"
    w = SummaryWriter(str(logdir))
    for step, v in [(0, 2.5), (10, 1.25), (20, 0.625)]:
        w.add_scalar("train/loss", v, step)
    w.add_scalar("train/lr", 1e-3, 0)
    w.close()
    ev = SummaryWriter(str(logdir / "eval"))
    ev.add_scalar("ppl", 12.0, 20)
    ev.close()
    got = plots.plot_training_curves(str(logdir), str(tmp_path / "curves.png"))
    assert got["train/loss"] == [(0, 2.5), (10, 1.25), (20, 0.625)]
    assert got["eval/ppl"] == [(20, 12.0)]
    assert got["train/lr"] == [(0, pytest.approx(1e-3))]  # stored as float32
    assert _png(tmp_path / "curves.png")
    assert list(plots.read_scalars(str(logdir), tags=["eval/ppl"])) == ["eval/ppl"]


def _latents(n: int, rng) -> dict:
    """7 emotions; the audio/video shared latents carry them (a class-mean shift), text does not."""
    labels = np.arange(n) % 7
    onehot = np.eye(7, 8)[labels] * 5.0
    mu = {("audio", "S"): onehot + rng.normal(size=(n, 8)), ("video", "S"): onehot + rng.normal(size=(n, 8)),
          ("text", "S"): rng.normal(size=(n, 8)), ("audio", "P"): rng.normal(size=(n, 8)),
          ("video", "P"): onehot + rng.normal(size=(n, 8)), ("video", "I"): rng.normal(size=(n, 8))}
    present = {"audio": np.ones(n, bool), "video": np.ones(n, bool), "text": np.arange(n) % 5 != 0}
    return {"mu": mu, "fused": (mu[("audio", "S")] + mu[("video", "S")]) / 2, "present": present, "label": labels}


def test_latent_probes_read_emotion_only_where_it_is(tmp_path):
    from merg_jax.evaluation import latents
    rng = np.random.default_rng(0)
    train, test = _latents(280, rng), _latents(140, rng)
    got = latents.probe_accuracy(train, test)
    assert got["probe_chance"] == pytest.approx(20 / 140)
    for name in ("shared_fused", "shared_audio", "shared_video", "private_video"):
        assert got[f"probe_{name}"] > 0.9, (name, got)
    for name in ("shared_text", "private_audio"):
        assert got[f"probe_{name}"] < 0.35, (name, got)
    files = latents.plot(test, ("happy", "surprised", "angry", "fear", "sad", "disgusted", "contempt"),
                         str(tmp_path), max_points=60)
    assert [os.path.basename(f) for f in files] == ["tsne_shared.png", "tsne_video_subspaces.png"]
    assert all(_png(pathlib.Path(f)) for f in files)
