"""Running an export and checking it against the in-process model (parity).

:func:`check_parity` (SavedModel, both signatures) and :func:`check_tflite_parity`
(TFLite) compare an export with ``preprocess_faces`` + model + ``crop_to_image``, by
default in a fresh Python process (``python -m common.export_check run ...``, an
npz-in/npz-out runner, :func:`main`) that never saw the Python model classes; the
runners :func:`run_saved_model` / :func:`run_tflite`, and :func:`parity_faces` (test
faces from TFRecords). ``common.export`` re-exports these names.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import geometry
from common.export_format import (
    _PACKAGE_ROOT,
    CONFIDENCE_KEY,
    CROPPED_SIGNATURE,
    DEFAULT_SIGNATURE,
    ParityError,
    _as_output_dict,
    read_export_info,
)
from common.tfrecord import find_shards, parse_face


def reference_landmarks(model: keras.Model, images: np.ndarray, boxes: np.ndarray, *,
                        sizes: Sequence[int], margin: float,
                        output_key: str = "landmarks"
                        ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``preprocess_faces`` + model + ``crop_to_image`` in this process.

    Args:
        model: the Keras model.
        images: uint8 ``[N, H, W, 3]``.
        boxes: float ``[N, 4]`` face boxes.
        sizes: model input sides.
        margin: crop margin.
        output_key: the model output with the final normalised landmarks.

    Returns:
        ``(landmarks in pixels [N, L, 2], model inputs {f"image_{s}"},
        normalised landmarks [N, L, 2])`` as NumPy arrays.
    """
    inputs, crop_boxes = geometry.preprocess_faces(
        tf.convert_to_tensor(images, tf.uint8), tf.convert_to_tensor(boxes, tf.float32),
        sizes, margin)
    normalised = _as_output_dict(model(inputs, training=False), output_key)[output_key]
    pixels = geometry.crop_to_image(normalised, crop_boxes)
    return (pixels.numpy(), {k: v.numpy() for k, v in inputs.items()},
            normalised.numpy())


def run_saved_model(export_dir: str, images: np.ndarray, boxes: np.ndarray,
                    cropped: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Runs both signatures of an export (what the fresh process does).

    Args:
        export_dir: the SavedModel directory.
        images: uint8 ``[N, H, W, 3]``.
        boxes: float32 ``[N, 4]``.
        cropped: optional ``{f"image_{s}"}`` inputs for ``serving_cropped``.

    Returns:
        ``{"landmarks": pixels}`` plus ``{"cropped/<output>": ...}`` when ``cropped``
        is given.
    """
    loaded = tf.saved_model.load(export_dir)
    result = loaded.signatures[DEFAULT_SIGNATURE](
        images=tf.constant(images, tf.uint8), boxes=tf.constant(boxes, tf.float32))
    out = {"landmarks": result["landmarks"].numpy()}
    if cropped is not None:
        outputs = loaded.signatures[CROPPED_SIGNATURE](
            **{k: tf.constant(v, tf.float32) for k, v in cropped.items()})
        out.update({f"cropped/{k}": v.numpy() for k, v in outputs.items()})
    return out


@contextlib.contextmanager
def quiet_lite_deprecation() -> Iterator[None]:
    """Hides tf.lite.Interpreter's deprecation notice (LiteRT is not a dependency)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated",
                                category=UserWarning)
        yield


def _interpreter(tflite_path: str):
    """A TFLite interpreter: LiteRT's when installed, else ``tf.lite``'s."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with quiet_lite_deprecation():
            return tf.lite.Interpreter(model_path=os.fspath(tflite_path))
    return Interpreter(model_path=os.fspath(tflite_path))


def run_tflite(tflite_path: str, cropped: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the ``serving_cropped`` signature of a TFLite model face by face.

    Args:
        tflite_path: the ``.tflite`` file.
        cropped: ``{f"image_{s}": float32 [N, s, s, 3]}``.

    Returns:
        ``{output_name: [N, ...]}``.
    """
    runner = _interpreter(tflite_path).get_signature_runner(CROPPED_SIGNATURE)
    count = len(next(iter(cropped.values())))
    faces: dict[str, list[np.ndarray]] = {}
    for i in range(count):  # batch 1: the shape every TFLite delegate supports
        outputs = runner(**{k: np.asarray(v[i:i + 1], np.float32)
                            for k, v in cropped.items()})
        for key, value in outputs.items():
            faces.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in faces.items()}


