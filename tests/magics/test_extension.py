"""%load_ext: fast, no heavy imports, magics registered and removed, help, config, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError

HEAVY = ["torch", "transformers", "trl", "peft", "datasets"]


def _registered() -> dict[str, list[str]]:
    """Every magic the extension registers, from the magics class itself (not a list kept by hand)."""
    from sft_magics.magics import SftMagics

    return {kind: sorted(names) for kind, names in SftMagics.magics.items()}


MAGICS = _registered()
ALL_MAGICS = [
    "sft_attach",
    "sft_chat",
    "sft_data",
    "sft_eval",
    "sft_export",
    "sft_runs",
    "sft_stop",
    "sft_template",
    "sft_train",
    "sft_wait",
]


def test_the_registered_magics_are_the_documented_twelve():
    assert MAGICS == {"line": ALL_MAGICS, "cell": ["sft_template", "sft_train"]}


def test_load_ext_imports_nothing_heavy_and_is_fast():
    code = textwrap.dedent(
        f"""
        import json, sys, time
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        t = time.perf_counter()
        shell.run_line_magic("load_ext", "sft_magics")
        took = time.perf_counter() - t
        print(json.dumps({{"took": took, "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                           "line": sorted(shell.magics_manager.magics["line"]),
                           "cell": sorted(shell.magics_manager.magics["cell"])}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["took"] < 0.3, f"%load_ext took {report['took']:.3f} s"
    for kind, names in MAGICS.items():
        assert set(names) <= set(report[kind])


def test_unload_ext_removes_the_magics(shell):
    shell.run_line_magic("unload_ext", "sft_magics")
    for kind, names in MAGICS.items():
        assert not set(names) & set(shell.magics_manager.magics[kind])
    shell.run_line_magic("load_ext", "sft_magics")
    assert "sft_data" in shell.magics_manager.magics["line"]


@pytest.mark.parametrize("kind,name", [(k, n) for k, ns in MAGICS.items() for n in ns])
def test_each_magic_has_help_with_an_example(shell, kind, name):
    doc = shell.magics_manager.magics[kind][name].__doc__
    assert "Example::" in doc and f"%{name}" in doc
    assert f"::\n\n  %{name} " in doc  # the magic_arguments usage block, so %magic? lists every flag
    binds_nothing = ("sft_attach", "sft_stop")  # they show or act; there is no result to bind
    assert "-o NAME, --output NAME" in doc or name == "sft_train" or "--name" in doc or name in binds_nothing


def test_config_traits_persist_between_cells(shell, tmp_path):
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(tmp_path / 'elsewhere')!r}")
    shell.run_line_magic("config", "SftMagics.default_model = 'my-model'")
    magics = shell.magics_manager.registry["SftMagics"]
    assert magics.output_dir == str(tmp_path / "elsewhere")
    assert magics.default_model == "my-model"
    assert magics.display == "plain" and magics.mode == "plain"
    assert magics.trust_remote_code is False


def test_bad_display_mode_is_refused(shell):
    from traitlets import TraitError

    with pytest.raises(TraitError):
        shell.magics_manager.registry["SftMagics"].display = "fancy"


@pytest.mark.parametrize(
    "magic,line,expected",
    [
        ("sft_data", "", "the following arguments are required: source"),
        ("sft_data", "x.jsonl --max-length ten", "invalid int value: 'ten'"),
        ("sft_template", "--row 1", "give --messages VAR"),
        ("sft_template", "--messages nothing_here", "no notebook variable named 'nothing_here'"),
        ("sft_eval", "somewhere", "the following arguments are required: --data"),
        ("sft_data", "missing/file.jsonl", "file not found"),
    ],
)
def test_wrong_arguments_give_a_one_line_usage_error(shell, magic, line, expected):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic(magic, line)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message.strip()


def test_bad_yaml_cell_names_the_line(shell):
    with pytest.raises(
        UsageError,
        match=r"invalid YAML in the %%sft_train cell at line 2, column 11: mapping values are not allowed here",
    ):
        shell.run_cell_magic("sft_train", "--name x", "model: a\ndataset: x: y\n")


def test_unknown_train_key_suggests_the_closest(shell, qa_jsonl):
    with pytest.raises(
        UsageError, match=r"unknown key 'learning_rat' in the training config; did you mean 'learning_rate'\?"
    ):
        shell.run_cell_magic("sft_train", "--name x", f"dataset: {qa_jsonl}\nlearning_rat: 0.1\n")


def test_kernel_transformer_awaits_sft_train_cells():
    from IPython.core.inputtransformer2 import TransformerManager

    from sft_magics.magics._runner import await_transformer

    cell = TransformerManager().transform_cell("%%sft_train --name x -o run\nmodel: a\n")
    assert await_transformer(cell.splitlines(True)) == [
        "await get_ipython().magics_manager.registry['SftMagics'].sft_train_async('--name x -o run', 'model: a\\n')\n"
    ]
    line = TransformerManager().transform_cell("%sft_train --resume x")
    assert await_transformer(line.splitlines(True))[0].startswith(
        "await get_ipython().magics_manager.registry['SftMagics'].sft_train_async('--resume x'"
    )
    other = TransformerManager().transform_cell("%%sft_template\n- {role: user, content: hi}\n")
    assert await_transformer(other.splitlines(True)) == other.splitlines(True)
