"""A sweep, compared while it trains: one row per trial (its values, state, step, loss, score and
where the score was best), the leader marked ★, and the curves overlaid, one colour per trial (the
same colour in the loss chart and the metric chart). Text, HTML and rich forms, and a live widget
with Stop (all) and Stop / attach per trial.

The record is :func:`core.sweep.record.sweep_record`'s. Every value from the user (a parameter value
can be any text) is escaped in HTML and is plain text in rich."""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..core.sweep.folder import TRIAL_ENDS
from ._dashboard_html import STATUS_COLORS, figure_png, png_img
from ._views import _View

_E = html.escape
STATE_COLORS = {**STATUS_COLORS, "pruned": "#b35c00", "cancelled": "#6c757d", "queued": "#6c757d", "stale": "#dc3545"}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.4g}"
    return str(v)


def _loss(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.4f}"


def trial_color(index: int) -> str:
    from matplotlib import colormaps

    r, g, b, _ = colormaps["tab10"]((index - 1) % 10)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


class SweepView(_View):
    def __init__(self, record: Mapping[str, Any]):
        self.record = dict(record)

    def header(self) -> list[str]:
        return ["", "trial", *self.record["parameters"], "state", "step", "train loss", self.record["metric"], "best @"]

    def rows(self) -> list[list[str]]:
        out = []
        for t in self.record["trials"]:
            steps = (
                "–" if t["steps"] is None else (f"{t['steps']}/{t['max_steps']}" if t["max_steps"] else str(t["steps"]))
            )
            state = str(t["state"])
            if t.get("error"):
                state += f": {str(t['error'])[:80]}"
            out.append(
                [
                    "★" if t["leader"] else "",
                    t["name"],
                    *(_value(t["params"].get(k, "–")) for k in self.record["parameters"]),
                    state,
                    steps,
                    _loss(t["train_loss"]),
                    "–" if t["value"] is None else f"{t['value']:.4f}",
                    "–" if t["value_step"] is None else f"step {t['value_step']}",
                ]
            )
        return out

    def title(self) -> str:
        r = self.record
        done = sum(1 for t in r["trials"] if t["state"] in TRIAL_ENDS)
        planned = r.get("planned") or len(r["trials"])
        goal = "highest" if r["direction"] == "maximize" else "lowest"
        leader = f"; leader {r['leader']}" if r["leader"] else ""
        return (
            f"sweep {r['name']} ({r['method']}): {r['state']}, {done} of {planned} trials done; "
            f"{r['metric']}, {goal} wins{leader}"
        )

    def notes(self) -> list[str]:
        r = self.record
        out = []
        if r.get("error"):
            out.append(f"the sweep's driver stopped on an error: {r['error']}")
        if r["state"] == "stale":
            out.append(f"no driver is running this sweep: %sft_attach {r['name']} starts it again")
        if r.get("best"):
            out.append(
                f"best trial with a model: {r['best']} (use {r['name']}:best in %sft_eval, %sft_chat, %sft_export)"
            )
        return out

    def to_text(self) -> str:
        cells = [self.header(), *self.rows()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join([self.title(), *lines, *self.notes()])

    def chart_png(self) -> bytes | None:
        """Training loss and the compared metric, every trial overlaid in its colour; the leader's
        lines thicker. None while no trial has logged a point."""
        trials = [t for t in self.record["trials"] if t["history"] or t["metric_history"]]
        if not trials:
            return None
        from matplotlib.figure import Figure

        metric = self.record["metric"]
        panels = [("train loss", "history")] + ([] if metric == "loss" else [(metric, "metric_history")])
        fig = Figure(figsize=(5.2 * len(panels), 3.2), dpi=90)
        fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.16, wspace=0.25)
        for i, (label, key) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            steps = []
            for t in trials:
                pts = [(s, v) for s, v in t[key] if isinstance(v, (int, float)) and math.isfinite(v)]
                if not pts:
                    continue
                steps += [p[0] for p in pts]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=trial_color(t["index"]),
                    lw=2.6 if t["leader"] else 1.3,
                    marker="o" if key == "metric_history" else None,
                    ms=4,
                    label=f"{t['index']:02d}" + (" ★" if t["leader"] else ""),
                )
            if steps:
                ax.set_xlim(
                    min(steps) - 0.5, max(steps) + max(1.0, 0.04 * (max(steps) - min(steps)))
                )  # no point cut in half
            ax.set_title(label, fontsize=11)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if i == len(panels) - 1 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", title="trial", title_fontsize="small", loc="best")
        return figure_png(fig)

    def to_html(self) -> str:
        head = "".join(f"<th>{_E(h)}</th>" for h in self.header())
        body = []
        for t, row in zip(self.record["trials"], self.rows()):
            colour = trial_color(t["index"])
            state_colour = STATE_COLORS.get(t["state"], "#333")
            cells = [f'<td style="color:{colour};font-weight:bold">{_E(row[0])}</td>']
            cells.append(f'<td><span style="color:{colour}">■</span> {_E(row[1])}</td>')
            n = len(self.record["parameters"])
            cells += [f"<td>{_E(c)}</td>" for c in row[2 : 2 + n]]
            cells.append(f'<td style="color:{state_colour}">{_E(row[2 + n])}</td>')
            cells += [f'<td style="text-align:right">{_E(c)}</td>' for c in row[3 + n :]]
            weight = ' style="font-weight:bold"' if t["leader"] else ""
            body.append(f"<tr{weight}>{''.join(cells)}</tr>")
        notes = "".join(f"<div>{_E(n)}</div>" for n in self.notes())
        return (
            f'<div class="sft-sweep"><b>{_E(self.title())}</b><table><tr>{head}</tr>{"".join(body)}</table>{notes}'
            f"{png_img(self.chart_png(), alt='loss and ' + self.record['metric'] + ' of every trial')}</div>"
        )

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.title())
        for h in self.header():
            table.add_column(h)
        for t, row in zip(self.record["trials"], self.rows()):
            table.add_row(*[Text(c) for c in row], style="bold" if t["leader"] else None)
        return Group(table, *[Text(n) for n in self.notes()])


