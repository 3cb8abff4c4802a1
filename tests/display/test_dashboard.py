"""The live training dashboards: one state model, widget / rich / plain renderers, the runs view.

No kernel needed: ipywidgets objects hold their values without a frontend, rich renders into a
StringIO console, and ``IPython.display.display`` is captured with monkeypatch.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
import time

import pytest

from sft_magics.core.events import Event
from sft_magics.core.progress import ProgressState
from sft_magics.display import make_reporter
from sft_magics.display._dashboard import PlainDashboard, WidgetDashboard
from sft_magics.display._rich_dashboard import RichDashboard
from sft_magics.display._runs_view import RunsView

PNG = b"\x89PNG\r\n\x1a\n"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def shown(monkeypatch):
    """Everything passed to IPython.display.display, in order."""
    calls = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: calls.extend(objs))
    return calls


def run_events(
    n=10, t0=None, *, dt=1.0, evals=(), name="demo", max_steps=None, tokens_per_step=100, final="finished", **final_data
):
    """A plausible training run's events: loading, started, training, n logs (loss 2/step), evals, final."""
    t0 = time.time() - n * dt - 5 if t0 is None else t0
    evs = [
        Event("status", {"state": "loading"}, t0),
        Event(
            "started",
            {
                "name": name,
                "model": "tiny",
                "device": "cpu",
                "dtype": "float32",
                "train_rows": 24,
                "eval_rows": 4,
                "trainable_params": 1_000,
                "total_params": 100_000,
                "num_train_epochs": 1,
                "max_steps": -1,
            },
            t0 + 1,
        ),
        Event("status", {"state": "training", "step": 0, "max_steps": max_steps or n}, t0 + 2),
    ]
    t = t0 + 2
    for i in range(1, n + 1):
        t += dt
        evs.append(
            Event(
                "log",
                {
                    "step": i,
                    "epoch": i / n,
                    "loss": 2.0 / i,
                    "grad_norm": 0.5,
                    "learning_rate": 1e-3,
                    "mean_token_accuracy": 0.25 + i / (4 * n),
                    "num_tokens": tokens_per_step * i,
                },
                t,
            )
        )
        if i in evals:
            evs.append(Event("eval", {"step": i, "epoch": i / n, "eval_loss": evals[i]}, t))
    evs.append(Event(final, {"step": n, "max_steps": max_steps or n, **final_data}, t + 1))
    return evs


# -- the state model --------------------------------------------------------------------------------
def test_state_follows_a_run():
    s = ProgressState()
    evs = run_events(10, t0=100.0, evals={5: 1.5, 10: 1.2})
    for e in evs[:9]:  # up to the 5th log and its eval
        s.update(e)
    assert (s.status, s.step, s.max_steps) == ("training", 5, 10)  # "started" said -1: ignored
    assert s.loss == pytest.approx(0.4) and s.eval_loss == 1.5 and s.learning_rate == 1e-3 and s.grad_norm == 0.5
    assert s.token_accuracy == pytest.approx(0.375)
    assert s.tokens_per_second == pytest.approx(100.0)  # 100 tokens a step, one step a second (event times)
    assert s.gpu_memory_gb is None and "GPU memory" not in dict(s.metrics())
    assert s.losses == [(i, pytest.approx(2.0 / i)) for i in range(1, 6)] and s.eval_losses == [(5, 1.5)]
    # ETA from the pace so far: 5 steps in 5 s, 5 to go; "now" is one second after the last log.
    s.clock = lambda: 108.0
    assert s.eta == pytest.approx(4.0) and s.elapsed == pytest.approx(8.0)
    assert s.progress_text() == "step 5/10 · epoch 0.50/1 · 00:08 elapsed · ETA 00:04"
    for e in evs[9:]:
        s.update(e)
    assert s.final and s.status == "finished" and s.eta == 0.0 and s.elapsed == pytest.approx(13.0)
    assert s.progress_text().endswith("done in 00:13") and s.alerts == []
    assert dict(s.metrics())["eval loss"] == "1.2000" and dict(s.metrics())["tokens/s"] == "100"


