"""ARCHITECTURE.md stays true: every file it names exists, and the layers import one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = (ROOT / "ARCHITECTURE.md").read_text()


def test_every_file_the_map_names_exists():
    named = sorted(set(re.findall(r"`(sft_magics/[\w/]+\.py)`", MAP)))
    assert len(named) >= 25
    missing = [p for p in named if not (ROOT / p).is_file()]
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_module_is_on_the_map():
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sft_magics").rglob("*.py"))
    unmapped = [m for m in modules if f"`{m}`" not in MAP]
    assert not unmapped, f"modules missing from ARCHITECTURE.md: {unmapped}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    return names


def test_core_imports_no_display_and_no_ipython():
    for path in (ROOT / "sft_magics" / "core").glob("*.py"):
        bad = [
            n
            for n in _imports(path)
            if n.split(".")[0] in ("IPython", "ipywidgets", "rich") or "display" in n or "magics" in n
        ]
        assert not bad, f"{path.name} imports {bad}"


def test_display_never_imports_magics():
    for path in (ROOT / "sft_magics" / "display").glob("*.py"):
        assert not [n for n in _imports(path) if "magics" in n.split(".")], path.name


def _module_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports at module level."""
    modules = {}
    for path in (ROOT / "sft_magics").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1] if path.name != "__init__.py" else parts[:-1]
        modules[".".join(parts[:-1] if path.name == "__init__.py" else parts)] = (path, package)
    graph = {}
    for name, (path, package) in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                deps |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in modules}
        graph[name] = deps - {name}
    return graph


def test_no_module_level_import_cycle():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            assert state.get(dep) != 1, "import cycle: " + " → ".join([*path[path.index(dep) :], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
