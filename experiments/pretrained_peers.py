"""Pretrained 68-point peers: dlib's shape_predictor_68 and MediaPipe's face mesh.

Both are what users run today without training anything; both follow the peer
contract of ``common.peers`` (``name``, ``fit``, ``predict(image, box) -> [68, 2]``,
``predict_batch(images, boxes)``; uint8 RGB images, float (left, top, right, bottom)
boxes, pixel centres at integers). ``fit`` does nothing. ``CUHK5Peer`` wraps either
into a 5-point peer through the project's one reduction
(``common.schemes.reduce_to_cuhk5``).

* ``DlibPretrained68`` (``"dlib_pretrained68"`` / ``"dlib_pretrained68_detect"``):
  ``shape_predictor_68_face_landmarks.dat`` of the ``face-recognition-models`` package
  (the ``peers`` extra; dlib's model, trained on the 300-W training images -- AFW,
  HELEN train, LFPW train, iBUG -- with boxes of dlib's HOG detector). Mode ``"box"``
  runs it on the given box; mode ``"detect"`` runs dlib's HOG detector and uses the
  detection that best overlaps the given box (the boxes it was trained for).
* ``MediaPipeFaceMesh`` (``"mediapipe_mesh"``): MediaPipe's 468-vertex face mesh
  (``mediapipe==0.10.21``, run in its own virtual environment by
  ``experiments/mediapipe_worker.py``; ``MEDIAPIPE_VENV_COMMAND`` creates it), run on
  a square crop around the given box and mapped to the 68 iBUG points by
  ``MESH_TO_IBUG68`` (chosen on 300-W training faces by
  ``experiments.mediapipe_correspondence``).

A peer whose package or venv is absent raises ``PretrainedPeerUnavailable`` (an
``ImportError``) from its constructor, with the command that installs it;
``available(name)`` says so without raising.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from common.boxes import box_iou
from common.peers import _BatchMixin, _check_boxes, _dlib_image, box_to_dlib_rect
from common.schemes import reduce_to_cuhk5
from experiments import mediapipe_worker


class PretrainedPeerUnavailable(ImportError):
    """A pretrained peer's package, model file or virtual environment is missing."""


PRETRAINED_MODES = ("box", "detect")


def _match_detection(box: np.ndarray, detections: Sequence[np.ndarray],
                     min_iou: float) -> int | None:
    """Index of the detection with the highest IoU with ``box`` if >= ``min_iou``."""
    ious = np.array([box_iou(box, d) for d in detections])
    if ious.size and ious.max() >= min_iou:
        return int(np.argmax(ious))
    return None


# --------------------------------------------------------------------------------------
# dlib's pretrained 68-point model
# --------------------------------------------------------------------------------------

DLIB68_INSTALL = "pip install face-recognition-models  (or: pip install -e \".[peers]\")"


def dlib68_model_path() -> str:
    """Path of ``shape_predictor_68_face_landmarks.dat`` in ``face-recognition-models``.

    Raises:
        PretrainedPeerUnavailable: the package is not installed or lacks the file.
    """
    try:
        import face_recognition_models
    except ImportError as e:
        raise PretrainedPeerUnavailable(
            "dlib_pretrained68 needs the 'face-recognition-models' package (dlib's "
            f"pretrained shape_predictor_68_face_landmarks.dat): {DLIB68_INSTALL}") from e
    path = face_recognition_models.pose_predictor_model_location()
    if not os.path.isfile(path):
        raise PretrainedPeerUnavailable(f"face-recognition-models has no 68-point model at "
                                        f"{path!r}; reinstall it: {DLIB68_INSTALL}")
    return path


