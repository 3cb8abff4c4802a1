"""The normalised rows as one Arrow dataset, built a chunk at a time by :func:`core.data.load.load_data`.

Small data stays in memory, exactly as ``datasets.Dataset.from_list`` over every row would hold it.
Once the rows pass ``SPILL_BYTES`` of Arrow data they go to disk, and the dataset is memory-mapped
from there (what ``datasets`` does with everything it loads), so loading a source larger than memory
needs memory for one chunk, not for the data.

Chunks can disagree on optional keys (a ``tools`` column, ``tool_calls`` or ``name`` in some messages
only, a number that is whole in one chunk and not in the next): each new schema is unified with the
ones before it as it arrives (so a clash is found, and named by its rows, at once), as one
``from_list`` over every row would have typed them, and each chunk is cast to the result at the end
(``datasets.table.table_cast``). Rows whose types cannot be unified are one-line errors.

On disk: ``$SFT_MAGICS_CACHE/data/<fingerprint[:32]>.arrow``, named by the rows' content (a source
that changes gets a new name, so a stored copy is never stale), written whole or not at all (parts
go into a ``.partial-<host>-<pid>-…`` folder; the finished file is synced, then renamed into place),
and reused only when it holds these rows' count and schema. The part folder of a killed load is
removed by the next load that spills on the same machine (on a shared disk: after a day); a full or
read-only disk is a one-line error that names the folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import DataError, _short_reason

SPILL_BYTES = 64 * 2**20  # Arrow bytes kept in memory before the rows go to disk (~16k rows of ~940 tokens)


class RowStore:
    """``add`` chunks of normalised rows, then ``dataset(fingerprint)``; use as a context manager so
    that the parts of a load that fails or is interrupted are removed."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.rows = 0
        self._tables: list[Any] = []  # in memory, until the rows spill
        self._parts: list[Path] = []  # on disk, after
        self._schema: Any = None  # every chunk's schema, unified so far
        self._nbytes = 0
        self._folder: Path | None = None
        self._writer: _Part | None = None  # the part being written

    def __enter__(self) -> RowStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    @property
    def on_disk(self) -> bool:
        return self._folder is not None

    def add(self, rows: list[dict], span: tuple[int, int] | None = None) -> None:
        """Store a chunk of normalised rows; ``span`` is the source rows it came from (first, last),
        named when its types clash with the rows before it."""
        if not rows:
            return
        which = f"rows {span[0]}–{span[1]}" if span else "rows"
        table = _table(rows, self.where, which)
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema):  # found now, not after the whole source is read
            self._schema = _unify([self._schema, table.schema], self.where, f"{which} and the rows before them")
        self.rows += len(rows)
        self._nbytes += table.nbytes
        if self._folder is None and self._nbytes > SPILL_BYTES:
            self._spill()
        if self._folder is not None:
            self._write_part(table)
        else:
            self._tables.append(table)

    def dataset(self, fingerprint: str) -> Any:
        """Every row added, as one ``datasets.Dataset`` (in memory, or memory-mapped from disk)."""
        import datasets
        from datasets.table import InMemoryTable

        schema = self._schema
        if self._folder is None:
            import pyarrow as pa

            table = pa.concat_tables([_conform(t, schema, self.where) for t in self._tables])
            # The rows' content hash as datasets' fingerprint: it would otherwise hash the whole table again.
            return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint[:32])
        final = self._folder.parent / f"{fingerprint[:32]}.arrow"
        with self._disk_errors():
            self._close_part()
            if not _holds(final, schema, self.rows):
                if len(self._parts) == 1 and _schema_of(self._parts[0]).equals(schema):
                    staged = self._parts[0]  # one schema throughout: the part is the file
                else:
                    staged = self._folder / final.name
                    self._write(staged, schema)
                _sync(staged)
                os.replace(staged, final)  # whole or not at all; an identical concurrent copy is as good
        self.discard()
        try:
            return datasets.Dataset.from_file(str(final))  # its fingerprint: from the file's name (the content's)
        except Exception as exc:
            raise DataError(f"{self.where}: could not read back {final} ({_short_reason(exc)})") from None

    def discard(self) -> None:
        """Remove the parts (the finished file stays: it is the dataset)."""
        try:
            self._close_part()
        except OSError:
            pass  # the parts are removed below either way
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._tables, self._parts = [], []

    # ------------------------------------------------------------------ internals

    def _spill(self) -> None:
        from ..models import cache_dir

        root = cache_dir() / "data"
        with self._disk_errors(root):
            root.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(root)
            self._folder = root / _part_folder_name()
            self._folder.mkdir()
            held, self._tables = self._tables, []
            for table in held:
                self._write_part(table)

    def _write_part(self, table: Any) -> None:
        """Append to the open part while the schema stays the same (the usual case: then the part is
        the finished file), else start a new part."""
        import pyarrow as pa

        assert self._folder is not None
        with self._disk_errors():
            if self._writer is None or not table.schema.equals(self._writer.schema):
                self._close_part()
                path = self._folder / f"part-{len(self._parts):06d}.arrow"
                self._parts.append(path)
                sink = pa.OSFile(str(path), "wb")
                self._writer = _Part(sink, pa.ipc.new_stream(sink, table.schema), table.schema)
            self._writer.stream.write_table(table)

    def _close_part(self) -> None:
        part, self._writer = self._writer, None
        if part is not None:
            try:
                part.stream.close()
            finally:
                part.sink.close()

    def _write(self, path: Path, schema: Any) -> None:
        """One Arrow stream file (the format ``datasets`` memory-maps) of every part, cast to ``schema``."""
        import pyarrow as pa

        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for part in self._parts:
                with pa.memory_map(str(part)) as source:
                    table = pa.ipc.open_stream(source).read_all()
                    writer.write_table(_conform(table, schema, self.where))
                part.unlink()  # the disk holds the data about once, not twice

    def _disk_errors(self, folder: Path | None = None) -> Any:
        return _DiskErrors(self, folder or (self._folder.parent if self._folder else Path(".")))


