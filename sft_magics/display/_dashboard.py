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

import base64
import html
import io
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence

from ..core.progress import FINAL, ProgressState

_E = html.escape
STATUS_COLORS = {
    "loading": "#6c757d",
    "training": "#0d6efd",
    "evaluating": "#6f42c1",
    "saving": "#0a7e8c",
    "finished": "#198754",
    "stopped": "#b35c00",
    "failed": "#dc3545",
}
RICH_STYLES = {
    "loading": "dim",
    "training": "bold blue",
    "evaluating": "bold magenta",
    "saving": "cyan",
    "finished": "bold green",
    "stopped": "bold yellow",
    "failed": "bold red",
}


# -- charts (matplotlib Figure -> PNG bytes; no pyplot, so safe off the main thread) --------------
def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def png_img(png: bytes | None, alt: str = "loss curve") -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_E(alt, quote=True)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _finite(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    pts = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


class LossChart:
    """Train loss line + eval loss points on one reused Figure (one PNG ≈ tens of ms); with
    ``metric``, the generated metric's curve on a second axes beside it, its best point marked."""

    def __init__(self, size: tuple[float, float] = (6.4, 2.6), dpi: int = 90, metric: str | None = None):
        from matplotlib.figure import Figure

        self.metric = metric
        self.fig = Figure(figsize=(size[0] * 1.6, size[1]) if metric else size, dpi=dpi)
        if metric:
            self.ax, self.max = self.fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
            self.fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.18, wspace=0.25)
        else:
            self.ax, self.max = self.fig.add_subplot(), None
            self.fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.18)
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.grid(alpha=0.3)
        (self.train,) = self.ax.plot([], [], lw=1.5, color="#0d6efd", label="train loss")
        (self.eval,) = self.ax.plot([], [], "o", ms=5, color="#dc3545", label="eval loss")
        if self.max is not None:
            self.max.set_xlabel("step")
            self.max.set_title(f"{metric} (generated answers)", fontsize="small")
            self.max.grid(alpha=0.3)
            (self.curve,) = self.max.plot([], [], "o-", ms=4, lw=1.5, color="#198754")
            (self.best_point,) = self.max.plot([], [], "*", ms=12, color="#b35c00", label="best")

    def render(self, losses, eval_losses, max_steps: int = 0, metric_points=(), best=None) -> bytes:
        tx, ty = _finite(losses)
        ex, ey = _finite(eval_losses)
        self.train.set_data(tx, ty)
        self.eval.set_data(ex, ey)
        self.ax.relim()
        self.ax.autoscale_view()
        right = max([max_steps or 0, *tx, *ex, 1])
        self.ax.set_xlim(0, right)  # the whole run on the x axis: the line shows how far it got
        handles = [h for h, xs in ((self.train, tx), (self.eval, ex)) if xs]
        if handles:
            self.ax.legend(handles=handles, loc="upper right", fontsize="small")
        if self.max is not None:
            mx, my = _finite(metric_points)
            self.curve.set_data(mx, my)
            self.best_point.set_data([best[1]] if best else [], [best[0]] if best else [])
            self.max.set_xlim(0, right)
            low, high = min(my, default=0.0), max(my, default=1.0)
            self.max.set_ylim(min(0.0, low) - 0.05, max(1.0, high) + 0.05)
        return figure_png(self.fig)


def samples_html(state: ProgressState) -> str:
    """The latest sample answers: prompt, reference, the answer now (where it differs from the
    reference marked) and at the previous evaluation. Every text is escaped."""
    from ..core.train.watch import diff_segments

    a = state.answers
    samples = a.get("samples") or []
    if not samples:
        return ""
    cell = "padding:2px 8px;vertical-align:top;text-align:left;font-family:monospace;white-space:pre-wrap"

    def marked(answer: str, reference: str) -> str:
        return "".join(
            _E(text) if same else f'<mark style="background:#ffd6d6">{_E(text)}</mark>'
            for text, same in diff_segments(answer, reference)
        )

    rows = []
    for x in samples:
        answer, reference = str(x.get("answer") or ""), str(x.get("reference") or "")
        note = "" if x.get("ended", True) is not False else ' <span style="color:#8a5300">(no end token)</span>'
        previous = x.get("previous")
        rows.append(
            "<tr>"
            + "".join(
                f'<td style="{cell}">{v}</td>'
                for v in (
                    _E(str(x.get("prompt") or "")),
                    _E(reference),
                    (marked(answer, reference) or "<i>(empty)</i>") + note,
                    "–" if previous is None else _E(str(previous)) or "<i>(empty)</i>",
                )
            )
            + "</tr>"
        )
    head = "".join(f'<th style="{cell}">{h}</th>' for h in ("prompt", "reference", "answer now", "previous answer"))
    scores = " · ".join(f"{_E(str(k))} {float(v):.3f}" for k, v in (a.get("metrics") or {}).items() if _number_ok(v))
    caption = (
        f"answers at step {_E(str(a.get('step')))} ({_E(str(a.get('rows')))} rows"
        f"{', ' + _E(str(a.get('never_ended'))) + ' never ended' if a.get('never_ended') else ''}): {scores}"
    )
    return (
        f'<div class="sft-samples"><div style="color:#444;font-size:90%">{caption}</div>'
        f'<table style="border-collapse:collapse;font-size:85%"><tr>{head}</tr>{"".join(rows)}</table></div>'
    )


