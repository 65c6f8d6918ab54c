"""Audio and video extractors on media whose right answer is known by construction."""
from __future__ import annotations

import os

import numpy as np
import pytest

from input_pipeline.features import audio, registry, video
from input_pipeline.features import media_fixtures as mf

SR = 16000


@pytest.fixture(scope="module")
def prosody():
    return audio.ProsodyExtractor(frame_length=16)


def feats(ext, y) -> dict[str, float]:
    return dict(zip(ext.feature_names(), ext.extract_waveform(y)["vector"], strict=True))


def test_registered_and_spec_matches_output(prosody):
    assert "librosa_prosody" in registry.registered() and "opencv_face" in registry.registered()
    out = prosody.extract_waveform(mf.harmonic_tone(200, 1.0))
    for name, (shape, dtype) in prosody.output_spec().items():
        assert out[name].shape == shape and out[name].dtype == np.dtype(dtype)
    assert len(prosody.feature_names()) == out["vector"].shape[0]
    assert np.all(np.isfinite(out["vector"]))


@pytest.mark.parametrize("f0", [110.0, 200.0, 320.0])
def test_f0_of_harmonic_tone(prosody, f0):
    d = feats(prosody, mf.harmonic_tone(f0, 2.0))
    assert d["f0_hz_p50"] == pytest.approx(f0, rel=0.01)
    assert d["f0_hz_std"] < 1.0
    assert d["voiced_frac"] > 0.95
    assert d["f0_range_semitones"] < 0.2


def test_louder_clip_has_more_energy(prosody):
    quiet = feats(prosody, mf.harmonic_tone(200, 2.0, amplitude=0.05))
    loud = feats(prosody, mf.harmonic_tone(200, 2.0, amplitude=0.4))
    assert loud["rms_mean"] / quiet["rms_mean"] == pytest.approx(8.0, rel=0.05)
    assert loud["rms_db_p50"] - quiet["rms_db_p50"] == pytest.approx(20 * np.log10(8), abs=0.5)
    # RMS of sum of sines with amplitudes a/k: a * sqrt(sum 1/(2k^2)).
    expect = 0.4 * np.sqrt(sum(1 / (2 * k * k) for k in range(1, 5)))
    assert loud["rms_mean"] == pytest.approx(expect, rel=0.03)


def test_noise_is_unvoiced_and_flat(prosody):
    rng = np.random.default_rng(0)
    noise = feats(prosody, (0.1 * rng.standard_normal(2 * SR)).astype(np.float32))
    tone = feats(prosody, mf.harmonic_tone(200, 2.0))
    assert noise["voiced_frac"] < 0.1
    assert noise["flatness_mean"] > 100 * tone["flatness_mean"]


def test_onset_rate_tracks_burst_rate(prosody):
    slow = feats(prosody, mf.tone_bursts(200, 5.0, rate_hz=2.0))
    fast = feats(prosody, mf.tone_bursts(200, 5.0, rate_hz=5.0))
    assert slow["onset_rate_hz"] == pytest.approx(2.0, abs=0.5)
    assert fast["onset_rate_hz"] == pytest.approx(5.0, abs=0.8)
    # Gaps are silent: only the bursts (half the time, plus the 64 ms pitch window's
    # overlap with each edge) count as voiced.
    assert 0.45 < slow["voiced_frac"] < 0.65 and 0.45 < fast["voiced_frac"] < 0.75


def test_frame_sequence(prosody):
    out = prosody.extract_waveform(mf.harmonic_tone(200, 2.0))
    frames = out["frames"]
    assert frames.shape == (16, prosody.frame_dim)
    log2_f0, voiced = frames[:, -3], frames[:, -2]
    assert np.all(voiced[1:-1] > 0.9)
    assert np.allclose(log2_f0[1:-1], np.log2(200), atol=0.02)


def test_file_stereo_44k_resampled(tmp_path, prosody):
    import librosa
    y = librosa.resample(mf.harmonic_tone(150, 2.0), orig_sr=SR, target_sr=44100)
    path = mf.write_wav(str(tmp_path / "s.wav"), np.stack([y, y], axis=1), 44100)
    d = dict(zip(prosody.feature_names(), prosody.extract(path)["vector"], strict=True))
    assert d["f0_hz_p50"] == pytest.approx(150, rel=0.01)
    assert d["duration_s"] == pytest.approx(2.0, abs=0.01)


