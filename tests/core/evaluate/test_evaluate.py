"""Metrics on hand-computed values; batched generation equals one-by-one; adapter toggling."""

from __future__ import annotations

import pytest

from sft_magics.core.evaluate.generation import adapter_disabled, generate, render_prompts, stop_token_ids
from sft_magics.core.evaluate.metrics import exact_match, json_fields, json_match, json_valid

REF = '{"name": "Ana", "age": 34, "city": "Lisbon"}'


@pytest.mark.parametrize(
    "pred,em,valid,match,fields",
    [
        (REF, 1.0, 1.0, 1.0, 1.0),
        ('  {"name": "Ana", "age": 34, "city": "Lisbon"}\n', 1.0, 1.0, 1.0, 1.0),
        ('{"city": "Lisbon", "age": 34, "name": "Ana"}', 0.0, 1.0, 1.0, 1.0),  # key order: not exact, same JSON
        ('{"name": "Ana", "age": "34", "city": "Lisbon"}', 0.0, 1.0, 0.0, 2 / 3),  # age as a string
        ('{"name": "Bo"}', 0.0, 1.0, 0.0, 0.0),
        ("Ana is 34", 0.0, 0.0, 0.0, 0.0),
        ("[1, 2]", 0.0, 1.0, 0.0, 0.0),
    ],
)
def test_metrics_on_hand_computed_values(pred, em, valid, match, fields):
    assert exact_match(pred, REF) == em
    assert json_valid(pred, REF) == valid
    assert json_match(pred, REF) == match
    assert json_fields(pred, REF) == pytest.approx(fields)


