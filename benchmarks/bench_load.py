"""Benchmark: ``load_data``'s peak memory and time on a JSONL source, chunked vs read whole.

    python benchmarks/bench_load.py [--rows 16000 64000 256000] [--turns 12] [--rounds 1] [--sides chunked whole]

For each size a JSONL file of multi-turn conversations (``bench_prepare``'s rows, ``--turns``
exchanges each; 12 give ~940 tokens, ~4 KB a row) is written once. Then, in a fresh process per
measurement and with the kernel's peak-RSS counter reset before the call (``/proc/self/clear_refs``):

- ``chunked``: ``load_data(path)`` as it is: rows read, normalised and stored ``CHUNK_ROWS`` at a
  time, in memory up to ``rowstore.SPILL_BYTES`` (64 MiB of Arrow data), memory-mapped from disk past it;
- ``whole``: the way ``load_data`` worked before: every row read into a Python list, normalised
  into a second list, then one ``datasets.Dataset.from_list``.

Printed per size: the peak RSS above the RSS before the call and the wall time of each, their ratios,
and whether the chunked dataset is on disk. Both must give the same fingerprint (checked).
``--sides chunked`` measures the chunked load alone (for sizes the whole load cannot hold: 1M rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
GIB = 1024**3
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def write_source(path: Path, rows: int, turns: int) -> None:
    """``bench_prepare.conversations(rows, turns)``, written a row at a time."""
    from bench_prepare import DATA

    pool = [json.loads(line)["messages"] for line in DATA.read_text().splitlines()]
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            messages = [m for k in range(turns) for m in pool[(i * turns + k) % len(pool)]]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def measure(side: str, path: str) -> dict:
    """One measurement in this (fresh) process."""
    import gc
    import time

    from bench_doctor import _status

    from sft_magics.core.data import load as D
    from sft_magics.core.data.formats import _normalize
    from sft_magics.core.data.sources import read_source

    D.load_data([{"prompt": "warm", "completion": "up"}] * 3)  # first-call imports not measured
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _status("VmRSS")
    start = time.perf_counter()
    if side == "chunked":
        loaded = D.load_data(path)
        fingerprint, rows, on_disk = loaded.fingerprint, len(loaded), bool(loaded.dataset.cache_files)
    else:
        import datasets

        raw, _ = read_source(path)
        normalised, _, _, _, _ = _normalize(raw, D.detect_format(raw))
        dataset = datasets.Dataset.from_list(normalised)
        fingerprint, rows, on_disk = D._fingerprint(normalised), len(dataset), False
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_above": _status("VmHWM") - base,
        "fingerprint": fingerprint,
        "rows": rows,
        "on_disk": on_disk,
    }


def _run(side: str, path: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)  # every chunked load writes its copy: nothing reused
    from bench_doctor import fresh_process

    env = {**os.environ, "SFT_MAGICS_CACHE": str(cache)}
    return fresh_process(__file__, "--measure", side, "--path", str(path), env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16000, 64000, 256000])
    parser.add_argument("--sides", nargs="+", choices=["chunked", "whole"], default=["chunked", "whole"])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--measure", choices=["chunked", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.path)))
        return

    print(f"load_data on JSONL, {args.turns}-turn conversations, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"rows-{rows}.jsonl"
            write_source(path, rows, args.turns)
            got: dict[str, list[dict]] = {side: [] for side in args.sides}
            for r in range(args.rounds):
                for side in args.sides if r % 2 == 0 else args.sides[::-1]:
                    got[side].append(_run(side, path, Path(tmp) / "cache"))
            every = [x for side in got.values() for x in side]
            assert len({x["fingerprint"] for x in every}) == 1, "the two loads differ"
            assert {x["rows"] for x in every} == {rows}
            line = f"{rows:>7} rows ({path.stat().st_size / 2**20:.0f} MiB): "
            seconds = {side: statistics.median(x["seconds"] for x in got[side]) for side in got}
            peak = {side: max(x["peak_above"] for x in got[side]) for side in got}
            for side in got:
                where = f" ({'on disk' if got[side][0]['on_disk'] else 'in memory'})" if side == "chunked" else ""
                line += f"{side} {seconds[side]:.1f} s, peak +{peak[side] / GIB:.2f} GiB{where} | "
            if len(got) == 2:
                ratio = peak["whole"] / max(peak["chunked"], 1)
                line += f"memory {ratio:.1f}x less, time {seconds['whole'] / seconds['chunked']:.2f}x"
            print(line.rstrip(" |"), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
