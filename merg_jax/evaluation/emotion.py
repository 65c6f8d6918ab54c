"""Emotion accuracy: parse the emotion a model wrote, map it onto our label sets, score it.

The models write the emotion as text (the Response LLM's "Emotion: X" line, the
Empatheia CoE step "Secondly, the emotion of the speaker is: X", the M-CoE line
"Speaker emotion: X").  Labels are normalised with `input_pipeline.schema`, so the
fine set (32 EmpatheticDialogues emotions) and the coarse set (AvaMERG's 7) follow
whatever table lives there.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from input_pipeline.schema import AVAMERG_COARSE, COARSE_ALIASES, FINE_TO_COARSE, MELD_TO_COARSE, coarse_emotion

__all__ = ["parse_emotion", "normalize_emotion", "emotion_accuracy", "emotion_accuracy_exact", "EMOTION_MARKERS"]

# Where a label is announced, most specific first; the label is what follows the
# colon on the same line.  Matching is case-insensitive; the *last* occurrence of
# the first marker found wins (a chain may restate its answer at the end).
EMOTION_MARKERS = (
    r"the emotion of the speaker is\s*:",  # Empatheia CoE (the AvaMERG paper, appendix D.1)
    r"speaker(?:'s)? emotion\s*:",  # our M-CoE template
    r"(?<![a-z])emotion\s*:",  # Response LLM target "Emotion: X" (also M-CoE "; emotion: X")
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_FILLER = {"a", "an", "the", "very", "quite", "feeling", "feels", "felt", "is", "being", "and",
           "probably", "likely", "mostly", "somewhat", "really", "extremely", "slightly"}


def _known(word: str) -> bool:
    return word in FINE_TO_COARSE or word in COARSE_ALIASES or word in MELD_TO_COARSE


def normalize_emotion(label: Optional[str]) -> Optional[tuple[str, str]]:
    """`(fine, coarse)` for a label text, or None when no known label is in it.

    Definition: lower-case the text; if the whole text (punctuation stripped) is a
    known label take it, else take the first word of the text that is one (filler
    words such as "very" or "feeling" are simply skipped).  `fine` is the label
    itself when it is one of the 32 fine emotions, else the canonical coarse name
    of a coarse alias ("joy" -> "happy") or the MELD label; `coarse` is
    `schema.coarse_emotion(label)`.
    """
    if not label:
        return None
    text = label.strip().lower()
    words = _WORD.findall(text)
    whole = " ".join(words)
    candidates = [whole] + [w for w in words if w not in _FILLER]
    for word in candidates:
        if _known(word):
            fine = word if word in FINE_TO_COARSE else COARSE_ALIASES.get(word, word)
            return fine, coarse_emotion(word)
    return None


def label_of(text: Optional[str]) -> str:
    """The fine label `normalize_emotion` finds in `text`, or "" (for predictions files and
    submissions, where "surprised. Confidence: high" should read "surprised")."""
    got = normalize_emotion(text)
    return got[0] if got else ""


def parse_emotion(text: Optional[str]) -> Optional[str]:
    """The raw label text announced in generated `text` (see EMOTION_MARKERS), or None.

    Only the rest of the marker's line is returned (stripped); it still needs
    `normalize_emotion`.  No marker -> None: we never guess the label from words
    of the response itself, which often name emotions the speaker does not feel.
    """
    if not text:
        return None
    for marker in EMOTION_MARKERS:
        hits = list(re.finditer(marker, text, flags=re.IGNORECASE))
        if hits:
            rest = text[hits[-1].end():].split("\n", 1)[0]
            rest = re.split(r"[;|]", rest, maxsplit=1)[0].strip()
            return rest or None
    return None


def emotion_accuracy(preds: Sequence[Optional[str]], golds: Sequence[str]) -> dict[str, float]:
    """Fine and coarse emotion accuracy over paired predicted / gold labels.

    `preds` are label texts (e.g. `parse_emotion(...)` output; None allowed),
    `golds` the dataset labels (fine, or coarse where the data only has coarse).
    Definitions, with n = len(golds):
      acc_fine   = #{normalize(pred).fine == normalize(gold).fine} / n
      acc_coarse = #{normalize(pred).coarse == normalize(gold).coarse} / n
      n_unparseable = #{normalize(pred) is None}; those count as wrong in both.
    This is the challenge's top system's coarse accuracy (unmatched text mapped to
    "neutral", never a gold AvaMERG class, i.e. wrong) and Empatheia's exact-match
    accuracy (the AvaMERG paper, E.3) on the fine labels.  A gold label we cannot
    normalise raises ValueError (a data error, not a model error).
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    fine_hits = coarse_hits = unparseable = 0
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        want = normalize_emotion(gold)
        if want is None:
            raise ValueError(f"gold label #{i} {gold!r} is not a known emotion "
                             f"(fine: {sorted(FINE_TO_COARSE)}; coarse: {list(AVAMERG_COARSE)})")
        got = normalize_emotion(pred)
        if got is None:
            unparseable += 1
            continue
        fine_hits += got[0] == want[0]
        coarse_hits += got[1] == want[1]
    n = len(golds)
    return {"acc_fine": fine_hits / n if n else 0.0, "acc_coarse": coarse_hits / n if n else 0.0,
            "n": n, "n_unparseable": unparseable}


def exact_label(label: Optional[str]) -> Optional[tuple[str, str]]:
    """`(fine, coarse)` when the WHOLE label text (lower-cased, punctuation and spaces collapsed)
    is a known label, else None: no first-known-word scan, no filler words skipped."""
    if not label:
        return None
    whole = " ".join(_WORD.findall(label.strip().lower()))
    if not _known(whole):
        return None
    return (whole if whole in FINE_TO_COARSE else COARSE_ALIASES.get(whole, whole)), coarse_emotion(whole)


def emotion_accuracy_exact(preds: Sequence[Optional[str]], golds: Sequence[str]) -> dict[str, float]:
    """Exact-match emotion accuracy (the AvaMERG paper, appendix E.3, eq. 23: the normalised
    predicted label equals the gold label), fine and coarse.

      acc_fine   = #{exact_label(pred).fine == normalize(gold).fine} / n
      acc_coarse = #{exact_label(pred).coarse == normalize(gold).coarse} / n
    Normalisation is only case, punctuation and whitespace (and a coarse alias such as "joy"
    naming its coarse class); "very sad", "sad, I think" or "sad. Confidence: high" are misses
    here and hits for the lenient `emotion_accuracy`.
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    fine = coarse = 0
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        want = normalize_emotion(gold)
        if want is None:
            raise ValueError(f"gold label #{i} {gold!r} is not a known emotion")
        got = exact_label(pred)
        if got is not None:
            fine += got[0] == want[0]
            coarse += got[1] == want[1]
    n = len(golds)
    return {"acc_fine": fine / n if n else 0.0, "acc_coarse": coarse / n if n else 0.0, "n": n}
