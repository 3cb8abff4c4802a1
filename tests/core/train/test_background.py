"""Runs outside the kernel: background workers, torchrun with 2 processes, and their faults."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient

from sft_magics.core.errors import ConfigError
from sft_magics.core.events import Event
from sft_magics.core.files import read_events, read_json
from sft_magics.core.train import worker as w
from sft_magics.core.train.config import TrainSpec


def _spec(tmp_path, tiny_model, data, name, **extra):
    config = {"model": tiny_model, "dataset": data, "max_steps": 6, "per_device_train_batch_size": 4, **extra}
    return TrainSpec.from_mapping(name, config, output_dir=str(tmp_path / "runs"))


def _wait_state(run_dir: Path, states, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if read_json(run_dir / "status.json").get("state") in states:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} never reached {states}: {read_json(run_dir / 'status.json')}")


def _run_notebook(cells: list[str], timeout=300) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
    return nb


def _text(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def test_background_run_survives_a_kernel_restart_and_attaches(tiny_model, qa_jsonl, tmp_path):
    runs = tmp_path / "runs"
    setup = f"%load_ext sft_magics\n%config SftMagics.output_dir = {str(runs)!r}"
    first = _run_notebook(
        [
            setup,
            f"%%sft_train --background --name bg -o handle\nmodel: {tiny_model}\ndataset: {qa_jsonl}\n"
            "max_steps: 60\nper_device_train_batch_size: 4\nlogging_steps: 1\n",
            # Other cells run while it trains.
            "import time\nt = time.time()\nprint('other cell ran', round(time.time() - t, 3), handle.status)",
        ]
    )
    assert "started in the background" in _text(first.cells[1])
    assert _text(first.cells[2]).startswith("other cell ran")
    assert _text(first.cells[2]).split()[-1] in ("starting", "loading", "training")
    # The first kernel is gone; the run goes on. A new kernel attaches and waits.
    second = _run_notebook(
        [
            setup,
            "%sft_attach bg",
            "%sft_wait bg -o result\n"
            "losses = [h['step'] for h in result.history if 'loss' in h]\n"
            "print(result.status, result.global_step, losses == list(range(1, 61)), result.model is not None)",
        ]
    )
    assert _text(second.cells[2]).strip().splitlines()[-1] == "finished 60 True True"
    events = list(read_events(runs / "bg" / "metrics.jsonl"))
    assert [e["step"] for e in events if e["kind"] == "log" and "loss" in e] == list(range(1, 61))


def test_torchrun_two_processes_train_once_and_the_result_loads(shell, tiny_model, qa_jsonl, tmp_path):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 6\nper_device_train_batch_size: 4\nsave_steps: 3\n"
    result = shell.run_cell_magic("sft_train", "--launcher torchrun --nproc 2 --name ddp -o r", cell)
    run_dir = tmp_path / "runs" / "ddp"
    assert result.status == "finished" and result.global_step == 6
    assert read_json(run_dir / "status.json")["world_size"] == 2
    assert read_json(run_dir / "environment.json")["world_size"] == 2
    events = list(read_events(run_dir / "metrics.jsonl"))
    assert [e["step"] for e in events if e["kind"] == "log" and "loss" in e] == [1, 2, 3, 4, 5, 6]  # once, by rank 0
    assert sum(e["kind"] == "started" for e in events) == 1
    assert result.model is not None and result.is_peft
    log = (run_dir / "worker.log").read_text()
    assert "[rank1]" in log or log.count("run ddp: finished at step 6") == 2  # both ranks trained


def test_killed_worker_is_recorded_as_failed_with_its_log(tiny_model, qa_jsonl, tmp_path):
    run = w.launch(_spec(tmp_path, tiny_model, qa_jsonl, "killed", max_steps=100000, logging_steps=1))
    _wait_state(run.path, ("training",))
    worker_pid = read_json(run.path / "supervisor.json")["worker_pid"]
    os.kill(worker_pid, signal.SIGKILL)
    record = run.wait(timeout=60)
    status = read_json(run.path / "status.json")
    assert record["status"] == "failed" and status["state"] == "failed"
    assert "killed by SIGKILL" in status["error"] and "out-of-memory" in status["error"]
    assert "log_tail" in status
    assert list(read_events(run.path / "metrics.jsonl"))[-1]["kind"] == "failed"


def test_exception_in_the_worker_is_recorded(tiny_model, qa_jsonl, tmp_path):
    # An optimizer TRL's config accepts but that cannot be built here (no bitsandbytes): the worker fails.
    run = w.launch(_spec(tmp_path, tiny_model, qa_jsonl, "broken", optim="adamw_bnb_8bit"))
    record = run.wait(timeout=120)
    status = read_json(run.path / "status.json")
    assert record["status"] == "failed"
    assert status["error"].startswith("ImportError: You need to install `bitsandbytes`")
    # A value TRL's own config refuses is one line at launch, before any run folder (issue 23).
    with pytest.raises(ConfigError, match="^invalid training config: not_an_optimizer is not a valid OptimizerNames"):
        w.launch(_spec(tmp_path, tiny_model, qa_jsonl, "refused", optim="not_an_optimizer"))
    assert not (tmp_path / "runs" / "refused").exists()


def test_a_second_run_on_a_live_folder_is_refused_and_stop_is_graceful(shell, tiny_model, qa_jsonl, tmp_path):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 100000\nper_device_train_batch_size: 4\nsave_steps: 100000\n"
    shell.run_cell_magic("sft_train", "--background --name live -o h", cell)
    run_dir = tmp_path / "runs" / "live"
    with pytest.raises(UsageError, match=r"a run named 'live' already exists .*in use by process \d+"):
        shell.run_cell_magic("sft_train", "--background --name live", cell)
    _wait_state(run_dir, ("training",))
    shell.run_line_magic("sft_stop", "live")
    status = read_json(run_dir / "status.json")
    assert status["state"] == "stopped"
    assert (run_dir / f"checkpoint-{status['step']}").is_dir()
    records = shell.run_line_magic("sft_runs", "-o rs")
    assert records[0]["status"] == "stopped" and records[0]["pid"] is None


def test_runs_table_shows_live_background_runs_with_their_pid(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 100000\nper_device_train_batch_size: 4\n"
    handle = shell.run_cell_magic("sft_train", "--background --name watched -o h", cell)
    _wait_state(handle.path, ("training",))
    records = shell.run_line_magic("sft_runs", "-o rs")
    assert records[0]["pid"] == handle.pid and records[0]["status"] == "training"
    assert f"(pid {handle.pid})" in capsys.readouterr().out
    handle.stop()
    handle.wait(timeout=60)


def test_follow_reads_a_half_written_line_once_it_is_complete(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    path = run_dir / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "log", "step": 1, "loss": 2.0}) + "\n" + '{"kind": "log", "st')
    seen: list[Event] = []
    t = threading.Thread(target=w.follow, args=(run_dir, seen.append), kwargs={"poll": 0.05})
    t.start()
    time.sleep(0.3)
    assert [e.data["step"] for e in seen] == [1]  # the half line is not an error, and not read yet
    with path.open("a") as f:
        f.write('ep": 2, "loss": 1.5}\n' + json.dumps({"kind": "finished", "step": 2}) + "\n")
    t.join(5)
    assert not t.is_alive()
    assert [(e.kind, e.data.get("step")) for e in seen] == [("log", 1), ("log", 2), ("finished", 2)]


def test_worker_commands_use_the_existing_launchers(tmp_path):
    import sys

    assert w.worker_command(tmp_path, launcher="torchrun", nproc=4) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "sft_magics",
        "worker",
        str(tmp_path),
    ]
    assert w.worker_command(tmp_path, launcher="accelerate", nproc=2, accelerate_config="fsdp.yaml", resume=True) == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "fsdp.yaml",
        "--num_processes",
        "2",
        "-m",
        "sft_magics",
        "worker",
        str(tmp_path),
        "--resume",
    ]
