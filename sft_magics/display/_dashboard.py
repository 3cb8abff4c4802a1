"""Live training dashboards: thin renderers over one :class:`ProgressState` (tqdm's pattern).

Each dashboard is an event sink (``dashboard(event)``) that may be called from the training
thread, plus ``close()`` that the caller runs on the main thread when training returns.

- :class:`WidgetDashboard` (notebook): ipywidgets only. From ``__call__`` it changes widget
  traits and nothing else: ``print``/``display`` from a background thread land in whatever cell
  runs next under ipykernel 7. Trait updates are throttled to ``1 / interval`` per second,
  the loss chart (a matplotlib ``Figure``, no pyplot) to one PNG per ``chart_interval``; a
  trailing timer draws what a burst of events left undrawn. ``close()`` leaves a static HTML
  summary (status, metrics, the chart as a base64 PNG), because widget state is not saved with
  the notebook.
- ``RichDashboard`` (terminal IPython, in ``_rich_dashboard.py``): a ``rich.live.Live`` view refreshed 4 times a second.
- :class:`PlainDashboard` (scripts, CI, tests): log lines.

Every piece of event text that goes into HTML (names, errors, hints) is ``html.escape``d.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable

from ..core.progress import FINAL, ProgressState
from ._dashboard_html import (
    LossChart,
    _number_ok,
    alerts_html,
    figure_png,
    header_html,
    metrics_html,
    outcome_html,
    png_img,
    samples_html,
    summary_html,
)

RICH_STYLES = {
    "loading": "dim",
    "training": "bold blue",
    "evaluating": "bold magenta",
    "saving": "cyan",
    "finished": "bold green",
    "stopped": "bold yellow",
    "failed": "bold red",
}


# -- the shared sink: state updates under a lock, throttled draws ---------------------------------
class _Dashboard:
    """Feeds every event to the state; calls ``draw`` at most once per ``interval`` seconds, except
    for events that always draw (a new status, start, evals, the end, a new or changed alert)."""

    interval = 0.25
    trailing = False  # draw what a burst left undrawn, from a timer, once the interval has passed
    ALWAYS = ("started", "status", "job", "eval", *FINAL)

    def __init__(self, title: str = "training", on_stop: Callable[[], None] | None = None):
        self.title = str(title)
        self.on_stop = on_stop
        self.state = ProgressState()
        self.draws = 0
        self.errors: list[BaseException] = []
        self.clock = time.monotonic  # tests replace it
        self._lock = threading.RLock()
        self._last: float | None = None
        self._events = self._drawn_events = 0
        self._timer: threading.Timer | None = None
        self._closed = False

    def __call__(self, event) -> None:
        with self._lock:
            alerts = list(self.state.alerts)
            self.state.update(event)
            self._events += 1
            if self._closed:
                return
            now = self.clock()
            due = self._last is None or now - self._last >= self.interval
            if due or event.kind in self.ALWAYS or self.state.alerts != alerts:  # a new or changed alert
                self._draw(event)
            elif self.trailing:
                self._schedule(self._last + self.interval - now)

    def _draw(self, event) -> None:
        self._last = self.clock()
        self._drawn_events = self._events
        self.draws += 1
        try:
            self.draw(event)
        except Exception as err:
            self.errors.append(err)

    def draw(self, event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _pending(self) -> bool:
        return self._events > self._drawn_events

    def _schedule(self, delay: float) -> None:
        if self._timer is None:
            self._timer = threading.Timer(max(0.02, delay), self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed and self._pending():
                self._draw(None)

    def _finish(self) -> bool:
        """Mark closed (idempotent); returns False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return True

    def _warn_errors(self) -> None:
        if self.errors:
            warnings.warn(
                f"the training display failed to draw ({len(self.errors)} times): {self.errors[0]!r}",
                RuntimeWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        if self._finish():
            self._warn_errors()


class WidgetDashboard(_Dashboard):
    """ipywidgets dashboard: header + status badge, progress bar and label, metrics, alerts, the
    loss chart and a Stop button. Safe to feed from a training thread (widget traits only)."""

    trailing = True
    chart_interval = 2.0

    def __init__(self, title: str = "training", on_stop: Callable[[], None] | None = None, *, show: bool = True):
        super().__init__(title, on_stop)
        import ipywidgets as w

        self.header = w.HTML(header_html(self.title, self.state))
        self.bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="45%"))
        self.label = w.Label(self.state.progress_text())
        self.metrics = w.HTML(metrics_html(self.state))
        self.alerts = w.HTML("")
        # Hidden until there is a chart: an <img> without a picture shows a broken-image icon.
        self.image = w.Image(value=b"", format="png", layout=w.Layout(max_width="1024px", display="none"))
        self.samples = w.HTML("")
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            button_style="warning",
            tooltip="stop after the current step and keep a checkpoint",
            disabled=on_stop is None,
        )
        self.stop_button.on_click(self._stop_clicked)
        children = [self.header, w.HBox([self.bar, self.label]), self.metrics, self.alerts, self.image, self.samples]
        if on_stop is not None:
            children.append(self.stop_button)
        self.box = w.VBox(children)
        self.png: bytes | None = None
        self.charts = 0  # PNGs rendered
        self._chart: LossChart | None = None
        self._chart_version = 0
        self._chart_last: float | None = None
        self._final_chart = False
        self._stop_requested = False
        self._handle = None
        if show:
            from IPython.display import display

            # On the main thread, when the run starts; with a display id, so that close() can
            # replace the live widget by its static summary in the same output.
            self._handle = display(self.box, display_id=True)

    def _stop_clicked(self, _button=None) -> None:
        if self._stop_requested or self.on_stop is None:
            return
        self._stop_requested = True
        try:
            self.on_stop()
        except BaseException:
            self._stop_requested = False  # let the user try again
            raise
        self.stop_button.disabled = True
        self.stop_button.description = "stopping…"

    def draw(self, event) -> None:
        s = self.state
        self.header.value = header_html(self.title, s)
        self.bar.max = max(1, s.max_steps, s.step)
        self.bar.value = min(s.step, self.bar.max)
        self.bar.bar_style = {"finished": "success", "stopped": "warning", "failed": "danger"}.get(s.status, "")
        self.label.value = s.progress_text()
        self.metrics.value = metrics_html(s)
        self.alerts.value = outcome_html(s) + alerts_html(s)
        self.samples.value = samples_html(s)
        if s.final:
            self.stop_button.disabled = True
            if self._stop_requested:
                self.stop_button.description = s.status
        self._draw_chart(force=s.final)

    def _chart_stale(self) -> bool:
        return self.state.version != self._chart_version

    def _pending(self) -> bool:
        return super()._pending() or self._chart_stale()

    def _draw_chart(self, force: bool = False) -> None:
        # The end redraws once (over the steps run), if there is anything to draw.
        final_pending = force and not self._final_chart and bool(self.state.losses or self.state.eval_losses)
        if not self._chart_stale() and not final_pending:
            return
        now = self.clock()
        if force or self._chart_last is None or now - self._chart_last >= self.chart_interval:
            s = self.state
            if self._chart is None or self._chart.metric != s.watch.get("metric"):
                self._chart = LossChart(metric=s.watch.get("metric"))
            # A stopped or failed run is drawn over the steps it ran, not the ones it never reached.
            self.png = self._chart.render(
                s.losses, s.eval_losses, s.step if s.final else s.max_steps, s.metric_points, s.best
            )
            self._chart_version, self._chart_last = s.version, now
            self._final_chart = self._final_chart or force
            self.charts += 1
            self.image.value = self.png
            self.image.layout.display = None
        elif self.trailing and not self._closed:
            self._schedule(self._chart_last + self.chart_interval - now)

    def summary_html(self) -> str:
        return summary_html(self.title, self.state, self.png)

    def close(self) -> None:
        """Final draw (chart included), then a static HTML summary that survives a saved notebook."""
        if not self._finish():
            return
        with self._lock:
            self.state.end()
            self._draw(None)
            self.stop_button.disabled = True
            summary = self.summary_html()
        from IPython.display import HTML, display

        if self._handle is not None:
            # One record per run: the widget's output becomes the static summary (what a saved or
            # exported notebook keeps, since widget state is not saved) instead of a second copy.
            self._handle.update(HTML(summary))
        else:
            display(HTML(summary))
        self._warn_errors()


