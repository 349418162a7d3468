"""CCNN window geometry as graph ops, shared by training, evaluation and export.

Every box here is float32 ``(left, top, right, bottom)`` in normalised crop coordinates
of the model input (docs/DESIGN.md): ``u = (x - l) / (r - l)`` for the crop box, pixel
``j`` of an ``S``-pixel crop has its centre at ``u = (j + 0.5) / S``.

The model input is the face box expanded by a margin ``m`` on each side, so the face box
is the centred square ``[m / (1 + 2m), (1 + m) / (1 + 2m)]`` of the crop and one face-box
width is ``1 / (1 + 2m)`` crop units. The paper gives window sizes and the shake
relative to the face box (formula 5, section 3.1.2); ``face_box_scale`` converts. For a
face box that is not square the crop side follows the longer side, and the conversion is
exact for that side (face detectors and the CUHK boxes are square or nearly so).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

SeedLike = int | keras.random.SeedGenerator | tf.random.Generator | None


def face_box_scale(margin: float) -> float:
    """Returns the face-box side in crop units, ``1 / (1 + 2 margin)``.

    Args:
        margin: crop margin per side, as a fraction of the face box side.
    """
    return 1.0 / (1.0 + 2.0 * margin)


def face_box_in_crop(margin: float) -> tuple[float, float, float, float]:
    """Returns the face box (l, t, r, b) in normalised crop coordinates.

    Args:
        margin: crop margin per side, as a fraction of the face box side.
    """
    lo = margin * face_box_scale(margin)
    hi = (1.0 + margin) * face_box_scale(margin)
    return (lo, lo, hi, hi)


def region_boxes(regions: Sequence[Sequence[float]], margin: float) -> tf.Tensor:
    """Converts regions given as fractions of the face box to crop coordinates.

    This places the stage-1 input areas of section 3.1.1 (whole face, eyes and nose,
    nose and mouth) in the model input.

    Args:
        regions: ``[R, 4]`` (left, top, right, bottom) fractions of the face box
            (0 = its left/top edge, 1 = its right/bottom edge).
        margin: crop margin per side, as a fraction of the face box side.

    Returns:
        float32 ``[R, 4]`` boxes in normalised crop coordinates.
    """
    regions = tf.convert_to_tensor(regions, tf.float32)
    origin = margin * face_box_scale(margin)
    return origin + regions * face_box_scale(margin)


def window_boxes(points: tf.Tensor, half_size_w: float | tf.Tensor,
                 half_size_h: float | tf.Tensor, *, margin: float) -> tf.Tensor:
    """Windows centred on points, with half-sizes relative to the face box (formula 5).

    ``window = [x - a w, y - b h, x + a w, y + b h]`` with ``w`` and ``h`` the face box
    width and height, here ``1 / (1 + 2 margin)`` crop units.

    Args:
        points: float ``[..., P, 2]`` (x, y) anchors in normalised crop coordinates.
        half_size_w: ``a``, the half-width as a fraction of the face box width (a
            scalar or anything broadcasting against ``points[..., 0]``).
        half_size_h: ``b``, the half-height as a fraction of the face box height.
        margin: crop margin per side, as a fraction of the face box side.

    Returns:
        float32 ``[..., P, 4]`` (l, t, r, b) windows in normalised crop coordinates.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    scale = face_box_scale(margin)
    half_w = tf.cast(half_size_w, tf.float32) * scale
    half_h = tf.cast(half_size_h, tf.float32) * scale
    x, y = points[..., 0], points[..., 1]
    return tf.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=-1)


def shake(boxes: tf.Tensor, stddev: float, seed: SeedLike = None) -> tf.Tensor:
    """Translates every box by a random normal offset (the shake of section 3.1.2).

    Each box moves by its own ``(dx, dy)``, both drawn from ``N(0, stddev**2)``; its size
    is unchanged. The paper's ``shake ~ N(0, 1e-4)`` is a variance, i.e. ``stddev``
    0.01 of the face box; callers convert it to crop units with ``face_box_scale``.

    Args:
        boxes: float ``[..., 4]`` (l, t, r, b) boxes.
        stddev: standard deviation of the offsets, in the units of ``boxes``.
        seed: an int, a ``keras.random.SeedGenerator`` (what layers use), a
            ``tf.random.Generator``, or None.

    Returns:
        The shaken boxes, same shape.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    shape = tf.concat([tf.shape(boxes)[:-1], [2]], axis=0)
    if isinstance(seed, tf.random.Generator):
        offsets = seed.normal(shape, stddev=stddev)
    else:
        offsets = keras.random.normal(shape, stddev=stddev, seed=seed)
    return boxes + tf.concat([offsets, offsets], axis=-1)


def to_window(points: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
    """Expresses points relative to their windows (formula 9).

    ``x_rel = (x' - x) / w``, ``y_rel = (y' - y) / h`` with ``(x, y)`` the window's top
    left corner and ``w, h`` its size: 0 at the left/top edge, 1 at the right/bottom.

    Args:
        points: float ``[..., 2]`` (x, y) points.
        windows: float ``[..., 4]`` (l, t, r, b) windows, broadcasting against points.

    Returns:
        float32 ``[..., 2]`` window-relative points.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    windows = tf.convert_to_tensor(windows, tf.float32)
    origin, far = windows[..., :2], windows[..., 2:]
    return (points - origin) / (far - origin)


