"""Runs on disk: ``<output_dir>/<name>/`` holds everything about one training run, and
:class:`RunFolder` is its one owner. Nothing else writes into a run folder.

    config.yaml        the resolved config (TRL names; secret keys left out: resume reads it back)
    cell.txt           the %%sft_train cell, when it came from one (credentials scrubbed)
    spec.json          a background run's spec (secret keys left out)
    metrics.jsonl      every event, appended line by line as it happens
    status.json        state, step, timings, pid, error and hint (written atomically)
    environment.json   package versions, device, dataset fingerprints
    checkpoint-N/      the trainer's checkpoints; ``sft_magics_checkpoint.json`` inside marks a whole one
    final/             the adapter (or full model) and the tokenizer (written as ``.final.partial``,
                       renamed when whole)
    error.log          the full traceback of a failed run (credentials scrubbed)
    run.lock           held while a process trains into this folder
    job.json, job.sbatch, slurm-<job>.out    a run submitted to SLURM: its job, its batch script, SLURM's log

What is guaranteed (tests/test_reliability.py shows each):

- a run name is one path component of safe characters: nothing is written outside ``output_dir/NAME``;
- a new run never writes into an existing run's folder: the folder is claimed by one atomic rename
  of a fresh folder that already holds the lock, so of two starts under one name the first wins;
- every file is written whole (temp file + fsync + rename); a checkpoint counts only when whole;
- a run ends in one of :data:`FINAL_STATES`, and a run whose process is gone never looks live.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..events import FINAL_STATES
from ..files import atomic_write, read_json, write_json
from .checkpoints import checkpoint_problem, checkpoint_step, mark_whole
from .layout import (  # noqa: F401 - the names, also reached as run.folder's
    CELL_FILE,
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    ERROR_FILE,
    EVAL_FOLDER,
    EVENTS_FILE,
    INTERRUPT_FILE,
    JOB_FILE,
    JOB_LOG_PATTERN,
    JOB_SCRIPT_FILE,
    LOCK_FILE,
    RUN_FILES,
    SPEC_FILE,
    STATUS_FILE,
    STOP_FILE,
    SUPERVISOR_FILE,
)
from .lock import RunBusy, RunError, RunLock, pid_alive
from .status import read_status

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RULE_TEXT = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
FINAL_PARTIAL = ".final.partial"


def is_run_folder(path: Path) -> bool:
    """A folder a run made (it has a status or a config): never written over by an export, listed by %sft_runs."""
    path = Path(path)
    return path.is_dir() and ((path / STATUS_FILE).is_file() or (path / CONFIG_FILE).is_file())


def read_config(run_dir: Path) -> dict:
    """A run's config.yaml (secrets left out when it was written); {} when missing or unreadable."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def new_eval_folder(run_dir: Path) -> Path:
    """``<run>/eval/<timestamp>/`` for a ``%sft_eval`` report (a suffix when two evaluations start in
    the same second)."""
    base = Path(run_dir) / EVAL_FOLDER / time.strftime("%Y%m%d-%H%M%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def validate_name(name: Any) -> str:
    """A run name is one path component: no ``..``, no ``/``, no absolute path, no surprises."""
    if not isinstance(name, str) or not NAME_RULE.match(name) or name in (".", ".."):
        raise RunError(f"run name {name!r} is not allowed: use {NAME_RULE_TEXT} (one folder inside output_dir)")
    return name


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


# -- the lock -------------------------------------------------------------------------------------


# -- the owner ------------------------------------------------------------------------------------


class RunFolder:
    """One run's folder: naming, claiming, locking, status, events, config, failures, checkpoints."""

    def __init__(self, output_dir: str | os.PathLike, name: str):
        self.name = validate_name(name)
        self.root = Path(output_dir).expanduser()
        self.path = self.root / self.name
        self.lock = RunLock(self.path)

    def __repr__(self) -> str:
        return f"<RunFolder {self.path}>"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    # -- claiming -------------------------------------------------------------------------------
    @classmethod
    def create(cls, output_dir, name: str, *, overwrite: bool = False) -> RunFolder:
        """Claim a new run folder, locked by this process. An existing run is refused (or, with
        ``overwrite``, removed first, never while it is live). The claim is one atomic rename of a
        fresh folder that already holds the lock: two starts under one name cannot both win."""
        folder = cls(output_dir, name)
        folder._ensure_root()
        folder.replaced = False
        if folder.path.exists() or folder.path.is_symlink():
            if not overwrite:
                raise RunError(folder._exists_message())
            folder._remove_existing()
            folder.replaced = True
        staging = folder.root / f".{name}.claim-{os.getpid()}-{time.monotonic_ns()}"
        try:
            staging.mkdir()
            (staging / LOCK_FILE).write_text(str(os.getpid()))
            os.rename(staging, folder.path)  # fails if the name was taken meanwhile
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY) or folder.path.exists():
                raise RunError(folder._exists_message()) from None
            raise RunError(f"output_dir {folder.root} cannot hold a new run: {_reason(err)}") from None
        folder.lock.held = True
        return folder

    @classmethod
    def existing(cls, output_dir, name: str) -> RunFolder:
        folder = cls(output_dir, name)
        if not folder.path.is_dir():
            raise RunError(f"no run named '{name}' in {folder.root}")
        return folder

    def _ensure_root(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise RunError(
                f"output_dir {root} is a file, not a folder: set SftMagics.output_dir (or output_dir) to a folder"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"output_dir {root} cannot be created: {_reason(err)}") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise RunError(f"output_dir {root} is not writable: choose another output_dir")

    def _exists_message(self) -> str:
        status = self.status()
        state = status.get("state") or "unknown"
        step = f" at step {status['step']}" if status.get("step") else ""
        owner = self.live_owner()
        step += f", in use by {owner}" if owner else ""
        return (
            f"a run named '{self.name}' already exists in {self.root} ({state}{step}): continue it with "
            f"--resume {self.name}, choose another --name, or pass --overwrite to remove it first"
        )

    def _remove_existing(self) -> None:
        """``--overwrite``: only a run folder, only when no live process trains into it."""
        path = self.path
        if path.is_symlink() or not path.is_dir():
            raise RunError(f"{path} is not a run folder: not removed (choose another --name)")
        markers = (STATUS_FILE, CONFIG_FILE, SPEC_FILE, EVENTS_FILE, LOCK_FILE)
        if any(path.iterdir()) and not any((path / m).exists() for m in markers):
            raise RunError(
                f"{path} is not a run folder (no status.json or config.yaml): not removed, choose another --name"
            )
        owner = self.live_owner()
        if owner:
            raise RunBusy(f"run '{self.name}' is still training ({owner}): stop it before --overwrite")
        self.lock.acquire()  # refuses a live owner; held until the folder is moved away
        trash = self.root / f".{self.name}.removed-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(path, trash)  # atomic: the name is free at once, the old files go next
        except OSError as err:
            self.lock.release()
            raise RunError(f"could not remove the old run {path}: {_reason(err)}") from None
        self.lock.held = False  # the lock file went with the old folder
        shutil.rmtree(trash, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------
    def status(self) -> dict:
        """status.json's fields of the right type (:func:`read_status`)."""
        return read_status(self.path)[0]

    def live_pid(self) -> int | None:
        """The live process on this machine training into this folder: the lock's owner, or a
        supervisor whose run has no final status yet. None when nothing alive here works on it, and
        for a SLURM run (its processes are on the cluster's nodes: their pids mean nothing here)."""
        if self.job_id():
            return None
        supervisor = read_json(self.path / SUPERVISOR_FILE).get("pid")
        if supervisor and pid_alive(int(supervisor)) and self.status().get("state") not in FINAL_STATES:
            return int(supervisor)  # a background run: the process %sft_stop and the table talk about
        owner = self.lock.owner()
        if owner and pid_alive(owner):
            return owner
        return None

    def job_id(self) -> str | None:
        """The SLURM job of a run submitted with ``--launcher slurm`` (job.json), else None."""
        job = read_json(self.path / JOB_FILE).get("job_id")
        return str(job) if job else None

    def job(self):
        """``(job_id, JobInfo or None, problem)``: the run's SLURM job as SLURM sees it now (None:
        SLURM no longer knows it, or the id now names another job; ``problem``: SLURM could not be
        asked). A run with a final status does not ask: its job's state no longer matters."""
        from ..cluster import SlurmError, job_info

        job = self.job_id()
        if not job or self.status().get("state") in FINAL_STATES:
            return job, None, None
        try:
            info = job_info(job)
        except SlurmError as err:
            return job, None, str(err)
        if info is not None and info.name and info.name != f"sft-{self.name}":
            info = None  # SLURM reused the id (its state was reset): not this run's job
        return job, info, None

    def live_owner(self, job=None) -> str | None:
        """What trains into this folder now, in words (``process 123``, ``SLURM job 45 (PENDING
        (Resources))``), or None. A SLURM run lives while its job does; when SLURM cannot be asked,
        it is not called dead. ``job``: :meth:`job`'s answer, when the caller has it."""
        if self.job_id():
            if self.status().get("state") in FINAL_STATES:
                return None
            job, info, problem = job or self.job()
            if problem:
                return f"SLURM job {job} (its state is unknown: {problem})"
            return f"SLURM job {job} ({info.describe()})" if info is not None and info.live else None
        pid = self.live_pid()
        return f"process {pid}" if pid else None

    def refuse_live_job(self) -> None:
        """A run whose SLURM job is still alive (pending, running, requeued) is not started again."""
        owner = self.live_owner() if self.job_id() else None
        if owner:
            raise RunBusy(
                f"run '{self.name}' is still in {owner}: wait for it, or stop it (%sft_stop {self.name}) first"
            )

    def job_end_cause(self, job=None) -> str | None:
        """For a SLURM run that SLURM ended (or forgot) while its status is still live: the cause,
        naming SLURM's state and reason; else None. ``job``: :meth:`job`'s answer, when the caller has it."""
        job, info, problem = job or self.job()
        if not job or problem or self.status().get("state") in FINAL_STATES or (info is not None and info.live):
            return None
        if info is None:
            return f"SLURM ended job {job} and no longer knows it (after MinJobAge), before the run recorded an end"
        return f"SLURM ended job {job} as {info.describe()}" + (
            f", exit code {info.exit_code}" if info.exit_code else ""
        )

    def settle_job(self, job=None) -> bool:
        """Record a SLURM run that SLURM ended without a final status as ``failed``, with SLURM's
        reason (it forgets ended jobs after MinJobAge: the folder must keep the cause). True if it did."""
        cause = self.job_end_cause(job)
        if cause is None:
            return False
        step = self.status().get("step")
        hint = f"resume with --resume {self.name}" + (f" (last whole checkpoint: step {step})" if step else "")
        self.record_failure(cause, hint, step=step)
        return True

    # -- writing ------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def write_json(self, name: str, data: dict) -> None:
        write_json(self.path / name, data)

    def write_config(self, config: dict) -> None:
        """config.yaml: what resume reads back. Secret keys are left out (at any depth), every other
        key is kept as given (``eos_token`` is a setting, not a secret)."""
        import yaml

        from ..secrets import split_secrets

        clean, secrets = split_secrets(config)
        head = f"# left out (secrets): {', '.join('.'.join(p) for p in secrets)}\n" if secrets else ""
        self.write_text(CONFIG_FILE, head + yaml.safe_dump(clean, sort_keys=False))

    def update_status(self, **fields) -> dict:
        """Merge ``fields`` into status.json, whole. On a full disk, where the temp file cannot be
        written, the file is rewritten in place (its blocks are already allocated)."""
        status = {**self.status(), **fields}
        try:
            write_json(self.path / STATUS_FILE, status)
        except OSError:
            compact = json.dumps({k: v for k, v in status.items() if k != "log_tail"}, default=str)
            with open(self.path / STATUS_FILE, "r+b") as f:
                f.write(compact.encode())
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        return status

    def append_event(self, event: dict) -> None:
        """One line per event, one write: a reader sees whole lines (at worst a half-written last one)."""
        with open(self.path / EVENTS_FILE, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    def event_sink(self):
        from ..events import Event

        def sink(event: Event) -> None:
            self.append_event(event.to_json())

        return sink

    def record_failure(
        self, cause: str, hint: str, *, step: int | None = None, traceback_text: str | None = None, **extra
    ) -> list[str]:
        """Record a failure as well as the disk allows; never raises. Returns what could not be
        written (said on screen, so a full disk cannot hide the cause)."""
        from ..secrets import scrub_text

        problems = []
        cause = scrub_text(cause)
        extra = {k: scrub_text(v) if isinstance(v, str) else v for k, v in extra.items()}
        if traceback_text is not None:
            try:
                self.write_text(ERROR_FILE, scrub_text(traceback_text))
            except OSError as err:
                problems.append(f"error.log could not be written ({_reason(err)})")
        fields = {"state": "failed", "ended": now(), "error": cause, "hint": hint, **extra}
        if step is not None:
            fields["step"] = step
        try:
            self.update_status(**fields)
        except OSError as err:
            problems.append(f"status.json could not be written ({_reason(err)})")
        try:
            self.append_event(
                {
                    "kind": "failed",
                    "time": now(),
                    "step": step if step is not None else self.status().get("step", 0),
                    "error": cause,
                    "hint": hint,
                    **{k: v for k, v in extra.items() if k == "log_tail"},
                }
            )
        except OSError as err:
            problems.append(f"metrics.jsonl could not be written ({_reason(err)})")
        self.set_aside_broken_checkpoints()
        return problems

    def remove(self) -> None:
        """Remove a folder this process claimed and that holds nothing of value."""
        self.lock.release()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first (whole or not)."""
        found = [p for p in self.path.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
        return sorted(found, key=checkpoint_step)

    def mark_whole(self, checkpoint: Path) -> None:
        mark_whole(checkpoint)

    checkpoint_problem = staticmethod(checkpoint_problem)

    def resumable_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest whole checkpoint, and a note for each newer one that is not whole."""
        notes = []
        for ckpt in reversed(self.checkpoints()):
            problem = self.checkpoint_problem(ckpt)
            if problem is None:
                return ckpt, notes
            notes.append(f"{ckpt.name} is not whole ({problem})")
        return None, notes

    def set_aside_broken_checkpoints(self) -> list[str]:
        """Rename checkpoints that are not whole to ``broken-checkpoint-N``: never offered for resume,
        kept for inspection. Renaming needs no disk space."""
        moved = []
        for ckpt in self.checkpoints():
            if self.checkpoint_problem(ckpt) is not None:
                try:
                    os.rename(ckpt, ckpt.with_name(f"broken-{ckpt.name}-{int(time.time())}"))
                    moved.append(ckpt.name)
                except OSError:
                    pass
        return moved

    def publish_final(self, partial: Path) -> Path:
        """``final/`` appears whole or not at all: the model is saved to ``.final.partial`` first."""
        final = self.path / "final"
        old = self.path / f".final.old-{time.monotonic_ns()}"
        if final.exists():
            os.rename(final, old)
        try:
            os.rename(partial, final)
        except OSError:
            if old.exists():
                os.rename(old, final)  # the previous final model stays
            raise
        shutil.rmtree(old, ignore_errors=True)
        return final


# -- the run record -------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("sft_magics", "torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def now() -> float:
    return round(time.time(), 3)
