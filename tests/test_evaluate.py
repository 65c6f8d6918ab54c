"""launch/evaluate.py's engine on a tiny trained run: files, gold fields, metric consistency."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from train_fixtures import toy_record, write_tiny_llama, write_toy_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import importlib.util

    from ml_collections import config_flags  # noqa: F401  (config files import it)

    from merg_jax.core.assets import smollm2_gguf
    from merg_jax.systems.jobs import make_trainer
    root = tmp_path_factory.mktemp("eval")
    spec = importlib.util.spec_from_file_location("tb_cfg", os.path.join(REPO, "configs", "text_baseline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.model.path = write_tiny_llama(str(root / "tiny"))
    c.data.data_dir = write_toy_data(str(root / "data"), {"train": 16, "valid": 6})
    c.data.tokenizer_path = smollm2_gguf()
    c.data.seq_buckets = (128, 256)
    c.data.global_batch_size = 4
    c.stages.sft.steps = 2
    w = str(root / "work")
    make_trainer(c, w).train()
    return w


def test_evaluate_writes_consistent_outputs(run, tmp_path, monkeypatch):
    from merg_jax.core.assets import smollm2_gguf
    from merg_jax.evaluation import distinct, emotion
    from merg_jax.systems import common
    from merg_jax.systems.jobs import evaluate_workdir as evaluate
    real_split, calls = common.split_emotion_response, []

    def every_other_labelled(text):  # the tiny model never writes an "Emotion:" line itself
        emo, resp = real_split(text)
        calls.append(1)
        return ("surprised. Confidence: high" if len(calls) % 2 else emo), resp

    monkeypatch.setattr(common, "split_emotion_response", every_other_labelled)
    out = str(tmp_path / "eval")
    m = evaluate(run, split="valid", output_dir=out, batch_size=4, max_new_tokens=6, bertscore=False)
    rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert m["n"] == len(rows) == 6  # every example once, the padded last batch dropped
    rng = np.random.default_rng(0)
    gold = {r["example_id"]: r for r in (toy_record(i, "valid", rng) for i in range(6))}
    for r in rows:
        g = gold[r["example_id"]]
        assert (r["gold_response"], r["gold_emotion"], r["conversation_id"]) == \
            (g["response"], g["emotion"], g["conversation_id"])
    saved = json.load(open(os.path.join(out, "metrics.json")))
    responses = [r["response"] for r in rows]
    assert saved["dist_1_corpus"] == pytest.approx(distinct.dist_n_corpus(responses, 1))
    acc = emotion.emotion_accuracy([r["predicted_emotion_text"] or None for r in rows],
                                   [r["gold_emotion"] for r in rows])
    # the file carries the tidy label; the generated field stays beside it
    assert [r["predicted_emotion"] for r in rows] == ["surprised", ""] * 3
    assert [r["predicted_emotion_text"] for r in rows] == ["surprised. Confidence: high", ""] * 3
    assert saved["emotion_acc_coarse"] == acc["acc_coarse"] and saved["emotion_unparseable"] == acc["n_unparseable"]
    # a near-uniform tiny model over a 49k vocabulary: perplexity near the vocabulary size
    for k in ("ppl_target_given_train_prompt", "ppl_context_free", "ppl_response"):
        assert 1e4 < saved[k] < 1e5, (k, saved[k])
    # ppl_response: the gold response + EOS after the exact prompt the response came from
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.evaluation.perplexity import perplexity
    tok = load_tokenizer(smollm2_gguf())
    for r in rows:
        # text_response: "Emotion: <predicted>\nResponse:" then " <gold>" + EOS, only the latter scored
        assert r["response_tokens"] == len(tok(" " + r["gold_response"], add_special_tokens=False)["input_ids"]) + 1
        assert "Dialogue Context" in r["response_prompt"] and r["gold_response"] not in r["response_prompt"]
    assert saved["ppl_response"] == pytest.approx(perplexity([r["response_nll"] for r in rows],
                                                             [r["response_tokens"] for r in rows]), rel=1e-3)
    exact = emotion.emotion_accuracy_exact([r["predicted_emotion_text"] or None for r in rows],
                                           [r["gold_emotion"] for r in rows])
    assert saved["emotion_acc_exact_coarse"] == exact["acc_coarse"] and "chains_empty" not in saved
    sub = json.load(open(os.path.join(out, "submission.json")))
    assert sorted(s["conversation_id"] for s in sub) == sorted({r["conversation_id"] for r in rows})
    assert "| emotion_acc_coarse |" in open(os.path.join(out, "metrics.md")).read()
    assert os.path.getsize(os.path.join(out, "polarity.png")) > 0
    assert os.path.getsize(os.path.join(out, "training_curves.png")) > 0


# ----------------------------------------------------------------------------- the early-fusion paper's rows

def _config(module: str, preset: str, root, sizes: dict[str, int]):
    import importlib

    from merg_jax.core.assets import smollm2_gguf
    c = importlib.import_module(f"configs.{module}").get_config(preset)
    c.model.path = write_tiny_llama(str(root / "tiny"), init_range=0.5)
    c.data.data_dir = write_toy_data(str(root / "data"), sizes)
    c.data.tokenizer_path = smollm2_gguf()
    c.data.seq_buckets = (256,)
    c.data.max_utterances = 3
    c.data.global_batch_size = 2
    c.checkpoint.async_save = False
    return c


def test_untrained_preset_saves_the_model_as_loaded_and_evaluates(tmp_path, caplog):
    """text_baseline:pretrained_smoke (Table 3's pretrained row): 0 steps, a warning saying so,
    config.json and checkpoint step 0, which loads as exactly the base weights; resuming trains
    nothing; evaluation scores step 0."""
    import logging

    import jax.numpy as jnp

    from merg_jax.convert.loading import load_pretrained
    from merg_jax.systems import common
    from merg_jax.systems.jobs import evaluate_workdir, make_trainer
    from merg_jax.systems.workdir import load_workdir
    c = _config("text_baseline", "pretrained_smoke", tmp_path, {"train": 4, "valid": 4})
    assert c.data.template == "listing1" and c.stages.sft.steps == 0 and c.stages.sft.epochs == 0
    w = str(tmp_path / "work")
    with caplog.at_level(logging.WARNING, logger="merg_jax.train.trainer"):
        summary = make_trainer(c, w).train()
    assert summary["status"] == "done" and summary["step"] == 0, summary
    assert summary["stages"]["sft"] == {"steps": 0, "untrained": True}
    assert "stage sft has 0 steps" in caplog.text and "nothing trains" in caplog.text
    assert os.path.isfile(os.path.join(w, "config.json"))
    assert os.listdir(os.path.join(w, "checkpoints")) == ["0"]

    llm, _, info = load_workdir(w, with_tokenizer=False)
    base, _ = load_pretrained(c.model.path, with_tokenizer=False)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 49152, (2, 9)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(llm(ids).logits), np.asarray(base(ids).logits))
    assert info["step"] == 0

    again = make_trainer(c, w).train()  # a re-run resumes: done, nothing new
    assert again["status"] == "done" and os.listdir(os.path.join(w, "checkpoints")) == ["0"]
    m = evaluate_workdir(w, split="valid", max_examples=4, batch_size=2, max_new_tokens=8, bertscore=False)
    assert m["step"] == 0 and m["n"] == 4 and m["system"] == "text_baseline"
    rows = [json.loads(line) for line in open(os.path.join(w, "eval_valid", "predictions.jsonl"))]
    assert all(r["response"] == common.first_line(r["raw_output"]) for r in rows)  # Listing 1: one line


def test_early_fusion_trains_and_evaluates_through_the_cli(tmp_path):
    """configs/early_fusion.py (smoke, tiny sizes): 2 steps in-process, then launch/evaluate.py."""
    import subprocess
    import sys

    from merg_jax.systems import common
    from merg_jax.systems.jobs import make_trainer
    c = _config("early_fusion", "smoke", tmp_path, {"train": 8, "valid": 4})
    c.model.fusion_dim = 16
    c.stages.sft.steps = 2
    w = str(tmp_path / "work")
    assert make_trainer(c, w).train()["status"] == "done"
    out = str(tmp_path / "eval")
    res = subprocess.run([sys.executable, "launch/evaluate.py", "--config=configs/early_fusion.py", f"--workdir={w}",
                          "--split=valid", "--batch_size=2", "--max_new_tokens=4", "--nobertscore", f"--output_dir={out}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| ppl_response |" in res.stdout and f"outputs: {out}" in res.stdout
    assert "emotion_acc_coarse" not in res.stdout  # Listing 1 states no emotion: no accuracy, not 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert m["system"] == "early_fusion" and m["step"] == 2 and m["n"] == len(rows) == 4
    assert all(r["generated_chain"] == "" and r["predicted_emotion_text"] == "" for r in rows)
    # Listing 1's target is one line: the response is the generation's first non-empty line
    assert all(r["response"] == common.first_line(r["raw_output"]) != "" for r in rows)
    # a peaky random model (init std 0.5) is far worse than uniform: just finite and > 1
    assert 1.0 < m["ppl_response"] < float("inf") and "polarity_sentiment" in m and "dist_2_corpus" in m
