"""Builds a synthetic AvaMERG-format corpus: JSON splits, wav and mp4 per utterance.

Why: the real AvaMERG media cannot be downloaded here, and tests need a corpus
whose emotion is known and carried by voice and face (not by the text), with
optional modality conflicts.  Layout and JSON schema are exactly AvaMERG's
(see input_pipeline/avamerg.py), so the same reader and pipeline run on both.

Determinism: the whole corpus is planned in the parent process (text, avatars,
emotions, conflicts, leaks), and every dialogue is rendered from its own seed
(`SeedSequence([seed, dialogue, ...])`), so the bytes do not depend on
--workers.  Extra ground truth outside the AvaMERG schema (per-utterance shown
emotions, conflicts, leaks) goes to `synthetic_meta.json`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import time
from typing import Optional

import numpy as np

from input_pipeline import schema
from input_pipeline.synthetic import styles, text
from merg_jax.core.console import Progress

log = logging.getLogger(__name__)

META_FILE = "synthetic_meta.json"
AUDIO_DIR, VIDEO_DIR = "audio_v5_0", "video_v5_0"
LISTENER_INTENSITY = 0.8  # the listener mirrors the speaker's emotion, a little weaker
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class UtterancePlan:
    index: int
    role: str
    avatar_id: int
    text: str
    intensity: float
    leak: bool = False
    conflict: Optional[str] = None  # None | "audio" | "video"
    shown: Optional[str] = None  # emotion (or "noise") shown by the conflicting modality


@dataclasses.dataclass
class DialoguePlan:
    number: int
    conversation_id: str
    split: str
    emotion: str  # coarse
    label: str  # fine label written as speaker_emotion
    topic: str
    event: str
    speaker: int
    listener: int
    utterances: list[UtterancePlan]  # history utterances 0..2T-2 and the last reply 2T-1
    turns: list[dict]  # AvaMERG turn dicts (without dialogue_history text filled in yet)

    def media_name(self, u: UtterancePlan) -> str:
        return f"dia{self.number:05d}utt{u.index}_{u.avatar_id}"


def _split_sizes(n: int) -> tuple[int, int, int]:
    if n < 3:
        return n, 0, 0
    n_val = n_test = max(1, int(round(0.1 * n)))
    return n - n_val - n_test, n_val, n_test


def plan_corpus(num_dialogues: int, seed: int, conflict_rate: float = 0.0, text_leak: float = 0.0,
                test_chain_of_empathy: bool = True) -> list[DialoguePlan]:
    """Everything random except the media rendering; cheap, done in the parent process."""
    sizes = _split_sizes(num_dialogues)
    split_of = [s for s, k in zip(SPLITS, sizes) for _ in range(k)]
    top = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    emotions = [e for _ in range(0, num_dialogues, 7) for e in top.permutation(styles.EMOTIONS)]
    plans = []
    for i in range(num_dialogues):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
        emotion = str(emotions[i])
        label = str(rng.choice(styles.FINE_LABELS[emotion]))
        topic = str(rng.choice(schema.TOPICS))
        event = str(rng.choice(text.EVENTS[topic]))
        speaker, listener = (int(x) + 1 for x in rng.choice(len(styles.AVATARS), 2, replace=False))
        n_turns = int(rng.integers(2, 4))
        utts = [UtterancePlan(k, "speaker" if k % 2 == 0 else "listener", speaker if k % 2 == 0 else listener,
                              "", 1.0 if k % 2 == 0 else LISTENER_INTENSITY) for k in range(2 * n_turns)]
        plans.append(DialoguePlan(i, f"{i:05d}", split_of[i], emotion, label, topic, event, speaker, listener,
                                  utts, []))
    # Leaks and conflicts are drawn globally so their counts are exact: round(rate * N).
    history = [u for p in plans for u in p.utterances[:-1]]
    for j in top.choice(len(history), int(round(text_leak * len(history))), replace=False):
        history[j].leak = True
    media = [(p, u) for p in plans for u in p.utterances]
    for j in sorted(top.choice(len(media), int(round(conflict_rate * len(media))), replace=False)):
        p, u = media[j]
        u.conflict = "audio" if top.random() < 0.5 else "video"
        others = [e for e in styles.EMOTIONS if e != p.emotion]
        u.shown = "noise" if top.random() < 0.3 else str(top.choice(others))
    for p in plans:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, p.number]))
        for u in p.utterances[:-1]:
            u.text = text.history_utterance(u.index, p.event, rng, p.label if u.leak else None)
        for k in range(len(p.utterances) // 2):
            turn = {"turn_id": str(k + 1), "context": f"A conversation about {p.event}.",
                    "dialogue_history": [{"index": u.index, "role": u.role, "utterance": u.text}
                                         for u in p.utterances[:2 * k + 1]],
                    "response": text.response(p.emotion, p.label, p.event, rng),
                    "chain_of_empathy": text.chain_of_empathy(p.emotion, p.label, p.event, k, rng)}
            if p.split == "test" and not test_chain_of_empathy:
                del turn["chain_of_empathy"]  # as in the real AvaMERG test.json
            p.turns.append(turn)
        # The last reply is voiced too (a generation target).  Earlier replies are
        # NOT copied into later histories: there the listener's line stays a
        # neutral question, otherwise the history text would reveal the emotion.
        p.utterances[-1].text = p.turns[-1]["response"]
    return plans


def render_dialogue(job: tuple[DialoguePlan, str, int]) -> list[dict]:
    """Writes the wav and mp4 of every utterance of one dialogue; returns per-utterance facts."""
    import cv2  # imported here so that spawned workers stay single-threaded
    import soundfile as sf

    from input_pipeline.synthetic import face, voice

    cv2.setNumThreads(1)
    plan, out_dir, seed = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, plan.number]))
    facts = []
    for u in plan.utterances:
        avatar = styles.AVATAR_BY_ID[u.avatar_id]
        audio_emo = u.shown if u.conflict == "audio" else plan.emotion
        video_emo = u.shown if u.conflict == "video" else plan.emotion
        clip = voice.synthesize(u.text, avatar,
                                styles.voice_style(None if audio_emo == "noise" else audio_emo, u.intensity), rng)
        if audio_emo == "noise":
            clip = voice.noise_like(clip, rng)
        frames = face.render_clip(avatar, styles.face_style(None if video_emo == "noise" else video_emo, u.intensity),
                                  clip.envelope, voice.ENV_RATE, clip.duration, rng, noise=video_emo == "noise")
        name = plan.media_name(u)
        wav = os.path.join(AUDIO_DIR, name + ".wav")
        mp4 = os.path.join(VIDEO_DIR, name + ".mp4")
        sf.write(os.path.join(out_dir, wav), clip.samples, clip.sample_rate, subtype="PCM_16")
        face.write_mp4(os.path.join(out_dir, mp4), frames)
        facts.append({"conversation_id": plan.conversation_id, "split": plan.split, "index": u.index,
                      "role": u.role, "profile_id": u.avatar_id, "true_emotion": plan.emotion,
                      "audio_emotion": audio_emo, "video_emotion": video_emo, "conflict": u.conflict,
                      "intensity": u.intensity, "text_leak": u.leak, "audio_path": wav, "video_path": mp4,
                      "duration_s": round(clip.duration, 4), "num_frames": len(frames)})
    return facts


def conversation_json(p: DialoguePlan) -> dict:
    return {"conversation_id": p.conversation_id,
            "speaker_profile": styles.AVATAR_BY_ID[p.speaker].profile_json(),
            "listener_profile": styles.AVATAR_BY_ID[p.listener].profile_json(),
            "topic": p.topic, "turns": p.turns}


def generate_corpus(output_dir: str, num_dialogues: int, seed: int = 0, conflict_rate: float = 0.0,
                    text_leak: float = 0.0, workers: int = 1, test_chain_of_empathy: bool = True) -> dict:
    """Writes the corpus to output_dir; returns the sidecar metadata (also written as META_FILE)."""
    if num_dialogues < 1:
        raise ValueError("num_dialogues must be >= 1")
    for name, rate in (("conflict_rate", conflict_rate), ("text_leak", text_leak)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    start = time.time()
    for sub in (AUDIO_DIR, VIDEO_DIR):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    plans = plan_corpus(num_dialogues, seed, conflict_rate, text_leak, test_chain_of_empathy)
    jobs = [(p, output_dir, seed) for p in plans]
    facts: list[dict] = []
    with Progress("synthetic corpus", len(jobs), every=max(1, len(jobs) // 10), unit="dialogue") as bar:
        if workers > 1:
            # spawn, not fork: the caller (pytest, a trainer) may hold threads, e.g. JAX's.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for i, fs in enumerate(pool.imap(render_dialogue, jobs, chunksize=1), 1):
                    facts += fs
                    bar.update(i)
        else:
            for i, job in enumerate(jobs, 1):
                facts += render_dialogue(job)
                bar.update(i)
    for split in SPLITS:
        convs = [conversation_json(p) for p in plans if p.split == split]
        with open(os.path.join(output_dir, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(convs, f, ensure_ascii=False, indent=1)
    meta = {
        "generator": "merg-jax synthetic v1", "seed": seed, "num_dialogues": num_dialogues,
        "conflict_rate": conflict_rate, "text_leak": text_leak, "listener_intensity": LISTENER_INTENSITY,
        "num_utterances": len(facts), "num_conflicts": sum(f["conflict"] is not None for f in facts),
        "num_leaks": sum(f["text_leak"] for f in facts),
        "avatars": [dataclasses.asdict(a) for a in styles.AVATARS],
        "dialogues": [{"conversation_id": p.conversation_id, "split": p.split, "emotion": p.emotion,
                       "speaker_emotion": p.label, "topic": p.topic, "num_turns": len(p.turns)} for p in plans],
        "utterances": facts,
    }
    meta = json.loads(json.dumps(meta))  # plain JSON types (lists, not tuples): what the file holds
    with open(os.path.join(output_dir, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    log.info("synthetic corpus: %d dialogues, %d utterances (%d conflicts, %d leaks) in %s, %.1f s, %d workers",
             num_dialogues, len(facts), meta["num_conflicts"], meta["num_leaks"], output_dir,
             time.time() - start, workers)
    return meta
