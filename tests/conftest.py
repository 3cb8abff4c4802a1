"""Shared fixtures: a tiny random model (built once per session) and a real IPython shell."""

from __future__ import annotations

import json
import os

# No hub at test time: make any accidental Hub access fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads spin by default; on a busy 2-core machine that made main-thread training up
# to 10x slower (measured by benchmarks/bench_train_overhead.py). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from sft_magics.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def shell(tmp_path):
    """A real InteractiveShell with the extension loaded, plain display, runs under tmp_path."""
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "sft_magics")
    sh.run_line_magic("config", "SftMagics.display = 'plain'")
    sh.run_line_magic("config", f"SftMagics.output_dir = {str(tmp_path / 'runs')!r}")
    yield sh
    sh.run_line_magic("unload_ext", "sft_magics")
    # Reset settings so tests do not leak into each other through the shell's config.
    for key in ("display", "output_dir", "default_model"):
        sh.config.SftMagics.pop(key, None)


@pytest.fixture
def qa_jsonl(tmp_path) -> str:
    """A small conversational dataset with JSON answers."""
    rows = []
    for i in range(24):
        answer = json.dumps({"name": f"N{i}", "age": 20 + i})
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Person {i} is {20 + i}."},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
