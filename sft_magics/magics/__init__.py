"""The IPython magics: thin adapters from a line/cell to core, then to a display backend.

User mistakes (bad arguments, bad data, unknown model or key) become a one-line ``UsageError``
here, and only here. Heavy libraries are imported inside the magic bodies, never at import time.
"""

from __future__ import annotations

import functools
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Unicode

from ..display import MODES, detect_mode, show


def _user_errors(method):
    """Turn the core's user-facing errors (every ``SftError``) into a one-line UsageError: the one
    place where that conversion happens. Credentials in the message are scrubbed."""
    from ..core.errors import SftError

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SftError as err:
            raise _usage_error(err) from None

    return wrapper


def _usage_error(err: BaseException) -> UsageError:
    from ..core.secrets import scrub_text

    return UsageError(scrub_text(" ".join(str(err).split())))


def _parse(magic, line: str):
    """Parse a magic's line with shell quoting rules (``--message "two words"`` is one value,
    without its quotes; IPython's own parse_argstring keeps the quotes)."""
    try:
        argv = shlex.split(line)
    except ValueError as err:
        raise UsageError(f"bad arguments: {err} in {line!r}") from None
    try:
        return magic.parser.parse_args(argv)
    except UsageError:
        raise
    except SystemExit:  # argparse's --help or error exit
        raise UsageError(f"bad arguments: {line!r}") from None


