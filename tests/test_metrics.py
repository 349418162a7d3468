"""Tests of common.metrics against hand-computed values."""

import json

import numpy as np
import pytest

from common import metrics
from common.schemes import CUHK_5, IBUG_68

# Two faces, five points (CUHK order: left eye, right eye, nose, mouth corners).
TRUE_5 = np.array([
    [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]],
    [[0, 0], [40, 0], [20, 20], [5, 40], [35, 40]],
], dtype=np.float64)
BOXES_5 = np.array([[0, 0, 40, 30], [-10, -10, 50, 70]], dtype=np.float64)


def _pred_5():
    pred = TRUE_5.copy()
    # Face 0: point 0 off by a 3-4-5 triangle, point 2 off by 5 in y -> errors 5,0,5,0,0.
    pred[0, 0] += (3, 4)
    pred[0, 2] += (0, 5)
    # Face 1: every point off by 4 in x -> errors 4 everywhere.
    pred[1] += (4, 0)
    return pred


def _face_68(left_pupil, right_pupil, left_corner, right_corner):
    """A 68-point face with the given pupils (eye-contour means) and outer corners."""
    points = np.zeros((68, 2))
    points[:17, 0] = np.linspace(0, 100, 17)  # a jaw, so the face is not degenerate

    def eye(centre, outer_corner, outer_first):
        centre = np.asarray(centre, float)
        d = np.asarray(outer_corner, float) - centre
        # Six points summing to zero around the centre; the outer corner is the
        # first point of the image-left eye (36) and the fourth of the right (45).
        offsets = [d, (1, -2), (-1, -2), -d, (-1, 2), (1, 2)]
        if not outer_first:
            offsets = [-d, (1, -2), (-1, -2), d, (-1, 2), (1, 2)]
        return centre + np.array(offsets, float)

    points[36:42] = eye(left_pupil, left_corner, outer_first=True)
    points[42:48] = eye(right_pupil, right_corner, outer_first=False)
    assert IBUG_68.outer_eye_corners == (36, 45)
    return points


class TestNormalizer:
    def test_five_point_kinds(self):
        np.testing.assert_allclose(metrics.normalizer(TRUE_5, "inter_pupil"), [20, 40])
        # No eye corners in the 5-point scheme: inter-ocular = eye-centre distance (MTFL).
        np.testing.assert_allclose(metrics.normalizer(TRUE_5, "inter_ocular", CUHK_5),
                                   [20, 40])
        np.testing.assert_allclose(metrics.normalizer(TRUE_5, "box_width", boxes=BOXES_5),
                                   [40, 60])
        np.testing.assert_allclose(metrics.normalizer(TRUE_5, "box_diagonal", boxes=BOXES_5),
                                   [50, 100])

    def test_68_point_pupils_and_corners(self):
        face = _face_68(left_pupil=(30, 40), right_pupil=(70, 40),
                        left_corner=(20, 40), right_corner=(82, 40))
        other = _face_68(left_pupil=(0, 0), right_pupil=(30, 40),
                         left_corner=(-5, 0), right_corner=(35, 40))
        true = np.stack([face, other])
        np.testing.assert_allclose(metrics.normalizer(true, "inter_pupil"), [40, 50])
        np.testing.assert_allclose(metrics.normalizer(true, "inter_ocular", IBUG_68),
                                   [62, np.hypot(40, 40)])

    def test_68_point_pupil_is_mean_of_eye_contour(self):
        true = np.zeros((1, 68, 2))
        true[0, 36:42] = [[0, 0], [2, 0], [4, 0], [6, 0], [8, 0], [10, 0]]    # mean (5, 0)
        true[0, 42:48] = [[20, 3], [20, 3], [20, 3], [20, 3], [20, 3], [50, 3]]  # mean (25, 3)
        np.testing.assert_allclose(metrics.normalizer(true, "inter_pupil"),
                                   [np.hypot(20, 3)])
        np.testing.assert_allclose(metrics.normalizer(true, "inter_ocular"), [np.hypot(20, 3)])

    def test_unknown_kind(self):
        with pytest.raises(ValueError, match="unknown normalizer kind 'pupil'.*inter_pupil"):
            metrics.normalizer(TRUE_5, "pupil")

    @pytest.mark.parametrize("kind", ["box_width", "box_diagonal"])
    def test_missing_boxes(self, kind):
        with pytest.raises(ValueError, match="needs the face boxes"):
            metrics.normalizer(TRUE_5, kind)

    def test_bad_box_shape(self):
        with pytest.raises(ValueError, match=r"boxes must have shape \[2, 4\]"):
            metrics.normalizer(TRUE_5, "box_width", boxes=BOXES_5[:1])

    def test_zero_normalizer_names_face(self):
        true = TRUE_5.copy()
        true[1, 1] = true[1, 0]
        with pytest.raises(ValueError, match="face index 1"):
            metrics.normalizer(true, "inter_pupil")
        boxes = BOXES_5.copy()
        boxes[0, 2] = boxes[0, 0]
        with pytest.raises(ValueError, match="face index 0"):
            metrics.nme(_pred_5(), TRUE_5, "box_width", boxes=boxes)

    def test_scheme_mismatch(self):
        with pytest.raises(ValueError, match="68 points but the landmarks have 5"):
            metrics.normalizer(TRUE_5, "inter_pupil", scheme=IBUG_68)

    def test_no_scheme_for_point_count(self):
        with pytest.raises(ValueError, match="no landmark scheme has 7 points"):
            metrics.normalizer(np.zeros((1, 7, 2)), "inter_pupil")

    def test_bad_landmark_shape(self):
        with pytest.raises(ValueError, match=r"\[N, L, 2\]"):
            metrics.normalizer(TRUE_5[0], "inter_pupil")


