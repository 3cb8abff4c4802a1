"""Dataset statistics through the model's eyes: tokens and trained tokens per example, truncation,
duplicates, roles and turns, and what one epoch costs.

Speed: the texts are rendered with the chat template per row (strings only, through transformers'
sandboxed ``apply_chat_template``, many conversations per call), then tokenized in ONE batched call of
the fast (Rust) tokenizer, and the trained-token masks are derived from character spans with the same
rules as :func:`sft_magics.core.template.tokenize_row` (which stays the definition; rows this module
cannot do in batch go through it one by one). ``tests/core/template/test_stats.py`` checks, row by row, that both
give the same counts.

Counts per row are kept as token *ranges* of trained tokens, so the truncation questions (what would
``max_length`` cut?) are answered without tokenizing again: see :meth:`DataStats.at`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.types import CHUNK_ROWS, dataset_chunks
from .counts import _Counter, count_rows

__all__ = ["DataStats", "data_stats"]

DUPLICATE_GROUPS_KEPT = 10  # groups of duplicate rows whose indices are listed


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "min": ordered[0],
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
    }


@dataclass
class DataStats:
    """What the trainer will see, per example and in total. Row indices are *source* indices (the row
    numbers the problems use), also when invalid rows were left out."""

    rows: int
    format: str
    source_format: str
    total_tokens: list[int]  # tokens per example, before truncation
    trained_tokens: list[int]  # trained tokens per example that survive max_length (all of them without one)
    max_length: int | None
    truncated: int  # rows longer than max_length
    no_trained_left: int  # rows with no trained token left within max_length (TRL drops them silently)
    roles: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    template_drops: tuple[tuple[int, str], ...] = ()  # (row, what) the chat template leaves out
    trained_tokens_full: list[int] = field(default_factory=list)  # trained tokens per example, before truncation
    end_lost: int = 0  # rows whose answer end token is cut while trained tokens remain (trained on a cut answer)
    truncated_rows: list[int] = field(default_factory=list)
    no_trained_rows: list[int] = field(default_factory=list)
    end_lost_rows: list[int] = field(default_factory=list)
    duplicates: int = 0  # rows that repeat an earlier row exactly (after normalisation)
    duplicate_groups: list[list[int]] = field(default_factory=list)  # the first few groups, by source index
    duplicate_group_count: int = 0
    turns: list[int] = field(default_factory=list)  # assistant turns per conversation (conversational formats)
    messages_per_row: list[int] = field(default_factory=list)
    batch_size: int = 8
    grad_accum: int = 1
    problems: tuple = ()  # RowProblem of the rows left out (load_data(..., strict=False))
    invalid_rows: int = 0
    source_rows: int = 0  # rows in the source, valid or not
    row_index: tuple[int, ...] | None = None  # source index of each example (None: identity)
    mask_method: str = ""
    template_errors: tuple = ()  # RowProblem for rows the chat template could not render (left out of the counts)
    # Per example: trained-token ranges [(start, end), ...] and the position of the answer's end token.
    trained_ranges: list[tuple[tuple[int, int], ...]] = field(default_factory=list, repr=False)
    end_positions: list[int] = field(default_factory=list, repr=False)

    # -- summaries -----------------------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, float]]:
        keys = ["total_tokens", "trained_tokens"] + (["trained_tokens_full"] if self.max_length is not None else [])
        ok = self._counted()
        return {
            k: _summary([v for i, v in enumerate(getattr(self, k)) if i in ok] if ok is not None else getattr(self, k))
            for k in keys
        }

    def _counted(self) -> set[int] | None:
        """Positions of the rows that were counted (None: all of them)."""
        if not self.template_errors:
            return None
        failed = {p.row for p in self.template_errors}
        return {i for i in range(self.rows) if self.source_index(i) not in failed}

    def turns_summary(self) -> dict[str, float] | None:
        if not self.turns:
            return None
        return {"min": min(self.turns), "mean": statistics.fmean(self.turns), "max": max(self.turns)}

    def source_index(self, i: int) -> int:
        return i if self.row_index is None else self.row_index[i]

    # -- an epoch ------------------------------------------------------------------------------
    @property
    def rows_trained(self) -> int:
        """Rows the trainer keeps: TRL drops the ones with no trained token left after truncation."""
        return self.rows - (self.no_trained_left if self.max_length is not None else 0)

    def steps_per_epoch(
        self, batch_size: int | None = None, grad_accum: int | None = None, *, after_drops: bool = False
    ) -> int:
        """Optimizer steps per epoch as transformers' Trainer counts them (last partial batch and last
        partial accumulation included). ``after_drops``: count only the rows TRL keeps."""
        batch_size = batch_size or self.batch_size
        grad_accum = max(1, grad_accum or self.grad_accum)
        rows = self.rows_trained if after_drops else self.rows
        batches = math.ceil(rows / max(1, batch_size))
        return max(1, math.ceil(batches / grad_accum)) if rows else 0

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens the model reads in one epoch (truncated, no padding), over the rows TRL keeps."""
        cap = self.max_length
        return sum(
            t if cap is None else min(t, cap)
            for t, k in zip(self.total_tokens, self.trained_tokens)
            if k or cap is None
        )

    @property
    def trained_tokens_per_epoch(self) -> int:
        return sum(self.trained_tokens)

    # -- another max_length without tokenizing again ----------------------------------------------
    def at(self, max_length: int | None) -> DataStats:
        """The same statistics for another ``max_length`` (no tokenization: counts are kept as ranges)."""
        skip = set(range(self.rows)) - self._counted() if self.template_errors else set()
        t = _truncation(self.total_tokens, self.trained_ranges, self.end_positions, max_length, self.source_index, skip)
        return replace(self, max_length=max_length, **t)


