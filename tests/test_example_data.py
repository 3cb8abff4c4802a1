"""The bundled example task: reproducible, held-out, valid, and the shape the demo expects."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("generate", DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_the_generator_writes():
    gen = _generator()
    train, val = gen.generate()
    assert (DATA / "train.jsonl").read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train)
    assert (DATA / "val.jsonl").read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in val)
    assert (len(train), len(val)) == (500, 40)


def test_validation_names_and_cities_never_appear_in_training():
    from sft_magics.core.data import load_data

    def people(path):
        data = load_data(str(path))
        answers = [row["messages"][-1]["content"] for row in data.dataset]
        return [json.loads(a) for a in answers if a.startswith("{")]

    train, val = people(DATA / "train.jsonl"), people(DATA / "val.jsonl")
    assert not {p["name"] for p in train} & {p["name"] for p in val}
    assert not {p["city"] for p in train} & {p["city"] for p in val}
    assert len(train) == 400 and len(val) == 40
    for p in train + val:
        assert set(p) == {"name", "age", "city"} and isinstance(p["age"], int)


def test_one_training_row_in_five_is_plain_chat():
    train, _ = _generator().generate()
    chat = [r for r in train if not r["messages"][-1]["content"].startswith("{")]
    assert len(chat) == 100
    assert all(r["messages"][-1]["content"].endswith(".") for r in chat)
