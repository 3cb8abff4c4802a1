"""The one base class of the core's user-facing errors.

Every error a user can cause (a bad key, row, file, name or template) derives from
:class:`SftError`; its message is one line that names what is wrong and where. The magics turn
``SftError`` into IPython's ``UsageError`` in one place (``magics/_common.py``); a script sees the
``SftError`` itself. Each subclass also keeps the builtin base it had (``ValueError``,
``RuntimeError``) so ``except ValueError`` in user code still works.
"""

from __future__ import annotations


class SftError(Exception):
    """A problem the user can fix: one line naming the key, row, file or rule."""

    def __str__(self) -> str:  # one line, always: newlines in a cause would break the promise
        return " ".join(super().__str__().split())


def one_line(err: BaseException | str, limit: int | None = 240, *, named: bool = False) -> str:
    """An exception's message (or any text) as one line of at most ``limit`` characters; ``named``:
    after the exception's type (``ValueError: ...``). The one way a cause is shown in a message."""
    text = " ".join(str(err).split())
    text = text if limit is None else text[:limit]
    return f"{type(err).__name__}: {text}" if named and isinstance(err, BaseException) else text


class EvalError(SftError, ValueError):
    """A user-facing evaluation problem (bad metric name, no few-shot data, ...); one line.
    Here rather than in core/evaluate/evaluation.py because the metric registry (core/evaluate/metrics.py) raises it too."""


class ExportError(SftError, RuntimeError):
    """An export that cannot be written or does not verify; one line. Here because both the writer
    (core/export/folder.py) and the verifier (core/export/verify.py) raise it."""


class ConfigError(SftError, ValueError):
    """A bad key or value in a training spec; one line naming the key. Here because the config
    (core/train/config.py) and its value checks (core/train/checks.py) raise it."""
