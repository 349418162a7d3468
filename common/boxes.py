"""Face boxes for records that come without one (ytf68, MTFL, CSV without box columns).

A record's box comes from one of three sources, stored with the face in the TFRecord
(``box/source``, see ``common.tfrecord.BOX_SOURCES``):

* ``"given"``: the data set's own box (CUHK lists, imglab XML, CSV box columns).
* ``"dlib"``: a detection of dlib's HOG frontal face detector
  (``dlib.get_frontal_face_detector()``) that matches the annotated landmarks.
* ``"landmarks"``: the landmark-derived box ``common.geometry.landmark_box`` when no
  detection matches (profile faces, small or blurred faces, non-faces).

Matching rule (``choose_box``): among all detections, keep those that

1. overlap the landmark-derived box with IoU >= ``min_iou`` (default
   ``DEFAULT_MIN_IOU``), and
2. contain at least ``min_inside`` (default ``DEFAULT_MIN_INSIDE``) of the landmarks;

and take the one with the highest IoU. dlib's box is a square that reaches from the
brows to the chin, so the jaw points of a 68-point face often lie just outside it,
which is why rule 2 does not ask for all points.

dlib's rectangles are in integer pixel indices with *inclusive* right and bottom
(``rect.width() == right - left + 1``). In this package's convention (pixel centres at
integers, pixel ``i`` covering ``[i - 0.5, i + 0.5]``; see ``docs/DESIGN.md``) the
rectangle covering pixels ``left..right`` x ``top..bottom`` is
``(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)`` (``dlib_rect_to_box``, built
on ``common.records.inclusive_rect_to_box``, which the imglab reader uses too, so
annotated and detected boxes of the same rectangle are the same).

Detections are cached (``BoxCache``): a JSON file keyed by the absolute image path
and a hash of the landmarks, written atomically, and valid only for the detector
settings it was made with. A re-run of a conversion reuses it and neither decodes
the images nor runs the detector again, so the chosen boxes are reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from common import atomic
from common.geometry import landmark_box
from common.records import FaceRecord, inclusive_rect_to_box

BOX_SOURCE_GIVEN = "given"
BOX_SOURCE_DLIB = "dlib"
BOX_SOURCE_LANDMARKS = "landmarks"

DEFAULT_MIN_IOU = 0.4
"""Least IoU between a detection and the landmark-derived box for a match."""

DEFAULT_MIN_INSIDE = 0.5
"""Least fraction of the landmarks a matching detection must contain."""

DETECT_MAX_SIDE = 1600
"""Longest side of the copy of an image the face detector sees (huge photos are
downscaled first: dlib's memory and time grow with the pixels it scans)."""

CACHE_VERSION = 1

ImageLoader = Callable[[str], np.ndarray]

_LOG = logging.getLogger(__name__)


def dlib_rect_to_box(rect) -> np.ndarray:
    """Converts a ``dlib.rectangle`` (inclusive right/bottom) to a float32 box.

    Args:
        rect: a ``dlib.rectangle`` (anything with ``left()``, ``top()``, ``right()``,
            ``bottom()`` integer pixel indices, right and bottom inclusive).

    Returns:
        float32 ``(4,)`` (left, top, right, bottom) covering the rectangle's pixels in
        the package convention: ``(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)``.
    """
    return np.array(inclusive_rect_to_box(rect.left(), rect.top(), rect.right(),
                                          rect.bottom()), np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def fraction_inside(landmarks: np.ndarray, box: np.ndarray) -> float:
    """Fraction of ``landmarks (N, 2)`` inside ``box`` (edges included)."""
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    left, top, right, bottom = np.asarray(box, np.float64)
    inside = ((points[:, 0] >= left) & (points[:, 0] <= right)
              & (points[:, 1] >= top) & (points[:, 1] <= bottom))
    return float(inside.mean()) if len(points) else 0.0


def landmark_hash(landmarks: np.ndarray) -> str:
    """A short stable hash of float32 landmarks (part of the box-cache key)."""
    data = np.ascontiguousarray(np.asarray(landmarks, np.float32).reshape(-1, 2), "<f4")
    return hashlib.sha1(data.tobytes()).hexdigest()[:16]


class DlibBoxFinder:
    """dlib's HOG frontal face detector with a fixed upsampling.

    Args:
        upsample: how many times dlib doubles the image before detecting (dlib's
            ``upsample_num_times``); 1 finds faces down to about 40 pixels.
        adjust_threshold: added to the detector's decision threshold (dlib's
            ``adjust_threshold``; 0 is dlib's default, negative finds more).
    """

    def __init__(self, upsample: int = 1, adjust_threshold: float = 0.0):
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        import dlib  # imported here so that modules importing this one stay light

        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Detects faces.

        Args:
            image: uint8 ``[H, W, 3]`` RGB (or ``[H, W]`` grey) image.

        Returns:
            ``(box, score)`` per detection, ``box`` float32 (l, t, r, b) in the
            package convention (see ``dlib_rect_to_box``), best score first.
        """
        image = np.ascontiguousarray(image, dtype=np.uint8)
        rects, scores, _ = self._detector.run(image, self.upsample, self.adjust_threshold)
        found = [(dlib_rect_to_box(r), float(s)) for r, s in zip(rects, scores)]
        return sorted(found, key=lambda item: -item[1])

    __call__ = detect


def detect_faces(finder: Callable[[np.ndarray], Sequence[tuple[np.ndarray, float | None]]],
                 image: np.ndarray, max_side: int | None = DETECT_MAX_SIDE
                 ) -> list[tuple[np.ndarray, float | None]]:
    """Runs a detector on a copy of ``image`` at most ``max_side`` pixels long.

    Args:
        finder: ``image -> [(box, score)]`` (:class:`DlibBoxFinder`).
        image: uint8 ``[H, W, 3]``.
        max_side: longest side the detector sees (``None``: full resolution).

    Returns:
        ``(box, score)`` per face, boxes in full-resolution pixels (pixel edges scale,
        so a box at ``x`` in the copy is at ``(x + 0.5) * W / w - 0.5``).
    """
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return [(np.asarray(b, np.float32), s) for b, s in finder(image)]
    import cv2

    factor = max_side / max(height, width)
    small_w, small_h = max(1, round(width * factor)), max(1, round(height * factor))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    scale = np.array([width / small_w, height / small_h] * 2, np.float32)
    return [((np.asarray(b, np.float32) + 0.5) * scale - 0.5, s) for b, s in finder(small)]


@dataclasses.dataclass
class BoxChoice:
    """The box chosen for one face.

    Attributes:
        box: float32 ``(4,)`` (left, top, right, bottom).
        source: ``"given"``, ``"dlib"`` or ``"landmarks"``.
        iou: IoU between the chosen box and the landmark-derived box (1 for a
            landmark box, ``None`` for a given box).
        num_detections: how many faces the detector found (0 when it was not run).
    """

    box: np.ndarray
    source: str
    iou: float | None = None
    num_detections: int = 0


def choose_box(landmarks: np.ndarray, detections: Sequence[np.ndarray],
               min_iou: float = DEFAULT_MIN_IOU,
               min_inside: float = DEFAULT_MIN_INSIDE) -> BoxChoice:
    """Picks the detection that matches the landmarks, else the landmark box.

    Args:
        landmarks: ``(N, 2)`` annotated points of the face.
        detections: candidate boxes (l, t, r, b).
        min_iou: least IoU with ``landmark_box(landmarks)``.
        min_inside: least fraction of the landmarks inside the detection.

    Returns:
        the ``"dlib"`` choice with the highest IoU among the detections that pass
        both tests, or a ``"landmarks"`` choice with the landmark-derived box.
    """
    reference = np.asarray(landmark_box(landmarks), np.float32).reshape(4)
    best, best_iou = None, -1.0
    for det in detections:
        det = np.asarray(det, np.float32).reshape(4)
        iou = box_iou(det, reference)
        if iou >= min_iou and fraction_inside(landmarks, det) >= min_inside and iou > best_iou:
            best, best_iou = det, iou
    if best is None:
        return BoxChoice(reference, BOX_SOURCE_LANDMARKS, 1.0, len(detections))
    return BoxChoice(best, BOX_SOURCE_DLIB, best_iou, len(detections))


class BoxCache:
    """Chosen boxes on disk: JSON keyed by absolute image path + landmark hash.

    The file records the settings the boxes were chosen with; a cache made with
    other settings is ignored (and overwritten on ``save``).

    Args:
        path: the JSON file (need not exist yet), or ``None`` for no file.
        settings: the detector and matching settings (JSON-serialisable dict).
    """

    def __init__(self, path: str | None, settings: dict):
        self.path = path
        self.settings = dict(settings)
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                _LOG.warning("ignoring unreadable box cache %s: %s", path, e)
                return
            if data.get("version") == CACHE_VERSION and data.get("settings") == self.settings:
                self.entries = dict(data.get("boxes", {}))
            else:
                _LOG.warning("ignoring box cache %s made with other settings (%s)",
                             path, data.get("settings"))

    @staticmethod
    def key(image_path: str, landmarks: np.ndarray) -> str:
        return f"{os.path.abspath(image_path)}#{landmark_hash(landmarks)}"

    def get(self, image_path: str, landmarks: np.ndarray) -> BoxChoice | None:
        entry = self.entries.get(self.key(image_path, landmarks))
        if entry is None:
            return None
        return BoxChoice(np.asarray(entry["box"], np.float32), entry["source"],
                         entry.get("iou"), int(entry.get("num_detections", 0)))

    def put(self, image_path: str, landmarks: np.ndarray, choice: BoxChoice) -> None:
        self.entries[self.key(image_path, landmarks)] = {
            # float32 -> Python float is exact, so the box reads back bit for bit.
            "box": [float(v) for v in np.asarray(choice.box, np.float32)],
            "source": choice.source,
            "iou": None if choice.iou is None else round(float(choice.iou), 4),
            "num_detections": int(choice.num_detections),
        }
        self.dirty = True

    def save(self) -> None:
        """Writes the cache atomically (temporary file + rename), if it changed."""
        if not self.path or not self.dirty:
            return
        data = {"version": CACHE_VERSION, "settings": self.settings, "boxes": self.entries}
        atomic.write_text(self.path, json.dumps(data, indent=0, sort_keys=True))
        self.dirty = False


class BoxAssigner:
    """Gives a box to one record at a time (given, cached, detected or derived).

    Args:
        image_loader: ``path -> uint8 RGB image``; called only for records without
            a box and without a cache entry. Its errors (``DataError``) propagate.
        upsample: dlib's upsampling (see ``DlibBoxFinder``).
        cache_path: box cache JSON file, or ``None`` for none.
        min_iou: see ``choose_box``.
        min_inside: see ``choose_box``.
        finder: the detector, ``image -> [(box, score)]``; by default a
            ``DlibBoxFinder(upsample)``, made on first use.
        detect_max_side: the detector sees a copy at most this long
            (:func:`detect_faces`); ``None``: full resolution.
    """

    def __init__(self, image_loader: ImageLoader, upsample: int = 1,
                 cache_path: str | None = None, min_iou: float = DEFAULT_MIN_IOU,
                 min_inside: float = DEFAULT_MIN_INSIDE,
                 finder: Callable[[np.ndarray], list] | None = None,
                 detect_max_side: int | None = DETECT_MAX_SIDE):
        self.image_loader = image_loader
        self.detect_max_side = detect_max_side
        self.upsample = upsample
        self.min_iou = min_iou
        self.min_inside = min_inside
        self._finder = finder
        self.cache = BoxCache(cache_path, {
            "detector": "dlib.get_frontal_face_detector", "upsample": int(upsample),
            "min_iou": float(min_iou), "min_inside": float(min_inside),
            **({"detect_max_side": int(detect_max_side)} if detect_max_side else {})})
        self.counts = {BOX_SOURCE_GIVEN: 0, BOX_SOURCE_DLIB: 0, BOX_SOURCE_LANDMARKS: 0}
        self.detector_calls = 0
        self.cache_hits = 0

    @property
    def finder(self) -> Callable[[np.ndarray], list]:
        if self._finder is None:
            self._finder = DlibBoxFinder(self.upsample)
        return self._finder

    def choose(self, record: FaceRecord, image: np.ndarray | None = None) -> BoxChoice:
        """Returns the box for ``record`` without changing it (counts it).

        Args:
            record: the face; its given box wins when it has one.
            image: the decoded image, when the caller already has it.
        """
        if record.box is not None:
            choice = BoxChoice(np.asarray(record.box, np.float32), BOX_SOURCE_GIVEN)
        else:
            choice = self.cache.get(record.image_path, record.landmarks)
            if choice is not None:
                self.cache_hits += 1
            else:
                if image is None:
                    image = self.image_loader(record.image_path)
                detections = [box for box, _ in detect_faces(self.finder, image,
                                                             self.detect_max_side)]
                del image  # a huge photo: do not keep it while the next one loads
                self.detector_calls += 1
                choice = choose_box(record.landmarks, detections, self.min_iou,
                                    self.min_inside)
                self.cache.put(record.image_path, record.landmarks, choice)
        self.counts[choice.source] += 1
        return choice

    def save(self) -> None:
        """Writes the box cache (atomically) if anything new was detected."""
        self.cache.save()


@dataclasses.dataclass
class BoxStats:
    """What ``assign_boxes`` did.

    Attributes:
        sources: the box source of each record, in order.
        counts: records per source (``"given"``, ``"dlib"``, ``"landmarks"``).
        detector_calls: images the detector ran on (0 on a fully cached re-run).
        cache_hits: boxes taken from the cache.
        seconds: wall time.
    """

    sources: list[str]
    counts: dict[str, int]
    detector_calls: int
    cache_hits: int
    seconds: float


def assign_boxes(records: Sequence[FaceRecord], images_loader: ImageLoader | None = None,
                 upsample: int = 1, cache_path: str | None = None, progress: bool = True,
                 min_iou: float = DEFAULT_MIN_IOU, min_inside: float = DEFAULT_MIN_INSIDE,
                 finder: Callable[[np.ndarray], list] | None = None) -> BoxStats:
    """Sets ``record.box`` on every record that has none (in place).

    Args:
        records: the faces; records with a box keep it (source ``"given"``).
        images_loader: ``path -> uint8 RGB image``; defaults to
            ``common.images.load_image``. Its ``DataError`` propagates.
        upsample: dlib's upsampling.
        cache_path: box cache JSON (read if present, written atomically at the end
            and also when an error stops the loop), or ``None``.
        progress: show a progress bar on stderr.
        min_iou: see ``choose_box``.
        min_inside: see ``choose_box``.
        finder: detector override (tests); default ``DlibBoxFinder(upsample)``.

    Returns:
        the per-record sources and counts.
    """
    if images_loader is None:
        from common.images import load_image
        images_loader = load_image
    start = time.monotonic()
    assigner = BoxAssigner(images_loader, upsample, cache_path, min_iou, min_inside, finder)
    bar = ProgressBar(len(records), "boxes") if progress else None
    sources = []
    try:
        for record in records:
            choice = assigner.choose(record)
            record.box = choice.box
            sources.append(choice.source)
            if bar:
                bar.update()
    finally:
        assigner.save()
        if bar:
            bar.close()
    return BoxStats(sources, dict(assigner.counts), assigner.detector_calls,
                    assigner.cache_hits, time.monotonic() - start)


class ProgressBar:
    """A minimal progress line on stderr: done/total, rate and time left.

    On a terminal the line is redrawn in place every ``interval`` seconds; when
    stderr is a file (``nohup``), a new line is written every ``file_interval``.

    Args:
        total: the number of steps expected.
        label: what is counted ("records", "boxes").
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(self, total: int, label: str = "records", stream=None,
                 interval: float = 0.5, file_interval: float = 10.0):
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else file_interval
        self.done = 0
        self.start = time.monotonic()
        self._last = -1e9

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.label}: {self.done}/{self.total} ({pct:5.1f}%) "
                f"{rate:7.1f} {self.label}/s, {elapsed:6.1f}s elapsed, ~{left:6.1f}s left")
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
