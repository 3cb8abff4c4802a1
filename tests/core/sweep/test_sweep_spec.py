"""The sweep: key, checked before anything starts (no model trained here), its trials' names and
configs, and the comparison view's forms (escaped HTML, the leader marked, no clipped point)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from sft_magics.core.sweep.spec import (
    SweepError,
    apply_params,
    corner_trials,
    planned_trials,
    read_sweep,
    trial_name,
)


def _cell(tiny_model, data, sweep: str, extra: str = "") -> str:
    return (
        f"model: {tiny_model}\ndataset: {data}\neval_split: 0.25\nmax_steps: 2\n"
        f"per_device_train_batch_size: 4\n{extra}sweep:\n{sweep}"
    )


def test_a_grid_is_every_combination_in_order_and_named_by_its_values():
    spec = read_sweep({"parameters": {"learning_rate": [1e-3, 2e-3], "lora.r": [8, 16]}})
    assert spec.method == "grid" and spec.trials == 4
    trials = planned_trials(spec)
    assert trials == [
        {"learning_rate": 1e-3, "lora.r": 8},
        {"learning_rate": 1e-3, "lora.r": 16},
        {"learning_rate": 2e-3, "lora.r": 8},
        {"learning_rate": 2e-3, "lora.r": 16},
    ]
    assert trial_name("lr", 3, trials[2]) == "lr.03-learning_rate_0.002-r_8"
    long = [trial_name("s" * 90, i, {"chat_template": "x" * 50}) for i in range(1, 13)]
    assert all(len(n) <= 100 for n in long) and len(set(long)) == 12  # the index survives the cut
    from sft_magics.core.sweep.folder import check_sweep_name

    with pytest.raises(SweepError, match="has 91 characters: at most 90"):
        check_sweep_name("s" * 91)


def test_a_random_sample_is_seeded_distinct_and_draws_ranges():
    values = {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3], "lora.r": [4, 8, 16]}
    a = planned_trials(read_sweep({"method": "random", "trials": 5, "seed": 7, "parameters": values}))
    b = planned_trials(read_sweep({"method": "random", "trials": 5, "seed": 7, "parameters": values}))
    c = planned_trials(read_sweep({"method": "random", "trials": 5, "seed": 8, "parameters": values}))
    assert a == b and a != c
    assert len({repr(sorted(t.items())) for t in a}) == 5  # distinct combinations
    ranged = planned_trials(
        read_sweep(
            {
                "method": "random",
                "trials": 20,
                "parameters": {
                    "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
                    "lora.r": {"low": 2, "high": 64},
                },
            }
        )
    )
    assert all(1e-5 <= t["learning_rate"] <= 1e-2 for t in ranged)
    assert all(isinstance(t["lora.r"], int) and 2 <= t["lora.r"] <= 64 for t in ranged)


def test_a_search_is_checked_at_the_ends_of_what_it_may_propose():
    spec = read_sweep(
        {
            "method": "search",
            "trials": 6,
            "parameters": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "lora.r": [4, 8]},
        }
    )
    assert spec.prune == {}  # MedianPruner with Optuna's defaults
    assert planned_trials(spec) == []  # Optuna proposes them as it goes
    corners = corner_trials(spec)
    assert {"learning_rate": 1e-2, "lora.r": 4} in corners and {"learning_rate": 1e-4, "lora.r": 8} in corners


def test_apply_sets_dotted_keys_and_trl_names_and_never_changes_the_cell():
    base = {"model": "m", "lora": {"r": 16, "lora_alpha": 32}, "learning_rate": 1e-3, "sweep": {}}
    config = apply_params(base, {"lora.r": 8, "learning_rate": 2e-3, "model_kwargs.attn_implementation": "eager"})
    assert config == {
        "model": "m",
        "lora": {"r": 8, "lora_alpha": 32},
        "learning_rate": 2e-3,
        "model_kwargs": {"attn_implementation": "eager"},
    }
    assert base["lora"]["r"] == 16 and "sweep" in base
    with pytest.raises(
        SweepError, match=r"sweep.parameters.learning_rate.x': learning_rate in the cell is not a mapping"
    ):
        apply_params(base, {"learning_rate.x": 1})


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("[1, 2]", "key 'sweep' must be a mapping"),
        ("{method: grid}", "key 'sweep.parameters' must map each swept key"),
        ("{method: bayes, parameters: {learning_rate: [1]}}", "key 'sweep.method' must be one of grid, random, search"),
        ("{parameters: {learning_rate: []}}", "key 'sweep.parameters.learning_rate' is an empty list"),
        ("{parameters: {learning_rate: [1, 1]}}", "lists a value twice"),
        ("{parameters: {learning_rate: {low: 1, high: 2}}}", "a grid needs a list of values, not a range"),
        ("{method: random, parameters: {learning_rate: [1]}}", "key 'sweep.trials' is required"),
        (
            "{method: random, trials: 0, parameters: {learning_rate: [1]}}",
            "key 'sweep.trials' must be a whole number from 1",
        ),
        (
            "{method: search, trials: 3, parameters: {learning_rate: {low: 0, high: 1, log: true}}}",
            "a log range needs low > 0",
        ),
        (
            "{method: search, trials: 3, parameters: {learning_rate: {low: 2, high: 1}}}",
            "low (2) must be below high (1)",
        ),
        ("{parameters: {output_dir: [a, b]}}", "output_dir cannot vary by trial"),
        ("{parameters: {'../x': [1]}}", "is not a key of the cell"),
        ("{parameters: {learning_rate: [1]}, pruner: x}", "key 'sweep.pruner' is not a sweep key"),
        (
            "{parameters: {learning_rate: [1]}, prune: true}",
            "pruning stops trials early against the others, with method: search",
        ),
        ("{parameters: {learning_rate: [1]}, direction: up}", "key 'sweep.direction' must be minimize or maximize"),
        ("{parameters: {learning_rate: [1]}, parallel: 0}", "key 'sweep.parallel' must be a whole number from 1 to 64"),
        (
            "{parameters: {a: [1,2,3,4,5,6,7,8,9,10], b: [1,2,3,4,5,6,7,8,9,10], c: [1,2,3,4,5,6,7,8,9,10,11]}}",
            "the grid has 1100 combinations, over 1000",
        ),
        ("{parameters: {lora.api_key: [a]}}", "a secret cannot be swept"),
        ("{method: search, trials: 2, parameters: {lora: [{r: 8}, {r: 16}]}}", "a search chooses among plain values"),
        ("{method: search, trials: 2, parameters: {x: [1, true]}}", "a search needs values that differ"),
    ],
)
def test_a_bad_sweep_key_is_one_line_naming_it(sweep, message):
    import yaml

    with pytest.raises(SweepError) as err:
        read_sweep(yaml.safe_load(sweep))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        # a value the run's own checks refuse: which trial, which key
        (
            "  parameters:\n    learning_rate: [1.0e-3, -1]\n",
            "sweep trial 2 (learning_rate=-1): key 'learning_rate'",
        ),
        ("  parameters:\n    lora.r: [8, 0]\n", "sweep trial 2 (lora.r=0)"),
        ("  parameters:\n    lora.rank: [8]\n", "sweep trial 1 (lora.rank=8)"),
        ("  parameters:\n    learnin_rate: [1.0e-3]\n", "did you mean 'learning_rate'"),
        ("  parameters:\n    dataset: [no-such-file.jsonl]\n", "sweep trial 1 (dataset='no-such-file.jsonl')"),
        # a metric the trials will not measure would leave every trial unscored
        (
            "  metric: json_match\n  parameters:\n    learning_rate: [1.0e-3]\n",
            "key 'sweep.metric': the trials do not measure json_match (they measure loss, eval_loss;",
        ),
        ("  parameters:\n    hub_token: [a, b]\n", "a secret cannot be swept"),
    ],
)
def test_a_bad_value_is_one_line_before_any_trial_starts(shell, tiny_model, qa_jsonl, tmp_path, sweep, message):
    cell = _cell(tiny_model, qa_jsonl, sweep)
    with pytest.raises(UsageError) as err:
        shell.run_cell_magic("sft_train", "--name bad", cell)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing was made


def test_flags_that_name_one_run_are_refused_with_a_sweep(shell, tiny_model, qa_jsonl, tmp_path):
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: [1.0e-3]\n")
    for line, message in [
        ("--overwrite", "--overwrite removes one run"),
        ("--launcher torchrun --nproc 2", "--launcher / --nproc"),
    ]:
        with pytest.raises(UsageError, match=message):
            shell.run_cell_magic("sft_train", f"--name s {line}", cell)
    with pytest.raises(UsageError, match="key 'output_dir' cannot go with a sweep"):
        shell.run_cell_magic("sft_train", "", cell.replace("sweep:", f"output_dir: {tmp_path}/x\nsweep:"))
    with pytest.raises(UsageError, match="sweep.metric': the trials have no evaluation"):
        shell.run_cell_magic("sft_train", "--name s", cell.replace("eval_split: 0.25\n", ""))


def test_dry_run_lists_the_trials_checked_and_starts_nothing(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: [1.0e-3, 2.0e-3]\n    lora.r: [4, 8]\n")
    summary = shell.run_cell_magic("sft_train", "--name lr --dry-run -o plan", cell)
    out = capsys.readouterr().out
    assert "lr.04-learning_rate_0.002-r_8" in out and "compared by eval_loss (minimize)" in out
    assert [t["name"] for t in summary["trials"]][0] == "lr.01-learning_rate_0.001-r_4"
    assert not (tmp_path / "runs" / "lr").exists()


def test_a_taken_name_is_refused_and_the_existing_folder_kept(shell, tiny_model, qa_jsonl, tmp_path):
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: [1.0e-3]\n")
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="a folder named 'mine' already exists"):
        shell.run_cell_magic("sft_train", "--name mine", cell)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "runs" / "x.01-learning_rate_0.001").mkdir()
    with pytest.raises(UsageError, match="trial x.01-learning_rate_0.001: a folder of that name already exists"):
        shell.run_cell_magic("sft_train", "--name x", cell)


def _record(trials, metric="eval_loss", direction="minimize", leader=None):
    base = {"params": {}, "state": "finished", "error": None, "steps": 4, "max_steps": 4, "train_loss": 1.0}
    rows = []
    for i, (params, history, metric_history, value) in enumerate(trials, 1):
        rows.append(
            {
                **base,
                "index": i,
                "name": f"s.{i:02d}",
                "params": params,
                "history": history,
                "metric_history": metric_history,
                "value": value,
                "value_step": metric_history[-1][0] if metric_history else None,
                "leader": leader == i,
            }
        )
    return {
        "name": "s",
        "method": "grid",
        "parameters": list(trials[0][0]),
        "metric": metric,
        "direction": direction,
        "planned": len(trials),
        "state": "finished",
        "error": None,
        "trials": rows,
        "leader": f"s.{leader:02d}" if leader else None,
        "best": f"s.{leader:02d}" if leader else None,
    }


def test_the_view_escapes_values_and_marks_the_leader_in_every_form():
    from sft_magics.display._sweep_view import SweepView

    record = _record(
        [
            ({"chat_template": "<script>alert(1)</script>"}, [(1, 2.0), (2, 1.5)], [(2, 1.4)], 1.4),
            ({"chat_template": "chatml"}, [(1, 2.0), (2, 1.2)], [(2, 1.1)], 1.1),
        ],
        leader=2,
    )
    view = SweepView(record)
    page = view.to_html()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    text = view.to_text()
    assert "★  s.02" in text and "leader s.02" in text and "best trial with a model: s.02" in text
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(view.chart_png())).size[0] > 800  # two panels: loss and the metric
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(view)
    assert "<script>alert(1)</script>" in console.export_text()  # plain text in rich, not markup


def test_the_live_widget_redraws_the_table_and_offers_each_trial(tmp_path):
    from sft_magics.display._sweep_view import SweepWatch

    stopped, attached = [], []
    watch = SweepWatch(tmp_path / "s", "widget", on_stop=lambda: stopped.append(1), attach=attached.append)
    record = _record([({"lr": "<b>x</b>"}, [(1, 2.0)], [(1, 1.9)], 1.9), ({"lr": "y"}, [(1, 2.1)], [], None)], leader=1)
    watch.update(record)
    assert "&lt;b&gt;x&lt;/b&gt;" in watch.html.value and "<b>x</b>" not in watch.html.value
    assert list(watch.trial.options) == ["s.01", "s.02"]
    watch.stop_all.click()
    assert stopped == [1] and watch.stop_all.disabled and watch.stop_all.description == "stopping…"
    watch.trial.value = "s.02"
    watch.attach_one.click()
    assert attached == ["s.02"]


def test_a_list_variable_is_written_into_the_cell_as_a_yaml_list(shell, tiny_model, qa_jsonl, capsys):
    shell.user_ns.update(RATES=[1.0e-3, 3.0e-3], RANKS=(4,))
    cell = _cell(tiny_model, qa_jsonl, "  parameters:\n    learning_rate: {RATES}\n    lora.r: {RANKS}\n")
    summary = shell.run_cell_magic("sft_train", "--name vars --dry-run -o plan", cell)
    assert [t["learning_rate"] for t in summary["trials"]] == [1.0e-3, 3.0e-3]
    assert [t["lora.r"] for t in summary["trials"]] == [4, 4]


def _folder_with_queue(tmp_path, base: dict, trials: list[dict]):
    """A sweep folder written as start_sweep writes it, for the driver to run in this process."""
    from sft_magics.core.sweep.folder import SweepFolder

    spec = read_sweep({"parameters": {"learning_rate": [t["params"]["learning_rate"] for t in trials]}})
    folder = SweepFolder.create(tmp_path / "runs", "s")
    folder.write_info(
        {
            "name": "s",
            "method": "grid",
            "spec": spec.as_dict(),
            "base": base,
            "metric": "loss",
            "direction": "minimize",
            "parallel": 1,
            "gpus": 0,
            "output_dir": str(tmp_path / "runs"),
            "launch": {"launcher": "none", "nproc": 1},
        }
    )
    folder.write_queue({"state": "running", "trials": trials})
    return folder


def test_three_trials_in_a_row_that_cannot_start_end_the_sweep_with_the_cause(tiny_model, tmp_path):
    from sft_magics.core.files import read_json
    from sft_magics.core.sweep.driver import drive

    base = {"model": tiny_model, "dataset": str(tmp_path / "gone.jsonl"), "max_steps": 1}
    trials = [
        {"index": i, "name": f"s.0{i}", "params": {"learning_rate": i * 1e-3}, "state": "queued"} for i in range(1, 6)
    ]
    folder = _folder_with_queue(tmp_path, base, trials)
    assert drive(folder.path, poll=0.05) == 0
    queue = read_json(folder.path / "trials.json")
    assert [t["state"] for t in queue["trials"]] == ["failed", "failed", "failed", "cancelled", "cancelled"]
    assert queue["state"] == "failed" and queue["error"].startswith("3 trials in a row could not start; the last:")
    assert "gone.jsonl" in queue["trials"][0]["error"]


def test_a_trial_a_dead_driver_was_starting_is_adopted_not_started_twice(tiny_model, qa_jsonl, tmp_path):
    """The driver writes 'starting' before a trial's run exists; a driver started after it died adopts
    the run it finds (and settles it), or starts the trial when no run was made."""
    import json as _json

    from sft_magics.core.files import read_json
    from sft_magics.core.sweep.driver import drive

    base = {"model": tiny_model, "dataset": qa_jsonl, "max_steps": 1, "per_device_train_batch_size": 4}
    trials = [
        {"index": 1, "name": "s.01", "params": {"learning_rate": 1e-3}, "state": "starting"},
        {"index": 2, "name": "s.02", "params": {"learning_rate": 2e-3}, "state": "starting"},
    ]
    folder = _folder_with_queue(tmp_path, base, trials)
    made = tmp_path / "runs" / "s.01"  # a run the dead driver had made: it finished meanwhile
    made.mkdir()
    (made / "status.json").write_text(_json.dumps({"state": "finished", "step": 1}))
    (made / "metrics.jsonl").write_text(_json.dumps({"kind": "log", "step": 1, "loss": 2.5, "time": 1}) + "\n")
    (made / "supervisor.json").write_text(_json.dumps({"pid": 999999999}))
    assert drive(folder.path, poll=0.2) == 0
    queue = read_json(folder.path / "trials.json")
    assert [t["state"] for t in queue["trials"]] == ["finished", "finished"]
    assert queue["trials"][0]["value"] == 2.5 and queue["trials"][0]["pid"] == 999999999  # adopted, not retrained
    assert read_json(tmp_path / "runs" / "s.02" / "status.json")["state"] == "finished"  # started afresh
