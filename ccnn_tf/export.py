"""Export of the whole CCNN cascade: one SavedModel, TFLite float32 and quantised.

``python -m ccnn_tf.export --model=RUN_OR_MODEL --output=DIR``

* ``DIR/saved_model``: ``common.export.export_saved_model``, the serving signature
  shared with MSRRN: ``serving_default(images uint8 [N, H, W, 3], boxes float32
  [N, 4]) -> {"landmarks": [N, 5, 2] pixels}``. The face crop and every stage's window
  cropping (``tf.image.crop_and_resize``) run inside the graph.
* ``DIR/ccnn_float32.tflite`` and ``DIR/ccnn_dynamic.tflite`` (int8 weights): the
  ``serving_cropped`` signature (the cropped face ``image_S`` -> normalised landmarks and
  per-stage outputs) for the paper's mobile use case (section 4.2); the caller crops the
  face from its detector box with the same margin and maps the landmarks back with
  ``common.geometry.crop_to_image``.
* ``DIR/export_report.json``: the parity of every file against the Keras cascade,
  each run in a fresh Python process.

TFLite and window cropping. ``CropAndResize`` is not a TFLite builtin (only a Flex op,
which mobile runtimes rarely ship). For the TFLite conversion the cascade is traced with
:func:`crop_windows_matmul`, the same bilinear sampling as ``ccnn_tf.windows.
crop_windows`` written as two batched matrix products with "tent" interpolation weights
(``max(0, 1 - |position - pixel|)``, zero outside the image), which converts to builtin
ops only. The parity check then verifies that the converted model matches the Keras
cascade (with ``crop_and_resize``).

Tolerances (largest coordinate difference, in normalised crop units, i.e. fractions of
the crop side; pixel differences are checked against the same fraction of the smallest
crop side among the test faces):

* SavedModel: 1e-4 (the same graph; float rounding only).
* TFLite float32: 1e-3. The window crops are computed by other (equivalent) float32
  arithmetic, so pixels differ by float rounding (~1e-5 relative); each stage's output
  places the next stage's windows, and the small windows of stage 3 (a few input
  pixels blown up to 15) amplify such differences. Measured: 4e-7 for the quick
  synthetic cascade, up to 4e-4 for untrained tiny cascades on noise images.
* TFLite dynamic-range quantisation (int8 weights, float activations): 0.01, i.e.
  1.2 % of the face-box width with the default margin; the 8-bit weights move every
  network's output a little, and later stages' windows move with it. Measured: 3.9e-3
  (0.34 px) for the quick synthetic cascade, against its 2.8 % mean test error.

Full-integer quantisation (int8 activations too) is not offered: with TensorFlow 2.21
the converted cascade aborts inside the TFLite interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ccnn_tf import windows as win
from common import export as common_export
from common import geometry

QUANTIZATIONS = ("dynamic",)
"""TFLite quantisation variants: dynamic range (int8 weights, float activations)."""

TOLERANCES = {"saved_model": 1e-4, "tflite_float32": 1e-3, "tflite_dynamic": 0.01}
"""Parity tolerances in normalised crop units (module docstring)."""

REPORT_FILE = "export_report.json"


# --------------------------------------------------------------------------------------
# TFLite-compatible window cropping
# --------------------------------------------------------------------------------------


def _tent_weights(low: tf.Tensor, high: tf.Tensor, count: int, extent: int
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Bilinear sampling weights ``[..., count, extent]`` along one axis and validity.

    Sample ``i`` of the interval ``[low, high]`` (normalised) sits at pixel position
    ``p = (low + (i + 0.5) (high - low) / count) * extent - 0.5``; its weight on pixel
    ``x`` is ``max(0, 1 - |p - x|)``, which are exactly linear interpolation's weights
    inside ``[0, extent - 1]``. Samples outside are invalid (``crop_and_resize``
    extrapolates them).
    """
    step = (high - low) / count
    offsets = tf.range(count, dtype=tf.float32) + 0.5
    positions = (low[..., None] + offsets * step[..., None]) * float(extent) - 0.5
    grid = tf.range(extent, dtype=tf.float32)
    weights = tf.nn.relu(1.0 - tf.abs(positions[..., None] - grid))
    valid = tf.cast((positions >= 0.0) & (positions <= float(extent - 1)), tf.float32)
    return weights * valid[..., None], valid


