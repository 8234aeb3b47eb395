"""Imports run one way: no cycle among device/'s modules, and training/ never imports convert/.

The imports are read from the source with ``ast``, every one of them: at the top, inside functions, and
under ``if TYPE_CHECKING:``, so a late import or a type-only import does not hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> dict[str, Path]:
    """Dotted name -> file for every module of a top-level package (``device``, ``training``...)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in ``source``, wherever it stands; ``from a import b`` gives
    ``a.b`` (a module or a name in ``a``; the caller keeps what it knows)."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .a import b
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.append((base, node.lineno))
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself left out)."""
    mods = modules(package)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {target for target, _ in imported(path.read_text(), name, path.name == "__init__.py")}
        edges[name] = {t for t in targets if t in mods and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """For each group of modules that import each other (Tarjan's components): the group, and one cycle
    (a -> ... -> a) in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    found = []
    for component in components:  # the shortest way from the first member back to itself, inside the group
        start, members = component[0], set(component)
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for nxt in sorted(edges[node] & members):
                if nxt == start:
                    found.append((component, paths[node] + [start]))
                    queue = []
                    break
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    queue.append(nxt)
    return found


def test_the_reader_sees_late_and_type_only_imports():
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "from device import csvlog, outpaths\n"
              "if TYPE_CHECKING:\n    from device.pipeline import Stats\n"
              "def f():\n    from device.mqtt import MqttSink\n    import device.web\n"
              "from . import sinks\n")
    names = dict(imported(source, "device.results"))
    assert {"device.csvlog", "device.outpaths", "device.pipeline", "device.mqtt", "device.web",
            "device.sinks"} <= set(names)
    assert names["device.pipeline"] == 5 and names["device.mqtt"] == 7


def test_a_cycle_is_found_and_spelled_out():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(edges) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["device", "training", "convert"])
def test_imports_run_one_way(package):
    edges = graph(package)
    found = cycles(edges)
    assert not found, f"import cycles in {package}/:\n" + "\n".join(
        f"{', '.join(group)} import each other, e.g. {' -> '.join(cycle)}" for group, cycle in found)


def test_the_graph_holds_the_imports():
    edges = graph("device")
    assert {"device.frames", "device.csvlog", "device.sinks"} <= edges["device.pipeline"]
    assert edges["device.frames"] == set() and "device.config" in edges["device.sinks"]


def test_nothing_below_the_composition_root_imports_it():
    edges = graph("device")
    above = {"device.__main__", "device.cli", "device.bench", "device.soak"}  # the commands that run a pipeline
    users = sorted(name for name, targets in edges.items() if "device.pipeline" in targets)
    assert set(users) <= above, f"modules below the pipeline import it: {sorted(set(users) - above)}"


def test_training_never_imports_convert():
    found = [f"{path.relative_to(ROOT)}:{line}: {name}" for module, path in modules("training").items()
             for name, line in imported(path.read_text(), module, path.name == "__init__.py")
             if name == "convert" or name.startswith("convert.")]
    assert not found, "training/ imports convert/ (convert builds on training, not the other way):\n" + "\n".join(found)
