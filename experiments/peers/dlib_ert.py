"""``"dlib_ert"``: dlib's ensemble of regression trees, trained on our faces and boxes.

Kazemi and Sullivan, "One millisecond face alignment with an ensemble of regression
trees", CVPR 2014, trained on our training split and our boxes with
``dlib.train_shape_predictor``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from common import atomic
from experiments.peers.base import Peer, check_boxes, face_arrays, rgb_image, round_half_up
from experiments.peers.registry import register_peer

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
    rl, rt = round_half_up(left + 0.5), round_half_up(top + 0.5)
    rr, rb = round_half_up(right - 0.5), round_half_up(bottom - 0.5)
    return dlib.rectangle(rl, rt, max(rr, rl), max(rb, rt))



@register_peer("dlib_ert")
class DlibERT(Peer):
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
    trainable = True
    model_suffix = ".dat"

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
        images, landmarks, boxes = face_arrays(faces)
        check_boxes(boxes)
        dlib_images = [rgb_image(image) for image in images]
        objects = []
        for points, box in zip(landmarks, boxes):
            parts = [dlib.point(round_half_up(x), round_half_up(y)) for x, y in points]
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
        shape = self._require()(rgb_image(image), box_to_dlib_rect(box))
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

