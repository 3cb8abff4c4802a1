"""An export folder's manifest (what was exported, from where, each file's hash, what was verified) and its README."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _manifest(r: ExportResult, tokenizer) -> dict:
    """What was exported, from where, with which template, and how it was verified."""
    import hashlib

    from ..secrets import scrub_text
    from .gguf import sha256_of

    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    hashes = {r.gguf.file: r.gguf.sha256} if r.gguf is not None else {}  # hashed once already
    return {
        "source": r.source,
        "kind": r.kind,
        "base_model": r.base_model,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "eos_token_id": r.eos_token_id,
        "pad_token_id": r.pad_token_id,
        "files": {
            f: {"bytes": (r.path / f).stat().st_size, "sha256": hashes.get(f) or sha256_of(r.path / f)} for f in r.files
        },
        "verified": {
            "transformers": {
                "probe": scrub_text(r.probe),
                "reply": scrub_text(r.reply),
                "tokens": len(r.token_ids),
                "logits_max_diff": r.logits_max_diff,
            },
            "llama_cpp": _scrubbed(r.gguf.manifest()) if r.gguf is not None else None,
        },
        "notes": r.notes,
        "seconds": round(r.seconds, 2),
    }


def _scrubbed(gguf_manifest: dict) -> dict:
    """Probe questions and answers come from the user's data and the model: credential-looking text
    is scrubbed before it goes into a folder meant to be shared."""
    from ..secrets import scrub_text

    for probe in gguf_manifest.get("probes", []):
        for key in ("question", "notebook", "llama_cpp"):
            probe[key] = scrub_text(probe[key])
    return gguf_manifest


def _write_manifest(to: Path, manifest: dict) -> None:
    from ..files import write_json

    write_json(to / MANIFEST, manifest)


def _mark_failed(to: Path, reason: str) -> None:
    (to / MARK_FAILED).write_text(f"this export did NOT verify; do not ship it.\n{reason}\n")
    (to / MARK_INCOMPLETE).unlink(missing_ok=True)


def _files(to: Path) -> list[str]:
    return sorted(str(p.relative_to(to)) for p in to.rglob("*") if p.is_file() and p.name not in _MARKERS)


def _readme(r: ExportResult, tokenizer, eot: int | None) -> str:
    eot_text = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
    load = (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{r.path}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{r.path}")\n'
        'messages = [{"role": "user", "content": "Hello!"}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)\n'
        "out = model.generate(**inputs, max_new_tokens=64)  # stops at generation_config.json's eos_token_id\n"
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
        "```\n"
    )
    what = {
        "merged": "A standalone model: the LoRA adapter is merged into the base weights. transformers loads it; peft is not needed.",
        "full": "A standalone model (full fine-tune). transformers loads it; peft is not needed.",
        "adapter": (
            "A LoRA **adapter**, not a standalone model: it needs its base model, "
            f"`{r.base_model}` (`base_model_name_or_path` in `adapter_config.json`), and the `peft` package. "
            "transformers loads base + adapter from this folder. On another machine, point "
            "`base_model_name_or_path` at a copy of that base model, or export with `--merge` for a standalone folder."
        ),
    }[r.kind]
    return (
        f"# Exported with sft_magics (`%sft_export`)\n\n{what}\n\n## Load\n\n{load}\n"
        "## Chat template and stop tokens\n\n"
        f"The chat template is in `chat_template.jinja`; it ends assistant turns with `{eot_text}`. "
        f"`generation_config.json` stops on `eos_token_id` {r.eos_token_id} and pads with `pad_token_id` {r.pad_token_id}.\n\n"
        "## Verification\n\n"
        f"Reloaded with `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`; the probe "
        f"{json.dumps(r.probe)} rendered through this chat template produced the same {len(r.token_ids)} greedy "
        f"tokens as the model in the notebook (largest logit difference {r.logits_max_diff:.2g}):\n\n"
        f"> {r.reply!r}\n" + (_gguf_readme(r.gguf) if r.gguf is not None else "")
    )


def _gguf_readme(g) -> str:
    return (
        f"\n## GGUF (llama.cpp, Ollama, LM Studio)\n\n`{g.file}` ({g.outtype}, {g.size_mb:.1f} MB), converted by llama.cpp's "
        f"own `convert_hf_to_gguf.py`, with this chat template and EOS id {g.eos_token_id} in its metadata.\n\n"
        f"```sh\nllama-cli -m {g.file} -cnv       # llama.cpp\nollama create my-model -f Modelfile && ollama run my-model\n```\n\n"
        f"Verified in llama.cpp (llama-cpp-python {g.llama_cpp_python}): {g.identical} of {len(g.probes)} probes gave "
        f"the notebook model's greedy answer token for token; see `export_manifest.json`.\n"
    )


MARK_INCOMPLETE = "EXPORT_INCOMPLETE"

MARK_FAILED = "VERIFY_FAILED"

MANIFEST = "export_manifest.json"

_MARKERS = (MARK_INCOMPLETE, MARK_FAILED)


@dataclass
class ExportResult:
    """What ``%sft_export -o`` binds: the folder, what is in it, and the verification."""

    path: Path
    kind: str  # "merged" | "adapter" | "full"
    files: list[str]
    probe: str
    prompt: str  # the probe rendered through the exported chat template (with the generation prompt)
    reply: str  # the decoded generated tokens (special tokens skipped)
    token_ids: list[int]  # generated ids: identical for the reloaded and the in-notebook model
    eos_token_id: list[int]
    pad_token_id: int | None
    size_mb: float  # bytes / 1e6 of everything in the folder
    base_model: str | None = None  # what an adapter export loads its base from
    logits_max_diff: float = 0.0  # largest |reloaded - notebook| over the generated steps' logits
    seconds: float = 0.0
    verified: bool = True
    notes: list[str] = field(default_factory=list)
    gguf: Any = None  # a GgufResult (core/export/gguf.py) when exported with gguf=TYPE
    source: dict = field(default_factory=dict)  # the run and checkpoint it came from, when known

    @property
    def merged(self) -> bool:
        return self.kind == "merged"

    def summary_rows(self) -> list[list[str]]:
        """Rows for a two-column summary table (plain strings; the view escapes them)."""
        described = {
            "merged": "LoRA merged into the base weights (standalone)",
            "adapter": "LoRA adapter (needs its base model)",
            "full": "full model weights (standalone)",
        }[self.kind]
        rows = [
            ["folder", str(self.path)],
            ["contents", described],
            ["files", ", ".join(self.files)],
            ["size", f"{self.size_mb:.1f} MB"],
            ["stop tokens", f"eos_token_id {self.eos_token_id}, pad_token_id {self.pad_token_id}"],
            ["probe", _visible(self.probe)],
            ["reply", _visible(self.reply)],
            [
                "verified",
                f"✓ reloaded with transformers; {len(self.token_ids)} greedy tokens identical "
                f"to the notebook model's (max logit diff {self.logits_max_diff:.2g})",
            ],
        ]
        if self.base_model:
            rows.insert(2, ["base model", self.base_model])
        if self.gguf is not None:
            g = self.gguf
            rows += [
                ["GGUF", f"{g.file} ({g.outtype}, {g.size_mb:.1f} MB) and an Ollama Modelfile"],
                [
                    "llama.cpp",
                    f"✓ {g.identical}/{len(g.probes)} probes token-identical to the notebook model"
                    + (
                        f", {len(g.probes) - g.identical} parting at a near tie {g.outtype} explains"
                        if g.identical < len(g.probes)
                        else ""
                    )
                    + f"; {g.tokens_per_s:.0f} tokens/s (transformers {g.notebook_tokens_per_s:.0f})",
                ],
            ]
            rows += [[f"probe {i + 1}", _visible(p.agreement())] for i, p in enumerate(g.probes)]
        return rows

    def __repr__(self) -> str:
        return (
            f"<ExportResult {self.kind} {self.path}: {len(self.files)} files, {self.size_mb:.1f} MB, "
            f"verified on {len(self.token_ids)} tokens>"
        )


def _visible(text: str) -> str:
    """One line, no raw control characters (a model's reply may hold an ESC or a newline)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
