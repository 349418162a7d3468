"""Peer methods run in the same harness as our models: same faces, same face boxes.

Every comparison in the project evaluates its peers on the faces of the TFRecords
written by ``common.prepare`` / ``common.synthetic`` (``iterate_faces``), with the
face box stored there, so that a difference in error is a difference of method,
not of data or of boxes.

Peers (``PEERS``):

* ``"mean_shape"`` (``MeanShape``): the floor every method must beat. The mean of the
  training landmarks in normalised face-box coordinates ``u = (x - l) / (r - l)``,
  ``v = (y - t) / (b - t)`` (the face box itself, no crop margin), mapped into the
  given box.
* ``"dlib_ert"`` (``DlibERT``): dlib's ensemble of regression trees (Kazemi and
  Sullivan, "One millisecond face alignment with an ensemble of regression trees",
  CVPR 2014), trained on our training split and our boxes with
  ``dlib.train_shape_predictor``.
* ``"mtcnn"`` / ``"mtcnn_box"`` (``MTCNNPeer``): the pretrained MTCNN (Zhang et al.,
  "Joint face detection and alignment using multitask cascaded convolutional
  networks", IEEE SPL 2016) of the ``mtcnn`` PyPI package (optional extra, weights
  inside the wheel), 5 points only. ``"mtcnn"`` runs its own detector and keeps the
  detection that best overlaps the given box; ``"mtcnn_box"`` runs its last stage
  (ONet) on the given box.
* ``"lbf"`` (``LBFPeer``): OpenCV's Facemark LBF (``cv::face::FacemarkLBF``; Ren et
  al., "Face alignment at 3000 fps via regressing local binary features", CVPR 2014),
  trained on our training split and our boxes. Optional: it runs in a child process,
  the C++ program ``tools/lbf_tool.cpp`` built against a system OpenCV with the
  contrib modules and named by ``$FACE_ALIGN_LBF_TOOL`` (README, "Optional peers").

Every peer has ``name``, ``fit(train_faces)``, ``predict(image, box)`` and
``predict_batch(images, boxes)``; images are uint8 RGB ``[H, W, 3]``, boxes float
``[4]`` (left, top, right, bottom) and landmarks float32 ``[L, 2]`` (x, y) image pixels
in the package convention (pixel centres at integers, docs/DESIGN.md).
``evaluate_peer`` runs a peer over faces and returns per-face NMEs
(``common.metrics.nme``) and the median time per face.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from common import atomic, metrics
from common.boxes import box_iou
from common.schemes import LandmarkScheme


class Face(NamedTuple):
    """One face as the peers see it (unpacks as ``image, landmarks, box, source_path``).

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        landmarks: float32 ``[L, 2]`` (x, y) pixels.
        box: float32 ``[4]`` face box (left, top, right, bottom) in pixels.
        source_path: the record's original image path, for tracing.
    """

    image: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    source_path: str


def iterate_faces(data: str, split: str, limit: int | None = None) -> Iterator[Face]:
    """Reads the faces of a split from TFRecord shards, in file order, unaugmented.

    Args:
        data: a folder of shards (``common.tfrecord.find_shards``), a glob or a file.
        split: split name in the shard file names ("train", "val", "common", ...) or
            an alias of the folder's ``dataset.json``.
        limit: read at most this many faces; ``None`` for all.

    Yields:
        ``Face(image, landmarks, box, source_path)`` with NumPy arrays.

    Raises:
        FileNotFoundError: no shard matches.
    """
    import tensorflow as tf

    from common.tfrecord import find_shards, parse_face

    dataset = tf.data.TFRecordDataset(find_shards(data, split))
    if limit is not None:
        dataset = dataset.take(int(limit))
    dataset = dataset.map(parse_face, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for face in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        yield Face(image=face["image"], landmarks=face["landmarks"].astype(np.float32),
                   box=face["box"].astype(np.float32),
                   source_path=face["source_path"].decode("utf-8", "replace"))


def _face_arrays(faces: Iterable[Any]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Splits faces (``Face`` or 4-tuples) into images, landmarks ``[N, L, 2]``, boxes."""
    images, landmarks, boxes = [], [], []
    for face in faces:
        image, points, box = face[0], face[1], face[2]
        images.append(image)
        landmarks.append(np.asarray(points, np.float32).reshape(-1, 2))
        boxes.append(np.asarray(box, np.float32).reshape(4))
    if not images:
        raise ValueError("no faces given")
    counts = {p.shape[0] for p in landmarks}
    if len(counts) != 1:
        raise ValueError(f"faces have different landmark counts: {sorted(counts)}")
    return images, np.stack(landmarks), np.stack(boxes)


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    bad = np.flatnonzero(~np.all(np.isfinite(sizes) & (sizes > 0), axis=1))
    if bad.size:
        raise ValueError(f"face box {boxes[bad[0]].tolist()} (face {bad[0]}) has no area; "
                         "boxes are (left, top, right, bottom)")
    return boxes


class Peer(Protocol):
    """What every peer provides."""

    name: str

    def fit(self, train_faces: Iterable[Any]) -> Peer: ...

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray: ...

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray: ...


class _BatchMixin:
    """``predict_batch`` as a loop over ``predict``."""

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Landmarks ``[N, L, 2]`` for ``images[i]`` in ``boxes[i]`` (see ``predict``)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        return np.stack([self.predict(image, box) for image, box in zip(images, boxes)])