def tflite_input_sizes(tflite_path: str) -> list[int]:
    """The ``image_<s>`` input sides of a TFLite model's ``serving_cropped``."""
    names = _interpreter(tflite_path).get_signature_list()[CROPPED_SIGNATURE]["inputs"]
    return sorted(int(n.split("_", 1)[1]) for n in names)


def _run_fresh(args: list[str], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``python -m common.export_check run ...`` on npz files in a new process."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        outputs = os.path.join(tmp, "outputs.npz")
        np.savez(inputs, **arrays)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "common.export_check", "run", *args,
                   "--inputs", inputs, "--outputs", outputs]
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fresh-process run failed ({' '.join(command)}):\n"
                               f"{done.stderr[-4000:]}")
        with np.load(outputs) as data:
            return {k: data[k] for k in data.files}


def _compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float) -> float:
    if actual.shape != expected.shape:
        raise ParityError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(worst) or worst > atol:
        index = np.unravel_index(np.nanargmax(diff), diff.shape)
        raise ParityError(f"{name}: max abs difference {worst:.3g} > atol {atol:g} "
                          f"at index {tuple(int(i) for i in index)} "
                          f"(got {actual[index]:.6g}, expected {expected[index]:.6g})")
    return worst


def check_parity(export_dir: str, model: keras.Model, images: np.ndarray,
                 boxes: np.ndarray, atol: float = 1e-4,
                 fresh_process: bool = True) -> dict[str, float]:
    """Compares a SavedModel export with the in-process model.

    ``serving_default`` is compared with ``preprocess_faces`` + model +
    ``crop_to_image`` (pixels); ``serving_cropped`` with the model on the same crops
    (every output). Sizes, margin and output key come from ``export_info.json``.

    Args:
        export_dir: the export.
        model: the Keras model that was exported.
        images: uint8 ``[N, H, W, 3]`` test images.
        boxes: float ``[N, 4]`` face boxes.
        atol: tolerance on every coordinate (pixels, resp. normalised units).
        fresh_process: load the SavedModel in a new Python process (default), so
            nothing of this process (registered classes, traced functions) helps.

    Returns:
        ``{"landmarks": max abs diff in pixels, "cropped/<output>": max abs diff,
        "num_faces": N}``.

    Raises:
        ParityError: a difference exceeds ``atol``.
    """
    info = read_export_info(export_dir)
    images = np.asarray(images, np.uint8)
    boxes = np.asarray(boxes, np.float32)
    pixels, cropped, _ = reference_landmarks(
        model, images, boxes, sizes=info["sizes"], margin=info["margin"],
        output_key=info["output_key"])
    if fresh_process:
        actual = _run_fresh(["--saved-model", os.fspath(export_dir)],
                            {"images": images, "boxes": boxes, **cropped})
    else:
        actual = run_saved_model(export_dir, images, boxes, cropped)
    return _parity_report(model, cropped, info["output_key"], pixels, actual["landmarks"],
                          {k[len("cropped/"):]: v for k, v in actual.items()
                           if k.startswith("cropped/")},
                          atol, landmarks_label=f"{DEFAULT_SIGNATURE} landmarks (pixels)",
                          cropped_label=CROPPED_SIGNATURE)


