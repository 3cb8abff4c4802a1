"""Static views: each has text, HTML and rich forms. Every piece of data or model text that goes
into HTML passes through ``html.escape`` (ipywidgets' HTML and notebook outputs set innerHTML)."""

from __future__ import annotations

import html
from collections.abc import Sequence

_E = html.escape


class _View:
    def to_text(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.to_text())

    def __rich__(self):
        from rich.text import Text

        return Text(self.to_text())


class TableView(_View):
    """A small titled table (data summaries, evaluation results)."""

    def __init__(self, title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()):
        self.title, self.header, self.rows, self.notes = title, list(header), [list(r) for r in rows], list(notes)

    @staticmethod
    def _cell(v) -> str:
        if not isinstance(v, float):
            return str(v)
        # 3 decimals, but a small value keeps its digits: learning_rate 0.0002 is not "0.000"
        return f"{v:.3g}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"

    def to_text(self) -> str:
        cells = [self.header] + [[self._cell(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        lines = [self.title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join(lines + self.notes)

    def to_html(self) -> str:
        head = "".join(f"<th>{_E(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{_E(self._cell(v))}</td>" for v in r) + "</tr>" for r in self.rows)
        notes = "".join(f"<div>{_E(n)}</div>" for n in self.notes)
        return f"<div><b>{_E(self.title)}</b><table><tr>{head}</tr>{body}</table>{notes}</div>"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.title)
        for h in self.header:
            table.add_column(h)
        for r in self.rows:
            table.add_row(*[self._cell(v) for v in r])
        return Group(table, *[Text(n) for n in self.notes])