def test_the_eta_counts_evaluations_at_their_own_pace_and_waits_while_one_runs():
    """Training pace without the evaluation pauses, plus the evaluations still due: not a countdown
    that runs on during an evaluation and then jumps (``ETA 00:04`` while evaluating, then 00:21)."""
    s = ProgressState()
    s.update(Event("started", {"max_steps": 10, "eval_steps": 5, "learning_rate": 2e-3}, 1.0))
    s.update(Event("status", {"state": "training", "step": 0, "max_steps": 10}, 2.0))
    for i in range(1, 6):  # one step a second
        s.update(Event("log", {"step": i, "loss": 1.0}, 2.0 + i))
    s.update(Event("status", {"state": "evaluating", "step": 5}, 7.0))
    for now in (9.0, 15.0):  # the first evaluation: its length is not known yet, and training waits
        s.clock = lambda now=now: now
        assert s.eta == pytest.approx(5.0)
    s.update(Event("status", {"state": "training", "step": 5}, 17.0))  # it took 10 s
    s.clock = lambda: 17.5  # between the evaluation's end and the next step: half a step into step 6
    assert s.eta == pytest.approx(4.5 + 10.0)
    s.update(Event("log", {"step": 6, "loss": 1.0}, 18.0))
    s.clock = lambda: 18.0
    assert s.eta == pytest.approx(4.0 + 10.0)  # 4 steps of 1 s, and the evaluation at step 10
    s.update(Event("log", {"step": 10, "loss": 1.0}, 22.0))
    s.update(Event("status", {"state": "evaluating", "step": 10}, 22.0))
    s.clock = lambda: 26.0
    assert s.eta == pytest.approx(6.0)  # the rest of this evaluation, at the first one's length
    assert s.eval_spans == [(7.0, 10.0)]


def test_the_eta_counts_down_between_logs_and_adds_the_last_steps_evaluation():
    """logging_steps 5: the ETA keeps counting down between logs (not one step's worth, then frozen);
    an eval_steps that does not divide max_steps still evaluates at the end (transformers' rule)."""
    s = ProgressState()
    s.update(Event("started", {"max_steps": 12, "eval_steps": 5}, 0.0))
    s.update(Event("status", {"state": "training", "step": 0, "max_steps": 12}, 0.0))
    s.update(Event("log", {"step": 5, "loss": 1.0}, 5.0))
    s.update(Event("status", {"state": "evaluating", "step": 5}, 5.0))
    s.update(Event("status", {"state": "training", "step": 5}, 7.0))
    s.clock = lambda: 10.0  # 3 s into steps 6..: 7 steps of 1 s left less 3, evaluations at 10 and 12
    assert s.eta == pytest.approx(7 - 3 + 2 * 2.0)
    s.clock = lambda: 12.0
    assert s.eta == pytest.approx(7 - 5 + 2 * 2.0)


def test_a_changed_alert_is_printed_again_in_the_plain_log(capsys):
    d = PlainDashboard("r")
    d(Event("answers", {"step": 3, "rows": 2, "never_ended": 2, "max_new_tokens": 8}))
    d(Event("answers", {"step": 6, "rows": 2, "never_ended": 0, "max_new_tokens": 8}))
    d(Event("answers", {"step": 9, "stopped": "RuntimeError: out of memory"}))
    out = capsys.readouterr().out
    assert "alert: 2 of 2 answers never ended at step 3: no end-of-turn token" in out
    assert "alert: 2 of 2 answers never ended at step 3; every answer ended from step 6" in out
    assert "alert: answers no longer watched from step 9: RuntimeError: out of memory" in out
    assert out.count("answers at step") == 2  # a stopped watch prints its alert, not stale answers


def test_the_learning_rate_cell_says_the_schedule_value_and_the_peak():
    s = ProgressState()
    s.update(Event("started", {"max_steps": 10, "learning_rate": 2e-3}, 1.0))
    s.update(Event("log", {"step": 9, "learning_rate": 6.29e-06}, 2.0))
    assert dict(s.metrics())["lr now"] == "6.29e-06 (peak 2.00e-03)"
    s.update(Event("log", {"step": 10, "learning_rate": 2e-3}, 3.0))
    assert dict(s.metrics())["lr now"] == "2.00e-03"  # at the peak, once


