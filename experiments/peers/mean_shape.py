"""``"mean_shape"``: the mean training shape placed in the face box, the floor every
method must beat.

The mean of the training landmarks in normalised face-box coordinates
``u = (x - l) / (r - l)``, ``v = (y - t) / (b - t)`` (the face box itself, no crop
margin), mapped into the given box.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from common import atomic
from experiments.peers.base import Peer, check_boxes, face_arrays
from experiments.peers.registry import register_peer


@register_peer("mean_shape")
class MeanShape(Peer):
    """The mean training shape in face-box coordinates, placed in the given box.

    ``fit`` stores ``mean_i((x_i - l_i) / (r_i - l_i), (y_i - t_i) / (b_i - t_i))``;
    ``predict`` returns ``(l + u (r - l), t + v (b - t))``. No image is looked at.

    Args:
        mean: optional normalised mean shape ``[L, 2]`` (e.g. from ``load``).
    """

    name = "mean_shape"
    trainable = True
    model_suffix = ".npy"

    def __init__(self, mean: np.ndarray | None = None):
        self.mean = None if mean is None else np.asarray(mean, np.float64).reshape(-1, 2)

    def fit(self, train_faces: Iterable[Any]) -> MeanShape:
        """Computes the mean normalised shape of ``train_faces`` (``Face`` or 4-tuples)."""
        _, landmarks, boxes = face_arrays(train_faces)
        boxes = check_boxes(boxes)
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
        box = check_boxes(box)[0]
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
