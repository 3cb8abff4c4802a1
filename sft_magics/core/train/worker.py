"""Runs outside the kernel: background workers and multi-process (torchrun / accelerate) training.

The run folder is the interface. The kernel writes ``spec.json`` and starts a detached
*supervisor* (``python -m sft_magics supervise RUN_DIR``), which starts the *worker* command —
``python -m sft_magics worker RUN_DIR`` directly, or under ``torchrun`` / ``accelerate launch`` —
and waits for it. The worker runs :func:`core.train.trainer.train` exactly as ``%%sft_train`` does in the
kernel (one code path), so it writes the same ``metrics.jsonl`` / ``status.json`` / checkpoints;
under a launcher only rank 0 writes. If the worker dies without a final status (an exception
before training, a signal, the out-of-memory killer), the supervisor records ``failed`` with the
cause and the tail of ``worker.log``. Dashboards follow a run by tailing ``metrics.jsonl``.

Stopping: ``%sft_stop`` creates ``STOP`` in the run folder; the worker's stop flag sees it at the
next step, saves a checkpoint and ends as ``stopped``. SIGTERM does the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import one_line
from ..events import FINAL_STATES
from ..files import read_events, write_json
from ..processes import secrets_environment, secrets_from_environment, start_detached
from ..run.folder import (
    EVENTS_FILE,
    INTERRUPT_FILE,
    SPEC_FILE,
    STOP_FILE,
    SUPERVISOR_FILE,
    RunFolder,
    pid_alive,
)
from ..run.lookup import run_record
from ..run.status import read_status
from .follow import follow, request_stop, wait_for  # noqa: F401 - also reached as worker's

LOG_FILE = "worker.log"
LAUNCHERS = ("none", "torchrun", "accelerate")
IN_SLURM_JOB = "SFT_MAGICS_SLURM_JOB"  # set by a run's job (core/train/slurm.py) for its workers: SIGTERM is SLURM's


# -- the spec on disk -------------------------------------------------------------------------------


def save_spec(spec, launch: dict) -> dict[str, str]:
    """Write spec.json without secret keys; returns the environment that carries them to the worker."""
    from ..secrets import split_secrets

    data = {**asdict(spec), "launch": launch}
    data["lora"] = spec.lora if isinstance(spec.lora, bool) else dict(spec.lora)
    data["sft"] = dict(spec.sft)
    clean, secrets = split_secrets(data)
    write_json(spec.run_dir / SPEC_FILE, clean)
    return secrets_environment(secrets)


def load_spec(run_dir: Path):
    from ..secrets import merge_secrets
    from .config import TrainSpec

    data = json.loads((Path(run_dir) / SPEC_FILE).read_text())
    data = merge_secrets(data, secrets_from_environment())
    data.pop("launch", None)
    return TrainSpec(**data)


def materialize_data(spec, namespace: Mapping | None):
    """A worker cannot see the notebook: data given as a notebook variable, an object or a mapping
    (your columns, a conversion function, a mixture) is loaded here, as the kernel would, and
    written into the run folder as JSONL; file paths become absolute; a chat template held in a
    notebook variable travels as its text."""
    import dataclasses

    from ..data.spec import load_dataset_spec
    from ..template.chat_templates import resolve_template

    def resolve(source: Any, label: str):
        if source is None:
            return None
        if isinstance(source, str):
            path = Path(source).expanduser()
            if path.exists() or any(ch in source for ch in "*?["):
                return str(path.resolve()) if path.exists() else os.path.abspath(source)
            if not (namespace and source in namespace):
                return source  # a Hub dataset name: the worker loads it itself
        data = load_dataset_spec(source, namespace=namespace)
        out = spec.run_dir / "data" / f"{label}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            for row in data.dataset:
                f.write(json.dumps(row, default=str) + "\n")
        return str(out.resolve())

    template = spec.chat_template
    if template is not None and resolve_template(template, namespace)[0] == "jinja":
        template = resolve_template(template, namespace)[1]
    return dataclasses.replace(
        spec,
        dataset=resolve(spec.dataset, "train"),
        eval_dataset=resolve(spec.eval_dataset, "eval"),
        output_dir=str(Path(spec.output_dir).resolve()),
        chat_template=template,
    )


# -- starting a run ---------------------------------------------------------------------------------


def worker_command(
    run_dir: Path,
    *,
    launcher: str = "none",
    nproc: int = 1,
    accelerate_config: str | None = None,
    resume: bool = False,
    nodes: Mapping[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command the supervisor runs (on each node, for a SLURM job): the existing launchers, never
    a home-made one. ``nodes``: several machines, as ``torchrun``'s c10d rendezvous (``nnodes``,
    ``endpoint``, ``rdzv_id``) or accelerate's (``nnodes``, ``head``, ``port``, ``node_rank``)."""
    worker = ["-m", "sft_magics", "worker", str(run_dir)] + (["--resume"] if resume else []) + list(extra)
    if launcher == "none":
        return [sys.executable, *worker]
    if launcher == "torchrun":
        if not nodes:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
                *worker,
            ]
        rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint={nodes['endpoint']}", f"--rdzv_id={nodes['rdzv_id']}"]
        return [
            *[
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={nodes['nnodes']}",
                f"--nproc_per_node={nproc}",
            ],
            *rendezvous,
            *worker,
        ]
    if launcher == "accelerate":
        config = ["--config_file", str(accelerate_config)] if accelerate_config else []
        if nodes:
            total = f"$(( {nodes['nnodes']} * {nproc} ))"
            config += [f"--num_machines={nodes['nnodes']}", f"--machine_rank={nodes['node_rank']}"]
            config += [f"--main_process_ip={nodes['head']}", f"--main_process_port={nodes['port']}"]
            return [sys.executable, "-m", "accelerate.commands.launch", *config, f"--num_processes={total}", *worker]
        return [sys.executable, "-m", "accelerate.commands.launch", *config, "--num_processes", str(nproc), *worker]
    raise ValueError(f"unknown launcher '{launcher}' (expected one of {', '.join(LAUNCHERS)})")


