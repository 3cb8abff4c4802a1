"""``%%sft_train`` and the runs: ``%sft_runs``, ``%sft_attach``, ``%sft_wait``, ``%sft_stop``."""

from __future__ import annotations

from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import line_cell_magic, line_magic
from IPython.core.magic_arguments import argument, magic_arguments

from ..core.run.folder import CELL_FILE, CONFIG_FILE, STATUS_FILE
from ..display import show
from ._common import (
    MagicsBase,
    _failure_line,
    _parse,
    _usage_error,
    _user_errors,
    _yaml_body,
    attach_dashboard,
    expand_variables,
)


class TrainMagics(MagicsBase):
    """Training from a YAML cell, and the runs it leaves on disk."""

    # -- %%sft_train -------------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", default=None, help="Run name: the run is saved in <output_dir>/<name>.")
    @argument(
        "--resume",
        metavar="NAME",
        default=None,
        help="Continue run NAME from its last checkpoint (the cell may be empty: its saved config is used).",
    )
    @argument(
        "--overwrite",
        action="store_true",
        help="Remove an existing (not running) run of the same --name first, and say so.",
    )
    @argument(
        "--resume-anyway",
        action="store_true",
        help="With --resume: continue even without optimizer/scheduler state or with changed data (recorded in the run).",
    )
    @argument(
        "--dry-run",
        action="store_true",
        help="Show the resolved config, data summary, device, trainable parameters and planned steps; train nothing.",
    )
    @argument(
        "--background",
        action="store_true",
        help="Train in a detached worker process and return at once (see %%sft_attach, %%sft_wait, %%sft_stop).",
    )
    @argument(
        "--launcher",
        choices=["none", "torchrun", "accelerate", "slurm"],
        default="none",
        help="Train in N processes through torchrun or accelerate launch (data parallel), or as a SLURM "
        "job (the cell's slurm: key; --background implied).",
    )
    @argument(
        "--nproc", type=int, default=1, help="Number of processes for --launcher (per node under slurm; one per GPU)."
    )
    @argument(
        "--accelerate-config",
        metavar="FILE",
        default=None,
        help="An accelerate config file (FSDP, DeepSpeed) for --launcher accelerate.",
    )
    @argument(
        "-o", "--output", metavar="NAME", help="Bind the run result (path, status, history, model, tokenizer) to NAME."
    )
    @line_cell_magic
    @_user_errors
    def sft_train(self, line, cell=None):
        """Fine-tune from a YAML cell with a live dashboard: ``model``, ``dataset``,
        ``eval_dataset``/``eval_split``, ``lora`` (LoraConfig fields, or false for a full fine-tune),
        ``load_in_4bit`` (QLoRA, CUDA) and any TRL ``SFTConfig`` field by its TRL name.
        The cell blocks until the run ends; Stop (or the kernel's interrupt) ends it gracefully
        with a checkpoint. The line form ``%sft_train --resume NAME`` continues a run with its
        saved config.

        Example::

            %%sft_train --name json-lora -o run
            model: smollm2-135m
            dataset: examples/data/train.jsonl
            eval_dataset: examples/data/val.jsonl
            max_steps: 20
            learning_rate: 1.0e-3
        """
        started = self._start_training(line, cell)
        if not isinstance(started, tuple):
            return started  # --dry-run
        worker, finish = started
        return finish(worker.wait)

    async def sft_train_async(self, line, cell=None):
        """``%%sft_train`` for an async cell in ipykernel >= 7: the same run, but the wait awaits,
        so the kernel keeps handling the Stop button while training (see magics/_runner.py)."""
        from ..core.errors import SftError

        try:
            started = self._start_training(line, cell)
        except (UsageError, SftError) as err:
            raise _usage_error(err) from None
        if not isinstance(started, tuple):
            return started
        worker, finish = started
        result_box = {}

        async def wait():
            result_box["value"] = await worker.wait_async()

        await wait()
        return finish(lambda: result_box["value"])

    def _start_training(self, line, cell):
        """Parse, validate, start the training thread; returns (thread, finish) or a dry-run summary."""
        from ..core.train.config import TrainSpec

        args = _parse(self.sft_train, line)
        cell = cell or ""
        from . import sweep

        config = self._cell_config(_run_name(args, cell), cell, resume=bool(args.resume))
        if args.overwrite and sweep.is_sweep(self, args.name):
            raise UsageError(
                f"'{args.name}' is a sweep: --overwrite removes one run, never a sweep (choose another --name)"
            )
        if "sweep" in config:  # many runs: magics/sweep.py
            return sweep.start_from_cell(self, args, config, f"%%sft_train {line}\n{cell}")
        spec = TrainSpec.from_mapping(_run_name(args, cell), config, output_dir=self.output_dir)
        name = spec.name
        if spec.slurm and args.launcher != "slurm":
            raise UsageError("key 'slurm' holds SLURM options: add --launcher slurm to the line to submit the run")
        if args.nproc < 1:
            raise UsageError(f"--nproc must be at least 1, not {args.nproc}")
        if args.dry_run:
            from ._dry_run import dry_run

            return dry_run(self, spec, args.output, args)
        files = {CELL_FILE: f"%%sft_train {line}\n{cell}"} if cell.strip() else {}
        if args.overwrite and spec.run_dir.exists():
            print(f"--overwrite: the existing run '{name}' in {self.output_dir} is removed first")
        if args.launcher == "slurm":
            return self._submit_to_slurm(spec, args, files)
        if args.background or args.launcher != "none":
            return self._start_outside(spec, args, files)
        return self._start_in_kernel(spec, args, files)

    def _start_in_kernel(self, spec, args, files):
        """Train on a thread of this kernel, the dashboard fed directly; (thread, finish)."""
        from ..core.errors import SftError
        from ..core.events import Event
        from ..core.train.callbacks import StopFlag
        from ..core.train.trainer import TrainingFailed, train
        from ..display import make_reporter
        from ._runner import TrainingThread

        stop = StopFlag()
        reporter = make_reporter(self.mode, title=spec.name, on_stop=stop.set)
        options = _run_options(args)
        thread = TrainingThread(
            lambda: train(spec, sink=reporter, stop=stop, namespace=self.shell.user_ns, files=files, **options),
            stop.set,
        )

        def finish(wait):
            try:
                result = wait()
            except SftError as err:
                if not isinstance(err, TrainingFailed):  # refused before training: the dashboard says why too
                    reporter(Event("failed", {"error": str(err)}))
                raise _usage_error(err) from None
            finally:
                reporter.close()
            return self._bind(args.output, result) if args.output else None

        return thread, finish

    def _start_outside(self, spec, args, files):
        """Background and multi-process runs: a detached supervisor runs the worker (see core/train/worker.py)."""
        import sys

        from ..core.train import worker as w

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            print(
                "CUDA is already initialised in this kernel, and a CUDA context cannot be forked: "
                "the run starts in fresh processes."
            )
        launch = {"launcher": args.launcher, "nproc": args.nproc, "accelerate_config": args.accelerate_config}
        options = _run_options(args)
        run = w.launch(spec, namespace=self.shell.user_ns, files=files, **launch, **options)
        if args.background:
            print(
                f"run '{run.name}' started in the background (supervisor pid {run.pid}): "
                f"%sft_attach {run.name} to watch, %sft_wait {run.name} to block, %sft_stop {run.name} to stop"
            )
            if self.mode == "widget":
                attach_dashboard(run.path, self.mode, follow_live=True)
            return self._bind(args.output, run) if args.output else None
        return self._follow_until_done(run, args)

    def _submit_to_slurm(self, spec, args, files):
        """``--launcher slurm``: the run is a SLURM job (core/train/slurm.py); followed as a background run."""
        from ..core.run.folder import JOB_SCRIPT_FILE, RunFolder
        from ..core.train.slurm import job_state_text, submit_run

        options = _run_options(args)
        launch = {"nproc": args.nproc, "accelerate_config": args.accelerate_config}
        run = submit_run(spec, namespace=self.shell.user_ns, files=files, **launch, **options)
        state = job_state_text(RunFolder(run.path.parent, run.name))
        print(
            f"run '{run.name}' submitted to SLURM as job {run.job_id} ({state}); its script is {run.path / JOB_SCRIPT_FILE}: "
            f"%sft_attach {run.name} to watch, %sft_wait {run.name} to block, %sft_stop {run.name} to stop"
        )
        if self.mode == "widget":
            attach_dashboard(run.path, self.mode, follow_live=True)
        return self._bind(args.output, run) if args.output else None

    def _follow_until_done(self, run, args):
        """A launcher run that blocks the cell: the dashboard follows its event stream; (thread, finish)."""
        from ..core.train import worker as w
        from ..display import make_reporter
        from ._runner import TrainingThread

        reporter = make_reporter(self.mode, title=run.name, on_stop=run.stop)
        watcher = TrainingThread(lambda: (w.follow(run.path, reporter), w.wait_for(run.path))[1], run.stop)

        def finish(wait):
            try:
                record = wait()
            finally:
                reporter.close()
            if record["status"] in ("failed", "stale"):
                raise UsageError(_failure_line(record))
            result = w.result_from_disk(run.path)
            return self._bind(args.output, result) if args.output else None

        return watcher, finish

    def _cell_config(self, name: str, cell: str, *, resume: bool) -> dict:
        if not cell.strip() and resume:
            saved = Path(self.output_dir) / name / CONFIG_FILE  # name already validated: one folder
            if not saved.is_file():
                raise UsageError(f"--resume {name}: no run folder with a config.yaml at {saved.parent}")
            config = _yaml_body(saved.read_text(), f"{saved}")  # secret keys left out; every other key as trained
        else:
            config = _yaml_body(expand_variables(cell, self.shell.user_ns), "the %%sft_train cell")
        if not isinstance(config, dict):
            raise UsageError("the %%sft_train cell must be a YAML mapping of keys (model, dataset, ...)")
        if "model" not in config and "model_name_or_path" not in config:
            config["model"] = self.default_model
        if self.trust_remote_code:
            config.setdefault("trust_remote_code", True)
        return config

    # -- %sft_runs ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("sweep", nargs="?", default=None, help="A sweep's name: its trials only.")
    @argument(
        "-o",
        "--output",
        metavar="NAME",
        help="Bind the list of run records (for a sweep: its trials' DataFrame) to NAME.",
    )
    @line_magic
    @_user_errors
    def sft_runs(self, line):
        """List the runs in ``SftMagics.output_dir``: name, model, data, steps, status (a run whose
        process died without a final status shows as ``stale``), final losses, and their loss
        curves overlaid (notebook).

        Example::

            %sft_runs
        """
        from ..core.run.lookup import list_runs
        from . import sweep

        args = _parse(self.sft_runs, line)
        if args.sweep:
            if not sweep.is_sweep(self, args.sweep):
                raise UsageError(f"no sweep named '{args.sweep}' in {self.output_dir}")
            return sweep.show_one(self, args.sweep, args.output)
        records = sweep.show_runs(self, list_runs(self.output_dir))
        return self._bind(args.output, records) if args.output else None

    # -- runs in other processes: %sft_attach, %sft_wait, %sft_stop ------------------------------
    def _run_dir(self, name: str):
        from ..core.run.folder import validate_name
        from ..core.run.lookup import run_path

        value = self.shell.user_ns.get(name)
        run_dir = (
            run_path(name, value, self.output_dir) if value is not None else Path(self.output_dir) / validate_name(name)
        )
        if run_dir is None or not (run_dir / STATUS_FILE).is_file():
            raise UsageError(f"no run named '{name}' in {self.output_dir}")
        return run_dir

    @magic_arguments()
    @argument("name", help="The run's name (or a variable bound by --background -o).")
    @line_magic
    @_user_errors
    def sft_attach(self, line):
        """Show the full dashboard of a running or finished run — its whole history, then live
        updates while it trains (in a notebook). Works after a kernel restart.

        Example::

            %sft_attach json-lora
        """
        from . import sweep

        args = _parse(self.sft_attach, line)
        if sweep.is_sweep(self, args.name):
            return sweep.attach(self, args.name)
        attach_dashboard(self._run_dir(args.name), self.mode, follow_live=True)

    @magic_arguments()
    @argument("name", help="The run's name (or a variable bound by --background -o).")
    @argument("--timeout", type=float, default=None, help="Give up waiting after this many seconds.")
    @argument("-o", "--output", metavar="NAME", help="Bind the finished run's result (model, history) to NAME.")
    @line_magic
    @_user_errors
    def sft_wait(self, line):
        """Block until a background run ends (so "Run All" works), then show its final state.

        Example::

            %sft_wait json-lora -o run
        """
        from ..core.train.worker import result_from_disk, wait_for
        from ..display._runs_view import RunsView
        from . import sweep

        args = _parse(self.sft_wait, line)
        if sweep.is_sweep(self, args.name):
            return sweep.wait(self, args.name, args.timeout, args.output)
        run_dir = self._run_dir(args.name)
        try:
            record = wait_for(run_dir, timeout=args.timeout)
        except TimeoutError as err:
            raise UsageError(str(err)) from None
        show(RunsView([record]), self.mode)
        if record["status"] in ("failed", "stale"):
            raise UsageError(_failure_line(record))  # "Run All" stops here, with the cause
        return self._bind(args.output, result_from_disk(run_dir)) if args.output else None

    @magic_arguments()
    @argument("name", help="The run's name (or a variable bound by --background -o).")
    @argument("--no-wait", action="store_true", help="Ask the run to stop and return at once.")
    @line_magic
    @_user_errors
    def sft_stop(self, line):
        """Stop a background run gracefully: it saves a checkpoint and ends as ``stopped``.

        Example::

            %sft_stop json-lora
        """
        from ..core.train.worker import request_stop, wait_for
        from . import sweep

        args = _parse(self.sft_stop, line)
        if sweep.is_sweep(self, args.name):
            return sweep.stop(self, args.name, args.no_wait)
        run_dir = self._run_dir(args.name)
        request_stop(run_dir)
        if not args.no_wait:
            record = wait_for(run_dir)
            print(f"run '{args.name}': {record['status']} at step {record['steps']}")


def _run_options(args) -> dict:
    """How the line asks a run to start: fresh, resumed (anyway), or over an old one."""
    return {"resume": bool(args.resume), "overwrite": args.overwrite, "resume_anyway": args.resume_anyway}


def _run_name(args, cell: str) -> str | None:
    """The run's name from the line's flags (None: not given; the cell's output_dir or the time
    names it), after the checks that need no model or data."""
    from ..core.run.folder import validate_name

    if not cell.strip() and args.resume is None:
        raise UsageError("%%sft_train needs its config in the cell body (or use %sft_train --resume NAME)")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite removes it: choose one")
    if args.resume_anyway and not args.resume:
        raise UsageError("--resume-anyway goes with --resume NAME")
    given = args.resume if args.resume is not None else args.name  # an explicit "" is a mistake, not "no name"
    return None if given is None else validate_name(given)
