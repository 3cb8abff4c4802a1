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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field, replace
from itertools import islice
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
    "sample_data",
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
CHUNK_ROWS = 1000  # rows read, normalised, rendered and tokenized at a time: memory does not grow with the data
CHUNK_BYTES = 3_000_000  # dataset_chunks reads fewer when rows are long: ~3 MB of Arrow data (~1M tokens) per chunk


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


def _same_rows(data: LoadedData, fingerprint: str) -> bool:
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
    streaming: bool = False,
) -> LoadedData:
    """iter_source -> (your columns, your conversion) -> detect_format -> normalize, a chunk at a
    time; one DataError listing every invalid row.

    ``columns`` maps the names sft_magics reads to your columns (``{"prompt": "question",
    "completion": "answer"}``; ``user`` / ``assistant`` build a conversation); ``system`` adds a
    system message; ``convert`` is a function row -> row (or -> list of messages), applied first.

    With ``strict=False`` invalid rows do not raise: the result holds the valid rows, with
    ``problems`` (every RowProblem), ``row_index`` (source index of each kept row) and
    ``invalid_rows`` (the raw invalid rows). A DataError is still raised when no row is valid
    or no format fits.

    Rows are read, mapped and normalised ``CHUNK_ROWS`` at a time, so memory holds one chunk of
    Python rows: the normalised rows are Arrow data, in memory while small and memory-mapped from
    disk past ``rowstore.SPILL_BYTES`` (:mod:`core.rowstore`). The format is the one most rows of the
    first chunk fit; a later row of another shape is an invalid row like any other. ``streaming``
    reads a Hub dataset as it downloads (``datasets.load_dataset(..., streaming=True)``); a streaming
    ``IterableDataset`` passed as the source is read the same way.
    """
    from .formats import _normalize_rows, _notes, _Tally
    from .rowstore import RowStore
    from .sources import iter_source

    stream, where = iter_source(source, split=split, config=config, namespace=namespace, streaming=streaming)
    remap = columns or system or convert is not None
    if remap:
        from .dataset_spec import remap_rows
    source_format = ""
    mapped: list[str] = []
    tally = _Tally()
    problems: list[RowProblem] = []
    invalid: list[tuple[int, Any]] = []
    digests = bytearray()
    total = 0
    kept: list[int] | None = None  # source row of each valid row, once a row is invalid (before: row i is row i)
    with RowStore(where) as store, closing(stream):  # a failed load closes its file at once
        for rows in _batched(stream, CHUNK_ROWS):
            if remap:
                rows, mapped = remap_rows(
                    rows, columns=columns, system=system, convert=convert, where=where, start=total
                )
            if not source_format:  # the format most rows of the first chunk fit
                try:
                    source_format = detect_format(rows)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from None
            out, kept_here, found = _normalize_rows(rows, source_format, total, tally)
            if found:
                if kept is None:
                    kept = list(range(total))
                problems += found
                if not strict:  # kept for the row browser; a strict load raises with the problems alone
                    invalid += [(i, rows[i - total]) for i in sorted({p.row for p in found})]
            if not (strict and problems):  # a strict load that has failed only goes on to list every problem
                store.add(out, (total, total + len(rows) - 1))
                digests += b"".join(map(_row_digest, out))
            if kept is not None:
                kept += kept_here
            total += len(rows)
        if not total:
            raise DataError(f"{where}: no rows")
        if problems and (strict or not store.rows):
            n_bad = len({p.row for p in problems})
            shown = [str(p) for p in problems[: max(0, max_problems_shown)]]
            if len(problems) > len(shown):
                shown.append(f"… and {len(problems) - len(shown)} more")
            raise DataError(f"{where}: {n_bad} of {total} rows are invalid — " + "; ".join(shown), problems)
        fingerprint = _digests_fingerprint(bytes(digests))
        dataset = store.dataset(fingerprint)
    return LoadedData(
        dataset=dataset,
        format=TRL_FORMAT[source_format],
        source_format=source_format,
        source=where,
        notes=tuple(mapped + _notes(source_format, tally, total)),
        fingerprint=fingerprint,
        problems=tuple(problems),
        row_index=tuple(kept) if kept is not None else None,
        invalid_rows=tuple(invalid),
        row_digests=bytes(digests),
    )


def _batched(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


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
    return _subset(data, sorted(order[n_val:]), "train"), _subset(data, sorted(order[:n_val]), "validation")


def sample_data(data: LoadedData, n: int, seed: int = 0) -> LoadedData:
    """A seeded random sample of ``n`` rows (in source order, source row numbers kept) for a quick look
    at a huge source; ``data`` itself when it has no more than ``n`` rows."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"sample size must be a whole number of at least 1 row, got {n!r}")
    total = len(data.dataset)
    if n >= total:
        return data
    picked = sorted(random.Random(seed).sample(range(total), n))
    sample = _subset(data, picked, f"random sample of {n:,} of {total:,} rows, seed {seed}")
    # The invalid rows were found in every row: still reported.
    return replace(sample, sampled_from=total, problems=data.problems, invalid_rows=data.invalid_rows)


def _subset(data: LoadedData, indices: list[int], label: str) -> LoadedData:
    """The rows at ``indices`` (positions in ``data``), labelled in ``source``; rows keep their source numbers."""
    ds = data.dataset.select(indices)
    digests = _pick_digests(data.row_digests, indices)
    return LoadedData(
        dataset=ds,
        format=data.format,
        source_format=data.source_format,
        source=f"{data.source} [{label}]",
        notes=data.notes,
        fingerprint=_digests_fingerprint(digests),
        row_index=tuple(data.source_index(i) for i in indices),
        row_digests=digests,
    )
