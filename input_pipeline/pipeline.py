"""Grain input pipeline: ArrayRecord shards -> tokenized, bucketed numpy batches.

Order (MaxText's): source -> shuffle(seed) -> repeat(num_epochs) -> this
process's slice [process_index::process_count] -> decode + prompt + tokenize +
features (read threads) -> optional packing -> batch (pad to the smallest
fitting bucket) -> optional multiprocess prefetch.  The iterator yields numpy
dicts and is checkpointable (`grain.checkpoint.CheckpointSave/Restore` inside
an Orbax CheckpointManager); `to_global` is the separate thin step that turns a
process-local batch into global jax.Arrays.

Batch contract (per process; B = global_batch_size / process_count, L = the
bucket, U = max_utterances, S = slots per example, P = pack_max_examples):
  input_ids       int32[B,L]   token ids; soft slots hold the placeholder id
  targets         int32[B,L]   next token: targets[:, t] = input_ids[:, t+1]
  loss_mask       int32[B,L]   1 where targets[:, t] is a target token (never the prompt)
  attention_mask  int32[B,L]   1 on real tokens, 0 on padding
  positions       int32[B,L]   0.. within each example (restart per packed segment)
  segment_ids     int32[B,L]   1..P per packed example, 0 on padding (1 when unpacked)
  soft_positions  int32[B,P*S] index into L where a soft-prompt embedding goes
  soft_utterance  int32[B,P*S] feature row (into the U or P*U axis) the slot takes;
                               negative -g-1 = dialogue-level slot: pool the valid
                               rows of packed segment g (unpacked: -1)
  soft_modality   int32[B,P*S] prompts.MODALITY_IDS (0 audio, 1 video, 2 text, 3 audio+video;
                               MERIA's dialogue-level signals 4 fused, 5 identity,
                               6 private_audio, 7 private_video, 8 conflict)
  soft_index      int32[B,P*S] 0..K-1 within the slot's K soft tokens
  soft_mask       int32[B,P*S] 1 for real slots
  audio/video/text            float32[B,P*U,D_m]  features of the kept history rows
  audio_mask/video_mask/text_mask  bool[B,P*U]    False for missing or truncated rows
Per-row labels, the same P*U rows as the features (row s*U+j = history row j of packed
segment s); -1 = unknown or padding.  They are set whether or not a row's features are
valid: AND them with the modality masks before a loss.
  speaker_ids     int32[B,P*U] schema.speaker_id(dataset, history_profile_ids[j]): a stable
                               31-bit hash of the speaker's profile ID, equal for every
                               utterance of the same speaker (avatar) across dialogues and
                               splits; for triplet / same-speaker losses, not an index
  profile_age     int32[B,P*U] index into schema.PROFILE_AGES (child, young, middle-aged, elderly)
  profile_gender  int32[B,P*U] index into schema.PROFILE_GENDERS (male, female)
  profile_timbre  int32[B,P*U] index into schema.PROFILE_TIMBRES (low, mid, high); the
                               three from the speaker_/listener_profile of the row's role
  utterance_label int32[B,P*U] the emotion the utterance itself shows (record
                               history_emotions), in the label space of `label`
                               (AVAMERG_COARSE; MELD_EMOTIONS for MELD); synthetic: every
                               row (the listener mirrors the emotion), MELD: every row,
                               AvaMERG: -1 (no per-utterance annotation)
Per example:
  label, example_mask, prompt_length, truncated_utterances, truncated_tokens,
  coe_present, mcoe_present  int32[B] (unpacked) or int32[B,P] (packed); example_mask 0 =
                  padding; mcoe_present 1 when the record has an M-CoE annotation (m_coe)
  example_id      str[B] or str[B,P]  host-side only (dropped by `to_global`)
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np

from configs.common import pipeline_defaults
from input_pipeline import extract_io, records, schema
from input_pipeline.config import shard_files, validate
from input_pipeline.prompts import PromptBuilder

log = logging.getLogger(__name__)

MODALITIES = schema.MODALITIES
PER_EXAMPLE = ("label", "example_mask", "prompt_length", "truncated_utterances",
               "truncated_tokens", "coe_present", "mcoe_present")
# int32[U] per example, [P*U] per batch row; -1 = unknown (see the module docstring).
PER_ROW = ("speaker_ids", "profile_age", "profile_gender", "profile_timbre", "utterance_label")
_PAD = b""  # source element standing for an eval padding example

__all__ = ["make_dataset", "make_iterator", "to_global", "collate", "feature_dims"]


class _PadToLength(grain.MapDataset):
    """Extends a finite dataset with padding elements so every process has the same length."""

    def __init__(self, parent: grain.MapDataset, length: int):
        super().__init__(parent)
        self._n = len(parent)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[index] if index % self._length < self._n else _PAD


@functools.lru_cache(maxsize=65536)
def _speaker_id(dataset: str, profile_id: str) -> int:
    return schema.speaker_id(dataset, profile_id)


@functools.lru_cache(maxsize=4096)
def _profile_labels(age: str, gender: str, timbre: str) -> tuple[int, int, int]:
    return (schema.profile_label("age", age), schema.profile_label("gender", gender),
            schema.profile_label("timbre", timbre))


@functools.lru_cache(maxsize=1024)
def _emotion_label(dataset: str, emotion: str) -> int:
    if not emotion:
        return -1
    if dataset == "meld":
        key = emotion.strip().lower()
        return schema.MELD_EMOTIONS.index(key) if key in schema.MELD_EMOTIONS else -1
    try:
        return schema.AVAMERG_COARSE.index(schema.coarse_emotion(emotion))
    except (KeyError, ValueError):
        return -1


def row_labels(rec: dict, rows: int) -> dict[str, np.ndarray]:
    """PER_ROW arrays (int32[rows]) of the record's last `rows` history utterances, left-
    aligned like the features; records without the fields (format 1) give -1."""
    roles = list(rec.get("history_roles") or [])
    n = len(roles)
    start = max(0, n - rows)
    out = {k: np.full((rows,), -1, np.int32) for k in PER_ROW}
    dataset = str(rec.get("dataset", ""))
    pids = list(rec.get("history_profile_ids") or [])
    emos = list(rec.get("history_emotions") or [])
    profiles = {"speaker": rec.get("speaker_profile") or {},
                "listener": rec.get("listener_profile") or {}}
    for j, i in enumerate(range(start, n)):
        if i < len(pids):
            out["speaker_ids"][j] = _speaker_id(dataset, str(pids[i] or ""))
        prof = profiles.get(str(roles[i]).lower())
        if prof:
            age, gender, timbre = _profile_labels(str(prof.get("age") or ""),
                                                  str(prof.get("gender") or ""),
                                                  str(prof.get("timbre") or ""))
            out["profile_age"][j], out["profile_gender"][j], out["profile_timbre"][j] = (
                age, gender, timbre)
        if i < len(emos):
            out["utterance_label"][j] = _emotion_label(dataset, str(emos[i] or ""))
    return out


def _decode(element: Any) -> dict | None:
    if isinstance(element, (bytes, bytearray, memoryview)):
        return records.decode(bytes(element)) if len(element) else None
    if isinstance(element, dict):
        return element
    raise TypeError(f"source elements must be record bytes or dicts, got {type(element).__name__}")


class _Prepare(grain.transforms.Map):
    """Record -> one tokenized example with features padded to U rows."""

    def __init__(self, builder: PromptBuilder, dims: dict[str, int], max_utterances: int):
        self.builder = builder
        self.dims = dims
        self.u = max_utterances

    def map(self, element: Any) -> dict:
        rec = _decode(element)
        if rec is None:
            return self.empty()
        b = self.builder.build(rec)
        n_hist = len(rec.get("history_texts") or [])
        start = max(0, n_hist - self.u)
        ex = {"tokens": b.tokens, "is_target": b.is_target, "soft_positions": b.soft_positions,
              "soft_utterance": b.soft_utterance, "soft_modality": b.soft_modality,
              "soft_index": b.soft_index, "label": int(rec.get("label", -1)), "example_mask": 1,
              "prompt_length": b.prompt_length, "truncated_utterances": b.truncated_utterances,
              "truncated_tokens": b.truncated_tokens,
              "coe_present": int(bool(rec.get("chain_of_empathy"))),
              "mcoe_present": int(any((rec.get("m_coe") or {}).values())),
              "example_id": str(rec.get("example_id", ""))}
        ex.update(row_labels(rec, self.u))
        feats, masks = rec.get("features") or {}, rec.get("feature_mask") or {}
        for m in MODALITIES:
            arr = np.zeros((self.u, self.dims[m]), np.float32)
            mask = np.zeros((self.u,), bool)
            if m in feats:
                f = np.asarray(feats[m], np.float32)
                if f.shape[0] != n_hist or (f.ndim == 2 and f.shape[1] != self.dims[m]):
                    raise ValueError(f"{ex['example_id']}: {m} features {f.shape} do not match "
                                     f"{n_hist} history utterances x dim {self.dims[m]}")
                k = n_hist - start
                arr[:k] = f[start:]
                mask[:k] = np.asarray(masks.get(m, np.ones(n_hist, bool)), bool)[start:]
                mask[:k] &= b.kept_utterances
            ex[m], ex[m + "_mask"] = arr, mask
        return ex

    def empty(self) -> dict:
        z = np.zeros((0,), np.int32)
        ex = {"tokens": z, "is_target": z.astype(np.int8), "soft_positions": z,
              "soft_utterance": z, "soft_modality": z, "soft_index": z, "example_id": ""}
        ex.update({k: 0 for k in PER_EXAMPLE}, label=-1)
        ex.update({k: np.full((self.u,), -1, np.int32) for k in PER_ROW})
        for m in MODALITIES:
            ex[m] = np.zeros((self.u, self.dims[m]), np.float32)
            ex[m + "_mask"] = np.zeros((self.u,), bool)
        return ex


def _as_row(ex: dict) -> list[dict]:
    return [ex]


class _PackIterDataset(grain.IterDataset):
    """Greedy in-order packing of examples into rows of at most `max_len` tokens."""

    def __init__(self, parent: grain.IterDataset, max_len: int, max_examples: int):
        super().__init__(parent)
        self._max_len, self._max_examples = max_len, max_examples

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._max_len, self._max_examples)


class _PackIterator(grain.DatasetIterator):
    """State = parent state where the next row starts, so restore re-packs exactly."""

    def __init__(self, parent, max_len: int, max_examples: int):
        super().__init__(parent)
        self._max_len, self._max_examples = max_len, max_examples
        self._pending: tuple[dict, Any] | None = None  # example read ahead + state before it

    def __next__(self) -> list[dict]:
        row: list[dict] = []
        used = 0
        if self._pending is not None:
            row, used = [self._pending[0]], len(self._pending[0]["tokens"])
            self._pending = None
        while len(row) < self._max_examples:
            state = self._parent.get_state()
            try:
                ex = next(self._parent)
            except StopIteration:
                break
            if used + len(ex["tokens"]) > self._max_len:
                self._pending = (ex, state)
                break
            row.append(ex)
            used += len(ex["tokens"])
        if not row:
            raise StopIteration
        return row

    def get_state(self) -> dict:
        return {"parent": self._pending[1] if self._pending else self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._pending = None


def collate(rows: Sequence[list[dict]], *, batch_size: int, buckets: Sequence[int], pad_id: int,
            max_slots: int, max_utterances: int, dims: dict[str, int], packed_segments: int
            ) -> dict[str, np.ndarray]:
    """Rows of examples -> one padded numpy batch (see the module docstring)."""
    rows = list(rows) + [[] for _ in range(batch_size - len(rows))]
    need = max([sum(len(e["tokens"]) for e in r) for r in rows] + [1])
    fit = [b for b in buckets if b >= need]
    if not fit:
        raise ValueError(f"row of {need} tokens exceeds the largest bucket {buckets[-1]}")
    B, L, P, U = batch_size, fit[0], packed_segments, max_utterances
    S = P * max_slots
    out: dict[str, np.ndarray] = {k: np.zeros((B, L), np.int32) for k in
                                  ("input_ids", "attention_mask", "positions", "segment_ids")}
    out["input_ids"][:] = pad_id
    is_target = np.zeros((B, L), np.int32)
    for k in ("soft_positions", "soft_utterance", "soft_modality", "soft_index", "soft_mask"):
        out[k] = np.zeros((B, S), np.int32)
    for m in MODALITIES:
        out[m] = np.zeros((B, P * U, dims[m]), np.float32)
        out[m + "_mask"] = np.zeros((B, P * U), bool)
    for k in PER_ROW:
        out[k] = np.full((B, P * U), -1, np.int32)
    meta = {k: np.zeros((B, P), np.int32) for k in PER_EXAMPLE}
    meta["label"][:] = -1
    ids = np.full((B, P), "", dtype=object)
    for r, row in enumerate(rows):
        off = so = 0
        for s, ex in enumerate(row):
            n, ns = len(ex["tokens"]), len(ex["soft_positions"])
            sl = slice(off, off + n)
            out["input_ids"][r, sl] = ex["tokens"]
            is_target[r, sl] = ex["is_target"]
            out["attention_mask"][r, sl] = 1
            out["positions"][r, sl] = np.arange(n)
            out["segment_ids"][r, sl] = s + 1
            ss = slice(so, so + ns)
            out["soft_positions"][r, ss] = ex["soft_positions"] + off
            utt = ex["soft_utterance"]
            out["soft_utterance"][r, ss] = np.where(utt >= 0, utt + s * U, -s - 1)
            out["soft_modality"][r, ss] = ex["soft_modality"]
            out["soft_index"][r, ss] = ex["soft_index"]
            out["soft_mask"][r, ss] = 1
            for m in MODALITIES:
                out[m][r, s * U:(s + 1) * U] = ex[m]
                out[m + "_mask"][r, s * U:(s + 1) * U] = ex[m + "_mask"]
            for k in PER_ROW:
                out[k][r, s * U:(s + 1) * U] = ex[k]
            for k in PER_EXAMPLE:
                meta[k][r, s] = ex[k]
            ids[r, s] = ex["example_id"]
            off, so = off + n, so + ns
    out["targets"] = np.full((B, L), pad_id, np.int32)
    out["targets"][:, :-1] = out["input_ids"][:, 1:]
    out["loss_mask"] = np.zeros((B, L), np.int32)
    same_seg = out["segment_ids"][:, 1:] == out["segment_ids"][:, :-1]
    out["loss_mask"][:, :-1] = is_target[:, 1:] * same_seg
    ids = ids.astype(str)
    if P == 1:
        meta = {k: v[:, 0] for k, v in meta.items()}
        ids = ids[:, 0]
    out.update(meta)
    out["example_id"] = ids
    return out


def feature_dims(data_dir: str, split: str = "train", *, override: Any = None, source: Any = None
                 ) -> dict[str, int]:
    """Per-modality feature width: `override` (a config's data.feature_dims) when set, else
    manifest.json's feature_dims, else the first record of `source` (default: the split's shards)."""
    if override:
        return {m: int(v) for m, v in dict(override).items()}
    path = os.path.join(data_dir, "manifest.json") if data_dir else ""
    if path and os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
        dims = manifest.get("feature_dims") if isinstance(manifest, dict) else None
        if isinstance(dims, dict) and all(m in dims for m in MODALITIES):
            return {m: int(dims[m]) for m in MODALITIES}
    if source is None:
        files = shard_files(data_dir, split)
        if not files:
            return {m: 0 for m in MODALITIES}
        source = grain.sources.ArrayRecordDataSource(files)
    rec = _decode(source[0]) or {}
    feats = rec.get("features") or {}
    return {m: int(np.shape(feats[m])[-1]) if m in feats and np.ndim(feats[m]) == 2 else 0
            for m in MODALITIES}


def _check_format(data_dir: str) -> None:
    """Warns when manifest.json names an older record layout than extract_io.FORMAT_VERSION:
    its records lack fields (history_profile_ids, m_coe, ...) whose batch arrays then
    read as unknown (-1 / empty)."""
    path = os.path.join(data_dir, "manifest.json") if data_dir else ""
    if not path or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            version = json.load(f).get("format_version")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(version, int) and version < extract_io.FORMAT_VERSION:
        log.warning("%s: record format %d is older than %d; speaker/profile/emotion row labels "
                    "and M-CoE annotations may be missing: re-run launch/extract_features.py",
                    data_dir, version, extract_io.FORMAT_VERSION)


def make_dataset(config: ml_collections.ConfigDict, *, source: Any = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> grain.IterDataset:
    """Builds this process's batch dataset. `source`: any random-access source
    (len + getitem -> record bytes or dict, e.g. tfds.data_source); default: the
    split's ArrayRecord shards in config.data_dir.  process_index/count default
    to JAX's and are injectable to simulate several hosts in one process."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    validate(config, pc, have_source=source is not None)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index={pi} is outside [0, {pc})")
    _check_format(config.data_dir)
    if source is None:
        files = shard_files(config.data_dir, config.split)
        source = grain.sources.ArrayRecordDataSource(files)
        log.info("input: %d %s shards, %d records in %s", len(files), config.split, len(source),
                 config.data_dir)
    if len(source) == 0:
        raise ValueError(f"the {config.split} source is empty; check data_dir/split")
    dims = feature_dims(config.data_dir, config.split, override=config.feature_dims, source=source)
    tok_path = config.tokenizer_path
    if not tok_path:
        from merg_jax.core.assets import smollm2_gguf
        tok_path = smollm2_gguf()
    buckets = tuple(int(b) for b in config.seq_buckets)
    builder = PromptBuilder(
        config.template, tok_path, max_length=buckets[-1], max_utterances=config.max_utterances,
        soft_tokens_per_slot=config.soft_tokens_per_slot,
        soft_modalities=tuple(config.soft_modalities) if config.soft_modalities else None,
        chat_template=config.chat_template, system_prompt=config.system_prompt,
        placeholder_token=config.placeholder_token, include_target=config.include_target,
        mode=config.get("prompt_mode", "train"), chain_source=config.get("chain_source", "gold"))
    pad_id = builder.ids["pad"]  # also checks the placeholder token early

    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)
    total = len(ds)
    ds = ds[pi::pc]
    if config.num_epochs is not None:
        ds = ds[:total // pc] if config.drop_remainder else _PadToLength(ds, -(-total // pc))
    ds = ds.map(_Prepare(builder, dims, config.max_utterances))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                              prefetch_buffer_size=config.prefetch_buffer_size))
    segs = config.pack_max_examples if config.packing else 1
    it = _PackIterDataset(it, buckets[-1], segs) if config.packing else it.map(_as_row)
    per_process = config.global_batch_size // pc
    it = it.batch(per_process, drop_remainder=config.drop_remainder, batch_fn=functools.partial(
        collate, batch_size=per_process, buckets=buckets, pad_id=pad_id,
        max_slots=builder.max_slots(), max_utterances=config.max_utterances, dims=dims,
        packed_segments=segs))
    if config.worker_count > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside absl.app
            flags.FLAGS.mark_as_parsed()  # (tests, notebooks) they would be unparsed
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
    return it


