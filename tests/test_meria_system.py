"""MERIA system on the shared runtime: stages, trainable sets, soft-token splice, generation.

Toy feature shards (train_fixtures, extended with speaker/profile/M-CoE fields) and the
tiny random Llama with SmolLM2's vocabulary stand in for the corpus and both LLMs.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_fixtures import DIMS, toy_record, write_tiny_llama

K = 2
U = 4


def _meria_record(i: int, split: str, rng) -> dict:
    rec = toy_record(i, split, rng)
    n = len(rec["history_texts"])
    rec["history_profile_ids"] = [f"p{(i + j) % 3}" for j in range(n)]
    rec["history_emotions"] = [rec["emotion"]] * n
    rec["speaker_profile"] = {"age": "young", "gender": "female", "timbre": "high"}
    rec["listener_profile"] = {"age": "elderly", "gender": "male", "timbre": "low"}
    rec["m_coe"] = {"visual_observation": "a smile", "visual_emotion": "happy", "visual_confidence": "high",
                    "audio_observation": "a bright voice", "audio_emotion": "happy",
                    "audio_confidence": "medium", "event_scenario": "An event.",
                    "speaker_emotion": rec["emotion"], "emotion_cause": "A cause.",
                    "goal_to_response": "Support."}
    return rec


def _write_data(out_dir: str, sizes=None) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    from input_pipeline import records
    sizes = sizes or {"train": 16, "valid": 4}
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        w = ArrayRecordWriter(os.path.join(out_dir, f"{split}-00000-of-00001.array_record"), "group_size:1")
        for i in range(n):
            w.write(records.encode(_meria_record(i, split, rng)))
        w.close()
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"splits": {s: {"num_examples": n} for s, n in sizes.items()}, "feature_dims": DIMS}, f)
    return out_dir


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("meria")
    return {"data": _write_data(str(root / "data")), "model": write_tiny_llama(str(root / "tiny"))}


def _config(assets, steps=2, **over):
    from configs.meria import get_config
    from merg_jax.core.assets import smollm2_gguf
    c = get_config("smoke")
    c.mcoe_model.path = c.response_model.path = assets["model"]
    c.data.data_dir = assets["data"]
    c.data.tokenizer_path = smollm2_gguf()
    c.data.global_batch_size = 2
    c.data.max_utterances = U
    c.data.soft_tokens_per_slot = K
    c.data.seq_buckets = (256, 320)
    c.data.read_threads = 1
    c.pdr.hidden_dim = 16
    c.pdr.latent_dim = 8
    c.pdr.num_hidden_layers = 1
    for s in c.stages.values():
        s.steps = steps
    c.checkpoint.keep = 5
    c.checkpoint.async_save = False
    c.log.eval_batches = 1
    c.log.eval_every = 1000  # evaluate at the end of each stage only
    c.generation.max_new_tokens = 6
    c.generation.batch_size = 2
    c.generation.limit = 4
    for k, v in over.items():
        c[k] = v
    return c


def _batch(config, stage_name, split="train", **data):
    from input_pipeline.pipeline import make_iterator
    from merg_jax.systems.meria import Meria
    sys_ = Meria(config)
    sys_.resolve()
    sys_.validate()
    cfg = sys_.data_config(config.stages[stage_name], split, train=False)
    for k, v in data.items():
        cfg[k] = v
    return next(make_iterator(cfg))


def _built(config):
    from merg_jax.core import sharding as shd
    from merg_jax.systems.meria import Meria
    s = Meria(config)
    s.resolve()
    s.validate()
    mesh = shd.make_mesh(1, -1, 1)
    return s, s.build(mesh), mesh


@pytest.fixture(scope="module")
def built(assets):
    config = _config(assets)
    system, model, _ = _built(config)
    return config, system, model


def _dev(batch):
    return {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}


def test_param_paths_and_patterns(built):
    from merg_jax.train import partition
    config, _, model = built
    paths = partition.param_paths(model)
    for n in config.stage_order:
        partition.check_patterns(model, config.stages[n].trainable, n)
    assert any(p.startswith("pdr/encoders/audio_I/") for p in paths)
    assert any(p.startswith("projectors/projectors/conflict/") for p in paths)
    assert any(p.startswith("mcoe_llm/") and "lora_a" in p for p in paths)
    assert any(p.startswith("response_llm/") and "lora_b" in p for p in paths)
    assert model.pdr.cfg.profile_classes == {"age": 4, "gender": 2, "timbre": 3}


def test_soft_tokens_land_at_slot_positions(built):
    """Every slot of the mcoe prompt gets projector[signal][k] of its dialogue; nothing else moves."""
    from input_pipeline import prompts
    from merg_jax.models import fusion, meria
    config, _, model = built
    batch = _batch(config, "mcoe")
    b = _dev(batch)
    emb = meria.soft_embeds(model, model.mcoe_llm, b, max_utterances=U, use_ugf=True)
    plain = model.mcoe_llm.embed(b["input_ids"])
    placeholder = prompts.PromptBuilder("mcoe", config.data.tokenizer_path, max_length=8,
                                        max_utterances=1).ids["placeholder"]
    # Hand-built expectation: PDR means -> UGF per row -> mean over valid rows -> projectors.
    from merg_jax.systems.common import FeatureNorm
    norm = FeatureNorm.from_data(config.data.data_dir)
    feats = {m: norm(m, b[m]) for m in ("audio", "video", "text")}  # standardised features
    masks = {m: b[m + "_mask"] for m in ("audio", "video", "text")}
    out = model.pdr(feats, deterministic=True)
    fu = fusion.ugf(out, masks)
    # Z_S^F by hand (eq. 6-8 in numpy): certainty 1/mean σ²_P, softmax over present modalities
    mods = ("audio", "video", "text")
    present = np.stack([np.asarray(masks[m]) for m in mods], -1)
    cert = np.stack([1.0 / (np.exp(np.asarray(out.latents[m]["P"].logvar, np.float64)).mean(-1) + 1e-6)
                     for m in mods], -1)
    e = np.where(present, np.exp(cert - np.where(present, cert, -np.inf).max(-1, keepdims=True)), 0.0)
    w = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)
    shared = np.einsum("...m,...ml->...l", w, np.stack([np.asarray(out.latents[m]["S"].mu) for m in mods], -2))
    np.testing.assert_allclose(np.asarray(fu.shared), shared, rtol=1e-4, atol=1e-5)
    fu = fu._replace(shared=jnp.asarray(shared, jnp.float32))
    rows = masks["audio"] | masks["video"] | masks["text"]
    per = model.projectors(fusion.pool_fusion(fu, rows))
    for r in range(b["input_ids"].shape[0]):
        slots = [j for j in range(b["soft_mask"].shape[1]) if batch["soft_mask"][r, j]]
        assert len(slots) == len(prompts.MERIA_SIGNALS) * K
        expected = np.asarray(plain[r]).copy()
        for j in slots:
            pos, sig, k = batch["soft_positions"][r, j], batch["soft_modality"][r, j] - 4, batch["soft_index"][r, j]
            assert batch["input_ids"][r, pos] == placeholder
            assert batch["soft_utterance"][r, j] == -1
            expected[pos] = np.asarray(per[fusion.SIGNALS[sig]][r, k])
        # the slots are the first 5*K tokens of the prompt, in MERIA_SIGNALS order, K each
        order = [(batch["soft_modality"][r, j], batch["soft_index"][r, j]) for j in slots]
        assert order == [(4 + s, k) for s in range(5) for k in range(K)]
        np.testing.assert_allclose(np.asarray(emb[r]), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected[batch["soft_positions"][r, slots[0]]],
                               np.asarray(plain[r, batch["soft_positions"][r, slots[0]]]))


@pytest.mark.parametrize("use_pdr", [True, False])
def test_mcoe_loss_depends_on_features(assets, built, use_pdr):
    from merg_jax.train import partition
    config, system, model = built if use_pdr else (_config(assets, use_pdr=False), None, None)
    if not use_pdr:
        system, model, _ = _built(config)
    stage = config.stages["mcoe"]
    b = _dev(_batch(config, "mcoe"))
    loss0, aux = system.loss(model, b, None, stage, train=False)
    b2 = dict(b, audio=b["audio"] + 3.0 * jax.random.normal(jax.random.key(1), b["audio"].shape))
    loss1, _ = system.loss(model, b2, None, stage, train=False)
    assert float(aux["tokens"]) > 0 and np.isfinite(float(loss0))
    assert abs(float(loss0) - float(loss1)) > 1e-6
    # gradients reach exactly the stage's trainable set (the PDR is frozen: stop_gradient)
    graphdef, template, rest = partition.split(model, stage.trainable)
    params = partition.to_params(template)

    def f(p):
        return system.loss(partition.merge(graphdef, template, p, rest), b, None, stage, train=False)[0]
    g = partition.flat(jax.grad(f)(params))
    proj = [v for k, v in g.items() if k.startswith("projectors/")]
    assert any(float(jnp.abs(v).max()) > 0 for v in proj)
    if not use_pdr:
        assert "adapter/.*" in stage.trainable and "pdr" not in config.stage_order
        assert any(float(jnp.abs(v).max()) > 0 for k, v in g.items() if k.startswith("adapter/"))


def _ckpt_params(workdir, step) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "params")
    ck = ocp.PyTreeCheckpointer()
    meta = ck.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                        is_leaf=lambda x: hasattr(x, "shape"))
    from merg_jax.train import partition
    return {k: np.asarray(v) for k, v in partition.flat(ck.restore(path, restore_args=args)).items()}


def _changed(a, b) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not np.array_equal(a[k], b[k])}


def test_three_stages_train_only_their_params(assets, tmp_path):
    from flax import nnx

    from merg_jax.systems.jobs import make_trainer
    from merg_jax.train import partition
    config = _config(assets, response_mcoe="generated")
    # the initial union params (same seed -> same init)
    _, model0, _ = _built(_config(assets, response_mcoe="generated"))
    union = sorted({p for n in config.stage_order for p in config.stages[n].trainable})
    init = partition.flat(partition.to_params(nnx.state(model0, partition.matcher(union)), jnp.float32))
    init = {k: np.asarray(v) for k, v in init.items()}
    workdir = str(tmp_path / "run")
    summary = make_trainer(config, workdir).train()
    assert summary["status"] == "done" and summary["step"] == 6, summary
    for name in ("pdr", "mcoe", "response"):
        assert np.isfinite(summary["stages"][name]["loss"]), summary
        assert np.isfinite(summary["stages"][name]["eval_loss"]), summary
    s1, s2, s3 = (_ckpt_params(workdir, s) for s in (2, 4, 6))
    c1, c2, c3 = _changed(init, s1), _changed(s1, s2), _changed(s2, s3)
    assert c1 and all(k.startswith("pdr/") for k in c1), sorted(c1)[:5]
    assert any(k.startswith("projectors/") for k in c2) and any(k.startswith("mcoe_llm/") for k in c2)
    assert all(k.startswith("projectors/") or (k.startswith("mcoe_llm/") and "lora_" in k) for k in c2)
    assert c3 and all(k.startswith("response_llm/") and "lora_" in k for k in c3), sorted(c3)[:5]
    # stage 3 read the M-CoE LLM's generations
    gen = os.path.join(workdir, "stage_outputs")
    texts = [json.loads(line) for line in open(os.path.join(gen, "mcoe_train.jsonl"))]
    assert len(texts) >= 4 and all(isinstance(v, str) for t in texts for v in t.values())
    man = json.load(open(os.path.join(gen, "data", "manifest.json")))
    assert man["generated_mcoe"]["train"] == 4  # generation.limit
    # every train record without a non-empty generation is counted (16 records, limit 4)
    n_empty = 16 - sum(bool(v.strip()) for t in texts for v in t.values())
    assert man["generated_mcoe_empty"]["train"] == n_empty
    # what the response stage trained on: generated chains (here mostly empty), never the gold M-CoE
    from input_pipeline.pipeline import make_iterator
    from input_pipeline.prompts import PromptBuilder
    from merg_jax.systems.meria import Meria
    replay = _config(assets, response_mcoe="generated")
    replay.generation.data_dir = os.path.join(gen, "data")
    sys_ = Meria(replay)
    sys_.resolve()
    view = sys_.data_config(replay.stages.response, "train", train=False)
    tok = PromptBuilder("mcoe_response", replay.data.tokenizer_path, max_length=8, max_utterances=1).tokenizer
    seen = 0
    for b in make_iterator(view):
        for row, n in zip(b["input_ids"], b["prompt_length"]):
            text = tok.decode(row[:int(n)].tolist())
            assert "Multimodal chain of empathy" in text and "a bright voice" not in text and "A cause." not in text
            seen += 1
    assert seen >= 16

    # evaluation of the trained run: chain -> response per example, latent probes and pictures
    from merg_jax.systems.jobs import evaluate_workdir as evaluate
    out = str(tmp_path / "eval")
    m = evaluate(workdir, split="valid", output_dir=out, batch_size=2, max_new_tokens=6, bertscore=False)
    rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert m["n"] == len(rows) == 4 and all("generated_chain" in r for r in rows)
    for k in ("probe_shared_fused", "probe_shared_audio", "probe_shared_text", "probe_chance"):
        assert 0.0 <= m[k] <= 1.0, (k, m)
    for f in ("tsne_shared.png", "tsne_video_subspaces.png", "submission.json", "metrics.md"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    # no gold chain in any response prompt; empty chains are counted
    assert m["chains_empty"] == sum(r["chain_empty"] for r in rows) == sum(not r["generated_chain"] for r in rows)
    assert all("a bright voice" not in r["response_prompt"] and "A cause." not in r["response_prompt"] for r in rows)
    assert all(r["generated_chain"] in r["response_prompt"] for r in rows)
    # a chain budget of 0 (launch/evaluate.py --config.generation.max_new_tokens=0): the Response LLM alone
    out0 = str(tmp_path / "eval0")
    m0 = evaluate(workdir, split="valid", output_dir=out0, batch_size=2, max_new_tokens=6, bertscore=False,
                  max_examples=2, config_overrides={"generation.max_new_tokens": 0})
    assert m0["n"] == m0["chains_empty"] == 2 and np.isfinite(m0["ppl_response"])
    with pytest.raises(ValueError, match="would change the trained model"):
        evaluate(workdir, split="valid", output_dir=out0, config_overrides={"mcoe_model.lora.rank": 4})


def test_pdr_stage_loss_and_eval_aux(built):
    """The stage feeds the batch's speaker ids and profile labels to eq. 5 (a system that drops
    either gets other triplet / cls values) and reports the profile-classifier accuracy."""
    from merg_jax.models import meria as meria_model
    from merg_jax.models.pdr import pdr_losses
    config, system, model = built
    b = _dev(_batch(config, "pdr"))
    # two speakers alternating within each dialogue, so every anchor has a positive and a negative
    b["speaker_ids"] = jnp.where(b["speaker_ids"] >= 0, jnp.arange(b["speaker_ids"].shape[-1]) % 2, -1)
    loss, aux = system.loss(model, b, None, config.stages["pdr"], train=False)
    feats, masks = meria_model.features(b, model)
    out = model.pdr(feats, deterministic=True)
    labels = {a: b[f"profile_{a}"] for a in ("age", "gender", "timbre")}
    assert all(int(jnp.sum(v >= 0)) > 0 for v in labels.values()) and int(jnp.sum(b["speaker_ids"] >= 0)) > 0
    want, terms = pdr_losses(model.pdr.cfg, out, feats, masks, speaker_ids=b["speaker_ids"], profile_labels=labels)
    _, unlabelled = pdr_losses(model.pdr.cfg, out, feats, masks)
    np.testing.assert_allclose([loss, aux["triplet"], aux["cls"]], [want, terms["triplet"], terms["cls"]], rtol=1e-5)
    assert float(terms["cls"]) > 0.1 and float(terms["triplet"]) > 0.0 and float(unlabelled["cls"]) == 0.0
    rows = (b["audio_mask"] | b["video_mask"] | b["text_mask"]).sum()
    assert float(aux["tokens"]) == float(rows)
    np.testing.assert_allclose(float(aux["nll_sum"]), float(want) * float(rows), rtol=1e-5)
    # profile_accuracy: audio classifier argmax == label over audio rows with a known label, by hand
    hits = n = 0
    am = np.asarray(b["audio_mask"])
    for a, lab in labels.items():
        pred = np.argmax(np.asarray(out.profile_logits["audio"][a]), -1)
        known = am & (np.asarray(lab) >= 0)
        hits, n = hits + int(np.sum((pred == np.asarray(lab)) & known)), n + int(known.sum())
    np.testing.assert_allclose(float(aux["profile_accuracy"]), hits / n, rtol=1e-6)


def test_use_mcoe_off_feeds_soft_tokens_to_response_llm(assets):
    config = _config(assets, use_mcoe=False)
    system, model, _ = _built(config)
    assert config.stage_order == ("pdr", "response") and model.mcoe_llm is None
    stage = config.stages["response"]
    assert stage.data.template == "meria_direct" and "projectors/.*" in stage.trainable
    b = _dev(_batch(config, "response"))
    assert int(b["soft_mask"].sum()) == 5 * K * b["input_ids"].shape[0]
    loss0, _ = system.loss(model, b, None, stage, train=False)
    loss1, _ = system.loss(model, dict(b, video=b["video"] + 5.0), None, stage, train=False)
    assert abs(float(loss0) - float(loss1)) > 1e-6


def test_paper_presets_require_weights():
    from configs.meria import get_config
    from merg_jax.train.config import validate
    for preset in ("qwen3_0p6b", "qwen3_8b", "qwen3_32b"):
        c = get_config(preset)
        assert c.mcoe_model.lora.rank == 16 and c.mcoe_model.lora.alpha == 32.0
        assert c.optimizer.learning_rate == 2e-4 and c.stages.mcoe.epochs == 4
        with pytest.raises(ValueError, match="mcoe_model.path"):
            validate(c)


def _greedy_reference(model, llm, batch, n_new: int, tok) -> list[str]:
    """Greedy continuation without any KV cache: per row, the full forward over the soft-prompt
    embeddings + the embeddings of the tokens chosen so far, argmax of the last position (an
    independent check of the Generator's cached decode on inputs_embeds)."""
    from merg_jax.models import meria
    emb = meria.soft_embeds(model, llm, _dev(batch), max_utterances=U, use_ugf=True)
    eos = {int(tok.eos_token_id)} | {int(e) for e in np.atleast_1d(llm.config.eos_token_id or [])}
    texts = []
    for i in range(emb.shape[0]):
        n = int(np.sum(batch["attention_mask"][i]))
        x, row = emb[i:i + 1, :n], []
        for _ in range(n_new):
            nxt = int(jnp.argmax(llm(inputs_embeds=x, logits="last").logits[0, -1]))
            if nxt in eos:
                break
            row.append(nxt)
            x = jnp.concatenate([x, llm.embed(jnp.asarray([[nxt]]))], axis=1)
        texts.append(tok.decode(row, skip_special_tokens=True).strip())
    return texts


def test_predict_chain_then_response_lines_up_with_batch(built):
    """predict(): per real example, the chain is the greedy continuation of that example's
    soft prompt (checked against a cache-free decode), and the response LLM's prompt is
    mcoe_response with that chain inserted."""
    from input_pipeline.prompts import PromptBuilder
    config, system, model = built
    assert system.eval_stage().name == "mcoe"
    batch = _batch(config, "mcoe", split="valid", include_target=False, global_batch_size=3)
    assert list(batch["example_mask"]) == [1, 1, 1]
    batch["example_mask"] = np.asarray([1, 0, 1], batch["example_mask"].dtype)  # one padding row
    tok = PromptBuilder("mcoe_response", config.data.tokenizer_path, max_length=8, max_utterances=1).tokenizer
    system._last_view = (config.data.data_dir, "valid")
    rows = system.predict(model, batch, tok, max_new_tokens=4)
    assert len(rows) == 2 and all(set(r) == {"generated_chain", "response", "predicted_emotion", "raw",
                                             "chain_empty", "response_prompt_ids"} for r in rows)
    # the chain gets the generation budget (6 tokens), the response predict's own (4)
    chains = _greedy_reference(model, model.mcoe_llm, batch, config.generation.max_new_tokens, tok)
    assert [r["generated_chain"] for r in rows] == [chains[0], chains[2]]
    # (the tiny model writes only newlines, so the texts alone cannot tell the budgets apart:
    # record the budget the chain decoder is called with)
    predictor = system._predictor[2]
    budgets, decode = [], predictor.chain_decoder.decode
    predictor.chain_decoder.decode = lambda b, n: budgets.append(n) or decode(b, n)
    assert system.predict(model, batch, tok, max_new_tokens=4) == rows
    assert budgets == [config.generation.max_new_tokens]
    recs = system._eval_records(config.data.data_dir, "valid")
    for r, i in zip(rows, (0, 2)):
        rec = dict(recs[str(batch["example_id"][i])], generated_mcoe=r["generated_chain"])
        prompt = system._response_builder("valid").build(rec).tokens.tolist()
        assert prompt == r["response_prompt_ids"]
        if r["generated_chain"]:
            assert tok.decode(prompt).count(r["generated_chain"]) == 1
        # the response: a cache-free greedy decode of that prompt (not the Generator again)
        x = jnp.asarray([prompt])
        eos = {int(tok.eos_token_id)}
        out_ids = []
        for _ in range(4):
            nxt = int(jnp.argmax(model.response_llm(x).logits[0, -1]))
            if nxt in eos:
                break
            out_ids.append(nxt)
            x = jnp.concatenate([x, jnp.asarray([[nxt]])], axis=1)
        assert r["raw"] == tok.decode(out_ids, skip_special_tokens=True), r["raw"]


def test_predict_without_mcoe_decodes_from_soft_tokens(assets):
    from input_pipeline.prompts import PromptBuilder
    config = _config(assets, use_mcoe=False)
    system, model, _ = _built(config)
    assert system.eval_stage().name == "response"
    batch = _batch(config, "response", split="valid", include_target=False)
    tok = PromptBuilder("meria_direct", config.data.tokenizer_path, max_length=8, max_utterances=1).tokenizer
    rows = system.predict(model, batch, tok, max_new_tokens=3)
    want = _greedy_reference(model, model.response_llm, batch, 3, tok)
    assert [r["raw"] for r in rows] == [t for t, k in zip(want, batch["example_mask"]) if k]
    assert all(r["generated_chain"] == "" for r in rows)


def test_feature_norm_uses_present_train_rows(built):
    """Mean / std per dimension over the present rows of every train record (numpy by hand)."""
    from array_record.python.array_record_module import ArrayRecordReader

    from input_pipeline import records
    from input_pipeline.config import shard_files
    config, _, model = built
    rows = {m: [] for m in ("audio", "video", "text")}
    for path in shard_files(config.data.data_dir, "train"):
        r = ArrayRecordReader(path)
        for i in range(r.num_records()):
            rec = records.decode(r.read([i])[0])
            for m in rows:
                x, keep = np.asarray(rec["features"][m]), np.asarray(rec["feature_mask"][m], bool)
                rows[m].extend(x[keep])
        r.close()
    for m, xs in rows.items():
        xs = np.asarray(xs, np.float64)
        np.testing.assert_allclose(np.asarray(model.norm.__getattribute__(f"{m}_mean")[...]), xs.mean(0), atol=1e-5)
        sd = xs.std(0)
        np.testing.assert_allclose(np.asarray(model.norm.__getattribute__(f"{m}_std")[...]),
                                   np.where(sd > 1e-6, sd, 1.0), rtol=1e-4)
