"""The data doctor: batched statistics (checked row by row against tokenize_row), truncation counts
on hand-built rows, duplicates, turns, epochs, strict=False loading, the report, the histogram, the
row browser widget, HTML escaping, and %sft_data."""

from __future__ import annotations

import base64
import io
import json
import sys

import pytest

from sft_magics.core.data.load import load_data
from sft_magics.core.data.types import DataError
from sft_magics.core.template.counts import _ranges_from_spans
from sft_magics.core.template.doctor import data_stats
from sft_magics.core.template.tokens import MASK_MARKERS, choose_mask_method, tokenize_row
from sft_magics.display._data_view import DataView, RowBrowser, histogram_png


def M(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


MARKERS_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOL = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}},
}

DATASETS = {
    "messages": [
        {"messages": M(("user", "What is two plus two?"), ("assistant", "Four."))},
        {"messages": M(("user", "Hi  there\n\n"), ("assistant", "  Hello!  \n"))},
        {
            "messages": M(
                ("system", "Be brief."), ("user", "Alice is 34."), ("assistant", '{"name": "Alice", "age": 34}')
            )
        },
    ],
    "multi-turn": [
        {
            "messages": M(
                ("system", "Be brief."),
                ("user", "2+2?"),
                ("assistant", "4"),
                ("user", "and 3+3?"),
                ("assistant", " 6 "),
            )
        },
        {
            "messages": M(
                ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f")
            )
        },
        {"messages": M(("user", "q"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")), "tools": [TOOL]},
    ],
    "prompt_completion": [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "Grass  ", "completion": "green\n"},
        {"prompt": "Extract: Alice is 34", "completion": '{"name": "Alice"}'},
    ],
    "conversational_prompt_completion": [
        {"prompt": M(("user", "hi")), "completion": M(("assistant", "yo"))},
        {
            "prompt": M(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2")),
            "completion": M(("assistant", "a2")),
        },
    ],
    "text": [{"text": "hello world"}, {"text": "  spaced  out \n"}, {"text": "The capital of France is Paris."}],
}


@pytest.fixture(scope="module")
def tok(tiny_model):
    from sft_magics.core.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def markers_tok(tiny_model):
    from sft_magics.core.models import load_tokenizer

    t = load_tokenizer(tiny_model)
    t.chat_template = MARKERS_TEMPLATE
    return t


def _mask(ranges, n):
    mask = [0] * n
    for a, b in ranges:
        mask[a:b] = [1] * (b - a)
    return mask


# --------------------------------------------------------------------------- batched == tokenize_row


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("which", ["chatml", "markers"])
def test_batched_counts_equal_tokenize_row_for_every_row(name, which, tok, markers_tok):
    tokenizer = tok if which == "chatml" else markers_tok
    data = load_data(DATASETS[name])
    stats = data_stats(data, tokenizer)
    method = choose_mask_method(tokenizer) if data.format == "messages" else None
    if which == "markers" and data.format == "messages":
        assert method[0] == MASK_MARKERS  # the batched generation-markers path is the one tested
    assert stats.rows == len(DATASETS[name])
    for i in range(len(data)):
        r = tokenize_row(tokenizer, data.dataset[i], data.format, method=method)
        assert stats.total_tokens[i] == len(r.tokens), (name, i)
        assert stats.trained_tokens_full[i] == r.trained_count == stats.trained_tokens[i], (name, i)
        assert _mask(stats.trained_ranges[i], len(r.tokens)) == r.assistant_masks, (name, i)


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("which", ["chatml", "markers"])
def test_training_rows_equal_tokenize_row_for_every_row(name, which, tok, markers_tok):
    """What training is fed (to_trl_rows: batched, in chunks) is tokenize_row's ids and masks, row by row."""
    from sft_magics.core.template.prepared import to_trl_rows

    tokenizer = tok if which == "chatml" else markers_tok
    data = load_data(DATASETS[name])
    method = choose_mask_method(tokenizer) if data.format == "messages" else None
    rows = to_trl_rows(data, tokenizer, chunk=2)  # chunks smaller than the data: their borders are crossed
    assert len(rows) == len(data)
    for i in range(len(data)):
        r = tokenize_row(tokenizer, data.dataset[i], data.format, method=method)
        assert rows[i]["input_ids"] == r.input_ids, (name, i)
        assert rows[i]["assistant_masks"] == [int(m) for m in r.assistant_masks], (name, i)
    every = to_trl_rows(data, tokenizer, train_on_all=True)
    assert [sum(m) for m in every["assistant_masks"]] == [len(x) for x in every["input_ids"]]


def test_rows_the_template_cannot_render_are_reported_not_fatal(tiny_model):
    """A template that raises for one row, and a row with no prompt before the answer (prefix
    rendering cannot start it): both listed as template errors; every other row still counted exactly."""
    from sft_magics.core.models import load_tokenizer
    from sft_magics.testing import CHATML_TEMPLATE

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = (
        "{% if messages[-1]['content'] == 'BOOM' %}{{ raise_exception('no BOOM here') }}{% endif %}" + CHATML_TEMPLATE
    )
    rows = [
        {"messages": M(("user", "a"), ("assistant", "b"))},
        {"messages": M(("user", "a"), ("assistant", "BOOM"))},
        {"messages": M(("assistant", "answer first"))},
        {"messages": M(("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f"))},
    ]
    data = load_data(rows)
    stats = data_stats(data, tokenizer, max_length=10_000)
    assert [p.row for p in stats.template_errors] == [1, 2]
    assert "no BOOM here" in stats.template_errors[0].reason
    for i in (0, 3):
        r = tokenize_row(tokenizer, data.dataset[i], "messages")
        assert (stats.total_tokens[i], stats.trained_tokens[i]) == (len(r.tokens), r.trained_count)
    assert stats.no_trained_left == 0 and stats.summary()["total_tokens"]["min"] > 0  # failed rows not counted
    text = DataView(data, stats).to_text()
    assert "2 rows could not be rendered by the chat template" in text and "row 1 <template>" in text
    # Training is not the doctor: the row's own error stops the preparation, as tokenize_row would.
    from sft_magics.core.template.prepared import to_trl_rows
    from sft_magics.core.template.render import TemplateError

    with pytest.raises(TemplateError, match="no BOOM here"):
        to_trl_rows(load_data(rows[:2]), tokenizer)


def test_statistics_do_not_depend_on_the_chunk_size(tiny_model):
    """The doctor reads rows a chunk at a time (bounded memory): every number, row list and note is
    the same with chunks of 1, 2, 3 rows as in one chunk, with duplicates across chunk borders,
    template errors, dropped content and invalid rows left out (source row numbers kept)."""
    from dataclasses import asdict

    from sft_magics.core.models import load_tokenizer
    from sft_magics.testing import CHATML_TEMPLATE

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = (
        "{% if messages[-1]['content'] == 'BOOM' %}{{ raise_exception('no BOOM here') }}{% endif %}"
        + CHATML_TEMPLATE.replace("message['content']", "(message['content'] if message['role'] != 'system' else '')")
    )
    a = {"messages": M(("user", "a"), ("assistant", "b"))}
    rows = [
        a,
        {"messages": M(("user", "a"), ("assistant", "BOOM"))},
        {"messages": "not a list"},  # invalid: left out, source numbers shift
        {"messages": M(("system", "dropped by the template"), ("user", "c"), ("assistant", "d"))},
        a,
        {"messages": M(("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f"))},
        a,
        {"messages": M(("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f"))},
    ]
    data = load_data(rows, strict=False)
    whole = asdict(data_stats(data, tokenizer, max_length=12, chunk=1000))
    assert whole["duplicates"] == 3 and whole["duplicate_groups"] == [[0, 4, 6], [5, 7]]
    assert [p["row"] for p in whole["template_errors"]] == [1] and whole["invalid_rows"] == 1
    assert [i for i, _ in whole["template_drops"]] == [3]
    for size in (1, 2, 3):
        assert asdict(data_stats(data, tokenizer, max_length=12, chunk=size)) == whole, size


def test_chunks_are_sized_by_the_rows_they_hold_not_the_whole_table():
    """A sample (select() keeps the whole Arrow table underneath) is read in chunks sized by its
    rows' bytes; long rows make chunks smaller (about CHUNK_BYTES each)."""
    from sft_magics.core.data.load import sample_data
    from sft_magics.core.data.types import dataset_chunks

    rows = [{"prompt": f"{i} " + "x" * 1000, "completion": "y"} for i in range(2000)]
    sample = sample_data(load_data(rows), 100)
    assert [len(c) for _, c in dataset_chunks(sample.dataset, 1000)] == [100]
    long_rows = load_data([{"prompt": f"{i} " + "x" * 1_000_000, "completion": "y"} for i in range(7)])
    sizes = [len(c) for _, c in dataset_chunks(long_rows.dataset, 1000)]
    assert sizes == [2, 2, 2, 1] and sum(sizes) == 7  # ~1 MB rows: 2 of them per ~3 MB chunk


def test_a_template_that_is_not_prefix_preserving_falls_back_like_tokenize_row(tiny_model):
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template.tokens import MASK_LAST_TURN
    from sft_magics.testing import CHATML_TEMPLATE

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = CHATML_TEMPLATE + "{{ '#' ~ (messages | length) }}"  # the end depends on the length
    data = load_data(DATASETS["multi-turn"][:2])
    stats = data_stats(data, tokenizer)
    for i in range(len(data)):
        r = tokenize_row(tokenizer, data.dataset[i], "messages")
        assert r.mask_source == MASK_LAST_TURN
        assert (stats.total_tokens[i], stats.trained_tokens[i]) == (len(r.tokens), r.trained_count)
        assert _mask(stats.trained_ranges[i], len(r.tokens)) == r.assistant_masks
    from sft_magics.core.template.prepared import to_trl_rows

    rows = to_trl_rows(data, tokenizer)
    for i in range(len(data)):
        r = tokenize_row(tokenizer, data.dataset[i], "messages")
        assert (rows[i]["input_ids"], rows[i]["assistant_masks"]) == (r.input_ids, [int(m) for m in r.assistant_masks])


def test_batched_counts_on_the_example_data(tok):
    """The bundled task, every row: same totals and trained counts as tokenize_row."""
    from pathlib import Path

    data = load_data(str(Path(__file__).resolve().parents[3] / "examples" / "data" / "val.jsonl"))
    stats = data_stats(data, tok)
    method = choose_mask_method(tok)
    for i in range(len(data)):
        r = tokenize_row(tok, data.dataset[i], data.format, method=method)
        assert (stats.total_tokens[i], stats.trained_tokens_full[i]) == (len(r.tokens), r.trained_count)


def test_spans_to_ranges_follows_the_start_rule():
    # A token is trained when it is not empty and starts inside a span.
    assert _ranges_from_spans([(0, 1), (1, 1), (1, 3), (3, 4)], [(1, 4)]) == ((2, 4),)
    assert _ranges_from_spans([(0, 2), (2, 4), (4, 6)], [(0, 2), (2, 5)]) == ((0, 3),)  # adjacent spans merge
    assert _ranges_from_spans([(2, 3), (0, 1), (1, 2)], [(0, 2)]) == ((1, 3),)  # out-of-order offsets


# --------------------------------------------------------------------------- hand-checkable counts


def _truncation_rows():
    # "~" is one token per character for the tiny tokenizer; an answer of n "~" is n tokens, then
    # <|im_end|> and "\n" (both trained).
    return [
        {"messages": M(("user", "Q"), ("assistant", "~" * 3))},  # 0: P+5 tokens: fits
        {"messages": M(("user", "Q"), ("assistant", "~" * 4))},  # 1: only the final "\n" is cut: end token kept
        {"messages": M(("user", "Q"), ("assistant", "~" * 8))},  # 2: cut inside the answer: end token lost
        {"messages": M(("user", "Q" + "~" * 10), ("assistant", "~"))},  # 3: the prompt alone fills max_length
        {"messages": M(("user", "Q"), ("assistant", "~" * 3))},  # 4: duplicate of row 0
    ]


def test_truncation_end_token_and_no_trained_counts(tok):
    assert (
        tok("~~~~", add_special_tokens=False)["input_ids"] == [96] * 4
        or len(tok("~~~~", add_special_tokens=False)["input_ids"]) == 4
    )
    data = load_data(_truncation_rows())
    first = tokenize_row(tok, data.dataset[0], "messages")
    prompt = first.prompt_length
    assert [t.text for t in first.tokens[prompt:]] == ["~", "~", "~", "<|im_end|>", "\n"]
    max_length = prompt + 5

    stats = data_stats(data, tok, max_length=max_length, batch_size=2, grad_accum=2)
    assert stats.total_tokens[:3] == [prompt + 5, prompt + 6, prompt + 10]
    assert stats.trained_tokens_full == [5, 6, 10, 3, 5]
    assert stats.trained_tokens == [5, 5, 5, 0, 5]
    assert (stats.truncated, stats.truncated_rows) == (3, [1, 2, 3])
    assert (stats.end_lost, stats.end_lost_rows) == (1, [2])
    assert (stats.no_trained_left, stats.no_trained_rows) == (1, [3])
    assert stats.end_positions[:3] == [prompt + 3, prompt + 4, prompt + 8]  # the <|im_end|> of each answer

    assert (stats.duplicates, stats.duplicate_groups, stats.duplicate_group_count) == (1, [[0, 4]], 1)
    # An epoch: 5 rows -> 3 batches of 2 -> 2 optimizer steps; TRL drops row 3 -> 4 rows -> 1 step.
    assert stats.steps_per_epoch() == 2 and stats.steps_per_epoch(after_drops=True) == 1
    assert stats.steps_per_epoch(batch_size=1, grad_accum=1) == 5
    assert stats.rows_trained == 4
    assert stats.tokens_per_epoch == 4 * max_length - 0  # rows 0, 1, 2, 4 each read max_length tokens (row 0: exactly)
    assert stats.trained_tokens_per_epoch == 20

    # Without max_length nothing is cut; the same numbers come from .at() without tokenizing again.
    free = data_stats(data, tok)
    assert (free.truncated, free.end_lost, free.no_trained_left) == (0, 0, 0)
    assert free.trained_tokens == free.trained_tokens_full == [5, 6, 10, 3, 5]
    again = free.at(max_length)
    for key in ("trained_tokens", "truncated_rows", "end_lost_rows", "no_trained_rows"):
        assert getattr(again, key) == getattr(stats, key)
    assert stats.at(None).truncated == 0


def test_roles_turns_and_summaries(tok):
    rows = [
        {"messages": M(("user", "a"), ("assistant", "b"))},
        {"messages": M(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))},
        {
            "messages": M(
                ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f")
            )
        },
    ]
    stats = data_stats(load_data(rows), tok)
    assert stats.roles == {"assistant": 6, "system": 1, "user": 6}
    assert stats.turns == [1, 2, 3] and stats.messages_per_row == [2, 5, 6]
    assert stats.turns_summary() == {"min": 1, "mean": 2.0, "max": 3}
    assert stats.duplicates == 0
    s = stats.summary()
    assert s["total_tokens"]["min"] == min(stats.total_tokens) and s["total_tokens"]["max"] == max(stats.total_tokens)
    assert "trained_tokens_full" not in s  # only with a max_length


def test_text_and_prompt_completion_have_no_turns(tok):
    stats = data_stats(load_data(DATASETS["text"]), tok)
    assert stats.turns == [] and stats.roles == {} and stats.turns_summary() is None
    assert stats.trained_tokens == stats.total_tokens  # plain text: every token trained


# --------------------------------------------------------------------------- strict=False


BAD_ROWS = [
    {"messages": M(("user", "a"), ("assistant", "b"))},
    {"messages": M(("robot", "a"), ("assistant", "b"))},
    {"messages": M(("user", "a"))},
    {"messages": M(("user", "Q" + "~" * 30), ("assistant", "c"))},
]


def test_load_data_strict_false_keeps_valid_rows_and_reports_the_rest():
    with pytest.raises(DataError, match="2 of 4 rows are invalid"):
        load_data(BAD_ROWS)  # the default is unchanged
    data = load_data(BAD_ROWS, strict=False)
    assert len(data) == 2 and data.row_index == (0, 3)
    assert [(p.row, p.field) for p in data.problems] == [(1, "messages[0].role"), (2, "messages")]
    assert [i for i, _ in data.invalid_rows] == [1, 2] and data.invalid_rows[0][1] == BAD_ROWS[1]
    assert data.source_index(1) == 3
    good = load_data(BAD_ROWS[:1], strict=False)
    assert good.problems == () and good.row_index is None and good.invalid_rows == ()


def test_strict_false_still_raises_when_no_row_is_valid():
    with pytest.raises(DataError, match="2 of 2 rows are invalid"):
        load_data(BAD_ROWS[1:3], strict=False)
    with pytest.raises(DataError, match="no known format"):
        load_data([{"foo": 1}], strict=False)


def test_stats_report_source_row_numbers_when_rows_were_left_out(tok):
    data = load_data(BAD_ROWS, strict=False)
    fits = len(tokenize_row(tok, data.dataset[0], "messages").tokens)  # row 0 fits exactly
    stats = data_stats(data, tok, max_length=fits)
    assert stats.rows == 2 and stats.invalid_rows == 2 and stats.source_rows == 4
    assert [p.row for p in stats.problems] == [1, 2]
    assert stats.no_trained_rows == [3]  # source row 3 (dataset position 1): its long prompt fills max_length
    assert stats.truncated_rows == [3]


# --------------------------------------------------------------------------- the report


def test_data_view_text_has_the_numbers(tok):
    data = load_data(_truncation_rows() + BAD_ROWS[1:3], strict=False)
    first = tokenize_row(tok, data.dataset[0], "messages")
    max_length = first.prompt_length + 5
    stats = data_stats(data, tok, max_length=max_length, batch_size=2, grad_accum=2)
    text = DataView(data, stats).to_text()
    assert "format: messages → messages · 5 rows (2 invalid rows left out of 7)" in text
    assert "invalid rows: 2 of 7 rows are invalid" in text
    assert "row 5 messages[0].role: unknown role 'robot'" in text and "row 6 messages: no assistant turn" in text
    assert f"max_length {max_length}: 3 rows truncated, 1 with no trained token left" in text
    assert "1 lose their answer's end token" in text
    assert "truncated: rows 1, 2, 3" in text and "end token lost: rows 2" in text
    assert "duplicates: 1 row repeats an earlier row exactly (1 group): rows 0 = 4" in text
    assert "roles: assistant 5, user 5 · assistant turns per conversation: min 1 · mean 1.00 · max 1" in text
    assert "2 optimizer steps per epoch at batch size 2 × gradient accumulation 2" in text
    assert "1 once TRL drops the 1 rows with no trained token left" in text
    assert f"tokens per epoch: {4 * max_length:,} read, 20 trained" in text
    for label in ("total tokens", "trained tokens", f"trained tokens kept at max_length {max_length}"):
        assert label in text


def test_data_view_lists_the_first_20_problems_then_a_count(tok):
    rows = [{"messages": M(("user", "a"), ("assistant", "b"))}] + [
        {"messages": M(("user", f"u{i}"))} for i in range(25)
    ]
    data = load_data(rows, strict=False)
    text = DataView(data, data_stats(data, tok)).to_text()
    assert "row 20 messages" in text and "row 21 messages" not in text
    assert "… and 5 more problems" in text


def test_data_view_html_embeds_a_png_histogram_without_touching_pyplot(tok):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    figures = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    data = load_data(_truncation_rows())
    stats = data_stats(data, tok, max_length=30)
    html_out = DataView(data, stats).to_html()
    marker = 'src="data:image/png;base64,'
    assert marker in html_out
    png = base64.b64decode(html_out.split(marker, 1)[1].split('"', 1)[0])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == histogram_png(stats)
    assert "max_length 30: " in html_out and "<table>" in html_out
    if had_pyplot:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures
    else:
        assert "matplotlib.pyplot" not in sys.modules


def test_data_view_rich_form(tok):
    from rich.console import Console

    data = load_data(_truncation_rows())
    stats = data_stats(data, tok, max_length=30)
    console = Console(file=io.StringIO(), width=120)
    console.print(DataView(data, stats))
    out = console.file.getvalue()
    assert "tokens per example" in out and "total tokens" in out and f"{max(stats.total_tokens)}" in out
    assert "max_length 30:" in out


# --------------------------------------------------------------------------- browser and escaping

EVIL = "<script>alert(1)</script>"


def _evil_data():
    rows = [
        {"messages": M(("user", "first"), ("assistant", "one"))},
        {"messages": M(("user", EVIL), ("assistant", f"ok {EVIL}"))},
        {"messages": M((EVIL, "a"), ("assistant", "b"))},  # invalid: the role quotes the script
        {"messages": M(("user", "last"), ("assistant", "four"))},
        "not an object",
    ]
    return load_data(rows, strict=False)


def test_row_browser_buttons_row_box_and_bad_row_jump(tok):
    data = _evil_data()
    stats = data_stats(data, tok, max_length=25)
    browser = RowBrowser(data, tok, stats)
    assert browser.n_rows == 5 and browser.bad_rows() == [2, 4]
    widget = browser.widget
    assert widget is browser.widget  # built once
    assert f"row 0 of 5 · {stats.total_tokens[0]} tokens" in browser.html.value

    browser.next_button.click()
    assert browser.row_input.value == 1 and f"row 1 of 5 · {stats.total_tokens[1]} tokens" in browser.html.value
    browser.next_button.click()  # row 2: invalid, raw row and reason
    assert (
        "row 2 of 5" in browser.html.value and "invalid" in browser.html.value and "unknown role" in browser.html.value
    )
    browser.prev_button.click()
    browser.prev_button.click()
    browser.prev_button.click()  # stays at 0
    assert browser.row_input.value == 0 and "row 0 of 5" in browser.html.value

    browser.row_input.value = 3
    assert "row 3 of 5" in browser.html.value
    assert f"{stats.total_tokens[2]} tokens" in browser.html.value  # row 3 is dataset position 2

    labels = [label for label, _ in browser.bad_dropdown.options]
    assert labels[0].startswith("jump to a bad row (2)") and labels[1].startswith("row 2: messages[0].role")
    browser.bad_dropdown.value = 4
    assert (
        browser.row_input.value == 4
        and "row 4 of 5" in browser.html.value
        and "must be an object" in browser.html.value
    )
    assert "not an object" in browser.html.value  # the raw row


def test_row_browser_on_a_sample_steps_through_the_sampled_rows(tok):
    from sft_magics.core.data.load import sample_data

    rows = [{"messages": M(("user", f"q{i}"), ("assistant", f"a{i}"))} for i in range(30)]
    sample = sample_data(load_data(rows), 4)
    browser = RowBrowser(sample, tok, data_stats(sample, tok))
    picked = list(sample.row_index)
    browser.widget  # noqa: B018 (builds it)
    assert browser.row_input.value == picked[0] and f"row {picked[0]} of 30" in browser.html.value
    seen = [browser.row_input.value]
    for _ in range(5):  # past the last sampled row: stays there
        browser.next_button.click()
        seen.append(browser.row_input.value)
    assert seen == picked + [picked[-1]] * 2 and "no such row" not in browser.html.value
    browser.prev_button.click()
    assert browser.row_input.value == picked[-2]


def test_row_browser_shows_the_rendering_view(tok):
    data = load_data(DATASETS["messages"])
    browser = RowBrowser(data, tok, data_stats(data, tok))
    html_out = browser.row_html(0)
    try:
        import sft_magics.display._template_view  # noqa: F401

        assert 'class="sft-rv"' in html_out  # RenderingView
    except ImportError:
        assert 'class="sft-template"' in html_out
    r = tokenize_row(tok, data.dataset[0], "messages")
    assert f"{len(r.tokens)} tokens, {r.trained_count} trained" in html_out


def test_no_script_tag_in_any_html(tok):
    data = _evil_data()
    stats = data_stats(data, tok, max_length=25)
    report = DataView(data, stats).to_html()
    assert "<script" not in report and "&lt;script&gt;" in report  # the invalid role is quoted, escaped
    browser = RowBrowser(data, tok, stats)
    browser.widget  # noqa: B018 - building the widget is the point: it must not fail on hostile rows
    seen = []
    for i in range(browser.n_rows):
        browser.row_input.value = i
        seen.append(browser.html.value)
        assert "<script" not in browser.html.value, i
    assert any("&lt;script&gt;" in v for v in seen)


# --------------------------------------------------------------------------- the magic


def test_sft_data_magic_grad_accum_and_binding(shell, tiny_model, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _truncation_rows() + BAD_ROWS[1:3]))
    stats = shell.run_line_magic(
        "sft_data", f"{path} --model {tiny_model} --max-length 12 --batch-size 2 --grad-accum 2 -o s"
    )
    assert shell.user_ns["s"] is stats and stats.grad_accum == 2 and stats.batch_size == 2
    out = capsys.readouterr().out
    assert "invalid rows: 2 of 7" in out and "row 5 messages[0].role" in out
    assert f"{stats.steps_per_epoch()} optimizer steps per epoch at batch size 2 × gradient accumulation 2" in out


def test_sft_data_magic_refuses_bad_numbers_and_all_invalid_data(shell, tiny_model, tmp_path):
    from IPython.core.error import UsageError

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _truncation_rows()))
    with pytest.raises(UsageError, match="--grad-accum must be at least 1"):
        shell.run_line_magic("sft_data", f"{path} --model {tiny_model} --grad-accum 0")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in BAD_ROWS[1:3]))
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("sft_data", f"{bad} --model {tiny_model}")
    assert "2 of 2 rows are invalid" in str(info.value) and "\n" not in str(info.value)


