"""Safetensors checkpoints through the `safetensors` package: lazy reads, errors that name the file.

`safe_open(..., framework="np")` memory-maps the file and reads one tensor at a time
(bfloat16 comes back as ml_dtypes.bfloat16), so a sharded load touches only the bytes a
device needs.  The wrappers add what every caller wants on top: the file and tensor named
in each error, a whole HF directory (single file or sharded with an index) as one mapping,
and atomic writes.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import numpy as np
import safetensors
import safetensors.numpy


class SafetensorsFile:
    """One .safetensors file: `f[name]` reads that tensor (numpy), nothing else."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        try:
            self._file = safetensors.safe_open(path, framework="np")
            self._keys = list(self._file.keys())
            self.metadata = self._file.metadata() or {}
        except Exception as err:  # truncated, or not a safetensors file at all
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(name).get_shape())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._keys:
            raise KeyError(f"tensor {name!r} is not in {self.path}")
        try:
            return self._file.get_tensor(name)
        except Exception as err:  # a dtype numpy lacks, or bytes past the end of a truncated file
            raise ValueError(f"{self.path}: tensor {name!r} could not be read ({err})") from err


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
    """Writes tensors as safetensors (metadata format=pt, as transformers expects), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    arrays = {name: np.ascontiguousarray(arr) for name, arr in tensors.items()}
    safetensors.numpy.save_file(arrays, tmp, metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, path)
