"""Jitter, lag and accuracy on video: tracking + One-Euro smoothing against frame by frame.

    python -m experiments.bench_video --model=/work/runs/msrrn-ytf68 \
        --dlib_model=/work/runs/dlib_ert_ytf68.dat --output=results/bench_video

Two parts, every clip at 30 fps with per-frame camera noise (Gaussian, sigma
``--noise_sigma`` grey levels) and JPEG re-encoding (quality ``--jpeg_quality``):

1. **Moving synthetic faces** (``common.synthetic.generate_face``, 256 px): the whole
   frame moves along a smooth path (translation, in-plane turning and zoom, sums of
   slow sines), so every frame's exact landmarks are the generator's landmarks
   moved by the same affine map. A drawn face is not what dlib's HOG detector is
   made for, so the "detector" here is a model of dlib measured on part 2 in the
   same run (:func:`measure_detector_noise`): the exact landmark box
   (``common.geometry.landmark_box``) plus a per-clip constant offset (centre and
   log side) drawn from the real faces' mean offsets, plus i.i.d. Gaussian noise
   per call of the real clips' measured frame-to-frame size
   (:func:`synthetic_detector`). The measured numbers are printed and stored
   (``detector_noise`` in the JSON).
2. **Real still faces**: one photo per clip from ``../shared/data`` (ytf68 val faces
   and 300-W AFW), ``--still_frames`` frames, each with fresh noise + JPEG and a
   random sub-pixel camera shake of sigma ``--shake_px`` per axis (``camera_shake``:
   smooth hand-held tremor by default, ``--shake_kind=iid`` for independent per
   frame), the landmarks moved with it. Detector: dlib's HOG (``common.boxes.DlibBoxFinder``);
   a clip where it finds no face on the first frame is skipped.

Methods (all in one run, on the same frames): ``dlib_ert`` (dlib's ERT, detector
every frame), ``model_frame`` (our model, detector every frame: today's predict),
``model_track`` (``common.tracking``, raw landmarks) and ``model_track_smooth``
(plus ``common.smoothing``). Per method and part: NME against the truth
(inter-pupil), jitter (RMS over points and frames of the frame-to-frame change of
the error ``pred_t - true_t``, i.e. the motion left after removing the true motion,
over the inter-pupil distance), lag (frames by which the prediction trails the
moving truth: the shift of the true track, in 0.05-frame steps, that best fits the
prediction; synthetic part), detector calls and frames per second (detector +
model + tracking, wall time, this process). With ``--compare_calibrations`` rows
``model_track_smooth{nocal|scale_only|prior0}`` rerun the tracker with other box
calibrations (``TrackerParams``). Writes ``bench_video.json``, ``bench_video.md``
and ``frame_strip.png`` (raw vs smoothed on the first synthetic clip) into
``--output``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from absl import app, flags

from common import atomic, metrics
from common.geometry import landmark_box
from common.schemes import IBUG_68
from common.smoothing import DEFAULT_CENTRE, OneEuroParams, TrackSmoother
from common.tracking import FaceTracker, TrackerParams

FPS = 30.0


@dataclasses.dataclass
class Clip:
    """Frames with their exact landmarks.

    Attributes:
        name: a label.
        frames: uint8 ``[H, W, 3]`` RGB per frame.
        truth: float64 ``[T, 68, 2]``.
        part: ``"synthetic"`` or ``"still"``.
    """

    name: str
    frames: list[np.ndarray]
    truth: np.ndarray
    part: str


def degrade(image: np.ndarray, rng: np.random.Generator, noise_sigma: float,
            jpeg_quality: int) -> np.ndarray:
    """Camera noise then a JPEG round trip (fresh per frame)."""
    noisy = image.astype(np.float32) + rng.normal(0.0, noise_sigma, image.shape)
    noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", noisy[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def _warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Pixel centres at integers (docs/DESIGN.md) are OpenCV's convention too.
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def synthetic_clip(index: int, rng: np.random.Generator, frames: int, noise_sigma: float,
                   jpeg_quality: int) -> Clip:
    """A synthetic face moving and turning along a smooth path (module docstring)."""
    from common.synthetic import SyntheticFaceConfig, generate_face

    config = SyntheticFaceConfig(image_size=256, max_yaw=15.0, max_roll=5.0,
                                 occlusion_prob=0.0, blur_prob=0.0, max_noise_sigma=0.0,
                                 jpeg_prob=0.0, face_size_range=(0.35, 0.45))
    face = generate_face(index, seed=7, config=config)
    size = face.image.shape[0]
    out, truth = [], []
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    for matrix in moving_path(rng, frames, centre, (0.12 * size, 0.08 * size)):
        out.append(degrade(_warp(face.image, matrix, (size, size)), rng, noise_sigma,
                           jpeg_quality))
        truth.append(_apply(matrix, face.landmarks68.astype(np.float64)))
    return Clip(f"synthetic_{index}", out, np.array(truth), "synthetic")


def moving_path(rng: np.random.Generator, frames: int, centre: np.ndarray,
                amplitude: tuple[float, float]) -> list[np.ndarray]:
    """``[2, 3]`` affine maps per frame: translation of ``amplitude`` pixels (x, y),
    in-plane turning of 12 degrees and zoom of 8 % about ``centre``, slow sines with
    random phases (the synthetic part's motion)."""
    phases = rng.uniform(0, 2 * np.pi, 4)
    out = []
    for t in range(frames):
        s = t / FPS
        shift = np.array([amplitude[0] * np.sin(2 * np.pi * 0.35 * s + phases[0]),
                          amplitude[1] * np.sin(2 * np.pi * 0.25 * s + phases[1])])
        angle = 12.0 * np.sin(2 * np.pi * 0.3 * s + phases[2])
        scale = 1.0 + 0.08 * np.sin(2 * np.pi * 0.2 * s + phases[3])
        matrix = cv2.getRotationMatrix2D(tuple(float(c) for c in centre), angle, scale)
        matrix[:, 2] += shift
        out.append(matrix)
    return out


def moving_real_clip(name: str, image: np.ndarray, landmarks: np.ndarray,
                     rng: np.random.Generator, frames: int, noise_sigma: float,
                     jpeg_quality: int) -> Clip:
    """One real photo moved along :func:`moving_path` (shifts of 0.3 / 0.2 face sides
    about the face centre) with fresh noise + JPEG per frame: measures how dlib's
    box varies on a moving face (its scale steps and 8-pixel cells), which a still
    face does not show."""
    height, width = image.shape[:2]
    box = np.asarray(landmark_box(np.asarray(landmarks, np.float32)[None]))[0]
    side = float(box[2] - box[0])
    out, truth = [], []
    for matrix in moving_path(rng, frames, (box[:2] + box[2:]) / 2, (0.3 * side, 0.2 * side)):
        out.append(degrade(_warp(image, matrix, (width, height)), rng, noise_sigma,
                           jpeg_quality))
        truth.append(_apply(matrix, landmarks.astype(np.float64)))
    return Clip(name, out, np.array(truth), "moving_real")


def camera_shake(rng: np.random.Generator, frames: int, shake_px: float,
                 kind: str = "smooth") -> np.ndarray:
    """``[T, 2]`` sub-pixel translations of sigma ``shake_px`` per axis.

    ``"smooth"``: hand-held tremor, a sum of three sines per axis at random
    frequencies in 0.5..2 Hz with random phases, scaled to sigma ``shake_px``;
    ``"iid"``: independent Gaussian per frame (no causal filter can tell it from
    noise, so it bounds what smoothing can reach; the README notes its figures).
    """
    if kind == "iid":
        return rng.normal(0.0, shake_px, (frames, 2))
    if kind != "smooth":
        raise ValueError(f"unknown shake kind {kind!r}; expected smooth or iid")
    t = np.arange(frames)[:, None, None] / FPS
    freq = rng.uniform(0.5, 2.0, (1, 3, 2))
    phase = rng.uniform(0, 2 * np.pi, (1, 3, 2))
    wave = np.sin(2 * np.pi * freq * t + phase).sum(axis=1)
    return shake_px * wave / np.sqrt(1.5)  # three unit sines: variance 3 / 2


def still_clip(name: str, image: np.ndarray, landmarks: np.ndarray,
               rng: np.random.Generator, frames: int, shake_px: float, noise_sigma: float,
               jpeg_quality: int, shake_kind: str = "smooth") -> Clip:
    """One real photo, fresh noise + JPEG and a known sub-pixel shake per frame."""
    height, width = image.shape[:2]
    out, truth = [], []
    for shift in camera_shake(rng, frames, shake_px, shake_kind):
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        matrix[:, 2] = shift
        out.append(degrade(_warp(image, matrix, (width, height)), rng, noise_sigma,
                           jpeg_quality))
        truth.append(_apply(matrix, landmarks.astype(np.float64)))
    return Clip(name, out, np.array(truth), "still")


def real_stills(shared: str, count_per_set: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, landmarks)``: ytf68 val photos and 300-W AFW photos."""
    from common.images import load_image
    from common.readers import read_300w, read_landmark_csv

    stills = []
    ytf = os.path.join(shared, "ytf68", "landmarks.csv")
    if os.path.isfile(ytf):
        records = read_landmark_csv(ytf, on_error="skip")
        for record in records[::max(1, len(records) // count_per_set)][:count_per_set]:
            stills.append((f"ytf68/{os.path.basename(record.image_path)}",
                           load_image(record.image_path), record.landmarks))
    afw = os.path.join(shared, "w300")
    if os.path.isdir(afw):
        records = [r for r in read_300w(afw, on_error="skip") if "/afw/" in r.image_path]
        for record in records[:count_per_set]:
            image = load_image(record.image_path)
            scale = min(1.0, 480.0 / max(image.shape[:2]))  # video-sized frames
            if scale < 1.0:
                size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            stills.append((f"w300/{os.path.basename(record.image_path)}", image,
                           (record.landmarks + 0.5) * scale - 0.5))
    return stills


Fit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]
Detect = Callable[[np.ndarray], list]


def _closest(detections: list, truth: np.ndarray) -> np.ndarray | None:
    """The detection nearest the true face (clips hold one face)."""
    if not detections:
        return None
    centre = truth.mean(axis=0)
    return min((np.asarray(b, np.float32) for b, _ in detections),
               key=lambda b: np.hypot(*(((b[:2] + b[2:]) / 2) - centre)))


def run_frame_by_frame(clip: Clip, detect: Detect, fit: Fit) -> dict[str, Any]:
    """Detector on every frame, the face nearest the truth, no memory."""
    points, last_box, calls = [], None, 0
    start = time.perf_counter()
    for frame, truth in zip(clip.frames, clip.truth):
        box = _closest(list(detect(frame)), truth)
        calls += 1
        box = last_box if box is None else box
        if box is None:
            raise RuntimeError(f"{clip.name}: no face on the first frame")
        last_box = box
        points.append(fit(frame, box[None])[0][0])
    seconds = time.perf_counter() - start
    return {"raw": np.array(points), "detector_calls": calls, "seconds": seconds}


def run_tracked(clip: Clip, detect: Detect, fit: Fit, params: TrackerParams,
                smoothers: dict[str, OneEuroParams]) -> dict[str, Any]:
    """``common.tracking`` over the clip; the track nearest the truth each frame; the
    same raw track smoothed with every setting of ``smoothers`` (causally, so the
    tracking is the same for all)."""
    tracker = FaceTracker(params)
    raw, ids = [], []
    start = time.perf_counter()
    smooth_seconds = 0.0
    live = next(iter(smoothers.values()))
    first = TrackSmoother(live[0], IBUG_68, live[1])
    for t, (frame, truth) in enumerate(zip(clip.frames, clip.truth)):
        plan = tracker.plan(t, frame, detect)
        if len(plan.boxes):
            landmarks, confidence = fit(frame, plan.boxes)
        else:
            landmarks, confidence = np.zeros((0, 68, 2), np.float32), None
        tracker.update(landmarks, confidence)
        if not len(landmarks):
            raise RuntimeError(f"{clip.name}: no face tracked in frame {t}")
        k = int(np.argmin([np.abs(p - truth).mean() for p in landmarks]))
        raw.append(landmarks[k])
        ids.append(plan.track_ids[k])
        tick = time.perf_counter()
        first(plan.track_ids[k], landmarks[k], t / FPS)  # timed: the live cost
        smooth_seconds += time.perf_counter() - tick
    seconds = time.perf_counter() - start
    smoothed = {}
    for name, setting in smoothers.items():
        smoother = TrackSmoother(setting[0], IBUG_68, setting[1])
        smoothed[name] = np.array([smoother(i, p, t / FPS)
                                   for t, (i, p) in enumerate(zip(ids, raw))])
    return {"raw": np.array(raw), "smoothed": smoothed, "track_ids": ids,
            "detector_calls": tracker.detector_calls, "seconds": seconds,
            "smooth_seconds": smooth_seconds}


def jitter(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMS frame-to-frame change of the error, over the mean inter-pupil distance."""
    residual = np.asarray(pred, np.float64) - truth
    step = np.diff(residual, axis=0)
    iod = metrics.normalizer(truth, "inter_pupil").mean()
    return float(np.sqrt(np.mean(np.sum(step ** 2, axis=-1))) / iod)


def lag(pred: np.ndarray, truth: np.ndarray, max_lag: float = 8.0,
        step: float = 0.05) -> float:
    """Frames by which ``pred`` trails ``truth``: the shift ``k`` (in [-2, max_lag])
    minimising the mean distance between ``pred[t]`` and ``truth(t - k)`` (linear
    interpolation between frames), over the frames every shift can use."""
    pred = np.asarray(pred, np.float64)
    frames = np.arange(len(truth), dtype=np.float64)
    valid = frames[int(np.ceil(max_lag)):len(truth) - 2]
    best, best_cost = 0.0, np.inf
    for k in np.arange(-2.0, max_lag + step / 2, step):
        times = valid - k
        lo = np.floor(times).astype(int)
        frac = (times - lo)[:, None, None]
        shifted = truth[lo] * (1 - frac) + truth[np.minimum(lo + 1, len(truth) - 1)] * frac
        cost = np.linalg.norm(pred[valid.astype(int)] - shifted, axis=-1).mean()
        if cost < best_cost:
            best, best_cost = float(k), cost
    return best


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(metrics.nme(np.asarray(pred, np.float32), truth.astype(np.float32),
                             "inter_pupil").mean())


def _model_fit(path: str) -> tuple[Fit, str]:
    from common.predict import LandmarkPredictor

    predictor = LandmarkPredictor.from_path(path)

    def fit(image: np.ndarray, boxes: np.ndarray):
        crop_boxes = predictor.crop_boxes(boxes)
        crops = [predictor.crop_face(image, c) for c in crop_boxes]
        batch = {k: np.concatenate([c[k] for c in crops]) for k in crops[0]}
        normalised, confidence = predictor.run_crops_with_confidence(batch)
        return predictor.to_image(normalised, crop_boxes), confidence

    return fit, predictor.name


def _dlib_fit(path: str) -> Fit:
    from experiments.peers.dlib_ert import DlibERT

    peer = DlibERT.load(path)

    def fit(image: np.ndarray, boxes: np.ndarray):
        return np.array([peer.predict(image, b) for b in boxes], np.float32), None

    return fit


def box_offsets(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[T, 3]`` ``(dx, dy, log scale)`` of detector boxes against the landmark box
    (``common.geometry.landmark_box``) of the true landmarks of the same frames: the
    centre shift in landmark-box sides and the log of the side ratio (width)."""
    ref = np.asarray(landmark_box(np.asarray(truth, np.float32)), np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = ref[:, 2] - ref[:, 0]
    shift = ((boxes[:, :2] + boxes[:, 2:]) - (ref[:, :2] + ref[:, 2:])) / 2 / side[:, None]
    return np.concatenate([shift, np.log((boxes[:, 2] - boxes[:, 0]) / side)[:, None]], 1)


@dataclasses.dataclass(frozen=True)
class DetectorNoise:
    """A detector's boxes against the landmark box, measured on real clips.

    Attributes:
        offsets: ``[F, 3]`` per face (clip) the mean ``(dx, dy, log scale)``
            (:func:`box_offsets`) over its frames.
        centre_sigma: per-call i.i.d. noise of the centre (each axis), in box
            sides: the RMS over clips, frames and axes of a frame's shift minus its
            clip's mean.
        scale_sigma: the same for the log side ratio.
        step_centre: RMS frame-to-frame change of the centre (each axis, sides).
        step_scale: RMS frame-to-frame change of the log side ratio.
    """

    offsets: np.ndarray
    centre_sigma: float
    scale_sigma: float
    step_centre: float = float("nan")
    step_scale: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"offsets": np.asarray(self.offsets).tolist(), "centre_sigma": self.centre_sigma,
                "scale_sigma": self.scale_sigma, "step_centre": self.step_centre,
                "step_scale": self.step_scale, "faces": len(self.offsets)}


def measure_detector_noise(clips_offsets: Sequence[np.ndarray]) -> DetectorNoise:
    """:class:`DetectorNoise` from each clip's ``[T, 3]`` :func:`box_offsets`.

    Raises:
        ValueError: no clip (nothing to measure on).
    """
    if not clips_offsets:
        raise ValueError("no real clip with detections to measure the detector on")
    means = np.array([o.mean(axis=0) for o in clips_offsets])
    resid = np.concatenate([o - o.mean(axis=0) for o in clips_offsets])
    steps = np.concatenate([np.diff(o, axis=0) for o in clips_offsets if len(o) > 1])
    return DetectorNoise(means, float(np.sqrt(np.mean(resid[:, :2] ** 2))),
                         float(np.sqrt(np.mean(resid[:, 2] ** 2))),
                         float(np.sqrt(np.mean(steps[:, :2] ** 2))),
                         float(np.sqrt(np.mean(steps[:, 2] ** 2))))


def synthetic_detector(truth: np.ndarray, noise: DetectorNoise, rng: np.random.Generator
                       ) -> tuple[Callable[[int], np.ndarray], np.ndarray]:
    """A detector model for clips with exact landmarks: per clip one constant offset
    drawn from ``noise.offsets`` (a real face's), per call fresh i.i.d. Gaussian
    noise of ``noise.centre_sigma`` (centre, each axis) and ``noise.scale_sigma``
    (log side), all relative to the landmark box of the frame's true landmarks.

    Args:
        truth: ``[T, L, 2]`` the clip's exact landmarks.
        noise: the measured detector.
        rng: draws the offset now and the noise per call.

    Returns:
        ``(box_of(frame_index) -> float32 [4], offset [3])``.
    """
    ref = np.asarray(landmark_box(np.asarray(truth, np.float32)), np.float64)
    offset = np.asarray(noise.offsets, np.float64)[rng.integers(len(noise.offsets))]

    def box_of(t: int) -> np.ndarray:
        dx, dy, log_scale = offset + rng.normal(0.0, 1.0, 3) * np.array(
            [noise.centre_sigma, noise.centre_sigma, noise.scale_sigma])
        side = ref[t, 2] - ref[t, 0]
        centre = (ref[t, :2] + ref[t, 2:]) / 2 + np.array([dx, dy]) * side
        half = 0.5 * np.exp(log_scale) * np.array([side, ref[t, 3] - ref[t, 1]])
        return np.concatenate([centre - half, centre + half]).astype(np.float32)

    return box_of, offset


def oracle_detector(clip: Clip, noise: DetectorNoise, rng: np.random.Generator
                    ) -> tuple[Detect, np.ndarray]:
    """:func:`synthetic_detector` as a ``Detect`` on the clip's frames, and its offset."""
    box_of, offset = synthetic_detector(clip.truth, noise, rng)

    def detect(image: np.ndarray) -> list:
        t = next(i for i, f in enumerate(clip.frames) if f is image)  # the frame shown
        return [(box_of(t), 1.0)]

    return detect, offset


def _recording(detect: Detect, clip: Clip, boxes: list) -> Detect:
    """``detect`` that also appends the box nearest the truth of each call to ``boxes``
    (``(frame index, box)``)."""

    def wrapped(image: np.ndarray) -> list:
        detections = list(detect(image))
        t = next(i for i, f in enumerate(clip.frames) if f is image)
        box = _closest(detections, clip.truth[t])
        if box is not None:
            boxes.append((t, box))
        return detections

    return wrapped


def dlib_detector() -> Detect:
    from common.boxes import DlibBoxFinder

    finder = DlibBoxFinder(upsample=1)
    return lambda image: finder(image)


def smoothing_grid(default: tuple[OneEuroParams, OneEuroParams | None]
                   ) -> dict[str, tuple[OneEuroParams, OneEuroParams | None]]:
    """``{name: (points' params, centroid's params)}``: the default first, then a
    few neighbours (free: the smoothing is applied after tracking, causally)."""
    grid = {"default": default}
    for min_cutoff in (0.3, 1.0):
        for beta in (4.0, 10.0):
            grid[f"fc{min_cutoff:g}_b{beta:g}"] = (OneEuroParams(min_cutoff, beta), None)
            for centre_beta in (10.0, 30.0):
                grid[f"fc{min_cutoff:g}_b{beta:g}_centre_b{centre_beta:g}"] = (
                    OneEuroParams(min_cutoff, beta), OneEuroParams(1.0, centre_beta))
    return grid


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over clips (frame-weighted for fps)."""
    out = {}
    for key in ("nme", "jitter", "lag"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["detector_calls"] = int(sum(r["detector_calls"] for r in rows))
    out["frames"] = int(sum(r["frames"] for r in rows))
    out["fps"] = out["frames"] / sum(r["seconds"] for r in rows)
    return out


def frame_strip(clip: Clip, raw: np.ndarray, smoothed: np.ndarray, path: str,
                count: int = 5) -> str:
    """Crops of ``count`` consecutive frames, raw (red) above smoothed (green), the
    truth as white dots, plus the x trace of one eye corner over the clip."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth = clip.truth
    start = len(clip.frames) // 2
    lo = truth[start:start + count].reshape(-1, 2).min(0) - 10
    hi = truth[start:start + count].reshape(-1, 2).max(0) + 10
    figure = Figure(figsize=(2.2 * count, 7.5), dpi=56)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, count, height_ratios=[1, 1, 1.1])
    for row, (label, points, colour) in enumerate((("raw", raw, "#ff3030"),
                                                    ("smoothed", smoothed, "#30ff30"))):
        for j in range(count):
            t = start + j
            axes = figure.add_subplot(grid[row, j])
            axes.imshow(clip.frames[t])
            axes.scatter(truth[t, :, 0], truth[t, :, 1], s=3, c="white")
            axes.scatter(points[t, :, 0], points[t, :, 1], s=3, c=colour)
            axes.set_xlim(lo[0], hi[0])
            axes.set_ylim(hi[1], lo[1])
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"{label}, frame {t}", fontsize=8)
    axes = figure.add_subplot(grid[2, :])
    corner = IBUG_68.outer_eye_corners[0]
    frames = np.arange(len(truth))
    axes.plot(frames, raw[:, corner, 0] - truth[:, corner, 0], color="#ff3030",
              label="raw - truth")
    axes.plot(frames, smoothed[:, corner, 0] - truth[:, corner, 0], color="#00a000",
              label="smoothed - truth")
    axes.set_xlabel("frame")
    axes.set_ylabel("x error of an eye corner (px)")
    axes.grid(True, linestyle=":")
    axes.legend(fontsize="small")
    figure.suptitle(f"{clip.name}: raw (top, red) and smoothed (middle, green) "
                    "landmarks; white: truth", fontsize=9)
    figure.tight_layout()
    return atomic.write_figure(lambda p: figure.savefig(p, format="png"), path)


def _print_noise(label: str, noise: DetectorNoise) -> None:
    print(f"dlib HOG vs landmark box, {len(noise.offsets)} {label}: centre noise "
          f"{100 * noise.centre_sigma:.2f} % of the side per axis (frame to frame "
          f"{100 * noise.step_centre:.2f} %), log side {100 * noise.scale_sigma:.2f} % "
          f"(frame to frame {100 * noise.step_scale:.2f} %); per-face offsets (dx, dy, "
          "log side, %): " + "; ".join(", ".join(f"{100 * v:+.1f}" for v in o)
                                      for o in noise.offsets), flush=True)


def run_benchmark(model: str, dlib_model: str | None, shared: str, *,
                  synthetic_clips: int = 3, synthetic_frames: int = 90,
                  stills_per_set: int = 3, still_frames: int = 60, shake_px: float = 0.3,
                  shake_kind: str = "smooth",
                  noise_sigma: float = 3.0, jpeg_quality: int = 75,
                  tracker: TrackerParams | None = None,
                  tracker_variants: dict[str, TrackerParams] | None = None,
                  detector_model: str = "still", measure_moving: bool = True,
                  smoothing: OneEuroParams | None = None,
                  centre_smoothing: OneEuroParams | None = None, seed: int = 0,
                  strip_path: str | None = None) -> dict[str, Any]:
    """Runs every method on every clip (module docstring); returns the report."""
    tracker = tracker or TrackerParams()
    smoothing = smoothing or OneEuroParams()
    centre_smoothing = centre_smoothing or DEFAULT_CENTRE
    rng = np.random.default_rng(seed)
    model_fit, model_name = _model_fit(model)
    dlib_fit = _dlib_fit(dlib_model) if dlib_model else None
    grid = smoothing_grid((smoothing, centre_smoothing))
    # The stills come first: their dlib boxes measure the synthetic part's detector.
    clips = [still_clip(name, image, landmarks, rng, still_frames, shake_px, noise_sigma,
                        jpeg_quality, shake_kind)
             for name, image, landmarks in real_stills(shared, stills_per_set)]
    synthetic = [synthetic_clip(i, rng, synthetic_frames, noise_sigma, jpeg_quality)
                 for i in range(synthetic_clips)]
    finder = dlib_detector()
    moving_noise = None
    if measure_moving or detector_model == "moving":
        moving_rng = np.random.default_rng(seed + 2)  # the other clips' draws stay the same
        offsets = []
        for name, image, landmarks in real_stills(shared, stills_per_set):
            clip = moving_real_clip(name, image, landmarks, moving_rng, still_frames,
                                    noise_sigma, jpeg_quality)
            found = [(t, _closest(list(finder(f)), clip.truth[t]))
                     for t, f in enumerate(clip.frames)]
            found = [(t, b) for t, b in found if b is not None]
            if len(found) > 1:
                offsets.append(box_offsets(np.array([b for _, b in found]),
                                           clip.truth[[t for t, _ in found]]))
        moving_noise = measure_detector_noise(offsets)
        _print_noise("moving real faces (not in the tables; synthetic path on a photo)",
                     moving_noise)
    rows: dict[str, dict[str, list]] = {}
    skipped, strip_done, still_offsets, noise = [], False, [], None
    detector_rng = np.random.default_rng(seed + 1)
    synthetic_offsets = {}
    for clip in clips + synthetic:
        recorded: list = []
        if clip.part == "synthetic":
            if noise is None:
                still_noise = measure_detector_noise(still_offsets)
                _print_noise("real still clips", still_noise)
                noise = moving_noise if detector_model == "moving" else still_noise
            detect, offset = oracle_detector(clip, noise, detector_rng)
            synthetic_offsets[clip.name] = offset.tolist()
        else:
            detect = finder
            if _closest(list(detect(clip.frames[0])), clip.truth[0]) is None:
                skipped.append(clip.name)
                continue
        results = {"model_frame": run_frame_by_frame(
            clip, _recording(detect, clip, recorded), model_fit)}
        if clip.part == "still" and len(recorded) > 1:
            frames_seen = [t for t, _ in recorded]
            still_offsets.append(box_offsets(np.array([b for _, b in recorded]),
                                             clip.truth[frames_seen]))
        if dlib_fit is not None:
            results["dlib_ert"] = run_frame_by_frame(clip, detect, dlib_fit)
        tracked = run_tracked(clip, detect, model_fit, tracker, grid)
        results["model_track"] = {k: tracked[k] for k in ("raw", "detector_calls",
                                                          "seconds")}
        for name, points in tracked["smoothed"].items():
            key = "model_track_smooth" + ("" if name == "default" else f"[{name}]")
            results[key] = {"raw": points, "detector_calls": tracked["detector_calls"],
                            "seconds": tracked["seconds"]}
        for variant, params in (tracker_variants or {}).items():
            other = run_tracked(clip, detect, model_fit, params, {"default": grid["default"]})
            results[f"model_track_smooth{{{variant}}}"] = {
                "raw": other["smoothed"]["default"],
                "detector_calls": other["detector_calls"], "seconds": other["seconds"]}
        for method, result in results.items():
            pred = result["raw"]
            row = {"clip": clip.name, "nme": nme(pred, clip.truth),
                   "jitter": jitter(pred, clip.truth),
                   "lag": lag(pred, clip.truth) if clip.part == "synthetic" else None,
                   "detector_calls": result["detector_calls"], "frames": len(clip.frames),
                   "seconds": result["seconds"]}
            rows.setdefault(clip.part, {}).setdefault(method, []).append(row)
        if strip_path and clip.part == "synthetic" and not strip_done:
            frame_strip(clip, tracked["raw"], tracked["smoothed"]["default"], strip_path)
            strip_done = True
        print(f"{clip.name}: " + ", ".join(
            f"{m} jitter {rows[clip.part][m][-1]['jitter']:.4f}"
            for m in ("model_frame", "model_track", "model_track_smooth")),
            file=sys.stderr, flush=True)
    summary = {part: {m: _summarise(r) for m, r in methods.items()}
               for part, methods in rows.items()}
    acceptance = {}
    for part, methods in summary.items():
        base, ours = methods["model_frame"], methods["model_track_smooth"]
        acceptance[part] = {
            "jitter_ratio": ours["jitter"] / base["jitter"],
            "nme_change": ours["nme"] / base["nme"] - 1.0,
            "lag": ours["lag"],
            "pass": bool(ours["jitter"] <= 0.5 * base["jitter"]
                         and ours["nme"] <= 1.02 * base["nme"]
                         and (ours["lag"] is None or ours["lag"] <= 2.0))}
    return {"model": model_name, "model_path": os.path.abspath(model),
            "dlib_model": dlib_model, "tracker": dataclasses.asdict(tracker),
            "smoothing": dataclasses.asdict(smoothing),
            "centre_smoothing": (None if centre_smoothing is None
                                 else dataclasses.asdict(centre_smoothing)),
            "grid": {k: [dataclasses.asdict(p) if p else None for p in v]
                     for k, v in grid.items()},
            "settings": {"synthetic_clips": synthetic_clips,
                         "synthetic_frames": synthetic_frames,
                         "stills_per_set": stills_per_set, "still_frames": still_frames,
                         "shake_px": shake_px, "shake_kind": shake_kind,
                         "noise_sigma": noise_sigma,
                         "jpeg_quality": jpeg_quality,
                         "fps": FPS, "seed": seed},
            "tracker_variants": {k: dataclasses.asdict(v)
                                 for k, v in (tracker_variants or {}).items()},
            "detector_model": detector_model,
            "detector_noise": None if noise is None else noise.as_dict(),
            "detector_noise_still": None if noise is None else still_noise.as_dict(),
            "detector_noise_moving": (None if moving_noise is None
                                      else moving_noise.as_dict()),
            "synthetic_offsets": synthetic_offsets,
            "skipped_clips": skipped, "summary": summary, "acceptance": acceptance,
            "clips": rows}


def markdown(report: dict[str, Any]) -> str:
    """The summary tables."""
    lines = []
    for part, methods in report["summary"].items():
        lines += [f"### {part}", "",
                  ("| method | NME (%) | jitter (% IOD) | lag (frames) | detector calls "
                   "| frames | fps |"), "|---|---:|---:|---:|---:|---:|---:|"]
        for method, s in methods.items():
            lag_text = "" if s["lag"] is None else f"{s['lag']:.2f}"
            lines.append(f"| {method} | {100 * s['nme']:.2f} | {100 * s['jitter']:.3f} | "
                         f"{lag_text} | {s['detector_calls']} | {s['frames']} | "
                         f"{s['fps']:.1f} |")
        a = report["acceptance"][part]
        lines += ["", (f"tracking + smoothing vs frame by frame: jitter "
                       f"x{a['jitter_ratio']:.2f}, NME {100 * a['nme_change']:+.1f} %, "
                       f"lag {a['lag']}, {'PASS' if a['pass'] else 'FAIL'}"), ""]
    return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "Our model: run directory, .keras or SavedModel.",
                        required=True)
    flags.DEFINE_string("dlib_model", None, "dlib ERT shape predictor .dat (the peer); "
                        "unset: no dlib row.")
    flags.DEFINE_string("shared", "../shared/data", "Folder with ytf68/ and w300/.")
    flags.DEFINE_string("output", "results/bench_video", "Folder for the report files.")
    flags.DEFINE_integer("synthetic_clips", 3, "Moving synthetic clips.")
    flags.DEFINE_integer("synthetic_frames", 90, "Frames per synthetic clip.")
    flags.DEFINE_integer("stills_per_set", 3, "Real photos per data set (ytf68, 300-W).")
    flags.DEFINE_integer("still_frames", 60, "Frames per still clip.")
    flags.DEFINE_float("shake_px", 0.3, "Sigma of the camera shake (pixels).")
    flags.DEFINE_enum("shake_kind", "smooth", ["smooth", "iid"], "Camera shake: smooth "
                      "tremor (0.5-2 Hz) or independent per frame.")
    flags.DEFINE_float("noise_sigma", 3.0, "Sigma of the per-frame pixel noise (0..255).")
    flags.DEFINE_integer("jpeg_quality", 75, "JPEG quality of the per-frame re-encoding.")
    flags.DEFINE_integer("detect_every", TrackerParams().detect_every,
                         "Tracking: detector at least every this many frames.")
    flags.DEFINE_boolean("calibrate", TrackerParams().calibrate, "Tracking: calibrate the "
                         "landmark boxes to the detector's (TrackerParams.calibrate).")
    flags.DEFINE_boolean("calibrate_shift", TrackerParams().calibrate_shift, "Tracking: "
                         "calibrate the box centre too, not only its scale.")
    flags.DEFINE_float("calibration_prior", TrackerParams().calibration_prior, "Tracking: "
                       "pseudo-count shrinking each track's mean calibration to none.")
    flags.DEFINE_boolean("compare_calibrations", True, "Also run the tracker without "
                         "calibration, with the scale only and with calibration_prior 0 "
                         "(2 if --calibration_prior is 0) (rows model_track_smooth{...}).")
    flags.DEFINE_enum("detector_model", "still", ["still", "moving"], "Synthetic part's "
                      "detector: dlib's boxes measured on the real still clips, or on "
                      "the same photos moved along the synthetic path.")
    flags.DEFINE_boolean("measure_moving", True, "Also measure dlib on the photos moved "
                         "along the synthetic path (printed, in the JSON).")
    flags.DEFINE_float("min_cutoff", OneEuroParams().min_cutoff, "One-Euro min cut-off (Hz).")
    flags.DEFINE_float("beta", OneEuroParams().beta, "One-Euro speed coefficient.")
    flags.DEFINE_float("centre_beta", DEFAULT_CENTRE.beta, "One-Euro speed coefficient "
                       "of the face centroid.")
    flags.DEFINE_integer("seed", 0, "Seed of noise, shake and paths.")


