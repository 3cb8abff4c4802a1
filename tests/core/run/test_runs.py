"""Runs on disk: resume equals an uninterrupted run, failures, locks, dry run, %sft_runs, events."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
from IPython.core.error import UsageError

from sft_magics.core.errors import ConfigError
from sft_magics.core.files import read_events
from sft_magics.core.run.lock import RunBusy, RunError, RunLock
from sft_magics.core.run.lookup import list_runs, run_record
from sft_magics.core.train.callbacks import StopFlag
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.trainer import TrainingFailed, train


def _spec(tmp_path, tiny_model, data, name="r", **extra):
    config = {
        "model": tiny_model,
        "dataset": data,
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "save_steps": 100,
        **extra,
    }
    return TrainSpec.from_mapping(name, config, output_dir=str(tmp_path / "runs"))


def _losses(run_dir):
    return {e["step"]: e["loss"] for e in read_events(run_dir / "metrics.jsonl") if e["kind"] == "log" and "loss" in e}


def test_resume_after_a_stop_continues_at_the_saved_step_with_the_same_losses(tmp_path, tiny_model, qa_jsonl):
    straight = train(_spec(tmp_path, tiny_model, qa_jsonl, name="straight"))
    stop = StopFlag()

    def sink(event):
        if event.kind == "log" and event.data["step"] == 4:
            stop.set()

    spec = _spec(tmp_path, tiny_model, qa_jsonl, name="interrupted")
    first = train(spec, sink=sink, stop=stop)
    assert first.status == "stopped" and first.global_step == 4
    assert (first.path / "checkpoint-4").is_dir()
    resumed_events = []
    second = train(spec, resume=True, sink=resumed_events.append)
    assert second.status == "finished" and second.global_step == 8
    started = next(e for e in resumed_events if e.kind == "started")
    assert started.data["resumed_from"].endswith("checkpoint-4")
    first_log = next(e for e in resumed_events if e.kind == "log")
    assert first_log.data["step"] == 5  # continues at the saved step
    a, b = _losses(straight.path), _losses(second.path)
    for step in range(5, 9):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    assert json.loads((second.path / "status.json").read_text())["state"] == "finished"


def test_resume_without_a_checkpoint_is_refused(tmp_path, tiny_model, qa_jsonl):
    with pytest.raises(RunError, match="no run named 'fresh'"):
        train(_spec(tmp_path, tiny_model, qa_jsonl, name="fresh"), resume=True)
    (tmp_path / "runs" / "fresh").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no checkpoint to resume from"):
        train(_spec(tmp_path, tiny_model, qa_jsonl, name="fresh"), resume=True)


def test_failure_marks_the_run_failed_keeps_checkpoints_and_releases_the_model(
    tmp_path, tiny_model, qa_jsonl, monkeypatch
):
    from trl import SFTTrainer

    real_step = SFTTrainer.training_step
    refs = []

    def failing_step(self, model, inputs, *a, **k):
        refs.append(weakref.ref(model))
        if self.state.global_step >= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, model, inputs, *a, **k)

    monkeypatch.setattr(SFTTrainer, "training_step", failing_step)
    events = []
    with pytest.raises(TrainingFailed) as info:
        train(_spec(tmp_path, tiny_model, qa_jsonl, name="boom", save_steps=1), sink=events.append)
    message = str(info.value)
    assert message.startswith("run 'boom' failed: RuntimeError: CUDA out of memory")
    assert "lower per_device_train_batch_size" in message and "\n" not in message
    run_dir = tmp_path / "runs" / "boom"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 2 and "out of memory" in status["error"]
    assert "gradient_checkpointing" in status["hint"]
    assert (run_dir / "checkpoint-2").is_dir()
    assert "Traceback" in (run_dir / "error.log").read_text()
    assert events[-1].kind == "failed"
    assert not (run_dir / "run.lock").exists()
    info = None
    gc.collect()
    assert refs and all(r() is None for r in refs), "the model is still referenced after the failure"


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "busy"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run_dir.mkdir(parents=True)
        (run_dir / "run.lock").write_text(str(child.pid))
        with pytest.raises(RunBusy, match=f"in use by process {child.pid}"):
            RunLock(run_dir).acquire()
    finally:
        child.kill()
        child.wait()
    lock = RunLock(run_dir).acquire()  # its process is gone: the stale lock is taken over
    assert (run_dir / "run.lock").read_text() == str(os.getpid())
    with pytest.raises(RunBusy, match="already training in this process"):
        RunLock(run_dir).acquire()
    lock.release()
    assert not (run_dir / "run.lock").exists()


def test_stale_status_and_tolerant_event_reading(tmp_path):
    run_dir = tmp_path / "runs" / "ghost"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: m\ndataset: d.jsonl\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "status.json").write_text(json.dumps({"state": "training", "pid": dead.pid, "step": 3}))
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"kind": "log", "step": 1, "loss": 2.0})
        + "\n"
        + json.dumps({"kind": "log", "step": 2, "loss": 1.5})
        + "\n"
        + '{"kind": "log", "step": 3, "lo'  # a half-written last line
    )
    record = run_record(run_dir)
    assert record["status"] == "stale"
    assert record["history"] == [(1, 2.0), (2, 1.5)] and record["train_loss"] == 1.5


def test_run_folder_contents(tmp_path, tiny_model, qa_jsonl):
    result = train(_spec(tmp_path, tiny_model, qa_jsonl, name="full", max_steps=2, hub_token="hf_secret123"))
    config_text = (result.path / "config.yaml").read_text()
    # The secret key is left out (resume must not train with "<redacted>" as a value), and said so.
    assert "hf_secret123" not in config_text and "hub_token" not in config_text.split("\n", 1)[1]
    assert config_text.startswith("# left out (secrets): hub_token\n")
    env = json.loads((result.path / "environment.json").read_text())
    assert env["packages"]["trl"] and env["device"] == "cpu" and env["precision"].startswith("fp32 (CPU default)")
    assert len(env["datasets"]["train"]["fingerprint"]) == 64 and env["datasets"]["train"]["rows"] == 24
    records = list_runs(tmp_path / "runs")
    assert [r["name"] for r in records] == ["full"] and records[0]["status"] == "finished"
    assert records[0]["steps"] == 2 and records[0]["model"] == tiny_model


def test_bad_value_names_the_key_and_type(tmp_path, tiny_model, qa_jsonl):
    with pytest.raises(ConfigError, match=r"key 'learning_rate' expects float, got 'fast' \(str\)"):
        train(_spec(tmp_path, tiny_model, qa_jsonl, learning_rate="fast"))
    with pytest.raises(ConfigError, match=r"key 'max_steps' expects int, got 2.5"):
        train(_spec(tmp_path, tiny_model, qa_jsonl, max_steps=2.5))


def test_qlora_without_cuda_is_a_one_line_error(shell, tiny_model, qa_jsonl):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(
        UsageError,
        match=r"^key 'load_in_4bit' \(QLoRA\) needs a CUDA GPU and bitsandbytes; this machine has no CUDA device$",
    ):
        shell.run_cell_magic("sft_train", "--name q", f"model: {tiny_model}\ndataset: {qa_jsonl}\nload_in_4bit: true\n")


def test_dry_run_trains_nothing(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    summary = shell.run_cell_magic(
        "sft_train",
        "--name dry --dry-run -o plan",
        f"model: {tiny_model}\ndataset: {qa_jsonl}\nnum_train_epochs: 2\nper_device_train_batch_size: 5\n",
    )
    assert summary["steps"] == 10  # ceil(24 / 5) = 5 steps per epoch, 2 epochs
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["config"]["lora"]["r"] == 16 and summary["device"] == "cpu"
    out = capsys.readouterr().out
    assert "planned optimizer steps: 10" in out and "dry run: nothing was trained" in out
    assert not (tmp_path / "runs" / "dry").exists()
    # Which precision and why: the CPU default is fp32, with the reason that fits this CPU.
    from sft_magics.core.train.plan import _native_cpu_bf16

    assert summary["precision"].startswith("fp32 (CPU default)") and summary["config"]["bf16"] is False
    expected = "this CPU has native bf16, so bf16: true trains faster" if _native_cpu_bf16() else "no avx512_bf16 / AMX"
    assert expected in summary["precision"]
    assert f"precision: {summary['precision']}" in " ".join(out.split())
    asked = shell.run_cell_magic(
        "sft_train", "--name dry --dry-run -o plan", f"model: {tiny_model}\ndataset: {qa_jsonl}\nbf16: true\n"
    )
    assert asked["precision"] == "bf16 mixed precision (asked; weights in float32)" and asked["config"]["bf16"] is True


def test_resume_through_the_magic_and_sft_runs(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 4\nper_device_train_batch_size: 4\nsave_steps: 2\n"
    shell.run_cell_magic("sft_train", "--name m -o run", cell)
    run_dir = tmp_path / "runs" / "m"
    # Pretend it crashed after step 2: drop the final output and the later checkpoint.
    import shutil

    shutil.rmtree(run_dir / "checkpoint-4")
    shutil.rmtree(run_dir / "final")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "training", "step": 3}))
    result = shell.run_line_magic("sft_train", "--resume m -o again")
    assert result.global_step == 4 and result.status == "finished"
    records = shell.run_line_magic("sft_runs", "-o runs")
    assert [r["name"] for r in records] == ["m"]
    out = capsys.readouterr().out
    assert "m" in out and "finished" in out
    with pytest.raises(UsageError, match="--resume nothing: no run folder"):
        shell.run_line_magic("sft_train", "--resume nothing")
    with pytest.raises(UsageError, match="needs its config in the cell body"):
        shell.run_line_magic("sft_train", "--name x")
