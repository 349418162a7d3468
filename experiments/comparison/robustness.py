"""The box-robustness table of a comparison: every method under several box sources.

``experiments.compare_real`` scores our model and the peers of our point count on the
first ``faces`` eval faces under the sources of ``common.box_robustness`` (the stored
box, the landmark-extent square, dlib's and MTCNN's detections, +-5 / +-10 % jitter);
a source that has no box for any of them (a detector that finds none, MTCNN not
installed) is dropped with a note.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common import box_robustness

DEFAULT_SOURCES = box_robustness.ALL_SOURCES
DEFAULT_FACES = box_robustness.DEFAULT_FACES
robustness_section = box_robustness.robustness_section


def peer_box_predictor(peer: Any) -> box_robustness.BoxPredictor:
    """A peer (``predict(image, box) -> [L, 2]``) as a ``BoxPredictor``."""
    def predict(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(peer.predict(image, box), np.float32)
                         for box in np.asarray(boxes, np.float32).reshape(-1, 4)])

    return predict
