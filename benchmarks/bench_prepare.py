"""Benchmark: preparing conversations for training (``input_ids`` + ``assistant_masks``), batched
in chunks (``to_trl_rows`` now) against one row at a time through ``tokenize_row`` (what
``to_trl_rows`` did before: one template render per prefix, one tokenizer call and a token-by-token
decode per row).

    python benchmarks/bench_prepare.py [--rows 1000 4000] [--rounds 3]

Rows: multi-turn conversations built from the bundled task (``examples/data/train.jsonl``), each
joining ``--turns`` of its extraction exchanges into one conversation, with SmolLM2-135M-Instruct's
tokenizer and chat template (prefix rendering: it has no generation markers). Both sides produce
the same ids and masks (checked on every row before timing). A third side loads the same
preparation from the on-disk cache (``core/prepared.py``), as a re-run or resume does. The sides
alternate (a b c, c b a, ...) in one process; printed: rows/s of each and the ratios, the median
over rounds. The cache lives in a temporary folder ($SFT_MAGICS_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "train.jsonl"


def conversations(n: int, turns: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    out = []
    for i in range(n):
        messages = []
        for k in range(turns):
            messages += rows[(i * turns + k) % len(rows)]["messages"]
        out.append({"messages": messages})
    return out


def per_row(data, tokenizer):
    from sft_magics.core.template.tokens import choose_mask_method, tokenize_row

    method = choose_mask_method(tokenizer)
    out = []
    for row in data.dataset:
        r = tokenize_row(tokenizer, row, data.format, method=method)
        out.append((r.input_ids, [int(m) for m in r.assistant_masks]))
    return out


def batched(data, tokenizer):
    from sft_magics.core.template.prepared import to_trl_rows

    rows = to_trl_rows(data, tokenizer, cache=False)
    return list(zip(rows["input_ids"], rows["assistant_masks"]))


def cached(data, tokenizer):
    from sft_magics.core.template.prepared import to_trl_rows

    rows = to_trl_rows(data, tokenizer)  # prepared (and stored) by the untimed first call
    return list(zip(rows["input_ids"], rows["assistant_masks"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--turns", type=int, default=6, help="exchanges per conversation")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import tempfile

    import datasets

    os.environ["SFT_MAGICS_CACHE"] = tempfile.mkdtemp(prefix="bench-prepare-")

    from sft_magics.core.data.load import load_data
    from sft_magics.core.models import load_tokenizer

    datasets.disable_caching()  # every round prepares from scratch
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("smollm2-135m")
    for n in args.rows:
        data = load_data(conversations(n, args.turns))
        tokens = sum(len(ids) for ids, _ in batched(data, tokenizer))
        assert batched(data, tokenizer) == per_row(data, tokenizer) == cached(data, tokenizer), "sides disagree"
        a, b, c = [], [], []
        for r in range(args.rounds):
            for side in "abc" if r % 2 == 0 else "cba":
                t = time.perf_counter()
                {"a": batched, "b": per_row, "c": cached}[side](data, tokenizer)
                {"a": a, "b": b, "c": c}[side].append(n / (time.perf_counter() - t))
        ratio = statistics.median(x / y for x, y in zip(a, b))
        again = statistics.median(z / x for z, x in zip(c, a))
        print(
            f"{n:>6} conversations ({tokens / n:.0f} tokens each): batched {statistics.median(a):,.0f} rows/s, "
            f"per row {statistics.median(b):,.0f} rows/s: ratio {ratio:.2f}x (rounds: "
            f"{', '.join(f'{x / y:.2f}' for x, y in zip(a, b))}); again from the cache "
            f"{statistics.median(c):,.0f} rows/s: {again:.0f}x the batched preparation",
            flush=True,
        )


if __name__ == "__main__":
    main()
