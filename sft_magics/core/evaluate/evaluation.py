"""Evaluating a model on a validation set: loss on the trained tokens, generated answers, scores.

Read top to bottom, :func:`run_evaluation` does what ``%sft_eval`` does:

1. the target model: loss and perplexity on the tokens training trains on (the masks come from
   :func:`core.template.tokens.tokenize_row`, the function the trainer uses), then answers generated for
   every prompt and scored with each metric;
2. optionally the base model (a LoRA model with its adapter disabled: the same weights, no copy);
3. optionally the base model prompted with K training examples (the prompting baseline), so the
   table shows what fine-tuning bought over prompting, and at what prompt-token cost.

Generation is batched and left-padded, greedy by default, and stops on the model's own stop tokens
(its generation config's ``eos_token_id``), so a batch of 16 costs about what one example does.
Nothing here draws anything: progress goes to a callback ``progress(stage, done, total)``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import EvalError
from ..run.folder import new_eval_folder, read_config
from .example import Example
from .generation import (
    base_model,
    check_new_tokens,
    context_length,
    generate,
    has_adapter,
    prompt_token_counts,
)
from .metrics import LOSS_METRICS, Metric, score, select_metrics
from .report import BASE, FEW_SHOT, MODEL, TUNED, EvalReport, EvalResult

Progress = Callable[[str, int, int], None]


# -- data -------------------------------------------------------------------------------------------


def examples_from(data) -> list[Example]:
    """Prompt and reference per row of a normalised dataset (see core.data.LoadedData)."""
    out = []
    for row in data.dataset:
        row = dict(row)
        if data.format == "messages":
            msgs = row["messages"]
            out.append(
                Example(prompt=[_clean(m) for m in msgs[:-1]], reference=msgs[-1]["content"], row=row, fmt=data.format)
            )
        elif data.format == "conversational_prompt_completion":
            out.append(
                Example(
                    prompt=[_clean(m) for m in row["prompt"]],
                    reference=row["completion"][-1]["content"],
                    row=row,
                    fmt=data.format,
                )
            )
        elif data.format == "prompt_completion":
            out.append(Example(prompt=row["prompt"], reference=row["completion"], row=row, fmt=data.format))
        else:
            raise EvalError("evaluation needs prompts and references: a 'text' dataset has neither")
    return out


def _clean(message: dict) -> dict:
    # datasets fills absent optional keys with None; templates should not see them.
    return {k: v for k, v in message.items() if v is not None}


def _row_of(example: Example) -> tuple[dict, str]:
    """The training row behind an example (built from prompt + reference when it has none)."""
    if example.row is not None and example.fmt:
        return example.row, example.fmt
    if isinstance(example.prompt, list):
        return {"messages": [*example.prompt, {"role": "assistant", "content": example.reference}]}, "messages"
    return {"prompt": example.prompt, "completion": example.reference}, "prompt_completion"


# -- few-shot prompting ----------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.lower()))


def choose_shots(
    pool: Sequence[Example], k: int, *, exclude: Iterable[str] = (), like: Sequence[str] = (), seed: int = 0
) -> list[tuple[str, str]]:
    """K (question, answer) pairs from ``pool``, a fixed seeded sample (the same shots for every
    question), leaving out any whose question is one of the evaluated ones (no answer leaks).

    ``like``: the evaluated questions. The shots are then drawn from the training examples most
    like them (mean word overlap; the top tenth of the pool, at least 4·K), so that a dataset that
    mixes tasks — the bundled one keeps a fifth of plain chat — gives the prompting baseline
    examples of the task being measured, not an unrelated "What is 46 plus 44?"."""
    import random

    if k < 1:
        return []
    skip = set(exclude)
    candidates, seen = [], set()
    for ex in pool:
        pair = (ex.question, ex.reference)
        if ex.question and pair[0] not in skip and pair not in seen:
            seen.add(pair)
            candidates.append(pair)
    if len(candidates) < k:
        raise EvalError(f"--few-shot {k}: the few-shot data has only {len(candidates)} usable examples")
    targets = [_words(q) for q in like if q]
    if targets:

        def likeness(question: str) -> float:
            words = _words(question)
            return sum(len(words & t) / max(1, len(words | t)) for t in targets) / len(targets)

        keep = max(4 * k, math.ceil(len(candidates) / 10))
        candidates = sorted(candidates, key=lambda pair: -likeness(pair[0]))[:keep]  # stable: ties keep file order
    return random.Random(seed).sample(candidates, k)


def with_shots(example: Example, shots: Sequence[tuple[str, str]]) -> Example:
    """The example with the shots as (user, assistant) turn pairs before the question (after a
    system message, if the conversation starts with one)."""
    if not shots:
        return example
    if not isinstance(example.prompt, list):
        raise EvalError("--few-shot needs conversational data (messages): a plain-string prompt has no turns to add")
    turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]

    def insert(messages):
        at = 1 if messages and messages[0].get("role") == "system" else 0
        return [*messages[:at], *turns, *messages[at:]]

    row, fmt = _row_of(example)
    key = "messages" if fmt == "messages" else "prompt"
    return Example(
        prompt=insert(example.prompt), reference=example.reference, row={**row, key: insert(list(row[key]))}, fmt=fmt
    )


# -- prompts and generation -----------------------------------------------------------------------


# -- loss on the trained tokens --------------------------------------------------------------------


def loss_inputs(tokenizer, examples: Sequence[Example], *, shots: int = 0) -> list[tuple[list[int], list[bool]]]:
    """(input_ids, trained mask) per example, from :func:`tokenize_row` — the masks training uses.
    With ``shots`` turn pairs added in front, their answers are context, not scored."""
    from ..template.tokens import MASK_LAST_TURN, choose_mask_method, common_prefix, render_text, tokenize_row

    method = choose_mask_method(tokenizer)
    out = []
    for ex in examples:
        row, fmt = _row_of(ex)
        r = tokenize_row(tokenizer, row, fmt, method=method if fmt == "messages" else None)
        ids, mask = r.input_ids, [t.trained for t in r.tokens]
        if shots and fmt == "messages" and r.mask_source != MASK_LAST_TURN:
            msgs = [_clean(m) for m in row["messages"]]
            at = 1 if msgs and msgs[0].get("role") == "system" else 0
            prefix = render_text(tokenizer, msgs[: at + 2 * shots], chat_template=r.chat_template)
            cut = common_prefix(tokenizer(prefix, add_special_tokens=False)["input_ids"], ids)
            mask = [m and i >= cut for i, m in enumerate(mask)]
        out.append((ids, mask))
    return out


def trained_token_loss(
    model,
    tokenizer,
    encoded: Sequence[tuple[list[int], list[bool]]],
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[tuple[float, int]]:
    """(summed cross-entropy, token count) over each example's trained tokens: batched, right-padded,
    the label of position t predicted from the tokens before it, as in training."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # less padding per batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    for start in range(0, len(by_length), batch_size):
        chunk = by_length[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, i in enumerate(chunk):
            seq, mask = encoded[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, : len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask)], dtype=torch.long)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        targets = labels[:, 1:].to(device)
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        scored = targets != -100
        sums, counts = (ce * scored).sum(1).tolist(), scored.sum(1).tolist()
        for row, i in enumerate(chunk):
            out[i] = (float(sums[row]), int(counts[row]))
        if on_batch:
            on_batch(min(start + batch_size, len(encoded)), len(encoded))
    return out


