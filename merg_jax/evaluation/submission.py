"""Prediction files: one JSONL row per generated turn, and the AvaMERG challenge submission.

Submission format (shared/notes/peers-and-datasets.md): a JSON list of
`{"conversation_id", "emotion", "turns": [{"turn_id", "response"}]}` with one
free-text emotion per conversation.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

from merg_jax.core.io import write_text

__all__ = ["PREDICTION_KEYS", "build_submission", "write_submission", "write_predictions_jsonl",
           "read_predictions_jsonl"]

PREDICTION_KEYS = ("conversation_id", "turn_id", "prompt", "generated_chain", "response",
                   "predicted_emotion", "gold_emotion", "gold_response")
_SUBMISSION_KEYS = ("conversation_id", "turn_id", "response", "predicted_emotion")


def _turn_key(turn_id: Any) -> tuple:
    """Numeric turn ids sort numerically ("2" < "10"), others as strings after them."""
    text = str(turn_id)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def build_submission(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Groups prediction rows by conversation into the challenge's submission list.

    Conversations keep the order of their first row; turns are sorted by turn_id
    (numerically when numeric).  The conversation's `emotion` is the prediction
    of its LAST turn that has one (the turn that has seen the most dialogue), ""
    when no turn has one.  Turn ids and conversation ids are written as given.
    A repeated (conversation_id, turn_id) raises ValueError.
    """
    convs: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
    for i, row in enumerate(rows):
        missing = [k for k in _SUBMISSION_KEYS if k not in row]
        if missing:
            raise KeyError(f"prediction row #{i} lacks {missing}")
        conv = convs.setdefault(str(row["conversation_id"]),
                                {"id": row["conversation_id"], "turns": {}})
        key = str(row["turn_id"])
        if key in conv["turns"]:
            raise ValueError(f"duplicate prediction for conversation {row['conversation_id']!r} "
                             f"turn {row['turn_id']!r} (row #{i})")
        conv["turns"][key] = row
    out = []
    for conv in convs.values():
        turns = [conv["turns"][k] for k in sorted(conv["turns"], key=_turn_key)]
        emotion = next((str(t["predicted_emotion"]) for t in reversed(turns)
                        if t.get("predicted_emotion")), "")
        out.append({"conversation_id": conv["id"], "emotion": emotion,
                    "turns": [{"turn_id": t["turn_id"], "response": t["response"] or ""}
                              for t in turns]})
    return out


def write_submission(path: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`build_submission(rows)` written as UTF-8 JSON (indent 2) to `path`; returns it."""
    sub = build_submission(rows)
    write_text(path, json.dumps(sub, ensure_ascii=False, indent=2) + "\n")
    return sub


def write_predictions_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line with at least PREDICTION_KEYS (None allowed; extra keys kept)."""
    lines = []
    for i, row in enumerate(rows):
        missing = [k for k in PREDICTION_KEYS if k not in row]
        if missing:
            raise KeyError(f"prediction row #{i} lacks {missing}")
        ordered = {k: row[k] for k in PREDICTION_KEYS}
        ordered.update({k: v for k, v in row.items() if k not in ordered})
        lines.append(json.dumps(ordered, ensure_ascii=False))
    write_text(path, "".join(line + "\n" for line in lines))


def read_predictions_jsonl(path: str) -> list[dict[str, Any]]:
    """Rows written by `write_predictions_jsonl`; errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{n}: invalid JSON ({err})") from None
            missing = [k for k in PREDICTION_KEYS if k not in row] if isinstance(row, dict) else ["(object)"]
            if missing:
                raise ValueError(f"{path}:{n}: prediction row lacks {missing}")
            rows.append(row)
    return rows
