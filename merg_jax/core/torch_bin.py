"""Pickled PyTorch checkpoints (`pytorch_model.bin`) -> safetensors: the one place pickle is read.

Older HF directories (and `save_pretrained(safe_serialization=False)`) hold their weights
as a torch pickle.  Everything else in merg-jax reads safetensors only, so such a
directory is converted once: every `.bin` file is read with
`torch.load(map_location="cpu", weights_only=True)` (plain tensors only: no arbitrary
objects are unpickled, a file that needs them is refused) and written as safetensors
into a cache folder, which `tensor_directory` then opens.  The source directory is never
written to (it may be read-only or shared).  The cache folder is
`$MERG_CACHE_DIR/safetensors/<key>` (default `~/.cache/merg_jax`), keyed by the source's
absolute path, sizes and modification times, so a changed checkpoint converts again.
torch is needed for the conversion only (the `test` extra installs it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from merg_jax.core import io
from merg_jax.core.weights import TensorDirectory

log = logging.getLogger(__name__)

BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def has_safetensors(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, f)) for f in (SAFETENSORS, SAFETENSORS_INDEX))


def bin_files(directory: str) -> tuple[list[str], dict[str, str] | None]:
    """(the .bin files of `directory`, the index's weight map or None); ([], None) when it has none."""
    index = os.path.join(directory, BIN_INDEX)
    if os.path.exists(index):
        try:
            weight_map = io.read_json(index)["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not an HF weight index ({err})") from None
        return sorted(set(weight_map.values())), weight_map
    if os.path.exists(os.path.join(directory, BIN)):
        return [BIN], None
    return [], None


def cache_root() -> str:
    return os.path.join(os.environ.get("MERG_CACHE_DIR") or os.path.expanduser("~/.cache/merg_jax"), "safetensors")


def _key(directory: str, files: list[str]) -> str:
    h = hashlib.sha256(os.path.abspath(directory).encode())
    for f in files:
        st = os.stat(os.path.join(directory, f))
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _load(path: str) -> dict:
    """One pickled state dict, plain tensors only."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a pickled PyTorch checkpoint: converting it needs torch "
                          "(pip install torch==2.13.0), or re-save the model with safetensors "
                          "(save_pretrained(..., safe_serialization=True))") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, truncated zip, a non-tensor object: all one message
        raise ValueError(f"{path}: not a plain tensor state dict readable with torch.load(weights_only=True) "
                         f"({type(err).__name__}: {str(err)[:200]}); re-save the model with safetensors") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    # safetensors refuses tensors that share memory (tied weights) and non-contiguous views
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def convert(directory: str, out_dir: str) -> str:
    """Writes the .bin weights of `directory` as safetensors into `out_dir` (the index, or the
    single file, last: its presence marks a complete conversion); returns `out_dir`."""
    from safetensors.torch import save_file

    files, weight_map = bin_files(directory)
    if not files:
        raise FileNotFoundError(f"no {BIN} or {BIN_INDEX} in {directory}")
    os.makedirs(out_dir, exist_ok=True)
    renamed = {f: (SAFETENSORS if weight_map is None else f[:-len(".bin")] + ".safetensors") for f in files}
    for f in files:
        target = os.path.join(out_dir, renamed[f])
        tmp = f"{target}.tmp-{os.getpid()}"
        save_file(_load(os.path.join(directory, f)), tmp, metadata={"format": "pt"})
        os.replace(tmp, target)
    if weight_map is not None:
        io.write_json(os.path.join(out_dir, SAFETENSORS_INDEX),
                      {"metadata": {"converted_from": os.path.abspath(directory)},
                       "weight_map": {k: renamed[v] for k, v in weight_map.items()}})
    io.write_text(os.path.join(out_dir, "source.json"),
                  json.dumps({"source": os.path.abspath(directory), "files": files}) + "\n")
    return out_dir


def tensor_directory(directory: str) -> TensorDirectory:
    """The tensors of an HF directory: its safetensors, else its .bin files converted (once, cached)."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if has_safetensors(directory):
        return TensorDirectory(directory)
    files, _ = bin_files(directory)
    if not files:
        raise FileNotFoundError(f"no weights in {directory}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {BIN} "
                                f"or {BIN_INDEX} (an HF save_pretrained directory)")
    out = os.path.join(cache_root(), _key(directory, files))
    if not has_safetensors(out):
        log.info("converting %s (%s) to safetensors in %s", directory, ", ".join(files), out)
        convert(directory, out)
    return TensorDirectory(out)
