"""Supervised fine-tuning runs: spec -> data -> model -> trainer -> fit -> result.

The path reads top to bottom in :func:`train`, nanoGPT style. Everything the user can configure
uses TRL's own names: any ``SFTConfig`` field at the top level of the spec, ``lora`` holds
``peft.LoraConfig`` fields (or ``False`` for a full fine-tune).
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .events import Event, Sink, fan_out
from .models import DEFAULT_MODEL
from .errors import SftError

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
SPEC_KEYS = ("model", "dataset", "eval_dataset", "eval_split", "lora", "load_in_4bit")


def defaults_markdown() -> str:
    """The README's table of our defaults, made from DEFAULT_SFT / DEFAULT_LORA (tests/test_readme.py
    checks the README holds exactly this, so the documented defaults cannot drift from the code)."""
    rows = ["| key | our default |", "|---|---|"]
    rows += [f"| `{k}` | `{v}` |" for k, v in DEFAULT_SFT.items()]
    rows += [f"| `lora.{k}` | `{v}` |" for k, v in DEFAULT_LORA.items()]
    return "\n".join(rows)


class ConfigError(SftError, ValueError):
    """A bad key or value in a training spec; one line naming the key."""


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
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: fall back to the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(LoraConfig) if f.init}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


_NUMBER = __import__("re").compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_number(key: str, value: Any, expected: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; users keep writing it. For a float field, a
    string that is a number is that number."""
    import typing

    options = typing.get_args(expected) or (expected,)
    if isinstance(value, str) and float in options and str not in options and _NUMBER.match(value.strip()):
        return float(value)
    return value


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
    except Exception as err:  # noqa: BLE001 - PEFT's own check, in one line
        raise ConfigError(f"key 'lora': {' '.join(str(err).split())[:300]}") from None


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

    @classmethod
    def from_mapping(cls, name: str, config: Mapping[str, Any], output_dir: str = "runs") -> "TrainSpec":
        """Split a flat mapping (the YAML cell) into our keys and SFTConfig fields, checking names."""
        from .runs import validate_name

        validate_name(name)
        config = dict(config or {})
        valid_sft = sft_config_fields()
        sft = {}
        for key in list(config):
            if key in SPEC_KEYS:
                continue
            if key not in valid_sft or key == "output_dir":
                raise _unknown_key(key, [*SPEC_KEYS, *valid_sft], "the training config")
            sft[key] = _coerce_number(key, config.pop(key), valid_sft[key])
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
        if split is not None and not (isinstance(split, (int, float)) and 0 < split < 1):
            raise ConfigError(f"key 'eval_split' must be a fraction between 0 and 1, got {split!r}")
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
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass
class TrainResult:
    name: str
    path: Path
    status: str  # finished | stopped | failed
    global_step: int
    max_steps: int
    history: list[dict]
    model: Any = None
    tokenizer: Any = None
    base_model: str = DEFAULT_MODEL
    is_peft: bool = True
    train_seconds: float = 0.0
    error: str | None = None

    @property
    def adapter_dir(self) -> Path:
        return self.path / "final"

    def losses(self) -> list[tuple[int, float]]:
        return [(h["step"], h["loss"]) for h in self.history if "loss" in h]

    def __repr__(self) -> str:
        last = self.losses()[-1][1] if self.losses() else float("nan")
        return f"<TrainResult {self.name}: {self.status}, step {self.global_step}/{self.max_steps}, loss {last:.4f}, {self.path}>"


class StopFlag:
    """Set from anywhere (a button, Ctrl-C handler, another thread); the trainer stops at the next
    step. With ``stop_file``, the file's existence also counts: how ``%sft_stop`` reaches a run in
    another process."""

    def __init__(self, stop_file: str | Path | None = None) -> None:
        self._event = threading.Event()
        self.stop_file = Path(stop_file) if stop_file else None

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self._event.set()
        return self._event.is_set()


