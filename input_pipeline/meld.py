"""MELD reader: `{train,dev,test}_sent_emo.csv` + `dia{D}_utt{U}.mp4` clips -> DialogueExamples.

Examples follow the early-fusion paper (the MELD empathetic-response report): for every
utterance t of a dialogue, the history is the dialogue "up to and including"
utterance t (Speaker + Utterance of utterances 0..t), and the model writes the
next line, spoken by the next character.  MELD has no empathetic targets (seed
000 generated them with an LLM, not published), so `response` is the original
next line (utterance t+1) unless `targets` supplies one, and "" for a
dialogue's last utterance; `response_role` is the next speaker.  The emotion
and sentiment of an example are those of utterance t, the line the response
must attune to (the early-fusion paper, scores emotion/sentiment against the history).
Every history utterance keeps its own MELD emotion (`Utterance.emotion`; the
records' history_emotions).  Utterances have no profile ID (MELD has no avatar
profiles); the records use the character name as the speaker identity
(extract_io.build_record).  Splits keep MELD's names: train, dev, test.  `Utterance.index` is MELD's
Utterance_ID (not the position), so it matches the clip name.

Media: MELD clips are mp4 with an AAC audio track; the mp4 is recorded as both
`audio_path` and `video_path`.  librosa/soundfile cannot decode mp4 here (no
ffmpeg binary, no audioread backend); the audio track is decoded with PyAV
(`av`, bundles FFmpeg's libraries; `pip install av`), e.g.
`av.open(path).decode(audio=0)` then resample to 16 kHz, as the early-fusion paper did with
FFmpeg.  Clips are found by one recursive scan; the split of a clip comes from
its folder (`train_splits`, `dev_splits_complete`, `output_repeated_splits_test`,
or any folder name with the word train/dev/val/test), since dialogue numbers
restart in every split.  A missing or empty clip leaves the path None and is
counted (e.g. the known missing dev `dia110_utt7`); corrupt clips are left to
the feature extractor, which rejects them on decode.

Encoding: the CSVs are read line by line as UTF-8; a line that is not valid
UTF-8 is decoded as cp1252 (counted `cp1252_lines`); a line that is neither is
rejected.  Mojibake inside valid text ('â\\x80\\x99', stray '\\x92') is repaired
(`reading.repair_mojibake`, counted `mojibake_repaired`).
"""
from __future__ import annotations

import collections
import csv
import io
import logging
import os
import re
from typing import Iterable, Mapping, Optional

from input_pipeline import schema
from input_pipeline.reading import ReadResult, has_bad_bytes, log_summary, new_counts, repair_mojibake

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train_splits": "train", "dev_splits_complete": "dev", "output_repeated_splits_test": "test"}
COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime")
_REQUIRED = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
_SPLIT_WORDS = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}
_CLIP_RE = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$", re.IGNORECASE)


def _split_of_dir(rel_dir: str) -> Optional[str]:
    parts = [p.lower() for p in rel_dir.split(os.sep) if p and p != "."]
    for part in reversed(parts):
        if part in CLIP_DIRS:
            return CLIP_DIRS[part]
        for token in re.split(r"[^a-z0-9]+", part):  # whole words: "latest" is not "test"
            if token in _SPLIT_WORDS:
                return _SPLIT_WORDS[token]
    return None


def scan(data_dir: str) -> tuple[dict[tuple[Optional[str], int, int], str], dict[str, str]]:
    """One recursive walk: clip index (split or None, dialogue, utterance) -> path, and split -> CSV path."""
    clips: dict[tuple[Optional[str], int, int], str] = {}
    csvs: dict[str, str] = {}
    wanted_csv = {f.lower(): s for s, f in SPLIT_FILES.items()}
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames.sort()
        split = _split_of_dir(os.path.relpath(dirpath, data_dir))
        for name in sorted(filenames):
            if name.lower() in wanted_csv:
                csvs.setdefault(wanted_csv[name.lower()], os.path.join(dirpath, name))
                continue
            m = _CLIP_RE.match(name)
            if m:
                clips.setdefault((split, int(m.group(1)), int(m.group(2))), os.path.abspath(os.path.join(dirpath, name)))
    return clips, csvs