# --------------------------------------------------------------------------------------
# Mean shape
# --------------------------------------------------------------------------------------


class MeanShape(_BatchMixin):
    """The mean training shape in face-box coordinates, placed in the given box.

    ``fit`` stores ``mean_i((x_i - l_i) / (r_i - l_i), (y_i - t_i) / (b_i - t_i))``;
    ``predict`` returns ``(l + u (r - l), t + v (b - t))``. No image is looked at.

    Args:
        mean: optional normalised mean shape ``[L, 2]`` (e.g. from ``load``).
    """

    name = "mean_shape"

    def __init__(self, mean: np.ndarray | None = None):
        self.mean = None if mean is None else np.asarray(mean, np.float64).reshape(-1, 2)

    def fit(self, train_faces: Iterable[Any]) -> MeanShape:
        """Computes the mean normalised shape of ``train_faces`` (``Face`` or 4-tuples)."""
        _, landmarks, boxes = _face_arrays(train_faces)
        boxes = _check_boxes(boxes)
        origin = boxes[:, None, :2]
        size = boxes[:, None, 2:] - origin
        self.mean = ((landmarks - origin) / size).mean(axis=0)
        return self

    def predict(self, image: np.ndarray | None, box: np.ndarray) -> np.ndarray:
        """The mean shape mapped into ``box``; ``image`` is ignored (may be None).

        Returns:
            float32 ``[L, 2]`` pixels.
        """
        if self.mean is None:
            raise RuntimeError("MeanShape.predict called before fit")
        box = _check_boxes(box)[0]
        return (box[:2] + self.mean * (box[2:] - box[:2])).astype(np.float32)

    def save(self, path: str) -> None:
        """Writes the mean shape to ``path`` (``.npy``), atomically."""
        if self.mean is None:
            raise RuntimeError("MeanShape.save called before fit")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, self.mean)

        atomic.write_atomically(path, write)

    @classmethod
    def load(cls, path: str) -> MeanShape:
        """Reads a mean shape written by ``save``."""
        return cls(np.load(path))


# --------------------------------------------------------------------------------------
# dlib ERT
# --------------------------------------------------------------------------------------


DLIB_DEFAULT_OPTIONS: dict[str, Any] = {
    "cascade_depth": 10,
    "tree_depth": 4,
    "num_trees_per_cascade_level": 500,
    "nu": 0.1,
    "oversampling_amount": 20,
    "oversampling_translation_jitter": 0.0,
    "feature_pool_size": 400,
    "lambda_param": 0.1,
    "num_test_splits": 20,
    "feature_pool_region_padding": 0.0,
    "random_seed": "",
    "landmark_relative_padding_mode": True,
    "be_verbose": False,
    "num_threads": 0,
}
"""``dlib.shape_predictor_training_options()`` as read off dlib 20.0.1 (dlib-bin 20).

These are the values of Kazemi and Sullivan (CVPR 2014, Section 4): T = 10 cascade
levels (``cascade_depth``), K = 500 trees per level, tree depth F = 4 (16 leaves),
shrinkage nu = 0.1, 400 pool pixels (P) with exponential prior lambda = 0.1, S = 20
candidate splits per node and 20 initialisations per training face
(``oversampling_amount``). ``num_threads = 0`` means one thread; ``DlibERT.train``
sets its own ``num_threads``. ``dlib_default_options()`` reads them from the
installed dlib.
"""


def dlib_default_options() -> dict[str, Any]:
    """The installed dlib's default shape-predictor training options, as a dict."""
    import dlib

    options = dlib.shape_predictor_training_options()
    return {key: getattr(options, key) for key in DLIB_DEFAULT_OPTIONS}


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def box_to_dlib_rect(box: np.ndarray):
    """Converts a float (left, top, right, bottom) box to a ``dlib.rectangle``.

    The inverse of ``common.boxes.dlib_rect_to_box``: a ``dlib.rectangle`` holds integer
    pixel indices with inclusive right/bottom, and covers the package box
    ``(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)``. So the rectangle is
    ``left = round(l + 0.5)``, ``top = round(t + 0.5)``, ``right = round(r - 0.5)``,
    ``bottom = round(b - 0.5)`` with halves rounded up (``floor(x + 0.5)``), i.e.
    ``(floor(l + 1), floor(t + 1), floor(r), floor(b))``, and right/bottom raised to
    left/top for boxes under a pixel. Boxes made from dlib rectangles round-trip
    exactly; other boxes move by at most half a pixel per edge, identically in
    training and prediction.

    Args:
        box: float ``[4]`` (left, top, right, bottom) pixels.

    Returns:
        ``dlib.rectangle``.
    """
    import dlib

    left, top, right, bottom = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    rl, rt = _round_half_up(left + 0.5), _round_half_up(top + 0.5)
    rr, rb = _round_half_up(right - 0.5), _round_half_up(bottom - 0.5)
    return dlib.rectangle(rl, rt, max(rr, rl), max(rb, rt))


def _dlib_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} "
                         f"{image.shape}")
    return np.ascontiguousarray(image)


