"""Runs on disk: ``<output_dir>/<name>/`` holds everything about one training run.

    config.yaml        the resolved config (TRL names; no secrets)
    cell.txt           the %%sft_train cell, when it came from one
    metrics.jsonl      every event, appended line by line as it happens
    status.json        state, step, timings, pid, error and hint
    environment.json   package versions, device, dataset fingerprints
    checkpoint-N/      the trainer's checkpoints (resumable)
    final/             the adapter (or full model) and the tokenizer
    error.log          the full traceback of a failed run
    run.lock           held while a process trains into this folder
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

SECRET_KEYS = re.compile(r"token|secret|password|api_key|hub_token", re.I)


class RunBusy(RuntimeError):
    """Another live process is training into this run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file holding the owner's pid. A lock whose process is gone is stale and
    taken over; a live one refuses the second run."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _pid_alive(owner):
                    raise RunBusy(f"run folder {self.path.parent} is in use by process {owner}; "
                                  "wait for it, stop it, or choose another --name") from None
                if owner == os.getpid():
                    raise RunBusy(f"run folder {self.path.parent} is already training in this process; "
                                  "wait for it or choose another --name") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise RunBusy(f"could not lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename): readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_events(path: Path) -> Iterator[dict]:
    """Events of a metrics.jsonl, tolerantly: a half-written last line is skipped, not an error."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            continue


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    found = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def scrub(config: dict) -> dict:
    """Drop anything that looks like a secret before the config is written."""
    return {k: ("<redacted>" if SECRET_KEYS.search(k) and v else v) for k, v in config.items()}


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version
    import platform

    versions = {}
    for name in ("sft_magics", "torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def run_record(run_dir: Path) -> dict:
    """One row of %sft_runs: name, model, data, steps, status, final losses, loss history."""
    import yaml

    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    status = read_json(run_dir / "status.json")
    history, eval_history = [], []
    for e in read_events(run_dir / "metrics.jsonl"):
        if e.get("kind") == "log" and "loss" in e:
            history.append((e["step"], e["loss"]))
        elif e.get("kind") == "eval" and "eval_loss" in e:
            eval_history.append((e["step"], e["eval_loss"]))
    state = status.get("state", "unknown")
    supervisor = read_json(run_dir / "supervisor.json").get("pid")
    pid = supervisor or status.get("pid")
    alive = bool(pid) and _pid_alive(int(pid)) and state not in ("finished", "stopped", "failed")
    if state in ("training", "loading", "starting") and not alive:
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
        "pid": pid if alive else None,
        "world_size": status.get("world_size", 1),
        "error": status.get("error"),
    }


def list_runs(output_dir: str | Path) -> list[dict]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    runs = [run_record(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: r.get("updated") or 0)


def now() -> float:
    return round(time.time(), 3)
