"""Rendering a conversation through a model's chat template, token by token, with the loss mask.

The mask is computed the way TRL's SFTTrainer computes it for the rows we give it (see
``core.train.to_trl_rows``): a conversation ending on an assistant turn becomes a conversational
prompt/completion pair; the prompt is rendered with the generation prompt, prompt+completion
without, and the trained tokens are those after their common prefix. Templates are rendered only
through transformers' ``apply_chat_template`` (a sandboxed Jinja environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # decoded text of this token alone
    trained: bool
    special: bool


@dataclass
class Rendering:
    tokens: list[Token]
    text: str
    prompt_length: int  # tokens before the first trained one
    notes: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def labels(self) -> list[int]:
        """What the trainer's labels will be: the id where trained, -100 where masked."""
        return [t.id if t.trained else -100 for t in self.tokens]

    @property
    def trained_count(self) -> int:
        return sum(t.trained for t in self.tokens)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def prompt_completion_ids(tokenizer, row: dict, fmt: str, **template_kwargs) -> tuple[list[int], int]:
    """Token ids of a normalised row and where its trained part starts (TRL's rule)."""
    if fmt == "messages":
        msgs = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
        prompt, completion = msgs[:-1], msgs[-1:]
    elif fmt == "conversational_prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
    elif fmt == "prompt_completion":
        p_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return full, _common_prefix(p_ids, full)
    else:  # plain text: every token is trained
        ids = tokenizer(row["text"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return ids, 0
    tools = row.get("tools")
    if tools is not None:
        template_kwargs.setdefault("tools", tools)
    p_ids = _ids(tokenizer, prompt, add_generation_prompt=True, **template_kwargs)
    full = _ids(tokenizer, prompt + completion, **template_kwargs)
    return full, _common_prefix(p_ids, full)


def render(tokenizer, row: dict, fmt: str = "messages", **template_kwargs) -> Rendering:
    """One normalised row, tokenized, each token marked trained or masked."""
    ids, start = prompt_completion_ids(tokenizer, row, fmt, **template_kwargs)
    special_ids = set(tokenizer.all_special_ids)
    tokens = [
        Token(id=i, text=tokenizer.decode([i]), trained=pos >= start, special=i in special_ids)
        for pos, i in enumerate(ids)
    ]
    return Rendering(tokens=tokens, text=tokenizer.decode(ids), prompt_length=start)


def messages_row(messages: list[dict[str, Any]]) -> dict:
    return {"messages": messages}