def check_tflite_parity(tflite_path: str, model: keras.Model, images: np.ndarray,
                        boxes: np.ndarray, *, margin: float, atol: float = 1e-4,
                        output_key: str = "landmarks",
                        fresh_process: bool = True) -> dict[str, float]:
    """Compares a TFLite export with ``preprocess_faces`` + model + ``crop_to_image``.

    The faces are cropped here by ``preprocess_faces`` (as an on-device pipeline
    would), run through the TFLite ``serving_cropped`` signature, and mapped back to
    pixels with ``crop_to_image``. Use a larger ``atol`` for quantised models.

    Args:
        tflite_path: the ``.tflite`` file.
        model: the Keras model that was converted.
        images: uint8 ``[N, H, W, 3]``.
        boxes: float ``[N, 4]`` face boxes.
        margin: crop margin the model was trained with.
        atol: tolerance in pixels (landmarks) and normalised units (other outputs).
        output_key: the model output with the final normalised landmarks.
        fresh_process: run the interpreter in a new Python process.

    Returns:
        ``{"landmarks": max abs diff in pixels, "cropped/<output>": max abs diff,
        "num_faces": N}``.

    Raises:
        ParityError: a difference exceeds ``atol``.
    """
    sizes = tflite_input_sizes(tflite_path)
    images = np.asarray(images, np.uint8)
    boxes = np.asarray(boxes, np.float32)
    pixels, cropped, _ = reference_landmarks(model, images, boxes, sizes=sizes,
                                             margin=margin, output_key=output_key)
    if fresh_process:
        actual = _run_fresh(["--tflite", os.fspath(tflite_path)], cropped)
    else:
        actual = run_tflite(tflite_path, cropped)
    crop_boxes = geometry.crop_boxes_from_face_boxes(boxes, margin)
    actual_pixels = geometry.crop_to_image(actual[output_key], crop_boxes).numpy()
    return _parity_report(model, cropped, output_key, pixels, actual_pixels, actual, atol,
                          landmarks_label="TFLite landmarks (pixels)", cropped_label="TFLite")


def confidence_scale_of(model: keras.Model) -> float:
    """The ``scale`` of the model's ``common.confidence.ShapeAgreementConfidence``
    layer (``DEFAULT_SCALE`` when it has none)."""
    from common.confidence import DEFAULT_SCALE, ShapeAgreementConfidence

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ShapeAgreementConfidence):
            return float(layer.scale)
    return DEFAULT_SCALE


def _disagreement(confidence: np.ndarray, scale: float) -> np.ndarray:
    """``d`` of ``confidence = exp(-d / scale)`` (``common.confidence``), in crop units:
    the confidence is exponential in ``d``, so a difference of ``d`` in crop units, not
    of the confidence itself, is what a crop-unit tolerance bounds (confidences below
    1e-30, ``d`` > 69 ``scale``, compare as equal)."""
    return -scale * np.log(np.maximum(np.asarray(confidence, np.float64), 1e-30))


def _parity_report(model: keras.Model, cropped: Mapping[str, np.ndarray], output_key: str,
                   pixels: np.ndarray, actual_pixels: np.ndarray,
                   actual_cropped: Mapping[str, np.ndarray], atol: float, *,
                   landmarks_label: str, cropped_label: str) -> dict[str, float]:
    """The largest differences of an export's served landmarks (pixels) and of every
    model output on the same crops, each checked against ``atol`` (:func:`_compare`)."""
    report: dict[str, float] = {"landmarks": _compare(landmarks_label, actual_pixels,
                                                      pixels, atol)}
    expected_outputs = _as_output_dict(model(cropped, training=False), output_key)
    for key, value in expected_outputs.items():
        actual, expected = actual_cropped[key], value.numpy()
        label = f"{cropped_label} {key}"
        if key == CONFIDENCE_KEY:  # compared as the disagreement it encodes: crop units
            scale = confidence_scale_of(model)
            actual, expected = (_disagreement(actual, scale),
                                _disagreement(expected, scale))
            label += " (as its disagreement, crop units)"
        report[f"cropped/{key}"] = _compare(label, actual, expected, atol)
    report["num_faces"] = len(pixels)
    return report


