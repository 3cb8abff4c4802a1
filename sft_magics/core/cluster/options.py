"""The cell's ``slurm:`` key: SLURM's own option names (``partition``, ``nodes``, ``gpus_per_node``,
``cpus_per_task``, ``mem``, ``time``, ``account``, ``qos``), ``extra`` ``#SBATCH`` lines, and how a
time limit or preemption is met (``signal_seconds`` ahead, ``requeue``). Checked before anything is
written: every value ends up on a ``#SBATCH`` line, so a newline or a shell character in one is refused.

Defaults not given in the cell are sbatch's own: it reads ``SBATCH_PARTITION``, ``SBATCH_ACCOUNT``,
``SBATCH_QOS``, ``SBATCH_TIMELIMIT``, ``SBATCH_GPUS_PER_NODE`` and ``SBATCH_MEM_PER_NODE`` itself. A value
the cell gives wins over that environment (see :func:`submission_environment`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError

# The sbatch input variables a cell's key overrides (sbatch's man page, INPUT ENVIRONMENT VARIABLES).
ENVIRONMENT = {
    "partition": "SBATCH_PARTITION",
    "account": "SBATCH_ACCOUNT",
    "qos": "SBATCH_QOS",
    "time": "SBATCH_TIMELIMIT",
    "gpus_per_node": "SBATCH_GPUS_PER_NODE",
    "mem": "SBATCH_MEM_PER_NODE",
}
_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$"
)
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.,:@%+=-]+$")  # names SLURM accepts; nothing a shell or a new line could use
_EXTRA = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:@%+=/-]+)?$")
# What the job's own lines decide (where its log goes, that it is one task per node and is signalled and
# requeued, that the notebook's environment reaches it): not to be undone by an extra line.
_OURS = {
    "--output": "the log is the run folder's slurm-<job>.out",
    "-o": "the log is the run folder's slurm-<job>.out",
    "--error": "the log is the run folder's slurm-<job>.out",
    "-e": "the log is the run folder's slurm-<job>.out",
    "--chdir": "the job runs where the notebook does",
    "-D": "the job runs where the notebook does",
    "--export": "secret keys reach the job in its environment",
    "--nodes": "use slurm.nodes",
    "-N": "use slurm.nodes",
    "--ntasks": "one task per node: the launcher starts the processes (--nproc)",
    "-n": "one task per node: the launcher starts the processes (--nproc)",
    "--ntasks-per-node": "one task per node: the launcher starts the processes (--nproc)",
    "--signal": "use slurm.signal_seconds",
    "--requeue": "use slurm.requeue",
    "--no-requeue": "use slurm.requeue",
    "--open-mode": "the log is appended to across requeues",
    "--array": "a run is one job",
    "-a": "a run is one job",
    "--wrap": "the script is the job",
    "--job-name": "the job is named after the run",
    "-J": "the job is named after the run",
}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_seconds: int = 300  # USR1 this long before the time limit: checkpoint, then requeue
    requeue: bool = True
    port: int | None = None  # the c10d rendezvous port on the first node (default: one of the job's own)
    extra: tuple[str, ...] = field(default_factory=tuple)

    def given(self) -> dict[str, Any]:
        """The keys the cell set (those override sbatch's environment defaults)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.given().items()}


def slurm_options(value: Any, where: str = "slurm") -> SlurmOptions:
    """The ``slurm:`` mapping, checked key by key; one line naming the key on any problem."""
    if value is None or value is True:
        return SlurmOptions()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where} must be a mapping of SLURM options (partition, nodes, gpus_per_node, ...), not {value!r}"
        )
    known = {f.name for f in fields(SlurmOptions)}
    unknown = [str(k) for k in value if k not in known]
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    out: dict[str, Any] = {}
    for key, v in value.items():
        out[key] = _check(key, v, f"key '{where}.{key}'")
    options = SlurmOptions(**out)
    limit = minutes(options.time) if options.time else None
    if limit is not None and limit * 60 <= options.signal_seconds:
        raise ConfigError(
            f"key '{where}.signal_seconds' ({options.signal_seconds} s) is not shorter than key '{where}.time' "
            f"({options.time}): the job would be signalled to checkpoint and requeue as soon as it starts"
        )
    return options


