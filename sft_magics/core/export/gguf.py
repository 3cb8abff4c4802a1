"""A GGUF beside the verified transformers export, verified by llama.cpp itself.

:func:`export_gguf` converts the (merged) export folder with llama.cpp's own converter
(:mod:`.llamacpp`), loads the file in llama.cpp, and checks, before the export is called done:

1. **metadata**: the embedded chat template is the run's, byte for byte; llama.cpp's EOS is one of
   the model's stop tokens; the token the template ends assistant turns with is one llama.cpp
   stops at; the vocabulary has the model's size;
2. **the prompt**: each probe conversation, rendered through the *embedded* template by
   llama-cpp-python's own chat formatter, is the notebook's prompt text, and llama.cpp's tokenizer
   reads it as the same ids;
3. **the answers**: llama.cpp's greedy answer to each probe against the notebook model's. Identical,
   or diverging only where the chosen quantization explains it: at the first differing token the
   notebook model itself rated llama.cpp's token within ``TOLERANCE_NATS[type]`` of its own choice
   (a near tie that rounding can flip). Anything more — a token the model was sure about, an answer
   llama.cpp ends early or never ends — fails the export with the probe and the tokens.

The files stay for inspection either way; :mod:`.export` marks a failed folder ``VERIFY_FAILED``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError, SftError
from ..template.tokens import common_prefix
from .llamacpp import GGUF_TYPES, LlamaCpp, bindings_version, convert
from .ollama import modelfile

# How far (in nats of the notebook model's own log-probabilities) llama.cpp's token may be from
# the notebook's at the first difference and still be a near tie the number format explains.
TOLERANCE_NATS = {
    "f32": 0.01,
    "f16": 0.1,
    "bf16": 0.3,
    "q8_0": 0.5,
    "q6_k": 1.0,
    "q5_k_m": 1.5,
    "q4_k_m": 2.0,
    "q4_0": 2.5,
}


@dataclass
class ProbeCheck:
    """One probe: both answers, and where and why they differ."""

    question: str
    notebook: str
    llama_cpp: str
    notebook_ids: list[int]
    llama_cpp_ids: list[int]
    diverged_at: int | None = None  # first differing generated token (None: identical)
    gap_nats: float | None = None  # the notebook's log-prob lead of its token over llama.cpp's there
    explained: bool = True
    reason: str = ""

    @property
    def identical(self) -> bool:
        return self.diverged_at is None

    def agreement(self) -> str:
        n = max(len(self.notebook_ids), len(self.llama_cpp_ids))
        if self.identical:
            return f"identical ({n} tokens)"
        verdict = "explained by the quantization" if self.explained else "NOT explained"
        return f"same first {self.diverged_at} of {n} tokens; {self.reason} ({verdict})"


@dataclass
class GgufResult:
    file: str
    outtype: str
    size_mb: float
    sha256: str
    llama_cpp_python: str
    chat_template_sha256: str
    eos_token_id: int | None
    probes: list[ProbeCheck]
    tolerance_nats: float
    tokens_per_s: float  # llama.cpp's greedy decoding speed over the probes
    notebook_tokens_per_s: float  # the notebook model's (transformers) over the same probes
    modelfile: str | None = "Modelfile"
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> int:
        return sum(p.identical for p in self.probes)

    def manifest(self) -> dict[str, Any]:
        return {**asdict(self), "identical_probes": self.identical}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_gguf(
    model,
    tokenizer,
    folder: Path,
    outtype: str,
    probes: list[Any],
    *,
    stop_ids: list[int],
    max_new_tokens: int,
) -> GgufResult:
    """Convert ``folder`` (a verified, standalone transformers export) to ``model-<type>.gguf``
    beside it, verify it in llama.cpp against ``model`` on ``probes`` (message lists or raw
    prompts), and write the Ollama ``Modelfile``. Raises :class:`ExportError` with the reason on a
    failed check; ``.last_result`` on the error holds the probe comparison when it got that far."""
    outtype = outtype.lower()
    if outtype not in GGUF_TYPES:
        raise ExportError(f"--gguf {outtype!r}: choose one of {', '.join(GGUF_TYPES)}")
    name = f"model-{outtype}.gguf"
    out = folder / name
    convert(folder, out, outtype, folder / "gguf-convert.log")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    context = _context(model)
    with LlamaCpp(out, n_ctx=min(context, 4096)) as llm:
        eos = _check_metadata(llm, model, tokenizer, template, stop_ids)
        checks, speeds = _compare(llm, model, tokenizer, probes, stop_ids, max_new_tokens, outtype)
        stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]  # all of them: Ollama stops on text
    result = GgufResult(
        file=name,
        outtype=outtype,
        size_mb=round(out.stat().st_size / 1e6, 3),
        sha256=sha256_of(out),
        llama_cpp_python=bindings_version(),
        chat_template_sha256=hashlib.sha256(template.encode()).hexdigest(),
        eos_token_id=eos,
        probes=checks,
        tolerance_nats=TOLERANCE_NATS[outtype],
        tokens_per_s=speeds[0],
        notebook_tokens_per_s=speeds[1],
    )
    bad = [(i, p) for i, p in enumerate(checks) if not p.explained]
    if bad:
        i, p = bad[0]
        err = ExportError(
            f"llama.cpp's answer to probe {i + 1} ({_short(p.question)}) differs from the notebook model's "
            f"at token {p.diverged_at}: {p.reason}, beyond what {outtype} explains"
            + (f" ({p.gap_nats:.2f} > {result.tolerance_nats} nats)" if p.gap_nats is not None else "")
        )
        err.last_result = result  # type: ignore[attr-defined]
        raise err
    (folder / "Modelfile").write_text(modelfile(name, tokenizer, stops, num_ctx=context))  # capped at 8192
    return result


def _context(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", 2048) or 2048)


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _check_metadata(llm: LlamaCpp, model, tokenizer, template: str, stop_ids: list[int]) -> int | None:
    """The metadata llama.cpp and Ollama act on: template, EOS, end of turn, vocabulary."""
    from ..evaluate.generation import end_of_turn_token

    embedded = llm.metadata.get("tokenizer.chat_template")
    if not embedded:
        raise ExportError("the GGUF has no chat template (tokenizer.chat_template): llama.cpp cannot chat with it")
    if embedded != template:
        raise ExportError("the GGUF's chat template is not the one the model was trained with")
    eos = llm.token_id("eos")
    if eos is None or eos not in stop_ids:
        what = "none" if eos is None else f"token {eos} ({llm.piece(eos)!r})"
        raise ExportError(
            f"the GGUF's EOS is {what}, not one of the model's stop tokens {stop_ids} "
            f"({', '.join(repr(tokenizer.convert_ids_to_tokens(i)) for i in stop_ids)})"
        )
    eot = end_of_turn_token(tokenizer)
    if eot is not None and not llm.is_eog(eot):
        raise ExportError(
            f"llama.cpp would not stop at {tokenizer.convert_ids_to_tokens(eot)!r} (id {eot}), "
            "the token the chat template ends assistant turns with"
        )
    n_vocab = llm.llm.n_vocab()
    if n_vocab != model.get_input_embeddings().weight.shape[0]:
        raise ExportError(
            f"the GGUF's vocabulary has {n_vocab} tokens, the model {model.get_input_embeddings().weight.shape[0]}"
        )
    return eos


def _compare(llm, model, tokenizer, probes, stop_ids, max_new_tokens, outtype):
    """Greedy answers from both runtimes, probe by probe, and where they part."""
    import torch

    from ..evaluate.generation import render_prompts
    from .verify import greedy, greedy_config, plain_forward

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    config = greedy_config(max_new_tokens, stop_ids, pad)
    device = next(model.parameters()).device
    checks, spent, made, nb_spent, nb_made = [], 0.0, 0, 0.0, 0
    was_training, notes = model.training, []
    model.eval()
    try:
        for i, probe in enumerate(probes):
            text = render_prompts(tokenizer, [probe])[0]
            if isinstance(probe, list):
                try:
                    theirs = llm.render(probe)
                except SftError:
                    raise
                except Exception as err:
                    raise ExportError(f"llama.cpp's chat formatter fails on probe {i + 1}: {err}") from None
                if theirs != text:
                    raise ExportError(
                        f"probe {i + 1}: the GGUF's chat template, rendered by llama.cpp, gives a different prompt "
                        f"from the notebook's (first difference at character {common_prefix(theirs, text)})"
                    )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            bos = llm.token_id("bos")
            if llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" and bos is not None and ids[:1] != [bos]:
                raise ExportError(
                    f"llama.cpp adds a BOS ({llm.piece(bos)!r}) in front of every prompt (tokenizer.ggml.add_bos_token), "
                    "which the chat template does not write and the notebook model was not trained with"
                )
            if len(ids) + max_new_tokens > llm.llm.n_ctx():
                raise ExportError(
                    f"probe {i + 1} is {len(ids)} tokens: with {max_new_tokens} new ones it does not fit the "
                    f"{llm.llm.n_ctx()}-token context the GGUF is verified in; give a shorter probe (--probe)"
                )
            if llm.tokenize(text) != ids:
                raise ExportError(
                    f"probe {i + 1}: llama.cpp's tokenizer reads the prompt as different ids from the notebook "
                    f"tokenizer's (first difference at token {common_prefix(llm.tokenize(text), ids)})"
                )
            start = time.perf_counter()
            theirs_ids, stop = llm.greedy(ids, max_new_tokens)
            spent, made = spent + time.perf_counter() - start, made + len(theirs_ids) + (stop is not None)
            inputs = {"input_ids": torch.tensor([ids], device=device)}
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            start = time.perf_counter()
            with plain_forward(model, notes):
                want, logits = greedy(model, inputs, config)
            nb_spent, nb_made = nb_spent + time.perf_counter() - start, nb_made + len(want)
            got = theirs_ids + ([stop] if stop is not None else [])
            checks.append(_check(probe, tokenizer, llm, want, got, logits, stop_ids, outtype))
    finally:
        model.train(was_training)
    return checks, (round(made / spent, 1) if spent else 0.0, round(nb_made / nb_spent, 1) if nb_spent else 0.0)


def _check(probe, tokenizer, llm, want, got, logits, stop_ids, outtype) -> ProbeCheck:
    """Compare the full generated sequences (a stop token included where the answer ended)."""
    import torch

    from ..evaluate.example import Example

    question = Example(prompt=probe, reference="").question
    body = [t for t in want if t not in stop_ids] if want and want[-1] in stop_ids else want
    check = ProbeCheck(
        question=question,
        notebook=tokenizer.decode(body, skip_special_tokens=True),
        llama_cpp=llm.detokenize([t for t in got if not llm.is_eog(t)]),
        notebook_ids=list(want),
        llama_cpp_ids=list(got),
    )
    if want == got:
        return check
    i = common_prefix(want, got)
    check.diverged_at = i
    if i >= len(want) or i >= len(got) or i >= len(logits):
        # Both sides have the same token budget: one answer ending where the other goes on means
        # they stop on different tokens. No number format explains that.
        shorter = "llama.cpp's" if len(got) < len(want) else "the notebook model's"
        check.reason = f"{shorter} answer ends after {min(len(got), len(want))} tokens where the other goes on"
        check.explained = False
        return check
    logp = torch.log_softmax(logits[i].float(), dim=-1)
    check.gap_nats = round(float(logp[want[i]] - logp[got[i]]), 4)
    check.explained = check.gap_nats <= TOLERANCE_NATS[outtype]

    def name(t: int) -> str:
        return f"{tokenizer.convert_ids_to_tokens(int(t))!r}"

    check.reason = f"llama.cpp chose {name(got[i])} where the notebook model chose {name(want[i])}"
    if want[i] in stop_ids and not llm.is_eog(got[i]):
        check.reason += " (llama.cpp does not end the answer there)"
    elif llm.is_eog(got[i]) and want[i] not in stop_ids:
        check.reason += " (llama.cpp ends the answer there)"
    return check