class DlibPretrained68(_BatchMixin):
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
        PretrainedPeerUnavailable: no ``model_path`` and ``face-recognition-models``
            is not installed.
    """

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

    def fit(self, train_faces: Iterable[Any] | None = None) -> DlibPretrained68:
        """Does nothing (the model is pretrained); returns ``self``."""
        return self

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
        box = _check_boxes(box)[0]
        image = _dlib_image(image)
        self.calls += 1
        if self.mode == "detect":
            detections = self.detections(image)
            index = _match_detection(box, detections, self.min_iou)
            if index is not None:
                box = detections[index]
            else:
                self.misses += 1
                self.missed_indices.append(self.calls - 1)
                if self.on_miss == "nan":
                    return np.full((68, 2), np.nan, np.float32)
        shape = self.predictor(image, box_to_dlib_rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# MediaPipe face mesh (out of process)
# --------------------------------------------------------------------------------------

MEDIAPIPE_PYTHON_ENV = "FACE_ALIGN_MEDIAPIPE_PYTHON"
"""Environment variable naming the Python of a venv with ``mediapipe==0.10.21``."""

MEDIAPIPE_VENV = os.path.join("~", ".cache", "face_align_tf", "mediapipe-venv")
"""Default venv (``~`` expanded at use), searched when the variable is unset."""

MEDIAPIPE_VERSION = "0.10.21"
MEDIAPIPE_VENV_COMMAND = (
    f"python3 -m venv {MEDIAPIPE_VENV} && "
    f"{MEDIAPIPE_VENV}/bin/pip install mediapipe=={MEDIAPIPE_VERSION}")
"""The command that creates the default venv (about 1 GB with jax, ~1 min)."""

MESH_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16
    (127,), (137, 227, 234), (132, 137, 177), (215,), (172,), (136, 150), (149,), (148,),
    (152,), (377, 400), (378,), (365, 379), (397,), (435,), (366, 401), (323, 356, 366),
    (356,),
    # brows 17-26
    (70, 156), (63,), (52, 65, 104), (66, 107), (9, 107, 221), (285, 336), (285, 295, 299),
    (299, 334, 444), (293,), (300, 383),
    # nose 27-35
    (8, 122, 417), (122, 248, 351), (3, 5, 456), (4, 5, 354), (60, 98, 240), (60, 141, 167),
    (164, 370), (326, 328), (460,),
    # eyes 36-47
    (7, 246), (159, 160), (157, 158), (155,), (153,), (145, 163), (382,), (385,),
    (249, 257, 386), (249, 263), (373,), (374, 380),
    # mouth 48-67
    (61,), (39, 73, 74), (0, 37, 72), (0, 11), (267, 302), (269, 270, 304), (287, 291, 306),
    (321, 405), (314,), (17,), (84,), (106, 180, 181), (78, 146, 183), (38,), (13,), (268,),
    (292, 308, 375), (316, 317, 402), (14,), (87,),
)
"""Mesh vertices averaged for each iBUG-68 point (index = iBUG point, 0-based).

