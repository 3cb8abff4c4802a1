"""Finding runs: which run a magic's TARGET names (:func:`run_path`), where its model is
(:func:`model_location`), and the records ``%sft_runs`` lists (:func:`run_record`, :func:`list_runs`).
Read-only, but for one thing: a SLURM run whose job SLURM ended without a final status is recorded
``failed`` with SLURM's reason when first seen (SLURM forgets ended jobs). Writing a run folder is
:class:`core.run.folder.RunFolder`'s job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import one_line
from ..events import FINAL_STATES, LIVE_STATES
from ..files import read_events
from .folder import NAME_RULE, RunFolder, is_run_folder, read_config
from .layout import EVENTS_FILE
from .lock import RunError
from .status import is_number, read_status


def run_record(run_dir: Path) -> dict:
    """One row of %sft_runs: name, model, data, steps, status, final losses, loss history. A run whose
    files were damaged (fields of other types) still gives a row: what could be read, status
    ``damaged`` and what is wrong in ``error``."""
    run_dir = Path(run_dir)
    try:
        return _run_record(run_dir)
    except Exception as err:  # a damaged folder must not hide the other runs
        return {
            "name": run_dir.name,
            "path": str(run_dir),
            "model": None,
            "dataset": None,
            "steps": None,
            "max_steps": None,
            "status": "unknown",
            "damaged": f"cannot be read: {one_line(err, 120, named=True)}",
            "history": [],
            "eval_history": [],
        }


def _run_record(run_dir: Path) -> dict:
    from ..events import Event
    from ..progress import ProgressState

    config = read_config(run_dir)
    status, problems = read_status(run_dir)
    history, eval_history = [], []
    skipped = 0
    progress = ProgressState()  # the followed generated metric and its best value (core/train/watch.py)
    for e in read_events(run_dir / EVENTS_FILE):
        kind, step = e.get("kind"), e.get("step") if e.get("step") is not None else 0
        if not isinstance(kind, str) or not is_number(step):
            skipped += 1
            continue
        if kind in ("started", "eval", *FINAL_STATES):
            try:
                progress.update(Event(kind, e, float(e.get("time") or 0)))
            except (TypeError, ValueError, KeyError, AttributeError):
                skipped += 1
                continue
        if kind == "log" and "loss" in e:
            if is_number(e["loss"]):
                history.append((step, e["loss"]))
            elif e["loss"] is not None:
                skipped += 1
        elif kind == "eval" and "eval_loss" in e:
            if is_number(e["eval_loss"]):
                eval_history.append((step, e["eval_loss"]))
            elif e["eval_loss"] is not None:
                skipped += 1
    if skipped:
        problems.append(f"metrics.jsonl: {skipped} event(s) with fields of other types skipped")
    state = status.get("state", "unknown")
    error = status.get("error")
    try:
        folder = RunFolder(run_dir.parent, run_dir.name)
    except RunError:
        folder = None
    pid = folder.live_pid() if folder else None
    asked = folder.job() if folder and state in LIVE_STATES else (None, None, None)  # one scontrol call
    job, info, _ = asked
    owner = folder.live_owner(asked if job else None) if folder else None
    if state in LIVE_STATES and not owner:
        if job and folder.settle_job(asked):  # SLURM ended its job: recorded now, since SLURM forgets it
            status = read_status(run_dir)[0]
            state, error = status.get("state", "failed"), status.get("error")
        else:
            state = "stale"  # its process is gone without a final status
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "model": config.get("model"),
        "dataset": config.get("dataset"),
        "steps": status.get("step", history[-1][0] if history else 0),
        "max_steps": status.get("max_steps"),
        "status": state,
        "train_loss": history[-1][1] if history else None,
        "eval_loss": eval_history[-1][1] if eval_history else None,
        "history": history,
        "eval_history": eval_history,
        "updated": status.get("ended") or status.get("started"),
        "pid": pid if state not in FINAL_STATES else None,
        "job": _job_field(folder.job_id() if folder else None, info, state),
        "world_size": status.get("world_size", 1),
        "error": error,
        "hint": status.get("hint"),
        "owner": owner,
        "best": f"{progress.watch['metric']} {progress.best_text()}" if progress.best else None,
        "early_stop": status.get("early_stop"),
        "damaged": "; ".join(problems) or None,  # what is wrong in its files; the state is still its own
    }


def _job_field(job: str | None, info, state: str) -> dict | None:
    """A SLURM run's job for the record: its id, and SLURM's view of it while the run lives."""
    if not job:
        return None
    if info is not None:
        return {"job_id": job, **info.as_event()}
    return {"job_id": job, "text": "ended" if state in FINAL_STATES else "unknown to SLURM now"}


def run_path(target: str, value: Any, output_dir: str | Path) -> Path | None:
    """The one answer to "which run is TARGET": a result bound with ``-o`` (a ``TrainResult`` or a
    ``BackgroundRun``: its folder), a run name in output_dir, or a run's ``final/`` folder; None
    when TARGET is not a run (a model folder or id). A named run without a final model raises."""
    handle = getattr(value, "path", None)  # a TrainResult or a BackgroundRun: its folder
    if handle is not None and is_run_folder(handle):
        return Path(handle)
    if value is None:
        model_location(target, output_dir)  # a run that has no final model says so here
    if isinstance(target, str) and NAME_RULE.match(target) and (Path(output_dir) / target).is_dir():
        return Path(output_dir) / target
    given = Path(target).expanduser()
    if given.name == "final" and is_run_folder(given.parent):
        return given.parent
    return None


def model_location(target: str, output_dir: str | Path) -> str:
    """Where the model behind ``TARGET`` is: a run's ``final/`` folder when TARGET names a run in
    output_dir, else TARGET itself (a model folder or a model id). A run without a final model is a
    one-line error with its state and cause (not a confusing "not on the Hub")."""
    if isinstance(target, str) and NAME_RULE.match(target):
        run = Path(output_dir) / target
        if (run / "final").is_dir():
            return str(run / "final")
        if run.is_dir():
            rec = run_record(run)
            cause = f": {rec['error']}" if rec.get("error") else ""
            raise RunError(
                f"run '{target}' has no final/ folder, so no model to use ({rec['status']} at step "
                f"{rec['steps']}{cause}); resume it with %sft_train --resume {target}, or use a finished run"
            )
    return target


def list_runs(output_dir: str | Path) -> list[dict]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    runs = [
        run_record(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and is_run_folder(p)
    ]
    return sorted(runs, key=lambda r: r.get("updated") or 0)
