"""The widget dashboard fed by a REAL training run (tiny model, TRL), not by synthetic events.

After every event the trainer emits, the test samples what a user would see — the progress bar,
its label, the chart's PNG — and checks the run as a whole: progress only moves forward and ends
at the last step, the chart moves during the run, the metrics show the last logged loss, and the
draws respect the throttle. The Stop button, clicked from another thread while the run trains,
ends it as ``stopped`` with a checkpoint.

Training runs on the magic's own worker thread (``magics._runner.TrainingThread``), as in a notebook: the
dashboard is fed from that thread while the test's main thread, standing in for the kernel, waits
or clicks. Torch runs one intra-op thread here: with two, libgomp's idle OpenMP threads spin-wait,
and on a 2-core machine that other processes also use, this 40-step run took 74-96 s instead of
6-11 s (model loading included; the tiny model gains nothing from a second thread anyway).
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from sft_magics.core.train.callbacks import StopFlag
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.trainer import train
from sft_magics.display._dashboard import WidgetDashboard
from sft_magics.magics._runner import TrainingThread

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def shown(monkeypatch):
    """Everything passed to IPython.display.display (close() leaves the static summary there)."""
    calls = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: calls.extend(objs))
    return calls


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(tmp_path, tiny_model, qa_jsonl, name, **extra):
    config = {
        "model": tiny_model,
        "dataset": qa_jsonl,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        **extra,
    }
    return TrainSpec.from_mapping(name, config, output_dir=str(tmp_path / "runs"))


class Sampler:
    """The sink the trainer sees: forwards each event to the dashboard, then records what it shows."""

    def __init__(self, dashboard: WidgetDashboard, on_sample=None):
        self.dashboard, self.on_sample = dashboard, on_sample
        self.samples: list[dict] = []

    def __call__(self, event) -> None:
        self.dashboard(event)
        d = self.dashboard
        self.samples.append(
            {
                "kind": event.kind,
                "step": (event.data or {}).get("step"),
                "bar": d.bar.value,
                "max": d.bar.max,
                "label": d.label.value,
                "png": bytes(d.image.value),
            }
        )
        if self.on_sample:
            self.on_sample(self.samples[-1])


def _label_step(label: str) -> tuple[int, int | None]:
    """``step N/M · ...`` (``M`` is ``?`` until the trainer has said how many steps it will take)."""
    m = re.match(r"step (\d+)/(\d+|\?) · ", label)
    assert m, label
    return int(m.group(1)), None if m.group(2) == "?" else int(m.group(2))


def test_widget_dashboard_follows_a_real_run(tmp_path, tiny_model, qa_jsonl, shown):
    steps = 40
    dash = WidgetDashboard("live-run", show=False)
    dash.chart_interval = 0.1  # the class default is 2 s; a 40-step tiny run is shorter than that
    sampler = Sampler(dash)
    start = time.monotonic()
    spec = _spec(tmp_path, tiny_model, qa_jsonl, "live", max_steps=steps)
    result = TrainingThread(lambda: train(spec, sink=sampler), request_stop=lambda: None).wait()
    dash.close()
    elapsed = time.monotonic() - start

    assert result.status == "finished" and result.global_step == steps
    samples = sampler.samples
    logs = [s for s in samples if s["kind"] == "log" and s["step"] is not None]
    # Every trained step was logged (logging_steps 1), and the bar never went back.
    losses = result.losses()
    assert [step for step, _ in losses] == list(range(1, steps + 1))
    bars = [s["bar"] for s in samples]
    assert bars == sorted(bars), bars
    label_steps = [_label_step(s["label"])[0] for s in samples]
    assert label_steps == sorted(label_steps), label_steps
    # While training the bar lags the trainer by at most the throttle, never leads it.
    for s in logs:
        assert s["bar"] <= s["step"]
    final = samples[-1]
    assert final["kind"] == "finished"
    assert (final["bar"], final["max"]) == (steps, steps)
    assert _label_step(final["label"]) == (steps, steps) and "done in" in final["label"]
    assert dash.bar.bar_style == "success"
    # The bar was already at work during the run: some sample between the first and the last log
    # shows an intermediate step.
    assert any(0 < s["bar"] < steps for s in logs), bars

    # The chart moved on during the run (not only at the end), and every image is a PNG.
    during = [s["png"] for s in samples if s["kind"] not in ("finished", "stopped", "failed") and s["png"]]
    assert during and all(p.startswith(PNG) for p in during)
    assert len(set(during)) >= 2, f"the chart never changed while training ({dash.charts} charts in {elapsed:.1f} s)"
    assert bytes(dash.image.value) == dash.png and dash.png.startswith(PNG)
    assert dash._chart_version == dash.state.version  # the final chart has every loss

    # The metrics table shows the last logged loss; the state holds every loss the trainer logged.
    last_loss = losses[-1][1]
    assert f">{last_loss:.4f}<" in dash.metrics.value
    assert dash.state.losses == losses

    # The throttle: at most 4 draws a second, plus the events that always draw (status changes,
    # started, the end) and the final draw at close; charts at most one per chart_interval + those.
    always = sum(s["kind"] in ("status", "started", "finished") for s in samples) + 1
    assert dash.draws <= 4 * elapsed + always, (dash.draws, elapsed, always)
    assert dash.charts <= elapsed / dash.chart_interval + always, (dash.charts, elapsed)
    assert dash.errors == []
    print(
        f"\n{steps} steps in {elapsed:.2f} s: {len(samples)} events, {dash.draws} draws, {dash.charts} charts "
        f"({len(set(during))} distinct during the run), always-draw events {always}"
    )

    # close() left a static summary with the final chart for a saved notebook.
    (summary,) = shown
    assert "live-run" in summary.data and "finished" in summary.data and "data:image/png;base64," in summary.data
    assert f"{last_loss:.4f}" in summary.data


def test_stop_button_clicked_from_another_thread_stops_a_real_run(tmp_path, tiny_model, qa_jsonl, shown):
    stop = StopFlag()
    dash = WidgetDashboard("stop-run", on_stop=stop.set, show=False)
    reached = threading.Event()
    sampler = Sampler(dash, on_sample=lambda s: s["kind"] == "log" and (s["step"] or 0) >= 3 and reached.set())
    max_steps = 400
    spec = _spec(tmp_path, tiny_model, qa_jsonl, "stopme", max_steps=max_steps)
    worker = TrainingThread(lambda: train(spec, sink=sampler, stop=stop), request_stop=stop.set)
    # The main thread (the kernel's, in a notebook) clicks while the worker trains.
    clicked_at, mid_run = [], False
    if reached.wait(120):
        mid_run = worker._thread.is_alive()
        clicked_at.append(dash.state.step)
        dash.stop_button.click()  # what a frontend click does: the button's on_click handlers run
    else:
        stop.set()  # do not leave a 400-step run behind
    result = worker.wait()
    dash.close()

    assert clicked_at, "the run never reached step 3"
    assert mid_run
    assert result.status == "stopped"
    assert clicked_at[0] <= result.global_step < max_steps
    assert (result.path / f"checkpoint-{result.global_step}").is_dir()
    assert (result.path / "final" / "adapter_config.json").is_file()
    assert json.loads((result.path / "status.json").read_text())["state"] == "stopped"
    # The dashboard says so: checkpoint, status, button, bar.
    assert dash.state.status == "stopped" and dash.state.checkpoint.endswith(f"checkpoint-{result.global_step}")
    assert dash.stop_button.disabled and dash.stop_button.description == "stopped"
    assert dash.bar.bar_style == "warning" and dash.bar.value == result.global_step
    assert sampler.samples[-1]["kind"] == "stopped"
    assert dash.errors == []
    print(f"\nclicked at step {clicked_at[0]}, stopped at step {result.global_step} of {max_steps}")
