"""The layering newcomers rely on: the request path's modules form no import cycle (counting
imports made only for type checking), and none of them reaches back into the manager."""

from __future__ import annotations

import ast
from pathlib import Path

import sage_cp_plugin

ROOT = Path(sage_cp_plugin.__file__).parent
PKG = "sage_cp_plugin"


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = (PKG, *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of this package imported at module level, including `if TYPE_CHECKING:`."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    stmts: list[ast.stmt] = []
    for node in tree.body:
        stmts.extend(node.body if isinstance(node, ast.If) else [node])
    for node in stmts:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found.update(s for s in subs if s in modules)
            # `from pkg import name` of a non-module name runs (depends on) pkg/__init__.
            if node.module in modules and any(s not in modules for s in subs):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_of_the_package_takes_part_in_an_import_cycle() -> None:
    graph = _graph()
    assert "sage_cp_plugin.dispatch" in graph and "sage_cp_plugin.manager" in graph
    cycles = [c for m in sorted(graph) if (c := _cycle_from(graph, m)) is not None]
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles)


def test_request_path_parts_receive_narrow_parts_not_the_manager() -> None:
    graph = _graph()
    parts = [
        "admission",
        "attempts",
        "dispatch",
        "pools",
        "results",
        "strategies",
        "streaming",
        "embedding_parts",
        "status",
    ]
    for part in parts:
        deps = graph[f"{PKG}.{part}"]
        assert f"{PKG}.manager" not in deps, f"{part} imports the manager"
        assert f"{PKG}.config" not in deps, f"{part} imports the config"


def test_errors_are_reexported_from_the_package_root() -> None:
    from sage_cp_plugin import errors

    public = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    }
    assert public <= set(sage_cp_plugin.__all__)
    for name in public:
        assert getattr(sage_cp_plugin, name) is getattr(errors, name)