def rank() -> int:
    """This process's rank under torchrun / accelerate (0 when not distributed)."""
    import os

    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def to_trl_rows(data, tokenizer, *, train_on_all: bool = False):
    """Pre-tokenize for TRL: ``input_ids`` and ``assistant_masks`` from :func:`core.template.tokenize_row`,
    the same function ``%sft_template`` shows. TRL turns ``assistant_masks`` into labels, then
    truncates and drops rows with no trained token, as it does for the rows it tokenizes itself."""
    from .template import choose_mask_method, tokenize_row

    method = choose_mask_method(tokenizer) if data.format == "messages" else None

    def encode(row):
        r = tokenize_row(tokenizer, row, data.format, method=method)
        return {"input_ids": r.input_ids, "assistant_masks": [1] * len(r.tokens) if train_on_all else r.assistant_masks}

    return data.dataset.map(encode, remove_columns=data.dataset.column_names)


def _callback_class():
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        """Translates the Trainer's hooks into our events, and honours the stop flag."""

        def __init__(self, sink: Sink, stop: StopFlag, folder=None):
            self.sink, self.stop, self.folder = sink, stop, folder

        def on_train_begin(self, args, state, control, **kw):
            self.sink(Event("status", {"state": "training", "step": state.global_step, "max_steps": state.max_steps}))

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            kind = "eval" if any(k.startswith("eval_") for k in logs) else "log"
            if kind == "log" and _cuda_ready():
                import torch

                logs["gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            self.sink(Event(kind, {"step": state.global_step, "epoch": state.epoch, **logs}))
            if self.folder:  # status.json follows training: a crashed run shows where it got to
                self.folder.update_status(step=state.global_step)
            self._check_stop(control)  # a sink may have asked to stop: do it at this step

        def on_step_end(self, args, state, control, **kw):
            self._check_stop(control)
            if control.should_evaluate:
                self.sink(Event("status", {"state": "evaluating", "step": state.global_step}))

        def on_evaluate(self, args, state, control, **kw):
            self.sink(Event("status", {"state": "training", "step": state.global_step}))

        def _check_stop(self, control):
            if self.stop.is_set():
                control.should_training_stop = True
                control.should_save = True  # keep a checkpoint of where we stopped

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.folder and path.is_dir():
                self.folder.mark_whole(path)  # the trainer has written it completely: resumable from now on
                self.folder.update_status(step=state.global_step, checkpoint=path.name)
            self.sink(Event("checkpoint", {"step": state.global_step, "path": str(path)}))

    return EventCallback


def _jsonl_sink(path: Path) -> Sink:
    path.parent.mkdir(parents=True, exist_ok=True)

    def sink(event: Event) -> None:
        # One write per line, flushed at once: a reader (the dashboard of another process, a
        # restarted kernel) sees whole lines, and at worst a half-written last one.
        with path.open("a") as f:
            f.write(json.dumps(event.to_json(), default=str) + "\n")

    return sink


class TrainingFailed(SftError, RuntimeError):
    """A run that failed while training: one-line cause and a suggestion; details in error.log."""

    def __init__(self, name: str, cause: str, hint: str):
        super().__init__(f"run '{name}' failed: {cause} — {hint}")
        self.cause, self.hint = cause, hint


def _failure_hint(err: BaseException) -> str:
    text = str(err).lower()
    if getattr(err, "errno", None) == 28 or "no space left" in text or "storagefull" in text:
        return ("the disk is full: free space where output_dir is (or choose another output_dir), then resume "
                "from the last whole checkpoint")
    if "out of memory" in text or isinstance(err, MemoryError):
        return ("out of memory: lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
                "effective batch), set gradient_checkpointing: true, or shorten max_length")
    if __import__("re").search(r"\b(nan|inf)\b", text):
        return "numerical trouble: lower learning_rate, or set max_grad_norm"
    return "the full traceback is in the run folder's error.log"


def _check_value(key: str, value: Any, expected: Any) -> None:
    """A wrong type names the key and the expected type (only for simple scalar fields)."""
    import types
    import typing

    options = typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else (expected,)
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
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length",
                 "eval_accumulation_steps", "dataset_num_proc")
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


