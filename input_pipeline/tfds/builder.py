"""Shared TFDS builder for our datasets: reader -> feature extraction -> record -> TFDS example.

Why it reuses extract.py / extract_io.py instead of computing features itself:
the TFDS dataset and `launch/extract_features.py` must hold the same numbers
for the same example and extractor settings, so both call the same readers
(`extract.read_dataset`), extractors (`extract.make_extractor`,
`extract.extract_media`) and record builder (`extract_io.build_record`).  The
TFDS layout is the record schema with two changes TFDS needs: optional nested
dicts (chain_of_empathy, profiles) get a `present` flag instead of being `{}`,
and strings come back as bytes.  `source.py` undoes both on read.

Examples are written in reader order (`disable_shuffling`, integer keys), so
index i of `tfds.data_source` is record i of the ArrayRecord shards that
extract.py writes for the same split.  Generation is beam-free; media are
extracted per chunk of whole conversations (a clip is reused within its
conversation only), which bounds memory on a full corpus.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import extract, extract_io, schema
from input_pipeline.features import registry

log = logging.getLogger(__name__)

# Record fields (extract_io.build_record) by TFDS feature kind.
TEXT_FIELDS = ("example_id", "dataset", "split", "conversation_id", "turn_id", "response",
               "response_role", "emotion", "emotion_coarse", "topic", "sentiment")
TEXT_LIST_FIELDS = ("history_roles", "history_texts", "history_profile_ids", "history_emotions")
COE_FIELDS = tuple(f.name for f in dataclasses.fields(schema.ChainOfEmpathy))
PROFILE_FIELDS = ("id", "age", "gender", "timbre")
OPTIONAL_DICTS = {"chain_of_empathy": COE_FIELDS, "speaker_profile": PROFILE_FIELDS,
                  "listener_profile": PROFILE_FIELDS, "m_coe": schema.MCOE_FIELDS}
RECORD_FIELDS = frozenset(TEXT_FIELDS + TEXT_LIST_FIELDS + tuple(OPTIONAL_DICTS)
                          + ("history_indices", "label", "features", "feature_mask"))
PRESENT = "present"  # flag of an optional nested dict in the TFDS layout


@dataclasses.dataclass(eq=False)
class MergConfig(tfds.core.BuilderConfig):
    """Extractor choice per modality (names and kwargs as in extract.ExtractConfig).

    The config name is part of the dataset path, so two extractor settings never
    share a directory; `chunk_size` (clips per worker task) does not change the data.
    """
    audio: str = "librosa_prosody"
    video: str = "opencv_face"
    text: str = "minilm"
    audio_kwargs: dict = dataclasses.field(default_factory=dict)
    video_kwargs: dict = dataclasses.field(default_factory=dict)
    text_kwargs: dict = dataclasses.field(default_factory=dict)
    chunk_size: int = 8

    def extract_config(self) -> extract.ExtractConfig:
        return extract.ExtractConfig(
            audio=self.audio, video=self.video, text=self.text,
            audio_kwargs=dict(self.audio_kwargs), video_kwargs=dict(self.video_kwargs),
            text_kwargs=dict(self.text_kwargs), chunk_size=self.chunk_size)


DEFAULT_CONFIGS = [
    MergConfig(name="default", description="librosa_prosody audio, opencv_face video (8 frames), "
               "all-MiniLM-L6-v2 text: the defaults of launch/extract_features.py."),
    MergConfig(name="audio_frames", audio_kwargs={"frame_length": 256},
               description="default plus a 256-frame audio sequence per utterance "
               "(features/audio_frames) for sequence encoders."),
]


def features_dict(specs: dict[str, extract_io.FeatureSpec]) -> tfds.features.FeaturesDict:
    """The record schema as TFDS features; feature keys come from extract_io.record_feature_spec
    so they cannot drift from what build_record writes."""
    text = tfds.features.Text
    feats = {key: tfds.features.Tensor(shape=(None,) + tuple(info["shape"][1:]),
                                       dtype=np.dtype(info["dtype"]),
                                       encoding=tfds.features.Encoding.BYTES)
             for key, info in extract_io.record_feature_spec(specs).items()}
    out: dict[str, Any] = {k: text() for k in TEXT_FIELDS}
    out.update({k: tfds.features.Sequence(text()) for k in TEXT_LIST_FIELDS})
    out["history_indices"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
    out["label"] = tfds.features.Scalar(dtype=np.int64, doc="class id; -1 = no emotion")
    for key, fields in OPTIONAL_DICTS.items():
        out[key] = tfds.features.FeaturesDict(
            {PRESENT: tfds.features.Scalar(dtype=np.bool_), **{f: text() for f in fields}})
    out["features"] = tfds.features.FeaturesDict(feats)
    out["feature_mask"] = tfds.features.FeaturesDict(
        {m: tfds.features.Tensor(shape=(None,), dtype=np.bool_) for m in specs})
    return tfds.features.FeaturesDict(out)


def to_tfds_example(rec: dict) -> dict:
    """Record dict (extract_io.build_record) -> TFDS example; unknown keys fail loudly
    rather than being dropped, so a schema change shows up here."""
    extra = set(rec) - RECORD_FIELDS
    if extra:
        raise KeyError(f"record fields {sorted(extra)} have no TFDS feature; update input_pipeline/tfds")
    ex = {k: rec[k] for k in TEXT_FIELDS + TEXT_LIST_FIELDS}
    ex["history_indices"] = np.asarray(rec["history_indices"], np.int64).reshape(-1)
    ex["label"] = int(rec["label"])
    for key, fields in OPTIONAL_DICTS.items():
        sub = rec[key] or {}
        ex[key] = {PRESENT: bool(sub), **{f: str(sub.get(f, "")) for f in fields}}
    ex["features"] = dict(rec["features"])
    ex["feature_mask"] = {m: np.asarray(v, bool) for m, v in rec["feature_mask"].items()}
    return ex


def _conversation_chunks(examples: Sequence[schema.DialogueExample], size: int
                         ) -> Iterator[list[schema.DialogueExample]]:
    """Consecutive runs of whole conversations with about `size` examples each, in reader order."""
    chunk: list[schema.DialogueExample] = []
    for ex in examples:
        if len(chunk) >= size and ex.conversation_id != chunk[-1].conversation_id:
            yield chunk
            chunk = []
        chunk.append(ex)
    if chunk:
        yield chunk


class MergBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of merg_avamerg / merg_meld: subclasses set DATASET, VERSION and the docs."""

    DATASET = ""  # extract.read_dataset name
    BUILDER_CONFIGS = DEFAULT_CONFIGS
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""
    examples_per_chunk = 2000  # examples whose clips are extracted together

    def __init__(self, *, workers: int = 1, file_format: Optional[str] = None, **kwargs: Any):
        """`workers`: media worker processes (1: in this process); array_record by default,
        since that is what tfds.data_source and Grain read."""
        self.workers = int(workers)
        self._exts: Optional[dict[str, registry.Extractor]] = None
        super().__init__(file_format=file_format or "array_record", **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file.  TFDS 4.9.10's own version imports `importlib_resources`
        (a backport it only declares for Python < 3.9) for any builder inside a package."""
        return epath.Path(inspect.getfile(cls))

    # -- info ---------------------------------------------------------------
    def extractors(self) -> dict[str, registry.Extractor]:
        if self._exts is None:
            cfg = self.builder_config.extract_config()
            self._exts = {}
            for m in registry.MODALITIES:
                name, kwargs = cfg.extractor(m)
                self._exts[m] = extract.make_extractor(name, m, kwargs)
        return self._exts

    def output_specs(self) -> dict[str, extract_io.FeatureSpec]:
        return {m: e.output_spec() for m, e in self.extractors().items()}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
            citation=self.CITATION, features=features_dict(self.output_specs()),
            disable_shuffling=True,  # reader order = extract.py's shard order
            metadata=tfds.core.MetadataDict())

    # -- generation ---------------------------------------------------------
    def present_splits(self, root: str) -> list[str]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager
                          ) -> dict[str, Iterator[tuple[int, dict]]]:
        root = str(dl_manager.manual_dir)
        splits = self.present_splits(root)
        if not splits:
            raise FileNotFoundError(f"no {self.DATASET} split files under {root}.\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        examples, rejections, counts = extract.read_dataset(self.DATASET, root, splits)
        exts = self.extractors()
        meta = self.info.metadata
        meta.update(dataset=self.DATASET, manual_dir=root,
                    extractors={m: {"name": getattr(self.builder_config, m),
                                    "settings": e.settings()} for m, e in exts.items()},
                    record_features=extract_io.record_feature_spec(self.output_specs()),
                    feature_dims={m: int(np.prod(next(iter(sp.values()))[0]))
                                  for m, sp in self.output_specs().items()},
                    reader={"counts": counts, "num_rejections": len(rejections),
                            "rejections": [dataclasses.asdict(r) for r in rejections]},
                    splits={})
        by_split: dict[str, list[schema.DialogueExample]] = {s: [] for s in splits}
        for ex in examples:
            by_split.setdefault(ex.split, []).append(ex)
        for s in [s for s, exs in by_split.items() if not exs]:
            log.warning("%s: split %s has no usable example (see metadata reader.rejections); "
                        "it is left out", self.name, s)
            del by_split[s]
        log.info("%s: %s examples, %d reader rejections", self.name,
                 {s: len(v) for s, v in by_split.items()}, len(rejections))
        return {s: self._generate_examples(s, exs) for s, exs in by_split.items()}

    def _generate_examples(self, split: str, examples: list[schema.DialogueExample]
                           ) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config.extract_config()
        exts = self.extractors()
        specs = self.output_specs()
        report = {"num_examples": len(examples), "extraction_rejections": []}
        self.info.metadata["splits"][split] = report
        key = 0
        for chunk in _conversation_chunks(examples, self.examples_per_chunk):
            lookup = self._extract_chunk(chunk, cfg, exts, report["extraction_rejections"])
            for ex in chunk:
                yield key, to_tfds_example(extract_io.build_record(ex, specs, lookup))
                key += 1
        report["num_extraction_rejections"] = len(report["extraction_rejections"])
        log.info("%s %s: %d examples, %d extraction rejections", self.name, split, key,
                 report["num_extraction_rejections"])

    def _extract_chunk(self, chunk: list[schema.DialogueExample], cfg: extract.ExtractConfig,
                       exts: dict[str, registry.Extractor], rejections: list[dict]
                       ) -> Callable[[str, schema.Utterance], Optional[dict]]:
        """Extracts every unique clip/text of `chunk` once; returns build_record's lookup
        (the same rule as extract.run_extraction: an error result masks the row)."""
        utts: dict[str, schema.Utterance] = {}
        for ex in chunk:
            for u in ex.history:
                utts.setdefault(extract.utterance_key(ex, u), u)
        media_paths = {m: sorted({getattr(u, f"{m}_path") for u in utts.values()
                                  if getattr(u, f"{m}_path")}) for m in ("audio", "video")}
        texts = sorted({u.text for u in utts.values()})
        text_results: dict[str, Any] = {}

        def run_text() -> None:
            items = [(f"text#{i}", t) for i, t in enumerate(texts)]
            text_results.update(zip(texts, exts["text"].extract_batch(items), strict=True))

        specs = {m: cfg.extractor(m) for m in media_paths}
        media = extract.extract_media(media_paths, specs, self.workers, cfg.chunk_size,
                                      while_waiting=run_text, local=exts)
        for key, u in utts.items():
            for m in ("audio", "video"):
                path = getattr(u, f"{m}_path")
                res = media[m].get(path) if path else ("error", "missing file")
                if isinstance(res, tuple):
                    rejections.append({"modality": m, "utterance": key, "reason": res[1],
                                       "path": path or ""})
            if isinstance(text_results.get(u.text), registry.MediaError):
                rejections.append({"modality": "text", "utterance": key,
                                   "reason": text_results[u.text].reason, "path": key})

        def lookup(m: str, u: schema.Utterance) -> Optional[dict]:
            res = (text_results.get(u.text) if m == "text"
                   else media[m].get(getattr(u, f"{m}_path") or ""))
            return None if res is None or isinstance(res, (tuple, registry.MediaError)) else res

        return lookup
