"""The names of a run folder's files, in one place: everything in sft_magics reads and writes a run
folder through these names (tests/test_architecture.py holds that no other module spells them)."""

from __future__ import annotations

# eval/ holds %sft_eval's reports (new_eval_folder).
STATUS_FILE, CONFIG_FILE, CELL_FILE, ENVIRONMENT_FILE = "status.json", "config.yaml", "cell.txt", "environment.json"
EVENTS_FILE, ERROR_FILE, LOCK_FILE = "metrics.jsonl", "error.log", "run.lock"
SPEC_FILE, SUPERVISOR_FILE, STOP_FILE, EVAL_FOLDER = "spec.json", "supervisor.json", "STOP", "eval"
# A run submitted to SLURM: its job (id, submission), its batch script, SLURM's log of each start,
# and the request to checkpoint and leave the rest to the job (a time limit, a preemption).
JOB_FILE, JOB_SCRIPT_FILE, JOB_LOG_PATTERN, INTERRUPT_FILE = "job.json", "job.sbatch", "slurm-%j.out", "INTERRUPT"
RUN_FILES = (
    STATUS_FILE,
    CONFIG_FILE,
    CELL_FILE,
    ENVIRONMENT_FILE,
    EVENTS_FILE,
    ERROR_FILE,
    LOCK_FILE,
    SPEC_FILE,
    SUPERVISOR_FILE,
    STOP_FILE,
    JOB_FILE,
    JOB_SCRIPT_FILE,
    INTERRUPT_FILE,
)
