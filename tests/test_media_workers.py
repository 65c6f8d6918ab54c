"""Media decoding in worker processes: a decoder that kills its worker costs one clip."""
from __future__ import annotations

import os

import pytest

from input_pipeline import media_workers

SPEC = {"audio": ("media_crash:crash_audio", {})}


def _clips(tmp_path, names):
    paths = []
    for i, name in enumerate(names):
        p = str(tmp_path / name)
        with open(p, "wb") as fh:
            fh.write(b"x" * (100 + i))
        paths.append(p)
    return paths


def test_crashing_clip_is_rejected_and_the_rest_decoded(tmp_path):
    names = [f"clip{i:02d}.wav" for i in range(12)]
    names[5], names[8] = "clip05_CRASH.wav", "clip08_FLAKY.wav"
    paths = _clips(tmp_path, names)
    calls = []
    out = media_workers.extract_media({"audio": paths}, SPEC, workers=2, chunk_size=4,
                                      while_waiting=lambda: calls.append(1))
    assert calls == [1]  # the text encoder's slot runs once, not once per pool
    res = out["audio"]
    assert set(res) == set(paths)
    assert res[paths[5]] == ("error", media_workers.CRASH_REASON)
    assert os.path.exists(paths[8] + ".crashed")  # it did kill a worker once ...
    for i, p in enumerate(paths):  # ... and, like every clip but the crasher, has its value
        if i != 5:
            assert res[p]["vector"].tolist() == [100 + i], p


def test_clip_in_flight_with_a_crasher_is_not_blamed(tmp_path):
    # Two workers, a clip each: the slow clip is mid-decode when its neighbour kills the pool.
    paths = _clips(tmp_path, ["a_SLOW.wav", "b_CRASH.wav", "c.wav", "d.wav"])
    out = media_workers.extract_media({"audio": paths}, SPEC, workers=2, chunk_size=1)["audio"]
    assert [out[p] if isinstance(out[p], tuple) else out[p]["vector"].tolist() for p in paths] == [
        [100], ("error", media_workers.CRASH_REASON), [102], [103]]


def test_workers_that_cannot_start_fail_clearly(tmp_path):
    paths = _clips(tmp_path, ["a.wav"])
    with pytest.raises(RuntimeError, match="die before decoding anything"):
        media_workers.extract_media({"audio": paths}, {"audio": ("media_crash:no_such_extractor", {})},
                                    workers=2, chunk_size=1)


def test_plugin_extractor_by_module_path():
    ext = media_workers.make_extractor("media_crash:crash_audio", "audio", {"crash_on": "zzz"})
    assert type(ext).__name__ == "CrashAudio" and ext.crash_on == "zzz"
    with pytest.raises(ValueError, match="is for 'audio', not 'video'"):
        media_workers.make_extractor("media_crash:crash_audio", "video", {})
