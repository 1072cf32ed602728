"""The layering of the package, checked from its source (docs/architecture.md states the rules).

- No import circles: lower layers never import upper ones, at module level, inside functions or
  under ``if TYPE_CHECKING:`` alike (a lazy import hides a circle, it does not remove it).
- Reading and output modules never import torch: validating inputs and reading finished outputs
  work on a machine without it, and a client that only reads stays light.
- Every error the CLI reports with exit status 2 is one the user can act on (``UserError``).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from virnuc_hpc.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "virnuc_hpc"


# --- import graph -----------------------------------------------------------------------------

def package_modules(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """Dotted name -> source file of every module under the package (a package is its __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its file.

    ``from X import y`` imports the submodule X.y when there is one, else X itself; relative
    imports are resolved against the module's package. Imports through strings (importlib) are
    not seen."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (each holds a circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """start -> ... -> start, fewest edges (breadth first); start lies in a component with a circle."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} lies on no cycle")


def test_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.sub.b\n"
                              "def g(): ...\n")
    modules = package_modules(pkg)
    graph = {n: imported_modules(n, p, modules) for n, p in modules.items()}
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.c"}, "pkg.c": {"pkg.sub.b"}}
    assert strongly_connected(graph) == [["pkg.c", "pkg.sub.b"]]
    assert shortest_cycle(graph, "pkg.c") == ["pkg.c", "pkg.sub.b", "pkg.c"]


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 20 and f"{PACKAGE}.runtime.worker" in graph  # the package was found
    circles = strongly_connected(graph)
    report = [f"{', '.join(c)}\n    e.g. {' -> '.join(shortest_cycle(graph, c[0]))}" for c in circles]
    assert not circles, "modules importing each other (module level, lazy or TYPE_CHECKING):\n" + "\n".join(report)


# The layers, lowest first (docs/architecture.md draws them). A module imports only from its own
# layer or lower ones; the top-level modules other than cli are the base everyone may use. ``testing``
# (helpers for tests and benchmarks) lies above them all: the pipeline never imports it.
LAYERS = ("base", "reads", "outputs", "encoders", "engines", "models", "runtime", "cli", "testing")


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "base"  # the package's __init__: __version__, and lookups by name on first use
    if parts[0] in LAYERS:
        return parts[0]
    assert len(parts) == 1, f"{module}: a subpackage outside the layers {LAYERS}"
    return "base"


def test_layers_are_known() -> None:
    assert {layer_of(m) for m in import_graph()} == set(LAYERS)
    assert layer_of(f"{PACKAGE}.reads.fasta") == "reads" and layer_of(f"{PACKAGE}.errors") == "base"


def test_imports_point_down() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = sorted(f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
                    for m, deps in import_graph().items() for d in deps
                    if rank[layer_of(d)] > rank[layer_of(m)])
    assert not upward, "imports pointing up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


# --- no torch where none is needed -------------------------------------------------------------

READING_AND_OUTPUT = ("outputs.store", "outputs.tables", "outputs.calls", "outputs.lock", "outputs.report", "merge",
                      *(f"reads.{m}" for m in ("reading", "fasta", "fastq", "bags", "samples", "validation",
                                               "frames", "chunking")))


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def external_imports(path: Path) -> set[str]:
    """The top-level names of everything a module imports anywhere in its file (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_reads_modules_import_no_dask() -> None:
    """Reading and validating inputs are pure: the runtime layer decides where they run (a cluster
    for ``virnuc-hpc validate`` is ``runtime.validate``'s)."""
    reads = {n: p for n, p in package_modules().items() if layer_of(n) == "reads"}
    assert f"{PACKAGE}.reads.validation" in reads
    found = {n: sorted(external_imports(p) & {"dask", "distributed", "dask_cuda"}) for n, p in reads.items()}
    assert not {n: m for n, m in found.items() if m}, found


def test_reading_and_output_modules_import_no_torch() -> None:
    imports = "; ".join(f"import {PACKAGE}.{m}" for m in READING_AND_OUTPUT)
    proc = run_python(f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"torch imported by one of {READING_AND_OUTPUT}: {proc.stdout}"


def test_open_features_needs_no_torch(reference: Path) -> None:
    code = (f"import sys; from {PACKAGE}.outputs.store import open_features\n"
            f"ds = open_features({str(reference)!r})\n"
            "assert ds.sizes['frame'] > 0, ds\n"
            "ds.isel(frame=slice(0, 3)).load()\n"
            "print('torch' in sys.modules)")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", "open_features imported torch"


# --- CLI errors --------------------------------------------------------------------------------

# Caught by the CLI and reported with exit status 2, yet not ours to derive from UserError:
NOT_OURS = {"ValidationError": "pydantic's, for settings RunConfig refuses",
            "OSError": "the system's, for files the user named",
            "Exception": "around `sbatch`: its refusal (partition, account, limits) is the user's to fix"}


def test_cli_exit_status_2_errors_are_user_errors() -> None:
    """Every exception class caught in cli.py by a handler that calls ``_fail`` (exit status 2)."""
    tree = ast.parse((ROOT / PACKAGE / "cli.py").read_text())
    origin = {}  # name -> module it is imported from in cli.py
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = f"{PACKAGE}.{node.module}" if node.level else node.module
            origin.update({alias.asname or alias.name: module for alias in node.names})
    caught = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None and any(
                isinstance(call, ast.Call) and getattr(call.func, "id", None) == "_fail"
                for call in ast.walk(node)):
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            caught.update(t.id for t in types)
    assert {"FastaError", "UserError"} <= caught, caught
    from virnuc_hpc.errors import SampleError  # caught as the UserError it is
    assert issubclass(SampleError, UserError)
    for name in sorted(caught - NOT_OURS.keys()):
        cls = getattr(importlib.import_module(origin[name]), name) if name in origin else getattr(builtins, name)
        assert issubclass(cls, UserError), f"cli.py exits 2 on {name}, which does not derive from UserError"


@pytest.mark.parametrize("module", ["errors", "reads.fasta", "reads.samples"])
def test_user_errors_import_nothing_heavy(module: str) -> None:
    """The CLI catches these without importing torch or Dask (errors.py says so)."""
    proc = run_python(f"import sys, {PACKAGE}.{module}; "
                      "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'distributed'}))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