class DlibERT(_BatchMixin):
    """dlib's ensemble of regression trees (Kazemi and Sullivan, CVPR 2014).

    Trained with the in-memory ``dlib.train_shape_predictor(images, objects, options)``
    on our faces and our boxes (``box_to_dlib_rect``). dlib stores landmarks as
    integer ``dlib.point``: training targets are rounded to the nearest pixel and
    predictions come back as whole pixels (a quantisation error of at most half a
    pixel per coordinate, inherent to dlib's Python API). dlib reads RGB images and
    computes its pixel-difference features on their intensity.

    Args:
        predictor: a trained ``dlib.shape_predictor`` (from ``train`` or ``load``).
        options: training option overrides for ``fit`` (see ``train``).
        num_threads: training threads for ``fit``.
    """

    name = "dlib_ert"

    def __init__(self, predictor=None, options: dict | None = None, num_threads: int = 2):
        self.predictor = predictor
        self.options = dict(options or {})
        self.num_threads = int(num_threads)
        self.train_seconds: float | None = None
        self.resolved_options: dict[str, Any] | None = None

    @staticmethod
    def training_options(options: dict | None = None, num_threads: int = 2):
        """dlib's defaults (``DLIB_DEFAULT_OPTIONS``) with ``options`` applied.

        Raises:
            ValueError: an unknown option name.
        """
        import dlib

        result = dlib.shape_predictor_training_options()
        for key, value in (options or {}).items():
            if key not in DLIB_DEFAULT_OPTIONS:
                raise ValueError(f"unknown dlib shape predictor option {key!r}; known: "
                                 f"{', '.join(sorted(DLIB_DEFAULT_OPTIONS))}")
            setattr(result, key, value)
        result.num_threads = int(num_threads)
        return result

    @classmethod
    def train(cls, faces: Iterable[Any], options: dict | None = None,
              num_threads: int = 2) -> DlibERT:
        """Trains a shape predictor on ``faces``.

        Args:
            faces: ``Face`` objects or ``(image, landmarks, box, ...)`` tuples; all
                with the same landmark count.
            options: overrides of dlib's defaults (``DLIB_DEFAULT_OPTIONS``), e.g.
                ``{"cascade_depth": 6, "num_trees_per_cascade_level": 50}``.
            num_threads: training threads (dlib's ``num_threads``).

        Returns:
            The trained peer; ``train_seconds`` holds the wall time of dlib's training.
        """
        import dlib

        peer = cls(options=options, num_threads=num_threads)
        dlib_options = cls.training_options(options, num_threads)
        images, landmarks, boxes = _face_arrays(faces)
        _check_boxes(boxes)
        dlib_images = [_dlib_image(image) for image in images]
        objects = []
        for points, box in zip(landmarks, boxes):
            parts = [dlib.point(_round_half_up(x), _round_half_up(y)) for x, y in points]
            objects.append([dlib.full_object_detection(box_to_dlib_rect(box), parts)])
        start = time.perf_counter()
        peer.predictor = dlib.train_shape_predictor(dlib_images, objects, dlib_options)
        peer.train_seconds = time.perf_counter() - start
        peer.resolved_options = {key: getattr(dlib_options, key)
                                 for key in DLIB_DEFAULT_OPTIONS}
        return peer

    def fit(self, train_faces: Iterable[Any]) -> DlibERT:
        """Trains in place with this peer's ``options`` and ``num_threads``."""
        trained = self.train(train_faces, self.options, self.num_threads)
        self.predictor = trained.predictor
        self.train_seconds = trained.train_seconds
        self.resolved_options = trained.resolved_options
        return self

    def _require(self):
        if self.predictor is None:
            raise RuntimeError("DlibERT has no predictor: call train/fit or load first")
        return self.predictor

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Landmarks of the face in ``box``.

        Args:
            image: uint8 RGB ``[H, W, 3]``.
            box: float ``[4]`` (left, top, right, bottom).

        Returns:
            float32 ``[L, 2]`` (x, y) pixels (whole pixels, see the class docstring).
        """
        shape = self._require()(_dlib_image(image), box_to_dlib_rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32).reshape(-1, 2)

    def save(self, path: str) -> None:
        """Writes dlib's serialised predictor to ``path`` (dlib's ``.dat``), atomically."""
        predictor = self._require()
        atomic.write_atomically(path, predictor.save)

    @classmethod
    def load(cls, path: str) -> DlibERT:
        """Reads a predictor written by ``save`` (or any dlib shape predictor file)."""
        import dlib

        if not os.path.isfile(path):
            raise FileNotFoundError(f"no dlib shape predictor at {path!r}")
        return cls(predictor=dlib.shape_predictor(path))


# --------------------------------------------------------------------------------------
# MTCNN
# --------------------------------------------------------------------------------------

MTCNN_KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""The ``mtcnn`` package's keypoints in CUHK_5 order. Its "left" is the image left
(checked on real faces: its ``left_eye`` has the smaller x), as in CUHK_5; its numpy
output holds x of these five in columns 6-10 and y in columns 11-15."""

MTCNN_MODES = ("detect", "box")
MTCNN_ONET_SIZE = 48
"""Input side of MTCNN's last stage (ONet), Zhang et al. 2016, Fig. 2."""


def _import_mtcnn():
    try:
        import mtcnn
    except ImportError as e:
        raise ImportError("MTCNNPeer needs the 'mtcnn' package (pretrained MTCNN, weights "
                          "in the wheel): pip install mtcnn") from e
    return mtcnn


def square_box(box: np.ndarray) -> np.ndarray:
    """The square with the box's centre and side ``max(w, h)`` (MTCNN's ONet input)."""
    left, top, right, bottom = np.asarray(box, np.float64).reshape(4)
    half = 0.5 * max(right - left, bottom - top)
    cx, cy = 0.5 * (left + right), 0.5 * (top + bottom)
    return np.array([cx - half, cy - half, cx + half, cy + half])


