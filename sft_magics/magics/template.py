"""``%sft_template`` and ``%sft_data``: a conversation through a model's eyes, and the data doctor."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import line_cell_magic, line_magic
from IPython.core.magic_arguments import argument, magic_arguments

from ..display import show
from ._common import MagicsBase, _conversation, _parse, _user_errors, _yaml_body, data_mapping


class TemplateMagics(MagicsBase):
    """The magics that look at data through the model's tokenizer and chat template."""

    # -- %sft_template ---------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "model",
        nargs="?",
        default=None,
        help="Model whose tokenizer and template to use (default: SftMagics.default_model).",
    )
    @argument("--messages", metavar="VAR", help="Notebook variable holding a list of message dicts.")
    @argument("--data", metavar="SOURCE", help="A dataset (file, folder, Hub name or variable).")
    @argument("--row", type=int, default=0, help="Row of --data to render (0-based).")
    @argument(
        "--add-generation-prompt",
        action="store_true",
        help="Render the inference prompt (conversation + assistant header); nothing is trained.",
    )
    @argument("--tools", metavar="VAR", help="Notebook variable holding tool (function) schemas for the template.")
    @argument(
        "--chat-template",
        metavar="T",
        help="Render with another template: a variable holding a Jinja string, or a .jinja file.",
    )
    @argument(
        "-k",
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra chat-template argument (YAML value); repeatable.",
    )
    @argument(
        "--compare", metavar="OTHER", help="Render the same conversation with OTHER model's template, side by side."
    )
    @argument(
        "--inference",
        action="store_true",
        help="Show the training rendering beside the inference prompt and mark where they differ.",
    )
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
        args = _parse(self.sft_template, line)
        row, fmt, label = self._template_row(args, cell)
        rendering, view = self._template_view(args, row, fmt, label)
        show(view, self.mode)
        return self._bind(args.output, rendering) if args.output else None

    def _template_view(self, args, row: dict, fmt: str, label: str):
        """(rendering, view) for %sft_template: the row alone, beside another model's template
        (``--compare``), or beside the inference prompt (``--inference``)."""
        from ..core.template.chat_templates import KNOWN
        from ..core.template.tokens import first_difference, inference_rendering
        from ..display._template_view import CompareView, InferenceView, RenderingView

        kwargs = self._template_kwargs(args)
        template = self._chat_template_arg(args.chat_template)
        model = args.model or self.default_model
        tokenizer, rendering = self._rendering(model, template, row, fmt, label, kwargs, args)
        if args.compare:
            _, other = self._rendering(args.compare, None, row, fmt, label, kwargs, args)
            return rendering, CompareView(rendering, other, model, args.compare)
        if args.inference and fmt == "messages":
            inference = inference_rendering(
                tokenizer,
                row["messages"],
                chat_template=rendering.chat_template or (None if template in KNOWN else template),
                template_kwargs=kwargs,
            )
            difference = first_difference(rendering.input_ids, inference.input_ids)
            return rendering, InferenceView(rendering, inference, difference)
        return rendering, RenderingView(rendering, title=f"{model} · {label}")

    def _rendering(self, name: str, chat_template, row: dict, fmt: str, label: str, kwargs: dict, args):
        """(tokenizer, rendering) of ``row`` with model ``name``'s tokenizer (a well-known template
        name: with the special tokens training would add)."""
        from ..core.models import load_tokenizer
        from ..core.template.chat_templates import KNOWN, template_for_viewing
        from ..core.template.checks import shown_rendering
        from ..core.template.render import TemplateError

        tokenizer = load_tokenizer(name, trust_remote_code=self.trust_remote_code)
        if chat_template in KNOWN:
            tokenizer, chat_template = template_for_viewing(tokenizer, chat_template), None
        options = {"generation_prompt": args.add_generation_prompt, "max_length": args.max_length}
        try:
            rendering = shown_rendering(
                tokenizer, row, fmt, chat_template=chat_template, template_kwargs=kwargs, **options
            )
        except TemplateError as err:  # a refusal that names where it showed (a probe, another row) keeps its words
            raise UsageError(str(err) if getattr(err, "located", False) else f"{label}: {err}") from None
        return tokenizer, rendering

    def _template_row(self, args, cell) -> tuple[dict, str, str]:
        """The row to render, its format, and how to name it in messages ("row 3", "the cell")."""
        from ..core.data.load import load_data

        if cell is not None:
            return {"messages": _conversation(_yaml_body(cell, "the cell"), "the cell")}, "messages", "the cell"
        if args.messages:
            if args.messages not in self.shell.user_ns:
                raise UsageError(f"--messages: no notebook variable named '{args.messages}'")
            return (
                {"messages": _conversation(self.shell.user_ns[args.messages], f"--messages {args.messages}")},
                "messages",
                args.messages,
            )
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
        """``--chat-template``: a well-known name (kept: training's special tokens are added), or the
        template text, by the core's one resolver (a notebook variable, a .jinja / .j2 file, a Jinja
        string). A model to copy a template from is for %%sft_train and %sft_data."""
        from ..core.template.chat_templates import KNOWN, resolve_template

        if value is None:
            return None
        kind, what = resolve_template(value, self.shell.user_ns)
        if kind == "clone":
            raise UsageError(
                f"--chat-template {value!r}: not a notebook variable holding a string, nor a .jinja file "
                f"(nor {', '.join(KNOWN)})"
            )
        return what

    # -- %sft_data ---------------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "source", help="A .jsonl/.json/.csv/.parquet file or glob, a save_to_disk folder, a Hub name, or a variable."
    )
    @argument("--model", default=None, help="Tokenizer to count tokens with (default: SftMagics.default_model).")
    @argument(
        "--columns",
        metavar="NAME=COL,...",
        default=None,
        help="Your columns: prompt=question,completion=answer (or user=..,assistant=.., messages=.., text=..).",
    )
    @argument("--system", metavar="TEXT", default=None, help="A system prompt added to every conversation.")
    @argument(
        "--convert",
        metavar="FUNC",
        default=None,
        help="A notebook function row -> conversation (a list of messages or a row), applied first.",
    )
    @argument(
        "--chat-template",
        metavar="T",
        default=None,
        help="Count with this chat template (chatml, zephyr, a variable, a .jinja file or a model), e.g. for a base model.",
    )
    @argument("--max-length", type=int, default=None, help="Report what truncation to this many tokens would cut.")
    @argument("--batch-size", type=int, default=8, help="Batch size for the steps-per-epoch estimate.")
    @argument("--grad-accum", type=int, default=1, help="Gradient accumulation steps for the steps-per-epoch estimate.")
    @argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="Look at a random N rows (seed 0) instead of every row: a quick look at a huge source.",
    )
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
        from ..core.template.doctor import data_stats

        args = _parse(self.sft_data, line)
        _at_least_one(args, ("max_length", "batch_size", "grad_accum", "sample"))
        data, tokenizer = self._doctor_inputs(args)
        stats = data_stats(
            data, tokenizer, max_length=args.max_length, batch_size=args.batch_size, grad_accum=args.grad_accum
        )
        show(_stats_view(data, stats, args.batch_size), self.mode)
        if self.mode == "widget":
            from IPython.display import display

            from ..display._data_view import RowBrowser

            display(RowBrowser(data, tokenizer, stats).widget)
        return self._bind(args.output, stats) if args.output else None

    def _doctor_inputs(self, args):
        """The data (invalid rows listed, not fatal; a sample with --sample) and the tokenizer (with
        --chat-template as training would set it) that %sft_data reports on."""
        from ..core.data.load import load_data, sample_data
        from ..core.models import load_tokenizer
        from ..core.template.chat_templates import template_for_viewing
        from ..core.template.doctor import SAMPLE_HINT_ROWS

        ns = self.shell.user_ns
        mapping = data_mapping(args.columns, args.system, args.convert, ns)
        data = load_data(args.source, namespace=ns, strict=False, **mapping)
        if args.sample:
            data = sample_data(data, args.sample)
        elif len(data) > SAMPLE_HINT_ROWS:
            print(
                f"{len(data):,} rows: exact statistics read every one (Ctrl-C / interrupt to stop); "
                f"--sample {SAMPLE_HINT_ROWS // 10} looks at a random {SAMPLE_HINT_ROWS // 10:,} instead"
            )
        tokenizer = load_tokenizer(args.model or self.default_model, trust_remote_code=self.trust_remote_code)
        if args.chat_template:
            tokenizer = template_for_viewing(tokenizer, args.chat_template, ns)
        return data, tokenizer


def _at_least_one(args, names) -> None:
    """Whole-number flags that must be 1 or more (flags are the magic's words: checked here)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _stats_view(data, stats, batch_size: int | None = None):
    """The %sft_data report (``batch_size`` overrides the one the statistics were made with)."""
    from dataclasses import replace

    from ..display._data_view import DataView

    if batch_size is not None and batch_size != stats.batch_size:
        stats = replace(stats, batch_size=batch_size)
    return DataView(data, stats)
