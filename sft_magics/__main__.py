"""Command line: ``python -m sft_magics demo`` runs the end-to-end demo headless."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m sft_magics demo [--steps N] [--output-dir DIR]")
        return 0 if argv else 2
    if argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    print(f"unknown command '{argv[0]}' (try: demo)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
