"""MediaPipe face-mesh worker, run in its own virtual environment as a child process.

``mediapipe==0.10.21`` (the last wheel that bundles the face-mesh models and runs
offline through ``mp.solutions.face_mesh``) pins numpy < 2, protobuf < 5 and
opencv-contrib-python, which clash with this package's TensorFlow, so it cannot share
our interpreter. ``experiments.peers.mediapipe_mesh.MediaPipeFaceMesh`` starts this file
with the venv's Python (``MEDIAPIPE_VENV_COMMAND`` creates it) and talks to it over
stdin / stdout, one line per batch:

* request line: the path of an ``.npz`` written by ``write_request`` holding
  ``crops`` uint8 ``[N, S, S, 3]`` RGB (face crops the parent cut around its boxes)
  and ``reply`` (the path the worker writes its answer to);
* the worker runs ``FaceMesh(static_image_mode=True, max_num_faces=1,
  refine_landmarks=False)`` on every crop and writes, with ``write_response``,
  ``points`` float32 ``[N, 468, 3]`` (MediaPipe's normalised x, y in crop units and
  its relative depth z; NaN for a crop where no face was found), ``found`` bool
  ``[N]`` and ``seconds`` float64 ``[N]`` (time of each ``process`` call);
* reply line: ``ok <reply path>``, or ``error <message>`` (the worker keeps running).

An empty line or end of input ends the worker. This module imports only numpy at its
top, so the parent (numpy 2) and the worker (numpy 1) share the one protocol code.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import IO

import numpy as np

MESH_POINTS = 468
"""Vertices of MediaPipe's canonical face mesh without iris refinement."""

PROTOCOL_VERSION = 1
READY_LINE = f"ready face-mesh-worker {PROTOCOL_VERSION}"
"""What the worker prints once MediaPipe is loaded, before the first request."""


def _write_npz(path: str, **arrays) -> None:
    """Writes ``arrays`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def write_request(path: str, crops: np.ndarray, reply: str) -> None:
    """Writes a batch of crops for the worker.

    Args:
        path: the request file (``.npz``).
        crops: uint8 ``[N, S, S, 3]`` RGB.
        reply: where the worker is to write its response.

    Raises:
        ValueError: ``crops`` is not uint8 ``[N, S, S, 3]``.
    """
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"crops must be uint8 [N, S, S, 3], got {crops.dtype} {crops.shape}")
    _write_npz(path, crops=crops, reply=np.array(reply), version=np.array(PROTOCOL_VERSION))


def read_request(path: str) -> tuple[np.ndarray, str]:
    """Reads a request file: ``(crops [N, S, S, 3] uint8, reply path)``.

    Raises:
        ValueError: the file is not a request of this protocol version.
    """
    with np.load(path, allow_pickle=False) as data:
        missing = {"crops", "reply", "version"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not a face-mesh request (missing {sorted(missing)})")
        if int(data["version"]) != PROTOCOL_VERSION:
            raise ValueError(f"{path}: protocol version {int(data['version'])}, "
                             f"worker speaks {PROTOCOL_VERSION}")
        return np.asarray(data["crops"], np.uint8), str(data["reply"])


def write_response(path: str, points: np.ndarray, found: np.ndarray,
                   seconds: np.ndarray) -> None:
    """Writes the worker's answer (see the module docstring for the arrays)."""
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[1:] != (MESH_POINTS, 3):
        raise ValueError(f"points must be [N, {MESH_POINTS}, 3], got {points.shape}")
    _write_npz(path, points=points, found=np.asarray(found, bool),
               seconds=np.asarray(seconds, np.float64))


def read_response(path: str, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a response: ``(points [N, 468, 3], found [N], seconds [N])``.

    Args:
        path: the response file.
        count: the number of crops of the request (checked).

    Raises:
        ValueError: the arrays do not describe ``count`` faces.
    """
    with np.load(path, allow_pickle=False) as data:
        points, found, seconds = data["points"], data["found"], data["seconds"]
    if points.shape != (count, MESH_POINTS, 3) or found.shape != (count,) \
            or seconds.shape != (count,):
        raise ValueError(f"{path}: response for {points.shape[0]} faces "
                         f"(points {points.shape}, found {found.shape}), expected {count}")
    return points.astype(np.float32), found.astype(bool), seconds.astype(np.float64)


CropFn = Callable[[np.ndarray], "np.ndarray | None"]
"""``fn(crop uint8 [S, S, 3]) -> float [468, 3] normalised mesh, or None (no face)``."""


def process_batch(crops: np.ndarray, mesh_fn: CropFn
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs ``mesh_fn`` on every crop: ``(points [N, 468, 3], found [N], seconds [N])``."""
    points = np.full((len(crops), MESH_POINTS, 3), np.nan, np.float32)
    found = np.zeros(len(crops), bool)
    seconds = np.zeros(len(crops), np.float64)
    for i, crop in enumerate(crops):
        start = time.perf_counter()
        mesh = mesh_fn(np.ascontiguousarray(crop))
        seconds[i] = time.perf_counter() - start
        if mesh is not None:
            points[i] = np.asarray(mesh, np.float32).reshape(MESH_POINTS, 3)
            found[i] = True
    return points, found, seconds


def serve(mesh_fn: CropFn, stdin: IO[str], stdout: IO[str]) -> int:
    """Answers request lines from ``stdin`` until an empty line or end of input.

    Returns:
        The number of requests answered with ``ok``.
    """
    print(READY_LINE, file=stdout, flush=True)
    answered = 0
    for line in stdin:
        request = line.strip()
        if not request:
            break
        try:
            crops, reply = read_request(request)
            write_response(reply, *process_batch(crops, mesh_fn))
        except Exception as e:  # noqa: BLE001 -- reported to the parent, worker lives on
            message = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"error {request}: {message}", file=stdout, flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        answered += 1
        print(f"ok {reply}", file=stdout, flush=True)
    return answered


def mediapipe_mesh_fn(min_detection_confidence: float = 0.5) -> CropFn:
    """A ``CropFn`` over MediaPipe's ``FaceMesh`` (static images, one face, no iris)."""
    import mediapipe as mp  # only inside the MediaPipe venv

    face_mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=False,
        min_detection_confidence=min_detection_confidence)

    def mesh(crop: np.ndarray) -> np.ndarray | None:
        result = face_mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        marks = result.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in marks], np.float32)[:MESH_POINTS]

    return mesh


def main(argv: list[str]) -> int:
    """Entry point: ``python mediapipe_worker.py [min_detection_confidence]``."""
    confidence = float(argv[1]) if len(argv) > 1 else 0.5
    serve(mediapipe_mesh_fn(confidence), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