class TestErrors:
    def test_point_errors(self):
        np.testing.assert_allclose(metrics.point_errors(_pred_5(), TRUE_5),
                                   [[5, 0, 5, 0, 0], [4, 4, 4, 4, 4]])

    def test_point_errors_shape_mismatch(self):
        with pytest.raises(ValueError, match="shapes differ"):
            metrics.point_errors(_pred_5()[:, :4], TRUE_5)

    def test_nme_by_hand(self):
        pred = _pred_5()
        # Face 0: mean error 10/5 = 2 px; face 1: 4 px.
        np.testing.assert_allclose(metrics.nme(pred, TRUE_5, "inter_pupil"),
                                   [2 / 20, 4 / 40])
        np.testing.assert_allclose(metrics.nme(pred, TRUE_5, "box_width", boxes=BOXES_5),
                                   [2 / 40, 4 / 60])
        np.testing.assert_allclose(metrics.nme(pred, TRUE_5, "box_diagonal", boxes=BOXES_5),
                                   [2 / 50, 4 / 100])

    def test_per_point_nme_by_hand(self):
        per_point = metrics.per_point_nme(_pred_5(), TRUE_5, "inter_ocular")
        np.testing.assert_allclose(per_point, [[0.25, 0, 0.25, 0, 0], [0.1] * 5])
        np.testing.assert_allclose(per_point.mean(axis=1),
                                   metrics.nme(_pred_5(), TRUE_5, "inter_ocular"))

    def test_perfect_prediction(self):
        np.testing.assert_array_equal(metrics.nme(TRUE_5, TRUE_5, "inter_pupil"), [0, 0])


