"""Record layout and shard I/O of the feature extractor (input_pipeline/extract.py).

One record = one example (one response turn), `records.encode`d:

  example_id, dataset, split, conversation_id, turn_id: str
  history_roles, history_texts: [str] (U items), history_indices: [int]
  history_profile_ids: [str]  profile ID of each history utterance's speaker (AvaMERG /
      synthetic: the speaker_profile or listener_profile ID of its role; MELD: the
      character name); "" = unknown.  pipeline.py turns it into speaker_ids.
  history_emotions: [str]  the emotion each history utterance itself shows when the data
      annotates it per utterance (MELD's Emotion; synthetic: the true emotion), else ""
  m_coe: {visual_observation, visual_emotion, visual_confidence, audio_observation,
          audio_emotion, audio_confidence} (schema.MCOE_FIELDS) | {}
  response, response_role, emotion, emotion_coarse, topic, sentiment: str
  label: int  (AVAMERG_COARSE index; MELD_EMOTIONS index for MELD; -1 = no emotion)
  chain_of_empathy: {speaker_emotion, event_scenario, emotion_cause, goal_to_response} | {}
  speaker_profile, listener_profile: {id, age, gender, timbre} | {}
  features: {"audio": f32[U, Da], "video": f32[U, Dv], "text": f32[U, Dt],
             "<modality>_<name>": extra outputs of an extractor, e.g. audio_frames f32[U, L, F]}
  feature_mask: {"audio"|"video"|"text": bool[U]}  (False: row is zeros, input was bad)

FORMAT_VERSION is bumped whenever this layout changes (1: first layout; 2:
history_profile_ids, history_emotions, m_coe); it is part of extract.py's fingerprint,
so shards of an older layout are re-extracted, and pipeline.py warns when a
manifest names an older one.

Shards are written to a temporary name and renamed, so a shard file that
exists is complete.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np

from input_pipeline import records, schema

FeatureSpec = dict[str, tuple[tuple[int, ...], str]]
FORMAT_VERSION = 2


def label_of(ex: schema.DialogueExample) -> int:
    """Class id: MELD_EMOTIONS index for MELD, AVAMERG_COARSE index otherwise; -1 when the
    example has no emotion (AvaMERG test.json has no chain of empathy)."""
    names = schema.MELD_EMOTIONS if ex.dataset == "meld" else schema.AVAMERG_COARSE
    key = ex.emotion.strip().lower() if ex.dataset == "meld" else ex.emotion_coarse
    return names.index(key) if key in names else -1


def _profile(p: Optional[schema.Profile]) -> dict:
    return {} if p is None else {"id": p.id, "age": p.age, "gender": p.gender, "timbre": p.timbre}


def _profile_id(ex: schema.DialogueExample, u: schema.Utterance) -> str:
    """The speaker identity of one history utterance ("" unknown).  MELD has no profiles,
    but its Speaker column names a recurring character (the same actor in every episode)."""
    if u.profile_id:
        return str(u.profile_id)
    return u.role if ex.dataset == "meld" else ""


def build_record(ex: schema.DialogueExample, specs: dict[str, FeatureSpec],
                 lookup: Callable[[str, schema.Utterance], Optional[dict]]) -> dict:
    """One example -> its record; `lookup(modality, utterance)` gives the utterance's
    features (extractor output dict) or None when that modality is masked."""
    coe = ex.chain_of_empathy
    rec: dict[str, Any] = {
        "example_id": ex.example_id, "dataset": ex.dataset, "split": ex.split,
        "conversation_id": ex.conversation_id, "turn_id": ex.turn_id,
        "history_roles": [u.role for u in ex.history],
        "history_texts": [u.text for u in ex.history],
        "history_indices": [int(u.index) for u in ex.history],
        "response": ex.response, "response_role": ex.response_role,
        "emotion": ex.emotion, "emotion_coarse": ex.emotion_coarse, "label": label_of(ex),
        "chain_of_empathy": dataclasses.asdict(coe) if coe is not None else {},
        "topic": ex.topic, "sentiment": ex.sentiment,
        "speaker_profile": _profile(ex.speaker_profile),
        "listener_profile": _profile(ex.listener_profile),
        "history_profile_ids": [_profile_id(ex, u) for u in ex.history],
        "history_emotions": [u.emotion for u in ex.history],
        "m_coe": {k: str(ex.m_coe.get(k, "") or "") for k in schema.MCOE_FIELDS}
                 if ex.m_coe else {},
    }
    n = len(ex.history)
    features, masks = {}, {}
    for modality, spec in specs.items():
        names = list(spec)
        arrays = {k: np.zeros((n,) + tuple(spec[k][0]), np.dtype(spec[k][1])) for k in names}
        mask = np.zeros((n,), bool)
        for row, u in enumerate(ex.history):
            got = lookup(modality, u)
            if got is not None:
                mask[row] = True
                for k in names:
                    arrays[k][row] = got[k]
        features[modality] = arrays[names[0]]  # the main per-utterance vector
        for k in names[1:]:
            features[f"{modality}_{k}"] = arrays[k]
        masks[modality] = mask
    rec["features"], rec["feature_mask"] = features, masks
    return rec


def record_feature_spec(specs: dict[str, FeatureSpec]) -> dict:
    """Record feature key -> {"shape": ["U", ...], "dtype"} for the manifest."""
    out = {}
    for m, spec in specs.items():
        for i, (k, (shape, dtype)) in enumerate(spec.items()):
            out[m if i == 0 else f"{m}_{k}"] = {"shape": ["U"] + list(shape), "dtype": dtype}
    return out


def plan_shards(split: str, n: int, per_shard: int) -> list[tuple[str, int, int]]:
    """(file name, first, end) per shard; example order is the reader's."""
    num = max(1, math.ceil(n / max(1, per_shard)))
    bounds = np.linspace(0, n, num + 1).round().astype(int)
    return [(f"{split}-{i:05d}-of-{num:05d}.array_record", int(bounds[i]), int(bounds[i + 1]))
            for i in range(num)]


