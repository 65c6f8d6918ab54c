"""What MERIA needs from the data: M-CoE annotations, per-utterance speaker identity and
profile labels, per-utterance emotion labels, and the five dialogue-level soft-prompt slots."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs.common import pipeline_defaults
from input_pipeline import extract_io, pipeline, prompts, records, schema
from input_pipeline.avamerg import read_avamerg
from input_pipeline.synthetic import corpus, mcoe, styles
from merg_jax.core.assets import smollm2_gguf

DIMS = {"audio": 5, "video": 4, "text": 3}
U = 6  # max_utterances of the pipeline runs below (synthetic histories have <= 5 rows)


def _meta(d: str) -> dict:
    with open(os.path.join(d, corpus.META_FILE), encoding="utf-8") as f:
        return json.load(f)


def _records(d: str) -> list[dict]:
    """Records exactly as extract.py builds them (no feature extractors: features {})."""
    res = read_avamerg(d)
    assert res.rejections == []
    recs = [extract_io.build_record(ex, {}, lambda m, u: None) for ex in res.examples]
    return [records.decode(records.encode(r)) for r in recs]  # through the shard encoding


def _facts(meta: dict) -> dict:
    return {(u["split"], u["conversation_id"], u["index"]): u for u in meta["utterances"]}


def _batches(recs: list[dict], **kw) -> list[dict]:
    c = pipeline_defaults()
    c.update(global_batch_size=4, seq_buckets=(256, 512, 1024), max_utterances=U, num_epochs=1,
             shuffle=False, drop_remainder=False, read_threads=0, template="mcoe",
             feature_dims=DIMS)
    c.update(kw)
    return list(pipeline.make_iterator(c, source=[records.encode(r) for r in recs],
                                       process_index=0, process_count=1))


@pytest.fixture(scope="module")
def conflict_corpus(tmp_path_factory) -> str:
    """6 dialogues with 40% of the clips conflicting (another emotion or noise)."""
    out = str(tmp_path_factory.mktemp("conflict_corpus"))
    corpus.generate_corpus(out, 6, seed=3, conflict_rate=0.4, workers=1)
    return out


# ----------------------------------------------------------------------------- M-CoE
def _check_mcoe(d: str) -> dict:
    """Every record's m_coe = the annotation of its last speaker utterance's meta entry."""
    meta, recs = _meta(d), _records(d)
    facts = _facts(meta)
    seen = {"visual_conflict": 0, "audio_conflict": 0, "noise": 0, "agree": 0}
    for rec in recs:
        last = max(i for i, r in zip(rec["history_indices"], rec["history_roles"]) if r == "speaker")
        assert last == rec["history_indices"][-1]  # AvaMERG histories end on the speaker
        fact = facts[(rec["split"], rec["conversation_id"], last)]
        m = rec["m_coe"]
        assert set(m) == set(schema.MCOE_FIELDS)
        for pre, key in (("visual", "video_emotion"), ("audio", "audio_emotion")):
            shown = fact[key]
            if shown == "noise":
                assert m[f"{pre}_emotion"] == "unclear" and m[f"{pre}_confidence"] == "low"
                assert "noise" in m[f"{pre}_observation"]
                seen["noise"] += 1
            elif shown != rec["emotion_coarse"]:  # a conflict: the clip's own emotion is annotated
                assert fact["conflict"] == ("video" if pre == "visual" else "audio")
                assert m[f"{pre}_emotion"] == shown and m[f"{pre}_confidence"] == "low"
                seen[f"{pre}_conflict"] += 1
            else:
                assert m[f"{pre}_emotion"] == rec["emotion_coarse"] and m[f"{pre}_confidence"] == "high"
                seen["agree"] += 1
        table = {"visual": mcoe.VISUAL_OBSERVATIONS, "audio": mcoe.AUDIO_OBSERVATIONS}
        assert m["visual_observation"] == table["visual"][fact["video_emotion"]]
        assert m["audio_observation"] == table["audio"][fact["audio_emotion"]]
    return seen


def test_m_coe_matches_synthetic_meta_without_conflicts(synthetic_corpus):
    seen = _check_mcoe(synthetic_corpus)
    assert seen["agree"] > 0 and seen["visual_conflict"] == seen["audio_conflict"] == seen["noise"] == 0


def test_m_coe_reports_the_conflicting_modality(conflict_corpus):
    seen = _check_mcoe(conflict_corpus)
    # seed 3 plans speaker-side conflicts of both modalities, one of them a noise video
    assert seen["visual_conflict"] >= 1 and seen["audio_conflict"] >= 1 and seen["noise"] >= 1
    # one concrete record, read back from the corpus directory alone
    meta = _meta(conflict_corpus)
    conf = next(u for u in meta["utterances"] if u["role"] == "speaker" and u["conflict"] == "video"
                and u["video_emotion"] != "noise")
    rec = next(r for r in _records(conflict_corpus) if r["conversation_id"] == conf["conversation_id"]
               and r["history_indices"][-1] == conf["index"])
    assert rec["m_coe"]["visual_emotion"] == conf["video_emotion"] != rec["emotion_coarse"]
    assert rec["m_coe"]["audio_emotion"] == rec["emotion_coarse"] == conf["true_emotion"]
    assert (rec["m_coe"]["visual_confidence"], rec["m_coe"]["audio_confidence"]) == ("low", "high")


def test_mcoe_target_carries_the_annotation(conflict_corpus):
    recs = _records(conflict_corpus)
    builder = prompts.PromptBuilder("mcoe", smollm2_gguf(), max_length=1024, max_utterances=U)
    respond = prompts.PromptBuilder("mcoe_response", smollm2_gguf(), max_length=1024,
                                    max_utterances=U)
    tok = builder.tokenizer
    for rec in recs:
        m = rec["m_coe"]
        built = builder.build(rec)
        target = tok.decode(built.tokens[built.is_target == 1])
        assert target == built.target_text + tok.eos_token
        assert target.startswith(
            f"Visual observation: {m['visual_observation']}; emotion: {m['visual_emotion']}; "
            f"confidence: {m['visual_confidence']}\n"
            f"Audio observation: {m['audio_observation']}; emotion: {m['audio_emotion']}; "
            f"confidence: {m['audio_confidence']}\nEvent scenario: ")
        # the Response LLM's prompt embeds the same chain
        resp = respond.build(rec)
        assert built.target_text in tok.decode(resp.tokens[:resp.prompt_length])


def test_avamerg_json_m_coe(tmp_path):
    def conv(cid, **extra):
        hist = [{"index": 0, "role": "speaker", "utterance": "I lost my keys."}]
        turns = [{"turn_id": str(k), "dialogue_history": hist, "response": "Oh no.",
                  "chain_of_empathy": {"speaker_emotion": "sad", "event_scenario": "keys",
                                       "emotion_cause": "loss", "goal_to_response": "comfort"}}
                 for k in (1, 2)]
        return {"conversation_id": cid, "topic": "Life Events", "turns": turns,
                "speaker_profile": {"age": "child", "gender": "female", "timbre": "high", "ID": 3},
                "listener_profile": {"age": "elderly", "gender": "male", "timbre": "low", "ID": 4},
                **extra}

    flat = {"visual_observation": "tears", "visual_emotion": "sad", "visual_confidence": "high",
            "audio_observation": "sobbing", "audio_emotion": "sad", "audio_confidence": "medium",
            "note": "ignored"}
    nested = {"visual": {"observation": "frown", "emotion": "angry", "confidence": "low"}}
    data = [conv("00001", m_coe=flat), conv("00002", m_coe=nested), conv("00003"),
            conv("00004", m_coe={"visual_emotion": 5})]
    data[0]["turns"][1]["m_coe"] = {"audio_emotion": "fear"}  # a turn's own annotation wins
    (tmp_path / "train.json").write_text(json.dumps(data), encoding="utf-8")
    res = read_avamerg(str(tmp_path))
    by = {e.example_id: e for e in res.examples}
    assert by["avamerg/train/00001/1"].m_coe == {k: flat[k] for k in schema.MCOE_FIELDS}
    assert by["avamerg/train/00001/2"].m_coe == dict.fromkeys(schema.MCOE_FIELDS, "") | {
        "audio_emotion": "fear"}
    assert by["avamerg/train/00002/1"].m_coe == dict.fromkeys(schema.MCOE_FIELDS, "") | {
        "visual_observation": "frown", "visual_emotion": "angry", "visual_confidence": "low"}
    assert by["avamerg/train/00003/1"].m_coe is None
    assert [(r.record, r.reason) for r in res.rejections] == [
        ("00004", "conversation.m_coe.visual_emotion is int, expected str")]
    assert res.counts["train"]["m_coe_unknown_keys"] == 1
    assert res.counts["train"]["examples_with_m_coe"] == 4

    t = prompts.TEMPLATES["mcoe"]
    nest = extract_io.build_record(by["avamerg/train/00002/1"], {}, lambda m, u: None)
    assert prompts.render_target(t, nest).startswith(
        "Visual observation: frown; emotion: angry; confidence: low\nEvent scenario: keys")
    plain = extract_io.build_record(by["avamerg/train/00003/1"], {}, lambda m, u: None)
    assert plain["m_coe"] == {}
    assert prompts.render_target(t, plain).startswith("Event scenario: keys\n")  # sections dropped
    b = _batches([nest, plain])[0]
    assert b["mcoe_present"].tolist()[:2] == [1, 0] and b["coe_present"].tolist()[:2] == [1, 1]
    # AvaMERG profiles: ids and labels by role; no per-utterance emotion annotation
    assert b["speaker_ids"][0, 0] == schema.speaker_id("avamerg", "3") >= 0
    assert (b["profile_age"][0, 0], b["profile_gender"][0, 0], b["profile_timbre"][0, 0]) == (0, 1, 2)
    assert b["utterance_label"][0, 0] == -1 and (b["speaker_ids"][:, 1:] == -1).all()


# ----------------------------------------------------------------------------- speaker rows
def _row_truth(rec: dict, facts: dict, meta_avatars: dict):
    """(avatar id, age, gender, timbre, emotion) of each history row from synthetic_meta.json."""
    out = []
    for i in rec["history_indices"][-U:]:
        f = facts[(rec["split"], rec["conversation_id"], i)]
        a = meta_avatars[f["profile_id"]]
        out.append((f["profile_id"], a["age"], a["gender"], a["timbre"], f["true_emotion"]))
    return out


@pytest.mark.parametrize("packing", [False, True])
def test_speaker_ids_and_profile_labels(synthetic_corpus, packing):
    meta = _meta(synthetic_corpus)
    facts = _facts(meta)
    avatars = {a["id"]: a for a in meta["avatars"]}
    recs = {r["example_id"]: r for r in _records(synthetic_corpus)}
    batches = _batches(list(recs.values()), packing=packing, pack_max_examples=3)
    sid_of_avatar: dict[int, int] = {}
    rows = n_seen = 0
    for b in batches:
        ids = b["example_id"].reshape(b["input_ids"].shape[0], -1)
        for r in range(ids.shape[0]):
            for s, eid in enumerate(ids[r]):
                base = s * U
                if not eid:
                    assert (b["speaker_ids"][r, base:base + U] == -1).all()
                    continue
                n_seen += 1
                truth = _row_truth(recs[eid], facts, avatars)
                for j, (avatar, age, gender, timbre, emo) in enumerate(truth):
                    sid = int(b["speaker_ids"][r, base + j])
                    assert sid == schema.speaker_id("synthetic", str(avatar)) >= 0
                    assert sid_of_avatar.setdefault(avatar, sid) == sid
                    assert b["profile_age"][r, base + j] == schema.PROFILE_AGES.index(age)
                    assert b["profile_gender"][r, base + j] == schema.PROFILE_GENDERS.index(gender)
                    assert b["profile_timbre"][r, base + j] == schema.PROFILE_TIMBRES.index(timbre)
                    assert b["utterance_label"][r, base + j] == schema.AVAMERG_COARSE.index(emo)
                    assert b["audio_mask"][r, base + j] == b["video_mask"][r, base + j] == False  # noqa: E712
                    rows += 1
                pad = slice(base + len(truth), base + U)
                for k in pipeline.PER_ROW:
                    assert (b[k][r, pad] == -1).all(), k
    assert n_seen == len(recs) and rows > 2 * len(recs)
    # different avatars -> different ids; the corpus uses many avatars, both roles
    assert len(sid_of_avatar) >= 8 and len(set(sid_of_avatar.values())) == len(sid_of_avatar)
    for b in batches:
        for k in pipeline.PER_ROW:
            assert b[k].dtype == np.int32 and b[k].shape == b["audio_mask"].shape, k


def test_same_speaker_rows_share_an_id_within_an_example(synthetic_corpus):
    recs = _records(synthetic_corpus)
    rec = max(recs, key=lambda r: len(r["history_indices"]))  # speaker, listener, speaker, ...
    b = _batches([rec])[0]
    n = len(rec["history_indices"])
    sid = b["speaker_ids"][0, :n]
    roles = np.array(rec["history_roles"])
    assert n >= 3 and len(set(sid[roles == "speaker"])) == 1 and len(set(sid[roles == "listener"])) == 1
    assert sid[roles == "speaker"][0] != sid[roles == "listener"][0]
    spk = styles.AVATAR_BY_ID[int(rec["speaker_profile"]["id"])]
    assert b["profile_age"][0, 0] == schema.PROFILE_AGES.index(spk.age)
    assert b["profile_timbre"][0, 0] == schema.PROFILE_TIMBRES.index(spk.timbre)


def test_profile_vocabularies():
    assert {a.age for a in styles.AVATARS} == set(schema.PROFILE_AGES)
    assert {a.gender for a in styles.AVATARS} == set(schema.PROFILE_GENDERS)
    assert {a.timbre for a in styles.AVATARS} == set(schema.PROFILE_TIMBRES)
    assert schema.profile_label("age", "Middle aged") == 2 and schema.profile_label("age", "") == -1
    assert schema.profile_label("timbre", "medium") == 1 and schema.profile_label("gender", "x") == -1
    assert schema.speaker_id("synthetic", "") == -1
    assert schema.speaker_id("synthetic", "7") == schema.speaker_id("synthetic", " 7 ")
    assert schema.speaker_id("synthetic", "7") != schema.speaker_id("avamerg", "7")


def test_records_without_new_fields_give_unknown_rows():
    """Format-1 records (no history_profile_ids / history_emotions / m_coe) still batch."""
    rec = {"example_id": "x/train/1/1", "dataset": "avamerg", "history_roles": ["speaker"],
           "history_texts": ["Hello."], "response": "Hi.", "label": 2}
    b = _batches([rec])[0]
    assert b["speaker_ids"][0, 0] == -1 and b["utterance_label"][0, 0] == -1
    assert b["profile_age"][0, 0] == -1 and b["mcoe_present"][0] == 0


# ----------------------------------------------------------------------------- soft slots
@pytest.mark.parametrize("k", [1, 3])
def test_mcoe_prompt_has_five_signal_slots(synthetic_corpus, k):
    recs = _records(synthetic_corpus)[:6]
    builder = prompts.PromptBuilder("mcoe", smollm2_gguf(), max_length=1024, max_utterances=U,
                                    soft_tokens_per_slot=k)
    assert builder.max_slots() == 5 * k
    ids = [prompts.MODALITY_IDS[s] for s in prompts.MERIA_SIGNALS]
    assert ids == [4, 5, 6, 7, 8]
    ph = builder.ids["placeholder"]
    for packing in (False, True):
        for b in _batches(recs, soft_tokens_per_slot=k, packing=packing, pack_max_examples=2):
            for r in range(b["input_ids"].shape[0]):
                segs = int(b["segment_ids"][r].max())
                m = b["soft_mask"][r] == 1
                assert m.sum() == 5 * k * segs and b["soft_mask"].shape[1] == 5 * k * (2 if packing else 1)
                for s in range(segs):
                    sl = slice(s * 5 * k, (s + 1) * 5 * k)
                    start = int(np.flatnonzero(b["segment_ids"][r] == s + 1)[0])
                    # the 5K soft tokens open the segment, in signal order, K per signal
                    assert (b["soft_positions"][r, sl] == start + np.arange(5 * k)).all()
                    assert (b["soft_modality"][r, sl] == np.repeat(ids, k)).all()
                    assert (b["soft_index"][r, sl] == np.tile(np.arange(k), 5)).all()
                    assert (b["soft_utterance"][r, sl] == -s - 1).all()  # dialogue-level: pool segment s
                    assert (b["input_ids"][r, start:start + 5 * k] == ph).all()
                assert (b["input_ids"][r] == ph).sum() == m.sum()
    # the soft_modalities filter still selects signals (ablations)
    few = prompts.PromptBuilder("mcoe", smollm2_gguf(), max_length=1024, max_utterances=U,
                                soft_tokens_per_slot=k, soft_modalities=("fused", "conflict"))
    built = few.build(recs[0])
    assert few.max_slots() == 2 * k and built.soft_modality.tolist() == [4] * k + [8] * k


def test_early_fusion_prefix_unchanged():
    t = prompts.TEMPLATES["early_fusion"]
    assert t.prefix == ("audio_video",) and t.prefix_per_utterance
    with pytest.raises(ValueError, match="unknown"):
        prompts.PromptTemplate(name="x", source="", prompt="<Prefix>", utterance="", target=(),
                               prefix=("smell",))
