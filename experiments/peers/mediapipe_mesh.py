"""``"mediapipe_mesh"``: MediaPipe's pretrained face mesh mapped to the 68 iBUG points.

MediaPipe's 468-vertex face mesh (``mediapipe==0.10.21``, run in its own virtual
environment by ``experiments/mediapipe_worker.py``; ``MEDIAPIPE_VENV_COMMAND`` creates
it), run on a square crop around the given box and mapped to the 68 iBUG points by
``MESH_TO_IBUG68`` (chosen on 300-W training faces by
``experiments.mediapipe_correspondence``). ``fit`` does nothing.
``"mediapipe_mesh_cuhk5"`` reduces the 68 points to the 5 CUHK points
(``common.schemes.reduce_to_cuhk5``).

Without the venv the constructor raises ``PeerUnavailable`` with the command that
creates it, and ``MediaPipeFaceMesh.unavailable()`` says so without raising.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from common.schemes import IBUG_68
from experiments import mediapipe_worker
from experiments.peers.base import CUHK5Peer, Peer, PeerUnavailable, check_boxes
from experiments.peers.registry import register_peer

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
        PeerUnavailable: that interpreter does not exist.
    """
    explicit = python or os.environ.get(MEDIAPIPE_PYTHON_ENV)
    path = explicit or os.path.join(os.path.expanduser(MEDIAPIPE_VENV), "bin", "python")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        where = (f"{MEDIAPIPE_PYTHON_ENV}={explicit!r}" if explicit
                 else f"the default venv {os.path.expanduser(MEDIAPIPE_VENV)!r}")
        raise PeerUnavailable(
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

    left, top, right, bottom = check_boxes(box)[0]
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
        PeerUnavailable: no venv Python.
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


@register_peer("mediapipe_mesh")
class MediaPipeFaceMesh(Peer):
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
        PeerUnavailable: no MediaPipe venv.
    """

    name = "mediapipe_mesh"
    label = "MediaPipe mesh (pretrained)"
    scheme = IBUG_68

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

    @classmethod
    def unavailable(cls) -> str:
        """Why the MediaPipe venv cannot be found (``""``: it can)."""
        try:
            mediapipe_python()
        except PeerUnavailable as e:
            return str(e)
        return ""

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
        boxes = check_boxes(boxes)
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


@register_peer("mediapipe_mesh_cuhk5")
class MediaPipeFaceMeshCUHK5(CUHK5Peer):
    """``"mediapipe_mesh"`` reduced to the 5 CUHK points."""

    name = "mediapipe_mesh_cuhk5"
    label = "MediaPipe mesh -> 5 (pretrained)"
    source = MediaPipeFaceMesh