def test_an_alert_about_the_answers_says_when_it_stopped_being_true():
    s = ProgressState()

    def answers(step, never, empty=0):
        s.update(
            Event("answers", {"step": step, "rows": 8, "never_ended": never, "empty": empty, "max_new_tokens": 24})
        )

    answers(10, 8, empty=2)
    assert s.alerts[0].startswith("8 of 8 answers never ended at step 10: no end-of-turn token within 24")
    assert s.alerts[1] == "2 of 8 answers are empty at step 10"
    answers(20, 0)
    assert s.alerts == [
        "8 of 8 answers never ended at step 10; every answer ended from step 20",
        "2 of 8 answers are empty at step 10; no empty answer from step 20",
    ]
    answers(30, 0)  # still fine: said once
    assert s.alerts[0] == "8 of 8 answers never ended at step 10; every answer ended from step 20"
    answers(40, 3)  # true again: says the latest
    assert s.alerts[0].startswith("3 of 8 answers never ended at step 40:") and len(s.alerts) == 2


def test_the_charts_hold_every_point_and_the_image_waits_for_its_first_chart(shown):
    """The last eval point and the best star inside the axes (not cut at the right edge or the top);
    no <img> without a picture (a broken-image icon) before the first chart."""
    from sft_magics.display._dashboard_html import LossChart

    chart = LossChart(metric="json_match")
    chart.render([(i, 1.0 / i) for i in range(1, 13)], [(12, 0.5)], 12, [(6, 0.5), (12, 1.0)], (1.0, 12))
    assert chart.ax.get_xlim()[1] >= 12.5 and chart.max.get_xlim() == chart.ax.get_xlim()
    low, high = chart.max.get_ylim()
    assert high >= 1.08 and low <= -0.08
    assert chart.max.title.get_fontsize() >= 10
    d = WidgetDashboard("t", show=False)
    assert d.image.layout.display == "none"
    for e in run_events(3, evals={3: 1.0}):
        d(e)
    d.close()
    assert d.png and d.image.layout.display is None


def test_epochs_are_not_shown_out_of_a_total_the_trainer_ignores():
    s = ProgressState()  # with max_steps set, num_train_epochs does not bound the run
    s.update(Event("started", {"max_steps": 120, "num_train_epochs": 1}, 0.0))
    s.update(Event("log", {"step": 100, "epoch": 2.5, "loss": 1.0}, 1.0))
    assert s.progress_text().startswith("step 100/120 · epoch 2.50 · ")


def test_tokens_per_second_and_gpu_memory_from_log_deltas():
    s = ProgressState()
    s.update(Event("status", {"state": "training", "step": 0, "max_steps": 4}, 0.0))
    s.update(Event("log", {"step": 1, "loss": 1.0, "num_tokens": 1000, "gpu_memory_gb": 3.25}, 2.0))
    assert s.tokens_per_second == pytest.approx(500.0)  # from the start of training, 0 tokens
    s.update(Event("log", {"step": 2, "loss": 1.0, "num_tokens": 3000}, 3.0))
    assert s.tokens_per_second == pytest.approx(1000.0)  # 3000 tokens over 3 s of the window
    assert dict(s.metrics())["GPU memory"] == "3.25 GB"


@pytest.mark.parametrize(
    "logs, expected",
    [
        ([{"loss": float("nan")}], "loss is NaN"),
        ([{"loss": 0.0}], "loss is exactly 0"),
        ([{"loss": 1.0, "grad_norm": float("inf")}], "grad norm is infinite"),
        ([{"loss": 1.0, "grad_norm": float("nan")}], "grad norm is NaN"),
    ],
)
def test_alerts_for_broken_losses_and_gradients(logs, expected):
    s = ProgressState()
    for step in (1, 2, 3):  # the same problem three times: one alert, naming the first step
        for d in logs:
            s.update(Event("log", {"step": step, **d}, float(step)))
    assert len(s.alerts) == 1 and s.alerts[0].startswith(expected) and "(step 1)" in s.alerts[0]


