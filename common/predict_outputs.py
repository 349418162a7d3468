"""What ``common.predict`` writes: per-file results, the summary, overlays, videos.

:class:`FileResult` / :class:`Summary` (and ``summary.json`` / ``summary.csv``),
:func:`draw_landmarks` (overlay images), ``_VideoOutput`` (JSON lines and overlay video
of one video, committed atomically) and the progress line. ``common.predict``
re-exports the public names.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
import time
import uuid
from typing import Any, TextIO

import cv2
import numpy as np

from common import atomic
from common.schemes import LandmarkScheme

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"

DEFAULT_OVERLAY_MAX_SIDE = 2048
"""Longest side of overlay images and videos (larger inputs are drawn downscaled)."""

_VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
_BOX_COLOUR = (0, 200, 0)  # RGB
_POINT_COLOUR = (255, 40, 40)
_LINE_COLOUR = (255, 210, 0)


def _segments(scheme: LandmarkScheme) -> list[tuple[list[int], bool]]:
    """Consecutive points of one feature (names ``<feature>_<i>``): (indices, closed)."""
    groups: list[tuple[str, list[int]]] = []
    for index, point in enumerate(scheme.point_names):
        feature = point.rsplit("_", 1)[0] if point.rsplit("_", 1)[-1].isdigit() else point
        if groups and groups[-1][0] == feature:
            groups[-1][1].append(index)
        else:
            groups.append((feature, [index]))
    return [(idx, "eye" in feature or "lip" in feature) for feature, idx in groups
            if len(idx) > 1]


def draw_landmarks(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
                   scheme: LandmarkScheme | None = None, scale: float = 1.0) -> np.ndarray:
    """Draws face boxes and landmarks (anti-aliased, sub-pixel) on a copy of ``image``.

    Args:
        image: uint8 ``[h, w, 3]`` RGB canvas (possibly a downscaled copy).
        boxes: ``[K, 4]`` boxes in pixels of the original image.
        landmarks: ``[K, L, 2]`` points in pixels of the original image.
        scheme: draws the contours of the scheme's features (68 points) when given.
        scale: canvas size over original size (coordinates map as
            ``(x + 0.5) * scale - 0.5``).

    Returns:
        uint8 ``[h, w, 3]`` RGB.
    """
    canvas = np.ascontiguousarray(image, np.uint8).copy()
    shift = 4
    unit = 1 << shift

    def fixed(points: np.ndarray) -> np.ndarray:
        points = (np.asarray(points, np.float64) + 0.5) * scale - 0.5
        return np.round(np.clip(points, -1e5, 1e5) * unit).astype(np.int32)

    segments = _segments(scheme) if scheme is not None else []
    for box, points in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(landmarks)):
        side = max(float(box[2] - box[0]), float(box[3] - box[1])) * scale
        thickness = max(1, round(side / 150))
        radius = max(1.0, side / 80)
        corners = fixed(box.reshape(2, 2))
        cv2.rectangle(canvas, tuple(int(v) for v in corners[0]), tuple(int(v) for v in corners[1]),
                      _BOX_COLOUR, thickness, cv2.LINE_AA, shift)
        pts = fixed(points)
        if len(points) == (scheme.num_points if scheme else -1):
            for indices, closed in segments:
                cv2.polylines(canvas, [pts[indices].reshape(-1, 1, 2)], closed, _LINE_COLOUR,
                              thickness, cv2.LINE_AA, shift)
        for x, y in pts:
            cv2.circle(canvas, (int(x), int(y)), round(radius * unit), _POINT_COLOUR, -1,
                       cv2.LINE_AA, shift)
    return canvas


def _downscaled(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), size[0] / width


@dataclasses.dataclass
class FileResult:
    """The outcome of one input file (a row of the summary).

    Attributes:
        file: the path as found.
        status: ``"ok"``, ``"no_face"`` or ``"error: <reason>"``.
        faces: faces found (over all frames of a video).
        seconds: time spent on the file: decoding, detection, cropping, writing, and
            its share of the batched model calls.
        kind: ``"image"`` or ``"video"``.
        frames: frames read (videos).
        landmarks: the JSON / JSON lines file written, or ``""``.
        overlay: the overlay image / video written, or ``""``.
    """

    file: str
    status: str
    faces: int = 0
    seconds: float = 0.0
    kind: str = "image"
    frames: int = 0
    landmarks: str = ""
    overlay: str = ""

    @property
    def category(self) -> str:
        """``"ok"``, ``"no_face"``, ``"error"`` or ``"skipped"``."""
        return STATUS_ERROR if self.status.startswith(STATUS_ERROR) else self.status


@dataclasses.dataclass
class Summary:
    """What :func:`predict_paths` did.

    Attributes:
        results: one row per input file, in input order.
        seconds: wall time.
        model: the model name.
        output_dir: where everything was written.
    """

    results: list[FileResult]
    seconds: float
    model: str = ""
    output_dir: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Files per status category (``ok``, ``no_face``, ``error``, ``skipped``)."""
        counts = {STATUS_OK: 0, STATUS_NO_FACE: 0, STATUS_ERROR: 0, STATUS_SKIPPED: 0}
        for result in self.results:
            counts[result.category] += 1
        return counts

    @property
    def num_processed(self) -> int:
        """Files read (every status but ``skipped``)."""
        return sum(r.category != STATUS_SKIPPED for r in self.results)

    @property
    def num_faces(self) -> int:
        return sum(r.faces for r in self.results)

    @property
    def num_frames(self) -> int:
        return sum(r.frames for r in self.results)

    def to_json(self) -> dict[str, Any]:
        elapsed = max(self.seconds, 1e-9)
        return {"model": self.model, "files": len(self.results), "counts": self.counts,
                "faces": self.num_faces, "frames": self.num_frames,
                "seconds": round(self.seconds, 3),
                "files_per_second": round(len(self.results) / elapsed, 3),
                "faces_per_second": round(self.num_faces / elapsed, 3),
                "results": [dataclasses.asdict(r) for r in self.results]}

    def format(self, max_errors: int = 20) -> str:
        """A short human-readable summary (what the command line prints)."""
        counts = self.counts
        elapsed = max(self.seconds, 1e-9)
        lines = [(f"{len(self.results)} files in {self.seconds:.1f} s "
                  f"({len(self.results) / elapsed:.2f} files/s): {counts[STATUS_OK]} ok, "
                  f"{counts[STATUS_NO_FACE]} no face, {counts[STATUS_ERROR]} errors"
                  + (f", {counts[STATUS_SKIPPED]} skipped (not images or videos)"
                     if counts[STATUS_SKIPPED] else "")),
                 f"{self.num_faces} faces ({self.num_faces / elapsed:.2f} faces/s)"
                 + (f", {self.num_frames} video frames" if self.num_frames else "")]
        errors = [r for r in self.results if r.category == STATUS_ERROR]
        for result in errors[:max_errors]:
            lines.append(f"  {result.file}: {result.status}")
        if len(errors) > max_errors:
            lines.append(f"  ... and {len(errors) - max_errors} more errors")
        if self.output_dir:
            lines.append(f"results in {self.output_dir} (summary.json, summary.csv)")
        return "\n".join(lines)

    def failure(self, allow_empty: bool = False) -> str:
        """Why the run as a whole failed (one line), or ``""``.

        Args:
            allow_empty: accept a run that read no file.

        Returns:
            ``"no image or video to process ..."`` when nothing was read (unless
            ``allow_empty``), ``"every file failed ..."`` when no file succeeded.
        """
        processed = self.num_processed
        if not processed:
            if allow_empty:
                return ""
            skipped = self.counts[STATUS_SKIPPED]
            return ("no image or video to process" + (f" ({skipped} other files skipped)"
                                                      if skipped else ""))
        if self.counts[STATUS_ERROR] == processed:
            first = next(r for r in self.results if r.category == STATUS_ERROR)
            return (f"every file failed ({processed}; first: {first.file}: {first.status}); "
                    "see summary.csv")
        return ""


