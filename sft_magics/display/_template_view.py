"""Views of a rendered conversation (:class:`~sft_magics.core.template.Rendering`), token by token.

- :class:`RenderingView`: one rendering — every token coloured by the message it belongs to, special
  tokens set apart, trained tokens marked, then a per-message table, the totals, how the mask was
  found, what ``max_length`` would cut, and the template checks.
- :class:`CompareView`: two renderings side by side (HTML) or one after the other (text, rich).
- :class:`InferenceView`: the training rendering beside the inference prompt (the conversation up to
  the answer plus the generation prompt), with the tokens from the first difference on marked.

Each has a text form, an HTML form and a rich form. Every piece of text that comes from data, a
template or a tokenizer (token text, roles, titles, check details, dropped text, the mask source)
passes through ``html.escape`` before it goes into HTML (``quote=True`` inside attributes): notebook
outputs and ipywidgets' ``HTML`` set innerHTML unsanitised. In the rich form such text only ever
goes in as ``rich.text.Text`` (never as a markup string), so ``[bold]`` in data stays literal.
"""

from __future__ import annotations

import html

from ._views import _View

# Light backgrounds, one per message index (cycled); template glue outside any message is grey.
PALETTE = ("#fde2e4", "#dbeafe", "#dcfce7", "#fef3c7", "#ede9fe", "#cffafe", "#fce7f3", "#ffedd5")
GLUE_COLOUR = "#eeeeee"
MASKED_COLOUR = "#4b5563"  # untrained text: dark grey, readable on every background (not faded)
CONTAINER = "sft-rv"  # every rule of the style block is scoped under this class

_STYLE = (
    "<style>"
    # Breaks only between words (a token is a span, so "cou|ntry" never splits), or inside a word
    # too long for the line.
    f".{CONTAINER} .sft-text{{white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere;font-family:monospace;"
    "line-height:1.8;margin:0.3em 0;padding:0.3em;background:transparent}"
    f".{CONTAINER} .sft-t{{border-radius:2px;color:#111}}"
    f".{CONTAINER} .sft-trained{{text-decoration:underline solid #15803d 2px}}"
    f".{CONTAINER} .sft-masked{{color:{MASKED_COLOUR}}}"
    f".{CONTAINER} .sft-special{{font-weight:bold;border:1px solid #555;padding:0 1px}}"
    f".{CONTAINER} .sft-diff{{outline:2px solid #dc2626}}"
    f".{CONTAINER} .sft-nl{{color:#888}}"
    + "".join(f".{CONTAINER} .sft-m{i}{{background:{c}}}" for i, c in enumerate(PALETTE))
    + f".{CONTAINER} .sft-glue{{background:{GLUE_COLOUR}}}"
    f".{CONTAINER} .sft-title{{font-weight:bold;margin:0.2em 0}}"
    f".{CONTAINER} .sft-msgs{{border-collapse:collapse;margin:0.3em 0}}"
    f".{CONTAINER} .sft-msgs td,.{CONTAINER} .sft-msgs th{{padding:1px 8px;text-align:left}}"
    f".{CONTAINER} .sft-ok{{color:#15803d}}"
    f".{CONTAINER} .sft-warn{{color:#b45309}}"
    f".{CONTAINER} .sft-bad{{color:#b91c1c;font-weight:bold}}"
    f".{CONTAINER} .sft-checks{{margin:0.2em 0;padding-left:1.2em}}"
    f".{CONTAINER} .sft-cols{{display:flex;gap:1em;align-items:flex-start}}"
    f".{CONTAINER} .sft-col{{flex:1 1 0;min-width:0}}"
    "</style>"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=False)


def _attr(text: object) -> str:
    return html.escape(str(text), quote=True)


def _colour(message: int | None) -> str:
    return GLUE_COLOUR if message is None else PALETTE[message % len(PALETTE)]


def _colour_class(message: int | None) -> str:
    return "sft-glue" if message is None else f"sft-m{message % len(PALETTE)}"


def _role(rendering, message: int | None) -> str:
    if message is None:
        return "(template)"
    return rendering.roles[message] if 0 <= message < len(rendering.roles) else f"message {message}"


def _quote(text: str, limit: int = 60) -> str:
    """Text on one line, between single quotes, clipped."""
    text = text.replace("\r", "␍").replace("\n", "↵")
    return "'" + (text[:limit] + "…" if len(text) > limit else text) + "'"


