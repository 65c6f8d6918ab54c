"""Markdown tables of metrics, laid out like the papers' tables (the early-fusion paper, table 3, the MERIA paper tables 1-2).

Every metric is named by what it computes (dist_2_corpus vs. dist_2_mean,
ppl_response vs. ppl_context_free), and the table ends with the definition of
each metric name it shows, so a number never travels without its meaning.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["metrics_markdown", "DEFINITIONS", "format_value"]

DEFINITIONS: dict[str, str] = {
    "emotion_acc_fine": "lenient emotion accuracy on the 32 fine labels: the first known label word of the "
                        "prediction (filler words skipped) equals the gold label; unparseable = wrong",
    "emotion_acc_coarse": "lenient emotion accuracy on the 7 coarse AvaMERG labels (as emotion_acc_fine)",
    "emotion_acc_exact_fine": "exact-match emotion accuracy (the AvaMERG paper, E.3 eq. 23): the whole "
                              "predicted label, case and punctuation normalised, equals the gold fine label",
    "emotion_acc_exact_coarse": "exact-match emotion accuracy on the 7 coarse labels (as emotion_acc_exact_fine)",
    "chains_empty": "examples whose generated chain of empathy was empty (the response prompt then shows an "
                    "empty chain, never the gold one)",
    "ppl_response": "exp(token-weighted mean NLL) of the gold response + EOS given what the system sees at "
                    "inference: its inference prompt (MERIA: the generated chain / soft prompts) and its own "
                    "predicted 'Emotion: X' line where its target has one; comparable across systems",
    "ppl_target_given_train_prompt": "exp(token-weighted mean NLL) of the evaluated stage's gold target given "
                                     "its training prompt (MERIA: the gold M-CoE chain given soft prompts + "
                                     "dialogue; text baseline: emotion + response given the dialogue); "
                                     "not comparable across systems",
    "emotion_unparseable": "predictions with no recognisable emotion label",
    "generation_s": "seconds spent generating (chain + response) for all examples",
    "ppl_context_free": "exp(token-weighted mean NLL) of the response alone (start token + response + EOS)",
    "bertscore_p": "BERTScore P (greedy cosine matching, bert-score conventions)",
    "bertscore_r": "BERTScore R",
    "bertscore_f1": "BERTScore F1",
    "polarity_sentiment": "the early-fusion paper: mean of 1 - |VADER(history) - VADER(response)|",
    "polarity_emotion": "the early-fusion paper: mean cosine of classifier softmax (response vs. mean over history)",
    "polarity_empathy": "the early-fusion paper: (polarity_emotion + polarity_sentiment) / 2",
    "sentiment_match_gold": "ours: mean of 1 - |VADER(gold response) - VADER(response)|",
    "n": "number of examples",
    "probe_chance": "majority-class rate of the utterance emotions the probes are scored on",
}
for _name, _what in (("shared_fused", "the fused shared latent Z_S^F (UGF, eq. 8)"),
                     ("shared_audio", "the audio shared latent mean"), ("shared_video", "the video shared latent mean"),
                     ("shared_text", "the text shared latent mean"), ("private_audio", "the audio private latent mean"),
                     ("private_video", "the video private latent mean")):
    DEFINITIONS[f"probe_{_name}"] = (f"held-out accuracy of a logistic-regression emotion probe on {_what} "
                                     "(fit on the train split's utterances)")
for _n in (1, 2, 3, 4):
    DEFINITIONS[f"dist_{_n}_corpus"] = (f"distinct {_n}-grams / all {_n}-grams over the whole corpus "
                                        "(x100 = leaderboard Dist-n)")
    DEFINITIONS[f"dist_{_n}_mean"] = f"mean over responses of distinct / all {_n}-grams in the response"


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers with `digits` decimals (ints and bools as they are), None/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value).replace("|", "\\|").replace("\n", " ")
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def metrics_markdown(metrics: Mapping[str, Any], title: str, digits: int = 4,
                     definitions: bool = True) -> str:
    """A markdown section: `## title`, a table, then definitions of the metric names.

    `metrics` is either flat {metric: value} (a two-column metric | value table) or
    nested {variant: {metric: value}} (one row per variant, one column per metric
    in first-seen order; a metric a variant lacks shows as –), the papers' layout.
    """
    nested = bool(metrics) and all(isinstance(v, Mapping) for v in metrics.values())
    lines = [f"## {title}", ""]
    if nested:
        cols: list[str] = []
        for row in metrics.values():
            cols += [c for c in row if c not in cols]
        lines += [_row(["variant"] + cols), _row(["---"] * (len(cols) + 1))]
        for name, row in metrics.items():
            lines.append(_row([str(name)] + [format_value(row.get(c), digits) for c in cols]))
    else:
        cols = list(metrics)
        lines += [_row(["metric", "value"]), _row(["---", "---"])]
        lines += [_row([str(k), format_value(v, digits)]) for k, v in metrics.items()]
    known = [c for c in cols if c in DEFINITIONS]
    if definitions and known:
        lines += [""] + [f"- `{c}`: {DEFINITIONS[c]}" for c in known]
    return "\n".join(lines) + "\n"
