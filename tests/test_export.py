"""HF export round trips: what we write, transformers reloads with the same logits."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from merg_jax.convert import lora as L
from merg_jax.convert.hf import load_hf, save_hf
from merg_jax.core.weights import SafetensorsFile, TensorDirectory
from merg_jax.models.layers import LoraConfig

from tiny_hf import hf_logits, make_hf, randomize_lora, save_hf_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


@nnx.jit
def _forward(model, ids):
    return model(ids).logits


def _reload(directory: str, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager", **kw).eval()


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 96, size=(2, 36)).astype(np.int64)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> str:
    return save_hf_model(make_hf("qwen3", seed=7), str(tmp_path_factory.mktemp("qwen3")))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return save_hf_model(make_hf("llama3", seed=8), str(tmp_path_factory.mktemp("llama")))


def test_qwen3_tied_round_trip(qwen3_dir, ids, tmp_path):
    model = load_hf(qwen3_dir)
    out = str(tmp_path / "export")
    save_hf(model, out)
    keys = TensorDirectory(out).keys()
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert "model.layers.1.self_attn.q_norm.weight" in keys
    hf = _reload(out, dtype=torch.float32)
    assert hf.config.tie_word_embeddings and hf.config.model_type == "qwen3"
    ours = np.asarray(_forward(model, jnp.asarray(ids)))
    diff = np.abs(hf_logits(hf, ids) - ours).max()
    print(f"qwen3 export: max |hf(export) - ours| = {diff:.2e}")
    assert diff <= TOL


def test_llama_lora_merged_round_trip(llama_dir, ids, tmp_path):
    model = load_hf(llama_dir, lora=LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj")))
    randomize_lora(model, seed=9)
    ours = np.asarray(_forward(model, jnp.asarray(ids)))
    out = str(tmp_path / "export")
    save_hf(model, out)
    assert not any(lin.merged for _, lin in L.adapted_linears(model)), "export must not mutate the model"
    keys = set(TensorDirectory(out).keys())
    assert "lm_head.weight" in keys and not any("lora" in k for k in keys)
    hf = _reload(out, dtype=torch.float32)
    assert hf.config.rope_parameters["rope_type"] == "llama3"
    got = hf_logits(hf, ids)
    base = hf_logits(_reload(llama_dir, dtype=torch.float32), ids)
    assert np.abs(got - base).max() > 1e-2, "the LoRA delta did not reach the exported kernels"
    diff = np.abs(got - ours).max()
    print(f"llama+lora merged export: max |hf(export) - ours| = {diff:.2e}")
    assert diff <= TOL


def test_sharded_export(qwen3_dir, ids, tmp_path):
    model = load_hf(qwen3_dir)
    out = str(tmp_path / "sharded")
    save_hf(model, out, max_shard_bytes=16 * 1024)
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    with open(os.path.join(out, "model.safetensors.index.json")) as fh:
        index = json.load(fh)
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(
        np.asarray(t).nbytes for t in (TensorDirectory(out)[k] for k in index["weight_map"]))
    ref = np.asarray(_forward(model, jnp.asarray(ids)))
    assert np.abs(hf_logits(_reload(out, dtype=torch.float32), ids) - ref).max() <= TOL
    np.testing.assert_array_equal(np.asarray(_forward(load_hf(out), jnp.asarray(ids))), ref)


def test_bf16_export(qwen3_dir, ids, tmp_path):
    model = load_hf(qwen3_dir)
    out = str(tmp_path / "bf16")
    save_hf(model, out, dtype="bfloat16")
    with open(os.path.join(out, "config.json")) as fh:
        conf = json.load(fh)
    assert conf["torch_dtype"] == "bfloat16" and conf["dtype"] == "bfloat16"
    f = SafetensorsFile(os.path.join(out, "model.safetensors"))
    assert {f[k].dtype for k in f.keys()} == {np.dtype(ml_dtypes.bfloat16)}
    emb = np.asarray(f["model.embed_tokens.weight"], np.float32)
    want = np.asarray(model.embed_tokens.embedding.get_value())
    np.testing.assert_allclose(emb, want, rtol=1 / 128, atol=0)
    hf = _reload(out)  # dtype from config
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    ref = np.asarray(_forward(model, jnp.asarray(ids)))
    rel = np.abs(hf_logits(hf, ids) - ref).max() / np.abs(ref).max()
    assert rel < 0.08


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "export_hf.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_end_to_end(llama_dir, ids, tmp_path):
    out = str(tmp_path / "cli_out")
    proc = _cli(f"--model={llama_dir}", f"--output_dir={out}", "--max_shard_size=20KB")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == out + "\n", f"stdout must be only the output dir, got {proc.stdout!r}"
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert os.path.exists(os.path.join(out, "generation_config.json"))
    got = hf_logits(_reload(out, dtype=torch.float32), ids)
    ref = hf_logits(_reload(llama_dir, dtype=torch.float32), ids)
    assert np.abs(got - ref).max() <= TOL


def test_cli_adapter_only_without_lora_fails(llama_dir, tmp_path):
    out = str(tmp_path / "adapter")
    proc = _cli(f"--model={llama_dir}", f"--output_dir={out}", "--adapter_only")
    assert proc.returncode != 0 and proc.stdout == ""
    assert "no LoRA adapters" in proc.stderr
    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    bad = _cli(f"--model={tmp_path / 'missing'}", f"--output_dir={out}")
    assert bad.returncode != 0 and "missing" in bad.stderr and bad.stdout == ""


def test_smollm2_gguf_export_matches_transformers(tmp_path):
    """Real checkpoint: our GGUF import, exported, equals transformers' own GGUF import."""
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core.assets import smollm2_gguf

    try:
        path = smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    model, tokenizer = load_pretrained(path)
    out = str(tmp_path / "smollm2")
    save_hf(model, out, tokenizer=tokenizer, dtype="float32")
    del model
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
        attn_implementation="eager").eval()
    exported = _reload(out, dtype=torch.float32)
    # Both dequantize the same Q4_1 blocks (and undo llama.cpp's q/k permutation): equal weights.
    want, got_sd = ref_model.state_dict(), exported.state_dict()
    assert set(want) == set(got_sd)
    worst = max(float((want[k] - got_sd[k]).abs().max()) for k in want)
    assert worst <= 1e-6, f"exported weights differ from transformers' GGUF import by {worst}"
    text = "I just lost my job and I feel like nobody cares."
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = np.asarray([tok(text)["input_ids"]], np.int64)
    assert ids[0].tolist() == tokenizer(text)["input_ids"]
    ref, got = hf_logits(ref_model, ids), hf_logits(exported, ids)
    diff = np.abs(got - ref).max()
    print(f"SmolLM2 GGUF export: max |hf(export) - hf(gguf)| = {diff:.2e} (logit scale {np.abs(ref).max():.1f})")
    assert diff <= TOL