def planned_steps(rows: int, sft_args: Mapping[str, Any], world_size: int = 1) -> int:
    """Optimizer steps the run will take (max_steps wins; else epochs x steps per epoch)."""
    import math

    if (sft_args.get("max_steps") or -1) > 0:
        return int(sft_args["max_steps"])
    batch = int(sft_args.get("per_device_train_batch_size", 8)) * world_size
    accum = int(sft_args.get("gradient_accumulation_steps", 1))
    per_epoch = max(1, math.ceil(math.ceil(rows / batch) / accum))
    return int(math.ceil(per_epoch * float(sft_args.get("num_train_epochs", 1))))


@dataclass
class Plan:
    """Everything resolved before training: what --dry-run shows."""

    spec: TrainSpec
    sft_args: dict
    lora: dict | None
    device: str
    dtype: Any
    train_data: Any
    eval_data: Any
    steps: int

    def config(self) -> dict:
        """The resolved config (secrets included, in memory only: RunFolder.write_config leaves them
        out on disk, and --dry-run shows them redacted)."""
        return dict({
            "model": self.spec.model, "dataset": _describe(self.spec.dataset),
            "eval_dataset": None if self.spec.eval_dataset is None else _describe(self.spec.eval_dataset),
            "eval_split": self.spec.eval_split, "lora": self.lora if self.lora else False,
            **({"load_in_4bit": True} if self.spec.load_in_4bit else {}), **self.sft_args,
        })


def _describe(source: Any) -> str:
    return source if isinstance(source, str) else f"<{type(source).__name__}>"


def plan(spec: TrainSpec, *, namespace: Mapping | None = None, world: int = 1) -> Plan:
    """Data (validated first: a bad row fails before any model loads), config and hardware."""
    from .data import load_data, train_val_split
    from .models import choose_device_dtype

    train_data = load_data(spec.dataset, namespace=namespace)
    eval_data = load_data(spec.eval_dataset, namespace=namespace) if spec.eval_dataset is not None else None
    if eval_data is None and spec.eval_split:
        train_data, eval_data = train_val_split(train_data, spec.eval_split, seed=int(spec.sft.get("seed", 42)))

    fields = sft_config_fields()
    for key, value in spec.sft.items():
        _check_value(key, value, fields[key])
    _check_ranges(spec.sft)
    sft_args = {**DEFAULT_SFT, **spec.sft}
    device, dtype = choose_device_dtype("cpu" if sft_args.get("use_cpu") else None)
    if spec.load_in_4bit and device != "cuda":
        raise ConfigError("key 'load_in_4bit' (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no CUDA device")
    if device == "cpu":
        sft_args.setdefault("use_cpu", True)
        # TRL turns activation checkpointing on by default; it saves GPU memory but on a CPU it
        # only recomputes activations (measured ~2x slower per step on SmolLM2-135M).
        if "gradient_checkpointing" not in spec.sft and "activation_checkpointing" not in spec.sft:
            sft_args["gradient_checkpointing"] = False
        # TRL defaults to bf16 autocast even on a CPU; we train in fp32 there unless asked
        # (bf16: true is ~25% faster on CPUs with avx512_bf16, at bf16's precision).
        if "bf16" not in spec.sft:
            sft_args["bf16"] = False
    elif "bf16" not in spec.sft and "fp16" not in spec.sft:
        import torch

        sft_args["bf16" if dtype == torch.bfloat16 else "fp16"] = True
    if eval_data is not None:
        sft_args.setdefault("eval_strategy", "steps")
        sft_args.setdefault("eval_steps", 0.2)  # a fraction: five evaluations over the run
    lora = None if spec.lora is False else {**DEFAULT_LORA, **(spec.lora if isinstance(spec.lora, Mapping) else {})}
    return Plan(spec, sft_args, lora, device, dtype, train_data, eval_data, planned_steps(len(train_data), sft_args, world))


def _load_for_training(p: Plan):
    from .models import load_model

    quant = None
    if p.spec.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("key 'load_in_4bit' needs bitsandbytes: pip install bitsandbytes") from None
        import torch
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    # Full-precision weights on the CPU; on CUDA the hardware's half precision (the trainer's
    # autocast handles mixed precision).
    return load_model(p.spec.model, device=p.device, dtype="fp32" if p.device == "cpu" else None, quantization_config=quant)


