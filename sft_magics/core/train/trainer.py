"""Supervised fine-tuning runs: plan -> run folder -> model and trainer -> fit -> finish.

The path reads top to bottom in :func:`train` and :func:`_train`, nanoGPT style: the plan (data,
config, device; core/train/config.py) first, then the run folder (core/run/folder.py, its one owner), the model
and TRL's ``SFTTrainer``, the fit, and the final model. Every exit path leaves a final status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.types import same_rows
from ..errors import ConfigError, SftError, one_line
from ..events import Event, Sink, fan_out
from ..models import DEFAULT_MODEL
from .callbacks import StopFlag, _callback_class
from .config import TrainSpec, _lora_config, eval_every
from .model import prepare_model
from .plan import Plan, plan, sft_config


@dataclass
class TrainResult:
    name: str
    path: Path
    status: str  # finished | stopped | failed | interrupted (a SLURM job's, to be resumed)
    global_step: int
    max_steps: int
    history: list[dict]
    model: Any = None
    tokenizer: Any = None
    base_model: str = DEFAULT_MODEL
    is_peft: bool = True
    train_seconds: float = 0.0
    error: str | None = None
    best: dict | None = None  # the best checkpoint by metric_for_best_model (core/train/watch.py)
    early_stop: str | None = None  # why EarlyStoppingCallback ended the run, when it did

    def losses(self) -> list[tuple[int, float]]:
        return [(h["step"], h["loss"]) for h in self.history if "loss" in h]

    def __repr__(self) -> str:
        last = self.losses()[-1][1] if self.losses() else float("nan")
        return f"<TrainResult {self.name}: {self.status}, step {self.global_step}/{self.max_steps}, loss {last:.4f}, {self.path}>"


def rank() -> int:
    """This process's rank under torchrun / accelerate (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class TrainingFailed(SftError, RuntimeError):
    """A run that failed while training: one-line cause and a suggestion; details in error.log."""

    def __init__(self, name: str, cause: str, hint: str):
        super().__init__(f"run '{name}' failed: {cause} — {hint}")
        self.cause, self.hint = cause, hint