@magics_class
class SftMagics(Magics):
    """Magics for supervised fine-tuning. Settings persist between cells, e.g.
    ``%config SftMagics.output_dir = "runs"``."""

    output_dir = Unicode("runs", help="Folder where training runs are saved.").tag(config=True)
    default_model = Unicode("smollm2-135m", help="Model used when a magic is given none.").tag(config=True)
    display = Enum(list(MODES), default_value="auto", help="Display backend: auto, widget, rich or plain.").tag(config=True)
    trust_remote_code = Bool(False, help="Allow model repositories to run their own Python code.").tag(config=True)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return detect_mode(self.display)

    def _bind(self, name: str | None, value):
        if name:
            self.shell.user_ns[name] = value
        return value

    def _data(self, source: str):
        from ..core.data import load_data

        return load_data(source, namespace=self.shell.user_ns)

    # -- %sft_template ---------------------------------------------------------------------
    @magic_arguments()
    @argument("model", nargs="?", default=None, help="Model whose tokenizer and template to use (default: SftMagics.default_model).")
    @argument("--messages", metavar="VAR", help="Notebook variable holding a list of message dicts.")
    @argument("--data", metavar="SOURCE", help="A dataset (file, folder, Hub name or variable).")
    @argument("--row", type=int, default=0, help="Row of --data to render (0-based).")
    @argument("--add-generation-prompt", action="store_true", help="Render the inference prompt (conversation + assistant header); nothing is trained.")
    @argument("--tools", metavar="VAR", help="Notebook variable holding tool (function) schemas for the template.")
    @argument("--chat-template", metavar="T", help="Render with another template: a variable holding a Jinja string, or a .jinja file.")
    @argument("-k", "--kwarg", action="append", default=[], metavar="KEY=VALUE", help="Extra chat-template argument (YAML value); repeatable.")
    @argument("--compare", metavar="OTHER", help="Render the same conversation with OTHER model's template, side by side.")
    @argument("--inference", action="store_true", help="Show the training rendering beside the inference prompt and mark where they differ.")
    @argument("--max-length", type=int, default=None, help="Show where truncation to this many tokens would cut.")
    @argument("-o", "--output", metavar="NAME", help="Bind the rendering (token ids, labels, checks) to NAME.")
    @line_cell_magic
    @_user_errors
    def sft_template(self, line, cell=None):
        """Render a conversation through a model's chat template: every token, the message it belongs
        to, special tokens, and the tokens the loss trains on (exactly as training computes them),
        with template checks underneath.

        Example::

            msgs = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
            %sft_template smollm2-135m --messages msgs --inference

            %sft_template --data examples/data/train.jsonl --row 3 --max-length 64

            %%sft_template smollm2-135m
            - {role: user, content: "What is 2+2?"}
            - {role: assistant, content: "4"}
        """
        from ..core.models import load_tokenizer
        from ..core.template import TemplateError, first_difference, inference_rendering, template_checks, tokenize_row
        from ..display._template_view import CompareView, InferenceView, RenderingView

        args = _parse(self.sft_template, line)
        row, fmt, label = self._template_row(args, cell)
        kwargs = self._template_kwargs(args)
        template = self._chat_template_arg(args.chat_template)
        model = args.model or self.default_model

        def rendering_for(name: str, chat_template):
            tokenizer = load_tokenizer(name, trust_remote_code=self.trust_remote_code)
            try:
                if args.add_generation_prompt:
                    return tokenizer, inference_rendering(tokenizer, row["messages"], chat_template=chat_template, template_kwargs=kwargs)
                r = tokenize_row(tokenizer, row, fmt, chat_template=chat_template, template_kwargs=kwargs)
                if fmt == "messages":
                    r.checks = template_checks(tokenizer, r, row["messages"], chat_template=chat_template, template_kwargs=kwargs)
            except TemplateError as err:
                raise UsageError(f"{label}: {err}") from None
            r.max_length = args.max_length
            return tokenizer, r

        tokenizer, rendering = rendering_for(model, template)
        if args.compare:
            _, other = rendering_for(args.compare, None)
            view = CompareView(rendering, other, model, args.compare)
        elif args.inference and fmt == "messages":
            inference = inference_rendering(tokenizer, row["messages"], chat_template=rendering.chat_template or template, template_kwargs=kwargs)
            view = InferenceView(rendering, inference, first_difference(rendering.input_ids, inference.input_ids))
        else:
            view = RenderingView(rendering, title=f"{model} · {label}")
        show(view, self.mode)
        return self._bind(args.output, rendering) if args.output else None

    def _template_row(self, args, cell) -> tuple[dict, str, str]:
        """The row to render, its format, and how to name it in messages ("row 3", "the cell")."""
        from ..core.data import load_data

        if cell is not None:
            return {"messages": _conversation(_yaml_body(cell, "the cell"), "the cell")}, "messages", "the cell"
        if args.messages:
            if args.messages not in self.shell.user_ns:
                raise UsageError(f"--messages: no notebook variable named '{args.messages}'")
            return {"messages": _conversation(self.shell.user_ns[args.messages], f"--messages {args.messages}")}, "messages", args.messages
        if not args.data:
            raise UsageError("give --messages VAR, --data SOURCE [--row N], or the conversation in the cell body")
        data = load_data(args.data, namespace=self.shell.user_ns)
        if not 0 <= args.row < len(data):
            raise UsageError(f"--row {args.row} is out of range: the data has {len(data)} rows")
        return dict(data.dataset[args.row]), data.format, f"row {args.row}"

    def _template_kwargs(self, args) -> dict:
        import yaml

        kwargs = {}
        for item in args.kwarg:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"-k {item!r}: expected KEY=VALUE")
            kwargs[key.strip()] = yaml.safe_load(value) if value else ""
        if args.tools:
            if args.tools not in self.shell.user_ns:
                raise UsageError(f"--tools: no notebook variable named '{args.tools}'")
            kwargs["tools"] = self.shell.user_ns[args.tools]
        return kwargs

    def _chat_template_arg(self, value: str | None) -> str | None:
        from pathlib import Path

        if value is None:
            return None
        held = self.shell.user_ns.get(value)
        if isinstance(held, str):
            return held
        path = Path(value).expanduser()
        if path.suffix == ".jinja":
            if not path.is_file():
                raise UsageError(f"--chat-template: file not found: {value}")
            return path.read_text()
        raise UsageError(f"--chat-template {value!r}: not a notebook variable holding a string, nor a .jinja file")

    # -- %sft_data ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("source", help="A .jsonl/.json/.csv/.parquet file or glob, a save_to_disk folder, a Hub name, or a variable.")
    @argument("--model", default=None, help="Tokenizer to count tokens with (default: SftMagics.default_model).")
    @argument("--max-length", type=int, default=None, help="Report what truncation to this many tokens would cut.")
    @argument("--batch-size", type=int, default=8, help="Batch size for the steps-per-epoch estimate.")
    @argument("--grad-accum", type=int, default=1, help="Gradient accumulation steps for the steps-per-epoch estimate.")
    @argument("-o", "--output", metavar="NAME", help="Bind the statistics object to NAME.")
    @line_magic
    @_user_errors
    def sft_data(self, line):
        """The data doctor: format, invalid rows (index, field, reason), tokens and trained tokens per
        example, what ``--max-length`` cuts (truncated rows, answers cut mid-way, rows TRL drops),
        duplicates, roles and turns, tokens and optimizer steps per epoch. Invalid rows are listed and
        left out, so the report covers the valid ones. In a notebook a row browser follows.

        Example::

            %sft_data examples/data/train.jsonl --max-length 128 --batch-size 8 --grad-accum 2 -o stats
        """
        from ..core.data import load_data
        from ..core.models import load_tokenizer
        from ..core.stats import data_stats

        args = _parse(self.sft_data, line)
        for flag, value in (("--max-length", args.max_length), ("--batch-size", args.batch_size), ("--grad-accum", args.grad_accum)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        data = load_data(args.source, namespace=self.shell.user_ns, strict=False)  # bad rows: listed, not fatal
        tokenizer = load_tokenizer(args.model or self.default_model, trust_remote_code=self.trust_remote_code)
        stats = data_stats(data, tokenizer, max_length=args.max_length, batch_size=args.batch_size, grad_accum=args.grad_accum)
        mode = self.mode
        show(_stats_view(data, stats, args.batch_size), mode)
        if mode == "widget":
            from IPython.display import display

            from ..display._data_view import RowBrowser

            display(RowBrowser(data, tokenizer, stats).widget)
        return self._bind(args.output, stats) if args.output else None

    # -- %%sft_train -------------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", default=None, help="Run name: the run is saved in <output_dir>/<name>.")
    @argument("--resume", metavar="NAME", default=None, help="Continue run NAME from its last checkpoint (the cell may be empty: its saved config is used).")
    @argument("--overwrite", action="store_true", help="Remove an existing (not running) run of the same --name first, and say so.")
    @argument("--resume-anyway", action="store_true", help="With --resume: continue even without optimizer/scheduler state or with changed data (recorded in the run).")
    @argument("--dry-run", action="store_true", help="Show the resolved config, data summary, device, trainable parameters and planned steps; train nothing.")
    @argument("--background", action="store_true", help="Train in a detached worker process and return at once (see %%sft_attach, %%sft_wait, %%sft_stop).")
    @argument("--launcher", choices=["none", "torchrun", "accelerate"], default="none", help="Train in N processes through torchrun or accelerate launch (data parallel).")
    @argument("--nproc", type=int, default=1, help="Number of processes for --launcher (e.g. one per GPU).")
    @argument("--accelerate-config", metavar="FILE", default=None, help="An accelerate config file (FSDP, DeepSpeed) for --launcher accelerate.")
    @argument("-o", "--output", metavar="NAME", help="Bind the run result (path, status, history, model, tokenizer) to NAME.")
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
        """Parse, validate, start the worker thread; returns (worker, finish) or a dry-run summary."""
        import time

        from ..core.errors import SftError
        from ..core.runs import validate_name
        from ..core.train import StopFlag, train
        from ..display import make_reporter
        from ._runner import Worker

        args = _parse(self.sft_train, line)
        cell = cell or ""
        if not cell.strip() and args.resume is None:
            raise UsageError("%%sft_train needs its config in the cell body (or use %sft_train --resume NAME)")
        if args.resume and args.overwrite:
            raise UsageError("--resume continues a run and --overwrite removes it: choose one")
        if args.resume_anyway and not args.resume:
            raise UsageError("--resume-anyway goes with --resume NAME")
        given = args.resume if args.resume is not None else args.name  # an explicit "" is a mistake, not "no name"
        name = validate_name(time.strftime("run-%Y%m%d-%H%M%S") if given is None else given)
        spec = self._train_spec(name, cell, resume=bool(args.resume))
        if args.dry_run:
            return self._dry_run(spec, args.output)
        files = {"cell.txt": f"%%sft_train {line}\n{cell}"} if cell.strip() else {}
        if args.background or args.launcher != "none":
            return self._start_outside(spec, args, files)
        if args.overwrite and (spec.run_dir).exists():
            print(f"--overwrite: the existing run '{name}' in {self.output_dir} is removed first")
        stop = StopFlag()
        reporter = make_reporter(self.mode, title=name, on_stop=stop.set)
        worker = Worker(lambda: train(spec, sink=reporter, stop=stop, namespace=self.shell.user_ns, resume=bool(args.resume),
                                      overwrite=args.overwrite, resume_anyway=args.resume_anyway, files=files), stop.set)

        def finish(wait):
            try:
                result = wait()
            except SftError as err:
                raise _usage_error(err) from None
            finally:
                reporter.close()
            return self._bind(args.output, result) if args.output else None

        return worker, finish

    def _start_outside(self, spec, args, files):
        """Background and multi-process runs: a detached supervisor runs the worker (see core/worker.py)."""
        import sys

        from ..core import worker as w
        from ._background import attach_dashboard, run_from_disk

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            print("CUDA is already initialised in this kernel, and a CUDA context cannot be forked: "
                  "the run starts in fresh processes.")
        if args.overwrite and spec.run_dir.exists():
            print(f"--overwrite: the existing run '{spec.name}' in {self.output_dir} is removed first")
        run = w.launch(spec, namespace=self.shell.user_ns, launcher=args.launcher, nproc=args.nproc,
                       accelerate_config=args.accelerate_config, resume=bool(args.resume), overwrite=args.overwrite,
                       resume_anyway=args.resume_anyway, files=files)
        if args.background:
            print(f"run '{run.name}' started in the background (supervisor pid {run.pid}): "
                  f"%sft_attach {run.name} to watch, %sft_wait {run.name} to block, %sft_stop {run.name} to stop")
            if self.mode == "widget":
                attach_dashboard(run.path, self.mode, follow_live=True)
            return self._bind(args.output, run) if args.output else None
        # A launcher run that blocks: the dashboard follows the event stream until the run ends.
        from ..display import make_reporter
        from ._runner import Worker

        reporter = make_reporter(self.mode, title=spec.name, on_stop=run.stop)
        watcher = Worker(lambda: (w.follow(run.path, reporter), w.wait_for(run.path))[1], run.stop)

        def finish(wait):
            try:
                record = wait()
            finally:
                reporter.close()
            if record["status"] in ("failed", "stale"):
                raise UsageError(_failure_line(record))
            result = run_from_disk(run.path)
            return self._bind(args.output, result) if args.output else None

        return watcher, finish

    def _train_spec(self, name: str, cell: str, *, resume: bool):
        from pathlib import Path

        from ..core.train import TrainSpec

        if not cell.strip() and resume:
            saved = Path(self.output_dir) / name / "config.yaml"  # name already validated: one folder
            if not saved.is_file():
                raise UsageError(f"--resume {name}: no run folder with a config.yaml at {saved.parent}")
            cell = saved.read_text()  # secret keys were left out of it; every other key is as trained
        config = _yaml_body(cell, "the %%sft_train cell")
        if not isinstance(config, dict):
            raise UsageError("the %%sft_train cell must be a YAML mapping of keys (model, dataset, ...)")
        config.setdefault("model", self.default_model)
        return TrainSpec.from_mapping(name, config, output_dir=self.output_dir)

    def _dry_run(self, spec, output):
        from ..core.train import count_parameters, plan
        from ..display._views import TableView

        from ..core.secrets import redact

        p = plan(spec, namespace=self.shell.user_ns)
        trainable, total = count_parameters(p)
        shown = redact(p.config())  # secrets: the key is shown as read, its value never
        rows = [[k, v] for k, v in shown.items()]
        notes = [
            f"data: {p.train_data.source} · {len(p.train_data)} rows ({p.train_data.source_format} → {p.train_data.format})"
            + (f" · eval {len(p.eval_data)} rows" if p.eval_data is not None else ""),
            f"device {p.device} · dtype {str(p.dtype).replace('torch.', '')}",
            f"trainable parameters {trainable:,} of {total:,} ({trainable / total:.2%})",
            f"planned optimizer steps: {p.steps}",
            "dry run: nothing was trained",
        ]
        show(TableView(f"%%sft_train --dry-run · {spec.name}", ["key", "value"], rows, notes), self.mode)
        summary = {"config": shown, "device": p.device, "dtype": str(p.dtype), "trainable_params": trainable,
                   "total_params": total, "steps": p.steps, "train_rows": len(p.train_data)}
        return self._bind(output, summary) if output else None

    # -- %sft_runs ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("-o", "--output", metavar="NAME", help="Bind the list of run records to NAME.")
    @line_magic
    @_user_errors
    def sft_runs(self, line):
        """List the runs in ``SftMagics.output_dir``: name, model, data, steps, status (a run whose
        process died without a final status shows as ``stale``), final losses, and their loss
        curves overlaid (notebook).

        Example::

            %sft_runs
        """
        from ..core.runs import list_runs
        from ..display._runs_view import RunsView

        args = _parse(self.sft_runs, line)
        records = list_runs(self.output_dir)
        show(RunsView(records), self.mode)
        return self._bind(args.output, records) if args.output else None

    # -- runs in other processes: %sft_attach, %sft_wait, %sft_stop ------------------------------
    def _run_dir(self, name: str):
        from pathlib import Path

        from ..core.worker import BackgroundRun

        from ..core.runs import validate_name

        value = self.shell.user_ns.get(name)
        run_dir = value.path if isinstance(value, BackgroundRun) else Path(self.output_dir) / validate_name(name)
        if not (run_dir / "status.json").is_file():
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
        from ._background import attach_dashboard

        args = _parse(self.sft_attach, line)
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
        from ..core.worker import wait_for
        from ..display._runs_view import RunsView
        from ._background import run_from_disk

        args = _parse(self.sft_wait, line)
        run_dir = self._run_dir(args.name)
        try:
            record = wait_for(run_dir, timeout=args.timeout)
        except TimeoutError as err:
            raise UsageError(str(err)) from None
        show(RunsView([record]), self.mode)
        if record["status"] in ("failed", "stale"):
            raise UsageError(_failure_line(record))  # "Run All" stops here, with the cause
        return self._bind(args.output, run_from_disk(run_dir)) if args.output else None

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
        from ..core.worker import request_stop, wait_for

        args = _parse(self.sft_stop, line)
        run_dir = self._run_dir(args.name)
        request_stop(run_dir)
        if not args.no_wait:
            record = wait_for(run_dir)
            print(f"run '{args.name}': {record['status']} at step {record['steps']}")

    # -- %sft_eval ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("target", help="A run (name or -o variable), a model/adapter folder, or a model id.")
    @argument("--data", required=True, metavar="SOURCE", help="Validation data with reference answers.")
    @argument("--baseline", choices=["base"], default=None, help="Also evaluate the base model (a LoRA model with its adapter disabled: no second copy).")
    @argument("--few-shot", type=int, default=0, metavar="K", help="Also evaluate the base model prompted with K training examples (the prompting baseline).")
    @argument("--few-shot-data", metavar="SOURCE", default=None, help="Data the few-shot examples come from (default: the run's training dataset).")
    @argument("--metrics", metavar="M1,M2", default=None, help="Comma-separated metrics (default: all that apply): loss, perplexity, exact_match, token_f1, rouge_l, bleu, chrf, json_valid, json_match, json_fields.")
    @argument("--metric", action="append", default=[], metavar="NAME", help="A notebook function f(prediction, reference) -> float as an extra metric; repeatable.")
    @argument("--max-new-tokens", type=int, default=64, help="Longest answer generated, in tokens.")
    @argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding; above 0: sampling.")
    @argument("--top-p", type=float, default=1.0, help="Nucleus sampling threshold (with --temperature above 0).")
    @argument("--batch-size", type=int, default=16, help="Prompts generated together (left-padded).")
    @argument("--limit", type=int, default=None, metavar="N", help="Evaluate only the first N examples.")
    @argument("-o", "--output", metavar="NAME", help="Bind the report (.summary, .examples DataFrame, ['tuned'] / ['base'] results) to NAME.")
    @line_magic
    @_user_errors
    def sft_eval(self, line):
        """Evaluate a model on a validation set: loss and perplexity on the trained tokens, then
        generated answers (batched, greedy by default) scored with exact match, token F1, ROUGE-L,
        BLEU, chrF and, for JSON answers, validity and field-by-field match. Compare with the base
        model (``--baseline base``) and with the base model prompted with K training examples
        (``--few-shot K``). A summary table, the worst examples, and (notebook) a pager over every
        example with differences from the reference marked. Saved in ``<run>/eval/<time>/`` for a run.

        Example::

            %sft_eval run --data examples/data/val.jsonl --baseline base --few-shot 3 -o scores
            scores.summary["json_match"], scores.examples.sort_values("tuned_json_match").head()
        """
        from ..core import evaluate as ev
        from ..core.data import load_data
        from ..core.models import load_model
        from ..display._eval_view import eval_progress

        args = _parse(self.sft_eval, line)
        ns = self.shell.user_ns
        gen = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "temperature": args.temperature, "top_p": args.top_p}
        ev.check_settings(limit=args.limit, few_shot=args.few_shot, **gen)
        metrics, custom = ev.parse_metric_names(args.metrics), ev.custom_metrics(args.metric, ns)
        run_dir = ev.run_folder(args.target, ns.get(args.target), self.output_dir)
        examples = ev.examples_from(self._data(args.data))[: args.limit]
        shots = []
        if args.few_shot:  # the prompting baseline's examples, never one of the evaluated questions
            pool = ev.examples_from(load_data(ev.few_shot_source(args.few_shot_data, run_dir), namespace=ns))
            shots = ev.choose_shots(pool, args.few_shot, exclude={e.question for e in examples},
                                    like=[e.question for e in examples])
        model, tokenizer = self._target_model(args.target)
        base_name = ev.run_config(run_dir).get("model")  # a fully fine-tuned run's base loads only if needed
        load_base = (lambda: load_model(base_name, trust_remote_code=self.trust_remote_code)) if base_name else None
        progress = eval_progress(self.mode)
        try:
            report = ev.run_evaluation(
                model, tokenizer, examples, metrics=metrics, custom=custom, baseline=args.baseline == "base", shots=shots,
                is_tuned=run_dir is not None or ev.has_adapter(model), load_base=load_base, progress=progress, **gen)
        finally:
            progress.close()
        report.settings.update(target=args.target, data=args.data)
        if run_dir is not None:
            report.save(ev.new_eval_folder(run_dir))
        _eval_view(report, self.mode)
        return self._bind(args.output, report) if args.output else None

    # -- %sft_chat ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("target", help="A run (name or -o variable), a model/adapter folder, or a model id.")
    @argument("--compare", choices=["base"], default=None, help="Also answer with the base model (adapter disabled), side by side; each side keeps its own history.")
    @argument("--system", default=None, help="System prompt (default: none, or the template's own default).")
    @argument("--message", default=None, help="One-shot: send this message, print and return the reply (scripts, tests).")
    @argument("--max-new-tokens", type=int, default=256, help="Longest reply, in tokens.")
    @argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples.")
    @argument("--top-p", type=float, default=1.0, help="Nucleus sampling threshold (with --temperature > 0).")
    @argument("-o", "--output", metavar="NAME", help="Bind the reply (--message) or the chat session to NAME.")
    @line_magic
    @_user_errors
    def sft_chat(self, line):
        """Chat with a model through its own chat template, streamed, optionally side by side with
        the base model (LoRA adapter disabled: the same weights, no second copy). In a notebook: a
        chat widget (Send, Stop, Reset, system prompt, sampling controls, "show prompt"); in
        terminal IPython: a read–reply loop (an empty line or "exit" ends it). ``--message`` asks
        once and returns the reply (a dict ``{"tuned", "base"}`` with ``--compare base``).

        Example::

            %sft_chat run --compare base
            %sft_chat runs/json-lora/final --message "Ana is 34 and lives in Lisbon." -o answer
        """
        from ..core.chat import ChatSession
        from ..display._chat_view import ChatWidget, ReplyView, chat_loop

        args = _parse(self.sft_chat, line)
        if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
            raise UsageError("need --max-new-tokens ≥ 1, --temperature ≥ 0 and 0 < --top-p ≤ 1")
        mode = self.mode
        if args.message is None and mode == "plain":
            raise UsageError("%sft_chat needs --message TEXT here (the chat widget needs a notebook, the chat loop a terminal IPython)")
        model, tokenizer = self._target_model(args.target)
        session = ChatSession(model, tokenizer, system=args.system)
        compare = args.compare == "base"
        if compare and not session.has_adapter:
            raise UsageError(f"--compare base needs a LoRA adapter to switch off; '{args.target}' is a plain model")
        gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
        if args.message is not None:
            reply = session.compare(args.message, **gen) if compare else session.reply(args.message, **gen)
            show(ReplyView(args.message, reply), mode)
            return self._bind(args.output, reply)
        if mode == "widget":
            from IPython.display import display

            display(ChatWidget(session, compare, gen).widget)
        else:
            chat_loop(session, compare, gen)
        self._bind(args.output, session)  # bound, not returned: no Out[] line under the widget

    # -- %sft_export --------------------------------------------------------------------------
    @magic_arguments()
    @argument("run", help="A run (name under output_dir, or its -o variable), or an adapter/model folder.")
    @argument("--to", required=True, metavar="DIR", help="The export folder: new or empty (or --force).")
    @argument("--merge", action="store_true", help="Merge the LoRA adapter into the base weights: a standalone folder that needs no peft.")
    @argument("--force", action="store_true", help="Replace DIR when it is not empty.")
    @argument("--probe", metavar="TEXT", default=None, help="The question the export is verified with (default: 'What is the capital of France?').")
    @argument("--max-new-tokens", type=int, default=32, help="Greedy tokens compared by the verification.")
    @argument("-o", "--output", metavar="NAME", help="Bind the ExportResult (path, files, reply, token ids) to NAME.")
    @line_magic
    @_user_errors
    def sft_export(self, line):
        """Export a run as a folder plain transformers loads: safetensors weights (``--merge``: the
        LoRA merged into the base weights; without it a LoRA run exports its adapter, which needs the
        base model), the tokenizer with its chat template, and a generation config that stops at the
        template's end-of-turn token and the EOS. Verified before success is reported: reloaded with
        ``AutoModelForCausalLM`` / ``AutoTokenizer`` only, the folder must generate the notebook
        model's greedy reply to the probe, token for token (else the folder is marked VERIFY_FAILED).

        Example::

            %sft_export json-lora --to exports/json-lora --merge --probe "Ana is 34 and lives in Lisbon." -o exported
        """
        from pathlib import Path

        from ..core.export import export_model
        from ..display._views import TableView

        args = _parse(self.sft_export, line)
        model, tokenizer = self._target_model(args.run)
        result = export_model(model, tokenizer, args.to, merge=args.merge, probe=args.probe, force=args.force,
                              max_new_tokens=args.max_new_tokens, protected=[self.output_dir])
        show(TableView(f"%sft_export {args.run} → {result.path}", ["", ""], result.summary_rows(), result.notes), self.mode)
        return self._bind(args.output, result) if args.output else None

    def _target_model(self, target: str):
        """A run result variable, a run name under output_dir, or anything load_model takes."""
        from pathlib import Path

        from ..core.models import load_model
        from ..core.runs import model_location
        from ..core.train import TrainResult

        value = self.shell.user_ns.get(target)
        if isinstance(value, TrainResult) and value.model is not None:
            return value.model, value.tokenizer
        location = model_location(target, self.output_dir)
        loaded = load_model(location, trust_remote_code=self.trust_remote_code)
        return loaded.model, loaded.tokenizer


