"""The package's imports point one way and never form a cycle (checked on the source with ``ast``).

Layers, bottom to top (a module may import its own layer or lower ones):

    core  <-  layers, tokenizers  <-  preprocessors, decoders, encoders, data  <-  models
          <-  generation, converters, training  <-  cli (and the package facade ``perceivers/__init__``)

Every import counts, also one inside a function: a lazy import that hides a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perceivers"

LEVELS = {
    "core": 0,
    "layers": 1, "tokenizers": 1,
    "preprocessors": 2, "decoders": 2, "encoders": 2, "data": 2,
    "models": 3,
    "generation": 4, "converters": 4, "training": 4, "bench": 4,
    "cli": 5, "__init__": 5, "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (``from a import b`` counts ``a.b`` when
    ``b`` is a module, else ``a``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "perceivers")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "perceivers":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.add(full if full in known else source)
    return {m for m in found if m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {m for m in imports(name, path, known) if m in known} for name, path in mods.items()}


def level(module: str) -> int:
    parts = module.split(".")
    return LEVELS["__init__"] if len(parts) == 1 else LEVELS[parts[1]]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_top_level_part_has_a_layer():
    tops = {name.split(".")[1] for name in modules() if "." in name}
    assert tops <= set(LEVELS), f"add {sorted(tops - set(LEVELS))} to LEVELS in this test"


def test_imports_never_point_up():
    upward = [f"{a} (level {level(a)}) imports {b} (level {level(b)})"
              for a, targets in graph().items() for b in sorted(targets) if level(b) > level(a)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_names_imported_across_modules():
    mods = modules()
    private = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perceivers"):
                private += [f"{name} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_checker_sees_cycles_and_upward_imports():
    edges = {"perceivers.a": {"perceivers.b"}, "perceivers.b": {"perceivers.c"}, "perceivers.c": {"perceivers.a"},
             "perceivers.d": set()}
    assert cycles(edges) == [["perceivers.a", "perceivers.b", "perceivers.c"]]
    assert level("perceivers.models.hub") > level("perceivers.layers.attention")


def test_test_modules_never_import_each_other():
    """Tests share helpers through ``tests/testkit`` only: no test module imports another or ``conftest``."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(tests)} imports {n}" for n in names
                      if n.split(".")[-1].startswith("test_") or n.split(".")[0] == "conftest"]
    assert not found, "\n".join(found)