class MTCNNPeer(_BatchMixin):
    """The pretrained MTCNN of the ``mtcnn`` package (5 points, CUHK_5 order).

    Modes:

    * ``"detect"``: ``MTCNN.detect_faces`` on the whole image; the detection with the
      highest IoU with the given box is taken if that IoU is at least ``min_iou``.
      Otherwise the face counts as missed (``misses``) and the points come from
      ``on_miss``: ``"box"`` runs ONet on the given box, ``"nan"`` returns NaN.
    * ``"box"``: MTCNN's last stage (ONet) alone on the given box, made square as
      MTCNN makes its proposals square before ONet (``square_box``), with the
      package's own crop (``extract_patches``, 48 x 48, bilinear), normalisation
      ((x - 127.5) / 128) and landmark mapping (``adjust_landmarks``). On the box of
      the package's second stage this reproduces ``detect_faces``' keypoints.

    MTCNN is pretrained; ``fit`` does nothing. The package's pixel convention is used
    as it is (no half-pixel correction).

    Args:
        mode: ``"detect"`` or ``"box"``.
        min_iou: least IoU between a detection and the given box (detect mode).
        on_miss: ``"box"`` or ``"nan"`` (detect mode).
        detect_kwargs: extra arguments of ``detect_faces`` (``min_face_size``,
            ``threshold_onet``, ...).

    Raises:
        ImportError: the ``mtcnn`` package is not installed.
    """

    def __init__(self, mode: str = "detect", min_iou: float = 0.3, on_miss: str = "box",
                 detect_kwargs: dict | None = None):
        if mode not in MTCNN_MODES:
            raise ValueError(f"mode must be one of {MTCNN_MODES}, got {mode!r}")
        if on_miss not in ("box", "nan"):
            raise ValueError(f"on_miss must be 'box' or 'nan', got {on_miss!r}")
        _import_mtcnn()
        self.mode = mode
        self.name = "mtcnn" if mode == "detect" else "mtcnn_box"
        self.min_iou = float(min_iou)
        self.on_miss = on_miss
        self.detect_kwargs = dict(detect_kwargs or {})
        self.calls = 0
        self.misses = 0
        self.missed_indices: list[int] = []
        self._detector = None
        self._onet = None

    def fit(self, train_faces: Iterable[Any] | None = None) -> MTCNNPeer:
        """Does nothing (MTCNN is pretrained); returns ``self``."""
        return self

    @property
    def detector(self):
        """The package's ``MTCNN`` (built on first use)."""
        if self._detector is None:
            self._detector = _import_mtcnn().MTCNN()
        return self._detector

    @property
    def onet(self):
        """The package's ONet Keras model (built on first use)."""
        if self._onet is None:
            stage = None
            if self._detector is not None:
                stage = self._detector.get_stage(stage_id=3)
            if stage is None:
                from mtcnn.stages import StageONet
                stage = StageONet()
            self._onet = stage.model
        return self._onet

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All MTCNN detections of an image.

        Returns:
            ``(boxes [K, 4] (l, t, r, b), confidences [K], landmarks [K, 5, 2])``.
        """
        result = np.asarray(self.detector.detect_faces(
            np.asarray(image), box_format="xyxy", output_type="numpy", **self.detect_kwargs),
            np.float64).reshape(-1, 16)
        points = np.stack([result[:, 6:11], result[:, 11:16]], axis=-1)
        return result[:, 1:5], result[:, 5], points.astype(np.float32)

    def onet_on_boxes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """ONet's landmarks for faces in the given boxes of one image.

        Args:
            image: uint8 RGB ``[H, W, 3]``.
            boxes: float ``[K, 4]`` (left, top, right, bottom); each is made square.

        Returns:
            float32 ``[K, 5, 2]`` pixels, CUHK_5 order.
        """
        import tensorflow as tf
        from mtcnn.utils.images import extract_patches, normalize_images
        from mtcnn.utils.landmarks import adjust_landmarks

        boxes = _check_boxes(boxes)
        squares = np.stack([square_box(box) for box in boxes])
        rows = np.concatenate([np.zeros((len(squares), 1)), squares], axis=1)
        images = normalize_images(np.asarray(image, np.float32)[None])
        patches = extract_patches(tf.constant(images), rows,
                                  expected_size=(MTCNN_ONET_SIZE, MTCNN_ONET_SIZE))
        _, landmarks, _ = self.onet(patches)
        landmarks = np.asarray(adjust_landmarks(landmarks, rows), np.float64)
        return np.stack([landmarks[:, 0:5], landmarks[:, 5:10]], axis=-1).astype(np.float32)

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Five landmarks (CUHK_5 order) of the face in ``box``.

        Returns:
            float32 ``[5, 2]`` pixels (NaN for a miss with ``on_miss="nan"``).
        """
        box = _check_boxes(box)[0]
        self.calls += 1
        if self.mode == "box":
            return self.onet_on_boxes(image, box[None])[0]
        boxes, _, points = self.detect(image)
        ious = np.array([box_iou(box, detection) for detection in boxes])
        if ious.size and ious.max() >= self.min_iou:
            return points[int(np.argmax(ious))]
        self.misses += 1
        self.missed_indices.append(self.calls - 1)
        if self.on_miss == "nan":
            return np.full((5, 2), np.nan, np.float32)
        return self.onet_on_boxes(image, box[None])[0]


