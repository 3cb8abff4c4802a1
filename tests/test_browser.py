"""The product in a real frontend: JupyterLab on localhost, driven in headless Chromium by Playwright.

What only a browser shows: the template view's token spans, the training dashboard's progress bar,
label and loss chart updating while the kernel trains, and the Stop button's click travelling
frontend → comm → kernel → trainer, ending the run as ``stopped``.

The browser is Debian's ``chromium`` (Playwright's own browser download needs a CDN this machine
cannot reach); when it is missing the test installs it with tests/browser/install_browser.sh and
skips, saying why, only where that is impossible. jupyterlab and playwright come from the
package's ``test`` extra.

Screenshots of each stage are saved under the test's tmp folder; with
``SFT_MAGICS_SCREENSHOTS=docs/screenshots`` they are also copied there (that is how the README's
pictures are made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
# As the README writes them: the notebook's folder holds examples/ (a link to the repository's), so
# the cells and the screenshots show the paths a newcomer types, not this machine's.
TRAIN = "examples/data/train.jsonl"
VAL = "examples/data/val.jsonl"
INSTALL = Path(__file__).resolve().parent / "browser" / "install_browser.sh"
# Chromium as root in a closed network: no sandbox, no GPU, no calls home (they fail by the dozen).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_STEPS = 300


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (pip install -e '.[test]')")
    path = shutil.which("chromium")
    if path is None:
        done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
        print(done.stdout, done.stderr)
        path = shutil.which("chromium")
    if path is None:
        last = (done.stdout.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no chromium and it cannot be installed here: {last}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHAT_MESSAGE = ("Where is Cork?", "Answer in one sentence.")


def _notebook() -> dict:
    cells = [
        "%load_ext sft_magics",
        'conversation = [\n    {"role": "user", "content": "What is the capital of France?"},\n'
        '    {"role": "assistant", "content": "The capital of France is Paris."},\n]\n'
        "%sft_template smollm2-135m --messages conversation",
        f"%%sft_train --name browser -o run\nmodel: smollm2-135m\ndataset: {TRAIN}\nmax_steps: {MAX_STEPS}\n"
        f"per_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nlogging_steps: 1\nsave_steps: {MAX_STEPS}\n"
        # A watched run: two held-out questions answered at each evaluation (the answers panel).
        f"eval_dataset: {VAL}\neval_steps: 3\neval_generate: 2\neval_max_new_tokens: 24\n",
        'print(f"final status: {run.status} at step {run.global_step}")',
        "%sft_runs",
        f"%sft_eval run --data {VAL} --baseline base --limit 8 --max-new-tokens 24 --metrics json_match,json_valid",
        "%sft_chat run --compare base --max-new-tokens 48",
    ]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": s}
            for i, s in enumerate(cells)
        ],
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    """A JupyterLab server on localhost serving a folder with browser.ipynb; yields (url, folder)."""
    root = tmp_path_factory.mktemp("lab")
    (root / "browser.ipynb").write_text(json.dumps(_notebook()))
    (root / "examples").symlink_to(ROOT / "examples")  # runs/ is made beside it, in the notebook's folder
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get notified about Jupyter news?" toast over the screenshots, no update checks.
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, token = _free_port(), os.urandom(16).hex()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "passive",
        "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
    }
    log = open(root / "lab.log", "w")  # noqa: SIM115 - the server writes to it until the fixture ends
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--expose-app-in-browser",
            "--LabApp.news_url=None",
            "--ServerApp.allow_root=True",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"{base}/lab/tree/browser.ipynb?token={token}", root
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _save(shot: Path, name: str) -> None:
    target = os.environ.get("SFT_MAGICS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / name)


def _open_and_run_all(page, url: str, *, cells: int) -> None:
    """Open a notebook in JupyterLab, wait for its cells and its kernel, and run them all."""
    page.goto(url)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.content"
        f" && window.jupyterapp.shell.currentWidget.content.widgets.length === {cells}",
        timeout=120_000,
    )
    page.evaluate("""async () => {
        const panel = window.jupyterapp.shell.currentWidget;
        await panel.context.ready;
        await panel.sessionContext.ready;
        // Not awaited: the command's promise settles only when every cell has run.
        window.jupyterapp.commands.execute('notebook:run-all-cells');
    }""")


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# What a newcomer trips on, measured in the page (JavaScript run in Chromium on the element).
BROKEN_IMAGES = "els => els.filter(e => e.offsetParent !== null && !(e.complete && e.naturalWidth > 0)).length"
LINES = (  # lines of text in a cell: the height of its text (not of its row), in line heights
    "el => { const r = document.createRange(); r.selectNodeContents(el);"
    " return Math.round(r.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight)); }"
)
CLIPPED = "el => el.scrollWidth > el.clientWidth + 1"
RIGHT = "el => el.getBoundingClientRect().right"


def _check_template(template) -> None:
    """Special tokens boxed, the answer trained, the template's default system message its own text."""
    template.locator(".sft-t.sft-trained").first.wait_for(timeout=240_000)
    text = template.locator("pre.sft-text").inner_text()
    assert "<|im_start|>user" in text and "<|im_start|>assistant" in text, text
    trained = "".join(template.locator(".sft-t.sft-trained").all_inner_texts())
    assert trained.startswith("The capital of France is Paris.") and "<|im_end|>" in trained, trained
    assert template.locator(".sft-t.sft-special").count() >= 4  # <|im_start|> / <|im_end|> per turn
    assert "user" not in trained  # the prompt is not trained on
    glue = "".join(template.locator(".sft-t.sft-glue").all_inner_texts())
    assert "You are a helpful AI assistant" in glue, glue  # grey template text, not the user's colour
    assert "You are" not in "".join(template.locator(".sft-t.sft-m0").all_inner_texts())
    assert "(template's own text)" in template.locator("table.sft-msgs").inner_text()
    style = template.locator("pre.sft-text").evaluate("el => getComputedStyle(el).wordBreak")
    assert style != "break-all", style  # "cou / ntry": words are not broken mid-word


