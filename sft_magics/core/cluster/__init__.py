"""SLURM, where most labs keep their GPUs: the cell's ``slurm:`` options, the batch script, and
SLURM's own commands (``sbatch``, ``scontrol``, ``scancel``). It knows nothing of runs or training:
``core/train/slurm.py`` submits a run's job through it, ``core/run`` asks it whether that job lives."""

from .options import SlurmOptions, environment_defaults, slurm_options, submission_environment
from .scheduler import LIVE_JOB_STATES, JobInfo, SlurmError, cancel, job_info, requeue, submit
from .script import batch_script, shell_word

__all__ = [
    "LIVE_JOB_STATES",
    "JobInfo",
    "SlurmError",
    "SlurmOptions",
    "batch_script",
    "cancel",
    "environment_defaults",
    "job_info",
    "requeue",
    "shell_word",
    "slurm_options",
    "submission_environment",
    "submit",
]
