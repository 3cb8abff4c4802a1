"""The run lock: one process at a time owns a run folder (an exclusive flock on run.lock, with the holder's pid in it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import SftError
from .layout import LOCK_FILE


class RunLock:
    """An exclusive lock file holding the owner's pid. A lock whose process is gone is stale and
    taken over; a live one refuses the second run (after ``wait`` seconds of retrying)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def acquire(self, wait: float = 0.0) -> RunLock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.owner()
                if owner and pid_alive(owner):
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    if owner == os.getpid():
                        raise RunBusy(
                            f"run folder {self.path.parent} is already training in this process; "
                            "wait for it or choose another --name"
                        ) from None
                    raise RunBusy(
                        f"run folder {self.path.parent} is in use by process {owner}; "
                        "wait for it, stop it, or choose another --name"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except FileNotFoundError:
                raise RunError(f"no run folder at {self.path.parent}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)  # needs no disk space: works on a full disk too
            self.held = False

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunError(SftError, ValueError):
    """A bad run name, a name already taken, an output_dir that cannot hold runs."""


class RunBusy(SftError, RuntimeError):
    """Another live process is training into this run folder."""


def pid_alive(pid: int) -> bool:
    """A process that runs. A zombie (ended, not yet reaped: a detached process whose parent is gone,
    on a machine whose init does not reap) is not alive, though signal 0 still reaches it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): signal 0 is the answer