def crop_windows_matmul(images: tf.Tensor, windows: tf.Tensor,
                        size: int | Sequence[int] = 15,
                        extrapolation_value: float = 0.0) -> tf.Tensor:
    """``ccnn_tf.windows.crop_windows`` as matrix products (TFLite builtins only).

    Same contract and sampling positions as ``crop_windows`` (bilinear, output pixel
    ``i`` centred at ``l + (i + 0.5) (r - l) / size``, ``extrapolation_value`` outside
    the image); the images need a static height and width.

    Args:
        images: float ``[N, H, W, C]``.
        windows: float ``[N, K, 4]`` or ``[N, 4]`` (l, t, r, b) normalised windows.
        size: output side, or (height, width).
        extrapolation_value: value of samples outside the image.

    Returns:
        float32 ``[N, K, size_h, size_w, C]`` (or ``[N, size_h, size_w, C]``).
    """
    size_h, size_w = (size, size) if isinstance(size, int) else tuple(size)
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    windows = tf.convert_to_tensor(windows, tf.float32)
    one_per_image = windows.shape.rank == 2
    if one_per_image:
        windows = windows[:, None, :]
    _, height, width, channels = images.shape
    if height is None or width is None or channels is None:
        raise ValueError("crop_windows_matmul needs images of static height, width and "
                         f"channels, got {images.shape}")
    n = tf.shape(images)[0]
    k = tf.shape(windows)[1]
    flat_windows = tf.reshape(windows, [-1, 4])  # [N*K, 4]
    left, top, right, bottom = tf.unstack(flat_windows, axis=-1)
    weights_y, valid_y = _tent_weights(top, bottom, size_h, height)   # [NK, sh, H]
    weights_x, valid_x = _tent_weights(left, right, size_w, width)    # [NK, sw, W]
    # Rows: [NK, sh, H] @ [NK, H, W*C].
    repeated = tf.repeat(tf.reshape(images, [n, height, width * channels]), k, axis=0)
    rows = tf.matmul(weights_y, repeated)                              # [NK, sh, W*C]
    rows = tf.reshape(rows, [-1, size_h, width, channels])
    rows = tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [-1, width, size_h * channels])
    # Columns: [NK, sw, W] @ [NK, W, sh*C].
    crops = tf.matmul(weights_x, rows)                                 # [NK, sw, sh*C]
    crops = tf.transpose(tf.reshape(crops, [-1, size_w, size_h, channels]), [0, 2, 1, 3])
    if extrapolation_value:
        inside = valid_y[:, :, None, None] * valid_x[:, None, :, None]
        crops += (1.0 - inside) * extrapolation_value
    crops = tf.reshape(crops, [n, k, size_h, size_w, channels])
    return crops[:, 0] if one_per_image else crops


@contextlib.contextmanager
def tflite_compatible_crops() -> Iterator[None]:
    """Within this context the CCNN stages crop with :func:`crop_windows_matmul`.

    The stages look ``crop_windows`` up in ``ccnn_tf.windows`` at call time, so a
    model traced inside the context (e.g. for the TFLite converter) has no
    ``CropAndResize`` op. The Keras model and other traces are unaffected.
    """
    original = win.crop_windows
    win.crop_windows = crop_windows_matmul
    try:
        yield
    finally:
        win.crop_windows = original


