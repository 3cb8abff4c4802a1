"""Tests for sft_magics.core.data: sources, format detection, normalisation, validation, splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from sft_magics.core.data import types as D
from sft_magics.core.data.formats import _normalize_rows, _notes, _Tally
from sft_magics.core.data.load import detect_format, load_data, train_val_split
from sft_magics.core.data.sources import iter_source
from sft_magics.core.data.types import TRL_FORMAT, DataError, LoadedData, RowProblem


def read_source(source, **kwargs):
    """Every raw row of a source and where it came from: what load_data reads, chunk by chunk."""
    rows, where = iter_source(source, **kwargs)
    return list(rows), where


def normalize(rows, source_format):
    """load_data's normalisation of one chunk: (rows, TRL format, notes, problems)."""
    tally = _Tally()
    out, _kept, problems = _normalize_rows(rows, source_format, 0, tally)
    return out, TRL_FORMAT[source_format], _notes(source_format, tally, len(rows)), problems


CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]
PC = [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Grass is", "completion": " green."}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


# --------------------------------------------------------------------------- module hygiene


def test_import_does_not_load_heavy_libraries():
    code = "import sft_magics.core.data, sys; print(any(m in sys.modules for m in ('datasets', 'pandas', 'pyarrow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_row_problem_str_and_data_error_is_one_line():
    p = RowProblem(3, "messages[2].role", "unknown role 'robot'")
    assert str(p) == "row 3 messages[2].role: unknown role 'robot'"
    err = DataError("first\nsecond", [p])
    assert str(err) == "first second"
    assert err.problems == [p]
    assert isinstance(err, ValueError)
    assert DataError("x").problems == []


# --------------------------------------------------------------------------- sources


def test_jsonl_source_skips_blank_lines(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CHAT[0]) + "\n\n   \n" + json.dumps(CHAT[1]) + "\n", encoding="utf-8")
    rows, where = read_source(str(path))
    assert rows == CHAT
    assert where == str(path)
    loaded = load_data(str(path))
    assert isinstance(loaded, LoadedData)
    assert len(loaded) == 2
    assert loaded.format == loaded.source_format == "messages"
    assert loaded.dataset.to_list() == CHAT
    assert loaded.source == str(path)
    assert loaded.notes == ()


def test_json_list_and_data_object(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(PC), encoding="utf-8")
    as_obj = tmp_path / "obj.json"
    as_obj.write_text(json.dumps({"data": PC, "meta": {"v": 1}}), encoding="utf-8")
    assert read_source(str(as_list))[0] == PC
    assert read_source(str(as_obj))[0] == PC
    loaded = load_data(str(as_obj))
    assert loaded.format == "prompt_completion"
    assert loaded.dataset.to_list() == PC


def test_json_object_without_rows_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"foo": 1, "bar": []}), encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.json: expected a list of rows or an object with a 'data'.*keys foo, bar"
    ):
        read_source(str(path))


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(path, PC)
    assert read_source(str(path))[0] == PC


def test_csv_with_messages_as_json_text(tmp_path):
    path = tmp_path / "chat.csv"
    pd.DataFrame({"messages": [json.dumps(r["messages"]) for r in CHAT], "id": [1, 2]}).to_csv(path, index=False)
    rows, _ = read_source(str(path))
    assert rows == [{"messages": CHAT[0]["messages"], "id": "1"}, {"messages": CHAT[1]["messages"], "id": "2"}]
    loaded = load_data(str(path))
    assert loaded.format == "messages"
    assert loaded.dataset.to_list() == CHAT
    assert loaded.notes == ("dropped columns not used by the messages format: id",)


def test_csv_plain_prompt_completion_and_empty_cells_become_none(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text('prompt,completion\nThe sky is, blue.\n"[not json",123\nGrass is,\n', encoding="utf-8")
    rows, _ = read_source(str(path))
    # Text that is not a message list stays text; numbers stay strings; empty cells are None.
    assert rows == [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "[not json", "completion": "123"},
        {"prompt": "Grass is", "completion": None},
    ]
    with pytest.raises(DataError) as info:
        load_data(str(path))
    assert info.value.problems == [RowProblem(2, "completion", "is null")]


def test_parquet_source(tmp_path):
    path = tmp_path / "chat.parquet"
    pd.DataFrame(CHAT).to_parquet(path)
    rows, where = read_source(str(path))
    assert rows == CHAT
    assert where == str(path)
    assert load_data(str(path)).dataset.to_list() == CHAT


