"""Distinct-n (Li et al. 2016): lexical diversity of generated responses, in two flavours.

The peers disagree on the aggregation (see shared/notes/peers-and-datasets.md):
the MERG leaderboard (the MERIA paper, table 1: Dist-1 ~ 3-5, Dist-2 ~ 15-32) reads like
a corpus-level ratio in percent, one peer averages per-response ratios (values
near 0.99).  Both are here, as fractions in [0, 1]; multiply by 100 to compare
with the leaderboard.

Tokenisation (both functions): lower-case, then the regex
`[^\\W_]+(?:'[^\\W_]+)*|[^\\w\\s]|_` -- runs of letters/digits (an inner apostrophe
keeps contractions such as "don't" whole) and every other non-space character as
its own token ("great!!" -> great, !, !).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

__all__ = ["tokenize", "ngrams", "dist_n_corpus", "dist_n_mean"]

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    """Lower-cased word / punctuation tokens (see the module docstring)."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of one token list (none when it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def dist_n_corpus(texts: Iterable[str], n: int) -> float:
    """#distinct n-grams over all texts / #n-grams over all texts (0.0 if there are none).

    N-grams never cross response boundaries.
    """
    counts: Counter = Counter()
    for text in texts:
        counts.update(ngrams(tokenize(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def dist_n_mean(texts: Iterable[str], n: int, short: str = "skip") -> float:
    """Mean over responses of (#distinct n-grams / #n-grams) within each response.

    A response with fewer than n tokens has no n-grams, so its ratio is undefined:
    `short="skip"` (default) leaves it out of the mean, `short="zero"` counts it as
    0.  Returns 0.0 when no response has an n-gram (or there are no responses).
    """
    if short not in ("skip", "zero"):
        raise ValueError(f"short must be 'skip' or 'zero', got {short!r}")
    ratios = []
    for text in texts:
        grams = ngrams(tokenize(text), n)
        if grams:
            ratios.append(len(set(grams)) / len(grams))
        elif short == "zero":
            ratios.append(0.0)
    return sum(ratios) / len(ratios) if ratios else 0.0
