"""%sft_chat: the chat session (streaming, history, base model, stop flag), the one-shot magic through
a real InteractiveShell, and the chat widget (Send on a worker thread, escaping)."""

from __future__ import annotations

import threading

import pytest

MAX = 12  # new tokens per reply in the greedy comparisons


@pytest.fixture(scope="module")
def lora(tiny_model, tmp_path_factory):
    """The tiny model with a random (non-zero) LoRA adapter, so the tuned model differs from its base,
    saved as an adapter folder too. Seed 2 gives a greedy answer with spaces (" hel hel ..."), so the
    streamer hands it over in several pieces."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    torch.manual_seed(2)
    model = get_peft_model(
        loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    )
    model.eval()
    folder = tmp_path_factory.mktemp("chat-adapter")
    model.save_pretrained(folder)
    return model, loaded.tokenizer, str(folder)


@pytest.fixture(scope="module")
def base(tiny_model):
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    return loaded.model, loaded.tokenizer


def _session(lora, **kw):
    from sft_magics.core.evaluate.chat import ChatSession

    model, tokenizer, _ = lora
    return ChatSession(model, tokenizer, **kw)


def _reference(model, tokenizer, messages, **kw):
    """The non-streamed answer from core.evaluate.generate for the same conversation."""
    from sft_magics.core.evaluate.generation import generate

    return generate(model, tokenizer, [messages], max_new_tokens=kw.pop("max_new_tokens", MAX), batch_size=1, **kw)[0]


def test_streamed_reply_equals_non_streamed_generate(lora):
    model, tokenizer, _ = lora
    chat = _session(lora, system="Be brief.")
    pieces: list[str] = []
    threads: set[str] = set()

    def on_token(piece):
        pieces.append(piece)
        threads.add(threading.current_thread().name)

    reply = chat.reply("hi", max_new_tokens=MAX, on_token=on_token)
    expected = _reference(
        model, tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert reply == expected and reply.strip()
    assert "".join(pieces) == reply
    assert len(pieces) > 1  # really streamed, not handed over at the end
    turn = chat.last_turn()
    assert turn.new_tokens == MAX and not turn.stopped
    assert threads == {threading.current_thread().name}  # on_token runs on the caller's thread


def test_history_grows_and_the_next_prompt_contains_the_first_answer(lora):
    model, tokenizer, _ = lora
    chat = _session(lora)
    first = chat.reply("hi", max_new_tokens=MAX)
    second = chat.reply("and again?", max_new_tokens=MAX)
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[1]["content"] == first and chat.history[3]["content"] == second
    prompt = chat.rendered_prompt()
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and again?"},
    ]
    assert prompt == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert f"<|im_start|>assistant\n{first}<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\nand again?<|im_end|>\n<|im_start|>assistant\n")
    assert second == _reference(model, tokenizer, conversation)
    assert chat.base_history == []  # the base side was never asked
    chat.reset()
    assert chat.history == [] and chat.last_turn() is None


def test_use_base_is_the_model_with_its_adapter_disabled(lora, base):
    import torch

    from sft_magics.core.evaluate.generation import adapter_disabled

    model, tokenizer, _ = lora
    msgs = [{"role": "user", "content": "hi"}]
    chat = _session(lora)
    tuned = chat.reply("hi", max_new_tokens=MAX)
    base_reply = chat.reply("hi", max_new_tokens=MAX, use_base=True)
    with adapter_disabled(model) as m:
        assert base_reply == _reference(m, tokenizer, msgs)
    assert base_reply == _reference(base[0], tokenizer, msgs)  # the plain base model answers the same
    assert tuned != base_reply
    assert chat.last_turn(use_base=True).new_tokens == MAX
    # Sampling: with the same seed, the base side samples exactly what the plain base model samples.
    torch.manual_seed(0)
    sampled_base = chat.reply("hi", max_new_tokens=MAX, temperature=1.0, use_base=True)
    torch.manual_seed(0)
    sampled_tuned = chat.reply("hi", max_new_tokens=MAX, temperature=1.0)
    torch.manual_seed(0)
    reference = _reference(
        base[0], tokenizer, [*msgs, {"role": "assistant", "content": base_reply}, *msgs], temperature=1.0
    )
    assert sampled_base == reference and sampled_base.strip()
    assert sampled_tuned != sampled_base
    # Each side kept its own history.
    assert [m["content"] for m in chat.history if m["role"] == "assistant"] == [tuned, sampled_tuned]
    assert [m["content"] for m in chat.base_history if m["role"] == "assistant"] == [base_reply, sampled_base]
    assert _reference(model, tokenizer, msgs) == tuned  # the adapter is switched back on afterwards


def test_compare_keeps_two_histories(lora):
    model, tokenizer, _ = lora
    chat = _session(lora)
    first = chat.compare("hi", max_new_tokens=MAX)
    second = chat.compare("more", max_new_tokens=MAX)
    assert set(first) == {"tuned", "base"} and first["tuned"] != first["base"]
    assert f"{first['tuned']}<|im_end|>" in chat.rendered_prompt()
    assert f"{first['base']}<|im_end|>" in chat.rendered_prompt(use_base=True)
    assert chat.rendered_prompt() != chat.rendered_prompt(use_base=True)
    assert second["tuned"] == chat.history[-1]["content"] and second["base"] == chat.base_history[-1]["content"]


def test_the_stop_flag_ends_generation_early(lora):
    chat = _session(lora)
    full = chat.reply("hi", max_new_tokens=300)
    assert chat.last_turn().new_tokens == 300  # no stop token in the way: it would run to the limit

    chat.reset()
    stop = threading.Event()
    pieces: list[str] = []

    def on_token(piece):
        pieces.append(piece)
        stop.set()

    partial = chat.reply("hi", max_new_tokens=300, on_token=on_token, stop=stop)
    turn = chat.last_turn()
    assert turn.stopped and turn.new_tokens < 150  # a few tokens past the first piece, far from 300
    assert partial == "".join(pieces) and full.startswith(partial)
    assert chat.history[-1] == {"role": "assistant", "content": partial}  # the partial answer is kept


def test_the_sessions_own_stop_flag(lora):
    chat = _session(lora)
    chat.reply("hi", max_new_tokens=300, on_token=lambda piece: chat.stop())
    assert chat.last_turn().stopped and chat.last_turn().new_tokens < 150
    chat.reply("again", max_new_tokens=MAX)  # the next reply starts with the flag cleared
    assert not chat.last_turn().stopped and chat.last_turn().new_tokens == MAX


def test_a_failing_on_token_leaves_history_alone_and_ends_the_thread(lora):
    chat = _session(lora)
    before = threading.active_count()

    def boom(piece):
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        chat.reply("hi", max_new_tokens=200, on_token=boom)
    assert chat.history == [] and threading.active_count() == before


def test_a_tokenizer_without_a_chat_template_is_a_template_error(base):
    import copy

    from sft_magics.core.evaluate.chat import ChatSession
    from sft_magics.core.template.render import TemplateError

    tokenizer = copy.deepcopy(base[1])
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        ChatSession(base[0], tokenizer).reply("hi", max_new_tokens=2)


# -- the magic through a real InteractiveShell ----------------------------------------------------


def test_one_shot_magic_returns_prints_and_binds_the_reply(shell, lora, capsys):
    model, tokenizer, adapter = lora
    result = shell.run_line_magic("sft_chat", f'{adapter} --message "hi" --max-new-tokens {MAX} -o r')
    expected = _reference(model, tokenizer, [{"role": "user", "content": "hi"}])
    assert result == expected and shell.user_ns["r"] == expected
    assert expected in capsys.readouterr().out


def test_one_shot_magic_with_a_system_prompt(shell, lora):
    model, tokenizer, adapter = lora
    result = shell.run_line_magic(
        "sft_chat", f'{adapter} --system "Answer in JSON." --message "hi there" --max-new-tokens {MAX}'
    )
    assert result == _reference(
        model, tokenizer, [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "hi there"}]
    )


def test_one_shot_magic_compare_returns_both(shell, lora, base, capsys):
    model, tokenizer, adapter = lora
    result = shell.run_line_magic("sft_chat", f'{adapter} --compare base --message "hi" --max-new-tokens {MAX} -o r')
    msgs = [{"role": "user", "content": "hi"}]
    assert result == {"tuned": _reference(model, tokenizer, msgs), "base": _reference(base[0], tokenizer, msgs)}
    assert shell.user_ns["r"] == result and result["tuned"] != result["base"]
    out = capsys.readouterr().out
    assert "── tuned ──" in out and "── base (adapter off) ──" in out


def test_magic_accepts_a_run_result_variable(shell, lora):
    from pathlib import Path

    from sft_magics.core.train.trainer import TrainResult

    model, tokenizer, _ = lora
    shell.user_ns["run"] = TrainResult(
        name="x",
        path=Path("."),
        status="finished",
        global_step=1,
        max_steps=1,
        history=[],
        model=model,
        tokenizer=tokenizer,
    )
    result = shell.run_line_magic("sft_chat", f'run --message "hi" --max-new-tokens {MAX}')
    assert result == _reference(model, tokenizer, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "line,message",
    [
        ('{tiny} --message "hi" --max-new-tokens 0', "--max-new-tokens"),
        ('{tiny} --message "hi" --top-p 0', "--top-p"),
        ('{tiny} --message "hi" --temperature -1', "--temperature"),
        ("{tiny}", "needs --message"),  # plain display: no widget, no terminal loop
        ('{tiny} --compare base --message "hi"', "needs a LoRA adapter"),
        ('/no/such/folder --message "hi"', "not found"),
    ],
)
def test_magic_usage_errors(shell, tiny_model, line, message):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("sft_chat", line.format(tiny=tiny_model))


def test_magic_in_a_notebook_displays_the_chat_widget(shell, lora, monkeypatch):
    import IPython.display

    from sft_magics.core.evaluate.chat import ChatSession

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    shell.run_line_magic("config", "SftMagics.display = 'widget'")
    assert (
        shell.run_line_magic("sft_chat", f'{lora[2]} --compare base --system "Be brief." --max-new-tokens 7 -o chat')
        is None
    )
    session = shell.user_ns["chat"]
    assert isinstance(session, ChatSession) and session.system == "Be brief."
    (box,) = shown
    values = _all_values(box)
    assert "Be brief." in values  # the system prompt box
    assert any("tuned" in v for v in values) and any("base (adapter off)" in v for v in values)
    assert 7 in [getattr(w, "value", None) for w in _walk(box)]  # max new tokens control


def test_magic_in_a_terminal_runs_the_read_reply_loop(shell, lora, monkeypatch, capsys):
    lines = iter(["hi", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    shell.run_line_magic("config", "SftMagics.display = 'rich'")
    shell.run_line_magic("sft_chat", f"{lora[2]} --max-new-tokens {MAX} -o chat")
    session = shell.user_ns["chat"]
    assert len(session.history) == 2
    assert session.history[1]["content"] == _reference(lora[0], lora[1], [{"role": "user", "content": "hi"}])


def test_terminal_loop_streams_until_an_empty_line(lora):
    import io

    from rich.console import Console

    from sft_magics.display._chat_view import chat_loop

    model, tokenizer, _ = lora
    chat = _session(lora)
    lines = iter(["hi", "more", ""])
    console = Console(file=io.StringIO(), width=200)
    turns = chat_loop(chat, True, {"max_new_tokens": MAX}, read=lambda prompt: next(lines), console=console)
    assert turns == 2 and len(chat.history) == 4 and len(chat.base_history) == 4
    out = console.file.getvalue()
    assert chat.history[1]["content"] in out and chat.history[3]["content"] in out
    assert "base (adapter off)" in out
    assert chat_loop(chat, False, {}, read=lambda prompt: "exit", console=console) == 0


# -- the widget -----------------------------------------------------------------------------------


def _walk(widget) -> list:
    out, stack = [], [widget]
    while stack:
        w = stack.pop()
        out.append(w)
        stack.extend(getattr(w, "children", ()))
    return out


def _all_values(widget) -> list[str]:
    """Every string .value in the widget tree."""
    return [w.value for w in _walk(widget) if isinstance(getattr(w, "value", None), str)]


def test_widget_send_streams_the_reply_off_the_main_thread(lora):
    from html import escape

    from sft_magics.display._chat_view import ChatWidget

    model, tokenizer, _ = lora
    chat = _session(lora)
    seen_threads: set[str] = set()
    original = chat.reply

    def spying_reply(*args, **kwargs):
        seen_threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    chat.reply = spying_reply
    widget = ChatWidget(chat, compare=False, defaults={"max_new_tokens": MAX})
    widget.input.value = "hi & <b>bye</b>"
    widget.send_button.click()
    assert widget.wait(timeout=60)
    assert widget.error is None
    assert seen_threads == {"sft-chat"}  # generated on the widget's worker thread
    expected = _reference(model, tokenizer, [{"role": "user", "content": "hi & <b>bye</b>"}])
    assert chat.history[-1]["content"] == expected
    html = widget.history.value
    assert "hi &amp; &lt;b&gt;bye&lt;/b&gt;" in html and "<b>bye</b>" not in html
    assert escape(expected) in html
    assert widget.input.value == "" and not widget.send_button.disabled and widget.stop_button.disabled

    widget.show_prompt.value = True
    assert "&lt;|im_start|&gt;assistant" in widget.prompt.value and "<pre" in widget.prompt.value
    widget.reset_button.click()
    assert chat.history == [] and "(no messages yet)" in widget.history.value


def test_widget_enter_sends_and_a_reply_cut_by_the_token_limit_says_so(lora):
    """Enter in the box (its ``submitted`` count) sends like the button; a reply that reached
    max tokens without an end token is noted, so a cut answer does not read as the whole one."""
    from sft_magics.display._chat_view import ChatWidget

    chat = _session(lora)
    widget = ChatWidget(chat, compare=False, defaults={"max_new_tokens": 2})
    assert widget.temperature.style.description_width == "initial"  # "temperature", not "temperat…"
    widget.input.value = "hi"
    widget.input.submitted += 1
    assert widget.wait(timeout=60) and widget.error is None
    turn = chat.last_turn()
    assert chat.history[0]["content"] == "hi" and widget.input.value == ""
    assert turn.cut and turn.new_tokens == 2  # the tiny random model never says its end token this soon
    assert "cut at the limit of 2 new tokens" in widget.history.value
    widget.reset_button.click()
    assert "cut at the limit" not in widget.history.value  # the note belongs to that reply


def test_widget_compare_has_two_columns(lora):
    from sft_magics.display._chat_view import ChatWidget

    chat = _session(lora)
    widget = ChatWidget(chat, compare=True, defaults={"max_new_tokens": MAX})
    widget.input.value = "hi"
    widget.send_button.click()
    assert widget.wait(timeout=60) and widget.error is None
    assert set(widget.columns) == {"tuned", "base"}
    assert len(chat.history) == 2 and len(chat.base_history) == 2
    tuned_words = chat.history[-1]["content"].split()
    assert tuned_words and tuned_words[-1] in widget.columns["tuned"].value
    assert "you</b>: hi" in widget.columns["base"].value


def test_widget_stop_button_ends_the_reply(lora):
    from sft_magics.display._chat_view import ChatWidget

    chat = _session(lora)
    widget = ChatWidget(chat, compare=True, defaults={"max_new_tokens": 400})
    first_piece = threading.Event()
    original = chat.reply

    def reply(*args, on_token=None, **kwargs):
        def hook(piece):
            first_piece.set()
            on_token(piece)

        return original(*args, on_token=hook, **kwargs)

    chat.reply = reply
    widget.input.value = "hi"
    widget.send_button.click()
    assert first_piece.wait(30)
    assert widget.busy and not widget.stop_button.disabled
    widget.stop_button.click()
    assert widget.wait(timeout=60)
    assert chat.last_turn().stopped and chat.last_turn().new_tokens < 400
    assert not chat.last_turn().cut and "cut at the limit" not in widget.columns["tuned"].value  # stopped, not cut
    assert chat.base_history == []  # stopped before the base side was asked
    assert "stopped" in widget.status.value and "not asked: stopped" in widget.columns["base"].value


def test_widget_escapes_user_and_model_text(base, monkeypatch):
    """A user message with a script tag and a model reply with an onerror image: both escaped."""
    import torch

    from sft_magics.core.evaluate.chat import ChatSession
    from sft_magics.display._chat_view import ChatWidget

    model, tokenizer = base
    evil = "<img src=x onerror=alert(1)>"
    evil_ids = tokenizer(evil, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def fake_generate(input_ids=None, streamer=None, **kwargs):
        """A model whose answer is ``evil``, streamed token by token like generate() does."""
        streamer.put(input_ids)
        for i in evil_ids:
            streamer.put(torch.tensor([i]))
        streamer.end()
        return torch.cat([input_ids, torch.tensor([evil_ids])], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    chat = ChatSession(model, tokenizer)
    widget = ChatWidget(chat, compare=False)
    widget.input.value = "<script>alert(1)</script>"
    widget.send_button.click()
    assert widget.wait(timeout=60) and widget.error is None
    assert chat.history[-1]["content"] == evil  # the model really answered with the tag
    widget.show_prompt.value = True
    values = _all_values(widget.widget)
    joined = "\n".join(values)
    assert "<script" not in joined and "<img" not in joined
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in widget.history.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in widget.history.value
    assert "&lt;script&gt;" in widget.prompt.value


def test_reply_view_escapes_and_shows_both_sides():
    import io

    from rich.console import Console

    from sft_magics.display._chat_view import ReplyView

    view = ReplyView("<script>x</script>", {"tuned": "<img src=x>", "base": "plain"})
    html = view.to_html()
    assert "<script" not in html and "<img" not in html and "&lt;img src=x&gt;" in html
    assert view.to_text() == "── tuned ──\n<img src=x>\n── base (adapter off) ──\nplain"
    assert ReplyView("hi", "hello").to_text() == "hello"
    console = Console(file=io.StringIO(), width=80)
    console.print(view)
    assert "<img src=x>" in console.file.getvalue() and "plain" in console.file.getvalue()


# -- a real Jupyter kernel --------------------------------------------------------------------------


def test_widget_in_a_real_kernel_answers_a_click_and_streams_to_the_frontend(lora, tmp_path):
    """The widget the magic shows in a kernel: the frontend types into the box and presses Enter (comm
    messages); the reply is generated off the main thread and reaches the frontend as widget state."""
    import asyncio
    import html
    import time

    import nbformat
    from nbclient import NotebookClient

    _, _, adapter = lora
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext sft_magics\n%config SftMagics.output_dir = {str(tmp_path / 'runs')!r}"),
        nbformat.v4.new_code_cell(f"%sft_chat {adapter} --compare base --max-new-tokens {MAX} -o chat"),
        nbformat.v4.new_code_cell(
            "import time\nfor _ in range(600):\n    if len(chat.base_history) == 2: break\n    time.sleep(0.1)\n"
            "print(repr(chat.history[-1]['content']))\nprint(repr(chat.base_history[-1]['content']))"
        ),
    ]

    def comm(client, cid, data):
        client.kc.shell_channel.send(client.kc.session.msg("comm_msg", {"comm_id": cid, "data": data}))

    def find(client, model, **state):
        ids = [
            cid
            for cid, w in client.widget_state.items()
            if w.get("_model_name") == model and all(w.get(k) == v for k, v in state.items())
        ]
        assert len(ids) == 1, (model, state)
        return ids[0]

    async def run():
        client = NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=False)
        async with client.async_setup_kernel():
            await client.async_execute_cell(nb.cells[0], 0)
            await client.async_execute_cell(nb.cells[1], 1)
            # Enter in the message box: the text and the submit count in one update, as its module sends them.
            comm(
                client,
                find(client, "AnyModel", submitted=0),
                {"method": "update", "state": {"value": "hi <b>", "submitted": 1}, "buffer_paths": []},
            )
            await client.async_execute_cell(nb.cells[2], 2)
            deadline = time.time() + 30  # the last widget updates may trail the cell's output a little
            while time.time() < deadline:
                htmls = [
                    w.get("value", "") for w in client.widget_state.values() if w.get("_model_name") == "HTMLModel"
                ]
                if sum("you</b>: hi &lt;b&gt;" in h and "▌" not in h for h in htmls) == 2:
                    break
                await asyncio.sleep(0.2)
            return client.widget_state

    state = asyncio.run(run())
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs).splitlines()
    tuned, base_reply = (eval(line) for line in printed)
    model, tokenizer, _ = lora
    msgs = [{"role": "user", "content": "hi <b>"}]
    assert tuned == _reference(model, tokenizer, msgs) and tuned != base_reply
    columns = [
        w["value"]
        for w in state.values()
        if w.get("_model_name") == "HTMLModel" and "you</b>: hi &lt;b&gt;" in w.get("value", "")
    ]
    assert len(columns) == 2
    assert any(html.escape(tuned) in c for c in columns) and any(html.escape(base_reply) in c for c in columns)
