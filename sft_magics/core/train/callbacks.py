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


def _cuda_ready() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch and torch.cuda.is_available() and torch.cuda.is_initialized())
