"""The batch script a run's job runs: ``#SBATCH`` lines from the cell's options, then one command.
It is written into the run folder so a user can read it and submit it again by hand."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from .options import SlurmOptions

# Set at the top of every script: the first node, where torchrun's c10d rendezvous listens, and a
# rendezvous port of this job's own (two jobs on one node must not share one).
HEAD = 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
# The job's own variables our arguments may use: nothing else is expanded (a `$` in a path stays a `$`).
_JOB_VARIABLES = re.compile(r"\$(HEAD|SFT_RDZV_PORT|SLURM_NNODES|SLURM_JOB_ID)\b")


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
    """One argument for bash: quoted as is, or, where it uses only the job's own variables ($HEAD,
    $SFT_RDZV_PORT, $SLURM_NNODES, $SLURM_JOB_ID), in double quotes so bash expands them. Any other ``$``
    (in a path, in a command for another shell) stays as written."""
    if "$" in arg and "$" not in _JOB_VARIABLES.sub("", arg) and not any(ch in arg for ch in '"`\\\n'):
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
            # Until the batch step's handlers are in place, a stop or time-limit signal must not kill it.
            "trap '' USR1 USR2",
            *environment,
            HEAD,
            f"export SFT_RDZV_PORT={options.port}"
            if options.port
            else "export SFT_RDZV_PORT=$((20000 + SLURM_JOB_ID % 20000))",
            f"exec {body}",
            "",
        ]
    )
