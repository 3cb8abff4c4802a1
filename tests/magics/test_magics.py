"""The magics through a real InteractiveShell, on a tiny model: template, data, train, eval."""

from __future__ import annotations

import json

import pytest

MSGS = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def test_sft_template_marks_only_the_answer_and_its_end_token(shell, tiny_model, capsys):
    shell.user_ns["msgs"] = MSGS
    rendering = shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs -o r")
    assert shell.user_ns["r"] is rendering
    trained_text = "".join(t.text for t in rendering.tokens if t.trained)
    assert trained_text == "Four.<|im_end|>\n"
    assert rendering.tokens[-2].text == "<|im_end|>" and rendering.tokens[-2].special
    assert all(label == -100 for label in rendering.labels[: rendering.prompt_length])
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\n«Four.<|im_end|>\n»" in out
    assert f"{len(rendering.tokens)} tokens, {rendering.trained_count} trained" in out


def test_template_labels_equal_trls_own_labels(tiny_model, tmp_path):
    """For a conversation ending on the answer, the trained tokens we show (and train on) equal the
    labels TRL builds itself from the same row as a conversational prompt/completion pair."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sft_magics.core.data.load import load_data
    from sft_magics.core.models import load_model
    from sft_magics.core.template.tokens import render

    messages = [{"role": "system", "content": "Be brief."}, *MSGS]
    loaded = load_model(tiny_model)
    trl_rows = Dataset.from_list([{"prompt": messages[:-1], "completion": messages[-1:]}])
    trainer = SFTTrainer(
        model=loaded.model,
        processing_class=loaded.tokenizer,
        train_dataset=trl_rows,
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None),
    )
    data = load_data([{"messages": messages}])
    ours = render(loaded.tokenizer, data.dataset[0], data.format)
    assert ours.input_ids == list(trainer.train_dataset[0]["input_ids"])
    assert ours.labels == list(trainer.train_dataset[0]["labels"])


def test_cell_form_takes_yaml(shell, tiny_model):
    rendering = shell.run_cell_magic(
        "sft_template", f"{tiny_model} -o r", "- {role: user, content: hi}\n- {role: assistant, content: hello}\n"
    )
    assert "".join(t.text for t in rendering.tokens if t.trained) == "hello<|im_end|>\n"


def test_template_row_out_of_range(shell, tiny_model, qa_jsonl):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--row 99 is out of range: the data has 24 rows"):
        shell.run_line_magic("sft_template", f"{tiny_model} --data {qa_jsonl} --row 99")


def test_sft_data_reports_counts_and_truncation(shell, tiny_model, qa_jsonl, capsys):
    stats = shell.run_line_magic("sft_data", f"{qa_jsonl} --model {tiny_model} --max-length 40 --batch-size 5 -o s")
    assert shell.user_ns["s"] is stats and stats.rows == 24
    assert stats.roles == {"user": 24, "assistant": 24}
    assert all(t > 40 for t in stats.total_tokens)  # these rows are long for the tiny tokenizer
    assert stats.truncated == 24
    assert stats.no_trained_left == sum(1 for t in stats.trained_tokens if t == 0)
    out = capsys.readouterr().out
    assert "source:" in out and "format: messages → messages · 24 rows" in out
    assert "5 optimizer steps per epoch at batch size 5" in out
    assert f"max_length 40: 24 rows truncated, {stats.no_trained_left} with no trained token left" in out


def test_sft_data_lists_every_bad_row(shell, tiny_model, tmp_path, capsys):
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}]},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = shell.run_line_magic("sft_data", f"{path} --model {tiny_model} -o s")
    out = capsys.readouterr().out
    assert stats.rows == 1 and stats.invalid_rows == 2 and stats.source_rows == 3
    assert "invalid rows: 2 of 3 rows are invalid" in out
    assert "row 1 messages[0].role: unknown role 'robot'" in out
    assert "row 2 messages: no assistant turn, nothing to train on" in out


def test_train_then_eval_through_the_magics(shell, tiny_model, qa_jsonl, capsys, tmp_path):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 3\nper_device_train_batch_size: 4\n"
    result = shell.run_cell_magic("sft_train", "--name m1 -o run", cell)
    assert shell.user_ns["run"] is result and result.status == "finished" and result.global_step == 3
    assert result.path == tmp_path / "runs" / "m1"
    assert (result.path / "cell.txt").read_text().startswith("%%sft_train --name m1 -o run\nmodel:")
    out = capsys.readouterr().out
    assert "[m1] started on cpu" in out and "status finished" in out

    scores = shell.run_line_magic("sft_eval", f"run --data {qa_jsonl} --baseline base --max-new-tokens 4 -o s")
    assert set(scores) == {"tuned", "base"}
    assert len(scores["tuned"].predictions) == 24
    assert "evaluation on 24 examples" in capsys.readouterr().out

    # By run name (reloaded from disk: base + saved adapter) the tuned answers are the same.
    again = shell.run_line_magic("sft_eval", f"m1 --data {qa_jsonl} --max-new-tokens 4 -o s2")
    assert again["tuned"].predictions == scores["tuned"].predictions
