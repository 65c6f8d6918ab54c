"""AvaMERG reader: `{train,valid,test}.json` + `audio_v5_0/` `video_v5_0/` -> DialogueExamples.

One example per turn: the turn's `dialogue_history` (with each utterance's wav
and mp4 resolved, or None when missing) and its `response`; the emotion is the
turn's `chain_of_empathy.speaker_emotion` (fine label) mapped to the 7 coarse
classes.  `test.json` of the real release has no chain_of_empathy: such turns
are kept with `chain_of_empathy=None` and empty emotion fields.

Media names are `dia{conversation_id:05d}utt{idx}_{profile ID}.{wav,mp4}`, idx
the 0-based position in the turn's history, ID the speaking role's profile ID.
The official baseline expected names without `_{ID}` and 1-based indices and
broke on indices >= 10; we index every media file once with a full-name regex
(so `utt1` never matches `utt10`), accept names without the suffix, and decide
0- vs 1-based per conversation from the files present (a conversation whose
files start at utt1 and reach one past its last 0-based index, or whose profile
IDs only fit that way, is read as 1-based).  The reply of a turn (index
len(history)) is looked up too, as `response_audio_path` / `response_video_path`.

M-CoE (MERIA): a conversation may carry an `m_coe` object (one per dialogue, as
MERIA builds them; a turn's own `m_coe` overrides it), either flat
`{"visual_observation": .., "visual_emotion": .., "visual_confidence": ..,
"audio_observation": .., "audio_emotion": .., "audio_confidence": ..}` or nested
`{"visual": {"observation", "emotion", "confidence"}, "audio": {...}}`; it becomes
`DialogueExample.m_coe` with exactly schema.MCOE_FIELDS (missing -> "").  Other
keys are ignored and counted (`m_coe_unknown_keys`); a value that is not a string
rejects the conversation.  No object: m_coe None.  For the synthetic corpus
(synthetic_meta.json present) the annotation is built from the known truth of
the history's last speaker utterance (input_pipeline/synthetic/mcoe.py), and each
utterance gets its true emotion as `Utterance.emotion`; that needs only the JSON
and the sidecar, so an existing corpus directory reads back the same.

Bad records become `Rejection`s and the rest goes on: a JSON file that does not
parse (the split is skipped), a conversation or turn with missing keys or wrong
types, empty utterance text, an unknown emotion label.  Non-UTF-8 policy: a
file is decoded as UTF-8 (BOM allowed); if it is not valid UTF-8, the invalid
bytes are kept as lone surrogates (errors='surrogateescape'), counted as
`non_utf8_bytes`, and every conversation/turn whose text contains one is
rejected ("non-UTF-8 bytes in ..."), so no guessed text enters the data while
the clean records of the same file are still used.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
from typing import Any, Iterable, Optional, Sequence

from input_pipeline import schema
from input_pipeline.reading import ReadResult, has_bad_bytes, log_summary, new_counts
from input_pipeline.synthetic import mcoe as synthetic_mcoe

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.json", "valid": "valid.json", "test": "test.json"}
SYNTHETIC_META = "synthetic_meta.json"
_MEDIA_RE = re.compile(r"^dia(\d+)utt(\d+)(?:_([A-Za-z0-9-]+))?\.(wav|mp4)$", re.IGNORECASE)
_MAX_SCAN_DEPTH = 2  # data_dir/audio_v5_0/x.wav and data_dir/train_audio/audio_v5_0/x.wav


class _Bad(Exception):
    """A record that fails validation; the message is the rejection reason."""


# ----------------------------------------------------------------------------- media index
MediaIndex = dict[tuple[int, str], dict[int, dict[Optional[str], str]]]


def index_media(data_dir: str) -> MediaIndex:
    """One directory scan: (dialogue number, 'wav'|'mp4') -> file index -> profile ID (None: no suffix) -> path."""
    index: MediaIndex = collections.defaultdict(lambda: collections.defaultdict(dict))
    root_depth = data_dir.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames.sort()
        if dirpath.rstrip(os.sep).count(os.sep) - root_depth >= _MAX_SCAN_DEPTH:
            dirnames[:] = []
        for name in sorted(filenames):
            m = _MEDIA_RE.match(name)
            if m is None:
                continue
            dia, idx, pid, ext = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4).lower()
            slot = index[(dia, ext)][idx]
            slot.setdefault(pid, os.path.abspath(os.path.join(dirpath, name)))  # first in sorted order wins
    return index


def _choose_base(files: dict[int, dict[Optional[str], str]], expected: Sequence[Optional[str]]) -> int:
    """0- or 1-based file indices for one conversation, by how many files fit each reading."""
    if not files or 0 in files:
        return 0

    def score(base: int) -> int:
        total = 0
        for idx, by_pid in files.items():
            pos = idx - base
            if 0 <= pos < len(expected):
                total += 1 + sum(1 for pid in by_pid if pid is not None and pid == expected[pos])
        return total

    return 1 if score(1) > score(0) else 0


def _lookup(files: dict[int, dict[Optional[str], str]], idx: int, pid: Optional[str],
            counts: collections.Counter) -> Optional[str]:
    by_pid = files.get(idx)
    if not by_pid:
        return None
    if pid is not None and pid in by_pid:
        return by_pid[pid]
    if None in by_pid:
        counts["media_without_profile_suffix"] += 1
        return by_pid[None]
    if len(by_pid) == 1:  # the only file for this index names another profile
        counts["media_profile_mismatch"] += 1
        return next(iter(by_pid.values()))
    return None


# ----------------------------------------------------------------------------- validation
def _text(obj: dict, key: str, where: str, required: bool = True, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise _Bad(f"missing key {key!r} in {where}")
        return ""
    val = obj[key]
    if not isinstance(val, str):
        raise _Bad(f"{where}.{key} is {type(val).__name__}, expected str")
    if has_bad_bytes(val):
        raise _Bad(f"non-UTF-8 bytes in {where}.{key}")
    if not allow_empty and not val.strip():
        raise _Bad(f"empty {where}.{key}")
    return val.strip()


def _ident(obj: dict, key: str, where: str, required: bool = True) -> str:
    val = obj.get(key)
    if val is None:
        if required:
            raise _Bad(f"missing key {key!r} in {where}")
        return ""
    if isinstance(val, bool) or not isinstance(val, (str, int)):
        raise _Bad(f"{where}.{key} is {type(val).__name__}, expected str or int")
    val = str(val).strip()
    if has_bad_bytes(val):
        raise _Bad(f"non-UTF-8 bytes in {where}.{key}")
    if required and not val:
        raise _Bad(f"empty {where}.{key}")
    return val


def _dict(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise _Bad(f"{where} is {type(obj).__name__}, expected object")
    return obj


def _profile(conv: dict, key: str) -> schema.Profile:
    if key not in conv:
        raise _Bad(f"missing key {key!r}")
    p = _dict(conv[key], key)
    return schema.Profile(id=_ident(p, "ID", key, required=False),
                          **{f: _text(p, f, key, required=False, allow_empty=True) for f in ("age", "gender", "timbre")})


_MCOE_PARTS = {"visual": ("observation", "emotion", "confidence"),
               "audio": ("observation", "emotion", "confidence")}


def _m_coe(obj: dict, where: str, counts: collections.Counter) -> Optional[dict]:
    """The `m_coe` object of a conversation or turn -> dict with schema.MCOE_FIELDS, or None."""
    if obj.get("m_coe") is None:
        return None
    raw = _dict(obj["m_coe"], f"{where}.m_coe")
    w = f"{where}.m_coe"
    out = {k: _text(raw, k, w, required=False, allow_empty=True) for k in schema.MCOE_FIELDS}
    unknown = 0
    for key, val in raw.items():
        if key in _MCOE_PARTS and isinstance(val, dict):
            for part in val:
                field = f"{key}_{part}"
                if field in out:
                    out[field] = out[field] or _text(val, part, f"{w}.{key}", required=False,
                                                     allow_empty=True)
                else:
                    unknown += 1
        elif key not in out:
            unknown += 1
    counts["m_coe_unknown_keys"] += unknown
    return out if any(out.values()) else None


def _chain(turn: dict, where: str) -> Optional[schema.ChainOfEmpathy]:
    if turn.get("chain_of_empathy") is None:
        return None
    coe = _dict(turn["chain_of_empathy"], f"{where}.chain_of_empathy")
    w = f"{where}.chain_of_empathy"
    label = _text(coe, "speaker_emotion", w, required=False, allow_empty=True)
    rest = [_text(coe, k, w, required=False, allow_empty=True)
            for k in ("event_scenario", "emotion_cause", "goal_to_response")]
    if not label:
        if any(rest):  # annotated chain without its emotion: not usable as a label
            raise _Bad(f"empty {w}.speaker_emotion")
        return None  # an empty chain, as a test release may write it: same as absent
    try:
        schema.coarse_emotion(label)
    except KeyError:
        raise _Bad(f"unknown emotion label {label!r}") from None
    return schema.ChainOfEmpathy(label, *rest)


def _history(turn: dict, where: str) -> list[tuple[str, str]]:
    hist = turn.get("dialogue_history")
    if hist is None:
        raise _Bad(f"missing key 'dialogue_history' in {where}")
    if not isinstance(hist, list) or not hist:
        raise _Bad(f"{where}.dialogue_history must be a non-empty list")
    out = []
    for pos, item in enumerate(hist):
        w = f"{where}.dialogue_history[{pos}]"
        item = _dict(item, w)
        if "index" in item and (isinstance(item["index"], bool) or not isinstance(item["index"], int)):
            raise _Bad(f"{w}.index is {type(item['index']).__name__}, expected int")
        out.append((_text(item, "role", w), _text(item, "utterance", w)))
    return out


# ----------------------------------------------------------------------------- reading
def _load_json(path: str, counts: collections.Counter) -> Any:
    """Parsed JSON; invalid UTF-8 bytes survive as lone surrogates (see module docstring)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="surrogateescape")
        if text.startswith("\ufeff"):
            text = text[1:]
        counts["non_utf8_bytes"] += sum(1 for ch in text if "\udc80" <= ch <= "\udcff")
        log.warning("%s is not valid UTF-8: %d bad bytes; records containing them are rejected",
                    path, counts["non_utf8_bytes"])
    return json.loads(text)


