"""What ``%sft_eval`` shows: a summary table (metric × model, deltas against the base model), the
worst examples, a pager over every example (notebook), and generation progress.

Every piece of dataset or model text is ``html.escape``d first; only then are the difference
marks (``<ins>`` / ``<del>``) put around the escaped words (ipywidgets' HTML sets innerHTML).
"""

from __future__ import annotations

import difflib
import html
import math
import re

from ._style import extra, missing, note, text_table
from ._views import _View

_E = html.escape
_WORDS = re.compile(r"\s+|\w+|[^\w\s]")
_STYLE = (
    "<style>.sft-eval td,.sft-eval th{vertical-align:top;text-align:left;padding:2px 6px}"
    ".sft-eval .s{color:#666;font-size:smaller;font-family:var(--jp-ui-font-family,sans-serif)}</style>"
)


def fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def fmt_delta(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+,.0f}" if abs(value) >= 1000 else f"{value:+.3f}"


def diff_html(reference: str, answer: str) -> str:
    """The answer, escaped, with words it adds marked ``<ins>`` and the reference's words it lacks
    marked ``<del>`` (a word-level difflib diff)."""
    ref, ans = _WORDS.findall(reference), _WORDS.findall(answer)
    out = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, ref, ans, autojunk=False).get_opcodes():
        deleted, inserted = _E("".join(ref[a1:a2])), _E("".join(ans[b1:b2]))
        if op == "equal":
            out.append(inserted)
            continue
        if op in ("delete", "replace"):
            out.append(missing(deleted))
        if op in ("insert", "replace"):
            out.append(extra(inserted))
    return "".join(out)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class EvalView(_View):
    """The summary table and the ``worst`` worst examples (by the report's primary metric)."""

    def __init__(self, report, *, worst: int = 5, title: str | None = None):
        self.report, self.worst = report, worst
        n = len(report.eval_examples)
        self.title = title or f"evaluation on {n} examples"

    # -- the summary -------------------------------------------------------------------------
    def header(self) -> list[str]:
        ref = self.report.reference_label
        labels = list(self.report)
        return ["metric", *labels, *(f"Δ {lb} vs {ref}" for lb in labels if ref and lb != ref)]

    def rows(self) -> list[list[str]]:
        r, ref = self.report, self.report.reference_label
        labels, deltas = list(r), r.deltas()
        others = [lb for lb in labels if ref and lb != ref]
        rows = []
        for metric, values in r.summary.items():
            arrow = "↑" if r.higher_better(metric) else "↓"
            rows.append(
                [
                    f"{metric} {arrow}",
                    *(fmt(values.get(lb, float("nan"))) for lb in labels),
                    *(fmt_delta(deltas.get(metric, {}).get(lb, float("nan"))) for lb in others),
                ]
            )
        tokens = r.prompt_tokens
        rows.append(
            [
                "prompt tokens / request",
                *(f"{tokens[lb]:.1f}" for lb in labels),
                *(fmt_delta(tokens[lb] - tokens[ref]) for lb in others),
            ]
        )
        if any(r[lb].generated for lb in labels):
            for name, count in (("empty answers", "empty_answers"), ("never ended (cut at max tokens)", "never_ended")):
                rows.append(
                    [
                        name,
                        *(f"{getattr(r[lb], count)} of {len(r[lb].predictions)}" for lb in labels),
                        *([""] * len(others)),
                    ]
                )
        rows.append(["seconds", *(f"{r[lb].seconds:.1f}" for lb in labels), *([""] * len(others))])
        return rows

    def notes(self) -> list[str]:
        r = self.report
        notes = []
        if r.shots:
            notes.append(
                f"few_shot: the base model prompted with {len(r.shots)} training examples before each question"
            )
        s = r.settings
        if s:
            decoding = (
                "greedy"
                if not s.get("temperature")
                else f"sampling (temperature {s['temperature']}, top_p {s['top_p']})"
            )
            notes.append(f"{decoding}, max {s.get('max_new_tokens')} new tokens, batch {s.get('batch_size')}")
        if r.saved_to:
            notes.append(f"saved to {r.saved_to}")
        return notes

    def worst_indices(self) -> list[int]:
        return self.report.order(self.report.primary_metric)[: self.worst] if self.worst else []

    # -- renderers ---------------------------------------------------------------------------
    def to_text(self) -> str:
        header, rows = self.header(), self.rows()
        cells = [header] + rows
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = [self.title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines += self.notes()
        idx = self.worst_indices()
        if idx:
            metric = self.report.primary_metric
            lines.append(f"worst {len(idx)} by {metric} ({next(iter(self.report))}):")
            for i in idx:
                lines.extend(self._example_lines(i))
        return "\n".join(lines)

    def _example_lines(self, i: int) -> list[str]:
        r, ex, metric = self.report, self.report.eval_examples[i], self.report.primary_metric
        lines = [f"#{i}  prompt: {_short(ex.question)}", f"     reference: {_short(ex.reference)}"]
        for label, res in r.items():
            lines.append(
                f"     {label}: {_short(res.predictions[i]) or '(empty answer)'}  [{metric} {fmt(res.scores[metric][i])}]"
            )
        return lines

    def to_html(self) -> str:
        head = "".join(f"<th>{_E(h)}</th>" for h in self.header())
        body = "".join("<tr>" + "".join(f"<td>{_E(c)}</td>" for c in row) + "</tr>" for row in self.rows())
        notes = "".join(f"<div class='s'>{_E(n)}</div>" for n in self.notes())
        worst = ""
        idx = self.worst_indices()
        if idx:
            caption = f"worst {len(idx)} by {self.report.primary_metric} ({next(iter(self.report))})"
            worst = f"<div><b>{_E(caption)}</b></div>" + examples_table_html(self.report, idx)
        return (
            f'<div class="sft-eval">{_STYLE}<b>{_E(self.title)}</b><table><tr>{head}</tr>{body}</table>'
            f"{notes}{worst}</div>"
        )

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.title)
        for h in self.header():
            table.add_column(h)
        for row in self.rows():
            table.add_row(*row)
        parts = [table, *(Text(n) for n in self.notes())]
        idx = self.worst_indices()
        if idx:
            worst = Table(
                title=f"worst {len(idx)} by {self.report.primary_metric} ({next(iter(self.report))})", show_lines=True
            )
            labels = list(self.report)
            for h in ["#", "prompt", "reference", *labels]:
                worst.add_column(h)
            for i in idx:
                ex = self.report.eval_examples[i]
                answers = []
                for lb in labels:
                    res, metric = self.report[lb], self.report.primary_metric
                    answers.append(
                        Text(f"{_short(res.predictions[i]) or '(empty answer)'}\n")
                        + Text(f"{metric} {fmt(res.scores[metric][i])}", style="dim")
                    )
                worst.add_row(str(i), Text(_short(ex.question)), Text(_short(ex.reference)), *answers)
            parts.append(worst)
        return Group(*parts)


