"""The public Python API, the same for both models (``msrrn_tf`` and ``ccnn_tf``).

    import msrrn_tf                        # or ccnn_tf: the same names
    predictor = msrrn_tf.Predictor.from_export("runs/msrrn/export")
    result = predictor("photo.jpg")        # every face the detector (dlib) finds
    result.landmarks                       # float32 [F, L, 2] (x, y) image pixels
    result.boxes                           # float32 [F, 4] (l, t, r, b) image pixels
    points, boxes, scores = result         # a NamedTuple
    predictor(rgb, boxes=[[40, 50, 160, 170]])   # your own boxes
    predictor.predict_batch([rgb_a, rgb_b], [boxes_a, boxes_b])
    model = msrrn_tf.load_model("runs/msrrn")    # the Keras model

Images are numpy ``uint8 [H, W, 3]`` in **RGB** order (``bgr=True`` for OpenCV's
BGR; grey ``[H, W]`` and RGBA ``[H, W, 4]`` are converted), file paths (decoded by
content, ``common.images.load_image``) or PIL images (no PIL import needed). Pixel
centres are at integer coordinates (``docs/DESIGN.md``).

The landmarks are those of the predict CLI: both run ``common.predict.
LandmarkPredictor`` (the export's ``serving_cropped`` on crops equal to the
``serving_default`` crop, to 1e-5 px), boxes are validated by
``common.geometry.check_face_boxes`` (the rules of the serving signature), and
detection runs on a copy at most ``detect_max_side`` pixels long, as in predict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from common.boxes import DETECT_MAX_SIDE
from common.model_path import ModelPath, ModelPathError, resolve_model_path

__all__ = ["ModelPath", "ModelPathError", "Prediction", "Predictor", "load_model",
           "resolve_model_path"]

DEFAULT_DETECT_MAX_SIDE = DETECT_MAX_SIDE
"""Longest side the detector sees (``common.boxes.DETECT_MAX_SIDE``)."""

Detector = Callable[[np.ndarray], Any]
"""``RGB uint8 [H, W, 3] -> boxes``: an array ``[K, 4]`` (l, t, r, b), a list of
boxes, or a list of ``(box, score)`` pairs."""


class Prediction(NamedTuple):
    """The faces of one image.

    Attributes:
        landmarks: float32 ``[F, L, 2]`` (x, y) image pixels.
        boxes: float32 ``[F, 4]`` face boxes (l, t, r, b) image pixels.
        scores: float32 ``[F]`` detector scores (NaN for given boxes or a detector
            without scores).
        confidence: float32 ``[F]`` in [0, 1], how much the model trusts each fit
            (``common.confidence``; low values predict failures); NaN for a model
            without a confidence output (exports made before it).
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray


def as_rgb(image: Any, *, bgr: bool = False) -> np.ndarray:
    """Any supported image as contiguous uint8 ``[H, W, 3]`` RGB.

    Args:
        image: numpy uint8 ``[H, W, 3]`` (RGB, or BGR with ``bgr``), ``[H, W]``
            grey, ``[H, W, 4]`` RGBA; a file path; or a PIL image.
        bgr: the numpy array is in BGR order (OpenCV).

    Returns:
        uint8 ``[H, W, 3]`` RGB.

    Raises:
        ValueError: an unsupported array; ``common.records.DataError`` for an
            unreadable file.
    """
    if isinstance(image, (str, os.PathLike)):
        from common.images import load_image

        return load_image(os.fspath(image))
    if type(image).__module__.startswith("PIL.") and hasattr(image, "convert"):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, got {array.dtype} (convert with "
                         "np.clip(x, 0, 255).astype(np.uint8))")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3 or not array.size:
        raise ValueError(f"an image must be [H, W, 3] (or grey [H, W], RGBA [H, W, 4]), got "
                         f"shape {array.shape}")
    if bgr:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _detections(found: Any) -> list[tuple[np.ndarray, float | None]]:
    """A detector's output as ``[(box float32 (4,), score or None)]``."""
    if found is None:
        return []
    if isinstance(found, np.ndarray):
        return [(np.asarray(b, np.float32), None) for b in found.reshape(-1, 4)]
    result = []
    for item in found:
        score = None
        if (isinstance(item, (tuple, list)) and len(item) == 2
                and np.asarray(item[0]).shape == (4,)):
            item, score = item
        box = np.asarray(item, np.float32)
        if box.shape != (4,):
            raise ValueError(f"a detector box must be [l, t, r, b], got {item!r}")
        result.append((box, None if score is None else float(score)))
    return result


