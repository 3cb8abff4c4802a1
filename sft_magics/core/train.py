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
SPEC_KEYS = ("model", "dataset", "eval_dataset", "eval_split", "lora")


class ConfigError(ValueError):
    """A bad key or value in a training spec; one line naming the key."""


def sft_config_fields() -> dict[str, Any]:
    """SFTConfig's field names and types (imports trl, so call it lazily)."""
    import dataclasses

    from trl import SFTConfig

    return {f.name: f.type for f in dataclasses.fields(SFTConfig) if f.init}


def lora_config_fields() -> dict[str, Any]:
    import dataclasses

    from peft import LoraConfig

    return {f.name: f.type for f in dataclasses.fields(LoraConfig) if f.init}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


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

    @classmethod
    def from_mapping(cls, name: str, config: Mapping[str, Any], output_dir: str = "runs") -> "TrainSpec":
        """Split a flat mapping (the YAML cell) into our keys and SFTConfig fields, checking names."""
        config = dict(config or {})
        valid_sft = sft_config_fields()
        sft = {}
        for key in list(config):
            if key in SPEC_KEYS:
                continue
            if key not in valid_sft or key == "output_dir":
                raise _unknown_key(key, [*SPEC_KEYS, *valid_sft], "the training config")
            sft[key] = config.pop(key)
        lora = config.get("lora", True)
        if isinstance(lora, Mapping):
            valid_lora = lora_config_fields()
            for key in lora:
                if key not in valid_lora:
                    raise _unknown_key(key, list(valid_lora), "lora")
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
    """Set from anywhere (a button, Ctrl-C handler, another thread); the trainer stops at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


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

        def __init__(self, sink: Sink, stop: StopFlag):
            self.sink, self.stop = sink, stop

        def on_train_begin(self, args, state, control, **kw):
            self.sink(Event("status", {"state": "training", "step": state.global_step, "max_steps": state.max_steps}))

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            kind = "eval" if any(k.startswith("eval_") for k in logs) else "log"
            self.sink(Event(kind, {"step": state.global_step, "epoch": state.epoch, **logs}))
            self._check_stop(control)  # a sink may have asked to stop: do it at this step

        def on_step_end(self, args, state, control, **kw):
            self._check_stop(control)

        def _check_stop(self, control):
            if self.stop.is_set():
                control.should_training_stop = True
                control.should_save = True  # keep a checkpoint of where we stopped

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.sink(Event("checkpoint", {"step": state.global_step, "path": str(path)}))

    return EventCallback


def _jsonl_sink(path: Path) -> Sink:
    path.parent.mkdir(parents=True, exist_ok=True)

    def sink(event: Event) -> None:
        with path.open("a") as f:
            f.write(json.dumps(event.to_json(), default=str) + "\n")

    return sink


def _write_status(run_dir: Path, **status) -> None:
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=2, default=str))
    tmp.replace(run_dir / "status.json")


def _failure_hint(err: BaseException) -> str:
    text = str(err).lower()
    if "out of memory" in text:
        return "lower per_device_train_batch_size, set gradient_checkpointing: true, or shorten max_length"
    return "see the run's log for the full traceback"


def train(spec: TrainSpec, *, sink: Sink | None = None, stop: StopFlag | None = None, namespace: Mapping | None = None) -> TrainResult:
    """Run one SFT training to the end (or until ``stop`` is set) and return its result."""
    from ._quiet import quiet_libraries

    with quiet_libraries():
        return _train(spec, sink=sink, stop=stop or StopFlag(), namespace=namespace)


def _train(spec: TrainSpec, *, sink: Sink | None, stop: StopFlag, namespace: Mapping | None) -> TrainResult:
    import yaml

    from .data import load_data, train_val_split
    from .models import choose_device_dtype, load_model

    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    emit = fan_out(_jsonl_sink(run_dir / "metrics.jsonl"), sink)
    started = time.time()

    # 1. Data first: a bad row should fail before seconds are spent loading a model.
    emit(Event("status", {"state": "loading"}))
    train_data = load_data(spec.dataset, namespace=namespace)
    eval_data = load_data(spec.eval_dataset, namespace=namespace) if spec.eval_dataset is not None else None
    if eval_data is None and spec.eval_split:
        train_data, eval_data = train_val_split(train_data, spec.eval_split, seed=int(spec.sft.get("seed", 42)))

    # 2. Config: our defaults, then the user's keys; device and precision for this hardware.
    sft_args = {**DEFAULT_SFT, **spec.sft}
    device, dtype = choose_device_dtype("cpu" if sft_args.get("use_cpu") else None)
    if device == "cpu":
        sft_args.setdefault("use_cpu", True)
        # TRL turns activation checkpointing on by default; it saves GPU memory but on a CPU it
        # only recomputes activations (measured ~2x slower per step on SmolLM2-135M).
        if "gradient_checkpointing" not in spec.sft and "activation_checkpointing" not in spec.sft:
            sft_args["gradient_checkpointing"] = False
    elif "bf16" not in spec.sft and "fp16" not in spec.sft:
        import torch

        sft_args["bf16" if dtype == torch.bfloat16 else "fp16"] = True
    if eval_data is not None:
        sft_args.setdefault("eval_strategy", "steps")
        sft_args.setdefault("eval_steps", 0.2)  # a fraction: five evaluations over the run
    lora = dict(DEFAULT_LORA) if spec.lora is True else (dict(spec.lora) if spec.lora else None)
    if lora is not None and spec.lora is not True:
        lora = {**DEFAULT_LORA, **lora}
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": spec.model, "dataset": str(spec.dataset), "eval_dataset": None if spec.eval_dataset is None else str(spec.eval_dataset),
             "eval_split": spec.eval_split, "lora": lora if lora else False, **sft_args},
            sort_keys=False,
        )
    )

    # 3. Model: full precision weights for training (the trainer handles mixed precision).
    loaded = load_model(spec.model, device=device, dtype="fp32" if device == "cpu" else None)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()

    from peft import LoraConfig
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback
    from trl import SFTConfig, SFTTrainer

    # Loss masks are ours (see to_trl_rows): assistant-only for conversations, completion-only for
    # prompt/completion. Setting either TRL switch to false trains on every token instead.
    loss_switches = [sft_args.pop("assistant_only_loss", None), sft_args.pop("completion_only_loss", None)]
    train_on_all = False in loss_switches
    args = SFTConfig(output_dir=str(run_dir), **sft_args)
    peft_config = LoraConfig(task_type="CAUSAL_LM", **lora) if lora else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_trl_rows(train_data, tokenizer, train_on_all=train_on_all),
        eval_dataset=to_trl_rows(eval_data, tokenizer, train_on_all=train_on_all) if eval_data is not None else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_callback_class()(emit, stop)],
    )
    # Exactly one progress display: ours. transformers adds its own printer/progress bars.
    for cb in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
        trainer.remove_callback(cb)

    trainable, total = trainer.model.get_nb_trainable_parameters() if lora else (
        sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    emit(Event("started", {
        "name": spec.name, "model": spec.model, "device": device, "dtype": str(dtype).replace("torch.", ""),
        "train_rows": len(train_data), "eval_rows": len(eval_data) if eval_data is not None else 0,
        "trainable_params": int(trainable), "total_params": int(total),
        "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
    }))
    _write_status(run_dir, state="training", started=started, pid=__import__("os").getpid())

    # 4. Fit. Every exit path records a final status; the model is released on failure.
    status, error = "finished", None
    try:
        trainer.train()
        status = "stopped" if stop.is_set() else "finished"
    except KeyboardInterrupt:
        status = "stopped"
        trainer._save_checkpoint(trainer.model, trial=None)
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised to the caller
        status, error = "failed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        _write_status(run_dir, state="failed", error=error, hint=_failure_hint(err), started=started, ended=time.time(),
                      step=trainer.state.global_step)
        emit(Event("failed", {"error": error, "hint": _failure_hint(err), "step": trainer.state.global_step}))
        del trainer, model, loaded
        raise

    final_dir = run_dir / "final"
    emit(Event("status", {"state": "saving"}))
    trainer.save_model(str(final_dir))
    tokenizer.save_pretrained(str(final_dir))
    state = trainer.state
    ended = time.time()
    _write_status(run_dir, state=status, step=state.global_step, max_steps=state.max_steps, started=started, ended=ended)
    emit(Event(status, {"step": state.global_step, "max_steps": state.max_steps, "seconds": round(ended - started, 2)}))
    trained = trainer.model
    trained.eval()
    return TrainResult(
        name=spec.name,
        path=run_dir,
        status=status,
        global_step=state.global_step,
        max_steps=state.max_steps,
        history=list(state.log_history),
        model=trained,
        tokenizer=tokenizer,
        base_model=spec.model,
        is_peft=bool(lora),
        train_seconds=ended - started,
        error=error,
    )

