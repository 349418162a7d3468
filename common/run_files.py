"""Run-directory file helpers, for local paths and ``gs://`` alike (``tf.io.gfile``).

Atomic writes of a text file (:func:`atomic_write_text`) and of a Keras model
(:func:`save_model_atomically`), and the JSON form of a config
(:func:`resolve_config`) that the runner writes as ``config.json``.
``common.training`` re-exports them. (``common.atomic`` holds the local-file twins.)
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    Readers never see a half-written file: on a local file system the rename is
    atomic; on object stores (GCS) the object appears only once fully written.

    Args:
        path: destination file.
        text: content.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def save_model_atomically(model: keras.Model, path: str) -> str:
    """Saves ``model`` in Keras format to ``path`` (``*.keras``) via a temporary file.

    Args:
        model: the model.
        path: destination, ending in ``.keras``.

    Returns:
        ``path``.
    """
    if not path.endswith(".keras"):
        raise ValueError(f"Keras model path must end with .keras, got {path!r}")
    tmp = f"{path[:-len('.keras')]}.tmp-{uuid.uuid4().hex}.keras"
    try:
        model.save(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
    return path


def _to_jsonable(value: Any) -> Any:
    """Turns dataclasses, tuples, numpy values, enums and paths into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, enum.Enum):
        return _to_jsonable(value.value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def resolve_config(config: Any) -> dict[str, Any]:
    """Returns ``config`` (dataclass, mapping or ``None``) as a JSON-ready dict.

    Args:
        config: the model/training config object.

    Returns:
        ``{"class": "module.Name" or None, "values": {...}}``.
    """
    if config is None:
        return {"class": None, "values": {}}
    cls = type(config)
    name = None if isinstance(config, Mapping) else f"{cls.__module__}.{cls.__qualname__}"
    return {"class": name, "values": _to_jsonable(config)}


RUN_CONFIG_FILE = "config.json"
"""The file of a run folder recording its resolved config and training data (both
models: ``{"config": resolve_config(config), "data": DataSpec.to_dict(), ...}``)."""

LEGACY_RUN_FILE = "run.json"
"""What CCNN cascade runs wrote before :data:`RUN_CONFIG_FILE` (still read):
``{"config": {flat CCNNConfig fields}, "data": spec, "data_spec": {...}}``."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The config and data a training run recorded (:func:`read_run_record`).

    Attributes:
        path: the file read.
        config_class: ``"module.Name"`` of the config, or ``None`` (a mapping, or a
            legacy file that does not say).
        values: the config values as stored (grouped or flat; ``from_dict`` of the
            config class reads either).
        data: the ``--data`` spec the run trained on, or ``None``.
        record: the whole file.
    """

    path: str
    config_class: str | None
    values: dict[str, Any]
    data: str | None
    record: dict[str, Any]


def _read_json_file(path: str) -> Any:
    import json

    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None


def read_run_record(run_dir: str, *, legacy: bool = True) -> RunRecord | None:
    """Reads ``run_dir/config.json`` (else, with ``legacy``, ``run_dir/run.json``).

    Args:
        run_dir: a run folder.
        legacy: also read the ``run.json`` of older CCNN runs.

    Returns:
        The record, or ``None`` when the folder has neither file.

    Raises:
        ValueError: a file that is not valid JSON or not a JSON object (naming it).
    """
    names = (RUN_CONFIG_FILE, LEGACY_RUN_FILE) if legacy else (RUN_CONFIG_FILE,)
    for name in names:
        path = _join(run_dir, name)
        if not tf.io.gfile.exists(path):
            continue
        record = _read_json_file(path)
        if not isinstance(record, dict):
            raise ValueError(f"{path}: expected a JSON object")
        config = record.get("config", {})
        config = config if isinstance(config, Mapping) else {}
        if name == RUN_CONFIG_FILE:
            config_class = config.get("class")
            values = config.get("values", {})
        else:
            config_class, values = None, config
        data = record.get("data")
        if isinstance(data, Mapping):
            data = data.get("spec")
        return RunRecord(path=path, config_class=config_class, values=dict(values),
                         data=data if isinstance(data, str) else None, record=record)
    return None
