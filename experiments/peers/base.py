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
from typing import Any

import numpy as np

from common.schemes import CUHK_5, LandmarkScheme, reduce_to_cuhk5
from common.tfrecord import Face  # noqa: F401  (re-exported)


class PeerUnavailable(ImportError):
    """A peer's optional package, model file or virtual environment is missing (the
    message says how to install it). An ``ImportError``, so callers may skip on it."""


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

    @classmethod
    def unavailable(cls) -> str:
        """Why this peer cannot be built here (``""``: it can), without building it.

        The base implementation returns ``""``; a peer with an optional package, model
        file or venv overrides it (its constructor then raises ``PeerUnavailable``).
        ``experiments.peers.registry.peer_unavailable`` reads it by registry name.
        """
        return ""


class CUHK5Peer(Peer):
    """A 68-point peer reduced to the 5 CUHK points (``common.schemes.reduce_to_cuhk5``).

    Either wraps a given peer (``CUHK5Peer(peer)``) or, in a subclass that sets
    ``source`` (a 68-point ``Peer`` class), builds ``source(**kwargs)``: such a
    subclass is what the registry holds for the ``<peer>_cuhk5`` names, so that its
    ``scheme`` (``CUHK_5``) is readable without building it. Attributes the wrapper
    lacks (``misses``, ``close``, ...) are the wrapped peer's.

    Args:
        peer: a 68-point peer; ``name`` becomes ``peer.name + "_cuhk5"``.
        **kwargs: options of ``source`` (only without ``peer``).

    Raises:
        TypeError: neither ``peer`` nor a ``source``, or both ``peer`` and options.
    """

    scheme = CUHK_5
    source: type[Peer] | None = None

    def __init__(self, peer: Peer | None = None, **kwargs):
        if peer is None:
            if self.source is None:
                raise TypeError(f"{type(self).__name__} needs a peer to reduce")
            peer = self.source(**kwargs)
        elif kwargs:
            raise TypeError(f"options {sorted(kwargs)} given with a built peer")
        self.peer = peer
        self.name = f"{peer.name}_cuhk5"
        self.trainable = peer.trainable
        if hasattr(peer, "predict_batch_timed"):
            self.predict_batch_timed = self._predict_batch_timed

    @classmethod
    def unavailable(cls) -> str:
        """Why ``source`` cannot be built here (``""``: it can)."""
        return "" if cls.source is None else cls.source.unavailable()

    def fit(self, train_faces: Iterable[Any] | None = None) -> CUHK5Peer:
        """Fits the wrapped peer (a no-op for a pretrained one); returns ``self``."""
        self.peer.fit(train_faces)
        return self

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Five landmarks float32 ``[5, 2]`` (CUHK_5 order)."""
        return reduce_to_cuhk5(np.asarray(self.peer.predict(image, box), np.float32))

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Five landmarks per face, float32 ``[N, 5, 2]``."""
        return reduce_to_cuhk5(np.asarray(self.peer.predict_batch(images, boxes), np.float32))

    def _predict_batch_timed(self, images: Sequence[np.ndarray], boxes: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
        points, seconds = self.peer.predict_batch_timed(images, boxes)
        return reduce_to_cuhk5(np.asarray(points, np.float32)), seconds

    def __getattr__(self, attr: str):
        # Only for attributes not found otherwise: misses, missed_indices, close, ...
        if attr == "peer":
            raise AttributeError(attr)
        return getattr(self.peer, attr)
