"""A conversation through a model's chat template, token by token, with the loss mask.

One function, :func:`tokenize_row`, decides which tokens are trained, and the trainer uses the same
function (``core.train`` hands TRL pre-tokenized rows with ``input_ids`` + ``assistant_masks``), so
what ``%sft_template`` shows is what the loss sees. The rules, per normalised format:

- ``messages``: assistant-only loss. The mask comes, in order of preference, from
  1. the template's own ``{% generation %}`` markers (transformers' ``return_assistant_tokens_mask``,
     exactly what TRL does with ``assistant_only_loss=True``);
  2. TRL's training variant of a known template (``trl.chat_template_utils.get_training_chat_template``);
  3. prefix rendering: assistant turn *i* spans from the end of ``render(messages[:i],
     add_generation_prompt=True)`` to the end of ``render(messages[:i+1])``. Works for any
     prefix-preserving template (SmolLM2's ChatML template has no markers and no TRL variant);
  4. otherwise only the final answer, by TRL's prompt/completion rule.
- ``conversational_prompt_completion`` / ``prompt_completion``: TRL's completion-only rule (the tokens
  after the common prefix of the prompt and prompt+completion renderings).
- ``text``: every token, plus EOS as TRL appends it.

Templates render only through transformers' ``apply_chat_template`` (an immutable sandboxed Jinja
environment), and only through :func:`core.template.render.apply_chat_template`, which bounds every render
in time and output size. A template that raises, reaches for Python internals, loops for too long or
writes too much becomes a one-line ``TemplateError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .render import TemplateTimeout, apply_chat_template

# How the trained tokens were found (shown to the user in the template checks).
MASK_MARKERS = "generation markers in the template"
MASK_TRL_TEMPLATE = "TRL's training variant of this template"
MASK_PREFIX = "prefix rendering (the template has no generation markers)"
MASK_LAST_TURN = "final answer only (prompt/completion rule)"
MASK_COMPLETION = "completion only (prompt/completion rule)"
MASK_ALL = "every token (plain text)"


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # decoded text of this token alone
    trained: bool
    special: bool
    message: int | None = None  # index of the message this token belongs to (None: template glue)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Rendering:
    """A row rendered and tokenized as the trainer will see it."""

    tokens: list[Token]
    text: str
    roles: list[str]  # role of each message, indexable by Token.message
    mask_source: str
    chat_template: str | None = None  # the template actually used for the mask (None: the tokenizer's own)
    checks: list[Check] = field(default_factory=list)
    max_length: int | None = None

    def __repr__(self) -> str:
        ok = sum(c.ok for c in self.checks)
        checks = f"; checks {ok}/{len(self.checks)} ok" if self.checks else ""
        return f"<Rendering {len(self.tokens)} tokens, {self.trained_count} trained; mask: {self.mask_source}{checks}>"

    @property
    def input_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def labels(self) -> list[int]:
        """What the trainer's labels will be: the id where trained, -100 where masked."""
        return [t.id if t.trained else -100 for t in self.tokens]

    @property
    def assistant_masks(self) -> list[int]:
        return [int(t.trained) for t in self.tokens]

    @property
    def trained_count(self) -> int:
        return sum(t.trained for t in self.tokens)

    @property
    def prompt_length(self) -> int:
        """Tokens before the first trained one."""
        return next((i for i, t in enumerate(self.tokens) if t.trained), len(self.tokens))

    def per_message(self) -> list[dict]:
        """Token and trained-token counts per message."""
        out = [{"role": r, "tokens": 0, "trained": 0} for r in self.roles]
        for t in self.tokens:
            if t.message is not None:
                out[t.message]["tokens"] += 1
                out[t.message]["trained"] += t.trained
        return out

    def truncation(self) -> dict | None:
        """What ``max_length`` would cut (TRL keeps the start): tokens and trained tokens dropped."""
        if self.max_length is None:
            return None
        dropped = self.tokens[self.max_length :]
        kept = self.tokens[: self.max_length]
        return {
            "max_length": self.max_length,
            "dropped_tokens": len(dropped),
            "dropped_trained": sum(t.trained for t in dropped),
            "trained_left": sum(t.trained for t in kept),
            "dropped_text": "".join(t.text for t in dropped),
        }


# -- rendering through transformers (sandboxed) ------------------------------------------------


