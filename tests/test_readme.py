"""The README stays true: CI runs its test command, and every magic and flag is documented."""

from __future__ import annotations

import re
from pathlib import Path

from sft_magics.magics import SftMagics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readmes_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    demo_command = next(b for b in blocks if "sft_magics demo" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert demo_command.startswith("pip install torch==2.13.0 -e")


def test_every_magic_and_flag_is_in_the_reference():
    headings = [line for line in README.splitlines() if line.startswith("### ")]
    for kind in SftMagics.magics.values():
        for name in kind:
            method = getattr(SftMagics, name)
            assert any(f"%{name}`" in h for h in headings), f"no README heading for %{name}"
            for action in method.parser._actions:
                flags = [f for f in action.option_strings if f not in ("-h", "--help")]
                if flags:
                    assert any(f"{f}{end}" in README for f in flags for end in " ]`"), (
                        f"{name} {flags} not in README.md"
                    )
    for trait in SftMagics.class_own_traits(config=True):
        assert f"SftMagics.{trait}" in README


def test_training_defaults_table_is_the_codes():
    from sft_magics.core.train.config import defaults_markdown

    assert defaults_markdown() in README, "README's defaults table drifted; paste:\n" + defaults_markdown()


def test_screenshots_the_readme_shows_exist():
    shots = re.findall(r"!\[[^\]]*\]\((docs/screenshots/[^)]+)\)", README)
    assert len(shots) >= 3
    for shot in shots:
        assert (ROOT / shot).is_file() and (ROOT / shot).stat().st_size > 5000, shot


def test_readme_lists_every_example_notebook():
    for nb in (ROOT / "examples").glob("*.ipynb"):
        assert f"`{nb.name}`" in README, nb.name


def _readme_python_blocks() -> list[str]:
    """Every ```python block of the Quick start and the magics reference, as a newcomer copies it."""
    start, end = README.index("## Quick start"), README.index("## Performance and memory")
    return re.findall(r"```python\n(.*?)```", README[start:end], re.S)


def test_every_readme_magic_line_runs_as_written(shell, tiny_model, tmp_path, monkeypatch):
    """Each magic line of the README's Quick start and reference, exactly as written (trailing
    comments included), in a real InteractiveShell from a folder laid out as the repository root.
    The default model's alias points at the tiny model, so training takes seconds, not minutes;
    the chat line runs its terminal form (display 'rich') with two typed lines."""
    import builtins

    from sft_magics.core import models

    blocks = _readme_python_blocks()
    assert blocks and any(b.startswith("%%sft_train") for b in blocks)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(root)
    monkeypatch.setattr(models, "alias_folder", lambda alias: Path(tiny_model))
    typed = iter(["Ana is 34 and lives in Lisbon.", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(typed))
    shell.run_line_magic("config", "SftMagics.display = 'rich'")
    ran = []
    for block in blocks:
        cells = [block] if block.startswith("%%") else [line for line in block.splitlines() if line.startswith("%")]
        for cell in cells:
            result = shell.run_cell(cell, silent=True)  # no Out[] bookkeeping: the shell is shared by many tests
            assert result.success, f"README line failed as written: {cell!r}: {result.error_in_exec!r}"
            ran.append(cell.split()[0])
    assert {"%sft_template", "%sft_data", "%%sft_train", "%sft_eval", "%sft_chat", "%sft_export"} <= set(ran)
    assert (root / "exported" / "json-lora" / "config.json").is_file()  # --to is relative to the root, as written


def test_a_trailing_comment_is_a_comment_for_every_magic(shell, tiny_model, tmp_path, capsys):
    import json

    from sft_magics.magics._common import strip_comment

    assert strip_comment("--name run#2 --message 'is #1?'  # why") == "--name run#2 --message 'is #1?'"
    assert strip_comment('--message "a \\" # b" # c') == '--message "a \\" # b"'
    assert strip_comment("# all of it") == ""
    data = tmp_path / "data #1.jsonl"  # a '#' inside quotes is kept: this file is found
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
    )
    lines = [
        f'%sft_data "{data}" --max-length 64  # the doctor',
        f'%sft_template {tiny_model} --data "{data}" --row 0   # one row',
        f"%%sft_train --name c1 -o run   # first line of a cell\nmodel: {tiny_model}\ndataset: '{data}'\nmax_steps: 1\n",
        "%sft_runs   # the table",
        "%sft_wait c1  # already done",
        f"%sft_eval c1 --data '{data}' --max-new-tokens 4  # scores",
        "%sft_chat c1 --message 'what is #1?' --max-new-tokens 4 -o reply  # one question",
        f"%sft_export c1 --to '{tmp_path / 'out #1'}'  # a folder",
    ]
    for line in lines:
        result = shell.run_cell(line, silent=True)
        assert result.success, f"{line!r}: {result.error_in_exec!r}"
    assert (tmp_path / "out #1" / "export_manifest.json").is_file()
    assert isinstance(shell.user_ns["reply"], str)


def test_dry_run_lets_no_library_warning_through(shell, tiny_model, qa_jsonl, recwarn):
    import warnings

    warnings.simplefilter("always")
    shell.run_cell_magic(
        "sft_train", "--name quiet --dry-run", f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 2\n"
    )
    noisy = [str(w.message) for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [m for m in noisy if "checkpointing" in m], noisy
