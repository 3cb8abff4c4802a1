"""Watching the model learn: at each evaluation during training, answers generated for the eval
prompts (all of them, or a fixed seeded sample) and scored with ``%sft_eval``'s metric registry
through the same function, :func:`core.evaluate.evaluation.evaluate_model` — so the numbers equal a later
``%sft_eval`` of that checkpoint. The scores join the trainer's eval metrics (``eval_json_match``,
...), which is what lets transformers' own ``metric_for_best_model`` / ``load_best_model_at_end`` /
``EarlyStoppingCallback`` keep the best checkpoint and stop a run whose metric has plateaued.

Keys of a ``%%sft_train`` cell (transformers' style of names):

- ``eval_generate``: ``false`` | ``true`` (every eval row) | ``N`` (a fixed seeded sample of N rows,
  the same at every evaluation). Unset: ``8`` for an eval set of at most 64 rows, watched by default
  (core/train/watch_plan.py; it keeps no checkpoint by its metric), else ``false`` (generation costs time);
- ``eval_metrics``: registry names or notebook functions ``f(prediction, reference)`` (default: every
  registry metric that applies to the references, as ``%sft_eval``);
- ``eval_max_new_tokens``: the answer length limit (64, as ``%sft_eval``);
- ``early_stopping_patience`` / ``early_stopping_threshold``: transformers' ``EarlyStoppingCallback``.

Each evaluation emits an ``answers`` event (recorded in ``metrics.jsonl``): the scores, how many
answers never ended or were empty, every answer (the first :data:`RECORDED_ROWS`), and
:data:`SHOWN` samples with the answer at the previous evaluation, for the dashboards' panel.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, EvalError, one_line
from ..events import Event, Sink

WATCH_KEYS = (
    "eval_generate",
    "eval_metrics",
    "eval_max_new_tokens",
    "early_stopping_patience",
    "early_stopping_threshold",
)
SHOWN = 3  # sample answers shown in the dashboards' panel (the same rows at every evaluation)
RECORDED_ROWS = 100  # answers kept per evaluation in metrics.jsonl
MAX_CHARS = 2000  # per recorded text


@dataclass(frozen=True)
class Watch:
    """The resolved keys: which rows to generate for, which metrics, the length limit, early stopping."""

    generate: bool  # answers generated and scored at each evaluation
    sample: int | None = None  # None: every eval row
    metrics: tuple[str, ...] | None = None  # None: every registry metric that applies
    max_new_tokens: int = 64
    patience: int | None = None
    threshold: float = 0.0
    watched: str | None = None  # the metric the dashboards follow (and best/early stopping use)
    by_default: bool = False  # not asked for: a small eval set is watched unless eval_generate is false


class AnswerWatch:
    """Generates and scores answers for the watched eval rows; called at every evaluation."""

    def __init__(self, watch: Watch, eval_data, *, namespace: Mapping | None = None, seed: int = 42):
        from ..evaluate.evaluation import examples_from
        from ..evaluate.metrics import LOSS_METRICS, METRICS, custom_metrics, select_metrics

        examples = examples_from(eval_data)
        if watch.sample and watch.sample < len(examples):
            keep = sorted(random.Random(seed).sample(range(len(examples)), watch.sample))
            examples = [examples[i] for i in keep]
        names = list(watch.metrics) if watch.metrics else None
        try:
            custom = custom_metrics([n for n in names or [] if n not in METRICS], namespace or {})
        except EvalError as err:
            raise ConfigError(f"key 'eval_metrics': {str(err).split(': ', 1)[-1]}") from None
        registry = [n for n in names if n in METRICS] if names else None
        self.metrics = [m for m in select_metrics(registry, examples, custom) if m.name not in LOSS_METRICS]
        if watch.watched in METRICS and watch.watched not in [m.name for m in self.metrics]:
            self.metrics.append(METRICS[watch.watched])  # followed (metric_for_best_model) even where it does not apply
        if not self.metrics:
            raise ConfigError("eval_generate: no metric applies to these references; name one in eval_metrics")
        self.watch, self.examples = watch, examples
        self.watched = watch.watched or self.metrics[0].name
        followed = METRICS.get(self.watched)
        self.greater_is_better = True if followed is None else followed.higher_is_better
        self.previous: list[str] | None = None
        self.stopped: str | None = None  # why a default watch gave up (its run goes on)
        for m in custom.values():  # a notebook function that fails says so now, not halfway through the run
            _probe(m, examples[0].reference if examples else "")

    def describe(self) -> dict[str, Any]:
        """What the ``started`` event says about it (the dashboards' metric curve follows ``metric``)."""
        return {
            "metric": self.watched,
            "greater_is_better": self.greater_is_better,
            "metrics": [m.name for m in self.metrics],
            "rows": len(self.examples),
            "max_new_tokens": self.watch.max_new_tokens,
            "early_stopping_patience": self.watch.patience,
            "by_default": self.watch.by_default,
        }

    def __call__(self, model, tokenizer, step: int) -> tuple[dict[str, float], dict[str, Any]]:
        """(``eval_<metric>`` values for the trainer, the ``answers`` event's data)."""
        from ..evaluate.evaluation import evaluate_model

        try:
            result = evaluate_model(
                model, tokenizer, self.examples, self.metrics, max_new_tokens=self.watch.max_new_tokens
            )
        except EvalError as err:  # a notebook metric that raised: the run fails with its one line
            raise ConfigError(f"eval_metrics: {err}") from None
        summary = result.summary()
        answers, previous = result.predictions, self.previous
        self.previous = answers

        def cut(text: str) -> str:
            return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"

        samples = [
            {
                "prompt": cut(ex.question),
                "reference": cut(ex.reference),
                "answer": cut(answers[i]),
                "previous": None if previous is None else cut(previous[i]),
                "ended": bool(result.ended[i]) if result.ended else None,
                "scores": {name: values[i] for name, values in result.scores.items()},
            }
            for i, ex in enumerate(self.examples[:SHOWN])
        ]
        record = {
            "step": step,
            "metrics": summary,
            "rows": len(answers),
            "never_ended": sum(not e for e in result.ended),
            "empty": sum(not a.strip() for a in answers),
            "max_new_tokens": self.watch.max_new_tokens,
            "seconds": round(result.seconds, 3),
            "samples": samples,
            "answers": [cut(a) for a in answers[:RECORDED_ROWS]],
        }
        return {f"eval_{k}": v for k, v in summary.items()}, record


def _probe(metric, reference: str) -> None:
    try:
        value = metric.fn(reference, reference)
        float(value)
    except Exception as err:
        raise ConfigError(
            f"key 'eval_metrics': the notebook function '{metric.name}' failed on (reference, reference): "
            f"{one_line(err, 200, named=True)} (expected f(prediction, reference) -> a number)"
        ) from None


def trainer_class(watch: AnswerWatch | None, emit: Sink):
    """TRL's ``SFTTrainer``, whose evaluation also generates and scores answers: the scores are
    added to the evaluation's metrics before the trainer logs them, compares them for the best
    checkpoint and hands them to ``EarlyStoppingCallback``."""
    from trl import SFTTrainer

    if watch is None:
        return SFTTrainer

    class WatchingSFTTrainer(SFTTrainer):
        _best_loss: float | None = None  # eval_loss at the best checkpoint, for breaking ties

        def _determine_best_metric(self, metrics, trial):
            """transformers' rule (strictly better), plus: a tie on the generated metric goes to the
            checkpoint with the lower eval loss. A metric scored on a few answers ties often (15 of
            16 right twice), and the later checkpoint is then the better one by every other measure."""
            before = self.state.best_metric
            new = super()._determine_best_metric(metrics, trial)
            loss = metrics.get("eval_loss")
            name = self.args.metric_for_best_model or ""
            value = metrics.get(name if name.startswith("eval_") else f"eval_{name}")
            tie = not new and before is not None and value is not None and value == before
            if tie and loss is not None and self._best_loss is not None and loss < self._best_loss:
                self.state.best_global_step = self.state.global_step
                new = True
            if new:
                self._best_loss = loss
            return new

        def evaluation_loop(
            self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
        ):
            output = super().evaluation_loop(
                dataloader,
                description,
                prediction_loss_only,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
            if metric_key_prefix == "eval" and watch.stopped is None:
                model = self.accelerator.unwrap_model(self.model)
                try:
                    values, record = watch(model, self.processing_class, self.state.global_step)
                except Exception as err:  # a watch nobody asked for does not end the run it watches
                    if not watch.watch.by_default:
                        raise
                    watch.stopped = one_line(err, 200, named=True)
                    values, record = {}, {"step": self.state.global_step, "stopped": watch.stopped}
                output.metrics.update(values)
                emit(Event("answers", record))
            return output

    return WatchingSFTTrainer


def best_record(trainer, *, loaded: bool = True) -> dict[str, Any] | None:
    """The best checkpoint transformers kept (``metric_for_best_model``), as the run records it: the
    checkpoint's step and the metric's value at that step (transformers' ``best_metric`` can be a
    later evaluation's, when that step had no checkpoint). ``loaded``: the trainer loaded it at the
    end (not after an interrupt), so ``final/`` is that checkpoint."""
    from pathlib import Path

    state, args = trainer.state, trainer.args
    if not args.metric_for_best_model or not state.best_model_checkpoint:
        return None
    name = Path(state.best_model_checkpoint).name
    tail = name.rsplit("-", 1)[-1]
    step = int(tail) if tail.isdigit() else None
    key = args.metric_for_best_model
    key = key if key.startswith("eval_") else f"eval_{key}"
    value = next((h[key] for h in state.log_history if h.get("step") == step and key in h), state.best_metric)
    if value is None:
        return None
    return {
        "metric": key[5:],
        "value": float(value),
        "step": step,
        "checkpoint": name,
        "final_is_best": bool(args.load_best_model_at_end and loaded),
    }


def early_stop_reason(trainer) -> str | None:
    """Why the run ended before max_steps, when transformers' EarlyStoppingCallback ended it."""
    from transformers import EarlyStoppingCallback

    state, args = trainer.state, trainer.args
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, EarlyStoppingCallback) and cb.early_stopping_patience_counter >= cb.early_stopping_patience:
            if state.global_step >= state.max_steps:
                return None
            best = best_record(trainer)
            at = f" (best {best['value']:.4g} at step {best['step']})" if best else ""
            by = f" by more than {cb.early_stopping_threshold:g}" if cb.early_stopping_threshold else ""
            return (
                f"early stop at step {state.global_step}/{state.max_steps}: "
                f"{args.metric_for_best_model.removeprefix('eval_')} did not improve{by} for "
                f"{cb.early_stopping_patience} evaluation{'s' if cb.early_stopping_patience != 1 else ''}{at}"
            )
    return None


def diff_segments(answer: str, reference: str) -> list[tuple[str, bool]]:
    """The answer cut into (text, same as the reference) runs, word by word (words, spaces and
    punctuation marks are the units; difflib aligns them), for marking where an answer differs."""
    import re

    units = re.compile(r"\w+|\s+|[^\w\s]")
    a, b = units.findall(answer), units.findall(reference)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: list[tuple[str, bool]] = []
    for op, a0, a1, _b0, _b1 in matcher.get_opcodes():
        if a1 > a0:
            out.append(("".join(a[a0:a1]), op == "equal"))
    return out
