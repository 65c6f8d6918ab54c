"""TFDS builder `merg_meld`: MELD as next-line response examples with features.

    from input_pipeline.tfds import meld  # registers merg_meld
    builder = meld.MergMeld(data_dir=DATA_DIR, workers=4)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MELD_RAW_DIR))

Why manual: the MELD raw tarball (~10 GB of mp4) is better fetched and
unpacked once by hand than by TFDS on every machine.  Examples follow
input_pipeline/meld.py (history up to and including utterance t, response =
line t+1); splits keep MELD's names train/dev/test.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from input_pipeline import meld as reader
from input_pipeline.tfds.builder import MergBuilder


class MergMeld(MergBuilder):
    """MELD (Friends): per-utterance features of the mp4 clips (audio from the AAC track)."""

    name = "merg_meld"
    DATASET = "meld"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Records of input_pipeline/extract_io.py format_version 1."}
    DESCRIPTION = (
        "MELD (Multimodal EmotionLines Dataset): multi-party Friends dialogues with an emotion "
        "and a sentiment per utterance and an mp4 clip (video + AAC audio) per utterance. One "
        "example per utterance t: the history up to and including t, the next line as the "
        "response, emotion/sentiment of t; per-utterance audio/video/text features with masks.")
    HOMEPAGE = "https://affective-meld.github.io/"
    CITATION = """@inproceedings{poria2019meld,
  title={{MELD}: A Multimodal Multi-Party Dataset for Emotion Recognition in Conversations},
  author={Poria, Soujanya and Hazarika, Devamanyu and Majumder, Navonil and Naik, Gautam and
          Cambria, Erik and Mihalcea, Rada},
  booktitle={Proceedings of ACL},
  year={2019}}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download MELD.Raw.tar.gz from the MELD page (https://affective-meld.github.io/), unpack it and
the per-split tarballs inside, and pass the unpacked folder as the manual dir
(`tfds.download.DownloadConfig(manual_dir=DIR)`, or
`python -m input_pipeline.tfds --dataset=meld --manual_dir=DIR --data_dir=OUT`).
Under DIR (any depth) the builder looks for:
  train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv   (at least one)
  train_splits/dia{D}_utt{U}.mp4  dev_splits_complete/...  output_repeated_splits_test/...
(a clip folder whose name contains train/dev/val/test is also recognised).
"""

    def present_splits(self, root: str) -> list[str]:
        _, csvs = reader.scan(root)
        return [s for s in reader.SPLIT_FILES if s in csvs]
