"""Training events: what core emits, what displays and run folders consume.

Core never draws anything; it calls ``sink(event)`` and the caller decides (a widget, a rich live
view, log lines, a JSONL file). Event kinds:

- ``started``     name, model, device, dtype, train_rows, eval_rows, trainable_params, total_params,
                  max_steps, num_train_epochs, resumed_from, resume_overrides
- ``log``         step, epoch and the trainer's logged metrics (loss, learning_rate, grad_norm, ...)
- ``eval``        step, epoch, eval_loss and other eval metrics (``eval_json_match``, ... with eval_generate)
- ``answers``     step, metrics, rows, never_ended, empty, max_new_tokens, seconds, samples, answers:
                  what the model answered at an evaluation (core/train/watch.py)
- ``checkpoint``  step, path
- ``status``      state (loading / training / evaluating / saving)
- ``finished`` / ``stopped`` / ``failed``  final state (``failed`` carries ``error`` and ``hint``;
                  ``best`` and ``early_stop`` when the run kept a best checkpoint or stopped early)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A run's life: it is live in one of LIVE_STATES and ends in one of FINAL_STATES (the final events' kinds).
# "interrupted": a SLURM job's worker checkpointed on a time-limit or preemption signal; "requeued": the
# job went back to SLURM's queue and will resume from that checkpoint.
FINAL_STATES = ("finished", "stopped", "failed")
LIVE_STATES = ("starting", "loading", "training", "evaluating", "saving", "interrupted", "requeued")


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "time": round(self.time, 3), **self.data}


Sink = Callable[[Event], None]


def fan_out(*sinks: Sink | None) -> Sink:
    """One sink that forwards each event to every given sink, in order."""
    active = [s for s in sinks if s is not None]

    def sink(event: Event) -> None:
        for s in active:
            s(event)

    return sink
