"""``"mtcnn"`` / ``"mtcnn_box"``: the pretrained MTCNN (5 points), in two modes.

Zhang et al., "Joint face detection and alignment using multitask cascaded
convolutional networks", IEEE SPL 2016, of the ``mtcnn`` PyPI package (optional
extra, weights inside the wheel). ``"mtcnn"`` runs its own detector and keeps the
detection that best overlaps the given box; ``"mtcnn_box"`` runs its last stage
(ONet) on the given box.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np

from common.boxes import box_iou
from common.schemes import CUHK_5
from experiments.peers.base import Peer, check_boxes
from experiments.peers.registry import register_peer

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


class MTCNNPeer(Peer):
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

    scheme = CUHK_5

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

        boxes = check_boxes(boxes)
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
        box = check_boxes(box)[0]
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



register_peer("mtcnn", functools.partial(MTCNNPeer, mode="detect"))
register_peer("mtcnn_box", functools.partial(MTCNNPeer, mode="box"))
