"""Input-pipeline throughput and feature-extraction speed on this machine.

(a) Grain examples/s from ArrayRecord (decode + prompt + tokenization + features
    + bucketed batching), worker_count 0 and 2; goal >= 2,000 examples/s.
(b) Extraction speed in media seconds per wall second on one core for the
    registered audio ('librosa_prosody') and video ('opencv_face') extractors on
    clips of the synthetic corpus; goal for audio >= 50x real time per core.

Usage: python bench/input_pipeline.py [--records 3000] [--seconds 20] [--skip_extraction]
Figures go to stdout, logs to stderr.  Runtime about 2-3 minutes.
"""
from __future__ import annotations

import os

# One thread per library so "per core" means one core (set before numpy loads).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("bench.input_pipeline")
PIPELINE_GOAL = 2000.0  # examples/s
AUDIO_GOAL = 50.0  # x real time per core
# Widths of the registered extractors' vectors (prosody 180, face 775) and MiniLM (384).
DIMS = {"audio": 180, "video": 775, "text": 384}
_WORDS = ("i feel so tired after work today and nobody seems to notice how much effort "
          "my sister finally called me back after months of silence we talked for hours "
          "the landlord raised the rent again and i do not know how we will manage it "
          "our team won the final game last night everyone was cheering in the streets").split()


def _record(i: int, rng: np.random.Generator) -> dict:
    n = int(rng.integers(1, 9))  # AvaMERG: about 4-5 history utterances on average
    texts = [" ".join(rng.choice(_WORDS, int(rng.integers(8, 30)))).capitalize() + "."
             for _ in range(n)]
    return {
        "example_id": f"bench/train/c{i:06d}/t{n}", "dataset": "bench", "split": "train",
        "conversation_id": f"c{i:06d}", "turn_id": str(n),
        "history_roles": ["speaker" if j % 2 == 0 else "listener" for j in range(n)],
        "history_texts": texts, "response": " ".join(rng.choice(_WORDS, 20)).capitalize() + ".",
        "emotion": "sad", "emotion_coarse": "sad", "label": i % 7,
        "chain_of_empathy": {"speaker_emotion": "sad", "event_scenario": " ".join(rng.choice(_WORDS, 12)),
                             "emotion_cause": " ".join(rng.choice(_WORDS, 10)),
                             "goal_to_response": " ".join(rng.choice(_WORDS, 10))},
        "topic": "Life Events", "speaker_profile": {}, "listener_profile": {},
        "features": {m: rng.standard_normal((n, d)).astype(np.float32) for m, d in DIMS.items()},
        "feature_mask": {m: np.ones(n, bool) for m in DIMS},
    }