class PlainDashboard(_Dashboard):
    """Log lines for scripts and CI: the start, a progress line at most every ``interval`` seconds
    of log events, every eval, each new alert, and the final status with error and hint."""

    interval = 2.0

    def __call__(self, event) -> None:
        with self._lock:
            alerts = list(self.state.alerts)
            self.state.update(event)
            if self._closed:
                return
            for i, alert in enumerate(self.state.alerts):  # new ones, and ones that changed (no longer true)
                if i >= len(alerts) or alerts[i] != alert:
                    self._print(f"alert: {alert}")
            now = self.clock()
            if event.kind == "started":
                self._print(self._started_line(event.data))
            elif event.kind == "answers" and not event.data.get("stopped"):  # a stopped watch: its alert says
                self._print(self._answers_line())
            elif event.kind == "job":
                self._print(self.state.job_text())
            elif event.kind == "status" and event.data.get("state") in ("interrupted", "requeued"):
                self._print(f"{event.data['state']} at step {self.state.step}")
            elif event.kind in ("eval", *FINAL) or (
                event.kind == "log" and (self._last is None or now - self._last >= self.interval)
            ):
                if event.kind == "log":
                    self._last = now
                self._print(self._status_line())

    def _print(self, text: str) -> None:
        self.draws += 1
        print(f"[{self.title}] {text}", flush=True)

    @staticmethod
    def _started_line(d: dict) -> str:
        def count(v):
            return f"{v:,}" if isinstance(v, int) else "?"

        return (
            f"started on {d.get('device')} ({d.get('dtype')}): {d.get('train_rows')} rows, "
            f"{count(d.get('trainable_params'))} trainable of {count(d.get('total_params'))} parameters"
        )

    def _answers_line(self) -> str:
        a = self.state.answers
        scores = "  ".join(f"{k} {float(v):.3f}" for k, v in (a.get("metrics") or {}).items() if _number_ok(v))
        first = (a.get("samples") or [{}])[0]
        sample = f"  e.g. {str(first.get('answer') or '(empty)')[:80]!r}" if first else ""
        return (
            f"answers at step {a.get('step')} ({a.get('rows')} rows, {a.get('never_ended', 0)} never ended, "
            f"{a.get('empty', 0)} empty): {scores}{sample}"
        )

    def _status_line(self) -> str:
        s = self.state
        return (
            s.line()
            + (f"  {s.early_stop}" if s.early_stop else "")
            + (f"  error: {s.error}" if s.error else "")
            + (f"  hint: {s.hint}" if s.hint else "")
        )

    def close(self) -> None:
        if not self._finish():
            return
        with self._lock:
            if not self.state.final and self.state.started is not None:
                self.state.end()
                self._print(self._status_line())
        self._warn_errors()


__all__ = ["LossChart", "PlainDashboard", "WidgetDashboard", "samples_html", "summary_html", "figure_png", "png_img"]
