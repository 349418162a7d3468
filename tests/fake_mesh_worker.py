"""A stand-in for ``experiments/mediapipe_worker.py`` (a helper, not a test module).

Speaks the worker protocol over stdin / stdout without MediaPipe: every "mesh" vertex
is the centroid of the crop's bright pixels (> 128) in MediaPipe's normalised crop
units (0 = left edge, 1 = right edge); a crop without bright pixels has no face.
``tests/test_pretrained_peers.py`` draws a bright dot and checks that the peer maps
it back to its image position.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from experiments import mediapipe_worker


def bright_centroid(crop: np.ndarray):
    ys, xs = np.nonzero(crop[..., 0] > 128)
    if xs.size == 0:
        return None
    side = crop.shape[1]
    centre = np.array([(xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side, 0.0])
    return np.tile(centre, (mediapipe_worker.MESH_POINTS, 1))


if __name__ == "__main__":
    mediapipe_worker.serve(bright_centroid, sys.stdin, sys.stdout)
