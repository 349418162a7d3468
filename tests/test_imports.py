"""The packages' import graph: every module imports on its own, one direction only.

``experiments -> msrrn_tf / ccnn_tf -> common``, nothing pointing up, and no circle
among the modules of ``common``, ``msrrn_tf`` and ``ccnn_tf`` (late imports inside
functions included: they close circles just the same).
"""

import ast
import json
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
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    skipped = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING"):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere (top level or inside functions)."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    package = ".".join(parts[:-1])
    module = "" if parts[-1] == "__init__" else parts[-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


_IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
import numpy, tensorflow, keras  # third-party: loaded once, they never import ours
from absl import flags
ours = sys.argv[1].split(",")
packages = ("common", "msrrn_tf", "ccnn_tf", "experiments")
failed = {}
for module in ours:
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        del sys.modules[name]
    defined = [f.name for m, fs in flags.FLAGS.flags_by_module_dict().items()
               if m.split(".")[0] in packages for f in fs]
    flags.FLAGS.remove_flag_values(set(defined))  # entry points define flags on import
    try:
        importlib.import_module(module)
    except BaseException:
        failed[module] = traceback.format_exc()[-1500:]
print(json.dumps(failed))
"""


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_process():
    """Each module of ours imported first, with none of our modules loaded before it.

    One fresh process imports the third-party libraries once, then, for every module,
    drops all of our modules from ``sys.modules`` and imports that one alone: what
    ``python -m MODULE`` does for our code (an import circle among our modules shows
    as an ImportError whichever module comes first), at a fraction of the cost of one
    process per module.
    """
    names = sorted(modules())
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, ",".join(names)],
                          cwd=str(REPO_ROOT), env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(names) > 40 and failed == {}
