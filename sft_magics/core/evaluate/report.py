"""What an evaluation produces: the evaluated :class:`Example` s, one :class:`EvalResult` per model
(answers, per-example scores, time, prompt tokens), and the :class:`EvalReport` that compares them
(summary, deltas, per-example DataFrame, worst-first order) and saves itself to a folder."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .example import Example
from .metrics import METRICS

# Labels of the models in a report (also the prefixes of the per-example DataFrame's columns).
TUNED, BASE, FEW_SHOT, MODEL = "tuned", "base", "few_shot", "model"


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
    ended: list[bool] = field(default_factory=list)  # per answer: ended on a stop token (not max_new_tokens)

    def mean(self, metric: str) -> float:
        if metric in self.totals:
            return self.totals[metric]
        values = [v for v in self.scores[metric] if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {name: self.mean(name) for name in self.scores}

    @property
    def generated(self) -> bool:
        return bool(self.ended)  # filled per answer when answers were generated (not for loss alone)

    @property
    def empty_answers(self) -> int:
        """Answers that are empty or only whitespace (the training dashboard counts them the same way)."""
        return sum(not p.strip() for p in self.predictions) if self.generated else 0

    @property
    def never_ended(self) -> int:
        """Answers cut by max_new_tokens, not ended on a stop token."""
        return sum(not e for e in self.ended)

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
        parts = [
            f"{label}: " + ", ".join(f"{m} {r.mean(m):.3f}" for m in dict.fromkeys(shown) if m in r.scores)
            for label, r in self.items()
        ]
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
        return {
            m: {label: v - values[ref] for label, v in values.items() if label != ref}
            for m, values in self.summary.items()
            if ref in values
        }

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
        return sorted(
            range(n), key=lambda i: (math.isnan(values[i]), sign * values[i] if not math.isnan(values[i]) else 0, i)
        )

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
