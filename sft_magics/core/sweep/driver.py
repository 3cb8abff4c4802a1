"""The sweep's driver: ``python -m sft_magics sweep SWEEP_DIR``, a detached process that works through
the queue in ``trials.json``. Each trial is an ordinary background run (``core/train/worker.launch``),
so it has a folder, a dashboard, checkpoints, and can be attached, stopped, resumed, evaluated and
exported like any run.

- ``parallel`` trials at once (on several GPUs, one GPU each);
- a trial that fails is recorded with its cause, and the sweep goes on;
- ``method: search``: Optuna proposes each next trial from the scores so far (its ask-and-tell
  interface, TPE seeded), and its MedianPruner stops a trial whose evaluations fall behind the
  others' at the same step (the trial ends ``pruned``, its checkpoint kept); the study lives in
  ``optuna.journal``, so a driver started again goes on from where the last one was;
- ``STOP`` in the sweep folder (``%sft_stop SWEEP``): every running trial is asked to stop (a
  checkpoint, ``stopped``), queued ones are ``cancelled``, and the sweep ends ``stopped``;
- the driver is the only writer of ``trials.json``; when it dies, ``%sft_attach SWEEP`` starts
  another, which first reconciles the queue with the trials' run folders.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from ..errors import one_line
from ..events import FINAL_STATES
from ..files import read_json, write_json
from ..run.layout import CELL_FILE
from ..run.lookup import run_record
from .folder import (
    DRIVER_FILE,
    DRIVER_LOG,
    JOURNAL_FILE,
    SWEEP_ENDS,
    TENSORBOARD_FOLDER,
    SweepFolder,
    metric_points,
    score,
)
from .spec import SweepSpec, apply_params, trial_name

POLL_S = 0.25  # how soon a trial's end is seen and the next one started (a status read)
MAX_FAILED_STARTS = 3  # trials in a row that could not start: the machine, not the trials
JOB_POLL_S = 5.0  # how often a trial's SLURM job is asked after (the job follower's pace)


def _has_study(storage) -> bool:
    return bool(storage.get_all_studies())


class _Search:
    """Optuna's study for ``method: search``, stored in the sweep folder."""

    def __init__(self, folder: SweepFolder, info: dict, spec: SweepSpec):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.spec = optuna, spec
        storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
        pruner = optuna.pruners.MedianPruner(**spec.prune) if spec.prune is not None else optuna.pruners.NopPruner()
        # A driver started again goes on from the study's trials, with the seed moved on by their
        # count: TPE's own random stream starts afresh, and would repeat the first proposals.
        told = len(optuna.load_study(study_name=folder.name, storage=storage).trials) if _has_study(storage) else 0
        self.study = optuna.create_study(
            study_name=folder.name,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=spec.seed + told),
            pruner=pruner,
            direction=info["direction"],
            load_if_exists=True,
        )

    def ask(self) -> tuple[dict, dict]:
        trial = self.study.ask()
        params = {}
        for p in self.spec.parameters:
            if p.values is not None:
                params[p.key] = trial.suggest_categorical(p.key, list(p.values))
            elif p.integer:
                params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
            else:
                params[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
        return params, {"number": trial.number, "id": trial._trial_id}

    def report(self, t: dict, points: list) -> bool:
        """Report the trial's new evaluations; True when the pruner says stop it."""
        if self.study.trials[t["optuna"]["number"]].state != self.optuna.trial.TrialState.RUNNING:
            return False  # told already, by a driver that died before it wrote the queue
        trial = self.optuna.trial.Trial(self.study, t["optuna"]["id"])
        reported = t.get("reported", -1)
        for step, value in points:
            if step > reported:
                trial.report(value, step)
                t["reported"] = reported = step
        return self.spec.prune is not None and trial.should_prune()

    def tell(self, t: dict) -> None:
        states = self.optuna.trial.TrialState
        number = t["optuna"]["number"]
        if self.study.trials[number].state != states.RUNNING:
            return  # told already (a driver that died after telling)
        if t["state"] == "pruned":
            self.study.tell(number, state=states.PRUNED)
        elif t["state"] == "finished" and t.get("value") is not None:
            self.study.tell(number, t["value"])
        else:
            self.study.tell(number, state=states.FAIL)


def _launch(folder: SweepFolder, info: dict, trial: dict, slot: int) -> None:
    """Start one trial as an ordinary background run; its tracker settings grouped by the sweep."""
    import yaml

    from ..processes import secrets_from_environment
    from ..secrets import merge_secrets
    from ..train.config import TrainSpec
    from ..train.worker import launch

    clean = apply_params(info["base"], trial["params"])
    clean["run_name"] = trial["name"]  # trackers name the trial's run by it
    report = clean.get("report_to") or "none"
    report = [report] if isinstance(report, str) else list(report)
    env = {}
    if "trackio" in report:
        clean.setdefault("project", folder.name)  # trackio's project: the sweep
    if "tensorboard" in report:
        env["TENSORBOARD_LOGGING_DIR"] = str(folder / TENSORBOARD_FOLDER / trial["name"])
    if "mlflow" in report:
        env["MLFLOW_EXPERIMENT_NAME"] = os.environ.get("MLFLOW_EXPERIMENT_NAME") or folder.name
    if info.get("gpus", 0) > 1 and info.get("parallel", 1) > 1:  # one GPU each, of those this process may use
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        visible = visible or [str(i) for i in range(info["gpus"])]
        env["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)]
    config = merge_secrets(clean, secrets_from_environment())
    spec = TrainSpec.from_mapping(trial["name"], config, output_dir=info["output_dir"])
    cell = f"# trial {trial['index']} of sweep {folder.name}: {json.dumps(trial['params'])}\n" + yaml.safe_dump(clean)
    how = info.get("launch") or {}
    if how.get("launcher") == "slurm":  # each trial its own job (core/train/slurm.py)
        from ..train.slurm import submit_run

        run = submit_run(spec, files={CELL_FILE: cell}, env=env, nproc=int(how.get("nproc") or 1))
    else:
        run = launch(spec, files={CELL_FILE: cell}, env=env)
    trial.update(state="running", slot=slot, started=round(time.time(), 3), pid=run.pid, job=run.job_id)


def _settle(folder: SweepFolder, info: dict, trial: dict, search: _Search | None, stopping: bool) -> None:
    """A running trial: report its evaluations (pruning), and record its end when it has ended.
    Cheap while it trains (its status and its supervisor's pid); its whole record once at the end."""
    from ..run.lock import pid_alive
    from ..run.status import read_status
    from ..train.follow import request_stop

    run_dir = folder.trial_dir(trial)
    if not run_dir.is_dir():
        trial.update(state="failed", error=f"its run folder {run_dir} is gone")
        if search is not None:
            search.tell(trial)
        return
    pruning = search is not None and search.spec.prune is not None and not stopping and not trial.get("pruning")
    if pruning and search.report(trial, metric_points(run_dir, info["metric"])):
        trial["pruning"] = True
        request_stop(run_dir)
    if read_status(run_dir)[0].get("state") not in FINAL_STATES:
        if trial.get("job"):  # a SLURM job: asked whether it lives (scontrol) every few seconds only
            if time.time() - trial.get("asked", 0) < JOB_POLL_S:
                return
            trial["asked"] = round(time.time(), 3)
        elif int(trial.get("pid") or 0) > 0 and pid_alive(int(trial["pid"])):
            return  # its supervisor lives (no pid, an adopted trial: its record says)
    record = run_record(run_dir)
    if record["status"] not in (*FINAL_STATES, "stale"):
        return
    best = score(metric_points(run_dir, info["metric"]), info["metric"], info["direction"])
    state = record["status"] if record["status"] in FINAL_STATES else "failed"
    if state == "stopped" and trial.get("pruning"):
        state = "pruned"
    trial.update(state=state, steps=record.get("steps"), ended=round(time.time(), 3))
    trial["value"], trial["value_step"] = best if best else (None, None)
    if state == "failed":
        trial["error"] = record.get("error") or "its process ended without a final status"
    if search is not None:
        search.tell(trial)


def _next_trial(folder: SweepFolder, info: dict, queue: dict, spec: SweepSpec, search: _Search | None) -> dict | None:
    waiting = [t for t in queue["trials"] if t["state"] == "queued"]
    if waiting:
        return waiting[0]
    if search is None or len(queue["trials"]) >= spec.trials:
        return None
    params, ids = search.ask()
    index = len(queue["trials"]) + 1
    trial = {"index": index, "name": trial_name(folder.name, index, params), "params": params, "state": "queued"}
    trial["optuna"] = ids
    queue["trials"].append(trial)
    return trial


def _step(folder: SweepFolder, info: dict, queue: dict, spec: SweepSpec, search: _Search | None) -> bool:
    """One turn of the loop; True when the sweep has ended."""
    from ..train.follow import request_stop

    stopping = folder.stop_requested()
    running = [t for t in queue["trials"] if t["state"] == "running"]
    for t in running:
        _settle(folder, info, t, search, stopping)
    running = [t for t in queue["trials"] if t["state"] == "running"]
    if stopping:
        for t in running:
            if not t.get("stop_asked"):
                request_stop(folder.trial_dir(t))
                t["stop_asked"] = True
        for t in queue["trials"]:
            if t["state"] == "queued":
                t["state"] = "cancelled"
        if not running:
            queue["state"] = "stopped"
        return not running
    busy = {t.get("slot") for t in running}
    while len(running) < info.get("parallel", 1) and not queue.get("halt") and not folder.stop_requested():
        trial = _next_trial(folder, info, queue, spec, search)
        if trial is None:
            break
        slot = min(s for s in range(info.get("parallel", 1) + 1) if s not in busy)
        trial["state"] = "starting"  # on disk before the run exists: a driver that dies now is not fooled
        folder.write_queue(queue)
        try:
            _launch(folder, info, trial, slot)
        except Exception as err:  # one bad trial is recorded, and the sweep goes on
            trial.update(state="failed", error=one_line(err, 400), ended=round(time.time(), 3))
            if search is not None:
                search.tell(trial)
            queue["failed_starts"] = queue.get("failed_starts", 0) + 1
            if queue["failed_starts"] >= MAX_FAILED_STARTS:  # the machine, not a trial: stop starting
                queue["halt"] = f"{MAX_FAILED_STARTS} trials in a row could not start; the last: {trial['error']}"
            continue
        queue["failed_starts"] = 0
        busy.add(slot)
        running.append(trial)
    if not running and queue.get("halt"):
        for t in queue["trials"]:
            if t["state"] == "queued":
                t["state"] = "cancelled"
        queue.update(state="failed", error=queue["halt"])
        return True
    if not running:
        queue["state"] = "finished"
        return True
    queue["state"] = "running"
    return False


def _warm_up() -> None:
    """Load the libraries a trial's start needs (its config is checked against TRL's fields, its plan
    made) now, while the first trials train, not when the next one is due."""
    from ..train.config import sft_config_fields
    from ..train.plan import plan  # noqa: F401

    sft_config_fields()


def first_trials(folder: SweepFolder, queue: dict, spec: SweepSpec) -> None:
    """Start the first ``parallel`` trials of a planned sweep in the calling process (the notebook),
    as the driver would; the driver goes on from there."""
    _step(folder, folder.info(), queue, spec, None)
    folder.write_queue(queue)


def _adopt(folder: SweepFolder, trial: dict) -> None:
    """A trial a dead driver was starting: running if its run was made (its supervisor or its job
    from the run folder), else queued again."""
    from ..run.layout import JOB_FILE, SUPERVISOR_FILE

    run_dir = folder.trial_dir(trial)
    if not run_dir.is_dir():
        trial["state"] = "queued"
        return
    job = read_json(run_dir / JOB_FILE).get("job_id")
    trial.update(state="running", pid=read_json(run_dir / SUPERVISOR_FILE).get("pid") or 0, job=job)


def drive(sweep_dir: str | Path, poll: float = POLL_S) -> int:
    """Work through the sweep's queue until every trial has ended (or STOP); one driver at a time."""
    sweep_dir = Path(sweep_dir)
    folder = SweepFolder.existing(sweep_dir.parent, sweep_dir.name)
    folder.lock.acquire()
    try:
        info = folder.info()
        spec = SweepSpec.from_dict(info["spec"])
        search = _Search(folder, info, spec) if spec.method == "search" else None
        queue = folder.queue()
        if queue.get("state") in SWEEP_ENDS:
            return 0
        queue.pop("error", None)
        for t in queue["trials"]:
            if t["state"] == "starting":
                _adopt(folder, t)
        _warm_up()
        print(f"driver {os.getpid()}: sweep {folder.name}, {len(queue['trials'])} trial(s) on record", flush=True)
        while True:
            ended = _step(folder, info, queue, spec, search)
            folder.write_queue(queue)
            if ended:
                print(f"sweep {folder.name}: {queue['state']}", flush=True)
                return 0
            time.sleep(poll)
    except Exception as err:  # the sweep is not over: %sft_attach starts a driver again
        traceback.print_exc()
        queue = folder.queue()
        queue["error"] = one_line(err, 400, named=True)
        folder.write_queue(queue)
        return 1
    finally:
        folder.lock.release()


# -- from the notebook -------------------------------------------------------------------------------


def stop_sweep(sweep_dir: str | Path) -> None:
    """Stop every trial (checkpoints kept) and start no more: STOP for the driver, and each running
    trial asked directly too, so a sweep whose driver is gone stops as well."""
    from ..train.follow import request_stop

    sweep_dir = Path(sweep_dir)
    folder = SweepFolder.existing(sweep_dir.parent, sweep_dir.name)
    folder.request_stop()
    for t in folder.queue()["trials"]:
        if t.get("state") == "running" and folder.trial_dir(t).is_dir():
            request_stop(folder.trial_dir(t))
    if folder.driver_pid() is None and folder.queue().get("state") not in SWEEP_ENDS:
        start_driver(folder)  # nobody to settle the queue: a driver that sees STOP at once


def wait_sweep(sweep_dir: str | Path, timeout: float | None = None, poll: float = 1.0) -> dict:
    """Block until the sweep ends; its record. A sweep whose driver is gone is an error, not a hang."""
    from .record import sweep_record
    from .spec import SweepError

    sweep_dir = Path(sweep_dir)
    folder = SweepFolder.existing(sweep_dir.parent, sweep_dir.name)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = folder.state()
        if state in SWEEP_ENDS:
            return sweep_record(sweep_dir)
        if state == "stale":
            error = folder.queue().get("error")
            raise SweepError(
                f"sweep '{folder.name}' has no driver (its process ended before the sweep did"
                + (f", on {error}" if error else "")
                + f"): %sft_attach {folder.name} starts it again and continues the queue"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"sweep '{folder.name}' still {state} after {timeout} s")
        time.sleep(poll)


def restart_if_needed(sweep_dir: str | Path) -> str | None:
    """``%sft_attach SWEEP``: a sweep that has not ended and has no driver gets a new one, which
    continues the queue; what was done, or None."""
    sweep_dir = Path(sweep_dir)
    folder = SweepFolder.existing(sweep_dir.parent, sweep_dir.name)
    if folder.state() != "stale":
        return None
    pid = start_driver(folder)
    left = sum(1 for t in folder.queue()["trials"] if t.get("state") in ("queued", "starting", "running"))
    said = f"sweep '{folder.name}' had no driver: started one again (pid {pid}), continuing the queue ({left} trial(s) left)"
    secret = folder.info().get("secret_keys")
    if secret:  # never written to disk, so only the first driver had them
        said += f"; the cell's secret keys ({', '.join(secret)}) reached the first driver only: trials it starts now run without them"
    return said


def start_driver(folder: SweepFolder, env: Mapping[str, str] | None = None) -> int:
    """The sweep's driver, ``python -m sft_magics sweep DIR``, detached: it outlives the kernel."""
    from ..processes import start_detached

    cmd = [sys.executable, "-m", "sft_magics", "sweep", str(folder.path.resolve())]
    proc = start_detached(cmd, env=env, log=folder / DRIVER_LOG)
    write_json(folder / DRIVER_FILE, {"pid": proc.pid, "command": cmd, "started": round(time.time(), 3)})
    return proc.pid