class _SingleFaceModule(tf.Module):
    """``serving_cropped`` for one face (batch 1), for the TFLite converter.

    With a dynamic batch the converter gives the formula-4 averaging (an ``einsum`` in
    ``ccnn_tf.model``) a tensor of static shape ``[-1, 2, 5]``, which the TFLite
    runtime rejects ("BytesRequired number of elements overflowed"); with batch 1
    every shape is static. On-device inference runs face by face anyway. Like
    ``common.export.LandmarkServingModule`` it tracks the backing variables, not the
    Keras model, so that the converter freezes them.
    """

    def __init__(self, model: keras.Model, size: int):
        super().__init__(name="ccnn_single_face")
        self._call_model = functools.partial(model.__call__, training=False)
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self._size = int(size)
        self.serving_cropped = tf.function(self._serve, input_signature=[
            tf.TensorSpec([1, size, size, 3], tf.float32, name=f"image_{size}")])

    def _serve(self, *images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self._call_model({f"image_{self._size}": images[0]})
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


def export_tflite(model: keras.Model, path: str, *, quantize: bool = False) -> str:
    """Converts the cascade to TFLite with builtin ops only (batch 1).

    The cascade is traced with :func:`crop_windows_matmul` for its windows
    (:func:`tflite_compatible_crops`) and with a batch of one face
    (``_SingleFaceModule``), then converted by ``common.export.export_tflite``.

    Args:
        model: the ``CCNNCascade``.
        path: destination ``.tflite`` file.
        quantize: ``False`` for float32, ``True`` for dynamic-range quantisation
            (int8 weights, float activations and interface).

    Returns:
        ``path``.
    """
    size, _, _ = _geometry(model)
    with tempfile.TemporaryDirectory() as tmp, tflite_compatible_crops():
        module = _SingleFaceModule(model, size)
        saved = os.path.join(tmp, "saved_model")
        tf.saved_model.save(module, saved, signatures={
            common_export.CROPPED_SIGNATURE: module.serving_cropped.get_concrete_function()})
        return common_export.export_tflite(saved, path, quantize=quantize)


# --------------------------------------------------------------------------------------
# Test faces
# --------------------------------------------------------------------------------------


def load_faces(data: str, split: str = "val", count: int = 16
               ) -> tuple[np.ndarray, np.ndarray]:
    """Faces for parity checks (``common.export.parity_faces``)."""
    return common_export.parity_faces(data, split, count)


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
    config = model.get_config()
    return int(config["input_size"]), float(config["margin"]), int(config["num_points"])


def _check(name: str, diffs: dict[str, float], tolerance: float, crop_side: float
           ) -> dict[str, Any]:
    """Checks ``check_*_parity`` differences against a normalised tolerance."""
    normalised = {k: v for k, v in diffs.items() if k.startswith("cropped/")}
    worst_normalised = max(normalised.values()) if normalised else 0.0
    worst_pixels = float(diffs["landmarks"])
    entry = {"max_abs_diff_pixels": worst_pixels,
             "max_abs_diff_normalised": float(worst_normalised),
             "per_output": {k: float(v) for k, v in diffs.items() if k != "num_faces"},
             "tolerance_normalised": tolerance,
             "tolerance_pixels": tolerance * crop_side,
             "num_faces": int(diffs.get("num_faces", 0))}
    if worst_normalised > tolerance or worst_pixels > tolerance * crop_side:
        raise common_export.ParityError(
            f"{name}: max difference {worst_normalised:.3g} (normalised) / "
            f"{worst_pixels:.3g} px exceeds {tolerance:g} / {tolerance * crop_side:.3g} px")
    return entry


def export_cascade(model: keras.Model, output_dir: str, *, data: str | None = None,
                   split: str = "val", num_faces: int = 16,
                   quantization: str | None = "dynamic", tflite: bool = True,
                   check: bool = True) -> dict[str, Any]:
    """Exports the cascade (SavedModel + TFLite) and checks each against the model.

    Args:
        model: the ``CCNNCascade`` (assembled, inference mode).
        output_dir: output folder (created; earlier exports in it are replaced).
        data: TFRecord folder whose ``split`` faces are used for the checks;
            ``None``: random images with random boxes.
        split: the split.
        num_faces: faces used for the checks.
        quantization: ``"dynamic"`` or ``None`` (no quantised model).
        tflite: also write the TFLite models.
        check: run the parity checks (each in a fresh process).

    Returns:
        The report written to ``output_dir/export_report.json``: paths, file sizes and
        ``"parity": {name: {max_abs_diff_pixels, max_abs_diff_normalised, tolerance_*}}``.

    Raises:
        common.export.ParityError: an export differs beyond its tolerance.
    """
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None")
    size, margin, num_points = _geometry(model)
    os.makedirs(output_dir, exist_ok=True)
    if data is not None:
        images, boxes = load_faces(data, split, num_faces)
    else:
        images, boxes = synthetic_check_faces(num_faces)
    crop_boxes = geometry.crop_boxes_from_face_boxes(boxes, margin).numpy()
    crop_side = float(np.min(crop_boxes[:, 2] - crop_boxes[:, 0]))

    report: dict[str, Any] = {"input_size": size, "margin": margin,
                              "num_landmarks": num_points, "files": {}, "parity": {},
                              "tolerances": dict(TOLERANCES), "check_data": data,
                              "check_split": split if data is not None else None}
    saved = common_export.export_saved_model(
        model, os.path.join(output_dir, "saved_model"), sizes=(size,), margin=margin,
        num_landmarks=num_points)
    report["files"]["saved_model"] = saved
    if check:
        diffs = common_export.check_parity(saved, model, images, boxes, atol=np.inf)
        report["parity"]["saved_model"] = _check("SavedModel", diffs,
                                                 TOLERANCES["saved_model"], crop_side)
    variants = []
    if tflite:
        variants.append(("tflite_float32", False))
        if quantization == "dynamic":
            variants.append(("tflite_dynamic", True))
    for name, quantize in variants:
        path = os.path.abspath(os.path.join(output_dir,
                                            f"ccnn_{name.split('_', 1)[1]}.tflite"))
        export_tflite(model, path, quantize=quantize)
        report["files"][name] = path
        report.setdefault("file_megabytes", {})[name] = os.path.getsize(path) / 2**20
        if check:
            diffs = common_export.check_tflite_parity(path, model, images, boxes,
                                                      margin=margin, atol=np.inf)
            report["parity"][name] = _check(name, diffs, TOLERANCES[name], crop_side)
    with open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
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

    flags.DEFINE_string("model", None, "A CCNN run directory (its assembled model.keras, "
                        "or its last finished stage), a stage directory or a .keras file.",
                        required=True)
    flags.DEFINE_string("output", None, "Output folder (saved_model/, *.tflite, "
                        f"{REPORT_FILE}).", required=True)
    flags.DEFINE_string("data", None, "TFRecord folder whose faces are used for the parity "
                        "checks; default: the data the run trained "
                        "on (random images if none).")
    flags.DEFINE_string("split", "val", "Split of --data used for the checks.")
    flags.DEFINE_integer("num_faces", 16, "Faces used for the parity checks.", lower_bound=1)
    flags.DEFINE_enum("quantization", "dynamic", ["dynamic", "none"],
                      "Quantised TFLite variant: dynamic-range (int8 weights, float "
                      "activations), or none.")
    flags.DEFINE_bool("tflite", True, "Also write the TFLite models.")
    flags.DEFINE_bool("check", True, "Check every export against the Keras cascade in a "
                      "fresh process.")


def main(argv: Sequence[str]) -> None:
    """Entry point of ``python -m ccnn_tf.export``."""
    from absl import app, flags
    from absl import logging as absl_logging

    from ccnn_tf.evaluate import load_cascade, run_data

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # TensorFlow's INFO lines hide the results
        absl_logging.set_verbosity(absl_logging.WARNING)
    data = values.data or run_data(values.model)
    report = export_cascade(
        load_cascade(values.model), values.output, data=data, split=values.split,
        num_faces=values.num_faces,
        quantization=None if values.quantization == "none" else values.quantization,
        tflite=values.tflite, check=values.check)
    print(format_export_report(report))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
