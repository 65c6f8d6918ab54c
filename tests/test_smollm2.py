"""The real SmolLM2-135M-Instruct weights: logits and greedy generation against transformers."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from merg_jax.convert.loading import load_pretrained
from merg_jax.core import assets
from merg_jax.generation import Generator, SamplingConfig, sample_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["I failed my driving test today.",
           "My dog passed away last night and I can't stop crying. What should I do?",
           "Hi"]


@pytest.fixture(scope="module")
def smol():
    path = assets.smollm2_gguf()
    model, tok = load_pretrained(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    return path, model, tok, ref, Generator(model, tok)


def _left_pad(ids, pad):
    p = max(map(len, ids))
    inp = np.full((len(ids), p), pad, np.int64)
    mask = np.zeros((len(ids), p), np.int64)
    for i, x in enumerate(ids):
        inp[i, p - len(x):], mask[i, p - len(x):] = x, 1
    return inp, mask


def test_logits_match_transformers_on_real_prompt(smol):
    _, model, tok, ref, _ = smol
    ids = tok("I failed my driving test today, and everyone else in my class passed.")["input_ids"]
    ours = np.asarray(model(jnp.asarray([ids])).logits)
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits.numpy()
        exact = copy.deepcopy(ref).double()(torch.tensor([ids])).logits.numpy()
    assert ours.shape == theirs.shape
    # Both float32 runs are judged against torch in float64.  XLA:CPU's fp32 GEMM
    # rounds ~3x more than torch's (2.6e-5 vs 7.7e-6 on one 576x1536 product), so
    # over 30 layers ours is 2.6x (mean) and 3.4x (max) further from float64 than
    # torch is.  A bug is far beyond that: RMSNorm eps 1e-7 instead of 1e-5 gives 174x.
    ours_err, torch_err = np.abs(ours - exact), np.abs(theirs - exact)
    assert ours_err.mean() <= 4 * torch_err.mean()
    assert ours_err.max() <= 5 * torch_err.max()
    assert ours_err.max() <= 3e-4
    assert (ours[0].argmax(-1) == theirs[0].argmax(-1)).all()


def test_logits_match_with_left_padding(smol):
    _, model, tok, ref, gen = smol
    ids = gen.encode(PROMPTS[:2], chat=True)
    inp, mask = _left_pad(ids, tok.pad_token_id)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ours = np.asarray(model(jnp.asarray(inp), attention_mask=jnp.asarray(mask)).logits)
    with torch.no_grad():
        theirs = ref(torch.tensor(inp), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.numpy()
    valid = mask.astype(bool)
    # fp32 accumulation order differs between XLA and torch; over 30 layers on the
    # 37-token chat-templated prompt the gap is ~1.2e-4 (torch's own sdpa vs eager: 7e-5).
    assert np.abs(ours - theirs)[valid].max() <= 2e-4
    assert (ours.argmax(-1)[valid] == theirs.argmax(-1)[valid]).all()


def test_greedy_generation_matches_transformers_batch1(smol):
    _, _, tok, ref, gen = smol
    ids = gen.encode(PROMPTS[:1], chat=True)
    res = gen.generate_ids(ids, SamplingConfig(max_new_tokens=40))
    with torch.no_grad():
        out = ref.generate(torch.tensor(ids), attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long),
                           max_new_tokens=40, do_sample=False)
    theirs = out[0, len(ids[0]):].tolist()
    assert len(res.tokens[0]) >= 32
    assert res.tokens[0] == theirs[: len(res.tokens[0])]
    assert res.texts[0] == tok.decode(res.tokens[0], skip_special_tokens=True)


def test_greedy_generation_matches_transformers_batched(smol):
    _, _, tok, ref, gen = smol
    ids = gen.encode(PROMPTS, chat=True)
    assert len({len(x) for x in ids}) == 3  # really different lengths
    res = gen.generate_ids(ids, SamplingConfig(max_new_tokens=36))
    inp, mask = _left_pad(ids, tok.pad_token_id)
    with torch.no_grad():
        out = ref.generate(torch.tensor(inp), attention_mask=torch.tensor(mask), max_new_tokens=36,
                           do_sample=False, pad_token_id=tok.pad_token_id)
    for i in range(len(ids)):
        theirs = out[i, inp.shape[1]:].tolist()
        if tok.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tok.eos_token_id)]
        assert res.tokens[i] == theirs, f"prompt {i}"
    assert max(len(t) for t in res.tokens) >= 32
    assert len(res.tokens[2]) < 36  # "Hi" ends with EOS before the budget


def test_stop_strings_and_seeds(smol):
    _, _, _, _, gen = smol
    greedy = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=48), chat=True)
    cut = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=48, stop_strings=(".",)), chat=True)
    assert "." in greedy.texts[0]
    assert cut.texts[0] == greedy.texts[0][: greedy.texts[0].index(".")]
    sample = lambda seed: gen.generate(PROMPTS[:1], SamplingConfig(
        max_new_tokens=24, temperature=1.0, top_p=0.95, seed=seed), chat=True).tokens[0]
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    # top_k=1 sampling is greedy whatever the temperature
    k1 = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=24, temperature=2.0, top_k=1, seed=9), chat=True)
    assert k1.tokens[0] == greedy.tokens[0][:24]


def test_sample_logits_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    draw = lambda **kw: np.array([int(sample_logits(logits, k, 1.0, **kw)[0]) for k in keys[:200]])
    assert set(draw(top_k=2, top_p=1.0)) == {0, 1}
    # mass above token 1 is 0.5 < 0.6 -> kept; above token 2 is 0.8 -> dropped
    assert set(draw(top_k=0, top_p=0.6)) == {0, 1}
    assert set(draw(top_k=0, top_p=0.4)) == {0}
    freq = np.bincount(draw(top_k=0, top_p=1.0), minlength=4) / 200
    assert abs(freq[0] - 0.5) < 0.1 and freq[3] < 0.12
    assert int(sample_logits(logits, keys[0], 0.0, 0, 1.0)[0]) == 0


def test_generate_cli_prints_only_the_continuation(smol):
    path, _, _, _, gen = smol
    expected = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=20), chat=True).texts[0]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "generate.py"), f"--model={path}",
         f"--prompt={PROMPTS[0]}", "--chat", "--max_new_tokens=20"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == expected + "\n"
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "generate.py"),
                          "--model=/nonexistent/model.gguf", "--prompt=x"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "/nonexistent/model.gguf" in bad.stderr and bad.stdout == ""
