"""Export of the whole CCNN cascade: one SavedModel, TFLite float32 and quantised.

``python -m ccnn_tf.export --model=RUN_OR_MODEL --output=DIR [--quantization=int8]``

The export folder has the one layout of ``common.export.write_export`` (written as
one unit: a crash leaves the previous export or the complete new one):

* ``DIR/saved_model/1``: :func:`export_saved_model`'s SavedModel, i.e. ``common.export``'s
  with the networks' weights frozen into the serving graph, the
  signatures shared with MSRRN: ``serving_default(images uint8 [N, H, W, 3], boxes
  float32 [N, 4]) -> {"landmarks": [N, 5, 2] pixels}``. The face crop and every stage's
  window cropping (``tf.image.crop_and_resize``) run inside the graph. Each stage's
  networks run as grouped convolutions (``ccnn_tf.model.run_networks``) whose kernels
  graph optimisation builds once from the frozen weights.
* ``DIR/model_float32.tflite``, ``DIR/model_dynamic_int8.tflite`` (int8 weights) and,
  with ``--quantization=int8``, ``DIR/model_int8.tflite`` (int8 networks): the
  ``serving_cropped`` signature (the cropped face ``image_S`` -> normalised landmarks and
  per-stage outputs) for the paper's mobile use case (section 4.2); the caller crops the
  face from its detector box with the same margin and maps the landmarks back with
  ``common.geometry.crop_to_image``. The TFLite graphs have one convolution per network:
  TFLite's builtin kernels run grouped convolutions only on their slow reference path.
* ``DIR/export_report.json``: the parity of every file against the Keras cascade,
  each run in a fresh Python process, and the hash of the weights it describes.

A cascade trained in ``mixed_float16`` is exported as its float32 copy (same weights,
:func:`float32_cascade`).

TFLite and window cropping. ``CropAndResize`` is not a TFLite builtin (only a Flex op,
which mobile runtimes rarely ship). For the TFLite conversion the cascade is traced with
:func:`crop_windows_matmul`, the same bilinear sampling as ``ccnn_tf.windows.
crop_windows`` written as two batched matrix products with "tent" interpolation weights
(``max(0, 1 - |position - pixel|)``, zero outside the image), which converts to builtin
ops only. The parity check then verifies that the converted model matches the Keras
cascade (with ``crop_and_resize``).

Quantisation.

* ``dynamic``: dynamic-range quantisation, int8 weights and float activations.
* ``int8``: int8 networks. Every convolution, pooling and fully connected layer (a
  1x1 convolution) of the 23 networks has int8 weights (per channel) and int8
  activations calibrated on ``--calibration_faces`` training faces; the per-crop
  standardisation, the window geometry, the crops and the averaging stay float32
  (TFLite's selective quantisation, ``tf.lite.experimental.QuantizationDebugger`` with
  every other op type denylisted). Float32 interface. On the sun5 cascade of the
  README (1,500 steps per stage, 200 validation faces) its mean error is 2.037 % of the
  face-box width against 2.036 % for float32 (largest coordinate difference 6e-3
  normalised, 0.6 px of the 96-px crop), in 0.94 MB.
* Full-integer quantisation of the whole cascade (``TFLITE_BUILTINS_INT8``, int8
  activations everywhere) is not offered, for two reasons found with TensorFlow 2.21:

  1. It can abort the process. The per-crop standardisation's variance becomes a
     ``SQUARED_DIFFERENCE`` op whose int8 kernel computes its output rescaling in
     ``tflite::ops::builtin::squared_difference::Prepare`` with
     ``QuantizeMultiplierSmallerThanOneExp``, which ``TFLITE_CHECK``s (SIGABRT in
     ``Interpreter.allocate_tensors``, no Python exception) that the multiplier
     ``(2 * input scale)**2 / (2**14 * output scale)`` is below 1. When calibration
     sees a constant window mean (windows off the image, as an untrained cascade on
     noise images places them) the output range is empty, its scale ~1e-8 and the
     multiplier ~3e4. A TFLite kernel that should reject such a model with an error
     instead crashes; only calibration data can avoid it.
  2. Where it runs it is inaccurate: with 8-bit window coordinates, crop weights and
     standardisation the sun5 cascade's error grows from 2.04 % to 9.36 % of the
     face-box width (max difference 0.24 normalised).

  The ``int8`` variant above keeps exactly that arithmetic in float32.

Tolerances (largest coordinate difference, in normalised crop units, i.e. fractions of
the crop side; pixel differences are checked against the same fraction of the smallest
crop side among the test faces):

* SavedModel: 1e-4 (the same graph; float rounding only).
* TFLite float32: 1e-3. The window crops are computed by other (equivalent) float32
  arithmetic, so pixels differ by float rounding (~1e-5 relative); each stage's output
  places the next stage's windows, and the small windows of stage 3 (a few input
  pixels blown up to 15) amplify such differences. Measured: 4e-7 for the quick
  synthetic cascade, up to 4e-4 for untrained tiny cascades on noise images.
* TFLite dynamic-range quantisation (int8 weights, float activations): 0.02, i.e.
  2.4 % of the face-box width with the default margin, as for the int8 networks; the
  8-bit weights move every network's output a little, and later stages' windows move
  with it. Measured: 3.9e-3 (0.34 px) for the quick synthetic cascade without box
  perturbation, 1.6e-2 on one output (0.25 px on the served landmarks) for the
  box-perturbed quick cascade, against its 4 % mean test error (0.01 failed that
  export).
* TFLite int8 networks: 0.02. Measured: 3.7e-3 on 16 and 6.1e-3 on 200 validation
  faces of the sun5 cascade (2.0 % mean error). Like ``dynamic`` the tolerance is set
  for trained cascades: untrained ones quantise far worse (0.3 for a tiny one).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ccnn_tf.export_hooks import (  # noqa: F401  (re-exported)
    TOLERANCES,
    crop_windows_matmul,
    export_hooks,
    float32_cascade,
    tflite_compatible_crops,
)
from common import atomic, geometry
from common import export as common_export

QUANTIZATIONS = ("dynamic", "int8")
"""TFLite quantisation variants: dynamic range (int8 weights, float activations) and
int8 networks (int8 weights and activations in the networks, float32 geometry)."""

REPORT_FILE = common_export.REPORT_FILE

TFLITE_FILES = {"tflite_float32": "model_float32.tflite",
                "tflite_dynamic": "model_dynamic_int8.tflite",
                "tflite_int8": "model_int8.tflite"}
"""File names of the TFLite variants in an export (``common.export.write_export``)."""


INT8_OPS = frozenset({"CONV_2D", "MAX_POOL_2D"})
"""TFLite ops that the int8 variant quantises: the networks' layers (their fully
connected layers are 1x1 convolutions, ``ccnn_tf.model.run_networks``)."""


def export_saved_model(model: keras.Model, export_dir: str) -> str:
    """``common.export.export_saved_model`` of the cascade in float32.

    ``common.export`` traces the serving functions in the cascade's export hooks'
    context (:func:`export_hooks`: weights frozen into the graph): each stage's grouped
    kernels are then constants that graph optimisation builds once, instead of
    concatenating 23 networks' weights on every call (about half of the model's time
    for one face). The variables are saved too, but the signatures do not read them.

    Args:
        model: the ``CCNNCascade`` (a mixed-precision one is exported in float32,
            :func:`float32_cascade`).
        export_dir: destination directory (an earlier export there is replaced).

    Returns:
        The absolute export directory.
    """
    model = float32_cascade(model)
    size, margin, num_points = _geometry(model)
    return common_export.export_saved_model(model, export_dir, sizes=(size,), margin=margin,
                                            num_landmarks=num_points)


def _op_types(flatbuffer: bytes) -> set[str]:
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    return {op["op_name"] for op in interpreter._get_ops_details()}


def _convert_int8_networks(saved: str, calibration: Callable[[], Iterable[dict]]) -> bytes:
    """int8 networks, float32 geometry: TFLite's selective quantisation.

    ``QuantizationDebugger`` with every op type but :data:`INT8_OPS` denylisted
    quantises the networks' convolutions and poolings (int8 weights per channel, int8
    activations calibrated on ``calibration``) and leaves the standardisation, the
    window geometry and crops and the averaging in float32.
    """
    def converter() -> tf.lite.TFLiteConverter:
        return tf.lite.TFLiteConverter.from_saved_model(
            saved, signature_keys=[common_export.CROPPED_SIGNATURE])

    denylist = sorted(_op_types(converter().convert()) - INT8_OPS)
    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = calibration
    with warnings.catch_warnings():  # calibration runs tf.lite.Interpreter
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=quantizing, debug_dataset=calibration,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=denylist))
        return debugger.get_nondebug_quantized_model()


def export_tflite(model: keras.Model, path: str, *, quantize: bool = False,
                  representative_data: Sequence[np.ndarray] | None = None) -> str:
    """Converts the cascade to TFLite with builtin ops only (batch 1).

    The cascade is traced by ``common.export.save_for_tflite`` in its export hooks'
    TFLite context (:func:`export_hooks`: :func:`crop_windows_matmul` for its
    windows, one convolution per network, a batch of one face), then converted.

    Args:
        model: the ``CCNNCascade`` (a mixed-precision one is exported in float32).
        path: destination ``.tflite`` file.
        quantize: ``False`` for float32; ``True`` for dynamic-range quantisation
            (int8 weights, float activations and interface), or with
            ``representative_data`` for int8 networks (module docstring).
        representative_data: calibration crops, float32 ``[S, S, 3]`` each (0..255,
            cropped by ``common.geometry.preprocess_faces`` with the model's margin),
            typically a few hundred training faces (:func:`calibration_crops`).

    Returns:
        ``path``.
    """
    if representative_data is not None and not quantize:
        raise ValueError("representative_data is only used with quantize=True")
    model = float32_cascade(model)
    size, _, _ = _geometry(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved = common_export.save_for_tflite(model, os.path.join(tmp, "saved_model"))
        if representative_data is None:
            return common_export.export_tflite(saved, path, quantize=quantize)
        crops = [np.asarray(crop, np.float32)[None] for crop in representative_data]

        def calibration() -> Iterator[dict[str, np.ndarray]]:
            for crop in crops:
                yield {f"image_{size}": crop}

        flatbuffer = _convert_int8_networks(saved, calibration)
    atomic.write_bytes(path, flatbuffer, fsync=True)
    return path




# --------------------------------------------------------------------------------------
# Test faces
# --------------------------------------------------------------------------------------


def load_faces(data: str, split: str = "val", count: int = 16
               ) -> tuple[np.ndarray, np.ndarray]:
    """Faces for parity checks (``common.export.parity_faces``)."""
    return common_export.parity_faces(data, split, count)


def calibration_crops(model: keras.Model, data: str | None, split: str = "train",
                      count: int = 200) -> np.ndarray:
    """Face crops for int8 calibration: ``count`` faces of ``split``, model-ready.

    Args:
        model: the cascade (its input size and margin).
        data: TFRecord folder; ``None``: random images (:func:`synthetic_check_faces`),
            only good enough for smoke tests.
        split: the split, normally the training faces.
        count: number of faces.

    Returns:
        float32 ``[count, S, S, 3]`` crops of ``common.geometry.preprocess_faces``.
    """
    size, margin, _ = _geometry(model)
    images, boxes = (load_faces(data, split, count) if data is not None
                     else synthetic_check_faces(count, seed=1))
    inputs, _ = geometry.preprocess_faces(tf.constant(images, tf.uint8),
                                          tf.constant(boxes, tf.float32), (size,), margin)
    return inputs[f"image_{size}"].numpy()


def synthetic_check_faces(count: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random test images with plausible face boxes (when no data is given)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 128, 128, 3), dtype=np.uint8)
    sides = rng.uniform(50, 80, count)
    left = rng.uniform(10, 128 - 10 - sides)
    top = rng.uniform(10, 128 - 10 - sides)
    boxes = np.stack([left, top, left + sides, top + sides], axis=1).astype(np.float32)
    return images, boxes


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def _geometry(model: keras.Model) -> tuple[int, float, int]:
    (size,) = model.input_sizes
    return int(size), float(model.margin), int(model.num_landmarks)


def _tflite_converter(model: keras.Model, options: dict[str, Any]
                      ) -> Callable[[str, str], str]:
    """``convert(saved_model_dir, path)`` of ``common.export.TFLiteVariant``: the cascade
    is converted from the Keras model (:func:`export_tflite`), not the SavedModel."""
    return lambda _saved_model, path: export_tflite(model, path, **options)


def export_cascade(model: keras.Model, output_dir: str, *, data: str | None = None,
                   split: str = "val", num_faces: int = 16,
                   quantization: str | Sequence[str] | None = "dynamic", tflite: bool = True,
                   check: bool = True, calibration_split: str = "train",
                   calibration_faces: int = 200,
                   extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exports the cascade (SavedModel + TFLite) and checks each against the model.

    Args:
        model: the ``CCNNCascade`` (assembled, inference mode). A mixed-precision
            cascade is exported (and checked) as its float32 copy
            (:func:`float32_cascade`).
        output_dir: the export folder: ``saved_model/1/``, the TFLite files and
            ``export_report.json``, written as one unit (an earlier export there is
            replaced only by a complete, checked new one).
        data: TFRecord folder whose ``split`` faces are used for the checks (and whose
            ``calibration_split`` faces calibrate the int8 variant); ``None``: random
            images with random boxes.
        split: the split.
        num_faces: faces used for the checks.
        quantization: the quantised TFLite variants, a subset of
            :data:`QUANTIZATIONS` (one name or several), or ``None`` for none.
        tflite: also write the TFLite models.
        check: run the parity checks (each in a fresh process).
        calibration_split: split of ``data`` that calibrates the int8 variant.
        calibration_faces: faces that calibrate the int8 variant.
        extra_info: more report fields (training data, run directory, ...).

    Returns:
        The report written to ``output_dir/export_report.json``
        (``common.export.write_export``): paths, file sizes, weights hash and
        ``"parity": {name: {max_abs_diff_pixels, max_abs_diff_normalised, tolerance_*}}``.

    Raises:
        common.export.ParityError: an export differs beyond its tolerance.
    """
    quantizations = ((quantization,) if isinstance(quantization, str)
                     else tuple(quantization or ()))
    unknown = sorted(set(quantizations) - set(QUANTIZATIONS))
    if unknown:
        raise ValueError(f"unknown quantization {unknown}; expected a subset of "
                         f"{QUANTIZATIONS} or None")
    model = float32_cascade(model)
    size, margin, num_points = _geometry(model)
    if data is not None:
        images, boxes = load_faces(data, split, num_faces)
    else:
        images, boxes = synthetic_check_faces(num_faces)
    info: dict[str, Any] = {"input_size": size, "tolerances": dict(TOLERANCES),
                            "check_data": data,
                            "check_split": split if data is not None else None,
                            **dict(extra_info or {})}
    variants: list[common_export.TFLiteVariant] = []
    if tflite:
        options: dict[str, dict[str, Any]] = {"tflite_float32": {}}
        if "dynamic" in quantizations:
            options["tflite_dynamic"] = {"quantize": True}
        if "int8" in quantizations:
            options["tflite_int8"] = {"quantize": True, "representative_data":
                                      calibration_crops(model, data, calibration_split,
                                                        calibration_faces)}
            info["calibration"] = {"data": data, "faces": calibration_faces,
                                   "split": calibration_split if data else None}
        variants = [common_export.TFLiteVariant(name, TFLITE_FILES[name],
                                                _tflite_converter(model, kwargs))
                    for name, kwargs in options.items()]

    hooks = export_hooks(model)

    def parity(name: str, path: str) -> dict[str, Any]:
        if not check:
            return {}
        entry = common_export.check_export(name, path, model, images, boxes, margin=margin,
                                           tolerance=hooks.tolerance(name))
        del entry["fresh_process"]  # always (the report's fields as before)
        return entry

    report = common_export.write_export(model, output_dir, sizes=(size,), margin=margin,
                                        num_landmarks=num_points, tflite=variants,
                                        check=parity, info=info)
    return report


def format_export_report(report: dict[str, Any]) -> str:
    """A few lines: every file and its parity against the Keras cascade."""
    lines = []
    for name, path in report["files"].items():
        size = report.get("file_megabytes", {}).get(name)
        line = f"{name}: {path}" + (f" ({size:.2f} MB)" if size is not None else "")
        parity = report["parity"].get(name)
        if parity:
            line += (f"; max diff {parity['max_abs_diff_normalised']:.2e} normalised, "
                     f"{parity['max_abs_diff_pixels']:.2e} px (tolerance "
                     f"{parity['tolerance_normalised']:g}) on {parity['num_faces']} faces, "
                     "fresh process")
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _define_flags() -> None:
    from absl import flags

    from ccnn_tf.evaluate import define_inference_flags

    flags.DEFINE_string("model", None, "A CCNN run directory (its assembled model.keras, "
                        "or its last finished stage), a stage directory or a .keras file.",
                        required=True)
    flags.DEFINE_string("output", None, "Export folder (saved_model/1/, *.tflite, "
                        f"{REPORT_FILE}), replaced as a unit.", required=True)
    flags.DEFINE_string("data", None, "TFRecord folder whose faces are used for the parity "
                        "checks; default: the data the run trained "
                        "on (random images if none).")
    flags.DEFINE_string("split", "val", "Split of --data used for the checks.")
    flags.DEFINE_integer("num_faces", 16, "Faces used for the parity checks.", lower_bound=1)
    flags.DEFINE_multi_enum("quantization", ["dynamic"], [*QUANTIZATIONS, "none"],
                            "Quantised TFLite variants (repeat the flag for several): "
                            "dynamic (int8 weights, float activations), int8 (int8 "
                            "networks, float32 geometry; calibrated on "
                            "--calibration_split), or none.")
    flags.DEFINE_string("calibration_split", "train", "Split of --data whose faces "
                        "calibrate the int8 variant.")
    flags.DEFINE_integer("calibration_faces", 200, "Faces that calibrate the int8 "
                         "variant.", lower_bound=1)
    flags.DEFINE_bool("tflite", True, "Also write the TFLite models.")
    flags.DEFINE_bool("check", True, "Check every export against the Keras cascade in a "
                      "fresh process.")
    define_inference_flags(flags)


def main(argv: Sequence[str]) -> None:
    """Entry point of ``python -m ccnn_tf.export``."""
    from absl import app, flags
    from absl import logging as absl_logging

    from ccnn_tf.evaluate import with_inference_flags
    from ccnn_tf.runs import load_cascade, run_data

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # TensorFlow's INFO lines hide the results
        absl_logging.set_verbosity(absl_logging.WARNING)
    data = values.data or run_data(values.model)
    report = export_cascade(
        with_inference_flags(load_cascade(values.model), values), values.output, data=data,
        split=values.split,
        num_faces=values.num_faces,
        quantization=[q for q in values.quantization if q != "none"],
        tflite=values.tflite, check=values.check, calibration_split=values.calibration_split,
        calibration_faces=values.calibration_faces,
        extra_info={"model_source": os.path.abspath(values.model),
                    "training_data": run_data(values.model)})
    print(format_export_report(report))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
