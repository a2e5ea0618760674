"""Measure the shape of the ``fprune`` package: the numbers the code-shape rules are about.

Run ``python tools/code_shape.py`` for a report; ``--check`` also exits 1 when a rule is
broken (CI runs it, and ``tests/test_code_shape.py`` asserts the same through
:func:`problems`):

* module line counts and the longest functions (a rule: at most ``MAX_FUNCTION_LINES``);
* import cycles among fprune's modules, counting imports inside functions too;
* imports of another module's underscored names (``from fprune.x import _y``, or
  ``x._y`` on an imported fprune module), except the accelerator (``fprune._eager``)
  reading the math modules it speeds up;
* modules without ``__all__``, and public-looking top-level names outside it;
* modules other than the one dispatch point that import the accelerator.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import sys

__all__ = ["MAX_FUNCTION_LINES", "Shape", "main", "measure"]

MAX_FUNCTION_LINES = 80
ACCELERATOR = "fprune._eager"
DISPATCH = "fprune.masking"  # the one module that imports the accelerator

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Shape:
    lines: dict[str, int]
    long_functions: list[tuple[int, str]]  # (lines, "module:line name"), longest first
    cycles: list[list[str]]
    underscore_imports: list[str]
    without_all: list[str]
    outside_all: list[str]
    accelerator_importers: list[str]


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.Module, modules: set[str], is_package: bool):
    """(imported fprune module, names taken from it) for every import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, alias.asname or alias.name, []
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, is_package)
            if source not in modules:
                continue
            names = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    yield sub, alias.asname or alias.name, []
                else:
                    names.append(alias.name)
            yield source, None, names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_parent(parent: str, child: str) -> bool:
    return child.startswith(parent + ".")


def measure(package: pathlib.Path = ROOT / "fprune") -> Shape:
    files = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    modules = set(files)
    lines, long_functions, underscore, without_all, outside_all, importers = {}, [], [], [], [], []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        text = path.read_text()
        tree = ast.parse(text)
        lines[module] = len(text.splitlines())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                long_functions.append((length, f"{module}:{node.lineno} {node.name}"))
        aliases: dict[str, str] = {}
        for source, alias, names in _imports(module, tree, modules, is_package):
            # a package's own submodules and a module's parent package are not edges of a cycle
            if (
                source != module
                and not _is_parent(module, source)
                and not _is_parent(source, module)
            ):
                graph[module].add(source)
            if alias is not None:
                aliases[alias] = source
            reader = module == ACCELERATOR or _is_parent(ACCELERATOR, module)
            for name in names:
                if name.startswith("_") and not name.startswith("__") and not reader:
                    underscore.append(f"{module}: from {source} import {name}")
            if (source == ACCELERATOR or _is_parent(ACCELERATOR, source)) and not (
                module in (DISPATCH, ACCELERATOR) or _is_parent(ACCELERATOR, module)
            ):
                importers.append(module)
        reader = module == ACCELERATOR or _is_parent(ACCELERATOR, module)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not reader
                and f"{aliases[node.value.id]}.{node.attr}" not in modules
            ):
                underscore.append(f"{module}: {node.value.id}.{node.attr}")
        declared = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                declared = set(ast.literal_eval(node.value))
        if declared is None:
            if path.name not in ("__main__.py",):
                without_all.append(module)
            continue
        for node in tree.body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if not name.startswith("_") and name not in declared:
                    outside_all.append(f"{module}.{name}")
    long_functions.sort(reverse=True)
    return Shape(
        lines,
        long_functions,
        _cycles(graph),
        sorted(set(underscore)),
        sorted(without_all),
        sorted(outside_all),
        sorted(set(importers)),
    )


def problems(shape: Shape) -> list[str]:
    """The rules ``shape`` breaks, one line each (none: an empty list)."""
    out = [
        f"function of {n} lines (at most {MAX_FUNCTION_LINES}): {name}"
        for n, name in shape.long_functions
        if n > MAX_FUNCTION_LINES
    ]
    out += [f"import cycle: {' <-> '.join(c)}" for c in shape.cycles]
    out += [f"underscored import: {item}" for item in shape.underscore_imports]
    out += [f"module without __all__: {m}" for m in shape.without_all]
    out += [f"public-looking name outside __all__: {n}" for n in shape.outside_all]
    out += [
        f"imports the accelerator (only {DISPATCH} may): {m}" for m in shape.accelerator_importers
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    shape = measure()
    print(f"{sum(shape.lines.values())} lines in {len(shape.lines)} modules; the largest:")
    for module, n in sorted(shape.lines.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {n:5d}  {module}")
    print(
        f"functions over {MAX_FUNCTION_LINES} lines: "
        f"{sum(1 for n, _ in shape.long_functions if n > MAX_FUNCTION_LINES)}; the longest:"
    )
    for n, name in shape.long_functions[:5]:
        print(f"  {n:5d}  {name}")
    print(
        f"import cycles: {len(shape.cycles)}", *(" <-> ".join(c) for c in shape.cycles), sep="\n  "
    )
    print(f"imports of another module's underscored names: {len(shape.underscore_imports)}")
    for item in shape.underscore_imports:
        print(f"  {item}")
    print(f"modules without __all__: {len(shape.without_all)}", *shape.without_all, sep="\n  ")
    print(
        f"public-looking names outside __all__: {len(shape.outside_all)}",
        *shape.outside_all,
        sep="\n  ",
    )
    print(
        f"modules importing the accelerator besides {DISPATCH}: {len(shape.accelerator_importers)}",
        *shape.accelerator_importers,
        sep="\n  ",
    )
    broken = problems(shape)
    if check and broken:
        print("\nbroken rules:", *broken, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
