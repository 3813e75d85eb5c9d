"""The package tree draws the architecture, and the imports keep to it.

Every module of hare (hare/, and flows/ and tasks/, installed as hare.flows and hare.tasks) is
parsed (ast, nothing imported) into a graph of which module imports which, lazy imports inside
functions included (they are imports all the same). Two rules hold:

1. no circle: no module imports itself through others;
2. nothing imports upward: each package sits in one layer of :data:`LAYERS` (bottom first),
   and a module imports only from its own layer or a lower one.

Imports under ``if TYPE_CHECKING:`` are left out: they name a type for the checker and are
never executed, so they make no dependency at run time (run.json's module names the config's
type that way, from the store layer below the config).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"hare": ROOT / "hare", "hare.flows": ROOT / "flows", "hare.tasks": ROOT / "tasks"}

# Bottom first. A module's layer is that of the longest prefix naming it.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["hare.clock", "hare.errors", "hare.paths", "hare.version", "hare.process_tree", "hare.progress"]),
    ("store and commit protocol", ["hare.store"]),
    ("inputs checked at load", ["hare.priors", "hare.sandbox", "hare.vllm_args"]),
    ("config", ["hare.config"]),
    ("stage libraries, engines", ["hare.stages", "hare.engines", "hare.backends"]),
    ("the DAG's steps", ["hare.tasks"]),
    ("run control", ["hare.run"]),
    ("flows", ["hare.flows"]),
    ("interfaces", ["hare.viewer", "hare.cli"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if package == "hare" and parts[:1] in (["flows"], ["tasks"]):
                continue
            found[".".join([package, *parts])] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The hare modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    out = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_of(module: str) -> int:
    best, layer = "", -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, index
    return layer


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a, targets in sorted(graph.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]


def test_every_module_has_a_layer() -> None:
    assert [m for m in import_graph() if layer_of(m) < 0 and m != "hare"] == []


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_nothing_imports_upward() -> None:
    assert upward(import_graph()) == []


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The rules can fail: a lazy import from the store up to the flows is both."""
    graph = import_graph()
    graph["hare.store.layout"] = {*graph["hare.store.layout"], "hare.flows.synthesize"}
    assert any("hare.store.layout" in c and "hare.flows.synthesize" in c for c in circles(graph))
    assert "hare.store.layout (store and commit protocol) imports hare.flows.synthesize (flows)" in upward(graph)
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hare.config import RunConfig\n"
                     "def f():\n    from hare.run import status\n    from . import objects\n")
    known = set(modules())
    assert imports_of("hare.store.probe", probe, known) == {"hare.run.status", "hare.store.objects"}


@pytest.mark.parametrize("public", ["hare.config", "hare.store", "hare.cli", "hare.flows.synthesize"])
def test_public_imports_stay(public: str) -> None:
    """What users import keeps its name: the config, the store's API, the CLI's entry point, the flows."""
    import importlib

    module = importlib.import_module(public)
    names = {"hare.config": ["RunConfig", "load_config", "ConfigError"],
             "hare.store": ["open_store", "ObjectStore", "LocalStore", "KeyNotFound", "StoreError"],
             "hare.cli": ["main"],
             "hare.flows.synthesize": ["synthesize", "rerun_failed", "run_synthesize", "run_rerun_failed",
                                       "RunIncomplete", "RunInterrupted"]}[public]
    assert [n for n in names if not hasattr(module, n)] == []


def test_every_package_is_installed() -> None:
    """pyproject lists every package folder (a wheel would leave an unlisted one out)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert found == listed
