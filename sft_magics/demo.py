"""The end-to-end demo, headless: the same magics a notebook user runs, in a real IPython shell.

    python -m sft_magics demo [--steps 40] [--output-dir runs]

1. render one training example through SmolLM2's chat template (trained tokens in «…»);
2. report the dataset's statistics;
3. fine-tune with LoRA for ``--steps`` steps (learning rate 2e-3, batch 8): halfway and at the end the
   model answers 16 validation questions (``eval_generate``), scored by ``json_match``, and
   ``final/`` is the better of the two checkpoints (``load_best_model_at_end``);
4. compare the base model, the base model prompted with 3 examples (few-shot) and the tuned model
   on the held-out validation split; print the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


def _cells(train: Path, val: Path, steps: int) -> list[tuple[str, str]]:
    return [
        ("Render one example through the chat template", f"%sft_template smollm2-135m --data {train} --row 0"),
        ("Dataset statistics", f"%sft_data {train} --max-length 128"),
        (
            f"Fine-tune with LoRA for {steps} steps, keeping the checkpoint with the best json_match",
            f"%%sft_train --name demo -o run\n"
            f"model: smollm2-135m\ndataset: {train}\neval_dataset: {val}\nmax_steps: {steps}\n"
            "learning_rate: 2.0e-3\nper_device_train_batch_size: 8\nlogging_steps: 5\n"
            f"eval_steps: {max(1, steps // 2)}\neval_generate: 16\neval_max_new_tokens: 48\n"
            "metric_for_best_model: json_match\nload_best_model_at_end: true\n",
        ),
        (
            "Base vs tuned vs few-shot prompting on the validation split",
            f"%sft_eval run --data {val} --baseline base --few-shot 3 --few-shot-data {train} --max-new-tokens 48 "
            "--metrics json_match,json_valid,json_fields -o scores",
        ),
    ]


def run_demo(steps: int = 40, output_dir: str = "runs", data_dir: Path = EXAMPLES) -> dict:
    from IPython.core.interactiveshell import InteractiveShell

    wall = time.perf_counter()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "sft_magics")
    shell.run_line_magic("config", "SftMagics.display = 'plain'")
    shell.run_line_magic("config", f"SftMagics.output_dir = {output_dir!r}")
    train, val = data_dir / "train.jsonl", data_dir / "val.jsonl"

    t = time.perf_counter()
    from .core.models import load_model

    load_model("smollm2-135m")  # first use converts the GGUF once; later loads are ~1 s
    timings = {"model_load_s": round(time.perf_counter() - t, 1)}

    for title, cell in _cells(train, val, steps):
        print(f"\n=== {title} ===", flush=True)
        t = time.perf_counter()
        result = shell.run_cell(cell, silent=True)  # no Out[...] echo of the bound result
        result.raise_error()
        timings[title] = round(time.perf_counter() - t, 1)

    run, scores = shell.user_ns["run"], shell.user_ns["scores"]
    from .core.evaluate.generation import generate

    probe = "What is the capital of France?"
    reply = generate(run.model, run.tokenizer, [[{"role": "user", "content": probe}]], max_new_tokens=32)[0]
    summary = {
        "steps": run.global_step,
        "best": run.best,
        "early_stop": run.early_stop,
        "final_train_loss": run.losses()[-1][1] if run.losses() else None,
        "base": scores["base"].summary(),
        "few_shot": scores["few_shot"].summary(),
        "tuned": scores["tuned"].summary(),
        "prompt_tokens": dict(scores.prompt_tokens),
        "general_reply": {"prompt": probe, "tuned": reply},
        "timings_s": timings,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    (Path(output_dir) / "demo" / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print("\n=== Summary ===")
    print("json_match: " + "   ".join(f"{k} {summary[k]['json_match']:.1%}" for k in ("base", "few_shot", "tuned")))
    print(f"tuned reply to {probe!r}: {reply!r}")
    best = run.best or {}
    best_text = f"best json_match {best['value']:.1%} on 16 answers at step {best['step']}" if best else "no best"
    print(
        f"{run.early_stop}; final/ is that step's checkpoint"
        if run.early_stop
        else f"trained all {run.global_step} steps ({best_text}; final/ is that checkpoint)"
    )
    print(f"steps {run.global_step}, wall time {summary['wall_s']} s; details in {output_dir}/demo/demo_summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_magics demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=40, help="LoRA training steps (batch 8), evaluated halfway and at the end"
    )
    parser.add_argument("--output-dir", default="runs")
    args = parser.parse_args(argv)
    run_demo(steps=args.steps, output_dir=args.output_dir)
    return 0
