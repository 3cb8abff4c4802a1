"""Display backends: one interface, three renderers (widget / rich / plain).

Views are plain objects with ``to_text()``, ``to_html()`` and ``__rich__()``; reporters are event
sinks for training progress. Which backend to use is decided once, in :func:`detect_mode`.
This package may import IPython, ipywidgets and rich, but only inside functions, so that
``%load_ext sft_magics`` stays fast.
"""

from __future__ import annotations

import sys

MODES = ("auto", "widget", "rich", "plain")


def detect_mode(setting: str = "auto") -> str:
    """'widget' in a Jupyter kernel, 'rich' in terminal IPython, 'plain' otherwise (scripts, CI)."""
    if setting not in MODES:
        raise ValueError(f"display mode must be one of {', '.join(MODES)}, got '{setting}'")
    if setting != "auto":
        return setting
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    kind = type(shell).__name__ if shell else ""
    if kind == "ZMQInteractiveShell":
        return "widget"
    if kind == "TerminalInteractiveShell":
        return "rich"
    return "plain"


def show(view, mode: str) -> None:
    """Show a static view with the chosen backend."""
    if mode == "rich":
        from rich.console import Console

        Console().print(view)
    elif mode == "widget":
        from IPython.display import display

        display(view)  # the view's _repr_html_ / _repr_pretty_ / text/plain forms
    else:
        print(view.to_text())


def make_reporter(mode: str, title: str = "training"):
    """A training-progress sink for the chosen backend."""
    from ._progress import PlainReporter, RichReporter, WidgetReporter

    return {"widget": WidgetReporter, "rich": RichReporter}.get(mode, PlainReporter)(title)