def _conversation_examples(conv: Any, pos: int, split: str, dataset: str, media: MediaIndex,
                           counts: collections.Counter, path: str,
                           rejections: list[schema.Rejection],
                           truth: Optional[dict] = None) -> list[schema.DialogueExample]:
    """`truth`: synthetic_meta.json utterance entries, (split, conversation_id) -> index -> entry."""
    try:
        conv = _dict(conv, f"conversation #{pos}")
        cid = _ident(conv, "conversation_id", f"conversation #{pos}")
    except _Bad as err:
        rejections.append(schema.Rejection(path, str(err), f"#{pos}"))
        return []
    try:
        speaker, listener = _profile(conv, "speaker_profile"), _profile(conv, "listener_profile")
        topic = _text(conv, "topic", "conversation", required=False, allow_empty=True)
        conv_mcoe = _m_coe(conv, "conversation", counts)
        turns = conv.get("turns")
        if not isinstance(turns, list) or not turns:
            raise _Bad("missing key 'turns'" if turns is None else "turns must be a non-empty list")
    except _Bad as err:
        rejections.append(schema.Rejection(path, str(err), cid))
        return []

    parsed = []
    for k, turn in enumerate(turns):
        where = f"turns[{k}]"
        try:
            turn = _dict(turn, where)
            tid = _ident(turn, "turn_id", where)
            parsed.append((tid, _history(turn, where), _text(turn, "response", where), _chain(turn, where),
                           _m_coe(turn, where, counts)))
        except _Bad as err:
            tid = str(turn.get("turn_id", k)) if isinstance(turn, dict) else str(k)
            rejections.append(schema.Rejection(path, str(err), f"{cid}/{tid}"))
    if not parsed:
        return []

    pids = {"speaker": speaker.id or None, "listener": listener.id or None}
    longest = max(parsed, key=lambda t: len(t[1]))[1]
    expected = [pids.get(role.lower()) for role, _ in longest] + [pids["listener"]]
    dia = int(cid) if cid.isdigit() else -1
    files = {ext: media.get((dia, ext), {}) for ext in ("wav", "mp4")}
    base = {ext: _choose_base(f, expected) for ext, f in files.items()}
    counts["one_based_media_conversations"] += int(any(b == 1 for b in base.values()))

    def resolve(ext: str, pos: int, pid: Optional[str]) -> Optional[str]:
        return _lookup(files[ext], pos + base[ext], pid, counts)

    counts["conversations"] += 1
    seen: set[int] = set()
    out = []
    facts = truth.get((split, cid), {}) if truth is not None else {}
    for tid, hist, response, coe, mcoe in parsed:
        utts = []
        for i, (role, text) in enumerate(hist):
            pid = pids.get(role.lower())
            emo = str(facts[i].get("true_emotion") or "") if i in facts else ""
            u = schema.Utterance(i, role, text, resolve("wav", i, pid), resolve("mp4", i, pid), pid,
                                 emotion=emo)
            if i not in seen:
                seen.add(i)
                counts["utterances"] += 1
                counts["missing_audio"] += u.audio_path is None
                counts["missing_video"] += u.video_path is None
            utts.append(u)
        label = coe.speaker_emotion if coe else ""
        counts["examples_without_emotion"] += coe is None
        mcoe = mcoe or conv_mcoe
        if mcoe is None and truth is not None:
            fact = synthetic_mcoe.last_speaker_fact([(i, role) for i, (role, _) in enumerate(hist)], facts)
            mcoe = synthetic_mcoe.annotation(fact) if fact is not None else None
        counts["examples_with_m_coe"] += mcoe is not None
        out.append(schema.DialogueExample(
            dataset=dataset, split=split, conversation_id=cid, turn_id=tid, history=tuple(utts),
            response=response, emotion=label, emotion_coarse=schema.coarse_emotion(label) if label else "",
            chain_of_empathy=coe, speaker_profile=speaker, listener_profile=listener, topic=topic, m_coe=mcoe,
            response_role="listener", response_audio_path=resolve("wav", len(hist), pids["listener"]),
            response_video_path=resolve("mp4", len(hist), pids["listener"])))
    counts["examples"] += len(out)
    return out


