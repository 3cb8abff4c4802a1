"""SLURM's own commands, and nothing of ours: ``sbatch`` submits, ``scontrol show job`` tells a job's
state (without ``slurmdbd`` that is the only record, and SLURM forgets an ended job after
``MinJobAge``), ``scancel`` signals or cancels, ``scontrol requeue`` puts a job back in the queue.
Every failure is one line: what SLURM said, and which command said it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SftError, one_line

# Job states in which the job still holds, or waits for, its nodes (squeue's man page, JOB STATE CODES).
LIVE_JOB_STATES = (
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
)


class SlurmError(SftError, RuntimeError):
    """SLURM refused or could not be asked; one line with what it said."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # SLURM's JobState: PENDING, RUNNING, TIMEOUT, ...
    name: str | None = None  # JobName (a reused job id names another job)
    reason: str | None = None  # Reason=..., None when SLURM says None
    nodes: str | None = None  # NodeList while it runs
    exit_code: str | None = None
    restarts: int = 0
    time_limit: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_JOB_STATES

    def describe(self) -> str:
        """``PENDING (Resources)``, ``RUNNING on node[1-2]``, ``TIMEOUT (TimeLimit)``: what squeue would say."""
        text = self.state + (f" ({self.reason})" if self.reason else "")
        if self.state in ("RUNNING", "COMPLETING") and self.nodes:
            text += f" on {self.nodes}"
        return text

    def as_event(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "reason": self.reason,
            "nodes": self.nodes,
            "restarts": self.restarts,
            "text": self.describe(),
        }


def _run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 10.0):
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, env=None if env is None else dict(env), timeout=timeout
        )
    except FileNotFoundError:
        raise SlurmError(
            f"'{cmd[0]}' is not installed here: --launcher slurm needs SLURM's client commands "
            "(sbatch, scontrol, scancel) on the machine that runs the notebook"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{' '.join(cmd[:2])}' did not answer in {timeout:g} s: is slurmctld reachable?") from None


def _said(proc) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    text = re.sub(r"^(sbatch|scontrol|scancel): (error: )?", "", text, flags=re.MULTILINE)
    return one_line(text or f"exit code {proc.returncode}", 300)


def submit(script: Path, *, env: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable SCRIPT``; the job id. A refusal (unknown partition, too many GPUs, a
    limit) is a :class:`SlurmError` with SLURM's own words."""
    proc = _run(["sbatch", "--parsable", str(script)], env=env, timeout=120.0)
    if proc.returncode != 0:
        raise SlurmError(f"SLURM refused the job: {_said(proc)}")
    job = proc.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {one_line(proc.stdout, 80)!r}, not a job id")
    return job


_FIELD = re.compile(r"(?:^|\s)(JobId|JobName|JobState|Reason|NodeList|ExitCode|Restarts|TimeLimit)=(\S*)")


def job_info(job_id: str, *, env: Mapping[str, str] | None = None) -> JobInfo | None:
    """The job as ``scontrol show job`` sees it; None when SLURM no longer knows it (it forgets ended
    jobs after MinJobAge). Raises :class:`SlurmError` when SLURM cannot be asked."""
    proc = _run(["scontrol", "--oneliner", "show", "job", str(job_id)], env=env)
    if proc.returncode != 0:
        if "Invalid job id" in (proc.stderr + proc.stdout):
            return None
        raise SlurmError(f"scontrol show job {job_id}: {_said(proc)}")
    line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    found = dict(_FIELD.findall(line))
    if "JobState" not in found:
        return None

    def value(key):
        v = found.get(key)
        return None if v in (None, "", "None", "(null)") else v

    return JobInfo(
        job_id=str(job_id),
        state=found["JobState"],
        name=value("JobName"),
        reason=value("Reason"),
        nodes=value("NodeList"),
        exit_code=value("ExitCode"),
        restarts=int(found.get("Restarts") or 0) if (found.get("Restarts") or "0").isdigit() else 0,
        time_limit=value("TimeLimit"),
    )


def cancel(job_id: str, *, signal: str | None = None, batch: bool = False) -> None:
    """``scancel`` the job, or with ``signal`` only signal it (``batch``: its batch step only)."""
    cmd = ["scancel", *([f"--signal={signal}"] if signal else []), *(["--batch"] if batch else []), str(job_id)]
    proc = _run(cmd)
    if proc.returncode != 0:
        raise SlurmError(f"scancel {job_id}: {_said(proc)}")


def requeue(job_id: str) -> None:
    """``scontrol requeue``: the job goes back to PENDING (SLURM holds it about two minutes first)."""
    proc = _run(["scontrol", "requeue", str(job_id)])
    if proc.returncode != 0:
        raise SlurmError(f"scontrol requeue {job_id}: {_said(proc)}")
