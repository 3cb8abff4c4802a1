"""Token counts for the data doctor, and the token ids and masks training is fed, many rows at a
time: each row's token ids and the *ranges* of its trained tokens, computed with the same rules as
:func:`core.template.tokens.tokenize_row` (which stays the definition; rows that cannot be done in batch
go through it one by one; tests compare every row). Conversations are
rendered many per call through the bounded renderer, then tokenized in one batched call of the
fast (Rust) tokenizer; trained ranges come from character spans."""

from __future__ import annotations

from bisect import bisect_left
from itertools import islice
from operator import le

from .tokens import common_prefix

# --------------------------------------------------------------------------- counting


def _ranges_from_mask(mask) -> tuple[tuple[int, int], ...]:
    out, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(mask)))
    return tuple(out)


def _ranges_from_spans(offsets: list, spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Trained-token ranges with tokenize_row's rule: a token is trained when it is not empty
    (end > start) and starts inside one of the character spans."""
    starts = [o[0] for o in offsets]
    if not all(map(le, starts, islice(starts, 1, None))):  # offsets out of order: the plain rule
        return _ranges_from_mask([e > s and any(a <= s < b for a, b in spans) for s, e in offsets])
    out: list[tuple[int, int]] = []
    for a, b in spans:
        lo, hi = bisect_left(starts, a), bisect_left(starts, b)
        if lo >= hi:
            continue
        nonempty = [offsets[k][1] > offsets[k][0] for k in range(lo, hi)]
        if all(nonempty):
            out.append((lo, hi))
        else:
            out.extend((lo + x, lo + y) for x, y in _ranges_from_mask(nonempty))
    # Merge ranges that touch (adjacent spans).
    merged: list[tuple[int, int]] = []
    for r in out:
        if merged and merged[-1][1] == r[0]:
            merged[-1] = (merged[-1][0], r[1])
        else:
            merged.append(r)
    return tuple(merged)


def _end_position(ids: list[int], ranges, end_ids: frozenset[int]) -> int:
    """Position of the answer's end token: the last trained special token (EOS / end of turn) in the
    last trained range, else the last trained token; -1 when nothing is trained."""
    if not ranges:
        return -1
    lo, hi = ranges[-1]
    for k in range(hi - 1, lo - 1, -1):
        if ids[k] in end_ids:
            return k
    return hi - 1


class _Counter:
    """Collects (total, ranges, end position) per row, by row position; with ``keep_ids``, the ids too."""

    def __init__(self, n: int, tokenizer, keep_ids: bool = False, start: int = 0, row_index=None) -> None:
        self.start, self.row_index = start, row_index  # to name a row in errors: its number in the source
        self.ids: list[list[int]] | None = [[] for _ in range(n)] if keep_ids else None
        self.total = [0] * n
        self.ranges: list[tuple] = [()] * n
        self.end = [-1] * n
        self.end_ids = frozenset(tokenizer.all_special_ids)
        self.errors: dict[int, str] = {}  # row position -> why the template could not render it

    def put(self, i: int, ids: list[int], ranges) -> None:
        if self.ids is not None:
            self.ids[i] = list(ids)
        self.total[i] = len(ids)
        self.ranges[i] = ranges
        self.end[i] = _end_position(ids, ranges, self.end_ids)

    def row(self, i: int) -> str:
        """Row position ``i`` of this batch as the user knows it: its number in the source."""
        k = self.start + i
        return f"row {k if self.row_index is None else self.row_index[k]}"

    def put_rendering(self, i: int, rendering) -> None:
        self.put(i, rendering.input_ids, _ranges_from_mask(rendering.assistant_masks))


def _tokenize(tokenizer, texts: list[str], offsets: bool = False):
    if not texts:
        return [], []
    enc = tokenizer(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=offsets,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return enc["input_ids"], (enc["offset_mapping"] if offsets else [])


def _many(call, items: list, rows: list[int], c: _Counter) -> list:
    """``call(items)`` for a batch; if the batch fails, item by item, with None for the items that fail
    (their rows then go through tokenize_row, which reports the error properly). ``rows[k]``: the row
    position of item k (named through ``c``). A template that ran past the bound stops the whole load at the
    first item that shows it, naming its row: the bound is paid about twice, not once per row."""
    from .render import TemplateTimeout

    if not items:
        return []
    try:
        out = call(items)
        if len(out) == len(items):
            return list(out)
    except TemplateTimeout as err:
        if err.located:  # refused earlier in this load
            raise
    except Exception:
        pass
    results = []
    for k, item in enumerate(items):
        try:
            results.append(call([item])[0])
        except TemplateTimeout as err:
            raise err.at(c.row(rows[k])) from None
        except Exception:
            results.append(None)
    return results


def _render_many(
    tokenizer,
    conversations: list[list[dict]],
    rows: list[int],
    c: _Counter,
    *,
    add_generation_prompt: bool,
    chat_template,
) -> list[str | None]:
    """The strings of many conversations, rendered by apply_chat_template many at a time."""

    from .render import apply_chat_template

    def call(convs):
        return apply_chat_template(
            tokenizer, convs, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
        )

    return _many(call, conversations, rows, c)


def count_rows(c: _Counter, tokenizer, rows: list[dict], fmt: str, method=None) -> None:
    """Count ``rows`` (normalised, of format ``fmt``) into ``c``; ``method``: the mask method of a
    conversation dataset (:func:`core.template.tokens.choose_mask_method`)."""
    if fmt == "text":
        _count_text(c, tokenizer, rows)
    elif fmt == "prompt_completion":
        _count_prompt_completion(c, tokenizer, rows)
    elif fmt == "conversational_prompt_completion":
        _count_conversational_pc(c, tokenizer, rows)
    else:
        _count_messages(c, tokenizer, rows, method)


def encode_rows(
    tokenizer, rows: list[dict], fmt: str, method=None, start: int = 0, row_index=None
) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, trained mask of 0/1) per row: what :func:`core.template.tokens.tokenize_row` gives, many
    rows per template call and one batched tokenizer call, without building the token-by-token view.
    A row the template cannot render raises its error, as tokenize_row does."""
    from .render import TemplateTimeout
    from .tokens import tokenize_row

    c = _Counter(len(rows), tokenizer, keep_ids=True, start=start, row_index=row_index)
    count_rows(c, tokenizer, rows, fmt, method)
    for i in sorted(c.errors):  # raises the row's TemplateError (or, if it renders this time, counts it)
        try:
            c.put_rendering(i, tokenize_row(tokenizer, rows[i], fmt, method=method))
        except TemplateTimeout as err:
            raise err.at(c.row(i)) from None
    masks = []
    for ids, ranges in zip(c.ids, c.ranges):
        mask = [0] * len(ids)
        for a, b in ranges:
            mask[a:b] = [1] * (b - a)
        masks.append(mask)
    return c.ids, masks


def _count_text(c: _Counter, tokenizer, rows: list[dict]) -> None:
    eos = tokenizer.eos_token or ""
    ids_all, _ = _tokenize(tokenizer, [r["text"] + eos for r in rows])
    for i, ids in enumerate(ids_all):
        c.put(i, ids, ((0, len(ids)),) if ids else ())


def _count_prompt_completion(c: _Counter, tokenizer, rows: list[dict]) -> None:
    eos = tokenizer.eos_token or ""
    prompt_ids, _ = _tokenize(tokenizer, [r["prompt"] for r in rows])
    full_ids, _ = _tokenize(tokenizer, [r["prompt"] + r["completion"] + eos for r in rows])
    for i, (p, ids) in enumerate(zip(prompt_ids, full_ids)):
        start = common_prefix(p, ids)
        c.put(i, ids, ((start, len(ids)),) if start < len(ids) else ())


def _count_by_rows(c: _Counter, tokenizer, rows, positions, fmt, method) -> None:
    from .render import TemplateError, TemplateTimeout
    from .tokens import tokenize_row

    for i in positions:
        try:
            c.put_rendering(i, tokenize_row(tokenizer, rows[i], fmt, method=method))
        except TemplateTimeout as err:  # the whole load stops: every other row would pay the bound again
            raise err.at(c.row(i)) from None
        except TemplateError as err:  # reported, not fatal: the doctor should still see the other rows
            c.errors[i] = str(err)


def _count_conversational_pc(c: _Counter, tokenizer, rows: list[dict]) -> None:
    from .tokens import clean_messages

    batch = [i for i, r in enumerate(rows) if r.get("tools") is None]
    prompts = [clean_messages(rows[i]["prompt"]) for i in batch]
    fulls = [p + clean_messages(rows[i]["completion"]) for p, i in zip(prompts, batch)]
    prompt_texts = _render_many(tokenizer, prompts, batch, c, add_generation_prompt=True, chat_template=None)
    full_texts = _render_many(tokenizer, fulls, batch, c, add_generation_prompt=False, chat_template=None)
    ok = [k for k, (p, f) in enumerate(zip(prompt_texts, full_texts)) if p is not None and f is not None]
    p_ids, _ = _tokenize(tokenizer, [prompt_texts[k] for k in ok])
    f_ids, _ = _tokenize(tokenizer, [full_texts[k] for k in ok])
    done = set()
    for k, p, ids in zip(ok, p_ids, f_ids):
        start = common_prefix(p, ids)
        c.put(batch[k], ids, ((start, len(ids)),) if start < len(ids) else ())
        done.add(batch[k])
    _count_by_rows(
        c, tokenizer, rows, [i for i in range(len(rows)) if i not in done], "conversational_prompt_completion", None
    )


def _count_messages(c: _Counter, tokenizer, rows: list[dict], method) -> None:
    from .tokens import MASK_MARKERS, MASK_TRL_TEMPLATE, clean_messages

    method_name, template = method
    batch = [i for i, r in enumerate(rows) if r.get("tools") is None]
    convs = {i: clean_messages(rows[i]["messages"]) for i in batch}  # as tokenize_row: no None-valued keys
    count = _count_by_markers if method_name in (MASK_MARKERS, MASK_TRL_TEMPLATE) else _count_by_prefixes
    done = count(c, tokenizer, batch, convs, template)
    _count_by_rows(c, tokenizer, rows, [i for i in range(len(rows)) if i not in done], "messages", method)


def _count_by_markers(c: _Counter, tokenizer, batch: list[int], convs: dict, template) -> set[int]:
    """The template marks the assistant tokens itself: transformers' mask, many rows per call."""
    from .render import apply_chat_template

    done: set[int] = set()

    def call(conversations):
        enc = apply_chat_template(
            tokenizer,
            conversations,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            chat_template=template,
        )
        return list(zip(enc["input_ids"], enc["assistant_masks"]))

    for i, got in zip(batch, _many(call, [convs[i] for i in batch], batch, c)):
        if got is not None:
            c.put(i, list(got[0]), _ranges_from_mask(got[1]))
            done.add(i)
    return done


def _count_by_prefixes(c: _Counter, tokenizer, batch: list[int], convs: dict, template) -> set[int]:
    """Prefix rendering: assistant turn k spans from the end of render(messages[:k], generation prompt)
    to the end of render(messages[:k+1]); the whole conversation is one more render."""
    done: set[int] = set()
    requests_gen: list[list[dict]] = []  # messages[:k] + generation prompt
    requests_end: list[list[dict]] = []  # full conversation and messages[:k+1]
    gen_rows: list[int] = []  # the row of each request
    end_rows: list[int] = []
    plan: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    for i in batch:
        msgs = convs[i]
        turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        if not turns or turns[0] == 0:
            continue  # no prompt before the first answer: the per-row path decides
        full_at = len(requests_end)
        requests_end.append(msgs)
        end_rows.append(i)
        pairs = []
        for k in turns:
            requests_gen.append(msgs[:k])
            gen_rows.append(i)
            if k == len(msgs) - 1:
                end_at = full_at  # the last answer ends where the conversation ends
            else:
                end_at = len(requests_end)
                requests_end.append(msgs[: k + 1])
                end_rows.append(i)
            pairs.append((len(requests_gen) - 1, end_at))
        plan[i] = (full_at, pairs)
    gen_texts = _render_many(tokenizer, requests_gen, gen_rows, c, add_generation_prompt=True, chat_template=template)
    end_texts = _render_many(tokenizer, requests_end, end_rows, c, add_generation_prompt=False, chat_template=template)
    spans_of: dict[int, list[tuple[int, int]]] = {}
    for i, (full_at, pairs) in plan.items():
        full = end_texts[full_at]
        spans: list[tuple[int, int]] | None = [] if full is not None else None
        for g, e in pairs if full is not None else ():
            start_text, end_text = gen_texts[g], end_texts[e]
            if (
                start_text is None
                or end_text is None
                or not (full.startswith(start_text) and full.startswith(end_text))
                or len(end_text) < len(start_text)
            ):
                spans = None  # a render failed, or not prefix-preserving here: tokenize_row decides
                break
            spans.append((len(start_text), len(end_text)))
        if spans is not None:
            spans_of[i] = spans
    order = list(spans_of)
    ids_all, offsets_all = _tokenize(tokenizer, [end_texts[plan[i][0]] for i in order], offsets=True)
    for i, ids, offsets in zip(order, ids_all, offsets_all):
        c.put(i, ids, _ranges_from_spans(offsets, spans_of[i]))
        done.add(i)
    return done
