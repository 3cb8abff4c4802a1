"""ARCHITECTURE.md stays true: every file and package it names exists, the layers import one way, no
import cycle (module level or inside functions), no private name taken across packages, and the run
folder's files named only in run/."""

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
    for path in (ROOT / "sft_magics" / "core").rglob("*.py"):
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


def _package_of(module: str) -> str:
    """The package a module belongs to: a folder of core (``sft_magics.core.data``), core's own base
    modules (``sft_magics.core``), ``sft_magics.display``, ``sft_magics.magics``, or ``sft_magics``."""
    parts = module.split(".")
    if parts[:2] == ["sft_magics", "core"] and len(parts) >= 3 and (ROOT / "sft_magics" / "core" / parts[2]).is_dir():
        return ".".join(parts[:3])
    return ".".join(parts[:2]) if len(parts) >= 2 and (ROOT / Path(*parts[:2])).is_dir() else parts[0]


def _all_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Each module of the package and every package module it imports, at module level or inside a
    function, with the names it takes."""
    modules = {}
    for path in (ROOT / "sft_magics").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if path.name == "__init__.py" else parts)
        modules[name] = (path, parts[:-1])
    out = {}
    for name, (path, package) in modules.items():
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                if target in modules:
                    found.append((target, [n for n in names if f"{target}.{n}" not in modules]))
                found += [(sub, []) for sub in subs]
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if a.name in modules]
        out[name] = found
    return out


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = {m: {t for t, _ in deps if t != m and not m.startswith(t + ".")} for m, deps in _all_imports().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, "import cycle: " + " → ".join([*path[path.index(dep) :], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_private_name_is_taken_across_packages():
    taken = [
        f"{module} takes {name} from {target}"
        for module, deps in _all_imports().items()
        for target, names in deps
        for name in names
        if name.startswith("_") and not name.startswith("__") and _package_of(module) != _package_of(target)
    ]
    assert not taken, "private names imported across packages:\n" + "\n".join(taken)


def test_the_run_folders_files_are_named_only_in_run():
    """run/ owns every file of a run folder, and run/layout.py names them: no other module spells one
    (a reader or a writer goes through run/'s names and helpers)."""
    from sft_magics.core.run.layout import RUN_FILES

    home = ROOT / "sft_magics" / "core" / "run" / "layout.py"
    found = []
    for path in (ROOT / "sft_magics").rglob("*.py"):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}")
    assert not found, "run-folder files named outside run/layout.py:\n" + "\n".join(found)


def test_every_package_is_on_the_map():
    packages = sorted(
        str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "sft_magics").rglob("__init__.py") if p.parent != ROOT
    )
    unmapped = [p for p in packages if f"`{p}`" not in MAP]
    assert not unmapped, f"packages missing from ARCHITECTURE.md: {unmapped}"


def _long_functions(limit: int, only_magics: bool = False) -> list[str]:
    out = []
    for path in (ROOT / "sft_magics").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                is_magic = any(
                    getattr(d, "id", getattr(d, "attr", "")) in ("line_magic", "cell_magic", "line_cell_magic")
                    for d in node.decorator_list
                )
                if only_magics and not is_magic:
                    continue
                length = node.end_lineno - node.lineno + 1
                doc = node.body[0] if node.body and isinstance(node.body[0], ast.Expr) else None
                if doc is not None and isinstance(getattr(doc, "value", None), ast.Constant):
                    length -= doc.end_lineno - doc.lineno + 1  # the docstring is the contract, not the code
                if length > limit:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length} lines")
    return out


def test_sizes_stay_within_the_bar():
    """No module over 450 lines, no magic method over 40, no function over 80."""
    big = [
        f"{p.relative_to(ROOT)} {n} lines"
        for p in (ROOT / "sft_magics").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    ]
    assert not big, f"modules over 450 lines: {big}"
    assert not _long_functions(40, only_magics=True), _long_functions(40, only_magics=True)
    assert not _long_functions(80), _long_functions(80)
