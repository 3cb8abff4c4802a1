"""A chat template is a training choice, not a property of the model.

A base model has none; the ``chat_template`` key (TRL's and the alignment-handbook's name; TRL's
``chat_template_path`` too) gives it one:

- a well-known name: ``chatml`` (``<|im_start|>role ... <|im_end|>``, SmolLM2's family) or
  ``zephyr`` (``<|user|>`` ... the EOS), whose special tokens are added to the tokenizer;
- a Jinja string, a ``.jinja`` / ``.j2`` file, or a notebook variable holding either: the template
  alone, as TRL does with a ``.jinja`` ``chat_template_path``;
- anything else is a model (id, folder, or alias) to copy the template *and* its special tokens
  from, with TRL's own ``clone_chat_template``.

:func:`apply_training_template` sets it on the tokenizer, adds the tokens it needs, resizes the
embeddings, makes the template's end-of-turn token the EOS (so generation stops where answers end),
and returns the new token ids: with LoRA they are trained through PEFT's
``trainable_token_indices``. The tokenizer is then saved with the run, so evaluation, chat and
export use the very template the model was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SftError, one_line

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# name: (template, special tokens it needs, the token that ends a turn (None: the model's EOS))
KNOWN = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "zephyr": (ZEPHYR, ["<|system|>", "<|user|>", "<|assistant|>"], None),
}


class ChatTemplateError(SftError, ValueError):
    """A chat_template value that names nothing usable, in one line."""


def resolve_template(value: Any, namespace: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """``(kind, what)``: ``("known", name)``, ``("jinja", text)`` or ``("clone", model)``."""
    if not isinstance(value, str) or not value.strip():
        raise ChatTemplateError(
            f"chat_template: expected a name ({', '.join(KNOWN)}), a Jinja string, a .jinja file "
            f"or a model to copy it from, got {type(value).__name__}"
        )
    if value in KNOWN:
        return "known", value
    if "{%" in value or "{{" in value:
        return "jinja", value
    if namespace is not None and value.isidentifier() and isinstance(namespace.get(value), str):
        return resolve_template(namespace[value], None)
    path = Path(value).expanduser()
    if path.suffix in (".jinja", ".j2"):
        if not path.is_file():
            raise ChatTemplateError(f"chat_template: file not found: {value}")
        return "jinja", path.read_text()
    return "clone", value


def apply_training_template(model, tokenizer, resolved: tuple[str, Any]):
    """Give ``tokenizer`` (and ``model``) the template :func:`resolve_template` found; returns
    (model, tokenizer, new token ids)."""
    kind, what = resolved
    if kind == "jinja":
        tokenizer.chat_template = what
        return model, tokenizer, []
    if kind == "clone":
        from trl import clone_chat_template

        from ..models import resolve_model

        source = resolve_model(what)
        try:
            model, tokenizer, added = clone_chat_template(model, tokenizer, source.location, resize_to_multiple_of=None)
        except (OSError, ValueError) as err:
            raise ChatTemplateError(
                f"chat_template: cannot copy the template of '{what}': {one_line(err, 200)}"
            ) from None
        ids = [t if isinstance(t, int) else tokenizer.convert_tokens_to_ids(getattr(t, "content", t)) for t in added]
        return model, tokenizer, ids
    template, specials, end = KNOWN[what]
    from tokenizers import AddedToken

    new = [t for t in specials if t not in tokenizer.get_vocab()]
    # Registered as special tokens (kept with the tokenizer; shown as one token, skipped in decoding).
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in specials]},
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = template
    if end is not None:
        tokenizer.eos_token = end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if new:  # new rows start at the mean of the old ones (transformers' default)
        model.resize_token_embeddings(len(tokenizer))
    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, [tokenizer.convert_tokens_to_ids(t) for t in new]


def template_for_viewing(tokenizer, value: Any, namespace: Mapping[str, Any] | None = None):
    """A copy of ``tokenizer`` with the template ``value`` (and its tokens) as training would set
    it, for ``%sft_template`` / ``%sft_data`` on a base model (no model is loaded or changed)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    _, tok, _ = apply_training_template(_NoModel(tok), tok, resolve_template(value, namespace))
    return tok


class _NoModel:
    """Stands in for the model when only the tokenizer is wanted: nothing to resize, and a
    vocabulary that always matches the tokenizer's (what TRL's clone_chat_template checks)."""

    generation_config = None

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.config = self

    def get_text_config(self):
        return self

    def can_generate(self) -> bool:
        return False

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer.vocab)

    def resize_token_embeddings(self, *args, **kwargs):
        return None
