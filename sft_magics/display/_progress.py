"""Training progress: one state model fed by events, thin renderers on top (tqdm's pattern)."""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field


def _fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class ProgressState:
    """Everything a progress display shows, updated from training events."""

    status: str = "loading"
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    token_accuracy: float | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    train_started: float | None = None
    first_step: int = 0

    def update(self, event) -> None:
        d = event.data
        if event.kind == "status":
            self.status = d.get("state", self.status)
            if self.status == "training" and self.train_started is None:
                self.train_started, self.first_step = event.time, d.get("step", 0) or 0
        self.max_steps = d.get("max_steps") or self.max_steps
        if "step" in d and d["step"] is not None:
            self.step = d["step"]
        if d.get("epoch") is not None:
            self.epoch = d["epoch"]
        if event.kind == "log":
            self.loss = d.get("loss", self.loss)
            self.learning_rate = d.get("learning_rate", self.learning_rate)
            self.grad_norm = d.get("grad_norm", self.grad_norm)
            self.token_accuracy = d.get("mean_token_accuracy", self.token_accuracy)
        elif event.kind == "eval":
            self.eval_loss = d.get("eval_loss", self.eval_loss)
        elif event.kind in ("finished", "stopped", "failed"):
            self.status = event.kind
            self.error = d.get("error")

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def eta(self) -> float | None:
        done = self.step - self.first_step
        if not self.train_started or done <= 0 or not self.max_steps:
            return None
        return (time.time() - self.train_started) / done * (self.max_steps - self.step)

    def fields(self) -> list[tuple[str, str]]:
        """Label/value pairs shared by every renderer."""
        def num(v, fmt):
            return "–" if v is None else format(v, fmt)

        return [
            ("status", self.status),
            ("step", f"{self.step}/{self.max_steps or '?'}"),
            ("epoch", f"{self.epoch:.2f}"),
            ("loss", num(self.loss, ".4f")),
            ("eval loss", num(self.eval_loss, ".4f")),
            ("lr", num(self.learning_rate, ".2e")),
            ("grad norm", num(self.grad_norm, ".3f")),
            ("token acc", num(self.token_accuracy, ".3f")),
            ("elapsed", _fmt_seconds(self.elapsed)),
            ("ETA", _fmt_seconds(self.eta)),
        ]

    def line(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.fields())


class _Throttled:
    """Redraw at most ``rate`` times a second; final events always draw."""

    interval = 0.25

    def __init__(self, title: str):
        self.title = title
        self.state = ProgressState()
        self._last = 0.0

    def __call__(self, event) -> None:
        self.state.update(event)
        now = time.monotonic()
        final = event.kind in ("finished", "stopped", "failed", "started", "eval", "checkpoint")
        if final or now - self._last >= self.interval:
            self._last = now
            self.draw(event)

    def draw(self, event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass


class PlainReporter(_Throttled):
    """Log lines for scripts and CI: one per logged step (at most every 2 s), plus evals and the end."""

    interval = 2.0

    def draw(self, event) -> None:
        if event.kind == "started":
            d = event.data
            print(f"[{self.title}] started on {d.get('device')} ({d.get('dtype')}): {d.get('train_rows')} rows, "
                  f"{d.get('trainable_params'):,} trainable of {d.get('total_params'):,} parameters", flush=True)
        elif event.kind in ("log", "eval", "finished", "stopped", "failed"):
            print(f"[{self.title}] {self.state.line()}" + (f"  error: {self.state.error}" if self.state.error else ""), flush=True)


class RichReporter(_Throttled):
    """A rich live progress bar with the same fields, for terminal IPython."""

    def __init__(self, title: str):
        super().__init__(title)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
        )
        self._task = self._progress.add_task(title, total=None, info="loading")
        self._progress.start()

    def draw(self, event) -> None:
        s = self.state
        info = "  ".join(f"{k} {v}" for k, v in s.fields() if k in ("status", "loss", "eval loss", "lr"))
        self._progress.update(self._task, completed=s.step, total=s.max_steps or None, info=info)
        if event.kind in ("finished", "stopped", "failed"):
            self.close()

    def close(self) -> None:
        self._progress.stop()


class WidgetReporter(_Throttled):
    """ipywidgets progress bar and a field table; only widget traits are updated (thread-safe to
    call from a training thread, unlike print/display)."""

    def __init__(self, title: str):
        super().__init__(title)
        import ipywidgets as w
        from IPython.display import display

        self.bar = w.IntProgress(value=0, min=0, max=1, description=html.escape(title)[:20])
        self.info = w.HTML()
        self.box = w.VBox([self.bar, self.info])
        display(self.box)

    def draw(self, event) -> None:
        s = self.state
        self.bar.max = max(1, s.max_steps)
        self.bar.value = min(s.step, self.bar.max)
        self.bar.bar_style = {"finished": "success", "stopped": "warning", "failed": "danger"}.get(s.status, "")
        cells = "".join(f"<td><b>{html.escape(k)}</b> {html.escape(v)}</td>" for k, v in s.fields())
        err = f"<div>error: {html.escape(s.error)}</div>" if s.error else ""
        self.info.value = f"<table><tr>{cells}</tr></table>{err}"
