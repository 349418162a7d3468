"""Batching faces for the model: :class:`LandmarkPredictor` and the batch queue.

* :class:`LandmarkPredictor`: one image + face boxes -> landmarks in image pixels,
  from an exported SavedModel (``common.export``), a TFLite file, or a Keras model /
  training run; :func:`support_region` and :func:`check_boxes`.
* ``_Unit`` / ``_BatchQueue``: the images and video frames whose faces wait for the
  model, stacked into batches across files and finished in submission order.

``common.predict`` re-exports the public names; its module docstring explains the
batching without replicating images (support regions).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from common import geometry, landmark_model, model_path
from common.config import flatten_config_values

_SUPPORT_ALIGN = 2 ** (geometry.PYRAMID_LEVELS - 1)
_SUPPORT_PAD = 2 ** geometry.PYRAMID_LEVELS + 2
CONFIDENCE_KEY = "confidence"


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
        config = info.get("config", {})
        config = flatten_config_values(config) if isinstance(config, Mapping) else {}
        for record in (info, config, info.get("signature", {})):
            if isinstance(record, Mapping) and record.get("margin") is not None:
                return float(record["margin"])
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


def _sizes_from_model(model) -> list[int] | None:
    """The model's input sides (``common.landmark_model.input_sizes_of``)."""
    sizes = landmark_model.input_sizes_of(model)
    return list(sizes) if sizes else None


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
        if resolved.kind == model_path.KIND_TFLITE:
            if margin is None:
                margin = values.get("margin", _export_margin(resolved.export_dir))
            if margin is None:
                raise ValueError(f"the crop margin of {resolved.path} is unknown (no run "
                                 "config.json/run.json with 'margin' beside it); pass "
                                 "margin= (--margin)")
            return cls._from_tflite(resolved.path, float(margin), name)
        from common.evaluation import load_model  # imports the model packages

        model = load_model(resolved.path)
        if margin is None and landmark_model.margin_of(model) is None:
            # A model saved before it stored its margin: its run's, else its export's.
            margin = values.get("margin", _export_margin(resolved.export_dir))
        landmark_model.complete_margin(model, resolved.run_dir or resolved.path, margin)
        return cls.from_keras(model, sizes=sizes, name=name, source=resolved.path)

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
    def from_keras(cls, model, *, margin: float | None = None,
                   sizes: Sequence[int] | None = None,
                   name: str | None = None, output_key: str = "landmarks",
                   source: str = "") -> LandmarkPredictor:
        """A predictor running a Keras model in this process.

        Args:
            model: ``{f"image_{s}"}`` -> ``{"landmarks": [N, L, 2], ...}`` (or a tensor).
            margin: crop margin the model was trained with; default the model's
                (``common.landmark_model`` contract).
            sizes: input sides; default the model's ``input_sizes`` (else its
                ``image_<s>`` inputs).
            name: model name in the outputs (default: the model class).
            output_key: the output with the final normalised landmarks.
            source: where the model came from.

        Returns:
            The predictor.
        """
        sizes = list(sizes) if sizes else _sizes_from_model(model)
        if not sizes:
            raise ValueError("cannot infer the input sizes of this model; pass sizes=")
        margin = landmark_model.margin_of(model) if margin is None else float(margin)
        if margin is None:
            raise ValueError(f"the crop margin of {type(model).__name__} is unknown (the "
                             "model stores none); pass margin=")
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
