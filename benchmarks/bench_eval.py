"""Benchmark: batched generation (``generate(..., batch_size=16)``) against one prompt at a time.

    python benchmarks/bench_eval.py [--model smollm2-135m] [--data examples/data/val.jsonl]
                                    [--max-new-tokens 48] [--batch-size 16] [--repeats 2]

The real embedded model (SmolLM2-135M-Instruct, offline) answers the 40 validation prompts of the
bundled task, greedy, with its own stop tokens, exactly as ``%sft_eval`` generates. The two ways are
timed interleaved (one-by-one, batched, one-by-one, batched, ...) so that a busy machine slows both
alike; the medians and their ratio are printed, and whether the answers are identical (left padding
with an attention mask should not change a greedy answer; where it does, it is float rounding of
padded batches, and the number of differing answers is printed). Goal: speedup >= 3x.

OpenMP: the script sets ``OMP_WAIT_POLICY=passive`` (``--omp-default`` keeps libgomp's default),
as ``bench_train_overhead.py`` does: on this shared 2-core machine idle OpenMP threads spinning
measure the neighbours, not the two ways of generating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "--omp-default" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch loads libgomp
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "val.jsonl"))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--omp-default", action="store_true", help="keep libgomp's default (active) wait policy")
    args = parser.parse_args(argv)

    import torch

    from sft_magics.core.data.load import load_data
    from sft_magics.core.evaluate.evaluation import examples_from
    from sft_magics.core.evaluate.generation import generate, prompt_token_counts
    from sft_magics.core.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    prompts = [e.prompt for e in examples_from(load_data(args.data))]
    tokens = prompt_token_counts(loaded.tokenizer, prompts)
    print(
        f"{args.model} on {loaded.device} ({str(loaded.dtype).replace('torch.', '')}), {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, load average {os.getloadavg()[0]:.1f}; "
        f"{len(prompts)} prompts ({min(tokens)}-{max(tokens)} tokens), max_new_tokens {args.max_new_tokens}",
        flush=True,
    )

    def one_by_one():
        return [
            generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=args.max_new_tokens, batch_size=1)[0]
            for p in prompts
        ]

    def batched():
        return generate(
            loaded.model, loaded.tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )

    batched()  # warm-up (first-call allocations, lazy imports)
    times: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    answers: dict[str, list[str]] = {}
    for r in range(args.repeats):
        for name, fn in (("one_by_one", one_by_one), ("batched", batched)):
            start = time.perf_counter()
            answers[name] = fn()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}: {name:<10} {times[name][-1]:7.2f} s", flush=True)

    single, batch = statistics.median(times["one_by_one"]), statistics.median(times["batched"])
    differ = [i for i, (a, b) in enumerate(zip(answers["one_by_one"], answers["batched"])) if a != b]
    print(f"one by one: {single:.2f} s ({single / len(prompts) * 1000:.0f} ms/prompt)")
    print(f"batched ({args.batch_size}): {batch:.2f} s ({batch / len(prompts) * 1000:.0f} ms/prompt)")
    ratio = single / batch
    rounds = ", ".join(f"{a / b:.2f}x" for a, b in zip(times["one_by_one"], times["batched"]))
    print(f"per round: {rounds}")
    print(f"speedup: {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(
        f"answers identical: {'yes' if not differ else f'no, {len(differ)} of {len(prompts)} differ (rows {differ[:10]})'}"
    )
    for i in differ[:3]:
        print(f"  row {i}: one-by-one {answers['one_by_one'][i]!r}\n         batched    {answers['batched'][i]!r}")
    return 0 if ratio >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
