"""The one model-path resolver of every CLI and the Python API (both models).

:func:`resolve_model_path` turns what a user passes as ``--model`` (or to
``Predictor.from_export``) into one concrete model file or folder::

    RUN_DIR/                          a training run: its export, else model.keras,
                                      else its latest checkpoint (kind "keras")
    RUN_DIR/export/ = EXPORT/         the export layout (docs/LAYOUT):
      saved_model/<version>/            the SavedModel (highest version wins)
      *.tflite, export_report.json
    EXPORT/saved_model/               the versioned base, or (old CCNN layout) the
                                      SavedModel itself
    RUN_DIR/export/saved_model.pb     old MSRRN layout: the export is the SavedModel
    any SavedModel folder, a .keras file, a .tflite file

A folder is a SavedModel when it holds ``saved_model.pb``. :func:`run_config` reads
the model config of a run (``config.json``, else CCNN's ``run.json``, else the last
``stage<k>/config.json``), e.g. for the crop margin of a Keras model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from common.config import flatten_config_values

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_DIR = "saved_model"
EXPORT_DIR = "export"
EXPORT_REPORT = "export_report.json"
KERAS_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints"
RUN_FILES = ("config.json", "run.json")

KIND_SAVED_MODEL = "saved_model"
KIND_KERAS = "keras"
KIND_TFLITE = "tflite"

_PREFERRED_TFLITE = ("model_float32.tflite", "model.tflite")
_STAGE_DIR = re.compile(r"^stage(\d+)$")


class ModelPathError(FileNotFoundError):
    """Nothing loadable at a model path; the message lists every place looked at."""


@dataclasses.dataclass(frozen=True)
class ModelPath:
    """A resolved model path.

    Attributes:
        kind: ``"saved_model"``, ``"keras"`` or ``"tflite"``.
        path: the SavedModel folder, the ``.keras`` file or the ``.tflite`` file
            (for a run with only checkpoints: the run directory, kind ``"keras"``,
            which ``common.evaluation.load_model`` restores).
        run_dir: the training run folder when the path lies in one, else ``None``.
        export_dir: the export folder when there is one, else ``None``.
    """

    kind: str
    path: str
    run_dir: str | None = None
    export_dir: str | None = None


def _is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def _is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        any(os.path.isfile(os.path.join(path, name)) for name in RUN_FILES)
        or os.path.isdir(os.path.join(path, CHECKPOINT_DIR)))


def _versions(path: str) -> list[str]:
    """SavedModel version folders (``<int>/saved_model.pb``) of ``path``, highest first."""
    if not os.path.isdir(path):
        return []
    found = [name for name in os.listdir(path) if name.isdigit()
             and _is_saved_model(os.path.join(path, name))]
    return [os.path.join(path, name) for name in sorted(found, key=int, reverse=True)]


def _tflite_files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    names = sorted(n for n in os.listdir(path) if n.endswith(".tflite") and not n.startswith("."))
    names.sort(key=lambda n: (n not in _PREFERRED_TFLITE, n))
    return [os.path.join(path, n) for n in names]


def _enclosing_run(path: str) -> str | None:
    """The run folder ``path`` lies in (itself, or up to three levels up), or None."""
    current = os.path.abspath(path)
    for _ in range(4):
        if _is_run_dir(current) and os.path.basename(current) not in (
                EXPORT_DIR, SAVED_MODEL_DIR):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return None


def _export_of(saved_model: str) -> str | None:
    """The export folder of a SavedModel folder (any of the three layouts), or None."""
    parent = os.path.dirname(saved_model)
    if os.path.basename(saved_model).isdigit() and os.path.basename(parent) == SAVED_MODEL_DIR:
        return os.path.dirname(parent)  # EXPORT/saved_model/<version>
    if os.path.basename(saved_model) == SAVED_MODEL_DIR:
        return parent  # old CCNN: EXPORT/saved_model
    if os.path.basename(saved_model) == EXPORT_DIR or os.path.isfile(
            os.path.join(saved_model, EXPORT_REPORT)):
        return saved_model  # old MSRRN: RUN_DIR/export
    return None


def find_saved_model(path: str, looked: list[str] | None = None) -> str | None:
    """The SavedModel of an export-like folder (any layout), or None.

    Args:
        path: an export folder, ``EXPORT/saved_model`` or a SavedModel folder.
        looked: where to append the places it tried (for error messages).
    """
    looked = [] if looked is None else looked
    if _is_saved_model(path):
        return path
    looked.append(os.path.join(path, SAVED_MODEL_FILE))
    versions = _versions(path)
    if versions:
        return versions[0]
    looked.append(os.path.join(path, "<version>", SAVED_MODEL_FILE))
    base = os.path.join(path, SAVED_MODEL_DIR)
    versions = _versions(base)
    if versions:
        return versions[0]
    looked.append(os.path.join(base, "<version>", SAVED_MODEL_FILE))
    if _is_saved_model(base):
        return base
    looked.append(os.path.join(base, SAVED_MODEL_FILE))
    return None


def resolve_model_path(path: str | os.PathLike) -> ModelPath:
    """Finds the model a user means by ``path`` (see the module docstring).

    Args:
        path: a run directory, its ``export/``, ``EXPORT/saved_model``,
            ``EXPORT/saved_model/<version>``, any SavedModel folder, a ``.keras``
            file or a ``.tflite`` file (new and old layouts of both models).

    Returns:
        The :class:`ModelPath` (absolute paths).

    Raises:
        ModelPathError: nothing loadable; the message lists every place looked at.
    """
    given = os.fspath(path)
    path = os.path.abspath(os.path.expanduser(given))
    looked: list[str] = []
    if os.path.isfile(path):
        name = os.path.basename(path)
        directory = os.path.dirname(path)
        if name.endswith(".keras"):
            return ModelPath(KIND_KERAS, path, _enclosing_run(directory), None)
        if name.endswith(".tflite"):
            export = directory if (os.path.isdir(os.path.join(directory, SAVED_MODEL_DIR))
                                   or os.path.isfile(os.path.join(directory, EXPORT_REPORT))
                                   ) else None
            return ModelPath(KIND_TFLITE, path, _enclosing_run(directory), export)
        if name == SAVED_MODEL_FILE:
            return resolve_model_path(directory)
        raise ModelPathError(f"{given!r} is a file but not a model (expected a .keras or "
                             ".tflite file, or a folder)")
    if not os.path.isdir(path):
        raise ModelPathError(f"no model at {given!r}: the path does not exist")

    run_dir = path if _is_run_dir(path) and not _is_saved_model(path) else None
    export_candidate = os.path.join(path, EXPORT_DIR) if run_dir else path
    saved = find_saved_model(export_candidate, looked)
    if saved is not None:
        export = _export_of(saved)
        return ModelPath(KIND_SAVED_MODEL, saved, run_dir or _enclosing_run(saved), export)
    if run_dir:
        keras_file = os.path.join(path, KERAS_FILE)
        if os.path.isfile(keras_file):
            return ModelPath(KIND_KERAS, keras_file, run_dir, None)
        looked.append(keras_file)
        checkpoints = os.path.join(path, CHECKPOINT_DIR)
        if os.path.isfile(os.path.join(checkpoints, "checkpoint")):
            return ModelPath(KIND_KERAS, path, run_dir, None)
        looked.append(os.path.join(checkpoints, "checkpoint"))
    for folder in ([export_candidate, path] if run_dir else [path]):
        tflite = _tflite_files(folder)
        if tflite:
            return ModelPath(KIND_TFLITE, tflite[0], run_dir or _enclosing_run(folder),
                             folder if folder != path or not run_dir else None)
        looked.append(os.path.join(folder, "*.tflite"))
    keras_files = sorted(n for n in os.listdir(path) if n.endswith(".keras"))
    if keras_files:
        return ModelPath(KIND_KERAS, os.path.join(path, keras_files[0]), _enclosing_run(path),
                         None)
    looked.append(os.path.join(path, "*.keras"))
    seen: list[str] = []
    for item in looked:
        if item not in seen:
            seen.append(item)
    raise ModelPathError(f"no model found at {given!r}; looked for:\n  " + "\n  ".join(seen))


def run_config(run_dir: str | None) -> dict[str, Any]:
    """The model config values of a training run, or ``{}``.

    Reads ``config.json`` (``{"config": {"values": {...}}}`` or flat), else
    ``run.json`` (CCNN's cascade: ``{"config": {...}}``), else the config of the
    last ``stage<k>/`` folder; values nested in groups (``model``/``train``/``augment``,
    ``common.config``) or in a runner config (CCNN stages: ``values.ccnn``) are
    lifted to the top (``common.config.flatten_config_values``).

    Args:
        run_dir: the run folder (``None``: ``{}``).

    Returns:
        ``{name: value}`` (e.g. ``margin``, ``input_size`` or ``scales``).

    Raises:
        ValueError: a config file is not valid JSON (naming the file).
    """
    if not run_dir or not os.path.isdir(run_dir):
        return {}
    candidates = [os.path.join(run_dir, name) for name in RUN_FILES]
    stages = sorted((int(m.group(1)), name) for name in os.listdir(run_dir)
                    if (m := _STAGE_DIR.match(name)))
    candidates += [os.path.join(run_dir, name, RUN_FILES[0]) for _, name in reversed(stages)]
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        try:
            with open(candidate) as f:
                record = json.load(f)
        except ValueError as error:
            raise ValueError(f"{candidate}: not valid JSON ({error})") from None
        config = record.get("config", record) if isinstance(record, Mapping) else None
        if isinstance(config, Mapping):
            values = config.get("values", config)
            if isinstance(values, Mapping):
                return flatten_config_values(values)
    return {}
