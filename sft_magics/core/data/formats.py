"""What each source format means: the row-by-row validation (every problem named by row, field
and rule) and the converters from each source format (messages, ShareGPT, Alpaca, prompt/completion,
text) to TRL's formats. :func:`normalize` is the entry point; :mod:`core.data` calls it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .types import (
    FORMAT_COLUMNS,
    OPTIONAL_MESSAGE_KEYS,
    ROLES,
    SHAREGPT_ROLES,
    SOURCE_FORMATS,
    DataError,
    RowProblem,
    UnreadableRow,
    _keys_of,
    _short,
    _type,
)

# --------------------------------------------------------------------------- validation


@dataclass
class _Tally:
    """What the converters did, turned into notes afterwards."""

    dropped_columns: dict[str, None] = field(default_factory=dict)
    dropped_message_keys: dict[str, None] = field(default_factory=dict)
    role_map: dict[str, str] = field(default_factory=dict)
    from_conversations: int = 0
    system_column: int = 0
    with_input: int = 0
    tools: int = 0


def _check_messages(
    value: Any,
    field: str,
    row: int,
    problems: list[RowProblem],
    tally: _Tally,
    *,
    role_key: str = "role",
    content_key: str = "content",
    roles: Mapping[str, str] | None = None,
    need_assistant: bool = True,
    check_end: bool = True,
    system_allowed: bool = True,
) -> list[dict] | None:
    """Validate a message list (shared by messages, sharegpt and conversational prompt/completion).

    Returns the messages as role/content dicts, or None after adding problems.
    ``roles`` maps source role names (lower-cased) to chat roles; by default only the
    four chat roles are accepted, case-sensitively, as chat templates compare exactly.
    """
    start = len(problems)

    def bad(where: str, reason: str) -> None:
        problems.append(RowProblem(row, where, reason))

    if not isinstance(value, (list, tuple)):
        bad(field, f"must be a list of messages, got {_type(value)}")
        return None
    if not value:
        bad(field, "is empty, expected a list of messages")
        return None
    fold_case = roles is not None
    roles = roles or {r: r for r in ROLES}
    expected = ", ".join(roles)
    out: list[dict] = []
    seen: list[str | None] = []
    for j, msg in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(msg, Mapping):
            bad(where, f"must be an object with {role_key} and {content_key}, got {_type(msg)}")
            seen.append(None)
            continue
        raw_role = msg.get(role_key)
        key = raw_role.strip().lower() if fold_case and isinstance(raw_role, str) else raw_role
        role = roles.get(key) if isinstance(key, str) else None
        if raw_role is None:
            bad(f"{where}.{role_key}", "missing")
        elif role is None:
            bad(f"{where}.{role_key}", f"unknown role {_short(raw_role)} (expected {expected})")
        elif role != raw_role:
            tally.role_map[raw_role] = role
        if role == "system" and (j > 0 or not system_allowed):
            place = f"found at position {j}" if system_allowed else "it belongs in the prompt"
            bad(f"{where}.{role_key}", f"system message must come first ({place})")

        message = {"role": role, "content": _message_content(msg, role, where, content_key, bad)}
        for extra in OPTIONAL_MESSAGE_KEYS:
            if msg.get(extra) is not None:
                message[extra] = list(msg[extra]) if extra == "tool_calls" else msg[extra]
        for extra in msg:
            if extra not in (role_key, content_key, *OPTIONAL_MESSAGE_KEYS):
                tally.dropped_message_keys[str(extra)] = None
        out.append(message)
        seen.append(role)

    # Whole-conversation rules only make sense when every role is known.
    if all(r is not None for r in seen):
        if need_assistant and "assistant" not in seen:
            bad(field, "no assistant turn, nothing to train on")
        elif check_end and seen[-1] in ("user", "tool"):
            bad(field, f"conversation ends on a {seen[-1]} turn, nothing to train on")
    return out if len(problems) == start else None


def _message_content(msg: Mapping, role: str | None, where: str, content_key: str, bad) -> Any:
    """A message's text, checked: a string that is not empty, except for an assistant turn that only
    calls tools (its ``tool_calls`` a list), which legitimately has none."""
    calls = msg.get("tool_calls")
    if calls is not None and not isinstance(calls, (list, tuple)):
        bad(f"{where}.tool_calls", f"must be a list, got {_type(calls)}")
    calls_tools = role == "assistant" and isinstance(calls, (list, tuple)) and len(calls) > 0
    content = msg.get(content_key)
    if content is None:
        if not calls_tools:
            bad(f"{where}.{content_key}", "missing")
        return ""
    if not isinstance(content, str):
        bad(f"{where}.{content_key}", f"must be a string, got {_type(content)}")
    elif not content.strip() and not calls_tools:
        bad(f"{where}.{content_key}", "is empty")
    return content


def _check_string(
    row: Mapping, key: str, index: int, problems: list[RowProblem], *, required: bool = True
) -> str | None:
    """A non-empty string field; None (and a problem when required) otherwise."""
    value = row.get(key)
    if value is None:
        if required:
            problems.append(RowProblem(index, key, "missing" if key not in row else "is null"))
        return None
    if not isinstance(value, str):
        problems.append(RowProblem(index, key, f"must be a string, got {_type(value)}"))
        return None
    if required and not value.strip():
        problems.append(RowProblem(index, key, "is empty"))
        return None
    return value


def _with_tools(out: dict, row: Mapping, tally: _Tally) -> dict:
    if row.get("tools") is not None:
        out["tools"] = row["tools"]
        tally.tools += 1
    return out


# --------------------------------------------------------------------------- converters
# Each takes (row, index, problems, tally) and returns the TRL row, or None after adding problems.


def _convert_messages(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    key = "messages" if "messages" in row else "conversations" if "conversations" in row else None
    if key is None:
        problems.append(RowProblem(i, "messages", f"missing (row has {_keys_of(row)})"))
        return None
    messages = _check_messages(row[key], key, i, problems, tally)
    if messages is None:
        return None
    tally.from_conversations += key == "conversations"
    return _with_tools({"messages": messages}, row, tally)


def _convert_sharegpt(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    if "conversations" not in row:
        problems.append(RowProblem(i, "conversations", f"missing (row has {_keys_of(row)})"))
        return None
    start = len(problems)
    system = _check_string(row, "system", i, problems, required=False)
    messages = _check_messages(
        row["conversations"],
        "conversations",
        i,
        problems,
        tally,
        role_key="from",
        content_key="value",
        roles=SHAREGPT_ROLES,
    )
    if messages is None or len(problems) > start:
        return None
    if system and system.strip():
        if messages[0]["role"] == "system":
            problems.append(RowProblem(i, "system", "given both as a column and as the first turn"))
            return None
        messages.insert(0, {"role": "system", "content": system})
        tally.system_column += 1
    return _with_tools({"messages": messages}, row, tally)


def _convert_alpaca(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    start = len(problems)
    instruction = _check_string(row, "instruction", i, problems)
    extra = _check_string(row, "input", i, problems, required=False)
    output = _check_string(row, "output", i, problems)
    system = _check_string(row, "system", i, problems, required=False)
    if len(problems) > start:
        return None
    user = instruction
    if extra and extra.strip():
        user += "\n\n" + extra
        tally.with_input += 1
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if system and system.strip():
        messages.insert(0, {"role": "system", "content": system})
        tally.system_column += 1
    return {"messages": messages}


def _convert_prompt_completion(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    start = len(problems)
    prompt = _check_string(row, "prompt", i, problems)
    completion = _check_string(row, "completion", i, problems)
    return None if len(problems) > start else {"prompt": prompt, "completion": completion}


def _convert_conversational_pc(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    start = len(problems)
    for key in ("prompt", "completion"):
        if key not in row:
            problems.append(RowProblem(i, key, f"missing (row has {_keys_of(row)})"))
    if len(problems) > start:
        return None
    # The prompt usually ends on a user turn; the completion is what is trained on.
    prompt = _check_messages(row["prompt"], "prompt", i, problems, tally, need_assistant=False, check_end=False)
    completion = _check_messages(
        row["completion"], "completion", i, problems, tally, check_end=False, system_allowed=False
    )
    if prompt is None or completion is None:
        return None
    return _with_tools({"prompt": prompt, "completion": completion}, row, tally)


def _convert_text(row: Mapping, i: int, problems: list[RowProblem], tally: _Tally) -> dict | None:
    text = _check_string(row, "text", i, problems)
    return None if text is None else {"text": text}


_CONVERTERS = {
    "messages": _convert_messages,
    "sharegpt": _convert_sharegpt,
    "alpaca": _convert_alpaca,
    "prompt_completion": _convert_prompt_completion,
    "conversational_prompt_completion": _convert_conversational_pc,
    "text": _convert_text,
}


def _notes(source_format: str, tally: _Tally, n_rows: int) -> list[str]:
    notes: list[str] = []
    if source_format == "alpaca":
        notes.append("alpaca instruction/input/output -> messages (user, assistant)")
        if tally.with_input:
            notes.append(f"non-empty input appended to the instruction after a blank line ({tally.with_input} rows)")
    if source_format == "sharegpt":
        mapped = ", ".join(f"{k} -> {v}" for k, v in sorted(tally.role_map.items()))
        notes.append("sharegpt conversations from/value -> messages role/content" + (f" ({mapped})" if mapped else ""))
    if tally.system_column:
        notes.append(f"{source_format} system column -> leading system message ({tally.system_column} rows)")
    if tally.from_conversations:
        notes.append(f"conversations column (role/content) -> messages ({tally.from_conversations} rows)")
    if tally.tools:
        notes.append(f"kept tools column for tool-calling templates ({tally.tools} of {n_rows} rows)")
    if tally.dropped_columns:
        notes.append(f"dropped columns not used by the {source_format} format: {', '.join(tally.dropped_columns)}")
    if tally.dropped_message_keys:
        notes.append(f"dropped message keys chat templates do not use: {', '.join(tally.dropped_message_keys)}")
    return notes


def _normalize_rows(
    rows: list[Any], source_format: str, start: int, tally: _Tally
) -> tuple[list[dict], list[int], list[RowProblem]]:
    """One chunk of rows (the first is source row ``start``): the normalised rows, the source index
    of each, and every problem (with source row numbers); ``tally`` adds up what was done for the notes."""
    convert = _CONVERTERS.get(source_format)
    if convert is None:
        raise DataError(f"unknown format '{source_format}' (expected one of {', '.join(SOURCE_FORMATS)})")
    allowed = FORMAT_COLUMNS[source_format]
    problems: list[RowProblem] = []
    out: list[dict] = []
    kept: list[int] = []
    for i, row in enumerate(rows, start):
        if isinstance(row, UnreadableRow):
            problems.append(RowProblem(i, "<row>", row.reason))
            continue
        if not isinstance(row, Mapping):
            problems.append(RowProblem(i, "<row>", f"must be an object, got {_type(row)}"))
            continue
        for key in row:
            if key not in allowed:
                tally.dropped_columns[str(key)] = None
        before = len(problems)
        converted = convert(row, i, problems, tally)
        if converted is not None and len(problems) == before:
            out.append(converted)
            kept.append(i)
    if any("tools" in r for r in out):
        # An Arrow table takes its columns from the first row, so every row needs the key.
        for r in out:
            r.setdefault("tools", None)
    return out, kept, problems
