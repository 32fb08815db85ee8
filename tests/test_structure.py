"""The package's structure: imports only one way (no cycle, also through imports inside
functions), no module takes another's private names, no file over 400 lines, no
`locals()` interface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoqnn"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, current: str, level: int) -> str:
    if level:
        base = current.split(".")
        if not MODULES[current].name == "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (level - 1)]
        module = ".".join(base + ([module] if module else []))
    return module


def _imports(name: str):
    """`(imported module, imported names, line)` of every autoqnn import in a module,
    at any depth (function-local ones included)."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "autoqnn":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module or "", name, node.level)
            if module.split(".")[0] == "autoqnn":
                yield module, [a.name for a in node.names], node.lineno


def _graph() -> dict:
    graph = {name: set() for name in MODULES}
    for name in MODULES:
        for module, names, _ in _imports(name):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if len(targets) < len(names) or not names:
                targets.append(module)
            graph[name] |= {t for t in targets if t in MODULES and t != name}
    return graph


def _cycles(graph) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def _is_package_init(module: str) -> bool:
    return module in MODULES and MODULES[module].name == "__init__.py"


def test_no_import_cycle():
    graph = _graph()
    # A package's __init__ importing its own modules is how a package exposes them; the
    # cycle that matters runs between modules.
    for name in graph:
        if _is_package_init(name):
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert _cycles(graph) == []


def test_the_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_taken_from_another_module():
    taken = []
    for name in MODULES:
        for module, names, line in _imports(name):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")
                       and f"{module}.{n}" not in MODULES]
            if private and module != name:
                taken.append(f"{name}:{line} takes {private} from {module}")
    assert taken == []


def test_no_module_attribute_private_access():
    """`module._name` on an imported autoqnn module is the same shortcut."""
    taken = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = _resolve(node.module or "", name, node.level)
                modules |= {a.asname or a.name for a in node.names
                            if f"{module}.{a.name}" in MODULES}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in modules and node.attr.startswith("_") and \
                    not node.attr.startswith("__"):
                taken.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert taken == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_length(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines"


def test_no_locals_interface():
    calls = [f"{name}:{node.lineno}" for name, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("locals", "vars") and not node.args]
    assert calls == []


def test_no_callable_module():
    """No module swaps its class to become callable (`autoqnn.search` is a function)."""
    swapped = [name for name, path in MODULES.items() if "__class__ =" in path.read_text()]
    assert swapped == []
