"""Loads the LLM's tokenizer (with its chat template) from a local path only.

Converting a GGUF's embedded tokenizer takes seconds, so the converted
tokenizer is cached under $MERG_JAX_CACHE (default ~/.cache/merg_jax), keyed by
the GGUF's path, size and mtime.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil

from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def cache_dir() -> str:
    return os.environ.get("MERG_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "merg_jax"))


def _gguf_tokenizer(path: str) -> PreTrainedTokenizerBase:
    st = os.stat(path)
    key = hashlib.sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = os.path.join(cache_dir(), "tokenizers", key)
    if os.path.exists(os.path.join(cached, "tokenizer_config.json")):
        try:
            return AutoTokenizer.from_pretrained(cached, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
            log.warning("tokenizer cache %s unreadable (%s); rebuilding", cached, err)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                        local_files_only=True)
    tmp = f"{cached}.tmp{os.getpid()}"
    try:
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)  # atomic; fails if another process filled the cache first
    except OSError as err:
        if not os.path.exists(cached):
            log.warning("could not cache the converted tokenizer in %s: %s", cached, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """`path` is an HF directory with tokenizer files or a `.gguf` file."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer source {path} does not exist")
    if path.endswith(".gguf"):
        tok = _gguf_tokenizer(path)
    else:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        # Padding positions are always masked out; any id works, EOS is the usual choice.
        tok.pad_token = tok.eos_token
    return tok
