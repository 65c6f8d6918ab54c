"""M-CoE annotations of the synthetic corpus, from its known per-modality truth.

MERIA (the MERIA paper, section 3.3) fine-tunes its M-CoE LLM on hand-checked annotations
(visual observation, emotion, confidence), (audio observation, emotion, confidence)
plus the AvaMERG chain of empathy; those annotations are not public.  For the
synthetic corpus we know exactly what each clip shows (`synthetic_meta.json`:
`audio_emotion`, `video_emotion`, `conflict`, `true_emotion` per utterance), so we
write the annotation from that truth.  Everything below -- the observation
sentences, the confidence rule, the "unclear" emotion of a noise clip -- is OURS:

* Which utterance: the dialogue history's LAST SPEAKER utterance (the one the
  response answers).  MERIA builds one M-CoE per dialogue because audio/video
  vary little across turns; per turn is the same thing here except when that
  utterance's clip is a planned conflict.
* emotion: the emotion the modality SHOWS (`video_emotion` / `audio_emotion`), so
  a conflicting clip's shown emotion is what the annotation says; a noise clip
  shows none and is written "unclear".
* confidence: "high" when the modality shows the speaker's true emotion, "low"
  when it conflicts with it (another emotion, or noise): how far this modality
  should be trusted as evidence of how the speaker feels, which is what MERIA's
  uncertainty-gated fusion and conflict signal are meant to learn.
* observation: one templated sentence naming the cues the renderer draws for
  that emotion (styles.FACE / styles.VOICE), without naming the emotion.
"""
from __future__ import annotations

from typing import Optional

from input_pipeline import schema

NOISE = "noise"  # what synthetic_meta.json writes for a clip that shows no emotion
UNCLEAR = "unclear"  # the annotation's emotion for such a clip
HIGH, LOW = "high", "low"

# The cues face.py draws for each emotion (styles.FACE), as an annotator would describe them.
VISUAL_OBSERVATIONS = {
    "happy": "the speaker is smiling broadly, showing teeth, with relaxed narrowed eyes",
    "surprised": "the speaker's eyes are wide open, the brows raised high and the mouth "
                 "dropped open",
    "angry": "the speaker's brows are lowered and pulled together, the face is flushed and "
             "the teeth are bared",
    "fear": "the speaker's eyes are wide, the inner brows raised, the mouth stretched open "
            "and the head trembles",
    "sad": "the corners of the speaker's mouth turn down, the inner brows are raised and "
           "the eyes are half closed",
    "disgusted": "the speaker wrinkles the nose, raises the upper lip and lowers the brows",
    "contempt": "one corner of the speaker's mouth is raised in a one-sided smirk",
    NOISE: "the speaker's face cannot be made out: the video is covered in noise",
}
# The cues voice.py synthesizes for each emotion (styles.VOICE).
AUDIO_OBSERVATIONS = {
    "happy": "the voice is bright and lively, with a raised pitch and a lilting melody",
    "surprised": "the pitch jumps high and rises steeply towards the end",
    "angry": "the voice is loud, fast and strained, with hard attacks and a falling pitch",
    "fear": "the voice is fast, breathy and trembling, with a raised pitch",
    "sad": "the voice is very quiet, slow and low-pitched, falling towards the end",
    "disgusted": "the voice is low, creaky and falling",
    "contempt": "the voice is quiet, flat and slightly falling",
    NOISE: "no voice can be heard: the audio is only noise",
}


def annotation(fact: dict) -> dict:
    """One utterance's synthetic_meta.json entry -> m_coe (keys schema.MCOE_FIELDS)."""
    true = fact["true_emotion"]
    out = {}
    for prefix, key, table in (("visual", "video_emotion", VISUAL_OBSERVATIONS),
                               ("audio", "audio_emotion", AUDIO_OBSERVATIONS)):
        shown = fact[key]
        out[f"{prefix}_observation"] = table[shown]
        out[f"{prefix}_emotion"] = UNCLEAR if shown == NOISE else shown
        out[f"{prefix}_confidence"] = HIGH if shown == true else LOW
    return {k: out[k] for k in schema.MCOE_FIELDS}


def last_speaker_fact(history: list[tuple[int, str]], facts: dict[int, dict]) -> Optional[dict]:
    """The meta entry of the last history utterance whose role is 'speaker'.
    `history`: (utterance index, role) in order; `facts`: index -> meta entry."""
    for index, role in reversed(history):
        if role.lower() == "speaker":
            return facts.get(index)
    return None
