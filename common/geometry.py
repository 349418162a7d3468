"""Face boxes, crops and the geometric augmentation shared by both models.

Everything here is a TensorFlow graph function on batches (usable in ``tf.data``,
``tf.function`` and an exported SavedModel signature), following the conventions of
``docs/DESIGN.md``:

* image coordinates (x, y) in pixels with **pixel centres at integers** (pixel ``i``
  covers ``[i - 0.5, i + 0.5]``);
* boxes ``(left, top, right, bottom)``;
* normalised crop coordinates ``u = (x - l) / (r - l)``, ``v = (y - t) / (b - t)``;
  output pixel ``j`` of an ``S``-pixel crop has its centre at ``u = (j + 0.5) / S``.

Crop, resize, rotation and flip happen in one resampling (``crop_faces``). The
geometric augmentation is defined in normalised crop coordinates as the map

    F(p) = flip(c + R(angle) (p - c)),   c = (0.5, 0.5),
    R(a) = [[cos a, sin a], [-sin a, cos a]],   flip(u, v) = (1 - u, v) if flipped,

i.e. first a rotation about the crop centre by ``angle`` radians, counter-clockwise as
displayed (the y axis points down), then an optional horizontal mirror. An output
pixel at ``p'`` shows the image at ``F^-1(p')`` and a landmark at ``p`` moves to
``F(p)`` (``transform_crop_landmarks``), so pixels and landmarks move together. For a
square crop box (all crop boxes made by ``crop_boxes_from_face_boxes`` are square)
``F`` is a rigid motion of the image.

Anti-aliasing (identical for training, evaluation and export): ``crop_faces`` samples
from a mip-map pyramid of the image (level ``k`` is the image averaged over
``2^k x 2^k`` pixel blocks) and blends the two levels around
``lod = log2(input pixels per output pixel)`` linearly ("trilinear" sampling, as in
texture mapping). A crop that is ``n`` times larger than the output therefore sees a
box filter about ``n`` input pixels wide instead of point samples; a crop at or below
the output resolution is sampled bilinearly from the full-resolution image. Only the
levels a face reads are built and sampled, for that face only, so the result of one
face never depends on the other faces of its batch. Without rotation the bilinear
samples come from ``tf.image.crop_and_resize``, with rotation from
``ImageProjectiveTransformV3``; they agree to ``AXIS_ALIGNED_ATOL``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

PYRAMID_LEVELS = 6
"""Mip-map levels used by ``crop_faces``: crops up to ``2**(PYRAMID_LEVELS - 1) = 32``
times larger than the output are fully anti-aliased."""

AXIS_ALIGNED_ATOL = 1e-2
"""Largest difference (grey levels of 0..255) between ``crop_faces`` pixels sampled
with ``crop_and_resize`` (no rotation) and with ``ImageProjectiveTransformV3``: both
sample the same pyramid at the same positions up to float32 rounding (about 2e-5
pixels in a 300-pixel image), which moves a value by at most that times its
gradient (255 grey levels per pixel at most)."""

LANDMARK_BOX_PARAMS: dict[int, tuple[float, float]] = {
    68: (1.05, -0.08),
    5: (1.78, -0.02),
}
"""``num_landmarks -> (scale, shift_y)`` of ``landmark_box``.

