"""The benchmark scripts' non-timing parts: what they run and how they report it.

Their timings are printed, never asserted; these tests keep the scripts from rotting
between the sessions that run them (the 8B path only runs where a GPU is lent).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_learning_signal_commands_and_table(tmp_path):
    ls = _module("learning_signal")
    train, evaluate = ls.commands("conflict/meria_wo_ugf", str(tmp_path))
    workdir = str(tmp_path / "conflict" / "meria_wo_ugf")
    assert train[1:] == ["launch/train.py", "--config=configs/meria.py:signal", f"--workdir={workdir}",
                         *ls.CONFLICT, "--config.use_ugf=False"]
    assert evaluate[1:] == ["launch/evaluate.py", "--config=configs/meria.py:signal", f"--workdir={workdir}",
                            "--nobertscore"]
    out = tmp_path / "clean" / "meria" / "eval_test"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"emotion_acc_coarse": 0.98039, "probe_shared_text": 0.129}))
    rows = ls.table(["clean/meria", "clean/text_baseline"], str(tmp_path)).splitlines()
    assert len(rows) == 3  # header, rule, the one variant with results
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[0] == "clean/meria" and cells[1 + ls.COLUMNS.index("emotion_acc_coarse")] == "0.980"
    assert cells[1 + ls.COLUMNS.index("probe_shared_text")] == "0.129"
    assert cells[1 + ls.COLUMNS.index("dist_1_corpus")] == "–"


def test_learning_signal_list_runs_nothing(tmp_path):
    res = subprocess.run([sys.executable, "bench/learning_signal.py", "--list", f"--runs_dir={tmp_path}",
                          "--only=clean/meria"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("launch/") == 2 and not any(tmp_path.iterdir())
    bad = subprocess.run([sys.executable, "bench/learning_signal.py", "--list", "--only=nope"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown variants ['nope']" in bad.stderr


def test_train_step_random_8b_path_on_a_tiny_model():
    """The GPU sessions' 8B benchmark path, on a tiny Llama-3-shaped model: one real step."""
    res = subprocess.run([sys.executable, "bench/train_step.py", "--random_8b", "--tiny_for_test", "--warmup=1",
                          "--steps=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "merg-jax (runtime)" in res.stdout and "ok True" in res.stdout, res.stdout


def test_ugf_conflict_clip_kinds_concat_and_report():
    uc = _module("ugf_conflict")
    assert uc._kind({"conflict": None}) == "agree"
    assert uc._kind({"conflict": "video", "video_emotion": "noise"}) == "video_noise"
    assert uc._kind({"conflict": "audio", "audio_emotion": "sad"}) == "audio_other"
    import numpy as np
    part = {"feats": {"audio": np.zeros((2, 3))}, "masks": {"audio": np.ones(2, bool)}, "label": np.array([1, 2]),
            "kind": np.array(["agree", "agree"]), "examples": [([0, 1], 1)]}
    both = uc._concat([part, part])
    assert both["examples"] == [([0, 1], 1), ([2, 3], 1)] and both["feats"]["audio"].shape == (4, 3)
    run = {f"n_{k}": 1 for k in uc.KINDS}
    run.update({f"{c}/{k}": 0.5 for c in ("var_P_audio", "var_P_video", "w_audio", "w_video", "acc_ugf", "acc_mean")
                for k in uc.KINDS + ("all",)})
    run.update(dialogue_acc_ugf=0.4, dialogue_acc_mean=0.3, dialogue_acc_agree=0.2, final_pdr_loss=5.0,
               n_test_examples=9)
    other = dict(run, dialogue_acc_ugf=0.6)
    text = uc.report({0.001: [run, other]}, {}, [0, 1])
    assert "2 seeds (0,1)" in text and "| 0.001 | 0.500 ± 0.100 | 0.300 ± 0.000 |" in text


def test_meld_table_commands_and_layout(tmp_path):
    mt = _module("meld_table")
    w = str(tmp_path / "smoke" / "pretrained")
    train, evaluate = mt.commands("smoke/pretrained", w, steps=20, eval_flags=["--nobertscore"])
    assert train[1:] == ["launch/train.py", "--config=configs/text_baseline.py:pretrained_smoke", f"--workdir={w}"]
    assert evaluate[1:] == ["launch/evaluate.py", "--config=configs/text_baseline.py:pretrained_smoke",
                            f"--workdir={w}", "--split=test", "--nobertscore"]
    train, _ = mt.commands("llama3_8b/multimodal", "W", steps=20, model_path="/w/l3", data_dir="D")
    assert train[2:] == ["--config=configs/early_fusion.py:llama3_8b", "--workdir=W", "--config.model.path=/w/l3",
                         "--config.data.data_dir=D", "--config.stages.sft.steps=20"]
    assert "--config.model.path=/path/to/Mistral-7B-Instruct-v0.3" in mt.commands("mistral_7b/finetuned", "W")[0]

    def put(row, metrics, root=tmp_path):
        out = root / row / "eval_test"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"n": 16, "step": 0, "split": "test", **metrics}))
    put("smoke/pretrained", {"ppl_context": 34.183, "ppl_response": 9.5, "dist_2_corpus": 0.26271,
                             "polarity_sentiment": 0.7212})
    put("smoke/finetuned", {"ppl_context": 3.843, "bertscore_f1": 0.86561, "polarity_emotion": 0.67,
                            "polarity_empathy": float("nan")})
    other = tmp_path / "elsewhere"
    put("mm", {"ppl_context": 28.91}, root=other)
    workdirs = {r: str(tmp_path / r) for r in mt.rows(["smoke"])}
    workdirs["smoke/multimodal"] = str(other / "mm")
    lines = mt.table(workdirs, ["smoke"]).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:5]]
    col = {name: 2 + i for i, name in enumerate(mt.COLUMNS)}
    assert [c[0] for c in cells] == list(mt.METHODS.values())
    assert cells[0][col["PPL"]] == "9.50" and cells[0][col["Dist-2"]] == "0.2627"  # ppl_response wins
    assert cells[0][col["Sentiment"]] == "0.721" and cells[0][col["Emotion"]] == "–"
    assert cells[1][col["PPL"]] == "3.84" and cells[1][col["BERTScore F1"]] == "0.8656"
    assert cells[1][col["Empathy"]] == "–"  # NaN
    assert cells[2][col["PPL"]] == "28.91" and cells[2][col["Dist-2"]] == "–"
    notes = "\n".join(lines[6:])
    assert "PPL = ppl_response" in notes and "PPL = ppl_context" in notes and str(other / "mm") in notes
    # the paper's order: methods outer, then backbones (Mistral before Llama)
    assert mt.rows(["mistral_7b", "llama3_8b"])[:2] == ["mistral_7b/pretrained", "llama3_8b/pretrained"]


