"""`tfds.data_source` of merg_avamerg / merg_meld as a Grain source of our record dicts.

Why a wrapper: TFDS hands back strings as bytes and stores optional nested
dicts with a `present` flag (builder.py); the Grain pipeline and the prompt
builder expect exactly what `records.decode` gives for an ArrayRecord shard
written by extract.py.  `to_record` undoes the TFDS layout, so
`pipeline.make_dataset(config, source=tfds_source(...))` is unchanged.
The wrapper pickles by (name, data_dir, split), so Grain worker processes
reopen the files instead of copying open readers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsIndex

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.tfds import builder as b


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def to_record(ex: dict) -> dict:
    """TFDS example (numpy, bytes) -> the record dict of extract_io.build_record."""
    rec: dict[str, Any] = {k: _str(ex[k]) for k in b.TEXT_FIELDS}
    # A dataset prepared before a field existed (history_profile_ids, history_emotions,
    # m_coe: record format 2) reads back with that field empty, as the pipeline expects.
    rec.update({k: [_str(x) for x in ex[k]] if k in ex else [] for k in b.TEXT_LIST_FIELDS})
    rec["history_indices"] = [int(i) for i in np.asarray(ex["history_indices"]).reshape(-1)]
    rec["label"] = int(ex["label"])
    for key, fields in b.OPTIONAL_DICTS.items():
        sub = ex.get(key)
        rec[key] = {f: _str(sub[f]) for f in fields} if sub is not None and bool(sub[b.PRESENT]) else {}
    rec["features"] = {k: np.asarray(v) for k, v in ex["features"].items()}
    rec["feature_mask"] = {k: np.asarray(v, bool) for k, v in ex["feature_mask"].items()}
    return rec


class TfdsRecordSource(Sequence):
    """Random-access source: len() and [i] -> record dict (same as the ArrayRecord path)."""

    def __init__(self, name: str, data_dir: str, split: str):
        self.name, self.data_dir, self.split = name, data_dir, split
        # A custom MergConfig name (not in BUILDER_CONFIGS) is read back from the prepared files.
        self._source = tfds.data_source(name, data_dir=data_dir, split=split, download=False)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: SupportsIndex) -> dict:  # type: ignore[override]
        return to_record(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [to_record(ex) for ex in self._source.__getitems__(indices)]

    def __getstate__(self) -> dict:
        return {"name": self.name, "data_dir": self.data_dir, "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["data_dir"], state["split"])

    def __repr__(self) -> str:
        return f"TfdsRecordSource({self.name!r}, {self.data_dir!r}, {self.split!r}, n={len(self)})"


def tfds_source(name: str, data_dir: str, split: str) -> TfdsRecordSource:
    """`name` like "merg_avamerg" or "merg_avamerg/audio_frames" (optionally ":1.0.0")."""
    return TfdsRecordSource(name, data_dir, split)
