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

Every peer has ``name``, ``fit(train_faces)``, ``predict(image, box)`` and
``predict_batch(images, boxes)``; images are uint8 RGB ``[H, W, 3]``, boxes float
``[4]`` (left, top, right, bottom) and landmarks float32 ``[L, 2]`` (x, y) image pixels
in the package convention (pixel centres at integers, docs/DESIGN.md).
``evaluate_peer`` runs a peer over faces and returns per-face NMEs
(``common.metrics.nme``) and the median time per face.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from common import metrics
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


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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

        _atomic_write(path, write)

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
        _atomic_write(path, predictor.save)

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
# Registry and evaluation
# --------------------------------------------------------------------------------------


PEERS: dict[str, Callable[..., Peer]] = {
    "dlib_ert": DlibERT,
    "mean_shape": MeanShape,
    "mtcnn": functools.partial(MTCNNPeer, mode="detect"),
    "mtcnn_box": functools.partial(MTCNNPeer, mode="box"),
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
    predictions, landmarks, boxes, times, sources = [], [], [], [], []
    for face in faces:
        image, points, box = face[0], face[1], face[2]
        start = time.perf_counter()
        predicted = peer.predict(image, box)
        times.append(time.perf_counter() - start)
        predictions.append(np.asarray(predicted, np.float32).reshape(-1, 2))
        landmarks.append(np.asarray(points, np.float32).reshape(-1, 2))
        boxes.append(np.asarray(box, np.float32).reshape(4))
        sources.append(str(face[3]) if len(face) > 3 else "")
    if not predictions:
        raise ValueError("evaluate_peer: no faces given")
    predictions_array, landmarks_array = np.stack(predictions), np.stack(landmarks)
    boxes_array = np.stack(boxes)
    errors = metrics.nme(predictions_array, landmarks_array, kind, scheme=scheme,
                         boxes=boxes_array)
    times_array = np.asarray(times, np.float64)
    return PeerEvaluation(errors=errors, seconds_per_face=float(np.median(times_array)),
                          predictions=predictions_array, landmarks=landmarks_array,
                          boxes=boxes_array, times=times_array, source_paths=sources)
