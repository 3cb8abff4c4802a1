"""``%sft_eval`` and ``%sft_chat``: what the model answers."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import line_magic
from IPython.core.magic_arguments import argument, magic_arguments

from ..display import show
from ._common import MagicsBase, _parse, _user_errors, data_mapping


class EvalMagics(MagicsBase):
    """Evaluation on a validation set, and chat."""

    # -- %sft_eval ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("target", help="A run (name or -o variable), a model/adapter folder, or a model id.")
    @argument("--data", required=True, metavar="SOURCE", help="Validation data with reference answers.")
    @argument(
        "--columns",
        metavar="NAME=COL,...",
        default=None,
        help="Your columns, as in %%sft_data: prompt=question,completion=answer or user=..,assistant=..",
    )
    @argument(
        "--system", metavar="TEXT", default=None, help="A system prompt added to every conversation (as in training)."
    )
    @argument("--convert", metavar="FUNC", default=None, help="A notebook function row -> conversation, applied first.")
    @argument(
        "--baseline",
        choices=["base"],
        default=None,
        help="Also evaluate the base model (a LoRA model with its adapter disabled: no second copy).",
    )
    @argument(
        "--few-shot",
        type=int,
        default=0,
        metavar="K",
        help="Also evaluate the base model prompted with K training examples (the prompting baseline).",
    )
    @argument(
        "--few-shot-data",
        metavar="SOURCE",
        default=None,
        help="Data the few-shot examples come from (default: the run's training dataset).",
    )
    @argument(
        "--metrics",
        metavar="M1,M2",
        default=None,
        help="Comma-separated metrics (default: all that apply): loss, perplexity, exact_match, token_f1, rouge_l, bleu, chrf, json_valid, json_match, json_fields.",
    )
    @argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="A notebook function f(prediction, reference) -> float as an extra metric; repeatable.",
    )
    @argument("--max-new-tokens", type=int, default=64, help="Longest answer generated, in tokens.")
    @argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding; above 0: sampling.")
    @argument("--top-p", type=float, default=1.0, help="Nucleus sampling threshold (with --temperature above 0).")
    @argument("--batch-size", type=int, default=16, help="Prompts generated together (left-padded).")
    @argument("--limit", type=int, default=None, metavar="N", help="Evaluate only the first N examples.")
    @argument(
        "-o",
        "--output",
        metavar="NAME",
        help="Bind the report (.summary, .examples DataFrame, ['tuned'] / ['base'] results) to NAME.",
    )
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
        args = _parse(self.sft_eval, line)
        args.target = self._resolve_target(args.target)
        gen = {
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "temperature": args.temperature,
            "top_p": args.top_p,
        }
        _check_eval_flags(limit=args.limit, few_shot=args.few_shot, **gen)
        report = self._evaluate(args, gen)
        _eval_view(report, self.mode)
        return self._bind(args.output, report) if args.output else None

    def _evaluate(self, args, gen: dict):
        """The report %sft_eval asks for: the examples, the target model, its baselines, with progress."""
        from ..core.data.load import load_data
        from ..core.evaluate import evaluation as ev
        from ..core.evaluate.metrics import custom_metrics, parse_metric_names
        from ..core.models import load_model
        from ..core.run.lookup import run_path
        from ..display._eval_view import eval_progress

        ns = self.shell.user_ns
        metrics, custom = parse_metric_names(args.metrics), custom_metrics(args.metric, ns)
        run_dir = run_path(args.target, ns.get(args.target), self.output_dir)
        mapping = data_mapping(args.columns, args.system, args.convert, ns)
        examples = ev.examples_from(self._data(args.data, **mapping))[: args.limit]
        model, tokenizer = self._target_model(args.target)
        progress = eval_progress(self.mode)
        try:
            return ev.evaluate_target(
                model,
                tokenizer,
                examples,
                run_dir=run_dir,
                few_shot=args.few_shot,
                few_shot_data=args.few_shot_data,
                few_shot_pool=lambda source: load_data(source, namespace=ns),
                baseline=args.baseline == "base",
                load_base=lambda name: load_model(name, trust_remote_code=self.trust_remote_code),
                metrics=metrics,
                custom=custom,
                progress=progress,
                settings={"target": args.target, "data": args.data},
                **gen,
            )
        finally:
            progress.close()

    # -- %sft_chat ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("target", help="A run (name or -o variable), a model/adapter folder, or a model id.")
    @argument(
        "--compare",
        choices=["base"],
        default=None,
        help="Also answer with the base model (adapter disabled), side by side; each side keeps its own history.",
    )
    @argument("--system", default=None, help="System prompt (default: none, or the template's own default).")
    @argument(
        "--message", default=None, help="One-shot: send this message, print and return the reply (scripts, tests)."
    )
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
        from ..core.evaluate.chat import ChatSession
        from ..display._chat_view import ChatWidget, ReplyView, chat_loop

        args = _parse(self.sft_chat, line)
        args.target = self._resolve_target(args.target)
        if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
            raise UsageError("need --max-new-tokens ≥ 1, --temperature ≥ 0 and 0 < --top-p ≤ 1")
        mode = self.mode
        if args.message is None and mode == "plain":
            raise UsageError(
                "%sft_chat needs --message TEXT here (the chat widget needs a notebook, the chat loop a terminal IPython)"
            )
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


def _eval_view(report, mode: str) -> None:
    """Show the %sft_eval report: the summary and the worst 5 examples; in a notebook the summary
    and a pager over every example (sortable worst first by any metric)."""
    from ..display._eval_view import EvalBrowser, EvalView

    show(EvalView(report, worst=0 if mode == "widget" else 5), mode)
    if mode == "widget":
        from IPython.display import display

        display(EvalBrowser(report).widget)


def _check_eval_flags(
    *, max_new_tokens: int, batch_size: int, limit: int | None, few_shot: int, temperature: float, top_p: float
) -> None:
    """The numeric flags of ``%sft_eval``, checked before anything loads (flags are the magic's words)."""
    for flag, value, low in (
        ("--max-new-tokens", max_new_tokens, 1),
        ("--batch-size", batch_size, 1),
        ("--limit", limit, 1),
        ("--few-shot", few_shot, 0),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
