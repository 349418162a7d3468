"""Tests of common.plots: every figure is a non-empty PNG of the expected size."""

import struct

import numpy as np
import pytest

from common import plots
from common.schemes import CUHK_5, IBUG_68

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) from the IHDR chunk of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _faces(num_faces, num_points, size=64, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_faces, size, size, 3), dtype=np.uint8)
    true = rng.uniform(8, size - 8, size=(num_faces, num_points, 2))
    return images, true, rng


def test_plot_ced(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"MSRRN": rng.gamma(4, 0.012, 300), "baseline": rng.gamma(4, 0.018, 300)}
    path = plots.plot_ced(curves, tmp_path / "ced.png", max_threshold=0.1,
                          title="300-W common subset", figsize=(6, 4), dpi=100)
    assert path == tmp_path / "ced.png"
    assert path.stat().st_size > 1000
    assert _png_size(path) == (600, 400)


def test_plot_ced_creates_parent_and_accepts_str(tmp_path):
    path = plots.plot_ced({"a": [0.01, 0.02]}, str(tmp_path / "sub" / "ced.png"))
    assert path.is_file()
    assert _png_size(path) == (640, 480)


def test_plot_ced_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="at least one curve"):
        plots.plot_ced({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_ced({"a": []}, tmp_path / "x.png")


def test_plot_landmark_grid_with_stages(tmp_path):
    images, true, rng = _faces(6, IBUG_68.num_points)
    stages = [true + rng.normal(0, s, true.shape) for s in (6, 3)]
    predicted = true + rng.normal(0, 1, true.shape)
    path = plots.plot_landmark_grid(images, predicted, true, tmp_path / "grid.png", ncols=4,
                                    titles=[f"face {i}" for i in range(6)], stages=stages,
                                    cell_size=2, dpi=50)
    assert path.stat().st_size > 1000
    assert _png_size(path) == (4 * 100, 2 * 100)


def test_plot_landmark_grid_mixed_sizes_no_truth(tmp_path):
    images = [np.zeros((40, 60, 3), np.uint8), np.full((50, 50), 128.0)]
    predicted = np.full((2, CUHK_5.num_points, 2), 20.0)
    path = plots.plot_landmark_grid(images, predicted, None, tmp_path / "grid.png",
                                    cell_size=1.5, dpi=40)
    assert _png_size(path) == (2 * 60, 60)  # ncols shrinks to the number of faces


def test_plot_landmark_grid_bad_input(tmp_path):
    images, true, _ = _faces(2, 5)
    with pytest.raises(ValueError, match=r"predicted must have shape \[2, L, 2\]"):
        plots.plot_landmark_grid(images, true[:1], None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        plots.plot_landmark_grid(images, true, true, tmp_path / "x.png", titles=["a"])
    with pytest.raises(ValueError, match="at least one image"):
        plots.plot_landmark_grid([], np.zeros((0, 5, 2)), None, tmp_path / "x.png")


def test_plot_per_point_errors_five_points(tmp_path):
    series = {"stage 1": [0.025, 0.024, 0.022, 0.02, 0.02],
              "stage 2": [0.015, 0.014, 0.013, 0.013, 0.014],
              "stage 3": [0.011, 0.01, 0.01, 0.01, 0.011]}
    path = plots.plot_per_point_errors(series, ["LE", "RE", "N", "LM", "RM"],
                                       tmp_path / "pp.png", title="CCNN stages", dpi=50)
    assert path.stat().st_size > 1000
    assert _png_size(path) == (320, 240)


def test_plot_per_point_errors_68_points(tmp_path):
    values = np.linspace(0.02, 0.08, 68)
    path = plots.plot_per_point_errors({"MSRRN": values}, IBUG_68.point_names,
                                       tmp_path / "pp68.png", figsize=(10, 4), dpi=30)
    assert _png_size(path) == (300, 120)


def test_plot_per_point_errors_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="4 values for 5 point names"):
        plots.plot_per_point_errors({"a": [1, 2, 3, 4]}, CUHK_5.point_names,
                                    tmp_path / "x.png")
