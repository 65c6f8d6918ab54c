"""Avatars and the emotion -> voice / face parameter tables of the synthetic corpus.

Everything that decides how an emotion or an identity looks and sounds lives
here as data, so the voice and face renderers stay generic and the tables can
be printed in a report.  Emotion cues are deliberately redundant (several
identity-independent cues per class: tempo, loudness, pitch range, tremor,
creak, breathiness; mouth, brows, eyes) so that a classifier on audio or video
features can separate the 7 classes whoever the avatar is.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, TypeVar

from input_pipeline import schema

AGES = ("child", "young", "middle-aged", "elderly")
GENDERS = ("male", "female")
TIMBRES = ("high", "mid", "low")


@dataclasses.dataclass(frozen=True)
class Avatar:
    """One member of the fixed avatar pool: profile labels plus look and voice."""
    id: int
    age: str
    gender: str
    timbre: str
    f0: float  # base pitch in Hz
    formant_scale: float  # vocal tract length proxy (>1: shorter tract, higher formants)
    tilt: float  # spectral tilt of the voice source (higher: darker timbre)
    skin: tuple[int, int, int]  # BGR
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    shirt: tuple[int, int, int]
    face_scale: float

    def profile_json(self) -> dict:
        return {"age": self.age, "gender": self.gender, "timbre": self.timbre, "ID": self.id}


_BASE_F0 = {  # (age, gender) -> Hz
    ("child", "male"): 255.0, ("child", "female"): 270.0,
    ("young", "male"): 120.0, ("young", "female"): 210.0,
    ("middle-aged", "male"): 110.0, ("middle-aged", "female"): 195.0,
    ("elderly", "male"): 105.0, ("elderly", "female"): 180.0,
}
_TIMBRE_F0 = {"high": 1.15, "mid": 1.0, "low": 0.87}
_TIMBRE_TILT = {"high": 0.9, "mid": 1.1, "low": 1.3}
_SKINS = ((175, 200, 235), (150, 180, 220), (120, 160, 205), (100, 140, 180), (75, 110, 160), (60, 85, 125))
_HAIRS = ((30, 30, 35), (30, 50, 90), (60, 120, 190), (35, 45, 140))
_GREY = ((190, 190, 195), (150, 150, 155))
_BACKGROUNDS = ((70, 35, 20), (30, 55, 25), (30, 30, 75), (65, 30, 55), (60, 55, 20), (42, 42, 42))  # dark: Haar needs the contrast
_SHIRTS = ((150, 60, 40), (40, 120, 60), (60, 60, 150), (120, 120, 40), (100, 40, 110), (50, 100, 140))


def _make_avatars() -> tuple[Avatar, ...]:
    out = []
    for i, (age, gender, timbre) in enumerate(
            (a, g, t) for a in AGES for g in GENDERS for t in TIMBRES):
        avatar_id = i + 1
        hair = _GREY[i % 2] if age == "elderly" else _HAIRS[(i * 3) % len(_HAIRS)]
        out.append(Avatar(
            id=avatar_id, age=age, gender=gender, timbre=timbre,
            f0=_BASE_F0[(age, gender)] * _TIMBRE_F0[timbre],
            formant_scale={"child": 1.22}.get(age, 1.12 if gender == "female" else 1.0),
            tilt=_TIMBRE_TILT[timbre] + (0.15 if age == "elderly" else 0.0),
            skin=_SKINS[(i * 5) % len(_SKINS)], hair=hair,
            background=_BACKGROUNDS[(i * 7) % len(_BACKGROUNDS)],
            shirt=_SHIRTS[(i * 11) % len(_SHIRTS)],
            face_scale={"child": 0.86, "elderly": 0.97}.get(age, 1.0),
        ))
    return tuple(out)


# 4 ages x 2 genders x 3 timbres = 24 avatars with stable IDs 1..24.
AVATARS: tuple[Avatar, ...] = _make_avatars()
AVATAR_BY_ID = {a.id: a for a in AVATARS}

EMOTIONS = schema.AVAMERG_COARSE
FINE_LABELS: dict[str, tuple[str, ...]] = {
    c: tuple(sorted(f for f, cc in schema.FINE_TO_COARSE.items() if cc == c)) for c in EMOTIONS}


@dataclasses.dataclass(frozen=True)
class VoiceStyle:
    f0_scale: float  # multiplies the avatar's base f0
    range_st: float  # pitch accent excursion, semitones
    slope_st: float  # pitch change over the utterance, semitones (+ rising)
    rate: float  # syllables per second
    gain_db: float  # loudness relative to a neutral voice
    tilt: float  # added to the avatar's source tilt (negative: brighter / pressed)
    breath: float  # aspiration noise relative to the voiced part
    tremor: float  # depth of a 6-8 Hz pitch/amplitude tremor (0..1)
    creak: float  # sub-harmonic (vocal fry) amount (0..1)
    attack: float  # syllable onset time in seconds (short: hard attacks)
    drive: float  # soft-clipping drive (>1: strained voice)


@dataclasses.dataclass(frozen=True)
class FaceStyle:
    mouth_curve: float  # +1 smile .. -1 frown
    mouth_open: float  # resting openness 0..1
    mouth_width: float  # relative width
    brow_raise: float  # -1 lowered .. +1 raised
    brow_tilt: float  # +1 inner ends up (sad/fear) .. -1 inner ends down (anger)
    eye_open: float  # 0.5 squint .. 1.5 wide
    asym: float  # one-sided mouth-corner raise (contempt)
    wrinkle: float  # nose wrinkle + raised upper lip (disgust)
    flush: float  # reddening of the face (anger)
    tremble: float  # per-frame head jitter in pixels
    teeth: float  # visible teeth (0..1)


VOICE: dict[str, VoiceStyle] = {
    "happy":     VoiceStyle(1.22, 6.0, 1.0, 4.6, 2.0, -0.15, 0.04, 0.0, 0.0, 0.03, 1.0),
    "surprised": VoiceStyle(1.40, 9.0, 6.0, 3.8, 3.0, -0.10, 0.12, 0.0, 0.0, 0.02, 1.0),
    "angry":     VoiceStyle(1.10, 3.5, -2.5, 5.4, 8.0, -0.45, 0.02, 0.0, 0.0, 0.008, 2.5),
    "fear":      VoiceStyle(1.30, 1.5, 0.5, 6.6, -3.0, 0.05, 0.30, 1.0, 0.0, 0.02, 1.0),
    "sad":       VoiceStyle(0.86, 1.2, -3.0, 2.2, -10.0, 0.45, 0.15, 0.0, 0.0, 0.09, 1.0),
    "disgusted": VoiceStyle(0.90, 3.0, -4.0, 3.0, -2.0, 0.15, 0.06, 0.0, 0.8, 0.06, 1.3),
    "contempt":  VoiceStyle(0.97, 2.5, -1.0, 3.6, -5.5, 0.25, 0.03, 0.0, 0.0, 0.05, 1.0),
}
NEUTRAL_VOICE = VoiceStyle(1.0, 2.5, -1.0, 4.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.04, 1.0)

FACE: dict[str, FaceStyle] = {
    "happy":     FaceStyle(1.0, 0.30, 1.15, 0.15, 0.0, 0.70, 0.0, 0.0, 0.0, 0.0, 1.0),
    "surprised": FaceStyle(0.0, 0.95, 0.72, 1.00, 0.1, 1.45, 0.0, 0.0, 0.0, 0.0, 0.0),
    "angry":     FaceStyle(-0.35, 0.15, 1.00, -0.9, -1.0, 1.05, 0.0, 0.0, 0.45, 0.0, 1.0),
    "fear":      FaceStyle(-0.30, 0.55, 1.25, 0.75, 0.9, 1.40, 0.0, 0.0, 0.0, 1.2, 0.5),
    "sad":       FaceStyle(-0.95, 0.02, 0.95, -0.1, 1.0, 0.60, 0.0, 0.0, 0.0, 0.0, 0.0),
    "disgusted": FaceStyle(-0.55, 0.20, 0.90, -0.6, -0.4, 0.55, 0.0, 1.0, 0.0, 0.0, 0.6),
    "contempt":  FaceStyle(0.0, 0.00, 1.00, 0.10, 0.0, 0.80, 1.0, 0.0, 0.0, 0.0, 0.0),
}
NEUTRAL_FACE = FaceStyle(0.0, 0.05, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


_Style = TypeVar("_Style", "VoiceStyle", "FaceStyle")


def blend(neutral: _Style, styled: _Style, intensity: float) -> _Style:
    """Interpolates every field of a style dataclass between neutral (0) and the emotion (1)."""
    vals = {f.name: getattr(neutral, f.name) + intensity * (getattr(styled, f.name) - getattr(neutral, f.name))
            for f in dataclasses.fields(styled)}
    return type(styled)(**vals)


def voice_style(emotion: Optional[str], intensity: float = 1.0) -> VoiceStyle:
    return NEUTRAL_VOICE if emotion is None else blend(NEUTRAL_VOICE, VOICE[emotion], intensity)


def face_style(emotion: Optional[str], intensity: float = 1.0) -> FaceStyle:
    return NEUTRAL_FACE if emotion is None else blend(NEUTRAL_FACE, FACE[emotion], intensity)


def parameter_table() -> str:
    """The emotion tables as markdown, for reports and docs."""
    lines = []
    for name, table in (("voice", VOICE), ("face", FACE)):
        fields = [f.name for f in dataclasses.fields(next(iter(table.values())))]
        lines.append(f"| {name} | " + " | ".join(fields) + " |")
        lines.append("|---" * (len(fields) + 1) + "|")
        for emo, st in table.items():
            lines.append(f"| {emo} | " + " | ".join(f"{getattr(st, f):g}" for f in fields) + " |")
        lines.append("")
    return "\n".join(lines)
