"""A sweep on disk: ``<output_dir>/<SWEEP>/`` holds the sweep, and its trials are ordinary runs beside
it, ``<output_dir>/<SWEEP>.01-…``. :class:`SweepFolder` is the one owner of the sweep's files.

    sweep.json        what the sweep is: its spec, the cell's config (secret keys left out), the metric
    trials.json       the queue: every trial's values, state, run and score (written by the driver only)
    driver.json       the driver process (pid); run.lock is held while it drives
    driver.log        what the driver printed
    STOP              a request to stop every trial (checkpoints kept) and start no more
    optuna.journal    method: search: Optuna's study (JournalStorage), so a restarted driver goes on
    tensorboard/      report_to: tensorboard: one log folder per trial, side by side

A sweep's score is one number per trial: the best value of its metric over the trial's evaluations
(``loss``: its last training loss). The leader is the trial with the best score so far."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ..events import FINAL_STATES
from ..files import read_events, read_json, write_json
from ..run.folder import NAME_RULE_TEXT, is_run_folder, validate_name
from ..run.layout import EVENTS_FILE, STOP_FILE
from ..run.lock import RunError, RunLock, pid_alive
from .spec import SweepError

SWEEP_FILE, TRIALS_FILE, DRIVER_FILE = "sweep.json", "trials.json", "driver.json"
DRIVER_LOG, JOURNAL_FILE, TENSORBOARD_FOLDER = "driver.log", "optuna.journal", "tensorboard"
# A trial's own states, beyond its run's (queued → running → the run's final state):
TRIAL_ENDS = (*FINAL_STATES, "pruned", "cancelled")
SWEEP_ENDS = ("finished", "stopped", "failed")


def is_sweep_folder(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def metric_points(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a trial's metric: ``loss`` from its training logs, anything else from its
    evaluations (``eval_<name>``; ``eval_loss`` as is)."""
    kind, key = (
        ("log", "loss") if metric == "loss" else ("eval", metric if metric.startswith("eval_") else f"eval_{metric}")
    )
    points = []
    for e in read_events(Path(run_dir) / EVENTS_FILE):
        value = e.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if e.get("kind") == kind and number and isinstance(e.get("step"), int):
            points.append((e["step"], float(value)))
    return points


def score(points: list[tuple[int, float]], metric: str, direction: str) -> tuple[float, int] | None:
    """A trial's one number, and its step: the best evaluation (the last training loss for ``loss``)."""
    if not points:
        return None
    if metric == "loss":
        return points[-1][1], points[-1][0]
    pick = max if direction == "maximize" else min
    value = pick(v for _, v in points)
    return value, next(s for s, v in points if v == value)


def better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


class SweepFolder:
    def __init__(self, output_dir: str | os.PathLike, name: str):
        self.name = validate_name(name)
        self.root = Path(output_dir).expanduser()
        self.path = self.root / self.name
        self.lock = RunLock(self.path)  # the driver's: one at a time

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    @classmethod
    def create(cls, output_dir, name: str) -> SweepFolder:
        folder = cls(output_dir, name)
        try:
            folder.root.mkdir(parents=True, exist_ok=True)
            folder.path.mkdir()  # atomic: of two sweeps under one name the first wins
        except FileExistsError:
            what = (
                "a sweep" if is_sweep_folder(folder.path) else ("a run" if is_run_folder(folder.path) else "a folder")
            )
            raise RunError(
                f"{what} named '{name}' already exists in {folder.root}: choose another --name "
                f"(%sft_attach {name} continues a sweep)"
                if what == "a sweep"
                else f"{what} named '{name}' already exists in {folder.root}: choose another --name for the sweep"
            ) from None
        except OSError as err:
            raise RunError(f"output_dir {folder.root} cannot hold a sweep: {err.strerror or err}") from None
        return folder

    @classmethod
    def existing(cls, output_dir, name: str) -> SweepFolder:
        folder = cls(output_dir, name)
        if not is_sweep_folder(folder.path):
            raise SweepError(f"no sweep named '{name}' in {folder.root}")
        return folder

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)

    # -- the files ---------------------------------------------------------------------------------
    def info(self) -> dict:
        return read_json(self.path / SWEEP_FILE)

    def write_info(self, info: dict) -> None:
        write_json(self.path / SWEEP_FILE, info)

    def queue(self) -> dict:
        data = read_json(self.path / TRIALS_FILE)
        data.setdefault("trials", [])
        data.setdefault("state", "queued")
        return data

    def write_queue(self, queue: dict) -> None:
        write_json(self.path / TRIALS_FILE, queue)

    def trial_dir(self, trial: dict) -> Path:
        return self.root / validate_name(trial["name"])

    # -- the driver ----------------------------------------------------------------------------------
    def driver_pid(self) -> int | None:
        """The live driver's pid (None when no driver drives the sweep now)."""
        # The lock's holder, or one just started that has not taken the lock yet (a dead driver's
        # lock file may still name it: whichever of the two lives).
        for pid in (self.lock.owner(), read_json(self.path / DRIVER_FILE).get("pid")):
            if isinstance(pid, int) and pid > 0 and pid_alive(pid):
                return pid
        return None

    def request_stop(self) -> None:
        (self.path / STOP_FILE).write_text(f"requested at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def stop_requested(self) -> bool:
        return (self.path / STOP_FILE).exists()

    def state(self) -> str:
        """``running`` (a driver drives it), an end (``finished``, ``stopped``, ``failed``), or ``stale``:
        not ended and no driver (a killed driver; ``%sft_attach`` starts it again)."""
        queue = self.queue()
        if queue.get("state") in SWEEP_ENDS:
            return queue["state"]
        return "running" if self.driver_pid() else "stale"


MAX_SWEEP_NAME = 90  # its trials are named SWEEP.NN-values, within a run name's 100 characters


def check_sweep_name(name: str) -> str:
    try:
        validate_name(name)
    except RunError:
        raise SweepError(f"sweep name {name!r} is not allowed: use {NAME_RULE_TEXT}") from None
    if len(name) > MAX_SWEEP_NAME:
        raise SweepError(f"sweep name {name[:20]!r}... has {len(name)} characters: at most {MAX_SWEEP_NAME}")
    return name
