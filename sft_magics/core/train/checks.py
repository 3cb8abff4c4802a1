"""Value checks of a training config, run before any model loads: a wrong type names the key and
the type it expects (a secret's value never echoed), a number out of range names the key and the
rule, and YAML's ``1e-3``-as-a-string is read as the number it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

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
        from ..secrets import is_secret_key, redact

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


# -- the cell's own keys and the dataset values: types and ranges, before anything loads ---------------


def _shown(key: str, value: Any) -> str:
    from ..secrets import is_secret_key, redact

    text = "<redacted>" if is_secret_key(key.split(".")[-1]) else repr(redact(value))
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def refuse(key: str, value: Any, accepts: str) -> ConfigError:
    """The one message of a value of the wrong type or range: the key, the value, what it accepts."""
    return ConfigError(f"key '{key}' must be {accepts}, got {_shown(key, value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bool(key: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):  # "false" is a string, and bool("false") is True
        raise refuse(key, value, "true or false")


def check_text(key: str, value: Any, what: str = "text") -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise refuse(key, value, what)


def check_mapping(key: str, value: Any, what: str = "a mapping of keys to values") -> None:
    if value is not None and not isinstance(value, Mapping):
        raise refuse(key, value, what)


def check_seed(key: str, value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 0):
        raise refuse(key, value, "a whole number ≥ 0 (a random seed)")


def check_split_size(key: str, value: Any) -> Any:
    """A held-out part: a fraction in (0, 1) of the rows, or a whole number of rows (``500.0`` and the
    string ``"0.05"`` read as the numbers they are). Returns the value as a number (None: none given)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value >= 1 and value.is_integer():
        value = int(value)
    if value is None or (_is_int(value) and value >= 1) or (isinstance(value, float) and 0 < value < 1):
        return value
    raise refuse(key, value, "a fraction between 0 and 1 (exclusive) or a whole number of rows ≥ 1")


# The cell's keys that are not SFTConfig's: how each is checked (watch keys: core/train/watch.py; lora: config.py).
SPEC_CHECKS = {
    "model": lambda k, v: check_text(k, v, "a model id, folder or alias"),
    "load_in_4bit": check_bool,
    "load_in_8bit": check_bool,
    "trust_remote_code": check_bool,
    "quantization": lambda k, v: check_mapping(k, v, "a mapping of bitsandbytes options"),
    "model_kwargs": lambda k, v: check_mapping(k, v, "a mapping of from_pretrained options"),
    "chat_template": lambda k, v: check_text(
        k, v, "a name (chatml, zephyr), a Jinja string, a .jinja file or a model to copy it from"
    ),
    "eval_split": check_split_size,
}


def check_spec_keys(config: Mapping[str, Any]) -> None:
    for key, check in SPEC_CHECKS.items():
        if key in config:
            check(key, config[key])
    kwargs = config.get("model_kwargs")
    if isinstance(kwargs, Mapping):  # a recipe's trust_remote_code lands here
        check_bool("trust_remote_code", kwargs.get("trust_remote_code"))


def check_sft_values(sft: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
    """SFTConfig values: each against the type TRL's dataclass declares, then the ranges."""
    for key, value in sft.items():
        _check_value(key, value, fields[key])
    _check_ranges(sft)
    check_seed("seed", sft.get("seed"))
    check_seed("data_seed", sft.get("data_seed"))
