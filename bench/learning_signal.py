"""Does the emotion reach the response?  MERIA, its ablations and the text-only baseline on
synthetic corpora whose emotion lives only in voice and face (the MERIA paper, Table 2, our data).

    python bench/learning_signal.py [--runs_dir=runs/signal] [--only=clean/meria,...] [--seeds=0,1,2] [--list]

Each variant is one `launch/train.py` and one `launch/evaluate.py` command (printed before
it runs, so the README can quote them); a variant whose metrics.json exists is not run
again.  The table at the end reads every variant's metrics.json.  Two corpora, 200
dialogues each, seed 0:
  clean     text_leak 0, no conflicts: only audio and video carry the emotion
  conflict  conflict_rate 0.3: in 30% of the clips one modality shows another emotion
            (or noise), the corpus' gold emotion is the speaker's true one
On 2 CPU cores a MERIA variant takes ~30 min (~10 min without M-CoE), the text baseline ~20 min.
Logs (<variant>-train.log, -eval.log) are appended to, so a resumed run keeps its history.
Seed 0 runs in RUNS_DIR/<variant>, seed k > 0 in RUNS_DIR/<variant>-seed<k> with
--config.seed=k (initialisation, shuffling and dropout); with more than one seed per variant
the table shows mean ± std and the number of seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFLICT = ["--config.data.data_dir=data/synthetic-conflict30", "--config.data.synthetic.conflict_rate=0.3"]
VARIANTS = {  # name -> (config, extra train flags)
    "clean/meria": ("configs/meria.py:signal", []),
    "clean/meria_wo_pdr": ("configs/meria.py:signal", ["--config.use_pdr=False"]),
    "clean/meria_wo_ugf": ("configs/meria.py:signal", ["--config.use_ugf=False"]),
    "clean/meria_wo_mcoe": ("configs/meria.py:signal", ["--config.use_mcoe=False"]),
    "clean/text_baseline": ("configs/text_baseline.py:smoke", ["--config.stages.sft.steps=60"]),
    "conflict/meria": ("configs/meria.py:signal", CONFLICT),
    "conflict/meria_wo_ugf": ("configs/meria.py:signal", CONFLICT + ["--config.use_ugf=False"]),
    "conflict/meria_wo_pdr": ("configs/meria.py:signal", CONFLICT + ["--config.use_pdr=False"]),
    "conflict/meria_wo_mcoe": ("configs/meria.py:signal", CONFLICT + ["--config.use_mcoe=False"]),
    # ours: agreement-weighted pooling over utterances (merg_jax.models.fusion.agreement_row_weights)
    "conflict/meria_agree": ("configs/meria.py:signal", CONFLICT + ["--config.fusion.agreement_temperature=4.0"]),
    "conflict/text_baseline": ("configs/text_baseline.py:smoke", CONFLICT + ["--config.stages.sft.steps=60"]),
}
COLUMNS = ("emotion_acc_coarse", "emotion_acc_fine", "emotion_acc_exact_coarse", "emotion_unparseable",
           "chains_empty", "dist_1_corpus", "dist_2_corpus", "ppl_response", "probe_shared_fused",
           "probe_shared_audio", "probe_shared_video", "probe_shared_text",
           "probe_private_audio", "probe_private_video")


def workdir_of(name: str, runs_dir: str, seed: int = 0) -> str:
    return os.path.join(runs_dir, name if seed == 0 else f"{name}-seed{seed}")


def commands(name: str, runs_dir: str, seed: int = 0) -> list[list[str]]:
    config, extra = VARIANTS[name]
    workdir = workdir_of(name, runs_dir, seed)
    py = sys.executable
    seeded = [f"--config.seed={seed}"] if seed else []
    return [[py, "launch/train.py", f"--config={config}", f"--workdir={workdir}", *extra, *seeded],
            [py, "launch/evaluate.py", f"--config={config}", f"--workdir={workdir}", "--nobertscore"]]


def table(names: list[str], runs_dir: str, seeds: tuple[int, ...] = (0,)) -> str:
    import numpy as np

    from merg_jax.evaluation.report import format_value
    cols = COLUMNS + (("seeds",) if len(seeds) > 1 else ())
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        found = [os.path.join(workdir_of(name, runs_dir, s), "eval_test", "metrics.json") for s in seeds]
        runs = [json.load(open(p)) for p in found if os.path.exists(p)]
        if not runs:
            continue
        cells = []
        for c in COLUMNS:
            vals = [r[c] for r in runs if isinstance(r.get(c), (int, float))]
            if len(seeds) > 1 and vals:
                cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}")
            else:
                cells.append(format_value(runs[0].get(c), 3))
        if len(seeds) > 1:
            cells.append(str(len(runs)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs_dir", default=os.path.join(REPO, "runs", "signal"))
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--list", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    args = ap.parse_args()
    seeds = tuple(int(x) for x in args.seeds.split(",") if x)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    os.chdir(REPO)  # the presets' data paths are relative to the repository
    sys.path.insert(0, REPO)
    for name, seed in [(n, s) for s in seeds for n in names]:  # seed-major: partial runs pair up
        workdir = workdir_of(name, args.runs_dir, seed)
        done = os.path.exists(os.path.join(workdir, "eval_test", "metrics.json"))
        for cmd in commands(name, args.runs_dir, seed):
            print(("# done: " if done else "") + " ".join(shlex.quote(c) for c in cmd), flush=True)
            if done or args.list:
                continue
            t0 = time.perf_counter()
            log = workdir + ("-train.log" if "train.py" in cmd[1] else "-eval.log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            with open(log, "a") as fh:
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
            print(f"#   exit {rc} after {time.perf_counter() - t0:.0f} s (log: {log})", flush=True)
            if rc:
                break
    print(table(names, args.runs_dir, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