def test_batched_generation_equals_one_by_one(tiny_model):
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    prompts = [[{"role": "user", "content": "hi " * n}] for n in (1, 5, 9, 2)]  # different lengths: padding matters
    batched = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_prompt_uses_the_models_template_and_stop_tokens(tiny_model):
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    text = render_prompts(loaded.tokenizer, [[{"role": "user", "content": "hi"}]])[0]
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert stop_token_ids(loaded.model, loaded.tokenizer) == [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_adapter_disabled_gives_the_base_models_outputs(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    from sft_magics.core.models import load_model

    base = load_model(tiny_model)
    ids = base.tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base.model(ids).logits.clone()
    peft_model = get_peft_model(
        load_model(tiny_model).model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        tuned_logits = peft_model(ids).logits
        with adapter_disabled(peft_model) as m:
            disabled_logits = m(ids).logits
    assert not torch.allclose(tuned_logits, base_logits)
    assert torch.allclose(disabled_logits, base_logits)


# -- text metrics on hand-computed values ------------------------------------------------------------

from sft_magics.core.errors import EvalError  # noqa: E402
from sft_magics.core.evaluate.evaluation import choose_shots, with_shots  # noqa: E402
from sft_magics.core.evaluate.example import Example  # noqa: E402
from sft_magics.core.evaluate.metrics import (  # noqa: E402
    METRICS,
    bleu,
    chrf,
    normalize_answer,
    rouge_l,
    select_metrics,
    token_f1,
)
from sft_magics.core.evaluate.report import EvalReport, EvalResult  # noqa: E402


@pytest.mark.parametrize(
    "pred,ref,expected",
    [
        ("The cat sat.", "a cat sat on the mat", 2 / 3),  # normalised: "cat sat" vs "cat sat on mat": P 1, R 1/2
        ("cat cat dog", "cat dog dog", 2 / 3),  # bags: common {cat: 1, dog: 1} = 2 of 3 each
        ("Paris", "paris!", 1.0),  # case and punctuation ignored
        ("London", "Paris", 0.0),
        ("the", "a", 1.0),  # both normalise to nothing: equal
        ("", "Paris", 0.0),
    ],
)
def test_token_f1_is_squad_style(pred, ref, expected):
    assert token_f1(pred, ref) == pytest.approx(expected)


def test_normalize_answer_follows_squad():
    assert normalize_answer("  The Quick, brown fox!  An apple ") == "quick brown fox apple"


def test_rouge_l_is_the_lcs_f_measure():
    # LCS of "the cat sat on the mat" / "the cat was on the mat" is 5 words of 6: P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    # Prediction "the cat" vs reference "the cat sat on the mat": P 2/2, R 2/6, F = 2PR/(P+R) = 1/2.
    assert rouge_l("the cat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l("dog", "cat") == 0.0


def test_bleu_is_sacrebleus_sentence_bleu_as_a_fraction():
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # n-gram precisions 5/6, 3/5, 1/4 and 0/3 -> exp smoothing 1/(2*3); brevity penalty 1 (equal length).
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu("the cat sat on the mat", "the cat was on the mat") == pytest.approx(expected)
    assert bleu("", "abc") == 0.0


def test_chrf_is_sacrebleus_sentence_chrf_as_a_fraction():
    # "abc" vs "abd": char 1-grams P = R = 2/3, 2-grams 1/2, 3-grams 0 -> mean P = R = 7/18 -> F(beta 2) = 7/18.
    assert chrf("abc", "abd") == pytest.approx(7 / 18)
    # "abcd" vs "abc": P 3/4, 2/3, 1/2 (mean 23/36), R 1 -> F2 = 5PR / (4P + R).
    p = (3 / 4 + 2 / 3 + 1 / 2) / 3
    assert chrf("abcd", "abc") == pytest.approx(5 * p / (4 * p + 1))
    assert chrf("abc", "abc") == pytest.approx(1.0)


def test_json_metrics_apply_only_to_json_references():
    json_examples = [Example([{"role": "user", "content": "q"}], REF)]
    text_examples = [Example([{"role": "user", "content": "q"}], "Paris")]
    assert {"json_valid", "json_match", "json_fields"} <= {m.name for m in select_metrics(None, json_examples)}
    names = [m.name for m in select_metrics(None, text_examples)]
    assert names == ["loss", "perplexity", "exact_match", "token_f1", "rouge_l", "bleu", "chrf"]
    assert [m.name for m in select_metrics(["json_match", "loss"], text_examples)] == ["json_match", "loss"]
    assert METRICS["loss"].higher_is_better is False and METRICS["token_f1"].higher_is_better is True


# -- loss and perplexity on the trained tokens ---------------------------------------------------------


def _manual_loss(model, tokenizer, rows):
    """Per row, one unpadded forward pass; cross-entropy summed over the tokens tokenize_row trains."""
    import torch
    import torch.nn.functional as F

    from sft_magics.core.template.tokens import tokenize_row

    sums, counts = [], []
    for row in rows:
        r = tokenize_row(tokenizer, row, "messages")
        ids, labels = torch.tensor([r.input_ids]), torch.tensor([r.labels])
        with torch.no_grad():
            logits = model(ids).logits
        ce = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        sums.append(ce.item())
        counts.append(int((labels[0, 1:] != -100).sum()))
    return sums, counts


def test_loss_and_perplexity_equal_a_manual_forward_pass(tiny_model):
    import math

    from sft_magics.core.data.load import load_data
    from sft_magics.core.evaluate.evaluation import examples_from, run_evaluation
    from sft_magics.core.models import load_model

    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi " * n},
                {"role": "assistant", "content": "hello world " * (n % 3 + 1)},
            ]
        }
        for n in (1, 6, 3, 9, 2)
    ]
    rows.append(
        {
            "messages": [  # two assistant turns: both are trained, both are scored
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b c"},
                {"role": "user", "content": "d"},
                {"role": "assistant", "content": "e f g"},
            ]
        }
    )
    loaded = load_model(tiny_model)
    examples = examples_from(load_data(rows))
    report = run_evaluation(loaded.model, loaded.tokenizer, examples, metrics=["loss", "perplexity"], batch_size=4)
    sums, counts = _manual_loss(loaded.model, loaded.tokenizer, rows)
    expected = sum(sums) / sum(counts)  # mean over all trained tokens, as the trainer's loss
    result = report["model"]
    assert result.mean("loss") == pytest.approx(expected, rel=1e-5)
    assert result.mean("perplexity") == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.scores["loss"] == pytest.approx([s / c for s, c in zip(sums, counts)], rel=1e-5)
    assert report.summary["loss"] == {"model": result.mean("loss")}
    assert result.predictions == [""] * len(rows)  # loss only: nothing generated


def test_batched_loss_equals_one_by_one(tiny_model):
    from sft_magics.core.evaluate.evaluation import loss_inputs, trained_token_loss
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    examples = [Example([{"role": "user", "content": "x " * n}], "y " * (n + 1)) for n in (1, 7, 3, 12)]
    encoded = loss_inputs(loaded.tokenizer, examples)
    batched = trained_token_loss(loaded.model, loaded.tokenizer, encoded, batch_size=4)
    single = trained_token_loss(loaded.model, loaded.tokenizer, encoded, batch_size=1)
    assert [n for _, n in batched] == [n for _, n in single] and all(n > 0 for _, n in single)
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in single], rel=1e-4)


