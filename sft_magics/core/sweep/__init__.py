"""Sweeps: many runs, one question. A cell's ``sweep:`` key (the spec), the trials as ordinary runs
started by a detached driver from a queue on disk (grid, random, or Optuna's search with pruning),
and the record every view and ``SWEEP:best`` read. The face: what other packages and users reach for."""

from .driver import drive, restart_if_needed, stop_sweep, wait_sweep
from .folder import SWEEP_ENDS, SweepFolder, is_sweep_folder
from .record import best_trial, list_sweeps, sweep_frame, sweep_record
from .spec import SweepError, SweepSpec, read_sweep
from .start import CheckedSweep, SweepHandle, check_sweep, start_sweep

__all__ = [
    "SWEEP_ENDS",
    "CheckedSweep",
    "best_trial",
    "check_sweep",
    "list_sweeps",
    "SweepError",
    "SweepFolder",
    "SweepHandle",
    "SweepSpec",
    "drive",
    "is_sweep_folder",
    "read_sweep",
    "restart_if_needed",
    "start_sweep",
    "stop_sweep",
    "sweep_frame",
    "sweep_record",
    "wait_sweep",
]
