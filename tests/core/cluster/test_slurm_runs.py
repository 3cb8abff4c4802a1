"""Runs as SLURM jobs, against a real SLURM (see conftest.py): submitted from a real shell,
followed by the dashboard, stopped, requeued at a time limit, failed by SLURM, refused by SLURM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from slurm_helpers import job_field, node_state, release

from sft_magics.core.events import Event
from sft_magics.core.files import read_events, read_json
from sft_magics.core.train import follow as f


def _cell(model, data, **extra) -> str:
    config = {"model": model, "dataset": data, "max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 1}
    config.update(extra)
    return "".join(f"{k}: {v}\n" for k, v in config.items())


def _wait(predicate, timeout=120, what="a condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _losses(run_dir: Path) -> dict[int, float]:
    return {
        e["step"]: e["loss"] for e in read_events(run_dir / "metrics.jsonl") if e.get("kind") == "log" and "loss" in e
    }


def test_a_run_trains_as_a_slurm_job_and_the_dashboard_follows_it(slurm, shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = (
        _cell(tiny_model, qa_jsonl, save_steps=3) + "slurm:\n  cpus_per_task: 1\n  time: '10'\n  signal_seconds: 120\n"
    )
    shell.run_cell_magic("sft_train", "--launcher slurm --name onslurm -o job", cell)
    run = shell.user_ns["job"]
    out = capsys.readouterr().out
    assert f"submitted to SLURM as job {run.job_id}" in out and "job.sbatch" in out
    script = (run.path / "job.sbatch").read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@120" in script and "#SBATCH --time=10" in script
    assert "srun" in script and "--resume-if-any" in script

    seen: list[Event] = []
    f.follow(run.path, seen.append)  # what the dashboard is fed: the run's events and the job's state
    kinds = [e.kind for e in seen]
    assert kinds[-1] == "finished"
    jobs = [e.data for e in seen if e.kind == "job"]
    assert (
        jobs
        and jobs[0]["job_id"] == run.job_id
        and jobs[0]["state"] in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED")
    )
    assert any(j["state"] == "RUNNING" and j["nodes"] for j in jobs) or kinds.count("log") == 6
    assert sorted(_losses(run.path)) == [1, 2, 3, 4, 5, 6]
    record = run.wait(timeout=60)
    assert record["status"] == "finished" and record["steps"] == 6 and record["job"]["job_id"] == run.job_id
    assert (run.path / "final").is_dir() and (run.path / f"slurm-{run.job_id}.out").is_file()
    _wait(lambda: job_field(run.job_id, "JobState") == "COMPLETED", 30, "SLURM to say COMPLETED")


def test_stop_ends_the_job_stopped_with_a_resumable_checkpoint(slurm, shell, tiny_model, qa_jsonl, tmp_path, capsys):
    secret = "hf_SLURMSECRETSLURMSECRET42"
    cell = _cell(tiny_model, qa_jsonl, max_steps=400, logging_steps=5, save_steps=100000, hub_token=secret)
    shell.run_cell_magic("sft_train", "--launcher slurm --name stopme -o job", cell)
    run = shell.user_ns["job"]
    _wait(lambda: read_json(run.path / "status.json").get("step", 0) >= 5, 120, "training")
    # The token reached the job's worker through its environment ...
    worker = read_json(run.path / "status.json")["pid"]
    assert secret in Path(f"/proc/{worker}/environ").read_bytes().decode(errors="replace")
    shell.run_line_magic("sft_stop", "stopme")
    assert "run 'stopme': stopped at step" in capsys.readouterr().out
    status = read_json(run.path / "status.json")
    assert status["state"] == "stopped" and status["step"] >= 5
    from sft_magics.core.run.folder import RunFolder

    checkpoint, _ = RunFolder(run.path.parent, "stopme").resumable_checkpoint()
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{status['step']}"
    _wait(lambda: job_field(run.job_id, "JobState") == "COMPLETED", 60, "the job to end")
    # It resumes as a new job from that checkpoint, with its saved config (the cell may be empty).
    shell.run_line_magic("sft_train", "--resume stopme --launcher slurm -o again")
    again = shell.user_ns["again"]
    assert again.job_id != run.job_id and f.wait_for(again.path, timeout=180)["status"] == "finished"
    started = [e for e in read_events(run.path / "metrics.jsonl") if e["kind"] == "started"]
    assert started[-1]["resumed_from"].endswith(f"checkpoint-{status['step']}") and _losses(run.path).keys() >= {400}
    # ... and never its script, its log, or any other file of the run.
    for path in run.path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_pending_job_is_shown_with_its_reason_and_stop_cancels_it(slurm, shell, tiny_model, qa_jsonl, capsys):
    cell = _cell(tiny_model, qa_jsonl) + "slurm:\n  extra: ['--hold']\n"
    shell.run_cell_magic("sft_train", "--launcher slurm --name held -o job", cell)
    run = shell.user_ns["job"]
    assert "PENDING (JobHeldUser)" in capsys.readouterr().out
    records = shell.run_line_magic("sft_runs", "-o runs") or shell.user_ns["runs"]
    row = next(r for r in records if r["name"] == "held")
    assert row["status"] == "starting" and row["job"]["state"] == "PENDING" and row["job"]["reason"] == "JobHeldUser"
    assert "PENDING (JobHeldUser))" in capsys.readouterr().out  # %sft_runs shows the job and why it waits
    shell.run_line_magic("sft_stop", "held")
    assert read_json(run.path / "status.json")["state"] == "stopped"
    _wait(lambda: job_field(run.job_id, "JobState") == "CANCELLED", 30, "SLURM to cancel the job")


def test_a_time_limit_signal_checkpoints_requeues_and_resumes_with_the_same_losses(
    slurm, shell, tiny_model, qa_jsonl, tmp_path
):
    import subprocess

    config = _cell(tiny_model, qa_jsonl, max_steps=40, save_steps=100000, seed=7)
    shell.run_cell_magic("sft_train", "--name straight", config)  # the uninterrupted run, in the kernel
    shell.run_cell_magic("sft_train", "--launcher slurm --name requeued -o job", config)
    run = shell.user_ns["job"]
    _wait(lambda: read_json(run.path / "status.json").get("step", 0) >= 3, 120, "training")
    # What SLURM sends --signal seconds before a time limit (or a preemption): USR1 to the batch step.
    subprocess.run(["scancel", "--signal=USR1", "--batch", run.job_id], check=True)
    _wait(lambda: read_json(run.path / "status.json").get("state") == "requeued", 60, "the requeue")
    cut = read_json(run.path / "status.json")["step"]
    assert cut < 40 and (run.path / f"checkpoint-{cut}").is_dir()
    _wait(lambda: job_field(run.job_id, "JobState") == "PENDING", 30, "the job back in the queue")
    assert job_field(run.job_id, "Restarts") == "1"
    release(run.job_id)
    record = run.wait(timeout=180)
    assert record["status"] == "finished" and record["steps"] == 40
    straight, resumed = _losses(tmp_path / "runs" / "straight"), _losses(run.path)
    assert sorted(resumed) == list(range(1, 41))
    assert all(abs(straight[s] - resumed[s]) < 1e-5 for s in straight), (straight, resumed)
    events = list(read_events(run.path / "metrics.jsonl"))
    assert [e["state"] for e in events if e["kind"] == "status" and e.get("state") in ("interrupted", "requeued")] == [
        "interrupted",
        "requeued",
    ]
    assert sum(e["kind"] == "started" for e in events) == 2


def test_slurms_own_time_limit_requeues_the_job_until_it_finishes_with_the_same_losses(
    slurm, shell, tiny_model, qa_jsonl
):
    """No help from the test but the admin's release of a requeued job: with a 1-minute limit,
    slurmctld sends USR1 59 s ahead (at its first time check), each start checkpoints and requeues,
    and the run ends with the losses of the same run trained in one go."""
    config = _cell(tiny_model, qa_jsonl, max_steps=1500, logging_steps=1, save_steps=1000000, seed=11)
    shell.run_cell_magic("sft_train", "--name in-one-go", config)
    cell = config + "slurm:\n  time: '1'\n  signal_seconds: 59\n"
    shell.run_cell_magic("sft_train", "--launcher slurm --name timelimit -o job", cell)
    run = shell.user_ns["job"]
    released = 0
    deadline = time.time() + 600
    while read_json(run.path / "status.json").get("state") not in ("finished", "failed", "stopped"):
        assert time.time() < deadline, read_json(run.path / "status.json")
        if job_field(run.job_id, "JobState") == "PENDING" and int(job_field(run.job_id, "Restarts") or 0) > released:
            released += 1
            release(run.job_id)
        time.sleep(0.5)
    assert read_json(run.path / "status.json")["state"] == "finished" and released >= 1
    events = list(read_events(run.path / "metrics.jsonl"))
    starts = [e for e in events if e["kind"] == "started"]
    assert len(starts) == released + 1 and all(e.get("resumed_from") for e in starts[1:])
    one_go, requeued = _losses(run.path.parent / "in-one-go"), _losses(run.path)
    assert sorted(requeued) == sorted(one_go) and len(one_go) == 1500
    assert all(abs(one_go[s] - requeued[s]) < 1e-5 for s in one_go), (one_go, requeued)


def test_a_job_slurm_ends_is_failed_with_slurms_reason(slurm, shell, tiny_model, qa_jsonl, capsys):
    import subprocess

    cell = _cell(tiny_model, qa_jsonl, max_steps=1000000, logging_steps=20, save_steps=1000000)
    shell.run_cell_magic("sft_train", "--launcher slurm --name cancelled -o job", cell)
    run = shell.user_ns["job"]
    _wait(lambda: read_json(run.path / "status.json").get("state") == "training", 120, "training")
    subprocess.run(["scancel", run.job_id], check=True)  # an admin's cancel
    with pytest.raises(UsageError, match=rf"SLURM ended job {run.job_id} as CANCELLED"):
        shell.run_line_magic("sft_wait", "cancelled")
    status = read_json(run.path / "status.json")
    assert status["state"] == "failed" and "CANCELLED" in status["error"] and "--resume cancelled" in status["hint"]
    events = list(read_events(run.path / "metrics.jsonl"))
    assert events[-1]["kind"] == "failed"
    records = shell.run_line_magic("sft_runs", "-o runs") or shell.user_ns["runs"]
    assert next(r for r in records if r["name"] == "cancelled")["status"] == "failed"


@pytest.mark.parametrize(
    "slurm_key, said",
    [("  partition: nope\n", "invalid partition"), ("  gpus_per_node: 4\n", "Invalid generic resource")],
)
def test_a_submission_slurm_refuses_is_one_line_and_leaves_no_folder(
    slurm, shell, tiny_model, qa_jsonl, tmp_path, slurm_key, said
):
    cell = _cell(tiny_model, qa_jsonl) + "slurm:\n" + slurm_key
    with pytest.raises(UsageError) as err:
        shell.run_cell_magic("sft_train", "--launcher slurm --name refused", cell)
    assert "SLURM refused the job" in str(err.value) and said.lower() in str(err.value).lower()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs" / "refused").exists()


def _notebook(cells: list[str]):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    return nb


def _stdout(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def test_a_kernel_restart_mid_job_then_attach_and_wait(slurm, tiny_model, qa_jsonl, tmp_path):
    runs = tmp_path / "runs"
    setup = f"%load_ext sft_magics\n%config SftMagics.output_dir = {str(runs)!r}\n%config SftMagics.display = 'plain'"
    cell = _cell(tiny_model, qa_jsonl, max_steps=300, logging_steps=50, save_steps=100)
    first = _notebook([setup, f"%%sft_train --launcher slurm --name restart -o job\n{cell}", "print(job.status)"])
    assert "submitted to SLURM as job" in _stdout(first.cells[1])
    assert _stdout(first.cells[2]).split()[-1] in ("starting", "loading", "training")
    # That kernel is gone; the job goes on. A new kernel lists it, attaches and waits.
    second = _notebook(
        [
            setup,
            "runs = %sft_runs -o r\nprint([(x['name'], x['job']['job_id'] is not None) for x in r])",
            "%sft_attach restart",
            "%sft_wait restart -o result\nprint(result.status, result.global_step, result.model is not None)",
        ]
    )
    assert "('restart', True)" in _stdout(second.cells[1])
    assert "SLURM job" in _stdout(second.cells[2])
    assert _stdout(second.cells[3]).strip().splitlines()[-1] == "finished 300 True", second.cells[3].outputs


def test_a_node_failure_is_failed_with_slurms_state(slurm, shell, tiny_model, qa_jsonl):
    import socket
    import subprocess

    cell = _cell(tiny_model, qa_jsonl, max_steps=1000000, logging_steps=20, save_steps=1000000)
    cell += "slurm:\n  requeue: false\n"
    shell.run_cell_magic("sft_train", "--launcher slurm --name nodefail -o job", cell)
    run = shell.user_ns["job"]
    _wait(lambda: read_json(run.path / "status.json").get("state") == "training", 120, "training")
    node = socket.gethostname().split(".")[0]
    try:  # the node goes down under the job, as a failed machine would (the admin's view of it)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=test-node-failure"], check=True)
        record = f.wait_for(run.path, timeout=120)
    finally:  # the node back, before the next test needs it
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
        _wait(lambda: node_state() == "idle", 120, "the node to come back")
    assert record["status"] == "failed" and f"SLURM ended job {run.job_id} as NODE_FAIL" in record["error"]
    assert read_json(run.path / "status.json")["state"] == "failed"


def test_the_stop_signal_alone_stops_the_job(slurm, shell, tiny_model, qa_jsonl):
    """%sft_stop writes STOP and signals the batch step (USR2): either alone ends the run ``stopped``
    (on a shared filesystem the STOP file may reach the job's nodes late; the signal does not)."""
    import subprocess

    cell = _cell(tiny_model, qa_jsonl, max_steps=300, logging_steps=20, save_steps=1000000)
    shell.run_cell_magic("sft_train", "--launcher slurm --name usr2 -o job", cell)
    run = shell.user_ns["job"]
    _wait(lambda: read_json(run.path / "status.json").get("state") == "training", 120, "training")
    subprocess.run(["scancel", "--signal=USR2", "--batch", run.job_id], check=True)
    record = f.wait_for(run.path, timeout=120)
    assert record["status"] == "stopped" and (run.path / f"checkpoint-{record['steps']}").is_dir()
    # The script in the run folder, submitted again by hand, as its header says: it resumes, and the
    # run follows the new job.
    again = subprocess.run(["sbatch", "--parsable", str(run.path / "job.sbatch")], capture_output=True, text=True)
    new_job = again.stdout.strip()
    assert again.returncode == 0 and new_job != run.job_id
    _wait(lambda: read_json(run.path / "job.json").get("job_id") == new_job, 60, "the new job to take the run")
    record = f.wait_for(run.path, timeout=180)
    assert record["status"] == "finished" and record["steps"] == 300 and record["job"]["job_id"] == new_job


def test_a_sweep_runs_each_trial_as_a_slurm_job_and_stop_reaches_them(
    slurm, shell, tiny_model, qa_jsonl, tmp_path, capsys
):
    """A sweep with --launcher slurm: each trial an ordinary SLURM run (its job.sbatch, job.json), the
    driver queueing them all (SLURM schedules: here one node, two CPUs); then a second sweep stopped."""
    runs = tmp_path / "runs"
    base = _cell(tiny_model, qa_jsonl, eval_split=0.25, max_steps=3) + "slurm:\n  cpus_per_task: 1\n"
    shell.run_cell_magic(
        "sft_train",
        "--launcher slurm --name jobs",
        base + "sweep:\n  parameters:\n    learning_rate: [1.0e-3, 1.0e-2]\n",
    )
    queue = read_json(runs / "jobs" / "trials.json")
    assert queue["state"] == "finished" and [t["state"] for t in queue["trials"]] == ["finished", "finished"]
    for t in queue["trials"]:
        run = runs / t["name"]
        assert (run / "job.sbatch").is_file() and read_json(run / "job.json")["job_id"] == t["job"]
        assert read_json(run / "status.json")["state"] == "finished" and (run / "final").is_dir()
    assert "leader jobs.0" in capsys.readouterr().out

    long = base.replace("max_steps: 3", "max_steps: 100000") + "save_steps: 3\n"
    sweep = "sweep:\n  parallel: 1\n  parameters:\n    learning_rate: [1.0e-3, 2.0e-3]\n"
    shell.run_cell_magic("sft_train", "--launcher slurm --name stopjobs --background", long + sweep)
    first = runs / "stopjobs.01-learning_rate_0.001"
    _wait(
        lambda: read_json(first / "status.json").get("step", 0) >= 4, timeout=180, what="the first trial's job training"
    )
    shell.run_line_magic("sft_stop", "stopjobs")
    trials = read_json(runs / "stopjobs" / "trials.json")["trials"]
    assert [t["state"] for t in trials] == ["stopped", "cancelled"]
    assert read_json(first / "status.json")["state"] == "stopped"
    assert any(p.name.startswith("checkpoint-") for p in first.iterdir())
    with pytest.raises(UsageError, match="key 'slurm' holds SLURM options: add --launcher slurm"):
        shell.run_cell_magic("sft_train", "--name noflag", long + sweep)
