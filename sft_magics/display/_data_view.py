"""The data doctor's views: :class:`DataView` (the report of ``%sft_data``) and :class:`RowBrowser`
(an ipywidgets browser over the rows, valid and invalid).

Every piece of data text (rows, reasons that quote row values, the source name, notes) passes
through ``html.escape`` before it goes into HTML: notebook outputs and ipywidgets' ``HTML`` set
innerHTML unsanitised. ipywidgets is imported only when the browser's widget is first built.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from typing import Any

from ._views import _View

PROBLEMS_SHOWN = 20  # invalid rows listed in the report (then a count)
ROWS_LISTED = 10  # row indices listed after a truncation count


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _rows_list(rows: list[int], limit: int = ROWS_LISTED) -> str:
    shown = ", ".join(map(str, rows[:limit]))
    return shown + (f", … ({len(rows) - limit} more)" if len(rows) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class DataView(_View):
    """The report: source and format, normalisation notes, invalid rows, tokens per example, what
    ``max_length`` cuts, duplicates, roles and turns, the cost of an epoch; in HTML also a histogram."""

    title = "data report"

    def __init__(self, data, stats):
        self.data, self.stats = data, stats
        self._png: bytes | None = None

    # -- content shared by every form ---------------------------------------------------------------
    def header(self) -> str:
        s, d = self.stats, self.data
        line = f"source: {d.source} · format: {d.source_format} → {d.format} · {s.rows} rows"
        if getattr(d, "sampled_from", None):
            line += f" (a random sample of the {d.sampled_from:,} valid rows: every count below is the sample's)"
        if s.invalid_rows:
            line += f" ({s.invalid_rows} invalid rows left out of {s.source_rows})"
        return line

    def notes(self) -> list[str]:
        out = list(self.data.notes)
        if self.stats.mask_method:
            out.append(f"trained tokens: {self.stats.mask_method}")
        return out

    def problem_lines(self) -> list[str]:
        """Invalid rows (left out) and rows the template could not render: the first PROBLEMS_SHOWN."""
        s = self.stats
        problems = list(s.problems) + list(s.template_errors)
        if not problems:
            return []
        lines = []
        if s.problems:
            lines.append(
                f"invalid rows: {s.invalid_rows} of {s.source_rows} rows are invalid and left out of the statistics"
            )
        if s.template_errors:
            lines.append(f"{len(s.template_errors)} rows could not be rendered by the chat template (not counted)")
        lines += [f"  {p}" for p in problems[:PROBLEMS_SHOWN]]
        if len(problems) > PROBLEMS_SHOWN:
            lines.append(f"  … and {len(problems) - PROBLEMS_SHOWN} more problems")
        return lines

    def table(self) -> tuple[list[str], list[list[Any]]]:
        s = self.stats
        summary = s.summary()
        labels = {"total_tokens": "total tokens", "trained_tokens": "trained tokens"}
        if s.max_length is not None:
            labels = {
                "total_tokens": "total tokens",
                "trained_tokens_full": "trained tokens",
                "trained_tokens": f"trained tokens kept at max_length {s.max_length}",
            }
        cols = ["min", "mean", "median", "p95", "max"]
        return ["tokens per example", *cols], [[label, *(summary[k][c] for c in cols)] for k, label in labels.items()]

    def finding_lines(self) -> list[str]:
        s = self.stats
        lines = []
        if s.max_length is not None:
            lines.append(
                f"max_length {s.max_length}: {s.truncated} rows truncated, {s.no_trained_left} with no trained token left "
                f"(TRL drops those silently), {s.end_lost} lose their answer's end token (trained on an answer cut mid-way)"
            )
            for label, rows in (
                ("truncated", s.truncated_rows),
                ("no trained token left", s.no_trained_rows),
                ("end token lost", s.end_lost_rows),
            ):
                if rows:
                    lines.append(f"  {label}: rows {_rows_list(rows)}")
        elif s.no_trained_left:
            lines.append(f"{s.no_trained_left} rows have no trained token: rows {_rows_list(s.no_trained_rows)}")
        if s.duplicates:
            groups = "; ".join(
                "rows " + " = ".join(map(str, g[:6])) + (" = …" if len(g) > 6 else "") for g in s.duplicate_groups
            )
            more = " …" if s.duplicate_group_count > len(s.duplicate_groups) else ""
            lines.append(
                f"duplicates: {s.duplicates} {'row repeats' if s.duplicates == 1 else 'rows repeat'} an earlier row exactly "
                f"({_plural(s.duplicate_group_count, 'group')}): {groups}{more}"
            )
        else:
            lines.append("duplicates: none")
        if s.roles:
            line = "roles: " + ", ".join(f"{r} {n}" for r, n in sorted(s.roles.items()))
            t = s.turns_summary()
            if t:
                line += f" · assistant turns per conversation: min {t['min']} · mean {t['mean']:.2f} · max {t['max']}"
            lines.append(line)
        steps = s.steps_per_epoch()
        line = f"{steps} optimizer steps per epoch at batch size {s.batch_size}"
        if s.grad_accum > 1:
            line += f" × gradient accumulation {s.grad_accum} ({s.batch_size * s.grad_accum} rows per step)"
        dropped = s.rows - s.rows_trained
        if dropped:
            line += (
                f"; {s.steps_per_epoch(after_drops=True)} once TRL drops the {dropped} rows with no trained token left"
            )
        lines.append(line)
        lines.append(f"tokens per epoch: {s.tokens_per_epoch:,} read, {s.trained_tokens_per_epoch:,} trained")
        return lines

    # -- text ---------------------------------------------------------------------------------------
    def to_text(self) -> str:
        from ._views import TableView

        header, rows = self.table()
        rows = [[f"{v:.1f}" if isinstance(v, float) else v for v in r] for r in rows]
        table = TableView(header[0], ["", *header[1:]], rows).to_text()
        parts = [self.header(), *[f"  {n}" for n in self.notes()], *self.problem_lines(), table, *self.finding_lines()]
        return "\n".join(parts)

    # -- HTML ---------------------------------------------------------------------------------------
    def histogram_png(self) -> bytes:
        if self._png is None:
            self._png = histogram_png(self.stats)
        return self._png

    def to_html(self) -> str:
        header, rows = self.table()
        cell = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
        head = "".join(f"<th>{_e(h)}</th>" for h in ["", *header[1:]])
        body = "".join("<tr>" + "".join(f"<td>{_e(cell(v))}</td>" for v in r) + "</tr>" for r in rows)
        problems = self.problem_lines()
        problem_html = ""
        if problems:
            items = "".join(f"<li>{_e(p.strip())}</li>" for p in problems[1:])
            problem_html = (
                f'<div class="sft-problems" style="color:#b91c1c"><b>{_e(problems[0])}</b><ul>{items}</ul></div>'
            )
        notes = "".join(f"<li>{_e(n)}</li>" for n in self.notes())
        findings = "".join(f"<div>{_e(line)}</div>" for line in self.finding_lines())
        png = base64.b64encode(self.histogram_png()).decode("ascii")
        return (
            '<div class="sft-data">'
            f"<div><b>{_e(self.title)}</b></div><div>{_e(self.header())}</div>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + problem_html
            + f'<table><caption style="text-align:left">{_e(header[0])}</caption><tr>{head}</tr>{body}</table>'
            + findings
            + f'<img alt="histogram of tokens per example" src="data:image/png;base64,{png}"/>'
            "</div>"
        )

    # -- rich ---------------------------------------------------------------------------------------
    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        header, rows = self.table()
        table = Table(title=header[0])
        for h in ["", *header[1:]]:
            table.add_column(h)
        for r in rows:
            table.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in r])
        parts = [Text(self.header(), style="bold"), *[Text(f"  {n}") for n in self.notes()]]
        parts += [Text(p, style="red") for p in self.problem_lines()]
        parts.append(table)
        parts += [Text(line) for line in self.finding_lines()]
        return Group(*parts)


def _rendering_view(rendering, title: str):
    from ._template_view import RenderingView

    return RenderingView(rendering, title=title)


class RowBrowser:
    """Browse the rows of a dataset through the model's eyes: Prev / Next, a row number, and a
    "jump to a bad row" list. Row numbers are source rows (as in the problem list): a valid row is
    shown as the trainer will see it (RenderingView, with what ``max_length`` cuts), an invalid row
    as its raw content with its reasons.

    The ipywidgets are built on first use of :attr:`widget`; :meth:`row_html` works without them.
    """

    def __init__(self, data, tokenizer, stats=None, *, max_length: int | None = None):
        self.data, self.tokenizer, self.stats = data, tokenizer, stats
        self.max_length = stats.max_length if stats is not None and max_length is None else max_length
        self._position = {data.source_index(i): i for i in range(len(data))}
        self._raw = dict(getattr(data, "invalid_rows", ()) or ())
        self.reasons: dict[int, list[str]] = defaultdict(list)
        for p in list(getattr(data, "problems", ()) or ()) + list(getattr(stats, "template_errors", ()) or ()):
            self.reasons[p.row].append(f"{p.field}: {p.reason}")
        sampled = getattr(data, "sampled_from", None)  # a sample: the source's rows, valid and invalid
        self.n_rows = max([*self._position, *self._raw, -1]) + 1 if sampled is None else sampled + len(self._raw)
        self.rows = sorted({*self._position, *self._raw})  # the source rows there are (a sample has gaps)
        self._method = None
        self._widget = None

    # -- content ------------------------------------------------------------------------------------
    def bad_rows(self) -> list[int]:
        return sorted(self.reasons)

    def _mask_method(self):
        if self._method is None and self.data.format == "messages":
            from ..core.template.tokens import choose_mask_method

            self._method = choose_mask_method(self.tokenizer)
        return self._method

    def _stats_line(self, position: int) -> str:
        s = self.stats
        if s is None or position >= len(s.total_tokens):
            return ""
        parts = [
            f"{s.total_tokens[position]} tokens",
            f"{s.trained_tokens_full[position] if s.trained_tokens_full else s.trained_tokens[position]} trained",
        ]
        if s.max_length is not None:
            index = self.data.source_index(position)
            if index in set(s.no_trained_rows):
                parts.append(f"⚠ no trained token left at max_length {s.max_length} (TRL drops this row)")
            elif index in set(s.end_lost_rows):
                parts.append(f"⚠ the answer's end token is cut at max_length {s.max_length}")
            elif index in set(s.truncated_rows):
                parts.append(f"truncated at max_length {s.max_length}")
        return " · ".join(parts)

    def row_html(self, index: int) -> str:
        """HTML for source row ``index`` (escaped)."""
        head = f"row {index} of {self.n_rows}"
        if index in self._position and index not in self.reasons:
            from ..core.template.render import TemplateError
            from ..core.template.tokens import tokenize_row

            position = self._position[index]
            try:
                rendering = tokenize_row(
                    self.tokenizer, self.data.dataset[position], self.data.format, method=self._mask_method()
                )
            except TemplateError as err:
                return f'<div class="sft-row"><b>{_e(head)}</b><div style="color:#b91c1c">{_e(err)}</div></div>'
            rendering.max_length = self.max_length
            stats_line = self._stats_line(position)
            view = _rendering_view(rendering, title=head + (f" · {stats_line}" if stats_line else ""))
            return f'<div class="sft-row">{view.to_html()}</div>'
        reasons = self.reasons.get(index, [])
        raw = self._raw.get(index)
        if raw is None and index in self._position:
            raw = self.data.dataset[self._position[index]]
        if raw is None and not reasons:
            return f'<div class="sft-row"><b>{_e(head)}</b>: no such row</div>'
        if hasattr(raw, "reason") and not isinstance(raw, dict):  # an unreadable line
            raw_text = f"(could not be read) {raw.reason}"
        else:
            raw_text = json.dumps(raw, ensure_ascii=False, indent=2, default=str)
        items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
        return (
            f'<div class="sft-row"><b>{_e(head)}</b> — <span style="color:#b91c1c">invalid, left out of training</span>'
            f'<ul>{items}</ul><pre style="white-space:pre-wrap">{_e(raw_text)}</pre></div>'
        )

    # -- widgets ------------------------------------------------------------------------------------
    @property
    def widget(self):
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self):
        import ipywidgets as w

        last = max(0, self.n_rows - 1)
        self.prev_button = w.Button(description="◀ Prev", layout=w.Layout(width="80px"))
        self.next_button = w.Button(description="Next ▶", layout=w.Layout(width="80px"))
        first = self.rows[0] if self.rows else 0
        self.row_input = w.BoundedIntText(
            value=first, min=0, max=last, description="row", layout=w.Layout(width="160px")
        )
        bad = self.bad_rows()
        options = [(f"jump to a bad row ({len(bad)})" if bad else "no bad rows", -1)]
        options += [(f"row {r}: {self.reasons[r][0]}"[:120], r) for r in bad]
        self.bad_dropdown = w.Dropdown(options=options, value=-1, disabled=not bad, layout=w.Layout(width="360px"))
        self.html = w.HTML(value=self.row_html(first))

        def step(delta):  # to the next / previous row there is (in a sample: the next sampled row)
            from bisect import bisect_left, bisect_right

            if not self.rows:
                return
            at = self.row_input.value
            i = bisect_right(self.rows, at) if delta > 0 else bisect_left(self.rows, at) - 1
            self.row_input.value = self.rows[min(len(self.rows) - 1, max(0, i))]

        self.prev_button.on_click(lambda _b: step(-1))
        self.next_button.on_click(lambda _b: step(+1))

        def on_row(change):
            self.html.value = self.row_html(change["new"])

        def on_bad(change):
            if change["new"] is not None and change["new"] >= 0:
                self.row_input.value = change["new"]

        self.row_input.observe(on_row, names="value")
        self.bad_dropdown.observe(on_bad, names="value")
        controls = w.HBox([self.prev_button, self.row_input, self.next_button, self.bad_dropdown])
        return w.VBox([controls, self.html])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def histogram_png(stats, *, width: float = 7.0, height: float = 2.8, dpi: int = 100) -> bytes:
    """PNG of two histograms: total tokens and trained tokens per example (before truncation), with the
    ``max_length`` cut drawn as a vertical line. Uses a bare matplotlib Figure (Agg), so no pyplot
    state (current figure, backend) is touched."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=False)
    series = [
        ("total tokens per example", stats.total_tokens, "#4c72b0"),
        ("trained tokens per example", stats.trained_tokens_full or stats.trained_tokens, "#55a868"),
    ]
    for ax, (title, values, color) in zip(axes, series):
        if values:
            ax.hist(values, bins=min(40, max(1, len(set(values)))), color=color, alpha=0.85)
        if stats.max_length is not None:
            ax.axvline(
                stats.max_length, color="#c44e52", linestyle="--", linewidth=1.5, label=f"max_length {stats.max_length}"
            )
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tokens", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("examples", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
