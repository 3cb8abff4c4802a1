"""%%sft_train in a real Jupyter kernel: the kernel's interrupt and the Stop button's comm message
both end a running training gracefully (status "stopped", a usable checkpoint)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


def _notebook(tiny_model: str, data: str, runs: Path, name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext sft_magics\n%config SftMagics.output_dir = {str(runs)!r}"),
        nbformat.v4.new_code_cell(
            f"%%sft_train --name {name} -o run\nmodel: {tiny_model}\ndataset: {data}\n"
            "max_steps: 100000\nper_device_train_batch_size: 4\nsave_steps: 100000\nlogging_steps: 1\n"
        ),
        nbformat.v4.new_code_cell("print(run.status, run.global_step)"),
    ]
    return nb


def _steps_logged(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if '"kind": "log"' in line]
    return max(steps, default=0)


async def _run_and(nb, run_dir: Path, action, timeout: float = 240):
    """Execute the notebook; once training has logged 3 steps, call action(client)."""
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False)
    runner = asyncio.create_task(client.async_execute())  # starts, runs and shuts down the kernel
    deadline = time.time() + timeout
    while _steps_logged(run_dir) < 3:
        assert time.time() < deadline, "training never started"
        if runner.done():
            runner.result()  # raises what went wrong
            pytest.fail("the notebook ended before training started")
        await asyncio.sleep(0.2)
    await action(client)
    await asyncio.wait_for(runner, timeout)
    return nb


def _assert_stopped_with_checkpoint(nb, run_dir: Path):
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped", status
    step = status["step"]
    assert 3 <= step < 100000
    checkpoint = run_dir / f"checkpoint-{step}"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / "trainer_state.json").is_file()
    assert (run_dir / "final" / "adapter_config.json").is_file()
    out = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert out.strip() == f"stopped {step}"
    # The checkpoint is usable: it loads as an adapter on its base model.
    from sft_magics.core.models import load_model

    loaded = load_model(str(checkpoint))
    assert loaded.is_peft


def test_kernel_interrupt_stops_the_run_gracefully(tiny_model, qa_jsonl, tmp_path):
    runs = tmp_path / "runs"
    nb = _notebook(tiny_model, qa_jsonl, runs, "intr")

    async def interrupt(client):
        await client.km.interrupt_kernel()

    nb = asyncio.run(_run_and(nb, runs / "intr", interrupt))
    _assert_stopped_with_checkpoint(nb, runs / "intr")


def test_stop_button_comm_message_stops_the_run(tiny_model, qa_jsonl, tmp_path):
    runs = tmp_path / "runs"
    nb = _notebook(tiny_model, qa_jsonl, runs, "button")

    async def click_stop(client):
        # The kernel announced every widget with comm_open; find the Stop button among them.
        stop_ids = [
            cid
            for cid, w in client.widget_state.items()
            if w.get("_model_name") == "ButtonModel" and w.get("description") == "Stop"
        ]
        assert len(stop_ids) == 1, client.widget_state
        msg = client.kc.session.msg(
            "comm_msg", {"comm_id": stop_ids[0], "data": {"method": "custom", "content": {"event": "click"}}}
        )
        client.kc.shell_channel.send(msg)

    nb = asyncio.run(_run_and(nb, runs / "button", click_stop))
    _assert_stopped_with_checkpoint(nb, runs / "button")
    # The static summary stays in the saved notebook (widget state is not saved with it).
    html = "".join(
        o.get("data", {}).get("text/html", "") for o in nb.cells[1].outputs if o.get("output_type") == "display_data"
    )
    assert "stopped" in html and "data:image/png;base64," in html
    # ...in place of the live widget: one record of the run, not the widget plus a copy.
    views = [o for o in nb.cells[1].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views == [] and html.count("sft-train-summary") == 1