def test_no_alerts_for_a_healthy_run():
    s = ProgressState()
    for e in run_events(20, t0=0.0, evals={4: 1.0, 8: 0.9, 12: 0.95, 16: 0.9, 20: 0.8}):
        s.update(e)
    assert s.alerts == []


def test_eval_loss_rising_three_times_in_a_row_alerts_two_does_not():
    s = ProgressState()
    for step, value in [(10, 1.0), (20, 1.1), (30, 1.2)]:  # two rises
        s.update(Event("eval", {"step": step, "eval_loss": value}, float(step)))
    assert s.alerts == []
    s.update(Event("eval", {"step": 40, "eval_loss": 1.1}, 40.0))  # a fall resets the count
    s.update(Event("eval", {"step": 50, "eval_loss": 1.15}, 50.0))
    s.update(Event("eval", {"step": 60, "eval_loss": 1.2}, 60.0))
    assert s.alerts == []
    s.update(Event("eval", {"step": 70, "eval_loss": 1.3}, 70.0))  # the third rise in a row
    assert len(s.alerts) == 1 and "eval loss rose 3 evaluations in a row (step 70)" in s.alerts[0]
    s.update(Event("eval", {"step": 80, "eval_loss": 1.4}, 80.0))
    assert len(s.alerts) == 1  # de-duplicated


# -- the widget dashboard ---------------------------------------------------------------------------
def test_widget_dashboard_fed_from_a_thread(shown):
    on_stop_calls = []
    dash = make_reporter("widget", title="json-lora", on_stop=lambda: on_stop_calls.append(1))
    assert isinstance(dash, WidgetDashboard) and shown == [dash.box]  # shown once, at creation
    clock = Clock()
    dash.clock = clock
    evs = run_events(10, evals={5: 1.5})

    def feed(events):
        for e in events:
            clock.t += 1.0  # a second between events: every one draws
            dash(e)

    worker = threading.Thread(target=feed, args=(evs[:9],))  # up to step 5 and its eval
    worker.start()
    worker.join()
    assert shown == [dash.box]  # nothing displayed from the training thread
    assert (dash.bar.value, dash.bar.max) == (5, 10)
    assert re.fullmatch(r"step 5/10 · epoch 0\.50/1 · \d\d:\d\d elapsed · ETA 00:0\d", dash.label.value)
    assert "training" in dash.header.value and "json-lora" in dash.header.value
    assert "tiny on cpu (float32)" in dash.header.value
    metrics = dash.metrics.value
    for text in ("0.4000", "1.5000", "1.00e-03", "0.500", "0.375", "tokens/s", "100"):
        assert text in metrics
    assert "GPU memory" not in metrics
    first_png = bytes(dash.image.value)
    assert first_png.startswith(PNG)

    worker = threading.Thread(target=feed, args=(evs[9:],))
    worker.start()
    worker.join()
    assert bytes(dash.image.value).startswith(PNG) and bytes(dash.image.value) != first_png  # the chart moved on
    assert (dash.bar.value, dash.bar.bar_style) == (10, "success")
    assert dash.label.value.startswith("step 10/10 · epoch 1.00/1 · done in")
    assert dash.stop_button.disabled and on_stop_calls == []
    assert dash.errors == []


def test_chart_renders_at_most_every_two_seconds_and_always_at_the_end(shown):
    dash = WidgetDashboard("r", show=False)
    dash.trailing = False  # only the clock decides here
    clock = Clock()
    dash.clock = clock
    evs = run_events(12)
    for e in evs[:3]:  # loading, started, training: no loss yet, no chart
        dash(e)
    assert dash.charts == 0 and bytes(dash.image.value) == b""
    clock.t += 0.3
    dash(evs[3])  # the first loss: the first curve renders at once
    assert dash.charts == 1
    png = bytes(dash.image.value)
    for e in evs[4:8]:  # 4 more logs within 1.2 s of the clock: labels redraw, the chart waits
        clock.t += 0.3
        dash(e)
    assert dash.charts == 1 and bytes(dash.image.value) == png and dash.bar.value == 5
    clock.t += 1.0  # 2.2 s since the last chart
    dash(evs[8])
    assert dash.charts == 2 and bytes(dash.image.value) != png
    dash(evs[9])  # same instant: no new chart...
    assert dash.charts == 2
    for e in evs[10:]:  # ...but the final event always renders
        dash(e)
    assert dash.charts == 3 and dash.state.final
    dash.close()
    assert dash.charts == 3  # nothing new to draw at close