def _failure_hint(err: BaseException) -> str:
    text = str(err).lower()
    if getattr(err, "errno", None) == 28 or "no space left" in text or "storagefull" in text:
        return (
            "the disk is full: free space where output_dir is (or choose another output_dir), then resume "
            "from the last whole checkpoint"
        )
    if "out of memory" in text or isinstance(err, MemoryError):
        return (
            "out of memory: lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
            "effective batch), set gradient_checkpointing: true, or shorten max_length"
        )
    if __import__("re").search(r"\b(nan|inf)\b", text):
        return "numerical trouble: lower learning_rate, or set max_grad_norm"
    return "the full traceback is in the run folder's error.log"


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
    already claimed by :func:`core.train.worker.launch` for this process. ``files``: extra text files
    for the folder (the cell as typed), written with credentials scrubbed."""

    from .._quiet import quiet_libraries
    from ..run.folder import RunFolder
    from ..run.lock import RunBusy

    with quiet_libraries():
        # 1. Data and config, validated before any folder is touched: a bad key or row leaves nothing behind.
        p = plan(spec, namespace=namespace, world=world_size())
        if rank() != 0:  # only rank 0 owns the run folder; the others train and keep quiet
            return _train(p, None, sink=sink, stop=stop or StopFlag(), resume=resume, resume_anyway=resume_anyway)
        if resume or claimed:
            folder = RunFolder.existing(spec.output_dir, spec.name)
            live = folder.live_pid()
            if not claimed and live and live != os.getpid():  # e.g. a background run still starting
                raise RunBusy(f"run '{spec.name}' is in use by process {live}: wait for it or stop it first")
            if not claimed:
                folder.refuse_live_job()  # its SLURM job is alive: its processes are elsewhere
            folder.lock.acquire(wait=30.0 if claimed else 0.0)  # a launcher hands its lock over within seconds
        else:
            folder = RunFolder.create(spec.output_dir, spec.name, overwrite=overwrite)
        try:
            return _train(
                p,
                folder,
                sink=sink,
                stop=stop or StopFlag(),
                resume=resume,
                resume_anyway=resume_anyway,
                fresh=not (resume or claimed),
                files=files,
            )
        finally:
            folder.lock.release()


def _resume_point(p: Plan, folder, resume_anyway: bool) -> tuple[Path, list[str], list[str]]:
    """The checkpoint to resume, notes to show, and the checks the user overrode."""
    from ..files import read_json
    from ..run.folder import ENVIRONMENT_FILE, RunFolder

    run = folder or RunFolder.existing(p.spec.output_dir, p.spec.name)
    status = run.status()
    checkpoint, notes = run.resumable_checkpoint()
    done = int(status.get("step") or 0)
    if status.get("state") == "finished" and (
        p.steps <= done or checkpoint is None or checkpoint.name != f"checkpoint-{done}"
    ):
        last_saved = checkpoint is not None and checkpoint.name == f"checkpoint-{done}"
        how = (
            (
                f"To train longer, resume with a larger max_steps (or num_train_epochs) in the cell: "
                f"%%sft_train --resume {p.spec.name} with max_steps: {done * 2 or 10}"
            )
            if last_saved
            else (
                "Its last step was not saved as a checkpoint: to train longer, start a new run (another --name), "
                "and set save_steps to reach the last step next time"
            )
        )
        raise ConfigError(
            f"run '{p.spec.name}' finished at step {done}/{status.get('max_steps', done)}: "
            f"there is nothing to resume. {how}"
        )
    if checkpoint is None:
        why = f" ({'; '.join(notes)})" if notes else ""
        raise ConfigError(f"run '{p.spec.name}' has no checkpoint to resume from in {run.path}{why}")
    if notes:
        notes.append(f"resuming from the previous whole checkpoint, {checkpoint.name}")
    problems = []
    missing = [f for f in ("optimizer.pt", "scheduler.pt") if not (checkpoint / f).is_file()]
    if missing:
        problems.append(
            f"{checkpoint.name} has no {' or '.join(missing)}: the optimizer and learning-rate schedule would restart"
        )
    datasets = read_json(run.path / ENVIRONMENT_FILE).get("datasets")
    recorded = datasets.get("train") if isinstance(datasets, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    if isinstance(recorded.get("fingerprint"), str) and not same_rows(p.train_data, recorded["fingerprint"]):
        problems.append(
            f"the training data changed since the run started ({recorded.get('rows')} rows, fingerprint "
            f"{recorded['fingerprint'][:12]} → {len(p.train_data)} rows, {p.train_data.fingerprint[:12]})"
        )
    if problems and not resume_anyway:
        raise ConfigError(
            f"not resuming run '{p.spec.name}': {'; '.join(problems)}. "
            "Pass --resume-anyway (resume_anyway=True) to continue regardless; it is recorded in the run"
        )
    return checkpoint, notes, problems


def _train(
    p: Plan,
    folder,
    *,
    sink: Sink | None,
    stop: StopFlag,
    resume: bool,
    resume_anyway: bool,
    fresh: bool = False,
    files: Mapping[str, str] | None = None,
) -> TrainResult:
    """prepare -> build -> fit -> finish. ``folder`` is None on ranks other than 0."""
    import gc
    import traceback

    from ..run.folder import now

    spec = p.spec
    emit = fan_out(folder.event_sink() if folder else None, sink)
    started = now()

    # A refused resume changes nothing in the run folder.
    checkpoint, notes, overrides = _resume_point(p, folder, resume_anyway) if resume else (None, [], [])
    try:
        if folder:
            _open_folder(p, folder, files=files, resume=resume, overrides=overrides, started=started)
        emit(Event("status", {"state": "loading", "notes": notes} if notes else {"state": "loading"}))

        # 2. Model and trainer.
        trainer, tokenizer = _build_trainer(p, folder, emit, stop)
        emit(_started_event(p, trainer, checkpoint, overrides))
        if folder:
            folder.update_status(state="training", max_steps=p.steps)
    except BaseException as err:
        if folder and fresh:
            folder.remove()  # nothing was trained: the error on screen is the whole story
        elif folder:
            folder.record_failure(
                _one_line(err),
                "nothing was trained",
                step=folder.status().get("step"),
                traceback_text="".join(traceback.format_exception(err)),
            )
        if isinstance(err, (SftError, KeyboardInterrupt)):
            raise
        raise TrainingFailed(spec.name, _one_line(err), _failure_hint(err)) from None

    # 3. Fit, then the final model. Every exit path records a final status, in one line on screen.
    try:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            state = stop.outcome(done=trainer.state.global_step >= trainer.state.max_steps)
            interrupted = False
        except KeyboardInterrupt:  # Ctrl-C when training runs on the caller's thread
            state, interrupted = "stopped", True
            trainer._save_checkpoint(trainer.model, trial=None)
            if folder:
                folder.mark_whole(Path(folder.path) / f"checkpoint-{trainer.state.global_step}")
        return _finish(p, folder, trainer, tokenizer, state, started, emit, interrupted=interrupted)
    except BaseException as err:  # recorded, then raised as a one-line TrainingFailed
        failure = TrainingFailed(spec.name, _one_line(err), _failure_hint(err))
        step = trainer.state.global_step
        problems = (
            folder.record_failure(
                failure.cause, failure.hint, step=step, traceback_text="".join(traceback.format_exception(err))
            )
            if folder
            else []
        )
        if problems:  # a full disk must not hide the cause: say on screen what could not be recorded
            failure = TrainingFailed(spec.name, failure.cause, f"{failure.hint}; also: {'; '.join(problems)}")
        err.__traceback__ = None  # the traceback's frames hold the model: let it go
        del err
    # Release the model's memory: no reference stays in the traceback or the result.
    del trainer
    gc.collect()
    _empty_cuda_cache()
    if sink is not None:
        sink(Event("failed", {"step": step, "error": failure.cause, "hint": failure.hint}))
    raise failure


def _open_folder(p: Plan, folder, *, files, resume: bool, overrides: list[str], started: float) -> None:
    """What a run folder holds before training: the cell (scrubbed), the status (loading), the config
    (no secrets), the environment (versions, device, precision, the data's fingerprints)."""

    from ..run.folder import ENVIRONMENT_FILE, environment
    from ..secrets import scrub_text

    if resume:
        folder.set_aside_broken_checkpoints()
    for name, text in (files or {}).items():
        folder.write_text(name, scrub_text(text))
    folder.update_status(
        state="loading",
        started=started,
        pid=os.getpid(),
        step=int(folder.status().get("step") or 0) if resume else 0,
        world_size=world_size(),
        **({"resume_overrides": overrides} if overrides else {}),
    )
    folder.write_config(p.config())
    folder.write_json(
        ENVIRONMENT_FILE,
        {
            **environment(),
            "device": p.device,
            "dtype": str(p.dtype).replace("torch.", ""),
            "precision": p.precision,
            "world_size": world_size(),
            "datasets": {"train": _data_record(p.train_data), "eval": _data_record(p.eval_data)},
        },
    )


def _started_event(p: Plan, trainer, checkpoint, overrides: list[str]) -> Event:
    """The ``started`` event: the run, the model and its parameters, the data, the steps, the watch."""
    trainable = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
    total = sum(x.numel() for x in trainer.model.parameters())
    return Event(
        "started",
        {
            "name": p.spec.name,
            "model": p.spec.model,
            "device": p.device,
            "dtype": str(p.dtype).replace("torch.", ""),
            "train_rows": len(p.train_data),
            "eval_rows": len(p.eval_data) if p.eval_data is not None else 0,
            "trainable_params": int(trainable),
            "total_params": int(total),
            "max_steps": p.steps,
            "num_train_epochs": p.sft_args.get("num_train_epochs"),
            "learning_rate": trainer.args.learning_rate,
            "eval_steps": eval_every(trainer.args, p.steps),
            "resumed_from": str(checkpoint) if checkpoint else None,
            "resume_overrides": overrides,
            **({"watch": p.answers.describe()} if p.answers else {}),
        },
    )


def _one_line(err: BaseException) -> str:
    from ..secrets import scrub_text

    return scrub_text(f"{one_line(err, 240, named=True)}")


def _data_record(data) -> dict | None:
    return None if data is None else {"source": data.source, "rows": len(data), "fingerprint": data.fingerprint}


def _build_trainer(p: Plan, folder, emit: Sink, stop: StopFlag):
    model, tokenizer, lora = prepare_model(p)
    model.train()

    from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from ..template.prepared import check_something_trained, to_trl_rows
    from .watch import trainer_class

    sft_args = dict(p.sft_args)
    # Loss masks are ours (see to_trl_rows): assistant-only for conversations, completion-only for
    # prompt/completion. Setting either TRL switch to false trains on every token instead.
    loss_switches = [sft_args.pop("assistant_only_loss", None), sft_args.pop("completion_only_loss", None)]
    train_on_all = False in loss_switches
    args = sft_config(str(p.spec.run_dir), sft_args)
    callbacks = [_callback_class()(emit, stop, folder)]
    if p.watch and p.watch.patience:  # transformers' own, fed with the generated metrics
        callbacks.append(EarlyStoppingCallback(p.watch.patience, p.watch.threshold))
    # prepared once (cached); dataset_num_proc processes side by side
    train_rows = to_trl_rows(p.train_data, tokenizer, train_on_all=train_on_all, num_proc=args.dataset_num_proc)
    check_something_trained(
        train_rows, args.max_length, tokenizer, truncation_mode=args.truncation_mode, packing=bool(args.packing)
    )
    trainer = trainer_class(p.answers, emit)(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=to_trl_rows(p.eval_data, tokenizer, train_on_all=train_on_all, num_proc=args.dataset_num_proc)
        if p.eval_data is not None
        else None,
        processing_class=tokenizer,
        peft_config=_lora_config(lora) if lora else None,
        callbacks=callbacks,
    )
    # Exactly one progress display: ours. transformers adds its own printer/progress bars.
    for cb in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
        trainer.remove_callback(cb)
    return trainer, tokenizer


def _finish(
    p: Plan, folder, trainer, tokenizer, state: str, started: float, emit: Sink, *, interrupted: bool = False
) -> TrainResult:
    from ..run.folder import FINAL_PARTIAL, now
    from .watch import best_record, early_stop_reason

    spec = p.spec
    ts = trainer.state
    if state == "interrupted":  # a SLURM job's time limit or preemption: its checkpoint is saved, the run goes on
        if folder:
            folder.update_status(state=state, step=ts.global_step)
        emit(Event("status", {"state": state, "step": ts.global_step}))
        return TrainResult(spec.name, spec.run_dir, state, ts.global_step, ts.max_steps, list(ts.log_history))
    emit(Event("status", {"state": "saving", "step": trainer.state.global_step}))
    partial = spec.run_dir / FINAL_PARTIAL
    if folder:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)  # what an earlier, interrupted save left
    trainer.save_model(str(partial))  # the trainer saves on the main process only
    if folder:
        tokenizer.save_pretrained(str(partial))
        folder.publish_final(partial)  # final/ appears whole or not at all
    ended = now()
    # The best checkpoint (metric_for_best_model) and why the run ended early, when it did.
    best = best_record(trainer, loaded=not interrupted)  # an interrupt skips transformers' loading of the best
    outcome = {k: v for k, v in (("best", best), ("early_stop", early_stop_reason(trainer))) if v}
    if folder:
        folder.update_status(state=state, step=ts.global_step, max_steps=ts.max_steps, ended=ended, **outcome)
    emit(
        Event(
            state,
            {"step": ts.global_step, "max_steps": ts.max_steps, "seconds": round(ended - started, 2), **outcome},
        )
    )
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
        best=outcome.get("best"),
        early_stop=outcome.get("early_stop"),
    )


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
