"""Registry of feature extractors, so new encoders plug in without touching the pipeline.

An extractor turns one input of its modality (a media path for audio/video, a
string for text) into named fixed-shape float arrays.  Bad input raises
`MediaError` with a reason; the pipeline records it and goes on.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

import numpy as np

from input_pipeline.schema import MODALITIES

__all__ = ["MODALITIES"]  # registry users read the modality names here


class MediaError(Exception):
    """An input that cannot be used (corrupt, silent, no face, empty ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Extractor(abc.ABC):
    """Base class; subclasses set `modality` and implement `output_spec` and `extract`."""

    modality: str = ""

    @abc.abstractmethod
    def output_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Feature name -> (shape, dtype) of what `extract` returns, for the manifest."""

    @abc.abstractmethod
    def extract(self, item: Any) -> dict[str, np.ndarray]:
        """One input -> named features; raises MediaError on bad input."""

    def extract_batch(self, items: Sequence[Any]) -> list[dict[str, np.ndarray] | MediaError]:
        """Batched form (text encoders override it); errors are returned, not raised."""
        out: list[dict[str, np.ndarray] | MediaError] = []
        for item in items:
            try:
                out.append(self.extract(item))
            except MediaError as err:
                out.append(err)
        return out

    def settings(self) -> dict[str, Any]:
        """Everything that determines the output, written to the manifest."""
        return {}


_REGISTRY: dict[str, Callable[..., Extractor]] = {}


def register(name: str):
    def deco(factory: Callable[..., Extractor]):
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory
    return deco


def create(name: str, **kwargs) -> Extractor:
    if name not in _REGISTRY:
        raise KeyError(f"unknown extractor {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def registered() -> list[str]:
    return sorted(_REGISTRY)
