"""A table of training runs and, in HTML, one chart with every run's loss curve.

Records are plain dicts (what a run folder's ``status.json`` / ``metrics.jsonl`` give):
``{name, model, dataset, steps, max_steps, status, train_loss, eval_loss, best, history}`` with
``history`` a list of ``(step, loss)``. Missing keys show as "–".
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._views import _View

_E = html.escape
HEADER = ("run", "model", "dataset", "steps", "status", "train loss", "eval loss", "best")


def _cell_loss(v: Any) -> str:
    try:
        return "–" if v is None else f"{float(v):.4f}"
    except (TypeError, ValueError):
        return str(v)


def _number(v: Any) -> float | None:
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _label(name: str) -> str:
    # matplotlib reads $...$ as math and hides legend labels that start with "_".
    name = name.replace("$", r"\$")
    return f" {name}" if name.startswith("_") else name


def _status(r: Mapping[str, Any]) -> str:
    """The state, with the live process id (or a live SLURM job's state) and the world size when there are any."""
    text = str(r.get("status") or "–")
    if r.get("pid"):
        text += f" (pid {r['pid']})"
    job = r.get("job") or {}
    if job.get("job_id") and r.get("status") not in ("finished", "stopped", "failed"):
        text += f" (SLURM job {job['job_id']}: {job.get('text') or '?'})"
    if (r.get("world_size") or 1) > 1:
        text += f" ×{r['world_size']} processes"
    if r.get("status") in ("failed", "stale"):  # the cause, not only the word
        cause = str(r.get("error") or "its process ended without a final status")
        text += f": {cause[:80]}{'…' if len(cause) > 80 else ''}"
    if r.get("damaged"):  # files that could not all be read: the run is shown, and so is what is wrong
        text += f" — damaged: {str(r['damaged'])[:80]}{'…' if len(str(r['damaged'])) > 80 else ''}"
    return text


class RunsView(_View):
    """Runs side by side: name, model, dataset, steps, status, final train and eval loss, and the best
    value of the generated metric the run followed (``json_match 0.975 @ step 30``)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], title: str = "runs"):
        self.records = [dict(r) for r in records]
        self.title = title

    def rows(self) -> list[list[str]]:
        out = []
        for r in self.records:
            steps, max_steps = r.get("steps"), r.get("max_steps")
            steps_text = "–" if steps is None else (f"{steps}/{max_steps}" if max_steps else str(steps))
            out.append(
                [
                    str(r.get("name", "?")),
                    str(r.get("model") or "–"),
                    str(r.get("dataset") or "–"),
                    steps_text,
                    _status(r),
                    _cell_loss(r.get("train_loss")),
                    _cell_loss(r.get("eval_loss")),
                    str(r.get("best") or "–"),
                ]
            )
        return out

    def to_text(self) -> str:
        if not self.records:
            return f"{self.title}: no runs"
        cells = [list(HEADER)] + self.rows()
        widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join([self.title, *lines])

    def chart_png(self) -> bytes | None:
        """Every run's loss curve on one axis (None when no run has a finite loss)."""
        series = []
        for r in self.records:
            pts = [
                (s, v)
                for s, v in ((s, _number(loss)) for s, loss in r.get("history") or [])
                if v is not None and math.isfinite(v)
            ]
            if pts:
                series.append((str(r.get("name", "?")), pts))
        if not series:
            return None
        from matplotlib.figure import Figure

        from ._dashboard_html import figure_png

        fig = Figure(figsize=(6.4, 3.0), dpi=90)
        ax = fig.add_subplot()
        fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.16)
        for name, pts in series:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5, label=_label(name))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper right")
        return figure_png(fig)

    def to_html(self) -> str:
        from ._dashboard_html import png_img

        head = "".join(f"<th>{_E(h)}</th>" for h in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{_E(c)}</td>" for c in row) + "</tr>" for row in self.rows())
        empty = "" if self.records else "<div>no runs</div>"
        return (
            f'<div class="sft-runs"><b>{_E(self.title)}</b><table><tr>{head}</tr>{body}</table>{empty}'
            f"{png_img(self.chart_png(), alt='loss curves')}</div>"
        )

    def __rich__(self):
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.title)
        for h in HEADER:
            table.add_column(h, justify="right" if "loss" in h or h == "steps" else "left")
        for row in self.rows():
            table.add_row(*[Text(c) for c in row])  # Text: a name like "[red]x" is not rich markup
        return table