def test_sft_data_magic_sample_states_its_size_and_keeps_source_rows(shell, tiny_model, tmp_path, capsys, monkeypatch):
    """--sample N: a seeded random N rows (the same ones each time), source row numbers kept, the
    header says it is a sample of how many; invalid rows of the whole source still listed. A source
    over SAMPLE_HINT_ROWS without --sample gets a one-line hint and exact statistics."""
    import sft_magics.core.template.doctor as stats_module

    rows = [{"messages": M(("user", f"question {i}"), ("assistant", f"answer {i}"))} for i in range(40)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + BAD_ROWS[1:2]))
    stats = shell.run_line_magic("sft_data", f"{path} --model {tiny_model} --sample 7 -o s")
    out = capsys.readouterr().out
    assert stats.rows == 7 and stats.source_rows == 41 and stats.invalid_rows == 1
    assert "[random sample of 7 of 40 rows, seed 0]" in out and "a random sample of the 40 valid rows" in out
    assert "invalid rows: 1 of 41" in out
    again = shell.run_line_magic("sft_data", f"{path} --model {tiny_model} --sample 7 -o s2")
    assert again is not stats and again.row_index == stats.row_index and len(set(stats.row_index)) == 7
    capsys.readouterr()
    monkeypatch.setattr(stats_module, "SAMPLE_HINT_ROWS", 30)
    whole = shell.run_line_magic("sft_data", f"{path} --model {tiny_model} -o w")
    assert whole is shell.user_ns["w"] and whole.rows == 40
    assert "40 rows: exact statistics read every one (Ctrl-C / interrupt to stop); --sample 3 looks at" in (
        capsys.readouterr().out
    )
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--sample must be at least 1"):
        shell.run_line_magic("sft_data", f"{path} --model {tiny_model} --sample 0")


def test_sft_data_magic_in_widget_mode_shows_report_and_browser(shell, tiny_model, qa_jsonl, monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    shell.run_line_magic("config", "SftMagics.display = 'widget'")
    shell.run_line_magic("sft_data", f"{qa_jsonl} --model {tiny_model}")
    kinds = [type(o).__name__ for o in shown]
    assert kinds == ["DataView", "VBox"]
    assert "data:image/png;base64," in shown[0]._repr_html_()
