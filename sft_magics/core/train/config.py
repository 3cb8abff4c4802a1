"""The training config: a ``%%sft_train`` cell (or keyword arguments) becomes a :class:`TrainSpec`,
checked key by key, then a :class:`Plan` — data loaded and validated, every value range-checked,
device and precision chosen, steps counted — before any model loads or any run folder is made.
The plan is what ``--dry-run`` shows and what :func:`core.train.trainer.train` trains.

Every key uses TRL's own names: any ``SFTConfig`` field at the top level, ``lora`` holds
``peft.LoraConfig`` fields (or ``False`` for a full fine-tune).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, one_line
from ..models import DEFAULT_MODEL
from .checks import _coerce_number, check_sft_values, check_spec_keys

DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
# Our defaults for SFTConfig fields (TRL's own defaults apply to everything else).
DEFAULT_SFT = {
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,  # a fraction (< 1) of the total steps
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "max_length": 1024,
    "seed": 42,
    "report_to": "none",
    "disable_tqdm": True,
}
SPEC_KEYS = (
    "model",
    "dataset",
    "eval_dataset",
    "eval_split",
    "lora",
    "load_in_4bit",
    "load_in_8bit",
    "quantization",
    "model_kwargs",
    "chat_template",
    "trust_remote_code",
    "slurm",
)


def defaults_markdown() -> str:
    """The README's table of our defaults, made from DEFAULT_SFT / DEFAULT_LORA (tests/test_readme.py
    checks the README holds exactly this, so the documented defaults cannot drift from the code)."""
    rows = ["| key | our default |", "|---|---|"]
    rows += [f"| `{k}` | `{v}` |" for k, v in DEFAULT_SFT.items()]
    rows += [f"| `lora.{k}` | `{v}` |" for k, v in DEFAULT_LORA.items()]
    return "\n".join(rows)


def sft_config_fields() -> dict[str, Any]:
    """SFTConfig's field names and types (imports trl, so call it lazily)."""
    import dataclasses

    from trl import SFTConfig

    return {f.name: f.type for f in dataclasses.fields(SFTConfig) if f.init}


def lora_config_fields() -> dict[str, Any]:
    import dataclasses
    import typing

    from peft import LoraConfig

    try:
        hints = typing.get_type_hints(LoraConfig)  # PEFT writes its annotations as strings
    except Exception:
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(LoraConfig) if f.init}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


def _check_lora(lora: Mapping[str, Any]) -> None:
    """The LoraConfig values PEFT would only reject once the model is loaded (or with a traceback)."""
    r = lora.get("r", DEFAULT_LORA["r"])
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"key 'lora.r' must be a whole number of at least 1 (the adapter rank), got {r!r}")
    alpha = lora.get("lora_alpha", DEFAULT_LORA["lora_alpha"])
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"key 'lora.lora_alpha' must be a number above 0, got {alpha!r}")
    dropout = lora.get("lora_dropout", DEFAULT_LORA["lora_dropout"])
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"key 'lora.lora_dropout' must be a fraction in [0, 1), got {dropout!r}")
    try:
        _lora_config(lora)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"key 'lora': {one_line(err, 300)}") from None


def _lora_config(lora: Mapping[str, Any]):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **{**DEFAULT_LORA, **lora})