def _check_answers_panel(dash) -> None:
    panel = dash.locator(".sft-samples")
    panel.first.wait_for(timeout=240_000)
    caption = panel.first.inner_text()
    assert re.search(r"answers at step \d+ \(2 rows", caption), caption
    assert "prompt" in caption and "reference" in caption and "answer now" in caption, caption
    # Rows apart, and a prompt (186 characters, a paragraph break) on a few lines at 1400 px, not 14.
    prompts = panel.first.locator("tr td:first-child")
    assert prompts.count() == 2
    for i in range(prompts.count()):
        assert prompts.nth(i).evaluate(LINES) <= 6, prompts.nth(i).evaluate(LINES)
        assert prompts.nth(i).evaluate("el => getComputedStyle(el).borderTopStyle") == "solid"


def _check_summary_alerts(summary, run_dir: Path) -> None:
    """No alert that is no longer true: each says what the last answers showed, or when it stopped."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    answers = [e for e in events if e["kind"] == "answers"]
    assert answers
    last = answers[-1]
    alerts = summary.locator(".sft-alerts").all_inner_texts()
    text = "\n".join(alerts)
    for key, phrase, cleared in (
        ("never_ended", "never ended at step", "every answer ended from step"),
        ("empty", "are empty at step", "no empty answer from step"),
    ):
        if phrase not in text:
            assert not any(a.get(key) for a in answers), (key, text)
        elif cleared in text:
            assert not last.get(key), (key, text, last)
        else:
            assert last.get(key), (key, text, last)  # still true at the last evaluation


def _check_charts_hold_every_point(run_dir: Path) -> None:
    """The run's own events drawn as the dashboard draws them: every point inside the axes."""
    from sft_magics.core.events import Event
    from sft_magics.core.progress import ProgressState
    from sft_magics.display._dashboard_html import LossChart

    state = ProgressState()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        state.update(Event(record.pop("kind"), record, record.pop("time")))
    chart = LossChart(metric=state.watch.get("metric"))
    chart.render(state.losses, state.eval_losses, state.step, state.metric_points, state.best)
    xs = [x for x, _ in state.losses + state.eval_losses + state.metric_points]
    assert chart.ax.get_xlim()[1] > max(xs) and chart.ax.get_xlim()[0] < min(xs)
    if chart.max is not None:
        low, high = chart.max.get_ylim()
        assert all(low < y < high for _, y in state.metric_points)


def _check_eval(view) -> None:
    """The summary counts empty answers; the pager's columns keep a prompt to a few lines; Next pages."""
    view.locator(".sft-eval table").first.wait_for(timeout=300_000)
    summary = view.locator(".sft-eval table").first.inner_text()
    m = re.search(r"empty answers\s+(\d+) of 8\s+(\d+) of 8", summary)
    assert m, summary
    if int(m.group(1)) + int(m.group(2)):
        assert "(empty answer)" in view.inner_text()
    pager = view.locator(".widget-label", has_text="examples 1–5 of 8")
    pager.wait_for(timeout=30_000)
    cells = view.locator(".widget-html table tr td:nth-child(2)")  # the pager's prompts
    assert cells.count() == 5
    for i in range(cells.count()):
        assert cells.nth(i).evaluate(LINES) <= 6, cells.nth(i).evaluate(LINES)


