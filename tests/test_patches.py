"""Tests of the shape-indexed patch sampling op and layer."""

import numpy as np
import pytest
import tensorflow as tf

from msrrn_tf.layers import ShapeIndexedPatches, shape_indexed_patches


def reference_patches(images, shape, patch_size, patch_extent=None):
    """Loop-by-loop bilinear sampling with zero padding (DESIGN.md pixel convention)."""
    n, h, w, c = images.shape
    k = patch_size
    out = np.zeros((n, shape.shape[1], k, k, c))

    def pixel(b, yi, xi):
        if 0 <= yi < h and 0 <= xi < w:
            return images[b, yi, xi]
        return np.zeros(c)

    for b in range(n):
        for lm in range(shape.shape[1]):
            u, v = shape[b, lm]
            for i in range(k):
                for j in range(k):
                    if patch_extent is None:
                        x = u * w - 0.5 + (j + 0.5 - k / 2)
                        y = v * h - 0.5 + (i + 0.5 - k / 2)
                    else:
                        x = (u + (j + 0.5 - k / 2) * patch_extent / k) * w - 0.5
                        y = (v + (i + 0.5 - k / 2) * patch_extent / k) * h - 0.5
                    x0, y0 = int(np.floor(x)), int(np.floor(y))
                    ax, ay = x - x0, y - y0
                    out[b, lm, i, j] = ((1 - ay) * ((1 - ax) * pixel(b, y0, x0)
                                                    + ax * pixel(b, y0, x0 + 1))
                                        + ay * ((1 - ax) * pixel(b, y0 + 1, x0)
                                                + ax * pixel(b, y0 + 1, x0 + 1)))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_integer_centres_copy_pixels():
    images = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6, 1)
    # Pixel (x=2, y=1) has its centre at u = 2.5 / 6, v = 1.5 / 5.
    shape = np.array([[[2.5 / 6, 1.5 / 5]]], np.float32)
    patch = shape_indexed_patches(images, shape, 3).numpy()[0, 0, ..., 0]
    np.testing.assert_allclose(patch, images[0, 0:3, 1:4, 0], atol=1e-4)


@pytest.mark.parametrize("patch_size,patch_extent", [(3, None), (4, None), (5, 0.3)])
def test_matches_numpy_reference(rng, patch_size, patch_extent):
    images = rng.uniform(0, 255, (2, 7, 9, 3))
    # Sub-pixel centres, some near or beyond the border (patches cross it).
    shape = np.concatenate([rng.uniform(0.1, 0.9, (2, 3, 2)),
                            np.array([[[0.02, 0.97], [1.05, -0.04]]] * 2)], axis=1)
    got = shape_indexed_patches(images.astype(np.float32), shape.astype(np.float32),
                                patch_size, patch_extent).numpy()
    want = reference_patches(images, shape.astype(np.float32).astype(np.float64),
                             patch_size, patch_extent)
    assert got.shape == (2, 5, patch_size, patch_size, 3)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-5)


def test_paper_patch_size_matches_numpy_reference(rng):
    """k = 12 (MSRRNConfig), one sample per pixel: the window path, with patches
    inside, across the border and wholly outside the image."""
    images = rng.uniform(-1, 1, (2, 20, 23, 3))
    border = [[0.02, 0.97], [1.05, -0.04], [-0.3, 0.5], [0.5, 1.4], [0.99, 0.01]]
    shape = np.concatenate([rng.uniform(0.1, 0.9, (2, 3, 2)), np.array([border] * 2)], axis=1)
    got = shape_indexed_patches(images.astype(np.float32), shape.astype(np.float32), 12).numpy()
    want = reference_patches(images, shape.astype(np.float32).astype(np.float64), 12)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_far_outside_is_zero():
    images = np.ones((1, 4, 4, 2), np.float32)
    shape = np.array([[[-3.0, 0.5], [0.5, 40.0], [1e6, -1e6]]], np.float32)
    np.testing.assert_array_equal(shape_indexed_patches(images, shape, 3).numpy(), 0.0)


@pytest.mark.parametrize("patch_size", [3, 4])
def test_gradients_match_numeric(rng, patch_size):
    images = tf.constant(rng.uniform(0, 1, (2, 5, 6, 2)))
    # Fractional pixel parts away from 0 so the numeric step never crosses a kink.
    centres_px = np.array([[[1.3, 2.4], [4.6, 0.7]], [[0.2, 3.3], [5.4, 4.2]]])
    shape = tf.constant((centres_px + 0.5) / np.array([6.0, 5.0]))
    theoretical, numerical = tf.test.compute_gradient(
        lambda im, s: shape_indexed_patches(im, s, patch_size), [images, shape], delta=1e-4)
    for t, n in zip(theoretical, numerical):
        assert np.abs(t).max() > 0
        np.testing.assert_allclose(t, n, atol=1e-5)


def test_jit_compile_and_dynamic_batch(rng):
    images = rng.uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    shape = rng.uniform(0, 1, (3, 4, 2)).astype(np.float32)
    eager = shape_indexed_patches(images, shape, 4, 0.25).numpy()
    compiled = tf.function(lambda a, b: shape_indexed_patches(a, b, 4, 0.25), jit_compile=True)
    np.testing.assert_allclose(compiled(images, shape).numpy(), eager, atol=1e-3)
    traced = tf.function(lambda a, b: shape_indexed_patches(a, b, 4, 0.25),
                         input_signature=[tf.TensorSpec([None, 8, 8, 3]),
                                          tf.TensorSpec([None, 4, 2])])
    np.testing.assert_allclose(traced(images, shape).numpy(), eager, atol=1e-3)


def test_layer_serialisation(rng):
    layer = ShapeIndexedPatches(5, 0.2, name="p")
    clone = ShapeIndexedPatches.from_config(layer.get_config())
    assert (clone.patch_size, clone.patch_extent, clone.name) == (5, 0.2, "p")
    images = rng.uniform(0, 255, (1, 10, 10, 3)).astype(np.float32)
    shape = rng.uniform(0, 1, (1, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(clone(images, shape), layer(images, shape))
    assert layer(images, shape).shape == (1, 2, 5, 5, 3)
