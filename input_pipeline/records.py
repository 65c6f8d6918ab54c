"""Serialization of one example (strings, nested dicts, numpy arrays) to bytes.

ArrayRecord stores opaque bytes; we use msgpack with numpy arrays as
(dtype, shape, raw bytes) so records are self-describing, compact and need no
TensorFlow to read.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1  # msgpack ext type code


def _default(obj: Any):
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(_NDARRAY, msgpack.packb((arr.dtype.str, arr.shape, arr.tobytes())))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__} in a record")


def _ext_hook(code: int, data: bytes):
    if code != _NDARRAY:
        raise ValueError(f"unknown msgpack ext type {code} in record")
    dtype, shape, raw = msgpack.unpackb(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def encode(record: dict) -> bytes:
    return msgpack.packb(record, default=_default, use_bin_type=True)


def decode(data: bytes) -> dict:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
