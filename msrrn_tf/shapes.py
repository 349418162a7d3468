"""Fixed shapes of the MSRRN: the initial mean shape S^0 and the bias correction.

:func:`schematic_mean_shape` (the untrained placeholder S^0), :class:`MeanShape` (S^0
as a fixed mean shape) and :class:`ShapeOffset` (the per-landmark bias correction
fitted after training), both fixed float32 ``[L, 2]`` weights. ``msrrn_tf.model``
re-exports them.
"""

from __future__ import annotations

import keras
import numpy as np


def schematic_mean_shape(num_landmarks: int) -> np.ndarray:
    """A rough frontal face in normalised crop coordinates, the placeholder S^0.

    It only keeps an untrained model's patches on distinct face parts; training
    replaces it with the mean of the training shapes (``set_mean_shape``).

    Args:
        num_landmarks: 68 for the iBUG layout; any other count gives points on an
            ellipse.

    Returns:
        float32 ``[num_landmarks, 2]`` (u, v).
    """
    def ellipse(cx, cy, rx, ry, degrees):
        a = np.deg2rad(np.asarray(degrees, np.float64))
        return np.stack([cx + rx * np.cos(a), cy - ry * np.sin(a)], axis=-1)

    if num_landmarks != 68:
        angles = np.linspace(0.0, 360.0, num_landmarks, endpoint=False)
        return ellipse(0.5, 0.5, 0.25, 0.3, angles).astype(np.float32)
    eye_angles = [180, 120, 60, 0, -60, -120]
    parts = [
        ellipse(0.5, 0.42, 0.3, 0.33, np.linspace(180, 360, 17)),          # jaw 0-16
        ellipse(0.36, 0.36, 0.09, 0.03, np.linspace(180, 0, 5)),            # brow 17-21
        ellipse(0.64, 0.36, 0.09, 0.03, np.linspace(180, 0, 5)),            # brow 22-26
        np.stack([np.full(4, 0.5), np.linspace(0.42, 0.56, 4)], axis=-1),   # bridge 27-30
        ellipse(0.5, 0.56, 0.06, 0.03, np.linspace(-160, -20, 5)),          # nose 31-35
        ellipse(0.37, 0.43, 0.06, 0.025, eye_angles),                       # eye 36-41
        ellipse(0.63, 0.43, 0.06, 0.025, eye_angles),                       # eye 42-47
        ellipse(0.5, 0.68, 0.1, 0.05, np.arange(180, -180, -30)),           # lips 48-59
        ellipse(0.5, 0.68, 0.07, 0.02, np.arange(180, -180, -45)),          # lips 60-67
    ]
    return np.concatenate(parts).astype(np.float32)


class _LandmarkConstant(keras.layers.Layer):
    """A layer holding one fixed (non-trainable) float32 ``[L, 2]`` weight in
    normalised crop coordinates (coordinates stay float32 under any policy: half
    precision would cost ~0.1 px at 200 px)."""

    def __init__(self, num_landmarks: int, weight_name: str, initial: np.ndarray, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_landmarks = int(num_landmarks)
        self.value = self.add_weight(
            name=weight_name, shape=(self.num_landmarks, 2), dtype="float32",
            initializer=keras.initializers.Constant(np.asarray(initial, np.float32)),
            trainable=False)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_landmarks=self.num_landmarks)
        return config


@keras.saving.register_keras_serializable(package="msrrn_tf")
class MeanShape(_LandmarkConstant):
    """S^0 as a fixed (non-trainable) mean shape, broadcast over the batch.

    Called on any batched tensor (only its batch size is used); returns
    float32 ``[N, L, 2]``. The stage ablation's baseline ("Performance effects
    with different stages": "we first leveraged the meanshape").

    Args:
        num_landmarks: L.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, num_landmarks: int, **kwargs):
        super().__init__(num_landmarks, "mean_shape", schematic_mean_shape(int(num_landmarks)),
                         **kwargs)
        self.mean_shape = self.value

    def set_mean_shape(self, shapes: np.ndarray) -> None:
        """Sets the mean shape.

        Args:
            shapes: ``[L, 2]`` mean shape, or ``[N, L, 2]`` training shapes to
                average, in normalised crop coordinates.
        """
        shapes = np.asarray(shapes, np.float32)
        if shapes.ndim == 3:
            shapes = shapes.mean(axis=0)
        if shapes.shape != (self.num_landmarks, 2):
            raise ValueError(f"mean shape must be [{self.num_landmarks}, 2] or "
                             f"[N, {self.num_landmarks}, 2], got {shapes.shape}")
        self.mean_shape.assign(shapes)

    def call(self, inputs):
        batch = keras.ops.shape(inputs)[0]
        return keras.ops.broadcast_to(self.mean_shape[None], (batch, self.num_landmarks, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_landmarks, 2)


@keras.saving.register_keras_serializable(package="msrrn_tf")
class ShapeOffset(_LandmarkConstant):
    """Adds a fixed (non-trainable) per-landmark offset to a shape: the bias
    correction fitted on training faces after training (``set_offset``; zeros,
    i.e. the identity, until then).

    Input and output: float32 ``[N, L, 2]`` in normalised crop coordinates.

    Args:
        num_landmarks: L.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, num_landmarks: int, **kwargs):
        super().__init__(num_landmarks, "offset", np.zeros((int(num_landmarks), 2)), **kwargs)
        self.offset = self.value

    def set_offset(self, offset: np.ndarray) -> None:
        """Sets the ``[L, 2]`` offset."""
        offset = np.asarray(offset, np.float32)
        if offset.shape != (self.num_landmarks, 2):
            raise ValueError(f"offset must be [{self.num_landmarks}, 2], got {offset.shape}")
        self.offset.assign(offset)

    def call(self, shape):
        return keras.ops.cast(shape, "float32") + self.offset[None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