68 points: medians of dlib's HOG detector boxes relative to the landmark extent over
the 43 faces of dlib's ``examples/faces`` imglab files (side 1.057, centre 0.085 above
the landmark centre, in units of the extent's longer side). 5 points: medians over
the 10,000 training faces of Sun et al. (CVPR 2013), whose detector boxes are the
scheme's own (side 1.78, centre 0.016 above).
"""

_FILL_MODES = {"constant": "CONSTANT", "nearest": "NEAREST", "reflect": "REFLECT",
               "wrap": "WRAP"}


def landmark_box(landmarks, scale: float | None = None,
                 shift_y: float | None = None) -> tf.Tensor:
    """A face box derived from landmarks, made to resemble a face detection.

    Used when a face has no detector box. With the tight landmark extent
    ``(x0, y0, x1, y1)``, ``s0 = max(x1 - x0, y1 - y0)`` and centre
    ``(cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2)``, the box is the square

        side = scale * s0,   centre = (cx, cy + shift_y * s0).

    Defaults come from ``LANDMARK_BOX_PARAMS`` by landmark count: for 68 points
    ``scale = 1.05, shift_y = -0.08`` (dlib's detector: a square from just above the
    brows to the chin, about as wide as the jaw); for 5 points ``scale = 1.78,
    shift_y = -0.02`` (the boxes of Sun et al., which the CUHK 5-point data come with).

    Args:
        landmarks: float ``[..., L, 2]`` (x, y) pixels (NumPy or tensor).
        scale: box side over the extent's longer side; ``None`` for the default.
        shift_y: downward shift of the centre in units of the extent's longer side;
            ``None`` for the default.

    Returns:
        float32 ``[..., 4]`` boxes (left, top, right, bottom).

    Raises:
        ValueError: when ``L`` has no default and ``scale``/``shift_y`` are missing.
    """
    landmarks = tf.convert_to_tensor(landmarks, tf.float32)
    if scale is None or shift_y is None:
        num = landmarks.shape[-2]
        if num not in LANDMARK_BOX_PARAMS:
            raise ValueError(f"landmark_box has no default for {num} landmarks; "
                             f"known: {sorted(LANDMARK_BOX_PARAMS)}; pass scale and shift_y")
        default_scale, default_shift = LANDMARK_BOX_PARAMS[num]
        scale = default_scale if scale is None else scale
        shift_y = default_shift if shift_y is None else shift_y
    lo = tf.reduce_min(landmarks, axis=-2)
    hi = tf.reduce_max(landmarks, axis=-2)
    extent = tf.reduce_max(hi - lo, axis=-1)
    centre = (lo + hi) / 2.0
    cx = centre[..., 0]
    cy = centre[..., 1] + shift_y * extent
    half = 0.5 * scale * extent
    return tf.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def crop_boxes_from_face_boxes(boxes, margin: float) -> tf.Tensor:
    """The square crop box a model sees, from a face box (DESIGN.md).

    Args:
        boxes: float ``[..., 4]`` face boxes (l, t, r, b).
        margin: extra context on each side, a fraction of the face box's longer side.

    Returns:
        float32 ``[..., 4]`` square boxes centred on the face box centre with side
        ``max(w, h) * (1 + 2 * margin)``.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    left, top, right, bottom = tf.unstack(boxes, axis=-1)
    half = 0.5 * tf.maximum(right - left, bottom - top) * (1.0 + 2.0 * margin)
    cx = 0.5 * (left + right)
    cy = 0.5 * (top + bottom)
    return tf.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def jitter_boxes(boxes, scale_range: tuple[float, float], shift_range: tuple[float, float],
                 seed, *, shift_y_range: tuple[float, float] | None = None,
                 aspect_range: tuple[float, float] = (1.0, 1.0)) -> tf.Tensor:
    """Randomly scales and shifts face boxes (training augmentation).

    Per box, with its width ``w``, height ``h`` and centre ``(cx, cy)``: the centre
    moves to ``(cx + dx * w, cy + dy * h)``; both sides are multiplied by one factor
    ``s``; when ``aspect_range`` is not ``(1, 1)``, the height is further multiplied and
    the width divided by ``sqrt(a)`` (the ratio h/w changes by ``a``, ``sqrt(w h)``
    does not). ``dx``, ``dy``, ``s`` and ``a`` are drawn independently and uniformly
    from ``shift_range``, ``shift_y_range`` (default: ``shift_range``), ``scale_range``
    and ``aspect_range``. The shift is relative to the box before scaling, so the
    ranges read like the measured differences between box sources
    (``common.box_perturbation``).

    Args:
        boxes: float ``[N, 4]`` boxes (l, t, r, b).
        scale_range: (low, high) size factors, e.g. ``(0.9, 1.1)``.
        shift_range: (low, high) centre shifts as fractions of the box size, e.g.
            ``(-0.05, 0.05)``; of the width only when ``shift_y_range`` is given.
        seed: int ``[2]`` seed of the stateless random ops (the result is a pure
            function of the arguments).
        shift_y_range: (low, high) vertical centre shifts as fractions of the box
            height; ``None``: ``shift_range``.
        aspect_range: (low, high) factors of the height/width ratio.

    Returns:
        float32 ``[N, 4]`` jittered boxes.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    seed = tf.convert_to_tensor(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    n = tf.shape(boxes)[0]
    factor = tf.random.stateless_uniform([n], seeds[0], scale_range[0], scale_range[1])
    if shift_y_range is None:
        shift_y_range = shift_range
    low = tf.constant([shift_range[0], shift_y_range[0]], tf.float32)
    high = tf.constant([shift_range[1], shift_y_range[1]], tf.float32)
    # u * (high - low) + low: the same numbers as stateless_uniform(low, high) per axis.
    shift = tf.random.stateless_uniform([n, 2], seeds[1]) * (high - low) + low
    root = None
    if tuple(aspect_range) != (1.0, 1.0):
        # A third, separate stream keeps the draws above those of earlier versions.
        aspect_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        root = tf.sqrt(tf.random.stateless_uniform([n], aspect_seed, aspect_range[0],
                                                   aspect_range[1]))
    return tf.stack(perturb_box_edges(tf.unstack(boxes, axis=-1), shift[:, 0], shift[:, 1],
                                      factor, root), axis=-1)


def perturb_box_edges(edges, dx, dy, scale, aspect_root=None):
    """The edges of boxes moved and scaled: the one definition of a box perturbation.

    Plain arithmetic, so it serves TensorFlow tensors (the training augmentation,
    :func:`jitter_boxes`) and NumPy arrays (the jittered sources of
    ``common.box_robustness``) alike.

    Args:
        edges: ``(left, top, right, bottom)``, each of one shape.
        dx, dy: centre shifts as fractions of the width, resp. height.
        scale: factor of both sides.
        aspect_root: ``None``, or the square root of the factor of the height/width
            ratio (the height is multiplied by it, the width divided).

    Returns:
        ``(left, top, right, bottom)``.
    """
    left, top, right, bottom = edges
    w = right - left
    h = bottom - top
    cx = 0.5 * (left + right) + dx * w
    cy = 0.5 * (top + bottom) + dy * h
    half_w = 0.5 * w * scale
    half_h = 0.5 * h * scale
    if aspect_root is not None:
        half_w = half_w / aspect_root
        half_h = half_h * aspect_root
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def _box_origin_size(crop_boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns (origin [..., 1, 2], size [..., 1, 2]) for broadcasting over points."""
    crop_boxes = tf.convert_to_tensor(crop_boxes, tf.float32)
    origin = crop_boxes[..., None, 0:2]
    size = crop_boxes[..., None, 2:4] - origin
    return origin, size


