"""The batch script a run's job runs: ``#SBATCH`` lines from the cell's options, then one command.
It is written into the run folder so a user can read it and submit it again by hand."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from .options import SlurmOptions

# Set at the top of every script: the first node, where torchrun's c10d rendezvous listens.
HEAD = 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'


def directives(options: SlurmOptions, *, job_name: str, output: Path, chdir: Path) -> list[str]:
    """The ``#SBATCH`` lines: one task per node (the launcher starts the processes on it), the
    time-limit signal to the batch step, requeue, then what the cell set."""
    o = options
    lines = [
        f"--job-name={job_name}",
        f"--output={output}",
        "--open-mode=append",
        f"--chdir={chdir}",
        f"--nodes={o.nodes}",
        "--ntasks-per-node=1",
        f"--signal=B:USR1@{o.signal_seconds}",
        "--requeue" if o.requeue else "--no-requeue",
    ]
    for key, flag in (
        ("partition", "partition"),
        ("gpus_per_node", "gpus-per-node"),
        ("cpus_per_task", "cpus-per-task"),
        ("mem", "mem"),
        ("time", "time"),
        ("account", "account"),
        ("qos", "qos"),
    ):
        value = getattr(o, key)
        if value is not None:
            lines.append(f"--{flag}={value}")
    lines += list(o.extra)
    return [f"#SBATCH {line}" for line in lines]


def shell_word(arg: str) -> str:
    """One argument for bash: quoted as is, or, where it uses the job's variables ($HEAD,
    $SLURM_NNODES), in double quotes so bash expands them (only our own arguments use them)."""
    if "$" in arg and not any(ch in arg for ch in '"`\\\n'):
        return f'"{arg}"'
    return shlex.quote(arg)


def batch_script(
    options: SlurmOptions,
    *,
    job_name: str,
    output: Path,
    chdir: Path,
    command: Sequence[Sequence[str]],
    comment: Sequence[str] = (),
    environment: Sequence[str] = (),
) -> str:
    """The whole script: a comment saying what it is, the directives, then ``exec`` of ``command``
    (given in parts, one line each: what runs in the batch step, then what srun starts on each node)."""
    body = " \\\n    ".join(" ".join(shell_word(a) for a in part) for part in command)
    return "\n".join(
        [
            "#!/bin/bash",
            *(f"# {line}" for line in comment),
            *directives(options, job_name=job_name, output=output, chdir=chdir),
            "set -euo pipefail",
            *environment,
            HEAD,
            f"exec {body}",
            "",
        ]
    )