def count_parameters(p: Plan) -> tuple[int, int]:
    """Trainable and total parameters of the model the plan would train (loads it once)."""
    loaded = _load_for_training(p)
    model = loaded.model
    if p.lora:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config(p.lora))
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    return trainable, sum(x.numel() for x in model.parameters())


def train(
    spec: TrainSpec,
    *,
    sink: Sink | None = None,
    stop: StopFlag | None = None,
    namespace: Mapping | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_anyway: bool = False,
    claimed: bool = False,
    files: Mapping[str, str] | None = None,
) -> TrainResult:
    """Run one SFT training to the end (or until ``stop`` is set) and return its result.

    A new run claims a new folder (an existing run is refused; ``overwrite=True`` removes it
    first). ``resume=True`` continues the run folder's newest whole checkpoint (same seed, same
    data order, optimizer and scheduler state restored by the trainer) after checking that there
    is something to resume and that it is what was trained (``resume_anyway=True`` accepts a
    missing optimizer state or changed data, and records that). ``claimed=True``: the folder was
    already claimed by :func:`core.worker.launch` for this process. ``files``: extra text files
    for the folder (the cell as typed), written with credentials scrubbed."""
    from ._quiet import quiet_libraries
    from .runs import RunFolder

    with quiet_libraries():
        # 1. Data and config, validated before any folder is touched: a bad key or row leaves nothing behind.
        p = plan(spec, namespace=namespace, world=world_size())
        if rank() != 0:  # only rank 0 owns the run folder; the others train and keep quiet
            return _train(p, None, sink=sink, stop=stop or StopFlag(), resume=resume, resume_anyway=resume_anyway)
        if resume or claimed:
            folder = RunFolder.existing(spec.output_dir, spec.name)
            folder.lock.acquire(wait=30.0 if claimed else 0.0)  # a launcher hands its lock over within seconds
        else:
            folder = RunFolder.create(spec.output_dir, spec.name, overwrite=overwrite)
        try:
            return _train(p, folder, sink=sink, stop=stop or StopFlag(), resume=resume, resume_anyway=resume_anyway,
                          fresh=not (resume or claimed), files=files)
        finally:
            folder.lock.release()


def _resume_point(p: Plan, folder, resume_anyway: bool) -> tuple[Path, list[str], list[str]]:
    """The checkpoint to resume, notes to show, and the checks the user overrode."""
    from .runs import RunFolder, read_json

    run = folder or RunFolder.existing(p.spec.output_dir, p.spec.name)
    status = run.status()
    checkpoint, notes = run.resumable_checkpoint()
    done = int(status.get("step") or 0)
    if status.get("state") == "finished" and (p.steps <= done or checkpoint is None or checkpoint.name != f"checkpoint-{done}"):
        last_saved = checkpoint is not None and checkpoint.name == f"checkpoint-{done}"
        how = (f"To train longer, resume with a larger max_steps (or num_train_epochs) in the cell: "
               f"%%sft_train --resume {p.spec.name} with max_steps: {done * 2 or 10}") if last_saved else (
               "Its last step was not saved as a checkpoint: to train longer, start a new run (another --name), "
               "and set save_steps to reach the last step next time")
        raise ConfigError(f"run '{p.spec.name}' finished at step {done}/{status.get('max_steps', done)}: "
                          f"there is nothing to resume. {how}")
    if checkpoint is None:
        why = f" ({'; '.join(notes)})" if notes else ""
        raise ConfigError(f"run '{p.spec.name}' has no checkpoint to resume from in {run.path}{why}")
    if notes:
        notes.append(f"resuming from the previous whole checkpoint, {checkpoint.name}")
    problems = []
    missing = [f for f in ("optimizer.pt", "scheduler.pt") if not (checkpoint / f).is_file()]
    if missing:
        problems.append(f"{checkpoint.name} has no {' or '.join(missing)}: the optimizer and learning-rate schedule would restart")
    recorded = (read_json(run.path / "environment.json").get("datasets") or {}).get("train") or {}
    if recorded.get("fingerprint") and recorded["fingerprint"] != p.train_data.fingerprint:
        problems.append(f"the training data changed since the run started ({recorded.get('rows')} rows, fingerprint "
                        f"{recorded['fingerprint'][:12]} → {len(p.train_data)} rows, {p.train_data.fingerprint[:12]})")
    if problems and not resume_anyway:
        raise ConfigError(f"not resuming run '{p.spec.name}': {'; '.join(problems)}. "
                          "Pass --resume-anyway (resume_anyway=True) to continue regardless; it is recorded in the run")
    return checkpoint, notes, problems


