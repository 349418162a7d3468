"""``"dlib_pretrained68"`` / ``"dlib_pretrained68_detect"``: dlib's pretrained 68 points.

``shape_predictor_68_face_landmarks.dat`` of the ``face-recognition-models`` package
(the ``peers`` extra): dlib's model (Kazemi and Sullivan, CVPR 2014), trained on the
300-W training images (AFW, HELEN train, LFPW train, iBUG) with boxes of dlib's HOG
detector. ``"dlib_pretrained68"`` runs it on the given box; ``"dlib_pretrained68_detect"``
runs dlib's HOG detector and uses the detection that best overlaps the given box (the
boxes it was trained for). ``fit`` does nothing. The ``_cuhk5`` forms
(``"dlib_pretrained68_cuhk5"``, ``"dlib_pretrained68_detect_cuhk5"``) reduce the 68
points to the 5 CUHK points (``common.schemes.reduce_to_cuhk5``).

Without ``face-recognition-models`` the constructor raises ``PeerUnavailable`` with the
install command, and ``DlibPretrained68.unavailable()`` says so without raising.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from common.schemes import IBUG_68
from experiments.peers.base import CUHK5Peer, Peer, PeerUnavailable, check_boxes, rgb_image
from experiments.peers.dlib_ert import box_to_dlib_rect
from experiments.peers.registry import register_peer

PRETRAINED_MODES = ("box", "detect")

DLIB68_INSTALL = "pip install face-recognition-models  (or: pip install -e \".[peers]\")"


def match_detection(box: np.ndarray, detections: Sequence[np.ndarray],
                    min_iou: float) -> int | None:
    """Index of the detection with the highest IoU with ``box`` if >= ``min_iou``."""
    from common.boxes import box_iou  # imports TensorFlow (common.records)

    ious = np.array([box_iou(box, d) for d in detections])
    if ious.size and ious.max() >= min_iou:
        return int(np.argmax(ious))
    return None


def dlib68_model_path() -> str:
    """Path of ``shape_predictor_68_face_landmarks.dat`` in ``face-recognition-models``.

    Raises:
        PeerUnavailable: the package is not installed or lacks the file.
    """
    try:
        import face_recognition_models
    except ImportError as e:
        raise PeerUnavailable(
            "dlib_pretrained68 needs the 'face-recognition-models' package (dlib's "
            f"pretrained shape_predictor_68_face_landmarks.dat): {DLIB68_INSTALL}") from e
    path = face_recognition_models.pose_predictor_model_location()
    if not os.path.isfile(path):
        raise PeerUnavailable(f"face-recognition-models has no 68-point model at "
                              f"{path!r}; reinstall it: {DLIB68_INSTALL}")
    return path


@register_peer("dlib_pretrained68")
class DlibPretrained68(Peer):
    """dlib's pretrained 68-point ``shape_predictor`` (Kazemi and Sullivan, CVPR 2014).

    dlib trained ``shape_predictor_68_face_landmarks.dat`` on the 300-W training
    images with its HOG detector's boxes, so it is scored both on those boxes
    (``mode="detect"``) and on ours (``mode="box"``). Predictions are whole pixels
    (dlib's ``dlib.point``).

    Args:
        mode: ``"box"``: the predictor on the given box (``box_to_dlib_rect``);
            ``"detect"``: dlib's HOG detector (``common.boxes.DlibBoxFinder``) on the
            image, and the detection with the highest IoU with the given box if it is at
            least ``min_iou``; otherwise the face counts as missed (``misses``) and
            ``on_miss`` decides: ``"box"`` uses the given box, ``"nan"`` returns NaN.
        model_path: a dlib 68-point shape predictor file (default: the one of
            ``face-recognition-models``).
        min_iou: least IoU of a matching detection (detect mode).
        on_miss: ``"box"`` or ``"nan"`` (detect mode).
        upsample: dlib detector upsampling (detect mode; 1 as in ``common.prepare``).

    Raises:
        PeerUnavailable: no ``model_path`` and ``face-recognition-models`` is not
            installed.
        FileNotFoundError: ``model_path`` does not exist.
    """

    name = "dlib_pretrained68"
    label = "dlib 68 (pretrained, our box)"
    scheme = IBUG_68

    def __init__(self, mode: str = "box", model_path: str | None = None,
                 min_iou: float = 0.4, on_miss: str = "box", upsample: int = 1):
        if mode not in PRETRAINED_MODES:
            raise ValueError(f"mode must be one of {PRETRAINED_MODES}, got {mode!r}")
        if on_miss not in ("box", "nan"):
            raise ValueError(f"on_miss must be 'box' or 'nan', got {on_miss!r}")
        import dlib

        path = model_path or dlib68_model_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no dlib shape predictor at {path!r}")
        self.model_path = path
        self.predictor = dlib.shape_predictor(path)
        self.mode = mode
        self.name = "dlib_pretrained68" if mode == "box" else "dlib_pretrained68_detect"
        self.min_iou = float(min_iou)
        self.on_miss = on_miss
        self.upsample = int(upsample)
        self.calls = 0
        self.misses = 0
        self.missed_indices: list[int] = []
        self._finder = None

    @classmethod
    def unavailable(cls) -> str:
        """Why the default model file cannot be found (``""``: it can)."""
        try:
            dlib68_model_path()
        except PeerUnavailable as e:
            return str(e)
        return ""

    def detections(self, image: np.ndarray) -> list[np.ndarray]:
        """dlib's HOG detections of ``image`` as package boxes, best score first."""
        if self._finder is None:
            from common.boxes import DlibBoxFinder

            self._finder = DlibBoxFinder(upsample=self.upsample)
        return [box for box, _ in self._finder.detect(image)]

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (iBUG order) of the face in ``box``.

        Returns:
            float32 ``[68, 2]`` pixels (NaN for a miss with ``on_miss="nan"``).
        """
        box = check_boxes(box)[0]
        image = rgb_image(image)
        self.calls += 1
        if self.mode == "detect":
            detections = self.detections(image)
            index = match_detection(box, detections, self.min_iou)
            if index is not None:
                box = detections[index]
            else:
                self.misses += 1
                self.missed_indices.append(self.calls - 1)
                if self.on_miss == "nan":
                    return np.full((68, 2), np.nan, np.float32)
        shape = self.predictor(image, box_to_dlib_rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32).reshape(-1, 2)

    def describe(self) -> dict:
        """``Peer.describe`` plus the mode and the model file."""
        return {**super().describe(), "mode": self.mode, "model_path": self.model_path}


@register_peer("dlib_pretrained68_detect")
class DlibPretrained68Detect(DlibPretrained68):
    """``DlibPretrained68(mode="detect")``: on dlib's matching HOG detection."""

    name = "dlib_pretrained68_detect"
    label = "dlib 68 (pretrained, dlib detector)"

    def __init__(self, **kwargs):
        super().__init__(mode="detect", **kwargs)


@register_peer("dlib_pretrained68_cuhk5")
class DlibPretrained68CUHK5(CUHK5Peer):
    """``"dlib_pretrained68"`` reduced to the 5 CUHK points."""

    name = "dlib_pretrained68_cuhk5"
    label = "dlib 68 -> 5 (pretrained, our box)"
    source = DlibPretrained68


@register_peer("dlib_pretrained68_detect_cuhk5")
class DlibPretrained68DetectCUHK5(CUHK5Peer):
    """``"dlib_pretrained68_detect"`` reduced to the 5 CUHK points."""

    name = "dlib_pretrained68_detect_cuhk5"
    label = "dlib 68 -> 5 (pretrained, dlib detector)"
    source = DlibPretrained68Detect
