"""The third round of hostile and careless inputs (issue 23), each through a real InteractiveShell:
templates that never end (bounded, paid about once per load, including inside TRL), the end token a
run trains equal to the saved model's, every value of a cell or recipe checked for its type and range
before anything loads, generation lengths bounded by the model, a template that trains nothing,
damaged run files, CSV text that looks missing, and a checkpoint that lost files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from sft_magics.testing import CHATML_TEMPLATE

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# Loops on every render / only where TRL renders a tool call / only on a full two-message conversation.
TEMPLATES = {
    "always": LOOP + CHATML_TEMPLATE,
    "in TRL": "{% for m in messages %}{% if m['role'] == 'tool' %}"
    + LOOP
    + "{% endif %}{% endfor %}"
    + CHATML_TEMPLATE,
    "full conversations": "{% if not add_generation_prompt and messages|length == 2 %}"
    + LOOP
    + "{% endif %}"
    + CHATML_TEMPLATE,
}


def _messages_jsonl(path: Path, n: int) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def short_bound(monkeypatch):
    from sft_magics.core import render

    monkeypatch.setattr(render, "RENDER_SECONDS", 0.5)
    monkeypatch.setattr(render, "_refused", {})
    monkeypatch.setattr(render, "_vetted", set())
    return render


# -- templates that never end ---------------------------------------------------------------------


def test_a_template_that_never_ends_fails_train_in_a_subprocess_within_two_bounds(tiny_model, tmp_path):
    """The issue's hang: the template loops where TRL renders it (supports_tool_calling). A real
    process with a time limit: before, it never returned."""
    data = _messages_jsonl(tmp_path / "m.jsonl", 200)
    script = textwrap.dedent(
        f"""
        import time
        from IPython.core.interactiveshell import InteractiveShell
        from sft_magics.core import render
        render.RENDER_SECONDS = 2.0
        sh = InteractiveShell.instance()
        sh.run_line_magic("load_ext", "sft_magics")
        sh.run_line_magic("config", "SftMagics.display = 'plain'")
        sh.run_line_magic("config", "SftMagics.output_dir = {str(tmp_path / "runs")!r}")
        sh.user_ns["tpl"] = {TEMPLATES["in TRL"]!r}
        started = time.time()
        try:
            sh.run_cell_magic("sft_train", "--name hang", "model: {tiny_model}\\ndataset: {data}\\nmax_steps: 1\\nchat_template: tpl\\n")
        except Exception as err:
            print("ERROR", type(err).__name__, err)
        print("BOUNDS", render.timeouts, "SECONDS", round(time.time() - started, 1))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (
        "ERROR UsageError the chat template ran for more than 2 s in TRL's get_training_chat_template and was stopped"
        in out.stdout
    ), out.stdout + out.stderr[-2000:]
    assert "BOUNDS 1 " in out.stdout, out.stdout
    assert not (tmp_path / "runs" / "hang").exists()


@pytest.mark.parametrize("kind", list(TEMPLATES))
def test_a_looping_template_is_one_line_in_every_magic_and_pays_about_one_bound(
    shell, tiny_model, tmp_path, short_bound, kind
):
    data = _messages_jsonl(tmp_path / "m.jsonl", 1000)
    shell.user_ns["tpl"] = TEMPLATES[kind]
    cell = f"model: {tiny_model}\ndataset: {data}\nmax_steps: 1\nchat_template: tpl\n"
    calls = [
        lambda: shell.run_cell_magic("sft_train", "--name loop", cell),
        lambda: shell.run_line_magic("sft_data", f"{data} --model {tiny_model} --chat-template tpl"),
    ]
    if kind != "in TRL":  # %sft_template renders a --chat-template itself, never through TRL: no loop there
        calls.append(lambda: shell.run_line_magic("sft_template", f"{tiny_model} --data {data} --chat-template tpl"))
    for call in calls:
        short_bound._refused.clear()
        short_bound._vetted.clear()
        before = short_bound.timeouts
        started = time.time()
        with pytest.raises(UsageError, match=r"the chat template ran for more than 0.5 s.* and was stopped") as info:
            call()
        assert "\n" not in str(info.value)
        assert short_bound.timeouts - before <= 2, (kind, str(info.value))  # ~2 bounds, whatever the row count
        assert time.time() - started < 60
    assert not (tmp_path / "runs" / "loop").exists()