@dataclass(frozen=True)
class TrainSpec:
    """A training run as the user asked for it (the YAML cell, or keyword arguments)."""

    name: str
    model: str = DEFAULT_MODEL
    dataset: Any = None
    eval_dataset: Any = None
    eval_split: float | None = None
    lora: Mapping[str, Any] | bool = True
    sft: Mapping[str, Any] = field(default_factory=dict)  # SFTConfig fields, TRL names
    output_dir: str = "runs"
    load_in_4bit: bool = False  # QLoRA (CUDA + bitsandbytes)
    load_in_8bit: bool = False
    quantization: Mapping[str, Any] = field(default_factory=dict)  # bnb_* options
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # dtype, attn_implementation, trust_remote_code
    chat_template: Any = None  # the template to train with (core/template/chat_templates.py)
    watch: Mapping[str, Any] = field(default_factory=dict)  # eval_generate, early stopping (core/train/watch.py)
    slurm: Mapping[str, Any] = field(default_factory=dict)  # --launcher slurm's options (core/cluster/options.py)
    notes: tuple[str, ...] = ()  # how each TRL recipe key was read

    def __post_init__(self):  # "~/runs" means the home folder's runs, everywhere a path is made
        object.__setattr__(self, "output_dir", str(Path(self.output_dir).expanduser()))

    @classmethod
    def from_mapping(cls, name: str | None, config: Mapping[str, Any], output_dir: str = "runs") -> TrainSpec:
        """Split a mapping (the YAML cell, or a TRL recipe) into our keys and SFTConfig fields,
        checking names. TRL's CLI keys are read with TRL's meaning (core/train/recipe.py). ``output_dir``
        in the config is TRL's: the run's own folder (its last part is the run's name)."""
        import time

        from ..cluster import slurm_options
        from ..data.spec import check_dataset_value
        from ..run.folder import validate_name
        from .recipe import read_recipe
        from .watch import WATCH_KEYS
        from .watch_plan import check_watch_keys

        config, notes = read_recipe(config or {})
        if config.get("output_dir") is not None:
            folder = Path(str(config.pop("output_dir"))).expanduser()
            if name is not None and name != folder.name:
                raise ConfigError(f"--name {name} and output_dir {folder} name two different run folders: give one")
            name, output_dir = folder.name, str(folder.parent)
            notes.append(f"output_dir → the run folder {folder} (as in TRL): runs root {output_dir}, name {name}")
        name = validate_name(time.strftime("run-%Y%m%d-%H%M%S") if name is None else name)
        # Every value checked for its type and range before anything loads (one line each).
        check_spec_keys(config)
        for key in ("dataset", "eval_dataset"):
            check_dataset_value(config.get(key), key)
        valid_sft = sft_config_fields()
        sft = {}
        for key in list(config):
            if key in SPEC_KEYS or key in WATCH_KEYS:
                continue
            if key not in valid_sft:
                raise _unknown_key(key, [*SPEC_KEYS, *WATCH_KEYS, *valid_sft], "the training config")
            sft[key] = _coerce_number(key, config.pop(key), valid_sft[key])
        check_sft_values(sft, valid_sft)
        lora = config.get("lora", True)
        if isinstance(lora, Mapping):
            valid_lora = lora_config_fields()
            lora = dict(lora)
            for key in lora:
                if key not in valid_lora:
                    raise _unknown_key(key, list(valid_lora), "lora")
                lora[key] = _coerce_number(f"lora.{key}", lora[key], valid_lora[key])
            _check_lora(lora)
        elif not isinstance(lora, bool):
            raise ConfigError(f"key 'lora' must be a mapping of LoraConfig fields or false, got {type(lora).__name__}")
        if config.get("dataset") is None:
            raise ConfigError("key 'dataset' is required (a file, folder, Hub name or notebook variable)")
        split = config.get("eval_split")
        model_kwargs = dict(config.get("model_kwargs") or {})
        if "trust_remote_code" in config:
            model_kwargs["trust_remote_code"] = bool(config["trust_remote_code"])
        return cls(
            name=name,
            model=str(config.get("model") or DEFAULT_MODEL),
            dataset=config.get("dataset"),
            eval_dataset=config.get("eval_dataset"),
            eval_split=split,
            lora=lora,
            sft=sft,
            output_dir=output_dir,
            load_in_4bit=bool(config.get("load_in_4bit", False)),
            load_in_8bit=bool(config.get("load_in_8bit", False)),
            quantization=dict(config.get("quantization") or {}),
            model_kwargs=model_kwargs,
            chat_template=config.get("chat_template"),
            watch=check_watch_keys(config),
            slurm=slurm_options(config.get("slurm")).as_dict() if "slurm" in config else {},
            notes=tuple(notes),
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def eval_every(args, steps: int) -> int | None:
    """Evaluate every N steps (a fraction below 1 is of the run's steps, as the Trainer reads it)."""
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "steps" or not args.eval_steps:
        return None
    import math

    every = args.eval_steps
    return max(1, math.ceil(steps * every)) if every < 1 else int(every)
