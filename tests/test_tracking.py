"""Multi-face tracking (common.tracking): stable ids, re-detection after a cut."""

import numpy as np
import pytest

from common import tracking
from common.boxes import box_iou
from common.geometry import landmark_box
from common.synthetic import generate_face

_IMAGE = np.zeros((240, 320, 3), np.uint8)
_SHAPE = generate_face(0, seed=0).landmarks68.astype(np.float32) * 0.6  # ~45 px face


def _face(x: float, y: float) -> np.ndarray:
    return _SHAPE - _SHAPE.mean(0) + np.array([x, y], np.float32)


class _World:
    """Faces per frame; a detector and a 'model' that fits a face only when the box
    covers it (else a confident-less guess)."""

    def __init__(self, frames):
        self.frames = frames  # list of lists of [68, 2] landmarks
        self.index = 0
        self.detector_frames = []

    def detect(self, image):
        del image
        self.detector_frames.append(self.index)
        return [(np.asarray(landmark_box(f[None]))[0], 1.0) for f in self.frames[self.index]]

    def model(self, boxes):
        points, conf = [], []
        for box in boxes:
            best = max(self.frames[self.index],
                       key=lambda f: box_iou(box, np.asarray(landmark_box(f[None]))[0]),
                       default=None)
            if best is not None and box_iou(box, np.asarray(landmark_box(best[None]))[0]) > 0.5:
                points.append(best)
                conf.append(0.9)
            else:  # a failed fit: a shape in the middle of the box
                centre = (box[:2] + box[2:]) / 2
                points.append(_SHAPE - _SHAPE.mean(0) + centre)
                conf.append(0.05)
        return np.array(points, np.float32).reshape(-1, 68, 2), np.array(conf)


def _run(world, params):
    tracker = tracking.FaceTracker(params)
    plans = []
    for i in range(len(world.frames)):
        world.index = i
        plan = tracker.plan(i, _IMAGE, world.detect)
        points, conf = world.model(plan.boxes)
        tracker.update(points, conf)
        plans.append(plan)
    return tracker, plans


def test_two_moving_faces_keep_their_ids_and_the_detector_rests():
    frames = [[_face(80 + 2 * t, 100 + t), _face(230 - 2 * t, 120)] for t in range(20)]
    world = _World(frames)
    tracker, plans = _run(world, tracking.TrackerParams(detect_every=10))
    assert world.detector_frames == [0, 10]
    for plan in plans:
        assert plan.track_ids == [0, 1]
    assert plans[5].sources == [tracking.SOURCE_TRACKED] * 2
    assert tracker.detector_calls == 2 and tracker.detector_calls_saved == 18
    # the tracked boxes follow the faces
    for t, plan in enumerate(plans):
        for k in range(2):
            truth = np.asarray(landmark_box(frames[t][k][None]))[0]
            assert box_iou(plan.boxes[k], truth) > 0.7


def test_redetects_after_a_cut_to_another_face():
    frames = [[_face(90, 100)]] * 10 + [[_face(240, 150)]] * 10
    world = _World(frames)
    _, plans = _run(world, tracking.TrackerParams(detect_every=0, min_confidence=0.3))
    # frame 10 is fitted in the old box and fails (low confidence): frame 11 re-detects
    assert world.detector_frames == [0, 11]
    assert plans[11].reason == "low_confidence"
    assert [p.track_ids for p in plans[:11]] == [[0]] * 11
    assert [p.track_ids for p in plans[11:]] == [[1]] * 9
    truth = np.asarray(landmark_box(frames[12][0][None]))[0]
    assert box_iou(plans[12].boxes[0], truth) > 0.9


def test_a_face_leaving_the_picture_ends_its_track():
    frames = [[_face(100, 100)]] * 3 + [[]] * 3
    world = _World(frames)
    _, plans = _run(world, tracking.TrackerParams(detect_every=0))
    assert plans[3].detected is False and plans[4].detected  # failed fit -> re-detect
    assert plans[4].track_ids == [] and plans[5].reason == "no_track"


def test_update_checks_the_plan():
    tracker = tracking.FaceTracker()
    with pytest.raises(RuntimeError):
        tracker.update(np.zeros((0, 68, 2)))
    with pytest.raises(ValueError):
        tracking.TrackerParams(min_confidence=2.0)


def test_tracked_box_is_calibrated_to_the_detector_box():
    points = _face(120, 110)
    detector_box = np.asarray(landmark_box(points[None]))[0] + np.array([3, -4, 9, 2],
                                                                         np.float32)
    calibration = tracking._calibration(detector_box, points)
    np.testing.assert_allclose(tracking._calibrated(
        np.asarray(landmark_box(points[None]))[0], calibration), detector_box, atol=1e-3)
    # The face moves by (5, 2): its tracked box moves with it, same offset and size.
    moved = np.asarray(landmark_box((points + [5, 2])[None]))[0]
    np.testing.assert_allclose(tracking._calibrated(moved, calibration),
                               detector_box + [5, 2, 5, 2], atol=1e-3)


class _OffsetWorld(_World):
    """A detector whose box is the landmark box moved by 4 px right and 20 % larger."""

    def detect(self, image):
        out = []
        for box, score in super().detect(image):
            centre, half = (box[:2] + box[2:]) / 2 + [4.0, 0.0], 0.6 * (box[2:] - box[:2])
            out.append((np.concatenate([centre - half, centre + half]), score))
        return out


@pytest.mark.parametrize("shift, prior", [(True, 0.0), (True, 2.0), (False, 0.0)])
def test_calibration_prior_shrinks_and_scale_only_drops_the_shift(shift, prior):
    frames = [[_face(120, 110)]] * 3
    world = _OffsetWorld(frames)
    tracker, _ = _run(world, tracking.TrackerParams(detect_every=0, calibrate_shift=shift,
                                                    calibration_prior=prior))
    side = float(np.diff(np.asarray(landmark_box(frames[0][0][None]))[0, ::2])[0])
    dx, dy, scale = tracker.tracks[0].calibration
    assert tracker.tracks[0].calibrations == 1
    assert dx == pytest.approx(4.0 / side / (1 + prior) if shift else 0.0, abs=1e-4)
    assert dy == pytest.approx(0.0, abs=1e-4)
    assert scale == pytest.approx(1.2 ** (1 / (1 + prior)), rel=1e-4)
    with pytest.raises(ValueError, match="calibration_prior"):
        tracking.TrackerParams(calibration_prior=-1.0)
