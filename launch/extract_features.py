"""CLI: extract audio/video/text features of a dataset into ArrayRecord shards.

    python launch/extract_features.py --dataset=avamerg --data_dir=DIR --output_dir=OUT \
        [--workers=N] [--config=extract.json] [--audio=NAME --video=NAME --text=NAME] [--splits=train,test]

--config is a JSON file (or inline JSON) described in input_pipeline/extract.py;
--audio/--video/--text override the extractor names from it.  Logs go to
OUT/logs/extract_features.log (--verbosity=1: INFO on stderr too).
A rerun into the same OUT keeps shards that are already complete.
"""
from __future__ import annotations

import json
import logging
import os

from absl import app, flags

from input_pipeline import extract
from merg_jax.core import console

flags.DEFINE_enum("dataset", "avamerg", ["avamerg", "meld", "synthetic"], "Dataset layout to read.")
flags.DEFINE_string("data_dir", None, "Dataset root.", required=True)
flags.DEFINE_string("output_dir", None, "Where shards and manifest.json go.", required=True)
flags.DEFINE_integer("workers", max(1, (os.cpu_count() or 2) - 1),
                     "Media worker processes (1: in-process, where a crashing decoder stops the run; "
                     "2 or more: a crash costs only the clip, listed in the manifest).")
flags.DEFINE_string("config", None, "JSON file or inline JSON with extractor settings.")
flags.DEFINE_string("audio", None, "Audio extractor name (overrides --config).")
flags.DEFINE_string("video", None, "Video extractor name (overrides --config).")
flags.DEFINE_string("text", None, "Text extractor name (overrides --config).")
flags.DEFINE_list("splits", None, "Splits to extract (default: all the reader finds).")
flags.DEFINE_integer("examples_per_shard", None, "Examples per ArrayRecord shard (overrides --config).")


def main(argv):
    del argv
    f = flags.FLAGS
    log_file = console.setup(os.path.join(f.output_dir, "logs"), f.verbosity, "extract_features")
    cfg = extract.ExtractConfig.from_json(f.config) if f.config else extract.ExtractConfig()
    for m in ("audio", "video", "text"):
        if f[m].value:
            setattr(cfg, m, f[m].value)
    if f.examples_per_shard:
        cfg.examples_per_shard = f.examples_per_shard
    manifest = extract.run_extraction(f.dataset, f.data_dir, f.output_dir, workers=f.workers,
                                      config=cfg, splits=f.splits)
    summary = {s: {"examples": v["num_examples"], "shards_written": v["shards_written"],
                   "shards_skipped": v["shards_skipped"],
                   "extraction_rejections": v["num_extraction_rejections"]}
               for s, v in manifest["splits"].items()}
    logging.info("summary: %s; reader rejections: %d", json.dumps(summary),
                 manifest["reader"]["num_rejections"])
    print(f"features: {f.output_dir} {json.dumps(summary)}; reader rejections: "
          f"{manifest['reader']['num_rejections']}; log: {log_file}")


if __name__ == "__main__":
    app.run(main)
