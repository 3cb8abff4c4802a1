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


def test_no_validation_sentence_occurs_in_training():
    from sft_magics.core.data.load import load_data

    def rows(path):
        return [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in load_data(str(path)).dataset]

    train, val = rows(DATA / "train.jsonl"), rows(DATA / "val.jsonl")
    assert not {q for q, _ in train} & {q for q, _ in val}
    assert len({q for q, _ in val}) == 40
    people = [json.loads(a) for _, a in train + val if a.startswith("{")]
    assert len(people) == 440
    for p in people:
        assert set(p) == {"name", "age", "city", "country"} and isinstance(p["age"], int)
    # Name, age and city are in the sentence; the country is not (the model has to know it).
    for q, a in val:
        p = json.loads(a)
        assert p["name"] in q and str(p["age"]) in q and p["city"] in q
        assert p["country"] not in q


def test_every_city_has_one_country_and_is_seen_in_training():
    gen = _generator()
    train, val = gen.generate()
    answers = [json.loads(r["messages"][-1]["content"]) for r in train if r["messages"][-1]["content"].startswith("{")]
    countries = {}
    for p in answers:
        countries.setdefault(p["city"], set()).add(p["country"])
    assert all(len(c) == 1 for c in countries.values())
    assert set(countries) == set(gen.CITY_COUNTRY)  # every validation city was seen with its country
    for r in val:
        assert json.loads(r["messages"][-1]["content"])["city"] in countries


def test_one_training_row_in_five_is_plain_chat():
    train, _ = _generator().generate()
    chat = [r for r in train if not r["messages"][-1]["content"].startswith("{")]
    assert len(chat) == 100
    assert all(r["messages"][-1]["content"].endswith(".") for r in chat)


def test_no_training_row_is_repeated():
    train, _ = _generator().generate()
    assert len({json.dumps(r, sort_keys=True) for r in train}) == len(train)
