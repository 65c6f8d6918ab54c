"""Feature extraction end to end: bad inputs, reruns, worker parity, and the emotion signal."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from input_pipeline import extract, extract_io
from input_pipeline.features import media_fixtures as mf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


# ----------------------------------------------------------------------------- bad-input corpus
def _conversation(cid: str, label: str = "joyful", texts=None) -> dict:
    """2 turns: histories [u0] and [u0, u1, u2]; speaker profile 1, listener profile 2."""
    texts = texts or [f"utterance {k} of dialogue {cid}" for k in range(3)]
    roles = ["speaker", "listener", "speaker"]
    hist = [{"index": k, "role": roles[k], "utterance": texts[k]} for k in range(3)]
    coe = {"speaker_emotion": label, "event_scenario": "e", "emotion_cause": "c",
           "goal_to_response": "g"}
    return {"conversation_id": cid, "topic": "Life Events",
            "speaker_profile": {"age": "young", "gender": "female", "timbre": "mid", "ID": 1},
            "listener_profile": {"age": "young", "gender": "male", "timbre": "low", "ID": 2},
            "turns": [{"turn_id": "0", "context": "", "dialogue_history": hist[:1],
                       "response": "reply one", "chain_of_empathy": dict(coe)},
                      {"turn_id": "1", "context": "", "dialogue_history": hist,
                       "response": "reply two", "chain_of_empathy": dict(coe)}]}


def build_bad_corpus(root: str) -> dict:
    """An AvaMERG-layout corpus with exactly one of each fault; returns what to expect."""
    os.makedirs(os.path.join(root, "audio_v5_0"))
    os.makedirs(os.path.join(root, "video_v5_0"))
    face = mf.face_video_frames(10, side=192, jitter=1)
    blank = mf.blank_video_frames(10, 96, 128)
    rng = np.random.default_rng(0)
    convs = [_conversation(f"{i:05d}") for i in range(9)]
    convs[5]["turns"] = "not a list"  # malformed record: rejected whole
    convs[6]["turns"][1]["dialogue_history"][2]["utterance"] = ""  # empty utterance
    convs[7]["turns"][1]["chain_of_empathy"]["speaker_emotion"] = "bewildered"  # unknown label
    convs[8]["turns"][1]["dialogue_history"][2]["utterance"] = "NONUTF8"  # patched to bytes below
    for i in range(9):
        for k in range(3):
            stem = f"dia{i:05d}utt{k}_{1 if k != 1 else 2}"
            wav = os.path.join(root, "audio_v5_0", stem + ".wav")
            mp4 = os.path.join(root, "video_v5_0", stem + ".mp4")
            if (i, k) == (1, 0):
                with open(wav, "wb") as fh:  # corrupt: random bytes
                    fh.write(rng.bytes(3000))
            elif (i, k) == (3, 2):
                mf.write_wav(wav, np.zeros(SR, np.float32))  # silent
            else:
                mf.write_wav(wav, mf.tone_bursts(150 + 10 * k, 1.0, 3.0))
            if (i, k) == (2, 1):
                continue  # missing mp4
            mf.write_video(mp4, blank if (i, k) == (4, 0) else face, fps=10)
    raw = json.dumps(convs).encode("utf-8").replace(b"NONUTF8", b"caf\xe9 \xff")
    with open(os.path.join(root, "train.json"), "wb") as fh:
        fh.write(raw)
    return {"corrupt": os.path.join(root, "audio_v5_0", "dia00001utt0_1.wav"),
            "silent": os.path.join(root, "audio_v5_0", "dia00003utt2_1.wav"),
            "missing": os.path.join(root, "video_v5_0", "dia00002utt1_2.mp4"),
            "noface": os.path.join(root, "video_v5_0", "dia00004utt0_1.mp4")}


SMALL = extract.ExtractConfig(examples_per_shard=4, video_kwargs={"num_frames": 4})


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_corpus"))
    expect = build_bad_corpus(root)
    out = str(tmp_path_factory.mktemp("bad_out"))
    manifest = extract.run_extraction("avamerg", root, out, workers=2, config=SMALL)
    return root, out, manifest, expect


def test_bad_inputs_counted_and_listed(bad_run):
    root, out, manifest, expect = bad_run
    reader = manifest["reader"]
    reasons = sorted(r["reason"] for r in reader["rejections"])
    assert reader["num_rejections"] == 4
    assert reasons == sorted([
        "turns must be a non-empty list",
        "empty turns[1].dialogue_history[2].utterance",
        "unknown emotion label 'bewildered'",
        "non-UTF-8 bytes in turns[1].dialogue_history[2].utterance"])
    assert {r["record"] for r in reader["rejections"]} == {"00005", "00006/1", "00007/1", "00008/1"}
    assert all(r["path"] == os.path.join(root, "train.json") for r in reader["rejections"])
    assert reader["counts"]["train"]["non_utf8_bytes"] == 2

    split = manifest["splits"]["train"]
    # 9 conversations x 2 turns, minus the malformed conversation and 3 rejected turns.
    assert split["num_examples"] == 13
    c = split["counts"]
    assert c["unique_utterances"] == 18  # 5 clean-ish conversations x 3 + 3 first turns
    assert c["audio"] == {"clips": 18, "processed": 16, "failed": 2,
                          "failed_by_reason": {"unreadable audio": 1, "silent": 1}}
    assert c["video"] == {"clips": 18, "processed": 17, "failed": 1,
                          "failed_by_reason": {"missing file": 1}, "face_fallback": 1}
    assert c["text"] == {"unique_texts": 18, "processed": 18, "failed": 0}
    assert split["face_fallback_clips"] == [expect["noface"]]
    rej = {(r["modality"], r["path"]): r for r in split["extraction_rejections"]}
    assert split["num_extraction_rejections"] == len(rej) == 3
    assert rej[("audio", expect["corrupt"])]["reason"].startswith("unreadable audio")
    assert rej[("audio", expect["silent"])]["reason"].startswith("silent")
    assert rej[("video", expect["missing"])]["reason"] == "missing file"
    assert rej[("video", expect["missing"])]["utterance"] == "train/00002/utt1"


def test_bad_inputs_mask_rows_and_keep_examples(bad_run):
    _, out, manifest, _ = bad_run
    recs = {r["example_id"]: r for r in extract_io.read_records(out, "train")}
    assert len(recs) == 13
    assert sum(s["num_records"] for s in manifest["splits"]["train"]["shards"]) == 13
    assert len(manifest["splits"]["train"]["shards"]) == 4
    ids = {f"avamerg/train/{i:05d}/{t}" for i in range(9) for t in "01"} - {
        "avamerg/train/00005/0", "avamerg/train/00005/1", "avamerg/train/00006/1",
        "avamerg/train/00007/1", "avamerg/train/00008/1"}
    assert set(recs) == ids

    def mask(cid, turn, m):
        return recs[f"avamerg/train/{cid}/{turn}"]["feature_mask"][m].tolist()

    assert mask("00001", 0, "audio") == [False] and mask("00001", 1, "audio") == [False, True, True]
    assert mask("00002", 1, "video") == [True, False, True] and mask("00002", 0, "video") == [True]
    assert mask("00003", 1, "audio") == [True, True, False]
    assert mask("00004", 1, "video") == [True, True, True]  # no face: fallback, not masked
    assert mask("00000", 1, "text") == [True, True, True]
    r = recs["avamerg/train/00001/1"]
    assert np.all(r["features"]["audio"][0] == 0) and np.any(r["features"]["audio"][1] != 0)
    fdim = manifest["feature_dims"]
    assert r["features"]["video"].shape == (3, fdim["video"]) and r["features"]["text"].shape == (3, fdim["text"])
    noface = recs["avamerg/train/00004/0"]["features"]["video"][0]
    assert noface[0] == 0.0  # face_found_frac
    assert recs["avamerg/train/00000/0"]["features"]["video"][0][0] == 1.0
    r0 = recs["avamerg/train/00000/1"]
    assert r0["label"] == 0 and r0["emotion_coarse"] == "happy" and r0["emotion"] == "joyful"
    assert r0["history_roles"] == ["speaker", "listener", "speaker"]
    assert r0["speaker_profile"] == {"id": "1", "age": "young", "gender": "female", "timbre": "mid"}
    assert r0["chain_of_empathy"]["goal_to_response"] == "g"
    # record format 2: per-utterance speaker identity, per-utterance emotion, M-CoE
    assert manifest["format_version"] == extract_io.FORMAT_VERSION == 2
    assert r0["history_profile_ids"] == ["1", "2", "1"]  # speaker ID 1, listener ID 2
    assert r0["history_emotions"] == ["", "", ""]  # AvaMERG: no per-utterance emotion
    assert r0["m_coe"] == {}  # the JSON carries no M-CoE annotation


def test_workers_match_single_process(bad_run, tmp_path):
    root, out, _, _ = bad_run
    single = str(tmp_path / "single")
    extract.run_extraction("avamerg", root, single, workers=1, config=SMALL)
    names = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    assert names == sorted(f for f in os.listdir(single) if f.endswith(".array_record"))
    a, b = extract_io.read_records(out, "train"), extract_io.read_records(single, "train")
    assert len(a) == len(b) == 13
    for ra, rb in zip(a, b, strict=True):
        assert ra["example_id"] == rb["example_id"]
        for m in ("audio", "video", "text"):
            np.testing.assert_array_equal(ra["features"][m], rb["features"][m])
            np.testing.assert_array_equal(ra["feature_mask"][m], rb["feature_mask"][m])


def test_rerun_skips_complete_shards(bad_run, monkeypatch):
    root, out, manifest, _ = bad_run
    shard_files = [os.path.join(out, s["file"]) for s in manifest["splits"]["train"]["shards"]]
    mtimes = {p: os.stat(p).st_mtime_ns for p in shard_files}
    cmd = [sys.executable, os.path.join(REPO, "launch", "extract_features.py"), "--dataset=avamerg",
           f"--data_dir={root}", f"--output_dir={out}", "--workers=2", "--examples_per_shard=4",
           '--config={"video": {"kwargs": {"num_frames": 4}}}']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(os.path.join(out, "logs", "extract_features.log")).read()
    assert "all 4 shards complete, nothing to extract" in log and "nothing to extract" not in proc.stderr
    again = json.load(open(os.path.join(out, extract.MANIFEST)))
    assert again["splits"]["train"]["shards_written"] == 0
    assert again["splits"]["train"]["shards_skipped"] == 4
    assert again["splits"]["train"]["counts"] == manifest["splits"]["train"]["counts"]
    assert {p: os.stat(p).st_mtime_ns for p in shard_files} == mtimes
    # A lost shard is rewritten alone; the others keep their files.
    os.remove(shard_files[2])
    third = extract.run_extraction("avamerg", root, out, workers=1, config=SMALL)
    assert third["splits"]["train"]["shards_written"] == 1
    assert os.path.exists(shard_files[2])
    assert all(os.stat(p).st_mtime_ns == mtimes[p] for p in shard_files if p != shard_files[2])
    assert extract_io.shard_record_count(shard_files[2]) == manifest["splits"]["train"]["shards"][2]["num_records"]
    # Other extractor settings: nothing is reused.
    other = extract.ExtractConfig(examples_per_shard=4, video_kwargs={"num_frames": 3})
    fourth = extract.run_extraction("avamerg", root, out, workers=1, config=other)
    assert fourth["splits"]["train"]["shards_written"] == 4
    # Same settings, another record layout (an older FORMAT_VERSION): stale, all rewritten.
    monkeypatch.setattr(extract, "FORMAT_VERSION", extract.FORMAT_VERSION - 1)
    fifth = extract.run_extraction("avamerg", root, out, workers=1, config=other)
    assert fifth["splits"]["train"]["shards_written"] == 4 and fifth["format_version"] == 1


def test_meld_audio_from_mp4_and_labels(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "meld"
    clips = root / "train_splits"
    clips.mkdir(parents=True)
    rows = [("Hi there.", "Joey", "joy", "positive", 0), ("Oh no.", "Ross", "sadness", "negative", 1),
            ("Whatever.", "Joey", "disgust", "negative", 2)]
    lines = ["Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"]
    for k, (text, who, emo, sent, u) in enumerate(rows):
        lines.append(f'{k + 1},"{text}",{who},{emo},{sent},0,{u},1,1,"00:00:01,000","00:00:03,000"')
        if u != 2:  # dia0_utt2 is missing
            mf.write_av_mp4(str(clips / f"dia0_utt{u}.mp4"), mf.harmonic_tone(120 + 60 * u, 1.5, sr=44100))
    (root / "train_sent_emo.csv").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    # Worker processes, as MELD is extracted for real: PyAV and OpenCV each bring an FFmpeg,
    # and a crash there must cost a clip, not the run (test_tfds decodes MELD in-process).
    manifest = extract.run_extraction("meld", str(root), out, workers=2, config=SMALL)
    recs = {r["turn_id"]: r for r in extract_io.read_records(out, "train")}
    assert [recs[t]["label"] for t in "012"] == [3, 5, 1]  # MELD_EMOTIONS order
    assert recs["2"]["feature_mask"]["audio"].tolist() == [True, True, False]
    assert recs["2"]["history_roles"] == ["Joey", "Ross", "Joey"]
    assert recs["2"]["history_profile_ids"] == ["Joey", "Ross", "Joey"]  # the character is the identity
    assert recs["2"]["history_emotions"] == ["joy", "sadness", "disgust"]
    audio = recs["2"]["features"]["audio"]
    f0_col = extract.make_extractor("librosa_prosody", "audio", {}).feature_names().index("f0_hz_p50")
    assert audio[0, f0_col] == pytest.approx(120, rel=0.02) and audio[1, f0_col] == pytest.approx(180, rel=0.02)
    c = manifest["splits"]["train"]["counts"]
    assert c["audio"]["failed_by_reason"] == {"missing file": 1}
    assert c["video"]["face_fallback"] == 2  # black frames: no face, centre crop


# ----------------------------------------------------------------------------- emotion signal
@pytest.fixture(scope="module")
def signal_run(tmp_path_factory):
    from input_pipeline.synthetic.corpus import generate_corpus
    root = str(tmp_path_factory.mktemp("signal_corpus"))
    generate_corpus(root, 49, seed=3, workers=2)  # 7 dialogues per emotion
    out = str(tmp_path_factory.mktemp("signal_out"))
    manifest = extract.run_extraction("avamerg", root, out, workers=2,
                                      config=extract.ExtractConfig(examples_per_shard=64))
    return out, manifest


def _utterance_table(out: str, manifest: dict):
    """One row per unique history utterance: features, dialogue emotion, conversation id."""
    rows = {}
    for split in manifest["splits"]:
        for rec in extract_io.read_records(out, split):
            for row, idx in enumerate(rec["history_indices"]):
                key = (split, rec["conversation_id"], idx)
                if key not in rows and all(rec["feature_mask"][m][row] for m in ("audio", "video", "text")):
                    rows[key] = ({m: rec["features"][m][row] for m in ("audio", "video", "text")},
                                 rec["label"], rec["conversation_id"])
    feats = {m: np.stack([r[0][m] for r in rows.values()]) for m in ("audio", "video", "text")}
    return feats, np.array([r[1] for r in rows.values()]), np.array([r[2] for r in rows.values()])


def _grouped_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    hits = 0
    for train, test in GroupKFold(n_splits=5).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        clf.fit(x[train], y[train])
        hits += int((clf.predict(x[test]) == y[test]).sum())
    return hits / len(y)


def test_audio_video_carry_emotion_text_does_not(signal_run):
    out, manifest = signal_run
    assert sum(s["counts"]["audio"]["failed"] + s["counts"]["video"]["failed"]
               for s in manifest["splits"].values()) == 0
    feats, y, groups = _utterance_table(out, manifest)
    assert len(set(groups)) == 49 and set(y.tolist()) == set(range(7))
    av = _grouped_accuracy(np.hstack([feats["audio"], feats["video"]]), y, groups)
    text = _grouped_accuracy(feats["text"], y, groups)
    print(f"held-out-dialogue accuracy: audio+video {av:.3f}, text {text:.3f}, n={len(y)}")
    assert av >= 0.9
    assert text <= 0.35


def test_crashing_decoder_costs_one_clip(bad_run, tmp_path):
    """A clip whose decoder kills its worker is a listed rejection; the run and the rest go on."""
    from input_pipeline.media_workers import CRASH_REASON
    root, _, _, expect = bad_run
    cfg = extract.ExtractConfig(examples_per_shard=4, video_kwargs={"num_frames": 4},
                                audio="media_crash:crash_audio",
                                audio_kwargs={"crash_on": "dia00000utt1_2"})
    out = str(tmp_path / "out")
    manifest = extract.run_extraction("avamerg", root, out, workers=2, config=cfg)
    split = manifest["splits"]["train"]
    crashed = os.path.join(root, "audio_v5_0", "dia00000utt1_2.wav")
    assert split["num_examples"] == 13
    # the stand-in extractor reads the corrupt and the silent wav fine (it only sizes files)
    assert split["counts"]["audio"] == {"clips": 18, "processed": 17, "failed": 1,
                                        "failed_by_reason": {CRASH_REASON: 1}}
    assert {(r["modality"], r["path"], r["reason"]) for r in split["extraction_rejections"]} == {
        ("audio", crashed, CRASH_REASON), ("video", expect["missing"], "missing file")}
    recs = {r["example_id"]: r for r in extract_io.read_records(out, "train")}
    assert recs["avamerg/train/00000/1"]["feature_mask"]["audio"].tolist() == [True, False, True]
    assert recs["avamerg/train/00001/1"]["features"]["audio"][0].tolist() == [3000.0]  # file size