# -- few-shot prompting ---------------------------------------------------------------------------------


def test_few_shot_prompts_hold_k_examples_before_the_question():
    pool = [Example([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(10)]
    shots = choose_shots(pool, 3, exclude={"q0", "q1"})
    assert len(shots) == 3 and len(set(shots)) == 3
    assert not {"q0", "q1"} & {q for q, _ in shots}  # an evaluated question never becomes a shot
    assert shots == choose_shots(pool, 3, exclude={"q0", "q1"})  # fixed seed: the same shots every time
    ex = Example(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "A",
        row={
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        },
        fmt="messages",
    )
    shot_ex = with_shots(ex, shots)
    assert [m["role"] for m in shot_ex.prompt] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert [(shot_ex.prompt[i]["content"], shot_ex.prompt[i + 1]["content"]) for i in (1, 3, 5)] == shots
    assert shot_ex.row["messages"][-1] == {"role": "assistant", "content": "A"} and shot_ex.question == "Q"
    with pytest.raises(EvalError, match="only 8 usable examples"):
        choose_shots(pool, 9, exclude={"q0", "q1"})


def test_few_shot_examples_come_from_the_task_being_measured():
    """A training set mixing tasks: the shots are drawn from the examples like the evaluated
    questions (the extraction rows), not from the plain-chat rows."""
    extract = [
        Example(
            [{"role": "user", "content": f"Extract the name and city as JSON. Text: P{i} lives in C{i}."}], f"{{{i}}}"
        )
        for i in range(30)
    ]
    chat = [Example([{"role": "user", "content": f"What is {i} plus {i}?"}], f"{2 * i}.") for i in range(70)]
    pool = [x for pair in zip(chat, extract) for x in pair] + chat[30:]
    evaluated = [
        "Extract the name and city as JSON. Text: Ana lives in Lima.",
        "Extract the name and city as JSON. Text: Bo lives in Oslo.",
    ]
    for seed in range(5):
        shots = choose_shots(pool, 3, like=evaluated, seed=seed)
        assert len(set(shots)) == 3 and all(q.startswith("Extract") for q, _ in shots), shots
    unguided = [choose_shots(pool, 3, seed=seed) for seed in range(5)]
    assert any(not q.startswith("Extract") for shots in unguided for q, _ in shots)  # the plain sample mixes them in
    # Only the most similar tenth (at least 4·K) is kept: with K=9 that is 36 candidates, so some chat rows.
    assert len(choose_shots(pool, 9, like=evaluated)) == 9


def test_few_shot_loss_scores_only_the_question_s_answer(tiny_model):
    from sft_magics.core.evaluate.evaluation import loss_inputs
    from sft_magics.core.models import load_model

    tok = load_model(tiny_model).tokenizer
    ex = Example([{"role": "user", "content": "Q"}], "the answer")
    plain = loss_inputs(tok, [ex])[0]
    shot = loss_inputs(tok, [with_shots(ex, [("q1", "a one"), ("q2", "a two")])], shots=2)[0]
    # The same tokens are scored (the final answer and its end token), the shots' answers are context.
    assert sum(shot[1]) == sum(plain[1]) > 0
    assert [t for t, m in zip(*shot) if m] == [t for t, m in zip(*plain) if m]


def test_few_shot_through_the_magic_costs_more_prompt_tokens(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    import json

    shots_file = tmp_path / "shots.jsonl"
    shots_file.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Shot question {i}"},
                        {"role": "assistant", "content": f"Shot answer {i}"},
                    ]
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    report = shell.run_line_magic(
        "sft_eval",
        f"{tiny_model} --data {qa_jsonl} --few-shot 2 --few-shot-data {shots_file} --limit 3 "
        "--metrics exact_match,json_valid --max-new-tokens 2 -o r",
    )
    assert list(report) == ["model", "few_shot"]  # a plain model is its own base
    assert len(report.shots) == 2 and all(q.startswith("Shot question") for q, _ in report.shots)
    plain, few = report["model"].prompt_tokens, report["few_shot"].prompt_tokens
    assert len(plain) == len(few) == 3 and all(f > p for p, f in zip(plain, few))
    assert report.prompt_tokens["few_shot"] > report.prompt_tokens["model"]
    out = capsys.readouterr().out
    assert "prompt tokens / request" in out and "Δ few_shot vs model" in out
    assert "[eval] few_shot: generating 3/3" in out  # a progress line per batch
    # each stage starts its clock at 0 (its first batch's line has a pace to estimate from, not ETA 00:00)
    assert "[eval] few_shot: generating 0/3" in out and "[eval] model: generating 0/3" in out


def test_a_stage_eta_is_its_pace_since_the_stage_began():
    from sft_magics.core.progress import StageProgress

    now = [0.0]
    s = StageProgress(clock=lambda: now[0])
    s("tuned: generating", 0, 40)
    now[0] = 10.0
    s("tuned: generating", 16, 40)
    assert s.eta == pytest.approx(15.0) and s.text().endswith("ETA 00:15")


# -- the magic: custom metrics, errors ------------------------------------------------------------------


def test_custom_metric_through_the_magic(shell, tiny_model, qa_jsonl):
    shell.user_ns["answer_chars"] = lambda prediction, reference: float(len(prediction))
    report = shell.run_line_magic(
        "sft_eval",
        f"{tiny_model} --data {qa_jsonl} --metrics exact_match --metric answer_chars --limit 4 --max-new-tokens 3 -o r",
    )
    assert shell.user_ns["r"] is report and report.metrics == ["exact_match", "answer_chars"]
    preds = report["model"].predictions
    assert report["model"].scores["answer_chars"] == [float(len(p)) for p in preds]
    assert report.summary["answer_chars"]["model"] == pytest.approx(sum(len(p) for p in preds) / 4)
    assert "model_answer_chars" in report.examples.columns


@pytest.mark.parametrize(
    "setup,flags,expected",
    [
        ({}, "--metric nothing_here", "--metric nothing_here: no notebook variable named 'nothing_here'"),
        ({"n": 3}, "--metric n", "--metric n: 'n' is a int, not a function"),
        (
            {"boom": lambda p, r: 1 / 0},
            "--metric boom --metrics exact_match",
            "metric 'boom' raised on example 0: ZeroDivisionError",
        ),
        ({}, "--metrics json_mach", "unknown metric 'json_mach'; did you mean 'json_match'?"),
        ({}, "--baseline base", "--baseline base: the target is a plain model"),
        ({}, "--few-shot 2", "--few-shot needs --few-shot-data SOURCE"),
        ({}, "--top-p 0", "--top-p must be in (0, 1], got 0.0"),
        ({}, "--batch-size 0", "--batch-size must be at least 1, got 0"),
    ],
)
def test_eval_mistakes_are_one_line_usage_errors(shell, tiny_model, qa_jsonl, setup, flags, expected):
    from IPython.core.error import UsageError

    shell.user_ns.update(setup)
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("sft_eval", f"{tiny_model} --data {qa_jsonl} --limit 2 --max-new-tokens 2 {flags}")
    assert expected in str(info.value) and "\n" not in str(info.value)


# -- a run: results saved, baseline and few-shot from the run's own training data ---------------------


def test_eval_of_a_run_saves_results_and_binds_a_report(shell, tiny_model, qa_jsonl, tmp_path):
    import json

    shell.run_cell_magic(
        "sft_train",
        "--name ev -o run",
        f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 1\nper_device_train_batch_size: 4\n",
    )
    report = shell.run_line_magic(
        "sft_eval", f"ev --data {qa_jsonl} --baseline base --few-shot 2 --limit 5 --max-new-tokens 3 -o s"
    )
    assert list(report) == ["tuned", "base", "few_shot"]
    assert report["tuned"].summary()["json_match"] == report.summary["json_match"]["tuned"]  # what demo.py reads
    metrics = [
        "loss",
        "perplexity",
        "exact_match",
        "token_f1",
        "rouge_l",
        "bleu",
        "chrf",
        "json_valid",
        "json_match",
        "json_fields",
    ]
    assert report.metrics == metrics
    assert list(report.examples.columns) == ["prompt", "reference"] + [
        f"{label}_{col}" for label in ("tuned", "base", "few_shot") for col in ["answer", *metrics]
    ]
    assert len(report.examples) == 5 and report.examples["prompt"][0] == "Person 0 is 20."
    # Shots come from the run's training data (config.yaml `dataset`), never one of the 5 questions.
    assert all(q.startswith("Person ") and q not in set(report.examples["prompt"]) for q, _ in report.shots)
    assert report.deltas()["loss"]["tuned"] == pytest.approx(
        report.summary["loss"]["tuned"] - report.summary["loss"]["base"]
    )

    folders = list((tmp_path / "runs" / "ev" / "eval").iterdir())
    assert len(folders) == 1 and report.saved_to == folders[0]
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["models"] == ["tuned", "base", "few_shot"] and summary["examples"] == 5
    assert summary["metrics"]["json_match"] == report.summary["json_match"]
    assert summary["prompt_tokens"]["few_shot"] > summary["prompt_tokens"]["base"]
    assert summary["settings"]["few_shot"] == 2 and len(summary["few_shot"]) == 2
    lines = [json.loads(x) for x in (folders[0] / "examples.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and lines[0]["tuned_answer"] == report["tuned"].predictions[0]
    assert lines[0]["messages"] == [{"role": "user", "content": "Person 0 is 20."}]

    # Base is the same weights with the adapter disabled: evaluating it again by run name agrees.
    again = shell.run_line_magic(
        "sft_eval",
        f"ev --data {qa_jsonl} --baseline base --limit 5 --max-new-tokens 3 --metrics loss,exact_match -o s2",
    )
    assert again["base"].mean("loss") == pytest.approx(report["base"].mean("loss"), rel=1e-5)
    assert again["base"].predictions == report["base"].predictions
    assert len(list((tmp_path / "runs" / "ev" / "eval").iterdir())) == 2


# -- display: escaping, diffs, sorting, text and rich forms ---------------------------------------------


def _report(answers: dict[str, list[str]], refs: list[str], questions: list[str] | None = None) -> EvalReport:
    from sft_magics.core.evaluate.evaluation import run_evaluation  # noqa: F401 - the real type, built by hand

    questions = questions or [f"question {i}" for i in range(len(refs))]
    report = EvalReport()
    report.eval_examples = [Example([{"role": "user", "content": q}], r) for q, r in zip(questions, refs)]
    report.metrics = ["token_f1", "loss"]
    report.higher_is_better = {"token_f1": True, "loss": False}
    for k, (label, preds) in enumerate(answers.items()):
        scores = {
            "token_f1": [token_f1(p, r) for p, r in zip(preds, refs)],
            "loss": [1.0 + i + k for i in range(len(refs))],
        }
        report[label] = EvalResult(label, preds, scores, 1.0, prompt_tokens=[10 + k] * len(refs))
    return report


def test_diff_marks_words_after_escaping():
    import re

    from sft_magics.display._eval_view import diff_html

    def bare(marked: str) -> str:  # the marks without their (shared) colours
        return re.sub(r"<(ins|del) style=\"[^\"]*\">", r"<\1>", marked)

    assert bare(diff_html("the cat sat", "the dog sat")) == "the <del>cat</del><ins>dog</ins> sat"
    assert bare(diff_html("a b", "a b c")) == "a b<ins> c</ins>"
    marked = bare(diff_html("<b>x</b>", "<script>x</script>"))
    assert marked == "&lt;<del>b</del><ins>script</ins>&gt;x&lt;/<del>b</del><ins>script</ins>&gt;"
    assert bare(diff_html("", "<script>")) == "<ins>&lt;script&gt;</ins>"


def test_one_colour_language_for_differences_in_the_dashboard_and_the_eval_pager():
    """Answer text the reference lacks has one colour in every view; an empty answer is noted and
    counted, not only shown as a struck-through reference."""
    from sft_magics.core.events import Event
    from sft_magics.core.progress import ProgressState
    from sft_magics.display._dashboard_html import samples_html
    from sft_magics.display._eval_view import EvalView, diff_html
    from sft_magics.display._style import EXTRA

    state = ProgressState()
    sample = {"prompt": "p", "reference": '{"a": 1}', "answer": '{"a": 2}', "previous": ""}
    state.update(Event("answers", {"step": 3, "rows": 2, "empty": 1, "samples": [sample, dict(sample, answer="")]}))
    panel = samples_html(state)
    assert f"background:{EXTRA}" in panel and f"background:{EXTRA}" in diff_html("a", "a b")
    assert panel.count("(empty answer)") == 3 and "1 empty" in panel  # one answer now, both previous ones
    report = _report({"tuned": ["fine", ""], "base": ["", ""]}, ["fine", "ref"])
    for lb in ("tuned", "base"):
        report[lb].ended = [True, True]
    page = EvalView(report, worst=2).to_html()
    assert "(empty answer)" in page
    rows = dict((r[0], r[1:]) for r in EvalView(report).rows())
    assert rows["empty answers"][:2] == ["1 of 2", "2 of 2"]


def test_example_tables_escape_model_and_reference_text():
    from sft_magics.display._eval_view import EvalBrowser, EvalView

    evil = "<script>alert(1)</script>"
    report = _report(
        {"tuned": [evil, "fine"], "base": ["x", evil]},
        [f"ref {evil}", "<img src=x onerror=alert(2)>"],
        questions=[f"q {evil}", "q2"],
    )
    for page in (EvalView(report).to_html(), EvalBrowser(report, page_size=5).table.value):
        assert "<script>" not in page and "<img" not in page
        assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
        assert "<ins style=" in page and "<del style=" in page


def test_sorting_worst_first_and_paging():
    from sft_magics.display._eval_view import EvalBrowser

    refs = ["w x y z"] * 7
    preds = ["w x y z", "q", "w x", "w", "w x y", "p r", "w x y z"]  # token F1: 1, 0, 2/3, 2/5, 6/7, 0, 1
    report = _report({"tuned": preds, "base": preds}, refs)
    assert report.order("token_f1") == [1, 5, 3, 2, 4, 0, 6]  # lowest first, ties by position
    assert report.order("loss") == [6, 5, 4, 3, 2, 1, 0]  # loss: highest (worst) first
    assert report.order(None) == list(range(7))

    browser = EvalBrowser(report, page_size=3)
    assert browser.sort.value == "token_f1"  # default: worst first by the primary metric
    assert [label for label, _ in browser.sort.options] == [
        "original order",
        "worst first by token_f1",
        "worst first by loss",
    ]
    assert browser.indices() == [1, 5, 3] and browser.prev.disabled and not browser.next.disabled
    browser.next.click()
    assert browser.indices() == [2, 4, 0] and "page 2/3" in browser.position.value
    browser.next.click()
    browser.next.click()  # stays on the last page
    assert browser.indices() == [6] and browser.next.disabled
    browser.sort.value = "loss"  # a new sort key starts again at page 1
    assert browser.page == 0 and browser.indices() == [6, 5, 4]
    assert "question 6" in browser.table.value


def test_text_and_rich_forms_show_the_summary_and_the_worst_five():
    import io

    from rich.console import Console

    from sft_magics.display._eval_view import EvalView

    refs = ["w x y z"] * 7
    report = _report({"tuned": ["w x y z", "q", "w x", "w", "w x y", "p r", "w x y z"], "base": ["q"] * 7}, refs)
    text = EvalView(report).to_text()
    assert text.splitlines()[0] == "evaluation on 7 examples"
    assert "token_f1 ↑" in text and "loss ↓" in text and "Δ tuned vs base" in text
    assert "worst 5 by token_f1 (tuned):" in text
    assert [line.split()[0] for line in text.splitlines() if line.startswith("#")] == ["#1", "#5", "#3", "#2", "#4"]
    console = Console(file=io.StringIO(), width=120)
    console.print(EvalView(report))
    rendered = console.file.getvalue()
    assert "evaluation on 7 examples" in rendered and "worst 5 by token_f1" in rendered and "p r" in rendered
    assert EvalView(report, worst=0).to_text().count("#") == 0


def test_widget_mode_shows_progress_then_summary_and_pager(shell, tiny_model, qa_jsonl, monkeypatch):
    import IPython.display
    import ipywidgets as w

    from sft_magics.display._eval_view import EvalView

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    shell.run_line_magic("config", "SftMagics.display = 'widget'")
    report = shell.run_line_magic(
        "sft_eval",
        f"{tiny_model} --data {qa_jsonl} --limit 5 --batch-size 2 --max-new-tokens 2 --metrics exact_match -o r",
    )
    progress, summary, pager = shown
    bar, label = progress.children
    assert isinstance(bar, w.IntProgress) and (bar.value, bar.max) == (5, 5)  # updated through generate(on_batch=...)
    assert label.value.startswith("model: generating 5/5 · ")  # with the elapsed time (and ETA while running)
    assert isinstance(summary, EvalView) and summary.worst == 0  # the pager shows the examples
    assert isinstance(pager, w.VBox) and "Person 0 is 20." in pager.children[1].value
    assert report["model"].predictions and len(report.examples) == 5