def _train(p: Plan, folder, *, sink: Sink | None, stop: StopFlag, resume: bool, resume_anyway: bool,
           fresh: bool = False, files: Mapping[str, str] | None = None) -> TrainResult:
    """prepare -> build -> fit -> finish. ``folder`` is None on ranks other than 0."""
    import gc
    import os
    import traceback

    from .runs import environment, now
    from .secrets import scrub_text

    spec = p.spec
    emit = fan_out(folder.event_sink() if folder else None, sink)
    started = now()

    def status(**fields):
        if folder:
            folder.update_status(**fields)

    # A refused resume changes nothing in the run folder.
    checkpoint, notes, overrides = _resume_point(p, folder, resume_anyway) if resume else (None, [], [])
    try:
        if folder:
            if resume:
                folder.set_aside_broken_checkpoints()
            for name, text in (files or {}).items():
                folder.write_text(name, scrub_text(text))
            status(state="loading", started=started, pid=os.getpid(), step=int(folder.status().get("step") or 0) if resume else 0,
                   world_size=world_size(), **({"resume_overrides": overrides} if overrides else {}))
            folder.write_config(p.config())
            folder.write_json("environment.json", {
                **environment(), "device": p.device, "dtype": str(p.dtype).replace("torch.", ""), "world_size": world_size(),
                "datasets": {"train": _data_record(p.train_data), "eval": _data_record(p.eval_data)},
            })
        emit(Event("status", {"state": "loading", "notes": notes} if notes else {"state": "loading"}))

        # 2. Model and trainer.
        trainer, tokenizer = _build_trainer(p, folder, emit, stop)
        trainable = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
        total = sum(x.numel() for x in trainer.model.parameters())
        emit(Event("started", {
            "name": spec.name, "model": spec.model, "device": p.device, "dtype": str(p.dtype).replace("torch.", ""),
            "train_rows": len(p.train_data), "eval_rows": len(p.eval_data) if p.eval_data is not None else 0,
            "trainable_params": int(trainable), "total_params": int(total), "max_steps": p.steps,
            "num_train_epochs": p.sft_args.get("num_train_epochs"),
            "resumed_from": str(checkpoint) if checkpoint else None, "resume_overrides": overrides,
        }))
        status(state="training", max_steps=p.steps)
    except BaseException as err:
        if folder and fresh:
            folder.remove()  # nothing was trained: the error on screen is the whole story
        elif folder:
            folder.record_failure(_one_line(err), "nothing was trained", step=folder.status().get("step"),
                                  traceback_text="".join(traceback.format_exception(err)))
        raise

    # 3. Fit. Every exit path records a final status.
    failure = None
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        state = "stopped" if stop.is_set() else "finished"
    except KeyboardInterrupt:  # Ctrl-C when training runs on the caller's thread
        state = "stopped"
        trainer._save_checkpoint(trainer.model, trial=None)
        if folder:
            folder.mark_whole(Path(folder.path) / f"checkpoint-{trainer.state.global_step}")
    except Exception as err:  # noqa: BLE001 - recorded, then raised as a one-line TrainingFailed
        failure = TrainingFailed(spec.name, _one_line(err), _failure_hint(err))
        step = trainer.state.global_step
        problems = folder.record_failure(failure.cause, failure.hint, step=step,
                                         traceback_text="".join(traceback.format_exception(err))) if folder else []
        if problems:  # a full disk must not hide the cause: say on screen what could not be recorded
            failure = TrainingFailed(spec.name, failure.cause, f"{failure.hint}; also: {'; '.join(problems)}")
        err.__traceback__ = None  # the traceback's frames hold the model: let it go
        del err
    if failure is not None:
        # Release the model's memory: no reference stays in the traceback or the result.
        del trainer
        gc.collect()
        _empty_cuda_cache()
        if sink is not None:
            sink(Event("failed", {"step": step, "error": failure.cause, "hint": failure.hint}))
        raise failure
    return _finish(p, folder, trainer, tokenizer, state, started, emit)