# -- evaluating one model, then the comparison -----------------------------------------------------


def evaluate_model(
    model,
    tokenizer,
    examples: Sequence[Example],
    metrics: Sequence[Metric],
    *,
    label: str = TUNED,
    shots: Sequence[tuple[str, str]] = (),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    progress: Progress | None = None,
) -> EvalResult:
    """One model on the examples: loss (if asked), generated answers, per-example scores."""
    start = time.perf_counter()
    examples = [with_shots(e, shots) for e in examples]
    was_training = model.training
    model.eval()  # no dropout (LoRA's included) while scoring
    try:
        scores: dict[str, list[float]] = {}
        totals: dict[str, float] = {}
        if any(m.name in LOSS_METRICS for m in metrics):
            encoded = loss_inputs(tokenizer, examples, shots=len(shots))
            tick = (lambda d, t: progress(f"{label}: loss", d, t)) if progress else None
            if tick:  # the stage's clock starts now, not at its first batch's end (an ETA of 00:00)
                tick(0, len(encoded))
            sums = trained_token_loss(model, tokenizer, encoded, batch_size=min(batch_size, 8), on_batch=tick)
            per_example = [s / n if n else float("nan") for s, n in sums]
            total = sum(s for s, _ in sums) / max(1, sum(n for _, n in sums))
            scores["loss"], totals["loss"] = per_example, total
            scores["perplexity"] = [math.exp(v) if not math.isnan(v) else v for v in per_example]
            totals["perplexity"] = math.exp(total)
        answer_metrics = [m for m in metrics if m.name not in LOSS_METRICS]
        predictions = [""] * len(examples)
        ended: list[bool] = []
        if answer_metrics:
            tick = (lambda d, t: progress(f"{label}: generating", d, t)) if progress else None
            if tick:
                tick(0, len(examples))
            predictions = generate(
                model,
                tokenizer,
                [e.prompt for e in examples],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                temperature=temperature,
                top_p=top_p,
                on_batch=tick,
                ended=ended,
            )
            for m in answer_metrics:
                scores[m.name] = score(m, predictions, examples)
        ordered = {m.name: scores[m.name] for m in metrics}
    finally:
        model.train(was_training)
    return EvalResult(
        label=label,
        predictions=predictions,
        scores=ordered,
        seconds=time.perf_counter() - start,
        prompt_tokens=prompt_token_counts(tokenizer, [e.prompt for e in examples]),
        totals=totals,
        few_shot=len(shots),
        ended=ended,
    )


