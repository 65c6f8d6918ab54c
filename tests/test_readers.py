"""AvaMERG and MELD readers on small handmade fixtures with known faults."""
from __future__ import annotations

import json
import os

import pytest

from input_pipeline.avamerg import read_avamerg
from input_pipeline.meld import read_meld
from input_pipeline.reading import repair_mojibake


def _touch(path, data: bytes = b"x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _conv(cid, n_turns, emotion="sad", speaker_id=7, listener_id=12, coe=True):
    """A conversation whose turn k has 2k+1 history utterances (speaker first)."""
    texts = [f"utterance number {i}" for i in range(2 * n_turns)]
    turns = []
    for k in range(n_turns):
        turn = {"turn_id": str(k + 1), "context": "ctx",
                "dialogue_history": [{"index": i, "role": "speaker" if i % 2 == 0 else "listener",
                                      "utterance": texts[i]} for i in range(2 * k + 1)],
                "response": f"reply {k}"}
        if coe:
            turn["chain_of_empathy"] = {"speaker_emotion": emotion, "event_scenario": "e",
                                        "emotion_cause": "c", "goal_to_response": "g"}
        turns.append(turn)
    return {"conversation_id": cid, "topic": "Life Events", "turns": turns,
            "speaker_profile": {"age": "young", "gender": "male", "timbre": "low", "ID": speaker_id},
            "listener_profile": {"age": "elderly", "gender": "female", "timbre": "high", "ID": listener_id}}


@pytest.fixture()
def avamerg_dir(tmp_path):
    d = tmp_path / "avamerg"
    a, v = str(d / "audio_v5_0"), str(d / "video_v5_0")
    # 00001: suffixed 0-based names, 6 turns -> indices 0..11 (>= 10); utt1 audio and utt10 video missing.
    for i in range(12):
        pid = 7 if i % 2 == 0 else 12
        if i != 1:
            _touch(f"{a}/dia00001utt{i}_{pid}.wav")
        if i != 10:
            _touch(f"{v}/dia00001utt{i}_{pid}.mp4")
    # 00002: the official baseline's style: no suffix, 1-based, media directly in data_dir.
    for i in range(1, 4):
        _touch(f"{d}/dia00002utt{i}.wav")
        _touch(f"{d}/dia00002utt{i}.mp4")
    # 00003: no suffix, 0-based, in arbitrary subfolders.
    for i in range(3):
        _touch(f"{d}/wavs/dia00003utt{i}.wav")
        _touch(f"{d}/clips/dia00003utt{i}.mp4")
    bad_type = _conv("00004", 1)
    bad_type["turns"][0]["response"] = 5
    empty_text = _conv("00005", 2)
    empty_text["turns"][1]["dialogue_history"][2]["utterance"] = "   "
    train = [
        _conv("00001", 6, emotion="devastated"), _conv("00002", 1, emotion="joyful"), _conv("00003", 2, emotion="Angry"),
        bad_type,                                   # turn rejected: response is int
        empty_text,                                 # turn 2 rejected, turn 1 kept
        _conv("00006", 1, emotion="flabbergasted"),  # unknown emotion label
        {"speaker_profile": {}, "turns": []},       # no conversation_id
        _conv("00007", 1) | {"turns": "oops"},      # turns not a list
        {k: v for k, v in _conv("00008", 1).items() if k != "listener_profile"},  # missing key
    ]
    d.joinpath("train.json").write_text(json.dumps(train), encoding="utf-8")
    test = [_conv("00009", 2, coe=False)]  # like the real test.json: no chain_of_empathy
    d.joinpath("test.json").write_text(json.dumps(test), encoding="utf-8")
    # valid.json: one record with a raw cp1252 byte (not UTF-8) and one clean record.
    blob = json.dumps([_conv("00010", 1), _conv("00011", 1)], ensure_ascii=False).encode("utf-8")
    blob = blob.replace(b"utterance number 0", b"utterance n\x92mber 0", 1)
    d.joinpath("valid.json").write_bytes(blob)
    return str(d)


def test_avamerg_examples_media_and_rejections(avamerg_dir):
    res = read_avamerg(avamerg_dir)
    by_id = {e.example_id: e for e in res.examples}
    assert sorted({e.split for e in res.examples}) == ["test", "train", "valid"]
    train = [e for e in res.examples if e.split == "train"]
    # 6 + 1 + 2 turns, plus turn 1 of 00005.
    assert len(train) == 10 and res.counts["train"]["examples"] == 10
    assert res.counts["train"]["conversations"] == 4

    last = by_id["avamerg/train/00001/6"]
    assert [u.index for u in last.history] == list(range(11))
    assert last.history[1].audio_path is None  # utt1 missing: must not fall back on utt10/utt11
    assert last.history[1].video_path.endswith("dia00001utt1_12.mp4")
    assert last.history[10].video_path is None
    assert last.history[10].audio_path.endswith("dia00001utt10_7.wav")
    assert last.response_audio_path.endswith("dia00001utt11_12.wav")  # the reply of the last turn
    assert last.history[3].profile_id == "12" and last.history[4].profile_id == "7"
    assert last.emotion == "devastated" and last.emotion_coarse == "sad"
    assert last.chain_of_empathy.goal_to_response == "g"
    assert last.speaker_profile.id == "7" and last.listener_profile.timbre == "high"
    assert last.m_coe is None and all(u.emotion == "" for u in last.history)  # not annotated

    one_based = by_id["avamerg/train/00002/1"]
    assert one_based.history[0].audio_path.endswith("dia00002utt1.wav")
    assert one_based.response_video_path.endswith("dia00002utt2.mp4")
    zero_based = by_id["avamerg/train/00003/2"]
    assert [os.path.basename(u.audio_path) for u in zero_based.history] == [
        "dia00003utt0.wav", "dia00003utt1.wav", "dia00003utt2.wav"]
    assert zero_based.emotion_coarse == "angry"
    assert res.counts["train"]["one_based_media_conversations"] == 1
    # 11 + 1 + 3 + 1 unique history utterances; 00001 misses one wav and one mp4, 00005 has no media.
    assert res.counts["train"]["utterances"] == 16
    assert res.counts["train"]["missing_audio"] == 2 and res.counts["train"]["missing_video"] == 2

    reasons = sorted((r.record, r.reason) for r in res.rejections if r.path.endswith("train.json"))
    assert reasons == [
        ("#6", "missing key 'conversation_id' in conversation #6"),
        ("00004/1", "turns[0].response is int, expected str"),
        ("00005/2", "empty turns[1].dialogue_history[2].utterance"),
        ("00006/1", "unknown emotion label 'flabbergasted'"),
        ("00007", "turns must be a non-empty list"),
        ("00008", "missing key 'listener_profile'"),
    ]
    assert res.counts["train"]["rejections"] == 6

    test = [e for e in res.examples if e.split == "test"]
    assert len(test) == 2 and all(e.chain_of_empathy is None and e.emotion == "" for e in test)
    assert res.counts["test"]["examples_without_emotion"] == 2

    valid = [e for e in res.examples if e.split == "valid"]
    assert [e.conversation_id for e in valid] == ["00011"]
    bad = [r for r in res.rejections if r.path.endswith("valid.json")]
    assert [(r.record, r.reason) for r in bad] == [("00010/1", "non-UTF-8 bytes in turns[0].dialogue_history[0].utterance")]
    assert res.counts["valid"]["non_utf8_bytes"] == 1


def test_avamerg_unparsable_file_and_split_selection(tmp_path):
    (tmp_path / "train.json").write_text('[{"conversation_id": "1", ', encoding="utf-8")
    (tmp_path / "test.json").write_text(json.dumps([_conv("00001", 2)]), encoding="utf-8")
    res = read_avamerg(str(tmp_path))
    assert len(res.examples) == 2 and {e.split for e in res.examples} == {"test"}
    assert len(res.rejections) == 1 and res.rejections[0].reason.startswith("JSON does not parse")
    assert res.counts["test"]["missing_audio"] == 3  # no media at all: every utterance counted
    only_test = read_avamerg(str(tmp_path), splits=["test"])
    assert only_test.rejections == [] and only_test.examples[0].dataset == "avamerg"
    with pytest.raises(ValueError):
        read_avamerg(str(tmp_path), splits=["dev"])


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def _meld_line(sr, text, speaker, emo, sent, dia, utt) -> bytes:
    return f'{sr},"{text}",{speaker},{emo},{sent},{dia},{utt},1,1,00:00:01,00:00:02\n'.encode("utf-8")


@pytest.fixture()
def meld_dir(tmp_path):
    d = tmp_path / "MELD.Raw"
    mojibake = "he\u00e2\u0080\u0099s here"  # UTF-8 of "he’s" read as latin-1, saved as UTF-8
    rows = [
        _meld_line(1, "Hi there.", "Joey", "neutral", "neutral", 0, 0),
        _meld_line(2, mojibake, "Chandler", "joy", "positive", 0, 1),
        _meld_line(3, "Line one\nline two", "Joey", "Surprise", "positive", 0, 2),  # quoted newline
        _meld_line(4, "Hello.", "Ross", "sadness", "negative", 1, 0),
        _meld_line(5, "Bad label.", "Ross", "happiness", "positive", 1, 1),
        b'6,"Too few fields",Ross,anger\n',
        b'7,"I don\x92t know.",Monica,fear,negative,1,3,1,1,00:00:01,00:00:02\n',  # cp1252 byte
        b'8,"Broken \x81 byte",Monica,fear,negative,1,4,1,1,00:00:01,00:00:02\n',  # neither UTF-8 nor cp1252
        _meld_line(9, "Id?", "Ross", "anger", "negative", 1, "x"),
        _meld_line(10, "  ", "Ross", "anger", "negative", 1, 6),
        _meld_line(11, "Again.", "Chandler", "joy", "positive", 0, 1),  # duplicate id
        _meld_line(12, "Odd sentiment.", "Ross", "anger", "angry", 1, 7),
    ]
    d.mkdir()
    (d / "train_sent_emo.csv").write_bytes(MELD_HEADER.encode() + b"".join(rows))
    (d / "dev_sent_emo.csv").write_bytes(MELD_HEADER.encode() + _meld_line(1, "Dev line.", "Phoebe", "disgust", "negative", 0, 0))
    _touch(str(d / "train_splits" / "dia0_utt0.mp4"))
    _touch(str(d / "train_splits" / "dia0_utt1.mp4"))
    _touch(str(d / "train_splits" / "dia1_utt0.mp4"), b"")  # empty clip
    _touch(str(d / "train_splits" / "dia1_utt30.mp4"))  # must not serve dia1_utt3
    _touch(str(d / "dev_splits_complete" / "dia0_utt2.mp4"))  # dev clip: must not serve train dia0_utt2
    _touch(str(d / "dev_splits_complete" / "dia0_utt0.mp4"))
    return str(d)


def test_meld_examples_encoding_and_rejections(meld_dir):
    res = read_meld(meld_dir)
    train = [e for e in res.examples if e.split == "train"]
    assert [e.example_id for e in train] == ["meld/train/0/0", "meld/train/0/1", "meld/train/0/2",
                                             "meld/train/1/0", "meld/train/1/3"]
    e01 = train[1]
    assert [u.text for u in e01.history] == ["Hi there.", "he\u2019s here"]  # mojibake repaired
    assert e01.response == "Line one line two" and e01.response_role == "Joey"
    assert e01.emotion == "joy" and e01.emotion_coarse == "happy" and e01.sentiment == "positive"
    assert [u.emotion for u in e01.history] == ["neutral", "joy"]  # each utterance's own label
    assert e01.history[1].audio_path == e01.history[1].video_path
    assert e01.history[1].video_path.endswith(os.path.join("train_splits", "dia0_utt1.mp4"))
    assert train[2].history[2].video_path is None  # the dev clip of the same name is not used
    assert train[2].response == "" and train[2].emotion == "surprise"
    assert train[4].history[-1].text == "I don\u2019t know." and train[4].history[-1].index == 3
    assert train[4].history[-1].video_path is None  # dia1_utt30 is not dia1_utt3
    assert train[3].history[0].video_path is None  # empty clip
    assert train[3].response == "I don\u2019t know."

    reasons = sorted(r.reason for r in res.rejections)
    assert reasons == sorted([
        "unknown emotion label 'happiness'", "malformed row: 4 fields, expected 11",
        "bytes that are neither UTF-8 nor cp1252", "Utterance_ID 'x' is not a non-negative integer",
        "empty Utterance", "duplicate utterance dia0_utt1", "unknown sentiment label 'angry'"])
    c = res.counts["train"]
    assert (c["examples"], c["utterances"], c["rejections"], c["conversations"]) == (5, 5, 7, 2)
    assert (c["cp1252_lines"], c["mojibake_repaired"], c["empty_clips"]) == (1, 1, 1)
    assert c["missing_video"] == c["missing_audio"] == 3 and c["dialogues_with_gaps"] == 1

    dev = [e for e in res.examples if e.split == "dev"]
    assert len(dev) == 1 and dev[0].history[0].video_path.endswith(os.path.join("dev_splits_complete", "dia0_utt0.mp4"))


def test_meld_targets_and_last_utterance(meld_dir):
    res = read_meld(meld_dir, splits=["train"], include_last=False,
                    targets={"meld/train/1/3": "That sounds hard."})
    ids = [e.example_id for e in res.examples]
    assert ids == ["meld/train/0/0", "meld/train/0/1", "meld/train/1/0", "meld/train/1/3"]
    assert res.examples[-1].response == "That sounds hard." and res.examples[-1].response_video_path is None


def test_repair_mojibake():
    assert repair_mojibake("caf\u00e9") == ("caf\u00e9", False)  # genuine latin-1 text stays
    assert repair_mojibake("it\u0092s") == ("it\u2019s", True)  # stray C1 control
    assert repair_mojibake("\u00e2\u0080\u009cquoted\u00e2\u0080\u009d") == ("\u201cquoted\u201d", True)
    assert repair_mojibake("plain") == ("plain", False)
