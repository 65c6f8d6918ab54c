"""Shared pytest fixtures."""
from __future__ import annotations

import pytest

SYNTHETIC_DIALOGUES = 16
SYNTHETIC_SEED = 0


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> str:
    """A small synthetic AvaMERG-format corpus (16 dialogues, seed 0, no conflicts, no text leak),
    generated once per test session and shared by every test that needs real wav/mp4 files."""
    from input_pipeline.synthetic.corpus import generate_corpus

    out = tmp_path_factory.mktemp("synthetic_corpus")
    generate_corpus(str(out), SYNTHETIC_DIALOGUES, seed=SYNTHETIC_SEED, workers=1)
    return str(out)
