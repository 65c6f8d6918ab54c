"""Dataset on disk -> per-turn ArrayRecord shards with audio/video/text features + manifest.

Why this shape: a clip appears in the history of every later turn of its
dialogue, so features are computed once per UNIQUE clip/text and then gathered
per example.  Media work (librosa, OpenCV) is CPU-bound and spread over
spawned worker processes (media_workers.py: a decoder that kills its worker
costs only that clip); the text encoder (JAX) runs batched in the main process
while the workers run.  Policy: a bad clip masks that modality for that
utterance (row of zeros, mask False) and is listed in the manifest; the
example is kept.  A record the reader rejects is skipped and listed.

Config (`--config=FILE.json`, every key optional)::

    {"audio": {"name": "librosa_prosody", "kwargs": {"frame_length": 0}},
     "video": {"name": "opencv_face", "kwargs": {"num_frames": 8}},
     "text":  {"name": "minilm", "kwargs": {"batch_size": 64}},
     "examples_per_shard": 1000, "chunk_size": 8}

Rerun: a shard whose final file exists with the planned record count, written
under the same fingerprint (dataset, data_dir, extractor settings, sharding), is
kept; a split whose shards are all kept is not re-extracted at all (a split
with some shards missing is re-extracted whole, so its counts stay exact).

Output: `OUT/{split}-{i:05d}-of-{n:05d}.array_record` (record layout: see
extract_io.py) and `OUT/manifest.json`:
  status ("in_progress" until the end, then "complete"), fingerprint, dataset,
  record_datasets, data_dir, format_version,
  extractors: {modality: {name, settings, features: {name: {shape, dtype}}}},
  record_features: {key: {shape: ["U", ...], dtype}}, feature_dims: {modality: D},
  reader: {counts (per split), num_rejections, rejections: [{path, reason, record}]},
  splits: {split: {num_examples, shards: [{file, num_records}], shards_written,
           shards_skipped, counts: {examples, history_utterances, unique_utterances,
           audio|video: {clips, processed, failed, failed_by_reason, (video) face_fallback},
           text: {unique_texts, processed, failed}}, face_fallback_clips: [path],
           num_extraction_rejections, extraction_rejections: [{modality, utterance,
           reason, path}], write_s}},
  elapsed_s: {read, extract: {text, media_and_text, audio_clips, video_clips}, total}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from input_pipeline import extract_io, records, schema
from input_pipeline.features import registry
from input_pipeline.media_workers import extract_media, make_extractor
from merg_jax.core.console import Progress
from merg_jax.core.io import write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = extract_io.FORMAT_VERSION  # record layout; part of the fingerprint


@dataclasses.dataclass
class ExtractConfig:
    """Extractor choice per modality plus sharding; see the module docstring for the JSON form."""
    audio: str = "librosa_prosody"
    video: str = "opencv_face"
    text: str = "minilm"
    audio_kwargs: dict = dataclasses.field(default_factory=dict)
    video_kwargs: dict = dataclasses.field(default_factory=dict)
    text_kwargs: dict = dataclasses.field(default_factory=dict)
    examples_per_shard: int = 1000
    chunk_size: int = 8  # clips per worker task

    @classmethod
    def from_json(cls, path_or_text: str) -> "ExtractConfig":
        text = path_or_text
        if os.path.exists(path_or_text):
            with open(path_or_text) as fh:
                text = fh.read()
        raw = json.loads(text)
        cfg = cls()
        for key, value in raw.items():
            if key in registry.MODALITIES:
                if isinstance(value, str):
                    setattr(cfg, key, value)
                else:
                    setattr(cfg, key, value.get("name", getattr(cfg, key)))
                    setattr(cfg, f"{key}_kwargs", dict(value.get("kwargs", {})))
            elif key in ("examples_per_shard", "chunk_size"):
                setattr(cfg, key, int(value))
            else:
                raise ValueError(f"unknown extraction config key {key!r}")
        return cfg

    def extractor(self, modality: str) -> tuple[str, dict]:
        return getattr(self, modality), dict(getattr(self, f"{modality}_kwargs"))


# ----------------------------------------------------------------------------- readers
def read_dataset(dataset: str, data_dir: str, splits: Optional[Sequence[str]] = None):
    """(examples, reader rejections, reader counts) from helper readers by dataset name."""
    if dataset in ("avamerg", "synthetic"):
        from input_pipeline.avamerg import read_avamerg as reader
    elif dataset == "meld":
        from input_pipeline.meld import read_meld as reader
    else:
        raise ValueError(f"unknown dataset {dataset!r} (avamerg | meld | synthetic)")
    result = reader(data_dir, splits=splits)
    examples, rejections, counts = _unpack_reader(result)
    return list(examples), list(rejections), dict(counts or {})


def _unpack_reader(result) -> tuple[list, list, dict]:
    if isinstance(result, tuple):
        return (tuple(result) + ({},))[:3]
    return result.examples, result.rejections, getattr(result, "counts", {})


# ----------------------------------------------------------------------------- driver
@dataclasses.dataclass
class _SplitWork:
    split: str
    examples: list
    plan: list
    todo: set
    utts: dict  # utterance key -> Utterance, unique within the split


def utterance_key(ex: schema.DialogueExample, u: schema.Utterance) -> str:
    return f"{ex.split}/{ex.conversation_id}/utt{u.index}"


def run_extraction(dataset: str, data_dir: str, output_dir: str, workers: int = 1,
                   config: Optional[ExtractConfig] = None,
                   splits: Optional[Sequence[str]] = None) -> dict:
    """Reads `data_dir`, writes shards + manifest.json under `output_dir`; returns the manifest."""
    t_start = time.perf_counter()
    cfg = config or ExtractConfig()
    data_dir = os.path.abspath(data_dir)
    os.makedirs(output_dir, exist_ok=True)
    specs_cfg = {m: cfg.extractor(m) for m in registry.MODALITIES}
    exts = {m: make_extractor(name, m, kw) for m, (name, kw) in specs_cfg.items()}
    out_specs = {m: e.output_spec() for m, e in exts.items()}
    extractor_info = {m: {"name": specs_cfg[m][0], "settings": exts[m].settings(),
                          "features": {k: {"shape": list(sh), "dtype": dt}
                                       for k, (sh, dt) in out_specs[m].items()}}
                      for m in registry.MODALITIES}
    fingerprint = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, dataset, data_dir, extractor_info, cfg.examples_per_shard],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    manifest_path = os.path.join(output_dir, MANIFEST)
    previous: dict = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as fh:
            previous = json.load(fh)
    reuse = previous.get("fingerprint") == fingerprint
    if previous and not reuse:
        log.info("previous manifest has another fingerprint: every shard is rewritten")
    # Stamp the fingerprint first: shards finished before a crash stay reusable.
    write_json(manifest_path, {"fingerprint": fingerprint, "status": "in_progress",
                                           "splits": previous.get("splits", {}) if reuse else {}})

    t0 = time.perf_counter()
    examples, rejections, reader_counts = read_dataset(dataset, data_dir, splits)
    read_s = time.perf_counter() - t0
    log.info("read %d examples, %d reader rejections in %.1f s", len(examples), len(rejections), read_s)
    by_split: dict[str, list[schema.DialogueExample]] = {}
    for ex in examples:
        by_split.setdefault(ex.split, []).append(ex)

    manifest = {"format_version": FORMAT_VERSION, "status": "complete", "dataset": dataset,
                "record_datasets": sorted({ex.dataset for ex in examples}),
                "data_dir": data_dir, "fingerprint": fingerprint, "extractors": extractor_info,
                "record_features": extract_io.record_feature_spec(out_specs),
                # Width of each modality's main per-utterance vector (read by pipeline.py).
                "feature_dims": {m: int(np.prod(next(iter(sp.values()))[0]))
                                 for m, sp in out_specs.items()},
                "reader": {"counts": reader_counts, "num_rejections": len(rejections),
                           "rejections": [dataclasses.asdict(r) for r in rejections]},
                "splits": {}, "elapsed_s": {"read": round(read_s, 3)}}
    work: list[_SplitWork] = []
    for split, exs in by_split.items():
        plan = extract_io.plan_shards(split, len(exs), cfg.examples_per_shard)
        todo = {name for name, a, b in plan if not reuse
                or extract_io.shard_record_count(os.path.join(output_dir, name)) != b - a}
        prev = previous.get("splits", {}).get(split) if reuse else None
        if not todo and prev is not None and prev.get("num_examples") == len(exs):
            log.info("split %s: all %d shards complete, nothing to extract", split, len(plan))
            manifest["splits"][split] = dict(prev, shards_written=0, shards_skipped=len(plan))
            continue
        utts = {}
        for ex in exs:
            for u in ex.history:
                utts.setdefault(utterance_key(ex, u), u)
        work.append(_SplitWork(split, exs, plan, todo, utts))

    # Every unique clip / text of the splits to (re)write, extracted once, in one pool.
    media_paths = {m: sorted({getattr(u, f"{m}_path") for w in work for u in w.utts.values()
                              if getattr(u, f"{m}_path")}) for m in ("audio", "video")}
    texts = sorted({u.text for w in work for u in w.utts.values()})
    text_results: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def run_text():
        t = time.perf_counter()
        items = [(f"text#{i}", txt) for i, txt in enumerate(texts)]
        text_results.update(zip(texts, exts["text"].extract_batch(items), strict=True))
        timings["text"] = round(time.perf_counter() - t, 3)

    t0 = time.perf_counter()
    n_clips = sum(map(len, media_paths.values()))
    with Progress("extract media", n_clips, every=max(1, n_clips // 10), unit="clip") as bar:
        media = extract_media(media_paths, {m: specs_cfg[m] for m in media_paths}, workers,
                              cfg.chunk_size, while_waiting=run_text, local=exts, on_done=bar.update)
    timings["media_and_text"] = round(time.perf_counter() - t0, 3)
    timings["audio_clips"], timings["video_clips"] = len(media_paths["audio"]), len(media_paths["video"])
    manifest["elapsed_s"]["extract"] = timings
    log.info("extracted %d audio, %d video clips and %d texts in %.1f s (%d workers)",
             len(media_paths["audio"]), len(media_paths["video"]), len(texts),
             timings["media_and_text"], workers)

    face_idx = _feature_index(exts["video"], "face_found_frac")
    main_video = next(iter(out_specs["video"]))
    for w in work:
        t0 = time.perf_counter()
        report = _split_report(w, media, text_results, face_idx, main_video, data_dir)

        def lookup(m: str, u: schema.Utterance):
            res = text_results.get(u.text) if m == "text" else media[m].get(getattr(u, f"{m}_path") or "")
            return None if res is None or isinstance(res, (tuple, registry.MediaError)) else res

        shards = []
        for name, a, b in w.plan:
            if name in w.todo:
                payloads = [records.encode(extract_io.build_record(ex, out_specs, lookup))
                            for ex in w.examples[a:b]]
                extract_io.write_shard(os.path.join(output_dir, name), payloads)
            shards.append({"file": name, "num_records": b - a})
        _remove_stale(output_dir, w.split, {name for name, _, _ in w.plan})
        report.update(num_examples=len(w.examples), shards=shards, shards_written=len(w.todo),
                      shards_skipped=len(w.plan) - len(w.todo),
                      write_s=round(time.perf_counter() - t0, 3))
        manifest["splits"][w.split] = report
        log.info("split %s: %d examples, %d shards written, %d kept, %d extraction rejections",
                 w.split, len(w.examples), len(w.todo), len(w.plan) - len(w.todo),
                 report["num_extraction_rejections"])
    manifest["splits"] = {s: manifest["splits"][s] for s in by_split}  # reader order
    manifest["elapsed_s"]["total"] = round(time.perf_counter() - t_start, 3)
    write_json(manifest_path, manifest)
    log.info("done in %.1f s", manifest["elapsed_s"]["total"])
    return manifest


def _split_report(w: _SplitWork, media, text_results, face_idx, main_video, data_dir) -> dict:
    """Counts and every extraction rejection (with path and reason) of one split."""
    rejections: list[dict] = []
    counts: dict[str, Any] = {"examples": len(w.examples),
                              "history_utterances": sum(len(e.history) for e in w.examples),
                              "unique_utterances": len(w.utts)}
    conv_of = {key: key.split("/")[1] for key in w.utts}
    fallbacks: list[str] = []
    for m in ("audio", "video"):
        kinds: dict[str, int] = {}
        paths = set()
        for key, u in w.utts.items():
            p = getattr(u, f"{m}_path")
            if not p:
                kinds["missing file"] = kinds.get("missing file", 0) + 1
                rejections.append({"modality": m, "utterance": key, "reason": "missing file",
                                   "path": _expected_path(w.split, conv_of[key], u, m, data_dir)})
            elif p not in paths:
                paths.add(p)
                res = media[m][p]
                if isinstance(res, tuple):
                    kind = _reason_kind(res[1])
                    kinds[kind] = kinds.get(kind, 0) + 1
                    rejections.append({"modality": m, "utterance": key, "reason": res[1], "path": p})
                elif m == "video" and face_idx is not None and float(res[main_video][face_idx]) == 0.0:
                    fallbacks.append(p)
        failed = sum(kinds.values())
        counts[m] = {"clips": len(paths) + kinds.get("missing file", 0),
                     "processed": len(paths) + kinds.get("missing file", 0) - failed,
                     "failed": failed, "failed_by_reason": kinds}
    counts["video"]["face_fallback"] = len(fallbacks)
    texts: dict[str, str] = {}
    for key, u in w.utts.items():
        texts.setdefault(u.text, key)
    bad = 0
    for txt, key in texts.items():
        res = text_results.get(txt)
        if isinstance(res, registry.MediaError):
            bad += 1
            rejections.append({"modality": "text", "utterance": key, "reason": res.reason, "path": key})
    counts["text"] = {"unique_texts": len(texts), "processed": len(texts) - bad, "failed": bad}
    return {"counts": counts, "face_fallback_clips": sorted(fallbacks),
            "num_extraction_rejections": len(rejections), "extraction_rejections": rejections}


def _remove_stale(output_dir: str, split: str, keep: set[str]) -> None:
    """Deletes shards of `split` from an older plan (other shard count) and leftover temp files,
    so a glob over {split}-*-of-*.array_record sees exactly this run's shards."""
    for name in os.listdir(output_dir):
        if name.startswith(f"{split}-") and ".array_record" in name and name not in keep:
            log.info("removing stale %s", name)
            os.remove(os.path.join(output_dir, name))


def _reason_kind(reason: str) -> str:
    """Short category of a MediaError reason for counting ("silent (..)" -> "silent")."""
    return reason.split(" (")[0].strip()


def _feature_index(ext: registry.Extractor, name: str) -> Optional[int]:
    names = getattr(ext, "feature_names", None)
    if names is None:
        return None
    names = names()
    return names.index(name) if name in names else None


def _expected_path(split: str, conv: str, u: schema.Utterance, modality: str, data_dir: str) -> str:
    """Where a missing clip was expected (AvaMERG naming), else a description."""
    if u.profile_id is not None and conv.isdigit():
        sub, ext = ("audio_v5_0", "wav") if modality == "audio" else ("video_v5_0", "mp4")
        return os.path.join(data_dir, sub, f"dia{int(conv):05d}utt{u.index}_{u.profile_id}.{ext}")
    return f"{split}/{conv}/utt{u.index} ({modality} clip not found)"