def token_title(rendering, token) -> str:
    """The hover text of a token: ``id N · label L · role R`` (`` · special``)."""
    label = token.id if token.trained else -100
    tip = f"id {token.id} · label {label} · role {_role(rendering, token.message)}"
    return tip + (" · special" if token.special else "")


def find_first_difference(training, inference) -> int | None:
    """First token index where the inference prompt departs from the training rendering; None when
    the inference prompt is a prefix of the training rendering."""
    a, b = training.input_ids, inference.input_ids
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return None if n == len(b) and len(b) <= len(a) else n


# -- the summary lines shared by every form --------------------------------------------------------


def summary_line(rendering) -> str:
    glue = sum(t.message is None for t in rendering.tokens)
    line = f"{len(rendering.tokens)} tokens, {rendering.trained_count} trained · mask: {rendering.mask_source}"
    return line + (f" · {glue} template tokens outside any message" if glue else "")


def truncation_line(rendering) -> tuple[str, str] | None:
    """(severity, line) for ``rendering.max_length``: severity 'ok', 'warn' (answer cut mid-way) or
    'bad' (no trained token left: TRL drops the row); None when no max_length is set."""
    tr = rendering.truncation()
    if tr is None:
        return None
    n = tr["max_length"]
    if tr["dropped_tokens"] == 0:
        line = f"max_length {n}: nothing cut"
    else:
        line = (
            f"max_length {n}: cuts {tr['dropped_tokens']} tokens ({tr['dropped_trained']} trained)"
            f" — dropped: {_quote(tr['dropped_text'])}"
        )
    if tr["trained_left"] == 0:
        return "bad", line + " — no trained token left: TRL drops this row"
    if tr["dropped_trained"]:
        return "warn", line + " — the answer is cut mid-way: its end is never trained"
    return "ok", line


def _check_line(check) -> str:
    return f"{'✓' if check.ok else '⚠'} {check.name}: {check.detail}"


def _marked_text(tokens, diff_from: int | None = None) -> str:
    """Plain text with trained spans inside «…» (and, from ``diff_from`` on, the rest inside ⟦…⟧)."""
    out, inside = [], False
    for i, t in enumerate(tokens):
        if diff_from is not None and i == diff_from:
            if inside:
                out.append("»")
                inside = False
            out.append("⟦")
        if t.trained != inside:
            out.append("«" if t.trained else "»")
            inside = t.trained
        out.append(t.text)
    if inside:
        out.append("»")
    if diff_from is not None and diff_from < len(tokens):
        out.append("⟧")
    return "".join(out)


def per_message(rendering) -> list[dict]:
    """``rendering.per_message()``, tolerant of a token whose message index has no role (a
    hand-built or sliced rendering): such messages are listed as ``message K``."""
    try:
        return rendering.per_message()
    except IndexError:
        top = max(t.message for t in rendering.tokens if t.message is not None)
        roles = list(rendering.roles) + [f"message {k}" for k in range(len(rendering.roles), top + 1)]
        out = [{"role": r, "tokens": 0, "trained": 0} for r in roles]
        for t in rendering.tokens:
            if t.message is not None:
                out[t.message]["tokens"] += 1
                out[t.message]["trained"] += t.trained
        return out


def _glue(rendering) -> dict | None:
    """The template's own text outside every message (a default system message it inserts, say)."""
    tokens = [t for t in rendering.tokens if t.message is None]
    return (
        {"role": "(template's own text)", "tokens": len(tokens), "trained": sum(t.trained for t in tokens)}
        if tokens
        else None
    )


def _table_rows(rendering) -> list[tuple[str, dict]]:
    rows = [(str(i), m) for i, m in enumerate(per_message(rendering))]
    glue = _glue(rendering)
    return rows + ([("–", glue)] if glue else [])


def _table_text(rendering) -> list[str]:
    header = ["#", "role", "tokens", "trained"]
    rows = [[i, m["role"], str(m["tokens"]), str(m["trained"])] for i, m in _table_rows(rendering)]
    cells = [header] + rows
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]