Chosen by ``experiments.mediapipe_correspondence`` (which prints this table) on the
969 w300 training faces of the photos not held out (80 % by photo; stored boxes):
per iBUG point, the vertex or mean of 2-3 vertices with the smallest mean
inter-pupil-normalised distance to the annotation. Mean point error there: jaw
11.99 %, inner points 17-67 4.80 %; on the 238 held-out faces jaw 11.58 %, inner
4.76 % (the jaw differs most: iBUG's jaw is the visible outline, a mesh vertex a fixed
skin point)."""


def mediapipe_python(python: str | None = None) -> str:
    """The MediaPipe venv's Python: ``python``, ``$FACE_ALIGN_MEDIAPIPE_PYTHON`` or the
    default venv's ``bin/python``.

    Raises:
        PretrainedPeerUnavailable: that interpreter does not exist.
    """
    explicit = python or os.environ.get(MEDIAPIPE_PYTHON_ENV)
    path = explicit or os.path.join(os.path.expanduser(MEDIAPIPE_VENV), "bin", "python")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        where = (f"{MEDIAPIPE_PYTHON_ENV}={explicit!r}" if explicit
                 else f"the default venv {os.path.expanduser(MEDIAPIPE_VENV)!r}")
        raise PretrainedPeerUnavailable(
            f"mediapipe_mesh needs a Python with mediapipe=={MEDIAPIPE_VERSION} in its own "
            f"venv (its numpy<2 / protobuf<5 pins clash with ours); none at {where}. "
            f"Create it with: {MEDIAPIPE_VENV_COMMAND}  (or set {MEDIAPIPE_PYTHON_ENV})")
    return path


MESH_CROP_MARGIN = 0.25
"""Crop side = longer box side x (1 + 2 x margin), centred on the box: MediaPipe's own
face detector (run inside ``FaceMesh`` in static mode) needs context around the face."""
MESH_CROP_SIZE = 256
"""Side in pixels of the crops sent to the worker."""


def square_crop(image: np.ndarray, box: np.ndarray, margin: float = MESH_CROP_MARGIN,
                size: int = MESH_CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A square ``size x size`` crop around ``box`` and where it lies in the image.

    The square has the box's centre and side ``S = max(w, h) (1 + 2 margin)``; its
    left/top edge ``(ex, ey)`` is in package coordinates (pixel centres at integers),
    so the crop's normalised point ``(nx, ny)`` (0 = left edge, 1 = right edge, as
    MediaPipe reports) is the image point ``(ex + nx S, ey + ny S)``
    (``uncrop_points``). Outside the image the crop is black. Large faces are first
    shrunk by an integer factor with area averaging (no aliasing), then resampled
    bilinearly.

    Returns:
        ``(crop uint8 [size, size, 3], (ex, ey, S) float64 [3])``.
    """
    import cv2

    left, top, right, bottom = _check_boxes(box)[0]
    side = max(right - left, bottom - top) * (1.0 + 2.0 * margin)
    ex, ey = 0.5 * (left + right) - 0.5 * side, 0.5 * (top + bottom) - 0.5 * side
    source = np.ascontiguousarray(image)
    factor = int(side // (2 * size))
    # Pre-shrink by an integer factor k (INTER_AREA): small pixel u averages pixels
    # k u .. k u + k - 1, so x = k u + (k - 1) / 2; then x_small = (x - (k - 1) / 2) / k.
    offset, scale = 0.0, 1.0
    if factor >= 2:
        h, w = source.shape[:2]
        source = cv2.resize(source, (max(1, w // factor), max(1, h // factor)),
                            interpolation=cv2.INTER_AREA)
        offset, scale = 0.5 * (factor - 1), float(factor)
    # warpAffine with WARP_INVERSE_MAP: crop pixel u (centre) <- source point
    # ((ex + (u + 0.5) S / size) - offset) / scale.
    step = side / size / scale
    start_x = (ex - offset) / scale + 0.5 * step
    start_y = (ey - offset) / scale + 0.5 * step
    matrix = np.array([[step, 0.0, start_x], [0.0, step, start_y]])
    crop = cv2.warpAffine(source, matrix, (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop, np.array([ex, ey, side])


def uncrop_points(normalised: np.ndarray, placement: np.ndarray) -> np.ndarray:
    """Crop-normalised points ``[..., 2]`` -> image pixels (see ``square_crop``)."""
    ex, ey, side = np.asarray(placement, np.float64)
    points = np.asarray(normalised, np.float64)[..., :2]
    return np.stack([ex + points[..., 0] * side, ey + points[..., 1] * side], axis=-1)


def mesh_to_ibug68(mesh: np.ndarray,
                   table: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """468 mesh vertices ``[..., 468, 2+]`` -> 68 iBUG points ``[..., 68, 2]``.

    Each iBUG point is the mean of its table entry's mesh vertices (``MESH_TO_IBUG68``
    by default).
    """
    table = MESH_TO_IBUG68 if table is None else table
    check_correspondence(table)
    mesh = np.asarray(mesh, np.float64)[..., :2]
    return np.stack([mesh[..., list(group), :].mean(axis=-2) for group in table], axis=-2)


def check_correspondence(table: Sequence[Sequence[int]]) -> None:
    """Raises ``ValueError`` unless ``table`` has 68 non-empty groups of mesh indices in
    ``[0, 468)``, no index repeated within a group."""
    if len(table) != 68:
        raise ValueError(f"a mesh-to-iBUG table needs 68 entries, got {len(table)}")
    for point, group in enumerate(table):
        group = list(group)
        if not group or len(set(group)) != len(group) or not all(
                isinstance(i, (int, np.integer)) and 0 <= i < mediapipe_worker.MESH_POINTS
                for i in group):
            raise ValueError(f"mesh-to-iBUG entry {point} = {group}: need distinct mesh "
                             f"indices in [0, {mediapipe_worker.MESH_POINTS})")


class MediaPipeWorker:
    """A running ``experiments/mediapipe_worker.py`` child process.

    Args:
        python: the venv's Python (see ``mediapipe_python``).
        min_detection_confidence: of MediaPipe's face detector inside ``FaceMesh``.
        command: the full command to start (tests pass a fake worker); default runs
            the worker file with ``python``.
        timeout: seconds to wait for the worker to load.

    Raises:
        PretrainedPeerUnavailable: no venv Python.
        RuntimeError: the worker did not start (its stderr is in the message).
    """

    def __init__(self, python: str | None = None, min_detection_confidence: float = 0.5,
                 command: Sequence[str] | None = None, timeout: float = 120.0):
        if command is None:
            command = [mediapipe_python(python), "-u", mediapipe_worker.__file__,
                       str(float(min_detection_confidence))]
        self.command = list(command)
        # Lives as long as the worker (closed by close()); a worker whose parent dies
        # sees the end of its stdin and exits on its own.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH="")
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr,
                                         text=True, bufsize=1, env=env)
        self._folder = tempfile.TemporaryDirectory(prefix="face_mesh_")
        self._requests = 0
        line = self._readline()
        if line != mediapipe_worker.READY_LINE:
            self.close()
            raise RuntimeError(f"the face-mesh worker ({' '.join(self.command)}) did not "
                               f"start: got {line!r}; stderr: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def _readline(self) -> str:
        line = self._process.stdout.readline()
        if not line and self._process.poll() is not None:
            raise RuntimeError(f"the face-mesh worker exited with {self._process.returncode}; "
                               f"stderr: {self._stderr_tail()}")
        return line.strip()

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Meshes of a batch of crops: ``(points [N, 468, 3], found [N], seconds [N])``.

        Raises:
            RuntimeError: the worker answered with an error or died.
        """
        self._requests += 1
        request = os.path.join(self._folder.name, f"request-{self._requests}.npz")
        reply = os.path.join(self._folder.name, f"reply-{self._requests}.npz")
        mediapipe_worker.write_request(request, crops, reply)
        self._process.stdin.write(request + "\n")
        self._process.stdin.flush()
        line = self._readline()
        if line != f"ok {reply}":
            raise RuntimeError(f"face-mesh worker: {line or 'no answer'}; "
                               f"stderr: {self._stderr_tail()}")
        try:
            return mediapipe_worker.read_response(reply, len(crops))
        finally:
            for path in (request, reply):
                if os.path.exists(path):
                    os.remove(path)

    def close(self) -> None:
        """Ends the worker (an empty line) and removes its files."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write("\n")
                self._process.stdin.flush()
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._folder.cleanup()
        self._stderr.close()


class MediaPipeFaceMesh(_BatchMixin):
    """MediaPipe's pretrained face mesh (``mediapipe==0.10.21``) as a 68-point peer.

    Each face is cut out as a square around the given box (``square_crop``: margin
    ``margin`` of the longer side on every side, resampled to ``crop_size``) and sent
    to a persistent worker process in the MediaPipe venv, which runs ``FaceMesh`` in
    static-image mode (its own face detector on the crop, then the 468-vertex mesh;
    no iris refinement). The mesh is mapped back to image pixels and to the 68 iBUG
    points by ``table`` (``MESH_TO_IBUG68``). A crop in which MediaPipe finds no face
    is retried once with ``retry_margin``; if still none, the face counts as missed
    (``misses``) and gets NaN.

    Args:
        python: the venv's Python (default ``$FACE_ALIGN_MEDIAPIPE_PYTHON``, else
            ``MEDIAPIPE_VENV``).
        margin: crop margin (``MESH_CROP_MARGIN``).
        retry_margin: margin of the second try (``None``: no retry).
        crop_size: crop side in pixels (``MESH_CROP_SIZE``).
        min_detection_confidence: of MediaPipe's detector.
        batch_size: faces per worker request.
        table: mesh-to-iBUG correspondence (default ``MESH_TO_IBUG68``).
        worker_command: start this command instead of the venv worker (tests).

    Raises:
        PretrainedPeerUnavailable: no MediaPipe venv.
    """

    name = "mediapipe_mesh"

    def __init__(self, python: str | None = None, margin: float = MESH_CROP_MARGIN,
                 retry_margin: float | None = 0.6, crop_size: int = MESH_CROP_SIZE,
                 min_detection_confidence: float = 0.5, batch_size: int = 64,
                 table: Sequence[Sequence[int]] | None = None,
                 worker_command: Sequence[str] | None = None):
        self.python = None if worker_command else mediapipe_python(python)
        self.margin = float(margin)
        self.retry_margin = None if retry_margin is None else float(retry_margin)
        self.crop_size = int(crop_size)
        self.min_detection_confidence = float(min_detection_confidence)
        self.batch_size = int(batch_size)
        self.table = table
        if table is not None:
            check_correspondence(table)
        self.worker_command = worker_command
        self.misses = 0
        self.missed_indices: list[int] = []
        self.calls = 0
        self._worker: MediaPipeWorker | None = None

    def fit(self, train_faces: Iterable[Any] | None = None) -> MediaPipeFaceMesh:
        """Does nothing (the model is pretrained); returns ``self``."""
        return self

    @property
    def worker(self) -> MediaPipeWorker:
        """The worker process (started on first use)."""
        if self._worker is None:
            self._worker = MediaPipeWorker(self.python, self.min_detection_confidence,
                                           command=self.worker_command)
        return self._worker

    def close(self) -> None:
        """Ends the worker process."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _meshes(self, images: Sequence[np.ndarray], boxes: np.ndarray, margin: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image-pixel meshes ``[N, 468, 2]``, found ``[N]`` and worker seconds ``[N]``."""
        meshes = np.full((len(images), mediapipe_worker.MESH_POINTS, 2), np.nan)
        found = np.zeros(len(images), bool)
        seconds = np.zeros(len(images))
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            crops, placements = zip(*(square_crop(images[i], boxes[i], margin, self.crop_size)
                                      for i in range(start, stop)))
            points, hit, took = self.worker.run(np.stack(crops))
            for j, i in enumerate(range(start, stop)):
                if hit[j]:
                    meshes[i] = uncrop_points(points[j], placements[j])
            found[start:stop], seconds[start:stop] = hit, took
        return meshes, found, seconds

    def predict_mesh_timed(self, images: Sequence[np.ndarray], boxes: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """The 468 mesh vertices in image pixels ``[N, 468, 2]`` (NaN for a miss) and
        the seconds per face (crop + worker request + MediaPipe, per face)."""
        boxes = _check_boxes(boxes)
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        self.worker  # noqa: B018 -- start the worker outside the timed part
        start = time.perf_counter()
        meshes, found, seconds = self._meshes(images, boxes, self.margin)
        if self.retry_margin is not None and not found.all():
            again = np.flatnonzero(~found)
            more, hit, took = self._meshes([images[i] for i in again], boxes[again],
                                           self.retry_margin)
            meshes[again], found[again] = more, hit
            seconds[again] += took
        wall = (time.perf_counter() - start) / max(1, len(images))
        missed = np.flatnonzero(~found)
        self.missed_indices += [self.calls + int(i) for i in missed]
        self.misses += int(missed.size)
        self.calls += len(images)
        # Per face: MediaPipe's own time plus this batch's share of the crop and IPC cost.
        overhead = max(0.0, wall - float(seconds.mean())) if len(images) else 0.0
        return meshes, seconds + overhead

    def predict_batch_timed(self, images: Sequence[np.ndarray], boxes: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """68 iBUG landmarks ``[N, 68, 2]`` float32 and seconds per face ``[N]``."""
        meshes, seconds = self.predict_mesh_timed(images, boxes)
        return mesh_to_ibug68(meshes, self.table).astype(np.float32), seconds

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """68 iBUG landmarks ``[N, 68, 2]`` float32 pixels (NaN for missed faces)."""
        return self.predict_batch_timed(images, boxes)[0]

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 iBUG landmarks ``[68, 2]`` of the face in ``box``."""
        return self.predict_batch([image], np.asarray(box, np.float32).reshape(1, 4))[0]


# --------------------------------------------------------------------------------------
# 5-point form, registry
# --------------------------------------------------------------------------------------


class CUHK5Peer:
    """A 68-point peer reduced to the 5 CUHK points (``common.schemes.reduce_to_cuhk5``).

    Args:
        peer: a 68-point peer; ``name`` becomes ``peer.name + "_cuhk5"``.
    """

    def __init__(self, peer: Any):
        self.peer = peer
        self.name = f"{peer.name}_cuhk5"
        if hasattr(peer, "predict_batch_timed"):
            self.predict_batch_timed = self._predict_batch_timed

    def fit(self, train_faces: Iterable[Any] | None = None) -> CUHK5Peer:
        """Fits the wrapped peer (a no-op for the pretrained ones)."""
        self.peer.fit(train_faces)
        return self

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Five landmarks ``[5, 2]`` (CUHK_5 order)."""
        return reduce_to_cuhk5(np.asarray(self.peer.predict(image, box), np.float32))

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Five landmarks per face ``[N, 5, 2]``."""
        return reduce_to_cuhk5(np.asarray(self.peer.predict_batch(images, boxes), np.float32))

    def _predict_batch_timed(self, images, boxes):
        points, seconds = self.peer.predict_batch_timed(images, boxes)
        return reduce_to_cuhk5(np.asarray(points, np.float32)), seconds

    def __getattr__(self, attr: str):
        # misses, missed_indices, close, ... of the wrapped peer
        if attr == "peer":
            raise AttributeError(attr)
        return getattr(self.peer, attr)


def _five(factory: Callable[..., Any], **fixed) -> Callable[..., CUHK5Peer]:
    def make(**kwargs) -> CUHK5Peer:
        return CUHK5Peer(factory(**fixed, **kwargs))
    return make


PRETRAINED_PEERS: dict[str, Callable[..., Any]] = {
    "dlib_pretrained68": functools.partial(DlibPretrained68, mode="box"),
    "dlib_pretrained68_detect": functools.partial(DlibPretrained68, mode="detect"),
    "mediapipe_mesh": MediaPipeFaceMesh,
    "dlib_pretrained68_cuhk5": _five(DlibPretrained68, mode="box"),
    "dlib_pretrained68_detect_cuhk5": _five(DlibPretrained68, mode="detect"),
    "mediapipe_mesh_cuhk5": _five(MediaPipeFaceMesh),
}
"""Peer name -> factory taking keyword options, as ``common.peers.PEERS``."""


def available(name: str) -> tuple[bool, str]:
    """Whether the pretrained peer ``name`` can be built here: ``(ok, why not)``.

    Checks the package / venv only (builds nothing, starts no worker).
    """
    if name not in PRETRAINED_PEERS:
        raise ValueError(f"unknown pretrained peer {name!r}; known: {', '.join(PRETRAINED_PEERS)}")
    try:
        if name.startswith("dlib"):
            dlib68_model_path()
        else:
            mediapipe_python()
    except PretrainedPeerUnavailable as e:
        return False, str(e)
    return True, ""


def make_pretrained_peer(name: str, **kwargs) -> Any:
    """Builds the pretrained peer ``name`` (a key of ``PRETRAINED_PEERS``).

    Raises:
        PretrainedPeerUnavailable: its package / venv is absent.
    """
    if name not in PRETRAINED_PEERS:
        raise ValueError(f"unknown pretrained peer {name!r}; known: {', '.join(PRETRAINED_PEERS)}")
    return PRETRAINED_PEERS[name](**kwargs)


if __name__ == "__main__":  # pragma: no cover -- a quick availability report
    for peer_name in PRETRAINED_PEERS:
        ok, why = available(peer_name)
        print(f"{peer_name}: {'available' if ok else 'unavailable: ' + why}", file=sys.stdout)
