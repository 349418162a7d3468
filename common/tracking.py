"""Multi-face tracking across video frames: boxes from the previous frame's landmarks.

The box of a face in frame ``t + 1`` is ``common.geometry.landmark_box`` of its
landmarks in frame ``t``: the one definition of "box from landmarks" that
``common.boxes`` uses for faces the detector misses, made to resemble a dlib
detection, so the model sees the kind of box it was trained on. Per track, it is
calibrated to the detector: on the frame a detector box starts (or re-anchors) the
track, and on every later detection frame that matches it, the shift and scale
between the detector's box and the landmark box of that frame's landmarks is
measured; their mean is applied to every landmark box of the track, so a face keeps
seeing (on average) the box frame-by-frame detection would give it. The mean can be
shrunk towards "no calibration" by ``calibration_prior`` pseudo-detections (sum of
the measurements over ``n + prior``), so a single noisy detection does not set the
box of the next ``detect_every`` frames, and can be restricted to the scale
(``calibrate_shift=False``). The detector runs
only

* on the first frame (and whenever no face is tracked),
* every ``detect_every`` frames (new faces entering),
* when a tracked face's confidence falls below ``min_confidence`` (the fit failed,
  or the scene cut to another shot), and
* when a tracked box leaves the image.

On a detection frame, the detections are matched to the tracked boxes greedily by
IoU (highest first, at least ``match_iou``): a matched track keeps its id and its
tracked box (no jump every ``detect_every`` frames), unless its confidence was low,
when it takes the detector's box; an unmatched detection starts a new track (a new
id, never reused); an unmatched track ends. Track ids therefore stay the same while
a face is followed, and a cut to another face gives new ids.

Usage per frame::

    plan = tracker.plan(frame_index, image, detect)   # boxes for this frame
    landmarks, confidence = model(image, plan.boxes)
    tracker.update(landmarks, confidence)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from common.boxes import box_iou
from common.geometry import landmark_box

Detection = tuple[np.ndarray, "float | None"]
Detector = Callable[[np.ndarray], Sequence[Detection]]

SOURCE_TRACKED = "tracked"
"""``box_source`` of a box derived from the previous frame's landmarks."""


