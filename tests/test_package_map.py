"""The package map in docs/architecture.md is the law of imports: every `import` in
controller/cyberstar (at module level, inside functions or under TYPE_CHECKING) goes to a
package the map allows, and no module imports another that imports it back."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "controller" / "cyberstar"


def package_map() -> dict[str, set[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\| ([^|]*) \|$", section, re.M)
    return {unit: set(re.findall(r"`(\w+)`", allowed)) for unit, allowed in rows}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module → the cyberstar modules it imports (a `from pkg import name` that names a
    submodule counts as importing that submodule)."""
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        me = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cyberstar"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out[me].add(sub if sub in known else node.module)
            elif isinstance(node, ast.Import):
                out[me].update(a.name for a in node.names if a.name.startswith("cyberstar."))
    return out


def unit(module: str) -> str:
    return module.split(".")[1]


def test_the_map_lists_every_package() -> None:
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith("__") and u != "py.typed"}
    assert set(package_map()) == units


def test_imports_follow_the_map() -> None:
    allowed = package_map()
    wrong = sorted(
        f"{me} imports {target}"
        for me, targets in imports().items()
        if me != "cyberstar"
        for target in targets
        if unit(target) != unit(me) and unit(target) not in allowed[unit(me)]
    )
    assert not wrong, (
        "imports the package map (docs/architecture.md) does not allow:\n" + "\n".join(wrong)
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert not circles(imports()), "modules that import each other"


def test_circles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
