"""Sweeps in the magics: a ``%%sft_train`` cell with a ``sweep:`` key, and ``%sft_attach`` /
``%sft_wait`` / ``%sft_stop`` / ``%sft_runs`` given a sweep's name (core/sweep/ does the work)."""

from __future__ import annotations

from pathlib import Path

from IPython.core.error import UsageError

from ..display import show

# Flags of %%sft_train that name one run, not a sweep of them.
RUN_ONLY_FLAGS = {
    "resume": "--resume continues one run: resume a trial by its name (%%sft_train --resume TRIAL)",
    "overwrite": "--overwrite removes one run; a sweep never writes over anything: choose another --name",
    "resume_anyway": "--resume-anyway goes with --resume of one run",
    "accelerate_config": "--accelerate-config: a sweep's trials each run in one process",
}


def is_sweep(magics, name: str) -> bool:
    from ..core.run.folder import NAME_RULE
    from ..core.sweep import is_sweep_folder

    return isinstance(name, str) and bool(NAME_RULE.match(name)) and is_sweep_folder(Path(magics.output_dir) / name)


def start_from_cell(magics, args, config: dict, cell: str):
    """``%%sft_train`` with ``sweep:``: every trial checked, then the driver started; the cell follows
    the sweep until it ends (Stop or the kernel's interrupt stops it all), or returns at once with
    ``--background``."""
    from ..core.sweep import start_sweep
    from ..core.sweep.start import check_sweep

    for flag, why in RUN_ONLY_FLAGS.items():
        if getattr(args, flag):
            raise UsageError(why)
    if args.launcher not in ("none", "slurm") or (args.nproc != 1 and args.launcher != "slurm"):
        raise UsageError(
            "--launcher / --nproc: a sweep's trials each train in one process here (parallel: N trials at once), "
            "or as SLURM jobs with --launcher slurm"
        )
    if "slurm" in config and args.launcher != "slurm":
        raise UsageError("key 'slurm' holds SLURM options: add --launcher slurm to the line to submit the trials")
    how = {"namespace": magics.shell.user_ns, "launcher": args.launcher, "nproc": args.nproc}
    if args.dry_run:
        return _dry_run(magics, check_sweep(config, args.name, magics.output_dir, **how), args)
    handle = start_sweep(config, args.name, magics.output_dir, cell=cell, **how)
    print(
        f"sweep '{handle.name}' started: {len(handle.record()['trials']) or 'its'} trials queued in {handle.path}: "
        f"%sft_attach {handle.name} to watch, %sft_wait {handle.name} to block, %sft_stop {handle.name} to stop all"
    )
    if args.background:
        if magics.mode == "widget":
            watch(magics, handle.path, block=False)
        return magics._bind(args.output, handle) if args.output else None
    return watch(magics, handle.path, block=True, output=args.output, handle=handle)


def _dry_run(magics, checked, args):
    from ..display._views import TableView

    keys = [p.key for p in checked.sweep.parameters]
    rows = [[name, *(params.get(k) for k in keys)] for name, params in checked.trials]
    notes = [
        f"method {checked.sweep.method}: "
        + (
            f"{len(rows)} trials"
            if checked.sweep.method != "search"
            else f"{checked.sweep.trials} trials proposed by Optuna (TPE, seed {checked.sweep.seed}); checked: each value at its ends"
        ),
        f"compared by {checked.metric} ({checked.direction}); {checked.parallel} trial(s) at once",
        "every trial's config passed the same checks as a run's (keys, values, data, template)",
        "dry run: nothing was started",
    ]
    show(TableView(f"%%sft_train --dry-run · sweep {checked.name}", ["trial", *keys], rows, notes), magics.mode)
    summary = {"trials": [dict(p, name=n) for n, p in checked.trials], "metric": checked.metric}
    return magics._bind(args.output, summary) if args.output else None