def examples_table_html(report, indices) -> str:
    """Per-example table: prompt (last user message), reference, each model's answer with its
    differences from the reference marked, and its scores, one per line."""
    labels = list(report)
    rows = []
    for i in indices:
        ex = report.eval_examples[i]
        cells = [str(i), _E(ex.question), _E(ex.reference)]
        for lb in labels:
            res = report[lb]
            answer = res.predictions[i]
            scores = "<br>".join(f"{_E(m)} {_E(fmt(v[i]))}" for m, v in res.scores.items())
            text = (
                diff_html(ex.reference, answer)
                if answer.strip()
                else note("(empty answer)") + missing(_E(ex.reference))
            )
            cells.append(f"{text}<div class='s'>{scores}</div>" if res.scores else text)
        rows.append(cells)
    rest = 100 - 4 - 32 - 18
    shares = (4, 32, 18, *([rest / max(1, len(labels))] * len(labels)))
    return text_table(["#", "prompt", "reference", *labels], rows, shares)


class EvalBrowser:
    """Notebook pager over every example: Prev / Next and a sort key ("worst first by <metric>",
    by the first model's scores). ``.widget`` is the ipywidgets box to display."""

    ORIGINAL = ""

    def __init__(self, report, *, page_size: int = 5):
        import ipywidgets as w

        self.report, self.page_size, self.page = report, page_size, 0
        options = [("original order", self.ORIGINAL)] + [(f"worst first by {m}", m) for m in report.metrics]
        self.sort = w.Dropdown(options=options, value=report.primary_metric or self.ORIGINAL, description="sort")
        self.prev = w.Button(description="◀ Prev", layout=w.Layout(width="90px"))
        self.next = w.Button(description="Next ▶", layout=w.Layout(width="90px"))
        self.position = w.Label()
        self.table = w.HTML()
        self.prev.on_click(lambda _: self.go(self.page - 1))
        self.next.on_click(lambda _: self.go(self.page + 1))
        self.sort.observe(lambda _: self.go(0), names="value")
        self.widget = w.VBox([w.HBox([self.prev, self.next, self.position, self.sort]), self.table])
        self.go(0)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self.report.eval_examples) / self.page_size))

    def order(self) -> list[int]:
        return self.report.order(self.sort.value or None)

    def indices(self) -> list[int]:
        return self.order()[self.page * self.page_size : (self.page + 1) * self.page_size]

    def go(self, page: int) -> None:
        self.page = min(max(0, page), self.pages - 1)
        self.prev.disabled, self.next.disabled = self.page == 0, self.page >= self.pages - 1
        n = len(self.report.eval_examples)
        first = self.page * self.page_size
        self.position.value = f"examples {first + 1 if n else 0}–{min(n, first + self.page_size)} of {n} · page {self.page + 1}/{self.pages}"
        self.table.value = f'<div class="sft-eval">{_STYLE}{examples_table_html(self.report, self.indices())}</div>'


