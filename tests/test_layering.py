"""Imports go downward: the layer order of ../shared/DESIGN.md's layout, checked on the import graph.

The graph is built from the source with ``ast`` (nothing is imported, so the test takes well under a second):
every ``import`` and ``from ... import`` of the project's packages, at module level or inside a function (a
lazy import is still a dependency), relative imports resolved.

Layers, bottom to top (a package may import only from layers below it, never from one beside it):

0. ``envs`` (environments and what defines them: the ground floor) and ``cluster`` (how Ray is started;
   it imports nothing of gridrl and ``serve`` starts Ray through it);
1. ``offline_data`` (logs -> datasets, computed with envs/'s state spec and reward);
2. ``rllib_configs`` (training: YAML -> RLlib, the runner, policies of checkpoints, the forward model's
   trainer);
3. ``tune`` (sweeps of those configs);
4. ``serve`` (bundles and serving, after training);
5. ``scripts`` (the command line, on top of everything).

Besides, no two packages or sub-packages (``envs.dynamics``, ``envs.citylearn``...) import each other in a
cycle, and no two modules do, through any import: neither at module level (the imports that run when a
module is imported) nor inside a function (a lazy import hides a cycle from Python, not from the reader: the
two modules still need each other, so the shared piece belongs in the one that owns it).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("envs", "cluster"),
    ("offline_data",),
    ("rllib_configs",),
    ("tune",),
    ("serve",),
    ("scripts",),
)
PACKAGES = tuple(p for layer in LAYERS for p in layer)
LEVEL = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(root: Path = REPO) -> list[tuple[str, str, int, bool]]:
    """(importing module, imported project module, line, at module level) for every import in the tree."""
    modules = _modules(root)

    def resolve(name: str) -> str | None:  # the longest project module a dotted name starts with
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for mod, path in modules.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]

        def visit(node: ast.AST, top: bool, mod: str = mod, package: list[str] = package) -> None:
            for child in ast.iter_child_nodes(node):
                in_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parent = package[: len(package) - (child.level - 1)]
                        base = ".".join(parent + ([child.module] if child.module else []))
                    # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
                    names = [f"{base}.{a.name}" for a in child.names]
                for target in sorted({resolve(name) for name in names} - {None, mod}):
                    edges.append((mod, target, child.lineno, top))
                visit(child, top and not in_function)

        visit(ast.parse(path.read_text(), filename=str(path)), True)
    return edges


def upward_imports(root: Path = REPO) -> list[str]:
    """Every import of a package from its own layer or a layer above it, as 'file:line: a -> b'."""
    bad = []
    for src, dst, line, _ in import_graph(root):
        a, b = src.split(".")[0], dst.split(".")[0]
        if a != b and LEVEL[a] <= LEVEL[b]:
            where = "above" if LEVEL[a] < LEVEL[b] else "beside"
            bad.append(f"{src.replace('.', '/')}.py:{line}: {src} imports {dst} ({b} is {where} {a})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def _package_of(module: str, root: Path) -> str:
    """The (sub-)package of a module: ``envs.dynamics`` for envs/dynamics/*.py, ``envs`` for envs/*.py."""
    parts = module.split(".")
    if (root.joinpath(*parts) / "__init__.py").is_file():
        return module
    return ".".join(parts[:-1]) or module


def package_cycles(root: Path = REPO) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _, _ in import_graph(root):
        a, b = _package_of(src, root), _package_of(dst, root)
        if a != b:
            graph[a].add(b)
    return cycles(graph)


def module_level_cycles(root: Path = REPO) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _, top in import_graph(root):
        if top:
            graph[src].add(dst)
    return cycles(graph)


def module_cycles(root: Path = REPO) -> list[list[str]]:
    """Cycles of modules through any import, lazy (inside a function) or not."""
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _, _ in import_graph(root):
        graph[src].add(dst)
    return cycles(graph)


def test_every_package_is_in_a_layer():
    found = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert found == set(PACKAGES), f"packages without a layer: {sorted(found - set(PACKAGES))}"


def test_imports_go_downward():
    edges = import_graph()
    assert len(edges) > 300, "the graph is missing imports"  # ~600 at the time of writing
    bad = upward_imports()
    assert not bad, "imports that go up (or sideways) a layer:\n" + "\n".join(bad)


def test_no_package_cycles():
    assert not package_cycles(), f"packages that import each other: {package_cycles()}"


def test_no_module_level_cycles():
    assert not module_level_cycles(), f"modules importing each other at import time: {module_level_cycles()}"


def test_no_module_cycles_through_lazy_imports():
    found = module_cycles()
    where = [
        f"{src} -> {dst} (line {line}{'' if top else ', in a function'})"
        for src, dst, line, top in import_graph()
        if any(src in c and dst in c for c in found)
    ]
    assert not found, f"modules importing each other (lazily too): {found}\n" + "\n".join(where)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for pkg in PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The checker itself: a planted upward import, a sideways one and cycles are found, file and line."""
    root = _tree(
        tmp_path,
        {
            "envs/sub/__init__.py": "",
            "envs/sub/a.py": "import os\n\ndef f():\n    from scripts.cli import main\n",  # lazy, still up
            "envs/b.py": "from .sub import a\n",
            "envs/sub/c.py": "from envs import b\n",  # envs <-> envs.sub
            "cluster/x.py": "from envs import b\n",  # beside
            "rllib_configs/m.py": "from rllib_configs import n\n",
            "rllib_configs/n.py": "import rllib_configs.m\n",  # module-level cycle m <-> n
            "scripts/cli.py": "from envs.sub.a import f\nfrom serve import nothing_here\n",  # both down: fine
            "tune/p.py": "from tune import q\n",
            "tune/q.py": "def f():\n    from tune.p import g\n",  # lazy cycle p <-> q
        },
    )
    bad = upward_imports(root)
    assert len(bad) == 2, bad
    assert bad[0].startswith("cluster/x.py:1: cluster.x imports envs.b (envs is beside cluster)"), bad
    assert bad[1].startswith("envs/sub/a.py:4: envs.sub.a imports scripts.cli (scripts is above envs)"), bad
    assert package_cycles(root) == [["envs", "envs.sub", "scripts"]]  # scripts.cli <-> envs.sub.a too
    assert module_level_cycles(root) == [["rllib_configs.m", "rllib_configs.n"]]  # not tune's: q's is lazy
    assert module_cycles(root) == [["envs.sub.a", "scripts.cli"], ["rllib_configs.m", "rllib_configs.n"],
                                   ["tune.p", "tune.q"]]  # fmt: skip