class RenderingView(_View):
    """One :class:`Rendering`, token by token.

    HTML: each token a ``<span class="sft-t sft-mK sft-trained|sft-masked [sft-special]">`` with the
    hover title ``id N · label L · role R``; background by message index (``sft-mK``, palette
    :data:`PALETTE`; ``sft-glue`` for template text outside any message); special tokens bold and
    boxed; trained tokens underlined, untrained ones in dark grey; newlines shown as ``↵``
    followed by a line break. Then the per-message table, totals and mask source, the truncation
    line (when ``max_length`` is set) and the checks (✓ / ⚠).
    Text: the rendered text with trained spans inside «…», then the same table and lines.
    """

    def __init__(self, rendering, title: str = ""):
        self.r, self.title = rendering, title

    # -- text -------------------------------------------------------------------------------------

    def _text_lines(self, diff_from: int | None = None) -> list[str]:
        lines = [self.title] if self.title else []
        lines.append(_marked_text(self.r.tokens, diff_from))
        lines += _table_text(self.r)
        lines.append(summary_line(self.r))
        trunc = truncation_line(self.r)
        if trunc:
            severity, line = trunc
            lines.append(("⚠ " if severity != "ok" else "") + line)
        lines += [_check_line(c) for c in self.r.checks]
        return lines

    def to_text(self) -> str:
        return "\n".join(self._text_lines())

    # -- HTML -------------------------------------------------------------------------------------

    def _token_html(self, index: int, t, diff_from: int | None) -> str:
        classes = ["sft-t", _colour_class(t.message), "sft-trained" if t.trained else "sft-masked"]
        style = [f"background:{_colour(t.message)}"]
        style.append("text-decoration:underline solid #15803d 2px" if t.trained else f"color:{MASKED_COLOUR}")
        if t.special:
            classes.append("sft-special")
            style.append("font-weight:bold;border:1px solid #555")
        if diff_from is not None and index >= diff_from:
            classes.append("sft-diff")
            style.append("outline:2px solid #dc2626")
        body = _e(t.text).replace("\r", "␍").replace("\n", '<span class="sft-nl">↵</span><br>')
        return (
            f'<span class="{" ".join(classes)}" style="{";".join(style)}" '
            f'title="{_attr(token_title(self.r, t))}">{body}</span>'
        )

    def _table_html(self) -> str:
        head = "<tr><th>#</th><th>role</th><th>tokens</th><th>trained</th></tr>"
        rows = []
        for i, m in _table_rows(self.r):
            k = int(i) if i.isdigit() else None
            rows.append(
                f'<tr><td>{i}</td><td class="{_colour_class(k)}" style="background:{_colour(k)}">{_e(m["role"])}</td>'
                f"<td>{m['tokens']}</td><td>{m['trained']}</td></tr>"
            )
        return f'<table class="sft-msgs">{head}{"".join(rows)}</table>'

    def body_html(self, diff_from: int | None = None) -> str:
        """The view without its style block and container (for composing several views)."""
        r = self.r
        parts = [f'<div class="sft-title">{_e(self.title)}</div>'] if self.title else []
        tokens = "".join(self._token_html(i, t, diff_from) for i, t in enumerate(r.tokens))
        parts.append(f'<pre class="sft-text" style="white-space:pre-wrap;font-family:monospace">{tokens}</pre>')
        parts.append(self._table_html())
        parts.append(f'<div class="sft-summary">{_e(summary_line(r))}</div>')
        trunc = truncation_line(r)
        if trunc:
            severity, line = trunc
            mark = "⚠ " if severity != "ok" else ""
            parts.append(f'<div class="sft-trunc sft-{severity}">{mark}{_e(line)}</div>')
        if r.checks:
            items = "".join(
                f'<li class="{"sft-ok" if c.ok else "sft-warn"}">{"✓" if c.ok else "⚠"} '
                f"<b>{_e(c.name)}</b>: {_e(c.detail)}</li>"
                for c in r.checks
            )
            parts.append(f'<ul class="sft-checks">{items}</ul>')
        return "".join(parts)

    def to_html(self) -> str:
        return f'<div class="{CONTAINER}">{_STYLE}{self.body_html()}</div>'

    # -- rich -------------------------------------------------------------------------------------

    def _rich_tokens(self, diff_from: int | None = None):
        from rich.text import Text

        text = Text()
        for i, t in enumerate(self.r.tokens):
            style = f"#111111 on {_colour(t.message)}"
            style += " bold underline" if t.trained else " dim"
            if t.special:
                style += " reverse"
            if diff_from is not None and i >= diff_from:
                style = f"bold #ffffff on #dc2626{' underline' if t.trained else ''}"
            text.append(t.text.replace("\n", "↵\n"), style=style)
        return text

    def rich_parts(self, diff_from: int | None = None) -> list:
        from rich.table import Table
        from rich.text import Text

        parts = [Text(self.title, style="bold")] if self.title else []
        parts.append(self._rich_tokens(diff_from))
        table = Table(show_edge=False, pad_edge=False)
        for name in ("#", "role", "tokens", "trained"):
            table.add_column(name, justify="right" if name != "role" else "left")
        for i, m in _table_rows(self.r):
            role = Text(m["role"], style=f"#111111 on {_colour(int(i) if i.isdigit() else None)}")
            table.add_row(Text(i), role, Text(str(m["tokens"])), Text(str(m["trained"])))
        parts.append(table)
        parts.append(Text(summary_line(self.r)))
        trunc = truncation_line(self.r)
        if trunc:
            severity, line = trunc
            style = {"ok": "", "warn": "bold yellow", "bad": "bold red"}[severity]
            parts.append(Text(("⚠ " if severity != "ok" else "") + line, style=style))
        for c in self.r.checks:
            parts.append(Text(_check_line(c), style="green" if c.ok else "yellow"))
        return parts

    def __rich__(self):
        from rich.console import Group

        return Group(*self.rich_parts())