def test_audio_track_of_mp4(tmp_path, prosody):
    pytest.importorskip("av")  # MELD ships mp4 only: its audio comes out of the container
    path = mf.write_av_mp4(str(tmp_path / "clip.mp4"), mf.harmonic_tone(180, 2.0, sr=44100))
    d = dict(zip(prosody.feature_names(), prosody.extract(path)["vector"], strict=True))
    assert d["f0_hz_p50"] == pytest.approx(180, rel=0.01)
    assert d["duration_s"] == pytest.approx(2.0, abs=0.1)  # AAC adds priming samples


def test_bad_audio_raises_media_error(tmp_path, prosody):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4000))
    silent = mf.write_wav(str(tmp_path / "silent.wav"), np.zeros(2 * SR, np.float32))
    short = mf.write_wav(str(tmp_path / "short.wav"), mf.harmonic_tone(200, 0.1))
    empty = mf.write_wav(str(tmp_path / "empty.wav"), np.zeros(0, np.float32))
    cases = {str(corrupt): "unreadable audio", silent: "silent", short: "too short",
             empty: "empty audio", str(tmp_path / "nope.wav"): "missing file"}
    for path, reason in cases.items():
        with pytest.raises(registry.MediaError) as err:
            prosody.extract(path)
        assert err.value.reason.startswith(reason), (path, err.value.reason)
        assert err.value.path == path


def test_lbp_histogram_hand_values():
    flat = np.full((10, 10), 7, np.uint8)
    h = video.lbp_histogram(flat)  # every neighbour >= centre: code 255 -> 8 ones
    assert h[8] == 1.0 and h.sum() == pytest.approx(1.0)
    peak = np.zeros((3, 3), np.uint8)
    peak[1, 1] = 9  # centre above all neighbours: code 0
    assert video.lbp_histogram(peak)[0] == 1.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    return {
        "face": mf.write_video(str(d / "face.mp4"), mf.face_video_frames(50)),
        "blank": mf.write_video(str(d / "blank.mp4"), mf.blank_video_frames(30)),
        "static_face": mf.write_video(str(d / "static.mp4"), mf.face_video_frames(30, jitter=0)),
        "corrupt": str(d / "corrupt.mp4"), "missing": str(d / "missing.mp4"),
    }


@pytest.fixture(scope="module")
def face_ext():
    return video.FaceDescriptorExtractor(num_frames=6, detect_stride=1)


def vfeats(ext, path) -> dict[str, float]:
    return dict(zip(ext.feature_names(), ext.extract(path)["vector"], strict=True))


def test_face_found_in_every_frame(face_ext, clips):
    out = face_ext.extract(clips["face"])["vector"]
    assert out.shape == face_ext.output_spec()["vector"][0] and np.all(np.isfinite(out))
    d = dict(zip(face_ext.feature_names(), out, strict=True))
    assert d["face_found_frac"] == 1.0
    assert d["n_frames_used"] == 6
    # The astronaut's face is left of centre in the upper half of the photo.
    assert 0.35 < d["face_cx_mean"] < 0.55 and 0.15 < d["face_cy_mean"] < 0.35
    assert 0.12 < d["face_w_mean"] < 0.3


def test_blank_video_falls_back_to_centre_crop(face_ext, clips):
    d = vfeats(face_ext, clips["blank"])
    assert d["face_found_frac"] == 0.0
    assert d["face_cx_mean"] == pytest.approx(0.5, abs=0.01)
    assert d["face_w_mean"] == pytest.approx(0.6 * 240 / 320, abs=0.01)
    assert d["motion_frame_mean"] == 0.0
    assert d["grid0_mean"] == pytest.approx(128 / 255, abs=0.02)  # mp4 / YUV rounding


def test_motion_energy_orders_static_and_moving(face_ext, clips):
    static = vfeats(face_ext, clips["static_face"])
    moving = vfeats(face_ext, clips["face"])
    assert static["motion_frame_mean"] < 0.003
    assert moving["motion_frame_mean"] > 3 * static["motion_frame_mean"] + 0.003


def test_detect_stride_keeps_found_fraction(clips):
    ext = video.FaceDescriptorExtractor(num_frames=8, detect_stride=2)
    d = vfeats(ext, clips["face"])
    assert d["face_found_frac"] == 1.0 and d["n_frames_used"] == 8


def test_bad_video_raises_media_error(face_ext, clips):
    with open(clips["corrupt"], "wb") as fh:
        fh.write(np.random.default_rng(2).bytes(5000))
    for key, reason in (("corrupt", "unreadable video"), ("missing", "missing file")):
        with pytest.raises(registry.MediaError) as err:
            face_ext.extract(clips[key])
        assert err.value.reason.startswith(reason)
    assert os.path.exists(clips["corrupt"])