def write_shards(out: str, n: int, shards: int = 4) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    from input_pipeline import records
    rng = np.random.default_rng(0)
    per = -(-n // shards)
    for s in range(shards):
        w = ArrayRecordWriter(os.path.join(out, f"train-{s:05d}-of-{shards:05d}.array_record"),
                              "group_size:1")
        for i in range(s * per, min(n, (s + 1) * per)):
            w.write(records.encode(_record(i, rng)))
        w.close()


def bench_pipeline(data_dir: str, workers: int, seconds: float) -> dict:
    from configs.common import pipeline_defaults
    from input_pipeline import pipeline
    c = pipeline_defaults()
    c.data_dir, c.template, c.global_batch_size = data_dir, "coe", 32
    c.max_utterances, c.worker_count, c.read_threads = 8, workers, 0 if workers else 2
    c.worker_buffer_size = 4
    t0 = time.perf_counter()
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    next(it)
    startup = time.perf_counter() - t0
    cpu0 = _cpu_seconds()
    n, tokens, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += int(b["example_mask"].sum())
        tokens += int(b["attention_mask"].sum())
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    if hasattr(it, "close"):
        it.close()
    return {"examples_per_s": n / wall, "tokens_per_s": tokens / wall, "startup_s": startup,
            "examples": n, "cpu_us_per_example": cpu / max(n, 1) * 1e6}


def _cpu_seconds() -> float:
    """CPU time of this process and its (grain worker) children: load-robust cost."""
    try:
        import psutil
    except ImportError:
        return time.process_time()
    procs = [psutil.Process()]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _durations(paths: list[str], kind: str) -> list[float]:
    if kind == "audio":
        import soundfile as sf
        return [sf.info(p).duration for p in paths]
    import cv2
    out = []
    for p in paths:
        cap = cv2.VideoCapture(p)
        out.append(cap.get(cv2.CAP_PROP_FRAME_COUNT) / max(cap.get(cv2.CAP_PROP_FPS), 1e-6))
        cap.release()
    return out


def bench_extractor(name: str, paths: list[str], kind: str, budget_s: float) -> dict:
    import input_pipeline.features.audio
    import input_pipeline.features.video  # noqa: F401
    from input_pipeline.features import registry
    ext = registry.create(name)
    ext.extract(paths[0])  # warm-up: imports, caches, cascade load
    durs = _durations(paths, kind)
    media, errors, t0 = 0.0, 0, time.perf_counter()
    for p, d in zip(paths, durs):
        try:
            ext.extract(p)
            media += d
        except registry.MediaError:
            errors += 1
        if time.perf_counter() - t0 > budget_s:
            break
    wall = time.perf_counter() - t0
    return {"x_realtime": media / wall, "media_s": media, "wall_s": wall, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per pipeline run")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--dialogues", type=int, default=4, help="synthetic dialogues for (b)")
    ap.add_argument("--skip_extraction", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    print(f"machine: {os.cpu_count()} cores visible (shared); one thread per library")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "shards")
        os.makedirs(data)
        t0 = time.perf_counter()
        write_shards(data, args.records)
        log.info("wrote %d records in %.1f s", args.records, time.perf_counter() - t0)
        for w in args.workers:
            r = bench_pipeline(data, w, args.seconds)
            print(f"(a) grain pipeline, template coe, batch 32, worker_count {w}: "
                  f"{r['examples_per_s']:.0f} examples/s ({r['tokens_per_s']:.0f} tokens/s, "
                  f"{r['examples']} examples, startup {r['startup_s']:.1f} s, load avg "
                  f"{os.getloadavg()[0]:.1f}); goal {PIPELINE_GOAL:.0f} -> ratio "
                  f"{r['examples_per_s'] / PIPELINE_GOAL:.2f}")
            cores = min(2, os.cpu_count() or 1)
            proj = cores * 1e6 / r["cpu_us_per_example"]
            print(f"    cost {r['cpu_us_per_example']:.0f} CPU-us/example -> {proj:.0f} examples/s "
                  f"on {cores} dedicated cores (projection); ratio {proj / PIPELINE_GOAL:.2f}")
        if args.skip_extraction:
            return 0
        corpus = os.path.join(tmp, "corpus")
        from input_pipeline.synthetic.corpus import generate_corpus
        t0 = time.perf_counter()
        generate_corpus(corpus, args.dialogues, seed=0, workers=1)
        log.info("synthetic corpus of %d dialogues in %.1f s", args.dialogues, time.perf_counter() - t0)
        wavs = sorted(glob.glob(os.path.join(corpus, "audio_*", "*.wav")))
        mp4s = sorted(glob.glob(os.path.join(corpus, "video_*", "*.mp4")))
        for name, paths, kind, goal in (("librosa_prosody", wavs, "audio", AUDIO_GOAL),
                                        ("opencv_face", mp4s, "video", None)):
            if not paths:
                print(f"(b) {name}: no {kind} clips generated")
                continue
            try:
                r = bench_extractor(name, paths, kind, budget_s=40.0)
            except Exception as err:  # noqa: BLE001 - report, do not hide: e.g. a missing Haar cascade
                print(f"(b) {name}: FAILED {type(err).__name__}: {err}")
                continue
            ratio = f"goal {goal:.0f}x -> ratio {r['x_realtime'] / goal:.2f}" if goal else "no goal set"
            print(f"(b) {name} ({kind}): {r['x_realtime']:.1f}x real time on one core "
                  f"({r['media_s']:.1f} s of media in {r['wall_s']:.2f} s, {r['errors']} errors); {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
