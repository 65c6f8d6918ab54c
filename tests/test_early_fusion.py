"""Early fusion (the early-fusion paper): soft tokens land where and as they should; a 2-step Trainer run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merg_jax.models.layers import LoraConfig
from merg_jax.models.llama import CausalLM, LlamaConfig
from merg_jax.systems.early_fusion import AUDIO_VIDEO, EarlyFusionModel, soft_embeds

from train_fixtures import write_tiny_llama, write_toy_data

DA, DV, F, K, E, L, U = 5, 3, 6, 2, 8, 10, 3


def _model(seed=0) -> EarlyFusionModel:
    cfg = LlamaConfig(vocab_size=32, hidden_size=E, intermediate_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1)
    llm = CausalLM(cfg, lora=LoraConfig(rank=2, alpha=4.0), rngs=nnx.Rngs(seed))
    return EarlyFusionModel(llm, *EarlyFusionModel.make_linears(DA, DV, F, K, E, seed=seed + 1), k=K)


def _batch(rng) -> dict:
    """Two examples: ex 0 has 2 utterances (K=2 tokens each, slots at 0..3), ex 1 has 3 utterances
    with utterance 1's video missing and utterance 2's audio missing (slots at 1..6, after a BOS)."""
    b = {"input_ids": rng.integers(0, 32, (2, L)).astype(np.int32),
         "audio": rng.standard_normal((2, U, DA)).astype(np.float32),
         "video": rng.standard_normal((2, U, DV)).astype(np.float32),
         "audio_mask": np.array([[1, 1, 0], [1, 1, 0]], bool),
         "video_mask": np.array([[1, 1, 0], [1, 0, 1]], bool)}
    S = 6
    b["soft_positions"] = np.array([[0, 1, 2, 3, 0, 0], [1, 2, 3, 4, 5, 6]], np.int32)
    b["soft_utterance"] = np.array([[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2]], np.int32)
    b["soft_index"] = np.array([[0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1]], np.int32)
    b["soft_mask"] = np.array([[1, 1, 1, 1, 0, 0], [1] * S], np.int32)
    b["soft_modality"] = np.where(b["soft_mask"] > 0, AUDIO_VIDEO, 0).astype(np.int32)
    return b


def _np(v) -> np.ndarray:
    return np.asarray(v[...])


def _expected(model: EarlyFusionModel, b: dict) -> np.ndarray:
    """Hand-computed input embeddings: token embeddings, slot positions overwritten."""
    emb = _np(model.llm.embed_tokens.embedding)[b["input_ids"]]
    ap, vp, pr = model.audio_proj, model.video_proj, model.projector
    out = emb.copy()
    for i in range(2):
        for n in range(b["soft_mask"].shape[1]):
            if not b["soft_mask"][i, n]:
                continue
            r, k = b["soft_utterance"][i, n], b["soft_index"][i, n]
            joint = np.zeros(F, np.float32)
            if b["audio_mask"][i, r]:
                joint += b["audio"][i, r] @ _np(ap.kernel) + _np(ap.bias)
            if b["video_mask"][i, r]:
                joint += b["video"][i, r] @ _np(vp.kernel) + _np(vp.bias)
            tok = joint @ _np(pr.kernel) + _np(pr.bias)  # [K*E] -> token k = tok[k*E:(k+1)*E]
            out[i, b["soft_positions"][i, n]] = tok[k * E:(k + 1) * E]
    return out


def test_soft_tokens_land_at_slots_with_the_right_values():
    model, b = _model(), _batch(np.random.default_rng(0))
    got = np.asarray(soft_embeds(model, jax.tree.map(jnp.asarray, b)))
    want = _expected(model, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    emb = _np(model.llm.embed_tokens.embedding)[b["input_ids"]]
    # untouched outside the slots (ex 0 positions 4.., ex 1 position 0 and 7..)
    np.testing.assert_array_equal(got[0, 4:], emb[0, 4:])
    np.testing.assert_array_equal(got[1, [0, 7, 8, 9]], emb[1, [0, 7, 8, 9]])
    # the K tokens of a slot differ, and every slot really was overwritten
    assert not np.allclose(got[0, 0], got[0, 1])
    assert not np.allclose(got[1, 1:7], emb[1, 1:7], atol=1e-3)


def test_missing_modality_contributes_nothing():
    model, b = _model(), _batch(np.random.default_rng(1))
    base = np.asarray(soft_embeds(model, jax.tree.map(jnp.asarray, b)))
    # garbage (even NaN-free huge values) in the masked rows changes nothing
    b2 = dict(b, video=b["video"].copy(), audio=b["audio"].copy())
    b2["video"][1, 1] = 1e6
    b2["audio"][1, 2] = -1e6
    np.testing.assert_array_equal(np.asarray(soft_embeds(model, jax.tree.map(jnp.asarray, b2))), base)
    # utterance 1 of ex 1 (video missing) is projector(audio_proj(a)) alone
    a = b["audio"][1, 1] @ _np(model.audio_proj.kernel) + _np(model.audio_proj.bias)
    tok = a @ _np(model.projector.kernel) + _np(model.projector.bias)
    np.testing.assert_allclose(base[1, 3], tok[:E], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(base[1, 4], tok[E:], rtol=1e-5, atol=1e-5)
    # both missing -> the projector's bias (the learned "no signal" token)
    fused = model.fusion(jnp.ones((1, 1, DA)), jnp.ones((1, 1, DV)), jnp.zeros((1, 1), bool),
                         jnp.zeros((1, 1), bool))
    np.testing.assert_allclose(np.asarray(fused).reshape(-1), _np(model.projector.bias), atol=1e-6)


def test_validate_rejects_text_only_template():
    from configs.early_fusion import get_config
    from merg_jax.systems.early_fusion import EarlyFusion
    c = get_config("smoke")
    EarlyFusion(c).validate()
    c.data.template = "listing1"
    with pytest.raises(ValueError, match="audio_video"):
        EarlyFusion(c).validate()


def _flat(tree, prefix="") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}"
        out.update(_flat(v, key)) if isinstance(v, dict) else out.__setitem__(key, np.array(v))
    return out


def test_two_step_trainer_run(tmp_path):
    from test_train_runtime import _params

    from configs.early_fusion import get_config
    from merg_jax.core.assets import smollm2_gguf
    from merg_jax.systems.jobs import make_trainer

    c = get_config("smoke")
    c.model.path = write_tiny_llama(str(tmp_path / "tiny"))
    c.model.fusion_dim = 16
    c.data.data_dir = write_toy_data(str(tmp_path / "data"))
    c.data.tokenizer_path = smollm2_gguf()
    c.data.global_batch_size = 2
    c.data.seq_buckets = (256,)  # one bucket, one compile (the builder drops the oldest utterances to fit)
    c.data.max_utterances = 3
    c.data.soft_tokens_per_slot = 2
    c.stages.sft.steps = 2
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = False
    c.log.every_steps = 1
    c.optimizer.learning_rate = 1e-2
    workdir = str(tmp_path / "run")
    trainer = make_trainer(c, workdir)
    trainer.setup()
    before = _flat(nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param)))
    summary = trainer.train()
    assert summary["status"] == "done" and summary["step"] == 2, summary
    assert np.isfinite(summary["stages"]["sft"]["loss"])

    ck = _params(workdir, 2)
    assert ck and all(k.startswith(("/projector/", "/audio_proj/", "/video_proj/")) or "lora_" in k
                      for k in ck), sorted(ck)
    for k in ("/projector/kernel", "/audio_proj/kernel", "/video_proj/kernel"):
        assert not np.allclose(ck[k], before[k]), f"{k} did not train"
    lora_b = [k for k in ck if k.endswith("lora_b")]
    assert lora_b and all(np.abs(ck[k]).max() > 0 for k in lora_b)  # B starts at 0
    after = _flat(nnx.to_pure_dict(nnx.state(trainer.model, nnx.Param)))
    frozen = [k for k in before if k not in ck]
    assert any("embed_tokens" in k for k in frozen) and any(k.endswith("q_proj/kernel") for k in frozen)
    for k in frozen:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"frozen {k} changed")


# ----------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An EarlyFusion system on the toy data with a tiny random Llama (SmolLM2's vocabulary)."""
    from configs.early_fusion import get_config
    from merg_jax.core import sharding as shd
    from merg_jax.core.assets import smollm2_gguf
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.systems.early_fusion import EarlyFusion

    root = tmp_path_factory.mktemp("ef_predict")
    c = get_config("smoke")
    c.model.path = write_tiny_llama(str(root / "tiny"), init_range=0.5)
    c.model.fusion_dim = 16
    c.data.data_dir = write_toy_data(str(root / "data"), {"train": 12, "valid": 6})
    c.data.tokenizer_path = smollm2_gguf()
    c.data.seq_buckets = (256,)
    c.data.max_utterances = 3
    c.data.soft_tokens_per_slot = 2
    system = EarlyFusion(c)
    system.validate()
    model = system.build(shd.make_mesh(1, -1, 1))
    return c, system, model, load_tokenizer(smollm2_gguf())


