"""Landmark prediction on real-world inputs (folders of photos, videos), for both models.

Three layers:

* :class:`LandmarkPredictor`: one image + face boxes -> landmarks in image pixels,
  from an exported SavedModel (``common.export``) or a Keras model / training run.
* :func:`predict_paths`: files, folders and videos -> one status per file, a JSON
  (JSON lines for videos) per readable file, overlay images/videos and a summary.
* :func:`define_flags` / :func:`main`: the command line shared by
  ``python -m msrrn_tf.predict`` and ``python -m ccnn_tf.predict``.

Batching without replicating images
-----------------------------------
``serving_default`` takes one image per face (``images [N, H, W, 3]``), so a photo with
ten faces would be copied ten times, and ``crop_faces`` turns the whole image into
float32 plus a 6-level mip-map pyramid: 770 MB per copy for an 8000 x 8000 photo.
Instead, each face is cropped on the Python side by ``common.geometry.multiscale_crops``
(the crop ``preprocess_faces`` uses) from its *support region* only: the crop box plus
``2 ** PYRAMID_LEVELS + 2`` pixels, with its top-left corner on a multiple of
``2 ** (PYRAMID_LEVELS - 1)`` and its bottom-right corner on such a multiple or on the
image edge. Every pyramid block of the region is then a block of the full image's
pyramid (same pixels, same odd-edge padding), and every sample the crop reads lies
inside the region or outside the full image, so the crop equals the full-image crop up
to float32 rounding of the shifted coordinates (about 1e-5 px). The crops of many faces
(across files and video frames) are stacked into batches of ``batch_size`` for the bare
model (the export's ``serving_cropped`` signature, or the Keras model) and mapped back
with ``common.geometry.crop_to_image`` using crop boxes computed from the full-image
face boxes, exactly as ``serving_default`` does.

Robustness
----------
``predict_paths`` streams its inputs (a generator over folders, frames read one at a
time) and never stops on a bad file: each file gets exactly one status, ``"ok"``,
``"no_face"`` or ``"error: <reason>"``. Decoding goes by content
(``common.images.load_image``: grey, RGBA, 16-bit, PNG named ``.jpg`` all work);
detection runs on a copy downscaled to ``detect_max_side`` (huge photos), with the
boxes mapped back to full resolution for the landmarks. Memory is bounded: at most
``batch_size`` faces are waiting for the model, and at most ``max_pending_units``
images/frames (each kept only as its overlay canvas, at most ``overlay_max_side``
pixels) or ``max_pending_bytes`` of them are waiting to be written.

Output layout (``output_dir``)::

    landmarks/<name>.json     one per readable image: faces with box, score, landmarks
    landmarks/<name>.jsonl    one per video: a line per frame
    overlays/<name>.jpg       landmarks drawn (images with faces)
    overlays/<name>.mp4       landmarks drawn on every frame (mp4v; MJPG .avi fallback)
    summary.json, summary.csv one row per file: file, status, faces, frames, seconds

``<name>`` is the file's path relative to the input folder (or its file name for a
file given directly) without its extension (``photos/a.jpg`` -> ``landmarks/a.json``);
files of one folder whose names differ only by extension (``a.jpg``, ``a.png``) keep
it as ``a_jpg``, ``a_png`` (:func:`output_stems`), and two inputs still mapping to one
name get ``-2``, ``-3``... in input order. Folders are walked in sorted order, their
sub-folders only with ``recursive``; files with neither an image
(:data:`IMAGE_EXTENSIONS`) nor a video extension are skipped. Every file is written
atomically, and a rerun into the same folder removes the outputs it did not write
(:func:`remove_stale_outputs`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO

import cv2
import numpy as np
import tensorflow as tf

from common import atomic, geometry, model_path
from common import boxes as boxes_lib
from common.boxes import detect_faces
from common.images import load_image
from common.records import DataError
from common.schemes import SCHEMES, LandmarkScheme, scheme_for

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg",
                              ".mpeg", ".wmv", ".flv", ".3gp"})
"""File extensions read as videos (``cv2.VideoCapture``)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib",
                              ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                              ".pnm", ".pfm", ".jp2", ".j2k", ".sr", ".ras", ".exr", ".hdr",
                              ".pic", ".avif"})
"""File extensions read as images (decoded by content, ``common.images.load_image``).
Files in a folder with neither an image nor a video extension are skipped (status
``"skipped"``); a file named directly on the command line is always tried."""

OUTPUT_SUFFIXES = (".json", ".jsonl", ".jpg", ".mp4", ".avi")
"""What predict writes under ``landmarks/`` and ``overlays/`` (and so may remove there)."""

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"

DEFAULT_DETECT_MAX_SIDE = boxes_lib.DETECT_MAX_SIDE
"""Longest side of the copy the detector sees. dlib's HOG detector with ``upsample=1``
finds faces down to about 40 px of that copy (faces of 200 px in an 8000 px photo)
and takes about 1 s per megapixel of it."""

DEFAULT_OVERLAY_MAX_SIDE = 2048
"""Longest side of overlay images and videos (larger inputs are drawn downscaled)."""

DEFAULT_MAX_PENDING_BYTES = 512 * 2**20
"""Flush a partial batch once the waiting overlay canvases and crops hold this much."""

_SUPPORT_ALIGN = 2 ** (geometry.PYRAMID_LEVELS - 1)
_SUPPORT_PAD = 2 ** geometry.PYRAMID_LEVELS + 2
_VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
_BOX_COLOUR = (0, 200, 0)  # RGB
_POINT_COLOUR = (255, 40, 40)
_LINE_COLOUR = (255, 210, 0)
CONFIDENCE_KEY = "confidence"
DEFAULT_FRAMES_FPS = 30.0
"""Frame rate assumed for a folder of numbered frames (times and smoothing)."""


# --------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------


def _input_key(size: int) -> str:
    return f"image_{int(size)}"


