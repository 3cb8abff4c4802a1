"""The data's types and the small helpers every part of data/ shares: formats and their columns, a row's problem, the loaded data, row digests and fingerprints, chunks of rows."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SftError

if TYPE_CHECKING:  # pragma: no cover - type hints only
    import datasets

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

CHUNK_ROWS = 1000  # rows read, normalised, rendered and tokenized at a time: memory does not grow with the data

CHUNK_BYTES = 3_000_000  # dataset_chunks reads fewer when rows are long: ~3 MB of Arrow data (~1M tokens) per chunk


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
    fingerprint: str  # sha256 hex of the normalised rows' digests (``_fingerprint``)
    # Filled only by ``load_data(..., strict=False)``: what was left out, and where the kept rows came from.
    problems: tuple[RowProblem, ...] = ()  # every problem of every invalid row (empty when all rows are valid)
    row_index: tuple[int, ...] | None = None  # source index of each kept row; None: row i is source row i
    invalid_rows: tuple[tuple[int, Any], ...] = ()  # (source index, raw row) of each invalid row, for display
    sampled_from: int | None = None  # rows of the data this is a random sample of (``sample_data``); None: all rows
    # DIGEST_BYTES per row of ``dataset``, in order (``_row_digest``); not in repr: megabytes for big data
    row_digests: bytes = field(default=b"", repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def source_index(self, i: int) -> int:
        """Index in the source of the dataset's row ``i`` (what problems and messages call "row N")."""
        return i if self.row_index is None else self.row_index[i]


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
    kind = type(value)
    if kind is str:  # most values: checked first, without the slower isinstance(Mapping)
        return value
    if kind is dict:
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if kind is list:
        return [_drop_none(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def _row_json(row: Mapping) -> str:
    """A row as canonical JSON (keys sorted, Arrow's None fillers dropped): what fingerprints and the
    data doctor's duplicate check compare."""
    return json.dumps(_drop_none(row), sort_keys=True, ensure_ascii=False, default=str)


DIGEST_BYTES = 16  # per row: blake2b of its canonical JSON


def _row_digest(row: Mapping) -> bytes:
    """A row's 16-byte digest (of :func:`_row_json`): what fingerprints are made of, and what the data
    doctor compares to find duplicates."""
    return hashlib.blake2b(_row_json(row).encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()


def _fingerprint(rows: Iterable[Mapping]) -> str:
    """sha256 of the rows' digests, in order (see :func:`_digests_fingerprint`)."""
    return _digests_fingerprint(b"".join(map(_row_digest, rows)))


def _digests_fingerprint(digests: bytes) -> str:
    """The fingerprint of rows whose digests, in order, are ``digests``: a subset or a mixture is
    fingerprinted from its rows' digests without reading them again, and gets the same value as
    loading those rows would."""
    return hashlib.sha256(digests).hexdigest()


def same_rows(data: LoadedData, fingerprint: str) -> bool:
    """Whether ``fingerprint`` is of ``data``'s rows: this version's, or the one runs recorded before
    fingerprints were made of row digests (sha256 of the rows' JSON lines), read again only then."""
    if fingerprint == data.fingerprint:
        return True
    if len(fingerprint) != 64:
        return False
    digest = hashlib.sha256()
    for _, rows in dataset_chunks(data.dataset):
        for row in rows:
            digest.update(_row_json(row).encode() + b"\n")
    return digest.hexdigest() == fingerprint


def _pick_digests(digests: bytes, indices: Iterable[int]) -> bytes:
    n = DIGEST_BYTES
    return b"".join(digests[i * n : (i + 1) * n] for i in indices)


def batch_rows(batch: Mapping[str, list]) -> list[dict]:
    """A ``datasets`` batch (column -> values) as rows (dicts), one Arrow -> Python conversion."""
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def dataset_chunks(dataset: datasets.Dataset, size: int = CHUNK_ROWS) -> Iterator[tuple[int, list[dict]]]:
    """(start, rows as dicts) for at most ``size`` rows (fewer when rows are long) at a time: one
    Arrow -> Python conversion per chunk (iterating a Dataset row by row is slow; converting it all at
    once holds every row twice). Measured at 1,000 rows of ~930 tokens: ~0.3 GiB while a chunk is in
    flight, the same at 4,000 and 16,000 rows (``benchmarks/bench_doctor.py``)."""
    n = len(dataset)
    if n:  # bytes per row of the underlying table (a select()ed dataset keeps the whole table)
        per_row = dataset.data.nbytes / max(1, dataset.data.num_rows)
        size = max(1, min(size, int(CHUNK_BYTES / max(1.0, per_row))))
    plain = dataset.with_format(None)  # rows as Python values, whatever format the caller set
    for start in range(0, n, size):
        yield start, batch_rows(plain[start : start + size])


def _keys_of(row: Mapping) -> str:
    return ", ".join(map(str, row)) or "no keys"