def test_throttling_5000_events_in_a_tight_loop(shown):
    dash = WidgetDashboard("fast", show=False)
    changes = []
    dash.label.observe(lambda change: changes.append(change["new"]), names="value")
    n = 5000
    evs = run_events(n, dt=0.001, evals={2500: 0.5, 5000: 0.4})
    start = time.monotonic()
    worker = threading.Thread(target=lambda: [dash(e) for e in evs])
    worker.start()
    worker.join()
    dash.close()
    elapsed = time.monotonic() - start
    # always-draw events here: status x2, started, 2 evals, the end, close; plus one per 0.25 s
    assert dash.draws <= elapsed * 4 + 10, (dash.draws, elapsed)
    assert len(changes) <= dash.draws
    assert dash.charts <= elapsed / 2 + 5
    s = dash.state
    assert (s.step, s.status, len(s.losses), len(s.eval_losses)) == (n, "finished", n, 2)
    assert s.loss == pytest.approx(2.0 / n) and s.eval_loss == 0.4
    assert (dash.bar.value, dash.bar.max) == (n, n) and dash.label.value.startswith(f"step {n}/{n}")
    assert f"{2.0 / n:.4f}" in dash.metrics.value
    assert dash.errors == []


def test_a_burst_is_drawn_by_the_trailing_timer(shown):
    dash = WidgetDashboard("burst", show=False)
    dash.interval, dash.chart_interval = 0.05, 0.1
    evs = run_events(30)
    for e in evs[:-1]:  # everything but the end, at once: most events are not drawn right away
        dash(e)
    deadline = time.monotonic() + 5
    while (dash.bar.value != 30 or dash.state.version != dash._chart_version) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dash.bar.value == 30 and dash.label.value.startswith("step 30/30")
    assert dash._chart_version == dash.state.version  # the chart caught up too
    dash.close()


def test_stop_button_calls_on_stop_once_and_disables_itself(shown):
    calls = []
    dash = WidgetDashboard("r", on_stop=lambda: calls.append(1))
    assert dash.stop_button in dash.box.children and not dash.stop_button.disabled
    assert dash.stop_button.description == "Stop"
    dash.stop_button.click()
    dash.stop_button.click()
    assert calls == [1]
    assert dash.stop_button.disabled and dash.stop_button.description == "stopping…"
    for e in run_events(3, final="stopped"):
        dash(e)
    assert dash.stop_button.description == "stopped" and dash.bar.bar_style == "warning"


def test_no_stop_button_without_on_stop(shown):
    dash = WidgetDashboard("r")
    assert dash.stop_button not in dash.box.children


def test_close_replaces_the_live_widget_by_its_summary_in_place(monkeypatch):
    """In a notebook the widget is displayed with a display id; close() updates that same output to
    the static summary, so the cell keeps one record of the run (and a saved notebook keeps it)."""
    from IPython.display import HTML

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    handle, shown = Handle(), []

    def display(*objs, display_id=None, **kw):
        shown.extend(objs)
        return handle if display_id else None

    monkeypatch.setattr("IPython.display.display", display)
    dash = WidgetDashboard("in-place")
    for e in run_events(4):
        dash(e)
    dash.close()
    assert shown == [dash.box]  # nothing displayed a second time
    (summary,) = handle.updates
    assert isinstance(summary, HTML) and "in-place" in summary.data and "step 4/4" in summary.data


def test_close_leaves_a_static_summary(shown):
    from IPython.display import HTML

    dash = WidgetDashboard("summary-run")
    for e in run_events(6, evals={3: 1.0, 6: 0.9}):
        dash(e)
    assert shown == [dash.box]
    dash.close()
    dash.close()  # idempotent
    assert len(shown) == 2 and isinstance(shown[1], HTML)
    html = shown[1].data
    assert "finished" in html and "summary-run" in html and "step 6/6" in html and "0.9000" in html
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match and base64.b64decode(match.group(1)).startswith(PNG)
    assert base64.b64decode(match.group(1)) == bytes(dash.image.value)  # the same chart as the live view


