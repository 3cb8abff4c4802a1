"""``%sft_chat`` views: the notebook chat widget, the terminal read–reply loop, and the one-shot reply.

- :class:`ChatWidget` (notebook): message history, input box, Send / Stop / Reset, the system
  prompt, temperature / top-p / max-new-tokens, and a "show prompt" toggle that shows the exact
  text the model saw. With ``compare`` two columns: tuned | base (adapter disabled).
  Generation runs on a worker thread, so the kernel stays free to handle clicks (Stop) while a
  reply is being written; the cell that made the widget has long finished by then. From that
  thread the widget only changes widget traits (``.value``, ``.disabled``): ``print``/``display``
  from a background thread land in whatever cell runs next under ipykernel 7.
- :func:`chat_loop` (terminal IPython): ``input()`` → streamed reply, until an empty line or "exit".
- :class:`ReplyView` (the one-shot ``--message`` form): text, HTML and rich forms.

ipywidgets' ``HTML`` sets innerHTML unsanitised: every piece of user or model text is
``html.escape``d before it goes into HTML.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

from ._views import _View

_E = html.escape
LABELS = {"tuned": "tuned", "base": "base (adapter off)"}
_BUBBLE = "margin:4px 0;padding:4px 8px;border-radius:6px;white-space:pre-wrap;word-break:break-word"
_USER_STYLE = _BUBBLE + ";background:#e8f0fe"
_MODEL_STYLE = _BUBBLE + ";background:#f1f3f4"
_LABEL = {"description_width": "initial"}  # the label's own width: "temperature", not "temperat…"


def _gen_defaults(defaults: dict | None) -> dict:
    d = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0}
    d.update({k: v for k, v in (defaults or {}).items() if k in d and v is not None})
    return d


def conversation_html(
    history: list[dict],
    *,
    system: str | None = None,
    pending: tuple[str, str] | None = None,
    label: str = "model",
    note: str = "",
) -> str:
    """One side of a chat as HTML: the system prompt, each turn, and the reply being written."""
    parts = []
    if system:
        parts.append(f'<div style="color:#666;font-size:90%"><b>system</b>: {_E(system)}</div>')
    turns = [(m["role"], m["content"]) for m in history]
    if pending is not None:
        turns += [("user", pending[0]), ("assistant", pending[1] + "▌")]
    for role, content in turns:
        if role == "user":
            parts.append(f'<div style="{_USER_STYLE}"><b>you</b>: {_E(content)}</div>')
        else:
            parts.append(f'<div style="{_MODEL_STYLE}"><b>{_E(label)}</b>: {_E(content)}</div>')
    if note:
        parts.append(f'<div style="color:#b35c00">{_E(note)}</div>')
    if not turns:
        parts.append('<div style="color:#999">(no messages yet)</div>')
    return '<div class="sft-chat">' + "".join(parts) + "</div>"


def prompt_html(prompts: dict[str, str]) -> str:
    """The exact rendered prompt(s), escaped, each in a <pre>."""
    blocks = [
        f'<div><b>{_E(LABELS.get(side, side))} · prompt</b><pre style="white-space:pre-wrap;background:#fafafa;'
        f'border:1px solid #ddd;padding:4px">{_E(text)}</pre></div>'
        for side, text in prompts.items()
    ]
    return "".join(blocks)


def _controls(gen: dict):
    """The generation controls: temperature, top-p, max tokens (labels at their own width)."""
    import ipywidgets as w

    temperature = w.BoundedFloatText(
        value=gen["temperature"],
        min=0.0,
        max=5.0,
        step=0.1,
        description="temperature",
        tooltip="0 = greedy",
        style=_LABEL,
        layout=w.Layout(width="190px"),
    )
    top_p = w.BoundedFloatText(
        value=gen["top_p"],
        min=0.01,
        max=1.0,
        step=0.05,
        description="top-p",
        style=_LABEL,
        layout=w.Layout(width="140px"),
    )
    max_new_tokens = w.BoundedIntText(
        value=gen["max_new_tokens"],
        min=1,
        max=32768,
        description="max tokens",
        style=_LABEL,
        layout=w.Layout(width="190px"),
    )
    return temperature, top_p, max_new_tokens


class ChatWidget:
    """An ipywidgets chat with ``session`` (a :class:`core.evaluate.chat.ChatSession`).

    ``defaults``: ``max_new_tokens``, ``temperature``, ``top_p`` for the controls. The widget
    itself is ``.widget``; the chat widget displays as it (``display(chat)`` works too).
    ``wait()`` blocks until the reply being written is done (tests, scripts).
    """

    throttle = 0.1  # seconds between history redraws while streaming (the final redraw always happens)

    def __init__(self, session, compare: bool = False, defaults: dict | None = None):
        import ipywidgets as w

        self.session, self.compare = session, bool(compare)
        self.sides = ("tuned", "base") if self.compare else ("tuned",)
        gen = _gen_defaults(defaults)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[str, tuple[str, str]] = {}
        self._notes: dict[str, str] = {}
        self._last_draw = 0.0
        self.error: BaseException | None = None

        col = w.Layout(width="50%" if self.compare else "100%", border="1px solid #ddd", padding="4px")
        self.columns = {side: w.HTML(layout=col) for side in self.sides}
        self.history = self.columns["tuned"]
        from ._chat_input import ChatInput

        # Boxes as wide as the output area: "auto" in a column (100% plus margins sticks out of it).
        wide = w.Layout(width="auto")
        self.input = ChatInput(placeholder="Message (Enter sends, Shift+Enter for a new line)", layout=wide)
        self.input.observe(lambda _: self._send_clicked(), names="submitted")
        self.send_button = w.Button(description="Send", icon="paper-plane", button_style="primary")
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            button_style="warning",
            disabled=True,
            tooltip="end the reply being written (the partial answer is kept)",
        )
        self.reset_button = w.Button(description="Reset", icon="trash", tooltip="forget the conversation")
        self.system = w.Text(
            value=session.system or "",
            description="system",
            placeholder="(the template's default)",
            layout=wide,
        )
        self.temperature, self.top_p, self.max_new_tokens = _controls(gen)
        self.show_prompt = w.ToggleButton(
            value=False,
            description="show prompt",
            icon="code",
            tooltip="the exact text the model sees (its chat template)",
        )
        self.status = w.HTML("")
        self.prompt = w.HTML("", layout=w.Layout(display="none"))

        self.send_button.on_click(self._send_clicked)
        self.stop_button.on_click(lambda _: self._stop.set())
        self.reset_button.on_click(self._reset_clicked)
        self.show_prompt.observe(lambda _: self._draw_prompt(), names="value")

        header = "".join(
            f'<div style="width:{100 // len(self.sides)}%"><b>{_E(LABELS[s])}</b></div>' for s in self.sides
        )
        self.widget = w.VBox(
            [
                self.system,
                w.HBox([self.temperature, self.top_p, self.max_new_tokens, self.show_prompt]),
                w.HTML(f'<div style="display:flex">{header}</div>') if self.compare else w.HTML(""),
                w.HBox([self.columns[s] for s in self.sides]),
                self.input,
                w.HBox([self.send_button, self.stop_button, self.reset_button, self.status]),
                self.prompt,
            ]
        )
        self._draw()

    # -- display ------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the reply being written; True when none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    # -- events (main thread) -----------------------------------------------------------------
    def _send_clicked(self, _=None) -> None:
        message = self.input.value
        if self.busy or not message.strip():
            return
        self.input.value = ""
        self.session.system = self.system.value.strip() or None
        gen = {
            "max_new_tokens": int(self.max_new_tokens.value),
            "temperature": float(self.temperature.value),
            "top_p": float(self.top_p.value),
        }
        self._stop.clear()
        self.error = None
        self._notes.clear()
        self._pending = {side: (message, "") for side in self.sides}
        self._set_busy(True, "writing…")
        self._draw()
        self._thread = threading.Thread(target=self._work, args=(message, gen), name="sft-chat", daemon=True)
        self._thread.start()

    def _reset_clicked(self, _=None) -> None:
        if self.busy:
            return
        self.session.reset()
        self._pending, self._notes = {}, {}
        self.status.value = ""
        self._draw()
        self._draw_prompt()

    # -- the worker thread: widget traits only, never print/display ----------------------------
    def _work(self, message: str, gen: dict) -> None:
        status = ""
        try:
            for side in self.sides:
                if self._stop.is_set():
                    self._pending.pop(side, None)
                    self._notes[side] = "not asked: stopped"
                    break

                def on_token(piece, side=side):
                    user, text = self._pending[side]
                    self._pending[side] = (user, text + piece)
                    self._draw(throttled=True)

                self.session.reply(message, on_token=on_token, stop=self._stop, use_base=side == "base", **gen)
                self._pending.pop(side, None)
                turn = self.session.last_turn(use_base=side == "base")
                if turn is not None and turn.stopped:
                    self._notes[side] = f"stopped after {turn.new_tokens} tokens"
                    status = "stopped"
                elif turn is not None and turn.cut:
                    self._notes[side] = (
                        f"cut at the limit of {turn.new_tokens} new tokens: raise max tokens for the rest"
                    )
                self._draw()
        except Exception as err:
            self.error = err
            status = f"error: {type(err).__name__}: {' '.join(str(err).split())}"
        finally:
            self._pending = {}
            self._set_busy(False, status)
            self._draw()
            self._draw_prompt()

    # -- drawing ------------------------------------------------------------------------------
    def _set_busy(self, busy: bool, status: str) -> None:
        self.send_button.disabled = busy
        self.reset_button.disabled = busy
        self.stop_button.disabled = not busy
        color = "#dc3545" if status.startswith("error") else "#666"
        self.status.value = f'<span style="color:{color}">{_E(status)}</span>' if status else ""

    def _draw(self, throttled: bool = False) -> None:
        now = time.monotonic()
        if throttled and now - self._last_draw < self.throttle:
            return
        self._last_draw = now
        for side in self.sides:
            self.columns[side].value = conversation_html(
                self.session.histories[side],
                system=self.session.system,
                pending=self._pending.get(side),
                label=LABELS[side] if self.compare else "model",
                note=self._notes.get(side, ""),
            )

    def _draw_prompt(self) -> None:
        if not self.show_prompt.value:
            self.prompt.layout.display = "none"
            return
        prompts = {}
        for side in self.sides:
            if self.session.last_turn(use_base=side == "base") is not None:
                prompts[side] = self.session.rendered_prompt(use_base=side == "base")
        self.prompt.value = (
            prompt_html(prompts)
            if prompts
            else '<div style="color:#999">(the prompt appears after the first message)</div>'
        )
        self.prompt.layout.display = None


def chat_loop(
    session,
    compare: bool = False,
    defaults: dict | None = None,
    *,
    read: Callable[[str], str] | None = None,
    console: Any = None,
) -> int:
    """Terminal chat: read a line, stream the reply(ies); an empty line or "exit" ends it.
    Ctrl-C while a reply is being written stops that reply (the partial answer is kept);
    Ctrl-C or Ctrl-D at the prompt ends the chat. Returns the number of turns."""
    from rich.console import Console

    console = console or Console()
    read = read or input  # looked up now, so a replaced builtins.input is used
    gen = _gen_defaults(defaults)
    sides = ("tuned", "base") if compare else ("tuned",)
    console.print("[dim]chat: an empty line or 'exit' ends it; Ctrl-C stops a reply[/dim]")
    turns = 0
    while True:
        try:
            message = read("you › ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if not message.strip() or message.strip().lower() == "exit":
            break
        session.stop_flag.clear()
        for side in sides:
            if session.stop_flag.is_set():
                break
            console.print(f"[bold]{LABELS[side] if compare else 'model'}[/bold] › ", end="")
            try:
                session.reply(message, use_base=side == "base", on_token=lambda piece: _stream(console, piece), **gen)
                turn = session.last_turn(use_base=side == "base")
                if turn is not None and turn.cut:
                    console.print(f" [yellow](cut at the limit of {turn.new_tokens} new tokens)[/yellow]", end="")
            except KeyboardInterrupt:
                session.stop()  # the reply thread has been told to stop; the turn is not recorded
                console.print(" [yellow](stopped)[/yellow]")
                break
            console.print()
        turns += 1
    return turns


def _stream(console, piece: str) -> None:
    console.print(piece, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
    console.file.flush()


class ReplyView(_View):
    """The one-shot reply (``--message``): one answer, or ``{"tuned": ..., "base": ...}``."""

    def __init__(self, message: str, reply: str | dict[str, str]):
        self.message, self.reply = message, reply

    def _pairs(self) -> list[tuple[str, str]]:
        if isinstance(self.reply, dict):
            return [(LABELS.get(k, k), v) for k, v in self.reply.items()]
        return [("", self.reply)]

    def to_text(self) -> str:
        pairs = self._pairs()
        if len(pairs) == 1 and not pairs[0][0]:
            return pairs[0][1]
        return "\n".join(f"── {label} ──\n{text}" for label, text in pairs)

    def to_html(self) -> str:
        cells = "".join(
            f'<div style="flex:1;min-width:0">{f"<b>{_E(label)}</b>" if label else ""}'
            f'<div style="{_MODEL_STYLE}">{_E(text)}</div></div>'
            for label, text in self._pairs()
        )
        return (
            f'<div class="sft-chat"><div style="{_USER_STYLE}"><b>you</b>: {_E(self.message)}</div>'
            f'<div style="display:flex;gap:8px">{cells}</div></div>'
        )

    def __rich__(self):
        from rich.columns import Columns
        from rich.panel import Panel
        from rich.text import Text

        panels = [Panel(Text(text), title=label or None, expand=True) for label, text in self._pairs()]
        return Columns(panels, equal=True, expand=True) if len(panels) > 1 else panels[0]