def _synthetic_truth(data_dir: str) -> Optional[dict[tuple[str, str], dict[int, dict]]]:
    """synthetic_meta.json's per-utterance entries, (split, conversation_id) -> index -> entry;
    None (with a warning) when the sidecar is missing or unusable: then no m_coe is built."""
    path = os.path.join(data_dir, SYNTHETIC_META)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        out: dict[tuple[str, str], dict[int, dict]] = collections.defaultdict(dict)
        for u in meta["utterances"]:
            out[(str(u["split"]), str(u["conversation_id"]))][int(u["index"])] = u
        return dict(out)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s unusable (%r): synthetic examples get no M-CoE annotation", path, err)
        return None


def read_avamerg(data_dir: str, splits: Optional[Iterable[str]] = None,
                 dataset: Optional[str] = None) -> ReadResult:
    """Reads the given splits (default: every split file present) of an AvaMERG-format directory.

    `dataset` names the examples' dataset; by default "synthetic" when the
    directory holds synthetic_meta.json (our generator's sidecar), else "avamerg".
    """
    wanted = list(splits) if splits is not None else [s for s, f in SPLIT_FILES.items()
                                                       if os.path.exists(os.path.join(data_dir, f))]
    unknown = [s for s in wanted if s not in SPLIT_FILES]
    if unknown:
        raise ValueError(f"unknown AvaMERG split(s) {unknown}; expected some of {list(SPLIT_FILES)}")
    if dataset is None:
        dataset = "synthetic" if os.path.exists(os.path.join(data_dir, SYNTHETIC_META)) else "avamerg"
    truth = _synthetic_truth(data_dir) if dataset == "synthetic" else None
    media = index_media(data_dir)
    log.info("%s: indexed media of %d dialogues under %s", dataset, len({d for d, _ in media}), data_dir)
    counts = new_counts(wanted)
    examples: list[schema.DialogueExample] = []
    rejections: list[schema.Rejection] = []
    for split in wanted:
        path = os.path.join(data_dir, SPLIT_FILES[split])
        before = len(rejections)
        try:
            data = _load_json(path, counts[split])
        except FileNotFoundError:
            rejections.append(schema.Rejection(path, "split file not found"))
            data = None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            rejections.append(schema.Rejection(path, f"JSON does not parse: {err}"))
            data = None
        if data is not None and not isinstance(data, list):
            rejections.append(schema.Rejection(path, f"top level is {type(data).__name__}, expected a list"))
            data = None
        for pos, conv in enumerate(data or []):
            examples.extend(_conversation_examples(conv, pos, split, dataset, media, counts[split], path, rejections,
                                                   truth))
        counts[split]["rejections"] += len(rejections) - before
    result = ReadResult(examples, rejections, {s: dict(c) for s, c in counts.items()})
    log_summary(log, dataset, data_dir, result)
    return result