def image_to_crop(points, crop_boxes) -> tf.Tensor:
    """Image pixels to normalised crop coordinates.

    Args:
        points: float ``[N, L, 2]`` (x, y) pixels.
        crop_boxes: float ``[N, 4]`` crop boxes.

    Returns:
        float32 ``[N, L, 2]`` with ``u = (x - l) / (r - l)``, ``v = (y - t) / (b - t)``.
    """
    origin, size = _box_origin_size(crop_boxes)
    return (tf.convert_to_tensor(points, tf.float32) - origin) / size


def crop_to_image(points_norm, crop_boxes) -> tf.Tensor:
    """Normalised crop coordinates to image pixels (the inverse of ``image_to_crop``).

    Args:
        points_norm: float ``[N, L, 2]`` normalised crop coordinates (model outputs).
        crop_boxes: float ``[N, 4]`` crop boxes.

    Returns:
        float32 ``[N, L, 2]`` (x, y) pixels.
    """
    origin, size = _box_origin_size(crop_boxes)
    return tf.convert_to_tensor(points_norm, tf.float32) * size + origin


def _angles_flips(n: tf.Tensor, angles, flips) -> tuple[tf.Tensor, tf.Tensor]:
    angles = tf.zeros([n], tf.float32) if angles is None else tf.cast(angles, tf.float32)
    flips = tf.zeros([n], tf.bool) if flips is None else tf.cast(flips, tf.bool)
    return angles, flips


def transform_crop_landmarks(points_norm, angles, flips,
                             flip_permutation: Sequence[int] | None = None) -> tf.Tensor:
    """Applies the ``crop_faces`` rotation/flip to normalised landmarks.

    A point ``p`` moves to ``F(p) = flip(c + R(angle) (p - c))`` (module docstring).
    A flipped face also swaps its left/right points: after the flip, index ``i``
    holds the moved point ``flip_permutation[i]`` (the scheme's permutation is an
    involution, so this equals "point ``i`` takes index ``flip_permutation[i]``").

    Args:
        points_norm: float ``[N, L, 2]`` normalised crop coordinates.
        angles: float ``[N]`` radians (counter-clockwise as displayed) or ``None``.
        flips: bool ``[N]`` horizontal mirrors or ``None``.
        flip_permutation: the scheme's ``flip_permutation`` (length ``L``); required
            when ``flips`` is given.

    Returns:
        float32 ``[N, L, 2]`` transformed normalised coordinates.
    """
    points = tf.convert_to_tensor(points_norm, tf.float32)
    if flips is not None and flip_permutation is None:
        raise ValueError("flip_permutation is required when flips are given")
    angles, flips = _angles_flips(tf.shape(points)[0], angles, flips)
    cos = tf.cos(angles)[:, None]
    sin = tf.sin(angles)[:, None]
    du = points[..., 0] - 0.5
    dv = points[..., 1] - 0.5
    u = 0.5 + cos * du + sin * dv
    v = 0.5 - sin * du + cos * dv
    flip = flips[:, None]
    u = tf.where(flip, 1.0 - u, u)
    moved = tf.stack([u, v], axis=-1)
    if flip_permutation is None:
        return moved
    permuted = tf.gather(moved, tf.constant(list(flip_permutation), tf.int32), axis=1)
    return tf.where(flips[:, None, None], permuted, moved)


