"""Benchmark: the fit check's estimate (``%%sft_train --dry-run``) against the peak memory training
really adds, on this CPU, for the tiny test model and the embedded SmolLM2-135M.

    python benchmarks/bench_fit.py [--steps 3]

Each configuration trains in a fresh process: imports and the plan first, then the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs``) and ``train`` runs ``--steps`` steps with our
defaults (LoRA r=16 on every linear layer, fp32 on a CPU) on rows long enough that every batch is
exactly batch x length tokens; measured: the peak RSS (VmHWM) above the RSS before training.
The estimate is ``core.memory.estimate`` for the same plan, with the length ``planned_length``
finds. Printed per configuration: both, and estimate/measured (goal within 0.75-1.25).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_doctor import _status  # the process's RSS and peak RSS from /proc/self/status

GIB = 1024**3
# (model, batch, max_length, extra keys, what it is to core/memory.py): "fitted X" set coefficient X;
# "held out" configurations were not used to fit anything: they check the estimate.
CONFIGS = [
    ("tiny", 8, 128, {}, "fitted overhead"),
    ("tiny", 8, 512, {}, "fitted per-token bytes"),
    ("smollm2-135m", 8, 128, {}, "fitted layer activations"),
    ("smollm2-135m", 8, 256, {}, "fitted layer activations"),
    ("smollm2-135m", 2, 1024, {}, "held out"),
    ("smollm2-135m", 4, 384, {}, "held out"),
    ("smollm2-135m", 8, 256, {"gradient_checkpointing": True}, "fitted checkpointing share"),
    ("smollm2-135m", 4, 384, {"gradient_checkpointing": True}, "held out"),
    ("smollm2-135m", 8, 128, {"bf16": True}, "fitted bf16 share"),
    ("smollm2-135m", 4, 384, {"bf16": True}, "held out"),
    ("smollm2-135m", 2, 128, {"lora": False}, "fitted full fine-tune share"),
    ("smollm2-135m", 4, 192, {"lora": False}, "held out"),
    ("tiny", 4, 512, {"lora": False}, "held out"),
]


def measure(model: str, batch: int, length: int, extra: dict, steps: int, tmp: Path) -> dict:
    import gc

    import peft  # noqa: F401  (imported before the baseline: every library the training uses)
    import torch  # noqa: F401
    import trl  # noqa: F401

    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.memory import fit_check
    from sft_magics.core.train.plan import plan
    from sft_magics.core.train.trainer import train

    if model == "tiny":
        from sft_magics.testing import make_tiny_model

        model = str(make_tiny_model(tmp / "tiny"))
    rows = tmp / "rows.jsonl"
    words = " ".join(["the model reads this text and learns"] * (length // 2))
    rows.write_text("".join(json.dumps({"text": f"{i} {words}"}) + "\n" for i in range(batch * steps)))
    config = {
        "model": model,
        "dataset": str(rows),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "max_length": length,
        "save_strategy": "no",
        **extra,
    }
    spec = TrainSpec.from_mapping("fit", config, output_dir=str(tmp / "runs"))
    p = plan(spec)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    train(spec)
    measured = _status("VmHWM") - base
    _, _, fit = fit_check(p)
    return {"measured": measured, "estimate": fit.total, "length": fit.length, "parts": fit.as_dict()["parts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model, batch, length, extra = args.measure
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(model, int(batch), int(length), json.loads(extra), args.steps, Path(tmp))))
        return
    print("fit check: estimate vs measured peak memory training adds (defaults: LoRA r=16, fp32 on a CPU)")
    for model, batch, length, extra, role in CONFIGS:
        command = [sys.executable, __file__, "--steps", str(args.steps), "--measure", model, str(batch), str(length)]
        out = subprocess.run([*command, json.dumps(extra)], capture_output=True, text=True)
        what = f"{model:>13} batch {batch} x {length:>4}{' ' + json.dumps(extra) if extra else ''}"
        if out.returncode:
            print(f"  {what}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        parts = " + ".join(f"{k} {v / GIB:.2f}" for k, v in r["parts"].items())
        print(
            f"  [{role}] {what}: estimate {r['estimate'] / GIB:.2f} GiB "
            f"({parts}), measured {r['measured'] / GIB:.2f} GiB, ratio {r['estimate'] / r['measured']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
