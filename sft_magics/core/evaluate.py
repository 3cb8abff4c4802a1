"""Evaluating a model on a validation set: loss on the trained tokens, generated answers, scores.

Read top to bottom, :func:`run_evaluation` does what ``%sft_eval`` does:

1. the target model: loss and perplexity on the tokens training trains on (the masks come from
   :func:`core.template.tokenize_row`, the function the trainer uses), then answers generated for
   every prompt and scored with each metric;
2. optionally the base model (a LoRA model with its adapter disabled: the same weights, no copy);
3. optionally the base model prompted with K training examples (the prompting baseline), so the
   table shows what fine-tuning bought over prompting, and at what prompt-token cost.

Generation is batched and left-padded, greedy by default, and stops on the model's own stop tokens
(its generation config's ``eos_token_id``), so a batch of 16 costs about what one example does.
Nothing here draws anything: progress goes to a callback ``progress(stage, done, total)``.
"""

from __future__ import annotations

from .errors import SftError

import contextlib
import difflib
import json
import math
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

Progress = Callable[[str, int, int], None]

# Labels of the models in a report (also the prefixes of the per-example DataFrame's columns).
TUNED, BASE, FEW_SHOT, MODEL = "tuned", "base", "few_shot", "model"


class EvalError(SftError, ValueError):
    """A user-facing evaluation problem (bad metric name, no few-shot data, ...); one line."""


