"""Generating answers for a validation set and scoring them.

Generation is batched and left-padded, greedy by default, and stops on the model's own stop tokens
(its generation config's ``eos_token_id``), so a batch of 16 costs about what one example does.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence


@dataclass(frozen=True)
class Example:
    prompt: Any  # list of messages (conversational) or a string
    reference: str


@dataclass
class EvalResult:
    label: str
    predictions: list[str]
    scores: dict[str, list[float]]
    seconds: float
    prompt_tokens: list[int] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        values = self.scores[metric]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {name: self.mean(name) for name in self.scores}


class EvalReport(dict):
    """{label: EvalResult}, with a one-line repr (it is what ``%sft_eval -o`` returns)."""

    def __repr__(self) -> str:
        parts = [f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.summary().items()) for label, r in self.items()]
        return "<EvalReport " + " | ".join(parts) + ">"


def examples_from(data) -> list[Example]:
    """Prompt and reference per row of a normalised dataset (see core.data.LoadedData)."""
    out = []
    for row in data.dataset:
        if data.format == "messages":
            msgs = row["messages"]
            out.append(Example(prompt=[_clean(m) for m in msgs[:-1]], reference=msgs[-1]["content"]))
        elif data.format == "conversational_prompt_completion":
            out.append(Example(prompt=[_clean(m) for m in row["prompt"]], reference=row["completion"][-1]["content"]))
        elif data.format == "prompt_completion":
            out.append(Example(prompt=row["prompt"], reference=row["completion"]))
        else:
            raise ValueError("evaluation needs prompts and references: a 'text' dataset has neither")
    return out


def _clean(message: dict) -> dict:
    # datasets fills absent optional keys with None; templates should not see them.
    return {k: v for k, v in message.items() if v is not None}


def render_prompts(tokenizer, prompts: Sequence[Any]) -> list[str]:
    """The exact text the model is asked to continue: its own chat template plus the generation prompt."""
    return [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]


def stop_token_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Answers for each prompt (a message list or a raw string), batched and left-padded."""
    import torch

    texts = render_prompts(tokenizer, prompts)
    stops = stop_token_ids(model, tokenizer)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every prompt ends right where generation starts
    answers: list[str] = []
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if on_batch:
                on_batch(min(start + batch_size, len(texts)), len(texts))
    finally:
        tokenizer.padding_side = old_side
    return [a.strip() for a in answers]


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def _parse_json(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def json_valid(prediction: str, reference: str) -> float:
    return float(_parse_json(prediction) is not None)


def json_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction parses to the same JSON value as the reference (key order ignored)."""
    ref = _parse_json(reference)
    return float(ref is not None and _parse_json(prediction) == ref)


def json_fields(prediction: str, reference: str) -> float:
    """Fraction of the reference object's fields that the prediction gets exactly right."""
    ref, pred = _parse_json(reference), _parse_json(prediction)
    if not isinstance(ref, dict) or not ref:
        return float(pred == ref and ref is not None)
    if not isinstance(pred, dict):
        return 0.0
    return sum(pred.get(k) == v for k, v in ref.items()) / len(ref)


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "json_valid": json_valid,
    "json_match": json_match,
    "json_fields": json_fields,
}


def evaluate_generations(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    label: str = "model",
    metrics: Iterable[str] = ("exact_match", "json_valid", "json_match", "json_fields"),
    **gen_kwargs,
) -> EvalResult:
    start = time.perf_counter()
    preds = generate(model, tokenizer, [e.prompt for e in examples], **gen_kwargs)
    scores = {m: [METRICS[m](p, e.reference) for p, e in zip(preds, examples)] for m in metrics}
    return EvalResult(label=label, predictions=preds, scores=scores, seconds=time.perf_counter() - start)


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model's behaviour from a PEFT model, without a second copy in memory."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model
