"""Generation: prompts rendered through the model's own template, the tokens that stop an answer,
batched greedy (or sampled) generation, and the base model behind a LoRA adapter. Used by
``%sft_eval`` (core/evaluate/evaluation.py), ``%sft_chat`` (core/evaluate/chat.py) and ``%sft_export`` (core/export/folder.py):
the one home of stop tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SftError

_SENTINEL = "sft-magics-end-of-turn-probe"


def render_prompts(tokenizer, prompts: Sequence[Any]) -> list[str]:
    """The exact text the model is asked to continue: its own chat template plus the generation prompt."""
    from ..template.render import apply_chat_template

    return [
        apply_chat_template(tokenizer, p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]


def prompt_token_counts(tokenizer, prompts: Sequence[Any]) -> list[int]:
    """Tokens per request, as the model receives them."""
    texts = render_prompts(tokenizer, prompts)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


class GenerationLengthError(SftError, ValueError):
    """A generation length the model cannot hold; one line naming the key and the model's context."""


def context_length(config) -> int | None:
    """How many positions a model attends to (its context, prompt included), from its config."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_new_tokens(key: str, max_new_tokens, context: int | None) -> None:
    """The one rule for generation lengths (``eval_max_new_tokens``, ``%sft_eval`` and ``%sft_chat``'s
    ``--max-new-tokens``): a whole number ≥ 1 that leaves room for a prompt in the model's context.
    Longer answers cannot be generated: the model has no positions for them."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationLengthError(f"{key} must be a whole number ≥ 1, got {max_new_tokens!r}")
    if context is not None and max_new_tokens >= context:
        raise GenerationLengthError(
            f"{key} {max_new_tokens:,} does not fit this model: it attends to {context:,} positions, prompt "
            f"included; use at most {context - 1:,} (an answer's usual length is far less)"
        )


def stop_token_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_batch: Callable[[int, int], None] | None = None,
    ended: list[bool] | None = None,
) -> list[str]:
    """Answers for each prompt (a message list or a raw string), batched and left-padded.
    ``ended``: a list that receives, per prompt, whether the answer ended on a stop token (False:
    it ran into ``max_new_tokens``)."""
    import torch

    texts = render_prompts(tokenizer, prompts)
    stops = stop_token_ids(model, tokenizer)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # tokenized once
    # Batches of similar length waste less on padding; answers go back in the prompts' order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = [""] * len(encoded)
    stopped = [False] * len(encoded)
    device = next(model.parameters()).device
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    for start in range(0, len(encoded), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        # Left padding, so every prompt ends right where generation starts.
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk], device=device)
        attention = torch.tensor(
            [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk], device=device
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new = out[:, width:]
        hit = (
            torch.isin(new, torch.tensor(stops, device=new.device)).any(dim=1).tolist()
            if stops
            else [False] * len(chunk)
        )
        for i, text, stop in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True), hit):
            answers[i], stopped[i] = text.strip(), bool(stop)
        if on_batch:
            on_batch(min(start + batch_size, len(encoded)), len(encoded))
    if ended is not None:
        ended[:] = stopped
    return answers


def stop_ids(tokenizer) -> set[int]:
    """Tokens that end a turn: EOS, plus the tokenizer's declared end-of-turn tokens where present."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and name in tokenizer.get_vocab():
            ids.add(tid)
    return ids


def end_of_turn_token(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (``<|im_end|>`` for ChatML,
    ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma): render a turn with a sentinel answer
    and take the first token after it when that token is special. Falls back to the known names."""
    from ..template.render import apply_chat_template

    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    try:
        text = apply_chat_template(
            tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
        )
        after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and ids[0] in special:
            return int(ids[0])
    except Exception:
        pass
    known = sorted(stop_ids(tokenizer) - {tokenizer.eos_token_id})
    return known[0] if known else tokenizer.eos_token_id


def has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model's behaviour from a PEFT model, without a second copy in memory."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


@contextlib.contextmanager
def base_model(model, load_base: Callable[[], Any] | None = None):
    """The base model: the LoRA model with its adapter disabled, else (a fully fine-tuned run) the
    model ``load_base()`` loads, else the model itself (it is its own base)."""
    if has_adapter(model):
        with adapter_disabled(model) as m:
            yield m
    elif load_base is not None:
        loaded = load_base()
        try:
            yield getattr(loaded, "model", loaded)
        finally:
            del loaded
    else:
        yield model
