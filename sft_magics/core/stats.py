"""Dataset statistics through the model's eyes: tokens per example, trained tokens, truncation."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "mean": statistics.fmean(ordered), "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


@dataclass
class DataStats:
    rows: int
    format: str
    source_format: str
    total_tokens: list[int]
    trained_tokens: list[int]
    max_length: int | None
    truncated: int  # rows longer than max_length
    no_trained_left: int  # rows whose trained tokens all fall beyond max_length (TRL drops them)
    roles: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, dict[str, float]]:
        return {"total_tokens": _summary(self.total_tokens), "trained_tokens": _summary(self.trained_tokens)}

    def steps_per_epoch(self, batch_size: int, grad_accum: int = 1) -> int:
        return max(1, math.ceil(self.rows / batch_size / max(1, grad_accum)))


def data_stats(data, tokenizer, max_length: int | None = None) -> DataStats:
    """Tokenize every row as the trainer will and count what is trained and what truncation cuts."""
    from .template import prompt_completion_ids

    totals, trained = [], []
    truncated = no_trained = 0
    roles: Counter[str] = Counter()
    for row in data.dataset:
        ids, start = prompt_completion_ids(tokenizer, row, data.format)
        totals.append(len(ids))
        kept = len(ids) if max_length is None else min(len(ids), max_length)
        trained.append(max(0, kept - start))
        if max_length is not None and len(ids) > max_length:
            truncated += 1
            no_trained += kept <= start
        for m in row.get("messages") or []:
            roles[m["role"]] += 1
    return DataStats(
        rows=len(totals),
        format=data.format,
        source_format=data.source_format,
        total_tokens=totals,
        trained_tokens=trained,
        max_length=max_length,
        truncated=truncated,
        no_trained_left=no_trained,
        roles=dict(roles),
        notes=tuple(data.notes),
    )