def _check_chat(page, chat, shoot) -> None:
    """Labels whole, boxes inside the output area, Shift+Enter a new line, Enter sends, streamed."""
    box = chat.locator("textarea.sft-chat-input")
    box.wait_for(timeout=120_000)
    label = chat.locator(".widget-label", has_text="temperature")
    assert label.inner_text().strip() == "temperature" and not label.evaluate(CLIPPED)
    right = chat.evaluate(RIGHT)
    for widget in (box, chat.locator(".widget-text").first):  # the message box, the system prompt
        assert widget.evaluate(RIGHT) <= right + 1, (widget.evaluate(RIGHT), right)
    box.click()
    box.type(CHAT_MESSAGE[0])
    box.press("Shift+Enter")
    box.type(CHAT_MESSAGE[1])
    assert box.input_value() == "\n".join(CHAT_MESSAGE) and "you:" not in chat.inner_text()
    box.press("Enter")
    _wait(lambda: "▌" in chat.inner_text(), 120, "the reply being written")
    shoot("chat.png")
    assert box.input_value() == ""
    _wait(lambda: "▌" not in chat.inner_text() and "writing" not in chat.inner_text(), 180, "both replies")
    bubbles = chat.locator(".sft-chat").all_inner_texts()
    assert len(bubbles) == 2 and all("\n".join(CHAT_MESSAGE) in b for b in bubbles), bubbles


