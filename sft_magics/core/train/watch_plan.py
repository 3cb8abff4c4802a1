"""What the watch keys ask, checked against the eval data and resolved before training (as SFTConfig resolves its own): generation, metrics, early stopping, and the best-model keys of transformers they imply."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..errors import ConfigError
from .watch import WATCH_KEYS, AnswerWatch, Watch

# A small eval set is watched without being asked: a fixed sample of its rows answered at each
# evaluation (about a tenth of the demo's time for 16 rows); a larger one only when asked (eval_generate).
WATCH_BY_DEFAULT_ROWS = 64
DEFAULT_SAMPLE = 8


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
    by_default = gen is None and not wants and _watch_by_default(eval_data, sft_args)
    if by_default:
        gen = min(DEFAULT_SAMPLE, len(eval_data))
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
        by_default=by_default,
    )
    answers = _answers(watch, eval_data, sft_args, notes, namespace) if gen else None
    gen = gen if answers is not None else None  # a default watch with nothing to score: none
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


def _answers(watch: Watch, eval_data, sft_args: Mapping[str, Any], notes: list[str], namespace):
    """The answers to watch. Watched by default (nobody asked): the references' own kind of score
    (json_match for JSON, else chrF: exact_match on prose is a flat 0), and rows with nothing to
    score mean no watch rather than an error."""
    seed = int(sft_args.get("seed", 42))
    if not watch.by_default:
        return AnswerWatch(watch, eval_data, namespace=namespace, seed=seed)
    try:
        answers = AnswerWatch(watch, eval_data, namespace=namespace, seed=seed)
    except ConfigError:
        return None
    names = [m.name for m in answers.metrics]
    answers.watched = next((m for m in ("json_match", "chrf") if m in names), answers.watched)
    notes.append(
        f"answers watched by default: {len(answers.examples)} of the {len(eval_data)} eval rows at each "
        f"evaluation, followed by {answers.watched} (eval_generate: false turns it off, a number watches more)"
    )
    return answers


def _watch_by_default(eval_data, sft_args: Mapping[str, Any]) -> bool:
    """Nothing asked about answers, and an eval set small enough to watch for free-ish."""
    return (
        sft_args.get("eval_strategy", "no") != "no"
        and eval_data.format != "text"
        and 0 < len(eval_data) <= WATCH_BY_DEFAULT_ROWS
        and not sft_args.get("metric_for_best_model")
    )


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