def _output_to_image_transforms(crop_boxes: tf.Tensor, size: int, angles: tf.Tensor,
                                flips: tf.Tensor) -> tf.Tensor:
    """Affine maps from output pixel indices to image pixels, ``[N, 8]``.

    Output pixel ``(xo, yo)`` has normalised position ``p' = ((xo + .5) / S,
    (yo + .5) / S)`` and shows the image at ``F^-1(p') = c + M (p' - c)`` with
    ``M = R(angle)^T diag(+-1, 1)``, scaled into the crop box.
    """
    left, top, right, bottom = tf.unstack(crop_boxes, axis=-1)
    w = right - left
    h = bottom - top
    cx = 0.5 * (left + right)
    cy = 0.5 * (top + bottom)
    cos = tf.cos(angles)
    sin = tf.sin(angles)
    mirror = tf.where(flips, -1.0, 1.0)
    m00, m01, m10, m11 = cos * mirror, -sin, sin * mirror, cos
    offset = 0.5 - 0.5 * size
    a0 = w * m00 / size
    a1 = w * m01 / size
    a2 = cx + (a0 + a1) * offset
    b0 = h * m10 / size
    b1 = h * m11 / size
    b2 = cy + (b0 + b1) * offset
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=-1)


def _to_level(transforms: tf.Tensor, level: int) -> tf.Tensor:
    """Re-expresses image-pixel transforms in pixels of pyramid level ``level``.

    Level-``k`` pixel ``i`` averages level-0 pixels ``i 2^k .. (i + 1) 2^k - 1``, so
    its centre is ``x0 = i 2^k + (2^k - 1) / 2``.
    """
    if level == 0:
        return transforms
    factor = float(2 ** level)
    offset = (factor - 1.0) / 2.0
    a0, a1, a2, b0, b1, b2, c0, c1 = tf.unstack(transforms, axis=-1)
    return tf.stack([a0 / factor, a1 / factor, (a2 - offset) / factor,
                     b0 / factor, b1 / factor, (b2 - offset) / factor, c0, c1], axis=-1)


def _halve(images: tf.Tensor) -> tf.Tensor:
    """2x2 box-filter downsampling; an odd last row/column is paired with itself."""
    shape = tf.shape(images)
    pad = [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]]
    images = tf.pad(images, pad, mode="SYMMETRIC")
    return tf.nn.avg_pool2d(images, ksize=2, strides=2, padding="VALID")


def _sample_projective(level_images: tf.Tensor, positions: tf.Tensor, transforms: tf.Tensor,
                       size: int, fill_mode: str, fill_value: float) -> tf.Tensor:
    """Bilinear samples of ``level_images[positions]`` at the level-pixel ``transforms``
    with ``ImageProjectiveTransformV3`` (any rotation, flip and fill mode)."""
    images = tf.cast(tf.gather(level_images, positions), tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32), interpolation="BILINEAR",
        fill_mode=_FILL_MODES[fill_mode])


def _sample_axis_aligned(level_images: tf.Tensor, positions: tf.Tensor, transforms: tf.Tensor,
                         size: int, fill_value: float) -> tf.Tensor:
    """``_sample_projective`` for transforms without rotation and with constant fill,
    with ``tf.image.crop_and_resize``.

    Without rotation, output row ``i`` lies on image row ``b2 + b1 i`` and column ``j``
    on image column ``a2 + a0 j``: an axis-aligned grid (mirrored when ``a0 < 0``),
    which ``crop_and_resize`` samples bilinearly, more than twice as fast (it finds
    the neighbours and weights once per output pixel, not once per channel) and
    straight from uint8.
    Two differences are removed: ``crop_and_resize`` gives a sample whose position
    lies outside the image the fill value, where the projective op blends the pixels
    inside with the fill value (constant fill per neighbour), so the image first gets
    a one-pixel border of ``fill_value`` (then both read the same neighbours with the
    same weights); and ``crop_and_resize`` takes box corners in units of
    ``side - 1``, so positions agree only up to float32 rounding (about 2e-5 pixels;
    ``AXIS_ALIGNED_ATOL``).
    """
    images = level_images
    integral_fill = float(fill_value).is_integer() and 0.0 <= fill_value <= 255.0
    if images.dtype != tf.uint8 or not integral_fill:
        images = tf.cast(images, tf.float32)
    fill = tf.cast(tf.constant(fill_value, tf.float32), images.dtype)
    images = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=fill)
    shape = tf.shape(images)
    height = tf.cast(shape[1] - 1, tf.float32)  # crop_and_resize's unit: side - 1
    width = tf.cast(shape[2] - 1, tf.float32)
    a0, _, a2, _, b1, b2, _, _ = tf.unstack(transforms, axis=-1)
    last = float(size - 1)
    # The border moves every position by +1 pixel.
    boxes = tf.stack([(b2 + 1.0) / height, (a2 + 1.0) / width,
                      (b2 + b1 * last + 1.0) / height, (a2 + a0 * last + 1.0) / width], axis=-1)
    return tf.image.crop_and_resize(images, boxes, positions, [size, size],
                                    extrapolation_value=fill_value)


