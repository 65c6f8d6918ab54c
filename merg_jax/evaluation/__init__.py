"""Evaluation metrics (issue 5): emotion accuracy, Distinct-n, perplexity, BERTScore,
the early-fusion paper's polarity scores, the AvaMERG submission file, markdown tables and plots.

Heavy pieces (the BERTScore encoder, the emotion classifier, matplotlib, sklearn,
tensorboard) are imported only by the functions that need them.
"""
from merg_jax.evaluation.distinct import dist_n_corpus, dist_n_mean, tokenize
from merg_jax.evaluation.emotion import emotion_accuracy, normalize_emotion, parse_emotion

# `perplexity` stays the submodule's name here: use merg_jax.evaluation.perplexity.perplexity.
from merg_jax.evaluation.perplexity import context_free_batch, target_nll
from merg_jax.evaluation.polarity import (
    PolarityScores,
    emotion_match,
    polarity_scores,
    sentiment_match,
    sentiment_match_gold,
    vader_compound,
)
from merg_jax.evaluation.report import metrics_markdown
from merg_jax.evaluation.submission import (
    PREDICTION_KEYS,
    build_submission,
    read_predictions_jsonl,
    write_predictions_jsonl,
    write_submission,
)

__all__ = [
    "dist_n_corpus", "dist_n_mean", "tokenize",
    "emotion_accuracy", "normalize_emotion", "parse_emotion",
    "context_free_batch", "target_nll",
    "PolarityScores", "emotion_match", "polarity_scores", "sentiment_match", "sentiment_match_gold",
    "vader_compound",
    "metrics_markdown",
    "PREDICTION_KEYS", "build_submission", "read_predictions_jsonl", "write_predictions_jsonl",
    "write_submission",
    "BertScorer", "BertScoreResult",  # the one-shot function: merg_jax.evaluation.bertscore.bertscore
]


def __getattr__(name):  # BERTScore pulls in the encoder: import it on first use
    if name in ("BertScorer", "BertScoreResult"):
        import importlib
        return getattr(importlib.import_module("merg_jax.evaluation.bertscore"), name)
    raise AttributeError(f"module 'merg_jax.evaluation' has no attribute {name!r}")
