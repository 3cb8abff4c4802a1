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


def _loops_on(content: str) -> str:
    """A ChatML template that loops only on the message whose content is ``content`` (one row)."""
    return (
        "{% for m in messages %}{% if m['content'] == '"
        + content
        + "' %}"
        + LOOP
        + "{% endif %}{% endfor %}"
        + CHATML_TEMPLATE
    )


def _messages_jsonl(path: Path, n: int) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def short_bound(monkeypatch):
    from sft_magics.core.template import render

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
        from sft_magics.core.template import render
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
    shell.user_ns["tpl"] = _loops_on("Answer 997.")
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
    from sft_magics.core.evaluate.generation import end_of_turn_token, stop_token_ids
    from sft_magics.core.models import load_model
    from sft_magics.core.train import trainer as train_module

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


# -- every value of a cell or recipe: its type and range, before anything loads ------------------------

MISSING = "no-such-file.jsonl"  # never read: each mistake must be found before any data loads


@pytest.mark.parametrize(
    "body, message",
    [
        (
            f"dataset: {{path: {MISSING}, columns: [question, answer]}}",
            r"key 'dataset.columns' must be a mapping of target → your column, e.g. \{prompt: question, "
            r"completion: answer\}, got \['question', 'answer'\] \(list\)",
        ),
        (
            f"dataset: {{path: {MISSING}, columns: messages}}",
            r"key 'dataset.columns' must be a mapping of target → your column.*, got 'messages' \(str\)",
        ),
        (
            f"dataset_mixture: {{datasets: [{MISSING}, other.jsonl]}}",
            r"key 'dataset_mixture.datasets\[0\]' must be a mapping \{id, config, split, columns, weight\}, "
            rf"got '{MISSING}' \(str\)",
        ),
        (
            f"dataset_mixture: {{datasets: [{{id: {MISSING}}}], test_split_size: ten}}",
            r"key 'dataset_mixture.test_split_size' must be a fraction between 0 and 1 \(exclusive\) or a whole "
            r"number of rows ≥ 1, got 'ten' \(str\)",
        ),
        (
            f"dataset_mixture: {{datasets: [{{id: {MISSING}}}], test_split_size: 1.5}}",
            r"key 'dataset_mixture.test_split_size' must be a fraction .*, got 1.5 \(float\)",
        ),
        (
            f"dataset_mixture: {{datasets: [{{id: {MISSING}, columns: messages}}]}}",
            r"key 'dataset_mixture.datasets\[0\].columns' must be a list of the column names to keep, got 'messages'",
        ),
        (
            f"dataset_mixture: {{datasets: [{{id: {MISSING}}}], seed: abc}}",
            r"key 'dataset_mixture.seed' must be a whole",
        ),
        (f"dataset: {MISSING}\nseed: abc", r"key 'seed' expects int, got 'abc' \(str\)"),
        (f"dataset: {MISSING}\nseed: -3", r"key 'seed' must be a whole number ≥ 0 \(a random seed\), got -3 \(int\)"),
        (
            f"dataset: {MISSING}\ntrust_remote_code: 'false'",
            r"key 'trust_remote_code' must be true or false, got 'false'",
        ),
        (f"dataset: {MISSING}\nuse_peft: 'no'", r"key 'use_peft' must be true or false, got 'no' \(str\)"),
        (f"dataset: {MISSING}\nload_in_4bit: 'yes'", r"key 'load_in_4bit' must be true or false"),
        (f"dataset: {MISSING}\nmodel_kwargs: bf16", r"key 'model_kwargs' must be a mapping of from_pretrained options"),
        (f"dataset: {MISSING}\nchat_template: 3", r"key 'chat_template' must be a name \(chatml, zephyr\)"),
        (f"dataset: {MISSING}\neval_split: 1.5", r"key 'eval_split' must be a fraction between 0 and 1"),
        (f"dataset: {{path: {MISSING}, system: [a]}}", r"key 'dataset.system' must be the text of a system message"),
        (
            f"dataset: {{mixture: [{{path: {MISSING}, weight: 2}}]}}",
            r"key 'dataset.mixture\[0\].weight' must be a fraction in \(0, 1\] of its rows, got 2 \(int\)",
        ),
    ],
)
@pytest.mark.parametrize("dry", ["", "--dry-run"])
def test_a_value_of_the_wrong_type_is_one_line_before_anything_loads(shell, tiny_model, tmp_path, body, message, dry):
    cell = f"model: {tiny_model}\nmax_steps: 1\n{body}\n"
    with pytest.raises(UsageError, match=f"^{message}") as info:
        shell.run_cell_magic("sft_train", f"--name bad {dry}", cell)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert not (tmp_path / "runs" / "bad").exists()


