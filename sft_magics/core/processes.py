"""Processes the notebook starts and lets go: detached in a session of their own (they outlive the
kernel), reaped when they end (a finished one never looks alive), and the secret keys of a config
carried to them in their environment, never on disk. Background runs' supervisors
(core/train/worker.py) and sweeps' drivers (core/sweep/driver.py) start this way."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRETS_ENV = "SFT_MAGICS_SECRETS"  # secret keys reach another process in its environment, never on disk


def secrets_environment(secrets: Mapping[tuple, Any]) -> dict[str, str]:
    """The environment that carries secret keys (by their path in the config) to another process."""
    return {SECRETS_ENV: json.dumps([[list(k), v] for k, v in secrets.items()])} if secrets else {}


def secrets_from_environment() -> dict[tuple, Any]:
    """The secret keys :func:`secrets_environment` carried to this process."""
    return {tuple(k): v for k, v in json.loads(os.environ.get(SECRETS_ENV) or "[]")}


def start_detached(cmd: list[str], *, env: Mapping[str, str] | None = None, log: Path | None = None):
    """A process in a session of its own, so that it outlives the kernel (and a kernel restart); its
    output appended to ``log``; reaped when it ends, so a finished one never looks alive."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            cwd=os.getcwd(),
            env={**os.environ, **(env or {})},
        )
    finally:
        if log is not None:
            out.close()
    threading.Thread(target=proc.wait, name=f"sft-reap-{proc.pid}", daemon=True).start()
    return proc
