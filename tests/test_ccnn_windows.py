"""Tests of the CCNN window geometry (ccnn_tf.windows)."""

import numpy as np
import pytest
import tensorflow as tf

from ccnn_tf import windows as win


def test_face_box_in_crop_and_regions():
    # margin 0.1: the crop is 1.2 face boxes wide, the box is [1/12, 11/12].
    np.testing.assert_allclose(win.face_box_in_crop(0.1), [1 / 12, 1 / 12, 11 / 12, 11 / 12])
    regions = win.region_boxes([(0, 0, 1, 1), (0, 0, 1, 0.8), (0, 0.2, 1, 1)], 0.1).numpy()
    np.testing.assert_allclose(regions[0], win.face_box_in_crop(0.1), atol=1e-7)
    np.testing.assert_allclose(regions[1], [1 / 12, 1 / 12, 11 / 12, 1 / 12 + 0.8 / 1.2],
                               atol=1e-7)
    np.testing.assert_allclose(regions[2, 1], 1 / 12 + 0.2 / 1.2, atol=1e-7)
    # No margin: the crop is the face box.
    np.testing.assert_allclose(win.region_boxes([(0.1, 0.2, 0.3, 0.4)], 0.0),
                               [[0.1, 0.2, 0.3, 0.4]], atol=1e-7)


def test_window_boxes_formula_5():
    points = tf.constant([[[0.5, 0.4], [0.3, 0.7]]])
    boxes = win.window_boxes(points, 0.16, 0.18, margin=0.25).numpy()
    # Half-sizes 0.16 and 0.18 of the face box = 0.16/1.5 and 0.18/1.5 crop units.
    np.testing.assert_allclose(boxes[0, 0], [0.5 - 0.16 / 1.5, 0.4 - 0.18 / 1.5,
                                             0.5 + 0.16 / 1.5, 0.4 + 0.18 / 1.5], atol=1e-7)
    np.testing.assert_allclose((boxes[..., :2] + boxes[..., 2:]) / 2, points, atol=1e-7)


def test_to_window_from_window_round_trip():
    rng = np.random.default_rng(0)
    left_top = rng.uniform(-0.2, 0.8, (4, 7, 2))
    boxes = np.concatenate([left_top, left_top + rng.uniform(0.05, 0.5, (4, 7, 2))], -1)
    points = rng.uniform(-0.5, 1.5, (4, 7, 2))
    relative = win.to_window(points, boxes)
    np.testing.assert_allclose(win.from_window(relative, boxes), points, atol=1e-5)
    # Formula 9: the corners map to 0 and 1.
    np.testing.assert_allclose(win.to_window(boxes[..., :2], boxes), 0.0, atol=1e-6)
    np.testing.assert_allclose(win.to_window(boxes[..., 2:], boxes), 1.0, atol=1e-5)


def test_crop_windows_centres_a_dot():
    size, dot_x, dot_y = 64, 20, 37
    image = np.zeros((1, size, size, 3), np.float32)
    image[0, dot_y, dot_x] = 255.0
    # Pixel (20, 37) has its centre at u = (20 + 0.5) / 64 (docs/DESIGN.md).
    centre = np.array([[[(dot_x + 0.5) / size, (dot_y + 0.5) / size]]], np.float32)
    # A 15-pixel window of 15 image pixels: an exact copy, the dot in the middle.
    boxes = win.window_boxes(centre, 7.5 / size, 7.5 / size, margin=0.0)
    crop = win.crop_windows(image, boxes, 15).numpy()
    assert crop.shape == (1, 1, 15, 15, 3)
    expected = np.zeros((15, 15, 3), np.float32)
    expected[7, 7] = 255.0
    np.testing.assert_allclose(crop[0, 0], expected, atol=1e-3)
    # A window twice as large (resampled): the dot is still exactly at the centre pixel.
    boxes = win.window_boxes(centre, 15 / size, 15 / size, margin=0.0)
    crop = win.crop_windows(image, boxes, 15).numpy()[0, 0, ..., 0]
    assert np.unravel_index(np.argmax(crop), crop.shape) == (7, 7)
    np.testing.assert_allclose(crop[7, 7], 255.0, atol=1e-3)
    np.testing.assert_allclose(crop, crop[::-1, ::-1], atol=1e-3)  # symmetric around it


def test_crop_windows_samples_at_pixel_centres():
    # Image values are the pixel-index coordinates: x in channel 0, y in channel 1, so
    # a bilinear sample returns where it was taken.
    height, width = 40, 50
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs, ys, np.zeros_like(xs)], -1)[None]
    window = np.array([[[0.2, 0.3, 0.7, 0.6], [0.1, 0.15, 0.35, 0.9]]], np.float32)
    crop = win.crop_windows(image, window, (6, 8)).numpy()
    assert crop.shape == (1, 2, 6, 8, 3)
    for k, (left, top, right, bottom) in enumerate(window[0]):
        u = left + (np.arange(8) + 0.5) * (right - left) / 8
        v = top + (np.arange(6) + 0.5) * (bottom - top) / 6
        np.testing.assert_allclose(crop[0, k, 0, :, 0], u * width - 0.5, atol=1e-3)
        np.testing.assert_allclose(crop[0, k, :, 0, 1], v * height - 0.5, atol=1e-3)


def test_crop_windows_whole_image_is_identity_and_one_window_per_image():
    image = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    crop = win.crop_windows(image, np.tile([[0.0, 0.0, 1.0, 1.0]], (2, 1)), 16).numpy()
    assert crop.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(crop, image, atol=1e-3)


def test_crop_windows_outside_image_is_extrapolated():
    image = np.full((1, 8, 8, 1), 100.0, np.float32)
    crop = win.crop_windows(image, [[[1.5, 1.5, 2.0, 2.0]]], 3, extrapolation_value=7.0)
    np.testing.assert_allclose(crop, 7.0)


@pytest.mark.parametrize("seed_kind", ["int", "generator"])
def test_shake_translates_with_the_given_std(seed_kind):
    seed = 3 if seed_kind == "int" else tf.random.Generator.from_seed(3)
    boxes = tf.tile(tf.constant([[0.2, 0.3, 0.5, 0.7]]), [20000, 1])
    shaken = win.shake(boxes, 0.01, seed).numpy()
    size = shaken[:, 2:] - shaken[:, :2]
    np.testing.assert_allclose(size, [[0.3, 0.4]] * 20000, atol=1e-6)  # a translation
    offsets = shaken[:, :2] - boxes.numpy()[:, :2]
    np.testing.assert_allclose(offsets.mean(0), 0.0, atol=5e-4)
    np.testing.assert_allclose(offsets.std(0), 0.01, rtol=0.03)
    assert abs(np.corrcoef(offsets.T)[0, 1]) < 0.05  # x and y independent
