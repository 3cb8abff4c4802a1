"""Benchmark: what watching the answers during training (``eval_generate``) costs, as a fraction of
training time, on the bundled task with the demo's settings.

    python benchmarks/bench_watch.py [--rounds 2] [--steps 10] [--sample 16]

Both sides train the embedded SmolLM2-135M-Instruct with LoRA on ``examples/data/train.jsonl`` with
the validation file as eval data, one evaluation every ``--steps`` steps (the demo's cadence: 10),
the same seed and config; side (a) also generates answers for a fixed sample of ``--sample``
validation rows at that evaluation (``eval_generate``, greedy, ``eval_max_new_tokens: 48``) and
scores them; side (b) computes only the trainer's eval loss. The time compared is the trainer's own
``train_runtime`` (training steps and evaluations; model loading and the final save are outside).
The sides are interleaved in alternating order (a b, b a, ...) so that a busy machine slows both
alike. The evaluation comes after the first ``--steps`` steps of training, when answers are still
long (the model has not yet learned to stop early): the cost measured is an upper bound for the
later evaluations of a run.

Goal: (a - b) / b ≤ 15%, the median over rounds. The time inside the generation itself (the
``answers`` event's ``seconds``) is printed too, as the direct measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def one_run(root: Path, name: str, steps: int, sample: int | None) -> tuple[float, float]:
    """(train_runtime seconds, seconds spent generating and scoring answers)."""
    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.trainer import train

    config = {
        "model": "smollm2-135m",
        "dataset": str(DATA / "train.jsonl"),
        "eval_dataset": str(DATA / "val.jsonl"),
        "max_steps": steps,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "logging_steps": 5,
        "eval_steps": steps,
        "save_steps": steps,
    }
    if sample:
        config.update({"eval_generate": sample, "eval_max_new_tokens": 48})
    result = train(TrainSpec.from_mapping(name, config, output_dir=str(root)))
    runtime = next(h["train_runtime"] for h in reversed(result.history) if "train_runtime" in h)
    events = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    generating = sum(e["seconds"] for e in events if e["kind"] == "answers")
    return float(runtime), float(generating)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="training steps, one evaluation at the end")
    parser.add_argument("--sample", type=int, default=16, help="eval rows answered (eval_generate)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a, b, generating = [], [], []
        for r in range(args.rounds):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for side in order:
                t = time.perf_counter()
                runtime, gen = one_run(root, f"{side}{r}", args.steps, args.sample if side == "a" else None)
                (a if side == "a" else b).append(runtime)
                if side == "a":
                    generating.append(gen)
                print(
                    f"round {r + 1} {side}: train_runtime {runtime:.1f} s"
                    + (f" (generating {gen:.1f} s)" if side == "a" else "")
                    + f", wall {time.perf_counter() - t:.1f} s",
                    flush=True,
                )
        ratios = [x / y - 1 for x, y in zip(a, b)]
        direct = [g / y for g, y in zip(generating, b)]
        print(
            f"\n{args.steps} steps + 1 evaluation, {args.sample} rows answered, {args.rounds} rounds:\n"
            f"  training with answers (a): median {statistics.median(a):.1f} s;  without (b): "
            f"median {statistics.median(b):.1f} s\n"
            f"  cost (a - b) / b: median {statistics.median(ratios):.1%}  (rounds: "
            f"{', '.join(f'{x:.1%}' for x in ratios)})  goal ≤ 15%\n"
            f"  generating and scoring / (b): median {statistics.median(direct):.1%}  "
            f"({statistics.median(generating):.1f} s per evaluation)"
        )


if __name__ == "__main__":
    main()
