"""TFDS builder `merg_avamerg`: the AvaMERG release (or our synthetic corpus) with features.

    import tensorflow_datasets as tfds
    from input_pipeline.tfds import avamerg  # registers merg_avamerg
    builder = avamerg.MergAvamerg(data_dir=DATA_DIR, workers=4)  # config="default"
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=AVAMERG_DIR))
    source = tfds.data_source("merg_avamerg", data_dir=DATA_DIR, split="train")

Why manual: AvaMERG is distributed by its authors on request / behind their
release page, not at a stable URL TFDS could fetch.  The examples, splits and
features are those of `launch/extract_features.py --dataset=avamerg` with the
same extractor settings (see builder.py).
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from input_pipeline import avamerg as reader
from input_pipeline.tfds.builder import MergBuilder


class MergAvamerg(MergBuilder):
    """AvaMERG: one example per response turn, per-utterance audio/video/text features."""

    name = "merg_avamerg"
    DATASET = "avamerg"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Records of input_pipeline/extract_io.py format_version 1."}
    DESCRIPTION = (
        "AvaMERG (Avatar-based Multimodal Empathetic Response Generation): dialogues with a "
        "speaker and a listener avatar; every turn has a text history with a wav and an mp4 per "
        "utterance, a response, and (train/valid) a chain of empathy (emotion, event, cause, "
        "goal). Features per history utterance: audio/video/text vectors from the configured "
        "extractors, with a mask per modality (False = missing or unusable clip).")
    HOMEPAGE = ""  # no stable public URL for the release; see MANUAL_DOWNLOAD_INSTRUCTIONS
    CITATION = """@inproceedings{avamerg2025,
  title={Towards Multimodal Empathetic Response Generation: A Rich Text-Speech-Vision
         Avatar-based Benchmark},
  booktitle={Proceedings of the ACM Web Conference (WWW)},
  year={2025}}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the AvaMERG release from its authors (see the AvaMERG paper's project page) and
pass its top folder as the manual dir
(`tfds.download.DownloadConfig(manual_dir=DIR)`, or
`python -m input_pipeline.tfds --dataset=avamerg --manual_dir=DIR --data_dir=OUT`).
DIR must look like:
  DIR/train.json  DIR/valid.json  DIR/test.json      (at least one split file)
  DIR/audio_v5_0/dia{conversation_id:05d}utt{idx}_{profile ID}.wav
  DIR/video_v5_0/dia{conversation_id:05d}utt{idx}_{profile ID}.mp4
(media folders may also sit one level deeper, e.g. DIR/train_audio/audio_v5_0/).
A corpus from `launch/make_synthetic.py --output_dir=DIR` has the same layout.
"""

    def present_splits(self, root: str) -> list[str]:
        return [s for s, f in reader.SPLIT_FILES.items() if os.path.exists(os.path.join(root, f))]
