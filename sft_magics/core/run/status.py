"""A run's status.json, read by everyone through one function: the fields of the right type, and what is wrong with the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import read_json
from .layout import STATUS_FILE


def is_number(value: Any) -> bool:
    """An int or float (not a bool; NaN and infinity are numbers: a loss can diverge): what a number
    field of a run file must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# status.json fields a record reads, and what each must be (a run folder someone edited, or a damaged disk).
_STATUS_TYPES = {
    "state": (str, "a state name"),
    "step": (int, "a step number"),
    "max_steps": (int, "a step number"),
    "started": (float, "a time"),
    "ended": (float, "a time"),
    "world_size": (int, "a process count"),
    "error": (str, "text"),
    "hint": (str, "text"),
    "early_stop": (str, "text"),
    "best": (dict, "a record of the best checkpoint"),
}


def read_status(run_dir: Path) -> tuple[dict, list[str]]:
    """A run's status.json, every reader's way in: the fields of the right type, and one line for
    each that is not (a folder someone edited, or a damaged disk). A file that is not a JSON object
    gives no fields and says so."""
    status = read_json(Path(run_dir) / STATUS_FILE)
    problems = (
        []
        if status or not (Path(run_dir) / STATUS_FILE).is_file()
        else ["status.json cannot be read (not a JSON object)"]
    )
    good = {}
    for key, value in status.items():
        kind, what = _STATUS_TYPES.get(key, (None, ""))
        if kind is None or value is None:
            good[key] = value
        elif (kind in (str, dict) and isinstance(value, kind)) or (
            kind in (int, float)
            and is_number(value)
            and (kind is float or (value == value and float(value).is_integer()))
        ):
            good[key] = int(value) if kind is int else value
        else:
            problems.append(f"status.json: '{key}' is {value!r:.40}, not {what}")
    return good, problems