def run_evaluation(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    metrics: Sequence[str] | None = None,
    custom: Mapping[str, Metric] | None = None,
    baseline: bool = False,
    shots: Sequence[tuple[str, str]] = (),
    is_tuned: bool | None = None,
    load_base: Callable[[], Any] | None = None,
    progress: Progress | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> EvalReport:
    """What ``%sft_eval`` computes: the target (labelled ``tuned``, or ``model`` when it is a plain
    model — its own base), the base model with ``baseline``, and the base model prompted with
    ``shots`` (labelled ``few_shot``). ``is_tuned`` defaults to "has a LoRA adapter"."""
    if not examples:
        raise EvalError("no examples to evaluate")
    check_new_tokens("--max-new-tokens", max_new_tokens, context_length(model.config))
    chosen = select_metrics(metrics, examples, custom or {})
    is_tuned = has_adapter(model) if is_tuned is None else is_tuned
    if baseline and not is_tuned:
        raise EvalError(
            "--baseline base: the target is a plain model (no LoRA adapter, not a run), so it is "
            "the base model itself; evaluate a run or an adapter to compare with its base"
        )
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "temperature": temperature, "top_p": top_p}
    label = TUNED if is_tuned else MODEL
    report = EvalReport()
    report.eval_examples = list(examples)
    report.metrics = [m.name for m in chosen]
    report.higher_is_better = {m.name: m.higher_is_better for m in chosen}
    report.shots = list(shots)
    report.settings = {**gen, "few_shot": len(shots), "metrics": report.metrics}
    report[label] = evaluate_model(model, tokenizer, examples, chosen, label=label, progress=progress, **gen)
    if baseline or shots:
        with base_model(model, load_base if is_tuned else None) as base:
            if baseline:
                report[BASE] = evaluate_model(base, tokenizer, examples, chosen, label=BASE, progress=progress, **gen)
            if shots:
                report[FEW_SHOT] = evaluate_model(
                    base, tokenizer, examples, chosen, label=FEW_SHOT, shots=shots, progress=progress, **gen
                )
    return report


def evaluate_target(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    run_dir: Path | None,
    few_shot: int = 0,
    few_shot_pool: Callable[[str], Any] | None = None,
    few_shot_data: str | None = None,
    load_base: Callable[[str], Any] | None = None,
    baseline: bool = False,
    save: bool = True,
    settings: Mapping[str, Any] | None = None,
    **kwargs,
) -> EvalReport:
    """``%sft_eval`` end to end, without IPython: the few-shot shots (from ``few_shot_data``, else
    the run's training data, loaded with ``few_shot_pool(source)``; never one of the evaluated
    questions), the base model (a LoRA model's adapter switched off; a full fine-tune's base
    loaded with ``load_base(name)`` only when needed), the report, saved in ``<run>/eval/<time>/``."""
    shots = []
    if few_shot:
        pool = examples_from(few_shot_pool(few_shot_source(few_shot_data, run_dir)))
        shots = choose_shots(
            pool, few_shot, exclude={e.question for e in examples}, like=[e.question for e in examples]
        )
    base_name = (read_config(run_dir) if run_dir is not None else {}).get("model")
    report = run_evaluation(
        model,
        tokenizer,
        examples,
        baseline=baseline,
        shots=shots,
        is_tuned=run_dir is not None or has_adapter(model),
        load_base=(lambda: load_base(base_name)) if base_name and load_base else None,
        **kwargs,
    )
    report.settings.update(settings or {})
    if run_dir is not None and save:
        report.save(new_eval_folder(run_dir))
    return report


# -- runs ------------------------------------------------------------------------------------------


def few_shot_source(given: str | None, run_dir: Path | None) -> str:
    """``--few-shot-data``, else the run's training dataset (its config.yaml ``dataset``)."""
    if given:
        return given
    dataset = (read_config(run_dir) if run_dir is not None else {}).get("dataset")
    if run_dir is None:
        raise EvalError("--few-shot needs --few-shot-data SOURCE (the target is not a run, so it has no training data)")
    if not isinstance(dataset, str) or dataset.startswith("<"):
        raise EvalError(
            f"--few-shot: the run's config.yaml names no loadable dataset ({dataset!r}); give --few-shot-data SOURCE"
        )
    return dataset
