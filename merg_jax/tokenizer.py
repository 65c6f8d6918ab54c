"""Loads the LLM's tokenizer (with its chat template) from a local path only."""
from __future__ import annotations

import functools
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """`path` is an HF directory with tokenizer files or a `.gguf` file."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer source {path} does not exist")
    if path.endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                            local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        # Padding positions are always masked out; any id works, EOS is the usual choice.
        tok.pad_token = tok.eos_token
    return tok
