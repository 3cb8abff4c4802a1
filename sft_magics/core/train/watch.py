"""Watching the model learn: at each evaluation during training, answers generated for the eval
prompts (all of them, or a fixed seeded sample) and scored with ``%sft_eval``'s metric registry
through the same function, :func:`core.evaluate.evaluate_model` — so the numbers equal a later
``%sft_eval`` of that checkpoint. The scores join the trainer's eval metrics (``eval_json_match``,
...), which is what lets transformers' own ``metric_for_best_model`` / ``load_best_model_at_end`` /
``EarlyStoppingCallback`` keep the best checkpoint and stop a run whose metric has plateaued.

Keys of a ``%%sft_train`` cell (transformers' style of names):

- ``eval_generate``: ``false`` (default: generation costs time) | ``true`` (every eval row) | ``N``
  (a fixed seeded sample of N rows, the same at every evaluation);
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
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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


def check_watch_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """Types of the keys as the cell gives them; returns the ones given (for config.yaml and resume)."""
    out = {k: config[k] for k in WATCH_KEYS if config.get(k) is not None}
    gen = out.get("eval_generate")
    if gen is not None and not isinstance(gen, bool) and not (isinstance(gen, int) and gen >= 1):
        raise ConfigError(f"key 'eval_generate' must be true, false or a number of eval rows (≥ 1), got {gen!r}")
    metrics = out.get("eval_metrics")
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if metrics is not None:
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"key 'eval_metrics' must be a list of metric names, got {out['eval_metrics']!r}")
        out["eval_metrics"] = metrics
    for key in ("eval_max_new_tokens", "early_stopping_patience"):
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"key '{key}' must be a whole number ≥ 1, got {value!r}")
    threshold = out.get("early_stopping_threshold")
    if threshold is not None:
        try:  # YAML reads 1e-3 as a string: taken as the number it is, as for the trainer's keys
            number = (
                float(threshold)
                if isinstance(threshold, (int, float, str)) and not isinstance(threshold, bool)
                else None
            )
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < 0:
            raise ConfigError(f"key 'early_stopping_threshold' must be a finite number ≥ 0, got {threshold!r}")
        out["early_stopping_threshold"] = number
    return out


def _generated(name: str | None, custom: Sequence[str]) -> str | None:
    """The metric name if ``name`` (``json_match`` or ``eval_json_match``) is scored on answers."""
    from ..evaluate.metrics import LOSS_METRICS, METRICS

    if not name:
        return None
    bare = name[5:] if name.startswith("eval_") else name
    return bare if (bare in METRICS and bare not in LOSS_METRICS) or bare in custom else None


class WatchPlan(NamedTuple):
    """What :func:`plan_watch` resolves: the watch, its answers, the trainer's keys with the ones the
    watch implies, and a note for each choice it made."""

    watch: Watch | None
    answers: AnswerWatch | None
    sft_args: dict
    notes: list[str]


def plan_watch(
    given: Mapping[str, Any],
    user_sft: Mapping[str, Any],
    sft_args: Mapping[str, Any],
    eval_data,
    namespace: Mapping | None = None,
) -> WatchPlan:
    """Check the keys against the eval data, and resolve the transformers best-model keys they imply,
    as ``SFTConfig.__post_init__`` resolves its own: a generated ``metric_for_best_model`` turns
    generation on; early stopping keeps the best checkpoint (``load_best_model_at_end``); the best
    model needs a checkpoint at every evaluation (``save_steps`` = ``eval_steps`` unless set). The
    caller's ``sft_args`` is not changed: a new one is returned."""
    sft_args, notes = dict(sft_args), []
    watch, answers = _resolve_watch(given, user_sft, sft_args, eval_data, notes, namespace)
    return WatchPlan(watch, answers, sft_args, notes)


