"""Training rows are prepared once (core/prepared.py): cached by what decides them, prepared again
when any of it changes, and a damaged or unwritable cache costs only time."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_magics.core.data.load import load_data
from sft_magics.core.template.prepared import to_trl_rows
from tests.core.template.test_stats import DATASETS, MARKERS_TEMPLATE


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Our own cache folder, and a count of the preparations actually computed."""
    from sft_magics.core.template import counts as token_counts

    monkeypatch.setenv("SFT_MAGICS_CACHE", str(tmp_path / "cache"))
    calls = []
    real = token_counts.encode_rows

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(token_counts, "encode_rows", counting)
    return calls


def test_prepared_rows_are_cached_by_what_decides_them(counted, tmp_path, tiny_model):
    from sft_magics.core.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    data = load_data(DATASETS["multi-turn"])
    first = to_trl_rows(data, tok)
    assert len(counted) == 1
    again = to_trl_rows(data, tok)
    assert len(counted) == 1 and again.to_list() == first.to_list()  # loaded, the same rows
    entries = sorted((tmp_path / "cache" / "prepared").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no partial entry left

    # Anything that decides the ids or masks makes a new entry: the switch, the template, the rows.
    every = to_trl_rows(data, tok, train_on_all=True)
    assert len(counted) == 2 and every.to_list() != first.to_list()
    markers = load_tokenizer(tiny_model)
    markers.chat_template = MARKERS_TEMPLATE
    to_trl_rows(data, markers)
    to_trl_rows(load_data(DATASETS["multi-turn"][:2]), tok)
    assert len(counted) == 4 and len(list((tmp_path / "cache" / "prepared").iterdir())) == 4
    assert to_trl_rows(data, tok, cache=False).to_list() == first.to_list() and len(counted) == 5


def test_a_damaged_or_unwritable_cache_costs_only_time(counted, tmp_path, tiny_model, monkeypatch):
    from sft_magics.core.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    data = load_data(DATASETS["messages"])
    first = to_trl_rows(data, tok).to_list()
    (entry,) = (tmp_path / "cache" / "prepared").iterdir()
    for arrow in entry.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:40])  # a truncated file: a killed save, a bad disk
    assert to_trl_rows(data, tok).to_list() == first and len(counted) == 2  # prepared again
    assert to_trl_rows(data, tok).to_list() == first and len(counted) == 2  # and stored again, whole
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SFT_MAGICS_CACHE", str(blocked))
    assert to_trl_rows(data, tok).to_list() == first and len(counted) == 3
    assert Path(blocked).read_text().startswith("a file")


def test_several_processes_prepare_the_same_rows(tmp_path, tiny_model, monkeypatch):
    """dataset_num_proc (TRL's name): chunks prepared side by side in worker processes give exactly
    the rows one process gives; one process unless asked (TRL's default)."""
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template import prepared

    monkeypatch.setenv("SFT_MAGICS_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer(tiny_model)
    rows = [DATASETS["multi-turn"][i % len(DATASETS["multi-turn"])] for i in range(24)]
    data = load_data(rows)
    one = to_trl_rows(data, tok, chunk=4, cache=False, num_proc=1)
    two = to_trl_rows(data, tok, chunk=4, cache=False, num_proc=2)
    assert two.to_list() == one.to_list() and len(one) == 24
    assert prepared._processes(None, 24, 4) == 1  # TRL's default: one process
    assert prepared._processes(8, 24, 4) == 6 and prepared._processes(3, 7, 4) == 2  # no more than the chunks
    assert prepared._processes(0, 7, 4) == 1