def write_shard(path: str, payloads: list[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter
    tmp = f"{path}.tmp-{os.getpid()}"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    for data in payloads:
        writer.write(data)
    writer.close()
    os.replace(tmp, path)  # atomic: a shard file either is complete or does not exist


def shard_record_count(path: str) -> int:
    """Records in a finished shard, -1 when it is missing or unreadable."""
    from array_record.python.array_record_module import ArrayRecordReader
    if not os.path.exists(path):
        return -1
    try:
        reader = ArrayRecordReader(path)
        n = reader.num_records()
        reader.close()
        return int(n)
    except Exception:  # noqa: BLE001 - truncated or foreign file: it gets rewritten
        return -1


def iter_records(data_dir: str, split: str) -> Iterator[dict]:
    """The decoded records of a split, shard by shard in order, one at a time: the one reader
    of a whole split outside the Grain pipeline (statistics, evaluation, derived data)."""
    from array_record.python.array_record_module import ArrayRecordReader
    for name in sorted(os.listdir(data_dir)):
        if name.startswith(f"{split}-") and name.endswith(".array_record"):
            reader = ArrayRecordReader(os.path.join(data_dir, name))
            try:
                for i in range(reader.num_records()):
                    yield records.decode(reader.read([i])[0])
            finally:
                reader.close()


def read_records(data_dir: str, split: str) -> list[dict]:
    """All decoded records of a split (see iter_records)."""
    return list(iter_records(data_dir, split))


def read_manifest(data_dir: str) -> dict:
    """data_dir/manifest.json (what extraction wrote), or a ValueError saying how to make one."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise ValueError(f"no manifest.json in data.data_dir={data_dir}; run launch/extract_features.py "
                         "there first, or set data.synthetic.generate=True for the synthetic corpus")
    with open(path) as f:
        return json.load(f)
