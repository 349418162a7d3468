"""Quiet TensorFlow by default: the one place that configures its logging.

TensorFlow prints its start-up lines (``port.cc ... oneDNN custom operations are on``,
``cudart_stub.cc``, ``cpu_feature_guard.cc``, ``cuda_platform.cc ... failed call to
cuInit``, grappler's ``op_level_cost_estimator`` warnings, absl's ``All log messages
before absl::InitializeLog()``) from C++, and reads ``TF_CPP_MIN_LOG_LEVEL`` once, when
it is imported. So :func:`configure` must run before ``import tensorflow``.

Every ``python -m`` entry point of the project gets it without a line of its own: the
packages ``common``, ``msrrn_tf``, ``ccnn_tf`` and ``experiments`` call
:func:`configure_for_entry_point` from their ``__init__``, which acts only while Python
locates a ``-m`` module (``sys.argv[0] == "-m"``, as documented for ``-m``), i.e.
before the entry point's own imports run. Importing the packages from Python changes
nothing; a script that wants the same calls :func:`configure` itself.

To see everything, set ``FACE_ALIGN_VERBOSE=1`` or pass absl's ``--verbosity=1`` (``-v
1``) to any command; an explicit ``TF_CPP_MIN_LOG_LEVEL`` is always respected.

Quiet means ``TF_CPP_MIN_LOG_LEVEL=3`` (TensorFlow's C++ INFO, WARNING and ERROR
lines are hidden: ``failed call to cuInit`` on a machine without a GPU is such an
error; a real failure still raises a Python exception with its message), and, because
TensorFlow 2.21 writes its import-time lines through absl's C++ log before that
variable is read, ``import tensorflow`` runs with the process's stderr (file
descriptor 2) captured: the known start-up lines (:data:`STARTUP_NOISE`) are dropped
and everything else is written back once the import is done.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

VERBOSE_ENV = "FACE_ALIGN_VERBOSE"
"""Environment variable: ``1`` (or ``true``/``yes``) shows every TensorFlow message."""

QUIET_CHILDREN_ENV = "_FACE_ALIGN_QUIET_CHILDREN"
"""Set to ``1`` by :func:`configure`: a ``multiprocessing`` child (spawned, e.g.
``compare_real``'s peer fit) of a quiet process quiets itself when it imports the
packages (:func:`configure_for_entry_point`)."""

QUIET_TF_CPP_LEVEL = "3"
"""``TF_CPP_MIN_LOG_LEVEL`` of quiet mode (hides C++ INFO, WARNING and ERROR lines)."""

STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\]"  # any C++ INFO/WARNING line at import
    r"|E\d{4} [\d:.]+\s+\d+ (cuda_\w+|cudart_stub|gpu_\w+)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow)")
"""Lines of stderr dropped while ``import tensorflow`` runs in quiet mode."""

_TRUE = frozenset({"1", "true", "yes", "on"})


def _argv_verbosity(argv: Sequence[str]) -> int | None:
    """absl's ``--verbosity``/``-v`` value in ``argv`` (last one wins), or ``None``."""
    found = None
    args = list(argv)
    for i, arg in enumerate(args):
        value = None
        for name in ("--verbosity", "-v"):
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
        if value is not None:
            try:
                found = int(value)
            except ValueError:
                continue
    return found


def verbose_requested(argv: Sequence[str] | None = None,
                      environ: dict[str, str] | None = None) -> bool:
    """Whether the user asked to see everything.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        environ: the environment (default ``os.environ``).

    Returns:
        True for ``FACE_ALIGN_VERBOSE=1`` or ``--verbosity >= 1``.
    """
    environ = os.environ if environ is None else environ
    if environ.get(VERBOSE_ENV, "").strip().lower() in _TRUE:
        return True
    verbosity = _argv_verbosity(sys.argv[1:] if argv is None else argv)
    return verbosity is not None and verbosity >= 1


def configure(argv: Sequence[str] | None = None) -> bool:
    """Quiets TensorFlow's start-up and runtime noise, unless verbose was asked for.

    Call before TensorFlow is imported (afterwards only the Python loggers change).

    Args:
        argv: command-line arguments to look for ``--verbosity`` in (default
            ``sys.argv[1:]``).

    Returns:
        True when quiet mode was set up, False in verbose mode.
    """
    if verbose_requested(argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_LEVEL)
    os.environ[QUIET_CHILDREN_ENV] = "1"  # its multiprocessing children are quiet too
    # TensorFlow's Python-side logger (deprecation notices, retracing warnings).
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    return True


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = STARTUP_NOISE) -> Iterator[None]:
    """Captures file descriptor 2 (C++ and Python writes alike); on exit writes back
    every captured line that ``noise`` does not match.

    Args:
        noise: lines to drop.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded, pytest)
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace")
                    .splitlines(keepends=True) if not noise.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _Loader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` inside :func:`filtered_stderr`."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with a loader that filters its start-up lines."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def configure_for_entry_point() -> bool:
    """:func:`configure` while Python locates a ``python -m`` module, else nothing.

    Returns:
        True when quiet mode was set up now.
    """
    if sys.argv[:1] == ["-m"]:
        return configure(sys.argv[1:])
    if os.environ.get(QUIET_CHILDREN_ENV) == "1" and _in_spawned_child():
        return configure([])  # a multiprocessing child of a quiet entry point
    return False


def _in_spawned_child() -> bool:
    """Whether this process is a ``multiprocessing`` child being set up (spawn)."""
    import multiprocessing

    # While a spawned child unpickles its target (imports included), it is "inheriting";
    # parent_process() is set only afterwards.
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False)
                or multiprocessing.parent_process() is not None)