def _level_samples(level: int, level_images: tf.Tensor, members: tf.Tensor, base: tf.Tensor,
                   frac: tf.Tensor, sample) -> tuple[tf.Tensor, tf.Tensor]:
    """The weighted samples of pyramid level ``level``, for the faces that read it.

    Args:
        level: the pyramid level.
        level_images: ``[M, H_k, W_k, 3]``: level ``level`` of the images of faces
            ``members``.
        members: int32 ``[M]`` face (batch) indices.
        base: float ``[N]`` ``floor(lod)`` of every face.
        frac: float ``[N]`` ``lod - base``.
        sample: ``(level, level_images, positions, faces) -> [len(positions), S, S, 3]``.

    Returns:
        ``(values [K, S, S, 3], faces [K])``: weight times sample of the ``K`` faces
        with a non-zero weight at this level (in increasing face order).
    """
    base = tf.gather(base, members)
    frac = tf.gather(frac, members)
    weight = (tf.where(tf.equal(base, level), 1.0 - frac, 0.0)
              + tf.where(tf.equal(base + 1.0, level), frac, 0.0))
    positions = tf.cast(tf.where(weight > 0.0)[:, 0], tf.int32)
    faces = tf.gather(members, positions)
    values = sample(level, level_images, positions, faces)
    return values * tf.gather(weight, positions)[:, None, None, None], faces