def test_a_template_that_loops_on_one_row_is_refused_for_the_load_naming_the_row(
    shell, tiny_model, tmp_path, short_bound
):
    data = _messages_jsonl(tmp_path / "m.jsonl", 1000)
    shell.user_ns["tpl"] = (
        "{% for m in messages %}{% if m['content'] == 'Answer 997.' %}"
        + LOOP
        + "{% endif %}{% endfor %}"
        + CHATML_TEMPLATE
    )
    before = short_bound.timeouts
    with pytest.raises(UsageError, match=r"^row 997: the chat template ran for more than 0.5 s and was stopped"):
        shell.run_cell_magic(
            "sft_train", "--name loop", f"model: {tiny_model}\ndataset: {data}\nmax_steps: 1\nchat_template: tpl\n"
        )
    assert short_bound.timeouts - before <= 2
    # Refused at once from then on, naming the row, with no bound paid again.
    with pytest.raises(UsageError, match=r"row 997: .*refused until the template is changed"):
        shell.run_line_magic("sft_data", f"{data} --model {tiny_model} --chat-template tpl")
    assert short_bound.timeouts - before <= 2
    # A good template is not affected.
    shell.run_line_magic("sft_data", f"{data} --model {tiny_model}")


# -- the end token trained is the saved model's -------------------------------------------------------

FORMATS = {
    "messages": lambda i: {
        "messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]
    },
    "prompt_completion": lambda i: {"prompt": f"Q{i}?", "completion": f" A{i}."},
    "conversational_prompt_completion": lambda i: {
        "prompt": [{"role": "user", "content": f"Q{i}?"}],
        "completion": [{"role": "assistant", "content": f"A{i}."}],
    },
    "text": lambda i: {"text": f"Q{i}? A{i}."},
}


@pytest.mark.parametrize("eos", [None, "<|endoftext|>"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_trained_end_token_is_the_saved_models_end(shell, tiny_model, tmp_path, monkeypatch, fmt, eos):
    from sft_magics.core import train as train_module
    from sft_magics.core.generation import end_of_turn_token, stop_token_ids
    from sft_magics.core.models import load_model

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(FORMATS[fmt](i)) + "\n" for i in range(8)))
    seen = {}
    build = train_module._build_trainer

    def keep(*args, **kwargs):
        trainer, tokenizer = build(*args, **kwargs)
        seen["rows"] = trainer.train_dataset
        return trainer, tokenizer

    monkeypatch.setattr(train_module, "_build_trainer", keep)
    extra = f"eos_token: '{eos}'\n" if eos else ""
    shell.run_cell_magic("sft_train", "--name e", f"model: {tiny_model}\ndataset: {data}\nmax_steps: 1\n{extra}")
    # The run's model as %sft_eval / %sft_chat load it: its stop tokens are the saved model's.
    loaded = load_model(str(tmp_path / "runs" / "e" / "final"))
    saved, stops = loaded.tokenizer, stop_token_ids(loaded.model, loaded.tokenizer)
    conversational = fmt in ("messages", "conversational_prompt_completion")
    expected = end_of_turn_token(saved) if conversational else saved.eos_token_id
    if eos and not conversational:
        assert saved.eos_token == eos
    specials = set(saved.all_special_ids)
    for row in seen["rows"]:
        trained_specials = [i for i in row["labels"] if i != -100 and i in specials]  # what the loss sees
        end = trained_specials[-1]  # the answer's end: the last special token trained
        assert end == expected, (fmt, eos, saved.convert_ids_to_tokens(trained_specials))
        assert end in stops  # generation stops where training ended answers