def main(argv: Sequence[str]) -> None:
    del argv
    os.makedirs(FLAGS.output, exist_ok=True)
    tracker = TrackerParams(detect_every=FLAGS.detect_every, calibrate=FLAGS.calibrate,
                            calibrate_shift=FLAGS.calibrate_shift,
                            calibration_prior=FLAGS.calibration_prior)
    prior = 0.0 if tracker.calibration_prior else 2.0
    other = f"prior{prior:g}"
    variants = ({"nocal": dataclasses.replace(tracker, calibrate=False),
                 "scale_only": dataclasses.replace(tracker, calibrate=True,
                                                   calibrate_shift=False),
                 other: dataclasses.replace(tracker, calibrate=True, calibrate_shift=True,
                                            calibration_prior=prior)}
                if FLAGS.compare_calibrations else {})
    report = run_benchmark(
        FLAGS.model, FLAGS.dlib_model, FLAGS.shared, synthetic_clips=FLAGS.synthetic_clips,
        synthetic_frames=FLAGS.synthetic_frames, stills_per_set=FLAGS.stills_per_set,
        still_frames=FLAGS.still_frames, shake_px=FLAGS.shake_px,
        shake_kind=FLAGS.shake_kind,
        noise_sigma=FLAGS.noise_sigma, jpeg_quality=FLAGS.jpeg_quality,
        tracker=tracker, tracker_variants=variants, detector_model=FLAGS.detector_model,
        measure_moving=FLAGS.measure_moving,
        smoothing=OneEuroParams(FLAGS.min_cutoff, FLAGS.beta),
        centre_smoothing=OneEuroParams(DEFAULT_CENTRE.min_cutoff, FLAGS.centre_beta),
        seed=FLAGS.seed,
        strip_path=os.path.join(FLAGS.output, "frame_strip.png"))
    report["command"] = " ".join(["python -m experiments.bench_video"] + sys.argv[1:])
    atomic.write_text(os.path.join(FLAGS.output, "bench_video.json"),
                      json.dumps(report, indent=1, default=float) + "\n")
    text = markdown(report)
    atomic.write_text(os.path.join(FLAGS.output, "bench_video.md"), text)
    print(text)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
