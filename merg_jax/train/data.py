"""Data set-up for a run: the synthetic corpus and its features on demand, split sizes.

The default presets train on the synthetic corpus, so a fresh machine runs them
without downloads: when `data.data_dir` has no manifest and `data.synthetic.generate`
is on, the corpus is rendered and its features extracted first (both steps skip
work already done, so a restarted run does not redo them).
"""
from __future__ import annotations

import logging
import math
import os

import jax
import ml_collections

from input_pipeline.extract_io import read_manifest

log = logging.getLogger(__name__)


def ensure_features(data: ml_collections.ConfigDict) -> None:
    """Generates the synthetic corpus and extracts its features when they are missing."""
    if not data.data_dir:
        raise ValueError("data.data_dir is empty; set --config.data.data_dir to extracted features")
    if os.path.exists(os.path.join(data.data_dir, "manifest.json")):
        return
    syn = data.get("synthetic")
    if syn is None or not syn.generate:
        read_manifest(data.data_dir)  # raises with the message
    if jax.process_index() != 0:
        raise ValueError(f"{data.data_dir} has no features; on several hosts prepare them first "
                         "(launch/make_synthetic.py + launch/extract_features.py) on shared storage")
    from input_pipeline import extract
    from input_pipeline.synthetic.corpus import generate_corpus

    corpus = syn.corpus_dir or os.path.join(os.path.dirname(os.path.abspath(data.data_dir)),
                                            "corpus-" + os.path.basename(os.path.abspath(data.data_dir)))
    if not os.path.exists(os.path.join(corpus, "synthetic_meta.json")):
        log.info("generating the synthetic corpus (%d dialogues, conflict_rate %.2f, text_leak %.2f) in %s",
                 syn.num_dialogues, syn.conflict_rate, syn.text_leak, corpus)
        generate_corpus(corpus, syn.num_dialogues, seed=syn.seed, conflict_rate=syn.conflict_rate,
                        text_leak=syn.text_leak, workers=syn.workers)
    log.info("extracting features of %s into %s", corpus, data.data_dir)
    extract.run_extraction("synthetic", corpus, data.data_dir, workers=syn.workers)


def split_size(data_dir: str, split: str) -> int:
    splits = read_manifest(data_dir).get("splits", {})
    if split not in splits:
        raise ValueError(f"split {split!r} is not in {data_dir}/manifest.json (has {sorted(splits)})")
    return int(splits[split]["num_examples"])


def untrained(stage: ml_collections.ConfigDict) -> bool:
    """steps == 0 and epochs == 0: the stage trains nothing (the model as loaded, e.g. the
    early-fusion paper's text-only pretrained baseline)."""
    return not stage.get("steps") and not stage.get("epochs")


def stage_steps(stage: ml_collections.ConfigDict, data_dir: str, split: str, batch_size: int) -> int:
    """A stage's length: `steps` when set, else `epochs` over the split (at least 1); 0 for an
    untrained stage (both 0)."""
    if untrained(stage):
        return 0
    if stage.get("steps"):
        return int(stage.steps)
    n = split_size(data_dir, split)
    return max(1, math.floor(stage.epochs * n / batch_size))
