"""Measure the code's structure: longest functions, import circles, function-local imports.

Prints one JSON object. Issue 33 reports these numbers before and after a restructuring:

    python benchmarks/structure.py [--top 10]

- ``longest``: the longest functions (lines, including decorators and docstring).
- ``circles``: strongly connected groups of selfsup modules in the graph of module-level
  imports (an import inside a function does not count; it is how circles are hidden).
- ``local_imports``: imports of selfsup modules inside function bodies.
- ``circles_with_local_imports``: the circles of the graph with those imports added (what they hide).
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "selfsup"


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module at `path` in the package folder `root`."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The selfsup modules one import statement loads (``from a import b`` loads a.b if it is a module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "selfsup"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "selfsup":
        return set()
    # `from package import module` loads the module (the package's __init__ runs before any of its
    # modules, so it is no edge of its own); `from module import name` loads the module.
    submodules = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known}
    names_from_source = len(submodules) < len(node.names)
    return submodules | ({source} if names_from_source else set())


def top_level_imports(tree: ast.Module):
    """Import statements run when the module loads: top level, and inside top-level if/try blocks,
    skipping ``if TYPE_CHECKING:`` blocks, which never run."""
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                pending.extend(node.orelse)
            else:
                pending.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                pending.extend(handler.body)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def measure(root: Path = ROOT, top: int = 10) -> dict:
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    graph: dict[str, set[str]] = {}
    graph_with_local: dict[str, set[str]] = {}
    functions: list[tuple[int, str]] = []
    local_imports = 0
    for f in files:
        mod = module_name(f, root)
        is_package = f.name == "__init__.py"
        tree = ast.parse(f.read_text())
        edges = set()
        for node in top_level_imports(tree):
            edges |= imported_modules(node, mod, is_package, known)
        # a module imports its parent packages too; those edges are implied, not written
        graph[mod] = {e for e in edges if e in known and e != mod}
        graph_with_local[mod] = set(graph[mod])
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                functions.append((node.end_lineno - start + 1, f"{mod}.{node.name}"))
                for inner in ast.walk(node):
                    local = imported_modules(inner, mod, is_package, known) if inner is not node else set()
                    if local:
                        local_imports += 1
                        graph_with_local[mod] |= {e for e in local if e in known and e != mod}
    functions.sort(reverse=True)
    return {
        "modules": len(files),
        "longest": [{"function": name, "lines": n} for n, name in functions[:top]],
        "circles": strongly_connected(graph),
        "local_imports": local_imports,
        # the circles the function-local imports hide: the same graph with their edges added
        "circles_with_local_imports": strongly_connected(graph_with_local),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    args = p.parse_args()
    print(json.dumps(measure(top=args.top), indent=1))


if __name__ == "__main__":
    main()
