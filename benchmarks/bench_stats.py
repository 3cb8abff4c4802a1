"""Benchmark: batched ``data_stats`` against a naive per-row loop, on 20,000 synthetic conversations.

    python benchmarks/bench_stats.py [--rows 20000] [--repeats 3]

The naive loop is what a user would write: per row, ``apply_chat_template(messages, tokenize=True)``
for the whole conversation plus one more call for the prompt, to find where the trained answer starts.
``data_stats`` does more (every assistant turn's mask, duplicates, roles, truncation) with one batched
tokenizer call. The two are timed interleaved (naive, batched, naive, batched, ...) so that a busy
machine slows both alike; the medians and their ratio are printed. Goal: speedup >= 5x.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "json",
    "name",
    "age",
    "city",
    "Lisbon",
    "Paris",
    "Accra",
    "Hiro",
    "42",
    "63",
    "2024",
    "model",
    "token",
    "data",
    "train",
    "answer",
    "question",
    "extract",
    "person",
]


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice(".?!.")


def synthetic_conversations(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversations: a system prompt in ~30% of them, 1-3 user/assistant turns, 3-120 words a turn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": _sentence(rng, 5, 25)})
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": _sentence(rng, 4, 60)})
            messages.append({"role": "assistant", "content": _sentence(rng, 3, 120)})
        rows.append({"messages": messages})
    return rows


def naive(tokenizer, rows: list[dict]) -> tuple[list[int], list[int]]:
    """Per row: tokenize the conversation, tokenize the prompt, trained = the rest."""
    totals, trained = [], []
    for row in rows:
        messages = row["messages"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        totals.append(len(ids))
        trained.append(len(ids) - len(prompt))
    return totals, trained


def _timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--per-row-sample", type=int, default=300, help="rows timed with the old tokenize_row loop (0: skip)"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sft_magics.core.data.load import load_data
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template.doctor import data_stats
    from sft_magics.core.template.tokens import choose_mask_method, tokenize_row

    tokenizer = load_tokenizer(args.model)
    rows = synthetic_conversations(args.rows)
    data = load_data(rows)  # validation + Dataset: not timed, both sides start from the same rows
    data_stats(load_data(rows[:50]), tokenizer)  # warm-up: first-call imports (TRL's template check) are not timed
    naive(tokenizer, rows[:50])
    print(
        f"{args.rows} conversations, model {args.model}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    wall: dict[str, list[float]] = {"naive": [], "batched": []}
    cpu: dict[str, list[float]] = {"naive": [], "batched": []}
    for rep in range(args.repeats):
        (totals, trained), w, c = _timed(naive, tokenizer, rows)
        wall["naive"].append(w)
        cpu["naive"].append(c)
        stats, w, c = _timed(data_stats, data, tokenizer, max_length=args.max_length)
        wall["batched"].append(w)
        cpu["batched"].append(c)
        print(
            f"  run {rep + 1}: naive {wall['naive'][-1]:.2f} s (cpu {cpu['naive'][-1]:.2f}), "
            f"batched {wall['batched'][-1]:.2f} s (cpu {cpu['batched'][-1]:.2f})",
            flush=True,
        )

    # Same totals as the naive loop (both tokenize the whole conversation the same way).
    assert stats.total_tokens == totals, "batched and naive token counts differ"
    naive_s, batched_s = statistics.median(wall["naive"]), statistics.median(wall["batched"])
    ratio = naive_s / batched_s
    print(
        f"tokens: {sum(totals):,} total; trained: {sum(stats.trained_tokens_full):,} (every assistant turn), "
        f"{sum(trained):,} (naive: last answer only)"
    )

    # Where the batched time goes: the one tokenizer call alone is the floor of any exact method.
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    _, tok_s, _ = _timed(tokenizer, texts, add_special_tokens=False, return_offsets_mapping=True)
    print(f"  of which the single batched tokenizer call on the {args.rows} full texts: {tok_s:.2f} s")
    if args.per_row_sample:
        sample = data.dataset.select(range(min(args.per_row_sample, len(data))))
        method = choose_mask_method(tokenizer)
        _, w, _ = _timed(lambda: [tokenize_row(tokenizer, r, "messages", method=method) for r in sample])
        print(
            f"  the previous per-row tokenize_row loop: {w / len(sample) * 1e6:.0f} us/row "
            f"(~{w / len(sample) * args.rows:.0f} s for {args.rows} rows, {w / len(sample) * args.rows / batched_s:.0f}x the batched time)"
        )
    print(
        f"median naive {naive_s:.2f} s ({naive_s / args.rows * 1e6:.0f} us/row, cpu {statistics.median(cpu['naive']):.2f} s), "
        f"batched {batched_s:.2f} s ({batched_s / args.rows * 1e6:.0f} us/row, cpu {statistics.median(cpu['batched']):.2f} s)"
    )
    print(f"speedup: {ratio:.1f}×")
    return ratio


if __name__ == "__main__":
    main()
