"""What the cluster tests ask SLURM directly (the real one conftest.py starts)."""

from __future__ import annotations

import subprocess


def job_field(job: str, key: str) -> str | None:
    """One field of ``scontrol show job`` (for assertions about what SLURM itself says)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith(f"{key}="):
            return part.split("=", 1)[1]
    return None


def release(job: str) -> None:
    """A requeued job waits about two minutes before SLURM starts it again (its BeginTime); as the
    cluster's admin, start it now (what ``scontrol update StartTime=now`` is for). Not at once: slurmd
    refuses a start in the same second as the kill of the job's earlier start ("Job credential
    revoked"), which is why SLURM holds requeued jobs back."""
    import time

    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False, capture_output=True)


def node_state() -> str:
    """The one node's state as sinfo prints it (idle, alloc, down, ...)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.split()
    return out[0].rstrip("*~#") if out else "?"
