"""Command line: ``python -m sft_magics demo`` runs the end-to-end demo headless."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python -m sft_magics demo [--steps N] [--output-dir DIR]\n"
            "       python -m sft_magics worker|supervise RUN_DIR ...   (background runs; see core/train/worker.py)\n"
            "       python -m sft_magics slurm-job RUN_DIR -- COMMAND   (a SLURM job's batch step; core/train/slurm.py)\n"
            "       python -m sft_magics sweep SWEEP_DIR   (a sweep's driver; core/sweep/driver.py)"
        )
        return 0 if argv else 2
    if argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv[0] in ("worker", "supervise"):
        return _run_process(argv)
    if argv[0] == "slurm-job":  # the batch step of a --launcher slurm run (core/train/slurm.py)
        if len(argv) < 4 or argv[2] != "--":
            print("usage: python -m sft_magics slurm-job RUN_DIR -- COMMAND ...", file=sys.stderr)
            return 2
        from .core.train.slurm import job_main

        return job_main(argv[1], argv[3:])
    if argv[0] == "sweep":  # a sweep's driver (core/sweep/driver.py)
        if len(argv) != 2:
            print("usage: python -m sft_magics sweep SWEEP_DIR", file=sys.stderr)
            return 2
        from .core.sweep.driver import drive

        return drive(argv[1])
    print(f"unknown command '{argv[0]}' (try: demo)", file=sys.stderr)
    return 2


def _run_process(argv: list[str]) -> int:
    """``worker RUN_DIR`` / ``supervise RUN_DIR``: the processes behind background and
    multi-process runs (see sft_magics/core/train/worker.py)."""
    import argparse

    from .core.train import worker

    parser = argparse.ArgumentParser(prog=f"python -m sft_magics {argv[0]}")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume-anyway", action="store_true")
    parser.add_argument("--resume-if-any", action="store_true")
    if argv[0] == "supervise":
        parser.add_argument("--launcher", default="none", choices=worker.LAUNCHERS)
        parser.add_argument("--nproc", type=int, default=1)
        parser.add_argument("--accelerate-config", default=None)
    args = parser.parse_args(argv[1:])
    if argv[0] == "worker":
        return worker.worker_main(
            args.run_dir, resume=args.resume, resume_anyway=args.resume_anyway, resume_if_any=args.resume_if_any
        )
    return worker.supervise(
        args.run_dir,
        launcher=args.launcher,
        nproc=args.nproc,
        accelerate_config=args.accelerate_config,
        resume=args.resume,
        resume_anyway=args.resume_anyway,
    )


if __name__ == "__main__":
    sys.exit(main())