def check_export(name: str, path: str, model: keras.Model, images: np.ndarray,
                 boxes: np.ndarray, *, margin: float, tolerance: float,
                 fresh_process: bool = True) -> dict[str, Any]:
    """Checks one exported file against the model, with a tolerance in crop units.

    ``name`` ``"saved_model"`` checks a SavedModel (:func:`check_parity`), any other
    name a TFLite file (:func:`check_tflite_parity`). The tolerance is in normalised
    crop units (fractions of the crop side) for every ``serving_cropped`` output, and
    the same fraction of the smallest test crop side in pixels for the served
    landmarks, so one number per file holds for every model and image size (the
    model's ``export_hooks().tolerance(name)``).

    Args:
        name: the file's report key.
        path: the SavedModel folder or ``.tflite`` file.
        model: the Keras model that was exported.
        images: uint8 ``[N, H, W, 3]``.
        boxes: float ``[N, 4]`` face boxes.
        margin: crop margin of the model.
        tolerance: normalised crop units.
        fresh_process: run the export in a new Python process.

    Returns:
        ``{"max_abs_diff_pixels", "max_abs_diff_normalised", "per_output",
        "tolerance_normalised", "tolerance_pixels", "num_faces", "fresh_process"}``.

    Raises:
        ParityError: beyond tolerance (or shapes differ).
    """
    boxes = np.asarray(boxes, np.float32)
    crop_boxes = geometry.crop_boxes_from_face_boxes(boxes, margin).numpy()
    crop_side = float(np.min(crop_boxes[:, 2] - crop_boxes[:, 0]))
    if name == "saved_model":
        diffs = check_parity(path, model, images, boxes, atol=np.inf,
                             fresh_process=fresh_process)
    else:
        diffs = check_tflite_parity(path, model, images, boxes, margin=margin, atol=np.inf,
                                    fresh_process=fresh_process)
    normalised = {k: v for k, v in diffs.items() if k.startswith("cropped/")}
    worst_normalised = max(normalised.values()) if normalised else 0.0
    worst_pixels = float(diffs["landmarks"])
    entry = {"max_abs_diff_pixels": worst_pixels,
             "max_abs_diff_normalised": float(worst_normalised),
             "per_output": {k: float(v) for k, v in diffs.items() if k != "num_faces"},
             "tolerance_normalised": float(tolerance),
             "tolerance_pixels": float(tolerance) * crop_side,
             "num_faces": int(diffs.get("num_faces", 0)), "fresh_process": fresh_process}
    if not (worst_normalised <= tolerance and worst_pixels <= tolerance * crop_side):
        raise ParityError(
            f"{name}: max difference {worst_normalised:.3g} (normalised) / "
            f"{worst_pixels:.3g} px exceeds {tolerance:g} / {tolerance * crop_side:.3g} px")
    return entry


# --------------------------------------------------------------------------------------
# Fresh-process runner: python -m common.export_check run --saved-model DIR|--tflite FILE ...
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the fresh-process runner (npz in, npz out)."""
    parser = argparse.ArgumentParser(prog="python -m common.export_check")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an export on inputs.npz")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--saved-model", help="SavedModel directory")
    source.add_argument("--tflite", help=".tflite file")
    run.add_argument("--inputs", required=True,
                     help="npz: images, boxes (SavedModel) and image_<s> crops")
    run.add_argument("--outputs", required=True, help="npz to write")
    args = parser.parse_args(argv)

    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files}
    cropped = {k: v for k, v in arrays.items() if k.startswith("image_")}
    if args.saved_model:
        outputs = run_saved_model(args.saved_model, arrays["images"], arrays["boxes"],
                                  cropped or None)
    else:
        outputs = run_tflite(args.tflite, cropped)
    np.savez(args.outputs, **outputs)
    return 0


def parity_faces(data: str, split: str = "val", count: int = 16
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Reads faces for parity checks: images padded to one size, and their boxes.

    Images of different sizes are padded with black at the bottom and right (their
    boxes stay where they are), so they form one uint8 batch.

    Args:
        data: TFRecord folder.
        split: the split.
        count: number of faces.

    Returns:
        ``(images uint8 [N, H, W, 3], boxes float32 [N, 4])``.
    """
    files = find_shards(data, split) if os.path.isdir(data) else find_shards(data)
    records = tf.data.TFRecordDataset(files).take(count)
    images, boxes = [], []
    for serialized in records:
        face = parse_face(serialized)
        images.append(face["image"].numpy())
        boxes.append(face["box"].numpy())
    if not images:
        raise ValueError(f"split {split!r} of {data!r} holds no faces")
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    batch = np.zeros((len(images), height, width, 3), np.uint8)
    for i, image in enumerate(images):
        batch[i, :image.shape[0], :image.shape[1]] = image
    return batch, np.stack(boxes).astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