def _resolve_watch(given, user_sft, sft_args: dict, eval_data, notes: list[str], namespace):
    """plan_watch's work, on its own copies of the keys and notes."""
    from ..evaluate.metrics import METRICS

    metrics = given.get("eval_metrics")
    custom = [m for m in metrics or [] if m not in METRICS]
    best = _generated(sft_args.get("metric_for_best_model"), custom)
    gen = given.get("eval_generate")
    patience = given.get("early_stopping_patience")
    if best and gen is False:
        raise ConfigError(
            f"metric_for_best_model {sft_args['metric_for_best_model']} is scored on generated answers, "
            "but eval_generate is false: set eval_generate to true (or a row count)"
        )
    if best and gen is None:
        gen = True
        notes.append(f"metric_for_best_model {best} is scored on answers: eval_generate on (every eval row)")
    if gen is None and metrics is not None:
        gen = True
    wants = [k for k in WATCH_KEYS if k in given and given[k] is not False]
    if eval_data is None:
        if wants or best:
            raise ConfigError(
                f"key '{(wants or ['metric_for_best_model'])[0]}' needs eval data: set eval_dataset or eval_split"
            )
        return None, None
    if (gen or patience) and sft_args.get("eval_strategy", "no") == "no":
        raise ConfigError(
            f"key '{'eval_generate' if gen else 'early_stopping_patience'}' needs evaluations during training, "
            "but eval_strategy is 'no': set eval_strategy: steps (and eval_steps)"
        )
    if gen and eval_data.format == "text":
        raise ConfigError(
            "key 'eval_generate': a 'text' eval dataset has no prompts and references to score answers on"
        )
    if not gen and (metrics is not None or "eval_max_new_tokens" in given):
        raise ConfigError("keys 'eval_metrics' / 'eval_max_new_tokens' need eval_generate: true (or a row count)")
    _check_metric_names(metrics or [], namespace)
    if best and metrics is not None and best not in metrics:
        metrics = [*metrics, best]  # the trainer compares checkpoints by it: it must be computed
    if "early_stopping_threshold" in given and not patience:
        raise ConfigError(
            "key 'early_stopping_threshold' needs early_stopping_patience (how many evaluations without "
            "an improvement larger than the threshold end the run)"
        )
    watch = Watch(
        generate=bool(gen),
        sample=None if gen is True or not gen else int(gen),
        metrics=tuple(metrics) if metrics else None,
        max_new_tokens=int(given.get("eval_max_new_tokens") or 64),
        patience=patience,
        threshold=float(given.get("early_stopping_threshold") or 0.0),
        watched=best or (metrics[0] if metrics else None),
    )
    answers = AnswerWatch(watch, eval_data, namespace=namespace, seed=int(sft_args.get("seed", 42))) if gen else None
    if patience:
        if not sft_args.get("metric_for_best_model"):  # what the dashboards follow, else the loss
            sft_args["metric_for_best_model"] = answers.watched if answers else "loss"
            notes.append(f"early stopping follows {sft_args['metric_for_best_model']} (metric_for_best_model)")
        sft_args.setdefault("load_best_model_at_end", True)
    _check_best_metric(sft_args, answers)
    metric = _generated(sft_args.get("metric_for_best_model"), [m.name for m in answers.metrics] if answers else [])
    if metric and "greater_is_better" not in user_sft:
        sft_args["greater_is_better"] = METRICS[metric].higher_is_better if metric in METRICS else True
    if answers and metric == answers.watched and "greater_is_better" in sft_args:
        answers.greater_is_better = bool(sft_args["greater_is_better"])
    if sft_args.get("load_best_model_at_end"):
        _check_best_checkpoints(
            sft_args, user_sft, notes, implied=bool(patience) and "load_best_model_at_end" not in user_sft
        )
    return (watch if gen or patience else None), answers


def _check_metric_names(metrics: Sequence[str], namespace) -> None:
    """``eval_metrics``: each a metric scored on answers, from the registry or a notebook function."""
    from ..evaluate.metrics import LOSS_METRICS, METRICS

    for name in metrics:
        if name in LOSS_METRICS:
            raise ConfigError(
                f"key 'eval_metrics': '{name}' is not scored on answers (the trainer's eval_loss is always there)"
            )
        if name not in METRICS and not callable((namespace or {}).get(name)):
            close = difflib.get_close_matches(name, [m for m in METRICS if m not in LOSS_METRICS], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"key 'eval_metrics': unknown metric '{name}' (not in the registry, and no notebook function "
                f"f(prediction, reference) of that name){hint}"
            )


# What the trainer's own evaluation computes (transformers: loss; TRL's SFTTrainer: the others).
TRAINER_EVAL_METRICS = ("loss", "mean_token_accuracy", "entropy", "num_tokens")


def _check_best_metric(sft_args: Mapping[str, Any], answers) -> None:
    """``metric_for_best_model`` must be a metric the evaluation computes, or the trainer raises a
    KeyError at the first evaluation, halfway through the run."""
    name = sft_args.get("metric_for_best_model")
    if not name:
        return
    bare = name[5:] if name.startswith("eval_") else name
    known = [*TRAINER_EVAL_METRICS, *([m.name for m in answers.metrics] if answers else [])]
    if bare not in known:
        close = difflib.get_close_matches(bare, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"key 'metric_for_best_model': '{name}' is not computed at evaluation (computed: {', '.join(known)}; "
            f"a metric scored on answers needs eval_generate or eval_metrics){hint}"
        )


def _check_best_checkpoints(sft_args: dict, user_sft: Mapping[str, Any], notes: list[str], implied: bool) -> None:
    """Keeping the best checkpoint needs one at every evaluated step: save_steps follows eval_steps
    unless set; when set, transformers' rule is checked here, before anything loads."""
    why = "load_best_model_at_end (on for early_stopping_patience)" if implied else "load_best_model_at_end"
    if "save_steps" not in user_sft and "save_strategy" not in user_sft:
        sft_args["save_strategy"] = sft_args.get("eval_strategy", "steps")
        sft_args["save_steps"] = sft_args.get("eval_steps")
        notes.append("a checkpoint at every evaluation, so the best one can be kept (save_steps = eval_steps)")
        return
    save, evaluate = str(sft_args.get("save_strategy", "steps")), str(sft_args.get("eval_strategy", "no"))
    if save == "best":
        return
    if save != evaluate:
        raise ConfigError(
            f"{why}: save_strategy '{save}' must match eval_strategy '{evaluate}' (or be 'best'), so that the best "
            "evaluated step has a checkpoint"
        )
    if evaluate == "steps":
        every, at = float(sft_args.get("save_steps") or 0), float(sft_args.get("eval_steps") or 0)
        both_counts, both_fractions = every >= 1 and at >= 1, 0 < every < 1 and 0 < at < 1
        ok = at > 0 and (
            (both_counts and every % at == 0) or (both_fractions and round(every * 1e6) % round(at * 1e6) == 0)
        )
        if not ok:
            raise ConfigError(
                f"{why}: save_steps {every:g} must be a multiple of eval_steps {at:g} (both step counts or both "
                "fractions of the run), so that the best evaluated step has a checkpoint; or leave save_steps unset"
            )


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
            if metric_key_prefix == "eval":
                model = self.accelerator.unwrap_model(self.model)
                values, record = watch(model, self.processing_class, self.state.global_step)
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
