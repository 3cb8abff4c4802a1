"""Load, detect, validate and normalise chat fine-tuning data for TRL's SFTTrainer.

Pipeline, a chunk of rows at a time: ``data.sources.iter_source`` (files, folders, notebook variables,
objects, the Hub; read lazily) -> your columns (``data.columns.remap_rows``) -> ``detect_format`` (on
the first chunk) -> ``data.formats._normalize_rows`` (validated, in TRL's format, with source row
numbers) -> the row store (``data.rowstore``) -> ``load_data``'s ``LoadedData`` (or one ``DataError``
listing every bad row) -> ``train_val_split``.

Heavy libraries (datasets, pandas, pyarrow) are imported inside functions so that
importing this module stays instant.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import replace
from itertools import islice
from typing import Any

from .types import (
    CHUNK_ROWS,
    TRL_FORMAT,
    DataError,
    LoadedData,
    RowProblem,
    UnreadableRow,
    _digests_fingerprint,
    _pick_digests,
    _row_digest,
    _type,
)

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
        from .columns import remap_rows
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
