"""Where data comes from: files (JSONL, JSON, CSV, Parquet), globs, ``save_to_disk`` folders,
notebook variables and objects (lists, DataFrames, datasets, streaming ``IterableDataset``s), and the
Hugging Face Hub (``streaming=True`` too). Each reader yields raw rows one at a time, so
:func:`core.data.load.load_data` can normalise a source larger than memory a chunk at a time: JSONL line by
line, CSV and Parquet by blocks, Arrow datasets (saved folders, the Hub's cache) memory-mapped, a slice
at a time. Only a JSON array file is read whole (JSON has no way to read half an array): JSON Lines
or Parquet are the formats for data that does not fit in memory."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Mapping
from itertools import chain
from typing import Any

from .types import (
    CHUNK_ROWS,
    CSV_JSON_COLUMNS,
    FILE_SUFFIXES,
    DataError,
    UnreadableRow,
    _is_instance,
    _keys_of,
    _plain,
    _short_reason,
    _type,
    batch_rows,
    dataset_chunks,
)


def _read_jsonl(path: str) -> Iterator[Any]:
    """One row per non-blank line; a bad line becomes an UnreadableRow so its index survives."""
    name = os.path.basename(path)
    # Bytes, decoded a line at a time: a byte that is not UTF-8 is named by its exact line (a text
    # stream decodes ahead in blocks, so its line count lags behind the error).
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: not UTF-8 text at line {lineno}, byte {exc.start + 1} of the line ({_short_reason(exc)})"
                ) from None
            if not line.strip():
                continue  # blank lines are not rows
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield UnreadableRow(f"invalid JSON ({name} line {lineno}): {exc.msg} at column {exc.colno}")


def _read_json(path: str) -> Iterator[Any]:
    """A list of rows, or an object holding one under 'data', 'rows' or 'train' (read whole)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text at line {line} ({_short_reason(exc)})") from None
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            del text
            return _read_jsonl(path)  # JSON Lines saved with a .json suffix
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        return iter(data)
    if isinstance(data, dict):
        for key in ("data", "rows", "train"):
            if isinstance(data.get(key), list):
                return iter(data[key])
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


def _read_csv(path: str) -> Iterator[dict]:
    import pandas as pd

    try:
        # dtype=str: every supported field is text, and "123" must stay "123"; text that pandas would read as a
        # missing value ("NaN", "null", "N/A", "None") stays the text it is: only an empty cell is missing.
        # Read by blocks of rows.
        blocks = pd.read_csv(path, dtype=str, chunksize=CHUNK_ROWS, keep_default_na=False, na_values=[""])
        for frame in blocks:
            yield from map(_csv_row, frame.to_dict("records"))
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for bad CSV
        raise DataError(f"{path}: could not read CSV ({_short_reason(exc)})") from None


def _csv_row(record: dict) -> dict:
    row = _plain(record)
    for column in CSV_JSON_COLUMNS:
        if column in row:
            row[column] = _decode_json_cell(row[column])
    # prompt/completion only when the cell really is a message list, so plain text stays text.
    for column in ("prompt", "completion"):
        decoded = _decode_json_cell(row.get(column))
        if _looks_like_messages(decoded):
            row[column] = decoded
    return row


def _read_parquet(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        # pyarrow gives plain Python lists/dicts (pandas would give numpy arrays), a row group's block at a time.
        with pq.ParquetFile(path) as handle:
            for batch in handle.iter_batches(batch_size=CHUNK_ROWS):
                yield from batch.to_pylist()
    except Exception as exc:
        raise DataError(f"{path}: could not read Parquet ({_short_reason(exc)})") from None


_FILE_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _reader(path: str) -> Any:
    suffix = os.path.splitext(path)[1].lower()
    reader = _FILE_READERS.get(suffix)
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{suffix or '(none)'}' (expected {', '.join(FILE_SUFFIXES)})")
    return reader


def _read_file(path: str) -> Iterator[Any]:
    return _reader(path)(path)


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("state.json", "dataset_dict.json"))


def _pick_split(dataset_dict: Any, split: str | None, where: str) -> tuple[Any, str]:
    name = split or "train"
    if name not in dataset_dict:
        raise DataError(f"{where}: split '{name}' not found (available: {', '.join(dataset_dict) or 'none'})")
    return dataset_dict[name], name