def test_glob_concatenates_files_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [PC[1]])
    write_jsonl(tmp_path / "a.jsonl", [PC[0]])
    pattern = str(tmp_path / "*.jsonl")
    rows, where = read_source(pattern)
    assert rows == PC
    assert where == f"{pattern} (2 files)"
    assert load_data(pattern).dataset.to_list() == PC


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataError, match=r"^no files match .*\*\.jsonl$"):
        read_source(str(tmp_path / "*.jsonl"))


def test_save_to_disk_dataset_folder(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(PC).save_to_disk(str(folder))
    rows, where = read_source(str(folder))
    assert rows == PC
    assert where == str(folder)


def test_save_to_disk_dataset_dict_folder_with_split(tmp_path):
    folder = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PC), "test": datasets.Dataset.from_list([PC[0]])}
    ).save_to_disk(str(folder))
    assert read_source(str(folder)) == (PC, f"{folder}[train]")
    assert read_source(str(folder), split="test") == ([PC[0]], f"{folder}[test]")
    with pytest.raises(DataError, match=r"split 'dev' not found \(available: train, test\)"):
        read_source(str(folder), split="dev")


def test_plain_folder_is_not_a_source(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="folder is not a datasets save_to_disk folder"):
        read_source(str(tmp_path / "plain"))


@pytest.mark.parametrize(
    "make, expected_where",
    [
        (lambda: list(PC), "variable 'rows'"),
        (lambda: pd.DataFrame(PC), "variable 'rows'"),
        (lambda: datasets.Dataset.from_list(PC), "variable 'rows'"),
        (lambda: datasets.DatasetDict({"train": datasets.Dataset.from_list(PC)}), "variable 'rows'[train]"),
    ],
    ids=["list", "dataframe", "dataset", "datasetdict"],
)
def test_namespace_variable_by_name(make, expected_where, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the Hub"))
    rows, where = read_source("rows", namespace={"rows": make()})
    assert rows == PC
    assert where == expected_where
    loaded = load_data("rows", namespace={"rows": make()})
    assert loaded.dataset.to_list() == PC
    assert loaded.source == expected_where


def test_namespace_datasetdict_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(PC), "val": datasets.Dataset.from_list(PC[:1])})
    assert read_source("dd", split="val", namespace={"dd": dd}) == (PC[:1], "variable 'dd'[val]")


def test_namespace_variable_of_wrong_type():
    with pytest.raises(DataError, match=r"variable 'n': unsupported data object of type int"):
        read_source("n", namespace={"n": 3})


def test_plain_folder_does_not_hide_a_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert read_source("data", namespace={"data": PC}) == (PC, "variable 'data'")


@pytest.mark.parametrize(
    "obj",
    [
        list(PC),
        pd.DataFrame(PC),
        datasets.Dataset.from_list(PC),
        datasets.DatasetDict({"train": datasets.Dataset.from_list(PC)}),
    ],
    ids=["list", "dataframe", "dataset", "datasetdict"],
)
def test_object_passed_directly(obj):
    rows, _ = read_source(obj)
    assert rows == PC
    loaded = load_data(obj)
    assert loaded.dataset.to_list() == PC
    assert loaded.format == "prompt_completion"


def test_dataframe_with_numpy_arrays_and_nan():
    frame = pd.DataFrame(CHAT)
    frame["messages"] = frame["messages"].map(lambda m: pd.Series(m).to_numpy())  # as parquet->pandas gives
    frame["score"] = [1.5, float("nan")]
    rows, _ = read_source(frame)
    assert rows == [{**CHAT[0], "score": 1.5}, {**CHAT[1], "score": None}]


def test_unsupported_object():
    with pytest.raises(DataError, match="unsupported data object of type int"):
        read_source(42)


def test_hub_dataset_passes_name_config_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, *, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(PC)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, where = read_source("org/pc-data", config="clean", split="validation")
    assert rows == PC
    assert where == "hub:org/pc-data:clean[validation]"
    loaded = load_data("org/pc-data")
    assert calls == [("org/pc-data", "clean", "validation"), ("org/pc-data", None, "train")]
    assert loaded.source == "hub:org/pc-data[train]"
    assert loaded.dataset.to_list() == PC


