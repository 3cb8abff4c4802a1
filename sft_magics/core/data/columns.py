"""Your data in sft_magics' terms: your columns (``columns``), a system prompt, a conversion function, applied to raw rows before the format is detected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .types import DataError, UnreadableRow, _one_line, _short, _type


def check_columns(columns: Any, key: str = "columns") -> None:
    """``columns``: a mapping of a target name (messages, prompt, completion, ...) to one of your columns."""
    from ..train.checks import refuse

    if columns is None:
        return
    if not isinstance(columns, Mapping):
        raise refuse(key, columns, "a mapping of target → your column, e.g. {prompt: question, completion: answer}")
    for target, column in columns.items():
        if target not in TARGET_COLUMNS:
            raise DataError(f"columns: unknown name '{target}' (use {', '.join(TARGET_COLUMNS)})")
        if not isinstance(column, str):
            raise DataError(f"columns: '{target}' must name one of your columns, got {_type(column)}")


TARGET_COLUMNS = ("messages", "prompt", "completion", "text", "tools", "user", "assistant")


def remap_rows(
    rows: list[Any],
    *,
    columns: Mapping[str, str] | None = None,
    system: str | None = None,
    convert: Any = None,
    where: str = "the data",
    start: int = 0,
) -> tuple[list[Any], list[str]]:
    """Your data in sft_magics' terms: ``convert(row)`` first (a dict row, or a list of messages),
    then ``columns`` (target -> your column; ``user``/``assistant`` make a two-turn conversation),
    then ``system`` prepended to every conversation. Returns the rows and a note of what was done.
    ``start`` is the source row number of ``rows[0]`` (rows come a chunk at a time), for errors."""
    check_columns(columns)
    columns = dict(columns or {})
    if convert is not None and not callable(convert):
        raise DataError(f"convert: expected a function row -> conversation, got {_type(convert)}")
    out = []
    for i, row in enumerate(rows, start):
        if isinstance(row, UnreadableRow):
            out.append(row)
            continue
        if convert is not None:
            try:
                row = convert(dict(row) if isinstance(row, Mapping) else row)
            except Exception as err:
                raise DataError(
                    f"{where}: row {i}: convert raised {type(err).__name__}: {_one_line(str(err))[:200]}"
                ) from None
            if isinstance(row, list):
                row = {"messages": row}
            if not isinstance(row, Mapping):
                raise DataError(
                    f"{where}: row {i}: convert returned {_type(row)}; expected a dict row or a list of messages"
                )
        if columns:
            missing = next((c for c in columns.values() if not isinstance(row, Mapping) or c not in row), None)
            if missing is not None:
                have = ", ".join(map(str, row)) if isinstance(row, Mapping) else _type(row)
                raise DataError(f"{where}: row {i}: no column '{missing}' (it has: {have}); fix columns:")
            picked = {target: row[column] for target, column in columns.items()}
            if "user" in picked or "assistant" in picked:
                turns = [{"role": r, "content": picked.pop(r)} for r in ("user", "assistant") if r in picked]
                picked["messages"] = turns
            row = picked
        if system:
            row = _with_system(dict(row), system)
        out.append(row)
    notes = []
    if convert is not None:
        notes.append(f"converted every row with {getattr(convert, '__name__', 'a function')}()")
    if columns:
        notes.append("columns: " + ", ".join(f"{t} ← {c}" for t, c in columns.items()))
    if system:
        notes.append(f"system prompt added: {_short(system)}")
    return out, notes


def _with_system(row: dict, system: str) -> dict:
    """A system message first: in a conversation, or turning prompt/completion strings into one."""
    message = {"role": "system", "content": system}
    if isinstance(row.get("messages"), list):
        msgs = row["messages"]
        row["messages"] = (
            msgs if msgs and isinstance(msgs[0], Mapping) and msgs[0].get("role") == "system" else [message, *msgs]
        )
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        row["prompt"] = [message, {"role": "user", "content": row["prompt"]}]
        row["completion"] = [{"role": "assistant", "content": row["completion"]}]
    elif isinstance(row.get("prompt"), list):
        row["prompt"] = [message, *row["prompt"]]
    return row
