"""Benchmark: a sweep of N trials against the same N runs started one after another by hand.

    python benchmarks/bench_sweep.py [--rounds 3] [--trials 3] [--steps 40] [--model tiny|smollm2-135m]

Both sides train the same N configs (learning rates), each run in fresh processes:

- ``by hand``: what a user does without sweeps, from the notebook's API: for each config, start a
  background run (``core.train.worker.launch``, the same as ``%%sft_train --background``) and wait
  for it (``wait_for``, as ``%sft_wait``), then the next;
- ``sweep``: one ``start_sweep`` with ``sweep: {parameters: {learning_rate: [...]}}``, then
  ``wait_sweep``: every trial checked first, then the driver's queue.

Measured: the wall time of the whole side, from the call to the end of the last run. The sides
alternate, in rotating order, ``--rounds`` times; printed: each side's time, the medians,
sweep/by-hand, and the overhead per trial in seconds and as a share of one trial's time (target:
at most 5%).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "examples" / "data" / "train.jsonl"


def config(model: str, steps: int) -> dict:
    return {
        "model": model,
        "dataset": str(DATA),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "save_strategy": "no",
        "metric_for_best_model": None,
    }


def rates(n: int) -> list[float]:
    return [round(1e-3 * (i + 1), 6) for i in range(n)]


def by_hand(model: str, steps: int, n: int, out: Path, tag: str) -> float:
    from sft_magics.core.train import worker as w
    from sft_magics.core.train.config import TrainSpec

    t0 = time.perf_counter()
    for i, lr in enumerate(rates(n)):
        base = {k: v for k, v in config(model, steps).items() if v is not None}
        spec = TrainSpec.from_mapping(f"{tag}-{i}", {**base, "learning_rate": lr}, output_dir=str(out))
        record = w.launch(spec).wait(timeout=3600)
        if record["status"] != "finished":
            raise SystemExit(f"run {spec.name} ended {record['status']}: {record.get('error')}")
    return time.perf_counter() - t0


def sweep(model: str, steps: int, n: int, out: Path, tag: str) -> float:
    from sft_magics.core.sweep import start_sweep, wait_sweep

    base = {k: v for k, v in config(model, steps).items() if v is not None}
    t0 = time.perf_counter()
    handle = start_sweep(
        {**base, "sweep": {"metric": "loss", "parameters": {"learning_rate": rates(n)}}}, tag, str(out)
    )
    record = wait_sweep(handle.path, timeout=3600, poll=0.2)
    elapsed = time.perf_counter() - t0
    if [t["state"] for t in record["trials"]] != ["finished"] * n:
        raise SystemExit(f"sweep {tag}: {[(t['name'], t['state'], t['error']) for t in record['trials']]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="tiny", help="'tiny' (a random-weight model built here) or a model id")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    model = args.model
    if model == "tiny":
        from sft_magics.testing import make_tiny_model

        model = str(make_tiny_model(work / "tiny-model"))
    sides = {"by hand": by_hand, "sweep": sweep}
    names = list(sides)
    results: dict[str, list[float]] = {s: [] for s in names}
    for r in range(args.rounds):
        for side in names[r % 2 :] + names[: r % 2]:
            seconds = sides[side](model, args.steps, args.trials, work / "runs", f"{side.replace(' ', '-')}-{r}")
            results[side].append(seconds)
            print(f"round {r + 1} {side:8s}: {args.trials} runs of {args.steps} steps in {seconds:7.2f} s", flush=True)
    med = {s: statistics.median(v) for s, v in results.items()}
    for side, seconds in med.items():
        print(f"median {side:8s}: {seconds:7.2f} s ({seconds / args.trials:.2f} s per run)")
    per_trial = (med["sweep"] - med["by hand"]) / args.trials
    print(
        f"sweep/by hand: {med['sweep'] / med['by hand']:.3f}x; overhead per trial {per_trial:+.2f} s "
        f"({per_trial / (med['by hand'] / args.trials):+.1%} of a run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
