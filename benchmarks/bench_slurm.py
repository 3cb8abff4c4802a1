"""Benchmark: the SLURM path's overhead against the same run in the background, on this machine.

    python benchmarks/bench_slurm.py [--rounds 3] [--steps 40] [--model tiny|smollm2-135m]

Needs a running SLURM: pass ``--slurm-conf`` of one, or run as root with slurm-wlm installed and
the benchmark starts a one-node SLURM itself (tests/slurm/start_slurm.sh) and stops it at the end.

Both sides train the same config from the notebook's API, each in fresh processes:

- ``background``: ``core.train.worker.launch`` (a detached supervisor, then the worker);
- ``slurm``: ``core.train.slurm.submit_run`` (sbatch, then the job's batch step, srun, the worker).

Measured per run: *start* = seconds from the call to the first logged step (submission, scheduling,
process start, imports, model and data loading), and *s/step* = the trainer's own
``train_runtime / global_step``. The sides alternate, in rotating order, ``--rounds`` times; printed:
each run, the medians, and slurm/background for both (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "examples" / "data" / "train.jsonl"


def first_step_and_pace(run_dir: Path, t0: float) -> tuple[float, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next(e["time"] for e in events if e.get("kind") == "log" and "loss" in e)
    runtime = next(e for e in reversed(events) if "train_runtime" in e)
    return first - t0, runtime["train_runtime"] / max(1, runtime["step"])


def one_run(side: str, model: str, steps: int, out: Path, n: int) -> tuple[float, float]:
    from sft_magics.core.train import worker as w
    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.slurm import submit_run

    config = {
        "model": model,
        "dataset": str(DATA),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "save_strategy": "no",
        **({"slurm": {"cpus_per_task": os.cpu_count() or 1}} if side == "slurm" else {}),
    }
    spec = TrainSpec.from_mapping(f"{side.replace(' ', '-')}-{n}", config, output_dir=str(out))
    t0 = time.time()
    run = submit_run(spec) if side == "slurm" else w.launch(spec)
    record = run.wait(timeout=1800)
    if record["status"] != "finished":
        raise SystemExit(f"{side} run {spec.name} ended {record['status']}: {record.get('error')}")
    settle(run)
    return first_step_and_pace(run.path, t0)


def settle(run, timeout: float = 120.0) -> None:
    """Wait until the run's processes (or its job) are gone, so the next run starts on a quiet machine
    and a free node: the status is final a moment before the worker has exited."""
    from sft_magics.core.cluster import job_info
    from sft_magics.core.run.lock import pid_alive

    deadline = time.time() + timeout
    while time.time() < deadline:
        if run.job_id:
            info = job_info(run.job_id)
            if info is None or not info.live:
                return
        elif not pid_alive(run.pid):
            return
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="tiny", help="'tiny' (a random-weight model built here) or a model id")
    parser.add_argument("--slurm-conf", default=os.environ.get("SLURM_CONF"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    started = None
    if not args.slurm_conf:
        started = work / "slurm"
        conf = subprocess.run(
            ["bash", str(ROOT / "tests" / "slurm" / "start_slurm.sh"), str(started)], capture_output=True, text=True
        )
        if conf.returncode != 0:
            raise SystemExit(f"could not start SLURM: {conf.stderr.strip()}")
        args.slurm_conf = conf.stdout.strip().splitlines()[-1]
    os.environ["SLURM_CONF"] = args.slurm_conf
    model = args.model
    if model == "tiny":
        from sft_magics.testing import make_tiny_model

        model = str(make_tiny_model(work / "tiny-model"))
    sides = ["background", "slurm"]
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
    try:
        for r in range(args.rounds):
            for side in sides[r % 2 :] + sides[: r % 2]:
                start, pace = one_run(side, model, args.steps, work / "runs", r)
                results[side].append((start, pace))
                print(
                    f"round {r + 1} {side:10s}: first step after {start:6.2f} s · {pace * 1000:7.1f} ms/step",
                    flush=True,
                )
    finally:
        if started is not None:
            subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "stop_slurm.sh"), str(started)], check=False)
    med = {s: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for s, v in results.items()}
    for side, (start, pace) in med.items():
        print(f"median {side:10s}: first step after {start:6.2f} s · {pace * 1000:7.1f} ms/step")
    print(
        f"slurm/background: start {med['slurm'][0] / med['background'][0]:.2f}x "
        f"(+{med['slurm'][0] - med['background'][0]:.2f} s), s/step {med['slurm'][1] / med['background'][1]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
