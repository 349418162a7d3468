"""The synthetic part's detector model of experiments.bench_video (measured dlib noise)."""

import numpy as np
import pytest

from common.synthetic import generate_face
from experiments import bench_video

_SHAPE = generate_face(0, seed=0).landmarks68.astype(np.float64)


def _moving_truth(frames: int) -> np.ndarray:
    t = np.arange(frames)[:, None, None]
    zoom = 1.0 + 0.1 * np.sin(t / 7.0)
    return (_SHAPE - _SHAPE.mean(0)) * zoom + _SHAPE.mean(0) + np.concatenate(
        [3.0 * np.sin(t / 5.0), 2.0 * np.cos(t / 9.0)], axis=-1)


_NOISE = bench_video.DetectorNoise(
    offsets=np.array([[0.05, -0.03, 0.10], [-0.02, 0.04, -0.20]]),
    centre_sigma=0.02, scale_sigma=0.03)


def test_offset_is_constant_within_a_clip_and_noise_is_iid_of_the_given_size():
    truth = _moving_truth(2000)
    box_of, offset = bench_video.synthetic_detector(truth, _NOISE, np.random.default_rng(3))
    assert any(np.allclose(offset, o) for o in _NOISE.offsets)
    measured = bench_video.box_offsets(np.array([box_of(t) for t in range(len(truth))]),
                                       truth)
    # Constant offset: the mean over the clip is the drawn face's offset (3 sigma / sqrt T).
    np.testing.assert_allclose(measured.mean(0), offset,
                               atol=3 * 0.03 / np.sqrt(len(truth)))
    # I.i.d. noise of the given size around it, no correlation from frame to frame.
    resid = measured - offset
    np.testing.assert_allclose(resid.std(0), [0.02, 0.02, 0.03], rtol=0.08)
    for k in range(3):
        assert abs(np.corrcoef(resid[:-1, k], resid[1:, k])[0, 1]) < 0.08
    # A second call on the same frame gives fresh noise, not the same box.
    assert not np.allclose(box_of(10), box_of(10))


def test_offsets_differ_between_clips_and_measuring_recovers_the_model():
    rng = np.random.default_rng(0)
    truth = _moving_truth(300)
    clips, drawn = [], []
    for _ in range(12):
        box_of, offset = bench_video.synthetic_detector(truth, _NOISE, rng)
        drawn.append(offset)
        clips.append(bench_video.box_offsets(np.array([box_of(t) for t in range(300)]),
                                             truth))
    assert len({tuple(o) for o in drawn}) == 2  # both faces' offsets were drawn
    noise = bench_video.measure_detector_noise(clips)
    np.testing.assert_allclose(noise.offsets, drawn, atol=0.01)
    assert noise.centre_sigma == pytest.approx(0.02, rel=0.05)
    assert noise.scale_sigma == pytest.approx(0.03, rel=0.05)
    # i.i.d.: the frame-to-frame step is sqrt(2) times the noise.
    assert noise.step_centre == pytest.approx(0.02 * np.sqrt(2), rel=0.06)


def test_measuring_without_clips_is_an_error():
    with pytest.raises(ValueError, match="no real clip"):
        bench_video.measure_detector_noise([])
