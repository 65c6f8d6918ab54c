"""The early-fusion paper's Table 3 (MELD): text-only pretrained, text-only fine-tuned and the
early-fusion MLLM, per backbone, from evaluated workdirs.

    python bench/meld_table.py [--runs_dir=runs/meld] [--runs=smoke/pretrained=W1,...] [--split=test]
        [--backbones=mistral_7b,llama3_8b,smoke] [--list | --run] [--data_dir=D] [--steps=N]
        [--llama3_8b_path=P] [--mistral_7b_path=P] [--classifier_dir=C] [--train_flags=...] [--eval_flags=...]

Rows: backbone x method, in the paper's order (methods outer, Mistral before Llama);
smoke = SmolLM2-135M-Instruct, ours.  Row `<backbone>/<method>` reads the workdir
`<runs_dir>/<backbone>/<method>` unless --runs names another one for it.  Its presets:
  pretrained   configs/text_baseline.py:pretrained_<backbone>  (a 0-step stage: the model as loaded)
  finetuned    configs/text_baseline.py:finetuned_<backbone>
  multimodal   configs/early_fusion.py:<backbone>
--list prints every row's launch/train.py and launch/evaluate.py command and runs nothing;
--run runs the commands of the rows whose metrics.json is missing (logs next to the
workdirs), then prints the table; without either only the table is printed.  --steps=N
shortens the two trained rows (the pretrained row stays at 0 steps); --train_flags and
--eval_flags are added to every row's command (so put no stage length in --train_flags).

Each column reads one key of `<workdir>/eval_<split>/metrics.json`
(written by merg_jax/evaluation/run.py; a missing key or workdir prints "–"):
  PPL            ppl_response (the gold response given the prompt the system generates from);
                 for metrics written before it existed ppl_target_given_train_prompt, or
                 ppl_context (its older name); the line under the table says which
  Dist-2         dist_2_corpus (distinct bigrams / all bigrams over all responses: the paper's
                 values 0.16-0.33 are this corpus-level fraction, not a per-response mean)
  BERTScore F1   bertscore_f1 (local all-MiniLM-L6-v2, not the paper's unnamed BERTScore model)
  Emotion        polarity_emotion (needs --classifier_dir at evaluation: the paper's
                 distilbert-base-uncased-emotion or any local *ForSequenceClassification dir)
  Sentiment      polarity_sentiment (VADER)
  Empathy        polarity_empathy ((emotion + sentiment) / 2, so it needs the classifier too)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONES = {"mistral_7b": "Mistral-7B-Instruct-v0.3", "llama3_8b": "Llama-3-8B-Instruct",
             "smoke": "SmolLM2-135M-Instruct (ours)"}
METHODS = {"pretrained": "Baseline (text only)", "finetuned": "Fine-tuned Baseline (text only)",
           "multimodal": "Empathetic MLLM (text + audio + video)"}
# column -> (metrics.json keys, first present wins; decimals)
COLUMNS = {"PPL": (("ppl_response", "ppl_target_given_train_prompt", "ppl_context"), 2), "Dist-2": (("dist_2_corpus",), 4),
           "BERTScore F1": (("bertscore_f1",), 4), "Emotion": (("polarity_emotion",), 3),
           "Sentiment": (("polarity_sentiment",), 3), "Empathy": (("polarity_empathy",), 3)}


def preset(backbone: str, method: str) -> str:
    if method == "multimodal":
        return f"configs/early_fusion.py:{backbone}"
    return f"configs/text_baseline.py:{method}_{backbone}"


def rows(backbones: list[str]) -> list[str]:
    return [f"{b}/{m}" for m in METHODS for b in backbones]


def commands(row: str, workdir: str, *, split: str = "test", data_dir: str = "", model_path: str = "",
             classifier_dir: str = "", steps: int = 0, train_flags: list[str] = (),
             eval_flags: list[str] = ()) -> list[list[str]]:
    """launch/train.py and launch/evaluate.py of one row (`steps`: trained rows only)."""
    backbone, method = row.split("/")
    config = preset(backbone, method)
    train = [sys.executable, "launch/train.py", f"--config={config}", f"--workdir={workdir}"]
    if backbone != "smoke":
        train.append(f"--config.model.path={model_path or '/path/to/' + BACKBONES[backbone]}")
    if data_dir:
        train.append(f"--config.data.data_dir={data_dir}")
    if steps and method != "pretrained":
        train.append(f"--config.stages.sft.steps={steps}")
    evaluate = [sys.executable, "launch/evaluate.py", f"--config={config}", f"--workdir={workdir}", f"--split={split}"]
    if classifier_dir:
        evaluate.append(f"--classifier_dir={classifier_dir}")
    return [train + list(train_flags), evaluate + list(eval_flags)]


def _cell(value, digits: int) -> str:
    if value is None or isinstance(value, bool):
        return "–"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def read_metrics(workdir: str, split: str) -> dict | None:
    path = os.path.join(workdir, f"eval_{split}", "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def table(workdirs: dict[str, str], backbones: list[str], split: str = "test") -> str:
    """The markdown table (paper layout) and one line per row saying what it was read from."""
    head = ["Method", "Model", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    notes = []
    for row in rows(backbones):
        backbone, method = row.split("/")
        m = read_metrics(workdirs[row], split)
        cells = []
        for keys, digits in COLUMNS.values():
            key = next((k for k in keys if m is not None and k in m), None)
            cells.append(_cell(m.get(key) if key else None, digits))
        lines.append(f"| {METHODS[method]} | {BACKBONES[backbone]} | " + " | ".join(cells) + " |")
        if m is None:
            notes.append(f"{row}: no {os.path.join(workdirs[row], f'eval_{split}', 'metrics.json')}")
        else:
            ppl = next((k for k in COLUMNS["PPL"][0] if k in m), "none")
            notes.append(f"{row}: {workdirs[row]} (step {m.get('step')}, n={m.get('n')}, split {m.get('split')}, "
                         f"PPL = {ppl})")
    return "\n".join(lines + [""] + notes)


def _parse_runs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--runs item {item!r} is not ROW=WORKDIR (ROW like smoke/pretrained)")
        row, path = item.split("=", 1)
        out[row.strip()] = os.path.abspath(os.path.expanduser(path.strip()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs_dir", default=os.path.join(REPO, "runs", "meld"), help="<runs_dir>/<backbone>/<method>")
    ap.add_argument("--runs", default="", help="ROW=WORKDIR,... overriding the naming convention")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help=f"subset of {', '.join(BACKBONES)}")
    ap.add_argument("--split", default="test", help="the evaluated split (eval_<split>/metrics.json)")
    ap.add_argument("--list", action="store_true", help="print the train/evaluate commands, run nothing")
    ap.add_argument("--run", action="store_true", help="run the missing rows' commands, then print the table")
    ap.add_argument("--data_dir", default="", help="extracted features (MELD's); default: the presets' synthetic")
    ap.add_argument("--llama3_8b_path", default="", help="local Meta-Llama-3-8B-Instruct HF directory")
    ap.add_argument("--mistral_7b_path", default="", help="local Mistral-7B-Instruct-v0.3 HF directory")
    ap.add_argument("--steps", type=int, default=0, help="train steps of the fine-tuned and multimodal rows "
                    "(0: the presets' epochs)")
    ap.add_argument("--classifier_dir", default="", help="local emotion classifier (emotion / empathy polarity)")
    ap.add_argument("--train_flags", default="", help="extra launch/train.py flags for every row (shell words)")
    ap.add_argument("--eval_flags", default="", help="extra launch/evaluate.py flags for every row (shell words)")
    args = ap.parse_args(argv)
    backbones = [b for b in args.backbones.split(",") if b]
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        ap.error(f"unknown backbones {unknown}; known: {', '.join(BACKBONES)}")
    try:
        given = _parse_runs(args.runs)
    except ValueError as e:
        ap.error(str(e))
    bad = sorted(set(given) - set(rows(list(BACKBONES))))
    if bad:
        ap.error(f"unknown rows {bad} in --runs; rows are <backbone>/<method>, methods {', '.join(METHODS)}")
    runs_dir = os.path.abspath(args.runs_dir)
    workdirs = {r: given.get(r, os.path.join(runs_dir, r)) for r in rows(backbones)}
    os.chdir(REPO)  # the presets' data paths are relative to the repository
    # this checkout's packages first, whatever the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (REPO, os.environ.get("PYTHONPATH"))))}
    if args.list or args.run:
        paths = {"llama3_8b": args.llama3_8b_path, "mistral_7b": args.mistral_7b_path}
        for row, workdir in workdirs.items():
            done = read_metrics(workdir, args.split) is not None
            cmds = commands(row, workdir, split=args.split, data_dir=args.data_dir,
                            model_path=paths.get(row.split("/")[0], ""), classifier_dir=args.classifier_dir,
                            steps=args.steps, train_flags=shlex.split(args.train_flags), eval_flags=shlex.split(args.eval_flags))
            for cmd in cmds:
                print(("# done: " if done else "") + " ".join(shlex.quote(c) for c in cmd), flush=True)
                if done or not args.run:
                    continue
                t0 = time.perf_counter()
                log = workdir.rstrip("/") + ("-train.log" if "launch/train.py" in cmd else "-eval.log")
                os.makedirs(os.path.dirname(log), exist_ok=True)
                with open(log, "a") as fh:
                    rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
                print(f"#   exit {rc} after {time.perf_counter() - t0:.0f} s (log: {log})", flush=True)
                if rc:
                    break
        if args.list:
            return 0
    print(table(workdirs, backbones, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
