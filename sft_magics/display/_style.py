"""One look for every view: the colours of a difference between an answer and its reference, and
tables of long text (prompts, references, answers) that keep a prompt to a few lines.

JupyterLab styles output tables as ``table-layout:fixed`` with an automatic width, centred and
right-aligned: a table of text then gets columns of ~100 px and a prompt wraps to a dozen lines.
These tables say their own width and column shares.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

_E = html.escape

# The same difference, the same colour, in the training dashboard's answers and %sft_eval's pager:
EXTRA = "#ffe3a3"  # text in the answer that the reference does not have (amber)
MISSING = "#fbd4d4"  # text of the reference the answer lacks (pink, struck through)
EXTRA_STYLE = f"background:{EXTRA};text-decoration:none"
MISSING_STYLE = f"background:{MISSING};color:#900;text-decoration:line-through"
NOTE_STYLE = "color:#8a5300;font-style:italic"  # "(empty answer)", "(no end token)"

_CELL = (
    "text-align:left;vertical-align:top;padding:4px 8px;border-top:1px solid #ddd;"
    "white-space:pre-wrap;overflow-wrap:anywhere;word-break:normal;line-height:1.35"
)


def extra(escaped: str) -> str:
    return f'<ins style="{EXTRA_STYLE}">{escaped}</ins>'


def missing(escaped: str) -> str:
    return f'<del style="{MISSING_STYLE}">{escaped}</del>'


def note(text: str) -> str:
    return f'<span style="{NOTE_STYLE}">{_E(text)}</span>'


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], shares: Sequence[float]) -> str:
    """A full-width table; ``head`` is escaped here, ``rows`` are HTML already (escaped by the
    caller); ``shares`` are the columns' parts of the width (percent). Cells in the code font."""
    cols = "".join(f'<col style="width:{w:g}%">' for w in shares)
    font = "font-family:var(--jp-code-font-family,monospace);"
    th = "".join(f'<th style="{_CELL};font-weight:bold;border-top:none">{_E(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL};{font}">{c}</td>' for c in row) + "</tr>" for row in rows)
    return (
        f'<table style="table-layout:fixed;width:100%;min-width:640px;border-collapse:collapse;'
        f'margin:2px 0;font-size:85%"><colgroup>{cols}</colgroup><tr>{th}</tr>{body}</table>'
    )