def _coarser_samples(level: int, level_images: tf.Tensor, members: tf.Tensor, base: tf.Tensor,
                     frac: tf.Tensor, sample, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``_level_samples`` of every level above ``level``, concatenated.

    Level ``k + 1`` is built (``_halve`` of level ``k``) only for the faces that read
    it or a coarser level, and only when there are such faces (``tf.cond``), so a
    batch of crops at about the output resolution builds no pyramid at all.
    """
    empty = (tf.zeros([0, size, size, 3]), tf.zeros([0], tf.int32))
    if level + 1 >= PYRAMID_LEVELS:
        return empty
    member_base = tf.gather(base, members)
    coarser = (member_base > level) | ((member_base == level) & (tf.gather(frac, members) > 0.0))

    def descend():
        keep = tf.cast(tf.where(coarser)[:, 0], tf.int32)
        kept = tf.cond(tf.reduce_all(coarser), lambda: level_images,
                       lambda: tf.gather(level_images, keep))
        next_images = _halve(tf.cast(kept, tf.float32))
        next_members = tf.gather(members, keep)
        values, faces = _level_samples(level + 1, next_images, next_members, base, frac, sample)
        more_values, more_faces = _coarser_samples(level + 1, next_images, next_members, base,
                                                   frac, sample, size)
        return tf.concat([values, more_values], 0), tf.concat([faces, more_faces], 0)

    return tf.cond(tf.reduce_any(coarser), descend, lambda: empty)


def crop_faces(images, crop_boxes, size: int, angles=None, flips=None, *,
               fill_mode: str = "constant", fill_value: float = 0.0) -> tf.Tensor:
    """Crops, resizes, rotates and mirrors faces in a single resampling.

    Output pixel ``j`` (per axis) of face ``n`` is centred at normalised crop
    coordinate ``(j + 0.5) / size`` after the inverse rotation/flip (module
    docstring); pixels are sampled bilinearly from a mip-map pyramid (anti-aliasing,
    module docstring). Points outside the image take ``fill_value`` (``"constant"``)
    or the nearest edge pixel (``"nearest"``).

    The samples come from ``tf.image.crop_and_resize`` when ``angles`` is ``None``
    and the fill is constant (evaluation, export, training without rotation), and
    from ``tf.raw_ops.ImageProjectiveTransformV3`` otherwise: the same positions,
    weights and pyramid, so the same pixels up to ``AXIS_ALIGNED_ATOL``.

    Args:
        images: uint8 or float ``[N, H, W, 3]`` images, 0..255.
        crop_boxes: float ``[N, 4]`` crop boxes (l, t, r, b) in image pixels.
        size: output side in pixels.
        angles: optional float ``[N]`` rotations in radians (counter-clockwise as
            displayed) about the crop centre.
        flips: optional bool ``[N]`` horizontal mirrors of the crop.
        fill_mode: ``"constant"``, ``"nearest"``, ``"reflect"`` or ``"wrap"``.
        fill_value: grey level outside the image for ``"constant"``.

    Returns:
        float32 ``[N, size, size, 3]``, 0..255.
    """
    if fill_mode not in _FILL_MODES:
        raise ValueError(f"fill_mode must be one of {sorted(_FILL_MODES)}, got {fill_mode!r}")
    size = int(size)
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:  # uint8 stays: crop_and_resize reads it directly
        images = tf.cast(images, tf.float32)
    crop_boxes = tf.convert_to_tensor(crop_boxes, tf.float32)
    num = tf.shape(images)[0]
    axis_aligned = angles is None and fill_mode == "constant"
    angles, flips = _angles_flips(num, angles, flips)
    transforms = _output_to_image_transforms(crop_boxes, size, angles, flips)

    extent = tf.maximum(crop_boxes[:, 2] - crop_boxes[:, 0], crop_boxes[:, 3] - crop_boxes[:, 1])
    step = tf.maximum(tf.abs(extent) / size, 1.0)
    lod = tf.minimum(tf.math.log(step) / math.log(2.0), PYRAMID_LEVELS - 1.0)
    base = tf.floor(lod)
    frac = lod - base

    def sample(level, level_images, positions, faces):
        level_transforms = _to_level(tf.gather(transforms, faces), level)
        if axis_aligned:
            return _sample_axis_aligned(level_images, positions, level_transforms, size,
                                        fill_value)
        return _sample_projective(level_images, positions, level_transforms, size, fill_mode,
                                  fill_value)

    # Level 0 of a face at or below twice the output resolution (the usual case) has
    # a non-zero weight; when every face has one, its samples are the output's first
    # term as they are, with no scatter. Coarser levels are added face by face.
    members = tf.range(num)
    values, faces = _level_samples(0, images, members, base, frac, sample)
    out_shape = tf.stack([num, size, size, 3])
    out = tf.cond(tf.equal(tf.size(faces), num), lambda: values,
                  lambda: tf.scatter_nd(faces[:, None], values, out_shape))
    coarse_values, coarse_faces = _coarser_samples(0, images, members, base, frac, sample, size)
    out = tf.cond(tf.size(coarse_faces) > 0,
                  lambda: tf.tensor_scatter_nd_add(out, coarse_faces[:, None], coarse_values),
                  lambda: out)
    return tf.ensure_shape(out, [None, size, size, 3])


def resize_area(images: tf.Tensor, size: int) -> tf.Tensor:
    """Area (box-filter) downscaling of square crops to ``size x size``.

    Area resizing keeps the crop's outer pixel edges, so the normalised-coordinate
    convention holds at every size.

    Args:
        images: float ``[N, S, S, C]``.
        size: output side.

    Returns:
        float32 ``[N, size, size, C]``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return tf.image.resize(images, [size, size], method=tf.image.ResizeMethod.AREA)


def multiscale_crops(images, crop_boxes, sizes: Sequence[int], angles=None, flips=None,
                     ) -> dict[str, tf.Tensor]:
    """Crops faces at the largest of ``sizes`` and area-downscales to the others.

    Every scale therefore shows exactly the same crop. Shared by
    ``preprocess_faces`` (no angles/flips) and the training pipeline.

    Args:
        images: uint8 or float ``[N, H, W, 3]``.
        crop_boxes: float ``[N, 4]``.
        sizes: output sides, e.g. ``(50, 100, 200)``.
        angles: optional float ``[N]`` radians (see ``crop_faces``).
        flips: optional bool ``[N]``.

    Returns:
        ``{f"image_{s}": float32 [N, s, s, 3]}`` with values 0..255.
    """
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes must not be empty")
    largest = max(sizes)
    crop = crop_faces(images, crop_boxes, largest, angles=angles, flips=flips)
    return {f"image_{s}": resize_area(crop, s) for s in sizes}


def preprocess_faces(images, boxes, sizes: Sequence[int], margin: float,
                     ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """The one crop/resize used by evaluation, prediction and the exported model.

    Args:
        images: uint8 or float ``[N, H, W, 3]`` RGB images (one face each).
        boxes: float ``[N, 4]`` face boxes (l, t, r, b) in pixels.
        sizes: model input sides, e.g. ``(50, 100, 200)`` for MSRRN.
        margin: crop margin (``crop_boxes_from_face_boxes``).

    Returns:
        ``({f"image_{s}": float32 [N, s, s, 3] 0..255}, crop_boxes float32 [N, 4])``;
        model outputs map back to pixels with ``crop_to_image(points, crop_boxes)``.
    """
    crop_boxes = crop_boxes_from_face_boxes(boxes, margin)
    return multiscale_crops(images, crop_boxes, sizes), crop_boxes


MIN_BOX_SIDE = 4.0
"""Smallest face box width and height (pixels) predict, the serving signature and the
Python API accept: below it a face has too few pixels for any landmark (a 0.001 px
box would put every point on one pixel)."""

MIN_BOX_INSIDE = 0.25
"""Smallest fraction of a face box's width (and of its height) that must lie within
the image's extent ``[-0.5, W - 0.5]`` (``[-0.5, H - 0.5]``). Faces cut by the border
pass (a quarter of the box inside on each axis); a box far larger than the image
(``+-1e30``) or hanging mostly outside it is rejected instead of returning
landmarks in the void."""

_NARROW = f"a box is narrower than MIN_BOX_SIDE = {MIN_BOX_SIDE:g} px"
_SHORT = f"a box is shorter than MIN_BOX_SIDE = {MIN_BOX_SIDE:g} px"
_OUTSIDE = (f"a box lies mostly outside its image (under {MIN_BOX_INSIDE:.0%} of its "
            "{} inside)")


def _box_rules_np(boxes: np.ndarray, height: int, width: int) -> list[tuple[np.ndarray, str]]:
    """``(ok [K], message)`` per rule, in float32 exactly as :func:`face_box_checks`."""
    boxes = boxes.astype(np.float32)
    h, w, half = np.float32(height), np.float32(width), np.float32(0.5)
    left, top, right, bottom = (boxes[:, i] for i in range(4))
    with np.errstate(invalid="ignore", over="ignore"):
        box_w, box_h = right - left, bottom - top
        inside_w = np.minimum(right, w - half) - np.maximum(left, -half)
        inside_h = np.minimum(bottom, h - half) - np.maximum(top, -half)
        fraction = np.float32(MIN_BOX_INSIDE)
        return [
            (np.isfinite(boxes).all(axis=1), "boxes must be finite"),
            (box_w > 0, "boxes must have right > left (l, t, r, b)"),
            (box_h > 0, "boxes must have bottom > top (l, t, r, b)"),
            (left < w - half, "a box lies right of its image"),
            (right > -half, "a box lies left of its image"),
            (top < h - half, "a box lies below its image"),
            (bottom > -half, "a box lies above its image"),
            (box_w >= np.float32(MIN_BOX_SIDE), _NARROW),
            (box_h >= np.float32(MIN_BOX_SIDE), _SHORT),
            (inside_w >= fraction * box_w, _OUTSIDE.format("width")),
            (inside_h >= fraction * box_h, _OUTSIDE.format("height")),
        ]


def check_face_boxes(boxes, height: int, width: int) -> np.ndarray:
    """Validates face boxes for one ``height x width`` image (NumPy).

    The one box validation of predict, the Python API and (as
    :func:`face_box_checks`, the same rules in the same float32 arithmetic) the
    serving signature: finite; ``right > left`` and ``bottom > top``; overlapping
    the image; at least :data:`MIN_BOX_SIDE` pixels wide and high; at least
    :data:`MIN_BOX_INSIDE` of its width and of its height within the image.

    Args:
        boxes: ``[K, 4]`` (l, t, r, b) pixels (pixel centres at integers).
        height: image rows.
        width: image columns.

    Returns:
        float32 ``[K, 4]`` (``[0, 4]`` for no box).

    Raises:
        ValueError: naming the first bad box, its index and the rule it breaks.
    """
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [K, 4] (l, t, r, b), got shape {boxes.shape}")
    for ok, message in _box_rules_np(boxes, height, width):
        if not ok.all():
            index = int(np.argmin(ok))
            raise ValueError(f"box {index} {boxes[index].tolist()} for the {width}x{height} "
                             f"image: {message}")
    return boxes


def face_box_checks(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> list[tf.Operation]:
    """:func:`check_face_boxes` as TensorFlow assertions (run time, graph-safe).

    Args:
        boxes: float32 ``[N, 4]`` (l, t, r, b) pixels.
        height: float32 scalar, image rows.
        width: float32 scalar, image columns.

    Returns:
        The assertion ops; they fail with ``tf.errors.InvalidArgumentError`` carrying
        the rule's message.
    """
    half = tf.constant(0.5, tf.float32)
    left, top, right, bottom = (boxes[:, i] for i in range(4))
    box_w, box_h = right - left, bottom - top
    inside_w = tf.minimum(right, width - half) - tf.maximum(left, -half)
    inside_h = tf.minimum(bottom, height - half) - tf.maximum(top, -half)
    fraction = tf.constant(MIN_BOX_INSIDE, tf.float32)
    min_side = tf.constant(MIN_BOX_SIDE, tf.float32)
    rules = [
        (box_w > 0, "boxes must have right > left (l, t, r, b)"),
        (box_h > 0, "boxes must have bottom > top (l, t, r, b)"),
        (left < width - half, "a box lies right of its image"),
        (right > -half, "a box lies left of its image"),
        (top < height - half, "a box lies below its image"),
        (bottom > -half, "a box lies above its image"),
        (box_w >= min_side, _NARROW),
        (box_h >= min_side, _SHORT),
        (inside_w >= fraction * box_w, _OUTSIDE.format("width")),
        (inside_h >= fraction * box_h, _OUTSIDE.format("height")),
    ]
    checks = [tf.debugging.assert_all_finite(boxes, message="boxes must be finite")]
    with tf.control_dependencies(checks):  # finiteness first: NaN fails every comparison
        checks += [tf.debugging.Assert(tf.reduce_all(ok), [message, boxes], summarize=16)
                   for ok, message in rules]
    return checks


def validate_serving_inputs(images, boxes) -> tuple[tf.Tensor, tf.Tensor]:
    """Checks the inputs of the serving signature, with clear error messages.

    Static properties (rank, dtype, channels) fail at trace time with
    ``ValueError``/``TypeError``; values fail at run time with
    ``tf.errors.InvalidArgumentError``. The boxes follow :func:`face_box_checks`
    (the rules of :func:`check_face_boxes`).

    Args:
        images: uint8 ``[N, H, W, 3]`` RGB images.
        boxes: float32 ``[N, 4]`` face boxes (l, t, r, b) in pixels.

    Returns:
        ``(images, boxes)``, to be used after the checks have run.
    """
    images = tf.convert_to_tensor(images)
    boxes = tf.convert_to_tensor(boxes)
    if images.dtype != tf.uint8:
        raise TypeError(f"images must be uint8 RGB [N, H, W, 3], got dtype {images.dtype.name}")
    if boxes.dtype != tf.float32:
        raise TypeError(f"boxes must be float32 [N, 4] (l, t, r, b), got dtype {boxes.dtype.name}")
    shape_checks = [
        tf.debugging.assert_rank(images, 4, message="images must be [N, H, W, 3]"),
        tf.debugging.assert_rank(boxes, 2, message="boxes must be [N, 4] (l, t, r, b)"),
    ]
    # Shapes first: the value checks below index into the boxes.
    with tf.control_dependencies(shape_checks):
        shape = tf.shape(images)
        shape_checks += [
            tf.debugging.assert_equal(shape[3], 3, message="images must have 3 (RGB) channels"),
            tf.debugging.assert_equal(tf.shape(boxes)[1], 4,
                                      message="boxes must be [N, 4] (l, t, r, b)"),
            tf.debugging.assert_equal(tf.shape(boxes)[0], shape[0],
                                      message="images and boxes must have the same N"),
            tf.debugging.assert_positive(shape[0],
                                         message="the batch must hold at least one image"),
            tf.debugging.assert_positive(shape[1] * shape[2], message="images must not be empty"),
        ]
    with tf.control_dependencies(shape_checks):
        height = tf.cast(shape[1], tf.float32)
        width = tf.cast(shape[2], tf.float32)
        checks = shape_checks + face_box_checks(boxes, height, width)
    with tf.control_dependencies(checks):
        return tf.identity(images), tf.identity(boxes)


# NumPy reference (tests only): the same maps without TensorFlow.

def np_crop_landmark_transform(points_norm: np.ndarray, angle: float, flip: bool,
                               flip_permutation: Sequence[int] | None) -> np.ndarray:
    """NumPy twin of ``transform_crop_landmarks`` for one face ``[L, 2]``."""
    p = np.asarray(points_norm, np.float64) - 0.5
    c, s = math.cos(angle), math.sin(angle)
    out = np.stack([0.5 + c * p[:, 0] + s * p[:, 1], 0.5 - s * p[:, 0] + c * p[:, 1]], -1)
    if flip:
        out[:, 0] = 1.0 - out[:, 0]
        if flip_permutation is not None:
            out = out[list(flip_permutation)]
    return out
