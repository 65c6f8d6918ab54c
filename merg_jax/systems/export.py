"""A model as a Hugging Face directory (LoRA merged in) or as a PEFT adapter.

The engine of launch/export_hf.py, here so that other jobs (launch/demo.py) call
it as a library function.  `load_for_export` takes anything
`merg_jax.systems.workdir.load_model` understands: an HF directory, a .gguf file,
or a training workdir (its newest good checkpoint, or step / best).
"""
from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


class ExportError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def parse_size(text: str) -> int:
    """'2GB' -> 2e9 bytes (decimal units as HF; KiB/MiB/GiB binary); a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ExportError(f"--max_shard_size={text!r}: use a size like 2GB, 500MB, 4GiB or a byte count")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ExportError(f"--max_shard_size={text!r} must be positive")
    return size


def load_for_export(path: str, *, which: str = "response", step: int | None = None, best: bool = False):
    """(model, tokenizer or None).  Missing tokenizer files only warn: weights still export."""
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.systems.workdir import is_workdir, load_workdir

    if is_workdir(path):
        model, _, info = load_workdir(path, which=which, step=step, best=best, with_tokenizer=False)
        tok_source = info["tokenizer_path"]
    else:
        if step is not None or best:
            raise ExportError(f"--step/--best need a training workdir; {path} is not one")
        model, _ = load_pretrained(path, with_tokenizer=False)
        tok_source = os.path.abspath(os.path.expanduser(path))
    try:
        tokenizer = load_tokenizer(tok_source)
    except Exception as err:  # noqa: BLE001 - a checkpoint without tokenizer files is still exportable
        log.warning("no tokenizer found for %s (%s); exporting weights and config only", path, err)
        tokenizer = None
    return model, tokenizer


def default_base_name(path: str, which: str = "response") -> str:
    """What adapter_config.json records as the base: a workdir's base weights, else `path` itself."""
    from merg_jax.systems.workdir import base_path, is_workdir, read_config

    path = os.path.abspath(os.path.expanduser(path))
    if is_workdir(path):
        import ml_collections
        return base_path(ml_collections.ConfigDict(read_config(path)), which)
    return path


def export(model, tokenizer, output_dir: str, *, adapter_only: bool = False, dtype: str = "float32",
           max_shard_bytes: int = 2 * 10 ** 9, base_model_name_or_path: str = "") -> str:
    """Writes the merged HF directory or the PEFT adapter; returns the output directory."""
    from merg_jax.convert import lora
    from merg_jax.convert.hf import save_hf

    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    if adapter_only:
        if not lora.has_lora(model):
            raise ExportError("--adapter_only: the model has no LoRA adapters (a plain HF directory or "
                              "GGUF file carries none); export without --adapter_only instead")
        lora.save_peft(model, output_dir, base_model_name_or_path=base_model_name_or_path, dtype=dtype)
    else:
        save_hf(model, output_dir, tokenizer=tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return output_dir