def _prompt_batch(config, system, n: int = 3) -> dict:
    from input_pipeline.pipeline import make_iterator
    view = system.data_config(system.eval_stage(), "valid", train=False)
    with view.unlocked():
        view.include_target = False
        view.global_batch_size = n
    return next(make_iterator(view))


def _reference_decode(system, model, batch, n_new: int, tok) -> list[list[int]]:
    """Greedy tokens without any KV cache: per row the full forward over its soft-prompt
    embeddings (features normalised as in training) + the tokens chosen so far."""
    dev = {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
    dev.update(audio=system._norm("audio", dev["audio"]), video=system._norm("video", dev["video"]))
    emb = soft_embeds(model, dev)
    eos = {int(tok.eos_token_id)} | {int(e) for e in np.atleast_1d(model.llm.config.eos_token_id or [])}
    out = []
    for i in range(emb.shape[0]):
        real = np.flatnonzero(np.asarray(batch["attention_mask"][i]))
        x, row = emb[i:i + 1, real], []
        for _ in range(n_new):
            nxt = int(jnp.argmax(model.llm(inputs_embeds=x, logits="last").logits[0, -1]))
            if nxt in eos:
                break
            row.append(nxt)
            x = jnp.concatenate([x, model.llm.embed(jnp.asarray([[nxt]]))], axis=1)
        out.append(row)
    return out


def test_predict_matches_a_cache_free_decode_of_the_soft_prompt(built):
    config, system, model, tok = built
    assert system.eval_stage().name == "sft"
    batch = _prompt_batch(config, system)
    assert list(batch["example_mask"]) == [1, 1, 1] and int(batch["soft_mask"].sum()) > 0
    batch["example_mask"] = np.asarray([1, 0, 1], batch["example_mask"].dtype)  # one padding row
    rows = system.predict(model, batch, tok, max_new_tokens=5)
    assert len(rows) == 2
    assert all(set(r) == {"generated_chain", "response", "predicted_emotion", "raw"} for r in rows)
    assert all(r["generated_chain"] == "" and r["predicted_emotion"] == "" for r in rows)
    want = _reference_decode(system, model, batch, 5, tok)
    texts = [tok.decode(w, skip_special_tokens=True).strip() for w in want]
    assert [r["raw"] for r in rows] == [texts[0], texts[2]]
    # Listing 1 asks for the next line: the response is the first non-empty line of the text
    assert [r["response"] for r in rows] == [next(x.strip() for x in t.splitlines() if x.strip())
                                             for t in (texts[0], texts[2])]
    # the comparison can fail: several tokens per row, rows that differ
    assert all(len(w) == 5 for w in want) and texts[0] and texts[0] != texts[2], texts
    # the cached decoder built for this model is reused, and gives the same rows again
    first = system._decoder_cache[2]
    assert system.predict(model, batch, tok, max_new_tokens=5) == rows and system._decoder_cache[2] is first


def test_soft_prompts_reach_the_first_generated_token(built):
    """Zeroing the audio/video features changes the logits of the first generated step (the
    soft tokens are not masked away), and predict's decoder sees them."""
    config, system, model, tok = built
    batch = _prompt_batch(config, system, n=2)
    dec = system._decoder(model, tok)
    zero = dict(batch, audio=np.zeros_like(batch["audio"]), video=np.zeros_like(batch["video"]))
    real = np.flatnonzero(np.asarray(batch["attention_mask"][0]))

    def first_logits(b):
        emb = dec.embeds(b)[:1, real]
        return np.asarray(model.llm(inputs_embeds=emb, logits="last").logits[0, -1])

    base, zeroed = first_logits(batch), first_logits(zero)
    assert np.abs(base - zeroed).max() > 1e-2
    # ... while the text tokens stay the same embeddings: only the slots differ
    diff = np.abs(np.asarray(dec.embeds(batch)) - np.asarray(dec.embeds(zero))).max(-1)
    slots = {int(p) for p, m in zip(batch["soft_positions"][0], batch["soft_mask"][0]) if m}
    assert {int(i) for i in np.flatnonzero(diff[0] > 0)} == slots


def test_first_line_for_single_line_targets():
    from merg_jax.systems import common
    assert common.first_line("\n  That sounds hard.  \n\n### TASK ###\nRoss: hi") == "That sounds hard."
    assert common.first_line(" \n\n") == ""
    assert common.single_line_target("listing1") and common.single_line_target("early_fusion")
    assert not common.single_line_target("text_response") and not common.single_line_target("nope")
