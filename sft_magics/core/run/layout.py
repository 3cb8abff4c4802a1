"""The names of a run folder's files, in one place: everything in sft_magics reads and writes a run
folder through these names (tests/test_architecture.py holds that no other module spells them)."""

from __future__ import annotations

# eval/ holds %sft_eval's reports (new_eval_folder).
STATUS_FILE, CONFIG_FILE, CELL_FILE, ENVIRONMENT_FILE = "status.json", "config.yaml", "cell.txt", "environment.json"
EVENTS_FILE, ERROR_FILE, LOCK_FILE = "metrics.jsonl", "error.log", "run.lock"
SPEC_FILE, SUPERVISOR_FILE, STOP_FILE, EVAL_FOLDER = "spec.json", "supervisor.json", "STOP", "eval"
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
)
