"""Small file helpers every layer uses: atomic writes of text, JSON and JSON lines.

A reader (a resumed run, another host, a user's script) must never see half a file,
so each writer goes through a temporary file in the same directory and `os.replace`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable


def write_text(path: str, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically (parent directories are created)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """`obj` as JSON at `path`, atomically; values JSON cannot hold are written as str()."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str, ensure_ascii=False) + "\n")


def write_jsonl(path: str, rows: Iterable[Any]) -> None:
    """One JSON value per line, atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str) -> list[Any]:
    """The values of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