# --------------------------------------------------------------------------------------
# OpenCV Facemark LBF (out of process)
# --------------------------------------------------------------------------------------

LBF_TOOL_ENV = "FACE_ALIGN_LBF_TOOL"
"""Environment variable naming the ``lbf_tool`` program (``tools/lbf_tool.cpp``)."""

LBF_DEFAULT_OPTIONS: dict[str, Any] = {
    "initShape_n": 10,
    "stages_n": 5,
    "tree_n": 6,
    "tree_depth": 5,
    "bagging_overlap": 0.4,
    "seed": 0,
    "feats_m": [500, 500, 500, 300, 300, 300, 200, 200, 200, 100],
    "radius_m": [0.3, 0.2, 0.15, 0.12, 0.10, 0.10, 0.08, 0.06, 0.06, 0.05],
}
"""``cv::face::FacemarkLBF::Params()`` of OpenCV 4.x (``facemarkLBF.cpp``).

LBF is Ren et al., "Face alignment at 3000 fps via regressing local binary features",
CVPR 2014: ``stages_n`` cascade stages; per stage and landmark a random forest of
``tree_n`` trees (``tree_depth = 5``: 4 pixel-difference tests, 16 leaves) learnt on
``feats_m[stage]`` candidate pixel pairs within ``radius_m[stage]`` (in half box
sides) of the landmark, each tree on a bag of the samples (``bagging_overlap``);
then one global linear regression from all leaves to the shape update (liblinear's
dual coordinate descent for the L2-loss SVR with epsilon 0, i.e. ridge regression,
C = 1 / samples). Every training face is used twice (OpenCV adds its mirror image) with
``initShape_n`` initial shapes each, taken from other faces. ``seed`` only seeds that
choice: OpenCV seeds the trees' feature sampling with the clock, so training is not
repeatable.
"""

LBF_QUICK_OPTIONS: dict[str, Any] = {"initShape_n": 1}
"""Overrides of ``LBF_DEFAULT_OPTIONS`` that ``experiments.compare_real`` uses by
default: one initial shape per face (and per mirror image) instead of 10.

Training time is about proportional to ``initShape_n`` (samples per tree) and to
``feats_m`` (candidate tests per node); with one initial shape OpenCV trained on the
2,661 ytf68 training faces (68 points) in about 7 minutes of CPU (one thread; 44
minutes of wall time on two cores shared with a dozen other processes). OpenCV's
defaults (``lbf_options={}``) would take about ten times longer."""

