"""Benchmark: the data doctor's (``data_stats``) peak memory and speed on multi-turn conversations.

    python benchmarks/bench_doctor.py [--rows 4000 16000] [--turns 12] [--rounds 2]

For each size, in a fresh process per measurement: the conversations (``bench_prepare.conversations``,
``--turns`` exchanges of the bundled task per row; 12 give ~940 tokens a row) are loaded with
``load_data`` (not measured), then the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``)
and ``data_stats`` runs with SmolLM2-135M-Instruct's tokenizer; printed: its peak RSS above the RSS
before the call (goal at 16k rows: <= 0.5 GiB) and its wall time.

Side by side, in the same rounds (interleaved, fresh processes): the per-row loop the doctor replaces
(``tokenize_row`` on every row, counting tokens and trained tokens), its peak memory and time, and
the ratio of the two times. Both must give the same totals (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
GIB = 1024**3


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def measure(side: str, rows: int, turns: int) -> dict:
    """One measurement in this (fresh) process."""
    import gc
    import time

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from bench_prepare import conversations

    from sft_magics.core.data.load import load_data
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template.doctor import data_stats
    from sft_magics.core.template.tokens import choose_mask_method, tokenize_row

    tokenizer = load_tokenizer("smollm2-135m")
    data = load_data(conversations(rows, turns))
    data_stats(load_data(conversations(20, turns)), tokenizer)  # warm-up: first-call imports not measured
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _status("VmRSS")
    start = time.perf_counter()
    if side == "doctor":
        stats = data_stats(data, tokenizer, max_length=1024)
        totals, trained = stats.total_tokens, stats.trained_tokens_full
    else:
        method = choose_mask_method(tokenizer)
        totals, trained = [], []
        for row in data.dataset:
            r = tokenize_row(tokenizer, row, data.format, method=method)
            totals.append(len(r.input_ids))
            trained.append(sum(r.assistant_masks))
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return {"seconds": seconds, "peak_above": peak - base, "tokens": sum(totals), "trained": sum(trained)}


def fresh_process(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script`` with ``args`` in a fresh Python process; its last line of output, read as JSON."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(side: str, rows: int, turns: int) -> dict:
    return fresh_process(__file__, "--measure", side, "--rows", str(rows), "--turns", str(turns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure", choices=["doctor", "per_row"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.rows[0], args.turns)))
        return

    print(f"data doctor: {args.turns}-turn conversations, SmolLM2 tokenizer, {os.cpu_count()} CPU cores")
    for rows in args.rows:
        got: dict[str, list[dict]] = {"doctor": [], "per_row": []}
        for r in range(args.rounds):
            for side in ("doctor", "per_row") if r % 2 == 0 else ("per_row", "doctor"):
                got[side].append(_run(side, rows, args.turns))
        d, p = got["doctor"], got["per_row"]
        assert {(x["tokens"], x["trained"]) for x in d + p} == {(d[0]["tokens"], d[0]["trained"])}, "totals differ"
        ds, ps = statistics.median(x["seconds"] for x in d), statistics.median(x["seconds"] for x in p)
        dm, pm = max(x["peak_above"] for x in d), max(x["peak_above"] for x in p)
        each = ", ".join(f"{a['seconds']:.1f}/{b['seconds']:.1f}" for a, b in zip(d, p))
        print(
            f"{rows:>6} rows ({d[0]['tokens'] / rows:.0f} tokens/row): "
            f"doctor {ds:.1f} s, peak +{dm / GIB:.2f} GiB | per-row loop {ps:.1f} s, peak +{pm / GIB:.2f} GiB | "
            f"speed {ps / ds:.1f}x (rounds, doctor/per-row s: {each})",
            flush=True,
        )


if __name__ == "__main__":
    main()