@dataclass(frozen=True)
class Example:
    prompt: Any  # list of messages (conversational) or a string
    reference: str
    # The normalised dataset row and its format, so the loss sees exactly what training saw.
    row: dict | None = field(default=None, compare=False, hash=False)
    fmt: str = field(default="", compare=False, hash=False)

    @property
    def question(self) -> str:
        """The prompt's last user message (the whole prompt for a plain string)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return next((m.get("content") or "" for m in reversed(self.prompt) if m.get("role") == "user"), "")


@dataclass
class EvalResult:
    label: str
    predictions: list[str]
    scores: dict[str, list[float]]
    seconds: float
    prompt_tokens: list[int] = field(default_factory=list)
    # Corpus-level values that are not the mean of the per-example ones (loss: token-weighted).
    totals: dict[str, float] = field(default_factory=dict)
    few_shot: int = 0

    def mean(self, metric: str) -> float:
        if metric in self.totals:
            return self.totals[metric]
        values = [v for v in self.scores[metric] if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {name: self.mean(name) for name in self.scores}

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / len(self.prompt_tokens) if self.prompt_tokens else float("nan")


class EvalReport(dict):
    """{label: EvalResult} — ``report["tuned"].summary()`` is {metric: mean} — plus the tables:

    - ``.summary``: {metric: {label: value}} (loss is token-weighted, perplexity = exp(loss));
    - ``.examples``: a pandas DataFrame, one row per example: ``prompt`` (the last user message),
      ``reference``, ``<label>_answer`` and ``<label>_<metric>`` for every model;
    - ``.prompt_tokens``: {label: mean prompt tokens per request} (few-shot prompts cost more);
    - ``.deltas()``: {metric: {label: value - the base model's value}}.

    It is what ``%sft_eval -o`` returns.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_examples: list[Example] = []
        self.metrics: list[str] = []  # in table order
        self.higher_is_better: dict[str, bool] = {}
        self.shots: list[tuple[str, str]] = []
        self.settings: dict[str, Any] = {}
        self.saved_to: Path | None = None
        self._frame = None

    def __repr__(self) -> str:
        shown = [m for m in (self.primary_metric, "loss") if m]
        parts = [f"{label}: " + ", ".join(f"{m} {r.mean(m):.3f}" for m in dict.fromkeys(shown) if m in r.scores)
                 for label, r in self.items()]
        saved = f"; saved to {self.saved_to}" if self.saved_to else ""
        n = len(self.eval_examples) or len(next(iter(self.values())).predictions) if self else 0
        return f"<EvalReport {n} examples · " + " | ".join(parts) + saved + ">"

    def _metric_names(self) -> list[str]:
        if self.metrics:
            return list(self.metrics)
        return list(next(iter(self.values())).scores) if self else []

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return {m: {label: r.mean(m) for label, r in self.items() if m in r.scores} for m in self._metric_names()}

    @property
    def prompt_tokens(self) -> dict[str, float]:
        return {label: r.mean_prompt_tokens for label, r in self.items()}

    @property
    def reference_label(self) -> str | None:
        """The model the deltas are taken against: the base model when there is one."""
        return BASE if BASE in self else (MODEL if MODEL in self else None)

    def deltas(self) -> dict[str, dict[str, float]]:
        ref = self.reference_label
        if ref is None:
            return {}
        return {m: {label: v - values[ref] for label, v in values.items() if label != ref}
                for m, values in self.summary.items() if ref in values}

    def higher_better(self, metric: str) -> bool:
        return self.higher_is_better.get(metric, METRICS[metric].higher_is_better if metric in METRICS else True)

    def records(self) -> list[dict]:
        """One dict per example (what ``examples.jsonl`` holds, and the DataFrame's rows)."""
        rows = []
        for i, ex in enumerate(self.eval_examples):
            row = {"prompt": ex.question, "reference": ex.reference}
            for label, r in self.items():
                row[f"{label}_answer"] = r.predictions[i]
                for m in self._metric_names():
                    if m in r.scores:
                        row[f"{label}_{m}"] = r.scores[m][i]
            rows.append(row)
        return rows

    @property
    def examples(self):
        import pandas as pd

        if self._frame is None:
            self._frame = pd.DataFrame(self.records())
        return self._frame

    def order(self, metric: str | None, label: str | None = None) -> list[int]:
        """Example indices, worst first by ``metric`` for model ``label`` (default: the first model);
        ``metric=None`` keeps the original order. Examples without a score (NaN) come last."""
        n = len(self.eval_examples)
        if metric is None or not self:
            return list(range(n))
        result = self[label or next(iter(self))]
        values = result.scores[metric]
        sign = 1 if self.higher_better(metric) else -1
        return sorted(range(n), key=lambda i: (math.isnan(values[i]), sign * values[i] if not math.isnan(values[i]) else 0, i))

    @property
    def primary_metric(self) -> str | None:
        """The metric the "worst examples" are chosen by: the task's own score first."""
        names = self._metric_names()
        for m in ("json_match", "exact_match", "token_f1", "rouge_l", "chrf", "bleu"):
            if m in names:
                return m
        return names[0] if names else None

    def save(self, folder: str | Path) -> Path:
        """Write ``summary.json`` and ``examples.jsonl`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        summary = {
            "examples": len(self.eval_examples),
            "models": list(self),
            "metrics": _json_safe(self.summary),
            "deltas": _json_safe(self.deltas()),
            "reference_model": self.reference_label,
            "prompt_tokens": _json_safe(self.prompt_tokens),
            "seconds": {label: round(r.seconds, 3) for label, r in self.items()},
            "settings": _json_safe(self.settings),
            "few_shot": [{"user": q, "assistant": a} for q, a in self.shots],
        }
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        with (folder / "examples.jsonl").open("w") as f:
            for ex, record in zip(self.eval_examples, self.records()):
                record = {"messages": ex.prompt if isinstance(ex.prompt, list) else None, **record}
                f.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
        self.saved_to = folder
        return folder


def _json_safe(value):
    """NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- data -------------------------------------------------------------------------------------------


def examples_from(data) -> list[Example]:
    """Prompt and reference per row of a normalised dataset (see core.data.LoadedData)."""
    out = []
    for row in data.dataset:
        row = dict(row)
        if data.format == "messages":
            msgs = row["messages"]
            out.append(Example(prompt=[_clean(m) for m in msgs[:-1]], reference=msgs[-1]["content"], row=row, fmt=data.format))
        elif data.format == "conversational_prompt_completion":
            out.append(Example(prompt=[_clean(m) for m in row["prompt"]], reference=row["completion"][-1]["content"], row=row, fmt=data.format))
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


def choose_shots(pool: Sequence[Example], k: int, *, exclude: Iterable[str] = (), like: Sequence[str] = (),
                 seed: int = 0) -> list[tuple[str, str]]:
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
    return Example(prompt=insert(example.prompt), reference=example.reference, row={**row, key: insert(list(row[key]))}, fmt=fmt)


# -- prompts and generation -----------------------------------------------------------------------


def render_prompts(tokenizer, prompts: Sequence[Any]) -> list[str]:
    """The exact text the model is asked to continue: its own chat template plus the generation prompt."""
    from .template import apply_chat_template

    return [
        apply_chat_template(tokenizer, p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]


def prompt_token_counts(tokenizer, prompts: Sequence[Any]) -> list[int]:
    """Tokens per request, as the model receives them."""
    texts = render_prompts(tokenizer, prompts)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


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
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # tokenized once
    # Batches of similar length waste less on padding; answers go back in the prompts' order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    for start in range(0, len(encoded), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        # Left padding, so every prompt ends right where generation starts.
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens, eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id, **sampling
            )
        for i, text in zip(chunk, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
            answers[i] = text.strip()
        if on_batch:
            on_batch(min(start + batch_size, len(encoded)), len(encoded))
    return answers


# -- loss on the trained tokens --------------------------------------------------------------------


def loss_inputs(tokenizer, examples: Sequence[Example], *, shots: int = 0) -> list[tuple[list[int], list[bool]]]:
    """(input_ids, trained mask) per example, from :func:`tokenize_row` — the masks training uses.
    With ``shots`` turn pairs added in front, their answers are context, not scored."""
    from .template import MASK_LAST_TURN, _common_prefix, _render, choose_mask_method, tokenize_row

    method = choose_mask_method(tokenizer)
    out = []
    for ex in examples:
        row, fmt = _row_of(ex)
        r = tokenize_row(tokenizer, row, fmt, method=method if fmt == "messages" else None)
        ids, mask = r.input_ids, [t.trained for t in r.tokens]
        if shots and fmt == "messages" and r.mask_source != MASK_LAST_TURN:
            msgs = [_clean(m) for m in row["messages"]]
            at = 1 if msgs and msgs[0].get("role") == "system" else 0
            prefix = _render(tokenizer, msgs[: at + 2 * shots], chat_template=r.chat_template)
            cut = _common_prefix(tokenizer(prefix, add_special_tokens=False)["input_ids"], ids)
            mask = [m and i >= cut for i, m in enumerate(mask)]
        out.append((ids, mask))
    return out


def trained_token_loss(
    model, tokenizer, encoded: Sequence[tuple[list[int], list[bool]]], *, batch_size: int = 8,
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


# -- metrics ---------------------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a/an/the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the normalised bags of words (1.0 when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), by Google's ``rouge-score``
    (its tokenizer lower-cases and keeps only letters and digits; no stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU by ``sacrebleu`` (its defaults: 13a tokenizer, exp smoothing), as a fraction
    (sacrebleu's 0–100 score / 100)."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(prediction, [reference]).score / 100)


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (character n-grams up to 6, beta 2) by ``sacrebleu``, as a fraction."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_chrf(prediction, [reference]).score / 100)


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


def _always(examples: Sequence[Example]) -> bool:
    return True


def _json_references(examples: Sequence[Example]) -> bool:
    """JSON metrics apply when every reference is a JSON object or array."""
    return bool(examples) and all(isinstance(_parse_json(e.reference), (dict, list)) for e in examples)


@dataclass(frozen=True)
class Metric:
    """A registered metric. ``fn(prediction, reference) -> float`` scores one generated answer;
    ``fn=None`` marks a metric computed from the forward pass (loss, perplexity)."""

    name: str
    fn: Callable[[str, str], float] | None
    higher_is_better: bool = True
    applies: Callable[[Sequence[Example]], bool] = _always  # part of "all that apply"
    description: str = ""

    def __call__(self, prediction: str, reference: str) -> float:
        if self.fn is None:
            raise TypeError(f"{self.name} is computed from the model's forward pass, not from an answer")
        return float(self.fn(prediction, reference))


METRICS: dict[str, Metric] = {}


def register_metric(name: str, fn: Callable[[str, str], float] | None, *, higher_is_better: bool = True,
                    applies: Callable[[Sequence[Example]], bool] = _always, description: str = "") -> Metric:
    """Add a metric to the registry (``%sft_eval --metrics NAME`` can then select it)."""
    METRICS[name] = Metric(name, fn, higher_is_better, applies, description)
    return METRICS[name]


LOSS_METRICS = ("loss", "perplexity")
register_metric("loss", None, higher_is_better=False, description="cross-entropy on the trained tokens (token-weighted mean)")
register_metric("perplexity", None, higher_is_better=False, description="exp(loss)")
register_metric("exact_match", exact_match, description="answer == reference (surrounding whitespace ignored)")
register_metric("token_f1", token_f1, description="SQuAD-style bag-of-words F1")
register_metric("rouge_l", rouge_l, description="ROUGE-L F-measure (rouge-score)")
register_metric("bleu", bleu, description="sentence BLEU / 100 (sacrebleu)")
register_metric("chrf", chrf, description="sentence chrF / 100 (sacrebleu)")
register_metric("json_valid", json_valid, applies=_json_references, description="the answer parses as JSON")
register_metric("json_match", json_match, applies=_json_references, description="same JSON value as the reference")
register_metric("json_fields", json_fields, applies=_json_references, description="share of the reference's fields answered exactly")


def parse_metric_names(text: str | None) -> list[str] | None:
    """``"loss,json_match"`` -> the names, checked against the registry (None: all that apply)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise EvalError("--metrics: give at least one metric name")
    for n in names:
        if n not in METRICS:
            close = difflib.get_close_matches(n, list(METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(METRICS)}"
            raise EvalError(f"--metrics: unknown metric '{n}'{hint}")
    return list(dict.fromkeys(names))


def custom_metrics(names: Iterable[str], namespace: Mapping[str, Any]) -> dict[str, Metric]:
    """``--metric NAME``: notebook functions ``f(prediction, reference) -> float``."""
    out = {}
    for name in names:
        if name not in namespace:
            raise EvalError(f"--metric {name}: no notebook variable named '{name}' (define f(prediction, reference) -> float)")
        fn = namespace[name]
        if not callable(fn):
            raise EvalError(f"--metric {name}: '{name}' is a {type(fn).__name__}, not a function f(prediction, reference) -> float")
        out[name] = Metric(name, fn, description="custom")
    return out


def select_metrics(names: Sequence[str] | None, examples: Sequence[Example], custom: Mapping[str, Metric] = ()) -> list[Metric]:
    """The metrics to compute, in registry order: the named ones, or all that apply; custom ones last."""
    chosen = [METRICS[n] for n in names] if names is not None else [m for m in METRICS.values() if m.applies(examples)]
    custom = dict(custom or {})
    return [m for m in chosen if m.name not in custom] + list(custom.values())


def score(metric: Metric, predictions: Sequence[str], examples: Sequence[Example]) -> list[float]:
    values = []
    for i, (p, e) in enumerate(zip(predictions, examples)):
        try:
            value = metric.fn(p, e.reference)
        except Exception as err:  # noqa: BLE001 - a user's metric: report which example, in one line
            raise EvalError(f"metric '{metric.name}' raised on example {i}: {type(err).__name__}: {' '.join(str(err).split())}") from None
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise EvalError(f"metric '{metric.name}' returned {type(value).__name__} on example {i}; expected a number") from None
    return values


# -- evaluating one model, then the comparison -----------------------------------------------------


def evaluate_model(
    model, tokenizer, examples: Sequence[Example], metrics: Sequence[Metric], *, label: str = TUNED,
    shots: Sequence[tuple[str, str]] = (), max_new_tokens: int = 64, batch_size: int = 16,
    temperature: float = 0.0, top_p: float = 1.0, progress: Progress | None = None,
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
            sums = trained_token_loss(model, tokenizer, encoded, batch_size=min(batch_size, 8), on_batch=tick)
            per_example = [s / n if n else float("nan") for s, n in sums]
            total = sum(s for s, _ in sums) / max(1, sum(n for _, n in sums))
            scores["loss"], totals["loss"] = per_example, total
            scores["perplexity"] = [math.exp(v) if not math.isnan(v) else v for v in per_example]
            totals["perplexity"] = math.exp(total)
        answer_metrics = [m for m in metrics if m.name not in LOSS_METRICS]
        predictions = [""] * len(examples)
        if answer_metrics:
            tick = (lambda d, t: progress(f"{label}: generating", d, t)) if progress else None
            predictions = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, temperature=temperature, top_p=top_p, on_batch=tick)
            for m in answer_metrics:
                scores[m.name] = score(m, predictions, examples)
        ordered = {m.name: scores[m.name] for m in metrics}
    finally:
        model.train(was_training)
    return EvalResult(label=label, predictions=predictions, scores=ordered, seconds=time.perf_counter() - start,
                      prompt_tokens=prompt_token_counts(tokenizer, [e.prompt for e in examples]),
                      totals=totals, few_shot=len(shots))


def evaluate_generations(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    label: str = "model",
    metrics: Iterable[str] = ("exact_match", "json_valid", "json_match", "json_fields"),
    **gen_kwargs,
) -> EvalResult:
    """Generated answers scored with registered metrics (kept for scripts; see :func:`run_evaluation`)."""
    return evaluate_model(model, tokenizer, examples, [METRICS[m] for m in metrics], label=label, **gen_kwargs)


def has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model's behaviour from a PEFT model, without a second copy in memory."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


@contextlib.contextmanager
def base_model(model, load_base: Callable[[], Any] | None = None):
    """The base model: the LoRA model with its adapter disabled, else (a fully fine-tuned run) the
    model ``load_base()`` loads, else the model itself (it is its own base)."""
    if has_adapter(model):
        with adapter_disabled(model) as m:
            yield m
    elif load_base is not None:
        loaded = load_base()
        try:
            yield getattr(loaded, "model", loaded)
        finally:
            del loaded
    else:
        yield model


def run_evaluation(
    model, tokenizer, examples: Sequence[Example], *, metrics: Sequence[str] | None = None,
    custom: Mapping[str, Metric] | None = None, baseline: bool = False, shots: Sequence[tuple[str, str]] = (),
    is_tuned: bool | None = None, load_base: Callable[[], Any] | None = None, progress: Progress | None = None,
    max_new_tokens: int = 64, batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0,
) -> EvalReport:
    """What ``%sft_eval`` computes: the target (labelled ``tuned``, or ``model`` when it is a plain
    model — its own base), the base model with ``baseline``, and the base model prompted with
    ``shots`` (labelled ``few_shot``). ``is_tuned`` defaults to "has a LoRA adapter"."""
    if not examples:
        raise EvalError("no examples to evaluate")
    chosen = select_metrics(metrics, examples, custom or {})
    is_tuned = has_adapter(model) if is_tuned is None else is_tuned
    if baseline and not is_tuned:
        raise EvalError("--baseline base: the target is a plain model (no LoRA adapter, not a run), so it is "
                        "the base model itself; evaluate a run or an adapter to compare with its base")
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
                report[FEW_SHOT] = evaluate_model(base, tokenizer, examples, chosen, label=FEW_SHOT, shots=shots,
                                                  progress=progress, **gen)
    return report


# -- runs ------------------------------------------------------------------------------------------


def run_folder(target: str, value: Any, output_dir: str | Path) -> Path | None:
    """The run folder behind ``%sft_eval TARGET`` (a run result variable, a run name, or a run's
    ``final/`` folder), or None when the target is not a run."""
    from .runs import model_location

    path = getattr(value, "path", None)
    if path is not None and type(value).__name__ == "TrainResult":
        return Path(path)
    if value is None:
        model_location(target, output_dir)  # a run that has no final model says so here
    named = Path(output_dir) / target
    if (named / "final").is_dir():
        return named
    given = Path(target).expanduser()
    if given.name == "final" and (given.parent / "config.yaml").is_file():
        return given.parent
    return None


def run_config(run_dir: Path | None) -> dict:
    import yaml

    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return {}
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}


def few_shot_source(given: str | None, run_dir: Path | None) -> str:
    """``--few-shot-data``, else the run's training dataset (its config.yaml ``dataset``)."""
    if given:
        return given
    dataset = run_config(run_dir).get("dataset")
    if run_dir is None:
        raise EvalError("--few-shot needs --few-shot-data SOURCE (the target is not a run, so it has no training data)")
    if not isinstance(dataset, str) or dataset.startswith("<"):
        raise EvalError(f"--few-shot: the run's config.yaml names no loadable dataset ({dataset!r}); give --few-shot-data SOURCE")
    return dataset


def new_eval_folder(run_dir: Path) -> Path:
    """``<run>/eval/<timestamp>/`` (a suffix when two evaluations start in the same second)."""
    base = Path(run_dir) / "eval" / time.strftime("%Y%m%d-%H%M%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def check_settings(*, max_new_tokens: int, batch_size: int, limit: int | None, few_shot: int, temperature: float, top_p: float) -> None:
    """The numeric flags of ``%sft_eval``, checked before anything loads."""
    for flag, value, low in (("--max-new-tokens", max_new_tokens, 1), ("--batch-size", batch_size, 1),
                             ("--limit", limit, 1), ("--few-shot", few_shot, 0)):
        if value is not None and value < low:
            raise EvalError(f"{flag} must be at least {low}, got {value}")
    if temperature < 0:
        raise EvalError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        raise EvalError(f"--top-p must be in (0, 1], got {top_p}")