def test_close_without_a_final_event_marks_the_run_ended(shown):
    dash = WidgetDashboard("r")
    dash(Event("status", {"state": "loading"}))
    dash.close()
    assert dash.state.status == "failed" and "ended before" in dash.state.error
    assert "failed" in shown[-1].data and "<img" not in shown[-1].data  # no losses, no chart


def test_event_text_is_escaped(shown):
    dash = WidgetDashboard("<b>run</b>")
    evs = run_events(
        2,
        name="<i>x</i>",
        final="failed",
        error="ValueError: <script>alert(1)</script>",
        hint="try <img src=x onerror=alert(2)>",
    )
    evs[1] = Event("started", {**evs[1].data, "model": "<script>m</script>"}, evs[1].time)
    for e in evs:
        dash(e)
    dash.close()
    for text in (dash.header.value, dash.alerts.value, shown[-1].data):
        assert "<script>" not in text and "<img src=x" not in text and "<b>run</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dash.alerts.value
    assert "&lt;img src=x onerror=alert(2)&gt;" in shown[-1].data
    assert "&lt;b&gt;run&lt;/b&gt;" in dash.header.value and "&lt;script&gt;m&lt;/script&gt;" in dash.header.value
    assert dash.bar.bar_style == "danger"


def test_alerts_show_in_the_widget(shown):
    dash = WidgetDashboard("r", show=False)
    dash(Event("log", {"step": 1, "loss": float("nan"), "grad_norm": float("inf")}))
    assert "loss is NaN" in dash.alerts.value and "grad norm is infinite" in dash.alerts.value
    assert math.isnan(dash.state.loss)


# -- rich ---------------------------------------------------------------------------------------------
def test_rich_dashboard_renders_into_a_console():
    from rich.console import Console

    out = io.StringIO()
    dash = make_reporter("rich", title="rich-run")
    dash.close()  # the default console; replace it with one we can read
    dash = RichDashboard("rich-run", console=Console(file=out, width=100))
    evs = run_events(8, evals={4: 1.0, 8: 0.7})
    for e in evs[:-1]:
        dash(e)
    dash(Event("log", {"step": 8, "loss": 0.0}))
    frame = io.StringIO()
    Console(file=frame, width=100).print(dash)  # what the live view shows right now
    text = frame.getvalue()
    assert "rich-run" in text and "training" in text and "step 8/8" in text and "ETA" in text
    assert "0.7000" in text and "tokens/s" in text and "loss is exactly 0" in text
    dash(evs[-1])
    dash.close()
    final = out.getvalue()
    assert "finished" in final and "done in" in final and "0.7000" in final and "loss is exactly 0" in final


def test_rich_dashboard_shows_errors_verbatim():
    from rich.console import Console

    out = io.StringIO()
    dash = RichDashboard("[bold]r", console=Console(file=out, width=120))
    for e in run_events(2, final="failed", error="RuntimeError: [red]out of memory", hint="lower the batch size"):
        dash(e)
    dash.close()
    text = out.getvalue()
    assert "[bold]r" in text and "RuntimeError: [red]out of memory" in text and "hint: lower the batch size" in text


# -- plain --------------------------------------------------------------------------------------------
def test_plain_dashboard_lines(capsys):
    dash = make_reporter("plain", title="p1")
    assert isinstance(dash, PlainDashboard)
    clock = Clock()
    dash.clock = clock
    for e in run_events(10, evals={5: 1.5}):
        if e.kind == "log":
            clock.t += 0.5  # a log every half second: a progress line every 4th log
        dash(e)
    dash.close()
    dash(Event("log", {"step": 10, "loss": float("nan")}))  # after close: state only, no line
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[p1] started on cpu (float32): 24 rows, 1,000 trainable of 100,000 parameters"
    progress = [line for line in lines[1:] if line.startswith("[p1] status training")]
    assert [re.search(r"step (\d+)/", line).group(1) for line in progress] == ["1", "5", "5", "9"]  # 5 twice: log, eval
    assert "eval loss 1.5000" in progress[2]
    assert lines[-1].startswith("[p1] status finished  step 10/10") and "ETA" not in lines[-1]
    assert len(lines) == 6 and dash.draws == 6


