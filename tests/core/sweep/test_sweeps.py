"""Sweeps that really train: tiny-model trials as ordinary background runs, driven by the sweep's
detached driver, through a real IPython shell (and, for a kernel restart, real kernels)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient

from sft_magics.core.files import read_events, read_json


def _cell(tiny_model, data, sweep: str, steps: int = 4, extra: str = "") -> str:
    return (
        f"model: {tiny_model}\ndataset: {data}\neval_split: 0.25\nmax_steps: {steps}\n"
        f"per_device_train_batch_size: 4\neval_strategy: steps\neval_steps: 2\n{extra}sweep:\n{sweep}"
    )


def _eval_losses(run_dir: Path) -> list[float]:
    return [e["eval_loss"] for e in read_events(run_dir / "metrics.jsonl") if e.get("kind") == "eval"]


def _wait(predicate, timeout=180, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _queue(sweep_dir: Path) -> dict:
    return read_json(sweep_dir / "trials.json")


def test_a_2x2_grid_runs_to_the_end_and_names_the_best_trial(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    runs = tmp_path / "runs"
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: [1.0e-3, 1.0e-2]\n    lora.r: [4, 8]\n")
    handle = shell.run_cell_magic("sft_train", "--name grid -o sw", cell)
    out = capsys.readouterr().out
    assert "sweep 'grid' started: 4 trials queued" in out
    queue = _queue(runs / "grid")
    assert queue["state"] == "finished"
    names = [t["name"] for t in queue["trials"]]
    assert names == [
        "grid.01-learning_rate_0.001-r_4",
        "grid.02-learning_rate_0.001-r_8",
        "grid.03-learning_rate_0.01-r_4",
        "grid.04-learning_rate_0.01-r_8",
    ]
    # Each trial is an ordinary run that trained its own values, to the end.
    for t in queue["trials"]:
        run = runs / t["name"]
        assert read_json(run / "status.json")["state"] == "finished" and (run / "final").is_dir()
        config = (run / "config.yaml").read_text()
        assert f"learning_rate: {t['params']['learning_rate']}" in config
        assert json.loads((run / "final" / "adapter_config.json").read_text())["r"] == t["params"]["lora.r"]
        assert t["state"] == "finished" and t["value"] == pytest.approx(min(_eval_losses(run)))
    # The best by the compared metric (eval_loss, lowest), from the trials' own files:
    best = min(names, key=lambda n: min(_eval_losses(runs / n)))
    assert handle.best == best
    table = handle.table()
    assert list(table.columns)[:3] == ["trial", "learning_rate", "lora.r"]
    assert table.loc[table["leader"], "trial"].tolist() == [best]
    assert f"★  {best}" in out and f"leader {best}" in out
    # SWEEP:best is that trial for the magics that take a run.
    shell.run_line_magic("sft_eval", f"grid:best --data {qa_jsonl} --limit 2 --max-new-tokens 4")
    assert (runs / best / "eval").is_dir() and len(list((runs / best / "eval").iterdir())) == 1
    # %sft_runs shows the sweep as a group; -o gives its DataFrame.
    shell.run_line_magic("sft_runs", "")
    listed = capsys.readouterr().out
    assert "sweep grid (grid): finished, 4 of 4 trials done" in listed and "no runs" not in listed
    frame = shell.run_line_magic("sft_runs", "grid -o df")
    assert len(frame) == 4 and frame["state"].tolist() == ["finished"] * 4


def test_a_failing_trial_is_recorded_and_the_others_go_on(shell, tiny_model, qa_jsonl, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # passes the checks (config, tokenizer), fails to load
    cell = _cell(tiny_model, qa_jsonl, f"  parameters:\n    model: [{broken}, {tiny_model}]\n", steps=2)
    cell = cell.replace(f"model: {tiny_model}\n", "", 1)
    shell.run_cell_magic("sft_train", "--name mixed", cell)
    trials = _queue(tmp_path / "runs" / "mixed")["trials"]
    assert [t["state"] for t in trials] == ["failed", "finished"]
    assert "SafetensorError" in trials[0]["error"] and "header" in trials[0]["error"]  # the load's own cause
    assert read_json(tmp_path / "runs" / trials[0]["name"] / "status.json")["state"] == "failed"
    assert _queue(tmp_path / "runs" / "mixed")["state"] == "finished"


def test_stop_ends_every_trial_with_its_checkpoint_and_cancels_the_queue(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    runs = tmp_path / "runs"
    cell = _cell(
        tiny_model,
        qa_jsonl,
        "  parallel: 2\n  parameters:\n    learning_rate: [1.0e-3, 2.0e-3, 3.0e-3]\n",
        steps=100000,
        extra="save_steps: 3\nlogging_steps: 1\n",
    )
    shell.run_cell_magic("sft_train", "--name stopme --background", cell)
    trials = lambda: _queue(runs / "stopme")["trials"]

    def two_training_past_step_4():
        running = [t for t in trials() if t["state"] == "running"]
        steps = [read_json(runs / t["name"] / "status.json").get("step", 0) for t in running]
        return len(steps) == 2 and min(steps) >= 4

    _wait(two_training_past_step_4, what="two trials training")
    shell.run_line_magic("sft_stop", "stopme")
    assert "sweep 'stopme': stopped (2 stopped, 1 cancelled)" in capsys.readouterr().out
    states = [t["state"] for t in trials()]
    assert states == ["stopped", "stopped", "cancelled"]
    for t in trials()[:2]:
        run = runs / t["name"]
        assert read_json(run / "status.json")["state"] == "stopped"
        assert any(p.name.startswith("checkpoint-") for p in run.iterdir())  # kept
    assert not (runs / trials()[2]["name"]).exists()  # never started


def _run_notebook(cells: list[str], timeout=600) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
    return nb


def _stdout(cell) -> str:
    """What a cell printed and the text form of what it displayed."""
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def test_a_kernel_restart_and_a_dead_driver_lose_nothing_attach_continues_the_queue(tiny_model, qa_jsonl, tmp_path):
    runs = tmp_path / "runs"
    setup = f"%load_ext sft_magics\n%config SftMagics.output_dir = {str(runs)!r}"
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: [1.0e-3, 2.0e-3, 3.0e-3]\n", steps=30)
    first = _run_notebook([setup, f"%%sft_train --name restart --background\n{cell}"])
    assert "sweep 'restart' started: 3 trials queued" in _stdout(first.cells[1])
    # That kernel is gone. The driver goes on; now it dies too, mid-trial.
    _wait(lambda: any(t["state"] == "running" for t in _queue(runs / "restart")["trials"]), what="a running trial")
    driver = read_json(runs / "restart" / "driver.json")["pid"]
    os.kill(driver, signal.SIGKILL)
    _wait(
        lambda: not Path(f"/proc/{driver}").exists() or "zombie" in Path(f"/proc/{driver}/status").read_text().lower()
    )
    second = _run_notebook(
        [
            setup,
            "%sft_runs restart",
            "%sft_attach restart",
            "%sft_wait restart -o table\nprint(table['state'].tolist())",
        ]
    )
    assert "no driver is running this sweep: %sft_attach restart starts it again" in _stdout(second.cells[1])
    assert "had no driver: started one again" in _stdout(second.cells[2])
    assert _stdout(second.cells[3]).strip().splitlines()[-1] == "['finished', 'finished', 'finished']"
    queue = _queue(runs / "restart")
    assert queue["state"] == "finished"
    for t in queue["trials"]:  # every trial trained once, all its steps, in one folder
        steps = [
            e["step"] for e in read_events(runs / t["name"] / "metrics.jsonl") if e["kind"] == "log" and "loss" in e
        ]
        assert steps == list(range(1, 31)), t["name"]


def test_search_proposes_through_optuna_seeded_and_reproducible(shell, tiny_model, qa_jsonl, tmp_path):
    import optuna

    sweep = (
        "  method: search\n  trials: 3\n  seed: 11\n  prune: false\n  parameters:\n"
        "    learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}\n    lora.r: [2, 4, 8]\n"
    )
    cell = _cell(tiny_model, qa_jsonl, sweep, steps=2)
    shell.run_cell_magic("sft_train", "--name s1", cell)
    shell.run_cell_magic("sft_train", "--name s2", cell)
    one, two = _queue(tmp_path / "runs" / "s1")["trials"], _queue(tmp_path / "runs" / "s2")["trials"]
    assert [t["params"] for t in one] == [t["params"] for t in two]  # the same seed, the same proposals
    assert [t["value"] for t in one] == pytest.approx([t["value"] for t in two])
    assert len({t["params"]["learning_rate"] for t in one}) == 3
    # The study is Optuna's own, on disk: every trial told its score.
    study = optuna.load_study(
        study_name="s1",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "s1" / "optuna.journal"))
        ),
    )
    assert [t.value for t in study.trials] == pytest.approx([t["value"] for t in one])
    assert [t.params for t in study.trials] == [t["params"] for t in one]


def test_search_prunes_a_trial_that_falls_behind_and_keeps_its_checkpoint(shell, tiny_model, qa_jsonl, tmp_path):
    import optuna

    # Learning rates from one that learns to ones that cannot move the loss (seed 6 proposes 7e-3 first,
    # then 4e-7, 2e-3, 2e-9): after the first trial, Optuna's MedianPruner stops any trial whose eval
    # loss is worse than the median of the finished trials' at the same step.
    sweep = (
        "  method: search\n  trials: 4\n  seed: 6\n  prune: {n_startup_trials: 1}\n  parameters:\n"
        "    learning_rate: {low: 1.0e-9, high: 5.0e-2, log: true}\n"
    )
    cell = _cell(tiny_model, qa_jsonl, sweep, steps=20, extra="save_steps: 2\nlogging_steps: 1\n")
    shell.run_cell_magic("sft_train", "--name prune", cell)
    trials = _queue(tmp_path / "runs" / "prune")["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert [t["index"] for t in trials if t["params"]["learning_rate"] < 1e-5] == [2, 4]
    assert {2, 4} <= {t["index"] for t in pruned}, trials  # the two that cannot learn, at least
    assert trials[0]["state"] == "finished" and trials[0]["params"]["learning_rate"] > 1e-3
    for t in pruned:
        run = tmp_path / "runs" / t["name"]
        status = read_json(run / "status.json")
        assert status["state"] == "stopped" and status["step"] < 20
        assert any(p.name.startswith("checkpoint-") for p in run.iterdir())
    study = optuna.load_study(
        study_name="prune",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "prune" / "optuna.journal"))
        ),
    )
    states = {t.number: t.state for t in study.trials}
    for t in trials:
        expected = optuna.trial.TrialState.PRUNED if t["state"] == "pruned" else optuna.trial.TrialState.COMPLETE
        assert states[t["optuna"]["number"]] == expected


def test_trackers_receive_every_trial_grouped_by_the_sweep(shell, tiny_model, qa_jsonl, tmp_path, monkeypatch):
    """report_to: tensorboard, mlflow and trackio, the real libraries writing to local folders, offline."""
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cell = _cell(
        tiny_model,
        qa_jsonl,
        "  parameters:\n    learning_rate: [1.0e-3, 1.0e-2]\n",
        steps=3,
        extra="logging_steps: 1\nreport_to: [tensorboard, mlflow, trackio]\n",
    )
    shell.run_cell_magic("sft_train", "--name tracked", cell)
    runs = tmp_path / "runs"
    names = [t["name"] for t in _queue(runs / "tracked")["trials"]]
    losses = {
        n: [e["loss"] for e in read_events(runs / n / "metrics.jsonl") if e["kind"] == "log" and "loss" in e]
        for n in names
    }
    # TensorBoard: one log folder per trial under the sweep's folder (tensorboard --logdir runs/tracked/tensorboard)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for n in names:
        acc = EventAccumulator(str(runs / "tracked" / "tensorboard" / n))
        acc.Reload()
        assert [s.value for s in acc.Scalars("train/loss")] == pytest.approx(losses[n])
    # MLflow: an experiment named after the sweep, one run per trial, named by it
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["tracked"])
    assert sorted(found["tags.mlflow.runName"]) == names
    for n in names:
        assert found.loc[found["tags.mlflow.runName"] == n, "metrics.loss"].item() == pytest.approx(losses[n][-1])
    # Trackio: a project named after the sweep, one run per trial. Read with trackio's own API in a
    # fresh process: trackio fixes its folder when first imported, and this process may have imported it.
    import subprocess
    import sys

    read = (
        "import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
        "runs = S.get_runs('tracked')\n"
        "print(json.dumps({r: [x['train/loss'] for x in S.get_logs('tracked', r) if 'train/loss' in x] for r in runs}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", read],
        capture_output=True,
        text=True,
        env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")},
        check=True,
    )
    logged = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(logged) == names
    for n in names:
        assert logged[n] == pytest.approx(losses[n])


def test_a_sweep_name_everywhere_a_run_name_goes_says_what_is_wrong(shell, tmp_path):
    with pytest.raises(UsageError, match="no sweep named 'nope'"):
        shell.run_line_magic("sft_runs", "nope")
    with pytest.raises(UsageError, match="no sweep named 'nope'"):
        shell.run_line_magic("sft_eval", "nope:best --data x.jsonl")
