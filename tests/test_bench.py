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