def test_hub_failure_is_one_line_and_mentions_the_hub(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'org/missing' on the Hub (LocalEntryNotFoundError)\nTraceback details\nmore"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        load_data("org/missing", namespace={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "could not load dataset 'org/missing' from the Hugging Face Hub (ConnectionError: Couldn't reach"
    )
    assert "Traceback" not in message
    assert "work offline" in message
    assert info.value.problems == []


def test_unknown_variable_name_goes_to_hub_with_a_hint(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("not found")))
    with pytest.raises(DataError, match="no notebook variable named 'rows'"):
        read_source("rows", namespace={"other": PC})


@pytest.mark.parametrize("name", ["missing.jsonl", "./missing", "/nowhere/data.csv", "sub/missing.parquet"])
def test_missing_file_is_not_sent_to_the_hub(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the Hub"))
    with pytest.raises(DataError, match=f"^file not found: {name}$"):
        read_source(name)


def test_missing_pathlib_path(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_source(tmp_path / "nope.jsonl")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"unsupported file type '\.txt' \(expected \.jsonl, \.json, \.csv, \.parquet\)"
    ):
        read_source(str(path))


def test_empty_file_has_no_rows(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows$"):
        load_data(str(path))


# --------------------------------------------------------------------------- formats


def test_messages_with_tool_calls_and_tools_column():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "18C", "name": "get_weather", "tool_call_id": "c1"},
                {"role": "assistant", "content": "18C and sunny.", "weight": 1},
            ],
            "tools": tools,
            "id": 7,
        },
        {"messages": msgs(("user", "Hi"), ("assistant", "Hello"))},
    ]
    assert detect_format(rows) == "messages"
    out, fmt, notes, problems = normalize(rows, "messages")
    assert problems == []
    assert fmt == "messages"
    assert out == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "18C", "name": "get_weather", "tool_call_id": "c1"},
                {"role": "assistant", "content": "18C and sunny."},
            ],
            "tools": tools,
        },
        {"messages": msgs(("user", "Hi"), ("assistant", "Hello")), "tools": None},
    ]
    assert notes == [
        "kept tools column for tool-calling templates (1 of 2 rows)",
        "dropped columns not used by the messages format: id",
        "dropped message keys chat templates do not use: weight",
    ]
    loaded = load_data(rows)
    assert loaded.dataset.column_names == ["messages", "tools"]
    stored = loaded.dataset[0]["messages"][2]
    assert stored["tool_calls"][0]["function"]["name"] == "get_weather"
    assert loaded.dataset[1]["tools"] is None


def test_conversations_with_role_content_counts_as_messages():
    rows = [{"conversations": r["messages"]} for r in CHAT]
    assert detect_format(rows) == "messages"
    loaded = load_data(rows)
    assert loaded.source_format == loaded.format == "messages"
    assert loaded.dataset.to_list() == CHAT
    assert loaded.notes == ("conversations column (role/content) -> messages (2 rows)",)


def test_sharegpt():
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "Human", "value": "Weather?"},
                {"from": "observation", "value": "sunny"},
                {"from": "model", "value": "Sunny."},
            ],
            "source": "web",
        },
        {"conversations": [{"from": "user", "value": "Q"}, {"from": "bot", "value": "A"}], "system": "Short answers."},
    ]
    assert detect_format(rows) == "sharegpt"
    out, fmt, notes, problems = normalize(rows, "sharegpt")
    assert problems == []
    assert fmt == "messages"
    assert out == [
        {
            "messages": msgs(
                ("system", "Be kind."),
                ("user", "Hi"),
                ("assistant", "Hello"),
                ("user", "Weather?"),
                ("tool", "sunny"),
                ("assistant", "Sunny."),
            )
        },
        {"messages": msgs(("system", "Short answers."), ("user", "Q"), ("assistant", "A"))},
    ]
    assert notes == [
        "sharegpt conversations from/value -> messages role/content "
        "(Human -> user, bot -> assistant, gpt -> assistant, human -> user, model -> assistant, observation -> tool)",
        "sharegpt system column -> leading system message (1 rows)",
        "dropped columns not used by the sharegpt format: source",
    ]


def test_sharegpt_unknown_role():
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]}]
    _, _, _, problems = normalize(rows, "sharegpt")
    assert problems == [
        RowProblem(
            0,
            "conversations[1].from",
            "unknown role 'robot' (expected human, user, gpt, assistant, model, bot, system, tool, function, observation)",
        )
    ]


