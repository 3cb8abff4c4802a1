"""The dashboard's pieces, drawn from a ProgressState: the loss/metric chart as a PNG, the header, metrics row, alerts and sample answers as HTML, and the static summary a saved notebook keeps."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

from ..core.progress import ProgressState
from ._style import extra, note, text_table

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
            self.max.set_title(f"{metric} (generated answers)", fontsize="medium")
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
        # The whole run on the x axis (the line shows how far it got), with room for the last
        # step's marker: a point on the edge is drawn cut in half.
        self.ax.set_xlim(0, right + max(0.5, 0.03 * right))
        handles = [h for h, xs in ((self.train, tx), (self.eval, ex)) if xs]
        if handles:
            self.ax.legend(handles=handles, loc="upper right", fontsize="small")
        if self.max is not None:
            mx, my = _finite(metric_points)
            self.curve.set_data(mx, my)
            self.best_point.set_data([best[1]] if best else [], [best[0]] if best else [])
            self.max.set_xlim(*self.ax.get_xlim())
            low, high = min(my, default=0.0), max(my, default=1.0)
            pad = 0.08 * (max(1.0, high) - min(0.0, low))  # the best star (12 pt) whole at 0 and 1
            self.max.set_ylim(min(0.0, low) - pad, max(1.0, high) + pad)
        return figure_png(self.fig)


def samples_html(state: ProgressState) -> str:
    """The latest sample answers: prompt, reference, the answer now (where it differs from the
    reference marked) and at the previous evaluation. Every text is escaped."""
    from ..core.train.watch import diff_segments

    a = state.answers
    samples = a.get("samples") or []
    if not samples:
        return ""

    def marked(answer: str, reference: str) -> str:
        return "".join(_E(text) if same else extra(_E(text)) for text, same in diff_segments(answer, reference))

    def shown(text) -> str:
        return _E(str(text)) if str(text).strip() else note("(empty answer)")

    rows = []
    for x in samples:
        answer, reference = str(x.get("answer") or ""), str(x.get("reference") or "")
        ended = "" if x.get("ended", True) is not False else " " + note("(no end token)")
        previous = x.get("previous")
        now = marked(answer, reference) if answer.strip() else note("(empty answer)")
        rows.append(
            [_E(str(x.get("prompt") or "")), _E(reference), now + ended, "–" if previous is None else shown(previous)]
        )
    scores = " · ".join(f"{_E(str(k))} {float(v):.3f}" for k, v in (a.get("metrics") or {}).items() if _number_ok(v))
    counts = "".join(
        f", {_E(str(a.get(k)))} {what}" for k, what in (("never_ended", "never ended"), ("empty", "empty")) if a.get(k)
    )
    caption = f"answers at step {_E(str(a.get('step')))} ({_E(str(a.get('rows')))} rows{counts}): {scores}"
    if state.watch.get("by_default"):
        caption += " · watched by default for a small eval set (eval_generate: false turns it off)"
    table = text_table(("prompt", "reference", "answer now", "previous answer"), rows, (40, 20, 20, 20))
    return f'<div class="sft-samples"><div style="color:#444;font-size:90%">{caption}</div>{table}</div>'


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
    info = " · ".join(t for t in (state.job_text(), info_text(state)) if t)
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