def watch(magics, path: Path, *, block: bool, output: str | None = None, handle=None):
    """Follow a sweep: a live view in a notebook; in plain and rich modes a line per trial as it
    changes. ``block``: (thread, finish) for the cell to wait on until it ends (then the final table;
    ``-o`` binds ``handle``), as a run's training thread."""
    from ..core.sweep import SWEEP_ENDS, stop_sweep, sweep_record
    from ..display._sweep_view import SweepView, SweepWatch
    from ._common import attach_dashboard
    from ._runner import TrainingThread

    def attach(trial: str) -> None:
        attach_dashboard(Path(magics.output_dir) / trial, magics.mode, follow_live=True)

    watcher = SweepWatch(path, magics.mode, on_stop=lambda: stop_sweep(path), attach=attach)
    read = lambda: sweep_record(path)
    ended = lambda r: r["state"] in (*SWEEP_ENDS, "stale")
    if not block:
        watcher.follow_in_background(read, ended)
        return None
    thread = TrainingThread(lambda: watcher.follow(read, ended), lambda: stop_sweep(path))

    def finish(wait):  # as a run's: the sync cell joins, an async cell awaits (Stop clicks handled)
        record = wait()
        if magics.mode != "widget":
            show(SweepView(record), magics.mode)
        if record["state"] == "stale":
            raise UsageError(f"sweep '{record['name']}' lost its driver: %sft_attach {record['name']} starts it again")
        return magics._bind(output, handle) if output else None

    return thread, finish


def attach(magics, name: str) -> None:
    from ..core.sweep import restart_if_needed, sweep_record
    from ..display._sweep_view import SweepView

    path = Path(magics.output_dir) / name
    said = restart_if_needed(path)
    if said:
        print(said)
    if magics.mode == "widget":
        watch(magics, path, block=False)
    else:
        show(SweepView(sweep_record(path)), magics.mode)


def wait(magics, name: str, timeout: float | None, output: str | None):
    from ..core.sweep import sweep_frame, wait_sweep
    from ..display._sweep_view import SweepView

    try:
        record = wait_sweep(Path(magics.output_dir) / name, timeout=timeout)
    except TimeoutError as err:
        raise UsageError(str(err)) from None
    show(SweepView(record), magics.mode)
    return magics._bind(output, sweep_frame(record)) if output else None


def show_one(magics, name: str, output: str | None):
    """``%sft_runs SWEEP``: the sweep as it is now; ``-o``: its trials as a DataFrame."""
    from ..core.sweep import sweep_frame, sweep_record
    from ..display._sweep_view import SweepView

    record = sweep_record(Path(magics.output_dir) / name)
    show(SweepView(record), magics.mode)
    return magics._bind(output, sweep_frame(record)) if output else None


def stop(magics, name: str, no_wait: bool) -> None:
    from ..core.sweep import stop_sweep, wait_sweep

    path = Path(magics.output_dir) / name
    stop_sweep(path)
    if not no_wait:
        record = wait_sweep(path)
        counts = {}
        for t in record["trials"]:
            counts[t["state"]] = counts.get(t["state"], 0) + 1
        print(f"sweep '{name}': {record['state']} ({', '.join(f'{n} {s}' for s, n in counts.items())})")


def show_runs(magics, records: list[dict]) -> list[dict]:
    """``%sft_runs``: the runs that belong to no sweep in one table, then each sweep as its own group."""
    from ..core.sweep import list_sweeps
    from ..display._runs_view import RunsView
    from ..display._sweep_view import SweepView

    sweeps = list_sweeps(magics.output_dir)
    members = {t["name"]: s["name"] for s in sweeps for t in s["trials"]}
    for r in records:
        r["sweep"] = members.get(r["name"])
    alone = [r for r in records if r["sweep"] is None]
    if alone or not sweeps:
        show(RunsView(alone), magics.mode)
    for s in sweeps:
        show(SweepView(s), magics.mode)
    return records