def make_iterator(config: ml_collections.ConfigDict, **kwargs) -> grain.DatasetIterator:
    """Checkpointable iterator (save with grain.checkpoint.CheckpointSave in Orbax)."""
    return iter(make_dataset(config, **kwargs))


def _agree_on_length(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pads [B,L] arrays to the longest bucket any process picked (multi-host only)."""
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils
    length = batch["input_ids"].shape[1]
    target = int(np.max(multihost_utils.process_allgather(np.asarray([length]))))
    if target == length:
        return batch
    out = dict(batch)
    fill = {"input_ids": batch["targets"][0, -1], "targets": batch["targets"][0, -1]}
    for k in ("input_ids", "targets", "loss_mask", "attention_mask", "positions", "segment_ids"):
        out[k] = np.pad(batch[k], ((0, 0), (0, target - length)), constant_values=fill.get(k, 0))
    return out


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded over the batch mesh axes.
    String arrays (example_id) stay host-side and are not included."""
    from merg_jax.core.sharding import global_batch
    numeric = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
    return global_batch(_agree_on_length(numeric), mesh)


if __name__ == "__main__":  # quick look at a split: python -m input_pipeline.pipeline DIR [template]
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    cfg = pipeline_defaults()
    cfg.data_dir, cfg.global_batch_size, cfg.num_epochs = sys.argv[1], 4, 1
    if len(sys.argv) > 2:
        cfg.template = sys.argv[2]
    first = next(make_iterator(cfg))
    for key, val in first.items():
        print(key, val.dtype, val.shape, file=sys.stderr)
    print(math.prod(first["input_ids"].shape), "tokens in the first batch", file=sys.stderr)
