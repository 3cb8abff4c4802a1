"""The run folder: its one owner (names, claim, lock, status, events, config, failures, checkpoints,
the names of its files), the typed status every reader uses, and which run a name points at. The
face: what other packages and users reach for."""

from .folder import RunFolder, is_run_folder, read_config
from .layout import RUN_FILES
from .lock import RunBusy, RunError, RunLock
from .lookup import list_runs, model_location, run_path, run_record
from .status import read_status

__all__ = [
    "RUN_FILES",
    "RunBusy",
    "RunError",
    "RunFolder",
    "RunLock",
    "is_run_folder",
    "list_runs",
    "model_location",
    "read_config",
    "read_status",
    "run_path",
    "run_record",
]
