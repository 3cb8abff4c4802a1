"""Watching the model learn (core/watch.py): answers generated and scored at each evaluation during
training, the best checkpoint and early stopping through transformers, what the dashboards show,
and what a run folder keeps of it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from sft_magics.core.errors import ConfigError
from sft_magics.core.events import Event
from sft_magics.core.progress import ProgressState
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.plan import plan
from sft_magics.core.train.trainer import train


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _spec(tmp_path, tiny_model, qa_jsonl, name="w", **extra):
    config = {
        "model": tiny_model,
        "dataset": qa_jsonl,
        "eval_dataset": qa_jsonl,
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "eval_steps": 2,
        **extra,
    }
    return TrainSpec.from_mapping(name, config, output_dir=str(tmp_path / "runs"))


def test_generated_metrics_at_each_evaluation_equal_sft_eval_on_that_checkpoint(shell, tmp_path, tiny_model, qa_jsonl):
    # A high learning rate, so that the tiny model's answers change between evaluations (not all empty).
    shell.user_ns["n_chars"] = lambda prediction, reference: float(len(prediction))
    cell = (
        f"model: {tiny_model}\ndataset: {qa_jsonl}\neval_dataset: {qa_jsonl}\nmax_steps: 8\n"
        "per_device_train_batch_size: 4\nlearning_rate: 3.0e-2\neval_steps: 4\nsave_steps: 4\nsave_total_limit: 5\n"
        "eval_generate: true\neval_max_new_tokens: 16\neval_metrics: [chrf, bleu, token_f1, n_chars]\n"
    )
    shell.run_cell_magic("sft_train", "--name w", cell)
    run_dir = tmp_path / "runs" / "w"
    events = _events(run_dir)
    answers = [e for e in events if e["kind"] == "answers"]
    evals = {e["step"]: e for e in events if e["kind"] == "eval"}
    assert [a["step"] for a in answers] == [4, 8] and sorted(evals) == [4, 8]
    assert any(n for a in answers for n in [a["metrics"]["n_chars"]])  # the answers are not all empty
    assert answers[0]["answers"] != answers[1]["answers"]  # and they changed while training
    for a in answers:
        step = a["step"]
        shell.run_line_magic(
            "sft_eval",
            f"{run_dir}/checkpoint-{step} --data {qa_jsonl} --metrics chrf,bleu,token_f1 --metric n_chars "
            "--max-new-tokens 16 -o r",
        )
        result = next(iter(shell.user_ns["r"].values()))
        assert result.predictions == a["answers"]  # the same answers, row by row
        for name, value in result.summary().items():
            assert math.isclose(evals[step][f"eval_{name}"], value, rel_tol=1e-9, abs_tol=1e-12), (step, name)
            assert math.isclose(a["metrics"][name], value, rel_tol=1e-9, abs_tol=1e-12)
        # The panel's samples: the same rows every time, with the previous evaluation's answer.
        assert [s["prompt"] for s in a["samples"]] == ["Person 0 is 20.", "Person 1 is 21.", "Person 2 is 22."]
    assert [s["previous"] for s in answers[1]["samples"]] == answers[0]["answers"][:3]
    assert answers[0]["samples"][0]["previous"] is None


def _scripted(values: list[float], rows: int):
    """A notebook metric whose value at the k-th evaluation is values[k] (it is called once per row)."""
    calls = []

    def scripted(prediction: str, reference: str) -> float:
        if prediction == reference:  # the plan's probe of a notebook metric (the tiny model never answers right)
            return 0.0
        calls.append(1)
        return values[min((len(calls) - 1) // rows, len(values) - 1)]

    return scripted


def _adapter(run_dir: Path, folder: str) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / folder / "adapter_model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_early_stopping_ends_a_plateaued_run_and_final_is_the_best_checkpoint(tmp_path, tiny_model, qa_jsonl):
    # The metric, scripted per evaluation: best at the 2nd (step 4), then two evaluations without improvement.
    metric = _scripted([0.5, 0.75, 0.25, 0.25, 1.0], rows=4)
    spec = _spec(
        tmp_path, tiny_model, qa_jsonl, max_steps=20, eval_generate=4, eval_max_new_tokens=4,
        eval_metrics=["scripted"], metric_for_best_model="scripted", early_stopping_patience=2,
    )  # fmt: skip
    p = plan(spec, namespace={"scripted": metric})
    assert p.sft_args["load_best_model_at_end"] is True and p.sft_args["greater_is_better"] is True
    assert p.sft_args["save_steps"] == p.sft_args["eval_steps"] == 2  # a checkpoint at every evaluation
    result = train(spec, namespace={"scripted": metric})
    assert result.status == "finished" and result.global_step == 8 < 20
    reason = "early stop at step 8/20: scripted did not improve for 2 evaluations (best 0.75 at step 4)"
    assert result.early_stop == reason
    assert result.best == {
        "metric": "scripted", "value": 0.75, "step": 4, "checkpoint": "checkpoint-4", "final_is_best": True,
    }  # fmt: skip
    status = json.loads((result.path / "status.json").read_text())
    assert status["early_stop"] == reason and status["best"]["step"] == 4
    final = _adapter(result.path, "final")
    assert _same(final, _adapter(result.path, "checkpoint-4"))  # final/ is the best step's model
    assert not _same(final, _adapter(result.path, "checkpoint-8"))  # not the last step's
    events = _events(result.path)
    assert events[-1]["kind"] == "finished" and events[-1]["early_stop"] == reason
    assert [e["eval_scripted"] for e in events if e["kind"] == "eval"] == [0.5, 0.75, 0.25, 0.25]

    # %sft_runs: the best value per run, from the run folder alone.
    from sft_magics.core.run.lookup import run_record
    from sft_magics.display._runs_view import RunsView

    record = run_record(result.path)
    assert record["best"] == "scripted 0.750 @ step 4" and record["early_stop"] == reason
    assert "scripted 0.750 @ step 4" in RunsView([record]).to_text()

    # The keys are in config.yaml as given, and read back the same way (resume).
    import yaml

    config = yaml.safe_load((result.path / "config.yaml").read_text())
    assert config["eval_generate"] == 4 and config["early_stopping_patience"] == 2
    again = TrainSpec.from_mapping("w", config, output_dir=str(tmp_path / "runs"))
    assert again.watch == {
        "eval_generate": 4, "eval_metrics": ["scripted"], "eval_max_new_tokens": 4, "early_stopping_patience": 2,
    }  # fmt: skip


def test_the_best_recorded_is_the_checkpoint_kept_with_its_own_value(tmp_path, tiny_model, qa_jsonl):
    # Evaluations every 2 steps, checkpoints every 4: the best evaluation (step 6, 0.9) has no
    # checkpoint, so transformers keeps checkpoint-4; the record says so, with step 4's value.
    metric = _scripted([0.5, 0.6, 0.9, 0.7], rows=2)
    spec = _spec(
        tmp_path, tiny_model, qa_jsonl, max_steps=8, eval_generate=2, eval_max_new_tokens=2, save_steps=4,
        eval_metrics=["scripted"], metric_for_best_model="scripted", load_best_model_at_end=True, save_total_limit=5,
    )  # fmt: skip
    result = train(spec, namespace={"scripted": metric})
    assert result.best == {
        "metric": "scripted", "value": 0.6, "step": 4, "checkpoint": "checkpoint-4", "final_is_best": True,
    }  # fmt: skip
    assert _same(_adapter(result.path, "final"), _adapter(result.path, "checkpoint-4"))
    # a threshold written as YAML writes it (a string) is read as the number it is
    assert TrainSpec.from_mapping("x", {"dataset": qa_jsonl, "early_stopping_threshold": "1e-3"}).watch == {
        "early_stopping_threshold": 0.001
    }


def test_a_tie_on_the_metric_goes_to_the_checkpoint_with_the_lower_eval_loss(tmp_path, tiny_model, qa_jsonl):
    # json_match stays 0 on the tiny model (it never answers JSON): every evaluation ties, while the
    # eval loss falls; transformers alone would keep the first checkpoint.
    spec = _spec(
        tmp_path, tiny_model, qa_jsonl, max_steps=20, eval_generate=True, eval_max_new_tokens=8,
        metric_for_best_model="json_match", early_stopping_patience=2,
    )  # fmt: skip
    result = train(spec)
    evals = [e for e in _events(result.path) if e["kind"] == "eval"]
    assert [e["eval_json_match"] for e in evals] == [0.0, 0.0, 0.0] and result.global_step == 6
    lowest = min(evals, key=lambda e: e["eval_loss"])["step"]
    assert lowest != evals[0]["step"]  # without the tie rule, the first evaluation would be kept
    assert result.best["step"] == lowest and result.best["value"] == 0.0
    assert result.early_stop.startswith("early stop at step 6/20: json_match did not improve for 2 evaluations")
    assert _same(_adapter(result.path, "final"), _adapter(result.path, f"checkpoint-{lowest}"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"eval_dataset": None, "eval_generate": True}, "key 'eval_generate' needs eval data: set eval_dataset or eval_split"),
        ({"eval_generate": 0}, "key 'eval_generate' must be true, false or a number of eval rows (≥ 1), got 0"),
        ({"eval_generate": "yes"}, "key 'eval_generate' must be true, false or a number of eval rows"),
        ({"eval_metrics": ["json_mach"]}, "unknown metric 'json_mach' (not in the registry, and no notebook function f(prediction, reference) of that name); did you mean 'json_match'?"),
        ({"eval_metrics": ["loss"]}, "'loss' is not scored on answers (the trainer's eval_loss is always there)"),
        ({"eval_metrics": []}, "key 'eval_metrics' must be a list of metric names"),
        ({"metric_for_best_model": "json_match", "eval_generate": False}, "metric_for_best_model json_match is scored on generated answers, but eval_generate is false"),
        ({"early_stopping_patience": 0}, "key 'early_stopping_patience' must be a whole number ≥ 1, got 0"),
        ({"early_stopping_threshold": -1}, "key 'early_stopping_threshold' must be a finite number ≥ 0, got -1"),
        ({"eval_max_new_tokens": 32}, "keys 'eval_metrics' / 'eval_max_new_tokens' need eval_generate: true"),
        ({"eval_generate": 4, "eval_strategy": "no"}, "key 'eval_generate' needs evaluations during training, but eval_strategy is 'no'"),
        ({"early_stopping_threshold": ".nan"}, "key 'early_stopping_threshold' must be a finite number ≥ 0, got '.nan'"),
        ({"early_stopping_threshold": 0.01}, "key 'early_stopping_threshold' needs early_stopping_patience"),
        ({"eval_generate": 4, "metric_for_best_model": "json_mach"}, "key 'metric_for_best_model': 'json_mach' is not computed at evaluation (computed: loss, mean_token_accuracy, entropy, num_tokens, exact_match,"),
        ({"metric_for_best_model": "perplexity", "load_best_model_at_end": True}, "key 'metric_for_best_model': 'perplexity' is not computed at evaluation"),
        ({"early_stopping_patience": 2, "save_steps": 3}, "load_best_model_at_end (on for early_stopping_patience): save_steps 3 must be a multiple of eval_steps 2 (both step counts or both fractions of the run)"),
        ({"early_stopping_patience": 2, "save_strategy": "epoch"}, "load_best_model_at_end (on for early_stopping_patience): save_strategy 'epoch' must match eval_strategy 'steps'"),
        ({"eval_metrics": ["broken"]}, "key 'eval_metrics': the notebook function 'broken' failed on (reference, reference): ZeroDivisionError: division by zero"),
    ],
)  # fmt: skip
def test_watch_keys_are_checked_before_anything_is_written(tmp_path, tiny_model, qa_jsonl, extra, message):
    with pytest.raises(ConfigError) as err:
        train(_spec(tmp_path, tiny_model, qa_jsonl, **extra), namespace={"broken": lambda p, r: 1 / 0})
    assert message in str(err.value)
    assert not (tmp_path / "runs" / "w").exists()


def test_a_generated_metric_for_best_model_turns_generation_on_and_the_dry_run_says_so(tmp_path, tiny_model, qa_jsonl):
    p = plan(
        _spec(tmp_path, tiny_model, qa_jsonl, metric_for_best_model="eval_json_fields", load_best_model_at_end=True)
    )
    assert p.watch.generate and p.answers is not None and p.answers.watched == "json_fields"
    assert "metric_for_best_model json_fields is scored on answers: eval_generate on (every eval row)" in p.notes
    assert p.sft_args["greater_is_better"] is True
    # a sample of N rows, the same at every evaluation (seeded)
    p = plan(_spec(tmp_path, tiny_model, qa_jsonl, eval_generate=5))
    assert (
        len(p.answers.examples) == 5
        and p.answers.examples == plan(_spec(tmp_path, tiny_model, qa_jsonl, eval_generate=5)).answers.examples
    )
    assert "json_match" in [m.name for m in p.answers.metrics] and "loss" not in [m.name for m in p.answers.metrics]
    # metric_for_best_model is always computed, even when eval_metrics leaves it out
    p = plan(_spec(tmp_path, tiny_model, qa_jsonl, eval_metrics=["chrf"], metric_for_best_model="exact_match"))
    assert [m.name for m in p.answers.metrics] == ["chrf", "exact_match"] and p.answers.watched == "exact_match"


def test_a_small_eval_set_is_watched_by_default_and_says_so(tmp_path, tiny_model, qa_jsonl):
    """eval_dataset alone: a small set (≤ 64 rows) gets a fixed sample of answers at each evaluation,
    the plan's notes and the dashboard say so; eval_generate: false turns it off; a large set stays
    opt-in; early stopping on the loss is left as asked."""
    from sft_magics.core.train.watch_plan import DEFAULT_SAMPLE, WATCH_BY_DEFAULT_ROWS
    from sft_magics.display._dashboard_html import samples_html

    rows = len(Path(qa_jsonl).read_text().splitlines())
    p = plan(_spec(tmp_path, tiny_model, qa_jsonl))
    assert p.watch.by_default and len(p.answers.examples) == min(DEFAULT_SAMPLE, rows)
    assert p.answers.examples == plan(_spec(tmp_path, tiny_model, qa_jsonl)).answers.examples  # fixed, seeded
    note = f"answers watched by default: {min(DEFAULT_SAMPLE, rows)} of the {rows} eval rows at each evaluation"
    assert any(n.startswith(note) for n in p.notes), p.notes
    assert "metric_for_best_model" not in p.sft_args  # the trainer's keys are not changed by it
    state = ProgressState()
    state.update(Event("started", {"watch": p.answers.describe()}))
    state.update(
        Event("answers", {"step": 2, "rows": 8, "samples": [{"prompt": "q", "reference": "a", "answer": "a"}]})
    )
    assert "watched by default for a small eval set (eval_generate: false turns it off)" in samples_html(state)

    # Followed by the references' own kind of score, with no "best" (no checkpoint is kept by it).
    assert p.answers.watched in ("json_match", "chrf") and "followed by" in " ".join(p.notes)
    state.update(Event("eval", {"step": 2, f"eval_{p.answers.watched}": 0.5, "eval_loss": 1.0}))
    assert state.metric_points == [(2, 0.5)] and state.best is None
    assert not any(k.startswith("best") for k, _ in state.metrics())

    assert plan(_spec(tmp_path, tiny_model, qa_jsonl, eval_generate=False)).answers is None
    assert plan(_spec(tmp_path, tiny_model, qa_jsonl, early_stopping_patience=2)).answers is None
    # The best-checkpoint keys are still resolved as without the watch: save_steps follows eval_steps.
    p = plan(_spec(tmp_path, tiny_model, qa_jsonl, load_best_model_at_end=True))
    assert p.watch.by_default and p.sft_args["save_steps"] == p.sft_args["eval_steps"] == 2
    big = tmp_path / "big.jsonl"
    big.write_text("".join(Path(qa_jsonl).read_text() for _ in range(WATCH_BY_DEFAULT_ROWS // rows + 1)))
    assert plan(_spec(tmp_path, tiny_model, qa_jsonl, eval_dataset=str(big))).answers is None


def test_a_default_watch_that_fails_stops_watching_and_the_run_goes_on(tmp_path, tiny_model, qa_jsonl, monkeypatch):
    """Nobody asked for the answers: a failure generating them is an alert, not the end of the run."""
    from sft_magics.core.train.watch import AnswerWatch

    def broken(self, model, tokenizer, step):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(AnswerWatch, "__call__", broken)
    result = train(_spec(tmp_path, tiny_model, qa_jsonl))
    assert result.status == "finished" and result.global_step == 8
    stopped = [e for e in _events(result.path) if e["kind"] == "answers"]
    assert len(stopped) == 1 and stopped[0]["step"] == 2  # once: the later evaluations do not try again
    assert stopped[0]["stopped"] == "RuntimeError: CUDA out of memory (simulated)"
    with pytest.raises(Exception, match="simulated"):  # asked for: the run fails, as before
        train(_spec(tmp_path, tiny_model, qa_jsonl, name="asked", eval_generate=2))


def _watched_state(events: list[tuple[str, dict]], higher: bool = True) -> ProgressState:
    state = ProgressState()
    state.update(Event("started", {"max_steps": 10, "watch": {"metric": "json_match", "greater_is_better": higher}}))
    for kind, data in events:
        state.update(Event(kind, data))
    return state


def test_progress_follows_the_metric_its_best_and_raises_the_users_alerts():
    state = _watched_state(
        [
            ("eval", {"step": 2, "eval_loss": 1.0, "eval_json_match": 0.5}),
            ("answers", {"step": 2, "rows": 4, "never_ended": 3, "empty": 1, "max_new_tokens": 16, "samples": []}),
            ("eval", {"step": 4, "eval_loss": 0.8, "eval_json_match": 0.75}),
            ("eval", {"step": 6, "eval_loss": 0.6, "eval_json_match": 0.25}),
        ]
    )
    assert state.metric_points == [(2, 0.5), (4, 0.75), (6, 0.25)]
    assert state.best == (0.75, 4) and state.best_text() == "0.750 @ step 4"
    assert ("best json_match", "0.750 @ step 4") in state.metrics() and ("json_match", "0.250") in state.metrics()
    assert state.alerts == [
        "3 of 4 answers never ended at step 2: no end-of-turn token within 16 new tokens "
        "(raise eval_max_new_tokens, or check the template's end token)",
        "1 of 4 answers are empty at step 2",
        "json_match got worse (0.750 → 0.250) while the eval loss fell (0.8000 → 0.6000) at step 6: the loss no "
        "longer tracks the answers; keep the best checkpoint (metric_for_best_model, load_best_model_at_end) or stop",
    ]
    # lower is better: the best is the smallest; a metric that rises while the loss falls is the alarm
    state = _watched_state(
        [("eval", {"step": 2, "eval_loss": 1.0, "eval_json_match": 0.5}), ("eval", {"step": 4, "eval_loss": 0.9, "eval_json_match": 0.2})],
        higher=False,
    )  # fmt: skip
    assert state.best == (0.2, 4) and state.alerts == []
    # a tie goes to the evaluation with the lower eval loss, as the trainer decides
    state = _watched_state(
        [("eval", {"step": 2, "eval_loss": 1.0, "eval_json_match": 0.5}), ("eval", {"step": 4, "eval_loss": 0.9, "eval_json_match": 0.5}),
         ("eval", {"step": 6, "eval_loss": 0.95, "eval_json_match": 0.5})],
    )  # fmt: skip
    assert state.best == (0.5, 4)


def test_the_sample_panel_escapes_hostile_model_output_and_marks_differences():
    from sft_magics.display._dashboard import PlainDashboard, WidgetDashboard
    from sft_magics.display._dashboard_html import samples_html, summary_html
    from sft_magics.display._style import EXTRA_STYLE

    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    answers = {
        "step": 4,
        "rows": 1,
        "never_ended": 1,
        "empty": 0,
        "metrics": {"json_match": 0.0},
        "samples": [
            {
                "prompt": "<b>who</b> & what",
                "reference": '{"name": "<i>Ann</i>"}',
                "answer": hostile,
                "previous": "</td></tr></table><script>x()</script>",
                "ended": False,
            }
        ],
    }
    state = _watched_state([("answers", answers)])
    for page in (samples_html(state), summary_html("run <x>", state, None)):
        assert "<script" not in page and "<img" not in page and "<b>who" not in page and "<i>Ann" not in page
        # the answer is cut into marked runs where it differs from the reference: each run escaped
        unmarked = re.sub(r'<ins style="[^"]*">|</ins>', "", page)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in unmarked
        assert "&lt;b&gt;who&lt;/b&gt; &amp; what" in page
        assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in page
        assert f'<ins style="{EXTRA_STYLE}">' in page and "(no end token)" in page
    dashboard = WidgetDashboard("w", show=False)
    dashboard(Event("started", {"max_steps": 10, "watch": {"metric": "json_match", "greater_is_better": True}}))
    dashboard(Event("answers", answers))
    assert "&lt;script&gt;" in dashboard.samples.value and "<script" not in dashboard.samples.value
    dashboard._finish()
    plain = PlainDashboard("w")
    plain(Event("started", {"watch": {"metric": "json_match"}}))
    plain(Event("answers", answers))  # a plain log line: no HTML to escape, the text as generated
    assert plain.state.answers["samples"][0]["answer"] == hostile
    from sft_magics.core.train.watch import diff_segments

    assert diff_segments('{"name": "Bo", "age": 3}', '{"name": "Ann", "age": 3}') == [
        ('{"name": "', True), ("Bo", False), ('", "age": 3}', True),
    ]  # fmt: skip


def test_the_rich_view_shows_the_samples_compactly_and_why_the_run_stopped():
    import io

    from rich.console import Console

    from sft_magics.display._rich_dashboard import RichDashboard

    out = io.StringIO()
    dashboard = RichDashboard("w", console=Console(file=out, width=160, force_terminal=False))
    dashboard(Event("started", {"max_steps": 10, "watch": {"metric": "json_match", "greater_is_better": True}}))
    dashboard(Event("eval", {"step": 2, "eval_loss": 1.0, "eval_json_match": 0.5}))
    samples = [
        {"prompt": "p", "reference": "[b]x[/b]", "answer": "[b]x[/b]", "previous": None, "ended": True},
        {"prompt": "q", "reference": "y", "answer": "z" * 300, "previous": None, "ended": False},
    ]
    dashboard(Event("answers", {"step": 2, "rows": 2, "never_ended": 1, "empty": 0, "samples": samples}))
    dashboard(Event("finished", {"step": 6, "early_stop": "early stop at step 6/10: json_match did not improve"}))
    dashboard.close()
    text = out.getvalue()
    assert "✓ step 2: [b]x[/b]" in text  # model text is not rich markup
    assert "✗ step 2: " + "z" * 100 + "…" in text  # one line per sample, cut
    assert "early stop at step 6/10: json_match did not improve" in text and "best json_match" in text


def test_the_chart_draws_the_metric_beside_the_loss():
    from sft_magics.display._dashboard_html import LossChart

    chart = LossChart(metric="json_match")
    png = chart.render([(1, 2.0), (2, 1.5)], [(2, 1.6)], 10, [(2, 0.25), (4, 0.5)], (0.5, 4))
    assert png.startswith(b"\x89PNG") and list(chart.curve.get_xdata()) == [2, 4]
    assert list(chart.best_point.get_xdata()) == [4] and list(chart.best_point.get_ydata()) == [0.5]
    assert chart.max.get_title() == "json_match (generated answers)"
    assert LossChart().max is None  # without a watched metric: the loss chart alone


def test_answers_and_the_best_survive_a_kernel_restart(shell, tmp_path, tiny_model, qa_jsonl, capsys):
    shell.user_ns["scripted"] = _scripted([0.25, 0.75], rows=4)
    cell = (
        f"model: {tiny_model}\ndataset: {qa_jsonl}\neval_dataset: {qa_jsonl}\nmax_steps: 4\n"
        "per_device_train_batch_size: 4\nlearning_rate: 1.0e-3\neval_steps: 2\neval_generate: 4\n"
        "eval_max_new_tokens: 4\neval_metrics: [scripted, json_fields]\n"
    )
    shell.run_cell_magic("sft_train", "--name again", cell)
    capsys.readouterr()
    shell.user_ns.clear()  # what a restarted kernel has: only the run folder
    shell.run_line_magic("sft_attach", "again")
    out = capsys.readouterr().out
    assert "[again] answers at step 2 (4 rows, 4 never ended" in out
    assert "[again] answers at step 4 (4 rows" in out and "scripted 0.750" in out
    assert "best scripted 0.750 @ step 4" in out
    shell.run_line_magic("sft_runs", "")
    assert "scripted 0.750 @ step 4" in capsys.readouterr().out


def test_a_background_run_records_its_answers_and_refuses_notebook_metrics(tmp_path, tiny_model, qa_jsonl):
    from sft_magics.core.evaluate.metrics import METRICS, register_metric
    from sft_magics.core.train.worker import launch, wait_for

    with pytest.raises(ConfigError, match="n_chars is defined in this notebook .* which a background run cannot see"):
        launch(_spec(tmp_path, tiny_model, qa_jsonl, eval_metrics=["n_chars"]), namespace={"n_chars": lambda p, r: 1.0})
    register_metric("registered_here", lambda p, r: 1.0)
    try:
        with pytest.raises(ConfigError, match="registered_here is defined in this notebook"):
            launch(_spec(tmp_path, tiny_model, qa_jsonl, metric_for_best_model="registered_here", eval_generate=2))
    finally:
        METRICS.pop("registered_here")
    assert not (tmp_path / "runs" / "w").exists()
    launch(_spec(tmp_path, tiny_model, qa_jsonl, max_steps=4, eval_generate=3, eval_max_new_tokens=4))
    record = wait_for(tmp_path / "runs" / "w", timeout=300)
    assert record["status"] == "finished"
    answers = [e for e in _events(tmp_path / "runs" / "w") if e["kind"] == "answers"]
    assert [a["step"] for a in answers] == [2, 4] and all(a["rows"] == 3 and len(a["answers"]) == 3 for a in answers)