def _decode_lines(raw: bytes, counts: collections.Counter) -> tuple[list[str], set[int]]:
    """UTF-8 per line, cp1252 as fallback; returns the lines and the 1-based numbers of undecodable ones."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, bad = [], set()
    for num, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            pass
        try:
            lines.append(line.decode("cp1252"))
            counts["cp1252_lines"] += 1
        except UnicodeDecodeError:
            lines.append(line.decode("utf-8", errors="surrogateescape"))
            bad.add(num)
    return lines, bad


def _row(fields: dict[str, str], counts: collections.Counter) -> dict:
    """Validated, repaired row; raises ValueError with the rejection reason."""
    out = {}
    for key in ("Utterance", "Speaker"):
        text, changed = repair_mojibake(fields[key].strip())
        counts["mojibake_repaired"] += changed
        if not text:
            raise ValueError(f"empty {key}")
        out[key] = " ".join(text.split())
    for key in ("Dialogue_ID", "Utterance_ID"):
        val = fields[key].strip()
        if not val.isdigit():
            raise ValueError(f"{key} {val!r} is not a non-negative integer")
        out[key] = int(val)
    emotion = fields["Emotion"].strip().lower()
    if emotion not in schema.MELD_EMOTIONS:
        raise ValueError(f"unknown emotion label {fields['Emotion']!r}")
    sentiment = fields["Sentiment"].strip().lower()
    if sentiment not in schema.MELD_SENTIMENTS:
        raise ValueError(f"unknown sentiment label {fields['Sentiment']!r}")
    out.update(Emotion=emotion, Sentiment=sentiment)
    return out


def _read_rows(path: str, counts: collections.Counter, rejections: list[schema.Rejection]) -> list[dict]:
    with open(path, "rb") as f:
        lines, bad = _decode_lines(f.read(), counts)
    reader = csv.reader(io.StringIO("".join(lines)))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        rejections.append(schema.Rejection(path, "empty CSV file"))
        return []
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        rejections.append(schema.Rejection(path, f"CSV header lacks columns {missing}"))
        return []
    rows, seen = [], set()
    prev_line = reader.line_num
    for fields in reader:
        first, last = prev_line + 1, reader.line_num
        prev_line = last
        if not fields or all(not f.strip() for f in fields):
            continue
        record = f"line {first}" if first == last else f"lines {first}-{last}"
        counts["csv_rows"] += 1
        if bad.intersection(range(first, last + 1)) or any(has_bad_bytes(f) for f in fields):
            rejections.append(schema.Rejection(path, "bytes that are neither UTF-8 nor cp1252", record))
            continue
        if len(fields) != len(header):
            rejections.append(schema.Rejection(path, f"malformed row: {len(fields)} fields, expected {len(header)}", record))
            continue
        try:
            row = _row(dict(zip(header, fields)), counts)
        except ValueError as err:
            rejections.append(schema.Rejection(path, str(err), record))
            continue
        key = (row["Dialogue_ID"], row["Utterance_ID"])
        if key in seen:
            rejections.append(schema.Rejection(path, f"duplicate utterance dia{key[0]}_utt{key[1]}", record))
            continue
        seen.add(key)
        rows.append(row)
    return rows


def read_meld(data_dir: str, splits: Optional[Iterable[str]] = None,
              targets: Optional[Mapping[str, str]] = None, include_last: bool = True) -> ReadResult:
    """Reads MELD splits (default: every CSV found under data_dir).

    `targets` maps an example id ("meld/{split}/{Dialogue_ID}/{Utterance_ID}")
    to a response text (e.g. LLM-written empathetic replies, as in the early-fusion paper);
    `include_last=False` drops each dialogue's last utterance when it has no target.
    """
    clips, csvs = scan(data_dir)
    wanted = list(splits) if splits is not None else [s for s in SPLIT_FILES if s in csvs]
    unknown = [s for s in wanted if s not in SPLIT_FILES]
    if unknown:
        raise ValueError(f"unknown MELD split(s) {unknown}; expected some of {list(SPLIT_FILES)}")
    log.info("meld: %d clips indexed under %s", len(clips), data_dir)
    counts = new_counts(wanted)
    examples: list[schema.DialogueExample] = []
    rejections: list[schema.Rejection] = []
    targets = targets or {}
    for split in wanted:
        c = counts[split]
        before = len(rejections)
        path = csvs.get(split, os.path.join(data_dir, SPLIT_FILES[split]))
        if not os.path.exists(path):
            rejections.append(schema.Rejection(path, "split file not found"))
            c["rejections"] += 1
            continue
        dialogues: dict[int, list[dict]] = collections.defaultdict(list)
        for row in _read_rows(path, c, rejections):
            dialogues[row["Dialogue_ID"]].append(row)

        def clip(row: dict, split=split, c=c) -> Optional[str]:
            p = clips.get((split, row["Dialogue_ID"], row["Utterance_ID"]))
            p = p or clips.get((None, row["Dialogue_ID"], row["Utterance_ID"]))
            if p is not None and os.path.getsize(p) == 0:
                c["empty_clips"] += 1
                return None
            return p

        for dia in sorted(dialogues):
            rows = sorted(dialogues[dia], key=lambda r: r["Utterance_ID"])
            c["conversations"] += 1
            c["dialogues_with_gaps"] += any(b["Utterance_ID"] != a["Utterance_ID"] + 1 for a, b in zip(rows, rows[1:]))
            utts = []
            for row in rows:
                path_ = clip(row)
                c["utterances"] += 1
                c["missing_audio"] += path_ is None
                c["missing_video"] += path_ is None
                utts.append(schema.Utterance(row["Utterance_ID"], row["Speaker"], row["Utterance"], path_, path_,
                                             emotion=row["Emotion"]))
            for t, row in enumerate(rows):
                turn_id = str(row["Utterance_ID"])
                ex_id = f"meld/{split}/{dia}/{turn_id}"
                nxt = rows[t + 1] if t + 1 < len(rows) else None
                if ex_id in targets:
                    response, resp_clip = targets[ex_id], None
                elif nxt is not None:
                    response, resp_clip = nxt["Utterance"], utts[t + 1].video_path
                elif include_last:
                    response, resp_clip = "", None
                else:
                    continue
                examples.append(schema.DialogueExample(
                    dataset="meld", split=split, conversation_id=str(dia), turn_id=turn_id,
                    history=tuple(utts[: t + 1]), response=response, emotion=row["Emotion"],
                    emotion_coarse=schema.MELD_TO_COARSE[row["Emotion"]], sentiment=row["Sentiment"],
                    response_role=nxt["Speaker"] if nxt is not None else "",
                    response_audio_path=resp_clip, response_video_path=resp_clip))
                c["examples"] += 1
        c["rejections"] += len(rejections) - before
    result = ReadResult(examples, rejections, {s: dict(v) for s, v in counts.items()})
    log_summary(log, "meld", data_dir, result)
    return result
