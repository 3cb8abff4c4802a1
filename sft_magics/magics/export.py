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
        action="append",
        default=None,
        help="A question the export is verified with (default: 'What is the capital of France?'); with --gguf, "
        "repeat it for more llama.cpp probes (default: the run's first eval_dataset prompts).",
    )
    @argument(
        "--gguf",
        nargs="?",
        const="q8_0",
        default=None,
        metavar="TYPE",
        help="Also write a GGUF for llama.cpp / Ollama (q8_0 by default; f16, bf16, f32, q6_k, q5_k_m, q4_k_m, "
        'q4_0) and a Modelfile, verified by llama.cpp itself. Needs pip install "sft_magics[gguf]".',
    )
    @argument("--max-new-tokens", type=int, default=32, help="Greedy tokens compared by each verification.")
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

        ``--gguf [TYPE]`` also writes ``model-TYPE.gguf`` (llama.cpp's own converter; the adapter is
        merged) and an Ollama ``Modelfile``, then loads the GGUF in llama.cpp and compares its greedy
        answers with the notebook model's on the probes: identical, or parting only at a near tie
        the quantization explains; anything else fails the export and keeps the files. What was
        exported, from which run, and how it was verified is in ``export_manifest.json``.

        Example::

            %sft_export json-lora --to exports/json-lora --merge --probe "Ana is 34 and lives in Lisbon." -o exported
            %sft_export json-lora --to exports/json-gguf --gguf q8_0
        """
        from ..display._views import TableView

        args = _parse(self.sft_export, line)
        args.run = self._resolve_target(args.run)
        result = self._export(args)
        show(
            TableView(f"%sft_export {args.run} → {result.path}", ["", ""], result.summary_rows(), result.notes),
            self.mode,
        )
        return self._bind(args.output, result) if args.output else None

    def _export(self, args):
        """The export the line asks for: the run's model, its probes (the run's own eval prompts for
        --gguf when none are given), written and verified."""
        from ..core.export.folder import export_model
        from ..core.export.source import eval_probes, export_source
        from ..core.run.lookup import run_path

        run_dir = run_path(args.run, self.shell.user_ns.get(args.run), self.output_dir)
        model, tokenizer = self._target_model(args.run)
        probes = [[{"role": "user", "content": p}] for p in args.probe or []]
        if args.gguf and not probes and run_dir is not None:
            probes = eval_probes(run_dir, namespace=self.shell.user_ns)
        return export_model(
            model,
            tokenizer,
            args.to,
            merge=args.merge,
            probe=args.probe[0] if args.probe else None,
            force=args.force,
            max_new_tokens=args.max_new_tokens,
            protected=[self.output_dir],
            gguf=args.gguf,
            gguf_probes=probes,
            source=export_source(args.run, run_dir),
        )