def _one_line(err: BaseException) -> str:
    from .secrets import scrub_text

    return scrub_text(f"{type(err).__name__}: {' '.join(str(err).split())[:240]}")


def _data_record(data) -> dict | None:
    return None if data is None else {"source": data.source, "rows": len(data), "fingerprint": data.fingerprint}


def _build_trainer(p: Plan, folder, emit: Sink, stop: StopFlag):
    loaded = _load_for_training(p)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()

    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback
    from trl import SFTTrainer

    sft_args = dict(p.sft_args)
    # Loss masks are ours (see to_trl_rows): assistant-only for conversations, completion-only for
    # prompt/completion. Setting either TRL switch to false trains on every token instead.
    loss_switches = [sft_args.pop("assistant_only_loss", None), sft_args.pop("completion_only_loss", None)]
    train_on_all = False in loss_switches
    args = _sft_config(str(p.spec.run_dir), sft_args)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_trl_rows(p.train_data, tokenizer, train_on_all=train_on_all),
        eval_dataset=to_trl_rows(p.eval_data, tokenizer, train_on_all=train_on_all) if p.eval_data is not None else None,
        processing_class=tokenizer,
        peft_config=_lora_config(p.lora) if p.lora else None,
        callbacks=[_callback_class()(emit, stop, folder)],
    )
    # Exactly one progress display: ours. transformers adds its own printer/progress bars.
    for cb in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
        trainer.remove_callback(cb)
    return trainer, tokenizer


def _sft_config(output_dir: str, sft_args: dict):
    """SFTConfig whose pickled form (``training_args.bin`` in every checkpoint and in ``final/``)
    holds no secret: the trainer uses the token in memory, the file gets ``<redacted>``."""
    import copy
    import copyreg

    from trl import SFTConfig

    from .secrets import redact

    class _SFTConfig(SFTConfig):
        def __reduce_ex__(self, protocol):
            # Rebuilt as a plain SFTConfig (stdlib reconstructor): loading it needs only trl.
            return copyreg._reconstructor, (SFTConfig, object, None), redact(dict(self.__dict__))

        def __deepcopy__(self, memo):
            new = object.__new__(type(self))
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
            return new

    try:
        return _SFTConfig(output_dir=output_dir, **sft_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid training config: {' '.join(redact(str(err)).split())[:300]}") from None


def _finish(p: Plan, folder, trainer, tokenizer, state: str, started: float, emit: Sink) -> TrainResult:
    from .runs import FINAL_PARTIAL, now

    spec = p.spec
    emit(Event("status", {"state": "saving", "step": trainer.state.global_step}))
    partial = spec.run_dir / FINAL_PARTIAL
    trainer.save_model(str(partial))  # the trainer saves on the main process only
    if folder:
        tokenizer.save_pretrained(str(partial))
        folder.publish_final(partial)  # final/ appears whole or not at all
    ts = trainer.state
    ended = now()
    if folder:
        folder.update_status(state=state, step=ts.global_step, max_steps=ts.max_steps, ended=ended)
    emit(Event(state, {"step": ts.global_step, "max_steps": ts.max_steps, "seconds": round(ended - started, 2)}))
    # Without accelerate's autocast wrapper on forward(): the model behaves as it will once saved.
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    trained.eval()
    return TrainResult(
        name=spec.name,
        path=spec.run_dir,
        status=state,
        global_step=ts.global_step,
        max_steps=ts.max_steps,
        history=list(ts.log_history),
        model=trained,
        tokenizer=tokenizer,
        base_model=spec.model,
        is_peft=bool(p.lora),
        train_seconds=ended - started,
    )


def _cuda_ready() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch and torch.cuda.is_available() and torch.cuda.is_initialized())


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
