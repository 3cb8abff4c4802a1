"""Core training on a tiny model: events and files on disk, stop flag, data errors before loading."""

from __future__ import annotations

import json

import pytest
import yaml

from sft_magics.core.data.types import DataError
from sft_magics.core.errors import ConfigError
from sft_magics.core.train.callbacks import StopFlag
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.trainer import train


def _spec(tmp_path, tiny_model, dataset, **extra):
    config = {
        "model": tiny_model,
        "dataset": dataset,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        **extra,
    }
    return TrainSpec.from_mapping("t", config, output_dir=str(tmp_path / "runs"))


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_events_matching_the_trainers_log_history(tmp_path, tiny_model, qa_jsonl):
    seen = []
    result = train(_spec(tmp_path, tiny_model, qa_jsonl, eval_dataset=qa_jsonl, eval_steps=2), sink=seen.append)
    assert result.status == "finished" and result.global_step == 4
    events = _events(result.path)
    logged = [e for e in events if e["kind"] == "log" and "loss" in e]
    history = [h for h in result.history if "loss" in h]
    assert [(e["step"], e["loss"]) for e in logged] == [(h["step"], h["loss"]) for h in history]
    assert len(logged) == 4  # logging_steps defaults to 1
    evals = [e for e in events if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4] and all(e["eval_loss"] > 0 for e in evals)
    assert [e.kind for e in seen] == [e["kind"] for e in events]  # the caller's sink saw the same stream
    assert events[-1]["kind"] == "finished"
    status = json.loads((result.path / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4
    config = yaml.safe_load((result.path / "config.yaml").read_text())
    assert config["lora"]["r"] == 16 and config["max_steps"] == 4 and config["use_cpu"] is True
    assert config["bf16"] is False and config["gradient_checkpointing"] is False  # fp32 on the CPU
    assert (result.path / "final" / "adapter_config.json").is_file()
    assert (result.path / "final" / "tokenizer_config.json").is_file()
    started = next(e for e in events if e["kind"] == "started")
    assert 0 < started["trainable_params"] < started["total_params"]


def test_stop_flag_ends_the_run_as_stopped_with_a_checkpoint(tmp_path, tiny_model, qa_jsonl):
    stop = StopFlag()

    def sink(event):
        if event.kind == "log" and event.data["step"] == 2:
            stop.set()

    result = train(_spec(tmp_path, tiny_model, qa_jsonl, max_steps=50), sink=sink, stop=stop)
    assert result.status == "stopped" and result.global_step == 2
    assert (result.path / "checkpoint-2").is_dir()
    assert json.loads((result.path / "status.json").read_text())["state"] == "stopped"


def test_full_fine_tune_when_lora_is_false(tmp_path, tiny_model, qa_jsonl):
    result = train(_spec(tmp_path, tiny_model, qa_jsonl, lora=False, max_steps=1))
    assert not result.is_peft
    assert (result.path / "final" / "model.safetensors").is_file()


def test_bad_data_fails_before_the_model_loads(tmp_path, tiny_model, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    monkeypatch.setattr("sft_magics.core.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(DataError, match="row 0"):
        train(_spec(tmp_path, tiny_model, str(bad)))


@pytest.mark.parametrize(
    "config,message",
    [
        ({"dataset": "x", "lora": {"rank": 4}}, "unknown key 'rank' in lora"),
        ({"dataset": "x", "lora": "yes"}, "key 'lora' must be a mapping of LoraConfig fields or false"),
        ({"learning_rate": 1}, "key 'dataset' is required"),
        ({"dataset": "x", "eval_split": 2.5}, "key 'eval_split' must be a fraction between 0 and 1"),
        # output_dir is TRL's: the run folder itself, so it must agree with the run's name.
        (
            {"dataset": "x", "output_dir": "elsewhere"},
            "--name x and output_dir elsewhere name two different run folders",
        ),
    ],
)
def test_config_errors_name_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        TrainSpec.from_mapping("x", config)


def test_eval_split_holds_out_rows(tmp_path, tiny_model, qa_jsonl):
    result = train(_spec(tmp_path, tiny_model, qa_jsonl, eval_split=0.25, max_steps=1))
    started = next(e for e in _events(result.path) if e["kind"] == "started")
    assert (started["train_rows"], started["eval_rows"]) == (18, 6)
