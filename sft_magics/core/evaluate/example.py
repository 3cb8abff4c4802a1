"""One evaluation example: the question (a message list), the reference answer, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    prompt: Any  # list of messages (conversational) or a string
    reference: str
    # The normalised dataset row and its format, so the loss sees exactly what training saw.
    row: dict | None = field(default=None, compare=False, hash=False)
    fmt: str = field(default="", compare=False, hash=False)

    @property
    def question(self) -> str:
        """The prompt's last user message (the whole prompt for a plain string)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return next((m.get("content") or "" for m in reversed(self.prompt) if m.get("role") == "user"), "")
