"""Progress: one state model per kind of work, thin renderers on top (tqdm's pattern).

:class:`ProgressState` is the only place that interprets training events: the widget, rich and
plain dashboards in :mod:`sft_magics.display._dashboard` only read it. :class:`StageProgress` is
the same for an evaluation's stages (loss, generating, for each model compared): the evaluation
calls it with ``(stage, done, total)``; the renderers in :mod:`sft_magics.display._eval_view` read
it. Both are core (plain Python, no display imports): a script, a test or another frontend reads
the same state.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .events import FINAL_STATES as FINAL


def _fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _number(v: Any) -> float | None:
    """A metric as a float (NaN and inf kept), or None when it is missing or not a number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


@dataclass
class ProgressState:
    """Everything a progress display shows, updated from training events by :meth:`update`.

    Times come from the events (``event.time``, epoch seconds), so a state replayed from a
    ``metrics.jsonl`` gives the same numbers; ``clock`` is only used for "now" while a run is live.
    """

    status: str = "loading"
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    num_train_epochs: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None  # the trainer's run average, logged at the end
    learning_rate: float | None = None  # the schedule's value at the last log
    peak_learning_rate: float | None = None  # the configured learning_rate (the `started` event)
    grad_norm: float | None = None
    token_accuracy: float | None = None
    tokens_per_second: float | None = None
    num_tokens: float | None = None
    gpu_memory_gb: float | None = None
    error: str | None = None
    hint: str | None = None
    seconds: float | None = None
    checkpoint: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the `started` event: name, model, device, ...
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), every log
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss), every eval
    alerts: list[str] = field(default_factory=list)  # short, human, one per kind of problem
    # Watching the answers (core/train/watch.py): the followed metric at each evaluation, its best value,
    # the latest sample answers, and why the run ended early.
    watch: dict[str, Any] = field(default_factory=dict)  # the `started` event's "watch"
    metric_points: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_<metric>)
    best: tuple[float, int] | None = None  # (value, step) of the followed metric so far
    answers: dict[str, Any] = field(default_factory=dict)  # the latest `answers` event
    early_stop: str | None = None
    job: dict[str, Any] = field(default_factory=dict)  # a SLURM run's job as SLURM sees it (`job` events)
    version: int = 0  # bumped when the loss histories change (renderers redraw charts on change)
    started: float | None = None  # time of the first event
    ended: float | None = None  # time of the final event
    train_started: float | None = None
    first_step: int = 0
    step_time: float | None = None  # when `step` last advanced
    eval_steps: int | None = None  # evaluate every N steps (the `started` event), for the ETA
    eval_spans: list[tuple[float, float]] = field(default_factory=list)  # (began, seconds) of each evaluation
    eval_began: float | None = None  # when the evaluation under way began
    eval_ended: float | None = None  # when the last evaluation ended (training went on)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    _alert_keys: dict = field(default_factory=dict, repr=False, compare=False)  # key -> index in alerts
    _resolved: set = field(default_factory=set, repr=False, compare=False)
    _eval_rises: int = field(default=0, repr=False, compare=False)
    _best_loss: float | None = field(default=None, repr=False, compare=False)
    _token_window: deque = field(default_factory=lambda: deque(maxlen=20), repr=False, compare=False)

    # -- updates -----------------------------------------------------------------------------
    def update(self, event) -> None:
        d, t, kind = event.data or {}, event.time, event.kind
        if self.started is None:
            self.started = t
        max_steps = _number(d.get("max_steps"))
        if max_steps and max_steps > 0:  # SFTConfig's "unset" is -1: keep the trainer's real total
            self.max_steps = int(max_steps)
        step = _number(d.get("step"))
        if step is not None and math.isfinite(step):
            if int(step) != self.step or self.step_time is None:
                self.step_time = t
            self.step = int(step)
        if _number(d.get("epoch")) is not None:
            self.epoch = float(d["epoch"])

        if kind == "status":
            self._pause(d.get("state"), t)
            self.status = d.get("state") or self.status
            if self.status == "training" and self.train_started is None:
                self.train_started, self.first_step, self.step_time = t, self.step, t
                if self.step == 0 and self.num_tokens is None:  # a fresh run has seen 0 tokens now
                    self._token_window.append((t, 0.0))
        elif kind == "started":
            self.info = dict(d)
            self.watch = dict(d.get("watch") or {})
            self.peak_learning_rate = _number(d.get("learning_rate"))
            every = _number(d.get("eval_steps"))
            self.eval_steps = int(every) if every and every >= 1 else None
            if not (max_steps and max_steps > 0):  # with max_steps set, the trainer ignores num_train_epochs
                self.num_train_epochs = _number(d.get("num_train_epochs")) or self.num_train_epochs
        elif kind == "log":
            self._log(d, t)
        elif kind == "eval":
            self._eval(d)
        elif kind == "answers":
            self._answers(d)
        elif kind == "checkpoint":
            self.checkpoint = d.get("path")
        elif kind == "job":
            self.job = dict(d)
        elif kind in FINAL:
            self.status, self.ended = kind, t
            self.error = None if d.get("error") is None else str(d["error"])
            self.hint = None if d.get("hint") is None else str(d["hint"])
            self.seconds = _number(d.get("seconds"))
            self.early_stop = str(d["early_stop"]) if d.get("early_stop") else self.early_stop
            best = d.get("best") if isinstance(d.get("best"), dict) else {}
            if _number(best.get("value")) is not None and best.get("metric") == self.watch.get("metric"):
                self.best = (float(best["value"]), int(best.get("step") or 0))

    def _pause(self, status: str | None, t: float) -> None:
        """Time spent evaluating, apart from training: the ETA adds evaluations at their own pace."""
        if status == "evaluating" and self.eval_began is None:
            self.eval_began = t
        elif status != "evaluating" and self.eval_began is not None:
            self.eval_spans.append((self.eval_began, max(0.0, t - self.eval_began)))
            self.eval_began, self.eval_ended = None, t

    def _log(self, d: dict, t: float) -> None:
        loss = _number(d.get("loss"))
        if loss is not None:
            self.loss = loss
            self.losses.append((self.step, loss))
            self.version += 1
            if math.isnan(loss):
                self._alert(
                    "loss-nan",
                    f"loss is NaN (step {self.step}): training diverged; lower learning_rate or check the data",
                )
            elif math.isinf(loss):
                self._alert("loss-inf", f"loss is infinite (step {self.step}): training diverged; lower learning_rate")
            elif loss == 0:
                self._alert(
                    "loss-zero", f"loss is exactly 0 (step {self.step}): are any tokens trained on? check the loss mask"
                )
        grad_norm = _number(d.get("grad_norm"))
        if grad_norm is not None:
            self.grad_norm = grad_norm
            if math.isnan(grad_norm):
                self._alert(
                    "grad-nan", f"grad norm is NaN (step {self.step}): lower learning_rate, or use bf16 instead of fp16"
                )
            elif math.isinf(grad_norm):
                self._alert(
                    "grad-inf",
                    f"grad norm is infinite (step {self.step}): lower learning_rate, or use bf16 instead of fp16",
                )
        for key, attr in (
            ("learning_rate", "learning_rate"),
            ("mean_token_accuracy", "token_accuracy"),
            ("gpu_memory_gb", "gpu_memory_gb"),
            ("train_loss", "train_loss"),
        ):
            value = _number(d.get(key))
            if value is not None:
                setattr(self, attr, value)
        tokens = _number(d.get("num_tokens"))
        if tokens is not None:
            self._tokens(tokens, t)

    def _tokens(self, tokens: float, t: float) -> None:
        """Tokens per second over the last few logs (num_tokens is cumulative)."""
        window = self._token_window
        if window and tokens < window[-1][1]:  # a new count (resumed run): start over
            window.clear()
        if not window or t > window[-1][0]:
            window.append((t, tokens))
        else:
            window[-1] = (window[-1][0], tokens)
        self.num_tokens = tokens
        (t0, n0), (t1, n1) = window[0], window[-1]
        if t1 > t0:
            self.tokens_per_second = (n1 - n0) / (t1 - t0)

    def _eval(self, d: dict) -> None:
        self._metric(d)
        value = _number(d.get("eval_loss"))
        if value is None:
            return
        previous = self.eval_losses[-1][1] if self.eval_losses else None
        self.eval_loss = value
        self.eval_losses.append((self.step, value))
        self.version += 1
        if math.isnan(value):
            self._alert("eval-nan", f"eval loss is NaN (step {self.step})")
        self._eval_rises = self._eval_rises + 1 if previous is not None and value > previous else 0
        if self._eval_rises >= 3:
            self._alert(
                "eval-rising",
                f"eval loss rose 3 evaluations in a row (step {self.step}): "
                "overfitting? fewer steps or a lower learning_rate",
            )

    def _metric(self, d: dict) -> None:
        """The followed generated metric: its curve, the best so far, and an alert when it gets worse
        while the eval loss gets better (the loss no longer tracks what the answers are)."""
        name = self.watch.get("metric")
        value = _number(d.get(f"eval_{name}")) if name else None
        if value is None or not math.isfinite(value):
            return
        higher = self.watch.get("greater_is_better", True)
        previous = self.metric_points[-1][1] if self.metric_points else None
        self.metric_points.append((self.step, value))
        self.version += 1
        loss, last_loss = _number(d.get("eval_loss")), self.eval_loss
        # The trainer's rule (core/train/watch.py): strictly better, or equal with a lower eval loss.
        # A watch nobody asked for keeps no checkpoint by it: no "best" that final/ is not.
        tie = self.best is not None and value == self.best[0]
        if not self.watch.get("by_default") and (
            self.best is None
            or (value > self.best[0] if higher else value < self.best[0])
            or (tie and loss is not None and self._best_loss is not None and loss < self._best_loss)
        ):
            self.best, self._best_loss = (value, self.step), loss
        worse = previous is not None and (value < previous if higher else value > previous)
        if worse and loss is not None and last_loss is not None and loss < last_loss:
            self._alert(
                "metric-falls",
                f"{name} got worse ({previous:.3f} → {value:.3f}) while the eval loss fell ({last_loss:.4f} → "
                f"{loss:.4f}) at step {self.step}: the loss no longer tracks the answers; keep the best checkpoint "
                "(metric_for_best_model, load_best_model_at_end) or stop",
            )

    def _answers(self, d: dict) -> None:
        if d.get("stopped"):  # a default watch that failed: the run goes on without it
            self._alert("watch-stopped", f"answers no longer watched from step {self.step}: {d['stopped']}")
            return
        self.answers = dict(d)
        rows, step = int(_number(d.get("rows")) or 0), self.step
        never, empty = int(_number(d.get("never_ended")) or 0), int(_number(d.get("empty")) or 0)
        self._condition(
            "never-ended",
            never
            and f"{never} of {rows} answers never ended at step {step}: no end-of-turn token within "
            f"{d.get('max_new_tokens')} new tokens (raise eval_max_new_tokens, or check the template's end token)",
            f"every answer ended from step {step}",
        )
        self._condition(
            "empty-answers",
            empty and f"{empty} of {rows} answers are empty at step {step}",
            f"no empty answer from step {step}",
        )

    def _alert(self, key: str, text: str) -> None:
        if key not in self._alert_keys:
            self._alert_keys[key] = len(self.alerts)
            self.alerts.append(text)

    def _condition(self, key: str, text: str | None, cleared: str) -> None:
        """An alert about the latest answers: its text follows them, and when it stops being true it
        says so (``… at step 10; every answer ended from step 20``) instead of standing as if still true."""
        if text:
            if key in self._alert_keys:
                self.alerts[self._alert_keys[key]] = text
                self._resolved.discard(key)
            else:
                self._alert(key, text)
        elif key in self._alert_keys and key not in self._resolved:
            self._resolved.add(key)
            i = self._alert_keys[key]
            self.alerts[i] = f"{self.alerts[i].split(': ')[0]}; {cleared}"

    def end(self, status: str = "failed", error: str | None = "the run ended before reporting a final status") -> None:
        """Close a run that never sent a final event (an error before training, an interrupted kernel)."""
        if self.status not in FINAL:
            self.status, self.ended = status, self.clock()
            self.error = self.error or error

    # -- derived values ----------------------------------------------------------------------
    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.ended if self.ended is not None else self.clock()) - self.started)

    @property
    def eta(self) -> float | None:
        """Seconds left: the training pace so far (event times, evaluations left out) over the
        remaining steps, plus the evaluations still due at their own average length."""
        if self.final:
            return 0.0
        done = self.step - self.first_step
        if self.train_started is None or self.step_time is None or done <= 0 or not self.max_steps:
            return None
        now = self.clock()
        # Training time up to the last step: without the evaluations that began before it (one that
        # began at that step came after it).
        paused = sum(seconds for began, seconds in self.eval_spans if began < self.step_time)
        per_step = max(0.0, self.step_time - self.train_started - paused) / done
        left = max(0, self.max_steps - self.step)
        # Into the next steps: since the last step or the end of the last evaluation (none while one runs).
        since = 0.0 if self.eval_began is not None else now - max(self.step_time, self.eval_ended or 0.0)
        seconds = max(0.0, per_step * left - max(0.0, since))
        if self.eval_spans:
            each = sum(seconds for _, seconds in self.eval_spans) / len(self.eval_spans)
            if self.eval_steps:  # and one at the last step when it is not a multiple (transformers' rule)
                due = self.max_steps // self.eval_steps - self.step // self.eval_steps
                due += bool(self.max_steps % self.eval_steps and self.step < self.max_steps)
            else:  # evaluations at their rate so far (per epoch, say)
                due = round(len(self.eval_spans) / done * left)
            seconds += each * due
            if self.eval_began is not None:
                seconds += max(0.0, each - (now - self.eval_began))
        return seconds

    def progress_text(self) -> str:
        """``step N/M · epoch E · elapsed · ETA``: the label next to a progress bar."""
        epochs = f"/{self.num_train_epochs:g}" if self.num_train_epochs else ""
        tail = (
            f"done in {_fmt_seconds(self.elapsed)}"
            if self.final
            else f"{_fmt_seconds(self.elapsed)} elapsed · ETA {_fmt_seconds(self.eta)}"
        )
        return f"step {self.step}/{self.max_steps or '?'} · epoch {self.epoch:.2f}{epochs} · {tail}"

    def metrics(self) -> list[tuple[str, str]]:
        """The metrics table, label/value pairs shared by every renderer (GPU memory only when known)."""
        rows = [
            ("loss", _fmt(self.loss, ".4f")),
            ("eval loss", _fmt(self.eval_loss, ".4f")),
            ("lr now", self.lr_text()),
            ("grad norm", _fmt(self.grad_norm, ".3f")),
            ("token acc", _fmt(self.token_accuracy, ".3f")),
            ("tokens/s", _fmt(self.tokens_per_second, ",.0f")),
        ]
        if self.gpu_memory_gb is not None:
            rows.append(("GPU memory", f"{self.gpu_memory_gb:.2f} GB"))
        if self.watch.get("metric"):
            name = str(self.watch["metric"])
            rows.append((name, _fmt(self.metric_points[-1][1] if self.metric_points else None, ".3f")))
            if not self.watch.get("by_default"):
                rows.append((f"best {name}", self.best_text() or "–"))
        return rows

    def lr_text(self) -> str:
        """``6.29e-06 (peak 2.00e-03)``: the schedule's value at the last log, and the configured one
        it warms up to and decays from, so a small number at the ends does not read as "ignored"."""
        now = _fmt(self.learning_rate, ".2e")
        if self.peak_learning_rate is None or self.learning_rate == self.peak_learning_rate:
            return now
        return f"{now} (peak {self.peak_learning_rate:.2e})"

    def best_text(self) -> str | None:
        """``0.975 @ step 30``: the followed metric's best value so far."""
        return None if self.best is None else f"{self.best[0]:.3f} @ step {self.best[1]}"

    def fields(self) -> list[tuple[str, str]]:
        """Label/value pairs of one plain log line."""
        rows = [
            ("status", self.status),
            ("step", f"{self.step}/{self.max_steps or '?'}"),
            ("epoch", f"{self.epoch:.2f}"),
        ]
        rows += [(k, v) for k, v in self.metrics() if not (k in ("tokens/s",) and v == "–")]
        rows += [("elapsed", _fmt_seconds(self.elapsed))]
        if not self.final:
            rows.append(("ETA", _fmt_seconds(self.eta)))
        return rows

    def line(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.fields())

    def job_text(self) -> str | None:
        """``SLURM job 12: PENDING (Resources)``, for a run that is a SLURM job."""
        if not self.job:
            return None
        return f"SLURM job {self.job.get('job_id', '?')}: {self.job.get('text') or self.job.get('state') or '?'}"


@dataclass
class StageProgress:
    """An evaluation's progress: the current stage (``"tuned: generating"``), items done of total,
    and the pace of this stage so far (for the ETA). Call it as the evaluation's ``progress``."""

    stage: str = "starting"
    done: int = 0
    total: int = 0
    started: float | None = None  # when the evaluation started
    stage_started: float | None = None  # when this stage started
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
        if stage != self.stage:
            self.stage, self.stage_started = stage, now
        self.done, self.total = int(done), int(total)

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else max(0.0, self.clock() - self.started)

    @property
    def eta(self) -> float | None:
        """Seconds left in this stage, at this stage's pace."""
        if self.stage_started is None or self.done <= 0 or self.total <= 0:
            return None
        spent = self.clock() - self.stage_started
        return max(0.0, spent / self.done * (self.total - self.done))

    def text(self) -> str:
        """``tuned: generating 16/40 · 00:05 elapsed · ETA 00:07``."""
        eta = f" · ETA {_fmt_seconds(self.eta)}" if self.done < self.total else ""
        return f"{self.stage} {self.done}/{self.total} · {_fmt_seconds(self.elapsed)} elapsed{eta}"
