"""The packages' import graph: every module imports on its own, one direction only.

``experiments -> msrrn_tf / ccnn_tf -> common``, nothing pointing up, and no circle
among the modules of ``common``, ``msrrn_tf`` and ``ccnn_tf`` (late imports inside
functions included: they close circles just the same).
"""

import ast
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("common", "msrrn_tf", "ccnn_tf")
MODEL_PACKAGES = ("msrrn_tf", "ccnn_tf")
ALL_PACKAGES = (*LIBRARY_PACKAGES, "experiments")


def modules(packages=ALL_PACKAGES) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of the packages (``__init__`` as the package)."""
    found = {}
    for package in packages:
        for path in sorted((REPO_ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere (top level or inside functions)."""
    module = path.stem if path.stem != "__init__" else ""
    package = path.parent.name
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                base = ".".join(filter(None, [package, base]))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        for name in names:
            # "from ccnn_tf import training" names a module; "from x.y import f" its module.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != f"{package}.{module}".rstrip("."):
                targets.add(name)
    return targets


def import_graph(packages=LIBRARY_PACKAGES) -> dict[str, set[str]]:
    found = modules(packages)
    known = set(found)
    return {name: imported_modules(path, known) for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_the_graph_reader_sees_late_imports_and_circles(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    # ccnn_tf.training's late import of ccnn_tf.evaluate is an edge.
    assert "ccnn_tf.evaluate" in import_graph()["ccnn_tf.training"]


def test_no_import_circle_among_the_library_modules():
    assert circles(import_graph()) == []


def test_common_imports_no_model_package_and_models_no_experiments():
    graph = import_graph()
    upward = {name: sorted(t for t in targets if t.split(".")[0] in MODEL_PACKAGES)
              for name, targets in graph.items() if name.split(".")[0] == "common"}
    assert {k: v for k, v in upward.items() if v} == {}
    # Nor by name (importlib on a list of module names).
    named = {}
    for name, path in modules(("common",)).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"(msrrn_tf|ccnn_tf)(\.\w+)*", node.value)):
                named.setdefault(name, []).append(node.value)
    assert named == {}
    for name, targets in import_graph(ALL_PACKAGES).items():
        if name.split(".")[0] in LIBRARY_PACKAGES:
            assert not [t for t in targets if t.startswith("experiments")], name


def _import_alone(module: str) -> tuple[str, int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=str(REPO_ROOT),
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    return module, done.returncode, done.stderr[-1500:]


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_process():
    names = sorted(modules())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failed = {m: err for m, rc, err in pool.map(_import_alone, names) if rc != 0}
    assert len(names) > 40 and failed == {}
