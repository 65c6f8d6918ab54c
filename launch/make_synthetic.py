"""Writes a synthetic AvaMERG-format corpus (JSON splits + wav + mp4) for tests and demos.

Usage:
  python launch/make_synthetic.py --output_dir=DIR --num_dialogues=N --seed=S \
      [--conflict_rate=R] [--text_leak=P] [--workers=N] [--no_test_coe]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline.synthetic.corpus import generate_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_dialogues", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conflict_rate", type=float, default=0.0,
                        help="fraction of utterances whose audio or video shows another emotion or noise")
    parser.add_argument("--text_leak", type=float, default=0.0,
                        help="fraction of history utterances that name the emotion in their text")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no_test_coe", action="store_true",
                        help="omit chain_of_empathy from test.json, as in the real AvaMERG release")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    meta = generate_corpus(args.output_dir, args.num_dialogues, seed=args.seed, conflict_rate=args.conflict_rate,
                           text_leak=args.text_leak, workers=args.workers, test_chain_of_empathy=not args.no_test_coe)
    logging.info("wrote %d utterances for %d dialogues", meta["num_utterances"], meta["num_dialogues"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