class TestCurves:
    ERRORS = np.array([0.02, 0.05, 0.05, 0.09])

    def test_ced_of_four_errors(self):
        thresholds, fractions = metrics.ced_curve(self.ERRORS, 0.1, num_points=11)
        np.testing.assert_allclose(thresholds, np.arange(11) / 100)
        np.testing.assert_allclose(
            fractions, [0, 0, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 1.0, 1.0])

    def test_ced_is_inclusive_and_monotone(self):
        _, fractions = metrics.ced_curve(np.array([0.0, 0.5]), 1.0, num_points=3)
        np.testing.assert_allclose(fractions, [0.5, 1.0, 1.0])
        _, fractions = metrics.ced_curve(np.random.default_rng(0).random(50), 1.0)
        assert np.all(np.diff(fractions) >= 0)

    def test_auc_by_hand(self):
        # Each face adds (T - e) / N for e < T: (0.08 + 0.05 + 0.05 + 0.01) / 4 / 0.1.
        assert metrics.auc(self.ERRORS, 0.1) == pytest.approx(0.475)
        # At T = 0.05 only 0.02 contributes: (0.03 / 4) / 0.05 = 0.15.
        assert metrics.auc(self.ERRORS, 0.05) == pytest.approx(0.15)

    def test_auc_matches_integrated_ced(self):
        errors = np.random.default_rng(1).gamma(2.0, 0.02, size=200)
        thresholds, fractions = metrics.ced_curve(errors, 0.08, num_points=20001)
        area = np.sum((fractions[1:] + fractions[:-1]) / 2 * np.diff(thresholds)) / 0.08
        assert metrics.auc(errors, 0.08) == pytest.approx(area, abs=1e-3)

    def test_auc_extremes_and_uniform(self):
        assert metrics.auc(np.zeros(10), 0.08) == 1.0
        assert metrics.auc(np.full(10, 0.2), 0.08) == 0.0
        assert metrics.auc(np.full(10, 0.08), 0.08) == 0.0
        uniform = (np.arange(1000) + 0.5) / 1000 * 0.08
        assert metrics.auc(uniform, 0.08) == pytest.approx(0.5)

    def test_failure_rate(self):
        assert metrics.failure_rate(self.ERRORS, 0.05) == 0.25  # 0.05 itself is no failure
        assert metrics.failure_rate(self.ERRORS, 0.04) == 0.75
        assert metrics.failure_rate(self.ERRORS, 0.1) == 0.0

    @pytest.mark.parametrize("errors, message", [
        (np.array([]), "empty"),
        (np.array([0.1, np.nan]), "non-finite value.*face 1"),
        (np.zeros((2, 2)), "vector"),
    ])
    def test_bad_errors(self, errors, message):
        with pytest.raises(ValueError, match=message):
            metrics.auc(errors, 0.1)

    @pytest.mark.parametrize("threshold", [0.0, -1.0, np.inf])
    def test_bad_threshold(self, threshold):
        with pytest.raises(ValueError, match="threshold"):
            metrics.failure_rate(self.ERRORS, threshold)

    def test_ced_needs_two_points(self):
        with pytest.raises(ValueError, match="num_points"):
            metrics.ced_curve(self.ERRORS, 0.1, num_points=1)


class TestSummaries:
    def test_summarize(self):
        summary = metrics.summarize(TestCurves.ERRORS)
        assert summary["count"] == 4
        assert summary["mean"] == pytest.approx(0.0525)
        assert summary["median"] == pytest.approx(0.05)
        assert summary["std"] == pytest.approx(np.std(TestCurves.ERRORS))
        assert summary["auc@0.1"] == pytest.approx(0.475)
        assert summary["failure@0.08"] == 0.25
        assert set(summary) == {"count", "mean", "median", "std", "auc@0.08", "failure@0.08",
                                "auc@0.1", "failure@0.1"}
        assert json.loads(json.dumps(summary)) == summary
        assert all(type(v) in (int, float) for v in summary.values())

    def test_results_markdown(self):
        table = {"MSRRN": {"mean": 0.0523, "auc@0.08": 0.5, "count": 554},
                 "SDM": {"mean": 0.0763, "count": 554}}
        text = metrics.results_markdown(table, {"mean": "NME", "auc@0.08": "AUC@0.08",
                                                "count": "faces"}, title="300-W full set")
        assert text == ("### 300-W full set\n\n"
                        "| method | NME (%) | AUC@0.08 (%) | faces |\n"
                        "|---|---:|---:|---:|\n"
                        "| MSRRN | 5.23 | 50.00 | 554 |\n"
                        "| SDM | 7.63 | - | 554 |\n")

    def test_results_markdown_plain_numbers(self):
        text = metrics.results_markdown({"a": {"x": 0.12345}}, ["x"], percent=False,
                                        decimals=3)
        assert text.splitlines() == ["| method | x |", "|---|---:|", "| a | 0.123 |"]

    def test_results_markdown_needs_columns(self):
        with pytest.raises(ValueError, match="column"):
            metrics.results_markdown({"a": {"x": 1.0}}, [])
