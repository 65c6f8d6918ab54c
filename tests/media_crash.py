"""An audio extractor that kills its own process on chosen files, as a native decoder can.

Registered as "media_crash:crash_audio"; spawned extraction workers import this
module by that name (tests/ is on their sys.path, inherited from pytest).
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from input_pipeline.features import registry


@registry.register("crash_audio")
class CrashAudio(registry.Extractor):
    """Feature: the file's size.  A path containing `crash_on` dies with SIGSEGV every time;
    one containing `flaky_on` dies the first time only (a sibling ".crashed" file remembers);
    one containing `slow_on` takes 2 s, so that it is in flight when another clip crashes."""

    modality = "audio"

    def __init__(self, crash_on: str = "CRASH", flaky_on: str = "FLAKY", slow_on: str = "SLOW"):
        self.crash_on, self.flaky_on, self.slow_on = crash_on, flaky_on, slow_on

    def output_spec(self):
        return {"vector": ((1,), "float32")}

    def extract(self, path):
        if not os.path.exists(path):
            raise registry.MediaError(path, "missing file")
        first_time = not os.path.exists(path + ".crashed")
        if self.crash_on in path or (self.flaky_on in path and first_time):
            open(path + ".crashed", "w").close()
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.slow_on in path:
            time.sleep(2.0)
        return {"vector": np.array([os.path.getsize(path)], np.float32)}