def render_text(tokenizer, messages, *, chat_template=None, add_generation_prompt=False, tools=None, **kwargs) -> str:
    """Render to text through transformers' sandboxed Jinja environment, bounded."""
    return apply_chat_template(
        tokenizer,
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        tools=tools,
        **kwargs,
    )


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the common prefix of two token lists."""
    n = len(a)
    if list(b[:n]) == list(a):  # the usual case, compared in C
        return n
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def clean_messages(messages: list[dict]) -> list[dict]:
    # datasets fills absent optional keys with None; templates should not see them.
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def has_generation_markers(template: str | None) -> bool:
    import re

    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def training_template(tokenizer) -> str | None:
    """TRL's training variant of the tokenizer's template, or None if TRL has none for it. TRL renders
    the template itself (``supports_tool_calling``): inside our bound, after our probe."""
    from .render import TemplateError, bounded, template_text, vet_template

    vet_template(tokenizer)
    try:
        from trl.chat_template_utils import get_training_chat_template

        with bounded(template_text(tokenizer), " in TRL's get_training_chat_template"):
            return get_training_chat_template(tokenizer)
    except TemplateError:
        raise
    except Exception:
        return None


def _tokenize_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _spans_to_mask(offsets, spans: list[tuple[int, int]]) -> list[bool]:
    """A token is trained when it starts inside one of the character spans."""
    mask = []
    for start, end in offsets:
        mask.append(any(a <= start < b for a, b in spans) if end > start else False)
    return mask


def _message_spans(tokenizer, messages, full_text, **kw) -> list[tuple[int, int]] | None:
    """Character span of each message in the full rendering, from growing prefixes; None when the
    template is not prefix-preserving (a prefix does not render as a prefix of the whole)."""
    spans, prev = [], 0
    for i in range(len(messages)):
        text = render_text(tokenizer, messages[: i + 1], **kw)
        if not full_text.startswith(text):
            return None
        spans.append((prev, len(text)))
        prev = len(text)
    if spans and messages[0].get("role") != "system":
        spans[0] = (_inserted_system(tokenizer, messages[0], full_text[: spans[0][1]], **kw), spans[0][1])
    return spans


def _inserted_system(tokenizer, first: dict, first_text: str, **kw) -> int:
    """Where the first message's own turn starts in ``first_text`` (its rendering alone): after a
    default system message the template inserts (SmolLM2's, Qwen's, Llama 3's dated header), which
    is the template's text, not the user's. Found as what a system message of our own replaces."""
    probe = {"role": "system", "content": "-"}
    try:
        alone, both = render_text(tokenizer, [probe], **kw), render_text(tokenizer, [probe, first], **kw)
    except TemplateTimeout:
        raise
    except Exception:  # a template without a system role: nothing inserted to find
        return 0
    own = both[len(alone) :] if both.startswith(alone) else ""
    return len(first_text) - len(own) if own and len(own) < len(first_text) and first_text.endswith(own) else 0


def _assistant_spans_by_prefix(tokenizer, messages, full_text, **kw) -> list[tuple[int, int]] | None:
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = render_text(tokenizer, messages[:i], add_generation_prompt=True, **kw)
        end_text = render_text(tokenizer, messages[: i + 1], **kw)
        if not (full_text.startswith(start_text) and full_text.startswith(end_text)) or len(end_text) < len(start_text):
            return None
        spans.append((len(start_text), len(end_text)))
    return spans


def choose_mask_method(tokenizer, chat_template: str | None = None) -> tuple[str, str | None]:
    """How assistant-only masks are made for this tokenizer: (method, template to render with)."""
    from .render import vet_template

    vet_template(tokenizer, chat_template)  # a template that loops is refused here, before TRL renders it
    template = chat_template or tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if has_generation_markers(template):
        return MASK_MARKERS, chat_template
    if chat_template is None:
        patched = training_template(tokenizer)
        if patched:
            return MASK_TRL_TEMPLATE, patched
    return MASK_PREFIX, chat_template


def tokenize_row(
    tokenizer,
    row: dict,
    fmt: str = "messages",
    *,
    chat_template: str | None = None,
    template_kwargs: dict | None = None,
    method: tuple[str, str | None] | None = None,
) -> Rendering:
    """Tokenize one normalised row exactly as training will, with the trained-token mask."""
    kw = dict(template_kwargs or {})
    if fmt == "text":
        text = row["text"] + (tokenizer.eos_token or "")
        ids, offsets = _tokenize_text(tokenizer, text)
        return _build(tokenizer, ids, [True] * len(ids), offsets, text, ["text"], [(0, len(text))], MASK_ALL)
    if fmt == "prompt_completion":
        p_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        text = row["prompt"] + row["completion"] + (tokenizer.eos_token or "")
        ids, offsets = _tokenize_text(tokenizer, text)
        start = common_prefix(p_ids, ids)
        spans = [(0, len(row["prompt"])), (len(row["prompt"]), len(text))]
        return _build(
            tokenizer,
            ids,
            [i >= start for i in range(len(ids))],
            offsets,
            text,
            ["prompt", "completion"],
            spans,
            MASK_COMPLETION,
        )

    tools = row.get("tools")
    if tools is not None:
        kw.setdefault("tools", tools)
    if fmt == "conversational_prompt_completion":
        prompt, completion = clean_messages(row["prompt"]), clean_messages(row["completion"])
        return _completion_rendering(tokenizer, prompt, completion, chat_template, kw, MASK_COMPLETION)

    messages = clean_messages(row["messages"])
    method_name, template = method or choose_mask_method(tokenizer, chat_template)
    kw["chat_template"] = template
    full_text = render_text(tokenizer, messages, **kw)
    ids, offsets = _tokenize_text(tokenizer, full_text)
    roles = [m["role"] for m in messages]
    msg_spans = _message_spans(tokenizer, messages, full_text, **kw)
    if method_name in (MASK_MARKERS, MASK_TRL_TEMPLATE):
        enc = apply_chat_template(
            tokenizer, messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kw
        )
        mask = [bool(b) for b in enc["assistant_masks"]]
        if list(enc["input_ids"]) != ids:  # the template's tokenization is the authority
            ids = list(enc["input_ids"])
            offsets = [(0, 0)] * len(ids)
        return _build(tokenizer, ids, mask, offsets, full_text, roles, msg_spans, method_name, template)
    spans = _assistant_spans_by_prefix(tokenizer, messages, full_text, **kw)
    if spans is not None:
        return _build(
            tokenizer, ids, _spans_to_mask(offsets, spans), offsets, full_text, roles, msg_spans, MASK_PREFIX, template
        )
    # Not prefix-preserving: fall back to the final answer only, as TRL's prompt/completion rule does.
    return _completion_rendering(tokenizer, messages[:-1], messages[-1:], template, kw, MASK_LAST_TURN)


def _completion_rendering(tokenizer, prompt, completion, chat_template, kw, source) -> Rendering:
    kw = {**kw, "chat_template": chat_template}
    prompt_text = render_text(tokenizer, prompt, add_generation_prompt=True, **kw)
    full_text = render_text(tokenizer, prompt + completion, **kw)
    p_ids, _ = _tokenize_text(tokenizer, prompt_text)
    ids, offsets = _tokenize_text(tokenizer, full_text)
    start = common_prefix(p_ids, ids)
    messages = prompt + completion
    roles = [m["role"] for m in messages]
    spans = _message_spans(tokenizer, messages, full_text, **kw)
    return _build(
        tokenizer, ids, [i >= start for i in range(len(ids))], offsets, full_text, roles, spans, source, chat_template
    )


def _build(tokenizer, ids, mask, offsets, text, roles, msg_spans, source, template=None) -> Rendering:
    special_ids = set(tokenizer.all_special_ids)
    tokens = []
    for pos, (i, trained) in enumerate(zip(ids, mask)):
        start = offsets[pos][0] if pos < len(offsets) else 0
        owner = None
        if msg_spans:
            owner = next((k for k, (a, b) in enumerate(msg_spans) if a <= start < b), None)
        tokens.append(Token(id=i, text=tokenizer.decode([i]), trained=trained, special=i in special_ids, message=owner))
    return Rendering(tokens=tokens, text=text, roles=list(roles), mask_source=source, chat_template=template)


def render(tokenizer, row: dict, fmt: str = "messages", **kwargs) -> Rendering:
    """Alias of :func:`tokenize_row` (the name the magics and docs use)."""
    return tokenize_row(tokenizer, row, fmt, **kwargs)


# -- template checks ------------------------------------------------------------------------------


def inference_rendering(tokenizer, messages: list[dict], *, chat_template=None, template_kwargs=None) -> Rendering:
    """What the model sees at inference: the conversation up to the final answer plus the
    generation prompt. Nothing is trained."""
    messages = clean_messages(messages)
    prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    kw = {**(template_kwargs or {}), "chat_template": chat_template}
    text = render_text(tokenizer, prompt, add_generation_prompt=True, **kw)
    ids, offsets = _tokenize_text(tokenizer, text)
    spans = _message_spans(tokenizer, prompt, text, **kw)
    return _build(
        tokenizer,
        ids,
        [False] * len(ids),
        offsets,
        text,
        [m["role"] for m in prompt],
        spans,
        "inference (nothing trained)",
        chat_template,
    )


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where ``b`` stops being a prefix of ``a`` (None: it is a prefix)."""
    n = common_prefix(a, b)
    return None if n == len(b) else n
