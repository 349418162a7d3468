"""What every peer is: the ``Peer`` base class, the faces it sees and shared helpers.

A peer is a landmark method run in the same harness as our models, on the same faces
and face boxes (``experiments.peers.evaluate.iterate_faces``). Images are uint8 RGB
``[H, W, 3]``, boxes float ``[4]`` (left, top, right, bottom) and landmarks float32
``[L, 2]`` (x, y) image pixels in the package convention (pixel centres at integers,
docs/DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

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



def face_arrays(faces: Iterable[Any]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Splits faces (``Face`` or 4-tuples) into images, landmarks ``[N, L, 2]``, boxes.

    Raises:
        ValueError: no faces, or faces with different landmark counts.
    """
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


def check_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes as float64 ``[N, 4]``, each with a positive finite width and height.

    Raises:
        ValueError: a box without area (the message names the face).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    bad = np.flatnonzero(~np.all(np.isfinite(sizes) & (sizes > 0), axis=1))
    if bad.size:
        raise ValueError(f"face box {boxes[bad[0]].tolist()} (face {bad[0]}) has no area; "
                         "boxes are (left, top, right, bottom)")
    return boxes


def round_half_up(value: float) -> int:
    """``value`` rounded to the nearest integer, halves up (``floor(value + 0.5)``)."""
    return math.floor(value + 0.5)


def rgb_image(image: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 RGB ``[H, W, 3]`` image (what dlib and OpenCV read).

    Raises:
        ValueError: another dtype or shape.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} "
                         f"{image.shape}")
    return np.ascontiguousarray(image)


class Peer:
    """What every peer provides: a name, fitting, prediction in a box, a description.

    Subclasses set ``name`` (the registry name, ``experiments.peers.registry``) and
    implement ``predict``; a trainable peer overrides ``fit`` (the default does
    nothing, as for a pretrained model). A peer with a fixed landmark scheme (a
    pretrained model) sets ``scheme``; ``None`` means the scheme of its training faces.

    Attributes:
        name: registry name, e.g. ``"dlib_ert"``.
        label: display name in reports (``""``: the report's own, else ``name``).
        scheme: the landmark scheme it predicts, or ``None`` (that of ``fit``'s faces).
        trainable: whether ``fit`` learns from the training faces.
    """

    name: str = ""
    label: str = ""
    scheme: LandmarkScheme | None = None
    trainable: bool = False

    def fit(self, train_faces: Iterable[Any] | None = None) -> Peer:
        """Learns from ``train_faces`` (``Face`` or 4-tuples); returns ``self``.

        The base implementation does nothing (a pretrained peer).
        """
        return self

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Landmarks float32 ``[L, 2]`` pixels of the face of ``image`` in ``box``."""
        raise NotImplementedError(f"{type(self).__name__}.predict")

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Landmarks ``[N, L, 2]`` for ``images[i]`` in ``boxes[i]`` (see ``predict``)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        return np.stack([self.predict(image, box) for image, box in zip(images, boxes)])

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: name, class, scheme, whether trainable."""
        return {"name": self.name, "class": type(self).__name__,
                "scheme": None if self.scheme is None else self.scheme.name,
                "trainable": self.trainable}
