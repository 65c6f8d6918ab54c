"""Classic prosodic + spectral audio descriptor per utterance clip (librosa / numpy).

Why classic features: they are cheap (hundreds of times real time on one core),
need no pretrained weights (none can be downloaded here) and carry exactly what
the affect literature uses for vocal emotion: pitch level and range, loudness,
voicing, speaking rate and spectral shape.  Everything is pooled into one
fixed-size vector per clip; an optional fixed-length frame sequence serves
models that want temporal structure.

Pitch uses our own vectorised YIN (de Cheveigné & Kawahara 2002) because it also
yields the aperiodicity we need for voicing, in ~5 ms for a 5 s clip, where
`librosa.pyin` takes seconds.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from input_pipeline.features.registry import Extractor, MediaError, register

# Stats pooled over a contour: mean, std and three percentiles.
_STATS = ("mean", "std", "p10", "p50", "p90")
_CONTOURS = ("f0_hz", "log2_f0", "rms_db", "centroid_hz", "rolloff_hz", "flatness",
             "zcr", "onset_env")
_SCALARS = ("duration_s", "log_duration", "voiced_frac", "onset_rate_hz", "rms_mean",
            "peak_abs", "f0_range_semitones", "delta_log2_f0_abs_mean")


def _load_mono(path: str, sr: int) -> np.ndarray:
    """Reads any soundfile format (PyAV for containers such as mp4), mono, resampled to `sr`."""
    if not os.path.exists(path):
        raise MediaError(path, "missing file")
    import soundfile as sf
    try:
        data, native_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as sf_err:  # noqa: BLE001 - not a soundfile format: try a container decoder
        data, native_sr = _load_with_av(path, sf_err)
    if data.size == 0:
        raise MediaError(path, "empty audio (0 samples)")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(y)):
        raise MediaError(path, "corrupt audio (non-finite samples)")
    if native_sr != sr:
        import librosa
        y = librosa.resample(y, orig_sr=native_sr, target_sr=sr, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def _load_with_av(path: str, first_err: Exception) -> tuple[np.ndarray, int]:
    try:
        import av  # optional: decodes audio tracks of mp4/mkv (MELD ships mp4 only)
    except ImportError:
        raise MediaError(path, f"unreadable audio ({type(first_err).__name__}: {first_err})") from None
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            stream = container.streams.audio[0]
            chunks, native_sr = [], stream.rate
            for frame in container.decode(stream):
                raw = frame.to_ndarray()
                arr = raw.astype(np.float32)
                if frame.format.is_planar:
                    arr = arr.T  # (channels, n) -> (n, channels)
                else:
                    arr = arr.reshape(-1, len(frame.layout.channels))
                if np.issubdtype(raw.dtype, np.integer):
                    arr /= float(np.iinfo(raw.dtype).max)
                chunks.append(arr)
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(path, f"unreadable audio ({type(err).__name__}: {err})") from err
    if not chunks:
        return np.zeros((0, 1), np.float32), native_sr
    return np.concatenate(chunks, axis=0), native_sr


def yin(frames: np.ndarray, sr: int, fmin: float, fmax: float,
        threshold: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch for framed audio [T, W] -> (f0 Hz [T], aperiodicity [T] in [0, ~1]).

    Difference function via FFT cross-correlation, cumulative-mean normalisation,
    first dip under `threshold` (else the global minimum), parabolic refinement.
    """
    frames = np.asarray(frames, np.float32)  # float32 FFTs: half the work, ample precision
    n_frames, width = frames.shape
    tau_min = max(1, int(np.floor(sr / fmax)))
    tau_max = min(width // 2, int(np.ceil(sr / fmin)))
    win = width - tau_max
    a = frames[:, :win]
    n_fft = 1 << int(np.ceil(np.log2(width + win)))
    cross = np.fft.irfft(np.conj(np.fft.rfft(a, n_fft)) * np.fft.rfft(frames, n_fft), n_fft)
    cross = cross[:, :tau_max + 1]
    sq = np.concatenate([np.zeros((n_frames, 1), frames.dtype), np.cumsum(frames ** 2, axis=1)], 1)
    taus = np.arange(tau_max + 1)
    energy_b = sq[:, taus + win] - sq[:, taus]  # sum_{j<win} x[j + tau]^2
    diff = np.maximum(energy_b[:, :1] + energy_b - 2.0 * cross, 0.0)
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    seg = cmnd[:, tau_min:tau_max + 1]
    # First local minimum below threshold; fallback: global minimum in range.
    left = np.concatenate([np.full((n_frames, 1), np.inf), seg[:, :-1]], 1)
    right = np.concatenate([seg[:, 1:], np.full((n_frames, 1), np.inf)], 1)
    cand = (seg < threshold) & (seg <= left) & (seg < right)
    has = cand.any(axis=1)
    idx = np.where(has, cand.argmax(axis=1), seg.argmin(axis=1))
    rows = np.arange(n_frames)
    aper = seg[rows, idx]
    # Parabolic interpolation around the chosen lag.
    lo = np.clip(idx - 1, 0, seg.shape[1] - 1)
    hi = np.clip(idx + 1, 0, seg.shape[1] - 1)
    y0, y1, y2 = seg[rows, lo], seg[rows, idx], seg[rows, hi]
    denom = y0 - 2 * y1 + y2
    shift = np.where((np.abs(denom) > 1e-12) & (lo < idx) & (hi > idx),
                     0.5 * (y0 - y2) / np.where(np.abs(denom) > 1e-12, denom, 1.0), 0.0)
    period = tau_min + idx + np.clip(shift, -1.0, 1.0)
    return (sr / period).astype(np.float32), aper.astype(np.float32)


def _stats(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return np.zeros(len(_STATS), np.float32)
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return np.array([x.mean(), x.std(), p10, p50, p90], np.float32)


def _resample_frames(seq: np.ndarray, length: int) -> np.ndarray:
    """[T, D] -> [length, D] by averaging over equal time bins (repeats frames if T < length)."""
    t = seq.shape[0]
    edges = np.linspace(0, t, length + 1)
    lo = np.minimum(np.floor(edges[:-1]).astype(int), t - 1)
    hi = np.maximum(np.ceil(edges[1:]).astype(int), lo + 1)
    csum = np.concatenate([np.zeros((1, seq.shape[1])), np.cumsum(seq, axis=0)], 0)
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


class ProsodyExtractor(Extractor):
    """librosa/numpy prosody + spectral statistics -> float32 vector (and optional frames)."""

    modality = "audio"

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 160,
                 n_mels: int = 40, n_mfcc: int = 13, fmin_f0: float = 60.0,
                 fmax_f0: float = 500.0, f0_frame_length: int = 1024, f0_hop_factor: int = 2,
                 yin_threshold: float = 0.15, voicing_threshold: float = 0.3,
                 silence_db: float = -60.0, min_duration_s: float = 0.25,
                 frame_length: int = 0):
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.n_mfcc = n_mfcc
        self.fmin_f0 = fmin_f0
        self.fmax_f0 = fmax_f0
        self.f0_frame_length = f0_frame_length
        self.f0_hop_factor = max(1, int(f0_hop_factor))
        self.yin_threshold = yin_threshold
        self.voicing_threshold = voicing_threshold
        self.silence_db = silence_db
        self.min_duration_s = min_duration_s
        self.frame_length = frame_length  # 0: no frame sequence
        self._mel_basis = None

    # -- spec ---------------------------------------------------------------
    def feature_names(self) -> list[str]:
        """Names of the vector's entries, in order (for inspection and tests)."""
        names = [f"{c}_{s}" for c in _CONTOURS for s in _STATS] + list(_SCALARS)
        names += [f"logmel{i}_{s}" for s in ("mean", "std") for i in range(self.n_mels)]
        names += [f"mfcc{i}_{s}" for s in ("mean", "std") for i in range(self.n_mfcc)]
        names += [f"dmfcc{i}_{s}" for s in ("mean", "std") for i in range(self.n_mfcc)]
        return names

    @property
    def frame_dim(self) -> int:
        return self.n_mels + 3  # log-mel, log2 f0 (0 when unvoiced), voiced flag, rms dB

    def output_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        spec = {"vector": ((len(self.feature_names()),), "float32")}
        if self.frame_length:
            spec["frames"] = ((self.frame_length, self.frame_dim), "float32")
        return spec

    def settings(self) -> dict[str, Any]:
        keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "n_mfcc", "fmin_f0", "fmax_f0",
                "f0_frame_length", "f0_hop_factor", "yin_threshold", "voicing_threshold", "silence_db",
                "min_duration_s", "frame_length")
        return {k: getattr(self, k) for k in keys}

    # -- extraction ---------------------------------------------------------
    def extract(self, item: Any) -> dict[str, np.ndarray]:
        path = str(item)
        y = _load_mono(path, self.sample_rate)
        return self.extract_waveform(y, path)

    def extract_waveform(self, y: np.ndarray, path: str = "<array>") -> dict[str, np.ndarray]:
        """Features of a mono waveform already at `sample_rate` (lets tests skip files)."""
        import librosa
        sr = self.sample_rate
        y = np.asarray(y, np.float32)
        duration = y.size / sr
        if y.size == 0:
            raise MediaError(path, "empty audio (0 samples)")
        if duration < self.min_duration_s:
            raise MediaError(path, f"too short ({duration:.3f} s < {self.min_duration_s} s)")
        spec = np.abs(librosa.stft(y, n_fft=self.n_fft, hop_length=self.hop_length,
                                   center=True)) ** 2  # power [F, T]
        rms = np.sqrt(np.maximum(spec.sum(axis=0) * 2.0 / (self.n_fft ** 2 * 0.375), 0.0))
        peak_db = 20 * np.log10(max(float(rms.max()), 1e-12))
        if peak_db < self.silence_db:
            raise MediaError(path, f"silent (loudest frame {peak_db:.1f} dBFS < {self.silence_db} dBFS)")
        rms_db = 20 * np.log10(np.maximum(rms, 1e-6))
        if self._mel_basis is None:
            self._mel_basis = librosa.filters.mel(sr=sr, n_fft=self.n_fft, n_mels=self.n_mels)
        mel_db = librosa.power_to_db(self._mel_basis @ spec, ref=1.0, top_db=None)  # absolute level
        mel_db = np.maximum(mel_db, -100.0)
        mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=self.n_mfcc)
        dmfcc = librosa.feature.delta(mfcc, width=9, mode="nearest")  # clips >= 9 frames
        mag = np.sqrt(spec)
        centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=self.n_fft)[0]
        rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=self.n_fft)[0]
        flatness = librosa.feature.spectral_flatness(S=mag)[0]
        zcr = librosa.feature.zero_crossing_rate(y, frame_length=self.n_fft,
                                                 hop_length=self.hop_length)[0]
        onset_env = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=self.hop_length)
        onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr,
                                            hop_length=self.hop_length, units="frames")
        # Pitch on its own (longer) frames, aligned to the same hop.
        pad = self.f0_frame_length // 2
        yp = np.pad(y, (pad, pad), mode="constant")
        if yp.size < self.f0_frame_length:
            yp = np.pad(yp, (0, self.f0_frame_length - yp.size))
        k = self.f0_hop_factor  # pitch every k spectral frames: halves the cost, 20 ms is plenty
        frames = librosa.util.frame(yp, frame_length=self.f0_frame_length,
                                    hop_length=self.hop_length * k, axis=0)
        f0, aper = yin(frames, sr, self.fmin_f0, self.fmax_f0, self.yin_threshold)
        rms_db_k = rms_db[::k]
        n = min(len(f0), len(rms_db_k))
        f0, aper = f0[:n], aper[:n]
        loud = rms_db_k[:n] > peak_db - 40.0  # ignore pauses when deciding voicing
        voiced = loud & (aper < self.voicing_threshold) & (f0 >= self.fmin_f0) & (f0 <= self.fmax_f0)
        f0_v = f0[voiced]
        log2_f0 = np.log2(f0_v) if f0_v.size else f0_v
        semis = 12 * (np.percentile(log2_f0, 95) - np.percentile(log2_f0, 5)) if f0_v.size > 1 else 0.0
        d_log2 = np.abs(np.diff(np.log2(np.where(voiced, f0, 1.0))))[voiced[1:] & voiced[:-1]]
        contours = {"f0_hz": f0_v, "log2_f0": log2_f0, "rms_db": rms_db, "centroid_hz": centroid,
                    "rolloff_hz": rolloff, "flatness": flatness, "zcr": zcr, "onset_env": onset_env}
        scalars = [duration, np.log(duration), voiced.mean() if n else 0.0, len(onsets) / duration,
                   float(rms.mean()), float(np.abs(y).max()), semis,
                   float(d_log2.mean()) if d_log2.size else 0.0]
        vector = np.concatenate(
            [_stats(contours[c]) for c in _CONTOURS] + [np.asarray(scalars, np.float32)]
            + [mel_db.mean(1), mel_db.std(1), mfcc.mean(1), mfcc.std(1), dmfcc.mean(1), dmfcc.std(1)]
        ).astype(np.float32)
        out = {"vector": vector}
        if self.frame_length:
            t = min(mel_db.shape[1], n * k)
            pitch = np.repeat(np.where(voiced, np.log2(np.maximum(f0, 1.0)), 0.0), k)[:t]
            seq = np.concatenate([mel_db[:, :t].T, pitch[:, None],
                                  np.repeat(voiced, k)[:t, None].astype(np.float32),
                                  rms_db[:t, None]], axis=1)
            out["frames"] = _resample_frames(seq, self.frame_length)
        return out


@register("librosa_prosody")
def _make_prosody(**kwargs) -> ProsodyExtractor:
    return ProsodyExtractor(**kwargs)
