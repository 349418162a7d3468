"""The One-Euro filter (common.smoothing) against hand-computed values."""

import numpy as np
import pytest

from common import smoothing
from common.schemes import IBUG_68
from common.synthetic import generate_face


def test_one_euro_matches_hand_computed_steps():
    # min_cutoff 1 Hz, beta 0.5, d_cutoff 1 Hz, dt 0.1 s, face size 2, x = 0, 1, 1, 1.
    # alpha(1 Hz) = 1 / (1 + 1 / (2 pi 0.1)) = 0.3858695.
    # step 1: dx = 10, dxhat = 3.858695, fc = 1 + 0.5 * 3.858695 / 2 = 1.964674,
    #         alpha = 0.552461, xhat = 0.552461
    # step 2: dx = 4.475390, dxhat = 4.096660, fc = 2.024165, alpha = 0.559824,
    #         xhat = 0.552461 + 0.559824 * 0.447539 = 0.803004
    # step 3: dx = 1.969960, dxhat = 3.276031, fc = 1.819008, alpha = 0.533346,
    #         xhat = 0.908071
    params = smoothing.OneEuroParams(min_cutoff=1.0, beta=0.5, d_cutoff=1.0)
    assert smoothing.smoothing_factor(1.0, 0.1) == pytest.approx(0.3858695, abs=1e-7)
    filt = smoothing.OneEuroFilter(params)
    expected = [0.0, 0.552461, 0.803004, 0.908071]
    for i, (x, want) in enumerate(zip([0.0, 1.0, 1.0, 1.0], expected)):
        out = filt(np.array([[x, 5.0]]), t=0.1 * i, size=2.0)
        assert out[0, 0] == pytest.approx(want, abs=2e-6)
        assert out[0, 1] == pytest.approx(5.0)  # a still coordinate stays put


def test_face_size_normalisation_makes_the_filter_scale_free():
    rng = np.random.default_rng(0)
    track = np.cumsum(rng.normal(0, 1, (30, 3, 2)), axis=0)
    small, large = (smoothing.OneEuroFilter(smoothing.OneEuroParams(beta=3.0))
                    for _ in range(2))
    for i, points in enumerate(track):
        a = small(points, i / 30, size=10.0)
        b = large(10 * points, i / 30, size=100.0)
        np.testing.assert_allclose(10 * a, b, rtol=1e-9, atol=1e-9)


def test_still_synthetic_face_gives_near_zero_smoothed_motion():
    face = generate_face(3, seed=0)
    truth = face.landmarks68.astype(np.float64)
    iod = smoothing.face_size(truth, IBUG_68)
    rng = np.random.default_rng(1)
    smoother = smoothing.TrackSmoother(smoothing.OneEuroParams(), IBUG_68)
    raw, smooth = [], []
    for i in range(90):
        noisy = truth + rng.normal(0.0, 0.02 * iod, truth.shape)  # 2 % IOD jitter
        raw.append(noisy)
        smooth.append(smoother(0, noisy, i / 30.0))
    def motion(x):  # RMS frame-to-frame motion after the first second, / IOD
        x = np.asarray(x)[30:]
        return float(np.sqrt(np.mean(np.sum(np.diff(x, axis=0) ** 2, -1)))) / iod
    assert motion(raw) > 0.02
    assert motion(smooth) < 0.35 * motion(raw)
    assert motion(smooth) < 0.015
    exact = smoothing.OneEuroFilter()
    outs = [exact(truth, i / 30.0, iod) for i in range(5)]
    np.testing.assert_allclose(np.diff(outs, axis=0), 0.0, atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="min_cutoff"):
        smoothing.OneEuroParams(min_cutoff=0.0)
    filt = smoothing.OneEuroFilter()
    filt(np.zeros((2, 2)), 0.0, 1.0)
    with pytest.raises(ValueError, match="time must increase"):
        filt(np.zeros((2, 2)), 0.0, 1.0)
    with pytest.raises(ValueError, match="points"):
        filt(np.zeros((3, 2)), 1.0, 1.0)
