"""Typed records shared by every reader, the feature extractor and the Grain pipeline.

A reader turns a dataset on disk into `DialogueExample`s (one per response turn)
and reports every record it could not use as a `Rejection`, so that nothing is
dropped silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional

# The feature modalities every record carries (features/<m>, feature_mask/<m>).
MODALITIES = ("audio", "video", "text")

# The 7 coarse multimodal emotions of AvaMERG (Empatheia, appendix C.2).
AVAMERG_COARSE = ("happy", "surprised", "angry", "fear", "sad", "disgusted", "contempt")

# The 32 fine-grained EmpatheticDialogues emotions mapped onto the 7 coarse ones.
# The paper gives this mapping only as a figure (Fig. 10) that is not in the text
# we have; this table is ours, built by valence/arousal similarity.  It is data:
# change it here and every reader, metric and label id follows.
FINE_TO_COARSE: dict[str, str] = {
    # happy
    "excited": "happy", "proud": "happy", "grateful": "happy", "impressed": "happy",
    "hopeful": "happy", "confident": "happy", "joyful": "happy", "prepared": "happy",
    "content": "happy", "caring": "happy", "trusting": "happy", "faithful": "happy",
    "anticipating": "happy",
    # surprised
    "surprised": "surprised",
    # angry
    "angry": "angry", "furious": "angry",
    # contempt
    "annoyed": "contempt", "jealous": "contempt",
    # fear
    "afraid": "fear", "terrified": "fear", "anxious": "fear", "apprehensive": "fear",
    # sad
    "sad": "sad", "lonely": "sad", "guilty": "sad", "disappointed": "sad",
    "devastated": "sad", "embarrassed": "sad", "ashamed": "sad", "nostalgic": "sad",
    "sentimental": "sad",
    # disgusted
    "disgusted": "disgusted",
}
# Coarse names also accepted as labels (the synthetic corpus and some AvaMERG
# releases write the coarse label directly), plus common spellings.
COARSE_ALIASES: dict[str, str] = {
    **{c: c for c in AVAMERG_COARSE},
    "happiness": "happy", "joy": "happy", "surprise": "surprised", "anger": "angry",
    "fearful": "fear", "sadness": "sad", "disgust": "disgusted",
}

MELD_EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
MELD_TO_COARSE = {"anger": "angry", "disgust": "disgusted", "fear": "fear", "joy": "happy",
                  "neutral": "neutral", "sadness": "sad", "surprise": "surprised"}
MELD_SENTIMENTS = ("positive", "neutral", "negative")

TOPICS = (
    "Social Issues and Moral Dilemmas", "Achievements and Self-Realization",
    "Support and Comfort", "Emotions and Feelings", "Disappointments and Expectations",
    "Life Events", "Interpersonal Relationships", "Health and Well-being",
    "Uncertainty About the Future", "Personal Struggles and Challenges",
)


# Avatar profile vocabularies (AvaMERG, the AvaMERG paper appendix C.1: four age periods, binary
# gender, three vocal timbres; the synthetic avatars use the same values).  The batch
# arrays profile_age / profile_gender / profile_timbre hold the index into these tuples,
# -1 when the value is missing or not in the vocabulary.  Order is fixed: appending is
# safe, reordering changes every label id.
PROFILE_AGES = ("child", "young", "middle-aged", "elderly")
PROFILE_GENDERS = ("male", "female")
PROFILE_TIMBRES = ("low", "mid", "high")
PROFILE_VOCABS = {"age": PROFILE_AGES, "gender": PROFILE_GENDERS, "timbre": PROFILE_TIMBRES}
# Spellings seen in the wild mapped onto the vocabularies (keys already lower-cased,
# '_' and ' ' written as '-').
PROFILE_ALIASES = {
    "age": {"middle": "middle-aged", "middleaged": "middle-aged", "old": "elderly",
            "senior": "elderly", "kid": "child", "youth": "young"},
    "gender": {"m": "male", "f": "female", "man": "male", "woman": "female", "boy": "male",
               "girl": "female"},
    "timbre": {"medium": "mid", "middle": "mid"},
}

# MERIA's M-CoE annotation (the MERIA paper, section 3.3): (visual observation, emotion,
# confidence), (audio observation, emotion, confidence), plus the AvaMERG CoE (which
# records keep in chain_of_empathy).  A record's m_coe is {} or a dict with exactly
# these keys (string values, "" = not annotated); prompts.TEMPLATES["mcoe"] names them.
MCOE_FIELDS = ("visual_observation", "visual_emotion", "visual_confidence",
               "audio_observation", "audio_emotion", "audio_confidence")


def profile_label(field: str, value: str) -> int:
    """Index of a profile value ('age' | 'gender' | 'timbre') in PROFILE_VOCABS, -1 if unknown."""
    key = "-".join(str(value or "").strip().lower().replace("_", " ").split())
    vocab = PROFILE_VOCABS[field]
    key = PROFILE_ALIASES[field].get(key, key)
    return vocab.index(key) if key in vocab else -1


def speaker_id(dataset: str, profile_id: str) -> int:
    """Stable int32 id of a speaker: the first 31 bits of blake2b("<dataset>:<profile_id>"),
    -1 when the profile id is empty.  Equal ids = same speaker (the same avatar across
    dialogues and splits); the dataset name keeps the ID namespaces of datasets apart.
    It is a hash, not a dense index: compare ids, do not use them as embedding rows.
    (A collision needs ~2^15 distinct speakers to become likely; AvaMERG has far fewer.)"""
    pid = str(profile_id or "").strip()
    if not pid:
        return -1
    digest = hashlib.blake2b(f"{dataset}:{pid}".encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def coarse_emotion(label: str) -> str:
    """Maps a fine or coarse emotion label to the coarse set; KeyError if unknown."""
    key = label.strip().lower()
    if key in FINE_TO_COARSE:
        return FINE_TO_COARSE[key]
    if key in COARSE_ALIASES:
        return COARSE_ALIASES[key]
    if key in MELD_TO_COARSE:
        return MELD_TO_COARSE[key]
    raise KeyError(f"unknown emotion label {label!r}")


@dataclasses.dataclass(frozen=True)
class Profile:
    id: str
    age: str = ""
    gender: str = ""
    timbre: str = ""


@dataclasses.dataclass(frozen=True)
class Utterance:
    index: int
    role: str  # "speaker" / "listener" (AvaMERG) or the character name (MELD)
    text: str
    audio_path: Optional[str] = None  # None when the clip is missing on disk
    video_path: Optional[str] = None
    profile_id: Optional[str] = None
    # The emotion this utterance itself shows, when the data annotates it per utterance
    # (MELD's Emotion column; the synthetic corpus's true emotion), "" otherwise (AvaMERG
    # annotates the speaker's emotion per turn, not per utterance).
    emotion: str = ""


@dataclasses.dataclass(frozen=True)
class ChainOfEmpathy:
    speaker_emotion: str = ""
    event_scenario: str = ""
    emotion_cause: str = ""
    goal_to_response: str = ""


@dataclasses.dataclass(frozen=True)
class DialogueExample:
    """One training/evaluation example: a dialogue history and the turn's response."""
    dataset: str  # "avamerg" | "meld" | "synthetic"
    split: str
    conversation_id: str
    turn_id: str
    history: tuple[Utterance, ...]
    response: str
    emotion: str  # fine-grained label as written in the data
    emotion_coarse: str
    chain_of_empathy: Optional[ChainOfEmpathy] = None  # absent in AvaMERG test.json
    speaker_profile: Optional[Profile] = None
    listener_profile: Optional[Profile] = None
    topic: str = ""
    sentiment: str = ""  # MELD only
    # Who says the response ("listener" in AvaMERG, the next character in MELD) and
    # its own clips when the data has them (generation targets); "" / None otherwise.
    response_role: str = ""
    response_audio_path: Optional[str] = None
    response_video_path: Optional[str] = None
    # MERIA M-CoE annotation: None, or a dict with exactly the keys MCOE_FIELDS (str values,
    # "" = not annotated).  AvaMERG: a `m_coe` object in the JSON when a release carries one
    # (MERIA's own annotations are not public); synthetic: built from synthetic_meta.json's
    # per-modality truth (input_pipeline/synthetic/mcoe.py).
    m_coe: Optional[dict] = None

    @property
    def example_id(self) -> str:
        return f"{self.dataset}/{self.split}/{self.conversation_id}/{self.turn_id}"


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A record that could not be used, with the file it came from and why."""
    path: str
    reason: str
    record: str = ""  # conversation/utterance id when known

    def __str__(self) -> str:
        where = f"{self.path}" + (f" [{self.record}]" if self.record else "")
        return f"{where}: {self.reason}"
