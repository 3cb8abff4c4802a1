"""A cell's ``sweep:`` key: which values to try, how to choose them, and how to compare the trials.

    sweep:
      method: grid            # grid (every combination) | random (N of them) | search (Optuna)
      parameters:             # any key of the cell, a dotted key into a mapping (lora.r), a TRL lora_* key
        learning_rate: [1.0e-3, 2.0e-3]
        lora.r: [8, 16]
      trials: 8               # random and search: how many
      metric: json_match      # default: the watched metric (metric_for_best_model), else eval_loss
      direction: maximize     # default: minimize a loss, maximize anything else
      parallel: 1             # trials at once (default: one per GPU, one on a CPU)
      seed: 0
      prune: true             # search: Optuna's MedianPruner (true, or its own keys)

A search parameter may be a range, ``{low: 1.0e-4, high: 1.0e-2, log: true}`` (whole numbers: an
integer range), as Optuna's ``suggest_float`` / ``suggest_int`` take it. Everything here is plain
checking and expansion: the trials themselves are ordinary runs (core/sweep/driver.py starts them)."""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SftError

METHODS = ("grid", "random", "search")
SWEEP_KEYS = ("method", "parameters", "trials", "metric", "direction", "parallel", "seed", "prune")
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps")
MAX_TRIALS = 1000
# Keys a trial cannot take from the sweep: the sweep names the trials and their folders itself.
NOT_SWEPT = ("output_dir", "sweep", "slurm", "run_name", "project")


class SweepError(SftError, ValueError):
    """A bad ``sweep:`` key or value, in one line naming the key (``sweep.parameters.lora.r``)."""


@dataclass(frozen=True)
class Parameter:
    """One swept key: a list of values, or (search and random) a numeric range."""

    key: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.key} ∈ {list(self.values)}"
        return f"{self.key} ∈ [{self.low}, {self.high}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class SweepSpec:
    method: str
    parameters: tuple[Parameter, ...]
    trials: int
    metric: str | None = None  # None: decided from the base config (the watched metric, else eval_loss)
    direction: str | None = None
    parallel: int | None = None  # None: one per GPU, one on a CPU
    seed: int = 0
    prune: dict | None = None  # MedianPruner's keys (search only); None: no pruning
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "parameters": [
                vars(p) | {"values": list(p.values) if p.values is not None else None} for p in self.parameters
            ],
            "trials": self.trials,
            "metric": self.metric,
            "direction": self.direction,
            "parallel": self.parallel,
            "seed": self.seed,
            "prune": self.prune,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SweepSpec:
        params = tuple(
            Parameter(**{**p, "values": tuple(p["values"]) if p.get("values") is not None else None})
            for p in data["parameters"]
        )
        return cls(**{**data, "parameters": params})


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SweepError(f"key 'sweep.{key}' must be a whole number from {low} to {high}, not {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepError(f"key '{where}' must be a finite number, not {value!r}")
    return value


def _parameter(key: Any, value: Any, method: str) -> Parameter:
    where = f"sweep.parameters.{key}"
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SweepError(f"key 'sweep.parameters': {key!r} is not a key of the cell (a name, or a dotted lora.r)")
    if key.split(".")[0] in NOT_SWEPT:
        raise SweepError(f"key '{where}': {key.split('.')[0]} cannot vary by trial (the sweep sets it for each trial)")
    from ..secrets import is_secret_key

    if any(is_secret_key(part) for part in key.split(".")):
        raise SweepError(
            f"key '{where}' names a secret, and a secret cannot be swept (its values would be written in the sweep's files)"
        )
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if not values:
            raise SweepError(f"key '{where}' is an empty list: give at least one value")
        if len(set(map(_same, values))) != len(values):
            raise SweepError(f"key '{where}' lists a value twice: {list(values)}")
        if method == "search" and not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise SweepError(
                f"key '{where}': a search chooses among plain values (numbers, text, true/false), not {values}"
            )
        if method == "search" and len(set(values)) != len(values):  # Optuna finds a choice by ==: 1 is true
            raise SweepError(f"key '{where}': a search needs values that differ as values, not {list(values)}")
        return Parameter(key, values=values)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown or "low" not in value or "high" not in value:
            raise SweepError(f"key '{where}': a range is {{low, high, log}}, got {sorted(value)}")
        if method == "grid":
            raise SweepError(f"key '{where}': a grid needs a list of values, not a range (ranges: random or search)")
        low, high = _number(value["low"], f"{where}.low"), _number(value["high"], f"{where}.high")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise SweepError(f"key '{where}.log' must be true or false, not {log!r}")
        if not low < high:
            raise SweepError(f"key '{where}': low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise SweepError(f"key '{where}': a log range needs low > 0, not {low}")
        integer = isinstance(value["low"], int) and isinstance(value["high"], int)
        return Parameter(key, low=low, high=high, log=log, integer=integer)
    raise SweepError(f"key '{where}' must be a list of values or a range {{low, high}}, not {value!r}")


def _same(v: Any) -> str:
    """What makes two listed values the same choice (1 and 1.0 and true are three, not one)."""
    return f"{type(v).__name__}:{v!r}"


def read_sweep(value: Any) -> SweepSpec:
    """The ``sweep:`` mapping, checked: every problem is one line naming its key. The trials'
    configs are checked later, trial by trial (:func:`core.sweep.driver.check_trials`)."""
    if not isinstance(value, Mapping):
        raise SweepError("key 'sweep' must be a mapping with method and parameters (see %%sft_train?)")
    unknown = [k for k in value if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"key 'sweep.{unknown[0]}' is not a sweep key (one of: {', '.join(SWEEP_KEYS)})")
    method = value.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"key 'sweep.method' must be one of {', '.join(METHODS)}, not {method!r}")
    given = value.get("parameters")
    if not isinstance(given, Mapping) or not given:
        raise SweepError(
            "key 'sweep.parameters' must map each swept key to its values, e.g. learning_rate: [1e-3, 2e-3]"
        )
    params = tuple(_parameter(k, v, method) for k, v in given.items())
    if method == "grid":
        trials = math.prod(len(p.values) for p in params)
        if "trials" in value:
            raise SweepError("key 'sweep.trials': a grid runs every combination; for a sample use method: random")
        if trials > MAX_TRIALS:
            raise SweepError(f"key 'sweep.parameters': the grid has {trials} combinations, over {MAX_TRIALS}")
    else:
        if "trials" not in value:
            raise SweepError(f"key 'sweep.trials' is required for method: {method} (how many trials)")
        trials = _int(value["trials"], "trials", 1, MAX_TRIALS)
    metric = value.get("metric")
    if metric is not None and (not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z0-9_./-]{1,100}", metric)):
        raise SweepError(f"key 'sweep.metric' must be a metric name (eval_loss, json_match, ...), not {metric!r}")
    direction = value.get("direction")
    if direction is not None and direction not in ("minimize", "maximize"):
        raise SweepError(f"key 'sweep.direction' must be minimize or maximize, not {direction!r}")
    parallel = value.get("parallel")
    parallel = None if parallel is None else _int(parallel, "parallel", 1, 64)
    seed = _int(value.get("seed", 0), "seed", 0, 2**31 - 1)
    return SweepSpec(
        method,
        params,
        trials,
        metric,
        direction,
        parallel,
        seed,
        _prune(value.get("prune", method == "search"), method),
    )


def _prune(value: Any, method: str) -> dict | None:
    if value is False or value is None:
        return None
    if method != "search":
        raise SweepError("key 'sweep.prune': pruning stops trials early against the others, with method: search")
    if value is True:
        return {}
    if not isinstance(value, Mapping) or any(k not in PRUNER_KEYS for k in value):
        raise SweepError(f"key 'sweep.prune' must be true, false or MedianPruner's keys ({', '.join(PRUNER_KEYS)})")
    return {k: _int(v, f"prune.{k}", 0, 10**6) for k, v in value.items()}


# -- trials ----------------------------------------------------------------------------------------


def planned_trials(spec: SweepSpec) -> list[dict]:
    """The trials of a grid (every combination, in order) or a random sample (seeded; distinct
    combinations while there are enough). A search proposes its trials as it goes (driver.py)."""
    if spec.method == "grid":
        keys = [p.key for p in spec.parameters]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.values for p in spec.parameters))]
    if spec.method != "random":
        return []
    rng = random.Random(spec.seed)
    if all(p.values is not None for p in spec.parameters):
        grid = planned_trials(SweepSpec("grid", spec.parameters, 0))
        if spec.trials <= len(grid):
            return rng.sample(grid, spec.trials)
    return [{p.key: _draw(p, rng) for p in spec.parameters} for _ in range(spec.trials)]


