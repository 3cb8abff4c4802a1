"""The chat's message box: Enter sends, Shift+Enter starts a new line, as chat boxes do.

ipywidgets' ``Textarea`` sends no key events to the kernel, so the box is a small anywidget (an ES
module the frontend runs; JupyterLab, Notebook 7, VS Code and Colab all load it): a ``<textarea>``
whose text is the ``value`` trait, and whose Enter bumps ``submitted``, the value synced in the same
message. Shift+Enter (or Ctrl/Alt/Cmd+Enter) is a new line; the box suppresses JupyterLab's shortcuts
(``data-lm-suppress-shortcuts``), so it is not "run cell".
"""

from __future__ import annotations

import anywidget
import traitlets

_ESM = r"""
function render({ model, el }) {
  const box = document.createElement("textarea");
  box.className = "sft-chat-input";
  box.rows = 3;
  box.placeholder = model.get("placeholder");
  box.value = model.get("value");
  box.style.cssText = "width:100%;box-sizing:border-box;resize:vertical;font:inherit;padding:4px 6px;" +
    "border:1px solid var(--jp-border-color1,#bbb);border-radius:2px";
  box.setAttribute("data-lm-suppress-shortcuts", "true");  // JupyterLab's Shift+Enter runs the cell
  const sync = () => { model.set("value", box.value); model.save_changes(); };
  box.addEventListener("input", sync);
  box.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing) return;  // an input method choosing a word keeps its Enter
    e.stopPropagation();
    e.preventDefault();
    if (e.shiftKey || e.altKey || e.ctrlKey || e.metaKey) {  // a new line, where the cursor is
      box.setRangeText("\n", box.selectionStart, box.selectionEnd, "end");
      sync();
      return;
    }
    model.set("value", box.value);
    model.set("submitted", model.get("submitted") + 1);
    model.save_changes();
  });
  const follow = () => { if (box.value !== model.get("value")) box.value = model.get("value"); };
  model.on("change:value", follow);
  el.appendChild(box);
  return () => model.off("change:value", follow);  // a re-render leaves no listener behind
}
export default { render };
"""


class ChatInput(anywidget.AnyWidget):
    """``value``: the text in the box; ``submitted``: how many times Enter sent it."""

    _esm = _ESM
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("").tag(sync=True)
    submitted = traitlets.Int(0).tag(sync=True)
