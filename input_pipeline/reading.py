"""What every dataset reader returns, and the text-decoding rules they share.

A reader never drops a record silently: what it cannot use becomes a
`schema.Rejection`, and what it had to repair or could not find (missing clips,
non-UTF-8 bytes) is counted per split in `ReadResult.counts` and logged.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterable

from input_pipeline import schema


@dataclasses.dataclass
class ReadResult:
    examples: list[schema.DialogueExample]
    rejections: list[schema.Rejection]
    # split -> counter name -> value; every reader fills at least: conversations,
    # examples, utterances, missing_audio, missing_video, rejections.
    counts: dict[str, dict[str, int]]

    def __iter__(self):  # allows `examples, rejections, counts = read_x(...)`
        return iter((self.examples, self.rejections, self.counts))


BASE_COUNTERS = ("conversations", "examples", "utterances", "missing_audio", "missing_video", "rejections")


def new_counts(splits: Iterable[str]) -> dict[str, collections.Counter]:
    return {s: collections.Counter({k: 0 for k in BASE_COUNTERS}) for s in splits}


def log_summary(log: logging.Logger, dataset: str, data_dir: str, result: ReadResult, max_listed: int = 5) -> None:
    """One INFO line per split, and a WARNING naming the first few rejections."""
    for split, c in result.counts.items():
        extra = ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in BASE_COUNTERS and v)
        log.info("%s %s [%s]: %d conversations, %d examples, %d utterances, missing audio %d, missing video %d, "
                 "%d rejections%s", dataset, split, data_dir, c["conversations"], c["examples"], c["utterances"],
                 c["missing_audio"], c["missing_video"], c["rejections"], f" ({extra})" if extra else "")
    if result.rejections:
        listed = "; ".join(str(r) for r in result.rejections[:max_listed])
        more = len(result.rejections) - max_listed
        log.warning("%s: %d records rejected: %s%s", dataset, len(result.rejections), listed,
                    f"; ... and {more} more" if more > 0 else "")
    for r in result.rejections:
        log.debug("rejected %s", r)


def has_bad_bytes(text: str) -> bool:
    """True when `text` holds bytes that were not valid UTF-8 (decoded with errors='surrogateescape')."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _cp1252_byte(ch: str) -> int | None:
    if ord(ch) < 256:
        return ord(ch)
    try:
        b = ch.encode("cp1252")
    except UnicodeEncodeError:
        return None
    return b[0] if len(b) == 1 else None


def repair_mojibake(text: str) -> tuple[str, bool]:
    """Undoes UTF-8 text that was decoded as cp1252/latin-1 ('heâ\\x80\\x99s' -> 'he’s') and turns
    stray C1 controls into their cp1252 characters ('\\x92' -> '’').  Returns (text, changed)."""
    if all(ord(ch) < 0x80 for ch in text):
        return text, False
    out = text
    raw = [_cp1252_byte(ch) for ch in text]
    if all(b is not None for b in raw) and any(b >= 0x80 for b in raw):
        try:
            out = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            out = text
    if any("\x80" <= ch <= "\x9f" for ch in out):
        fixed = []
        for ch in out:
            if "\x80" <= ch <= "\x9f":
                try:
                    ch = bytes([ord(ch)]).decode("cp1252")
                except UnicodeDecodeError:
                    pass  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252: keep
            fixed.append(ch)
        out = "".join(fixed)
    return out, out != text