def _write_summary(summary: Summary, output_dir: str) -> None:
    atomic.write_bytes(os.path.join(output_dir, "summary.json"),
                  json.dumps(summary.to_json(), indent=1) + "\n")
    text = io.StringIO()
    fields = [f.name for f in dataclasses.fields(FileResult)]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for result in summary.results:
        row = dataclasses.asdict(result)
        row["seconds"] = f"{result.seconds:.4f}"
        writer.writerow(row)
    atomic.write_bytes(os.path.join(output_dir, "summary.csv"), text.getvalue())


class _Progress:
    """Files/s and faces/s on stderr, redrawn in place on a terminal."""

    def __init__(self, stream: TextIO | None, interval: float = 1.0):
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else 10.0
        self.start = time.monotonic()
        self._last = self.start
        self.files = self.faces = self.frames = self.errors = 0

    def update(self, files: int = 0, faces: int = 0, frames: int = 0, errors: int = 0) -> None:
        self.files += files
        self.faces += faces
        self.frames += frames
        self.errors += errors
        now = time.monotonic()
        if self.stream is not None and now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        text = (f"predict: {self.files} files ({self.files / elapsed:.2f} files/s), "
                f"{self.faces} faces ({self.faces / elapsed:.2f} faces/s)"
                + (f", {self.frames} frames" if self.frames else "")
                + f", {self.errors} errors, {elapsed:.0f} s")
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


