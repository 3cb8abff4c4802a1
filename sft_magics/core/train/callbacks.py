"""How the trainer and the notebook talk: transformers' callback hooks become our events (log, eval,
checkpoint, status), each whole checkpoint is marked in the run folder, and a :class:`StopFlag`
(a button, Ctrl-C, ``%sft_stop``'s file) ends training at the next step with a checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path

from ..events import Event, Sink


class StopFlag:
    """Set from anywhere (a button, Ctrl-C handler, another thread); the trainer stops at the next
    step. With ``stop_file``, the file's existence also counts: how ``%sft_stop`` reaches a run in
    another process. ``interrupt()`` (or ``interrupt_file``) is the other way to stop: a SLURM job's
    time limit or preemption. The trainer checkpoints as for a stop, but the run is not over: it
    ends ``interrupted``, and the job's supervisor decides what comes next (requeue, or a failure
    naming SLURM's reason). A stop asked by the user wins over an interrupt."""

    def __init__(self, stop_file: str | Path | None = None, interrupt_file: str | Path | None = None) -> None:
        self._event = threading.Event()
        self._interrupt = threading.Event()
        self.stop_file = Path(stop_file) if stop_file else None
        self.interrupt_file = Path(interrupt_file) if interrupt_file else None

    def set(self) -> None:
        self._event.set()

    def interrupt(self) -> None:
        self._interrupt.set()

    @property
    def interrupted(self) -> bool:
        """Stopped by an interrupt alone (the run goes on elsewhere)."""
        return self.is_set() and not self._event.is_set()

    def outcome(self, done: bool) -> str:
        """How a fit that returned ended: ``stopped`` (the user), ``interrupted`` (a signal before the
        last step; after it, the run is simply ``finished``), or ``finished``."""
        if self.is_set() and not self.interrupted:
            return "stopped"
        return "interrupted" if self.interrupted and not done else "finished"

    def is_set(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self._event.set()
        if not self._interrupt.is_set() and self.interrupt_file is not None and self.interrupt_file.exists():
            self._interrupt.set()
        return self._event.is_set() or self._interrupt.is_set()

    def agree(self, device) -> bool:
        """``is_set()``, agreed by every process of a distributed run (the strongest request wins), so
        all ranks stop at the same step: one that stopped alone would leave the others waiting."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.is_set()
        import torch

        code = 2 if (self.is_set() and self._event.is_set()) else 1 if self.is_set() else 0
        flag = torch.tensor([code], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
        (self.set if code == 2 else self.interrupt if code == 1 else (lambda: None))()
        return code > 0


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
            self._check_stop(control, args)  # a sink may have asked to stop: do it at this step

        def on_step_end(self, args, state, control, **kw):
            self._check_stop(control, args)
            if control.should_evaluate:
                self.sink(Event("status", {"state": "evaluating", "step": state.global_step}))

        def on_epoch_end(self, args, state, control, **kw):
            if control.should_evaluate:  # eval_strategy: epoch
                self.sink(Event("status", {"state": "evaluating", "step": state.global_step}))

        def on_evaluate(self, args, state, control, **kw):
            self.sink(Event("status", {"state": "training", "step": state.global_step}))

        def _check_stop(self, control, args=None):
            if self.stop.agree(args.device) if args is not None else self.stop.is_set():
                control.should_training_stop = True
                control.should_save = True  # keep a checkpoint of where we stopped

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.folder and path.is_dir():
                self.folder.mark_whole(path)  # the trainer has written it completely: resumable from now on
                self.folder.update_status(step=state.global_step, checkpoint=path.name)
            self.sink(Event("checkpoint", {"step": state.global_step, "path": str(path)}))

    return EventCallback


def _cuda_ready() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch and torch.cuda.is_available() and torch.cuda.is_initialized())
