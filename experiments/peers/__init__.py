"""Peer methods run in the same harness as our models: same faces, same face boxes.

Every comparison in the project evaluates its peers on the faces of the TFRecords
written by ``common.prepare`` / ``common.synthetic`` (``iterate_faces``), with the
face box stored there, so that a difference in error is a difference of method,
not of data or of boxes.

One module per peer, each behind the one interface of ``base.Peer`` (``name``,
``scheme``, ``trainable``, ``fit(train_faces)``, ``predict(image, box)``,
``predict_batch(images, boxes)``, ``describe()``) and registered by name in
``registry.PEERS`` (``make_peer(name, **options)``):

* ``"mean_shape"`` (``mean_shape.MeanShape``): the floor every method must beat, the
  mean training shape in face-box coordinates placed in the given box.
* ``"dlib_ert"`` (``dlib_ert.DlibERT``): dlib's ensemble of regression trees (Kazemi
  and Sullivan, CVPR 2014), trained on our training split and our boxes.
* ``"mtcnn"`` / ``"mtcnn_box"`` (``mtcnn_peer.MTCNNPeer``): the pretrained MTCNN
  (Zhang et al., IEEE SPL 2016) of the ``mtcnn`` package, 5 points; its own detector
  matched to the given box, or its last stage (ONet) on the given box.
* ``"lbf"`` (``lbf.LBFPeer``): OpenCV's Facemark LBF (Ren et al., CVPR 2014),
  trained on our faces and boxes by the C++ program ``tools/lbf_tool.cpp`` in a
  child process (``$FACE_ALIGN_LBF_TOOL``, README "Optional peers").
* ``"dlib_pretrained68"`` / ``"dlib_pretrained68_detect"``
  (``dlib_pretrained.DlibPretrained68``): dlib's pretrained 68-point model of the
  ``face-recognition-models`` package, on the given box or on dlib's matching
  detection.
* ``"mediapipe_mesh"`` (``mediapipe_mesh.MediaPipeFaceMesh``): MediaPipe's face mesh,
  run in its own venv by ``experiments/mediapipe_worker.py``, mapped to the 68 points.
* ``"<pretrained 68-point peer>_cuhk5"`` (``base.CUHK5Peer`` subclasses): those three
  reduced to the 5 CUHK points (``common.schemes.reduce_to_cuhk5``).

A peer whose optional package, tool or venv is missing says why in its class's
``unavailable()`` (``registry.peer_unavailable(name)``) and raises ``PeerUnavailable``
from its constructor.

Images are uint8 RGB ``[H, W, 3]``, boxes float ``[4]`` (left, top, right, bottom) and
landmarks float32 ``[L, 2]`` (x, y) image pixels in the package convention (pixel
centres at integers, docs/DESIGN.md). ``evaluate_peer`` runs a peer over faces and
returns per-face NMEs (``common.metrics.nme``) and the median time per face.

Adding a peer is one new module in this folder that registers itself
(``registry.register_peer``): the package imports every module it holds.
"""

from __future__ import annotations

import importlib
import pkgutil

# These imports register the peers, in this order (the order of PEERS and of the
# names in make_peer's error message); the loop below imports any other peer module.
# isort: off
from experiments.peers.base import CUHK5Peer, Face, Peer, PeerUnavailable
from experiments.peers.dlib_ert import (
    DLIB_DEFAULT_OPTIONS,
    DlibERT,
    box_to_dlib_rect,
    dlib_default_options,
)
from experiments.peers.evaluate import PeerEvaluation, evaluate_peer, iterate_faces
from experiments.peers.mean_shape import MeanShape
from experiments.peers.mtcnn_peer import (
    MTCNN_KEYPOINTS,
    MTCNN_MODES,
    MTCNN_ONET_SIZE,
    MTCNNPeer,
    square_box,
)
from experiments.peers.lbf import (
    LBF_DEFAULT_OPTIONS,
    LBF_FLIP_PAIRS,
    LBF_QUICK_OPTIONS,
    LBF_TOOL_ENV,
    LBFLayout,
    LBFPeer,
    LBFUnavailable,
    check_lbf_tool,
    lbf_options,
    lbf_rect,
    lbf_tool_path,
)
from experiments.peers.registry import (
    PEERS,
    make_peer,
    peer_class,
    peer_unavailable,
    register_peer,
)
# isort: on

_INFRASTRUCTURE = {"base", "registry", "evaluate"}

for _module in pkgutil.iter_modules(__path__):
    # Every other module is a peer that registers itself when imported.
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DLIB_DEFAULT_OPTIONS", "LBF_DEFAULT_OPTIONS", "LBF_FLIP_PAIRS", "LBF_QUICK_OPTIONS",
    "LBF_TOOL_ENV", "MTCNN_KEYPOINTS", "MTCNN_MODES", "MTCNN_ONET_SIZE", "PEERS", "CUHK5Peer",
    "DlibERT", "Face", "LBFLayout", "LBFPeer", "LBFUnavailable", "MTCNNPeer", "MeanShape",
    "Peer", "PeerEvaluation", "PeerUnavailable", "box_to_dlib_rect", "check_lbf_tool",
    "dlib_default_options", "evaluate_peer", "iterate_faces", "lbf_options", "lbf_rect",
    "lbf_tool_path", "make_peer", "peer_class", "peer_unavailable", "register_peer",
    "square_box",
]