def test_each_view_in_jupyterlab_as_a_newcomer_reads_it(lab, chromium, tmp_path):
    """Template, live dashboard with its answers panel, Stop and the stopped run's summary, runs,
    evaluation and pager, and the chat, in one notebook run in JupyterLab; a screenshot of each."""
    from playwright.sync_api import sync_playwright

    url, root = lab
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            _open_and_run_all(page, url, cells=7)
            cells = page.locator(".jp-Notebook .jp-Cell")

            def shoot(name, cell=None):
                (cell or current).screenshot(path=str(shots / name))
                _save(shots / name, name)

            # 1. %sft_template
            current = cells.nth(1)
            _check_template(cells.nth(1).locator(".jp-OutputArea-output"))
            shoot("template.png")

            # 2. %%sft_train: the live dashboard. The label and the bar advance, the chart appears and
            # is redrawn with the new losses; never an image without a picture.
            current = cells.nth(2)
            dash = cells.nth(2).locator(".jp-OutputArea-output")
            label = dash.locator(".widget-label", has_text=re.compile(r"^step \d+/"))
            label.first.wait_for(timeout=300_000)
            assert dash.locator("img").evaluate_all(BROKEN_IMAGES) == 0  # before the first chart

            def step() -> int:
                if not label.count():
                    return 0
                m = re.match(r"step (\d+)/(\d+|\?)", label.first.inner_text())
                assert m, label.first.inner_text()
                if m.group(2) == "?":  # still loading: the total is not known yet
                    return 0
                assert int(m.group(2)) == MAX_STEPS, label.first.inner_text()
                return int(m.group(1))

            def bar_width() -> float:
                style = dash.locator(".widget-hprogress .progress-bar").first.get_attribute("style") or ""
                m = re.search(r"width:\s*([\d.]+)%", style)
                return float(m.group(1)) if m else 0.0

            first = _wait(step, 300, "the first training step in the progress label")
            first_width = bar_width()
            chart = dash.locator("img.widget-image")
            _wait(
                lambda: (
                    chart.count()
                    and (chart.first.get_attribute("src") or "").startswith("blob:")
                    and chart.first.evaluate("img => img.naturalWidth") > 0
                ),
                120,
                "the loss chart",
            )
            first_src = chart.first.get_attribute("src")
            later = _wait(lambda: step() >= first + 3 and step(), 240, "the progress label to advance 3 steps")
            assert bar_width() > first_width, (first_width, bar_width())
            _wait(lambda: chart.first.get_attribute("src") != first_src, 60, "the loss chart to be redrawn")
            metrics = dash.locator("table.sft-metrics").inner_text()
            assert "loss" in metrics and "lr now" in metrics and "(peak 1.00e-03)" in metrics, metrics
            header = dash.locator(".widget-html").first.inner_text()
            assert "training" in header and "smollm2-135m on cpu" in header, header
            _check_answers_panel(dash)
            assert dash.locator("img").evaluate_all(BROKEN_IMAGES) == 0
            shoot("training.png")

            # 3. Stop: the click reaches the kernel while it trains; the run ends as "stopped".
            stop = dash.locator("button", has_text="Stop")
            assert stop.is_enabled()
            stop.click()
            final = cells.nth(3).locator(".jp-OutputArea-output")
            final.filter(has_text="final status:").wait_for(timeout=180_000)
            m = re.search(r"final status: (\w+) at step (\d+)", final.inner_text())
            assert m and m.group(1) == "stopped", final.inner_text()
            stopped_at = int(m.group(2))
            assert later <= stopped_at < MAX_STEPS
            # The live widget has become its static summary (what a saved notebook keeps), in place.
            summary = dash.locator(".sft-train-summary")
            summary.wait_for(timeout=30_000)
            assert dash.locator(".widget-hprogress").count() == 0 and summary.count() == 1
            record = summary.inner_text()
            assert "stopped" in record and f"step {stopped_at}/{MAX_STEPS}" in record, record
            assert summary.locator("img").evaluate("img => img.naturalWidth") > 0  # the loss chart, as a PNG
            _check_summary_alerts(summary, root / "runs" / "browser")
            _check_charts_hold_every_point(root / "runs" / "browser")
            shoot("stopped.png")

            # 4. %sft_runs, 5. %sft_eval (table and pager), 6. %sft_chat mid-reply.
            current = cells.nth(4)
            runs = cells.nth(4).locator(".jp-OutputArea")
            runs.filter(has_text="browser").wait_for(timeout=120_000)
            assert "stopped" in runs.inner_text()
            shoot("runs.png")
            current = cells.nth(5)
            _check_eval(cells.nth(5).locator(".jp-OutputArea"))
            shoot("eval.png")
            current = cells.nth(6)
            _check_chat(page, cells.nth(6).locator(".jp-OutputArea"), shoot)
            assert not errors, errors
        finally:
            browser.close()

    status = json.loads((root / "runs" / "browser" / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] == stopped_at
    assert (root / "runs" / "browser" / f"checkpoint-{stopped_at}" / "adapter_model.safetensors").is_file()
    for name in ("template.png", "training.png", "stopped.png", "runs.png", "eval.png", "chat.png"):
        assert (shots / name).stat().st_size > 5000, name


def _sweep_notebook() -> dict:
    cells = [
        "%load_ext sft_magics",
        f"%%sft_train --name browser-sweep -o sw\nmodel: smollm2-135m\ndataset: {TRAIN}\neval_dataset: {VAL}\n"
        f"max_steps: {MAX_STEPS}\nper_device_train_batch_size: 2\nlogging_steps: 1\neval_steps: 2\nsave_steps: 2\n"
        "sweep:\n  parameters:\n    learning_rate: [1.0e-3, 2.0e-3]\n",
        'print("sweep:", sw.state, [t["state"] for t in sw.record()["trials"]])',
    ]
    nb = _notebook()
    nb["cells"] = [dict(nb["cells"][0], id=f"s{i}", source=s) for i, s in enumerate(cells)]
    return nb


def test_a_sweep_is_compared_live_and_stop_all_ends_it_in_jupyterlab(lab, chromium, tmp_path):
    """The sweep's live view in JupyterLab: its table fills in as the first trial trains (escaped
    HTML, the leader marked once it has a score), the curves appear, and Stop all ends every trial."""
    from playwright.sync_api import sync_playwright

    url, root = lab
    (root / "sweep.ipynb").write_text(json.dumps(_sweep_notebook()))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            # ?reset: a fresh workspace, without the other test's notebook restored in a hidden tab
            _open_and_run_all(page, url.replace("browser.ipynb?", "sweep.ipynb?reset&"), cells=3)
            cells = page.locator(".jp-Notebook:visible .jp-Cell")  # this notebook's, not a hidden tab's
            view = cells.nth(1).locator(".jp-OutputArea-output")
            table = view.locator(".sft-sweep table")
            table.first.wait_for(timeout=240_000)
            first = "browser-sweep.01-learning_rate_0.001"
            _wait(
                lambda: first in table.first.inner_text() and "training" in table.first.inner_text(),
                300,
                "the first trial training in the sweep's table",
            )
            # A score after the first evaluation: the leader is marked, the curves are drawn.
            _wait(lambda: "★" in table.first.inner_text(), 300, "the first evaluation's score")
            chart = view.locator(".sft-sweep img")
            _wait(lambda: chart.count() and chart.first.evaluate("img => img.naturalWidth") > 0, 60, "the curves")
            text = table.first.inner_text()
            assert "cancelled" not in text and "queued" in text, text
            cells.nth(1).screenshot(path=str(shots / "sweep.png"))
            _save(shots / "sweep.png", "sweep.png")
            stop = view.locator("button", has_text="Stop all")
            assert stop.is_enabled()
            stop.click()
            final = cells.nth(2).locator(".jp-OutputArea-output")
            final.filter(has_text="sweep:").wait_for(timeout=240_000)
            assert "sweep: stopped ['stopped', 'cancelled']" in final.inner_text(), final.inner_text()
        finally:
            browser.close()
    run = root / "runs" / "browser-sweep.01-learning_rate_0.001"
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert any(p.name.startswith("checkpoint-") for p in run.iterdir())
    assert not (root / "runs" / "browser-sweep.02-learning_rate_0.002").exists()
    assert (shots / "sweep.png").stat().st_size > 5000
