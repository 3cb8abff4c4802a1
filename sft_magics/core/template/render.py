"""Chat templates render here, and only here: through transformers' sandboxed renderer
(``tokenizer.apply_chat_template``: an immutable sandboxed Jinja environment), bounded in time
(:data:`RENDER_SECONDS`) and output size (:data:`RENDER_CHARS`). A template that raises, reaches
for Python internals, loops for too long or writes too much becomes a one-line :class:`TemplateError`.

Libraries render a user's template too (TRL's ``get_training_chat_template`` probes it through
``supports_tool_calling``; llama.cpp's chat formatter renders it): every such call runs inside
:func:`bounded`, the same bound. A template is vetted once (:func:`vet_template`: a probe
conversation, bounded) before any library sees it. A template that ran past the bound is refused
from then on in this process, by its text (:class:`TemplateTimeout`, naming the row that showed it),
so a load pays the bound about once, not once per row.
"""

from __future__ import annotations

import contextlib

from ..errors import SftError, one_line


class TemplateError(SftError, ValueError):
    """A chat template that failed or was refused while rendering; one line."""


# Bounds on one apply_chat_template call: a batch gets one time bound per million characters of content,
# and the size bound per conversation (each up to 8x).
RENDER_SECONDS = 10.0
RENDER_CHARS = 4_000_000


class TemplateTimeout(TemplateError):
    """A template that ran past the bound: refused from then on (by its text) in this process."""

    def __init__(self, message: str, template: str | None = None, *, located: bool = False):
        super().__init__(message)
        self.template, self.located = template, located

    def at(self, where: str) -> TemplateTimeout:
        """The same refusal, naming where it showed (``row 17``); later refusals say it too."""
        if self.located:
            return self
        message = f"{where}: {self}"
        if self.template is not None:
            _refused[self.template] = message
        return TemplateTimeout(message, self.template, located=True)


# Templates that ran past the bound (text -> the one-line reason); a later render is refused at once.
_refused: dict[str, str] = {}
# Templates whose probe rendered within the bound.
_vetted: set[str] = set()
# Bounds paid in this process (renders stopped at the bound): what a load costs a looping template.
timeouts = 0


class _RenderTimeout(BaseException):  # not an Exception: no library's `except Exception` can swallow it
    """Raised inside a render that ran past its deadline (by the watchdog thread)."""


class _Watchdog:
    """One daemon thread for the whole process: a render registers its deadline; a render still
    running past it gets :class:`_RenderTimeout` raised in its thread at the next bytecode (Jinja
    templates are compiled to Python, so a runaway loop is interrupted). Costs two dict operations
    per render."""

    def __init__(self) -> None:
        import os

        self._reset()
        # datasets' map(num_proc=...) forks: a child has the parent's state but not its thread (and
        # perhaps a lock the thread held at the fork). Start afresh in every child.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        import threading

        self.deadlines: dict[int, float] = {}
        self.fired: set[int] = set()  # threads sent a timeout that their render has not yet seen
        self.lock = threading.Lock()
        self.thread = None

    def _run(self) -> None:
        import ctypes
        import time

        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self.lock:
                for tid, deadline in list(self.deadlines.items()):
                    if now > deadline:
                        # Again each second while the render goes on: a library that swallowed the first
                        # (a __del__, a callback) does not make the render unbounded.
                        self.deadlines[tid] = now + 1.0
                        self.fired.add(tid)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(tid), ctypes.py_object(_RenderTimeout)
                        )

    def __call__(self, seconds: float):
        import contextlib
        import ctypes
        import threading
        import time

        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="sft-template-watchdog", daemon=True)
                    self.thread.start()
        tid = threading.get_ident()

        @contextlib.contextmanager
        def bounded():
            with self.lock:
                self.deadlines[tid] = time.monotonic() + seconds
            try:
                yield
            finally:
                with self.lock:
                    self.deadlines.pop(tid, None)
                    if tid in self.fired:  # a timeout sent as the render ended: never raised after it
                        self.fired.discard(tid)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

        return bounded()


_watchdog = _Watchdog()


