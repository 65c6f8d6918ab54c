"""Broken inputs fail with errors that name the file or tensor at fault."""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from flax import nnx

from merg_jax.convert.hf import load_hf, save_hf
from merg_jax.convert.loading import load_pretrained
from merg_jax.core.weights import SafetensorsFile, save_file
from merg_jax.models.llama import CausalLM, LlamaConfig

CFG = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("good"))
    save_hf(CausalLM(CFG, rngs=nnx.Rngs(0)), out)
    return out


@pytest.fixture
def work_dir(good_dir, tmp_path) -> str:
    """A private copy to break."""
    out = str(tmp_path / "model")
    shutil.copytree(good_dir, out)
    return out


def _rewrite(directory: str, edit) -> str:
    path = os.path.join(directory, "model.safetensors")
    f = SafetensorsFile(path)
    tensors = {k: np.array(f[k]) for k in f.keys()}
    del f
    edit(tensors)
    save_file(tensors, path)
    return path


def test_good_dir_loads(good_dir):
    assert load_hf(good_dir).config.num_layers == 2


def test_missing_directory(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(missing)


def test_directory_without_weights(work_dir):
    os.remove(os.path.join(work_dir, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=re.escape(work_dir)):
        load_hf(work_dir)


def test_missing_shard_listed_in_index(good_dir, tmp_path):
    out = str(tmp_path / "sharded")
    save_hf(load_hf(good_dir), out, max_shard_bytes=2048)
    victim = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[-1]
    os.remove(os.path.join(out, victim))
    with pytest.raises(FileNotFoundError, match=re.escape(victim)):
        load_hf(out)


def test_unsupported_architecture(work_dir):
    path = os.path.join(work_dir, "config.json")
    with open(path) as fh:
        conf = json.load(fh)
    conf.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with open(path, "w") as fh:
        json.dump(conf, fh)
    with pytest.raises(ValueError, match=r"unsupported architecture.*gpt2"):
        load_hf(work_dir)
    with pytest.raises(ValueError, match="gpt2"):
        load_pretrained(work_dir)


def test_missing_tensor(work_dir):
    name = "model.layers.1.mlp.up_proj.weight"
    path = _rewrite(work_dir, lambda t: t.pop(name))
    with pytest.raises(KeyError) as err:
        load_hf(work_dir)
    assert name in str(err.value) and work_dir in str(err.value)
    assert os.path.exists(path)


def test_misshaped_tensor(work_dir):
    name = "model.layers.0.self_attn.k_proj.weight"

    def edit(t):
        t[name] = np.zeros((t[name].shape[0] + 1, t[name].shape[1]), np.float32)
    path = _rewrite(work_dir, edit)
    with pytest.raises(ValueError) as err:
        load_hf(work_dir)
    msg = str(err.value)
    assert name in msg and path in msg and "(9, 16)" in msg and "(8, 16)" in msg


@pytest.mark.parametrize("keep", ["half", "header"])
def test_truncated_safetensors(work_dir, keep):
    path = os.path.join(work_dir, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2 if keep == "half" else 20)
    with pytest.raises(ValueError, match=re.escape(path)) as err:
        load_hf(work_dir)
    assert ("truncated" if keep == "half" else "not a readable safetensors") in str(err.value)


def test_gguf_that_does_not_exist(tmp_path):
    path = str(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        load_pretrained(path)
    from merg_jax.convert.gguf import GGUFCheckpoint
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        GGUFCheckpoint(path)


def test_gguf_that_is_garbage(tmp_path):
    path = str(tmp_path / "junk.gguf")
    with open(path, "wb") as fh:
        fh.write(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=re.escape(path)):
        load_pretrained(path)


def test_peft_dir_without_config(tmp_path, good_dir):
    from merg_jax.convert import lora

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_peft(load_hf(good_dir), str(tmp_path))
