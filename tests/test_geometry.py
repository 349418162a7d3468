"""Tests of common.geometry: boxes, coordinate maps, crops and augmentation geometry."""

import math

import numpy as np
import pytest
import tensorflow as tf

from common import geometry
from common.schemes import CUHK_5, IBUG_68

DOT_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]],
                       np.float32)


def draw_dots(height, width, points, sigma=2.5):
    """A black image with a Gaussian blob of colour DOT_COLOURS[i] at points[i]."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.float32)
    for (x, y), colour in zip(points, DOT_COLOURS):
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
        image = np.maximum(image, blob[..., None] * colour)
    return np.round(image).astype(np.uint8)


def find_dot(crop, expected_xy, radius=3):
    """The brightest pixel (x, y) and its colour within ``radius`` of ``expected_xy``."""
    size = crop.shape[0]
    cx, cy = (round(c) for c in expected_xy)
    y0, y1 = max(cy - radius, 0), min(cy + radius + 1, size)
    x0, x1 = max(cx - radius, 0), min(cx + radius + 1, size)
    window = crop[y0:y1, x0:x1].sum(-1)
    iy, ix = np.unravel_index(np.argmax(window), window.shape)
    return np.array([x0 + ix, y0 + iy], np.float64), crop[y0 + iy, x0 + ix]


def closest_colour(colour):
    colour = np.asarray(colour, np.float64)
    colour = colour / max(np.linalg.norm(colour), 1e-6)
    refs = DOT_COLOURS / np.linalg.norm(DOT_COLOURS, axis=1, keepdims=True)
    return int(np.argmax(refs @ colour))


def assert_dots_found(crop, points_norm, expected_ids, tol=1.0, radius=3):
    """Each normalised landmark has a dot of the expected colour within ``tol`` px (the
    brightest pixel within ``radius`` of it: small crops of a large box need 2, or a
    neighbouring dot falls inside the search window)."""
    size = crop.shape[0]
    for point, dot_id in zip(np.asarray(points_norm), expected_ids):
        expected = point * size - 0.5  # pixel j has its centre at (j + 0.5) / size
        found, colour = find_dot(crop, expected, radius)
        assert np.linalg.norm(found - expected) <= tol, (found, expected)
        assert closest_colour(colour) == dot_id


# --------------------------------------------------------------------------- boxes

def test_crop_box_math():
    boxes = tf.constant([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 30.0, 10.0]])
    crop = geometry.crop_boxes_from_face_boxes(boxes, margin=0.25).numpy()
    # side = max(w, h) * 1.5, centred on the box centre.
    np.testing.assert_allclose(crop[0], [30 - 60, 60 - 60, 30 + 60, 60 + 60])
    np.testing.assert_allclose(crop[1], [15 - 22.5, 5 - 22.5, 15 + 22.5, 5 + 22.5])
    np.testing.assert_allclose(geometry.crop_boxes_from_face_boxes(boxes, 0.0).numpy()[1],
                               [0, -10, 30, 20])


def test_landmark_box_formula():
    rng = np.random.default_rng(0)
    points = rng.uniform([100, 50], [180, 110], size=(68, 2)).astype(np.float32)
    box = geometry.landmark_box(points).numpy()
    lo, hi = points.min(0), points.max(0)
    s0 = (hi - lo).max()
    scale, shift = geometry.LANDMARK_BOX_PARAMS[68]
    centre = (lo + hi) / 2 + [0, shift * s0]
    np.testing.assert_allclose(box, np.r_[centre - scale * s0 / 2, centre + scale * s0 / 2],
                               rtol=1e-5)
    batched = geometry.landmark_box(np.stack([points, points + 10])).numpy()
    np.testing.assert_allclose(batched[1], box + 10, rtol=1e-5)
    five = geometry.landmark_box(points[:5]).numpy()
    assert five[2] - five[0] == pytest.approx(five[3] - five[1])
    with pytest.raises(ValueError, match="no default for 7"):
        geometry.landmark_box(points[:7])
    seven = points[:7]
    lo7, hi7 = seven.min(0), seven.max(0)
    half = (hi7 - lo7).max() / 2
    centre = (lo7 + hi7) / 2
    np.testing.assert_allclose(geometry.landmark_box(seven, 1.0, 0.0).numpy(),
                               np.r_[centre - half, centre + half], rtol=1e-5)


def test_jitter_boxes_ranges_and_determinism():
    boxes = tf.tile(tf.constant([[100.0, 100.0, 200.0, 150.0]]), [500, 1])
    seed = tf.constant([1, 2], tf.int64)
    jittered = geometry.jitter_boxes(boxes, (0.8, 1.2), (-0.1, 0.1), seed).numpy()
    np.testing.assert_array_equal(jittered,
                                  geometry.jitter_boxes(boxes, (0.8, 1.2), (-0.1, 0.1), seed))
    w = jittered[:, 2] - jittered[:, 0]
    h = jittered[:, 3] - jittered[:, 1]
    np.testing.assert_allclose(w / h, 2.0, rtol=1e-5)  # aspect kept
    assert 80 - 1e-3 <= w.min() and w.max() <= 120 + 1e-3 and w.std() > 5
    cx = (jittered[:, 0] + jittered[:, 2]) / 2
    cy = (jittered[:, 1] + jittered[:, 3]) / 2
    assert np.abs(cx - 150).max() <= 10 + 1e-3 and np.abs(cy - 125).max() <= 5 + 1e-3
    other = geometry.jitter_boxes(boxes, (0.8, 1.2), (-0.1, 0.1), [3, 4]).numpy()
    assert not np.allclose(other, jittered)


def test_jitter_boxes_per_axis_shift_and_aspect():
    boxes = tf.tile(tf.constant([[100.0, 100.0, 200.0, 150.0]]), [2000, 1])
    seed = tf.constant([7, 8], tf.int64)
    # Without shift_y_range or aspect the draws are those of the symmetric call.
    np.testing.assert_array_equal(
        geometry.jitter_boxes(boxes, (0.8, 1.2), (-0.1, 0.1), seed),
        geometry.jitter_boxes(boxes, (0.8, 1.2), (-0.1, 0.1), seed,
                              shift_y_range=(-0.1, 0.1)))
    out = geometry.jitter_boxes(boxes, (0.9, 1.3), (0.05, 0.15), seed,
                                shift_y_range=(-0.3, -0.2), aspect_range=(1.0, 1.5)).numpy()
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    dx = ((out[:, 0] + out[:, 2]) / 2 - 150) / 100
    dy = ((out[:, 1] + out[:, 3]) / 2 - 125) / 50
    aspect = (h / w) / 0.5
    size = np.sqrt(w * h) / np.sqrt(100 * 50)
    for values, low, high in ((dx, 0.05, 0.15), (dy, -0.3, -0.2), (aspect, 1.0, 1.5),
                              (size, 0.9, 1.3)):
        assert low - 1e-4 <= values.min() < low + 0.02, (low, values.min())
        assert high - 0.02 < values.max() <= high + 1e-4, (high, values.max())
    # Independent draws: no correlation between the four quantities.
    corr = np.corrcoef(np.stack([dx, dy, aspect, size]))
    assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.1


# ---------------------------------------------------------------- coordinate maps

def test_crop_uncrop_identity():
    rng = np.random.default_rng(1)
    points = rng.uniform(-50, 400, size=(4, 68, 2)).astype(np.float32)
    lt = rng.uniform(0, 100, size=(4, 2))
    boxes = np.concatenate([lt, lt + rng.uniform(20, 200, size=(4, 1))], 1).astype(np.float32)
    norm = geometry.image_to_crop(points, boxes)
    np.testing.assert_allclose(geometry.crop_to_image(norm, boxes).numpy(), points, atol=1e-3)
    # Corners of the box map to 0 and 1.
    corners = boxes.reshape(4, 2, 2)
    np.testing.assert_allclose(geometry.image_to_crop(corners, boxes).numpy(),
                               np.broadcast_to([[0, 0], [1, 1]], (4, 2, 2)), atol=1e-6)


@pytest.mark.parametrize("scheme", [CUHK_5, IBUG_68], ids=lambda s: s.name)
def test_flip_twice_is_identity(scheme):
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 1, size=(3, scheme.num_points, 2)).astype(np.float32)
    flips = tf.constant([True, True, False])
    once = geometry.transform_crop_landmarks(points, None, flips, scheme.flip_permutation)
    twice = geometry.transform_crop_landmarks(once, None, flips, scheme.flip_permutation)
    np.testing.assert_allclose(twice.numpy(), points, atol=1e-6)
    assert not np.allclose(once.numpy()[0], points[0])


def test_rotate_then_rotate_back_and_numpy_twin():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, size=(4, 68, 2)).astype(np.float32)
    angles = np.array([0.3, -0.2, 1.0, 0.0], np.float32)
    flips = np.array([False, True, True, False])
    moved = geometry.transform_crop_landmarks(points, angles, flips, IBUG_68.flip_permutation)
    for i in range(4):
        ref = geometry.np_crop_landmark_transform(points[i], angles[i], flips[i],
                                                  IBUG_68.flip_permutation)
        np.testing.assert_allclose(moved.numpy()[i], ref, atol=1e-5)
    back = geometry.transform_crop_landmarks(points, angles, None)
    back = geometry.transform_crop_landmarks(back, -angles, None)
    np.testing.assert_allclose(back.numpy(), points, atol=1e-5)
    # The crop centre is fixed; distances to it are kept.
    centre = geometry.transform_crop_landmarks([[[0.5, 0.5]]], [0.7], [True], [0])
    np.testing.assert_allclose(centre.numpy(), [[[0.5, 0.5]]], atol=1e-6)
    with pytest.raises(ValueError, match="flip_permutation"):
        geometry.transform_crop_landmarks(points, None, flips)


def test_flipped_left_eye_lands_on_right_eye_index():
    # CUHK_5: image-left eye (0) at u=0.3, image-right eye (1) at u=0.7.
    face = np.array([[[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]],
                    np.float32)
    flipped = geometry.transform_crop_landmarks(face, None, [True], CUHK_5.flip_permutation)
    flipped = flipped.numpy()[0]
    np.testing.assert_allclose(flipped[1], [1 - 0.3, 0.4], atol=1e-6)  # old left eye
    np.testing.assert_allclose(flipped[0], [1 - 0.7, 0.4], atol=1e-6)
    assert flipped[0, 0] < flipped[1, 0] and flipped[3, 0] < flipped[4, 0]
    # IBUG_68: outer eye corners 36 (image left) and 45 (image right) swap.
    points = np.full((1, 68, 2), 0.5, np.float32)
    points[0, 36] = [0.2, 0.4]
    points[0, 45] = [0.8, 0.4]
    flipped = geometry.transform_crop_landmarks(points, None, [True], IBUG_68.flip_permutation)
    np.testing.assert_allclose(flipped.numpy()[0, 45], [0.8, 0.4], atol=1e-6)
    np.testing.assert_allclose(flipped.numpy()[0, 36], [0.2, 0.4], atol=1e-6)
    points[0, 45] = [0.75, 0.45]
    flipped = geometry.transform_crop_landmarks(points, None, [True], IBUG_68.flip_permutation)
    np.testing.assert_allclose(flipped.numpy()[0, 45], [0.8, 0.4], atol=1e-6)
    np.testing.assert_allclose(flipped.numpy()[0, 36], [0.25, 0.45], atol=1e-6)


# -------------------------------------------------------------------------- crops

@pytest.mark.parametrize("sampler", ["crop_and_resize", "projective"])
def test_crop_faces_pixel_centre_convention(sampler):
    # No angles: crop_and_resize, exact up to AXIS_ALIGNED_ATOL (positions in float32
    # units of side - 1); zero angles: the projective op, exact here.
    angles = None if sampler == "crop_and_resize" else [0.0]
    atol = geometry.AXIS_ALIGNED_ATOL if angles is None else 0.0

    def crop(image, box, size, **kwargs):
        return geometry.crop_faces(image, box, size, angles=angles, **kwargs).numpy()

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, size=(1, 24, 24, 3)).astype(np.uint8)
    full = [[-0.5, -0.5, 23.5, 23.5]]  # the pixel-edge extent of the image
    np.testing.assert_allclose(crop(image, full, 24), image, rtol=0, atol=atol)
    np.testing.assert_allclose(crop(image, full, 24, flips=[True]), image[:, :, ::-1],
                               rtol=0, atol=atol)
    rotated = geometry.crop_faces(image, full, 24, angles=[math.pi / 2]).numpy()
    np.testing.assert_allclose(rotated, np.rot90(image, 1, axes=(1, 2)), atol=1e-2)
    # 2x downscaling averages exactly the 2x2 blocks (pyramid level 1).
    half = crop(image, full, 12)
    np.testing.assert_allclose(half, image.reshape(1, 12, 2, 12, 2, 3).mean((2, 4)),
                               atol=max(atol, 1e-4))
    # A one-pixel shift of the box shifts the crop by one pixel.
    shifted = crop(image, [[0.5, -0.5, 24.5, 23.5]], 24)
    np.testing.assert_allclose(shifted[:, :, :23], image[:, :, 1:], rtol=0, atol=atol)
    np.testing.assert_allclose(shifted[:, :, 23], 0, atol=atol)  # constant fill outside
    edge = geometry.crop_faces(image, [[0.5, -0.5, 24.5, 23.5]], 24, fill_mode="nearest")
    np.testing.assert_array_equal(edge.numpy()[:, :, 23], image[:, :, 23])
    # uint8 and float inputs agree.
    np.testing.assert_allclose(crop(image.astype(np.float32), full, 17), crop(image, full, 17),
                               rtol=0, atol=1e-4)


def np_halve(image):
    """NumPy twin of ``geometry._halve`` for one ``[H, W, C]`` image."""
    if image.shape[0] % 2:
        image = np.concatenate([image, image[-1:]], 0)
    if image.shape[1] % 2:
        image = np.concatenate([image, image[:, -1:]], 1)
    h, w, c = image.shape
    return image.reshape(h // 2, 2, w // 2, 2, c).mean((1, 3))


def np_bilinear(image, xs, ys, fill):
    """Bilinear samples on the grid ``ys x xs``; each neighbour outside reads ``fill``."""
    h, w, _ = image.shape
    padded = np.pad(image, [(1, 1), (1, 1), (0, 0)], constant_values=fill)

    def split(coords, side):
        lo = np.floor(coords)
        inside = (lo >= -1) & (lo <= side - 1)  # else both neighbours are outside
        index = np.where(inside, lo, -1).astype(int) + 1
        return index, coords - lo, inside

    yi, wy, in_y = split(ys, h)
    xi, wx, in_x = split(xs, w)
    rows = (1 - wy)[:, None, None] * padded[yi] + wy[:, None, None] * padded[yi + 1]
    rows[~in_y] = fill
    out = (1 - wx)[None, :, None] * rows[:, xi] + wx[None, :, None] * rows[:, xi + 1]
    out[:, ~in_x] = fill
    return out


def np_crop_face(image, box, size, flip=False, fill=0.0):
    """NumPy reference of ``crop_faces`` without rotation (module docstring and
    DESIGN.md: trilinear mip-map sampling at output pixel centres)."""
    image = np.asarray(image, np.float64)
    left, top, right, bottom = (float(v) for v in box)
    width, height = right - left, bottom - top
    lod = min(math.log2(max(max(width, height) / size, 1.0)), geometry.PYRAMID_LEVELS - 1)
    base = math.floor(lod)
    u = (np.arange(size) + 0.5) / size
    xs = left + (1.0 - u if flip else u) * width
    ys = top + u * height
    levels = [image]
    out = np.zeros((size, size, image.shape[-1]))
    for level, weight in ((base, 1.0 - (lod - base)), (base + 1, lod - base)):
        if weight <= 0.0:
            continue
        while len(levels) <= level:
            levels.append(np_halve(levels[-1]))
        # Level-k pixel i averages level-0 pixels i 2^k .. (i + 1) 2^k - 1.
        factor = 2.0 ** level
        offset = (factor - 1.0) / 2.0
        out += weight * np_bilinear(levels[level], (xs - offset) / factor,
                                    (ys - offset) / factor, fill)
    return out


def _random_crop_cases(rng, count):
    """Random images (odd and even sides, down to a few pixels) and crop boxes from
    far below to far above the output size, partly or mostly outside the image."""
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(3, 150, 2))
        n = int(rng.integers(1, 4))
        images = rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
        size = int(rng.integers(1, 40))
        side = size * 2.0 ** rng.uniform(-2.0, 6.5, n)
        centre = rng.uniform(-0.2, 1.2, (n, 2)) * [w, h]
        boxes = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)
        yield images, boxes.astype(np.float32), size, rng.random(n) < 0.5


@pytest.mark.parametrize("fill", [0.0, 37.25])
def test_crop_faces_matches_numpy_reference(fill):
    rng = np.random.default_rng(11)
    for images, boxes, size, flips in _random_crop_cases(rng, 12):
        fast = geometry.crop_faces(images, boxes, size, flips=flips, fill_value=fill).numpy()
        projective = geometry.crop_faces(images, boxes, size, angles=np.zeros(len(boxes)),
                                         flips=flips, fill_value=fill).numpy()
        for i in range(len(boxes)):
            want = np_crop_face(images[i], boxes[i], size, flips[i], fill)
            np.testing.assert_allclose(projective[i], want, rtol=0,
                                       atol=geometry.AXIS_ALIGNED_ATOL)
            np.testing.assert_allclose(fast[i], want, rtol=0, atol=geometry.AXIS_ALIGNED_ATOL)


def test_crop_and_resize_path_equals_projective_path():
    """The rotation-free sampler agrees with the projective one (the path training
    with rotation takes) to AXIS_ALIGNED_ATOL, for uint8 and float images."""
    rng = np.random.default_rng(12)
    for images, boxes, size, flips in _random_crop_cases(rng, 10):
        for data in (images, images.astype(np.float32) + rng.uniform(0, 1, images.shape)):
            fast = geometry.crop_faces(data, boxes, size, flips=flips).numpy()
            projective = geometry.crop_faces(data, boxes, size, angles=np.zeros(len(boxes)),
                                             flips=flips).numpy()
            np.testing.assert_allclose(fast, projective, rtol=0,
                                       atol=geometry.AXIS_ALIGNED_ATOL)


def test_crop_faces_antialiasing():
    # A one-pixel checkerboard reduced 8x must come out flat grey, not aliased.
    yy, xx = np.mgrid[0:256, 0:256]
    board = (((xx + yy) % 2) * 255).astype(np.uint8)
    image = np.repeat(board[None, :, :, None], 3, axis=-1)
    crop = geometry.crop_faces(image, [[-0.5, -0.5, 255.5, 255.5]], 32).numpy()
    assert np.abs(crop - 127.5).max() < 1.0
    rotated = geometry.crop_faces(image, [[20.0, 20.0, 230.0, 230.0]], 24, angles=[0.3])
    # Away from the corners, which leave the image and take the fill value.
    assert np.abs(rotated.numpy()[:, 4:20, 4:20] - 127.5).max() < 5.0


def test_dots_found_after_crop_rotate_flip_scale():
    """Draw dots, crop with rotation/flip/scale, find each dot at its moved landmark."""
    size = 64
    rng = np.random.default_rng(5)
    cases = [  # (crop side in pixels, angle, flip)
        (240.0, 0.0, False), (240.0, 0.3, True), (200.0, -0.26, False),
        (130.0, 1.0, True), (48.0, 0.2, False), (48.0, -0.5, True), (64.0, 0.0, True),
    ]
    images, boxes, points_px = [], [], []
    unit_points = np.array([[-0.2, -0.15], [0.2, -0.15], [0.0, 0.05], [-0.15, 0.25],
                            [0.17, 0.22]])
    for side, _, _ in cases:
        centre = rng.uniform(120, 140, size=2)
        points = np.round(centre + unit_points * side)  # dots on integer pixels
        images.append(draw_dots(260, 260, points, sigma=max(1.5, side / size)))
        boxes.append(np.r_[centre - side / 2, centre + side / 2])
        points_px.append(points)
    boxes = np.array(boxes, np.float32)
    angles = np.array([c[1] for c in cases], np.float32)
    flips = np.array([c[2] for c in cases])
    crops = geometry.crop_faces(np.stack(images), boxes, size, angles, flips).numpy()
    norm = geometry.image_to_crop(np.array(points_px, np.float32), boxes)
    moved = geometry.transform_crop_landmarks(norm, angles, flips, CUHK_5.flip_permutation)
    for i in range(len(cases)):
        ids = [CUHK_5.flip_permutation[j] if flips[i] else j for j in range(5)]
        assert_dots_found(crops[i], moved.numpy()[i], ids)


def test_batch_independence():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(5, 90, 120, 3)).astype(np.uint8)
    # Crops of 1.1x to 0.3x, 1.4x, 2.1x and 3.8x the 32-pixel output: each face reads
    # other pyramid levels, which are built only for the faces that read them.
    boxes = np.array([[10, 10, 80, 80], [0, 0, 20, 20], [30, 5, 110, 85], [40, 40, 63, 63],
                      [-10, -20, 90, 80]], np.float32)
    batch, _ = geometry.preprocess_faces(images, boxes, (16, 32), 0.1)
    for i in range(len(boxes)):
        single, _ = geometry.preprocess_faces(images[i:i + 1], boxes[i:i + 1], (16, 32), 0.1)
        for key in ("image_16", "image_32"):
            np.testing.assert_allclose(batch[key].numpy()[i], single[key].numpy()[0], atol=1e-4)


def test_preprocess_faces_scales_consistent():
    points = np.array([[60.0, 60.0], [100.0, 60.0], [80.0, 80.0], [64.0, 100.0],
                       [96.0, 100.0]])
    image = draw_dots(160, 170, points, sigma=3.0)[None]
    box = geometry.landmark_box(points[None].astype(np.float32))
    inputs, crop_boxes = geometry.preprocess_faces(image, box, (25, 50, 100), margin=0.2)
    assert sorted(inputs) == ["image_100", "image_25", "image_50"]
    np.testing.assert_allclose(crop_boxes.numpy(),
                               geometry.crop_boxes_from_face_boxes(box, 0.2).numpy())
    big = inputs["image_100"].numpy()
    for size in (25, 50):
        small = inputs[f"image_{size}"].numpy()
        assert small.shape == (1, size, size, 3) and small.dtype == np.float32
        k = 100 // size
        np.testing.assert_allclose(small, big.reshape(1, size, k, size, k, 3).mean((2, 4)),
                                   atol=1e-3)
    norm = geometry.image_to_crop(points[None].astype(np.float32), crop_boxes).numpy()[0]
    for size in (50, 100):
        assert_dots_found(inputs[f"image_{size}"].numpy()[0], norm, range(5))


def test_preprocess_faces_in_tf_function_with_signature():
    fn = tf.function(
        lambda images, boxes: geometry.preprocess_faces(images, boxes, (8, 16), 0.1),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                         tf.TensorSpec([None, 4], tf.float32)])
    inputs, crop_boxes = fn(np.zeros((2, 30, 40, 3), np.uint8),
                            np.array([[0, 0, 10, 10], [5, 5, 25, 25]], np.float32))
    assert inputs["image_8"].shape == (2, 8, 8, 3) and crop_boxes.shape == (2, 4)


# --------------------------------------------------------------------- validation

GOOD_IMAGES = np.zeros((2, 40, 50, 3), np.uint8)
GOOD_BOXES = np.array([[5, 5, 30, 30], [10, 0, 49, 39]], np.float32)


def test_validate_serving_inputs_accepts_good_inputs():
    images, boxes = geometry.validate_serving_inputs(GOOD_IMAGES, GOOD_BOXES)
    assert images.dtype == tf.uint8 and boxes.shape == (2, 4)


@pytest.mark.parametrize("images, boxes, match", [
    (GOOD_IMAGES.astype(np.float32), GOOD_BOXES, "uint8"),
    (GOOD_IMAGES, GOOD_BOXES.astype(np.float64), "float32"),
    (GOOD_IMAGES[0], GOOD_BOXES, "rank|N, H, W, 3"),
    (GOOD_IMAGES[..., :1], GOOD_BOXES, "3 \\(RGB\\) channels"),
    (GOOD_IMAGES, GOOD_BOXES[:1], "same N"),
    (GOOD_IMAGES[:0], GOOD_BOXES[:0], "at least one image"),
    (GOOD_IMAGES, GOOD_BOXES[:, :3], "\\[N, 4\\]"),
    (GOOD_IMAGES, np.array([[30, 5, 5, 30], [10, 0, 49, 39]], np.float32), "right > left"),
    (GOOD_IMAGES, np.array([[5, 30, 30, 30], [10, 0, 49, 39]], np.float32), "bottom > top"),
    (GOOD_IMAGES, np.array([[5, 5, 30, 30], [60, 0, 80, 39]], np.float32), "right of its"),
    (GOOD_IMAGES, np.array([[5, 5, 30, 30], [10, -50, 49, -10]], np.float32), "above its"),
    (GOOD_IMAGES, np.array([[5, 5, 30, np.nan], [10, 0, 49, 39]], np.float32), "finite"),
])
def test_validate_serving_inputs_rejects(images, boxes, match):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError), match=match):
        geometry.validate_serving_inputs(images, boxes)


def test_validate_serving_inputs_in_signature():
    fn = tf.function(lambda im, bx: geometry.validate_serving_inputs(im, bx)[1] * 1.0,
                     input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8),
                                      tf.TensorSpec([None, None], tf.float32)])
    fn(GOOD_IMAGES, GOOD_BOXES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 \\(RGB\\) channels"):
        fn(GOOD_IMAGES[..., :2], GOOD_BOXES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same N"):
        fn(GOOD_IMAGES, GOOD_BOXES[:1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="right of its"):
        fn(GOOD_IMAGES, GOOD_BOXES + 100)