LBF_FLIP_PAIRS = {
    68: [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    + [(36 + i, 45 - i) for i in range(4)] + [(41, 46), (40, 47), (31, 35), (32, 34)]
    + [(48 + i, 54 - i) for i in range(3)] + [(59, 55), (58, 56), (60, 64), (61, 63),
                                              (67, 65)],
    29: [(0, 1), (2, 3), (4, 6), (5, 7), (12, 14), (8, 9), (10, 11), (16, 17), (13, 15),
         (18, 19), (22, 23)],
}
"""The landmark pairs FacemarkLBF swaps in the mirrored copy of each training face
(``data_augmentation`` in OpenCV's ``facemarkLBF.cpp``, 0-based here); it has tables
for 68 and 29 points only, and mirrors the points of any other count unswapped."""


class LBFUnavailable(RuntimeError):
    """No working ``lbf_tool`` (not configured, not found or not runnable)."""


def lbf_tool_path(tool: str | None = None) -> str | None:
    """The ``lbf_tool`` to use: ``tool``, else ``$FACE_ALIGN_LBF_TOOL``, else None."""
    path = tool or os.environ.get(LBF_TOOL_ENV) or None
    return os.path.expanduser(path) if path else None


def check_lbf_tool(tool: str | None = None) -> dict[str, Any]:
    """Runs ``lbf_tool version``.

    Args:
        tool: path of the program; default ``lbf_tool_path()``.

    Returns:
        ``{"tool": path, "opencv": version, "protocol": 1}``.

    Raises:
        LBFUnavailable: not configured, missing, or it fails (e.g. a missing OpenCV
            library); the message says which and points to the README.
    """
    import json
    import subprocess

    path = lbf_tool_path(tool)
    hint = ("build tools/lbf_tool.cpp against OpenCV with the contrib modules and set "
            f"{LBF_TOOL_ENV} (see README, 'Optional peers')")
    if path is None:
        raise LBFUnavailable(f"no OpenCV LBF tool configured: {hint}")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise LBFUnavailable(f"{path!r} is not an executable file: {hint}")
    try:
        done = subprocess.run([path, "version"], check=False, capture_output=True, text=True,
                              timeout=60)
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise LBFUnavailable(f"{path} version failed ({e}): {hint}") from e
    if done.returncode != 0 or "opencv" not in info:
        raise LBFUnavailable(f"{path} version failed (exit {done.returncode}: "
                             f"{done.stderr.strip()[-300:]}): {hint}")
    return {"tool": path, **info}


def lbf_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``LBF_DEFAULT_OPTIONS`` with ``options`` applied, checked.

    Raises:
        ValueError: an unknown name, or fewer ``feats_m`` / ``radius_m`` than stages.
    """
    resolved = {key: (list(value) if isinstance(value, list) else value)
                for key, value in LBF_DEFAULT_OPTIONS.items()}
    for key, value in (options or {}).items():
        if key not in LBF_DEFAULT_OPTIONS:
            raise ValueError(f"unknown FacemarkLBF option {key!r}; known: "
                             f"{', '.join(sorted(LBF_DEFAULT_OPTIONS))}")
        resolved[key] = list(value) if isinstance(value, (list, tuple)) else value
    for key in ("feats_m", "radius_m"):
        if len(resolved[key]) < int(resolved["stages_n"]):
            raise ValueError(f"{key} needs a value per stage ({resolved['stages_n']} "
                             f"stages), got {resolved[key]}")
    return resolved


@dataclasses.dataclass(frozen=True)
class LBFLayout:
    """How a landmark scheme maps onto the points of a FacemarkLBF model.

    FacemarkLBF mirrors every training face and swaps left/right points with its
    tables for 68 and 29 points (``LBF_FLIP_PAIRS``). A scheme whose flip matches the
    68-point table (iBUG 68) is used as is. Any other scheme (CUHK 5) is embedded in
    the 29-point table: each swapped pair of slots holds a left/right pair of the
    scheme, each unswapped slot a point the flip keeps (the nose), cycling through
    them, so that OpenCV's mirrored copies are labelled correctly. The duplicated
    points are trained like any other; predictions are read from each point's first
    slot (``primary``).

    Attributes:
        num_points: the scheme's point count L.
        slots: ``[S]`` the scheme point held by each model point.
        primary: ``[L]`` the model point read for each scheme point.
        pupils: (left, right) model points of the scheme's pupils (OpenCV's training
            log reports its error relative to them).
    """

    num_points: int
    slots: tuple[int, ...]
    primary: tuple[int, ...]
    pupils: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    @classmethod
    def for_scheme(cls, scheme: LandmarkScheme) -> LBFLayout:
        """The layout of ``scheme``.

        Raises:
            ValueError: a scheme that fits neither table.
        """
        flip = list(scheme.flip_permutation)
        n = len(flip)
        if n in LBF_FLIP_PAIRS and flip == _pairs_to_permutation(LBF_FLIP_PAIRS[n], n):
            slots = list(range(n))
        else:
            pairs = [(i, j) for i, j in enumerate(flip) if i < j]
            fixed = [i for i, j in enumerate(flip) if i == j]
            table = LBF_FLIP_PAIRS[29]
            swapped = {k for pair in table for k in pair}
            free = [k for k in range(29) if k not in swapped]
            if (not pairs and table) or (not fixed and free) or len(pairs) > len(table) \
                    or len(fixed) > len(free):
                raise ValueError(f"scheme {scheme.name} ({n} points) fits neither of "
                                 "FacemarkLBF's flip tables (68 and 29 points)")
            slots = [0] * 29
            for k, (a, b) in enumerate(table):
                slots[a], slots[b] = pairs[k % len(pairs)]
            for k, slot in enumerate(free):
                slots[slot] = fixed[k % len(fixed)]
        primary = tuple(slots.index(i) for i in range(n))
        pupils = (tuple(primary[i] for i in scheme.left_pupil),
                  tuple(primary[i] for i in scheme.right_pupil))
        return cls(num_points=n, slots=tuple(slots), primary=primary, pupils=pupils)


def _pairs_to_permutation(pairs: Sequence[tuple[int, int]], n: int) -> list[int]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def lbf_rect(box: np.ndarray) -> tuple[int, int, int, int]:
    """The ``cv::Rect`` (x, y, width, height) given to FacemarkLBF for a float box.

    Edges rounded to whole pixels (halves up), at least one pixel wide and high.
    FacemarkLBF treats the rectangle as the continuous box ``[x, x + w] x [y, y + h]``
    in the landmarks' coordinates, identically in training and fitting.
    """
    left, top, right, bottom = (_round_half_up(v) for v in
                                np.asarray(box, np.float64).reshape(4))
    return left, top, max(1, right - left), max(1, bottom - top)


def _write_lbf_faces(folder: str, images: Sequence[np.ndarray], boxes: np.ndarray,
                     slots: Sequence[int], landmarks: np.ndarray | None = None) -> None:
    """Writes ``faces.txt`` and ``pixels.bin`` of the ``lbf_tool`` protocol."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    offset = 0
    lines = [f"{len(images)} {len(slots)}"]
    with open(os.path.join(folder, "pixels.bin"), "wb") as pixels:
        for index, (image, box) in enumerate(zip(images, boxes)):
            # FacemarkLBF converts colour images with BGR2GRAY; the same weights on
            # our RGB channels give the same grey image.
            grey = np.ascontiguousarray(cv2.cvtColor(_dlib_image(image), cv2.COLOR_RGB2GRAY))
            pixels.write(grey.tobytes())
            fields = [offset, grey.shape[1], grey.shape[0], *lbf_rect(box)]
            line = " ".join(str(v) for v in fields)
            if landmarks is not None:
                points = np.asarray(landmarks[index], np.float64)[list(slots)]
                line += " " + " ".join(f"{v:.6f}" for v in points.reshape(-1))
            lines.append(line)
            offset += grey.size
    with open(os.path.join(folder, "faces.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _run_lbf_tool(args: Sequence[str], what: str) -> str:
    import subprocess

    done = subprocess.run(list(args), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lbf_tool {what} failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


class LBFPeer(_BatchMixin):
    """OpenCV's Facemark LBF (``cv::face::FacemarkLBF``, Ren et al., CVPR 2014).

    Trained and run by ``lbf_tool`` (``tools/lbf_tool.cpp``), a small C++ program
    built against a system OpenCV with the contrib modules, in a child process: the
    Python bindings of opencv-contrib wrap LBF's ``fit`` and ``loadModel`` but not its
    trainer, and the opencv-contrib wheel cannot share an environment with the
    package's ``opencv-python-headless``. Faces go to the tool as grey images with
    integer boxes (``lbf_rect``) in files. Training adds each face with our box as
    the face detector's answer (OpenCV drops a face whose landmarks do not fit the
    box, its ``getBBox`` rule: ``train_info["accepted"]`` counts those kept); fitting
    gives FacemarkLBF our box. Landmark schemes map onto OpenCV's point tables with
    ``LBFLayout`` (5 points ride in a 29-point model).

    ``predict_batch`` / ``predict_batch_timed`` run all faces in one child process;
    ``predict`` starts one per face (and loads the model each time).

    Args:
        model_path: a trained model (``train``, ``save``, ``load``).
        options: overrides of ``LBF_DEFAULT_OPTIONS`` for ``fit``.
        tool: the ``lbf_tool`` program (default ``$FACE_ALIGN_LBF_TOOL``).
        layout: the ``LBFLayout`` of ``model_path``.

    Raises:
        LBFUnavailable: no working ``lbf_tool``.
    """

    name = "lbf"

    def __init__(self, model_path: str | None = None, options: Mapping[str, Any] | None = None,
                 tool: str | None = None, layout: LBFLayout | None = None):
        self.tool_info = check_lbf_tool(tool)
        self.tool = self.tool_info["tool"]
        self.options = lbf_options(options)
        self.model_path = model_path
        self.layout = layout
        self.train_seconds: float | None = None
        self.train_info: dict[str, Any] | None = None
        self.last_times: np.ndarray | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def train(cls, faces: Iterable[Any], options: Mapping[str, Any] | None = None,
              tool: str | None = None, scheme: LandmarkScheme | None = None) -> LBFPeer:
        """Trains a FacemarkLBF model on ``faces`` with their boxes.

        Args:
            faces: ``Face`` objects or ``(image, landmarks, box, ...)`` tuples.
            options: overrides of ``LBF_DEFAULT_OPTIONS``.
            tool: the ``lbf_tool`` program.
            scheme: landmark scheme (default ``scheme_for(L)``).

        Returns:
            The trained peer (its model in a temporary folder until ``save``);
            ``train_seconds`` is OpenCV's training time, ``train_info`` the tool's
            record (OpenCV version, faces given and accepted, resolved parameters).
        """
        import json

        from common.schemes import scheme_for

        peer = cls(options=options, tool=tool)
        images, landmarks, boxes = _face_arrays(faces)
        _check_boxes(boxes)
        layout = LBFLayout.for_scheme(scheme or scheme_for(landmarks.shape[1]))
        peer._workdir = tempfile.TemporaryDirectory(prefix="lbf-")
        folder = os.path.join(peer._workdir.name, "train")
        _write_lbf_faces(folder, images, boxes, layout.slots, landmarks)
        del images
        model_path = os.path.join(peer._workdir.name, "lbf.yml")
        args = [peer.tool, "train", folder, model_path]
        for key, value in peer.options.items():
            value = ",".join(str(v) for v in value) if isinstance(value, list) else value
            args.append(f"{key}={value}")
        args += [f"pupils_left={','.join(map(str, layout.pupils[0]))}",
                 f"pupils_right={','.join(map(str, layout.pupils[1]))}"]
        output = _run_lbf_tool(args, "train")
        shutil.rmtree(folder, ignore_errors=True)
        peer.train_info = json.loads(output.strip().splitlines()[-1])
        peer.train_seconds = float(peer.train_info["train_seconds"])
        peer.model_path, peer.layout = model_path, layout
        return peer

    def fit(self, train_faces: Iterable[Any]) -> LBFPeer:
        """Trains in place with this peer's ``options``."""
        trained = self.train(train_faces, self.options, self.tool)
        for key in ("model_path", "layout", "train_seconds", "train_info", "_workdir"):
            setattr(self, key, getattr(trained, key))
        return self

    def _require(self) -> str:
        if self.model_path is None or self.layout is None:
            raise RuntimeError("LBFPeer has no model: call train/fit or load first")
        return self.model_path

    def predict_batch_timed(self, images: Sequence[np.ndarray],
                            boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of ``images[i]`` in ``boxes[i]``, in one run of the tool.

        Returns:
            ``(landmarks float32 [N, L, 2] pixels (NaN where OpenCV's fit failed),
            seconds float64 [N])``: the time of each ``FacemarkLBF::fit`` call inside
            the tool (model loading and file transfer excluded; grey conversion done
            before).
        """
        model_path = self._require()
        boxes = _check_boxes(boxes)
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        with tempfile.TemporaryDirectory(prefix="lbf-fit-") as folder:
            _write_lbf_faces(folder, images, boxes, self.layout.slots)
            out = os.path.join(folder, "predictions.txt")
            _run_lbf_tool([self.tool, "fit", folder, model_path, out], "fit")
            table = np.loadtxt(out, dtype=np.float64, ndmin=2)
        if table.shape != (len(images), 1 + 2 * self.layout.num_slots):
            raise RuntimeError(f"lbf_tool fit wrote a {table.shape} table for "
                               f"{len(images)} faces of {self.layout.num_slots} points")
        points = table[:, 1:].reshape(len(images), -1, 2)[:, list(self.layout.primary)]
        self.last_times = table[:, 0]
        return points.astype(np.float32), table[:, 0]

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Landmarks ``[N, L, 2]`` (see ``predict_batch_timed``)."""
        return self.predict_batch_timed(images, boxes)[0]

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Landmarks ``[L, 2]`` of one face (one child process; prefer the batch)."""
        return self.predict_batch([image], np.asarray(box, np.float32).reshape(1, 4))[0]

    def save(self, path: str) -> None:
        """Copies the model (OpenCV's FileStorage YAML) to ``path`` and its layout to
        ``path + ".layout.json"``, atomically."""
        import json

        model_path = self._require()
        layout = dataclasses.asdict(self.layout)
        atomic.write_atomically(path + ".layout.json",
                      lambda tmp: _write_text(tmp, json.dumps(layout) + "\n"))
        atomic.write_atomically(path, lambda tmp: shutil.copyfile(model_path, tmp))

    @classmethod
    def load(cls, path: str, tool: str | None = None) -> LBFPeer:
        """Reads a model written by ``save``."""
        import json

        if not (os.path.isfile(path) and os.path.isfile(path + ".layout.json")):
            raise FileNotFoundError(f"no LBF model (and .layout.json) at {path!r}")
        with open(path + ".layout.json") as f:
            layout = json.load(f)
        layout = LBFLayout(num_points=int(layout["num_points"]),
                           slots=tuple(layout["slots"]), primary=tuple(layout["primary"]),
                           pupils=tuple(tuple(p) for p in layout["pupils"]))
        return cls(model_path=path, tool=tool, layout=layout)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------
# Registry and evaluation
# --------------------------------------------------------------------------------------


PEERS: dict[str, Callable[..., Peer]] = {
    "dlib_ert": DlibERT,
    "mean_shape": MeanShape,
    "mtcnn": functools.partial(MTCNNPeer, mode="detect"),
    "mtcnn_box": functools.partial(MTCNNPeer, mode="box"),
    "lbf": LBFPeer,
}
"""Peer name -> factory taking keyword options (``PEERS[name](**kwargs)``)."""


def make_peer(name: str, **kwargs) -> Peer:
    """Builds the peer registered as ``name`` (a key of ``PEERS``)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name](**kwargs)


class PeerEvaluation(NamedTuple):
    """What ``evaluate_peer`` returns (unpacks with the errors first).

    Attributes:
        errors: float64 ``[N]`` per-face NME (``common.metrics.nme``).
        seconds_per_face: median wall time of one ``predict`` call.
        predictions: float32 ``[N, L, 2]`` pixels.
        landmarks: float32 ``[N, L, 2]`` ground truth.
        boxes: float32 ``[N, 4]`` the boxes given to the peer.
        times: float64 ``[N]`` seconds per ``predict`` call.
        source_paths: the faces' source paths.
    """

    errors: np.ndarray
    seconds_per_face: float
    predictions: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    times: np.ndarray
    source_paths: list[str]


def evaluate_peer(peer: Peer, faces: Iterable[Any], kind: str = "inter_pupil",
                  scheme: LandmarkScheme | None = None) -> PeerEvaluation:
    """Runs ``peer.predict`` on every face in its box and scores it.

    A peer that runs out of process (``LBFPeer``) has ``predict_batch_timed(images,
    boxes) -> (landmarks, seconds per face)``: it is called once for all faces, and
    the times are the ones it measured per face.

    Args:
        peer: a fitted peer.
        faces: ``Face`` objects or ``(image, landmarks, box, source_path)`` tuples.
        kind: normaliser of ``common.metrics.nme`` ("inter_pupil", "inter_ocular",
            "box_width", "box_diagonal").
        scheme: landmark scheme (default ``scheme_for(L)``).

    Returns:
        ``PeerEvaluation``; ``errors`` may hold NaN where a peer returns NaN (e.g.
        ``MTCNNPeer(on_miss="nan")``).
    """
    predict_timed = getattr(peer, "predict_batch_timed", None)
    predictions, landmarks, boxes, times, sources, images = [], [], [], [], [], []
    for face in faces:
        image, points, box = face[0], face[1], face[2]
        if predict_timed is not None:
            images.append(image)
        else:
            start = time.perf_counter()
            predicted = peer.predict(image, box)
            times.append(time.perf_counter() - start)
            predictions.append(np.asarray(predicted, np.float32).reshape(-1, 2))
        landmarks.append(np.asarray(points, np.float32).reshape(-1, 2))
        boxes.append(np.asarray(box, np.float32).reshape(4))
        sources.append(str(face[3]) if len(face) > 3 else "")
    if not landmarks:
        raise ValueError("evaluate_peer: no faces given")
    landmarks_array, boxes_array = np.stack(landmarks), np.stack(boxes)
    if predict_timed is not None:
        predicted_batch, times = predict_timed(images, boxes_array)
        predictions = list(np.asarray(predicted_batch, np.float32))
    predictions_array = np.stack(predictions)
    errors = metrics.nme(predictions_array, landmarks_array, kind, scheme=scheme,
                         boxes=boxes_array)
    times_array = np.asarray(times, np.float64)
    return PeerEvaluation(errors=errors, seconds_per_face=float(np.median(times_array)),
                          predictions=predictions_array, landmarks=landmarks_array,
                          boxes=boxes_array, times=times_array, source_paths=sources)
