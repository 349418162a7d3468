"""The one 68 -> 5 point reduction (common.schemes.IBUG68_TO_CUHK5)."""

import numpy as np
import pytest

from common.schemes import CUHK_5, IBUG68_TO_CUHK5, IBUG_68, Reduction, reduce_to_cuhk5


def _hand_face() -> np.ndarray:
    points = np.zeros((68, 2))
    points[:, 0] = np.arange(68)          # x = index, y = 2 * index: every point distinct
    points[:, 1] = 2 * np.arange(68)
    return points


def test_reduction_against_hand_values():
    reduced = reduce_to_cuhk5(_hand_face())
    # mean(36..41) = 38.5, mean(42..47) = 44.5; nose tip 30; mouth corners 48, 54.
    expected = np.array([[38.5, 77.0], [44.5, 89.0], [30, 60], [48, 96], [54, 108]])
    np.testing.assert_allclose(reduced, expected)


def test_reduction_batched_and_keeps_float32():
    faces = np.stack([_hand_face(), _hand_face() + 10]).astype(np.float32)
    reduced = reduce_to_cuhk5(faces)
    assert reduced.shape == (2, 5, 2) and reduced.dtype == np.float32
    np.testing.assert_allclose(reduced[1], reduced[0] + 10, atol=1e-4)


def test_reduction_commutes_with_flip():
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, (68, 2))
    flipped = face[list(IBUG_68.flip_permutation)] * [-1, 1]
    reduced_flipped = reduce_to_cuhk5(flipped)
    flipped_reduced = reduce_to_cuhk5(face)[list(CUHK_5.flip_permutation)] * [-1, 1]
    np.testing.assert_allclose(reduced_flipped, flipped_reduced)


def test_reduction_uses_the_pupils_of_the_68_point_scheme():
    face = np.random.default_rng(1).uniform(0, 100, (68, 2))
    left, right = IBUG_68.pupils(face)
    np.testing.assert_allclose(reduce_to_cuhk5(face)[:2], np.stack([left, right]))


def test_reduction_rejects_wrong_point_count():
    with pytest.raises(ValueError, match="expected landmarks"):
        reduce_to_cuhk5(np.zeros((5, 2)))


def test_reduction_rejects_groups_that_break_the_flip():
    with pytest.raises(ValueError, match="mirror group"):
        Reduction(IBUG_68, CUHK_5, ((36,), (42,), (30,), (48,), (54,)))
    with pytest.raises(ValueError, match="groups for"):
        Reduction(IBUG_68, CUHK_5, IBUG68_TO_CUHK5.groups[:4])
