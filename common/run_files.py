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
