"""The faces every peer sees, and the scoring of a peer on them.

Every comparison in the project evaluates its peers on the faces of the TFRecords
written by ``common.prepare`` / ``common.synthetic`` (``iterate_faces``), with the
face box stored there, so that a difference in error is a difference of method,
not of data or of boxes. ``evaluate_peer`` runs a peer over faces and returns
per-face NMEs (``common.metrics.nme``) and the median time per face.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from common import metrics
from common.multidata import iterate_faces  # noqa: F401  (re-exported)
from common.schemes import LandmarkScheme
from common.tfrecord import Face  # noqa: F401  (re-exported)
from experiments.peers.base import Peer


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