def minutes(time: str) -> float | None:
    """A SLURM time limit in minutes (None: unlimited)."""
    if time in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = time.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, s = (parts + [0, 0])[:3]
        return int(days) * 1440 + h * 60 + m + s / 60
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:  # MM:SS
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60


def _check(key: str, v: Any, where: str) -> Any:
    if key in ("nodes", "gpus_per_node", "cpus_per_task", "signal_seconds", "port"):
        low = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "signal_seconds": 10, "port": 1024}[key]
        high = {"signal_seconds": 65535, "port": 65535}.get(key, 100_000)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ConfigError(f"{where} must be a whole number from {low} to {high}, not {v!r}")
        return v
    if key == "requeue":
        if not isinstance(v, bool):
            raise ConfigError(f"{where} must be true or false, not {v!r}")
        return v
    if key == "extra":
        lines = [v] if isinstance(v, str) else v
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise ConfigError(f"{where} must be a list of sbatch options such as '--constraint=a100', not {v!r}")
        for line in lines:
            text = line.strip().removeprefix("#SBATCH").strip()
            flag = text.split("=", 1)[0]
            if flag in _OURS:
                raise ConfigError(f"{where}: {flag} is set by the job script itself ({_OURS[flag]})")
            if not _EXTRA.match(text):
                raise ConfigError(
                    f"{where}: {line!r} is not one sbatch option such as '--constraint=a100' "
                    "(one option per entry; no spaces, quotes or shell characters)"
                )
        return tuple(line.strip().removeprefix("#SBATCH").strip() for line in lines)
    if key == "time" and not isinstance(v, str):
        raise ConfigError(
            f"{where} must be text in quotes ('90', '30:00', '2:00:00', '1-12:00:00'), not {v!r}: "
            "unquoted, YAML reads 30:00 as the number 1800"
        )
    text = str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where} must be text, not {v!r}")
    text = text.strip()
    if key == "time" and not _TIME.match(text):
        raise ConfigError(
            f"{where} {text!r} is not a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        )
    if key == "mem" and not _MEM.match(text):
        raise ConfigError(f"{where} {text!r} is not a SLURM memory size such as 16G or 16000M")
    if not _WORD.match(text):
        raise ConfigError(f"{where} {text!r} has characters SLURM names do not (spaces, quotes, new lines, ';', '$')")
    return text


def submission_environment(options: SlurmOptions, environ: Mapping[str, str]) -> dict[str, str]:
    """sbatch's environment: the caller's, less the ``SBATCH_*`` defaults the cell overrides (sbatch
    lets its environment override the script's own lines; the cell is the user's latest word)."""
    drop = {ENVIRONMENT[k] for k in options.given() if k in ENVIRONMENT} | _STRUCTURAL_ENV
    # A notebook that itself runs inside an allocation (Open OnDemand) has that job's SLURM_* variables:
    # they are not this job's, and sbatch would take some of them as options.
    return {k: v for k, v in environ.items() if k not in drop and not (k.startswith("SLURM_") and k != "SLURM_CONF")}


# sbatch input variables that would undo the job script's own lines (signal, requeue, export, log).
_STRUCTURAL_ENV = {
    "SBATCH_SIGNAL",
    "SBATCH_REQUEUE",
    "SBATCH_NO_REQUEUE",
    "SBATCH_EXPORT",
    "SBATCH_OPEN_MODE",
    "SBATCH_ARRAY_INX",
    "SBATCH_EXPORT_FILE",
}


def environment_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """What sbatch will take from the environment for a key the cell leaves out (``--dry-run`` shows it)."""
    return {key: environ[name] for key, name in ENVIRONMENT.items() if environ.get(name)}