def _read_saved_folder(folder: str, shown: str, split: str | None) -> tuple[Iterator[dict], str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(folder)  # memory-mapped
    except Exception as exc:
        raise DataError(f"{shown}: could not load saved dataset ({_short_reason(exc)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        ds, name = _pick_split(loaded, split, shown)
        return _dataset_rows(ds), f"{shown}[{name}]"
    return _dataset_rows(loaded), shown


def _dataset_rows(ds: Any) -> Iterator[dict]:
    """The rows of a ``datasets.Dataset`` (a slice at a time) or ``IterableDataset`` (a batch at a time,
    so a streaming dataset is read as it arrives)."""
    if _is_instance(ds, "datasets", "IterableDataset"):
        return chain.from_iterable(map(batch_rows, ds.iter(batch_size=CHUNK_ROWS)))
    return chain.from_iterable(rows for _, rows in dataset_chunks(ds))


def _read_object(obj: Any, label: str, split: str | None) -> tuple[Iterator[Any], str]:
    """Rows of an in-memory object: list of dicts, DataFrame, Dataset, DatasetDict or IterableDataset."""
    if isinstance(obj, (list, tuple)):
        return iter(obj), label
    if _is_instance(obj, "pandas", "DataFrame"):
        return _frame_rows(obj), label
    if _is_instance(obj, "datasets", "Dataset") or _is_instance(obj, "datasets", "IterableDataset"):
        return _dataset_rows(obj), label
    if _is_instance(obj, "datasets", "DatasetDict") or _is_instance(obj, "datasets", "IterableDatasetDict"):
        ds, name = _pick_split(obj, split, label)
        return _dataset_rows(ds), f"{label}[{name}]"
    raise DataError(
        f"{label}: unsupported data object of type {type(obj).__name__} "
        "(expected a list of dicts, pandas DataFrame, datasets.Dataset, DatasetDict or IterableDataset)"
    )


def _frame_rows(frame: Any) -> Iterator[dict]:
    for start in range(0, len(frame), CHUNK_ROWS):
        yield from (_plain(row) for row in frame.iloc[start : start + CHUNK_ROWS].to_dict("records"))


def _read_hub(
    name: str, config: str | None, split: str | None, hint: str = "", streaming: bool = False
) -> tuple[Iterator[Any], str]:
    """A Hub dataset: downloaded into the ``datasets`` cache and read memory-mapped, or with
    ``streaming`` read as it downloads (nothing of the raw data is kept on disk)."""
    import datasets

    split = split or "train"
    shown = f"hub:{name}" + (f":{config}" if config else "") + f"[{split}]" + (" (streamed)" if streaming else "")
    try:
        extra = {"streaming": True} if streaming else {}
        ds = datasets.load_dataset(name, config, split=split, **extra)
    except Exception as exc:
        raise DataError(
            f"could not load dataset '{name}' from the Hugging Face Hub ({_short_reason(exc)}){hint}; "
            "local files (.jsonl, .json, .csv, .parquet) and notebook variables work offline"
        ) from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds, split = _pick_split(ds, split, shown)
    if _is_instance(ds, "datasets", "Dataset") or _is_instance(ds, "datasets", "IterableDataset"):
        return _dataset_rows(ds), shown
    return iter(ds), shown


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(FILE_SUFFIXES) or text.startswith(("./", "../", "/", "~", ".\\", "..\\"))


def iter_source(
    source: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    streaming: bool = False,
) -> tuple[Iterator[Any], str]:
    """Raw rows, read lazily, and a readable description of where they came from.

    Strings resolve in order: existing file/folder or glob match, then a variable in
    ``namespace``, then a Hub dataset. What the source is resolves now (a missing file, an
    unknown split, an unreachable Hub dataset raise here); its rows are read as they are asked
    for. Rows that could not be parsed are ``UnreadableRow`` placeholders so indices stay
    aligned. ``split`` picks a DatasetDict split (default "train"); ``config`` and
    ``streaming`` are for the Hub only. A failure while reading (a stream that breaks, a file that
    cannot be read further) is a one-line DataError naming the source and the row it stopped at.
    """
    rows, where = _resolve(source, split, config, namespace, streaming)
    return _guarded(rows, where), where


def _guarded(rows: Iterator[Any], where: str) -> Iterator[Any]:
    count = 0
    try:
        for row in rows:
            yield row
            count += 1
    except DataError:
        raise
    except Exception as exc:  # the libraries' own errors: a network stream, pyarrow, the file system
        raise DataError(f"{where}: reading stopped after {count:,} rows ({_short_reason(exc)})") from None
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # the reader's file, now, not when the generator is collected


def _resolve(
    source: Any, split: str | None, config: str | None, namespace: Mapping[str, Any] | None, streaming: bool
) -> tuple[Iterator[Any], str]:
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
        for match in matches:  # every file's type is checked before any row is read
            _reader(match)
        rows = chain.from_iterable(map(_read_file, matches))
        return rows, f"{text} ({len(matches)} file{'s' if len(matches) != 1 else ''})"
    if in_namespace:
        return _read_object(namespace[text], f"variable '{text}'", split)
    if _looks_like_path(text):
        raise DataError(f"file not found: {text}")
    hint = ""
    if namespace is not None and text.isidentifier():
        hint = f" and there is no notebook variable named '{text}'"
    return _read_hub(text, config, split, hint, streaming)


def _object_label(obj: Any) -> str:
    if isinstance(obj, (list, tuple)):
        return f"list of {len(obj)} rows"
    return type(obj).__name__
