"""Imports point down: no module of customgrad reaches itself again through its imports.

Every import counts, wherever it stands (top of the file, inside a function, under TYPE_CHECKING), and
so does ``importlib.import_module`` with a literal name: a lazy import is still a dependency. Checked
twice: module by module, and with each subpackage (``fit``, ``check``, ...) taken as one part.
"""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "customgrad"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _absolute(name: str, level: int, module: str) -> str:
    if level == 0:
        return name
    base = _package_of(module).split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _known(name: str) -> str | None:
    """The module of this package that importing ``name`` runs last (its deepest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The modules of customgrad that ``module`` imports anywhere in its text."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module or "", node.level, module)
            for alias in node.names:  # ``from . import cache`` imports the module customgrad.cache
                found.add(_known(f"{source}.{alias.name}") if f"{source}.{alias.name}" in MODULES else _known(source))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            literal = node.args[0] if node.args and isinstance(node.args[0], ast.Constant) else None
            if literal is not None and isinstance(literal.value, str):
                name = literal.value
                level = len(name) - len(name.lstrip("."))
                found.add(_known(_absolute(name.lstrip("."), level, module) if level else name))
    found.discard(None)
    found.discard(module)
    return found


def _part(module: str) -> str:
    """The top-level module, or the subpackage (customgrad.fit, ...) that ``module`` lies in."""
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of ``graph`` (module -> what it imports), each module importing the next; None if none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return error.args[1][::-1]  # graphlib lists each node before the ones that depend on it
    return None


def test_the_scan_sees_lazy_and_importlib_imports():
    # What the checks below rely on: an import inside a function and one by importlib.import_module count.
    assert "customgrad.library" in _imports("customgrad")  # inside a function of __init__.py
    assert "customgrad.handwritten" in _imports("customgrad.library")
    assert "customgrad.codegen.runtime" in _imports("customgrad.codegen.torch")


@pytest.mark.parametrize("level", ["module", "part"])
def test_imports_form_no_circle(level):
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if level == "module":
            graph.setdefault(module, set()).update(_imports(module))
        else:
            edges = {_part(target) for target in _imports(module)} - {_part(module)}
            graph.setdefault(_part(module), set()).update(edges)
    assert _cycle(graph) is None, f"import circle ({level} level, -> = imports): {' -> '.join(_cycle(graph))}"
