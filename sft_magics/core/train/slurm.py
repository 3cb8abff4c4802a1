"""Runs as SLURM jobs: ``%%sft_train --launcher slurm``.

The notebook checks and writes everything first, as for a background run (:func:`worker.prepare_run`),
then writes ``job.sbatch`` into the run folder and submits it with ``sbatch``; the folder lives on the
filesystem the cluster shares with the notebook, and is the interface, as for every run outside the
kernel. The script is SLURM's and PyTorch's, nothing of our own: ``srun`` starts one task per node,
and that task is the worker itself, or ``torchrun`` with c10d rendezvous on the first node (several
processes per node, several nodes), or ``accelerate launch`` when an accelerate config is given.

Inside the job, ``python -m sft_magics slurm-job RUN_DIR -- COMMAND`` (:func:`job_main`) runs that
command and answers signals. USR2 is ``%sft_stop`` (it also writes ``STOP``, which every worker sees
at its next step). ``--signal=B:USR1@N`` (a time limit near, or a preemption)
asks the workers to checkpoint (``INTERRUPT``); the run is ``interrupted``, then ``requeued`` with
``scontrol requeue``; SLURM starts the same script again, and the worker resumes from the last whole
checkpoint by itself (``--resume-if-any``). SIGTERM (SLURM ending the job: a cancel, a time limit
without requeue) also checkpoints, and leaves the last word to SLURM: whoever reads the run next
(:meth:`RunFolder.settle_job`) records it ``failed`` with SLURM's state and reason.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ..cluster import SlurmError, SlurmOptions, batch_script, requeue, slurm_options, submission_environment, submit
from ..errors import ConfigError
from ..events import FINAL_STATES
from ..files import read_json, write_json
from ..run.folder import (
    INTERRUPT_FILE,
    JOB_FILE,
    JOB_LOG_PATTERN,
    JOB_SCRIPT_FILE,
    SPEC_FILE,
    STOP_FILE,
    RunFolder,
    now,
)
from .worker import IN_SLURM_JOB, BackgroundRun, prepare_run, record_exit, worker_command


def node_command(
    run_dir: Path, options: SlurmOptions, *, nproc: int = 1, accelerate_config: str | None = None, resume_anyway=False
) -> list[str]:
    """What ``srun`` starts once on each node: the worker, or the launcher that starts ``nproc`` of
    them. One node: torchrun ``--standalone``. Several: c10d rendezvous on ``$HEAD`` (the first node)
    at ``$SFT_RDZV_PORT``; ``$HEAD``, ``$SFT_RDZV_PORT``, ``$SLURM_NNODES`` and ``$SLURM_JOB_ID`` are the
    same on every node, so the batch step expands them; accelerate's machine rank is the node's own, so
    that command is left for each node's shell (``bash -c '...'``)."""
    from ..cluster import shell_word

    extra = ("--resume-if-any",) + (("--resume-anyway",) if resume_anyway else ())
    launcher = "accelerate" if accelerate_config else "torchrun" if (nproc > 1 or options.nodes > 1) else "none"
    nodes = {
        "nnodes": "$SLURM_NNODES",
        "endpoint": "$HEAD:$SFT_RDZV_PORT",
        "rdzv_id": "$SLURM_JOB_ID",
        "head": "$HEAD",
        "port": "$SFT_RDZV_PORT",
        "node_rank": "$SLURM_NODEID",
    }
    cmd = worker_command(
        Path(run_dir).resolve(),
        launcher=launcher,
        nproc=nproc,
        accelerate_config=str(Path(accelerate_config).resolve()) if accelerate_config else None,
        nodes=nodes if options.nodes > 1 else None,
        extra=extra,
    )
    if launcher == "accelerate" and options.nodes > 1:  # inside: the node's own variables, expanded there
        node_word = lambda a: f'"{a}"' if "$SLURM_NODEID" in a or "$((" in a else shell_word(a)
        return ["bash", "-c", "exec " + " ".join(node_word(a) for a in cmd)]
    return cmd


def job_script(
    run_dir: Path, options: SlurmOptions, *, nproc: int = 1, accelerate_config: str | None = None, resume_anyway=False
) -> str:
    """The batch script of a run's job: what ``%%sft_train --launcher slurm`` writes to job.sbatch."""
    run_dir = Path(run_dir).resolve()
    for what, path in (("the run folder", run_dir), ("the working folder", Path.cwd())):
        if any(ch.isspace() or ch in "%\"'\\$`" for ch in str(path)):
            raise ConfigError(
                f"{what} {str(path)!r} has a space, quote, '%', '$' or '\\', which an #SBATCH line cannot hold: "
                "choose an output_dir (and a working folder) without them for --launcher slurm"
            )
    node = node_command(run_dir, options, nproc=nproc, accelerate_config=accelerate_config, resume_anyway=resume_anyway)
    command = [
        [sys.executable, "-m", "sft_magics", "slurm-job", str(run_dir), "--"],
        # srun does not take the job's --cpus-per-task by itself since SLURM 22.05: say it again.
        ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
        + ([f"--cpus-per-task={options.cpus_per_task}"] if options.cpus_per_task else []),
        node,
    ]
    return batch_script(
        options,
        job_name=f"sft-{run_dir.name}",
        output=run_dir / JOB_LOG_PATTERN,
        chdir=Path.cwd(),
        command=command,
        comment=[
            f"The SLURM job of sft_magics run '{run_dir.name}', written by %%sft_train --launcher slurm.",
            f"Submit it again by hand with: sbatch {run_dir / JOB_SCRIPT_FILE}",
            "(it resumes from the run's last whole checkpoint). sbatch's SBATCH_* variables override these lines.",
            "No token or other secret is written here: secret keys reach the job in its environment.",
        ],
        environment=["export PYTHONUNBUFFERED=1"],
    )


