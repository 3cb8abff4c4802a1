"""Template checks pass and fail; truncation; sandbox; templates that raise; the magic's flags."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from sft_magics.core.template.checks import template_checks
from sft_magics.core.template.render import TemplateError
from sft_magics.core.template.tokens import (
    MASK_LAST_TURN,
    MASK_MARKERS,
    MASK_PREFIX,
    first_difference,
    inference_rendering,
    render,
)

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# Same, with generation markers around the assistant's content and end token.
CHATML_MARKED = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The last message renders differently from earlier ones: not prefix-preserving.
NOT_PREFIX = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if loop.last %}<|im_end|>{% else %}|{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# No end-of-turn token after a message.
NO_END = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# The generation prompt is not how an assistant turn starts in training.
OTHER_HEADER = "{% for m in messages %}<|im_start|>{{ m.role }}:\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

ONE = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
TWO = ONE + [{"role": "user", "content": "And three plus three?"}, {"role": "assistant", "content": "Six."}]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from sft_magics.core.models import load_tokenizer

    return load_tokenizer(tiny_model)


def _checks(tok, template, messages):
    r = render(tok, {"messages": messages}, chat_template=template)
    return r, {c.name: c for c in template_checks(tok, r, messages, chat_template=template)}


def test_all_checks_pass_on_a_good_template(tok):
    r, checks = _checks(tok, CHATML, TWO)
    assert r.mask_source == MASK_PREFIX
    assert all(c.ok for c in checks.values()), checks
    assert set(checks) == {
        "prefix-preserving",
        "every message rendered",
        "end token trained",
        "inference matches training",
        "generation markers",
    }
    assert "'<|im_end|>'" in checks["end token trained"].detail
    assert [m["trained"] > 0 for m in r.per_message()] == [False, True, False, True]


def test_markers_template_uses_the_markers_and_passes(tok):
    r, checks = _checks(tok, CHATML_MARKED, TWO)
    assert r.mask_source == MASK_MARKERS
    assert checks["generation markers"].ok and "{% generation %}" in checks["generation markers"].detail
    assert "".join(t.text for t in r.tokens if t.trained) == "Four.<|im_end|>Six.<|im_end|>"


def test_not_prefix_preserving_fails_and_trains_only_the_last_answer(tok):
    r, checks = _checks(tok, NOT_PREFIX, TWO)
    assert not checks["prefix-preserving"].ok
    assert "render differently once message" in checks["prefix-preserving"].detail
    assert r.mask_source == MASK_LAST_TURN
    assert (
        not checks["generation markers"].ok
        and "1 earlier assistant turn(s) are not" in checks["generation markers"].detail
    )
    assert "Four." not in "".join(t.text for t in r.tokens if t.trained)


def test_end_token_not_trained_is_flagged(tok):
    _, checks = _checks(tok, NO_END, ONE)
    assert not checks["end token trained"].ok
    assert "may never learn to stop" in checks["end token trained"].detail


def test_inference_prompt_differing_from_training_is_flagged(tok):
    r, checks = _checks(tok, OTHER_HEADER, ONE)
    check = checks["inference matches training"]
    assert not check.ok and check.detail.startswith("differs at token")
    inference = inference_rendering(tok, ONE, chat_template=OTHER_HEADER)
    assert first_difference(r.input_ids, inference.input_ids) is not None
    assert not any(t.trained for t in inference.tokens)
    good = render(tok, {"messages": ONE}, chat_template=CHATML)
    assert first_difference(good.input_ids, inference_rendering(tok, ONE, chat_template=CHATML).input_ids) is None


def test_truncation_report(tok):
    r = render(tok, {"messages": ONE}, chat_template=CHATML)
    n, first_trained = len(r.tokens), r.prompt_length
    r.max_length = n + 5
    assert r.truncation()["dropped_tokens"] == 0
    r.max_length = n - 2
    cut = r.truncation()
    assert cut["dropped_tokens"] == 2 and cut["dropped_trained"] == 2
    assert cut["dropped_text"] == "".join(t.text for t in r.tokens[-2:])
    r.max_length = first_trained
    assert r.truncation()["trained_left"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__.os.popen('touch /tmp/pwned').read() }}",
    ],
)
def test_sandbox_refuses_python_internals(tok, payload, tmp_path):
    with pytest.raises(TemplateError, match="refused by the sandbox .*nothing was run"):
        render(tok, {"messages": ONE}, chat_template=payload)


def test_a_template_that_raises_shows_its_message_and_row(shell, tiny_model, tmp_path):
    strict = "{% for m in messages %}{% if m.role == 'user' and not loop.first %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}{{ m.content }}{% endfor %}"
    shell.user_ns["strict"] = strict
    shell.user_ns["msgs"] = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    with pytest.raises(UsageError, match=r"^msgs: the chat template raised: Conversation roles must alternate$"):
        shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --chat-template strict")
    data = tmp_path / "d.jsonl"
    import json

    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [ONE, shell.user_ns["msgs"]]))
    with pytest.raises(UsageError, match=r"^row 1: the chat template raised: Conversation roles must alternate$"):
        shell.run_line_magic("sft_template", f"{tiny_model} --data {data} --row 1 --chat-template strict")


def test_magic_flags(shell, tiny_model, tmp_path, capsys):
    shell.user_ns["msgs"] = TWO
    template_file = tmp_path / "t.jinja"
    template_file.write_text(NO_END)
    r = shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --chat-template {template_file} -o r")
    assert {c.name: c.ok for c in r.checks}["end token trained"] is False
    out = capsys.readouterr().out
    assert "⚠ end token trained" in out

    r = shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --add-generation-prompt -o r")
    assert r.text.endswith("<|im_start|>user\nAnd three plus three?<|im_end|>\n<|im_start|>assistant\n")
    assert r.trained_count == 0

    shell.user_ns["tools"] = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    shell.user_ns["tool_tpl"] = "{% if tools %}TOOLS={{ tools | length }}|{% endif %}" + CHATML
    r = shell.run_line_magic(
        "sft_template", f"{tiny_model} --messages msgs --chat-template tool_tpl --tools tools -o r"
    )
    assert r.text.startswith("TOOLS=1|")
    shell.user_ns["kw_tpl"] = "{% if shout %}LOUD|{% endif %}" + CHATML
    r = shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --chat-template kw_tpl -k shout=true -o r")
    assert r.text.startswith("LOUD|")

    r = shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --max-length 12 -o r")
    assert r.truncation()["dropped_tokens"] == len(r.tokens) - 12
    assert "no trained token left" in capsys.readouterr().out

    shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --compare {tiny_model}")
    shell.run_line_magic("sft_template", f"{tiny_model} --messages msgs --inference")
    out = capsys.readouterr().out
    assert out.count("<|im_start|>assistant") >= 4
    assert "inference prompt = training rendering up to the answer" in out


@pytest.mark.parametrize(
    "line,message",
    [
        ("--messages msgs --chat-template nowhere", "not a notebook variable holding a string, nor a .jinja file"),
        ("--messages msgs --chat-template missing.jinja", "file not found: missing.jinja"),
        ("--messages msgs -k novalue", "expected KEY=VALUE"),
        ("--messages msgs --tools nothing", "no notebook variable named 'nothing'"),
        ("--messages bad", r"message 1 \(assistant\) needs a 'content' string"),
    ],
)
def test_magic_flag_errors(shell, tiny_model, line, message):
    shell.user_ns["msgs"] = ONE
    shell.user_ns["bad"] = [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("sft_template", f"{tiny_model} {line}")


# -- the template's own text: a default system message is not the user's ---------------------------
NO_SYSTEM_ROLE = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DATED_HEADER = (  # Llama 3's way: a system block of its own (a date) before the first message
    "{% if messages[0].role != 'system' %}<|im_start|>system\nToday is 7 Dec.<|im_end|>\n{% endif %}" + CHATML
)


@pytest.mark.parametrize(
    ("template", "glue"),
    [(CHATML, ""), (NO_SYSTEM_ROLE, ""), (DATED_HEADER, "<|im_start|>system\nToday is 7 Dec.<|im_end|>\n")],
)
def test_text_the_template_inserts_belongs_to_no_message(tok, template, glue):
    """Only what a template adds by itself (a default system message) is the template's own text;
    a template without one, or that refuses a system role, leaves every token to its message."""
    r = render(tok, {"messages": ONE}, chat_template=template)
    assert "".join(t.text for t in r.tokens if t.message is None) == glue
    user = "".join(t.text for t in r.tokens if t.message == 0)
    assert user.startswith("<|im_start|>user") and "What is two plus two?" in user
    with_system = render(tok, {"messages": [{"role": "system", "content": "Be brief."}, *ONE]}, chat_template=CHATML)
    assert all(t.message is not None for t in with_system.tokens)  # the user's own system message is theirs
