"""SavedModel (TF Serving) and TFLite export shared by MSRRN and CCNN, with parity checks.

The exported SavedModel has two signatures (see ``docs/DESIGN.md``):

* ``serving_default(images: uint8 [N, H, W, 3] RGB, boxes: float32 [N, 4]
  (l, t, r, b) pixels) -> {"landmarks": float32 [N, L, 2] (x, y) image pixels}``
  (plus ``"confidence"`` float32 ``[N]`` when the model outputs one):
  ``validate_serving_inputs`` + ``preprocess_faces`` + model + ``crop_to_image``,
  the very functions evaluation uses, so serving cannot drift from evaluation.
* ``serving_cropped(image_<s>: float32 [N, s, s, 3] 0..255 for every input size)
  -> {"landmarks": float32 [N, L, 2] normalised crop coordinates, "stage_k": ...}``:
  the bare model on faces cropped by the caller (every output of the model).

``export_info.json`` beside ``saved_model.pb`` records the sizes, margin and number
of landmarks. Inspect an export with ``saved_model_cli show --all --dir DIR``.

An export of either model (:func:`write_export`, the one exporter behind
``msrrn_tf.export``, ``ccnn_tf.export`` and every training command) has one layout::

    EXPORT/saved_model/1/       the SavedModel (tensorflow_model_server
                                --model_base_path=EXPORT/saved_model)
    EXPORT/*.tflite             the TFLite files (model_float32.tflite, ...)
    EXPORT/export_report.json   parity, signatures, config, training data, commit and
                                the hash of the weights it describes

:func:`saved_model_dir` finds the SavedModel of an export in this layout and in the
older ones (MSRRN: ``EXPORT/saved_model.pb``; CCNN: ``EXPORT/saved_model/saved_model.pb``).

Exports are written as a unit: everything goes to a temporary sibling folder and is
swapped in with one atomic exchange once complete and checked, so that a crash at any
moment (SIGKILL included) leaves the complete previous export or the complete new one,
never a mix. Export to a local path (copy to GCS afterwards): directory renames are not
atomic on object stores.

TFLite (:func:`export_tflite`) converts ``serving_cropped`` only: the serving crop
uses ``CropAndResize`` on dynamic image shapes, which are not TFLite
builtins; on-device pipelines crop with their own detector output and then map the
normalised landmarks back with ``crop_to_image``.

The fresh-process parity checks run ``python -m common.export_check run ...`` (a tiny
npz-in/npz-out runner; ``python -m common.export run ...`` still works) so the
SavedModel is loaded by a process that never saw the Python model classes.

This module writes exports (the serving module, the SavedModel, TFLite conversion, the
atomic swap, the report); it re-exports the rest from its parts: ``common.export_check``
(runners and parity checks) and ``common.export_format`` (file and signature names,
the JSON readers).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import atomic, geometry, landmark_model, model_path

# The parts of the exporter, re-exported here so that ``common.export.X`` keeps working.
from common.export_check import (  # noqa: F401
    _compare,
    _interpreter,
    _run_fresh,
    check_export,
    check_parity,
    check_tflite_parity,
    main,
    parity_faces,
    quiet_lite_deprecation,
    reference_landmarks,
    run_saved_model,
    run_tflite,
    tflite_input_sizes,
)
from common.export_format import (  # noqa: F401
    _PACKAGE_ROOT,
    CONFIDENCE_KEY,
    CROPPED_SIGNATURE,
    DEFAULT_SIGNATURE,
    EXPORT_INFO,
    REPORT_FILE,
    SAVED_MODEL_DIR,
    SAVED_MODEL_VERSION,
    ParityError,
    _as_output_dict,
    _input_key,
    read_export_info,
    read_report,
)
from common.tfrecord import find_shards, parse_face  # noqa: F401


class LandmarkServingModule(tf.Module):
    """The ``tf.Module`` saved by :func:`export_saved_model`.

    The model is traced in its export hooks' context for ``target``
    (``common.landmark_model.ExportHooks.trace``: e.g. CCNN freezes its weights into
    the serving graph, and crops its windows with TFLite builtins for the converter).

    Args:
        model: the Keras model, ``{f"image_{s}"} -> {"landmarks", ...}``.
        sizes: the model's input sides.
        margin: crop margin of ``preprocess_faces``.
        num_landmarks: ``L``, checked against the model output when tracing
            (``None``: not checked).
        output_key: the model output holding the final normalised landmarks.
        target: ``landmark_model.SAVED_MODEL_TARGET`` or ``TFLITE_TARGET``.
        batch_size: static batch of ``serving_cropped`` (``None``: dynamic), e.g. the
            hooks' ``tflite_trace_batch``.
    """

    def __init__(self, model: keras.Model, sizes: Sequence[int], margin: float,
                 num_landmarks: int | None, output_key: str = "landmarks", *,
                 target: str = landmark_model.SAVED_MODEL_TARGET,
                 batch_size: int | None = None):
        super().__init__(name="landmark_serving")
        # Track the backing tf.Variables, not the Keras model object: with the model
        # (and so its KerasVariable wrappers) in the object graph, the TFLite
        # converter keeps the weights as uninitialised resource variables instead of
        # freezing them (garbage outputs). A partial is not tracked.
        self._call_model = functools.partial(model.__call__, training=False)
        # The model's tracing context for this target; also a partial, so that the
        # model (which the hooks' functions refer to) stays untracked.
        self._trace_options = functools.partial(
            landmark_model.export_hooks_of(model).trace, target)
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.sizes = tuple(int(s) for s in sizes)
        if not self.sizes:
            raise ValueError("sizes must not be empty")
        self.margin = float(margin)
        self.num_landmarks = None if num_landmarks is None else int(num_landmarks)
        self.output_key = output_key
        self.serving_default = tf.function(
            self._serve_images, input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                tf.TensorSpec([None, 4], tf.float32, name="boxes")])
        # *args with named specs: the signature's inputs are called image_<s>.
        self.serving_cropped = tf.function(
            self._serve_cropped, input_signature=[
                tf.TensorSpec([batch_size, s, s, 3], tf.float32, name=_input_key(s))
                for s in self.sizes])

    def _landmarks(self, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        if self.output_key not in outputs:
            raise KeyError(f"model outputs {sorted(outputs)} have no {self.output_key!r}")
        return tf.ensure_shape(outputs[self.output_key], [None, self.num_landmarks, 2])

    def _run_model(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with self._trace_options():
            outputs = _as_output_dict(self._call_model(inputs), self.output_key)
        self._landmarks(outputs)
        return outputs

    def _serve_images(self, images: tf.Tensor, boxes: tf.Tensor) -> dict[str, tf.Tensor]:
        # A loaded signature checks dtypes but not shapes, and graph optimisation
        # folds rank assertions against the declared specs; EnsureShape is kept and
        # fails with "Shape of tensor images [...] is not compatible with ...".
        images = tf.ensure_shape(images, [None, None, None, 3])
        boxes = tf.ensure_shape(boxes, [None, 4])
        images, boxes = geometry.validate_serving_inputs(images, boxes)
        inputs, crop_boxes = geometry.preprocess_faces(images, boxes, self.sizes, self.margin)
        outputs = self._run_model(inputs)
        served = {"landmarks": geometry.crop_to_image(self._landmarks(outputs), crop_boxes)}
        if CONFIDENCE_KEY in outputs:  # a model with a per-face confidence passes it on
            served[CONFIDENCE_KEY] = tf.ensure_shape(outputs[CONFIDENCE_KEY], [None])
        return served

    def _serve_cropped(self, *images: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = {_input_key(s): tf.ensure_shape(image, [image.shape[0], s, s, 3])
                  for s, image in zip(self.sizes, images, strict=True)}
        return self._run_model(inputs)


# --------------------------------------------------------------------------------------
# Atomic directory / file replacement
# --------------------------------------------------------------------------------------


def _local_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if "://" in path:
        raise ValueError(f"export to a local path, then copy it ({path!r}): renames on "
                         "object stores are not atomic")
    return os.path.abspath(path)


def _exchange(first: str, second: str) -> bool:
    """Swaps two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False`` where the system cannot (no ``renameat2``, or a file system
    without the flag); nothing was changed then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                 rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(error, f"cannot swap {first} and {second}: {os.strerror(error)}")


