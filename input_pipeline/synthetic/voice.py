"""A small source-filter speech synthesizer that carries emotion in prosody.

Not speech in any language: a harmonic voice source following an f0 contour,
shaped by per-syllable vowel formants, with a syllable-like loudness envelope,
aspiration and consonant noise.  The emotion (a `styles.VoiceStyle`) sets the
pitch level, range and slope, tempo, loudness, spectral tilt, breathiness,
tremor, creak and attack; the avatar sets base pitch, formant scale and timbre,
so that the same emotion sounds alike across speakers and the same speaker is
recognisable across emotions.  Everything is drawn from the `rng` passed in,
so a clip is a pure function of its seed.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from scipy import signal

from input_pipeline.synthetic.styles import Avatar, VoiceStyle

SAMPLE_RATE = 16000
ENV_RATE = 100  # Hz, rate of the loudness envelope handed to the face renderer
_BASE_RMS = 0.06
# (F1, F2, F3) in Hz for an adult male vocal tract; scaled by the avatar.
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010],
                    [570, 840, 2410], [300, 870, 2240], [500, 1500, 2500]], dtype=float)
_FORMANT_GAIN = (1.0, 0.55, 0.3)
_FORMANT_BW = (90.0, 110.0, 160.0)


@dataclasses.dataclass
class SpeechClip:
    samples: np.ndarray  # float32 in [-1, 1]
    sample_rate: int
    envelope: np.ndarray  # loudness envelope in [0, 1] at ENV_RATE, drives the talking mouth

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def count_syllables(text: str) -> int:
    """Rough syllable count (vowel groups); sets how long the clip is."""
    return max(3, len(re.findall(r"[aeiouy]+", text.lower())))


def _timeline(n_text_syll: int, rate: float, rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """Syllable onsets and nucleus lengths; the speech part lasts 1.2-2.6 s whatever the text."""
    speech = float(np.clip(n_text_syll / rate, 1.2, 2.6))
    n = max(3, int(round(speech * rate)))
    lead, tail = rng.uniform(0.08, 0.16), rng.uniform(0.12, 0.2)
    period = speech / n
    onsets = lead + period * np.arange(n) + rng.uniform(-0.08, 0.08, n) * period
    lengths = period * rng.uniform(0.55, 0.75, n)
    return lead + speech + tail, onsets, lengths


def _f0_track(t: np.ndarray, dur: float, onsets: np.ndarray, lengths: np.ndarray, base: float,
              style: VoiceStyle, rng: np.random.Generator) -> np.ndarray:
    semis = style.slope_st * (t / dur - 0.5)
    stress = np.where(np.arange(len(onsets)) % 2 == 0, 1.0, 0.45) * rng.uniform(0.6, 1.0, len(onsets))
    for on, ln, s in zip(onsets, lengths, stress):
        centre, width = on + 0.5 * ln, 0.45 * ln
        semis = semis + style.range_st * s * np.exp(-0.5 * ((t - centre) / width) ** 2)
    semis = semis + style.tremor * 1.1 * np.sin(2 * np.pi * rng.uniform(6.0, 8.0) * t + rng.uniform(0, 6.3))
    drift = np.cumsum(rng.normal(0.0, 0.05, t.size))
    drift = np.convolve(drift - drift.mean(), np.ones(25) / 25, mode="same")
    return base * 2.0 ** ((semis + np.clip(drift, -0.6, 0.6)) / 12.0)


def _resonator_bank(x: np.ndarray, formants: np.ndarray, sr: int) -> np.ndarray:
    out = np.zeros_like(x)
    for f, g, bw in zip(formants, _FORMANT_GAIN, _FORMANT_BW):
        f = min(f, 0.45 * sr)
        b, a = signal.iirpeak(f, f / bw, fs=sr)
        out += g * signal.lfilter(b, a, x)
    return out


def _envelope(n: int, sr: int, onsets: np.ndarray, lengths: np.ndarray, attack: float,
              rng: np.random.Generator) -> np.ndarray:
    env = np.zeros(n)
    for k, (on, ln) in enumerate(zip(onsets, lengths)):
        i0, i1 = int(on * sr), min(n, int((on + ln) * sr))
        if i1 <= i0 + 4:
            continue
        m = i1 - i0
        a = max(2, min(int(attack * sr), m // 2))
        d = max(2, min(int(0.05 * sr), m - a))
        shape = np.ones(m)
        shape[:a] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a))
        shape[m - d:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, d))
        level = (1.0 if k % 2 == 0 else 0.75) * rng.uniform(0.85, 1.0)
        env[i0:i1] = np.maximum(env[i0:i1], level * shape)
    return env


def synthesize(text: str, avatar: Avatar, style: VoiceStyle, rng: np.random.Generator,
               sr: int = SAMPLE_RATE) -> SpeechClip:
    """Renders one utterance; its length follows the text and the emotion's tempo."""
    rate = style.rate * rng.uniform(0.93, 1.07)
    dur, onsets, lengths = _timeline(count_syllables(text), rate, rng)
    n = int(dur * sr)
    t = np.arange(n) / sr
    f0 = _f0_track(t, dur, onsets, lengths, avatar.f0 * style.f0_scale * rng.uniform(0.96, 1.04), style, rng)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    n_harm = int(min(48, 7600.0 / f0.max()))
    # Band-limited harmonic source; sin(k x) by the Chebyshev recurrence
    # sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x), far cheaper than k sines.
    two_cos = 2.0 * np.cos(phase)
    prev, cur = np.zeros(n), np.sin(phase)
    source = cur.copy()
    for k in range(2, n_harm + 1):
        prev, cur = cur, two_cos * cur - prev
        source += k ** -(avatar.tilt + style.tilt) * cur
    source *= 1.0 + 0.8 * style.creak * np.cos(0.5 * phase)  # period doubling: vocal fry
    source /= np.abs(source).max() + 1e-9

    # Each syllable gets a vowel; filtering the whole source once per vowel and
    # switching with the syllable masks is cheaper than filtering segments.
    vowels = rng.integers(0, len(_VOWELS), len(onsets))
    formant_scale = avatar.formant_scale * rng.uniform(0.98, 1.02)
    voiced = np.zeros(n)
    for v in np.unique(vowels):
        mask = np.zeros(n)
        for on, ln in zip(onsets[vowels == v], lengths[vowels == v]):
            mask[int(on * sr):int((on + ln) * sr) + 1] = 1.0
        voiced += mask * _resonator_bank(source, _VOWELS[v] * formant_scale, sr)
    env = _envelope(n, sr, onsets, lengths, style.attack, rng)
    if style.tremor > 0:
        env *= 1.0 + 0.35 * style.tremor * np.sin(2 * np.pi * 7.0 * t)
    voiced *= env
    voiced /= np.sqrt(np.mean(voiced[env > 0.1] ** 2)) + 1e-9

    noise = rng.normal(0.0, 1.0, n)
    hb, ha = signal.butter(2, 1000.0, btype="highpass", fs=sr)
    breath = signal.lfilter(hb, ha, noise) * style.breath * (0.15 + env) * 2.0
    fb, fa = signal.butter(2, [2500.0, 6500.0], btype="bandpass", fs=sr)
    hiss = signal.lfilter(fb, fa, rng.normal(0.0, 1.0, n))
    cons = np.zeros(n)
    for on in onsets[rng.random(len(onsets)) < 0.5]:
        i0, i1 = max(0, int((on - 0.05) * sr)), int(on * sr)
        cons[i0:i1] = np.hanning(i1 - i0) * 0.6 if i1 > i0 else 0.0
    out = voiced + breath + hiss * cons

    target = _BASE_RMS * 10 ** ((style.gain_db + rng.uniform(-1.0, 1.0)) / 20.0)
    out *= target / (np.sqrt(np.mean(out[env > 0.1] ** 2)) + 1e-9)
    if style.drive > 1.0:
        out = np.tanh(style.drive * out) / style.drive * (1.0 + 0.5 * (style.drive - 1.0))
    out += rng.normal(0.0, 5e-4, n)  # room noise floor: no digital silence
    hop = sr // ENV_RATE
    env_frames = env[: (n // hop) * hop].reshape(-1, hop).mean(axis=1)
    return SpeechClip(np.clip(out, -0.99, 0.99).astype(np.float32), sr, np.clip(env_frames, 0.0, 1.0))


def noise_like(clip: SpeechClip, rng: np.random.Generator) -> SpeechClip:
    """A clip of the same length with no voice (pinkish noise): the 'noise' conflict."""
    n = len(clip.samples)
    white = rng.normal(0.0, 1.0, n)
    b, a = signal.butter(1, 400.0, btype="lowpass", fs=clip.sample_rate)
    pink = 0.6 * signal.lfilter(b, a, white) * 4.0 + 0.4 * white
    pink *= 0.04 / (np.sqrt(np.mean(pink ** 2)) + 1e-9)
    return SpeechClip(np.clip(pink, -0.99, 0.99).astype(np.float32), clip.sample_rate, clip.envelope)