class CompareView(_View):
    """Two renderings of the same row (two templates, two models): side by side in HTML, one after
    the other in the text and rich forms, each under its title."""

    def __init__(self, left, right, left_title: str = "left", right_title: str = "right"):
        self.left, self.right = RenderingView(left, left_title), RenderingView(right, right_title)

    def to_text(self) -> str:
        return self.left.to_text() + "\n\n" + self.right.to_text()

    def to_html(self) -> str:
        cols = "".join(
            f'<div class="sft-col" style="flex:1 1 0;min-width:0">{v.body_html()}</div>'
            for v in (self.left, self.right)
        )
        return (
            f'<div class="{CONTAINER}">{_STYLE}'
            f'<div class="sft-cols" style="display:flex;gap:1em;align-items:flex-start">{cols}</div></div>'
        )

    def __rich__(self):
        from rich.console import Group
        from rich.rule import Rule

        return Group(*self.left.rich_parts(), Rule(), *self.right.rich_parts())


class InferenceView(_View):
    """The training rendering beside the inference prompt (the conversation up to the answer, with
    the generation prompt). ``first_difference``: the first token index where the inference prompt
    departs from the training rendering, None when it is a prefix of it (see
    :func:`find_first_difference`). Inference tokens from there on are marked (``sft-diff``: a red
    outline; ``⟦…⟧`` in text; white on red in rich), under a one-line verdict."""

    def __init__(
        self,
        training,
        inference,
        first_difference: int | None,
        training_title: str = "training",
        inference_title: str = "inference prompt",
    ):
        self.training, self.inference, self.first_difference = training, inference, first_difference
        self.train_view = RenderingView(training, training_title)
        self.infer_view = RenderingView(inference, inference_title)

    def verdict(self) -> tuple[bool, str]:
        """(same, line)."""
        k = self.first_difference
        if k is None:
            return True, "inference prompt = training rendering up to the answer"
        train = "".join(t.text for t in self.training.tokens[k : k + 8])
        infer = "".join(t.text for t in self.inference.tokens[k : k + 8])
        return False, f"differs from token {k}: training has {_quote(train, 40)}, inference has {_quote(infer, 40)}"

    def to_text(self) -> str:
        same, line = self.verdict()
        return "\n".join(
            [
                ("✓ " if same else "⚠ ") + line,
                *self.train_view._text_lines(),
                "",
                *self.infer_view._text_lines(self.first_difference),
            ]
        )

    def to_html(self) -> str:
        same, line = self.verdict()
        verdict = f'<div class="sft-verdict {"sft-ok" if same else "sft-bad"}">{"✓" if same else "⚠"} {_e(line)}</div>'
        cols = (
            f'<div class="sft-col" style="flex:1 1 0;min-width:0">{self.train_view.body_html()}</div>'
            f'<div class="sft-col" style="flex:1 1 0;min-width:0">{self.infer_view.body_html(self.first_difference)}</div>'
        )
        return (
            f'<div class="{CONTAINER}">{_STYLE}{verdict}'
            f'<div class="sft-cols" style="display:flex;gap:1em;align-items:flex-start">{cols}</div></div>'
        )

    def __rich__(self):
        from rich.console import Group
        from rich.rule import Rule
        from rich.text import Text

        same, line = self.verdict()
        head = Text(("✓ " if same else "⚠ ") + line, style="bold green" if same else "bold red")
        return Group(head, *self.train_view.rich_parts(), Rule(), *self.infer_view.rich_parts(self.first_difference))
