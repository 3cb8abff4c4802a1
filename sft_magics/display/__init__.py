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


def make_reporter(mode: str, title: str = "training", on_stop=None):
    """A live training dashboard (an event sink with ``close()``) for the chosen backend.

    ``on_stop`` is called (once, on the kernel's main thread) when the user presses the widget's
    Stop button. Without ipywidgets, "widget" falls back to plain lines, and says so once.
    """
    from . import _dashboard as d

    if mode == "widget":
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            if not getattr(make_reporter, "_said", False):
                print("ipywidgets is not installed: showing training progress as text", flush=True)
                make_reporter._said = True
            mode = "plain"
    if mode == "rich":
        from ._rich_dashboard import RichDashboard

        return RichDashboard(title, on_stop=on_stop)
    cls = d.WidgetDashboard if mode == "widget" else d.PlainDashboard
    return cls(title, on_stop=on_stop)
