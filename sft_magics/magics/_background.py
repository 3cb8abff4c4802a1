"""Helpers for the magics that follow runs in other processes: attach a dashboard to a run's
event stream, and load a finished run's result from disk."""

from __future__ import annotations

import threading
from pathlib import Path


def attach_dashboard(run_dir: Path, mode: str, *, follow_live: bool):
    """Show a dashboard fed from ``metrics.jsonl``: the whole history, then (``follow_live``) new
    events as they arrive, on a background thread that only updates widget values."""
    from ..core import worker as w
    from ..display import make_reporter

    run_dir = Path(run_dir)
    reporter = make_reporter(mode, title=run_dir.name, on_stop=lambda: w.request_stop(run_dir))
    if follow_live and mode == "widget":
        threading.Thread(target=w.follow, args=(run_dir, reporter), name=f"sft-follow-{run_dir.name}", daemon=True).start()
    else:
        w.follow(run_dir, reporter, until_final=False)  # replay what is there, here and now
        reporter.close()
    return reporter


def run_from_disk(run_dir: Path):
    """A TrainResult for a run trained in another process: history from its events, the trained
    model loaded from ``final/``."""
    from ..core.models import load_model
    from ..core.runs import read_events, read_json
    from ..core.train import TrainResult

    run_dir = Path(run_dir)
    status = read_json(run_dir / "status.json")
    history = [
        {k: v for k, v in e.items() if k not in ("kind", "time")}
        for e in read_events(run_dir / "metrics.jsonl")
        if e.get("kind") in ("log", "eval")
    ]
    model = tokenizer = None
    final = run_dir / "final"
    if final.is_dir():
        loaded = load_model(str(final))
        model, tokenizer = loaded.model, loaded.tokenizer
    return TrainResult(
        name=run_dir.name,
        path=run_dir,
        status=status.get("state", "unknown"),
        global_step=int(status.get("step", 0)),
        max_steps=int(status.get("max_steps") or 0),
        history=history,
        model=model,
        tokenizer=tokenizer,
        is_peft=(final / "adapter_config.json").is_file(),
        error=status.get("error"),
    )