def test_alpaca_with_and_without_input_and_with_system():
    rows = [
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Say hi", "input": "  ", "output": "Hi!"},
        {"instruction": "Add", "output": "4", "system": "You are a calculator."},
        {"instruction": "Name a colour", "input": None, "output": "Red", "system": ""},
    ]
    assert detect_format(rows) == "alpaca"
    out, fmt, notes, problems = normalize(rows, "alpaca")
    assert problems == []
    assert fmt == "messages"
    assert out == [
        {"messages": msgs(("user", "Translate to French\n\ncat"), ("assistant", "chat"))},
        {"messages": msgs(("user", "Say hi"), ("assistant", "Hi!"))},
        {"messages": msgs(("system", "You are a calculator."), ("user", "Add"), ("assistant", "4"))},
        {"messages": msgs(("user", "Name a colour"), ("assistant", "Red"))},
    ]
    assert notes[0] == "alpaca instruction/input/output -> messages (user, assistant)"
    assert "alpaca system column -> leading system message (1 rows)" in notes
    loaded = load_data(rows)
    assert loaded.source_format == "alpaca" and loaded.format == "messages"
    assert loaded.dataset.to_list() == out


def test_alpaca_problems():
    rows = [{"instruction": "", "output": 3, "input": ["x"]}]
    _, _, _, problems = normalize(rows, "alpaca")
    assert problems == [
        RowProblem(0, "instruction", "is empty"),
        RowProblem(0, "input", "must be a string, got list"),
        RowProblem(0, "output", "must be a string, got int"),
    ]


def test_prompt_completion_plain():
    rows = [dict(r, extra=1) for r in PC]
    assert detect_format(rows) == "prompt_completion"
    out, fmt, notes, problems = normalize(rows, "prompt_completion")
    assert (out, fmt, problems) == (PC, "prompt_completion", [])
    assert notes == ["dropped columns not used by the prompt_completion format: extra"]


def test_prompt_completion_conversational():
    rows = [
        {"prompt": msgs(("system", "Be terse."), ("user", "Hi")), "completion": msgs(("assistant", "Hello"))},
        {"prompt": msgs(("user", "2+2?")), "completion": msgs(("assistant", "4"))},
    ]
    assert detect_format(rows) == "conversational_prompt_completion"
    out, fmt, notes, problems = normalize(rows, "conversational_prompt_completion")
    assert (out, fmt, notes, problems) == (rows, "conversational_prompt_completion", [], [])
    loaded = load_data(rows)
    assert loaded.format == "conversational_prompt_completion"
    assert loaded.dataset.to_list() == rows


def test_conversational_prompt_completion_problems():
    rows = [
        {"prompt": msgs(("user", "Hi")), "completion": msgs(("user", "Hello?"))},
        {"prompt": msgs(("user", "Hi")), "completion": msgs(("system", "x"), ("assistant", "y"))},
        {"prompt": "Hi", "completion": msgs(("assistant", "Hello"))},
    ]
    _, _, _, problems = normalize(rows, "conversational_prompt_completion")
    assert problems == [
        RowProblem(0, "completion", "no assistant turn, nothing to train on"),
        RowProblem(1, "completion[0].role", "system message must come first (it belongs in the prompt)"),
        RowProblem(2, "prompt", "must be a list of messages, got str"),
    ]


def test_text():
    rows = [{"text": "Once upon a time", "meta": "x"}, {"text": "The end"}]
    assert detect_format(rows) == "text"
    out, fmt, notes, problems = normalize(rows, "text")
    assert out == [{"text": "Once upon a time"}, {"text": "The end"}]
    assert fmt == "text" and problems == []
    assert notes == ["dropped columns not used by the text format: meta"]


def test_detect_by_majority_and_priority():
    assert detect_format([{"text": "a"}, {"text": "b"}, CHAT[0]]) == "text"
    assert detect_format([{"messages": [], "text": "a"}]) == "messages"


def test_no_known_format_names_the_columns():
    rows = [{"question": "q", "answer": "a"}, {"question": "q2", "id": 3}]
    with pytest.raises(DataError) as info:
        detect_format(rows)
    assert str(info.value) == (
        "no known format: columns are question, answer, id; "
        "expected one of messages | prompt+completion | text | instruction+output | conversations"
    )
    with pytest.raises(DataError, match=r"^list of 2 rows: no known format: columns are question, answer, id;"):
        load_data(rows)


def test_normalize_unknown_format():
    with pytest.raises(DataError, match="unknown format 'chatml'"):
        normalize(CHAT, "chatml")


# --------------------------------------------------------------------------- validation


