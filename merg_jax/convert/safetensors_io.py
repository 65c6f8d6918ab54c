"""Minimal safetensors reader/writer on numpy memmaps.

Our own so that bfloat16 works without torch, tensors are read lazily (a
sharded load touches only the bytes a device needs), and every error names
the file and the tensor.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy view of one .safetensors file: `f[name]` is a read-only memmap."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except FileNotFoundError:
            raise
        except Exception as err:  # truncated or not a safetensors file
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._offset = 8 + n
        data_end = max((e["data_offsets"][1] for e in header.values()), default=0)
        size = os.path.getsize(path)
        if size < self._offset + data_end:  # otherwise numpy fails later without naming the file
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, the header needs "
                             f"{self._offset + data_end})")

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} is not in {self.path}")
        e = self._entries[name]
        if e["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        start, end = e["data_offsets"]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        shape = tuple(e["shape"])
        if (end - start) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{self.path}: tensor {name!r} byte size does not match shape {shape}")
        if self._offset + end > os.path.getsize(self.path):
            raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._offset + start, shape=shape)


class TensorDirectory(Mapping[str, np.ndarray]):
    """All tensors of an HF checkpoint directory (single file or sharded with an index)."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single):
            files, weight_map = ["model.safetensors"], None
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")
        self._files = {}
        for f in files:
            path = os.path.join(directory, f)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is listed in the index but missing")
            self._files[f] = SafetensorsFile(path)
        if weight_map is None:
            weight_map = {k: files[0] for k in self._files[files[0]].keys()}
        self._where = weight_map

    @property
    def files(self) -> list[str]:
        return [os.path.join(self.directory, f) for f in self._files]

    def file_of(self, name: str) -> str:
        """The file holding `name`, or for an absent tensor where it was looked for (for messages)."""
        if name in self._where:
            return os.path.join(self.directory, self._where[name])
        if len(self._files) == 1:
            return os.path.join(self.directory, next(iter(self._files)))
        return f"the checkpoint in {self.directory} (model.safetensors.index.json)"

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is missing from {', '.join(self.files)}")
        return self._files[self._where[name]][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """Writes tensors in safetensors layout (8-byte aligned header), atomically."""
    header, offset, arrays = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        nbytes = arr.nbytes
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        arrays.append(arr)
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for arr in arrays:
            fh.write(arr.tobytes())
    os.replace(tmp, path)