# -- generation lengths: bounded by the model's context -----------------------------------------------


def test_generation_lengths_past_the_models_context_are_refused_everywhere(shell, tiny_model, qa_jsonl, tmp_path):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_model).max_position_embeddings
    rule = (
        rf"does not fit this model: it attends to {context:,} positions, prompt included; use at most {context - 1:,}"
    )
    cell = (
        f"model: {tiny_model}\ndataset: {qa_jsonl}\neval_split: 4\nmax_steps: 1\neval_generate: true\n"
        "eval_max_new_tokens: 100000000\n"
    )
    for dry in ("--dry-run", ""):
        with pytest.raises(UsageError, match=rf"^eval_max_new_tokens 100,000,000 {rule}"):
            shell.run_cell_magic("sft_train", f"--name long {dry}", cell)
    assert not (tmp_path / "runs" / "long").exists()
    with pytest.raises(UsageError, match=rf"^--max-new-tokens 100,000,000 {rule}"):
        shell.run_line_magic("sft_eval", f"{tiny_model} --data {qa_jsonl} --max-new-tokens 100000000")
    with pytest.raises(UsageError, match=rf"^--max-new-tokens {context:,} {rule}"):
        shell.run_line_magic("sft_chat", f"{tiny_model} --message hi --max-new-tokens {context}")
    # Within the context: it generates.
    reply = shell.run_line_magic("sft_chat", f"{tiny_model} --message hi --max-new-tokens {context - 1} -o r")
    assert isinstance(shell.user_ns["r"], str) and reply is not None


# -- a template that trains nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, extra, why",
    [
        (
            # Renders only the user's text: no assistant text to train on.
            "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>{{ m['content'] }}<|im_end|>{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}",
            "",
            r"24 have no trained token at all \(the chat template renders no assistant text to train on\)",
        ),
        (
            # Generation markers around nothing.
            "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% if m['role'] == 'assistant' %}"
            "{% generation %}{% endgeneration %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>"
            "{% endif %}",
            "",
            r"24 have no trained token at all \(the template's \{% generation %\} markers enclose nothing\)",
        ),
        (None, "max_length: 4\n", r"24 have their trained tokens only past max_length 4 \(raise max_length\)"),
    ],
)
def test_a_template_that_trains_nothing_is_one_line_before_training(
    shell, tiny_model, qa_jsonl, tmp_path, template, extra, why
):
    shell.user_ns["tpl"] = template
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 2\n{extra}" + (
        "chat_template: tpl\n" if template else ""
    )
    with pytest.raises(UsageError, match=rf"^nothing to train: no row has a trained token — {why}\. Look at a row"):
        shell.run_cell_magic("sft_train", "--name none", cell)
    assert not (tmp_path / "runs" / "none").exists()


# -- %sft_runs with a damaged run beside good ones -------------------------------------------------------


