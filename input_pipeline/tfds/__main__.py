"""CLI: prepare merg_avamerg / merg_meld (the `tfds build` CLI needs TensorFlow; this does not).

    python -m input_pipeline.tfds --dataset=avamerg --manual_dir=AVAMERG_DIR --data_dir=OUT \
        [--config=default|audio_frames] [--workers=N]

Then `tfds_source("merg_avamerg", OUT, "train")` (input_pipeline.tfds.source) feeds the
Grain pipeline.  Logs go to stderr.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

flags.DEFINE_enum("dataset", "avamerg", ["avamerg", "meld"], "Which builder.")
flags.DEFINE_string("manual_dir", None, "The downloaded dataset (see MANUAL_DOWNLOAD_INSTRUCTIONS).",
                    required=True)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into.", required=True)
flags.DEFINE_string("config", "default", "Builder config name (extractor settings).")
flags.DEFINE_integer("workers", 1, "Media worker processes (1: in-process).")


def main(argv) -> None:
    del argv
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import tensorflow_datasets as tfds

    from input_pipeline.tfds import MergAvamerg, MergMeld
    f = flags.FLAGS
    cls = MergAvamerg if f.dataset == "avamerg" else MergMeld
    builder = cls(data_dir=f.data_dir, config=f.config, workers=f.workers)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=f.manual_dir))
    sizes = {s: v.num_examples for s, v in builder.info.splits.items()}
    logging.info("%s/%s prepared in %s: %s", builder.name, f.config, builder.data_dir, sizes)


if __name__ == "__main__":
    app.run(main)
