"""Load, detect, validate and normalise chat fine-tuning data for TRL's SFTTrainer.

Pipeline: ``read_source`` (files, folders, notebook variables, objects, the Hub)
-> ``detect_format`` -> ``normalize`` -> ``load_data`` (one ``DataError`` listing
every bad row, or a ``LoadedData`` ready for training) -> ``train_val_split``.

Heavy libraries (datasets, pandas, pyarrow) are imported inside functions so that
importing this module stays instant.
"""

from __future__ import annotations

from .errors import SftError

import glob
import hashlib
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - type hints only
    import datasets

__all__ = [
    "DataError",
    "RowProblem",
    "UnreadableRow",
    "LoadedData",
    "read_source",
    "detect_format",
    "normalize",
    "load_data",
    "train_val_split",
]

ROLES = ("system", "user", "assistant", "tool")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SOURCE_FORMATS = (
    "messages",
    "prompt_completion",
    "conversational_prompt_completion",
    "text",
    "alpaca",
    "sharegpt",
)
# Message keys chat templates understand besides role/content; everything else is dropped.
OPTIONAL_MESSAGE_KEYS = ("tool_calls", "name", "tool_call_id")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
# Columns each source format reads; any other column is dropped (with a note).
FORMAT_COLUMNS = {
    "messages": ("messages", "conversations", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion"),
    "conversational_prompt_completion": ("prompt", "completion", "tools"),
    "text": ("text",),
}
TRL_FORMAT = {
    "messages": "messages",
    "sharegpt": "messages",
    "alpaca": "messages",
    "prompt_completion": "prompt_completion",
    "conversational_prompt_completion": "conversational_prompt_completion",
    "text": "text",
}
# Columns of CSV files that hold JSON text (CSV cells cannot hold lists).
CSV_JSON_COLUMNS = ("messages", "conversations", "tools")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row."""

    row: int  # 0-based index in the dataset (what ds[row] returns)
    field: str  # e.g. "messages[2].role", "completion", "<row>"
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} {self.field}: {self.reason}"


class DataError(SftError, ValueError):
    """One-line message; ``.problems`` holds every RowProblem (empty for source errors)."""

    def __init__(self, message: str, problems: list[RowProblem] | None = None) -> None:
        # Notebook output shows this verbatim, so keep it to one line.
        super().__init__(_one_line(message))
        self.problems: list[RowProblem] = list(problems or [])


@dataclass(frozen=True)
class UnreadableRow:
    """Placeholder ``read_source`` puts where a row could not be parsed (e.g. a bad JSONL line).

    It keeps row indices aligned with the file; ``normalize`` turns it into a RowProblem.
    """

    reason: str


@dataclass(frozen=True)
class LoadedData:
    """A validated, normalised dataset plus where it came from and what was done to it."""

    dataset: "datasets.Dataset"  # normalised, ready for trl.SFTTrainer
    format: str  # TRL format after normalisation
    source_format: str  # format detected in the input
    source: str  # readable description of the origin
    notes: tuple[str, ...]  # how it was normalised
    fingerprint: str  # sha256 hex of the normalised rows
    # Filled only by ``load_data(..., strict=False)``: what was left out, and where the kept rows came from.
    problems: tuple[RowProblem, ...] = ()  # every problem of every invalid row (empty when all rows are valid)
    row_index: tuple[int, ...] | None = None  # source index of each kept row; None: row i is source row i
    invalid_rows: tuple[tuple[int, Any], ...] = ()  # (source index, raw row) of each invalid row, for display

    def __len__(self) -> int:
        return len(self.dataset)

    def source_index(self, i: int) -> int:
        """Index in the source of the dataset's row ``i`` (what problems and messages call "row N")."""
        return i if self.row_index is None else self.row_index[i]


# --------------------------------------------------------------------------- helpers


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    """repr() of a user value, cut so that messages stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_reason(exc: BaseException, limit: int = 200) -> str:
    """Exception as 'Type: first line', because library errors can be pages long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_instance(obj: Any, module: str, name: str) -> bool:
    # If the module was never imported, obj cannot be one of its types: no import needed.
    mod = sys.modules.get(module)
    return mod is not None and isinstance(obj, getattr(mod, name))


def _plain(value: Any) -> Any:
    """Turn pandas/numpy values into plain Python (arrays -> lists, NaN/NA -> None)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())  # numpy arrays and scalars
    return value


def _drop_none(value: Any) -> Any:
    # Arrow fills absent struct keys with None; dropping them makes fingerprints of
    # the normalised rows and of the stored dataset agree.
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def _fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(_drop_none(row), sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _keys_of(row: Mapping) -> str:
    return ", ".join(map(str, row)) or "no keys"


# --------------------------------------------------------------------------- sources


def _read_jsonl(path: str) -> list[Any]:
    """One row per non-blank line; a bad line becomes an UnreadableRow so its index survives."""
    rows: list[Any] = []
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue  # blank lines are not rows
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    rows.append(UnreadableRow(f"invalid JSON ({name} line {lineno}): {exc.msg} at column {exc.colno}"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({_short_reason(exc)})") from None
    return rows


def _read_json(path: str) -> list[Any]:
    """A list of rows, or an object holding one under 'data', 'rows' or 'train'."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({_short_reason(exc)})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return _read_jsonl(path)  # JSON Lines saved with a .json suffix
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("data", "rows", "train"):
            if isinstance(data.get(key), list):
                return data[key]
        raise DataError(
            f"{path}: expected a list of rows or an object with a 'data', 'rows' or 'train' list; "
            f"found an object with keys {_keys_of(data)}"
        )
    raise DataError(f"{path}: expected a list of rows, found {_type(data)}")


def _decode_json_cell(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # left as text; validation reports it as "not a list"
    return value


def _looks_like_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _read_csv(path: str) -> list[dict]:
    import pandas as pd

    try:
        # dtype=str: every supported field is text, and "123" must stay "123".
        frame = pd.read_csv(path, dtype=str)
    except Exception as exc:  # pandas raises many types for bad CSV
        raise DataError(f"{path}: could not read CSV ({_short_reason(exc)})") from None
    rows = [_plain(row) for row in frame.to_dict("records")]
    for row in rows:
        for column in CSV_JSON_COLUMNS:
            if column in row:
                row[column] = _decode_json_cell(row[column])
        # prompt/completion only when the cell really is a message list, so plain text stays text.
        for column in ("prompt", "completion"):
            decoded = _decode_json_cell(row.get(column))
            if _looks_like_messages(decoded):
                row[column] = decoded
    return rows


def _read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        # pyarrow gives plain Python lists/dicts; pandas would give numpy arrays.
        return pq.read_table(path).to_pylist()
    except Exception as exc:
        raise DataError(f"{path}: could not read Parquet ({_short_reason(exc)})") from None


_FILE_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_file(path: str) -> list[Any]:
    suffix = os.path.splitext(path)[1].lower()
    reader = _FILE_READERS.get(suffix)
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{suffix or '(none)'}' (expected {', '.join(FILE_SUFFIXES)})")
    return reader(path)


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("state.json", "dataset_dict.json"))


def _pick_split(dataset_dict: Any, split: str | None, where: str) -> tuple[Any, str]:
    name = split or "train"
    if name not in dataset_dict:
        raise DataError(f"{where}: split '{name}' not found (available: {', '.join(dataset_dict) or 'none'})")
    return dataset_dict[name], name


def _read_saved_folder(folder: str, shown: str, split: str | None) -> tuple[list[dict], str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(folder)
    except Exception as exc:
        raise DataError(f"{shown}: could not load saved dataset ({_short_reason(exc)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        ds, name = _pick_split(loaded, split, shown)
        return ds.to_list(), f"{shown}[{name}]"
    return loaded.to_list(), shown


def _read_object(obj: Any, label: str, split: str | None) -> tuple[list[Any], str]:
    """Rows of an in-memory object: list of dicts, DataFrame, Dataset or DatasetDict."""
    if isinstance(obj, (list, tuple)):
        return list(obj), label
    if _is_instance(obj, "pandas", "DataFrame"):
        return [_plain(row) for row in obj.to_dict("records")], label
    if _is_instance(obj, "datasets", "Dataset"):
        return obj.to_list(), label
    if _is_instance(obj, "datasets", "DatasetDict"):
        ds, name = _pick_split(obj, split, label)
        return ds.to_list(), f"{label}[{name}]"
    if _is_instance(obj, "datasets", "IterableDataset"):
        return list(obj), label
    raise DataError(
        f"{label}: unsupported data object of type {type(obj).__name__} "
        "(expected a list of dicts, pandas DataFrame, datasets.Dataset or DatasetDict)"
    )


def _read_hub(name: str, config: str | None, split: str | None, hint: str = "") -> tuple[list[Any], str]:
    import datasets

    split = split or "train"
    shown = f"hub:{name}" + (f":{config}" if config else "") + f"[{split}]"
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataError(
            f"could not load dataset '{name}' from the Hugging Face Hub ({_short_reason(exc)}){hint}; "
            "local files (.jsonl, .json, .csv, .parquet) and notebook variables work offline"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        ds, split = _pick_split(ds, split, shown)
    return (ds.to_list() if hasattr(ds, "to_list") else list(ds)), shown


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(FILE_SUFFIXES) or text.startswith(("./", "../", "/", "~", ".\\", "..\\"))


def read_source(
    source: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> tuple[list[dict], str]:
    """Raw rows and a readable description of where they came from.

    Strings resolve in order: existing file/folder or glob match, then a variable in
    ``namespace``, then a Hub dataset. Rows that could not be parsed are
    ``UnreadableRow`` placeholders so indices stay aligned. ``split`` picks a
    DatasetDict split (default "train"); ``config`` is for the Hub only.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
        if not os.path.exists(os.path.expanduser(source)):
            raise DataError(f"file not found: {source}")
    if not isinstance(source, str):
        return _read_object(source, _object_label(source), split)

    text = source.strip()
    if not text:
        raise DataError("empty data source: pass a file path, a glob, a variable name or a Hub dataset name")
    path = os.path.expanduser(text)
    in_namespace = namespace is not None and text.isidentifier() and text in namespace

    if os.path.isfile(path):
        return _read_file(path), text
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return _read_saved_folder(path, text, split)
        if not in_namespace:  # a plain folder named like a variable must not hide the variable
            raise DataError(
                f"{text}: folder is not a datasets save_to_disk folder (no state.json or dataset_dict.json); "
                f"pass a file or a glob such as {os.path.join(text, '*.jsonl')}"
            )
    if glob.has_magic(path):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise DataError(f"no files match {text}")
        rows: list[Any] = []
        for match in matches:
            rows.extend(_read_file(match))
        return rows, f"{text} ({len(matches)} file{'s' if len(matches) != 1 else ''})"
    if in_namespace:
        return _read_object(namespace[text], f"variable '{text}'", split)
    if _looks_like_path(text):
        raise DataError(f"file not found: {text}")
    hint = ""
    if namespace is not None and text.isidentifier():
        hint = f" and there is no notebook variable named '{text}'"
    return _read_hub(text, config, split, hint)


def _object_label(obj: Any) -> str:
    if isinstance(obj, (list, tuple)):
        return f"list of {len(obj)} rows"
    return type(obj).__name__


# --------------------------------------------------------------------------- detection


def _row_format(row: Mapping) -> str | None:
    """The format one row looks like, by its keys (first match wins)."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        turns = row["conversations"]
        first = turns[0] if isinstance(turns, (list, tuple)) and turns else None
        if isinstance(first, Mapping) and ("role" in first or "content" in first) and "from" not in first:
            return "messages"  # conversations column already in role/content form
        return "sharegpt"
    if "prompt" in row and "completion" in row:
        if isinstance(row["prompt"], (list, tuple)) or isinstance(row["completion"], (list, tuple)):
            return "conversational_prompt_completion"
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def detect_format(rows: list[dict]) -> str:
    """The source format most rows fit (one of SOURCE_FORMATS); DataError if none fits."""
    if not rows:
        raise DataError("no rows to detect a format from")
    dict_rows = [row for row in rows if isinstance(row, Mapping)]
    counts = Counter(f for f in map(_row_format, dict_rows) if f is not None)
    if counts:
        best = max(counts.values())
        # Ties go to the earlier, more specific format.
        order = ("messages", "sharegpt", "conversational_prompt_completion", "prompt_completion", "alpaca", "text")
        return next(f for f in order if counts.get(f) == best)
    if not dict_rows:
        raise DataError(f"no known format: rows are not objects (row 0 is {_type(rows[0])})")
    columns = list(dict.fromkeys(key for row in dict_rows for key in row))
    raise DataError(
        f"no known format: columns are {', '.join(map(str, columns)) or '(none)'}; "
        "expected one of messages | prompt+completion | text | instruction+output | conversations"
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

        calls = msg.get("tool_calls")
        if calls is not None and not isinstance(calls, (list, tuple)):
            bad(f"{where}.tool_calls", f"must be a list, got {_type(calls)}")
        # An assistant turn that only calls tools legitimately has no text.
        calls_tools = role == "assistant" and isinstance(calls, (list, tuple)) and len(calls) > 0
        content = msg.get(content_key)
        if content is None:
            if not calls_tools:
                bad(f"{where}.{content_key}", "missing")
            content = ""
        elif not isinstance(content, str):
            bad(f"{where}.{content_key}", f"must be a string, got {_type(content)}")
        elif not content.strip() and not calls_tools:
            bad(f"{where}.{content_key}", "is empty")

        message = {"role": role, "content": content}
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


def _check_string(row: Mapping, key: str, index: int, problems: list[RowProblem], *, required: bool = True) -> str | None:
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
        row["conversations"], "conversations", i, problems, tally,
        role_key="from", content_key="value", roles=SHAREGPT_ROLES,
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


def normalize(rows: list[dict], source_format: str) -> tuple[list[dict], str, list[str], list[RowProblem]]:
    """Convert rows to the TRL format and validate every one.

    Returns (normalised_rows, trl_format, notes, problems); rows with problems are
    left out of normalised_rows, so callers must check ``problems``.
    """
    out, _kept, trl_format, notes, problems = _normalize(rows, source_format)
    return out, trl_format, notes, problems


def _normalize(rows: list[dict], source_format: str) -> tuple[list[dict], list[int], str, list[str], list[RowProblem]]:
    """``normalize`` plus the source index of each normalised row."""
    convert = _CONVERTERS.get(source_format)
    if convert is None:
        raise DataError(f"unknown format '{source_format}' (expected one of {', '.join(SOURCE_FORMATS)})")
    allowed = FORMAT_COLUMNS[source_format]
    tally = _Tally()
    problems: list[RowProblem] = []
    out: list[dict] = []
    kept: list[int] = []
    for i, row in enumerate(rows):
        if isinstance(row, UnreadableRow):
            problems.append(RowProblem(i, "<row>", row.reason))
            continue
        if not isinstance(row, Mapping):
            problems.append(RowProblem(i, "<row>", f"must be an object, got {_type(row)}"))
            continue
        for key in row:
            if key not in allowed:
                tally.dropped_columns[str(key)] = None
        start = len(problems)
        converted = convert(row, i, problems, tally)
        if converted is not None and len(problems) == start:
            out.append(converted)
            kept.append(i)
    if any("tools" in r for r in out):
        # Dataset.from_list takes its columns from the first row, so every row needs the key.
        for r in out:
            r.setdefault("tools", None)
    return out, kept, TRL_FORMAT[source_format], _notes(source_format, tally, len(rows)), problems


# --------------------------------------------------------------------------- public entry points


def _to_dataset(rows: list[dict], source: str) -> "datasets.Dataset":
    import datasets

    try:
        return datasets.Dataset.from_list(rows)
    except Exception as exc:  # pyarrow type clashes between rows
        raise DataError(
            f"{source}: rows could not be stored as a dataset ({_short_reason(exc)}); "
            "check that each field has the same type in every row (e.g. tool_calls arguments)"
        ) from None


def load_data(
    source: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    max_problems_shown: int = 5,
    strict: bool = True,
) -> LoadedData:
    """read_source -> detect_format -> normalize; one DataError listing every invalid row.

    With ``strict=False`` invalid rows do not raise: the result holds the valid rows, with
    ``problems`` (every RowProblem), ``row_index`` (source index of each kept row) and
    ``invalid_rows`` (the raw invalid rows). A DataError is still raised when no row is valid
    or no format fits.
    """
    rows, where = read_source(source, split=split, config=config, namespace=namespace)
    if not rows:
        raise DataError(f"{where}: no rows")
    try:
        source_format = detect_format(rows)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    normalised, kept, trl_format, notes, problems = _normalize(rows, source_format)
    if problems and (strict or not normalised):
        n_bad = len({p.row for p in problems})
        shown = [str(p) for p in problems[: max(0, max_problems_shown)]]
        if len(problems) > len(shown):
            shown.append(f"… and {len(problems) - len(shown)} more")
        raise DataError(f"{where}: {n_bad} of {len(rows)} rows are invalid — " + "; ".join(shown), problems)
    bad_rows = sorted({p.row for p in problems})
    return LoadedData(
        dataset=_to_dataset(normalised, where),
        format=trl_format,
        source_format=source_format,
        source=where,
        notes=tuple(notes),
        fingerprint=_fingerprint(normalised),
        problems=tuple(problems),
        row_index=tuple(kept) if problems else None,
        invalid_rows=tuple((i, rows[i]) for i in bad_rows),
    )


def train_val_split(data: LoadedData, fraction: float, seed: int = 42) -> tuple[LoadedData, LoadedData]:
    """Deterministic (train, validation) split: round(fraction * n) rows, at least 1, go to validation."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    n = len(data.dataset)
    if n < 2:
        raise DataError(f"{data.source}: need at least 2 rows to split off a validation set, got {n}")
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise DataError(f"{data.source}: validation fraction {fraction} of {n} rows leaves no training rows")
    order = list(range(n))
    random.Random(seed).shuffle(order)  # own RNG: independent of global random state
    # Each half keeps the original row order, which makes it easier to inspect.
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

    def part(indices: list[int], label: str) -> LoadedData:
        ds = data.dataset.select(indices)
        return LoadedData(
            dataset=ds,
            format=data.format,
            source_format=data.source_format,
            source=f"{data.source} [{label}]",
            notes=data.notes,
            fingerprint=_fingerprint(ds.to_list()),
            row_index=tuple(data.source_index(i) for i in indices),  # rows keep their source numbers
        )

    return part(train_idx, "train"), part(val_idx, "validation")
