"""Talking to a model: a conversation held in memory, answered through the model's own chat template.

:class:`ChatSession` keeps the history, renders it with the tokenizer's chat template plus the
generation prompt (the exact text the model is asked to continue), and generates the reply:

- greedy when ``temperature == 0``, otherwise sampling with ``temperature`` and ``top_p``;
- ending on the model's own stop tokens (:func:`core.evaluate.generation.stop_token_ids`);
- streamed: ``model.generate`` runs on a worker thread and feeds a
  ``transformers.TextIteratorStreamer``; the caller's thread reads the streamer and hands each
  piece of text to ``on_token`` — so ``on_token`` always runs on the thread that called
  :meth:`ChatSession.reply`;
- stoppable: a ``threading.Event`` checked by a ``StoppingCriteria`` after every token ends a long
  generation early; the partial answer is kept in the history (``last_turn().stopped`` says so).

The reply equals what :func:`core.evaluate.evaluation.generate` answers for the same conversation, token for
token (same rendering, same stop tokens, same decoding, leading/trailing whitespace stripped), and
the streamed pieces add up to exactly the returned reply.

``use_base=True`` answers with the LoRA adapter disabled (:func:`core.evaluate.evaluation.adapter_disabled`:
the same weights, no second copy in memory). The base side keeps a history of its own, so in a
side-by-side comparison each side sees its own previous answers.

No IPython, ipywidgets or rich here; torch and transformers are imported inside functions.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIDES = ("tuned", "base")


@dataclass(frozen=True)
class TurnInfo:
    """How the last reply on one side was made."""

    prompt: str  # the exact text the model continued
    prompt_tokens: int
    new_tokens: int  # tokens generated (the stop token included when one was generated)
    stopped: bool  # ended early by the stop flag
    seconds: float
    cut: bool = False  # ended at max_new_tokens, not on a stop token: the answer may be unfinished


class ChatSession:
    """A conversation with ``model`` (optionally a PEFT model, whose base can answer too).

    Example::

        chat = ChatSession(model, tokenizer, system="Answer with JSON only.")
        chat.reply("Ana is 34 and lives in Lisbon.", on_token=lambda piece: print(piece, end=""))
        chat.compare("And Bo, 51, from Oslo?")     # {"tuned": ..., "base": ...}
        print(chat.rendered_prompt())               # what the model saw for its last answer
    """

    def __init__(self, model, tokenizer, system: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system = system or None
        self.histories: dict[str, list[dict]] = {side: [] for side in SIDES}
        self.stop_flag = threading.Event()  # used when reply() is given no stop flag of its own
        self._last: dict[str, TurnInfo] = {}
        # The adapter switch is model-wide state: two generations must never overlap.
        self._lock = threading.Lock()
        if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None):
            tokenizer.pad_token = tokenizer.eos_token

    def __repr__(self) -> str:
        turns = ", ".join(f"{side} {len(h) // 2}" for side, h in self.histories.items() if h) or "no turns yet"
        return f"<ChatSession {turns}>"

    # -- state --------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict]:
        """The tuned model's side of the conversation (user and assistant messages, no system)."""
        return self.histories["tuned"]

    @property
    def base_history(self) -> list[dict]:
        return self.histories["base"]

    @property
    def has_adapter(self) -> bool:
        """True when the model is a PEFT model, so ``use_base=True`` really means the base model."""
        return hasattr(self.model, "disable_adapter")

    def reset(self) -> None:
        """Forget both histories (the system prompt stays)."""
        for side in SIDES:
            self.histories[side].clear()
        self._last.clear()
        self.stop_flag.clear()

    def stop(self) -> None:
        """End the reply being written (one that uses the session's own stop flag) at its next
        token; every new :meth:`reply` / :meth:`compare` without a ``stop`` flag clears it first."""
        self.stop_flag.set()

    def last_turn(self, *, use_base: bool = False) -> TurnInfo | None:
        return self._last.get(_side(use_base))

    def messages(self, message: str | None = None, *, use_base: bool = False) -> list[dict]:
        """The conversation as the template receives it: system prompt, history, and ``message``."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs += [dict(m) for m in self.histories[_side(use_base)]]
        if message is not None:
            msgs.append({"role": "user", "content": message})
        return msgs

    def rendered_prompt(self, message: str | None = None, *, use_base: bool = False) -> str:
        """The exact text the model sees: with ``message``, the prompt its next reply to that
        message would continue; without, the prompt of its last reply (or, before any reply, the
        current conversation with the generation prompt)."""
        last = self._last.get(_side(use_base))
        if message is None and last is not None:
            return last.prompt
        return self._render(self.messages(message, use_base=use_base))

    # -- generating ---------------------------------------------------------------------------
    def reply(
        self,
        message: str,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_token: Callable[[str], Any] | None = None,
        stop: threading.Event | None = None,
        use_base: bool = False,
    ) -> str:
        """Answer ``message``, append both to the history of that side, and return the answer.

        ``on_token(piece)`` receives the answer's text as it is generated (on this thread); the
        pieces add up to the returned answer. ``stop`` (default: the session's ``stop_flag``)
        ends the generation at the next token when set; the partial answer is kept. If generating
        fails, the history is left as it was.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        from .generation import check_new_tokens, context_length

        check_new_tokens("--max-new-tokens", max_new_tokens, context_length(self.model.config))
        side = _side(use_base)
        if stop is None:
            self.stop_flag.clear()  # a stop() meant for an earlier reply does not cut this one
        flag = stop if stop is not None else self.stop_flag
        with self._lock:
            start = time.perf_counter()
            prompt = self._render(self.messages(message, use_base=use_base))
            text, prompt_tokens, new_tokens, stopped, cut = self._generate(
                prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                on_token=on_token,
                stop=flag,
                use_base=use_base,
            )
            self.histories[side].append({"role": "user", "content": message})
            self.histories[side].append({"role": "assistant", "content": text})
            self._last[side] = TurnInfo(prompt, prompt_tokens, new_tokens, stopped, time.perf_counter() - start, cut)
        return text

    def compare(
        self,
        message: str,
        *,
        on_token: Callable[[str, str], Any] | None = None,
        stop: threading.Event | None = None,
        **gen,
    ) -> dict[str, str]:
        """The same message to the tuned model and to the base model (adapter disabled), each with
        its own history: ``{"tuned": ..., "base": ...}``. ``on_token(side, piece)`` streams both.
        When the stop flag is set during the tuned answer, the base side is not asked."""
        if stop is None:
            self.stop_flag.clear()
        flag = stop if stop is not None else self.stop_flag
        out = {}
        for side in SIDES:
            if side == "base" and flag.is_set():
                break
            cb = (lambda piece, side=side: on_token(side, piece)) if on_token else None
            out[side] = self.reply(message, on_token=cb, stop=flag, use_base=side == "base", **gen)
        return out

    def _render(self, messages: list[dict]) -> str:
        from ..template.render import TemplateError, apply_chat_template

        if not getattr(self.tokenizer, "chat_template", None):
            raise TemplateError("this model's tokenizer has no chat template, so it cannot be chatted with")
        return apply_chat_template(self.tokenizer, messages, tokenize=False, add_generation_prompt=True)

    def _generate(
        self, prompt: str, *, max_new_tokens, temperature, top_p, on_token, stop, use_base
    ) -> tuple[str, int, int, bool, bool]:
        """Generate on a worker thread, stream the pieces on this one; (answer, prompt tokens, new
        tokens, stopped early, cut at max_new_tokens)."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from .generation import adapter_disabled, stop_token_ids

        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        )
        stops = stop_token_ids(model, tokenizer)
        box: dict[str, Any] = {}
        halt = threading.Event()  # set when the reader gives up (its on_token raised)

        def work(m):
            try:
                with torch.no_grad():
                    box["out"] = m.generate(
                        **batch,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=stops,
                        pad_token_id=tokenizer.pad_token_id,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_FlagCriteria(stop, halt)]),
                        **sampling,
                    )
            except BaseException as err:
                box["error"] = err
                streamer.end()  # wake the reader

        pieces = _Stripper(on_token)
        with adapter_disabled(model) if use_base else contextlib.nullcontext(model) as m:
            worker = threading.Thread(target=work, args=(m,), name="sft-chat-generate", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    pieces.feed(piece)
            except BaseException:
                halt.set()
                raise
            finally:
                worker.join()  # the adapter stays disabled until the generation has ended
        if "error" in box:
            raise box["error"]
        prompt_len = batch["input_ids"].shape[1]
        new = box["out"][0, prompt_len:]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        pieces.finish(text)
        # Stopped early: the flag was set and the generation ended neither on a stop token nor at the limit.
        stopped = (
            (stop.is_set() or halt.is_set())
            and len(new) < max_new_tokens
            and (len(new) == 0 or int(new[-1]) not in stops)
        )
        cut = not stopped and len(new) >= max_new_tokens and int(new[-1]) not in stops
        return text, prompt_len, int(new.shape[0]), stopped, cut


class _FlagCriteria:
    """A transformers StoppingCriteria: stop every sequence once a flag is set."""

    def __init__(self, *flags: threading.Event):
        self.flags = flags

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = any(f.is_set() for f in self.flags)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Stripper:
    """Passes streamed pieces on with the answer's leading and trailing whitespace held back, so the
    pieces add up to the stripped answer (what :func:`core.evaluate.evaluation.generate` returns)."""

    def __init__(self, on_token):
        self.on_token = on_token
        self.sent = ""
        self._held = ""

    def feed(self, piece: str) -> None:
        text = self._held + piece
        if not self.sent:
            text = text.lstrip()
        core = text.rstrip()
        self._held = text[len(core) :]
        if core:
            self._send(core)

    def finish(self, answer: str) -> None:
        # The streamer decodes in segments; should that ever differ from decoding the whole answer
        # at once, send what is missing so the pieces still add up to the answer.
        if answer.startswith(self.sent) and len(answer) > len(self.sent):
            self._send(answer[len(self.sent) :])

    def _send(self, text: str) -> None:
        self.sent += text
        if self.on_token is not None:
            self.on_token(text)


def _side(use_base: bool) -> str:
    return "base" if use_base else "tuned"
