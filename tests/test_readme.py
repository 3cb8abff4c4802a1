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
    from sft_magics.core.config import defaults_markdown

    assert defaults_markdown() in README, "README's defaults table drifted; paste:\n" + defaults_markdown()


def test_screenshots_the_readme_shows_exist():
    shots = re.findall(r"!\[[^\]]*\]\((docs/screenshots/[^)]+)\)", README)
    assert len(shots) >= 3
    for shot in shots:
        assert (ROOT / shot).is_file() and (ROOT / shot).stat().st_size > 5000, shot


def test_readme_lists_every_example_notebook():
    for nb in (ROOT / "examples").glob("*.ipynb"):
        assert f"`{nb.name}`" in README, nb.name
