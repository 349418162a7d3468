"""Shape-indexed patch sampling (the phi of MSRRN, "Proposed method", eq. 3).

``shape_indexed_patches`` cuts a k x k patch centred on every landmark of the
current shape estimate by bilinear interpolation, batched over faces and
landmarks with gathers. It is differentiable with respect to the image and
(piecewise) to the shape, and compiles with XLA.

Conventions (docs/DESIGN.md): landmarks are in normalised crop coordinates, and
the normalised point (u, v) is the continuous pixel position
(x, y) = (u * W - 0.5, v * H - 0.5) of a W x H image whose pixel centres are at
integers. Samples outside the image read **zero** (zero padding); in MSRRN the
images are normalised to [-1, 1] before sampling, so outside reads mid grey.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _dim(tensor: tf.Tensor, axis: int):
    """The static size of ``axis`` when known, else the dynamic one."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def shape_indexed_patches(images: tf.Tensor, shape: tf.Tensor, patch_size: int,
                          patch_extent: float | None = None) -> tf.Tensor:
    """Samples a ``patch_size`` x ``patch_size`` patch centred on each landmark.

    Sample (i, j) of the patch of landmark l (row i, column j) lies at
    ``u = u_l + (j + 0.5 - k / 2) * e / k`` and ``v = v_l + (i + 0.5 - k / 2) * e / k``
    where k is ``patch_size`` and e the patch side in normalised units, so the
    sample grid is centred on the landmark. Values are bilinear interpolations of
    the four neighbouring pixels; pixels outside the image count as zero.

    Args:
        images: ``[N, H, W, C]`` floating images.
        shape: ``[N, L, 2]`` landmark (u, v) in normalised crop coordinates.
        patch_size: k, samples per patch side.
        patch_extent: patch side as a fraction of the image side (the same
            physical region at every scale; sample spacing ``patch_extent * W / k``
            pixels), or ``None`` for one sample per pixel (a ``patch_size``-pixel
            patch, i.e. a smaller physical region in a finer image).

    Returns:
        ``[N, L, k, k, C]`` patches in the dtype of ``images``.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.convert_to_tensor(shape)
    # Positions in float32 at least (float64 kept for precise numeric tests);
    # half-precision positions would be off by ~0.1 px at 200 px.
    coord_dtype = tf.float64 if shape.dtype == tf.float64 else tf.float32
    shape = tf.cast(shape, coord_dtype)
    if patch_extent is None:
        return _unit_step_patches(images, shape, int(patch_size))
    return _general_patches(images, shape, int(patch_size), float(patch_extent))


def _unit_step_patches(images: tf.Tensor, shape: tf.Tensor, k: int) -> tf.Tensor:
    """``shape_indexed_patches`` with one sample per pixel (``patch_extent=None``).

    The samples of a patch are whole pixels apart, so they all share the bilinear
    weights ``(wx, wy)`` of the first one: the patch is a blend of the
    ``(k + 1) x (k + 1)`` pixel window starting at ``floor`` of the first sample,
    read with a single gather (instead of four gathers of ``k x k`` neighbours), and
    interpolated separably, first along x, then along y. The zero padding is folded
    into the interpolation weights (a pixel outside the image gets weight 0).
    """
    n, h, w, c = (_dim(images, i) for i in range(4))
    num_l = _dim(shape, 1)
    hf = tf.cast(h, shape.dtype)
    wf = tf.cast(w, shape.dtype)
    # The first sample of each patch; beyond the window's reach every pixel it reads
    # is padding, and clamping there keeps the integer casts in range without
    # changing any value.
    first = 0.5 - k / 2.0
    x = tf.clip_by_value(shape[..., 0] * wf - 0.5 + first, -1.0 - k, wf)  # [N, L]
    y = tf.clip_by_value(shape[..., 1] * hf - 0.5 + first, -1.0 - k, hf)
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    wx = tf.cast(x - x0, images.dtype)[..., None]  # floor has no gradient: d/dx = 1
    wy = tf.cast(y - y0, images.dtype)[..., None]
    steps = tf.range(k + 1)
    xi = tf.cast(x0, tf.int32)[..., None] + steps  # window columns [N, L, k + 1]
    yi = tf.cast(y0, tf.int32)[..., None] + steps  # window rows
    inside_x = tf.cast((xi >= 0) & (xi < w), images.dtype)
    inside_y = tf.cast((yi >= 0) & (yi < h), images.dtype)
    index = (tf.clip_by_value(yi, 0, h - 1)[..., :, None] * w
             + tf.clip_by_value(xi, 0, w - 1)[..., None, :])  # [N, L, k + 1, k + 1]
    flat = tf.reshape(images, tf.stack([n, h * w, c]))
    window = tf.gather(flat, tf.reshape(index, tf.stack([n, -1])), batch_dims=1)
    window = tf.reshape(window, tf.stack([n, num_l, k + 1, k + 1, c]))
    # Sample j reads window columns j (weight 1 - wx) and j + 1 (weight wx).
    left = ((1 - wx) * inside_x[..., :k])[:, :, None, :, None]
    right = (wx * inside_x[..., 1:])[:, :, None, :, None]
    rows = window[:, :, :, :k] * left + window[:, :, :, 1:] * right  # [N, L, k + 1, k, C]
    top = ((1 - wy) * inside_y[..., :k])[:, :, :, None, None]
    bottom = (wy * inside_y[..., 1:])[:, :, :, None, None]
    patches = rows[:, :, :k] * top + rows[:, :, 1:] * bottom
    static_n, static_l, static_c = images.shape[0], shape.shape[1], images.shape[-1]
    return tf.ensure_shape(patches, [static_n, static_l, k, k, static_c])


def _general_patches(images: tf.Tensor, shape: tf.Tensor, k: int,
                     patch_extent: float) -> tf.Tensor:
    """``shape_indexed_patches`` for any sample spacing: four gathers of neighbours."""
    coord_dtype = shape.dtype
    n, h, w, c = (_dim(images, i) for i in range(4))
    num_l = _dim(shape, 1)
    hf = tf.cast(h, coord_dtype)
    wf = tf.cast(w, coord_dtype)

    offsets = tf.range(k, dtype=coord_dtype) + (0.5 - k / 2.0)  # centred on 0
    step_x = patch_extent * wf / k
    step_y = patch_extent * hf / k
    cx = shape[..., 0] * wf - 0.5
    cy = shape[..., 1] * hf - 0.5
    x = cx[:, :, None, None] + step_x * offsets[None, None, None, :]  # [N, L, 1, k]
    y = cy[:, :, None, None] + step_y * offsets[None, None, :, None]  # [N, L, k, 1]
    x = tf.broadcast_to(x, tf.stack([n, num_l, k, k]))
    y = tf.broadcast_to(y, tf.stack([n, num_l, k, k]))
    # Beyond one pixel outside the image every neighbour is padding; clamping there
    # keeps the integer casts in range without changing any value.
    x = tf.clip_by_value(x, -1.0, wf)
    y = tf.clip_by_value(y, -1.0, hf)
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    wx = tf.cast(x - x0, images.dtype)[..., None]  # floor has no gradient: d/dx = 1
    wy = tf.cast(y - y0, images.dtype)[..., None]
    x0 = tf.cast(x0, tf.int32)
    y0 = tf.cast(y0, tf.int32)

    flat = tf.reshape(images, tf.stack([n, h * w, c]))

    def neighbour(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
        values = tf.gather(flat, tf.reshape(index, tf.stack([n, -1])), batch_dims=1)
        values = tf.reshape(values, tf.stack([n, num_l, k, k, c]))
        return values * tf.cast(inside, images.dtype)[..., None]

    top = (1 - wx) * neighbour(y0, x0) + wx * neighbour(y0, x0 + 1)
    bottom = (1 - wx) * neighbour(y0 + 1, x0) + wx * neighbour(y0 + 1, x0 + 1)
    patches = (1 - wy) * top + wy * bottom
    static_n, static_l, static_c = images.shape[0], shape.shape[1], images.shape[-1]
    return tf.ensure_shape(patches, [static_n, static_l, k, k, static_c])


@keras.saving.register_keras_serializable(package="msrrn_tf")
class ShapeIndexedPatches(keras.layers.Layer):
    """Keras layer around ``shape_indexed_patches``.

    Called as ``layer(images, shape)`` with ``images [N, H, W, C]`` and
    ``shape [N, L, 2]`` (normalised crop coordinates); returns
    ``[N, L, k, k, C]`` in the images' dtype. The shape is not autocast, so under
    mixed precision the sampling positions stay in float32.

    Args:
        patch_size: k, samples per patch side.
        patch_extent: patch side as a fraction of the image side, or ``None`` for
            ``patch_size`` pixels (see ``shape_indexed_patches``).
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype, ...).
    """

    def __init__(self, patch_size: int, patch_extent: float | None = None, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.patch_size = int(patch_size)
        self.patch_extent = None if patch_extent is None else float(patch_extent)

    def call(self, images, shape):
        return shape_indexed_patches(images, shape, self.patch_size, self.patch_extent)

    def compute_output_shape(self, images_shape, shape_shape):
        return (images_shape[0], shape_shape[1], self.patch_size, self.patch_size,
                images_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(patch_size=self.patch_size, patch_extent=self.patch_extent)
        return config
