"""Grain input pipeline: resume, per-process sharding, prompt masking, buckets, slots."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

grain = pytest.importorskip("grain")
from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402

from configs.common import pipeline_defaults  # noqa: E402  (after the grain importorskip)
from input_pipeline import pipeline, prompts, records  # noqa: E402
from merg_jax.core.assets import smollm2_gguf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = {"audio": 8, "video": 6, "text": 4}
_LINES = [
    "I paid all my bills today, I feel great!",
    "Every little accomplishment counts! What bills did you have to pay?",
    "Rent and electricity. We've been struggling financially so it's such a relief.",
    "My dog got sick last night and I could not sleep at all.",
    "That sounds really scary, is he feeling any better now?",
    "I finally finished the marathon after months of training.",
    "I can't believe my best friend forgot my birthday again.",
]


def make_record(i: int, n_utt: int, rng: np.random.Generator, coe: bool = True,
                text_len: int = 1) -> dict:
    texts = [" ".join(_LINES[(i + j + r) % len(_LINES)] for r in range(text_len))
             + f" (#{i}.{j})" for j in range(n_utt)]
    return {
        "example_id": f"synthetic/train/c{i:04d}/t{n_utt}", "dataset": "synthetic",
        "split": "train", "conversation_id": f"c{i:04d}", "turn_id": str(n_utt),
        "history_roles": ["speaker" if j % 2 == 0 else "listener" for j in range(n_utt)],
        "history_texts": texts,
        "response": f"Sorry to hear that. Well, at least this will be a weight off your shoulders {i}.",
        "emotion": "content", "emotion_coarse": "happy", "label": i % 7,
        "chain_of_empathy": ({"speaker_emotion": "content",
                              "event_scenario": f"Paying overdue rent, case {i}.",
                              "emotion_cause": "Relief after paying bills.",
                              "goal_to_response": "Support and validation."} if coe else {}),
        "topic": "Life Events", "speaker_profile": {}, "listener_profile": {},
        "features": {m: rng.standard_normal((n_utt, d)).astype(np.float32) for m, d in DIMS.items()},
        "feature_mask": {m: rng.random(n_utt) > 0.2 for m in DIMS},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("shards")
    recs = [make_record(i, int(rng.integers(1, 7)), rng, coe=i % 5 != 0) for i in range(48)]
    for s in range(3):
        w = ArrayRecordWriter(str(out / f"train-{s:05d}-of-00003.array_record"), "group_size:1")
        for r in recs[s * 16:(s + 1) * 16]:
            w.write(records.encode(r))
        w.close()
    return str(out), {r["example_id"]: r for r in recs}


@pytest.fixture(scope="module")
def tok():
    from merg_jax.core.tokenizer import load_tokenizer
    return load_tokenizer(smollm2_gguf())


def cfg(data_dir: str, **kw):
    c = pipeline_defaults()
    c.data_dir, c.global_batch_size, c.seq_buckets = data_dir, 4, (64, 128, 256, 512, 1024)
    c.max_utterances, c.read_threads, c.prefetch_buffer_size = 6, 0, 8
    c.update(kw)
    return c


def take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("packing", [False, True])
def test_resume_from_orbax_checkpoint_is_bitwise(data, tmp_path, packing):
    import orbax.checkpoint as ocp
    # infinite repeat, shuffled; packed rows end on length, so a read-ahead example is pending
    c = cfg(data[0], packing=packing, read_threads=2, seed=7, pack_max_examples=8,
            seq_buckets=(128, 256, 512))
    it = pipeline.make_iterator(c)
    take(it, 5)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = take(it, 8)
    fresh = pipeline.make_iterator(c)
    restored = mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    got = take(restored["data"], 8)
    mngr.close()
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for k in e:
            assert e[k].dtype == g[k].dtype and np.array_equal(e[k], g[k]), k
    # and the stream really moved on: the resumed batch is not the first batch
    assert not np.array_equal(got[0]["example_id"], next(pipeline.make_iterator(c))["example_id"])


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_disjoint_and_complete(data, count):
    rng = np.random.default_rng(1)
    recs = [make_record(i, 2, rng) for i in range(47)]  # 47: not divisible by 2 or 3
    source = [records.encode(r) for r in recs]
    for epochs in (1, 2):
        seen, n_batches = collections.Counter(), set()
        for p in range(count):
            c = cfg(data[0], num_epochs=epochs, drop_remainder=False, global_batch_size=2 * count)
            batches = list(pipeline.make_iterator(c, source=source, process_index=p,
                                                  process_count=count))
            n_batches.add(len(batches))
            for b in batches:
                assert b["input_ids"].shape[0] == 2  # per-process batch = global / count
                seen.update(b["example_id"][b["example_mask"] == 1].tolist())
                assert (b["example_id"][b["example_mask"] == 0] == "").all()
        assert len(n_batches) == 1, f"processes yield different batch counts {n_batches}"
        assert set(seen) == {r["example_id"] for r in recs}
        assert set(seen.values()) == {epochs}, "an example was seen more or less than once per epoch"
    # training (drop_remainder): equal counts, disjoint, nothing padded
    per = []
    for p in range(count):
        c = cfg(data[0], num_epochs=1, global_batch_size=count)
        per.append([i for b in pipeline.make_iterator(c, source=source, process_index=p,
                                                      process_count=count)
                    for i in b["example_id"].tolist()])
    assert len({len(x) for x in per}) == 1 and len(set(sum(per, []))) == len(sum(per, []))


@pytest.mark.parametrize("template,chat", [(t, False) for t in prompts.TEMPLATES] + [("coe", True)])
def test_only_target_tokens_are_supervised(data, tok, template, chat):
    c = cfg(data[0], template=template, chat_template=chat, num_epochs=1, shuffle=False)
    b = next(pipeline.make_iterator(c))
    tmpl = prompts.TEMPLATES[template]
    for r in range(b["input_ids"].shape[0]):
        rec = data[1][b["example_id"][r]]
        supervised = b["targets"][r][b["loss_mask"][r] == 1]
        assert tok.decode(supervised) == prompts.render_target(tmpl, rec) + tok.eos_token
        pl = b["prompt_length"][r]
        # no prompt token is ever a supervised target; every target token is
        assert b["loss_mask"][r][:pl - 1].sum() == 0
        n_tok = b["attention_mask"][r].sum()
        assert b["loss_mask"][r][pl - 1:n_tok - 1].all() and b["loss_mask"][r][n_tok - 1:].sum() == 0
        prompt = tok.decode(b["input_ids"][r][:pl])
        assert rec["history_texts"][-1] in prompt and rec["response"] not in prompt
    if template == "coe":
        text = tok.decode(b["input_ids"][0][:b["prompt_length"][0]])
        assert "Don't rush to give the response, thinking step by step." in text
        assert (text.startswith("<|im_start|>system") if chat else text.startswith("Provide a"))
    rec0 = data[1][b["example_id"][0]]
    if template in ("coe", "coe_text") and rec0["chain_of_empathy"]:
        target = prompts.render_target(tmpl, rec0)
        assert target.startswith("Firstly, the event scenario of this conversation is: Paying")
        assert "\nFinally, the response is: Sorry to hear that." in target


def test_missing_coe_keeps_available_steps():
    rec = make_record(3, 2, np.random.default_rng(0), coe=False)
    t = prompts.render_target(prompts.TEMPLATES["coe"], rec)
    assert t == ("Secondly, the emotion of the speaker is: content\n"
                 "Finally, the response is: " + rec["response"])


def _example(n: int, slots: int = 0) -> dict:
    ex = pipeline._Prepare(None, DIMS, 3).empty()
    ex.update(tokens=np.arange(n, dtype=np.int32) + 5, is_target=np.ones(n, np.int8),
              soft_positions=np.arange(slots, dtype=np.int32), soft_utterance=np.zeros(slots, np.int32),
              soft_modality=np.zeros(slots, np.int32), soft_index=np.zeros(slots, np.int32),
              example_mask=1, example_id=f"e{n}")
    return ex


def test_bucket_is_smallest_that_fits():
    kw = dict(batch_size=3, buckets=(64, 128, 256), pad_id=2, max_slots=2, max_utterances=3,
              dims=DIMS, packed_segments=1)
    for lens, want in (([10, 64], 64), ([65, 3], 128), ([1], 64), ([129, 256], 256)):
        b = pipeline.collate([[_example(n)] for n in lens], **kw)
        assert b["input_ids"].shape == (3, want), (lens, b["input_ids"].shape)
        assert b["attention_mask"].sum(1).tolist() == lens + [0] * (3 - len(lens))
        assert b["example_mask"].tolist() == [1] * len(lens) + [0] * (3 - len(lens))
    with pytest.raises(ValueError, match="largest bucket"):
        pipeline.collate([[_example(257)]], **kw)


def test_truncation_drops_oldest_utterances_and_counts(tok):
    rng = np.random.default_rng(2)
    rec = make_record(9, 9, rng, text_len=4)  # ~9 x 60 tokens of history
    path = smollm2_gguf()
    big = prompts.PromptBuilder("coe", path, max_length=4096, max_utterances=6)
    small = prompts.PromptBuilder("coe", path, max_length=256, max_utterances=6)
    full, cut = big.build(rec), small.build(rec)
    assert full.truncated_utterances == 3 and full.truncated_tokens == 0  # 9 > max_utterances 6
    assert len(cut.tokens) <= 256 < len(full.tokens)
    kept = int(cut.kept_utterances.sum())
    assert cut.truncated_utterances == 9 - kept and kept < 6
    text = tok.decode(cut.tokens[:cut.prompt_length])
    assert rec["history_texts"][-1] in text and rec["history_texts"][-kept - 1] not in text
    # minimal: keeping one more utterance would not have fitted
    one_more = dict(rec, history_texts=rec["history_texts"][-kept - 1:],
                    history_roles=rec["history_roles"][-kept - 1:])
    assert len(big.build(one_more).tokens) > 256
    assert tok.decode(cut.tokens[cut.is_target == 1]) == prompts.render_target(
        prompts.TEMPLATES["coe"], rec) + tok.eos_token
    # feature rows of dropped utterances are masked; kept rows carry the right features
    prep = pipeline._Prepare(small, DIMS, 6)
    ex = prep.map(records.encode(rec))
    assert ex["truncated_utterances"] == cut.truncated_utterances
    np.testing.assert_array_equal(ex["audio"], rec["features"]["audio"][3:])
    assert not ex["audio_mask"][:6 - kept].any()
    np.testing.assert_array_equal(ex["audio_mask"][6 - kept:], rec["feature_mask"]["audio"][-kept:])
    # one huge utterance: its tokens are cut from the left, the target survives
    long = make_record(4, 1, rng, text_len=40)
    b = prompts.PromptBuilder("coe", path, max_length=300, max_utterances=6).build(long)
    assert len(b.tokens) == 300 and b.truncated_tokens > 0 and b.truncated_utterances == 0
    assert long["history_texts"][0][-30:] in tok.decode(b.tokens[:b.prompt_length])


@pytest.mark.parametrize("template", ["coe", "early_fusion", "mcoe"])
def test_soft_positions_point_at_placeholders(data, tok, template):
    c = cfg(data[0], template=template, num_epochs=1, shuffle=False, soft_tokens_per_slot=2)
    b = next(pipeline.make_iterator(c))
    ph = tok.convert_tokens_to_ids(tok.unk_token)
    for r in range(b["input_ids"].shape[0]):
        rec = data[1][b["example_id"][r]]
        n_utt = len(rec["history_texts"])
        m = b["soft_mask"][r] == 1
        pos = b["soft_positions"][r][m]
        assert (b["input_ids"][r][pos] == ph).all()
        assert (b["input_ids"][r] == ph).sum() == m.sum() == len(set(pos.tolist()))
        utt, mod, idx = (b[k][r][m] for k in ("soft_utterance", "soft_modality", "soft_index"))
        assert (idx == np.tile([0, 1], len(idx) // 2)).all()
        if template == "coe":  # <Aud> <Vid> right after each utterance's text
            assert m.sum() == 4 * n_utt and (mod == np.tile([0, 0, 1, 1], n_utt)).all()
            for p, u in zip(pos[::4], utt[::4]):
                assert tok.decode(b["input_ids"][r][:p]).endswith(rec["history_texts"][u])
        elif template == "early_fusion":  # one joint slot per utterance, prepended
            assert (pos == np.arange(2 * n_utt)).all() and (mod == 3).all()
            assert (utt == np.repeat(np.arange(n_utt), 2)).all()
        else:  # MERIA: K dialogue-level tokens per signal (fused, identity, private audio,
            # private video, conflict) before the prompt
            assert (pos == np.arange(10)).all() and (utt == -1).all()
            assert (mod == np.repeat([4, 5, 6, 7, 8], 2)).all()
        for mname in ("audio", "video", "text"):
            np.testing.assert_array_equal(b[mname][r][:n_utt], rec["features"][mname])
            np.testing.assert_array_equal(b[mname + "_mask"][r][:n_utt], rec["feature_mask"][mname])
            assert not b[mname + "_mask"][r][n_utt:].any()


def test_packing_segments(data, tok):
    c = cfg(data[0], packing=True, pack_max_examples=3, num_epochs=1, shuffle=False,
            seq_buckets=(256, 512), drop_remainder=False)
    seen = []
    for b in pipeline.make_iterator(c):
        assert b["label"].shape == (4, 3) and b["audio"].shape == (4, 18, 8)
        for r in range(4):
            seg = b["segment_ids"][r]
            for s in range(1, seg.max() + 1):
                where = np.flatnonzero(seg == s)
                assert (b["positions"][r][where] == np.arange(len(where))).all()
                rec = data[1][b["example_id"][r, s - 1]]
                sup = b["targets"][r][where][b["loss_mask"][r][where] == 1]
                assert tok.decode(sup) == prompts.render_target(
                    prompts.TEMPLATES["coe"], rec) + tok.eos_token
                slots = (b["soft_mask"][r] == 1) & np.isin(b["soft_positions"][r], where)
                u = b["soft_utterance"][r][slots]
                assert ((u >= (s - 1) * 6) & (u < s * 6)).all()
            seen += b["example_id"][r][b["example_mask"][r] == 1].tolist()
    assert sorted(seen) == sorted(data[1])


def test_global_arrays_on_8_devices(data, tmp_path):
    c = cfg(data[0], num_epochs=1, global_batch_size=8)
    batch = next(pipeline.make_iterator(c))
    np.savez(tmp_path / "batch.npz", **batch)
    script = textwrap.dedent(f"""
        import numpy as np, jax
        from jax.sharding import PartitionSpec as P
        from merg_jax.core.sharding import make_mesh
        from input_pipeline.pipeline import to_global
        assert jax.device_count() == 8, jax.devices()
        batch = dict(np.load({str(tmp_path / 'batch.npz')!r}))
        mesh = make_mesh(data=2, fsdp=2, tensor=2)
        out = to_global(batch, mesh)
        assert "example_id" not in out and set(out) == set(batch) - {{"example_id"}}
        for k, v in out.items():
            assert v.shape == batch[k].shape and v.dtype == batch[k].dtype, k
            assert v.sharding.spec[0] == ("data", "fsdp"), (k, v.sharding.spec)
            assert len(v.addressable_shards) == 8
            for sh in v.addressable_shards:
                np.testing.assert_array_equal(np.asarray(sh.data), batch[k][sh.index])
            np.testing.assert_array_equal(np.asarray(v), batch[k])
        # rows 0-1 live on the devices of mesh position data=0, fsdp=0
        rows = {{sh.index[0].start for sh in out["input_ids"].addressable_shards}}
        assert rows == {{0, 2, 4, 6}}, rows
        print("OK", len(out))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("field,value,match", [
    ("template", "nope", "template='nope' is unknown"),
    ("global_batch_size", 5, "not divisible by the 2 processes"),
    ("seq_buckets", (256, 128), "strictly increasing"),
    ("seq_buckets", (), "non-empty"),
    ("max_utterances", 0, "max_utterances=0"),
    ("num_epochs", 0, "num_epochs=0"),
    ("worker_count", -1, "worker_count=-1"),
    ("soft_modalities", ("smell",), "unknown \\['smell'\\]"),
    ("split", "nosuchsplit", "no 'nosuchsplit-\\*-of-\\*.array_record' shards"),
    ("data_dir", "/nonexistent/dir", "is not a directory"),
    ("tokenizer_path", "/nonexistent/tok.gguf", "tokenizer_path"),
    ("system_prompt", "Be kind.", "only used with chat_template"),
    ("placeholder_token", "<NoSuchToken>", "placeholder_token"),
])
def test_bad_config_is_a_clear_value_error(data, field, value, match):
    c = cfg(data[0])
    c[field] = value
    with pytest.raises(ValueError, match=match):
        pipeline.make_dataset(c, process_index=0, process_count=2)


def test_bad_process_index(data):
    with pytest.raises(ValueError, match="process_index=2 is outside"):
        pipeline.make_dataset(cfg(data[0]), process_index=2, process_count=2)


def test_resume_with_worker_processes(data):
    """Grain worker processes (spawned) keep the state exact too; same worker count on restore."""
    c = cfg(data[0], worker_count=2, seed=3)
    it = pipeline.make_iterator(c)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    it.close()
    fresh = pipeline.make_iterator(c)
    fresh.set_state(state)
    got = take(fresh, 4)
    fresh.close()
    for e, g in zip(expected, got):
        for k in e:
            assert np.array_equal(e[k], g[k]), k
