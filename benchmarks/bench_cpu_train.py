"""Benchmark: training SmolLM2-135M on this CPU — fp32 (the CPU default) vs bf16 autocast, and a
notebook kernel vs a script.

    python benchmarks/bench_cpu_train.py [--rounds 3] [--steps 8]

Every side trains the embedded model (``smollm2-135m``, LoRA r=16 on every linear layer, our
defaults) on the bundled task (``examples/data/train.jsonl``) for ``--steps`` optimizer steps of
batch 8, from the same config, each in a fresh process:

- ``script fp32``: a plain Python script calling ``sft_magics.train`` (the core API), defaults;
- ``script bf16``: the same with ``bf16: true`` (autocast on the CPU);
- ``kernel plain`` (only with ``--sides``): the kernel with ``%config SftMagics.display = 'plain'``
  (text progress instead of the widget dashboard): what the live dashboard costs in a kernel;
- ``thread fp32``: the script, training on a second thread while the main thread waits in
  ``join`` (what a cell does, without the kernel): separates "a thread" from "a kernel";
- ``kernel fp32``: a real IPython kernel (``jupyter_client``), ``%load_ext sft_magics`` and the same
  config as a ``%%sft_train`` cell, as in a notebook (the cell trains on a worker thread while the
  kernel's event loop waits; the dashboard is built and updated as in a notebook).

s/step is the trainer's own ``train_runtime / global_step`` read from the run's ``metrics.jsonl``
(model loading, data preparation and the final save are outside it on every side). The sides run
interleaved in rotating order (``--rounds`` times each) so a busy machine slows all alike; printed:
each round, the medians, fp32/bf16 (the bf16 speed-up) and script/kernel (goal >= 0.97: the kernel
costs no more than 3%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "train.jsonl"
SIDES = ("script fp32", "script bf16", "kernel fp32", "thread fp32", "kernel plain")


def cell(steps: int, bf16: bool) -> str:
    return textwrap.dedent(
        f"""\
        model: smollm2-135m
        dataset: {DATA}
        max_steps: {steps}
        per_device_train_batch_size: 8
        logging_steps: 1
        save_strategy: "no"
        """
    ) + ("bf16: true\n" if bf16 else "")


def seconds_per_step(run_dir: Path) -> float:
    for line in reversed((run_dir / "metrics.jsonl").read_text().splitlines()):
        event = json.loads(line)
        if "train_runtime" in event:
            return float(event["train_runtime"]) / float(event["step"])
    raise RuntimeError(f"no train_runtime in {run_dir / 'metrics.jsonl'}")


def run_script(out: Path, name: str, steps: int, bf16: bool, thread: bool = False) -> float:
    call = f"train(TrainSpec.from_mapping({name!r}, yaml.safe_load({cell(steps, bf16)!r}), output_dir={str(out / 'runs')!r}))"
    if thread:
        call = f"t = threading.Thread(target=lambda: {call}); t.start(); t.join()"
    code = (
        textwrap.dedent(
            """\
        import threading
        import yaml
        from sft_magics.core.train.config import TrainSpec
        from sft_magics.core.train.trainer import train
        """
        )
        + call
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return seconds_per_step(out / "runs" / name)


def run_kernel(out: Path, name: str, steps: int, display: str = "widget") -> float:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        for code in (
            "%load_ext sft_magics",
            f"%config SftMagics.output_dir = {str(out / 'runs')!r}",
            *([f"%config SftMagics.display = {display!r}"] if display != "widget" else []),
            f"%%sft_train --name {name}\n{cell(steps, False)}",
        ):
            reply = kc.execute_interactive(code, timeout=1800, output_hook=lambda msg: None)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"kernel: {code.splitlines()[0]} failed: {reply['content'].get('evalue')}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return seconds_per_step(out / "runs" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sides", nargs="+", default=list(SIDES[:4]), choices=SIDES)
    args = parser.parse_args()
    sides = tuple(args.sides)
    import torch

    print(
        f"SmolLM2-135M, LoRA, batch 8, {args.steps} steps a side, {os.cpu_count()} CPU cores, "
        f"avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}",
        flush=True,
    )
    got: dict[str, list[float]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]
            for side in order:
                name = f"r{r}-{side.replace(' ', '-')}"
                if side.startswith("kernel"):
                    got[side].append(run_kernel(Path(tmp), name, args.steps, side.split()[1].replace("fp32", "widget")))
                else:
                    thread = side.startswith("thread")
                    got[side].append(run_script(Path(tmp), name, args.steps, side.endswith("bf16"), thread))
            print(f"  round {r + 1}: " + ", ".join(f"{s} {got[s][-1]:.2f} s/step" for s in sides), flush=True)
    med = {s: statistics.median(v) for s, v in got.items()}
    print("median s/step: " + ", ".join(f"{s} {med[s]:.2f}" for s in sides))
    for side, label in (
        ("script bf16", "bf16 autocast vs fp32, per step"),
        ("kernel fp32", "kernel vs script (goal >= 0.97)"),
        ("thread fp32", "a training thread vs script"),
        ("kernel plain", "kernel with text progress vs script"),
    ):
        if side in med and "script fp32" in med:
            each = ", ".join(f"{a / b:.2f}" for a, b in zip(got["script fp32"], got[side]))
            print(f"{label}: {med['script fp32'] / med[side]:.3f}x (rounds {each})")


if __name__ == "__main__":
    main()
