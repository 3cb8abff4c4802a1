"""The headless demo on the real embedded model, shortened (the README's command runs at most 40 steps)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.real_model
def test_demo_runs_every_step_on_the_real_model(tmp_path, capsys):
    from sft_magics.demo import run_demo

    summary = run_demo(steps=4, output_dir=str(tmp_path / "runs"))
    out = capsys.readouterr().out
    for title in (
        "Render one example through the chat template",
        "Dataset statistics",
        "Fine-tune with LoRA for 4 steps, keeping the checkpoint with the best json_match",
        "Base vs tuned vs few-shot prompting on the validation split",
        "Summary",
    ):
        assert f"=== {title} ===" in out
    assert "<|im_start|>assistant\n«" in out and "<|im_end|>\n»" in out  # the answer (and only it) is trained
    assert "format: messages → messages · 500 rows" in out
    assert "Out[" not in out and "<TrainResult" not in out and "<EvalReport" not in out  # no echo of bound results
    assert summary["steps"] == 4
    # two evaluations (at steps 2 and 4) answered 16 validation questions; the best is one of them
    assert "[demo] answers at step 2 (16 rows" in out and "[demo] answers at step 4 (16 rows" in out
    assert summary["best"]["metric"] == "json_match" and summary["best"]["step"] in (2, 4)
    assert summary["early_stop"] is None and "trained all 4 steps (best json_match" in out
    assert summary["base"]["json_match"] <= 0.10  # the task is one the base model fails
    assert summary["prompt_tokens"]["few_shot"] > summary["prompt_tokens"]["base"]  # few-shot costs prompt tokens
    saved = json.loads((tmp_path / "runs" / "demo" / "demo_summary.json").read_text())
    assert saved["tuned"] == summary["tuned"]
    assert (tmp_path / "runs" / "demo" / "final" / "adapter_config.json").is_file()
