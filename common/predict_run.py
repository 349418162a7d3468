"""The streaming run behind :func:`common.predict.predict_paths`.

``_Run`` walks the inputs and sends each image, video and folder of numbered frames
through the batch queue (``common.predict_batching``): detection or given boxes, then,
for sequences, the tracked frame loop (``common.tracking`` boxes from the previous
frame's landmarks, ``common.smoothing`` on the tracked points) and the writers of
``common.predict_outputs``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from common import atomic
from common.boxes import detect_faces
from common.images import load_image
from common.predict_batching import LandmarkPredictor, _BatchQueue, _Unit, check_boxes
from common.predict_inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Detection,
    Finder,
    _parse_boxes,
    iter_input_files,
    numbered_frames,
)
from common.predict_outputs import (
    STATUS_ERROR,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUS_SKIPPED,
    FileResult,
    _downscaled,
    _Progress,
    _VideoOutput,
    draw_landmarks,
)
from common.records import DataError
from common.schemes import LandmarkScheme

DEFAULT_FRAMES_FPS = 30.0
"""Frame rate assumed for a folder of numbered frames (times and smoothing)."""


class _Run:
    """State of one :func:`predict_paths` call."""

    def __init__(self, predictor: LandmarkPredictor, output_dir: str, *, batch_size: int,
                 finder: Finder | None, upsample: int, overlay: bool,
                 boxes: Mapping[str, Any] | None, scheme: LandmarkScheme | None,
                 detect_max_side: int | None, overlay_max_side: int | None,
                 max_frames: int | None, max_pending_units: int, max_pending_bytes: int,
                 progress: _Progress, tracking: Any = None, smoothing: Any = None,
                 smoothing_centre: Any = None, frames_fps: float = DEFAULT_FRAMES_FPS,
                 recursive: bool = False):
        self.tracking = tracking
        self.smoothing = smoothing
        self.smoothing_centre = smoothing_centre
        self.frames_fps = frames_fps
        self.predictor = predictor
        self.recursive = recursive
        self.output_dir = output_dir
        self.overlay = overlay
        self.boxes = dict(boxes or {})
        self.scheme = scheme
        self.detect_max_side = detect_max_side
        self.overlay_max_side = overlay_max_side
        self.max_frames = max_frames
        self.upsample = upsample
        self._finder = finder
        self.progress = progress
        self.queue = _BatchQueue(predictor, batch_size, max_pending_units, max_pending_bytes)
        self.results: list[FileResult] = []
        self.used_names: set[str] = set()
        self.open_videos: list[_VideoOutput] = []

    @property
    def finder(self) -> Finder:
        if self._finder is None:
            from common.boxes import DlibBoxFinder

            self._finder = DlibBoxFinder(self.upsample)
        return self._finder

    # ---- helpers ---------------------------------------------------------------------

    def _unique(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``... when two inputs map to one name."""
        stem = stem.replace("\\", "/").lstrip("/")
        candidate, n = stem, 1
        while candidate.lower() in self.used_names:
            n += 1
            candidate = f"{stem}-{n}"
        self.used_names.add(candidate.lower())
        return candidate

    def _given_boxes(self, path: str, name: str) -> Any:
        for key in (path, os.path.abspath(path), name, os.path.basename(path)):
            if key in self.boxes:
                return self.boxes[key]
        return None

    def _faces(self, image: np.ndarray, given: Any) -> tuple[np.ndarray, list, list[str]]:
        if given is None:
            found, source = detect_faces(self.finder, image, self.detect_max_side), "dlib"
        else:
            found, source = _parse_boxes(given), "given"
        boxes = check_boxes(np.array([b for b, _ in found], np.float32).reshape(-1, 4),
                            *image.shape[:2])
        return boxes, [s for _, s in found], [source] * len(found)

    def _unit(self, image: np.ndarray, boxes: np.ndarray, scores: list, sources: list[str],
              on_done: Callable[[_Unit], None], frame: int = -1, canvas: bool = True) -> _Unit:
        canvas, scale = (_downscaled(image, self.overlay_max_side) if self.overlay and canvas
                         else (None, 1.0))
        if canvas is image:
            canvas = image.copy()
        return _Unit(on_done, boxes, scores, sources,
                     np.zeros((len(boxes), self.predictor.num_landmarks, 2), np.float32),
                     canvas, scale, image.shape[:2], frame)

    def _record(self, result: FileResult) -> None:
        self.results.append(result)
        self.progress.update(files=1, faces=result.faces,
                             errors=int(result.category == STATUS_ERROR))

    def _draw(self, unit: _Unit) -> np.ndarray:
        return draw_landmarks(unit.canvas, unit.boxes, unit.landmarks, self.scheme,
                              unit.canvas_scale)

    # ---- images ----------------------------------------------------------------------

    def image(self, path: str, name: str, stem: str) -> None:
        start = time.monotonic()
        try:
            image = load_image(path)
            boxes, scores, sources = self._faces(image, self._given_boxes(path, name))
        except DataError as error:
            self._record(FileResult(path, f"{STATUS_ERROR}: {error.reason}",
                                    seconds=time.monotonic() - start))
            return
        except Exception as error:  # noqa: BLE001  (never stop on one file)
            self._record(FileResult(path, f"{STATUS_ERROR}: {type(error).__name__}: {error}",
                                    seconds=time.monotonic() - start))
            return
        stem = self._unique(stem)
        unit = self._unit(image, boxes, scores, sources,
                          lambda u: self._finish_image(u, path, stem), canvas=len(boxes) > 0)
        unit.seconds = time.monotonic() - start
        self.queue.submit(unit, image)

    def _finish_image(self, unit: _Unit, path: str, name: str) -> None:
        start = time.monotonic()
        result = FileResult(path, STATUS_OK if len(unit.boxes) else STATUS_NO_FACE,
                            faces=len(unit.boxes))
        try:
            if unit.error:
                raise RuntimeError(unit.error)
            result.landmarks = os.path.join(self.output_dir, "landmarks", name + ".json")
            height, width = unit.image_size
            record = {"file": path, "status": result.status,
                      "image_size": {"width": width, "height": height},
                      "model": self.predictor.name,
                      "scheme": self.scheme.name if self.scheme else None,
                      "faces": unit.faces_json()}
            atomic.write_bytes(result.landmarks, json.dumps(record) + "\n")
            if self.overlay and len(unit.boxes):
                result.overlay = os.path.join(self.output_dir, "overlays", name + ".jpg")
                ok, data = cv2.imencode(".jpg", self._draw(unit)[:, :, ::-1],
                                        [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("could not encode the overlay JPEG")
                atomic.write_bytes(result.overlay, data.tobytes())
        except Exception as error:  # noqa: BLE001
            reason = unit.error or f"{type(error).__name__}: {error}"
            result = FileResult(path, f"{STATUS_ERROR}: {reason}", landmarks="", overlay="")
        result.seconds = unit.seconds + time.monotonic() - start
        self._record(result)

    # ---- videos ----------------------------------------------------------------------

    def video(self, path: str, name: str, stem: str) -> None:
        start = time.monotonic()
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            capture.release()
            reason = "file not found" if not os.path.exists(path) else "cannot open video"
            self._record(FileResult(path, f"{STATUS_ERROR}: {reason}", kind="video",
                                    seconds=time.monotonic() - start))
            return

        def read() -> np.ndarray | None:
            ok, frame = capture.read()
            return np.ascontiguousarray(frame[:, :, ::-1]) if ok else None

        try:
            self._sequence(path, name, stem, read, capture.get(cv2.CAP_PROP_FPS), start)
        finally:
            capture.release()

    def frames_folder(self, folder: str, name: str, stem: str, files: Sequence[str]) -> None:
        """A folder of numbered frames (:func:`numbered_frames`), read as one video."""
        frames = iter(files)

        def read() -> np.ndarray | None:
            path = next(frames, None)
            return None if path is None else load_image(path)

        self._sequence(folder, name, stem, read, self.frames_fps, time.monotonic())

    def _sequence(self, path: str, name: str, stem: str,
                  read: Callable[[], np.ndarray | None],
                  fps: float, start: float) -> None:
        given = self._given_boxes(path, name)
        stem = self._unique(stem)
        output = _VideoOutput(os.path.join(self.output_dir, "landmarks", stem + ".jsonl"),
                              os.path.join(self.output_dir, "overlays", stem)
                              if self.overlay else None, fps)
        self.open_videos.append(output)
        state = {"frames": 0, "faces": 0, "seconds": time.monotonic() - start, "error": "",
                 "tracker": None, "smoother": None, "fps": output.fps}
        if self.tracking is not None and given is None:
            from common import smoothing, tracking

            state["tracker"] = tracking.FaceTracker(self.tracking)
            if self.smoothing is not None:
                state["smoother"] = smoothing.TrackSmoother(self.smoothing, self.scheme,
                                                            self.smoothing_centre)
            print(f"{path}: tracking faces (detector on the first frame, every "
                  f"{self.tracking.detect_every} frames and below confidence "
                  f"{self.tracking.min_confidence:g}; --notrack to detect every frame), "
                  + (f"One-Euro smoothing {self.smoothing} (centroid: "
                     f"{self.smoothing_centre})" if self.smoothing else
                     "no smoothing"), file=sys.stderr, flush=True)
        tracker = state["tracker"]

        def detect(image: np.ndarray) -> list[Detection]:
            return detect_faces(self.finder, image, self.detect_max_side)

        index = 0
        while self.max_frames is None or index < self.max_frames:
            frame_start = time.monotonic()
            try:
                image = read()
            except Exception as error:  # noqa: BLE001  (an unreadable frame of a folder)
                state["error"] = state["error"] or f"frame {index}: {error}"
                break
            if image is None:
                break
            track_ids = None
            try:
                if tracker is not None:
                    plan = tracker.plan(index, image, detect)
                    boxes = check_boxes(plan.boxes, *image.shape[:2])
                    scores, sources, track_ids = plan.scores, plan.sources, plan.track_ids
                else:
                    frame_given = given
                    if isinstance(given, Mapping):
                        frame_given = given.get(str(index), [])
                    boxes, scores, sources = self._faces(image, frame_given)
            except Exception as error:  # noqa: BLE001
                state["error"] = state["error"] or f"frame {index}: {error}"
                boxes, scores, sources = np.zeros((0, 4), np.float32), [], []
                track_ids = [] if tracker is not None else None
            unit = self._unit(image, boxes, scores, sources,
                              lambda u: self._finish_frame(u, output, state), index)
            unit.track_ids = track_ids
            unit.seconds = time.monotonic() - frame_start
            self.queue.submit(unit, image)
            if tracker is not None:
                self.queue.run_batch()  # this frame's landmarks place the next one's boxes
            index += 1
        if tracker is not None:
            print(f"{path}: detector ran on {tracker.detector_calls} of {tracker.frames} "
                  f"frames ({tracker.detector_calls_saved} calls saved)", file=sys.stderr,
                  flush=True)
        end = _Unit(lambda u: self._finish_video(path, output, state),
                    np.zeros((0, 4), np.float32), [], [], np.zeros((0, 0, 2), np.float32))
        self.queue.submit(end, None)

    def _finish_frame(self, unit: _Unit, output: _VideoOutput, state: dict) -> None:
        start = time.monotonic()
        state["frames"] += 1
        tracker, smoother = state["tracker"], state["smoother"]
        if unit.error:
            state["error"] = state["error"] or f"frame {unit.frame}: {unit.error}"
            faces = []
            if tracker is not None:
                tracker.reset()
        else:
            if tracker is not None:
                confidence = unit.confidence
                if confidence is not None and any(c is None for c in confidence):
                    confidence = None
                tracker.update(unit.landmarks, confidence)
                if smoother is not None:
                    t = unit.frame / state["fps"]
                    unit.smoothed = np.array(
                        [smoother(i, p, t) for i, p in zip(unit.track_ids, unit.landmarks)],
                        np.float32).reshape(unit.landmarks.shape)
                    smoother.drop_except(unit.track_ids)
            faces = unit.faces_json()
            state["faces"] += len(faces)
        try:
            canvas = self._draw(unit) if unit.canvas is not None else None
            output.write(unit.frame, faces, canvas)
        except Exception as error:  # noqa: BLE001
            state["error"] = state["error"] or f"{type(error).__name__}: {error}"
        state["seconds"] += unit.seconds + time.monotonic() - start
        self.progress.update(frames=1)

    def _finish_video(self, path: str, output: _VideoOutput, state: dict) -> None:
        start = time.monotonic()
        self.open_videos.remove(output)
        result = FileResult(path, STATUS_OK if state["faces"] else STATUS_NO_FACE,
                            faces=state["faces"], kind="video", frames=state["frames"])
        if not state["frames"]:
            state["error"] = state["error"] or "no frame could be decoded"
        if state["error"]:
            output.abort()
            result = FileResult(path, f"{STATUS_ERROR}: {state['error']}", kind="video",
                                frames=state["frames"])
        else:
            try:
                output.commit()
                result.landmarks = output.landmarks_path
                result.overlay = output.overlay_path
            except Exception as error:  # noqa: BLE001
                output.abort()
                result = FileResult(path, f"{STATUS_ERROR}: {type(error).__name__}: {error}",
                                    kind="video", frames=state["frames"])
        result.seconds = state["seconds"] + time.monotonic() - start
        self._record(result)

    # ---- driver ----------------------------------------------------------------------

    def run(self, inputs: Sequence[str]) -> None:
        direct = {os.fspath(i) for i in inputs if not os.path.isdir(i)}
        try:
            for item in inputs:
                frames = numbered_frames(item) if self.tracking is not None else None
                if frames:
                    name = os.path.basename(os.path.abspath(item))
                    self.frames_folder(item, name, name, frames)
                    continue
                for path, name, stem in iter_input_files([item], exclude=self.output_dir,
                                                         recursive=self.recursive):
                    extension = os.path.splitext(path)[1].lower()
                    if extension in VIDEO_EXTENSIONS:
                        self.video(path, name, stem)
                    elif extension in IMAGE_EXTENSIONS or path in direct:
                        self.image(path, name, stem)
                    else:
                        self._record(FileResult(path, STATUS_SKIPPED))
            self.queue.flush()
        finally:
            for output in list(self.open_videos):
                output.abort()