def from_window(points_rel: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
    """Maps window-relative points back to the windows' frame; inverse of ``to_window``.

    Args:
        points_rel: float ``[..., 2]`` window-relative points.
        windows: float ``[..., 4]`` (l, t, r, b) windows, broadcasting against them.

    Returns:
        float32 ``[..., 2]`` points in the coordinates the windows are given in.
    """
    points_rel = tf.convert_to_tensor(points_rel, tf.float32)
    windows = tf.convert_to_tensor(windows, tf.float32)
    origin, far = windows[..., :2], windows[..., 2:]
    return origin + points_rel * (far - origin)


def crop_windows(images: tf.Tensor, windows: tf.Tensor, size: int | Sequence[int] = 15,
                 extrapolation_value: float = 0.0) -> tf.Tensor:
    """Crops windows out of images and resizes them bilinearly to ``size``.

    Output pixel ``i`` of a window ``(l, t, r, b)`` has its centre at
    ``u = l + (i + 0.5) (r - l) / size``, the same pixel-centre convention as the model
    input itself (docs/DESIGN.md), so a window cropped from a crop samples the image at
    the same places as if it had been cropped from the original. Samples outside the
    image get ``extrapolation_value``.

    ``tf.image.crop_and_resize`` puts the first and last output samples exactly at the
    box edges, in units of ``(S - 1)`` pixels; the box given to it is therefore the
    pixel-index positions of the first and last output pixel centres divided by
    ``S - 1``.

    Args:
        images: float ``[N, H, W, C]`` images (``H, W >= 2``).
        windows: float ``[N, K, 4]`` (K windows per image) or ``[N, 4]`` (one per
            image) (l, t, r, b) windows in normalised coordinates of the images.
        size: output side, or (height, width).

    Returns:
        float32 ``[N, K, size_h, size_w, C]`` (or ``[N, size_h, size_w, C]`` for
        ``[N, 4]`` windows).
    """
    size_h, size_w = (size, size) if isinstance(size, int) else tuple(size)
    images = tf.convert_to_tensor(images)
    windows = tf.convert_to_tensor(windows, tf.float32)
    one_per_image = windows.shape.rank == 2
    if one_per_image:
        windows = windows[:, None, :]
    image_shape = tf.shape(images)
    n, k = tf.shape(windows)[0], tf.shape(windows)[1]
    height = tf.cast(image_shape[1], tf.float32)
    width = tf.cast(image_shape[2], tf.float32)
    left, top, right, bottom = tf.unstack(windows, axis=-1)
    # Pixel-index positions (pixel centres at integers) of the first and last output
    # pixel centres.
    step_x = (right - left) / size_w
    step_y = (bottom - top) / size_h
    x_first = (left + 0.5 * step_x) * width - 0.5
    x_last = (right - 0.5 * step_x) * width - 0.5
    y_first = (top + 0.5 * step_y) * height - 0.5
    y_last = (bottom - 0.5 * step_y) * height - 0.5
    boxes = tf.stack([y_first / (height - 1.0), x_first / (width - 1.0),
                      y_last / (height - 1.0), x_last / (width - 1.0)], axis=-1)
    box_indices = tf.repeat(tf.range(n), k)
    crops = tf.image.crop_and_resize(
        images, tf.reshape(boxes, [-1, 4]), box_indices, (size_h, size_w),
        method="bilinear", extrapolation_value=extrapolation_value)
    channels = images.shape[-1] if images.shape[-1] is not None else image_shape[3]
    crops = tf.reshape(crops, [n, k, size_h, size_w, channels])
    return crops[:, 0] if one_per_image else crops