def support_region(crop_box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The part of an image that ``crop_faces`` reads for one crop box.

    See the module docstring: cropping the region and shifting the crop box by its
    corner gives the full-image crop.

    Args:
        crop_box: ``(4,)`` crop box (l, t, r, b) in image pixels.
        height: image rows.
        width: image columns.

    Returns:
        ``(x0, y0, x1, y1)`` integer pixel bounds (``image[y0:y1, x0:x1]``), non-empty
        for a crop box that overlaps the image.
    """
    left, top, right, bottom = (float(v) for v in crop_box)

    def bounds(lo: float, hi: float, size: int) -> tuple[int, int]:
        start = math.floor((lo - _SUPPORT_PAD) / _SUPPORT_ALIGN) * _SUPPORT_ALIGN
        stop = math.ceil((hi + _SUPPORT_PAD) / _SUPPORT_ALIGN) * _SUPPORT_ALIGN
        start = min(max(start, 0), max(size - 1, 0) // _SUPPORT_ALIGN * _SUPPORT_ALIGN)
        return start, max(min(stop, size), start + 1)

    x0, x1 = bounds(left, right, width)
    y0, y1 = bounds(top, bottom, height)
    return x0, y0, x1, y1


def check_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Validates face boxes: ``common.geometry.check_face_boxes``, the rules of the
    serving signature (finite, at least ``MIN_BOX_SIDE`` px, mostly inside the image).

    Args:
        boxes: ``[K, 4]`` (l, t, r, b) pixels.
        height: image rows.
        width: image columns.

    Returns:
        float32 ``[K, 4]``.

    Raises:
        ValueError: naming the bad box and the rule it breaks.
    """
    return geometry.check_face_boxes(boxes, height, width)


def _export_margin(export_dir: str | None) -> float | None:
    """The crop margin an export folder records (its report or SavedModel info), or None."""
    if not export_dir:
        return None
    try:
        info = _read_json_file(os.path.join(export_dir, model_path.EXPORT_REPORT))
        for key in ("margin",):
            for record in (info, info.get("config", {}), info.get("signature", {})):
                if isinstance(record, Mapping) and record.get(key) is not None:
                    return float(record[key])
    except (OSError, ValueError, AttributeError):
        pass
    try:
        saved = model_path.resolve_model_path(export_dir)
        if saved.kind == model_path.KIND_SAVED_MODEL:
            from common.export import read_export_info

            return float(read_export_info(saved.path)["margin"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _read_json_file(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _sizes_from_config(values: Mapping[str, Any]) -> list[int] | None:
    for key in ("sizes", "scales"):  # MSRRN: scales
        if values.get(key):
            return [int(s) for s in values[key]]
    if values.get("input_size"):  # CCNN
        return [int(values["input_size"])]
    return None


def _sizes_from_model(model) -> list[int] | None:
    names = [getattr(t, "name", "") for t in (getattr(model, "inputs", None) or [])]
    sizes = [int(n.split("_", 1)[1]) for n in names
             if n.startswith("image_") and n.split("_", 1)[1].isdigit()]
    return sorted(sizes) or None


class LandmarkPredictor:
    """Face boxes -> landmarks in image pixels, batched across faces and images.

    Build it with :meth:`from_path` (a SavedModel export, a ``.keras`` file or a
    training run directory) or :meth:`from_keras`.

    Args:
        run_crops: ``{f"image_{s}": float32 [N, s, s, 3]}`` -> normalised landmarks
            ``[N, L, 2]`` (the bare model).
        sizes: model input sides.
        margin: crop margin of ``preprocess_faces``.
        num_landmarks: ``L``.
        name: model name written into the outputs.
        source: where the model came from (path).
    """

    def __init__(self, run_crops: Callable[[dict[str, np.ndarray]], np.ndarray], *,
                 sizes: Sequence[int], margin: float, num_landmarks: int,
                 name: str = "model", source: str = ""):
        self.sizes = tuple(int(s) for s in sizes)
        if not self.sizes:
            raise ValueError("sizes must not be empty")
        self.margin = float(margin)
        self.num_landmarks = int(num_landmarks)
        self.name = name
        self.source = source
        self._run_crops = run_crops
        sizes_ = self.sizes

        def crop(image: tf.Tensor, crop_box: tf.Tensor) -> dict[str, tf.Tensor]:
            return geometry.multiscale_crops(image[None], crop_box[None], sizes_)

        self._crop = tf.function(crop, input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([4], tf.float32)])

    # ---- construction ----------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str, *, sizes: Sequence[int] | None = None,
                  margin: float | None = None, name: str | None = None) -> LandmarkPredictor:
        """Loads a predictor.

        Args:
            path: anything ``common.model_path.resolve_model_path`` accepts: a run
                directory, its export (new or old layout), a SavedModel folder
                (sizes, margin and ``L`` from its ``export_info.json``), a ``.keras``
                file or a run with checkpoints (``common.evaluation.load_model``;
                sizes and margin from the run's config, or these arguments), or a
                ``.tflite`` file (margin from its export or run, or ``margin``).
            sizes: input sides, overriding the config (Keras models only).
            margin: crop margin, overriding the config (Keras models only).
            name: model name in the outputs (default: the model class).

        Returns:
            The predictor.

        Raises:
            ModelPathError: nothing loadable at ``path`` (a ``FileNotFoundError``
                listing what was looked for).
            ValueError: the margin of a Keras or TFLite model is unknown.
        """
        resolved = model_path.resolve_model_path(path)
        if resolved.kind == model_path.KIND_SAVED_MODEL:
            return cls._from_saved_model(resolved.path, name)
        values = model_path.run_config(resolved.run_dir)
        if margin is None:
            margin = values.get("margin", _export_margin(resolved.export_dir))
        if margin is None:
            raise ValueError(f"the crop margin of {resolved.path} is unknown (no run "
                             "config.json/run.json with 'margin' beside it); pass margin= "
                             "(--margin)")
        if resolved.kind == model_path.KIND_TFLITE:
            return cls._from_tflite(resolved.path, float(margin), name)
        from common.evaluation import load_model  # imports the model packages

        model = load_model(resolved.path)
        sizes = list(sizes) if sizes else _sizes_from_config(values)
        return cls.from_keras(model, sizes=sizes, margin=float(margin), name=name,
                              source=resolved.path)

    @classmethod
    def _from_tflite(cls, path: str, margin: float, name: str | None) -> LandmarkPredictor:
        from common.export import run_tflite, tflite_input_sizes

        sizes = tflite_input_sizes(path)

        def run_crops(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(run_tflite(path, inputs)["landmarks"], np.float32)

        probe = run_crops({_input_key(s): np.zeros((1, s, s, 3), np.float32) for s in sizes})
        return cls(run_crops, sizes=sizes, margin=margin, num_landmarks=probe.shape[1],
                   name=name or os.path.splitext(os.path.basename(path))[0], source=path)

    @classmethod
    def _from_saved_model(cls, path: str, name: str | None) -> LandmarkPredictor:
        from common.export import CROPPED_SIGNATURE, read_export_info

        info = read_export_info(path)
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures[CROPPED_SIGNATURE]
        output_key = info.get("output_key", "landmarks")

        def run_crops(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = signature(**{k: tf.constant(v, tf.float32) for k, v in inputs.items()})
            return _landmarks_and_confidence(outputs, output_key)

        run_crops.loaded = loaded  # keeps the SavedModel's resources alive
        default_name = str(info.get("model_class", "")).rsplit(".", 1)[-1]
        return cls(run_crops, sizes=info["sizes"], margin=info["margin"],
                   num_landmarks=info["num_landmarks"],
                   name=name or default_name or os.path.basename(os.path.abspath(path)),
                   source=os.path.abspath(path))

    @classmethod
    def from_keras(cls, model, *, margin: float, sizes: Sequence[int] | None = None,
                   name: str | None = None, output_key: str = "landmarks",
                   source: str = "") -> LandmarkPredictor:
        """A predictor running a Keras model in this process.

        Args:
            model: ``{f"image_{s}"}`` -> ``{"landmarks": [N, L, 2], ...}`` (or a tensor).
            margin: crop margin the model was trained with.
            sizes: input sides; default from the model's ``image_<s>`` inputs.
            name: model name in the outputs (default: the model class).
            output_key: the output with the final normalised landmarks.
            source: where the model came from.

        Returns:
            The predictor.
        """
        sizes = list(sizes) if sizes else _sizes_from_model(model)
        if not sizes:
            raise ValueError("cannot infer the input sizes of this model; pass sizes=")
        call = tf.function(lambda inputs: model(inputs, training=False),
                           reduce_retracing=True)

        def run_crops(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = call({k: tf.constant(v, tf.float32) for k, v in inputs.items()})
            return _landmarks_and_confidence(outputs, output_key)

        probe = run_crops({_input_key(s): np.zeros((1, s, s, 3), np.float32) for s in sizes})
        return cls(run_crops, sizes=sizes, margin=margin,
                   num_landmarks=probe["landmarks"].shape[1],
                   name=name or type(model).__name__, source=source)

    # ---- prediction ------------------------------------------------------------------

    def crop_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``crop_boxes_from_face_boxes`` with this model's margin: float32 ``[K, 4]``."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return geometry.crop_boxes_from_face_boxes(boxes, self.margin).numpy()

    def crop_face(self, image: np.ndarray, crop_box: np.ndarray) -> dict[str, np.ndarray]:
        """Crops one face from its support region (module docstring).

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            crop_box: ``(4,)`` crop box from :meth:`crop_boxes`.

        Returns:
            ``{f"image_{s}": float32 [1, s, s, 3]}``.
        """
        height, width = image.shape[:2]
        x0, y0, x1, y1 = support_region(crop_box, height, width)
        region = np.ascontiguousarray(image[y0:y1, x0:x1])
        local = np.asarray(crop_box, np.float32) - np.array([x0, y0, x0, y0], np.float32)
        crops = self._crop(tf.constant(region, tf.uint8), tf.constant(local, tf.float32))
        return {k: v.numpy() for k, v in crops.items()}

    def run_crops(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The bare model on a batch of crops: normalised landmarks ``[N, L, 2]``."""
        return self.run_crops_with_confidence(inputs)[0]

    def run_crops_with_confidence(self, inputs: Mapping[str, np.ndarray]
                                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """The bare model on a batch of crops: normalised landmarks ``[N, L, 2]`` and
        the per-face confidence ``[N]`` in [0, 1] (``common.confidence``), or ``None``
        for a model without one (older exports)."""
        outputs = self._run_crops(dict(inputs))
        if not isinstance(outputs, Mapping):
            return np.asarray(outputs, np.float32), None
        confidence = outputs.get(CONFIDENCE_KEY)
        return (np.asarray(outputs["landmarks"], np.float32),
                None if confidence is None else np.asarray(confidence, np.float32))

    @staticmethod
    def to_image(normalised: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
        """``crop_to_image``: normalised ``[N, L, 2]`` -> image pixels (float32)."""
        return geometry.crop_to_image(np.asarray(normalised, np.float32),
                                      np.asarray(crop_boxes, np.float32)).numpy()

    def predict(self, image: np.ndarray, boxes: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Landmarks of the faces in one image.

        Equals the export's ``serving_default`` on the image repeated per box (up to
        float rounding), without copying the image.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            boxes: ``[K, 4]`` face boxes (l, t, r, b) pixels.
            batch_size: faces per model call.

        Returns:
            float32 ``[K, L, 2]`` (x, y) image pixels.

        Raises:
            ValueError: a bad image or box.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} "
                             f"{image.shape}")
        boxes = check_boxes(boxes, *image.shape[:2])
        if not len(boxes):
            return np.zeros((0, self.num_landmarks, 2), np.float32)
        crop_boxes = self.crop_boxes(boxes)
        results = []
        for start in range(0, len(boxes), batch_size):
            crops = [self.crop_face(image, c) for c in crop_boxes[start:start + batch_size]]
            batch = {k: np.concatenate([c[k] for c in crops]) for k in crops[0]}
            results.append(self.run_crops(batch))
        return self.to_image(np.concatenate(results), crop_boxes)


def _landmarks_and_confidence(outputs: Any, output_key: str) -> dict[str, np.ndarray]:
    """``{"landmarks"}`` (and ``"confidence"`` when the model has one) as NumPy."""
    if not isinstance(outputs, Mapping):
        return {"landmarks": np.asarray(outputs, np.float32)}
    result = {"landmarks": np.asarray(outputs[output_key], np.float32)}
    if CONFIDENCE_KEY in outputs:
        result[CONFIDENCE_KEY] = np.asarray(outputs[CONFIDENCE_KEY], np.float32)
    return result


# --------------------------------------------------------------------------------------
# Detection, boxes files, drawing
# --------------------------------------------------------------------------------------

Detection = tuple[np.ndarray, float | None]
Finder = Callable[[np.ndarray], Sequence[Detection]]


def load_boxes_json(path: str) -> dict[str, Any]:
    """Reads a boxes file for ``predict_paths(boxes=...)``.

    Format: a JSON object from file to boxes. A key is the file as given, its
    absolute path, its path relative to the input folder, or its file name. A value
    is a list of boxes, each ``[l, t, r, b]`` (pixels, pixel centres at integers) or
    ``{"box": [l, t, r, b], "score": s}``; for a video, either such a list (used on
    every frame) or ``{"<frame index>": [boxes]}`` (frames not listed have no face).
    A listed file is never run through the detector; ``[]`` means "no face".

    Raises:
        DataError: the file is not such a JSON object.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(path, f"cannot read boxes JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(path, "boxes JSON must be an object {file: [[l, t, r, b], ...]}")
    return data


def _parse_boxes(value: Any) -> list[Detection]:
    if not isinstance(value, list):
        raise TypeError(f"boxes must be a list, got {type(value).__name__}")
    found = []
    for item in value:
        score = None
        if isinstance(item, Mapping):
            score = item.get("score")
            item = item.get("box")
        box = np.asarray(item, np.float32)
        if box.shape != (4,):
            raise ValueError(f"a box must be [l, t, r, b], got {item!r}")
        found.append((box, None if score is None else float(score)))
    return found


def _segments(scheme: LandmarkScheme) -> list[tuple[list[int], bool]]:
    """Consecutive points of one feature (names ``<feature>_<i>``): (indices, closed)."""
    groups: list[tuple[str, list[int]]] = []
    for index, point in enumerate(scheme.point_names):
        feature = point.rsplit("_", 1)[0] if point.rsplit("_", 1)[-1].isdigit() else point
        if groups and groups[-1][0] == feature:
            groups[-1][1].append(index)
        else:
            groups.append((feature, [index]))
    return [(idx, "eye" in feature or "lip" in feature) for feature, idx in groups
            if len(idx) > 1]


def draw_landmarks(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
                   scheme: LandmarkScheme | None = None, scale: float = 1.0) -> np.ndarray:
    """Draws face boxes and landmarks (anti-aliased, sub-pixel) on a copy of ``image``.

    Args:
        image: uint8 ``[h, w, 3]`` RGB canvas (possibly a downscaled copy).
        boxes: ``[K, 4]`` boxes in pixels of the original image.
        landmarks: ``[K, L, 2]`` points in pixels of the original image.
        scheme: draws the contours of the scheme's features (68 points) when given.
        scale: canvas size over original size (coordinates map as
            ``(x + 0.5) * scale - 0.5``).

    Returns:
        uint8 ``[h, w, 3]`` RGB.
    """
    canvas = np.ascontiguousarray(image, np.uint8).copy()
    shift = 4
    unit = 1 << shift

    def fixed(points: np.ndarray) -> np.ndarray:
        points = (np.asarray(points, np.float64) + 0.5) * scale - 0.5
        return np.round(np.clip(points, -1e5, 1e5) * unit).astype(np.int32)

    segments = _segments(scheme) if scheme is not None else []
    for box, points in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(landmarks)):
        side = max(float(box[2] - box[0]), float(box[3] - box[1])) * scale
        thickness = max(1, round(side / 150))
        radius = max(1.0, side / 80)
        corners = fixed(box.reshape(2, 2))
        cv2.rectangle(canvas, tuple(int(v) for v in corners[0]), tuple(int(v) for v in corners[1]),
                      _BOX_COLOUR, thickness, cv2.LINE_AA, shift)
        pts = fixed(points)
        if len(points) == (scheme.num_points if scheme else -1):
            for indices, closed in segments:
                cv2.polylines(canvas, [pts[indices].reshape(-1, 1, 2)], closed, _LINE_COLOUR,
                              thickness, cv2.LINE_AA, shift)
        for x, y in pts:
            cv2.circle(canvas, (int(x), int(y)), round(radius * unit), _POINT_COLOUR, -1,
                       cv2.LINE_AA, shift)
    return canvas


def _downscaled(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), size[0] / width


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class FileResult:
    """The outcome of one input file (a row of the summary).

    Attributes:
        file: the path as found.
        status: ``"ok"``, ``"no_face"`` or ``"error: <reason>"``.
        faces: faces found (over all frames of a video).
        seconds: time spent on the file: decoding, detection, cropping, writing, and
            its share of the batched model calls.
        kind: ``"image"`` or ``"video"``.
        frames: frames read (videos).
        landmarks: the JSON / JSON lines file written, or ``""``.
        overlay: the overlay image / video written, or ``""``.
    """

    file: str
    status: str
    faces: int = 0
    seconds: float = 0.0
    kind: str = "image"
    frames: int = 0
    landmarks: str = ""
    overlay: str = ""

    @property
    def category(self) -> str:
        """``"ok"``, ``"no_face"``, ``"error"`` or ``"skipped"``."""
        return STATUS_ERROR if self.status.startswith(STATUS_ERROR) else self.status


@dataclasses.dataclass
class Summary:
    """What :func:`predict_paths` did.

    Attributes:
        results: one row per input file, in input order.
        seconds: wall time.
        model: the model name.
        output_dir: where everything was written.
    """

    results: list[FileResult]
    seconds: float
    model: str = ""
    output_dir: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Files per status category (``ok``, ``no_face``, ``error``, ``skipped``)."""
        counts = {STATUS_OK: 0, STATUS_NO_FACE: 0, STATUS_ERROR: 0, STATUS_SKIPPED: 0}
        for result in self.results:
            counts[result.category] += 1
        return counts

    @property
    def num_processed(self) -> int:
        """Files read (every status but ``skipped``)."""
        return sum(r.category != STATUS_SKIPPED for r in self.results)

    @property
    def num_faces(self) -> int:
        return sum(r.faces for r in self.results)

    @property
    def num_frames(self) -> int:
        return sum(r.frames for r in self.results)

    def to_json(self) -> dict[str, Any]:
        elapsed = max(self.seconds, 1e-9)
        return {"model": self.model, "files": len(self.results), "counts": self.counts,
                "faces": self.num_faces, "frames": self.num_frames,
                "seconds": round(self.seconds, 3),
                "files_per_second": round(len(self.results) / elapsed, 3),
                "faces_per_second": round(self.num_faces / elapsed, 3),
                "results": [dataclasses.asdict(r) for r in self.results]}

    def format(self, max_errors: int = 20) -> str:
        """A short human-readable summary (what the command line prints)."""
        counts = self.counts
        elapsed = max(self.seconds, 1e-9)
        lines = [(f"{len(self.results)} files in {self.seconds:.1f} s "
                  f"({len(self.results) / elapsed:.2f} files/s): {counts[STATUS_OK]} ok, "
                  f"{counts[STATUS_NO_FACE]} no face, {counts[STATUS_ERROR]} errors"
                  + (f", {counts[STATUS_SKIPPED]} skipped (not images or videos)"
                     if counts[STATUS_SKIPPED] else "")),
                 f"{self.num_faces} faces ({self.num_faces / elapsed:.2f} faces/s)"
                 + (f", {self.num_frames} video frames" if self.num_frames else "")]
        errors = [r for r in self.results if r.category == STATUS_ERROR]
        for result in errors[:max_errors]:
            lines.append(f"  {result.file}: {result.status}")
        if len(errors) > max_errors:
            lines.append(f"  ... and {len(errors) - max_errors} more errors")
        if self.output_dir:
            lines.append(f"results in {self.output_dir} (summary.json, summary.csv)")
        return "\n".join(lines)

    def failure(self, allow_empty: bool = False) -> str:
        """Why the run as a whole failed (one line), or ``""``.

        Args:
            allow_empty: accept a run that read no file.

        Returns:
            ``"no image or video to process ..."`` when nothing was read (unless
            ``allow_empty``), ``"every file failed ..."`` when no file succeeded.
        """
        processed = self.num_processed
        if not processed:
            if allow_empty:
                return ""
            skipped = self.counts[STATUS_SKIPPED]
            return ("no image or video to process" + (f" ({skipped} other files skipped)"
                                                      if skipped else ""))
        if self.counts[STATUS_ERROR] == processed:
            first = next(r for r in self.results if r.category == STATUS_ERROR)
            return (f"every file failed ({processed}; first: {first.file}: {first.status}); "
                    "see summary.csv")
        return ""


def _write_summary(summary: Summary, output_dir: str) -> None:
    atomic.write_bytes(os.path.join(output_dir, "summary.json"),
                  json.dumps(summary.to_json(), indent=1) + "\n")
    text = io.StringIO()
    fields = [f.name for f in dataclasses.fields(FileResult)]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for result in summary.results:
        row = dataclasses.asdict(result)
        row["seconds"] = f"{result.seconds:.4f}"
        writer.writerow(row)
    atomic.write_bytes(os.path.join(output_dir, "summary.csv"), text.getvalue())


class _Progress:
    """Files/s and faces/s on stderr, redrawn in place on a terminal."""

    def __init__(self, stream: TextIO | None, interval: float = 1.0):
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else 10.0
        self.start = time.monotonic()
        self._last = self.start
        self.files = self.faces = self.frames = self.errors = 0

    def update(self, files: int = 0, faces: int = 0, frames: int = 0, errors: int = 0) -> None:
        self.files += files
        self.faces += faces
        self.frames += frames
        self.errors += errors
        now = time.monotonic()
        if self.stream is not None and now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        text = (f"predict: {self.files} files ({self.files / elapsed:.2f} files/s), "
                f"{self.faces} faces ({self.faces / elapsed:.2f} faces/s)"
                + (f", {self.frames} frames" if self.frames else "")
                + f", {self.errors} errors, {elapsed:.0f} s")
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------
# The streaming pipeline
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Unit:
    """One image or video frame whose faces go through the model.

    ``canvas`` is the (downscaled) overlay base; the full image is dropped once its
    faces are cropped. ``on_done`` runs when every face has landmarks, in
    submission order.
    """

    on_done: Callable[[_Unit], None]
    boxes: np.ndarray
    scores: list[float | None]
    sources: list[str]
    landmarks: np.ndarray
    canvas: np.ndarray | None = None
    canvas_scale: float = 1.0
    image_size: tuple[int, int] = (0, 0)
    frame: int = -1
    remaining: int = 0
    seconds: float = 0.0
    error: str = ""
    confidence: list[float | None] | None = None
    track_ids: list[int] | None = None
    smoothed: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.canvas is None else int(self.canvas.nbytes)

    def faces_json(self) -> list[dict[str, Any]]:
        faces = []
        for k, (box, score, source, points) in enumerate(zip(
                self.boxes, self.scores, self.sources, self.landmarks)):
            conf = self.confidence[k] if self.confidence else None
            face = {"box": [round(float(v), 3) for v in box],
                    "score": None if score is None else round(float(score), 4),
                    "box_source": source,
                    "landmarks": _points_json(points),
                    "confidence": None if conf is None else round(float(conf), 4)}
            if self.track_ids is not None:
                face["track_id"] = int(self.track_ids[k])
            if self.smoothed is not None:
                face["landmarks_smoothed"] = _points_json(self.smoothed[k])
            faces.append(face)
        return faces


def _points_json(points: np.ndarray) -> list[list[float]]:
    # 4 decimals: the JSON equals the Python API to 5e-5 px.
    return [[round(float(x), 4), round(float(y), 4)] for x, y in points]


class _BatchQueue:
    """Faces waiting for the model, and the units waiting to be finished in order."""

    def __init__(self, predictor: LandmarkPredictor, batch_size: int, max_units: int,
                 max_bytes: int):
        self.predictor = predictor
        self.batch_size = int(batch_size)
        self.max_units = int(max_units)
        self.max_bytes = int(max_bytes)
        self.units: collections.deque[_Unit] = collections.deque()
        self.faces: list[tuple[_Unit, int]] = []
        self.crops: list[dict[str, np.ndarray]] = []
        self.crop_boxes: list[np.ndarray] = []
        self.unit_bytes = 0
        self.crop_bytes = 0

    def submit(self, unit: _Unit, image: np.ndarray | None) -> None:
        """Queues ``unit`` and crops its faces from ``image`` (released afterwards)."""
        start = time.monotonic()
        self.units.append(unit)
        self.unit_bytes += unit.nbytes
        unit.remaining = len(unit.boxes)
        if unit.remaining:
            try:
                crop_boxes = self.predictor.crop_boxes(unit.boxes)
                for k, crop_box in enumerate(crop_boxes):
                    crops = self.predictor.crop_face(image, crop_box)
                    self.faces.append((unit, k))
                    self.crops.append(crops)
                    self.crop_boxes.append(crop_box)
                    self.crop_bytes += sum(int(c.nbytes) for c in crops.values())
                    if len(self.faces) >= self.batch_size:
                        unit.seconds += time.monotonic() - start
                        self.run_batch()
                        start = time.monotonic()
            except Exception as error:  # noqa: BLE001  (one bad face must not stop the run)
                self._fail(unit, f"cropping failed ({type(error).__name__}: {error})")
        unit.seconds += time.monotonic() - start
        if (len(self.units) > self.max_units
                or self.unit_bytes + self.crop_bytes > self.max_bytes):
            self.run_batch()
        self.finish_ready()

    def _fail(self, unit: _Unit, reason: str) -> None:
        unit.error = unit.error or reason
        keep = [i for i, (owner, _) in enumerate(self.faces) if owner is not unit]
        self.faces = [self.faces[i] for i in keep]
        self.crops = [self.crops[i] for i in keep]
        self.crop_boxes = [self.crop_boxes[i] for i in keep]
        self.crop_bytes = sum(sum(int(c.nbytes) for c in crops.values()) for crops in self.crops)
        unit.remaining = 0

    def run_batch(self) -> None:
        """Runs the model on the waiting faces (if any) and finishes ready units."""
        if self.faces:
            start = time.monotonic()
            faces, crops, crop_boxes = self.faces, self.crops, self.crop_boxes
            self.faces, self.crops, self.crop_boxes, self.crop_bytes = [], [], [], 0
            try:
                batch = {k: np.concatenate([c[k] for c in crops]) for k in crops[0]}
                normalised, confidence = self.predictor.run_crops_with_confidence(batch)
                points = self.predictor.to_image(normalised, np.stack(crop_boxes))
                error = ""
            except Exception as e:  # noqa: BLE001  (reported on the files of the batch)
                points, error = None, f"model failed ({type(e).__name__}: {e})"
            share = (time.monotonic() - start) / len(faces)
            for i, (unit, k) in enumerate(faces):
                unit.seconds += share
                if error:
                    unit.error = unit.error or error
                else:
                    unit.landmarks[k] = points[i]
                    if confidence is not None:
                        if unit.confidence is None:
                            unit.confidence = [None] * len(unit.boxes)
                        unit.confidence[k] = float(confidence[i])
                unit.remaining -= 1
        self.finish_ready()

    def finish_ready(self) -> None:
        while self.units and self.units[0].remaining <= 0:
            unit = self.units.popleft()
            self.unit_bytes -= unit.nbytes
            unit.on_done(unit)
            unit.canvas = None

    def flush(self) -> None:
        while self.faces or self.units:
            self.run_batch()


class _VideoOutput:
    """The JSON lines and overlay video of one video, written to temporary files."""

    def __init__(self, landmarks_path: str, overlay_stem: str | None, fps: float):
        self.landmarks_path = landmarks_path
        os.makedirs(os.path.dirname(landmarks_path), exist_ok=True)
        handle, self.landmarks_tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(landmarks_path)}.tmp-",
            dir=os.path.dirname(landmarks_path))
        self.lines = os.fdopen(handle, "w")
        self.overlay_stem = overlay_stem
        self.overlay_path = ""
        self.overlay_tmp = ""
        self.writer = None
        self.fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0

    def write(self, frame: int, faces: list[dict[str, Any]], canvas: np.ndarray | None) -> None:
        self.lines.write(json.dumps({"frame": frame, "time": round(frame / self.fps, 4),
                                     "faces": faces}) + "\n")
        if canvas is None or self.overlay_stem is None:
            return
        if self.writer is None:
            self._open(canvas.shape[1], canvas.shape[0])
        if self.writer is not None:
            self.writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))

    def _open(self, width: int, height: int) -> None:
        directory = os.path.dirname(self.overlay_stem)
        os.makedirs(directory, exist_ok=True)
        for codec, extension in _VIDEO_CODECS:
            tmp = os.path.join(directory, f".{os.path.basename(self.overlay_stem)}.tmp-"
                                          f"{uuid.uuid4().hex}{extension}")
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), self.fps,
                                     (width, height))
            if writer.isOpened():
                self.writer, self.overlay_tmp = writer, tmp
                self.overlay_path = self.overlay_stem + extension
                return
            writer.release()
            if os.path.exists(tmp):
                os.remove(tmp)
        raise RuntimeError("no video codec works (tried mp4v/.mp4 and MJPG/.avi)")

    def commit(self) -> None:
        self.lines.close()
        os.replace(self.landmarks_tmp, self.landmarks_path)
        if self.writer is not None:
            self.writer.release()
            os.replace(self.overlay_tmp, self.overlay_path)
            self.writer = None

    def abort(self) -> None:
        if not self.lines.closed:
            self.lines.close()
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        for tmp in (self.landmarks_tmp, self.overlay_tmp):
            if tmp and os.path.exists(tmp):
                os.remove(tmp)


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """Output names (no extension) of the files of one folder.

    ``a.jpg`` -> ``a`` (``landmarks/a.json``, ``overlays/a.jpg``); files whose stems
    collide within the folder (``a.jpg`` and ``a.png``, or ``a.JPG`` and ``a.jpg``)
    all keep their extension as ``a_jpg``, ``a_png``, whatever else is in the folder.

    Args:
        names: file names of one folder.

    Returns:
        ``{name: stem}``.
    """
    by_stem = collections.Counter(os.path.splitext(n)[0].lower() for n in names)
    stems = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        stems[name] = f"{stem}_{ext[1:]}" if by_stem[stem.lower()] > 1 and ext else stem
    return stems


def iter_input_files(inputs: Iterable[str], exclude: str | None = None,
                     recursive: bool = False) -> Iterator[tuple[str, str, str]]:
    """Walks files and folders lazily, in sorted order.

    Args:
        inputs: files, folders (hidden entries skipped) and videos.
        exclude: a folder whose contents are skipped (the output folder).
        recursive: also walk the sub-folders of folders.

    Yields:
        ``(path, name, stem)``: ``name`` is the path relative to its input folder (or
        the file name of a file given directly), ``stem`` the output name without
        extension (:func:`output_stems`), e.g. ``("in/sub/a.jpg", "sub/a.jpg",
        "sub/a")``.
    """
    exclude = os.path.realpath(exclude) if exclude else None
    for item in inputs:
        item = os.fspath(item)
        if not os.path.isdir(item):
            name = os.path.basename(item.rstrip("/\\")) or item
            yield item, name, os.path.splitext(name)[0] or name
            continue
        for root, dirs, files in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(root, d)) != exclude
                             ) if recursive else []
            names = sorted(n for n in files if not n.startswith("."))
            stems = output_stems(names)
            for name in names:
                path = os.path.join(root, name)
                relative = os.path.relpath(path, item)
                yield path, relative, os.path.join(os.path.dirname(relative), stems[name])


def remove_stale_outputs(output_dir: str, keep: Iterable[str]) -> list[str]:
    """Removes what an earlier run left under ``landmarks/`` and ``overlays/``.

    Only files predict writes (:data:`OUTPUT_SUFFIXES`) are removed, and folders
    left empty; ``summary.*`` and anything else in ``output_dir`` stay.

    Args:
        output_dir: the output folder.
        keep: the files this run wrote.

    Returns:
        The removed files.
    """
    keep = {os.path.abspath(p) for p in keep if p}
    removed = []
    for sub in ("landmarks", "overlays"):
        top = os.path.join(output_dir, sub)
        for root, _, files in os.walk(top, topdown=False):
            for name in files:
                path = os.path.abspath(os.path.join(root, name))
                if name.endswith(OUTPUT_SUFFIXES) and path not in keep:
                    os.remove(path)
                    removed.append(path)
            if root != top and not os.listdir(root):
                os.rmdir(root)
    return removed


_FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_FRAME_NUMBER = re.compile(r"(\d+)\D*$")


def numbered_frames(folder: str) -> list[str] | None:
    """The frames of a folder of numbered frames, in frame order, else ``None``.

    A folder is a frame sequence when it has no sub-folders and at least two visible
    files, all images (by extension) whose names end in a number (``000001.jpg``,
    ``frame_12.png``), each number once; they are ordered by that number.

    Args:
        folder: a path (anything but a folder gives ``None``).
    """
    if not os.path.isdir(folder):
        return None
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    if len(entries) < 2 or any(e.is_dir() for e in entries):
        return None
    numbered = []
    for entry in entries:
        stem, extension = os.path.splitext(entry.name)
        match = _FRAME_NUMBER.search(stem)
        if extension.lower() not in _FRAME_EXTENSIONS or not match:
            return None
        numbered.append((int(match.group(1)), entry.path))
    if len({n for n, _ in numbered}) != len(numbered):
        return None
    return [path for _, path in sorted(numbered)]


class _Run:
    """State of one :func:`predict_paths` call."""

    def __init__(self, predictor: LandmarkPredictor, output_dir: str, *, batch_size: int,
                 finder: Finder | None, upsample: int, overlay: bool,
                 boxes: Mapping[str, Any] | None, scheme: LandmarkScheme | None,
                 detect_max_side: int | None, overlay_max_side: int | None,
                 max_frames: int | None, max_pending_units: int, max_pending_bytes: int,
                 progress: _Progress, tracking: Any = None, smoothing: Any = None,
                 smoothing_centre: Any = None, frames_fps: float = DEFAULT_FRAMES_FPS,
                 recursive: bool = False):
        self.tracking = tracking
        self.smoothing = smoothing
        self.smoothing_centre = smoothing_centre
        self.frames_fps = frames_fps
        self.predictor = predictor
        self.recursive = recursive
        self.output_dir = output_dir
        self.overlay = overlay
        self.boxes = dict(boxes or {})
        self.scheme = scheme
        self.detect_max_side = detect_max_side
        self.overlay_max_side = overlay_max_side
        self.max_frames = max_frames
        self.upsample = upsample
        self._finder = finder
        self.progress = progress
        self.queue = _BatchQueue(predictor, batch_size, max_pending_units, max_pending_bytes)
        self.results: list[FileResult] = []
        self.used_names: set[str] = set()
        self.open_videos: list[_VideoOutput] = []

    @property
    def finder(self) -> Finder:
        if self._finder is None:
            from common.boxes import DlibBoxFinder

            self._finder = DlibBoxFinder(self.upsample)
        return self._finder

    # ---- helpers ---------------------------------------------------------------------

    def _unique(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``... when two inputs map to one name."""
        stem = stem.replace("\\", "/").lstrip("/")
        candidate, n = stem, 1
        while candidate.lower() in self.used_names:
            n += 1
            candidate = f"{stem}-{n}"
        self.used_names.add(candidate.lower())
        return candidate

    def _given_boxes(self, path: str, name: str) -> Any:
        for key in (path, os.path.abspath(path), name, os.path.basename(path)):
            if key in self.boxes:
                return self.boxes[key]
        return None

    def _faces(self, image: np.ndarray, given: Any) -> tuple[np.ndarray, list, list[str]]:
        if given is None:
            found, source = detect_faces(self.finder, image, self.detect_max_side), "dlib"
        else:
            found, source = _parse_boxes(given), "given"
        boxes = check_boxes(np.array([b for b, _ in found], np.float32).reshape(-1, 4),
                            *image.shape[:2])
        return boxes, [s for _, s in found], [source] * len(found)

    def _unit(self, image: np.ndarray, boxes: np.ndarray, scores: list, sources: list[str],
              on_done: Callable[[_Unit], None], frame: int = -1, canvas: bool = True) -> _Unit:
        canvas, scale = (_downscaled(image, self.overlay_max_side) if self.overlay and canvas
                         else (None, 1.0))
        if canvas is image:
            canvas = image.copy()
        return _Unit(on_done, boxes, scores, sources,
                     np.zeros((len(boxes), self.predictor.num_landmarks, 2), np.float32),
                     canvas, scale, image.shape[:2], frame)

    def _record(self, result: FileResult) -> None:
        self.results.append(result)
        self.progress.update(files=1, faces=result.faces,
                             errors=int(result.category == STATUS_ERROR))

    def _draw(self, unit: _Unit) -> np.ndarray:
        return draw_landmarks(unit.canvas, unit.boxes, unit.landmarks, self.scheme,
                              unit.canvas_scale)

    # ---- images ----------------------------------------------------------------------

    def image(self, path: str, name: str, stem: str) -> None:
        start = time.monotonic()
        try:
            image = load_image(path)
            boxes, scores, sources = self._faces(image, self._given_boxes(path, name))
        except DataError as error:
            self._record(FileResult(path, f"{STATUS_ERROR}: {error.reason}",
                                    seconds=time.monotonic() - start))
            return
        except Exception as error:  # noqa: BLE001  (never stop on one file)
            self._record(FileResult(path, f"{STATUS_ERROR}: {type(error).__name__}: {error}",
                                    seconds=time.monotonic() - start))
            return
        stem = self._unique(stem)
        unit = self._unit(image, boxes, scores, sources,
                          lambda u: self._finish_image(u, path, stem), canvas=len(boxes) > 0)
        unit.seconds = time.monotonic() - start
        self.queue.submit(unit, image)

    def _finish_image(self, unit: _Unit, path: str, name: str) -> None:
        start = time.monotonic()
        result = FileResult(path, STATUS_OK if len(unit.boxes) else STATUS_NO_FACE,
                            faces=len(unit.boxes))
        try:
            if unit.error:
                raise RuntimeError(unit.error)
            result.landmarks = os.path.join(self.output_dir, "landmarks", name + ".json")
            height, width = unit.image_size
            record = {"file": path, "status": result.status,
                      "image_size": {"width": width, "height": height},
                      "model": self.predictor.name,
                      "scheme": self.scheme.name if self.scheme else None,
                      "faces": unit.faces_json()}
            atomic.write_bytes(result.landmarks, json.dumps(record) + "\n")
            if self.overlay and len(unit.boxes):
                result.overlay = os.path.join(self.output_dir, "overlays", name + ".jpg")
                ok, data = cv2.imencode(".jpg", self._draw(unit)[:, :, ::-1],
                                        [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("could not encode the overlay JPEG")
                atomic.write_bytes(result.overlay, data.tobytes())
        except Exception as error:  # noqa: BLE001
            reason = unit.error or f"{type(error).__name__}: {error}"
            result = FileResult(path, f"{STATUS_ERROR}: {reason}", landmarks="", overlay="")
        result.seconds = unit.seconds + time.monotonic() - start
        self._record(result)

    # ---- videos ----------------------------------------------------------------------

    def video(self, path: str, name: str, stem: str) -> None:
        start = time.monotonic()
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            capture.release()
            reason = "file not found" if not os.path.exists(path) else "cannot open video"
            self._record(FileResult(path, f"{STATUS_ERROR}: {reason}", kind="video",
                                    seconds=time.monotonic() - start))
            return

        def read() -> np.ndarray | None:
            ok, frame = capture.read()
            return np.ascontiguousarray(frame[:, :, ::-1]) if ok else None

        try:
            self._sequence(path, name, stem, read, capture.get(cv2.CAP_PROP_FPS), start)
        finally:
            capture.release()

    def frames_folder(self, folder: str, name: str, stem: str, files: Sequence[str]) -> None:
        """A folder of numbered frames (:func:`numbered_frames`), read as one video."""
        frames = iter(files)

        def read() -> np.ndarray | None:
            path = next(frames, None)
            return None if path is None else load_image(path)

        self._sequence(folder, name, stem, read, self.frames_fps, time.monotonic())

    def _sequence(self, path: str, name: str, stem: str,
                  read: Callable[[], np.ndarray | None],
                  fps: float, start: float) -> None:
        given = self._given_boxes(path, name)
        stem = self._unique(stem)
        output = _VideoOutput(os.path.join(self.output_dir, "landmarks", stem + ".jsonl"),
                              os.path.join(self.output_dir, "overlays", stem)
                              if self.overlay else None, fps)
        self.open_videos.append(output)
        state = {"frames": 0, "faces": 0, "seconds": time.monotonic() - start, "error": "",
                 "tracker": None, "smoother": None, "fps": output.fps}
        if self.tracking is not None and given is None:
            from common import smoothing, tracking

            state["tracker"] = tracking.FaceTracker(self.tracking)
            if self.smoothing is not None:
                state["smoother"] = smoothing.TrackSmoother(self.smoothing, self.scheme,
                                                            self.smoothing_centre)
            print(f"{path}: tracking faces (detector on the first frame, every "
                  f"{self.tracking.detect_every} frames and below confidence "
                  f"{self.tracking.min_confidence:g}; --notrack to detect every frame), "
                  + (f"One-Euro smoothing {self.smoothing} (centroid: "
                     f"{self.smoothing_centre})" if self.smoothing else
                     "no smoothing"), file=sys.stderr, flush=True)
        tracker = state["tracker"]

        def detect(image: np.ndarray) -> list[Detection]:
            return detect_faces(self.finder, image, self.detect_max_side)

        index = 0
        while self.max_frames is None or index < self.max_frames:
            frame_start = time.monotonic()
            try:
                image = read()
            except Exception as error:  # noqa: BLE001  (an unreadable frame of a folder)
                state["error"] = state["error"] or f"frame {index}: {error}"
                break
            if image is None:
                break
            track_ids = None
            try:
                if tracker is not None:
                    plan = tracker.plan(index, image, detect)
                    boxes = check_boxes(plan.boxes, *image.shape[:2])
                    scores, sources, track_ids = plan.scores, plan.sources, plan.track_ids
                else:
                    frame_given = given
                    if isinstance(given, Mapping):
                        frame_given = given.get(str(index), [])
                    boxes, scores, sources = self._faces(image, frame_given)
            except Exception as error:  # noqa: BLE001
                state["error"] = state["error"] or f"frame {index}: {error}"
                boxes, scores, sources = np.zeros((0, 4), np.float32), [], []
                track_ids = [] if tracker is not None else None
            unit = self._unit(image, boxes, scores, sources,
                              lambda u: self._finish_frame(u, output, state), index)
            unit.track_ids = track_ids
            unit.seconds = time.monotonic() - frame_start
            self.queue.submit(unit, image)
            if tracker is not None:
                self.queue.run_batch()  # this frame's landmarks place the next one's boxes
            index += 1
        if tracker is not None:
            print(f"{path}: detector ran on {tracker.detector_calls} of {tracker.frames} "
                  f"frames ({tracker.detector_calls_saved} calls saved)", file=sys.stderr,
                  flush=True)
        end = _Unit(lambda u: self._finish_video(path, output, state),
                    np.zeros((0, 4), np.float32), [], [], np.zeros((0, 0, 2), np.float32))
        self.queue.submit(end, None)

    def _finish_frame(self, unit: _Unit, output: _VideoOutput, state: dict) -> None:
        start = time.monotonic()
        state["frames"] += 1
        tracker, smoother = state["tracker"], state["smoother"]
        if unit.error:
            state["error"] = state["error"] or f"frame {unit.frame}: {unit.error}"
            faces = []
            if tracker is not None:
                tracker.reset()
        else:
            if tracker is not None:
                confidence = unit.confidence
                if confidence is not None and any(c is None for c in confidence):
                    confidence = None
                tracker.update(unit.landmarks, confidence)
                if smoother is not None:
                    t = unit.frame / state["fps"]
                    unit.smoothed = np.array(
                        [smoother(i, p, t) for i, p in zip(unit.track_ids, unit.landmarks)],
                        np.float32).reshape(unit.landmarks.shape)
                    smoother.drop_except(unit.track_ids)
            faces = unit.faces_json()
            state["faces"] += len(faces)
        try:
            canvas = self._draw(unit) if unit.canvas is not None else None
            output.write(unit.frame, faces, canvas)
        except Exception as error:  # noqa: BLE001
            state["error"] = state["error"] or f"{type(error).__name__}: {error}"
        state["seconds"] += unit.seconds + time.monotonic() - start
        self.progress.update(frames=1)

    def _finish_video(self, path: str, output: _VideoOutput, state: dict) -> None:
        start = time.monotonic()
        self.open_videos.remove(output)
        result = FileResult(path, STATUS_OK if state["faces"] else STATUS_NO_FACE,
                            faces=state["faces"], kind="video", frames=state["frames"])
        if not state["frames"]:
            state["error"] = state["error"] or "no frame could be decoded"
        if state["error"]:
            output.abort()
            result = FileResult(path, f"{STATUS_ERROR}: {state['error']}", kind="video",
                                frames=state["frames"])
        else:
            try:
                output.commit()
                result.landmarks = output.landmarks_path
                result.overlay = output.overlay_path
            except Exception as error:  # noqa: BLE001
                output.abort()
                result = FileResult(path, f"{STATUS_ERROR}: {type(error).__name__}: {error}",
                                    kind="video", frames=state["frames"])
        result.seconds = state["seconds"] + time.monotonic() - start
        self._record(result)

    # ---- driver ----------------------------------------------------------------------

    def run(self, inputs: Sequence[str]) -> None:
        direct = {os.fspath(i) for i in inputs if not os.path.isdir(i)}
        try:
            for item in inputs:
                frames = numbered_frames(item) if self.tracking is not None else None
                if frames:
                    name = os.path.basename(os.path.abspath(item))
                    self.frames_folder(item, name, name, frames)
                    continue
                for path, name, stem in iter_input_files([item], exclude=self.output_dir,
                                                         recursive=self.recursive):
                    extension = os.path.splitext(path)[1].lower()
                    if extension in VIDEO_EXTENSIONS:
                        self.video(path, name, stem)
                    elif extension in IMAGE_EXTENSIONS or path in direct:
                        self.image(path, name, stem)
                    else:
                        self._record(FileResult(path, STATUS_SKIPPED))
            self.queue.flush()
        finally:
            for output in list(self.open_videos):
                output.abort()


def predict_paths(predictor: LandmarkPredictor, inputs: Sequence[str] | str, output_dir: str,
                  batch_size: int = 32, upsample: int = 1, overlay: bool = True, *,
                  boxes: Mapping[str, Any] | str | None = None,
                  scheme: LandmarkScheme | str | None = None,
                  detect_max_side: int | None = DEFAULT_DETECT_MAX_SIDE,
                  overlay_max_side: int | None = DEFAULT_OVERLAY_MAX_SIDE,
                  max_frames: int | None = None,
                  max_pending_units: int | None = None,
                  max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                  finder: Finder | None = None,
                  progress: TextIO | None | bool = True,
                  recursive: bool = False,
                  remove_stale: bool = True,
                  tracking: Any = "default", smoothing: Any = "default",
                  smoothing_centre: Any = "default",
                  frames_fps: float = DEFAULT_FRAMES_FPS) -> Summary:
    """Predicts landmarks for every face in files, folders and videos.

    Never raises for a bad input file: each file gets one status (``"ok"``,
    ``"no_face"``, ``"error: <reason>"``, or ``"skipped"`` for a file of a folder
    that has neither an image nor a video extension) in the returned summary, which
    is also written to ``output_dir/summary.json`` and ``summary.csv``. See the
    module docstring for batching, memory bounds and the output layout.

    Predict owns ``landmarks/`` and ``overlays/`` of ``output_dir``: once the run is
    complete, every output file there that this run did not write (an input deleted
    since, an input that now fails, an old name) is removed (``remove_stale``), so
    the folder holds exactly the results listed in the summary.

    Args:
        predictor: the model.
        inputs: image files, video files (by extension, ``VIDEO_EXTENSIONS``) and
            folders (hidden entries skipped), or one of them.
        output_dir: where the results go (created).
        batch_size: faces per model call.
        upsample: dlib's upsampling (1 finds faces down to ~40 px of the detection
            copy).
        overlay: also write overlay images/videos with the landmarks drawn.
        boxes: face boxes instead of detection, as a mapping or the path of a JSON
            file (:func:`load_boxes_json`); files without an entry are detected.
        scheme: the landmark scheme (object or name) used to draw contours; must
            have the model's number of points. Default: ``scheme_for(L)`` when known.
        detect_max_side: longest side of the copy the detector runs on (huge images
            are downscaled for detection only); ``None``: full resolution.
        overlay_max_side: longest side of overlays; ``None``: full resolution.
        max_frames: read at most this many frames per video.
        max_pending_units: images/frames waiting to be written before a partial
            batch is run; default ``2 * batch_size``.
        max_pending_bytes: bytes of waiting canvases and crops before a partial
            batch is run.
        finder: detector override, ``image -> [(box, score)]``; default
            ``common.boxes.DlibBoxFinder(upsample)``.
        progress: stream for the progress line (``True``: stderr; ``False``/``None``:
            silent).
        recursive: also walk the sub-folders of input folders.
        remove_stale: remove outputs of earlier runs this run did not write.
        tracking: ``common.tracking.TrackerParams`` for videos and folders of
            numbered frames (:func:`numbered_frames`): boxes from the previous
            frame's landmarks, the detector only on some frames, a ``track_id`` per
            face; ``"default"``: ``TrackerParams()``; ``None``: detect every frame
            (and read frame folders as separate images). Videos with boxes from
            ``boxes`` are never tracked.
        smoothing: ``common.smoothing.OneEuroParams`` of the causal smoothing of
            tracked faces (``landmarks_smoothed`` beside the raw ``landmarks`` in the
            JSON lines); ``"default"``: ``OneEuroParams()``; ``None``: off.
        smoothing_centre: the filter of each face's centroid
            (``TrackSmoother(centre_params=)``); ``"default"``:
            ``common.smoothing.DEFAULT_CENTRE``; ``None``: no centroid split.
        frames_fps: frame rate of folders of numbered frames.

    Returns:
        The summary, one row per file in input order (files are finished in the
        order they were read).

    Raises:
        ValueError: ``scheme`` does not match the model, or bad arguments.
        DataError: ``boxes`` names an unreadable JSON file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tracking == "default" or smoothing == "default":
        from common import smoothing as smoothing_lib
        from common import tracking as tracking_lib

        tracking = tracking_lib.TrackerParams() if tracking == "default" else tracking
        smoothing = smoothing_lib.OneEuroParams() if smoothing == "default" else smoothing
    if smoothing_centre == "default":
        from common.smoothing import DEFAULT_CENTRE

        smoothing_centre = DEFAULT_CENTRE
    if not frames_fps > 0:
        raise ValueError(f"frames_fps must be > 0, got {frames_fps}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; known: {sorted(SCHEMES)}")
        scheme = SCHEMES[scheme]
    if scheme is None:
        try:
            scheme = scheme_for(predictor.num_landmarks)
        except ValueError:
            scheme = None
    elif scheme.num_points != predictor.num_landmarks:
        raise ValueError(f"the model predicts {predictor.num_landmarks} landmarks but scheme "
                         f"{scheme.name!r} has {scheme.num_points}")
    if isinstance(boxes, (str, os.PathLike)):
        boxes = load_boxes_json(os.fspath(boxes))
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    stream = sys.stderr if progress is True else (progress or None)
    meter = _Progress(stream)
    start = time.monotonic()
    run = _Run(predictor, output_dir, batch_size=batch_size, finder=finder, upsample=upsample,
               overlay=overlay, boxes=boxes, scheme=scheme, detect_max_side=detect_max_side,
               overlay_max_side=overlay_max_side, max_frames=max_frames,
               max_pending_units=max_pending_units or 2 * batch_size,
               max_pending_bytes=max_pending_bytes, progress=meter, recursive=recursive,
               tracking=tracking, smoothing=smoothing, smoothing_centre=smoothing_centre,
               frames_fps=frames_fps)
    try:
        run.run(list(inputs))
    finally:
        meter.close()
    summary = Summary(run.results, time.monotonic() - start, predictor.name, output_dir)
    if remove_stale:
        remove_stale_outputs(output_dir, [p for r in summary.results
                                          for p in (r.landmarks, r.overlay)])
    _write_summary(summary, output_dir)
    return summary


# --------------------------------------------------------------------------------------
# Command line (shared by msrrn_tf.predict and ccnn_tf.predict)
# --------------------------------------------------------------------------------------


def define_flags(scheme: str, flag_values=None) -> dict[str, Any]:
    """Defines the prediction flags; call from an entry point's ``__main__`` block.

    Args:
        scheme: default landmark scheme for drawing (``"ibug68"`` or ``"cuhk5"``).
        flag_values: the ``absl.flags.FlagValues`` (default ``absl.flags.FLAGS``).

    Returns:
        ``{name: FlagHolder}``, to pass to :func:`main`.
    """
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    holders = {
        "model": flags.DEFINE_string(
            "model", None, "A training run directory, its export/ (either layout), a "
            "SavedModel folder, a .keras or a .tflite file.", required=True, flag_values=fv),
        "input": flags.DEFINE_multi_string(
            "input", None, "Image, video or folder (recursed) to process.",
            required=True, flag_values=fv),
        "output": flags.DEFINE_string(
            "output", None, "Folder for the JSON results, overlays and summary.",
            required=True, flag_values=fv),
        "batch_size": flags.DEFINE_integer(
            "batch_size", 32, "Faces per model call.", lower_bound=1, flag_values=fv),
        "upsample": flags.DEFINE_integer(
            "upsample", 1, "dlib detector upsampling (1: faces down to ~40 px).",
            lower_bound=0, flag_values=fv),
        "overlay": flags.DEFINE_boolean(
            "overlay", True, "Write overlay images/videos (--nooverlay to skip).",
            flag_values=fv),
        "boxes_json": flags.DEFINE_string(
            "boxes_json", None, "JSON {file: [[l, t, r, b], ...]} of face boxes to use "
            "instead of dlib for the files it lists.", flag_values=fv),
        "scheme": flags.DEFINE_enum(
            "scheme", scheme, sorted(SCHEMES), "Landmark scheme used for drawing.",
            flag_values=fv),
        "detect_max_side": flags.DEFINE_integer(
            "detect_max_side", DEFAULT_DETECT_MAX_SIDE, "Longest side of the image copy the "
            "detector sees (0: full resolution).", lower_bound=0, flag_values=fv),
        "overlay_max_side": flags.DEFINE_integer(
            "overlay_max_side", DEFAULT_OVERLAY_MAX_SIDE, "Longest side of overlays "
            "(0: full resolution).", lower_bound=0, flag_values=fv),
        "max_frames": flags.DEFINE_integer(
            "max_frames", 0, "Frames read per video (0: all).", lower_bound=0, flag_values=fv),
        "margin": flags.DEFINE_float(
            "margin", None, "Crop margin, for a Keras model whose run has no config.json.",
            flag_values=fv),
        "sizes": flags.DEFINE_list(
            "sizes", None, "Input sides, for a Keras model whose run has no config.json.",
            flag_values=fv),
        "recursive": flags.DEFINE_boolean(
            "recursive", False, "Also process the sub-folders of --input folders.",
            flag_values=fv),
        "allow_empty": flags.DEFINE_boolean(
            "allow_empty", False, "Exit 0 even when no image or video was found to "
            "process (by default that is an error).", flag_values=fv),
        **define_video_flags(fv),
    }
    return holders


def define_video_flags(fv) -> dict[str, Any]:
    """The tracking and smoothing flags (part of :func:`define_flags`)."""
    from absl import flags

    from common.smoothing import DEFAULT_CENTRE, OneEuroParams
    from common.tracking import TrackerParams

    tracker, euro = TrackerParams(), OneEuroParams()
    return {
        "track": flags.DEFINE_boolean(
            "track", True, "Track faces in videos and folders of numbered frames: boxes "
            "from the previous frame's landmarks, the detector only on some frames "
            "(--notrack: detect every frame).", flag_values=fv),
        "detect_every": flags.DEFINE_integer(
            "detect_every", tracker.detect_every, "When tracking, run the detector at least "
            "every this many frames (0: only on the first frame and on failures).",
            lower_bound=0, flag_values=fv),
        "min_confidence": flags.DEFINE_float(
            "min_confidence", tracker.min_confidence, "When tracking, re-detect when a "
            "face's confidence falls below this.", lower_bound=0.0, upper_bound=1.0,
            flag_values=fv),
        "smooth": flags.DEFINE_boolean(
            "smooth", True, "Smooth tracked landmarks over time (causal One-Euro filter; "
            "'landmarks_smoothed' beside the raw 'landmarks'; --nosmooth: off).",
            flag_values=fv),
        "smooth_min_cutoff": flags.DEFINE_float(
            "smooth_min_cutoff", euro.min_cutoff, "One-Euro cut-off frequency of a still "
            "face, Hz (lower: steadier, more lag).", flag_values=fv),
        "smooth_beta": flags.DEFINE_float(
            "smooth_beta", euro.beta, "One-Euro speed coefficient per face size per second "
            "(higher: less lag on motion).", flag_values=fv),
        "smooth_centre_beta": flags.DEFINE_float(
            "smooth_centre_beta", DEFAULT_CENTRE.beta, "One-Euro speed coefficient of each "
            "face's centroid, filtered apart from the points around it (0: filter the "
            "points as they are).", lower_bound=0.0, flag_values=fv),
        "smooth_d_cutoff": flags.DEFINE_float(
            "smooth_d_cutoff", euro.d_cutoff, "One-Euro cut-off of the speed estimate, Hz.",
            flag_values=fv),
        "frames_fps": flags.DEFINE_float(
            "frames_fps", DEFAULT_FRAMES_FPS, "Frame rate of a folder of numbered frames.",
            flag_values=fv),
    }


def video_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``predict_paths`` keyword arguments from the values of
    :func:`define_video_flags`."""
    from common.smoothing import DEFAULT_CENTRE, OneEuroParams
    from common.tracking import TrackerParams

    tracking = (TrackerParams(detect_every=values["detect_every"],
                              min_confidence=values["min_confidence"])
                if values["track"] else None)
    smoothing = (OneEuroParams(values["smooth_min_cutoff"], values["smooth_beta"],
                               values["smooth_d_cutoff"])
                 if values["track"] and values["smooth"] else None)
    centre = (OneEuroParams(DEFAULT_CENTRE.min_cutoff, values["smooth_centre_beta"],
                            DEFAULT_CENTRE.d_cutoff)
              if values["smooth_centre_beta"] > 0 else None)
    return {"tracking": tracking, "smoothing": smoothing, "smoothing_centre": centre,
            "frames_fps": values["frames_fps"]}


def main(argv: Sequence[str], holders: Mapping[str, Any]) -> int:
    """Runs :func:`predict_paths` with the flags of :func:`define_flags` and prints the
    summary. The model is loaded through the Python API (``common.api.Predictor``).

    Args:
        argv: remaining command-line arguments (must be empty).
        holders: what :func:`define_flags` returned.

    Returns:
        0; 1 with a one-line reason on stderr when nothing was processed (unless
        ``--allow_empty``) or every file failed; 2 when an input or the model does
        not exist. Per-file problems are otherwise reported in the summary.
    """
    from absl import app

    from common.api import Predictor

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = {name: holder.value for name, holder in holders.items()}
    missing = [p for p in values["input"] if not os.path.exists(p)]
    if missing:
        print(f"predict: error: input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        api = Predictor.from_export(
            values["model"], margin=values["margin"],
            sizes=[int(s) for s in values["sizes"]] if values["sizes"] else None,
            upsample=values["upsample"], batch_size=values["batch_size"],
            detect_max_side=values["detect_max_side"] or None)
    except model_path.ModelPathError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    summary = predict_paths(
        api.landmark_predictor, values["input"], values["output"],
        batch_size=api.batch_size, upsample=api.upsample, overlay=values["overlay"],
        boxes=values["boxes_json"], scheme=values["scheme"],
        detect_max_side=api.detect_max_side,
        overlay_max_side=values["overlay_max_side"] or None,
        max_frames=values["max_frames"] or None, recursive=values["recursive"],
        **video_options(values))
    print(summary.format())
    failure = summary.failure(allow_empty=values["allow_empty"])
    if failure:
        print(f"predict: error: {failure}", file=sys.stderr)
        return 1
    return 0
