"""Typed records shared by every reader, the feature extractor and the Grain pipeline.

A reader turns a dataset on disk into `DialogueExample`s (one per response turn)
and reports every record it could not use as a `Rejection`, so that nothing is
dropped silently.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

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