def make_bad_file(path: Path) -> dict[int, list[tuple[str, str]]]:
    """A JSONL file mixing good rows with every kind of bad row; returns the expected problems."""
    good = json.dumps(CHAT[0])
    lines = [
        good,  # 0
        json.dumps({"messages": msgs(("user", "Hi"), ("robot", "Beep"))}),  # 1
        json.dumps({"messages": msgs(("user", "   "), ("assistant", "Hello"))}),  # 2
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),  # 3
        json.dumps({"messages": msgs(("system", "s"), ("user", "Hi"))}),  # 4
        json.dumps({"messages": msgs(("user", "Hi"), ("assistant", "Hey"), ("user", "Bye"))}),  # 5
        "",  # blank, skipped
        json.dumps({"messages": msgs(("user", "Hi"), ("system", "late"), ("assistant", "Hey"))}),  # 6
        json.dumps({"text": "wrong format"}),  # 7
        '{"messages": [oops',  # 8
        json.dumps({"messages": "user: hi"}),  # 9
        good,  # 10
        json.dumps(["a", "list"]),  # 11
        json.dumps({"messages": []}),  # 12
        json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "ok"}]}),  # 13
        json.dumps({"messages": msgs(("user", "Call it"), ("assistant", "Calling"), ("tool", "42"))}),  # 14
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        1: [("messages[1].role", "unknown role 'robot' (expected system, user, assistant, tool)")],
        2: [("messages[0].content", "is empty")],
        3: [("messages[0].content", "must be a string, got int")],
        4: [("messages", "no assistant turn, nothing to train on")],
        5: [("messages", "conversation ends on a user turn, nothing to train on")],
        6: [("messages[1].role", "system message must come first (found at position 1)")],
        7: [("messages", "missing (row has text)")],
        8: [("<row>", "invalid JSON (bad.jsonl line 10): Expecting value at column 15")],
        9: [("messages", "must be a list of messages, got str")],
        11: [("<row>", "must be an object, got list")],
        12: [("messages", "is empty, expected a list of messages")],
        13: [("messages[0].content", "missing")],
        14: [("messages", "conversation ends on a tool turn, nothing to train on")],
    }


def test_every_bad_row_is_reported_in_one_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    expected = make_bad_file(path)
    with pytest.raises(DataError) as info:
        load_data(str(path))
    err = info.value
    got = [(p.row, p.field, p.reason) for p in err.problems]
    assert got == [(row, f, r) for row, items in expected.items() for f, r in items]
    message = str(err)
    assert "\n" not in message
    n_problems = len(got)
    assert message == (
        f"{path}: 13 of 15 rows are invalid — "
        + "; ".join(str(p) for p in err.problems[:5])
        + f"; … and {n_problems - 5} more"
    )
    assert "row 1 messages[1].role: unknown role 'robot'" in message


def test_problem_limit_is_configurable(tmp_path):
    path = tmp_path / "bad.jsonl"
    make_bad_file(path)
    with pytest.raises(DataError) as info:
        load_data(str(path), max_problems_shown=100)
    assert "… and" not in str(info.value)
    assert str(info.value).count("; row ") == len(info.value.problems) - 1


def test_few_problems_have_no_more_suffix():
    rows = [CHAT[0], {"messages": msgs(("user", "Hi"))}]
    with pytest.raises(DataError) as info:
        load_data(rows)
    assert str(info.value) == (
        "list of 2 rows: 1 of 2 rows are invalid — row 1 messages: no assistant turn, nothing to train on"
    )


def test_one_row_may_have_several_problems():
    rows = [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": None}, "x"]}]
    _, _, _, problems = normalize(rows, "messages")
    assert problems == [
        RowProblem(0, "messages[0].content", "is empty"),
        RowProblem(0, "messages[1].content", "missing"),
        RowProblem(0, "messages[2]", "must be an object with role and content, got str"),
    ]


def test_tool_call_only_assistant_may_have_no_content():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Add 2 and 2"},
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "4"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ]
    out, _, _, problems = normalize(rows, "messages")
    assert problems == []
    assert out[0]["messages"][1]["content"] == ""
    bad = [
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": "add()"}]}
    ]
    assert normalize(bad, "messages")[3] == [
        RowProblem(0, "messages[1].tool_calls", "must be a list, got str"),
        RowProblem(0, "messages[1].content", "is empty"),
    ]