def test_sft_runs_lists_every_readable_run_and_marks_the_damaged_ones(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    shell.run_cell_magic("sft_train", "--name good", f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 1\n")
    runs = tmp_path / "runs"
    import shutil

    for name in ("bad-metrics", "bad-status", "bad-both"):
        shutil.copytree(runs / "good", runs / name)
    with open(runs / "bad-metrics" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "log", "step": "seven", "loss": {"x": 1}}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": 3, "eval_loss": "low"}) + "\n")
    status = json.loads((runs / "bad-status" / "status.json").read_text())
    (runs / "bad-status" / "status.json").write_text(json.dumps({**status, "ended": "yesterday", "step": [1]}))
    (runs / "bad-both" / "status.json").write_text(json.dumps(["not", "a", "status"]))
    (runs / "bad-both" / "metrics.jsonl").write_text('{"kind": 5}\nnot json\n')
    records = shell.run_line_magic("sft_runs", "-o table")
    records = shell.user_ns["table"]
    rows = {r["name"]: r for r in (records.to_dict("records") if hasattr(records, "to_dict") else records)}
    assert set(rows) == {"good", "bad-metrics", "bad-status", "bad-both"}
    assert rows["good"]["status"] == "finished" and rows["good"]["damaged"] is None
    assert rows["bad-metrics"]["status"] == "finished"  # its state is its own; the damage is marked beside it
    assert rows["bad-metrics"]["damaged"] == "metrics.jsonl: 2 event(s) with fields of other types skipped"
    assert rows["bad-status"]["status"] == "finished"
    assert "status.json: 'ended' is 'yesterday', not a time" in rows["bad-status"]["damaged"]
    assert "status.json: 'step' is [1], not a step number" in rows["bad-status"]["damaged"]
    assert rows["bad-both"]["status"] == "unknown"
    assert "status.json cannot be read" in rows["bad-both"]["damaged"]
    # The plain table prints them all, the damaged ones with what is wrong.
    capsys.readouterr()
    shell.run_line_magic("sft_runs", "")
    text = capsys.readouterr().out
    assert "finished — damaged: status.json: 'step' is [1], not a step number" in text


# -- data read as written -----------------------------------------------------------------------------


def test_csv_text_that_looks_like_a_missing_value_keeps_its_text(shell, tmp_path):
    from sft_magics.core.data.load import load_data

    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nSay NaN,NaN\nSay null,null\nSay N/A,N/A\nSay None,None\n")
    data = load_data(str(path))
    assert [r["completion"] for r in data.dataset] == ["NaN", "null", "N/A", "None"]
    # An empty cell is still missing, and named as such.
    (tmp_path / "e.csv").write_text("prompt,completion\nSay,\n")
    with pytest.raises(Exception, match="row 0"):
        load_data(str(tmp_path / "e.csv"))


def test_a_byte_that_is_not_utf8_is_named_by_its_exact_line(tmp_path):
    from sft_magics.core.data.load import load_data
    from sft_magics.core.data.types import DataError

    good = json.dumps({"prompt": "p" * 40, "completion": "c" * 40}) + "\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(good.encode() * 499 + b'{"prompt": "caf\xe9", "completion": "x"}\n' + good.encode() * 10)
    with pytest.raises(DataError, match=r"not UTF-8 text at line 500, byte 16 of the line"):
        load_data(str(path))
    array = tmp_path / "d.json"
    array.write_bytes(
        b"[\n" + b'{"prompt": "a", "completion": "b"},\n' * 6 + b'{"prompt": "\xff", "completion": "b"}\n]'
    )
    with pytest.raises(DataError, match=r"not UTF-8 text at line 8"):
        load_data(str(array))


# -- resume: a checkpoint that lost files -------------------------------------------------------------


@pytest.mark.parametrize("lost", ["adapter_model.safetensors", "adapter_config.json"])
def test_resume_falls_back_past_a_checkpoint_that_lost_files_without_a_mark(
    shell, tiny_model, qa_jsonl, tmp_path, lost
):
    from sft_magics.core.run.checkpoints import CHECKPOINT_MARK

    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 4\nsave_steps: 1\nsave_total_limit: 5\n"
    shell.run_cell_magic("sft_train", "--name r", cell)
    run = tmp_path / "runs" / "r"
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "stopped", "step": 3}))
    import shutil

    shutil.rmtree(run / "checkpoint-4")
    for ckpt in run.glob("checkpoint-*"):
        (ckpt / CHECKPOINT_MARK).unlink()  # never marked, as a checkpoint from an older version
    (run / "checkpoint-3" / lost).unlink()
    shell.run_cell_magic("sft_train", "--resume r -o done", cell)
    assert shell.user_ns["done"].status == "finished" and shell.user_ns["done"].global_step == 4
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    started = [e for e in events if e.get("kind") == "started"][-1]
    assert started["resumed_from"].endswith("checkpoint-2")


