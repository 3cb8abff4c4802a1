"""The metric registry: what ``%sft_eval --metrics`` (and evaluation during training) can score.

A metric is ``fn(prediction, reference) -> float`` (or ``fn=None`` for the ones computed from the
forward pass: loss, perplexity); :func:`register_metric` adds one, notebook functions join per
call through :func:`custom_metrics`. Library implementations where the field has a reference one
(ROUGE-L: Google's ``rouge-score``; BLEU and chrF: ``sacrebleu``)."""

from __future__ import annotations

import difflib
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EvalError, one_line

if TYPE_CHECKING:
    from .example import Example


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


def register_metric(
    name: str,
    fn: Callable[[str, str], float] | None,
    *,
    higher_is_better: bool = True,
    applies: Callable[[Sequence[Example]], bool] = _always,
    description: str = "",
) -> Metric:
    """Add a metric to the registry (``%sft_eval --metrics NAME`` can then select it)."""
    METRICS[name] = Metric(name, fn, higher_is_better, applies, description)
    return METRICS[name]


LOSS_METRICS = ("loss", "perplexity")
register_metric(
    "loss", None, higher_is_better=False, description="cross-entropy on the trained tokens (token-weighted mean)"
)
register_metric("perplexity", None, higher_is_better=False, description="exp(loss)")
register_metric("exact_match", exact_match, description="answer == reference (surrounding whitespace ignored)")
register_metric("token_f1", token_f1, description="SQuAD-style bag-of-words F1")
register_metric("rouge_l", rouge_l, description="ROUGE-L F-measure (rouge-score)")
register_metric("bleu", bleu, description="sentence BLEU / 100 (sacrebleu)")
register_metric("chrf", chrf, description="sentence chrF / 100 (sacrebleu)")
register_metric("json_valid", json_valid, applies=_json_references, description="the answer parses as JSON")
register_metric("json_match", json_match, applies=_json_references, description="same JSON value as the reference")
register_metric(
    "json_fields", json_fields, applies=_json_references, description="share of the reference's fields answered exactly"
)


BUILTIN_METRICS = frozenset(METRICS)  # what every process has, a background worker included


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
            raise EvalError(
                f"--metric {name}: no notebook variable named '{name}' (define f(prediction, reference) -> float)"
            )
        fn = namespace[name]
        if not callable(fn):
            raise EvalError(
                f"--metric {name}: '{name}' is a {type(fn).__name__}, not a function f(prediction, reference) -> float"
            )
        out[name] = Metric(name, fn, description="custom")
    return out


def select_metrics(
    names: Sequence[str] | None, examples: Sequence[Example], custom: Mapping[str, Metric] = ()
) -> list[Metric]:
    """The metrics to compute, in registry order: the named ones, or all that apply; custom ones last."""
    chosen = [METRICS[n] for n in names] if names is not None else [m for m in METRICS.values() if m.applies(examples)]
    custom = dict(custom or {})
    return [m for m in chosen if m.name not in custom] + list(custom.values())


def score(metric: Metric, predictions: Sequence[str], examples: Sequence[Example]) -> list[float]:
    values = []
    for i, (p, e) in enumerate(zip(predictions, examples)):
        try:
            value = metric.fn(p, e.reference)
        except Exception as err:
            raise EvalError(
                f"metric '{metric.name}' raised on example {i}: {one_line(err, None, named=True)}"
            ) from None
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise EvalError(
                f"metric '{metric.name}' returned {type(value).__name__} on example {i}; expected a number"
            ) from None
    return values