@dataclass
class _Part:
    sink: Any
    stream: Any
    schema: Any


class _DiskErrors:
    """OSError while writing (no space, no permission) -> the parts removed and a one-line DataError."""

    def __init__(self, store: RowStore, folder: Path) -> None:
        self.store, self.folder = store, folder

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, OSError):
            self.store.discard()
            raise DataError(
                f"{self.store.where}: could not write the rows to {self.folder} ({_short_reason(exc)}); "
                "the data is too large to hold in memory, so free space there or set SFT_MAGICS_CACHE "
                "to a folder on a disk with room"
            ) from None


def _table(rows: list[dict], where: str, which: str = "rows") -> Any:
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows)
    except Exception as exc:  # type clashes, ints too large, text that is not valid Unicode (lone surrogates)
        raise _clash(where, exc, which) from None


def _conform(table: Any, schema: Any, where: str) -> Any:
    """``table`` with ``schema``'s columns, in its order (a missing column is all nulls), cast to its types."""
    import pyarrow as pa
    from datasets.table import table_cast

    if table.schema.equals(schema):
        return table
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type) for f in schema]
    try:
        return table_cast(pa.Table.from_arrays(columns, names=schema.names), schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        raise _clash(where, exc) from None


def _unify(schemas: list[Any], where: str, which: str = "rows") -> Any:
    import pyarrow as pa

    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise _clash(where, exc, which) from None


def _clash(where: str, exc: BaseException, which: str = "rows") -> DataError:
    return DataError(
        f"{where}: {which} could not be stored as one dataset ({_short_reason(exc)}); "
        "check that each field has the same type in every row (e.g. tool_calls arguments)"
    )


def _schema_of(path: Path) -> Any:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).schema


def _holds(path: Path, schema: Any, rows: int) -> bool:
    """Whether ``path`` is a whole stored copy of these rows (read through, so a cut file fails);
    anything else there is removed, to be written again."""
    if not path.is_file():
        return False
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            count = sum(batch.num_rows for batch in reader)
            if reader.schema.equals(schema) and count == rows:
                return True
    except (OSError, pa.ArrowInvalid):
        pass
    path.unlink(missing_ok=True)
    return False


def _sync(path: Path) -> None:
    """On disk before it is renamed into place: a crash then leaves the old name or the whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ABANDONED_AFTER_S = 24 * 3600  # a part folder untouched this long is abandoned, whichever machine made it


def _part_folder_name() -> str:
    return f".partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_abandoned(root: Path) -> None:
    """Part folders of loads that were killed: this machine's whose process is gone, and any left
    untouched for a day (a cache on a shared disk may hold other machines' loads in progress)."""
    from ..run.lock import pid_alive

    host = socket.gethostname()
    for folder in root.glob(".partial-*"):
        try:
            made_on, pid = folder.name[len(".partial-") :].rsplit("-", 2)[:2]
            age = time.time() - folder.stat().st_mtime
        except (ValueError, OSError):
            continue
        mine = made_on == host and pid.isdigit()
        if (mine and int(pid) != os.getpid() and not pid_alive(int(pid))) or age > ABANDONED_AFTER_S:
            shutil.rmtree(folder, ignore_errors=True)
