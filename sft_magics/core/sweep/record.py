"""What a sweep looks like now: one record with a row per trial (values, state, step, loss, score,
curves) and the leader. Read-only: every view, ``%sft_runs``, ``-o`` and ``SWEEP:best`` read this."""

from __future__ import annotations

from pathlib import Path

from ..run.lookup import run_record
from .folder import SweepFolder, better, metric_points, score


def trial_record(folder: SweepFolder, trial: dict, metric: str, direction: str) -> dict:
    run_dir = folder.trial_dir(trial)
    row = {
        "index": trial["index"],
        "name": trial["name"],
        "params": dict(trial.get("params") or {}),
        "state": trial.get("state", "queued"),
        "error": trial.get("error"),
        "path": str(run_dir),
        "steps": None,
        "max_steps": None,
        "train_loss": None,
        "history": [],
        "metric_history": [],
        "value": trial.get("value"),
        "value_step": trial.get("value_step"),
    }
    if not run_dir.is_dir():
        return row
    run = run_record(run_dir)
    points = metric_points(run_dir, metric)
    best = score(points, metric, direction)
    row.update(
        steps=run.get("steps"),
        max_steps=run.get("max_steps"),
        train_loss=run.get("train_loss"),
        eval_loss=run.get("eval_loss"),
        history=run.get("history") or [],
        metric_history=points,
        run_status=run.get("status"),
    )
    if row["state"] == "running":  # live: the run's own word (loading, training, stale...)
        row["state"] = run.get("status") or "running"
        row["error"] = run.get("error")
    if best is not None:
        row["value"], row["value_step"] = best
    return row


def leading(trials: list[dict], direction: str, *, with_model: bool = False) -> dict | None:
    """The trial with the best score (the first of equals); ``with_model``: among those with a final model."""
    found = None
    for t in trials:
        if t["value"] is None or (with_model and not (Path(t["path"]) / "final").is_dir()):
            continue
        if found is None or better(t["value"], found["value"], direction):
            found = t
    return found


def sweep_record(path: Path) -> dict:
    """The sweep and its trials, as the views show them; ``leader``: the trial with the best score."""
    path = Path(path)
    folder = SweepFolder(path.parent, path.name)
    info, queue = folder.info(), folder.queue()
    metric, direction = info.get("metric", "eval_loss"), info.get("direction", "minimize")
    trials = [trial_record(folder, t, metric, direction) for t in queue["trials"]]
    leader, best = leading(trials, direction), leading(trials, direction, with_model=True)
    for t in trials:
        t["leader"] = t is leader
    return {
        "name": folder.name,
        "path": str(path),
        "method": info.get("method"),
        "parameters": [p["key"] for p in info.get("spec", {}).get("parameters", [])],
        "metric": metric,
        "direction": direction,
        "planned": info.get("spec", {}).get("trials"),
        "parallel": info.get("parallel"),
        "state": folder.state(),
        "driver": folder.driver_pid(),
        "error": queue.get("error"),
        "trials": trials,
        "leader": leader["name"] if leader else None,  # the best score so far, live
        "best": best["name"] if best else None,  # the best with a final model: NAME:best
        "kind": "sweep",
        "created": info.get("created"),
    }


def sweep_frame(record: dict):
    """The trials as a pandas DataFrame (``-o NAME``): one row per trial, one column per swept key."""
    import pandas as pd

    keys = record["parameters"]
    rows = []
    for t in record["trials"]:
        rows.append(
            {
                "trial": t["name"],
                **{k: t["params"].get(k) for k in keys},
                "state": t["state"],
                "step": t["steps"],
                "train_loss": t["train_loss"],
                record["metric"]: t["value"],
                "best_step": t["value_step"],
                "leader": t["leader"],
            }
        )
    return pd.DataFrame(rows)


def list_sweeps(output_dir) -> list[dict]:
    """Every sweep in output_dir, oldest first, as records."""
    from .folder import is_sweep_folder

    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and is_sweep_folder(p)]
    return sorted((sweep_record(p) for p in found), key=lambda r: r.get("created") or 0)


def best_trial(output_dir, name: str) -> str:
    """``SWEEP:best``: the name of the sweep's best trial by its metric, so far, among the trials with
    a final model (a trial still training, or failed, has no model to load)."""
    from .spec import SweepError

    folder = SweepFolder.existing(output_dir, name)
    record = sweep_record(folder.path)
    if record["best"] is None:
        raise SweepError(
            f"sweep '{name}' has no best trial yet: no trial with a final model has a {record['metric']} "
            f"({record['state']}, {len(record['trials'])} trial(s)); %sft_wait {name}, or name a trial"
        )
    return record["best"]
