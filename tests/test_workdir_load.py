"""A training workdir as a model: `load_model(WORKDIR)`, `launch/export_hf.py --model=WORKDIR`.

One tiny real run (the text baseline's LoRA on a tiny random Llama, 4 steps,
checkpoints at steps 2 and 4, best-by-eval on) is shared by the module; every
test checks what comes back out of the workdir against what the trainer held in
memory or what Orbax wrote.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from train_fixtures import write_tiny_llama, write_toy_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
STEPS, EVERY = 4, 2


def _lora(model, prefix: str = "") -> dict[str, np.ndarray]:
    from flax import nnx

    from merg_jax.models.layers import LoRAParam
    return {prefix + "/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}


def _saved(workdir: str, step: int, sub: str = "checkpoints") -> dict[str, np.ndarray]:
    """What Orbax wrote (no target tree): the ground truth a load must reproduce."""
    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, sub, str(step), "params"))
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            walk(v, f"{prefix}{k}/") if isinstance(v, dict) else out.__setitem__(prefix + k, np.asarray(v))
    walk(tree, "")
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs (max {np.abs(a[k] - b[k]).max()})"


def _logits(model, ids) -> np.ndarray:
    import jax.numpy as jnp
    return np.asarray(model(jnp.asarray(ids)).logits, np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from merg_jax.core.assets import smollm2_gguf
    from merg_jax.systems.jobs import make_trainer

    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp("workdir_load")
    data = write_toy_data(str(root / "data"), sizes={"train": 16, "valid": 4})
    base = write_tiny_llama(str(root / "tiny"))
    spec = importlib.util.spec_from_file_location("_tb_config", os.path.join(REPO, "configs", "text_baseline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.model.path = base
    c.data.data_dir = data
    c.data.tokenizer_path = gguf
    c.data.template = "coe_text"
    c.data.seq_buckets = (128,)
    c.data.global_batch_size = 4
    c.stages.sft.steps = STEPS
    c.optimizer.learning_rate = 1e-2  # adapters that move: the trained model differs visibly from the base
    c.checkpoint.every_steps = EVERY
    c.checkpoint.keep = 3
    c.checkpoint.best_by_eval = True
    c.log.eval_every = EVERY
    c.log.eval_batches = 1
    workdir = str(root / "work")
    trainer = make_trainer(c, workdir)
    summary = trainer.train()
    assert summary["status"] == "done", summary
    ids = np.random.default_rng(0).integers(0, 49152, size=(2, 24)).astype(np.int64)
    return types.SimpleNamespace(workdir=workdir, base=base, gguf=gguf, ids=ids,
                                 trained=_lora(trainer.model.llm, "llm/"),
                                 logits=_logits(trainer.model.llm, ids))


def test_load_model_gives_the_trained_lora(run):
    from merg_jax.convert import lora
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.systems.workdir import load_model

    llm, tok = load_model(run.workdir)
    got = _lora(llm, "llm/")
    _same(got, run.trained)
    _same(got, _saved(run.workdir, STEPS))
    assert any(np.abs(v).max() > 0 for k, v in got.items() if k.endswith("lora_b")), "adapters never trained"
    assert lora.has_lora(llm) and not any(lin.merged for _, lin in lora.adapted_linears(llm))
    assert tok is load_tokenizer(run.gguf)  # data.tokenizer_path wins over the (tokenizer-less) base
    assert np.array_equal(_logits(llm, run.ids), run.logits)


def test_merged_export_reloads_with_the_same_logits(run, tmp_path):
    from merg_jax.convert.hf import save_hf
    from merg_jax.systems.workdir import load_model, load_workdir

    llm, tok, info = load_workdir(run.workdir)
    assert info["step"] == STEPS and info["base_path"] == run.base and info["stage"] == "done"
    out = str(tmp_path / "merged")
    save_hf(llm, out, tokenizer=tok)  # what export_hf.py does without --adapter_only
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    reloaded, _ = load_model(out)
    got = _logits(reloaded, run.ids)
    diff = np.abs(got - run.logits).max()
    moved = np.abs(_logits(load_model(run.base, with_tokenizer=False)[0], run.ids) - run.logits).max()
    print(f"workdir -> merged HF -> reload: max |diff| = {diff:.2e}; trained vs base {moved:.2e}")
    assert diff <= TOL
    assert moved > 1e-3, "the trained adapters do not change the model; the round trip proves nothing"


def test_export_cli_adapter_only(run, tmp_path):
    from merg_jax.convert import lora
    from merg_jax.convert.hf import load_hf

    out = str(tmp_path / "adapter")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, os.path.join(REPO, "launch", "export_hf.py"), f"--model={run.workdir}",
                        f"--output_dir={out}", "--adapter_only"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == out
    with open(os.path.join(out, "adapter_config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["base_model_name_or_path"] == run.base and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    model = lora.load_peft(load_hf(run.base), out)
    diff = np.abs(_logits(model, run.ids) - run.logits).max()
    print(f"workdir -> PEFT adapter -> base + adapter: max |diff| = {diff:.2e}")
    assert diff <= TOL


def test_step_best_and_fallback(run, tmp_path, caplog):
    from merg_jax.systems.workdir import load_workdir

    llm, _, info = load_workdir(run.workdir, step=EVERY, with_tokenizer=False)
    assert info["step"] == EVERY and info["stage"] == "sft"
    _same(_lora(llm, "llm/"), _saved(run.workdir, EVERY))

    best_steps = [int(s) for s in os.listdir(os.path.join(run.workdir, "best")) if s.isdigit()]
    assert len(best_steps) == 1  # keep_best=1
    llm, _, info = load_workdir(run.workdir, best=True, with_tokenizer=False)
    assert info["step"] == best_steps[0] and info["checkpoint_dir"].endswith("best")
    _same(_lora(llm, "llm/"), _saved(run.workdir, best_steps[0], "best"))

    # The newest checkpoint's params are damaged: the one before loads, with a warning.
    w = str(tmp_path / "work")
    shutil.copytree(run.workdir, w)
    for d, _, files in os.walk(os.path.join(w, "checkpoints", str(STEPS), "params")):
        for f in files:
            with open(os.path.join(d, f), "r+b") as fh:
                fh.truncate(0)
    with caplog.at_level(logging.WARNING, logger="merg_jax.train.checkpoint"):
        llm, _, info = load_workdir(w, with_tokenizer=False)
    assert info["step"] == EVERY
    assert any(f"checkpoint {STEPS}" in r.getMessage() and "trying the one before" in r.getMessage()
               for r in caplog.records)
    _same(_lora(llm, "llm/"), _saved(run.workdir, EVERY))
    with pytest.raises(Exception):  # noqa: B017 - an explicit step never falls back, whatever Orbax raises
        load_workdir(w, step=STEPS, with_tokenizer=False)


def test_errors(run, tmp_path):
    from merg_jax.models.layers import LoraConfig
    from merg_jax.systems.workdir import load_model, load_workdir

    with pytest.raises(ValueError, match="defines its own adapters"):
        load_model(run.workdir, lora=LoraConfig(rank=4, alpha=8.0))
    with pytest.raises(ValueError, match="no step 7"):
        load_workdir(run.workdir, step=7)
    with pytest.raises(ValueError, match="num_layers"):
        load_model(run.workdir, num_layers=3)

    # A run that never saved: config.json only, then an empty checkpoints/.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(os.path.join(run.workdir, "config.json"), fresh / "config.json")
    with pytest.raises(FileNotFoundError, match="train first"):
        load_model(str(fresh))
    (fresh / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="train first"):
        load_model(str(fresh))

    # Other base weights than the run trained on: refused, not silently used.
    other = str(tmp_path / "other_base")
    shutil.copytree(run.base, other)
    st = os.path.join(other, "model.safetensors")
    with open(st, "r+b") as fh:
        fh.seek(os.path.getsize(st) - 64)
        fh.write(b"\x01" * 64)
    w = str(tmp_path / "work")
    shutil.copytree(run.workdir, w)
    with open(os.path.join(w, "config.json")) as fh:
        conf = json.load(fh)
    conf["model"]["path"] = other
    with open(os.path.join(w, "config.json"), "w") as fh:
        json.dump(conf, fh)
    with pytest.raises(ValueError, match="trained on base"):
        load_model(w)