class LineProgress:
    """A line per batch (plain text), from the core :class:`StageProgress`."""

    def __init__(self):
        from ..core.progress import StageProgress

        self.state = StageProgress()

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.state(stage, done, total)
        print(f"[eval] {self.state.text()}", flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """Terminal IPython: a rich progress bar with the stage, elapsed time and ETA; kept when done."""

    def __init__(self, console=None):
        from rich.live import Live

        from ..core.progress import StageProgress

        self.state = StageProgress()
        self._live = Live(self, console=console, refresh_per_second=4, transient=False)
        self._live.start()

    def __rich__(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.state
        row = Table.grid(padding=(0, 1))
        row.add_row(
            Text("eval", style="bold"), ProgressBar(total=max(1, s.total), completed=s.done, width=30), Text(s.text())
        )
        return row

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.state(stage, done, total)

    def close(self) -> None:
        self._live.refresh()
        self._live.stop()


class WidgetProgress:
    """An ``IntProgress`` bar with the stage, elapsed time and ETA beside it; removed when the
    evaluation ends (the report takes its place)."""

    def __init__(self):
        import ipywidgets as w
        from IPython.display import display

        from ..core.progress import StageProgress

        self.state = StageProgress()
        self.bar = w.IntProgress(value=0, min=0, max=1, description="eval")
        self.label = w.Label("starting")
        self.box = w.HBox([self.bar, self.label])
        display(self.box)

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.state(stage, done, total)
        self.bar.max = max(1, total)
        self.bar.value = done
        self.label.value = self.state.text()

    def close(self) -> None:
        self.box.close()


def eval_progress(mode: str):
    """The progress display for ``mode`` (widget falls back to lines without ipywidgets)."""
    if mode == "widget":
        try:
            return WidgetProgress()
        except ImportError:
            pass
    if mode == "rich":
        return RichProgress()
    return LineProgress()
