"""The box-robustness table of a comparison: every method under several box sources.

``experiments.compare_real`` scores our model and the peers of our point count on the
first ``faces`` eval faces under the sources of ``common.box_robustness`` (the stored
box, the landmark-extent square, dlib's and MTCNN's detections, +-5 / +-10 % jitter);
a source that has no box for any of them (a detector that finds none, MTCNN not
installed) is dropped with a note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common import box_robustness

DEFAULT_SOURCES = box_robustness.ALL_SOURCES
DEFAULT_FACES = 200


def peer_box_predictor(peer: Any) -> box_robustness.BoxPredictor:
    """A peer (``predict(image, box) -> [L, 2]``) as a ``BoxPredictor``."""
    def predict(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(peer.predict(image, box), np.float32)
                         for box in np.asarray(boxes, np.float32).reshape(-1, 4)])

    return predict


def robustness_section(methods: Mapping[str, box_robustness.BoxPredictor],
                       faces: Sequence[Any], *, kind: str, sources: Sequence[str],
                       num_faces: int, seed: int = 0) -> dict[str, Any]:
    """Scores ``methods`` under every box source on the first ``num_faces`` faces.

    Args:
        methods: ``{label: BoxPredictor}``.
        faces: ``(image, landmarks, box, ...)`` eval faces.
        kind: the normaliser (the comparison's headline metric).
        sources: box sources (``common.box_robustness.ALL_SOURCES``); ``mtcnn`` is
            dropped with a note when the package is missing.
        num_faces: faces scored (the first ones).
        seed: seed of the jittered sources.

    Returns:
        ``{"table": RobustnessTable or None, "markdown": str, "notes": [str]}``.
    """
    notes: list[str] = []
    sources = list(sources)
    if "mtcnn" in sources and not box_robustness.mtcnn_available():
        sources.remove("mtcnn")
        notes.append("Box robustness: MTCNN boxes skipped (the `mtcnn` package is not "
                     "installed).")
    faces = list(faces[:num_faces])
    boxes = box_robustness.source_boxes(faces, sources, seed=seed)
    for name in list(boxes):
        if not np.all(np.isfinite(boxes[name]), axis=1).any():
            del boxes[name]
            notes.append(f"Box robustness: no `{name}` box for any of the {len(faces)} "
                         "faces; that source is left out.")
    try:
        table = box_robustness.score_under_boxes(methods, faces, boxes, kind=kind)
    except ValueError as error:
        notes.append(f"Box robustness table skipped: {error}.")
        return {"table": None, "markdown": "", "notes": notes}
    markdown = "### Box robustness (the same faces under each box source)\n\n" + table.markdown()
    return {"table": table, "markdown": markdown, "notes": notes}