# --------------------------------------------------------------------------- the rest


def _duplicates(digests: bytes, source_index) -> tuple[int, list[list[int]], int]:
    """Rows that repeat an earlier row exactly (after normalisation), found by their 16-byte digests
    (``LoadedData.row_digests``, computed once at load): extra rows, the first groups shown, groups."""
    from ..data.types import DIGEST_BYTES as n

    groups: dict[bytes, list[int]] = {}
    for k in range(len(digests) // n):
        groups.setdefault(digests[k * n : (k + 1) * n], []).append(k)
    repeated = [g for g in groups.values() if len(g) > 1]  # in order of each group's first row
    extra = sum(len(g) - 1 for g in repeated)
    shown = [[source_index(i) for i in g] for g in repeated[:DUPLICATE_GROUPS_KEPT]]
    return extra, shown, len(repeated)


def _truncation(totals, ranges, ends, max_length, source_index, skip=frozenset()) -> dict[str, Any]:
    full = [sum(b - a for a, b in r) for r in ranges]
    if max_length is None:
        no_trained = [i for i, k in enumerate(full) if k == 0 and i not in skip]
        return dict(
            trained_tokens=list(full),
            trained_tokens_full=full,
            truncated=0,
            truncated_rows=[],
            no_trained_left=len(no_trained),
            no_trained_rows=[source_index(i) for i in no_trained],
            end_lost=0,
            end_lost_rows=[],
        )
    cap = max_length
    kept = [sum(max(0, min(b, cap) - a) for a, b in r) for r in ranges]
    truncated = [i for i, t in enumerate(totals) if t > cap]
    no_trained = [i for i, k in enumerate(kept) if k == 0 and i not in skip]
    end_lost = [i for i, (k, e) in enumerate(zip(kept, ends)) if k > 0 and e >= cap]
    return dict(
        trained_tokens=kept,
        trained_tokens_full=full,
        truncated=len(truncated),
        truncated_rows=[source_index(i) for i in truncated],
        no_trained_left=len(no_trained),
        no_trained_rows=[source_index(i) for i in no_trained],
        end_lost=len(end_lost),
        end_lost_rows=[source_index(i) for i in end_lost],
    )


def _conversation(row: dict, fmt: str) -> list[dict]:
    if fmt == "messages":
        return row.get("messages") or []
    if fmt == "conversational_prompt_completion":
        return list(row.get("prompt") or []) + list(row.get("completion") or [])
    return []


def _template_drops(tokenizer, rows: list[dict], fmt: str, method, start: int, counter) -> list[tuple[int, str]]:
    """(position, what) of the rows whose messages' content (or tool calls) the chat template does not
    render, from one batched render of each conversation."""
    from .checks import dropped_messages
    from .counts import _render_many
    from .tokens import clean_messages

    if fmt != "messages":
        return []
    convs = [clean_messages(r["messages"]) for r in rows]
    texts = _render_many(
        tokenizer,
        convs,
        list(range(len(convs))),
        counter,
        add_generation_prompt=False,
        chat_template=method[1] if method else None,
    )
    out = []
    for i, (conv, text) in enumerate(zip(convs, texts)):
        if text is not None:
            dropped = dropped_messages(conv, text)
            if dropped:
                out.append((start + i, f"message {dropped[0][0]} {dropped[0][1]}"))
    return out


SAMPLE_HINT_ROWS = 100_000  # above this, %sft_data says that --sample gives a quicker look


# How the trained tokens are found in the formats that are not conversations.
_FORMAT_MASKS = {
    "text": "every token (plain text)",
    "prompt_completion": "completion only (prompt/completion rule)",
    "conversational_prompt_completion": "completion only (prompt/completion rule)",
}


def _drops_note(drops: list[tuple[int, str]]) -> tuple[str, ...]:
    """A note of the rows whose content the chat template drops, the first three named."""
    if not drops:
        return ()
    shown = "; ".join(f"row {i}: {what}" for i, what in drops[:3])
    return (
        f"the chat template drops content in {len(drops)} rows ({shown}{'; …' if len(drops) > 3 else ''}): "
        "the model never sees it and trains on what is left",
    )


def data_stats(
    data,
    tokenizer,
    max_length: int | None = None,
    *,
    batch_size: int = 8,
    grad_accum: int = 1,
    chunk: int = CHUNK_ROWS,
) -> DataStats:
    """Tokenize every row as the trainer will (batched) and count what is trained, what truncation to
    ``max_length`` cuts, duplicates, roles, turns, and the cost of an epoch at ``batch_size`` x ``grad_accum``.

    ``data`` is a :class:`~sft_magics.core.data.LoadedData`; with ``load_data(..., strict=False)`` the
    invalid rows it left out are reported in ``problems``. Rows are read ``chunk`` at a time and only
    small per-row numbers are kept (tokens, trained ranges; duplicates come from the rows' 16-byte digests,
    made once at load), so the
    statistics are exact for every row while memory stays bounded by the chunk, not the data.
    """
    from .tokens import choose_mask_method

    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    fmt = data.format
    method = choose_mask_method(tokenizer) if fmt == "messages" else None
    mask_method = _FORMAT_MASKS.get(fmt) or method[0]

    total: list[int] = []
    ranges: list[tuple] = []
    ends: list[int] = []
    errors: dict[int, str] = {}  # row position -> why the template could not render it
    roles: Counter[str] = Counter()
    turns, n_messages = [], []
    drops: list[tuple[int, str]] = []
    for start, rows in dataset_chunks(data.dataset, max(1, chunk)):
        counter = _Counter(len(rows), tokenizer, start=start, row_index=getattr(data, "row_index", None))
        count_rows(counter, tokenizer, rows, fmt, method)
        total += counter.total
        ranges += counter.ranges
        ends += counter.end
        errors.update((start + i, msg) for i, msg in counter.errors.items())
        for row in rows:
            conversation = _conversation(row, fmt)
            if conversation:
                roles.update(m["role"] for m in conversation)
                turns.append(sum(m["role"] == "assistant" for m in conversation))
                n_messages.append(len(conversation))
        drops += _template_drops(tokenizer, rows, fmt, method, start, counter)

    row_index = getattr(data, "row_index", None)
    source_index = (lambda i: i) if row_index is None else row_index.__getitem__
    n_duplicates, groups, n_groups = _duplicates(data.row_digests, source_index)
    from ..data.types import RowProblem

    template_errors = tuple(
        RowProblem(source_index(i), "<template>", f"the chat template could not render this row: {msg}")
        for i, msg in sorted(errors.items())
    )
    problems = tuple(getattr(data, "problems", ()) or ())
    invalid = len({p.row for p in problems})
    drops = [(source_index(i), what) for i, what in drops]
    notes = tuple(data.notes) + _drops_note(drops)
    return DataStats(
        rows=len(total),
        format=fmt,
        source_format=data.source_format,
        total_tokens=total,
        max_length=max_length,
        roles=dict(sorted(roles.items())),
        notes=notes,
        template_drops=tuple(drops),
        duplicates=n_duplicates,
        duplicate_groups=groups,
        duplicate_group_count=n_groups,
        turns=turns,
        messages_per_row=n_messages,
        batch_size=batch_size,
        grad_accum=grad_accum,
        problems=problems,
        invalid_rows=invalid,
        source_rows=(getattr(data, "sampled_from", None) or len(total)) + invalid,
        row_index=row_index,
        mask_method=mask_method,
        template_errors=template_errors,
        trained_ranges=ranges,
        end_positions=ends,
        **_truncation(total, ranges, ends, max_length, source_index, set(errors)),
    )


# --------------------------------------------------------------------------- the histogram
