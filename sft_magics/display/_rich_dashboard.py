"""The terminal IPython dashboard: a ``rich.live.Live`` view of the same :class:`ProgressState`
the widget and plain dashboards read."""

from __future__ import annotations

from collections.abc import Callable

from ..core.progress import FINAL
from ._dashboard import RICH_STYLES, _Dashboard
from ._dashboard_html import info_text


class _RichView:
    """What the Live display renders, built from the state at every refresh (so elapsed and ETA
    tick between events). Reads the state without its lock: scalars are replaced atomically and
    lists only grow; taking the lock here could deadlock against Live's own lock."""

    def __init__(self, dashboard: RichDashboard):
        self.d = dashboard

    def __rich__(self):
        from rich import box
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s, title = self.d.state, self.d.title
        head = Text.assemble((title, "bold"), "  ", (s.status, RICH_STYLES.get(s.status, "")))
        info = " · ".join(t for t in (s.job_text(), info_text(s)) if t)
        if info:
            head.append(f"  {info}", style="dim")
        total = max(s.max_steps, s.step) or None
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total, completed=s.step, width=40), Text(s.progress_text()))
        metrics = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
        rows = s.metrics()
        for k, _ in rows:
            metrics.add_column(Text(k), justify="right")  # a registered metric's name is not rich markup
        metrics.add_row(*[v for _, v in rows])
        parts = [head, bar, metrics]
        answers = s.answers
        for x in (answers.get("samples") or [])[:3]:  # compact: one line per sample answer
            answer = " ".join(str(x.get("answer") or "(empty)").split())
            same = answer == " ".join(str(x.get("reference") or "").split())
            line = Text.assemble(
                ("✓ " if same else "✗ ", "green" if same else "red"),
                (f"step {answers.get('step')}: ", "dim"),
                answer[:100] + ("…" if len(answer) > 100 else ""),
            )
            parts.append(line)
        if s.early_stop:
            parts.append(Text(s.early_stop, style="bold green"))
        parts += [Text(f"⚠ {a}", style="yellow") for a in list(s.alerts)]
        if s.error:
            parts.append(Text(f"error: {s.error}", style="bold red"))
        if s.hint:
            parts.append(Text(f"hint: {s.hint}"))
        return Group(*parts)


class RichDashboard(_Dashboard):
    """A ``rich.live.Live`` view (4 refreshes a second) with a progress bar, the metrics and alerts."""

    def __init__(self, title: str = "training", on_stop: Callable[[], None] | None = None, *, console=None):
        super().__init__(title, on_stop)
        from rich.live import Live

        self.view = _RichView(self)
        self._live = Live(self.view, console=console, refresh_per_second=4, transient=False)
        self._live.start()

    def draw(self, event) -> None:
        # Live redraws the view 4 times a second by itself; refresh at once only for the end.
        if event is not None and event.kind in FINAL:
            self._live.refresh()

    def __rich__(self):
        return self.view.__rich__()

    def close(self) -> None:
        if not self._finish():
            return
        with self._lock:
            self.state.end()
            self.draws += 1
        self._live.stop()  # prints the final frame
        self._warn_errors()