def _number_ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- HTML pieces (shared by the live widget and the static summary) -------------------------------
def _badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#6c757d")
    return (
        f'<span style="background:{color};color:white;border-radius:4px;padding:1px 6px;'
        f'font-size:90%">{_E(status)}</span>'
    )


def info_text(state: ProgressState) -> str:
    """``model on device (dtype) · rows · trainable parameters`` from the ``started`` event."""
    d = state.info
    if not d:
        return ""
    parts = []
    if d.get("model") is not None:
        parts.append(f"{d['model']} on {d.get('device', '?')} ({d.get('dtype', '?')})")
    if d.get("train_rows") is not None:
        parts.append(f"{d['train_rows']} train rows" + (f", {d['eval_rows']} eval rows" if d.get("eval_rows") else ""))
    trainable, total = d.get("trainable_params"), d.get("total_params")
    if isinstance(trainable, int) and isinstance(total, int) and total:
        parts.append(f"{trainable:,} of {total:,} parameters trained ({trainable / total:.2%})")
    return " · ".join(parts)


def header_html(title: str, state: ProgressState) -> str:
    info = info_text(state)
    info = f'<div style="color:#666;font-size:90%">{_E(info)}</div>' if info else ""
    return f"<div><b>{_E(title)}</b> {_badge(state.status)}</div>{info}"


def metrics_html(state: ProgressState) -> str:
    rows = state.metrics()
    cell = "padding:2px 10px;text-align:right"
    head = "".join(f'<th style="{cell}">{_E(k)}</th>' for k, _ in rows)
    body = "".join(f'<td style="{cell};font-family:monospace">{_E(v)}</td>' for _, v in rows)
    return f'<table class="sft-metrics" style="border-collapse:collapse"><tr>{head}</tr><tr>{body}</tr></table>'


def alerts_html(state: ProgressState) -> str:
    parts = [f'<div style="color:#8a5300">&#9888; {_E(a)}</div>' for a in state.alerts]
    if state.error:
        parts.append(f'<div style="color:#b00020"><b>error:</b> {_E(state.error)}</div>')
    if state.hint:
        parts.append(f'<div style="color:#444"><b>hint:</b> {_E(state.hint)}</div>')
    return f'<div class="sft-alerts">{"".join(parts)}</div>' if parts else ""


def outcome_html(state: ProgressState) -> str:
    """Why the run ended early and which checkpoint final/ holds, when it is not the last step."""
    return f'<div style="color:#0a5c36"><b>{_E(state.early_stop)}</b></div>' if state.early_stop else ""


def summary_html(title: str, state: ProgressState, png: bytes | None) -> str:
    """A self-contained record of the run for a saved notebook: no widget state needed."""
    return (
        f'<div class="sft-train-summary">{header_html(title, state)}'
        f"<div>{_E(state.progress_text())}</div>{metrics_html(state)}{outcome_html(state)}{alerts_html(state)}"
        f"{png_img(png)}{samples_html(state)}</div>"
    )


# -- the shared sink: state updates under a lock, throttled draws ---------------------------------
class _Dashboard:
    """Feeds every event to the state; calls ``draw`` at most once per ``interval`` seconds, except
    for events that always draw (a new status, start, evals, the end, a new alert)."""

    interval = 0.25
    trailing = False  # draw what a burst left undrawn, from a timer, once the interval has passed
    ALWAYS = ("started", "status", "eval", *FINAL)

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
            alerts = len(self.state.alerts)
            self.state.update(event)
            self._events += 1
            if self._closed:
                return
            now = self.clock()
            due = self._last is None or now - self._last >= self.interval
            if due or event.kind in self.ALWAYS or len(self.state.alerts) > alerts:
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
        self.image = w.Image(value=b"", format="png", layout=w.Layout(max_width="1024px"))
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
            alerts = len(self.state.alerts)
            self.state.update(event)
            if self._closed:
                return
            for alert in self.state.alerts[alerts:]:
                self._print(f"alert: {alert}")
            now = self.clock()
            if event.kind == "started":
                self._print(self._started_line(event.data))
            elif event.kind == "answers":
                self._print(self._answers_line())
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
