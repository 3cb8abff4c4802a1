"""An Ollama ``Modelfile`` beside a GGUF export.

Ollama does not run the Jinja chat template embedded in a GGUF; it needs a Go template. When the
run's template has the ChatML shape (SmolLM2's, Qwen's, the ``chatml`` key's), the Modelfile
carries a ChatML ``TEMPLATE`` — *checked*, not assumed: the run's own template, rendered with our
bounded renderer, must produce exactly the ChatML text for a system + user + assistant + user
conversation and a user-only one. A template that writes a default system message when the
conversation has none (SmolLM2's does) becomes Ollama's ``SYSTEM``. Any other template gets no
``TEMPLATE`` line, and the file says so: Ollama then picks a template from the GGUF's metadata,
which should be checked with ``ollama show --modelfile``. (Ollama is not installed on this machine:
the Modelfile is checked by the rendering comparison above, not by Ollama itself.)
"""

from __future__ import annotations

import json

from ..template.render import apply_chat_template

# Ollama's Go template over .Messages; Ollama puts the Modelfile's SYSTEM in front as a system
# message when a request brings none.
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
_PROBE = [
    {"role": "system", "content": "S1"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def _chatml(messages: list[dict]) -> str:
    """What CHATML_GO_TEMPLATE renders for ``messages`` (plus the assistant's generation prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def chatml_system(tokenizer) -> tuple[bool, str | None]:
    """``(is_chatml, default_system)``: whether the tokenizer's template renders exactly as ChatML,
    and the system message it writes when a conversation has none (None: it writes none)."""

    def render(messages):
        return apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True)

    try:
        if render(_PROBE) != _chatml(_PROBE):
            return False, None
        alone = render(_PROBE[1:2])
    except Exception:
        return False, None
    if alone == _chatml(_PROBE[1:2]):
        return True, None
    head, end = "<|im_start|>system\n", "<|im_end|>\n"
    if alone.startswith(head) and end in alone:
        system = alone[len(head) : alone.index(end)]
        if alone == _chatml([{"role": "system", "content": system}, _PROBE[1]]):
            return True, system
    return False, None


def modelfile(gguf_name: str, tokenizer, stop_texts: list[str], *, num_ctx: int | None = None) -> str:
    """The Modelfile text: FROM the GGUF beside it, the template (ChatML) and default system, the
    stop tokens, and the context length the model was built for (capped at 8192)."""
    is_chatml, system = chatml_system(tokenizer)
    lines = ["# Ollama Modelfile written by sft_magics (%sft_export --gguf)", f"FROM ./{gguf_name}", ""]
    if is_chatml:
        lines += [f'TEMPLATE """{CHATML_GO_TEMPLATE}"""']
        if system is not None and '"""' in system:
            lines += ['# SYSTEM not written: the template\'s default system message contains """; add it by hand']
        elif system is not None:
            lines += [f'SYSTEM """{system}"""']
    else:
        lines += [
            "# No TEMPLATE: this chat template is not ChatML, which is the Go template sft_magics checks.",
            "# Ollama picks one from the GGUF's tokenizer.chat_template; check it with `ollama show --modelfile`.",
        ]
    lines.append("")
    for text in dict.fromkeys(stop_texts):
        lines.append(f"PARAMETER stop {json.dumps(text)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {min(int(num_ctx), 8192)}")
    lines.append("PARAMETER temperature 0")  # greedy, as the export was verified; raise it for variety
    return "\n".join(lines) + "\n"
