"""The names an export is made of, shared by the exporter and its checks.

File and folder names (``export_info.json``, ``saved_model/1``, ``export_report.json``),
signature names, the optional ``confidence`` output, and the readers of the two JSON
files. ``common.export`` re-exports them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

EXPORT_INFO = "export_info.json"
"""Name of the metadata file written into every SavedModel export."""

SAVED_MODEL_DIR = "saved_model"
"""Folder of an export (:func:`common.export.write_export`) holding the versioned SavedModel."""

SAVED_MODEL_VERSION = "1"
"""The version folder of the SavedModel (TF Serving's ``--model_base_path`` layout)."""

REPORT_FILE = "export_report.json"
"""The report of an export: files, parity figures, signatures, config, weights hash."""

DEFAULT_SIGNATURE = "serving_default"
CROPPED_SIGNATURE = "serving_cropped"
CONFIDENCE_KEY = "confidence"
"""Optional model output (float32 ``[N]`` in [0, 1], ``common.confidence``) that
``serving_default`` passes through beside ``landmarks``."""

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ParityError(AssertionError):
    """An exported model disagrees with the in-process model beyond tolerance."""


def _input_key(size: int) -> str:
    return f"image_{int(size)}"


def _as_output_dict(outputs: Any, output_key: str) -> dict[str, tf.Tensor]:
    if isinstance(outputs, Mapping):
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
    return {output_key: tf.cast(outputs, tf.float32)}


def read_report(export_dir: str) -> dict[str, Any]:
    """The ``export_report.json`` of an export written by :func:`common.export.write_export`."""
    with open(os.path.join(export_dir, REPORT_FILE)) as f:
        return json.load(f)


def read_export_info(export_dir: str) -> dict[str, Any]:
    """The ``export_info.json`` of an export (sizes, margin, num_landmarks, ...)."""
    with open(os.path.join(export_dir, EXPORT_INFO)) as f:
        return json.load(f)