def test_trls_own_value_checks_run_at_plan_time_so_dry_run_shows_them(shell, tiny_model, qa_jsonl, tmp_path):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 1\nlr_scheduler_type: bogus\n"
    for dry in ("--dry-run", ""):
        with pytest.raises(UsageError, match=r"^invalid training config: bogus is not a valid SchedulerType"):
            shell.run_cell_magic("sft_train", f"--name sched {dry}", cell)
    assert not (tmp_path / "runs" / "sched").exists()


@pytest.mark.timeout(180)
def test_a_looping_row_is_bounded_in_preparation_worker_processes(shell, tiny_model, tmp_path, short_bound):
    """dataset_num_proc forks datasets' map workers: the bound holds in each (the watchdog restarts there)."""
    data = _messages_jsonl(tmp_path / "m.jsonl", 2000)
    shell.user_ns["tpl"] = _loops_on("Answer 1500.")
    started = time.time()
    with pytest.raises(UsageError, match=r"row 1500: the chat template ran for more than 0.5 s and was stopped"):
        shell.run_cell_magic(
            "sft_train",
            "--name forked",
            f"model: {tiny_model}\ndataset: {data}\nmax_steps: 1\nchat_template: tpl\ndataset_num_proc: 2\n",
        )
    assert time.time() - started < 120
    assert not (tmp_path / "runs" / "forked").exists()


def test_a_diverged_loss_is_a_value_not_damage(shell, tiny_model, qa_jsonl, tmp_path):
    shell.run_cell_magic("sft_train", "--name nan", f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 1\n")
    with open(tmp_path / "runs" / "nan" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "log", "step": 1, "loss": float("nan")}) + "\n")  # NaN, as json writes it
    records = shell.run_line_magic("sft_runs", "-o t")
    row = (records.to_dict("records") if hasattr(records, "to_dict") else records)[0]
    assert row["status"] == "finished" and row["damaged"] is None and row["train_loss"] != row["train_loss"]
    shell.run_line_magic("sft_wait", "nan")  # a finished run with a diverged loss: %sft_wait returns at once


@pytest.mark.parametrize(
    "mode, packing, trains",
    [("keep_start", False, False), ("keep_end", False, True), ("keep_start", True, True)],
)
def test_the_trained_token_check_truncates_as_trl_will(mode, packing, trains):
    from datasets import Dataset

    from sft_magics.core.errors import ConfigError
    from sft_magics.core.template.prepared import check_something_trained

    rows = Dataset.from_dict({"input_ids": [[1] * 10] * 3, "assistant_masks": [[0] * 8 + [1] * 2] * 3})
    check = lambda: check_something_trained(rows, 4, truncation_mode=mode, packing=packing)
    if trains:
        check()  # the answer survives: keep_end keeps it, packing does not cut rows
    else:
        with pytest.raises(ConfigError, match=r"3 have their trained tokens only past max_length 4"):
            check()


def test_recipe_and_dataset_values_that_worked_still_work():
    from sft_magics.core.data.spec import check_dataset_value
    from sft_magics.core.train.recipe import read_recipe

    base = {"dataset_mixture": {"datasets": [{"id": "a.jsonl"}]}}
    for size, expected in ((0, None), (500.0, 500), ("0.05", 0.05), (0.1, 0.1), (64, 64)):
        config, _ = read_recipe({"dataset_mixture": {**base["dataset_mixture"], "test_split_size": size}})
        assert config.get("eval_split") == expected, size
    config, _ = read_recipe({"dataset_mixture": {**base["dataset_mixture"], "seed": None}})
    assert config["dataset"]["seed"] == 42  # the same rows on every load, so resume finds them
    check_dataset_value({"path": "a.jsonl", "system": ""})  # an empty system prompt adds nothing, as before
