"""The shape of ``fxtrt/`` itself (issue 18): no import circles, no upward imports, no module
over 400 lines, no function over 60 lines.

Layers, bottom to top: settings, errors, sizes, compare (and the other small helpers at the
root) < frontend < passes < backend < artifacts < api, report, explain, debug, cli.

The import graph is read with ``ast`` from the source, every ``import`` counted: at the top, inside
a function (a lazy import is still a dependency) and under ``TYPE_CHECKING`` (a type the module
names is part of what it needs). Each test lists its offenders, so a failure says what to split.
Run as a script for the figures: ``python -m tests.test_structure``.
"""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "fxtrt"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# compile's keyword options and their documentation are the public API, not logic to split.
SIGNATURE_EXEMPT = {"fxtrt.api.compile"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.AST, here: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = here.split(".") if is_package else here.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # ``from pkg import name``: ``pkg.name`` when it is a module, else ``pkg``
        return [f"{prefix}.{a.name}" for a in node.names] + [prefix]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the fxtrt modules it imports (a package's import of its own submodule included)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, name, path.name == "__init__.py"):
                while target and target not in mods:  # fxtrt.a.b.func -> fxtrt.a.b
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("fxtrt"):
                    deps.add(target)
        graph[name] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
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
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def real_cycles() -> list[list[str]]:
    """Cycles, leaving out a package's ``__init__`` re-exporting its own submodules (that edge
    runs package -> submodule, and the submodule importing a sibling through the package is
    what makes it a circle: that case is kept)."""
    graph = import_graph()
    trimmed = {m: {d for d in deps if not _is_parent_package(m, d)} for m, deps in graph.items()}
    return import_cycles(trimmed)


BOTTOM = {"settings", "errors", "sizes", "compare", "graph", "torch_log", "termination"}
LAYERS = {"frontend": 1, "passes": 2, "backend": 3, "artifacts": 4}


def layer(module: str) -> int:
    """0 for the bottom helpers, then frontend 1, passes 2, backend 3, artifacts 4, the rest 5."""
    parts = module.split(".")
    if len(parts) == 1:
        return 5
    return 0 if parts[1] in BOTTOM else LAYERS.get(parts[1], 5)


def upward_imports() -> list[tuple[str, str]]:
    return sorted((m, d) for m, deps in import_graph().items() for d in deps if layer(d) > layer(m))


def long_modules() -> list[tuple[str, int]]:
    out = []
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            out.append((name, n))
    return sorted(out, key=lambda x: -x[1])


def long_functions() -> list[tuple[str, int]]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.lineno
                if f"{name}.{node.name}" in SIGNATURE_EXEMPT:  # its body only: the options are the API
                    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                    first = body[0].lineno
                n = node.end_lineno - first + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    out.append((f"{name}.{node.name}", n))
    return sorted(out, key=lambda x: -x[1])


def test_no_import_cycles() -> None:
    cycles = real_cycles()
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_upward_imports() -> None:
    offenders = upward_imports()
    assert not offenders, "imports of a higher layer:\n" + "\n".join(f"{m} -> {d}" for m, d in offenders)


def test_no_module_over_400_lines() -> None:
    offenders = long_modules()
    assert not offenders, "modules over 400 lines:\n" + "\n".join(f"{m}: {n}" for m, n in offenders)


def test_no_function_over_60_lines() -> None:
    offenders = long_functions()
    assert not offenders, "functions over 60 lines:\n" + "\n".join(f"{f}: {n}" for f, n in offenders)


def pass_name_comparisons() -> list[str]:
    """``x == "generalize_batch"`` and the like outside the registry: what a pass is, or needs,
    is declared on the pass (its contract), never inferred from its name."""
    from fxtrt.passes import REGISTRY

    names = set(REGISTRY)
    out = []
    for name, path in modules().items():
        if name == "fxtrt.passes":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                hits = [o.value for o in operands if isinstance(o, ast.Constant) and o.value in names]
                hits += [e.value for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                         for e in o.elts if isinstance(e, ast.Constant) and e.value in names]
                out += [f"{name}:{node.lineno} compares with {h!r}" for h in hits]
    return out


def test_no_comparison_with_a_pass_name_outside_the_registry() -> None:
    offenders = pass_name_comparisons()
    assert not offenders, "\n".join(offenders)


def test_the_match_rule_is_written_once() -> None:
    """``|a-b| <= atol + rtol*|ref|`` lives in ``fxtrt.compare``; any other ``atol + rtol *`` in code
    (docstrings aside) is a second copy."""
    out = []
    for name, path in modules().items():
        if name == "fxtrt.compare":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if any("rtol" in n for n in names):
                    out.append(f"{name}:{node.lineno}")
    assert not out, "the tolerance rule written again at: " + ", ".join(out)


if __name__ == "__main__":
    print("cycles:", *(" <-> ".join(c) for c in real_cycles()) or ["none"], sep="\n  ")
    print("upward imports:", *(f"{m} -> {d}" for m, d in upward_imports()) or ["none"], sep="\n  ")
    print("modules over 400 lines:", *(f"{m}: {n}" for m, n in long_modules()) or ["none"], sep="\n  ")
    print("functions over 60 lines:", *(f"{f}: {n}" for f, n in long_functions()) or ["none"], sep="\n  ")