@dataclass
class BackgroundRun:
    """A handle on a run in another process, or in a SLURM job (what ``%%sft_train --background -o NAME`` binds)."""

    name: str
    path: Path
    pid: int  # the supervisor's pid (0 for a SLURM job: its processes are on the cluster)
    job_id: str | None = None  # the SLURM job, for --launcher slurm

    def record(self) -> dict:
        return run_record(self.path)

    @property
    def status(self) -> str:
        return self.record()["status"]

    def alive(self) -> bool:
        if self.job_id:
            return self.status not in FINAL_STATES + ("stale",)
        return pid_alive(self.pid) and read_status(self.path)[0].get("state") not in FINAL_STATES

    def stop(self) -> None:
        request_stop(self.path)

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict:
        return wait_for(self.path, timeout=timeout, poll=poll)

    def __repr__(self) -> str:
        where = f"SLURM job {self.job_id}" if self.job_id else f"supervisor pid {self.pid}"
        return f"<BackgroundRun {self.name}: {self.status}, {where}, {self.path}>"


def check_metrics_reach_the_worker(p) -> None:
    from ..errors import ConfigError
    from ..evaluate.metrics import BUILTIN_METRICS

    custom = [m.name for m in (p.answers.metrics if p.answers else []) if m.name not in BUILTIN_METRICS]
    if custom:
        raise ConfigError(
            f"key 'eval_metrics': {', '.join(custom)} is defined in this notebook (a function or register_metric), "
            "which a background run cannot see: train in the foreground, or use the built-in metrics"
        )


def prepare_run(
    spec,
    *,
    namespace: Mapping | None,
    world: int,
    launch: dict,
    resume: bool,
    overwrite: bool,
    resume_anyway: bool,
    files: Mapping[str, str] | None,
) -> tuple[RunFolder, dict[str, str]]:
    """Everything a run outside the kernel needs before it starts, checked and written here, in the
    notebook: the plan (a bad key or row fails before any folder exists), the folder claimed (or, to
    resume, locked and its resume point checked), the data and spec on disk, the status ``starting``.
    Returns the folder, still locked by this process, and the environment that carries the secrets."""
    from ..secrets import scrub_text
    from .plan import plan
    from .trainer import _resume_point

    p = plan(spec, namespace=namespace, world=world)
    check_metrics_reach_the_worker(p)
    if resume:
        folder = RunFolder.existing(spec.output_dir, spec.name)
        folder.refuse_live_job()
        folder.lock.acquire()
        try:
            _resume_point(p, folder, resume_anyway)  # refused here, in the notebook, not in a worker
        except BaseException:
            folder.lock.release()
            raise
    else:
        folder = RunFolder.create(spec.output_dir, spec.name, overwrite=overwrite)
    try:
        spec = materialize_data(spec, namespace)
        env = save_spec(spec, launch)
        for name, text in (files or {}).items():
            folder.write_text(name, scrub_text(text))
        for leftover in (STOP_FILE, INTERRUPT_FILE):  # a request to an earlier start is not one to this one
            (folder.path / leftover).unlink(missing_ok=True)
        folder.update_status(state="starting", started=round(time.time(), 3), **({} if resume else {"step": 0}))
    except BaseException:
        if resume:
            folder.lock.release()
        else:
            folder.remove()
        raise
    return folder, env