def _failure_line(record: dict) -> str:
    """One line for a run that failed (or whose process vanished): what, where it got to, why."""
    cause = record.get("error") or "its process ended without a final status"
    hint = f" — {record['hint']}" if record.get("hint") else ""
    return f"run '{record['name']}' {record['status']} at step {record.get('steps') or 0}: {cause}{hint}"


def _conversation(value, where: str) -> list[dict]:
    """A list of message dicts with a string role; content a string (or None beside tool_calls)."""
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: expected a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UsageError(f"{where}: message {i} needs a 'role' string")
        if not isinstance(m.get("content"), str) and not m.get("tool_calls"):
            raise UsageError(f"{where}: message {i} ({m['role']}) needs a 'content' string")
    return value


def _yaml_body(text: str, where: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"invalid YAML in {where}{at}: {problem}") from None


def _stats_view(data, stats, batch_size: int | None = None):
    """The %sft_data report (``batch_size`` overrides the one the statistics were made with)."""
    from dataclasses import replace

    from ..display._data_view import DataView

    if batch_size is not None and batch_size != stats.batch_size:
        stats = replace(stats, batch_size=batch_size)
    return DataView(data, stats)


def _eval_view(report, mode: str) -> None:
    """Show the %sft_eval report: the summary and the worst 5 examples; in a notebook the summary
    and a pager over every example (sortable worst first by any metric)."""
    from ..display._eval_view import EvalBrowser, EvalView

    show(EvalView(report, worst=0 if mode == "widget" else 5), mode)
    if mode == "widget":
        from IPython.display import display

        display(EvalBrowser(report).widget)
