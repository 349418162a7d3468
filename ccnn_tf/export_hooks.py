"""CCNN's export hooks (``common.landmark_model.ExportHooks``) and what they use.

``CCNNCascade.export_hooks()`` returns :func:`export_hooks`: how ``common.export``
traces the cascade (weights frozen into the serving graph; for TFLite, builtin-op window
crops, :func:`crop_windows_matmul`, one convolution per network and a batch of one),
its parity tolerances (:data:`TOLERANCES`, normalised crop units; ``ccnn_tf.export``'s
module docstring explains them) and its float32 copy (:func:`float32_cascade`).
``ccnn_tf.export`` re-exports these names. This module imports no other module of
``ccnn_tf`` (the cascade calls it, so it must not import the cascade).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import keras
import tensorflow as tf

from common import landmark_model

TOLERANCES = {"saved_model": 1e-4, "tflite_float32": 1e-3, "tflite_dynamic": 0.02,
              "tflite_int8": 0.02}
"""Parity tolerances in normalised crop units (``ccnn_tf.export``'s module docstring)."""

# --------------------------------------------------------------------------------------
# TFLite-compatible window cropping
# --------------------------------------------------------------------------------------


def _tent_weights(low: tf.Tensor, high: tf.Tensor, count: int, extent: int
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Bilinear sampling weights ``[..., count, extent]`` along one axis and validity.

    Sample ``i`` of the interval ``[low, high]`` (normalised) sits at pixel position
    ``p = (low + (i + 0.5) (high - low) / count) * extent - 0.5``; its weight on pixel
    ``x`` is ``max(0, 1 - |p - x|)``, which are exactly linear interpolation's weights
    inside ``[0, extent - 1]``. Samples outside are invalid (``crop_and_resize``
    extrapolates them).
    """
    step = (high - low) / count
    offsets = tf.range(count, dtype=tf.float32) + 0.5
    positions = (low[..., None] + offsets * step[..., None]) * float(extent) - 0.5
    grid = tf.range(extent, dtype=tf.float32)
    weights = tf.nn.relu(1.0 - tf.abs(positions[..., None] - grid))
    valid = tf.cast((positions >= 0.0) & (positions <= float(extent - 1)), tf.float32)
    return weights * valid[..., None], valid


def crop_windows_matmul(images: tf.Tensor, windows: tf.Tensor,
                        size: int | Sequence[int] = 15,
                        extrapolation_value: float = 0.0) -> tf.Tensor:
    """``ccnn_tf.windows.crop_windows`` as matrix products (TFLite builtins only).

    Same contract and sampling positions as ``crop_windows`` (bilinear, output pixel
    ``i`` centred at ``l + (i + 0.5) (r - l) / size``, ``extrapolation_value`` outside
    the image); the images need a static height and width.

    Args:
        images: float ``[N, H, W, C]``.
        windows: float ``[N, K, 4]`` or ``[N, 4]`` (l, t, r, b) normalised windows.
        size: output side, or (height, width).
        extrapolation_value: value of samples outside the image.

    Returns:
        float32 ``[N, K, size_h, size_w, C]`` (or ``[N, size_h, size_w, C]``).
    """
    size_h, size_w = (size, size) if isinstance(size, int) else tuple(size)
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    windows = tf.convert_to_tensor(windows, tf.float32)
    one_per_image = windows.shape.rank == 2
    if one_per_image:
        windows = windows[:, None, :]
    _, height, width, channels = images.shape
    if height is None or width is None or channels is None:
        raise ValueError("crop_windows_matmul needs images of static height, width and "
                         f"channels, got {images.shape}")
    n = tf.shape(images)[0]
    k = tf.shape(windows)[1]
    flat_windows = tf.reshape(windows, [-1, 4])  # [N*K, 4]
    left, top, right, bottom = tf.unstack(flat_windows, axis=-1)
    weights_y, valid_y = _tent_weights(top, bottom, size_h, height)   # [NK, sh, H]
    weights_x, valid_x = _tent_weights(left, right, size_w, width)    # [NK, sw, W]
    # Rows: [NK, sh, H] @ [NK, H, W*C].
    repeated = tf.repeat(tf.reshape(images, [n, height, width * channels]), k, axis=0)
    rows = tf.matmul(weights_y, repeated)                              # [NK, sh, W*C]
    rows = tf.reshape(rows, [-1, size_h, width, channels])
    rows = tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [-1, width, size_h * channels])
    # Columns: [NK, sw, W] @ [NK, W, sh*C].
    crops = tf.matmul(weights_x, rows)                                 # [NK, sw, sh*C]
    crops = tf.transpose(tf.reshape(crops, [-1, size_w, size_h, channels]), [0, 2, 1, 3])
    if extrapolation_value:
        inside = valid_y[:, :, None, None] * valid_x[:, None, :, None]
        crops += (1.0 - inside) * extrapolation_value
    crops = tf.reshape(crops, [n, k, size_h, size_w, channels])
    return crops[:, 0] if one_per_image else crops


def tflite_compatible_crops(model: keras.Model) -> contextlib.AbstractContextManager:
    """Within this context ``model``'s stages crop with :func:`crop_windows_matmul`
    (its ``trace_options``), so that a trace of it has no ``CropAndResize`` op. Other
    cascades and traces are unaffected."""
    return model.trace_options(crop_windows=crop_windows_matmul)


def _trace(model: keras.Model, target: str) -> contextlib.AbstractContextManager:
    """The cascade's tracing context for an export target (:func:`export_hooks`)."""
    if target == landmark_model.TFLITE_TARGET:
        # Builtin-op window crops and one convolution per network (TFLite's builtin
        # kernels run grouped convolutions only on their slow reference path).
        return model.trace_options(crop_windows=crop_windows_matmul, grouped=False)
    # Weights frozen into the serving graph: each stage's grouped kernels are then
    # constants that graph optimisation builds once.
    return model.trace_options(frozen_weights=True)


def export_hooks(model: keras.Model) -> landmark_model.ExportHooks:
    """The cascade's ``common.landmark_model.ExportHooks``.

    * ``trace``: the serving graph with frozen weights; the TFLite graph with
      :func:`crop_windows_matmul` window crops and one convolution per network.
    * ``tflite_trace_batch`` 1: with a dynamic batch the converter gives the
      formula-4 averaging (an ``einsum`` in ``ccnn_tf.model``) a tensor of static
      shape ``[-1, 2, 5]``, which the TFLite runtime rejects ("BytesRequired number of
      elements overflowed"); with batch 1 every shape is static. On-device inference
      runs face by face anyway. TFLite files are so converted from the cascade traced
      anew (``tflite_source="keras"``), not from the SavedModel.
    * ``tolerances``: :data:`TOLERANCES` (normalised crop units, module docstring).
    * ``float32_copy``: :func:`float32_cascade`.
    """
    return landmark_model.ExportHooks(
        trace=functools.partial(_trace, model), tflite_trace_batch=1,
        tolerances=dict(TOLERANCES), float32_copy=float32_cascade, tflite_source="keras")


def float32_cascade(model: keras.Model) -> keras.Model:
    """The cascade itself, or a float32 copy of a mixed-precision one.

    A cascade built under the ``mixed_float16`` policy computes its networks in
    float16; served on a CPU that is slower and less exact than float32, and float16
    rounding of the inputs makes serving parity depend on ULP-level differences of the
    crop. Exports therefore rebuild it under ``float32`` with the same weights (the
    variables are float32 in both).
    """
    dtypes = {layer.compute_dtype for k in range(1, model.num_stages + 1)
              for network in model.stage_layer(k).networks for layer in network.layers}
    if dtypes <= {"float32"}:
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = type(model).from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


