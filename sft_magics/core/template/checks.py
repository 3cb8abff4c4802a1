"""The checks under a rendering (``%sft_template``), and what a template drops: earlier turns
render the same when a turn is added, every message (and tool call) is rendered, every trained
answer has content and ends on a trained end token, the inference prompt equals the training
rendering up to the answer, and how the assistant-only mask was found."""

from __future__ import annotations

from .tokens import (
    MASK_LAST_TURN,
    MASK_MARKERS,
    MASK_PREFIX,
    MASK_TRL_TEMPLATE,
    Check,
    Rendering,
    clean_messages,
    first_difference,
    inference_rendering,
    render_text,
    tokenize_row,
)


def dropped_messages(messages: list[dict], rendered: str) -> list[tuple[int, str]]:
    """``(index, what)`` for each message whose content, or whose tool calls, the rendering lacks."""
    import json

    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, str) and content.strip() and content.strip() not in rendered:
            out.append((i, f"{m.get('role')} content"))
        for call in m.get("tool_calls") or []:
            fn = (call or {}).get("function", call) or {}
            name = fn.get("name") if isinstance(fn, dict) else None
            if name and name not in rendered:
                out.append((i, f"tool call {name}"))
                break
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(args, dict) and args and not any(str(v) in rendered for v in args.values()):
                out.append((i, f"tool call {name} arguments {json.dumps(args)[:40]}"))
                break
    return out


def template_checks(
    tokenizer, rendering: Rendering, messages: list[dict], *, chat_template=None, template_kwargs=None
) -> list[Check]:
    """The pass/warn list under a rendering."""
    messages = clean_messages(messages)
    kw = {**(template_kwargs or {}), "chat_template": rendering.chat_template or chat_template}
    full = render_text(tokenizer, messages, **kw)
    checks = [_prefix_check(tokenizer, messages, full, kw), _dropped_check(messages, full)]
    checks += _end_token_checks(tokenizer, rendering)
    if messages and messages[-1]["role"] == "assistant":
        checks.append(_inference_check(tokenizer, rendering, messages, kw["chat_template"], template_kwargs))
    mask = _mask_check(rendering.mask_source, messages)
    return checks + ([mask] if mask else [])


def _prefix_check(tokenizer, messages, full: str, kw) -> Check:
    """1. Earlier turns render identically when a turn is added."""
    broken = next(
        (k for k in range(1, len(messages)) if not full.startswith(render_text(tokenizer, messages[:k], **kw))), None
    )
    return Check(
        "prefix-preserving",
        broken is None,
        "earlier turns render identically when a turn is added"
        if broken is None
        else f"the first {broken} message(s) render differently once message {broken} is added: "
        "the model trains on a context it never sees at inference",
    )


def _dropped_check(messages, full: str) -> Check:
    """1b. Everything the conversation says is in the rendering (a template can drop fields:
    SmolLM2's drops tool_calls, some drop system messages)."""
    dropped = dropped_messages(messages, full)
    return Check(
        "every message rendered",
        not dropped,
        "every message's content (and tool calls) appears in the rendering"
        if not dropped
        else "the template drops "
        + "; ".join(f"message {i} ({what})" for i, what in dropped)
        + ": the model never sees it, and trains on what is left",
    )


def _end_token_checks(tokenizer, rendering: Rendering) -> list[Check]:
    """2. Every trained answer has content and ends on a trained end-of-turn/EOS token."""
    from ..evaluate.generation import stop_ids

    stops = stop_ids(tokenizer)
    runs, current = [], []
    for t in rendering.tokens:
        if t.trained:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    checks = []
    empty = [i for i, run in enumerate(runs) if run and all(t.id in stops or not t.text.strip() for t in run)]
    if empty:
        checks.append(
            Check(
                "trained answer has content",
                False,
                f"trained span {empty[0] + 1} is only an end token: the answer (e.g. a tool call the template "
                "dropped) is missing, so the model learns to answer with nothing",
            )
        )
    if not runs:
        return [*checks, Check("end token trained", False, "no token is trained in this row")]
    missing = [i for i, run in enumerate(runs) if not any(t.id in stops for t in run)]
    names = sorted({t.text for run in runs for t in run if t.id in stops})
    checks.append(
        Check(
            "end token trained",
            not missing,
            f"each trained answer includes {', '.join(repr(n) for n in names)}"
            if not missing
            else f"trained span {missing[0] + 1} has no end-of-turn/EOS token: the model may never learn to stop",
        )
    )
    return checks


def _inference_check(tokenizer, rendering: Rendering, messages, chat_template, template_kwargs) -> Check:
    """3. The inference prompt equals the training rendering up to the answer."""
    inference = inference_rendering(tokenizer, messages, chat_template=chat_template, template_kwargs=template_kwargs)
    diff = first_difference(rendering.input_ids, inference.input_ids)
    if diff is None:
        return Check(
            "inference matches training", True, "the inference prompt equals the training rendering up to the answer"
        )
    got = rendering.tokens[diff].text if diff < len(rendering.tokens) else "(end)"
    return Check(
        "inference matches training",
        False,
        f"differs at token {diff}: training has {got!r}, inference has {inference.tokens[diff].text!r}",
    )


def _mask_check(source: str, messages) -> Check | None:
    """4. How assistant-only masks are found."""
    if source == MASK_MARKERS:
        return Check("generation markers", True, "the template marks assistant turns with {% generation %}")
    if source == MASK_TRL_TEMPLATE:
        return Check(
            "generation markers", True, "no markers in the template; TRL's training variant of it is used for the mask"
        )
    if source == MASK_PREFIX:
        return Check(
            "generation markers",
            True,
            "no markers and no TRL training variant; assistant turns found by prefix rendering (verified on this row)",
        )
    if source == MASK_LAST_TURN:
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        return Check(
            "generation markers",
            n_assistant <= 1,
            "no markers and the template is not prefix-preserving: only the final answer is trained"
            + ("" if n_assistant <= 1 else f" ({n_assistant - 1} earlier assistant turn(s) are not)"),
        )
    return None


def shown_rendering(
    tokenizer,
    row: dict,
    fmt: str,
    *,
    chat_template=None,
    template_kwargs=None,
    generation_prompt: bool = False,
    max_length: int | None = None,
) -> Rendering:
    """What ``%sft_template`` shows for one row: the training rendering with its template checks
    marked where ``max_length`` would cut (or, with ``generation_prompt``, the inference prompt)."""
    kw = {"chat_template": chat_template, "template_kwargs": template_kwargs}
    if generation_prompt:  # nothing is trained in a prompt: no checks, no truncation marks
        return inference_rendering(tokenizer, row["messages"], **kw)
    r = tokenize_row(tokenizer, row, fmt, **kw)
    if fmt == "messages":
        from .checks import template_checks

        r.checks = template_checks(tokenizer, r, row["messages"], **kw)
    r.max_length = max_length
    return r
