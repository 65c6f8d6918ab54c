"""The synthetic AvaMERG-format corpus: decodable media, faces Haar can find, determinism,
reader round trip, emotion-free text, conflict bookkeeping."""
from __future__ import annotations

import filecmp
import json
import os
import re

import cv2
import numpy as np
import soundfile as sf

from input_pipeline import schema
from input_pipeline.avamerg import read_avamerg
from input_pipeline.synthetic import corpus, face, styles, voice

HAAR = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
EMOTION_WORDS = sorted(set(schema.FINE_TO_COARSE) | set(schema.COARSE_ALIASES) | set(schema.MELD_EMOTIONS))
EMOTION_RE = re.compile(r"\b(" + "|".join(EMOTION_WORDS) + r")\b", re.IGNORECASE)


def _meta(d: str) -> dict:
    with open(os.path.join(d, corpus.META_FILE), encoding="utf-8") as f:
        return json.load(f)


def _frames(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def _has_face(frame: np.ndarray) -> bool:
    return len(HAAR.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 3)) > 0


def test_media_decode_and_faces_are_detected(synthetic_corpus):
    meta = _meta(synthetic_corpus)
    assert not HAAR.empty()
    utts = meta["utterances"][::5]  # a sample across dialogues, speakers and listeners
    assert len(utts) >= 12
    hits = total = 0
    for u in utts:
        wav, sr = sf.read(os.path.join(synthetic_corpus, u["audio_path"]))
        assert sr == voice.SAMPLE_RATE and wav.ndim == 1
        assert 1.2 <= len(wav) / sr <= 3.0 and np.sqrt(np.mean(wav ** 2)) > 0.005
        frames = _frames(os.path.join(synthetic_corpus, u["video_path"]))
        assert len(frames) == u["num_frames"] == round(len(wav) / sr * face.FPS)
        assert frames[0].shape == (face.SIZE, face.SIZE, 3)
        for fr in frames[::3]:
            hits += _has_face(fr)
            total += 1
    assert hits / total >= 0.8, f"Haar found a face in {hits}/{total} frames"


def test_every_avatar_and_emotion_has_a_detectable_face():
    rng = np.random.default_rng(0)
    env = np.abs(np.sin(np.linspace(0, 12, 100)))
    hits = total = 0
    for avatar in styles.AVATARS:
        for emotion in styles.EMOTIONS:
            frames = face.render_clip(avatar, styles.face_style(emotion), env, voice.ENV_RATE, 0.2, rng)
            hits += sum(_has_face(f) for f in frames)
            total += len(frames)
    assert hits / total >= 0.9, f"{hits}/{total}"


def _syllable_rate(clip: voice.SpeechClip) -> float:
    on = clip.envelope > 0.3
    return float(np.sum(on[1:] & ~on[:-1])) / clip.duration


def test_prosody_follows_emotion():
    """Same text and avatar: anger louder than sadness, fear spoken faster than sadness."""
    text = "I want to tell you about the family gathering last weekend."
    avatar = styles.AVATAR_BY_ID[8]
    clips = {e: voice.synthesize(text, avatar, styles.voice_style(e), np.random.default_rng(1))
             for e in ("angry", "sad", "fear")}
    rms = {e: float(np.sqrt(np.mean(c.samples ** 2))) for e, c in clips.items()}
    assert rms["angry"] > 3 * rms["sad"]
    assert _syllable_rate(clips["fear"]) > 2 * _syllable_rate(clips["sad"])


def test_reader_round_trip(synthetic_corpus):
    meta = _meta(synthetic_corpus)
    res = read_avamerg(synthetic_corpus)
    assert res.rejections == []
    assert len(res.examples) == sum(d["num_turns"] for d in meta["dialogues"])
    emotion = {d["conversation_id"]: d["emotion"] for d in meta["dialogues"]}
    assert all(e.dataset == "synthetic" for e in res.examples)
    assert all(e.emotion_coarse == emotion[e.conversation_id] for e in res.examples)
    assert all(u.audio_path and u.video_path for e in res.examples for u in e.history)
    assert all(e.response_audio_path and e.response_video_path for e in res.examples)
    n_hist = sum(c["utterances"] for c in res.counts.values())
    assert n_hist == len(meta["utterances"]) - len(meta["dialogues"])  # the last reply is not history
    assert {e.split for e in res.examples} == {"train", "valid", "test"}
    for e in res.examples:  # the JSON's profile IDs name the voice that speaks
        for u in e.history:
            assert os.path.basename(u.audio_path).endswith(f"_{u.profile_id}.wav")


def test_history_text_carries_no_emotion(synthetic_corpus):
    res = read_avamerg(synthetic_corpus)
    texts = {u.text for e in res.examples for u in e.history}
    assert texts and not [t for t in texts if EMOTION_RE.search(t)]
    # The targets do name the emotion, as a sanity check of the pattern itself.
    assert any(EMOTION_RE.search(e.chain_of_empathy.event_scenario) for e in res.examples)


def test_text_leak_rate():
    plans = corpus.plan_corpus(20, seed=4, text_leak=0.5)
    history = [(p, u) for p in plans for u in p.utterances[:-1]]
    leaked = [(p, u) for p, u in history if EMOTION_RE.search(u.text)]
    assert len(leaked) == round(0.5 * len(history))
    assert all(p.label in u.text for p, u in leaked)


def test_conflicts_are_recorded(tmp_path):
    meta = corpus.generate_corpus(str(tmp_path), 3, seed=7, conflict_rate=0.25)
    utts = meta["utterances"]
    conflicts = [u for u in utts if u["conflict"]]
    assert len(conflicts) == meta["num_conflicts"] == round(0.25 * len(utts))
    for u in utts:
        shown = {"audio": u["audio_emotion"], "video": u["video_emotion"]}
        if u["conflict"]:
            other = "video" if u["conflict"] == "audio" else "audio"
            assert shown[u["conflict"]] != u["true_emotion"] and shown[other] == u["true_emotion"]
            assert shown[u["conflict"]] in styles.EMOTIONS + ("noise",)
        else:
            assert shown == {"audio": u["true_emotion"], "video": u["true_emotion"]}
    assert _meta(str(tmp_path)) == meta


def test_deterministic_and_independent_of_workers(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    corpus.generate_corpus(a, 3, seed=5, conflict_rate=0.3, text_leak=0.3, workers=1)
    corpus.generate_corpus(b, 3, seed=5, conflict_rate=0.3, text_leak=0.3, workers=2)
    corpus.generate_corpus(c, 3, seed=6, workers=1)
    for name in ("train.json", "valid.json", "test.json", corpus.META_FILE):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name
    wavs = sorted(os.listdir(os.path.join(a, corpus.AUDIO_DIR)))
    assert wavs == sorted(os.listdir(os.path.join(b, corpus.AUDIO_DIR))) and len(wavs) >= 12
    for w in wavs:
        assert filecmp.cmp(os.path.join(a, corpus.AUDIO_DIR, w), os.path.join(b, corpus.AUDIO_DIR, w), shallow=False)
    for m in sorted(os.listdir(os.path.join(a, corpus.VIDEO_DIR))):
        fa, fb = (_frames(os.path.join(d, corpus.VIDEO_DIR, m)) for d in (a, b))
        assert len(fa) == len(fb) > 0 and all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not filecmp.cmp(os.path.join(a, "train.json"), os.path.join(c, "train.json"), shallow=False)
