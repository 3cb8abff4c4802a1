"""Benchmark: what ``%%sft_train`` (worker thread, event sink, run files, live widget dashboard)
costs over a plain TRL script doing the same training.

    python benchmarks/bench_train_overhead.py [--rounds 7] [--steps 80] [--rows 300] [--display widget]

Both sides train the same tiny random Llama model (``make_tiny_model``, hidden 64, 2 layers) on the
same generated conversations, with the same seed and the same ``SFTConfig`` / ``LoraConfig`` values:

(a) ``%%sft_train`` in a real ``InteractiveShell`` with ``%config SftMagics.display = 'widget'``: the
    ``WidgetDashboard`` updates its widgets (throttled) and renders the matplotlib loss chart on the
    training thread, exactly as in a notebook (ipywidgets needs no frontend for that);
(b) a plain script: ``SFTTrainer(model, args=SFTConfig(...), train_dataset=rows, processing_class=tok,
    peft_config=LoraConfig(...))``, where ``rows = to_trl_rows(load_data(path), tok)`` are the very
    pre-tokenized rows (input_ids + assistant_masks) our code feeds TRL, so the loss masks match.
    Our defaults (``DEFAULT_SFT``, ``DEFAULT_LORA``, and ``plan()``'s CPU branch: ``use_cpu``, no
    gradient checkpointing, ``bf16: false``) are written out in full; the script checks them against the
    ``config.yaml`` that (a) resolved, so the two cannot drift apart silently.

Throughput is the trainer's own ``train_steps_per_second`` (its clock runs around the training loop
only: model loading, data preparation and the final save are outside it on both sides; every
callback, our event sink and the dashboard draws are inside it). The end-to-end wall time of each
side (load + train + save) is printed too, for information. The sides are interleaved, in
alternating order (a b, b a, a b, ...), after one untimed warm-up of each, so that a busy machine
slows both alike. Goals: median throughput ratio a/b >= 0.97, and per-step losses identical.

The time (a) spends in the dashboard's draws inside that window is measured too (a wrapper
around its ``draw``): it is the direct measure of what the live view costs, whatever the noise
in the two sides' throughput.

OpenMP: the script sets ``OMP_WAIT_POLICY=passive`` (``--omp-default`` keeps libgomp's default).
With the default, libgomp's idle team threads spin-wait after each parallel region; libgomp
throttles that spinning when a process has more OpenMP threads than cores, which (as far as we
can tell) is why it hit the two sides unevenly here: the plain script trains on the main thread
(2 threads on 2 cores: full spinning), the magic on a second thread with a team of its own. On
this 2-core machine, shared with other processes, that alone made the plain script up to 4x
slower than the magic (a 40-step tiny run: 31-42 s on the main thread, 2.5-4 s on a worker
thread). That measures the neighbours, not our overhead; with passive waiting both sides wait
alike (3.6-5.8 s and 2.2 s for that run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "--omp-default" not in sys.argv:
    # Before torch loads libgomp: see "OpenMP" in the module docstring.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

NAMES = ["Alice", "Hiro", "Ivan", "Mara", "Tomas", "Leila", "Kofi", "Ines", "Omar", "Yuki", "Sven", "Ada"]
CITIES = ["Lisbon", "Paris", "Accra", "Brno", "Osaka", "Quito", "Oslo", "Lima", "Rome", "Cairo"]


def generate_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` short extraction conversations (a system prompt in some), fixed seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
        messages = [{"role": "system", "content": "Answer with JSON only."}] if rng.random() < 0.3 else []
        messages += [
            {"role": "user", "content": f"{name} is {age} and lives in {city}. Name, age, city?"},
            {"role": "assistant", "content": json.dumps({"name": name, "age": age, "city": city})},
        ]
        rows.append({"messages": messages})
    return rows


def plain_sft_values(steps: int) -> dict:
    """The SFTConfig values (a) resolves to on a CPU: DEFAULT_SFT, the cell's keys, plan()'s CPU branch."""
    return {
        # DEFAULT_SFT
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 2.0e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "max_length": 1024,
        "seed": 42,
        "report_to": "none",
        "disable_tqdm": True,
        # the cell
        "max_steps": steps,
        "use_cpu": True,
        # plan() on a CPU: no activation checkpointing, fp32 (TRL's own default is bf16 autocast)
        "gradient_checkpointing": False,
        "bf16": False,
    }


PLAIN_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}  # DEFAULT_LORA


def _train_summary(history: list[dict]) -> dict:
    return next(h for h in reversed(history) if "train_runtime" in h)


def _losses(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


# -- the process CPU clock over the same window on both sides -------------------------------------
# Wall time on a shared machine moves with the neighbours' load; the CPU time our process spends
# (every thread: training, the dashboard's timer draws, OpenMP workers) moves much less. Both
# sides read it at the trainer's on_train_begin and at its final on_log (the one carrying
# train_runtime), i.e. over the window the trainer's own train_runtime covers.
class CpuClockSink:
    """Forwards every event to the dashboard (a callable with ``close``), noting the CPU clock at
    the first ``status: training`` event (emitted from on_train_begin) and at the log event with
    ``train_runtime`` (the trainer's final on_log)."""

    def __init__(self, dashboard):
        self.dashboard, self.cpu = dashboard, {}
        # Time spent drawing (widget traits + chart PNGs) inside the window, on whatever thread
        # draws (the training thread, or the dashboard's trailing timer).
        self.draw_seconds, self.window_charts = 0.0, 0
        draw = getattr(dashboard, "draw", None)
        if draw is not None and hasattr(dashboard, "charts"):

            def timed_draw(event):
                t, charts = time.perf_counter(), dashboard.charts
                draw(event)
                if "begin" in self.cpu and "end" not in self.cpu:
                    self.draw_seconds += time.perf_counter() - t
                    self.window_charts += dashboard.charts - charts

            dashboard.draw = timed_draw

    def __call__(self, event) -> None:
        if event.kind == "status" and (event.data or {}).get("state") == "training":
            self.cpu.setdefault("begin", time.process_time())
        elif event.kind == "log" and "train_runtime" in (event.data or {}):
            self.cpu["end"] = time.process_time()
        self.dashboard(event)

    def close(self) -> None:
        self.dashboard.close()


def cpu_clock_callback():
    from transformers import TrainerCallback

    class CpuClock(TrainerCallback):
        def __init__(self):
            self.cpu = {}

        def on_train_begin(self, args, state, control, **kw):
            self.cpu.setdefault("begin", time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if "train_runtime" in (logs or {}):
                self.cpu["end"] = time.process_time()

    return CpuClock()


class MagicSide:
    """(a): ``%%sft_train`` in a real InteractiveShell, with the chosen dashboard."""

    def __init__(self, work: Path, model: Path, data: Path, display: str):
        from IPython.core.interactiveshell import InteractiveShell

        import sft_magics.display as display_mod

        self.work, self.model, self.data = work, model, data
        self.shell = InteractiveShell.instance()
        self.shell.run_line_magic("load_ext", "sft_magics")
        self.shell.run_line_magic("config", f"SftMagics.display = {display!r}")
        self.shell.run_line_magic("config", f"SftMagics.output_dir = {str(work / 'magic-runs')!r}")
        # Record the dashboard the magic builds (to report its draws and read the CPU clock at the
        # trainer's begin/end events); the dashboard itself is not changed.
        self.sinks: list[CpuClockSink] = []
        original = display_mod.make_reporter

        def recording(*args, **kwargs):
            sink = CpuClockSink(original(*args, **kwargs))
            self.sinks.append(sink)
            return sink

        display_mod.make_reporter = recording

    def run(self, name: str, steps: int) -> dict:
        from IPython.utils.capture import capture_output

        cell = (
            f"%%sft_train --name {name} -o bench_run\n"
            f"model: {self.model}\ndataset: {self.data}\nmax_steps: {steps}\nuse_cpu: true\n"
        )
        t0 = time.perf_counter()
        with capture_output() as captured:  # the widget's text/plain repr and the HTML summary object
            outcome = self.shell.run_cell(cell)
        wall = time.perf_counter() - t0
        outcome.raise_error()
        result = self.shell.user_ns.pop("bench_run")
        assert result.status == "finished" and result.global_step == steps, result
        sink = self.sinks[-1]
        dashboard = sink.dashboard
        import yaml

        config = yaml.safe_load((result.path / "config.yaml").read_text())
        return {
            "summary": _train_summary(result.history),
            "losses": _losses(result.history),
            "wall": wall,
            "cpu": sink.cpu["end"] - sink.cpu["begin"],
            "draw_seconds": sink.draw_seconds,
            "window_charts": sink.window_charts,
            "config": config,
            "dashboard": type(dashboard).__name__,
            "draws": dashboard.draws,
            "charts": getattr(dashboard, "charts", None),
            "errors": len(dashboard.errors),
            "png": len(getattr(dashboard, "png", None) or b""),
            "captured": len(captured.stdout),
        }


def plain_run(work: Path, model_dir: Path, data: Path, name: str, steps: int) -> dict:
    """(b): a plain TRL script on the same pre-tokenized rows."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_magics.core.data.load import load_data
    from sft_magics.core.template.prepared import to_trl_rows

    clock = cpu_clock_callback()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = to_trl_rows(load_data(str(data)), tokenizer)
    args = SFTConfig(output_dir=str(work / "plain-runs" / name), **plain_sft_values(steps))
    trainer = SFTTrainer(
        model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **PLAIN_LORA),
        callbacks=[clock],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # transformers' PrinterCallback: one dict a step
        trainer.train()
    trainer.save_model(str(work / "plain-runs" / name / "final"))
    wall = time.perf_counter() - t0
    history = trainer.state.log_history
    return {
        "summary": _train_summary(history),
        "losses": _losses(history),
        "wall": wall,
        "cpu": clock.cpu["end"] - clock.cpu["begin"],
    }


def check_same_config(config: dict, steps: int) -> list[str]:
    """Keys where (a)'s resolved config.yaml and the plain script's values differ."""
    ours = {k: v for k, v in config.items() if k not in ("model", "dataset", "eval_dataset", "eval_split", "lora")}
    plain = plain_sft_values(steps)
    diffs = [
        f"{k}: magic {ours.get(k)!r} vs plain {plain.get(k)!r}"
        for k in sorted(set(ours) | set(plain))
        if ours.get(k) != plain.get(k)
    ]
    lora = config.get("lora") or {}
    diffs += [
        f"lora.{k}: magic {lora.get(k)!r} vs plain {PLAIN_LORA.get(k)!r}"
        for k in sorted(set(lora) | set(PLAIN_LORA))
        if lora.get(k) != PLAIN_LORA.get(k)
    ]
    return diffs


def first_difference(a: list, b: list) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} logged losses"
    for (sa, la), (sb, lb) in zip(a, b):
        if (sa, la) != (sb, lb):
            return f"first at step {sa}: {la!r} vs {lb!r}"
    return "none"


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--display", default="widget", choices=["widget", "rich", "plain"])
    parser.add_argument(
        "--omp-default",
        action="store_true",
        help="keep libgomp's default (active) wait policy instead of OMP_WAIT_POLICY=passive",
    )
    args = parser.parse_args(argv)

    import datasets
    from transformers.utils import logging as hf_logging

    # Library progress bars and deprecation notices off for both sides (outside the timed window).
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    work = Path(tempfile.mkdtemp(prefix="bench-train-overhead-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path) -> float:
    import torch

    from sft_magics.testing import make_tiny_model

    model_dir = make_tiny_model(work / "model", hidden_size=args.hidden_size, layers=args.layers)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(args.rows)))
    magic = MagicSide(work, model_dir, data, args.display)

    # Untimed warm-up of both sides: imports, first-call setup, matplotlib's first figure.
    warm_a = magic.run("warmup", 10)
    plain_run(work, model_dir, data, "warmup", 10)
    diffs = check_same_config(warm_a["config"], 10)
    if diffs:
        print("WARNING: the plain script's config differs from the magic's resolved config:\n  " + "\n  ".join(diffs))
    print(
        f"tiny Llama hidden {args.hidden_size} x {args.layers} layers, {args.rows} rows, {args.steps} steps a run, "
        f"batch 8, LoRA r=16, logging every step; {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, load average {os.getloadavg()[0]:.1f}; "
        f"(a) dashboard: {warm_a['dashboard']}; config (a) == (b): {not diffs}",
        flush=True,
    )

    a_runs, b_runs = [], []
    for i in range(args.rounds):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for side in order:
            if side == "a":
                a_runs.append(magic.run(f"round-{i + 1}", args.steps))
            else:
                b_runs.append(plain_run(work, model_dir, data, f"round-{i + 1}", args.steps))
        a, b = a_runs[-1], b_runs[-1]
        sa, sb = a["summary"]["train_steps_per_second"], b["summary"]["train_steps_per_second"]
        print(
            f"  round {i + 1} ({' then '.join(order)}): "
            f"(a) magic {sa:5.2f} steps/s, train {a['summary']['train_runtime']:5.2f} s, cpu {a['cpu'] / args.steps * 1e3:5.1f} ms/step, "
            f"{a['draws']} draws ({a['draw_seconds']:.2f} s, {a['window_charts']} charts), wall {a['wall']:5.2f} s | "
            f"(b) plain {sb:5.2f} steps/s, train {b['summary']['train_runtime']:5.2f} s, cpu {b['cpu'] / args.steps * 1e3:5.1f} ms/step, "
            f"wall {b['wall']:5.2f} s | a/b: steps/s {sa / sb:.3f}, cpu {b['cpu'] / a['cpu']:.3f} "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    def med(runs, key):
        return statistics.median(key(r) for r in runs)

    ratios = [
        a["summary"]["train_steps_per_second"] / b["summary"]["train_steps_per_second"] for a, b in zip(a_runs, b_runs)
    ]
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median(b["cpu"] / a["cpu"] for a, b in zip(a_runs, b_runs))
    steps_s = lambda r: r["summary"]["train_steps_per_second"]
    print(
        f"median throughput: (a) {med(a_runs, steps_s):.2f} steps/s, (b) {med(b_runs, steps_s):.2f} steps/s; "
        f"median ratio a/b {ratio:.3f} (goal >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}; "
        f"rounds ranged {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(
        f"median CPU per step: (a) {med(a_runs, lambda r: r['cpu']) / args.steps * 1e3:.1f} ms, "
        f"(b) {med(b_runs, lambda r: r['cpu']) / args.steps * 1e3:.1f} ms; median ratio b/a {cpu_ratio:.3f} "
        f"(the same goal in CPU terms, less sensitive to the neighbours' load)"
    )
    print(
        f"median end-to-end wall (load + train + save): (a) {med(a_runs, lambda r: r['wall']):.2f} s, "
        f"(b) {med(b_runs, lambda r: r['wall']):.2f} s"
    )
    last = a_runs[-1]
    share = statistics.median(r["draw_seconds"] / r["summary"]["train_runtime"] for r in a_runs)
    per_chart = sum(r["draw_seconds"] for r in a_runs) / max(1, sum(r["window_charts"] for r in a_runs))
    print(
        f"dashboard: {last['dashboard']}; drawing took a median {share:.1%} of (a)'s train_runtime "
        f"(~{per_chart * 1e3:.0f} ms of drawing per chart PNG, the PNGs being most of it); last run: "
        f"{last['draws']} draws, {last['charts']} chart PNGs (last {last['png']:,} bytes), {last['errors']} draw errors"
    )
    same = all(a["losses"] == b["losses"] for a, b in zip(a_runs, b_runs))
    repeatable = all(r["losses"] == a_runs[0]["losses"] for r in a_runs + b_runs)
    n = len(a_runs[0]["losses"])
    print(
        f"per-step losses ({n} logged a run): (a) == (b) in every round: {same}"
        + ("" if same else f" ({first_difference(a_runs[0]['losses'], b_runs[0]['losses'])})")
        + f"; identical across all {len(a_runs) + len(b_runs)} runs: {repeatable}; "
        f"first {a_runs[0]['losses'][0][1]!r}, last (a) {a_runs[0]['losses'][-1][1]!r}, (b) {b_runs[0]['losses'][-1][1]!r}"
    )
    return ratio


if __name__ == "__main__":
    main()