class Predictor:
    """Images -> landmarks of every face, for either model.

    Build it with :meth:`from_export` or :meth:`from_run`.

    Args:
        landmark_predictor: the ``common.predict.LandmarkPredictor`` that runs the
            model.
        detector: image -> boxes (:data:`Detector`); default dlib's HOG detector
            (``common.boxes.DlibBoxFinder(upsample)``), created on first use.
        upsample: dlib's upsampling (1 finds faces down to ~40 px of the detection
            copy).
        detect_max_side: longest side of the copy the detector sees (``None``: full
            resolution).
        batch_size: faces per model call.
    """

    def __init__(self, landmark_predictor, detector: Detector | None = None, *,
                 upsample: int = 1, detect_max_side: int | None = DEFAULT_DETECT_MAX_SIDE,
                 batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.landmark_predictor = landmark_predictor
        self.upsample = int(upsample)
        self.detect_max_side = detect_max_side
        self.batch_size = int(batch_size)
        self._detector = detector

    # ---- construction ----------------------------------------------------------------

    @classmethod
    def from_export(cls, path: str | os.PathLike, detector: Detector | None = None, *,
                    margin: float | None = None, sizes: Sequence[int] | None = None,
                    **kwargs: Any) -> Predictor:
        """Loads any model path (``common.model_path.resolve_model_path``).

        Args:
            path: an export (``RUN_DIR/export``, new or old layout), a SavedModel
                folder, a run directory, a ``.keras`` or a ``.tflite`` file.
            detector: see the class.
            margin: crop margin, for a Keras/TFLite model whose run config is missing.
            sizes: input sides, for a Keras model whose run config is missing.
            **kwargs: ``upsample``, ``detect_max_side``, ``batch_size``.

        Returns:
            The predictor.

        Raises:
            ModelPathError: nothing loadable at ``path`` (lists what was looked for).
        """
        from common.predict_batching import LandmarkPredictor

        return cls(LandmarkPredictor.from_path(os.fspath(path), margin=margin, sizes=sizes),
                   detector, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, detector: Detector | None = None,
                 **kwargs: Any) -> Predictor:
        """The Keras model of a training run, run in this process.

        Args:
            run_dir: the run directory (``model.keras`` or its latest checkpoint;
                sizes and margin from its config).
            detector: see the class.
            **kwargs: ``upsample``, ``detect_max_side``, ``batch_size``.

        Returns:
            The predictor.
        """
        from common.landmark_model import complete_margin
        from common.predict_batching import LandmarkPredictor

        run_dir = os.path.abspath(os.fspath(run_dir))
        model = complete_margin(load_model(run_dir), run_dir)  # the model's, else its run's
        predictor = LandmarkPredictor.from_keras(model, source=run_dir)
        return cls(predictor, detector, **kwargs)

    # ---- properties ------------------------------------------------------------------

    @property
    def num_landmarks(self) -> int:
        """``L``: 68 (MSRRN) or 5 (CCNN)."""
        return self.landmark_predictor.num_landmarks

    @property
    def detector(self) -> Detector:
        """The detector (dlib's unless one was given)."""
        if self._detector is None:
            from common.boxes import DlibBoxFinder

            self._detector = DlibBoxFinder(self.upsample)
        return self._detector

    # ---- prediction ------------------------------------------------------------------

    def detect(self, image: Any, *, bgr: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes of one image (on the ``detect_max_side`` copy, mapped back).

        Returns:
            ``(boxes float32 [F, 4], scores float32 [F])``.
        """
        from common.boxes import detect_faces

        rgb = as_rgb(image, bgr=bgr)
        detector = self.detector
        found = detect_faces(lambda img: _detections(detector(img)), rgb, self.detect_max_side)
        boxes = np.array([b for b, _ in found], np.float32).reshape(-1, 4)
        scores = np.array([np.nan if s is None else s for _, s in found], np.float32)
        return boxes, scores

    def __call__(self, image: Any, boxes: Any = None, *, bgr: bool = False) -> Prediction:
        """Landmarks of the faces of one image.

        Args:
            image: see :func:`as_rgb`.
            boxes: ``[K, 4]`` face boxes (l, t, r, b) pixels; ``None``: detect.
            bgr: a numpy image is in BGR order.

        Returns:
            The :class:`Prediction` (``F = K`` for given boxes).

        Raises:
            ValueError: a bad image or box (``common.geometry.check_face_boxes``).
        """
        return self.predict_batch([image], [boxes], bgr=bgr)[0]

    def predict_batch(self, images: Sequence[Any], boxes: Sequence[Any] | None = None, *,
                      bgr: bool = False) -> list[Prediction]:
        """Landmarks of the faces of several images, batched across images.

        Args:
            images: images (:func:`as_rgb`).
            boxes: one ``[K_i, 4]`` per image (``None`` entries, or ``None``: detect).
            bgr: numpy images are in BGR order.

        Returns:
            One :class:`Prediction` per image.

        Raises:
            ValueError: a bad image or box, or ``len(boxes) != len(images)``.
        """
        from common.geometry import check_face_boxes

        images = list(images)
        boxes = [None] * len(images) if boxes is None else list(boxes)
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        model = self.landmark_predictor
        rgbs, per_image = [], []
        for i, (image, given) in enumerate(zip(images, boxes)):
            rgb = as_rgb(image, bgr=bgr)
            if given is None:
                found, scores = self.detect(rgb)
            else:
                try:
                    found = check_face_boxes(given, *rgb.shape[:2])
                except ValueError as error:
                    raise ValueError(f"image {i}: {error}") from None
                scores = np.full(len(found), np.nan, np.float32)
            rgbs.append(rgb)
            per_image.append((check_face_boxes(found, *rgb.shape[:2]), scores))
        faces = [(i, crop_box) for i, (found, _) in enumerate(per_image)
                 for crop_box in model.crop_boxes(found)]
        points = np.zeros((len(faces), model.num_landmarks, 2), np.float32)
        confidence = np.full(len(faces), np.nan, np.float32)
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start:start + self.batch_size]
            crops = [model.crop_face(rgbs[i], crop_box) for i, crop_box in chunk]
            batch = {k: np.concatenate([c[k] for c in crops]) for k in crops[0]}
            normalised, trust = model.run_crops_with_confidence(batch)
            points[start:start + len(chunk)] = model.to_image(
                normalised, np.stack([c for _, c in chunk]))
            if trust is not None:
                confidence[start:start + len(chunk)] = trust
        results, offset = [], 0
        for found, scores in per_image:
            end = offset + len(found)
            results.append(Prediction(points[offset:end], found, scores,
                                      confidence[offset:end]))
            offset = end
        return results


def load_model(path: str | os.PathLike):
    """The Keras model of a run directory or ``.keras`` file, in one call.

    Args:
        path: a run directory (``model.keras``, else its latest checkpoint), or a
            ``.keras`` file.

    Returns:
        The ``keras.Model`` (inference-ready; MSRRN or CCNN classes registered).

    Raises:
        ModelPathError: no Keras model there (lists what was looked for).
    """
    from common import model_path

    given = os.fspath(path)
    resolved = model_path.resolve_model_path(given)
    if resolved.kind != model_path.KIND_KERAS:
        run = resolved.run_dir
        keras_file = os.path.join(run, model_path.KERAS_FILE) if run else None
        if keras_file and os.path.isfile(keras_file):
            resolved = ModelPath(model_path.KIND_KERAS, keras_file, run, None)
        elif run and os.path.isfile(os.path.join(run, model_path.CHECKPOINT_DIR, "checkpoint")):
            resolved = ModelPath(model_path.KIND_KERAS, run, run, None)
        else:
            raise ModelPathError(f"no Keras model at {given!r} (found a {resolved.kind} at "
                                 f"{resolved.path}; looked for {model_path.KERAS_FILE} and "
                                 f"{model_path.CHECKPOINT_DIR}/ in its run)")
    from common.evaluation import load_model as load_keras

    return load_keras(resolved.path)