def test_prompt_completion_and_text_must_be_non_empty_strings():
    _, _, _, problems = normalize([{"prompt": "", "completion": 1}, {"prompt": "p"}], "prompt_completion")
    assert problems == [
        RowProblem(0, "prompt", "is empty"),
        RowProblem(0, "completion", "must be a string, got int"),
        RowProblem(1, "completion", "missing"),
    ]
    _, _, _, problems = normalize([{"text": "  "}, {"text": None}], "text")
    assert problems == [RowProblem(0, "text", "is empty"), RowProblem(1, "text", "is null")]


def test_long_role_values_are_shortened_in_messages():
    rows = [{"messages": [{"role": "x" * 500 + "\nmore", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    _, _, _, problems = normalize(rows, "messages")
    assert len(problems) == 1
    assert len(problems[0].reason) < 120
    assert "\n" not in problems[0].reason


# --------------------------------------------------------------------------- fingerprint and split


def test_fingerprint_is_stable_and_changes_with_data(tmp_path):
    a = load_data(list(PC))
    b = load_data(pd.DataFrame(PC))
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0
    changed = load_data([PC[0], {"prompt": "Grass is", "completion": " greener."}])
    assert changed.fingerprint != a.fingerprint
    reordered = load_data([PC[1], PC[0]])
    assert reordered.fingerprint != a.fingerprint
    # Recomputing from the stored dataset gives the same value (arrow's None-filled keys do not count).
    assert D._fingerprint(a.dataset.to_list()) == a.fingerprint
    tools = load_data([{"messages": CHAT[0]["messages"], "tools": [{"type": "function"}]}, CHAT[1]])
    assert D._fingerprint(tools.dataset.to_list()) == tools.fingerprint


def test_split_is_deterministic_and_sized_right():
    rows = [{"text": f"row {i}"} for i in range(20)]
    data = load_data(rows)
    train, val = train_val_split(data, 0.2, seed=7)
    assert (len(train), len(val)) == (16, 4)
    train_texts = [r["text"] for r in train.dataset]
    val_texts = [r["text"] for r in val.dataset]
    assert sorted(train_texts + val_texts, key=lambda t: int(t.split()[1])) == [r["text"] for r in rows]
    assert not set(train_texts) & set(val_texts)
    again_train, again_val = train_val_split(data, 0.2, seed=7)
    assert [r["text"] for r in again_val.dataset] == val_texts
    assert again_val.fingerprint == val.fingerprint and again_train.fingerprint == train.fingerprint
    other_train, other_val = train_val_split(data, 0.2, seed=8)
    assert [r["text"] for r in other_val.dataset] != val_texts
    assert train.source == "list of 20 rows [train]" and val.source == "list of 20 rows [validation]"
    assert train.format == val.format == data.format == "text"
    assert train.source_format == val.source_format == data.source_format
    assert train.notes == val.notes == data.notes
    assert len({train.fingerprint, val.fingerprint, data.fingerprint}) == 3


def test_split_takes_at_least_one_row():
    data = load_data(list(PC) + [{"prompt": "Snow is", "completion": " white."}])
    train, val = train_val_split(data, 0.01)
    assert (len(train), len(val)) == (2, 1)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, True, "0.1"])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(DataError, match="validation fraction must be between 0 and 1"):
        train_val_split(load_data(list(PC)), fraction)


def test_a_whole_number_is_a_row_count():  # alignment-handbook's test_split_size: 1000
    train, val = train_val_split(load_data(list(PC)), 1)
    assert (len(train), len(val)) == (1, 1)
    with pytest.raises(DataError, match="validation rows 2 of 2 rows leaves no training rows"):
        train_val_split(load_data(list(PC)), 2)


def test_split_rejects_too_few_rows():
    with pytest.raises(DataError, match="need at least 2 rows"):
        train_val_split(load_data([PC[0]]), 0.5)
    with pytest.raises(DataError, match="leaves no training rows"):
        train_val_split(load_data(list(PC)), 0.9)


def test_sample_data_is_seeded_keeps_source_numbers_and_refuses_bad_sizes():
    from sft_magics.core.data.load import sample_data

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)]
    data = load_data(rows)
    a, b = sample_data(data, 5), sample_data(data, 5)
    assert a.row_index == b.row_index and list(a.row_index) == sorted(a.row_index) and a.sampled_from == 50
    assert [r["prompt"] for r in a.dataset] == [f"p{i}" for i in a.row_index]
    assert sample_data(data, 5, seed=1).row_index != a.row_index
    assert sample_data(data, 50) is data and sample_data(data, 10**9) is data
    for bad in (0, -3, 2.5, True, "7"):
        with pytest.raises(DataError, match="sample size must be a whole number"):
            sample_data(data, bad)
