"""Data larger than memory: ``load_data`` reads, maps and normalises a chunk at a time (global row
numbers, one schema across chunks that differ), keeps the normalised rows in memory while small and
memory-mapped on disk past ``SPILL_BYTES`` (whole or not at all, named by content, a full disk a
one-line error), and reads streaming datasets as they arrive."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from sft_magics.core.data import load as D
from sft_magics.core.data import rowstore, sources
from sft_magics.core.data import types as data_types
from sft_magics.core.data.load import load_data
from sft_magics.core.data.spec import load_dataset_spec
from sft_magics.core.data.types import DataError, _drop_none
from sft_magics.core.train.recipe import read_recipe
from tests.test_reliability import tmpfs  # noqa: F401 - a real small tmpfs (fixture)


def turn(i: int, **extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}", **extra},
        ]
    }


def tool_row(i: int) -> dict:
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"id": i}}}
    return {
        "messages": [
            {"role": "user", "content": f"look up {i}"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": f"result {i}", "name": "lookup"},
            {"role": "assistant", "content": f"found {i}"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    }


# Optional keys that appear only in later chunks: tool_calls, name, a tools column, a float where ints were.
MIXED = [turn(i) for i in range(9)] + [tool_row(i) for i in range(9, 12)] + [turn(i) for i in range(12, 17)]
# What one Dataset.from_list over every normalised row gave before loading went by chunks.
ONE_TABLE = datasets.Dataset.from_list([{**r, "tools": r.get("tools")} for r in MIXED])


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SFT_MAGICS_CACHE", str(root))
    return root


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(D, "CHUNK_ROWS", 4)
    monkeypatch.setattr(sources, "CHUNK_ROWS", 3)


@pytest.fixture
def spill(monkeypatch):
    monkeypatch.setattr(rowstore, "SPILL_BYTES", 0)


def plain(dataset) -> list:
    return [_drop_none(r) for r in dataset.to_list()]


def test_chunks_give_the_rows_types_and_fingerprint_of_one_load(tmp_path, cache, small_chunks):
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    whole = load_data(MIXED, max_problems_shown=5)
    chunked = load_data(path)
    assert plain(chunked.dataset) == plain(whole.dataset) == [_drop_none(r) for r in MIXED]
    assert chunked.fingerprint == whole.fingerprint
    assert chunked.dataset.features == ONE_TABLE.features
    assert (
        chunked.notes == whole.notes and "kept tools column for tool-calling templates (3 of 17 rows)" in chunked.notes
    )
    assert not chunked.dataset.cache_files  # small: in memory, no file written
    assert not cache.exists()


def test_past_the_spill_size_rows_are_memory_mapped_from_one_file_named_by_content(
    tmp_path, cache, small_chunks, spill
):
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    loaded = load_data(path)
    assert plain(loaded.dataset) == [_drop_none(r) for r in MIXED]
    assert loaded.dataset.features == ONE_TABLE.features
    files = [Path(f["filename"]) for f in loaded.dataset.cache_files]
    assert files == [cache / "data" / f"{loaded.fingerprint[:32]}.arrow"]
    assert sorted(p.name for p in (cache / "data").iterdir()) == [files[0].name]  # no parts left behind

    again = load_data(path)  # the same rows: the same file, reused
    assert [f["filename"] for f in again.dataset.cache_files] == [str(files[0])]
    assert plain(again.dataset) == plain(loaded.dataset)

    changed = MIXED[:-1] + [turn(99)]
    write_jsonl(Path(path), changed)  # the same file name, other rows: never the stale copy
    fresh = load_data(path)
    assert fresh.fingerprint != loaded.fingerprint
    assert plain(fresh.dataset)[-1] == _drop_none(turn(99))
    assert len(list((cache / "data").glob("*.arrow"))) == 2


def test_a_spilled_dataset_trains_the_same_rows(tmp_path, cache, small_chunks, tiny_model, monkeypatch):
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template.prepared import to_trl_rows

    tokenizer = load_tokenizer(tiny_model)
    in_memory = load_data(MIXED[:9])
    monkeypatch.setattr(rowstore, "SPILL_BYTES", 0)
    on_disk = load_data(write_jsonl(tmp_path / "mixed.jsonl", MIXED[:9]))
    assert on_disk.dataset.cache_files and not in_memory.dataset.cache_files
    first = to_trl_rows(on_disk, tokenizer, cache=False)
    assert first.to_list() == to_trl_rows(in_memory, tokenizer, cache=False).to_list()
    cached = to_trl_rows(on_disk, tokenizer)  # stored, then loaded memory-mapped as the data is
    assert to_trl_rows(on_disk, tokenizer).cache_files and cached.to_list() == first.to_list()
    assert all("prepared" in f["filename"] for f in cached.cache_files)
    left = sorted(p.name for p in (cache / "data").iterdir())  # map's own copy beside the data is gone
    assert left == [Path(on_disk.dataset.cache_files[0]["filename"]).name], "one copy of the prepared rows"


def test_row_numbers_are_global_across_chunks(tmp_path, cache, small_chunks, spill):
    rows = [turn(i) for i in range(10)]
    rows[2] = {"messages": [{"role": "robot", "content": "x"}]}
    rows[9] = {"messages": []}
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, rows)
    with path.open("a") as f:
        f.write("{not json\n")  # row 10, line 11
    with pytest.raises(DataError) as info:
        load_data(str(path))
    assert str(info.value).startswith(f"{path}: 3 of 11 rows are invalid — row 2 messages[0].role: unknown role")
    assert [p.row for p in info.value.problems] == [2, 9, 10]
    assert "invalid JSON (bad.jsonl line 11)" in str(info.value)
    assert not (cache / "data").exists() or not any((cache / "data").iterdir())  # a failed load leaves nothing

    lenient = load_data(str(path), strict=False)
    assert lenient.row_index == (0, 1, 3, 4, 5, 6, 7, 8)
    assert [i for i, _ in lenient.invalid_rows] == [2, 9, 10]
    assert lenient.invalid_rows[1][1] == {"messages": []}
    assert [lenient.source_index(i) for i in range(len(lenient))] == list(lenient.row_index)
    assert plain(lenient.dataset)[2] == turn(3)


def test_the_format_comes_from_the_first_chunk_and_a_later_stranger_is_an_invalid_row(tmp_path, small_chunks):
    rows = [turn(i) for i in range(6)] + [{"prompt": "p", "completion": "c"}] * 8
    loaded = load_data(write_jsonl(tmp_path / "shift.jsonl", rows), strict=False)
    assert loaded.source_format == "messages" and len(loaded) == 6
    assert loaded.problems[0].row == 6 and loaded.problems[0].field == "messages"


def test_your_columns_and_conversion_name_the_global_row(tmp_path, small_chunks):
    rows = [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    loaded = load_data(path, columns={"user": "q", "assistant": "a"})
    assert len(loaded) == 10 and plain(loaded.dataset)[9]["messages"][1]["content"] == "a9"

    def convert(row):
        if row["q"] == "q7":
            raise KeyError("nope")
        return [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]

    with pytest.raises(DataError, match=r"qa.jsonl: row 7: convert raised KeyError"):
        load_data(path, convert=convert)


@pytest.mark.parametrize("spill_bytes", [rowstore.SPILL_BYTES, 0])
def test_rows_whose_types_clash_across_chunks_are_one_line_errors(
    tmp_path, small_chunks, cache, monkeypatch, spill_bytes
):
    monkeypatch.setattr(rowstore, "SPILL_BYTES", spill_bytes)

    def call_row(arguments) -> dict:
        row = tool_row(0)
        row["messages"][1]["tool_calls"][0]["function"]["arguments"] = arguments
        return row

    rows = [call_row({"id": 1})] * 4 + [call_row("id=1")] * 4  # a dict in one chunk, a string in the next
    with pytest.raises(DataError) as info:
        load_data(write_jsonl(tmp_path / "clash.jsonl", rows))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'clash.jsonl'}: rows 4–7 and the rows before them could not be stored")
    assert "tool_calls arguments" in message
    assert not list(cache.glob("data/.partial-*"))


def test_text_that_is_not_unicode_is_a_one_line_error(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "fine", "completion": "ok"}\n{"prompt": "bad \\ud800", "completion": "x"}\n')
    with pytest.raises(DataError) as info:
        load_data(str(path))
    assert str(info.value).startswith(f"{path}: rows 0–1 could not be stored as one dataset (UnicodeEncodeError")


def test_a_loaded_dataset_shows_briefly():
    loaded = load_data([turn(i) for i in range(2000)])
    assert len(loaded.row_digests) == 2000 * data_types.DIGEST_BYTES
    assert "row_digests" not in repr(loaded) and len(repr(loaded)) < 1000


def test_a_full_disk_is_a_one_line_error_and_leaves_no_parts(tmp_path, cache, small_chunks, spill, monkeypatch):
    real = pa.ipc.new_stream
    written = []

    def fills_up(sink, schema, *args, **kwargs):
        written.append(schema)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(sink, schema, *args, **kwargs)

    monkeypatch.setattr(pa.ipc, "new_stream", fills_up)
    path = write_jsonl(tmp_path / "big.jsonl", MIXED)
    with pytest.raises(DataError) as info:
        load_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}: could not write the rows to {cache / 'data'} (OSError: [Errno 28]")
    assert "SFT_MAGICS_CACHE" in message and "\n" not in message
    assert list((cache / "data").iterdir()) == []


@pytest.mark.parametrize("readonly", [False, True])
def test_a_real_full_or_read_only_disk_is_a_one_line_error(tmp_path, tmpfs, spill, monkeypatch, readonly):  # noqa: F811
    disk = tmpfs("cache", size="1m", readonly=readonly)
    monkeypatch.setenv("SFT_MAGICS_CACHE", str(disk))
    rows = [{"messages": msgs} for msgs in (turn(i)["messages"] for i in range(2000))]
    for row in rows:
        row["messages"][1]["content"] += " " + "x" * 1000  # ~2 MB of rows for a 1 MB disk
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}: could not write the rows to {disk / 'data'} (OSError: [Errno ")
    assert ("Read-only file system" if readonly else "No space left on device") in message
    assert "\n" not in message
    assert not any(disk.rglob("*.arrow")) and not any(disk.glob("data/.partial-*"))


def test_the_parts_of_a_killed_load_are_removed_by_the_next_one(tmp_path, cache, small_chunks, spill):
    import socket
    import time

    host, root = socket.gethostname(), cache / "data"
    dead = root / f".partial-{host}-999999999-deadbeef"  # this machine's, its process gone: removed
    alive = root / f".partial-{host}-{os.getppid()}-cafecafe"  # another live load here: kept
    elsewhere = root / ".partial-other-host-999999999-0badcafe"  # a load on another machine (shared disk): kept
    stale = root / ".partial-other-host-999999998-0ddba11d"  # ... unless untouched for more than a day
    for folder in (dead, alive, elsewhere, stale):
        folder.mkdir(parents=True)
        (folder / "part-000000.arrow").write_bytes(b"x")
    day_ago = time.time() - rowstore.ABANDONED_AFTER_S - 60
    os.utime(stale, (day_ago, day_ago))
    load_data(write_jsonl(tmp_path / "rows.jsonl", MIXED))
    assert not dead.exists() and not stale.exists()
    assert alive.exists() and elsewhere.exists()


@pytest.mark.parametrize("damage", ["not arrow", "cut in half"])
def test_a_damaged_stored_copy_is_written_again(tmp_path, cache, small_chunks, spill, damage):
    path = write_jsonl(tmp_path / "rows.jsonl", MIXED)
    first = load_data(path)
    stored = Path(first.dataset.cache_files[0]["filename"])
    del first
    content = stored.read_bytes()
    stored.write_bytes(b"not arrow" if damage == "not arrow" else content[: len(content) // 2])
    again = load_data(path)
    assert plain(again.dataset) == [_drop_none(r) for r in MIXED]
    assert stored.read_bytes() == content


def test_csv_and_parquet_are_read_by_blocks(tmp_path, small_chunks):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "extra": str(i)} for i in range(10)]
    csv = tmp_path / "rows.csv"
    datasets.Dataset.from_list(rows).to_csv(str(csv), index=False)
    parquet = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (csv, parquet):
        assert list(sources.iter_source(str(path))[0]) == rows
        loaded = load_data(str(path))
        assert plain(loaded.dataset) == [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        assert "dropped columns not used by the prompt_completion format: extra" in loaded.notes


def test_a_streaming_dataset_is_read_as_it_arrives(tmp_path, small_chunks):
    path = write_jsonl(tmp_path / "rows.jsonl", MIXED)
    stream = datasets.load_dataset("json", data_files=path, split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    loaded = load_data("stream", namespace={"stream": stream})
    assert plain(loaded.dataset) == [_drop_none(r) for r in MIXED]
    assert loaded.source == "variable 'stream'"


def test_a_stream_that_breaks_is_a_one_line_error_naming_the_row(small_chunks):
    def rows():
        for i in range(5):
            yield turn(i)
        raise ConnectionError("Connection reset by peer\nTraceback ...")

    stream = datasets.IterableDataset.from_generator(rows)
    with pytest.raises(DataError) as info:
        load_data(stream)
    message = str(info.value)  # the stream is read a batch at a time: the rows before the broken batch
    assert message == "IterableDataset: reading stopped after 3 rows (ConnectionError: Connection reset by peer)"


def test_streaming_true_asks_the_hub_for_a_stream(monkeypatch, small_chunks):
    calls = []

    def fake_load_dataset(name, config=None, *, split=None, **kwargs):
        calls.append((name, split, kwargs))
        return ONE_TABLE.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_dataset_spec({"path": "org/chats", "split": "train", "streaming": True})
    assert calls == [("org/chats", "train", {"streaming": True})]
    assert loaded.source == "hub:org/chats[train] (streamed)"
    assert plain(loaded.dataset) == [_drop_none(r) for r in MIXED] == plain(ONE_TABLE)
    with pytest.raises(DataError, match="dataset: streaming must be true or false, got 'yes'"):
        load_dataset_spec({"path": "org/chats", "streaming": "yes"})

    mixture = load_dataset_spec({"mixture": [{"path": "org/chats"}], "streaming": True})
    assert calls[-1] == ("org/chats", "train", {"streaming": True}) and len(mixture) == len(MIXED)


def test_trl_dataset_streaming_becomes_streaming():
    spec, notes = read_recipe({"model_name_or_path": "m", "dataset_name": "org/chats", "dataset_streaming": True})
    assert spec["dataset"] == {"path": "org/chats", "split": "train", "streaming": True}
    assert "dataset_streaming → streaming: Hub datasets are read as they download" in notes


def test_a_subset_and_a_mixture_are_fingerprinted_by_what_they_are_made_of(monkeypatch):
    """Splits and mixtures do not read their rows again to fingerprint them: the hash of the parent's
    fingerprint and the rows picked changes exactly when the rows do."""
    from sft_magics.core.data.load import train_val_split

    rows = [{"text": f"row {i}"} for i in range(20)]
    train, val = train_val_split(load_data(rows), 0.2, seed=7)
    edited = list(rows)
    edited[[r["text"] for r in rows].index(train.dataset[0]["text"])] = {"text": "edited"}
    train2, val2 = train_val_split(load_data(edited), 0.2, seed=7)
    assert val2.fingerprint == val.fingerprint  # its rows did not change
    assert train2.fingerprint != train.fingerprint
    assert train_val_split(load_data(rows), 0.2, seed=7)[0].fingerprint == train.fingerprint

    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config=None, *, split=None: datasets.Dataset.from_list(rows)
    )
    half = load_dataset_spec({"mixture": [{"path": "org/a", "weight": 0.5}], "seed": 1})
    assert half.fingerprint == load_dataset_spec({"mixture": [{"path": "org/a", "weight": 0.5}], "seed": 1}).fingerprint
    assert half.fingerprint != load_dataset_spec({"mixture": [{"path": "org/a", "weight": 0.5}], "seed": 2}).fingerprint
    assert half.fingerprint != load_dataset_spec({"mixture": [{"path": "org/a"}], "seed": 1}).fingerprint


def test_a_run_trains_and_resumes_on_rows_memory_mapped_from_disk(tmp_path, cache, spill, tiny_model, qa_jsonl):
    """The whole path on data too large for memory: split, prepared, trained, recorded, and resumed
    after a crash (the resume check compares the split's fingerprint, made from the rows' digests)."""
    import shutil

    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.trainer import train

    config = {"model": tiny_model, "dataset": qa_jsonl, "eval_split": 0.25, "max_steps": 4, "save_steps": 2}
    config |= {"per_device_train_batch_size": 4, "learning_rate": 1e-3}
    spec = TrainSpec.from_mapping("big", config, output_dir=str(tmp_path / "runs"))
    result = train(spec)
    assert result.status == "finished"
    env = json.loads((result.path / "environment.json").read_text())
    assert (env["datasets"]["train"]["rows"], env["datasets"]["eval"]["rows"]) == (18, 6)
    assert list((cache / "data").glob("*.arrow"))  # the rows were on disk

    shutil.rmtree(result.path / "checkpoint-4")  # a crash after checkpoint-2
    shutil.rmtree(result.path / "final")
    status = json.loads((result.path / "status.json").read_text())
    (result.path / "status.json").write_text(json.dumps({**status, "state": "failed", "step": 3}))

    # A run recorded before fingerprints were made of row digests: sha256 of the rows' JSON lines.
    from sft_magics.core.errors import ConfigError
    from sft_magics.core.train.plan import plan

    train_rows = plan(spec).train_data.dataset.to_list()
    legacy = hashlib.sha256(b"".join(data_types._row_json(r).encode() + b"\n" for r in train_rows)).hexdigest()
    for recorded in ("0" * 64, legacy):
        env["datasets"]["train"]["fingerprint"] = recorded
        (result.path / "environment.json").write_text(json.dumps(env))
        if recorded != legacy:
            with pytest.raises(ConfigError, match="the training data changed since the run started"):
                train(spec, resume=True)
    resumed = train(spec, resume=True)
    assert resumed.status == "finished" and resumed.path == result.path
    assert (result.path / "final").is_dir()
    events = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    started = [e for e in events if e["kind"] == "started"]
    assert started[-1]["resumed_from"].endswith("checkpoint-2")


def test_the_data_doctor_on_rows_on_disk_counts_every_row_in_source_numbers(
    shell, tiny_model, tmp_path, cache, small_chunks, spill, capsys
):
    """%sft_data on a source read in chunks and memory-mapped: duplicates across chunk borders and
    invalid rows in later chunks are found and named by their source row numbers."""
    rows = [turn(i) for i in range(12)]
    rows[5] = turn(1)  # a duplicate of row 1, in another chunk
    rows[10] = turn(1)
    rows[7] = {"messages": [{"role": "user", "content": "no answer"}]}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    stats = shell.run_line_magic("sft_data", f"{path} --model {tiny_model} -o s")
    out = capsys.readouterr().out
    assert (stats.rows, stats.invalid_rows, stats.source_rows) == (11, 1, 12)
    assert stats.duplicates == 2 and stats.duplicate_groups == [[1, 5, 10]]
    assert "row 7 messages: no assistant turn, nothing to train on" in out
    assert list((cache / "data").glob("*.arrow"))
