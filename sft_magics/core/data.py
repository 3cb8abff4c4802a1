"""Load, detect, validate and normalise chat fine-tuning data for TRL's SFTTrainer.

Pipeline: ``core.sources.read_source`` (files, folders, notebook variables, objects, the Hub)
-> ``detect_format`` -> ``core.formats.normalize`` -> ``load_data`` (one ``DataError`` listing
every bad row, or a ``LoadedData`` ready for training) -> ``train_val_split``.

Heavy libraries (datasets, pandas, pyarrow) are imported inside functions so that
importing this module stays instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import SftError

if TYPE_CHECKING:  # pragma: no cover - type hints only
    import datasets

__all__ = [
    "DataError",
    "RowProblem",
    "UnreadableRow",
    "LoadedData",
    "detect_format",
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

    dataset: datasets.Dataset  # normalised, ready for trl.SFTTrainer
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


# --------------------------------------------------------------------------- public entry points


def _to_dataset(rows: list[dict], source: str) -> datasets.Dataset:
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
    columns: Mapping[str, str] | None = None,
    system: str | None = None,
    convert: Any = None,
) -> LoadedData:
    """read_source -> (your columns, your conversion) -> detect_format -> normalize; one DataError
    listing every invalid row.

    ``columns`` maps the names sft_magics reads to your columns (``{"prompt": "question",
    "completion": "answer"}``; ``user`` / ``assistant`` build a conversation); ``system`` adds a
    system message; ``convert`` is a function row -> row (or -> list of messages), applied first.

    With ``strict=False`` invalid rows do not raise: the result holds the valid rows, with
    ``problems`` (every RowProblem), ``row_index`` (source index of each kept row) and
    ``invalid_rows`` (the raw invalid rows). A DataError is still raised when no row is valid
    or no format fits.
    """
    from .formats import _normalize
    from .sources import read_source

    rows, where = read_source(source, split=split, config=config, namespace=namespace)
    if not rows:
        raise DataError(f"{where}: no rows")
    mapped = []
    if columns or system or convert is not None:
        rows, mapped = remap_rows(rows, columns=columns, system=system, convert=convert, where=where)
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
        notes=tuple(mapped + list(notes)),
        fingerprint=_fingerprint(normalised),
        problems=tuple(problems),
        row_index=tuple(kept) if problems else None,
        invalid_rows=tuple((i, rows[i]) for i in bad_rows),
    )


DATASET_KEYS = ("path", "config", "name", "split", "columns", "system", "convert")
MIXTURE_KEYS = ("mixture", "seed", "test_split_size")


def load_dataset_spec(value: Any, *, namespace: Mapping[str, Any] | None = None, strict: bool = True) -> LoadedData:
    """What a ``dataset:`` key names: a source (file, folder, variable, Hub id), or a mapping
    ``{path, config, split, columns, system, convert}`` (``convert``: a function, or the name of a
    notebook function), or ``{mixture: [...], seed, test_split_size}`` (each entry a mapping with an
    optional ``weight``: the fraction of its rows kept)."""
    if not isinstance(value, Mapping):
        return load_data(value, namespace=namespace, strict=strict)
    if "mixture" in value:
        return _load_mixture(value, namespace)
    unknown = [k for k in value if k not in DATASET_KEYS]
    if unknown:
        raise DataError(f"dataset: unknown key '{unknown[0]}' (use {', '.join(DATASET_KEYS)})")
    if value.get("path") is None:
        raise DataError("dataset: 'path' is required (a file, folder, Hub id or notebook variable)")
    convert = value.get("convert")
    if isinstance(convert, str):
        if not (namespace and callable(namespace.get(convert))):
            raise DataError(f"dataset: convert: no notebook function named '{convert}'")
        convert = namespace[convert]
    return load_data(
        value["path"],
        split=value.get("split"),
        config=value.get("config") or value.get("name"),
        namespace=namespace,
        strict=strict,
        columns=value.get("columns"),
        system=value.get("system"),
        convert=convert,
    )


def _load_mixture(value: Mapping, namespace: Mapping[str, Any] | None) -> LoadedData:
    """alignment-handbook's ``dataset_mixture``: each dataset's rows, a ``weight`` fraction of them
    (seeded), concatenated. They must normalise to one format."""
    from datasets import concatenate_datasets

    entries = value.get("mixture")
    if not isinstance(entries, list) or not entries:
        raise DataError("dataset mixture: expected a list of datasets")
    seed = int(value.get("seed", 42))
    parts, described = [], []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise DataError(f"dataset mixture entry {k}: expected a mapping with a path")
        entry = dict(entry)
        weight = entry.pop("weight", 1.0)
        if not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise DataError(f"dataset mixture entry {k}: weight must be a fraction in (0, 1], got {weight!r}")
        data = load_dataset_spec(entry, namespace=namespace)
        if weight < 1:
            keep = max(1, int(len(data) * weight))
            data = replace(data, dataset=data.dataset.shuffle(seed=seed).select(range(keep)))
        parts.append(data)
        described.append(f"{data.source} ×{weight:g} ({len(data)} rows)")
    formats = {p.format for p in parts}
    if len(formats) > 1:
        raise DataError(f"dataset mixture: the datasets have different formats ({', '.join(sorted(formats))})")
    joined = concatenate_datasets([p.dataset for p in parts])
    return LoadedData(
        dataset=joined,
        format=parts[0].format,
        source_format=parts[0].source_format,
        source="mixture of " + " + ".join(described),
        notes=tuple(n for p in parts for n in p.notes),
        fingerprint=_fingerprint(joined.to_list()),
    )


TARGET_COLUMNS = ("messages", "prompt", "completion", "text", "tools", "user", "assistant")


def remap_rows(
    rows: list[Any],
    *,
    columns: Mapping[str, str] | None = None,
    system: str | None = None,
    convert: Any = None,
    where: str = "the data",
) -> tuple[list[Any], list[str]]:
    """Your data in sft_magics' terms: ``convert(row)`` first (a dict row, or a list of messages),
    then ``columns`` (target -> your column; ``user``/``assistant`` make a two-turn conversation),
    then ``system`` prepended to every conversation. Returns the rows and a note of what was done."""
    columns = dict(columns or {})
    for target, column in columns.items():
        if target not in TARGET_COLUMNS:
            raise DataError(f"columns: unknown name '{target}' (use {', '.join(TARGET_COLUMNS)})")
        if not isinstance(column, str):
            raise DataError(f"columns: '{target}' must name one of your columns, got {_type(column)}")
    if convert is not None and not callable(convert):
        raise DataError(f"convert: expected a function row -> conversation, got {_type(convert)}")
    out = []
    for i, row in enumerate(rows):
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


def train_val_split(data: LoadedData, fraction: float, seed: int = 42) -> tuple[LoadedData, LoadedData]:
    """Deterministic (train, validation) split: round(fraction * n) rows, at least 1, go to validation;
    a whole number of 1 or more is a row count (alignment-handbook's ``test_split_size: 1000``)."""
    count = isinstance(fraction, int) and not isinstance(fraction, bool) and fraction >= 1
    if not count and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1):
        raise DataError(f"validation fraction must be between 0 and 1 (exclusive), or a row count, got {fraction!r}")
    n = len(data.dataset)
    if n < 2:
        raise DataError(f"{data.source}: need at least 2 rows to split off a validation set, got {n}")
    n_val = int(fraction) if count else max(1, round(fraction * n))
    if n_val >= n:
        raise DataError(
            f"{data.source}: validation {'rows' if count else 'fraction'} {fraction} of {n} rows leaves no training rows"
        )
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