def _draw(p: Parameter, rng: random.Random) -> Any:
    if p.values is not None:
        return rng.choice(p.values)
    if p.integer:
        return rng.randint(int(p.low), int(p.high))
    if p.log:
        return float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
    return rng.uniform(p.low, p.high)


def corner_trials(spec: SweepSpec) -> list[dict]:
    """For a search: the values it may propose at their extremes (every listed value, each range's
    ends), the others at their first: what is checked before anything starts."""
    first = {p.key: p.values[0] if p.values is not None else p.low for p in spec.parameters}
    out = [first]
    for p in spec.parameters:
        for v in p.values if p.values is not None else (p.low, p.high):
            out.append({**first, p.key: int(v) if p.integer else v})
    unique = {repr(sorted(t.items())): t for t in out}
    return list(unique.values())


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    """The trial's config: the cell's, with each swept key set (a dotted key inside its mapping;
    ``lora.r`` into ``lora:``, created when the cell has none)."""
    config = copy.deepcopy(dict(base))
    config.pop("sweep", None)
    for key, value in params.items():
        *path, leaf = key.split(".")
        node = config
        for i, part in enumerate(path):
            child = node.get(part)
            if child is None or child is True:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SweepError(
                    f"key 'sweep.parameters.{key}': {'.'.join(path[: i + 1])} in the cell is not a mapping"
                )
            node = child
        node[leaf] = value
    return config


def trial_name(sweep: str, index: int, params: Mapping[str, Any]) -> str:
    """``SWEEP.03-learning_rate_0.002-r_8``: the sweep, the trial's number, then its values (a run
    name: letters, digits, ``._-``, at most 100 characters)."""
    parts = []
    for key, value in params.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.')[-1]}_{text}")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_")
    head = f"{sweep}.{index:02d}"  # whole: the index keeps names apart when the values are cut short
    room = 100 - len(head) - 1
    return head + (f"-{tail[:room].rstrip('._-')}" if tail and room > 0 else "")
