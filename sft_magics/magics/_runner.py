"""Run a blocking job (training) off the main thread while the cell waits.

Why: frontend messages (a Stop button click) are not processed while a cell runs. The job runs on
a worker thread, and the cell waits for it in a way that lets the kernel handle button clicks:

- ipykernel 7 handles comm messages while an *async* cell is awaiting. In a kernel, the extension
  rewrites a ``%%sft_train`` cell into an awaited call (see :func:`await_transformer`), and the
  wait is ``await asyncio.sleep`` in a loop. The kernel's interrupt arrives as CancelledError.
- ipykernel 6 does not, but it has ``do_one_iteration``, which jupyter-ui-poll uses to pump
  queued UI messages from a synchronous wait.
- Outside a kernel (terminal IPython, scripts) the wait is a plain join.

Either way Ctrl-C / the interrupt button asks the job to stop gracefully (a checkpoint is saved at
the next step) and the wait goes on until it has.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from collections.abc import Callable
from typing import Any


def _kernel():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return getattr(shell, "kernel", None) if type(shell).__name__ == "ZMQInteractiveShell" else None


def kernel_pumps_comms_when_awaiting() -> bool:
    """ipykernel >= 7 dispatches comm messages while an async cell awaits (and has no
    do_one_iteration for jupyter-ui-poll)."""
    kernel = _kernel()
    return kernel is not None and not hasattr(kernel, "do_one_iteration")


class TrainingThread:
    """A job (training) on a daemon thread of the kernel; its value or exception is handed back to
    the waiter. (A *process* that trains is ``core.worker``'s worker.)"""

    def __init__(self, job: Callable[[], Any], request_stop: Callable[[], None]):
        self.request_stop = request_stop
        self._box: dict[str, Any] = {}
        self._interrupted = False
        self._thread = threading.Thread(target=self._run, args=(job,), name="sft-train", daemon=True)
        self._thread.start()

    def _run(self, job) -> None:
        try:
            self._box["value"] = job()
        except BaseException as err:
            self._box["error"] = err

    def _interrupt(self) -> None:
        if not self._interrupted:
            self._interrupted = True
            self.request_stop()

    def _result(self) -> Any:
        if "error" in self._box:
            raise self._box.pop("error")
        return self._box.get("value")

    def wait(self) -> Any:
        """Synchronous wait; pumps UI events with jupyter-ui-poll on kernels that allow it."""
        kernel = _kernel()
        pump = kernel is not None and hasattr(kernel, "do_one_iteration")
        while self._thread.is_alive():
            try:
                if pump:
                    self._wait_pumping()
                else:
                    self._thread.join(0.1)
            except KeyboardInterrupt:
                self._interrupt()
        return self._result()

    def _wait_pumping(self) -> None:
        import time

        from jupyter_ui_poll import ui_events

        with ui_events() as poll:
            while self._thread.is_alive():
                poll(20)  # process up to 20 queued frontend messages (button clicks)
                time.sleep(0.05)

    async def wait_async(self) -> Any:
        """Asynchronous wait: the kernel handles comm messages (Stop clicks) meanwhile."""
        while self._thread.is_alive():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # the kernel's interrupt, for an async cell
                self._interrupt()
        return self._result()


_CALL = re.compile(r"^get_ipython\(\)\.run_(?:cell|line)_magic\('sft_train', ")


def await_transformer(lines: list[str]) -> list[str]:
    """IPython post-input transformer: ``%%sft_train`` / ``%sft_train`` (already turned into
    ``get_ipython().run_cell_magic('sft_train', ...)`` or ``run_line_magic``) becomes an awaited call of the async
    variant, so ipykernel runs the cell as a coroutine and keeps handling button clicks."""
    if lines and _CALL.match(lines[0]):
        lines = [
            _CALL.sub("await get_ipython().magics_manager.registry['SftMagics'].sft_train_async(", lines[0], count=1),
            *lines[1:],
        ]
    return lines
