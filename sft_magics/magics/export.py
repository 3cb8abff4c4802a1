"""``%sft_export``: a verified folder plain transformers loads."""

from __future__ import annotations

from IPython.core.magic import line_magic
from IPython.core.magic_arguments import argument, magic_arguments

from ..display import show
from ._common import MagicsBase, _parse, _user_errors


class ExportMagics(MagicsBase):
    """Shipping a run."""

    # -- %sft_export --------------------------------------------------------------------------
    @magic_arguments()
    @argument("run", help="A run (name under output_dir, or its -o variable), or an adapter/model folder.")
    @argument("--to", required=True, metavar="DIR", help="The export folder: new or empty (or --force).")
    @argument(
        "--merge",
        action="store_true",
        help="Merge the LoRA adapter into the base weights: a standalone folder that needs no peft.",
    )
    @argument("--force", action="store_true", help="Replace DIR when it is not empty.")
    @argument(
        "--probe",
        metavar="TEXT",
        default=None,
        help="The question the export is verified with (default: 'What is the capital of France?').",
    )
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

        from ..core.export import export_model
        from ..display._views import TableView

        args = _parse(self.sft_export, line)
        model, tokenizer = self._target_model(args.run)
        result = export_model(
            model,
            tokenizer,
            args.to,
            merge=args.merge,
            probe=args.probe,
            force=args.force,
            max_new_tokens=args.max_new_tokens,
            protected=[self.output_dir],
        )
        show(
            TableView(f"%sft_export {args.run} → {result.path}", ["", ""], result.summary_rows(), result.notes),
            self.mode,
        )
        return self._bind(args.output, result) if args.output else None