class _VideoOutput:
    """The JSON lines and overlay video of one video, written to temporary files."""

    def __init__(self, landmarks_path: str, overlay_stem: str | None, fps: float):
        self.landmarks_path = landmarks_path
        os.makedirs(os.path.dirname(landmarks_path), exist_ok=True)
        handle, self.landmarks_tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(landmarks_path)}.tmp-",
            dir=os.path.dirname(landmarks_path))
        self.lines = os.fdopen(handle, "w")
        self.overlay_stem = overlay_stem
        self.overlay_path = ""
        self.overlay_tmp = ""
        self.writer = None
        self.fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0

    def write(self, frame: int, faces: list[dict[str, Any]], canvas: np.ndarray | None) -> None:
        self.lines.write(json.dumps({"frame": frame, "time": round(frame / self.fps, 4),
                                     "faces": faces}) + "\n")
        if canvas is None or self.overlay_stem is None:
            return
        if self.writer is None:
            self._open(canvas.shape[1], canvas.shape[0])
        if self.writer is not None:
            self.writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))

    def _open(self, width: int, height: int) -> None:
        directory = os.path.dirname(self.overlay_stem)
        os.makedirs(directory, exist_ok=True)
        for codec, extension in _VIDEO_CODECS:
            tmp = os.path.join(directory, f".{os.path.basename(self.overlay_stem)}.tmp-"
                                          f"{uuid.uuid4().hex}{extension}")
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), self.fps,
                                     (width, height))
            if writer.isOpened():
                self.writer, self.overlay_tmp = writer, tmp
                self.overlay_path = self.overlay_stem + extension
                return
            writer.release()
            if os.path.exists(tmp):
                os.remove(tmp)
        raise RuntimeError("no video codec works (tried mp4v/.mp4 and MJPG/.avi)")

    def commit(self) -> None:
        self.lines.close()
        os.replace(self.landmarks_tmp, self.landmarks_path)
        if self.writer is not None:
            self.writer.release()
            os.replace(self.overlay_tmp, self.overlay_path)
            self.writer = None

    def abort(self) -> None:
        if not self.lines.closed:
            self.lines.close()
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        for tmp in (self.landmarks_tmp, self.overlay_tmp):
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
