"""The house is one-way: every import (lazy ones inside functions too) goes to the same or a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nbmagic"

# lower never imports higher; rooms in one layer may import each other, without a cycle
LAYERS: list[set[str]] = [
    {
        "errors",
        "config",
        "store_uri",
        "units",
        "k8s_names",
        "dag_svg",
        "arguments",
        "kube",
        "images",
        "packages",
        "theme",
    },
    {"runtime"},
    {"pipeline"},
    {"store"},
    {"compile"},
    {"run"},
    {"restore", "tune", "serve", "convert"},
    {"api"},
    {"magics", "cli", "tune_cli", "__init__", "__main__"},
]
LAYER = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _exists(name: str) -> bool:
    return _is_package(name) or (PACKAGE.parent / Path(*name.split("."))).with_suffix(".py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, nbmagic module) for every import statement in ``path``, wherever it stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "nbmagic"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nbmagic":
                continue
            subs = [f"{target}.{alias.name}" for alias in node.names if _exists(f"{target}.{alias.name}")]
            found += [(node.lineno, sub) for sub in subs] or [(node.lineno, target)]
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, int, str]]:
    return [(_module_name(p), line, target) for p in sorted(PACKAGE.rglob("*.py")) for line, target in imports(p)]


def test_every_room_has_a_layer():
    rooms = {room(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms - set(LAYER) == set(), "new room: give it a layer in LAYERS"


def test_no_import_from_a_higher_layer():
    upward = [
        f"{source}:{line} imports {target}"
        for source, line, target in _edges()
        if room(target) != room(source) and LAYER[room(target)] > LAYER[room(source)]
    ]
    assert upward == []


def test_no_cycle_between_rooms():
    graph: dict[str, set[str]] = {}
    for source, _, target in _edges():
        if room(source) != room(target):
            graph.setdefault(room(source), set()).add(room(target))
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]))
            elif len(trail) < len(LAYER):
                visit(nxt, trail + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_the_command_line_does_not_import_the_magics():
    assert [t for s, _, t in _edges() if s == "nbmagic.cli" and room(t) == "magics"] == []


def test_the_runtime_imports_no_other_nbmagic_module():
    assert [f"{s} imports {t}" for s, _, t in _edges() if room(s) == "runtime" and room(t) != "runtime"] == []


def _connection_calls() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if room(_module_name(path)) == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("_connection", "_db"):
                found.append(f"{_module_name(path)}:{node.lineno}")
    return found


def test_only_the_store_speaks_sql():
    assert _connection_calls() == []


def test_the_checker_sees_lazy_and_relative_imports():
    """The graph is read right: a lazy relative import inside a function counts."""
    edges = {(s, t) for s, _, t in _edges()}
    assert ("nbmagic.cli", "nbmagic.api") in edges  # `from .api import Pipeline` inside cmd_run
    assert ("nbmagic.pipeline.cells", "nbmagic.arguments") in edges  # `from .. import arguments`
    assert ("nbmagic.magics.state_magics", "nbmagic.api") in edges
