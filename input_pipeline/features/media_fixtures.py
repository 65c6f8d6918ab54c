"""Small real media files with known content, for extractor tests and benchmarks.

Why here and not under tests/: the benchmark (bench/input_pipeline.py) times
the extractors on the same clips the tests check, and both need files whose
right answer is known by construction (a 200 Hz tone, a real face photo).
"""
from __future__ import annotations

import numpy as np


def harmonic_tone(f0: float, seconds: float, sr: int = 16000, amplitude: float = 0.3,
                  n_harmonics: int = 4) -> np.ndarray:
    """A voiced-like tone: f0 plus harmonics with 1/k amplitudes; float32 mono."""
    t = np.arange(int(round(seconds * sr))) / sr
    y = sum(amplitude / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, n_harmonics + 1))
    return np.asarray(y, np.float32)


def tone_bursts(f0: float, seconds: float, rate_hz: float, sr: int = 16000,
                amplitude: float = 0.3, duty: float = 0.5) -> np.ndarray:
    """`rate_hz` tone bursts per second (a syllable-rate stand-in) with silent gaps; 10 ms
    raised-cosine ramps so that the offsets make no click (a click is an onset too)."""
    y = harmonic_tone(f0, seconds, sr, amplitude)
    t = np.arange(y.size) / sr
    gate = (((t * rate_hz) % 1.0) < duty).astype(np.float32)
    ramp = int(0.01 * sr)
    kernel = np.hanning(2 * ramp + 1)
    gate = np.convolve(gate, kernel / kernel.sum(), mode="same")
    return (y * gate).astype(np.float32)


def write_wav(path: str, y: np.ndarray, sr: int = 16000) -> str:
    import soundfile as sf
    sf.write(path, y, sr)
    return path


def write_video(path: str, frames: list[np.ndarray], fps: float = 25.0) -> str:
    """BGR uint8 frames -> mp4 (OpenCV 'mp4v')."""
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def astronaut_bgr(side: int = 256) -> np.ndarray:
    """scikit-image's astronaut photograph (a real frontal face), BGR, resized."""
    import cv2
    from skimage import data
    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def face_video_frames(n: int = 50, side: int = 256, jitter: int = 3) -> list[np.ndarray]:
    """The astronaut photo shifted by a few pixels per frame (a talking-head stand-in)."""
    img = astronaut_bgr(side)
    return [np.roll(img, (i % (2 * jitter + 1)) - jitter, axis=1) for i in range(n)]


def blank_video_frames(n: int = 50, h: int = 240, w: int = 320, value: int = 128) -> list[np.ndarray]:
    return [np.full((h, w, 3), value, np.uint8) for _ in range(n)]


def write_av_mp4(path: str, y: np.ndarray, sr: int = 44100, frames: int = 25, side: int = 64) -> str:
    """An mp4 with a stereo AAC track carrying `y` and a black video (MELD-style clip); needs PyAV."""
    import av
    with av.open(path, "w") as container:
        vs = container.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = side, side, "yuv420p"
        astream = container.add_stream("aac", rate=sr)
        astream.layout = "stereo"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        stereo = np.stack([y, y]).astype(np.float32)
        for i in range(0, stereo.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, i:i + 1024]),
                                               format="fltp", layout="stereo")
            frame.sample_rate = sr
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    return path
