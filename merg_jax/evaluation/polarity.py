"""Polarity alignment of a response with its dialogue history, as the early-fusion paper §5.1 defines it.

The early-fusion paper ("Multimodal Empathetic Response Generation", §5.1 Polarity Scoring):
  sentiment  VADER compound scores s in [-1, 1] "for both the dialogue history and
             the response"; Sentiment Match = 1 - |s_history - s_response|.
             No compound thresholds are involved (the score is continuous, in
             [-1, 1]) and the comparison is response vs. dialogue history, not vs.
             the gold response.  The paper does not say how the history's score
             is formed: `history="mean"` (default; the mean of per-utterance
             compounds, parallel to its emotion metric and the reading in our
             notes) or `history="joined"` (one compound of the utterances joined
             by newlines).
  emotion    an emotion classifier's softmax for each history utterance and for
             the response; cosine(mean of the history softmaxes, response softmax),
             in [0, 1].  The early-fusion paper uses bhadresh-savani/distilbert-base-uncased-emotion;
             any local HF BERT/RoBERTa/DistilBERT classifier directory works here.
  empathy    (emotion + sentiment) / 2.
Examples with an empty history have no score (NaN) and are left out of the means.
`sentiment_match_gold` (generated vs. gold response, same formula) is OURS, an
extra for datasets with gold responses; it is not in the early-fusion paper.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["vader_compound", "sentiment_match", "sentiment_match_gold", "emotion_match",
           "polarity_scores", "PolarityScores"]


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # lexicon ships in the wheel
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's normalised compound score in [-1, 1] per text, float64[N]."""
    sia = _analyzer()
    return np.array([sia.polarity_scores(t)["compound"] for t in texts], np.float64)


def _history_sentiment(histories: Sequence[Sequence[str]], history: str) -> np.ndarray:
    if history not in ("mean", "joined"):
        raise ValueError(f"history must be 'mean' or 'joined', got {history!r}")
    out = np.full(len(histories), np.nan)
    if history == "joined":
        keep = [i for i, h in enumerate(histories) if len(h)]
        out[keep] = vader_compound(["\n".join(histories[i]) for i in keep])
        return out
    flat = [u for h in histories for u in h]
    scores = dict(zip(dict.fromkeys(flat), vader_compound(list(dict.fromkeys(flat)))))
    for i, h in enumerate(histories):
        if len(h):
            out[i] = np.mean([scores[u] for u in h])
    return out


def sentiment_match(responses: Sequence[str], histories: Sequence[Sequence[str]],
                    history: str = "mean") -> np.ndarray:
    """The early-fusion paper's Sentiment Match per example: 1 - |s_history - s_response| (NaN: no history)."""
    if len(responses) != len(histories):
        raise ValueError(f"{len(responses)} responses for {len(histories)} histories")
    return 1.0 - np.abs(_history_sentiment(histories, history) - vader_compound(responses))


def sentiment_match_gold(generated: Sequence[str], gold: Sequence[str]) -> np.ndarray:
    """OURS: 1 - |compound(generated) - compound(gold)| per pair."""
    if len(generated) != len(gold):
        raise ValueError(f"{len(generated)} generated responses for {len(gold)} gold responses")
    return 1.0 - np.abs(vader_compound(generated) - vader_compound(gold))


def emotion_match(responses: Sequence[str], histories: Sequence[Sequence[str]], model: Any,
                  tokenizer: Any, batch_size: int = 32) -> np.ndarray:
    """The early-fusion paper's emotion score per example: cosine(mean_u softmax(u), softmax(response)).

    `model`, `tokenizer` from `merg_jax.models.bert_classifier.load_bert_classifier`.
    Each distinct text is classified once.  NaN where the history is empty.
    """
    from merg_jax.models.bert_classifier import classify_probs
    if len(responses) != len(histories):
        raise ValueError(f"{len(responses)} responses for {len(histories)} histories")
    texts = list(dict.fromkeys(list(responses) + [u for h in histories for u in h]))
    probs = dict(zip(texts, classify_probs(model, tokenizer, texts, batch_size=batch_size)))
    out = np.full(len(responses), np.nan)
    for i, (resp, hist) in enumerate(zip(responses, histories)):
        if not len(hist):
            continue
        h = np.mean([probs[u] for u in hist], axis=0).astype(np.float64)
        r = probs[resp].astype(np.float64)
        out[i] = float(h @ r / max(np.linalg.norm(h) * np.linalg.norm(r), 1e-12))
    return out


@dataclasses.dataclass
class PolarityScores:
    """Per-example scores (NaN = no history); `summary()` gives the paper's table row."""
    sentiment: np.ndarray
    emotion: Optional[np.ndarray] = None

    @property
    def empathy(self) -> Optional[np.ndarray]:
        return None if self.emotion is None else (self.emotion + self.sentiment) / 2

    def summary(self) -> dict[str, float]:
        """Means over examples with a history: polarity_sentiment, _emotion, _empathy."""
        out = {"polarity_sentiment": _nanmean(self.sentiment)}
        if self.emotion is not None:
            out["polarity_emotion"] = _nanmean(self.emotion)
            out["polarity_empathy"] = _nanmean(self.empathy)
        return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def polarity_scores(responses: Sequence[str], histories: Sequence[Sequence[str]],
                    classifier_dir: Optional[str] = None, history: str = "mean",
                    batch_size: int = 32) -> PolarityScores:
    """Sentiment always; emotion (and so empathy) only with a local classifier directory.

    Without `classifier_dir` the emotion and empathy scores are skipped and a log
    line says so (we never download the paper's classifier).
    """
    sentiment = sentiment_match(responses, histories, history)
    if not classifier_dir:
        log.warning("emotion polarity skipped: no classifier directory given (the early-fusion paper, uses "
                    "bhadresh-savani/distilbert-base-uncased-emotion); empathy needs it too")
        return PolarityScores(sentiment)
    from merg_jax.models.bert_classifier import load_bert_classifier
    model, tokenizer = load_bert_classifier(classifier_dir)
    return PolarityScores(sentiment, emotion_match(responses, histories, model, tokenizer,
                                                   batch_size=batch_size))