def test_meld_table_cli_list_and_runs(tmp_path):
    res = subprocess.run([sys.executable, "bench/meld_table.py", "--list", f"--runs_dir={tmp_path}",
                          "--backbones=smoke", "--steps=5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("launch/train.py") == 3 and res.stdout.count("launch/evaluate.py") == 3
    assert res.stdout.count("--config.stages.sft.steps=5") == 2 and not any(tmp_path.iterdir())
    out = tmp_path / "w" / "eval_test"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"ppl_context": 2.0}))
    res = subprocess.run([sys.executable, "bench/meld_table.py", f"--runs=smoke/multimodal={tmp_path / 'w'}",
                          "--backbones=smoke", f"--runs_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "| 2.00 |" in res.stdout, res.stderr
    bad = subprocess.run([sys.executable, "bench/meld_table.py", "--runs=smoke/nope=X"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown rows ['smoke/nope']" in bad.stderr


def test_learning_signal_seeds_and_mean_std(tmp_path):
    ls = _module("learning_signal")
    train, _ = ls.commands("conflict/meria", str(tmp_path), seed=2)
    assert train[-1] == "--config.seed=2" and train[3] == f"--workdir={tmp_path}/conflict/meria-seed2"
    for seed, acc in ((0, 0.2), (1, 0.4)):
        out = tmp_path / ("conflict/meria" if seed == 0 else f"conflict/meria-seed{seed}") / "eval_test"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"emotion_acc_coarse": acc}))
    rows = ls.table(["conflict/meria"], str(tmp_path), seeds=(0, 1, 2)).splitlines()
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[1 + ls.COLUMNS.index("emotion_acc_coarse")] == "0.300 ± 0.100" and cells[-1] == "2"
