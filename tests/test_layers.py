"""The package's layers: every import (function-level ones included) runs one way, with no cycle,
and only Hydra-facing code handles Hydra's ``DictConfig``.

The layer table is ``LAYERS`` below and ``docs/reference.md``'s: a module may import modules of
its own layer or a lower one; a few arrows within a layer are forbidden outright.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parent.parent / "madcluster_exp"

#: Top-level unit (package or module of madcluster_exp) -> layer; higher imports lower.
LAYERS = {
    "errors": 0,
    "utils": 0,
    "config": 1,
    "data": 2,
    "metrics": 2,
    "backbones": 2,
    "madcluster": 2,
    "classical": 2,
    "plots": 2,
    "tracking": 2,
    "detector": 3,
    "training": 3,
    "scoring": 3,
    "evaluation": 3,
    "serving": 3,
    "pipeline": 4,
    "report": 4,
    "app": 5,
    "__main__": 5,
    "launchers": 5,
    "predict": 5,
    "evaluate": 5,
    "model": 5,
    "bench": 6,
}

#: Modules whose layer is not their package's: MLflow loads the pyfunc wrapper as an entry
#: point ("models from code"), importing the stable name saved models use (``model``).
MODULE_LAYERS = {"serving.pyfunc_model": 5}

#: Arrows forbidden even where the layers would allow them.
FORBIDDEN = {("pipeline", "report"), ("report", "pipeline"), ("pipeline", "launchers")}

#: The only modules that may name DictConfig: the entry, the config package, Hydra's callback
#: and the launcher plug-ins.
HYDRA_FACING = ("app.py", "__main__.py", "config/", "tracking/callbacks.py", "launchers/")


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module of the package a dotted name lives in (a module, or the package holding an
    imported attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> Set[str]:
    """Every module of the package ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(["madcluster_exp", *base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            names = [
                f"{stem}.{a.name}"
                if f"{stem}.{a.name}"[len("madcluster_exp.") :] in MODULES
                else stem
                for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == "madcluster_exp" or not name.startswith("madcluster_exp."):
                continue
            target = _resolve(name[len("madcluster_exp.") :])
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: imports(m) for m in MODULES if m}


def _layer(module: str) -> int:
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    return LAYERS[module.split(".")[0]]


def test_every_top_level_unit_has_a_layer():
    units = {m.split(".")[0] for m in MODULES if m}
    assert units - set(LAYERS) == set(), "give each new package a layer in LAYERS"


def test_imports_run_down_the_layers():
    wrong = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in GRAPH.items()
        for b in sorted(targets)
        if _layer(b) > _layer(a) or (a.split(".")[0], b.split(".")[0]) in FORBIDDEN
    ]
    assert wrong == []


def test_no_import_cycle_between_modules():
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack, on_stack, cycles = [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_package_top_level_holds_at_most_eight_files():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(files) <= 8, files


def test_only_hydra_facing_code_names_dictconfig():
    named = [
        rel
        for rel in (p.relative_to(PACKAGE).as_posix() for p in MODULES.values())
        if not rel.startswith(HYDRA_FACING) and "DictConfig" in (PACKAGE / rel).read_text()
    ]
    assert named == []


def test_function_level_imports_are_arrows_too():
    """app imports the pipeline inside ``run`` only (so ``--help`` stays fast): still an arrow;
    relative imports resolve to the module they name."""
    assert "pipeline.job" in imports("app")
    assert {"pipeline.plan", "pipeline.unit"} <= imports("pipeline.job")
