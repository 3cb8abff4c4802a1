"""Value checks of a training config, run before any model loads: a wrong type names the key and
the type it expects (a secret's value never echoed), a number out of range names the key and the
rule, and YAML's ``1e-3``-as-a-string is read as the number it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_number(key: str, value: Any, expected: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; users keep writing it. For a float field, a
    string that is a number is that number."""
    import typing

    options = typing.get_args(expected) or (expected,)
    if isinstance(value, str) and float in options and str not in options and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _check_value(key: str, value: Any, expected: Any) -> None:
    """A wrong type names the key and the expected type (only for simple scalar fields)."""
    import types
    import typing

    options = (
        typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else (expected,)
    )
    simple = {int, float, bool, str, type(None)}
    if not options or not all(o in simple for o in options):
        return  # lists, enums, dicts: TRL validates those itself
    if value is None and type(None) in options:
        return
    ok = any(
        (o is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (o is int and isinstance(value, int) and not isinstance(value, bool))
        or (o is bool and isinstance(value, bool))
        or (o is str and isinstance(value, str))
        for o in options
    )
    if not ok:
        from .secrets import is_secret_key, redact

        names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
        shown = "<redacted>" if is_secret_key(key) else repr(redact(value))
        raise ConfigError(f"key '{key}' expects {names}, got {shown} ({type(value).__name__})")


# Checked before the model loads (TRL would only fail later, or deep in a traceback).
_AT_LEAST_ONE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "eval_accumulation_steps",
    "dataset_num_proc",
)
_ABOVE_ZERO = ("learning_rate", "num_train_epochs", "logging_steps", "save_steps", "eval_steps")
_AT_LEAST_ZERO = ("warmup_steps", "weight_decay", "max_grad_norm", "save_total_limit")


def _check_ranges(sft: Mapping[str, Any]) -> None:
    def bad(key, rule):
        raise ConfigError(f"key '{key}' must be {rule}, got {sft[key]!r}")

    for key in _AT_LEAST_ONE:
        v = sft.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            bad(key, "a whole number of at least 1")
    for key in _ABOVE_ZERO:
        v = sft.get(key)
        if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)) and v <= 0:
            bad(key, "above 0")
    for key in _AT_LEAST_ZERO:
        v = sft.get(key)
        if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)) and v < 0:
            bad(key, "0 or more")
    v = sft.get("max_steps")
    if isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v < -1):
        bad("max_steps", "a positive number of steps (or -1: train num_train_epochs)")
    v = sft.get("warmup_ratio")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 <= v <= 1:
        bad("warmup_ratio", "a fraction between 0 and 1")