def submit_run(
    spec,
    *,
    namespace: Mapping | None = None,
    nproc: int = 1,
    accelerate_config: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_anyway: bool = False,
    files: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> BackgroundRun:
    """Check, write and submit a run as a SLURM job; return at once. A submission SLURM refuses
    (an unknown partition, too many GPUs) is one line, and leaves no new folder behind. ``env``: more
    environment for the job (a sweep's tracker settings)."""
    options = slurm_options(spec.slurm)
    before = RunFolder.existing(spec.output_dir, spec.name).status() if resume else {}
    launch = {"launcher": "slurm", "nproc": nproc, "accelerate_config": accelerate_config, "slurm": options.as_dict()}
    folder, secrets_env = prepare_run(
        spec,
        namespace=namespace,
        world=options.nodes * nproc,
        launch=launch,
        resume=resume,
        overwrite=overwrite,
        resume_anyway=resume_anyway,
        files=files,
    )
    try:
        script = job_script(
            folder.path, options, nproc=nproc, accelerate_config=accelerate_config, resume_anyway=resume_anyway
        )
        folder.write_text(JOB_SCRIPT_FILE, script)
        (folder.path / JOB_FILE).unlink(missing_ok=True)  # a resumed run's earlier job is not this one
        folder.lock.release()  # handed over before the job can start: its worker takes the lock
        job = submit(
            folder.path / JOB_SCRIPT_FILE,
            env=submission_environment(options, {**os.environ, **(env or {}), **secrets_env}),
        )
    except BaseException:
        if resume:
            folder.lock.release()
            folder.update_status(state=before.get("state", "stopped"), started=before.get("started"))
        else:
            folder.remove()
        raise
    write_json(folder.path / JOB_FILE, {"job_id": job, "submitted": now(), "options": options.as_dict()})
    folder.update_status(job_id=job)
    return BackgroundRun(spec.name, folder.path, 0, job_id=job)


# -- inside the job ------------------------------------------------------------------------------


def job_main(run_dir: Path, command: list[str]) -> int:
    """The batch step of a run's job: run ``command`` (``srun ...``), answer SLURM's signals, and
    leave the run's status true: requeued after a time-limit signal, or the worker's own end."""
    run_dir = Path(run_dir)
    folder = RunFolder.existing(run_dir.parent, run_dir.name)
    job = os.environ.get("SLURM_JOB_ID", "")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    options = slurm_options(read_json(run_dir / SPEC_FILE).get("launch", {}).get("slurm") or None)
    asked: dict[str, str] = {}

    def on_signal(signum, _frame):
        if signum == signal.SIGUSR2:  # %sft_stop: the user's stop, seen on this node at once
            (run_dir / STOP_FILE).write_text(str(now()))
            return
        asked.setdefault("signal", signal.Signals(signum).name)
        (run_dir / INTERRUPT_FILE).write_text(signal.Signals(signum).name)  # every worker checkpoints at its next step

    if restarts:  # this job's earlier start, which SLURM has ended, may have left its lock behind
        folder.lock.path.unlink(missing_ok=True)
    elif folder.job_id() not in (None, job):  # job.sbatch submitted again by hand: this job is the run's now
        if owner := folder.live_owner():
            print(f"[sft_magics] run {folder.name} is still in {owner}: job {job} ends", flush=True)
            return 1
        write_json(run_dir / JOB_FILE, {"job_id": job, "submitted": now(), "options": options.as_dict()})
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # the earlier job's stop, not this one's
        folder.update_status(state="starting", started=now())
    (run_dir / INTERRUPT_FILE).unlink(missing_ok=True)
    folder.update_status(job_id=job, nodes=os.environ.get("SLURM_JOB_NODELIST"), restarts=restarts)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"[sft_magics] job {job} (start {restarts + 1}) runs: {shlex.join(command)}", flush=True)
    env = {**os.environ, IN_SLURM_JOB: job}  # the workers' SIGTERM is SLURM ending the job, not a stop
    code = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env).wait()  # output: SLURM's log of this start
    if folder.job_id() not in (None, job):
        return code  # the run is another job's now (job.sbatch submitted again by hand): not ours to record
    (run_dir / INTERRUPT_FILE).unlink(missing_ok=True)
    state = folder.status().get("state")
    log = run_dir / JOB_LOG_PATTERN.replace("%j", job)
    if state in FINAL_STATES:
        return code
    if asked.get("signal") == "SIGUSR1":
        step = folder.status().get("step", 0)
        if not options.requeue:
            record_exit(
                folder, code, log, f"SLURM's time limit of job {job} came (USR1 ahead of it) and requeue is off"
            )
            return code
        folder.update_status(state="requeued")
        folder.append_event({"kind": "status", "time": now(), "state": "requeued", "step": step})
        try:
            requeue(job)
        except SlurmError as err:
            record_exit(folder, code, log, f"job {job} could not be requeued: {err}")
        return 0
    if asked.get("signal") == "SIGTERM" or (state == "interrupted" and not asked):
        # SLURM is ending the job (a node failure, a cancel): its state and reason are recorded once
        # SLURM has them. Its SIGTERM can reach the workers (interrupted) before this step sees it.
        return code
    record_exit(folder, code, log)
    return code


def job_state_text(folder: RunFolder) -> str:
    """``PENDING (Resources)``: a run's job as SLURM sees it now (or why that is not known)."""
    _, info, problem = folder.job()
    return info.describe() if info else problem or "no longer known to SLURM"