def _old_prefix(target: str) -> str:
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.old-")


def _replace_dir(new_dir: str, target: str) -> None:
    """Moves the complete ``new_dir`` to ``target``, replacing an existing export.

    Where the system can, the two folders are exchanged in one atomic step, so that at
    every instant ``target`` is the complete previous or the complete new export.
    Elsewhere the previous export is renamed to a ``.NAME.old-*`` sibling first; a
    crash between the two renames leaves it there, and :func:`_restore_interrupted`
    (run by the next export) moves it back.
    """
    if not os.path.lexists(target):
        os.rename(new_dir, target)
        return
    if _exchange(new_dir, target):
        shutil.rmtree(new_dir, ignore_errors=True)  # now the previous export
        return
    old = f"{_old_prefix(target)}{uuid.uuid4().hex}"
    os.rename(target, old)
    try:
        os.rename(new_dir, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _restore_interrupted(target: str) -> None:
    """Undoes what a crash between :func:`_replace_dir`'s renames left behind."""
    parent = os.path.dirname(target)
    prefix = os.path.basename(_old_prefix(target))
    olds = sorted((os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)),
                  key=os.path.getmtime) if os.path.isdir(parent) else []
    for old in olds:
        if os.path.lexists(target):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)


def _check_replaceable(target: str) -> None:
    """Refuses to replace anything that is not an earlier export (or empty)."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise FileExistsError(f"{target} exists and is not a directory")
    contents = os.listdir(target)
    if contents and not {"saved_model.pb", SAVED_MODEL_DIR, REPORT_FILE} & set(contents):
        raise FileExistsError(f"{target} exists and is not a SavedModel export; "
                              "refusing to replace it")


def saved_model_dir(export_dir: str) -> str:
    """The SavedModel folder of an export, in the current or an older layout.

    Current layout (:func:`write_export`): ``EXPORT/saved_model/<version>/`` (the
    highest numeric version). Older ones: ``EXPORT/saved_model/`` holding
    ``saved_model.pb`` (CCNN), ``EXPORT/`` itself holding it (MSRRN). A SavedModel
    folder given directly is returned as it is.

    Args:
        export_dir: the export folder (or a SavedModel folder).

    Returns:
        The folder holding ``saved_model.pb``.

    Raises:
        FileNotFoundError: no SavedModel in any of these places.
    """
    looked: list[str] = []
    found = model_path.find_saved_model(os.fspath(export_dir), looked)
    if found is None:
        raise FileNotFoundError(f"{export_dir} holds no SavedModel: looked for "
                                + ", ".join(looked))
    return found


def weights_sha256(model: keras.Model) -> str:
    """A hash of a model's weights (dtype, shape and values, in the model's order)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _git_commit() -> str | None:
    """The commit of the code that writes the export (``None`` outside a checkout)."""
    try:
        done = subprocess.run(["git", "-C", _PACKAGE_ROOT, "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------------------
# SavedModel
# --------------------------------------------------------------------------------------


def export_saved_model(model: keras.Model, export_dir: str, *, sizes: Sequence[int],
                       margin: float, num_landmarks: int,
                       output_key: str = "landmarks") -> str:
    """Writes a SavedModel for TF Serving, atomically.

    Signatures: ``serving_default`` (uint8 images + face boxes -> landmarks in image
    pixels) and ``serving_cropped`` (cropped float faces -> all model outputs, in
    normalised crop coordinates); see the module docstring.

    Args:
        model: the Keras model (``{f"image_{s}"}`` -> ``{"landmarks", ...}``).
        export_dir: local destination directory (for TF Serving, a version folder
            such as ``models/msrrn/1``). An existing export there is replaced only
            once the new one is complete.
        sizes: the model's input sides, e.g. ``(50, 100, 200)``.
        margin: crop margin the model was trained with.
        num_landmarks: number of landmarks ``L``.
        output_key: the model output with the final normalised landmarks.

    Returns:
        The absolute export directory.

    Raises:
        FileExistsError: ``export_dir`` exists and is not an earlier export.
    """
    target = _local_path(export_dir)
    _check_replaceable(target)
    model = landmark_model.export_hooks_of(model).float32_copy(model)
    tmp = atomic.make_temp_dir(target)
    try:
        _save_saved_model(model, tmp, sizes=sizes, margin=margin,
                          num_landmarks=num_landmarks, output_key=output_key)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic.remove_stale_temps(target)  # left by exports killed before they finished
    return target


def _save_saved_model(model: keras.Model, directory: str, *, sizes: Sequence[int],
                      margin: float, num_landmarks: int | None,
                      output_key: str = "landmarks") -> LandmarkServingModule:
    """Writes the SavedModel and its ``export_info.json`` into ``directory`` (not
    atomically: callers write into a temporary folder)."""
    module = LandmarkServingModule(model, sizes, margin, num_landmarks, output_key)
    tf.saved_model.save(module, directory, signatures={
        DEFAULT_SIGNATURE: module.serving_default.get_concrete_function(),
        CROPPED_SIGNATURE: module.serving_cropped.get_concrete_function()})
    atomic.write_text(os.path.join(directory, EXPORT_INFO),
                      json.dumps(_export_info(module, model), indent=2))
    return module


def _export_info(module: LandmarkServingModule, model: keras.Model) -> dict[str, Any]:
    return {"sizes": list(module.sizes), "margin": module.margin,
            "num_landmarks": module.num_landmarks, "output_key": module.output_key,
            "signatures": [DEFAULT_SIGNATURE, CROPPED_SIGNATURE],
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "tensorflow": tf.__version__, "keras": keras.__version__}


# --------------------------------------------------------------------------------------
# The export: SavedModel + TFLite files + report, written as a unit
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TFLiteVariant:
    """One TFLite file of an export.

    Attributes:
        name: its key in the report (``"tflite_float32"``, ``"tflite_dynamic"``, ...).
        filename: its file name in the export (``"model_float32.tflite"``, ...).
        convert: ``convert(saved_model_dir, path)`` writes the file at ``path`` (the
            SavedModel of the same export is given for converters that start from it).
    """

    name: str
    filename: str
    convert: Callable[[str, str], Any]


ParityCheck = Callable[[str, str], Mapping[str, Any]]
"""``check(name, path) -> parity figures``: ``name`` is ``"saved_model"`` (``path`` the
SavedModel folder) or a :class:`TFLiteVariant`'s name (``path`` its file); raises
:class:`ParityError` beyond tolerance."""


def write_export(model: keras.Model, export_dir: str, *, sizes: Sequence[int],
                 margin: float, num_landmarks: int, output_key: str = "landmarks",
                 tflite: Sequence[TFLiteVariant] = (), check: ParityCheck | None = None,
                 info: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Writes a whole export as one unit, for either model.

    Layout (``docs/DESIGN.md``)::

        EXPORT/saved_model/1/       the SavedModel (TF Serving: --model_base_path=
                                    EXPORT/saved_model)
        EXPORT/<variant>.tflite     every TFLite file
        EXPORT/export_report.json   files, parity, signatures, geometry, model config,
                                    weights hash, code commit, plus ``info``

    Everything is written into a temporary sibling folder (``.NAME.tmp-<pid>-*``),
    checked there, and swapped in with one atomic exchange, so that a crash at any
    moment (SIGKILL included) leaves either the complete previous export or the
    complete new one, never files of both; a failed parity check leaves the previous
    export too. Leftovers of killed exports are removed by the next one. Files and
    folders get the usual permissions (the umask applies).

    Args:
        model: the Keras model to export (its export hooks' ``float32_copy`` of it,
            ``common.landmark_model.ExportHooks``).
        export_dir: local export folder (replaced only by a complete new export).
        sizes: the model's input sides.
        margin: crop margin the model was trained with.
        num_landmarks: number of landmarks ``L``.
        output_key: the model output with the final normalised landmarks.
        tflite: the TFLite files to write.
        check: checks each file once written (into ``report["parity"][name]``).
        info: more report fields (training data, run config, ...); JSON-able.
        progress: called with a line after each file.

    Returns:
        The report, also written to ``EXPORT/export_report.json``; its ``"files"``
        map each name (``"saved_model"``, variant names) to the final absolute path.

    Raises:
        FileExistsError: ``export_dir`` exists and is not an earlier export.
        ParityError: a check failed (the previous export is kept).
    """
    target = _local_path(export_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _restore_interrupted(target)
    _check_replaceable(target)
    atomic.remove_stale_temps(target)  # left by exports killed before they finished
    relative = {"saved_model": os.path.join(SAVED_MODEL_DIR, SAVED_MODEL_VERSION)}
    relative.update({v.name: v.filename for v in tflite})
    if len(relative) != len(tflite) + 1 or len(set(relative.values())) != len(relative):
        raise ValueError(f"TFLite variants need distinct names and files: {relative}")
    model = landmark_model.export_hooks_of(model).float32_copy(model)
    config = getattr(model, "get_config", dict)()
    report: dict[str, Any] = {
        "layout": f"{SAVED_MODEL_DIR}/{SAVED_MODEL_VERSION} + *.tflite + {REPORT_FILE}",
        "weights_sha256": weights_sha256(model),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_config": _json_safe(config),
        "sizes": [int(x) for x in sizes], "margin": float(margin),
        "num_landmarks": int(num_landmarks), "output_key": output_key,
        "signatures": {DEFAULT_SIGNATURE: "images uint8 [N, H, W, 3] RGB, boxes float32 "
                       "[N, 4] (l, t, r, b) px -> landmarks float32 [N, L, 2] (x, y) px",
                       CROPPED_SIGNATURE: "image_<s> float32 [N, s, s, 3] 0..255 -> "
                       "normalised landmarks [N, L, 2] and every model output"},
        "commit": _git_commit(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "files": {k: os.path.join(target, v) for k, v in relative.items()},
        "file_megabytes": {}, "parity": {}}
    report.update(_json_safe(dict(info or {})))
    tmp = atomic.make_temp_dir(target)
    try:
        saved = os.path.join(tmp, relative["saved_model"])
        os.makedirs(os.path.dirname(saved))
        _save_saved_model(model, saved, sizes=sizes, margin=margin,
                          num_landmarks=num_landmarks, output_key=output_key)
        _record_parity(report, check, "saved_model", saved)
        if progress:
            progress(f"SavedModel written ({report['files']['saved_model']})")
        for variant in tflite:
            path = os.path.join(tmp, variant.filename)
            variant.convert(saved, path)
            report["file_megabytes"][variant.name] = os.path.getsize(path) / 2**20
            _record_parity(report, check, variant.name, path)
            if progress:
                progress(f"{variant.name} written ({report['files'][variant.name]})")
        atomic.write_bytes(os.path.join(tmp, REPORT_FILE),
                           json.dumps(report, indent=2, sort_keys=True), fsync=True)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def export_model(model: keras.Model, export_dir: str, *, data: str | None = None,
                 split: str = "val", num_faces: int = 8, tflite: bool = True,
                 check: bool = True, fresh_process: bool = True,
                 info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Exports any ``common.landmark_model.LandmarkModel`` from its contract alone.

    :func:`write_export` with the model's ``input_sizes``, ``margin`` and
    ``num_landmarks``, a float32 TFLite file by its export hooks (:func:`tflite_variant`)
    and every file's parity checked with the hooks' tolerance in crop units
    (``common.export_check.check_export``), so a new model needs no exporter of its own.

    Args:
        model: the trained model (its ``margin`` set).
        export_dir: the export folder (replaced as a unit).
        data: TFRecord folder whose ``split`` faces check parity; ``None``: random
            images with plausible boxes.
        split: the split.
        num_faces: faces of the checks.
        tflite: also write ``model_float32.tflite``.
        check: run the parity checks.
        fresh_process: run the exports in a new Python process for the checks.
        info: more report fields.

    Returns:
        The report (``export_report.json``).
    """
    margin = landmark_model.margin_of(model)
    if margin is None:
        raise ValueError(f"the crop margin of {type(model).__name__} is unknown; set "
                         "model.margin (common.landmark_model.complete_margin)")
    hooks = landmark_model.export_hooks_of(model)
    if data is not None:
        images, boxes = parity_faces(data, split, num_faces)
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (num_faces, 128, 128, 3), dtype=np.uint8)
        sides = rng.uniform(50, 80, num_faces)
        left, top = rng.uniform(10, 128 - 10 - sides), rng.uniform(10, 128 - 10 - sides)
        boxes = np.stack([left, top, left + sides, top + sides], 1).astype(np.float32)

    def parity(name: str, path: str) -> dict[str, Any]:
        if not check:
            return {}
        return check_export(name, path, model, images, boxes, margin=margin,
                            tolerance=hooks.tolerance(name), fresh_process=fresh_process)

    variants = [tflite_variant(model, "tflite_float32", "model_float32.tflite")
                ] if tflite else []
    return write_export(
        model, export_dir, sizes=_model_sizes(model), margin=margin,
        num_landmarks=landmark_model.num_landmarks_of(model), tflite=variants, check=parity,
        info={"contract": landmark_model.describe(model), "check_data": data,
              "check_split": split if data is not None else None, **dict(info or {})})


def _record_parity(report: dict[str, Any], check: ParityCheck | None, name: str,
                   path: str) -> None:
    figures = check(name, path) if check is not None else None
    if figures:  # an empty result: not checked
        report["parity"][name] = dict(figures)


# --------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------


def _model_sizes(model: keras.Model) -> list[int]:
    """The model's input sides (``input_sizes``, else its ``image_<s>`` inputs)."""
    sizes = landmark_model.input_sizes_of(model)
    if not sizes:
        raise ValueError("cannot infer the input sizes of this model; pass sizes=")
    return list(sizes)


def save_for_tflite(model: keras.Model, directory: str, *,
                    sizes: Sequence[int] | None = None) -> str:
    """Saves ``serving_cropped`` of a model as traced for the TFLite converter.

    The model's export hooks (``common.landmark_model.ExportHooks``) give the float32
    copy, the tracing context (``trace("tflite")``) and the static batch
    (``tflite_trace_batch``) of the trace.

    Args:
        model: the Keras model.
        directory: where to write the SavedModel (one signature, ``serving_cropped``).
        sizes: input sides (default: the model's ``input_sizes`` or ``image_<s>``).

    Returns:
        ``directory``.
    """
    hooks = landmark_model.export_hooks_of(model)
    model = hooks.float32_copy(model)
    sizes = list(sizes) if sizes is not None else _model_sizes(model)
    module = LandmarkServingModule(model, sizes, 0.0, None,
                                   target=landmark_model.TFLITE_TARGET,
                                   batch_size=hooks.tflite_trace_batch)
    tf.saved_model.save(module, directory, signatures={
        CROPPED_SIGNATURE: module.serving_cropped.get_concrete_function()})
    return directory


def tflite_variant(model: keras.Model, name: str, filename: str, *,
                   quantize: bool = False,
                   representative_data: Iterable[Mapping[str, np.ndarray]] | None = None,
                   convert: Callable[[keras.Model, str], Any] | None = None) -> TFLiteVariant:
    """A :class:`TFLiteVariant` of ``model`` for :func:`write_export`, by its hooks.

    With the hooks' ``tflite_source == "saved_model"`` (the default) the file is
    converted from the export's SavedModel (``serving_cropped``, dynamic batch);
    with ``"keras"`` from the model traced anew (:func:`save_for_tflite`).

    Args:
        model: the Keras model being exported.
        name: the variant's report key (``"tflite_float32"``, ...).
        filename: its file name.
        quantize, representative_data: of :func:`export_tflite`.
        convert: ``convert(model, path)`` writing the file instead (a model's own
            converter, e.g. CCNN's int8 networks).
    """
    hooks = landmark_model.export_hooks_of(model)

    def run(saved: str, path: str) -> Any:
        if convert is not None:
            return convert(model, path)
        source = saved if hooks.tflite_source == "saved_model" else model
        return export_tflite(source, path, quantize=quantize,
                             representative_data=representative_data)

    return TFLiteVariant(name, filename, run)


def export_tflite(source: str | keras.Model, path: str, *, quantize: bool = False,
                  representative_data: Iterable[Mapping[str, np.ndarray]]
                  | Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
                  sizes: Sequence[int] | None = None,
                  allow_select_tf_ops: bool = False) -> str:
    """Converts the ``serving_cropped`` signature to a TFLite flatbuffer, atomically.

    Inputs ``image_<s>`` float32 ``[N, s, s, 3]`` 0..255 and outputs (normalised
    landmarks, per-stage outputs) stay float32 in every mode.

    Args:
        source: a SavedModel directory written by :func:`export_saved_model`, or a
            Keras model (traced for TFLite by :func:`save_for_tflite` first: its
            export hooks' float32 copy, TFLite trace context and batch).
        path: destination ``.tflite`` file.
        quantize: ``False``: float32 weights and ops. ``True`` without
            ``representative_data``: dynamic-range quantisation (int8 weights,
            float activations). ``True`` with ``representative_data``: full integer
            quantisation (int8 weights and activations, float32 interface).
        representative_data: calibration batches ``{f"image_{s}": float32 array}``
            (or a function returning such an iterable), typically 100-500 faces of
            the training set cropped by ``preprocess_faces``.
        sizes: input sides, only for a Keras ``source`` whose inputs are not named
            ``image_<s>``.
        allow_select_tf_ops: also allow TensorFlow ops that are not TFLite builtins
            (e.g. ``CropAndResize``); the runtime then needs the Flex delegate.

    Returns:
        ``path``.
    """
    if representative_data is not None and not quantize:
        raise ValueError("representative_data is only used with quantize=True")
    if isinstance(source, keras.Model):
        with tempfile.TemporaryDirectory() as tmp:
            saved = save_for_tflite(source, os.path.join(tmp, "saved_model"), sizes=sizes)
            return export_tflite(saved, path, quantize=quantize,
                                 representative_data=representative_data,
                                 allow_select_tf_ops=allow_select_tf_ops)

    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(source), signature_keys=[CROPPED_SIGNATURE])
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative_data is not None:
        def calibration():
            data = representative_data() if callable(representative_data) else (
                representative_data)
            for batch in data:
                yield {k: np.asarray(v, np.float32) for k, v in batch.items()}

        converter.representative_dataset = calibration
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    converter.target_spec.supported_ops = [builtins] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if allow_select_tf_ops else [])
    with quiet_lite_deprecation():  # calibration runs an interpreter
        flatbuffer = converter.convert()
    atomic.write_bytes(_local_path(path), flatbuffer, fsync=True)
    return path


if __name__ == "__main__":  # the fresh-process runner, also as common.export
    sys.exit(main())