class SweepWatch:
    """Follow a sweep until it ends: a widget redrawn as it changes (Stop all, Stop / attach a trial),
    or, in plain and rich modes, a line per trial whose state changes and the table at the end."""

    def __init__(self, path, mode: str, *, on_stop: Callable[[], None], attach: Callable[[str], None]):
        self.path, self.mode, self.on_stop, self.attach = path, mode, on_stop, attach
        self.states: dict[str, str] = {}
        self.record: dict | None = None
        self._last_html = ""
        self.widget = None
        if mode == "widget":
            self._make_widget()

    def _make_widget(self) -> None:
        import ipywidgets as w
        from IPython.display import display

        self.html = w.HTML("")
        self.stop_all = w.Button(
            description="Stop all",
            icon="stop",
            button_style="warning",
            tooltip="stop every trial (checkpoints kept) and start no more",
        )
        self.trial = w.Dropdown(options=[], description="trial", layout=w.Layout(width="420px"))
        self.stop_one = w.Button(description="Stop trial", icon="stop", tooltip="stop this trial (a checkpoint)")
        self.attach_one = w.Button(description="Attach", icon="line-chart", tooltip="show this trial's dashboard below")
        self.out = w.Output()
        self.stop_all.on_click(lambda _b: self._stop_all())
        self.stop_one.on_click(lambda _b: self._stop_trial())
        self.attach_one.on_click(lambda _b: self._attach_trial())
        self.widget = w.VBox([self.html, w.HBox([self.stop_all, self.trial, self.stop_one, self.attach_one]), self.out])
        self._handle = display(self.widget, display_id=True)  # replaced by the static table at the end

    def _stop_all(self) -> None:
        self.stop_all.disabled, self.stop_all.description = True, "stopping…"
        self.on_stop()

    def _stop_trial(self) -> None:
        from ..core.train.follow import request_stop

        if self.trial.value:
            request_stop(self.path.parent / self.trial.value)

    def _attach_trial(self) -> None:
        if self.trial.value:
            with self.out:
                self.out.clear_output()
                self.attach(self.trial.value)

    def update(self, record: dict) -> None:
        self.record = record
        if self.mode == "widget":
            page = SweepView(record).to_html()
            if page != self._last_html:
                self.html.value = self._last_html = page
            names = [t["name"] for t in record["trials"]]
            if list(self.trial.options) != names:
                self.trial.options = names
            if self.trial.value is None and names:
                self.trial.value = names[0]
            return
        for t in record["trials"]:
            if self.states.get(t["name"]) != t["state"] and t["state"] != "queued":
                self.states[t["name"]] = t["state"]
                value = "" if t["value"] is None else f", {record['metric']} {t['value']:.4f}"
                print(f"trial {t['name']}: {t['state']}{value}", flush=True)

    def follow(self, read: Callable[[], dict], ended: Callable[[dict], bool], poll: float = 1.0) -> dict:
        while True:
            record = read()
            self.update(record)
            if ended(record):
                self.close(record)
                return record
            time.sleep(poll)

    def close(self, record: dict) -> None:
        """The live widget becomes the sweep's static table in place: what a saved notebook keeps
        (a widget's state is not saved with it)."""
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.update(SweepView(record))

    def follow_in_background(self, read, ended, poll: float = 1.0) -> threading.Thread:
        thread = threading.Thread(target=self.follow, args=(read, ended, poll), name="sft-sweep-watch", daemon=True)
        thread.start()
        return thread