def launch(
    spec,
    *,
    namespace: Mapping | None = None,
    launcher: str = "none",
    nproc: int = 1,
    accelerate_config: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_anyway: bool = False,
    files: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> BackgroundRun:
    """Start a run in a detached supervisor process and return at once. The data and config are
    checked here first, and the folder is claimed (or, to resume, locked) by this process and
    handed to the worker: a second start under the same name is refused at once. ``env``: more
    environment for the run's processes (a sweep's tracker settings, a GPU)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher '{launcher}' (expected one of {', '.join(LAUNCHERS)})")
    world = nproc if launcher != "none" else 1  # steps depend on it: the resume checks must agree with the worker's
    launch_info = {"launcher": launcher, "nproc": nproc, "accelerate_config": accelerate_config}
    folder, secrets_env = prepare_run(
        spec,
        namespace=namespace,
        world=world,
        launch=launch_info,
        resume=resume,
        overwrite=overwrite,
        resume_anyway=resume_anyway,
        files=files,
    )
    run_dir = folder.path
    cmd = [
        sys.executable,
        "-m",
        "sft_magics",
        "supervise",
        str(run_dir.resolve()),
        "--launcher",
        launcher,
        "--nproc",
        str(nproc),
    ]
    if accelerate_config:
        cmd += ["--accelerate-config", str(accelerate_config)]
    if resume:
        cmd.append("--resume")
    if resume_anyway:
        cmd.append("--resume-anyway")
    proc = start_detached(cmd, env={**(env or {}), **secrets_env})
    write_json(run_dir / SUPERVISOR_FILE, {"pid": proc.pid, "command": cmd})
    folder.lock.release()  # handed over: the worker takes the lock (it waits for this)
    return BackgroundRun(spec.name, run_dir, proc.pid)


# -- a finished run, loaded back --------------------------------------------------------------


def result_from_disk(run_dir: Path):
    """A TrainResult for a run trained in another process: history from its events, the trained
    model loaded from ``final/``."""
    from ..models import load_model
    from .trainer import TrainResult

    run_dir = Path(run_dir)
    status = read_status(run_dir)[0]
    history = [
        {k: v for k, v in e.items() if k not in ("kind", "time")}
        for e in read_events(run_dir / EVENTS_FILE)
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


# -- the processes ---------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def supervise(
    run_dir: Path,
    *,
    launcher: str = "none",
    nproc: int = 1,
    accelerate_config: str | None = None,
    resume: bool = False,
    resume_anyway: bool = False,
) -> int:
    """Run the worker command, and make sure the run ends with a final status whatever happens."""
    run_dir = Path(run_dir)
    folder = RunFolder.existing(run_dir.parent, run_dir.name)
    cmd = worker_command(run_dir, launcher=launcher, nproc=nproc, accelerate_config=accelerate_config, resume=resume)
    if resume_anyway:
        cmd.append("--resume-anyway")
    with (run_dir / LOG_FILE).open("ab") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        write_json(run_dir / SUPERVISOR_FILE, {"pid": os.getpid(), "worker_pid": child.pid, "command": cmd})
        # A polite stop for the supervisor is a polite stop for the run.
        signal.signal(signal.SIGTERM, lambda *_: request_stop(run_dir))
        code = child.wait()
    record_exit(folder, code, run_dir / LOG_FILE)
    return code


def record_exit(folder: RunFolder, code: int, log: Path, cause: str | None = None) -> None:
    """After the worker command ended: a run without a final status is recorded ``failed``, with the
    cause (how the worker ended, unless ``cause`` says better) and the tail of its log."""
    if folder.status().get("state") in FINAL_STATES:
        return
    if cause is None and code < 0:
        name = signal.Signals(-code).name
        cause = f"the worker was killed by {name}" + (
            " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        )
    cause = cause or f"the worker exited with code {code} before the run ended"
    hint = f"see {log.name} in the run folder; resume from the last whole checkpoint"
    folder.record_failure(cause, hint, log_tail=_tail(log), exit_code=code)


def worker_main(
    run_dir: Path, *, resume: bool = False, resume_anyway: bool = False, resume_if_any: bool = False
) -> int:
    """One process of a run: the same train() as the kernel uses. ``resume_if_any``: resume when the
    run has a whole checkpoint (a SLURM job started again after a requeue), else start fresh."""
    from ..errors import SftError
    from .callbacks import StopFlag
    from .trainer import rank, train

    run_dir = Path(run_dir)
    spec = load_spec(run_dir)
    if resume_if_any and not resume:
        resume = RunFolder.existing(run_dir.parent, run_dir.name).resumable_checkpoint()[0] is not None
    stop = StopFlag(stop_file=run_dir / STOP_FILE, interrupt_file=run_dir / INTERRUPT_FILE)
    # SIGTERM: a polite stop; in a SLURM job it is SLURM ending the job (a time limit, a cancel): an
    # interrupt, so the job's supervisor records SLURM's reason rather than "stopped".
    signal.signal(signal.SIGTERM, lambda *_: stop.interrupt() if os.environ.get(IN_SLURM_JOB) else stop.set())
    try:
        result = train(spec, stop=stop, resume=resume, resume_anyway=resume_anyway, claimed=True)
    except BaseException as err:
        import traceback

        from ..secrets import scrub_text

        if not isinstance(err, SftError):
            print(scrub_text(traceback.format_exc()), file=sys.stderr)  # worker.log: no credentials either
        cause = scrub_text(f"{one_line(err, 240, named=True)}")
        print(cause, file=sys.stderr)
        if rank() == 0 and RunFolder.existing(run_dir.parent, run_dir.name).status().get("state") not in FINAL_STATES:
            RunFolder.existing(run_dir.parent, run_dir.name).record_failure(cause, "see worker.log in the run folder")
        return 1
    print(f"run {spec.name}: {result.status} at step {result.global_step}", flush=True)
    return 0