def test_plain_dashboard_alerts_and_failure(capsys):
    dash = PlainDashboard("p2")
    evs = run_events(3, final="failed", error="ValueError: boom", hint="check the data")
    evs.insert(4, Event("log", {"step": 1, "loss": 0.0}, evs[3].time))
    for e in evs:
        dash(e)
    dash.close()
    out = capsys.readouterr().out
    assert "[p2] alert: loss is exactly 0 (step 1)" in out
    assert out.count("alert:") == 1
    last = out.splitlines()[-1]
    assert (
        last.startswith("[p2] status failed") and "error: ValueError: boom" in last and "hint: check the data" in last
    )


# -- the runs view --------------------------------------------------------------------------------------
RECORDS = [
    {
        "name": "lora-r16",
        "model": "smollm2-135m",
        "dataset": "train.jsonl",
        "steps": 60,
        "max_steps": 60,
        "status": "finished",
        "train_loss": 0.4123,
        "eval_loss": 0.38,
        "best": "json_match 0.975 @ step 40",
        "history": [(i, 2.0 / i) for i in range(1, 61)],
    },
    {
        "name": "<script>x</script>",
        "model": "m",
        "dataset": "d",
        "steps": 12,
        "max_steps": 60,
        "status": "stopped",
        "train_loss": None,
        "eval_loss": None,
        "history": [[1, 3.0], [2, float("nan")], [3, 2.0]],
    },
    {"name": "$x$_empty", "status": "failed", "history": []},
]


def test_runs_view_text_table():
    text = RunsView(RECORDS).to_text()
    lines = text.splitlines()
    assert lines[0] == "runs" and lines[1].split() == [
        "run",
        "model",
        "dataset",
        "steps",
        "status",
        "train",
        "loss",
        "eval",
        "loss",
        "best",
    ]
    assert lines[2].split() == [
        "lora-r16", "smollm2-135m", "train.jsonl", "60/60", "finished", "0.4123", "0.3800",
        "json_match", "0.975", "@", "step", "40",
    ]  # fmt: skip
    assert lines[3].split()[3:] == ["12/60", "stopped", "–", "–", "–"]
    assert RunsView([]).to_text() == "runs: no runs"


def test_runs_view_html_is_escaped_and_has_the_overlay_chart():
    view = RunsView(RECORDS)
    html = view._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<td>0.4123</td>" in html and "<td>60/60</td>" in html
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match and base64.b64decode(match.group(1)).startswith(PNG)
    assert RunsView(RECORDS[2:]).chart_png() is None and "<img" not in RunsView(RECORDS[2:]).to_html()


def test_runs_view_overlays_one_line_per_run(monkeypatch):
    from matplotlib.axes import Axes

    plotted = []
    original = Axes.plot

    def spy(self, *args, **kwargs):
        plotted.append((list(args[0]), kwargs.get("label")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    RunsView(RECORDS).chart_png()
    assert [label for _, label in plotted] == ["lora-r16", "<script>x</script>"]  # no history, no line
    assert plotted[0][0] == list(range(1, 61)) and plotted[1][0] == [1, 3]  # the NaN point left out


def test_runs_view_rich():
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=170).print(RunsView(RECORDS))
    text = out.getvalue()
    assert "lora-r16" in text and "0.4123" in text and "<script>x</script>" in text and "$x$_empty" in text


def test_table_cells_keep_the_digits_of_small_values():
    from sft_magics.display._views import TableView

    text = TableView(
        "t", ["key", "value"], [["learning_rate", 0.0002], ["share", 0.25], ["none", 0.0], ["n", 3]]
    ).to_text()
    lines = [line.split() for line in text.splitlines()[2:]]
    assert lines == [["learning_rate", "0.0002"], ["share", "0.250"], ["none", "0.000"], ["n", "3"]]