@dataclasses.dataclass(frozen=True)
class TrackerParams:
    """When the detector runs and how detections join tracks (module docstring).

    Attributes:
        detect_every: run the detector at least every this many frames (finds faces
            entering the picture); 0: only on the first frame and on failures.
        min_confidence: re-detect when a tracked face's confidence (``[0, 1]``) is
            below this (ignored for models without a confidence).
        match_iou: least IoU between a detection and a tracked box to continue the
            track.
        box_hysteresis: keep a track's box while the box from its latest landmarks
            differs from it by less than this fraction of its side (centre shift
            and side change): the landmarks' own frame-to-frame noise then does not
            move the crop, which would feed that noise back into the next frame
            (measured by ``experiments.bench_video``); 0: a new box every frame.
        calibrate: map each track's landmark boxes to its detector boxes (module
            docstring); ``False``: the plain landmark box.
        calibrate_shift: calibrate the centre shift as well as the scale;
            ``False``: the scale only.
        calibration_prior: pseudo-count of "no offset" measurements the mean of
            a track's calibrations is shrunk with (``sum / (n + prior)``): with
            detector noise of variance ``s**2`` per call and a spread ``t**2`` of the
            faces' true offsets, ``s**2 / t**2`` is the least-squares choice; 0: the
            plain mean. The default 2 was chosen on ``experiments.bench_video``
            seeds 0 and 1 (NME lower than with 0 on both parts; it also absorbs the
            model's own landmark noise in each measurement) and checked on seed 3.
    """

    detect_every: int = 30
    min_confidence: float = 0.3
    match_iou: float = 0.3
    box_hysteresis: float = 0.04
    calibrate: bool = True
    calibrate_shift: bool = True
    calibration_prior: float = 2.0

    def __post_init__(self):
        if self.detect_every < 0:
            raise ValueError(f"detect_every must be >= 0, got {self.detect_every}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if not 0.0 <= self.box_hysteresis < 1.0:
            raise ValueError(f"box_hysteresis must be in [0, 1), got {self.box_hysteresis}")
        if not (np.isfinite(self.calibration_prior) and self.calibration_prior >= 0.0):
            raise ValueError("calibration_prior must be finite and >= 0, got "
                             f"{self.calibration_prior}")


@dataclasses.dataclass
class Track:
    """One followed face.

    Attributes:
        track_id: stable id (0, 1, ... in order of appearance within a tracker).
        box: the box used in the last frame.
        landmarks: ``[L, 2]`` its landmarks in the last frame (pixels), or ``None``
            before the first update.
        confidence: the model's confidence in the last frame, or ``None``.
        calibration: ``(dx, dy, scale)`` mapping the landmark box of this face to
            the detector's box (centre shift in landmark-box sides, side ratio): the
            (shrunk, ``TrackerParams.calibration_prior``) mean over the detection
            frames of the track so far; ``None`` before.
        calibrations: how many detection frames that mean holds.
        calibration_sum: the sum of those measurements ``(dx, dy, log scale)``.
        detection: the detector's box matched to this face in this frame, if any
            (measured against this frame's landmarks on the update).
    """

    track_id: int
    box: np.ndarray
    landmarks: np.ndarray | None = None
    confidence: float | None = None
    calibration: tuple[float, float, float] | None = None
    calibrations: int = 0
    calibration_sum: tuple[float, float, float] = (0.0, 0.0, 0.0)
    detection: np.ndarray | None = None


@dataclasses.dataclass
class FramePlan:
    """The faces to run the model on in one frame.

    Attributes:
        boxes: float32 ``[K, 4]``.
        track_ids: the track id of each box.
        scores: detector score of each box (``None`` for a tracked box or a
            detector without scores).
        sources: ``"tracked"`` or ``detector_source`` per box.
        detected: whether the detector ran on this frame.
        reason: why it ran (``"first"``, ``"no_track"``, ``"periodic"``,
            ``"low_confidence"``, ``"left_image"``), ``""`` when it did not.
    """

    boxes: np.ndarray
    track_ids: list[int]
    scores: list[float | None]
    sources: list[str]
    detected: bool
    reason: str = ""


def _calibration(detector_box: np.ndarray, landmarks: np.ndarray
                 ) -> tuple[float, float, float] | None:
    """How the detector's box of a face differs from its landmark box."""
    box = np.asarray(landmark_box(np.asarray(landmarks, np.float32)[None]))[0]
    side = float(box[2] - box[0])
    if not (np.all(np.isfinite(box)) and side > 0):
        return None
    centre = (box[:2] + box[2:]) / 2
    det_centre = (detector_box[:2] + detector_box[2:]) / 2
    det_side = float(detector_box[2] - detector_box[0])
    dx, dy = ((det_centre - centre) / side).tolist()
    return dx, dy, det_side / side


def _calibrated(box: np.ndarray, calibration: tuple[float, float, float] | None
                ) -> np.ndarray:
    """The landmark box moved and scaled like the face's detector box."""
    if calibration is None:
        return box
    dx, dy, scale = calibration
    side = float(box[2] - box[0])
    centre = (box[:2] + box[2:]) / 2 + np.array([dx, dy], np.float32) * side
    half = 0.5 * scale * np.array([box[2] - box[0], box[3] - box[1]], np.float32)
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


class FaceTracker:
    """Follows several faces through the frames of one video (module docstring).

    Args:
        params: the tracking settings.
        detector_source: ``box_source`` written for detector boxes (e.g. ``"dlib"``).
    """

    def __init__(self, params: TrackerParams = TrackerParams(),
                 detector_source: str = "dlib"):
        self.params = params
        self.detector_source = detector_source
        self.tracks: list[Track] = []
        self.detector_calls = 0
        self.frames = 0
        self._ids = itertools.count()
        self._last_detection: int | None = None
        self._pending: list[Track] | None = None

    def _tracked_box(self, track: Track, height: int, width: int) -> np.ndarray | None:
        if track.landmarks is None:
            return track.box
        box = _calibrated(np.asarray(landmark_box(track.landmarks[None]), np.float32)[0],
                          track.calibration)
        old_side = float(track.box[2] - track.box[0])
        if old_side > 0 and self.params.box_hysteresis > 0:
            limit = self.params.box_hysteresis * old_side
            shift = np.abs((box[:2] + box[2:]) / 2 - (track.box[:2] + track.box[2:]) / 2)
            if shift.max() < limit and abs(float(box[2] - box[0]) - old_side) < limit:
                box = track.box
        left, top, right, bottom = (float(v) for v in box)
        inside = (np.all(np.isfinite(box)) and right > left and bottom > top
                  and left < width - 0.5 and right > -0.5
                  and top < height - 0.5 and bottom > -0.5)
        return box if inside else None

    def _reason(self, frame_index: int, boxes: list[np.ndarray | None]) -> str:
        p = self.params
        if self._last_detection is None:
            return "first"
        if not self.tracks:
            return "no_track"
        if any(box is None for box in boxes):
            return "left_image"
        if any(t.confidence is not None and t.confidence < p.min_confidence
               for t in self.tracks):
            return "low_confidence"
        if p.detect_every and frame_index - self._last_detection >= p.detect_every:
            return "periodic"
        return ""

    def plan(self, frame_index: int, image: np.ndarray, detect: Detector) -> FramePlan:
        """The boxes of this frame: tracked, detected, or both matched.

        Args:
            frame_index: the frame's index (increasing).
            image: uint8 ``[H, W, 3]`` the frame (for the detector).
            detect: ``image -> [(box, score)]`` the detector.

        Returns:
            the plan; call :meth:`update` with the model's results on its boxes
            before planning the next frame.
        """
        height, width = image.shape[:2]
        self.frames += 1
        tracked = [self._tracked_box(t, height, width) for t in self.tracks]
        reason = self._reason(frame_index, tracked)
        if not reason:
            self._pending = [Track(t.track_id, box, calibration=t.calibration,
                                   calibrations=t.calibrations,
                                   calibration_sum=t.calibration_sum)
                             for t, box in zip(self.tracks, tracked)]
            return FramePlan(np.stack(tracked).astype(np.float32),
                             [t.track_id for t in self.tracks], [None] * len(tracked),
                             [SOURCE_TRACKED] * len(tracked), detected=False)
        detections = list(detect(image))
        self.detector_calls += 1
        self._last_detection = frame_index
        det_boxes = [np.asarray(b, np.float32).reshape(4) for b, _ in detections]
        pairs = sorted(((box_iou(box, det), i, j)
                        for i, box in enumerate(tracked) if box is not None
                        for j, det in enumerate(det_boxes)), reverse=True)
        used_tracks: set[int] = set()
        match: dict[int, int] = {}  # detection -> track
        for iou, i, j in pairs:
            if iou < self.params.match_iou:
                break
            if i not in used_tracks and j not in match:
                used_tracks.add(i)
                match[j] = i
        pending, scores, sources = [], [], []
        for j, (det, (_, score)) in enumerate(zip(det_boxes, detections)):
            if j in match:
                old = self.tracks[match[j]]
                failed = (old.confidence is not None
                          and old.confidence < self.params.min_confidence)
                box = det if failed else tracked[match[j]]
                pending.append(Track(old.track_id, box, calibration=old.calibration,
                                     calibrations=0 if failed else old.calibrations,
                                     calibration_sum=((0.0, 0.0, 0.0) if failed
                                                      else old.calibration_sum),
                                     detection=det))
                sources.append(self.detector_source if failed else SOURCE_TRACKED)
            else:
                pending.append(Track(next(self._ids), det, detection=det))
                sources.append(self.detector_source)
            scores.append(None if score is None else float(score))
        self._pending = pending
        boxes = (np.stack([t.box for t in pending]).astype(np.float32) if pending
                 else np.zeros((0, 4), np.float32))
        return FramePlan(boxes, [t.track_id for t in pending], scores, sources,
                         detected=True, reason=reason)

    def update(self, landmarks: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """Records the model's results on the last plan's boxes.

        Args:
            landmarks: ``[K, L, 2]`` pixels, one per planned box.
            confidence: ``[K]`` in ``[0, 1]``, or ``None`` (no confidence: only the
                periodic detection catches failures).

        Raises:
            RuntimeError: no plan is waiting.
            ValueError: the number of faces does not match the plan.
        """
        if self._pending is None:
            raise RuntimeError("update() needs a plan() first")
        landmarks = np.asarray(landmarks, np.float32)
        if len(landmarks) != len(self._pending):
            raise ValueError(f"{len(landmarks)} landmark sets for {len(self._pending)} faces")
        if confidence is not None and len(confidence) != len(self._pending):
            raise ValueError(f"{len(confidence)} confidences for {len(self._pending)} faces")
        for k, track in enumerate(self._pending):
            track.landmarks = landmarks[k]
            measured = (None if track.detection is None or not self.params.calibrate
                        else _calibration(track.detection, landmarks[k]))
            if measured is not None:  # shrunk mean over the track's detections
                dx, dy, scale = measured
                if not self.params.calibrate_shift:
                    dx = dy = 0.0
                total = tuple(a + b for a, b in zip(track.calibration_sum,
                                                    (dx, dy, float(np.log(scale)))))
                track.calibrations += 1
                track.calibration_sum = total
                weight = track.calibrations + self.params.calibration_prior
                track.calibration = (total[0] / weight, total[1] / weight,
                                     float(np.exp(total[2] / weight)))
            track.detection = None
            track.confidence = None if confidence is None else float(confidence[k])
        self.tracks, self._pending = self._pending, None

    def reset(self) -> None:
        """Drops every track (e.g. after a frame the model failed on): the next
        frame is detected."""
        self.tracks, self._pending = [], None

    @property
    def detector_calls_saved(self) -> int:
        """Frames on which the detector did not run."""
        return self.frames - self.detector_calls
