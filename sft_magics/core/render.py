"""Chat templates render here, and only here: through transformers' sandboxed renderer
(``tokenizer.apply_chat_template``: an immutable sandboxed Jinja environment), bounded in time
(:data:`RENDER_SECONDS`) and output size (:data:`RENDER_CHARS`). A template that raises, reaches
for Python internals, loops for too long or writes too much becomes a one-line :class:`TemplateError`.
"""

from __future__ import annotations

from .errors import SftError


class TemplateError(SftError, ValueError):
    """A chat template that failed or was refused while rendering; one line."""


# Bounds on one apply_chat_template call (a batched call gets them per conversation, up to 8x).
RENDER_SECONDS = 10.0
RENDER_CHARS = 4_000_000


class _RenderTimeout(BaseException):  # not an Exception: no library's `except Exception` can swallow it
    """Raised inside a render that ran past its deadline (by the watchdog thread)."""


class _Watchdog:
    """One daemon thread for the whole process: a render registers its deadline; a render still
    running past it gets :class:`_RenderTimeout` raised in its thread at the next bytecode (Jinja
    templates are compiled to Python, so a runaway loop is interrupted). Costs two dict operations
    per render."""

    def __init__(self) -> None:
        import threading

        self.deadlines: dict[int, float] = {}
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
                        del self.deadlines[tid]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(tid), ctypes.py_object(_RenderTimeout)
                        )

    def __call__(self, seconds: float):
        import contextlib
        import threading
        import time

        if self.thread is None:
            with self.lock:
                if self.thread is None:
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

        return bounded()


_watchdog = _Watchdog()


def apply_chat_template(tokenizer, conversation, **kwargs):
    """``tokenizer.apply_chat_template`` (transformers' sandboxed renderer), bounded in time and in
    output size; every failure of the template is a one-line :class:`TemplateError`."""
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    many = bool(conversation) and isinstance(conversation[0], (list, tuple))
    scale = min(len(conversation), 8) if many else 1
    if not getattr(tokenizer, "chat_template", None) and not kwargs.get("chat_template"):
        raise TemplateError(
            "this model has no chat template (a base model?): give it one — --chat-template chatml here, "
            "chat_template: chatml in %%sft_train — or use a chat model"
        )
    try:
        try:
            with _watchdog(RENDER_SECONDS * scale):
                out = tokenizer.apply_chat_template(conversation, **kwargs)
        except _RenderTimeout:
            raise TemplateError(
                f"the chat template ran for more than {RENDER_SECONDS * scale:g} s and was stopped "
                "(a loop that does not end?)"
            ) from None
    except TemplateError:
        raise
    except SecurityError as err:
        raise TemplateError(f"the chat template was refused by the sandbox ({err}); nothing was run") from None
    except JinjaTemplateError as err:
        raise TemplateError(f"the chat template raised: {' '.join(str(err).split())[:300]}") from None
    except MemoryError:
        raise TemplateError("the chat template produced more text than fits in memory") from None
    except Exception as err:
        raise TemplateError(
            f"the chat template failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        ) from None
    _check_size(out, RENDER_CHARS * scale)
    return out


def _check_size(out, limit: int) -> None:
    texts = out if isinstance(out, list) else [out]
    size = sum(len(t) for t in texts if isinstance(t, str))
    if size > limit:
        raise TemplateError(
            f"the chat template produced {size:,} characters (the limit is {limit:,}): "
            "a template that repeats text without end?"
        )
