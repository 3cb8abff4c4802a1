"""Following a run that trains in another process, or in a SLURM job on the cluster: its events as
they are appended (:func:`follow`), waiting for its end (:func:`wait_for`), asking it to stop
(:func:`request_stop`). The run folder is the interface; for a SLURM run, SLURM's own view of the
job (pending and why, its nodes, how it ended) comes from ``scontrol`` (core/cluster)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..events import FINAL_STATES, LIVE_STATES, Event
from ..files import read_json
from ..run.folder import EVENTS_FILE, STOP_FILE, SUPERVISOR_FILE, RunFolder, now, pid_alive
from ..run.lookup import run_record
from ..run.status import read_status

JOB_POLL_SECONDS = 5.0  # how often a follower asks SLURM about a run's job (scontrol is the controller's time)


def _folder(run_dir: Path) -> RunFolder:
    run_dir = Path(run_dir)
    return RunFolder(run_dir.parent, run_dir.name)


def request_stop(run_dir: Path) -> None:
    """Ask a run to stop with a checkpoint (``STOP``, seen at its next step). A SLURM job that has not
    started yet has no step to stop at: it is cancelled, and the run ends ``stopped`` where it was."""
    from ..cluster import SlurmError, cancel

    folder = _folder(run_dir)
    (folder.path / STOP_FILE).write_text(str(time.time()))
    job, info, _ = folder.job()
    if job and info is not None and info.state == "RUNNING":
        try:  # also a signal to the job's batch step, which writes STOP on its own node at once (a shared
            cancel(job, signal="USR2", batch=True)  # filesystem may show this node's STOP there later)
        except SlurmError:
            pass  # STOP alone still reaches it
    if job and info is not None and info.state == "PENDING" and folder.status().get("state") not in FINAL_STATES:
        try:
            cancel(job)
        except SlurmError:
            return  # it started meanwhile: the worker sees STOP
        step = int(folder.status().get("step") or 0)
        folder.update_status(state="stopped", ended=now(), step=step)
        folder.append_event(
            {"kind": "stopped", "time": now(), "step": step, "note": f"SLURM job {job} cancelled while pending"}
        )


def wait_for(run_dir: Path, *, timeout: float | None = None, poll: float = 0.5) -> dict:
    """Block until the run has a final status (or its processes, or its SLURM job, are gone); return
    its record. A SLURM job that ended without a final status is recorded ``failed`` with SLURM's
    reason; SLURM is asked at most every JOB_POLL_SECONDS (the status file, every ``poll``)."""
    deadline = None if timeout is None else time.time() + timeout
    folder = _folder(run_dir)
    job = folder.job_id()
    supervisor = None if job else read_json(Path(run_dir) / SUPERVISOR_FILE).get("pid")
    asked = 0.0
    while True:
        if job:
            if read_status(run_dir)[0].get("state") in FINAL_STATES:
                return run_record(run_dir)
            if time.monotonic() - asked >= JOB_POLL_SECONDS:
                asked = time.monotonic()
                if folder.settle_job():
                    return run_record(run_dir)
        else:
            record = run_record(run_dir)
            if record["status"] in FINAL_STATES + ("stale",):
                return record
            if supervisor and not pid_alive(int(supervisor)) and record["status"] not in FINAL_STATES:
                time.sleep(poll)  # the supervisor writes the final status just before it exits
                return run_record(run_dir)
        if deadline is not None and time.time() > deadline:
            state = read_status(run_dir)[0].get("state", "unknown")
            raise TimeoutError(f"run {Path(run_dir).name} still {state} after {timeout} s")
        time.sleep(poll)


class _JobWatch:
    """SLURM's view of a run's job, as ``job`` events when it changes (PENDING (Resources) → RUNNING
    on node1 → ...), asked at most every JOB_POLL_SECONDS."""

    def __init__(self, folder: RunFolder):
        self.folder, self.last, self.asked = folder, None, 0.0

    def poll(self, sink) -> None:
        if not self.folder.job_id() or time.monotonic() - self.asked < JOB_POLL_SECONDS:
            return
        self.asked = time.monotonic()
        asked = self.folder.job()
        job, info, problem = asked
        data = info.as_event() if info else {"job_id": job, "text": problem or "no longer known to SLURM"}
        if data.get("text") != self.last:
            self.last = data.get("text")
            sink(Event("job", data, time.time()))
        if info is None or not info.live:
            self.folder.settle_job(asked)  # ended without a final status: recorded, and read as the next event


def follow(
    run_dir: Path,
    sink: Callable[[Event], None],
    *,
    stop: threading.Event | None = None,
    poll: float = 0.25,
    until_final: bool = True,
) -> None:
    """Feed every event of ``metrics.jsonl`` to ``sink`` — the history first, then new lines as they
    are appended — until a final event (or ``stop``). A half-written last line waits for its end.
    For a SLURM run, the job's state is fed too (``job`` events)."""
    path = Path(run_dir) / EVENTS_FILE
    offset, pending = 0, b""
    stop = stop or threading.Event()
    folder = _folder(run_dir)
    job = _JobWatch(folder)
    while not stop.is_set():
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                data = json.loads(line)
            except ValueError:
                continue  # a damaged line is skipped, not fatal
            kind = data.pop("kind", "log")
            when = data.pop("time", time.time())
            sink(Event(kind, data, when))
            if until_final and kind in FINAL_STATES:
                return
        job.poll(sink)  # a SLURM run's job as SLURM sees it now, in a replay too
        if not until_final:
            return
        state = read_status(run_dir)[0].get("state")
        if state in FINAL_STATES and not chunk:
            return  # final status without a final event (should not happen): stop following
        if not chunk and state in LIVE_STATES and not folder.job_id() and folder.live_owner() is None:
            return  # it says it is live, but nothing alive works on it (a crashed supervisor): stale
        time.sleep(poll)
