"""Rendering views (display/_template_view.py): colours by message, hover titles, trained/masked
marks, the per-message table, truncation and checks lines, the text and rich forms, and escaping of
every piece of data text in the HTML (parsed, not searched for by eye)."""

from __future__ import annotations

import io
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from sft_magics.core.template.tokens import Check, Rendering, Token, render
from sft_magics.display._template_view import (
    GLUE_COLOUR,
    MASKED_COLOUR,
    PALETTE,
    CompareView,
    InferenceView,
    RenderingView,
    find_first_difference,
    truncation_line,
)

# Every tag the views emit; anything else in the HTML came from data.
ALLOWED_TAGS = {"div", "span", "pre", "br", "table", "tr", "th", "td", "ul", "li", "b", "style"}

CONV = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris.\nThe capital."},
    {"role": "user", "content": "And Italy?"},
    {"role": "assistant", "content": "Rome."},
]

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "</span></div>",
    'x" onmouseover="alert(1)',
]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from sft_magics.core.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture
def conv(tok) -> Rendering:
    return render(tok, {"messages": CONV}, "messages")


class Parsed(HTMLParser):
    """Tags, attributes and text of an HTML string; token spans (class sft-t) collected apart."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.data: list[str] = []
        self.tokens: list[dict] = []  # {"classes", "title", "style", "text", "br"}
        self.rows: list[list[str]] = []  # <tr> cells, text
        self.items: list[tuple[set, str]] = []  # <li> classes and text
        self.divs: list[tuple[set, str]] = []  # classes and text of innermost divs
        self._stack: list[tuple[str, dict]] = []
        self._tok_depth = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        classes = set((a.get("class") or "").split())
        if tag == "span" and "sft-t" in classes:
            self.tokens.append(
                {"classes": classes, "title": a.get("title"), "style": a.get("style", ""), "text": "", "br": 0}
            )
            self._tok_depth = len(self._stack)
        if tag == "br" and self._tok_depth is not None:
            self.tokens[-1]["br"] += 1
        if tag == "tr":
            self.rows.append([])
        if tag == "li":
            self.items.append((classes, ""))
        if tag == "div":
            self.divs.append((classes, ""))
        if tag != "br":
            self._stack.append((tag, a))

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1][0] == tag:
            self._stack.pop()
        if tag == "span" and self._tok_depth is not None and len(self._stack) == self._tok_depth:
            self._tok_depth = None

    def handle_data(self, data):
        self.data.append(data)
        if self._tok_depth is not None:
            self.tokens[-1]["text"] += data
        tags = [t for t, _ in self._stack]
        if tags and tags[-1] in ("td", "th"):
            self.rows[-1].append(data)
        if "li" in tags:
            c, s = self.items[-1]
            self.items[-1] = (c, s + data)
        if tags and tags[-1] == "div":
            c, s = self.divs[-1]
            self.divs[-1] = (c, s + data)

    @property
    def text(self) -> str:
        return "".join(self.data)


def rich_text(view, width: int = 100) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(view)
    return console.file.getvalue()


def marked(tokens) -> str:
    """Trained spans inside «…», computed independently of the view."""
    out = []
    for i, t in enumerate(tokens):
        prev = tokens[i - 1].trained if i else False
        if t.trained and not prev:
            out.append("«")
        if not t.trained and prev:
            out.append("»")
        out.append(t.text)
    if tokens and tokens[-1].trained:
        out.append("»")
    return "".join(out)


# -- tokens ----------------------------------------------------------------------------------------


def test_every_token_is_one_span_with_its_message_colour_and_hover_title(conv):
    p = Parsed(RenderingView(conv).to_html())
    assert len(p.tokens) == len(conv.tokens)
    for t, span in zip(conv.tokens, p.tokens):
        want = "sft-glue" if t.message is None else f"sft-m{t.message % len(PALETTE)}"
        assert want in span["classes"]
        label = t.id if t.trained else -100
        role = "(template)" if t.message is None else conv.roles[t.message]
        assert span["title"] == f"id {t.id} · label {label} · role {role}" + (" · special" if t.special else "")
        assert ("sft-trained" in span["classes"]) == t.trained
        assert ("sft-masked" in span["classes"]) == (not t.trained)
        assert ("sft-special" in span["classes"]) == t.special
        # the shown text is the token's text, with newlines as ↵ plus a real line break
        assert span["text"] == t.text.replace("\n", "↵")
        assert span["br"] == t.text.count("\n")
    # Two tokens of different messages: different classes and different backgrounds.
    first = {t.message: i for i, t in reversed(list(enumerate(conv.tokens)))}
    a, b = p.tokens[first[0]], p.tokens[first[1]]
    assert "sft-m0" in a["classes"] and "sft-m1" in b["classes"] and "sft-m0" not in b["classes"]
    assert f"background:{PALETTE[0]}" in a["style"] and f"background:{PALETTE[1]}" in b["style"]
    # the style block defines those classes, scoped under the container class
    html_ = RenderingView(conv).to_html()
    assert html_.startswith('<div class="sft-rv"><style>')
    assert f".sft-rv .sft-m1{{background:{PALETTE[1]}}}" in html_


def test_trained_tokens_are_the_assistant_answers(conv):
    p = Parsed(RenderingView(conv).to_html())
    trained_text = "".join(s["text"] for s in p.tokens if "sft-trained" in s["classes"])
    assert "Paris.↵The capital." in trained_text and "Rome." in trained_text
    assert "France" not in trained_text
    assert sum("sft-trained" in s["classes"] for s in p.tokens) == conv.trained_count > 0


def test_glue_tokens_are_neutral():
    r = Rendering(
        tokens=[Token(5, "<s>", False, True, None), Token(6, "hi", True, False, 0)],
        text="<s>hi",
        roles=["assistant"],
        mask_source="test",
    )
    p = Parsed(RenderingView(r).to_html())
    assert (
        "sft-glue" in p.tokens[0]["classes"] and p.tokens[0]["title"] == "id 5 · label -100 · role (template) · special"
    )
    assert p.tokens[1]["title"] == "id 6 · label 6 · role assistant"
    assert "1 template tokens outside any message" in RenderingView(r).to_text()


# -- the table and lines under the tokens --------------------------------------------------------


def test_per_message_table_equals_per_message(conv):
    p = Parsed(RenderingView(conv).to_html())
    assert p.rows[0] == ["#", "role", "tokens", "trained"]
    want = [[str(i), m["role"], str(m["tokens"]), str(m["trained"])] for i, m in enumerate(conv.per_message())]
    # The template's default system message is its own text, in its own row: not the user's.
    glue = [t for t in conv.tokens if t.message is None]
    assert len(glue) >= 10 and "You are a helpful" in "".join(t.text for t in glue)
    want.append(["–", "(template's own text)", str(len(glue)), "0"])
    assert p.rows[1:] == want
    assert [m["trained"] for m in conv.per_message()][1] > 0  # the table has something to show
    text = RenderingView(conv).to_text().splitlines()
    start = text.index(next(line for line in text if line.startswith("#  role")))
    for line, m, i in zip(text[start + 1 :], conv.per_message(), range(99)):
        assert line.split() == [str(i), m["role"], str(m["tokens"]), str(m["trained"])]
    summary = f"{len(conv.tokens)} tokens, {conv.trained_count} trained · mask: {conv.mask_source}"
    summary += f" · {len(glue)} template tokens outside any message"
    assert summary in text
    assert any(d == summary for _, d in p.divs)


def test_truncation_lines(conv):
    n, prompt_len = len(conv.tokens), conv.prompt_length
    last_answer = sum(1 for t in conv.tokens if t.message == 3 and t.trained)

    conv.max_length = n
    assert truncation_line(conv) == ("ok", f"max_length {n}: nothing cut")
    assert f"max_length {n}: nothing cut" in RenderingView(conv).to_text().splitlines()

    conv.max_length = n - 2  # the last answer loses its last two tokens (<|im_end|> and the newline)
    sev, line = truncation_line(conv)
    assert sev == "warn"
    assert line.startswith(f"max_length {n - 2}: cuts 2 tokens (2 trained) — dropped: '<|im_end|>↵'")
    assert "cut mid-way" in line
    assert last_answer > 2

    conv.max_length = prompt_len  # every trained token is cut
    dropped = conv.tokens[prompt_len:]
    sev, line = truncation_line(conv)
    assert sev == "bad"
    assert line.startswith(
        f"max_length {prompt_len}: cuts {len(dropped)} tokens ({conv.trained_count} trained) — dropped: '"
    )
    assert line.endswith(" — no trained token left: TRL drops this row")
    text = RenderingView(conv).to_text()
    assert "⚠ " + line in text.splitlines()
    p = Parsed(RenderingView(conv).to_html())
    trunc = [(c, d) for c, d in p.divs if "sft-trunc" in c]
    assert len(trunc) == 1 and "sft-bad" in trunc[0][0] and trunc[0][1] == "⚠ " + line
    assert "no trained token left: TRL drops this row" in rich_text(RenderingView(conv), width=400)

    conv.max_length = None
    assert truncation_line(conv) is None
    assert "max_length" not in RenderingView(conv).to_text()
    assert not [c for c, _ in Parsed(RenderingView(conv).to_html()).divs if "sft-trunc" in c]


def test_dropped_text_is_clipped_on_one_line():
    tokens = [Token(1, "a", True, False, 0)] + [Token(2, "line\n", True, False, 0)] * 40
    r = Rendering(tokens=tokens, text="", roles=["assistant"], mask_source="m", max_length=1)
    _, line = truncation_line(r)
    assert "\n" not in line
    assert "dropped: 'line↵line↵" in line and "…'" in line
    assert line.endswith("— the answer is cut mid-way: its end is never trained")


def test_checks_pass_and_warn(conv):
    conv.checks = [Check("ends with EOS", True, "<|im_end|> closes every turn"), Check("BOS", False, "no BOS token")]
    text = RenderingView(conv).to_text().splitlines()
    assert "✓ ends with EOS: <|im_end|> closes every turn" in text
    assert "⚠ BOS: no BOS token" in text
    p = Parsed(RenderingView(conv).to_html())
    assert p.items == [
        ({"sft-ok"}, "✓ ends with EOS: <|im_end|> closes every turn"),
        ({"sft-warn"}, "⚠ BOS: no BOS token"),
    ]
    out = rich_text(RenderingView(conv))
    assert "✓ ends with EOS: <|im_end|> closes every turn" in out and "⚠ BOS: no BOS token" in out


# -- text and rich forms -------------------------------------------------------------------------


def test_text_form_marks_trained_spans(conv):
    text = RenderingView(conv, title="tiny · row 0").to_text()
    assert text.startswith("tiny · row 0\n" + marked(conv.tokens) + "\n")
    assert "«Paris.\nThe capital.<|im_end|>\n»" in text and "«Rome.<|im_end|>\n»" in text

    # the display protocol
    class P:
        def __init__(self):
            self.out = ""

        def text(self, s):
            self.out += s

    p = P()
    RenderingView(conv)._repr_pretty_(p, False)
    assert p.out == RenderingView(conv).to_text()
    assert RenderingView(conv)._repr_html_() == RenderingView(conv).to_html()


def test_rich_form_has_the_same_numbers(conv):
    conv.max_length = len(conv.tokens) - 2
    conv.checks = [Check("template", True, "prefix-preserving")]
    out = rich_text(RenderingView(conv, title="tiny"))
    lines = out.splitlines()
    assert lines[0] == "tiny"
    assert "What is the capital of France?" in out and "↵" in out
    for i, m in enumerate(conv.per_message()):
        row = next(line for line in lines if line.split("│")[0].strip() == str(i))
        assert [c.strip() for c in row.split("│")] == [str(i), m["role"], str(m["tokens"]), str(m["trained"])]
    assert f"{len(conv.tokens)} tokens, {conv.trained_count} trained" in out
    assert f"max_length {len(conv.tokens) - 2}: cuts 2 tokens (2 trained)" in out
    assert "✓ template: prefix-preserving" in out


def test_untrained_text_is_readable_and_words_are_not_broken_mid_word(conv):
    """Untrained tokens in a dark grey at full opacity (not faded); lines break between words only
    ("cou / ntry" was a break inside a word, from word-break:break-all)."""
    page = RenderingView(conv).to_html()
    assert "opacity" not in page and "break-all" not in page
    assert "overflow-wrap:anywhere" in page and "word-break:normal" in page
    masked = [s for s in Parsed(page).tokens if "sft-masked" in s["classes"]]
    assert masked and all(f"color:{MASKED_COLOUR}" in s["style"] for s in masked)


def test_rich_styles_follow_the_tokens(conv):
    from rich.console import Group

    group = RenderingView(conv).__rich__()
    assert isinstance(group, Group)
    text = group.renderables[0]
    assert text.plain == "".join(t.text.replace("\n", "↵\n") for t in conv.tokens)
    pos = 0
    for t in conv.tokens:
        shown = t.text.replace("\n", "↵\n")
        styles = {str(s.style) for s in text.spans if s.start <= pos < s.end}
        (style,) = styles
        assert ("bold underline" in style) == t.trained
        assert ("dim" in style) == (not t.trained)
        assert ("reverse" in style) == t.special
        assert (GLUE_COLOUR if t.message is None else PALETTE[t.message % len(PALETTE)]) in style
        pos += len(shown)


# -- compare and inference -----------------------------------------------------------------------


def test_compare_view(tok, conv):
    other = render(tok, {"messages": [{"role": "system", "content": "Be brief."}] + CONV[:2]}, "messages")
    view = CompareView(conv, other, "four turns", "with a system prompt")
    html_ = view.to_html()
    p = Parsed(html_)
    cols = [a for t, a in p.tags if t == "div" and "sft-col" in (a.get("class") or "").split()]
    assert len(cols) == 2
    assert any(t == "div" and "display:flex" in (a.get("style") or "") for t, a in p.tags)
    assert len(p.tokens) == len(conv.tokens) + len(other.tokens)
    assert html_.count("<style>") == 1
    assert ({"sft-title"}, "four turns") in p.divs and ({"sft-title"}, "with a system prompt") in p.divs
    text = view.to_text()
    assert text.index("four turns") < text.index("with a system prompt")
    assert marked(conv.tokens) in text and marked(other.tokens) in text
    out = rich_text(view)
    assert out.index("four turns") < out.index("with a system prompt")
    assert f"{len(other.tokens)} tokens, {other.trained_count} trained" in out


def _inference(r: Rendering) -> Rendering:
    """The prompt up to the last answer (generation prompt included), nothing trained."""
    head = r.tokens[: r.prompt_length]
    return Rendering(
        tokens=[replace(t, trained=False) for t in head],
        text="".join(t.text for t in head),
        roles=r.roles,
        mask_source=r.mask_source,
    )


def test_inference_view_same(tok):
    train = render(tok, {"prompt": CONV[:3], "completion": CONV[3:]}, "conversational_prompt_completion")
    infer = _inference(train)
    assert infer.text.endswith("<|im_start|>assistant\n")
    assert find_first_difference(train, infer) is None
    view = InferenceView(train, infer, None)
    assert view.to_text().splitlines()[0] == "✓ inference prompt = training rendering up to the answer"
    p = Parsed(view.to_html())
    assert not [s for s in p.tokens if "sft-diff" in s["classes"]]
    assert "inference prompt = training rendering up to the answer" in p.text
    assert "inference prompt = training rendering up to the answer" in rich_text(view)


def test_inference_view_differs(tok):
    train = render(tok, {"prompt": CONV[:3], "completion": CONV[3:]}, "conversational_prompt_completion")
    infer = _inference(train)
    # an inference prompt whose generation prompt differs: "model" in place of part of "assistant"
    k = len(infer.tokens) - 3
    changed = Token(999, "model", False, False, None)
    infer = replace(infer, tokens=infer.tokens[:k] + [changed] + infer.tokens[k + 1 :])
    assert find_first_difference(train, infer) == k
    view = InferenceView(train, infer, k)
    want_train = "".join(t.text for t in train.tokens[k : k + 8]).replace("\n", "↵")
    want_infer = "".join(t.text for t in infer.tokens[k : k + 8]).replace("\n", "↵")
    line = f"differs from token {k}: training has '{want_train}', inference has '{want_infer}'"
    assert view.to_text().splitlines()[0] == "⚠ " + line
    p = Parsed(view.to_html())
    assert p.divs[1] == ({"sft-verdict", "sft-bad"}, "⚠ " + line)
    train_spans, infer_spans = p.tokens[: len(train.tokens)], p.tokens[len(train.tokens) :]
    assert not [s for s in train_spans if "sft-diff" in s["classes"]]
    assert [("sft-diff" in s["classes"]) for s in infer_spans] == [i >= k for i in range(len(infer.tokens))]
    assert infer_spans[k]["text"] == "model"
    # text form: the differing tail inside ⟦…⟧
    assert "⟦model" in view.to_text() and view.to_text().count("⟧") == 1
    out = rich_text(view, width=300)
    assert f"differs from token {k}" in out
    group = view.__rich__()
    diff_styles = [
        str(s.style) for r in group.renderables if hasattr(r, "spans") for s in r.spans if "#dc2626" in str(s.style)
    ]
    assert len(diff_styles) == len(infer.tokens) - k


def test_tokens_of_a_message_without_a_role_still_show():
    r = Rendering(
        tokens=[Token(1, "a", False, False, 0), Token(2, "b", True, False, 2)],
        text="ab",
        roles=["user"],
        mask_source="m",
    )
    text = RenderingView(r).to_text().splitlines()
    assert text[1:5] == [
        "#  role       tokens  trained",
        "0  user       1       0",
        "1  message 1  0       0",
        "2  message 2  1       1",
    ]
    assert Parsed(RenderingView(r).to_html()).tokens[1]["title"] == "id 2 · label 2 · role message 2"


def test_first_difference_edges(conv):
    assert find_first_difference(conv, conv) is None
    shorter = replace(conv, tokens=conv.tokens[:5])
    assert find_first_difference(conv, shorter) is None
    assert find_first_difference(shorter, conv) == 5  # the inference prompt runs past the training row


# -- escaping ------------------------------------------------------------------------------------


def _hostile_by_hand() -> Rendering:
    tokens = [Token(1, PAYLOADS[0], False, True, 0), Token(7, "plain ", False, False, 0)]
    tokens += [Token(2 + i, p, i % 2 == 0, i < 2, (i % 3) or None) for i, p in enumerate(PAYLOADS)]
    tokens += [Token(9, "[bold red]x[/]", True, False, 1), Token(10, "\n<b>", True, True, 2)]
    return Rendering(
        tokens=tokens,
        text="".join(t.text for t in tokens),
        roles=[PAYLOADS[1], PAYLOADS[2], "[bold]" + PAYLOADS[3]],
        mask_source=PAYLOADS[0],
        checks=[Check(PAYLOADS[0], False, PAYLOADS[1]), Check(PAYLOADS[2], True, PAYLOADS[3])],
        max_length=3,
    )


def _hostile_rendered(tok) -> Rendering:
    messages = [{"role": p, "content": f"content {p} end"} for p in PAYLOADS]
    messages.append({"role": "assistant", "content": " ".join(PAYLOADS)})
    r = render(tok, {"messages": messages}, "messages")
    assert r.roles[:4] == PAYLOADS and PAYLOADS[0] in r.text and PAYLOADS[1] in r.text  # rendered verbatim
    r.max_length = len(r.tokens) - 10
    r.checks = [Check(PAYLOADS[1], False, PAYLOADS[0])]
    return r


def _assert_safe(html_: str, shown: list[str]) -> None:
    for bad in ("<script", "<img", "</span></div>"):
        assert bad not in html_, bad
    p = Parsed(html_)
    names = {t for t, _ in p.tags}
    assert names <= ALLOWED_TAGS, names - ALLOWED_TAGS
    for _, attrs in p.tags:
        assert set(attrs) <= {"class", "style", "title"}, attrs
        assert not [a for a in attrs if a.startswith("on")]
    # the payloads are shown as text (escaped), not dropped
    for s in shown:
        assert s in p.text or any(s in (a.get("title") or "") for _, a in p.tags), s


def test_escaping_rendered_through_the_template(tok):
    r = _hostile_rendered(tok)
    other = render(tok, {"messages": CONV}, "messages")
    title = PAYLOADS[2] + PAYLOADS[0]
    infer = _inference(r)
    for html_ in (
        RenderingView(r, title=title).to_html(),
        CompareView(r, other, PAYLOADS[1], PAYLOADS[3]).to_html(),
        CompareView(other, r, title, title).to_html(),
        InferenceView(r, infer, None, PAYLOADS[0], PAYLOADS[1]).to_html(),
        InferenceView(other, r, find_first_difference(other, r)).to_html(),
    ):
        _assert_safe(html_, ["content ", "alert(1)"])
    p = Parsed(RenderingView(r, title=title).to_html())
    assert ({"sft-title"}, title) in p.divs
    # roles in the hover titles and the table, verbatim after unescaping
    titles = [s["title"] for s in p.tokens]
    for i, role in enumerate(PAYLOADS):
        assert any(t.endswith(f"role {role}") or f"role {role} ·" in t for t in titles), role
        assert [str(i), role] == p.rows[i + 1][:2]
    assert ({"sft-warn"}, f"⚠ {PAYLOADS[1]}: {PAYLOADS[0]}") in p.items


def test_escaping_hand_built_tokens_and_specials():
    r = _hostile_by_hand()
    assert r.truncation()["dropped_tokens"] > 0
    other = Rendering(
        tokens=[Token(1, PAYLOADS[2], True, True, 0)], text=PAYLOADS[2], roles=[PAYLOADS[0]], mask_source="m"
    )
    for html_ in (
        RenderingView(r, title=PAYLOADS[0]).to_html(),
        CompareView(r, other, PAYLOADS[1], PAYLOADS[2]).to_html(),
        InferenceView(r, other, 0, PAYLOADS[3], PAYLOADS[0]).to_html(),
        InferenceView(other, r, find_first_difference(other, r)).to_html(),
    ):
        _assert_safe(html_, PAYLOADS)
    p = Parsed(RenderingView(r).to_html())
    assert [s["text"] for s in p.tokens] == [t.text.replace("\n", "↵") for t in r.tokens]
    assert p.tokens[0]["title"] == f"id 1 · label -100 · role {PAYLOADS[1]} · special"
    assert "sft-special" in p.tokens[0]["classes"]
    # the dropped text and the mask source are data too
    assert any("sft-trunc" in c and "dropped: '" in d and "<img src=x" in d for c, d in p.divs)
    assert f"mask: {PAYLOADS[0]}" in p.text
    # rich: data is never read as markup
    out = rich_text(RenderingView(r, title="[bold]t[/]"), width=400)
    assert "[bold red]x[/]" in out and "[bold]t[/]" in out and "[bold]" + PAYLOADS[3] in out
    out = rich_text(InferenceView(r, other, 0, "[red]a[/]", "[/]"), width=400)
    assert "[red]a[/]" in out and "[/]" in out
    out = rich_text(CompareView(r, other, "[/red]", "[i]"), width=400)
    assert "[/red]" in out and "[i]" in out