def template_text(tokenizer, chat_template=None) -> str | None:
    """The template a render would use: the one passed, else the tokenizer's (named templates joined)."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(f"{k}\n{v}" for k, v in sorted(template.items()))
    return template if isinstance(template, str) else None


@contextlib.contextmanager
def bounded(template: str | None, what: str = "", *, scale: float = 1.0, refuse: bool = True):
    """Any call that renders ``template`` (ours, or a library's), inside the bound: past
    ``RENDER_SECONDS * scale`` it is stopped and becomes :class:`TemplateTimeout`, and the template
    is refused from then on. ``what`` says where (``" in TRL's get_training_chat_template"``).
    ``refuse=False`` (a batch of conversations, which its caller then renders one by one to find the
    row that shows the loop): the timeout is raised but the template is not refused yet."""
    if template is not None and template in _refused:
        raise TemplateTimeout(f"{_refused[template]} (refused until the template is changed)", template, located=True)
    seconds = RENDER_SECONDS * scale
    try:
        with _watchdog(seconds):
            yield
    except _RenderTimeout:
        global timeouts
        timeouts += 1
        message = f"the chat template ran for more than {seconds:g} s{what} and was stopped (a loop that does not end?)"
        if template is not None and refuse:
            _refused[template] = message
        raise TemplateTimeout(message, template) from None


def apply_chat_template(tokenizer, conversation, **kwargs):
    """``tokenizer.apply_chat_template`` (transformers' sandboxed renderer), bounded in time and in
    output size; every failure of the template is a one-line :class:`TemplateError`. A batch of
    conversations gets one bound per million characters of content (a render is linear in its text;
    a batch that times out is not refused: its caller tries it one conversation at a time)."""
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    many = bool(conversation) and isinstance(conversation[0], (list, tuple))
    if not getattr(tokenizer, "chat_template", None) and not kwargs.get("chat_template"):
        raise TemplateError(
            "this model has no chat template (a base model?): give it one — --chat-template chatml here, "
            "chat_template: chatml in %%sft_train — or use a chat model"
        )
    chars = _content_chars(conversation if many else [conversation])
    scale = min(1 + chars // 1_000_000, 8)
    try:
        with bounded(template_text(tokenizer, kwargs.get("chat_template")), scale=scale, refuse=not many):
            out = tokenizer.apply_chat_template(conversation, **kwargs)
    except TemplateError:
        raise
    except SecurityError as err:
        raise TemplateError(f"the chat template was refused by the sandbox ({err}); nothing was run") from None
    except JinjaTemplateError as err:
        raise TemplateError(f"the chat template raised: {one_line(err, 300)}") from None
    except MemoryError:
        raise TemplateError("the chat template produced more text than fits in memory") from None
    except Exception as err:
        raise TemplateError(f"the chat template failed: {one_line(err, 300, named=True)}") from None
    _check_size(out, RENDER_CHARS * (min(len(conversation), 8) if many else 1))
    return out


def _content_chars(conversations) -> int:
    total = 0
    for conversation in conversations:
        for message in conversation if isinstance(conversation, (list, tuple)) else ():
            content = message.get("content") if isinstance(message, dict) else None
            total += len(content) if isinstance(content, str) else 0
    return total


# A conversation with every common role and two turns, so a template's branches run at least once.
PROBE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6"},
]


def vet_template(tokenizer, chat_template=None) -> None:
    """Render a probe conversation through the template, bounded, once per template text, before
    any library (TRL, llama.cpp) renders it outside our renderer. A template that loops is refused
    here, in one bound; one that fails on the probe is left to the real rows to report (a template
    may rightly refuse a system message)."""
    template = template_text(tokenizer, chat_template)
    if template is None or template in _vetted:
        return
    for messages, prompt in ((PROBE, False), (PROBE[:4], True)):
        try:
            apply_chat_template(
                tokenizer, messages, tokenize=False, add_generation_prompt=prompt, chat_template=chat_template
            )
        except TemplateTimeout as err:
            raise err.at("a probe conversation (system, user, assistant, two turns)") from None
        except TemplateError:
            pass
    _vetted.add(template)


def _check_size(out, limit: int) -> None:
    texts = out if isinstance(out, list) else [out]
    size = sum(len(t) for t in texts if isinstance(t, str))
    if size > limit:
        raise TemplateError(
            f"the chat template produced {size:,} characters (the limit is {limit:,}): "
            "a template that repeats text without end?"
        )
