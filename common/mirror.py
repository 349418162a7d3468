"""The flip test as Keras layers, for any landmark model of a mirror-symmetric layout.

At inference a model can also predict the mirror image of each face and map those
points back (``u -> 1 - u`` in normalised crop coordinates, points permuted by the
layout's ``flip_permutation``, ``common.schemes``): the two shapes can be averaged
(the landmarks) or compared (``common.confidence.ShapeAgreementConfidence``). The
mirrored faces travel in the same batch: ``MirrorBatch`` appends them (``[N] ->
[2N]``), the model runs unchanged, and ``MergeMirrored`` / ``PlainHalf`` /
``MirroredPair`` take the ``[2N]`` outputs apart again. In training every layer here is
the identity (the flip augmentation already shows mirrored faces; nothing is paid for
the test), so a model can be trained without it and served with it, or vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


@keras.saving.register_keras_serializable(package="common")
class MirrorBatch(keras.layers.Layer):
    """Flip test, first half: at inference, appends the mirrored images to the batch
    (``[N, S, S, C] -> [2N, S, S, C]``, the last N flipped left-right); in training,
    the identity.

    Args:
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def call(self, images, training=None):
        if training:
            return images
        return keras.ops.concatenate([images, keras.ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="common")
class PlainHalf(keras.layers.Layer):
    """At inference, the outputs of the plain (not mirrored) faces: the first half of
    a ``MirrorBatch`` batch (``[2N, ...] -> [N, ...]``); in training, the identity.

    Args:
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def call(self, values, training=None):
        if training:
            return values
        return values[:keras.ops.shape(values)[0] // 2]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="common")
class MergeMirrored(keras.layers.Layer):
    """Flip test, second half: at inference, maps the shapes predicted on the
    mirrored half of the batch back (``u -> 1 - u``, points permuted) and averages
    them with the others (``[2N, L, 2] -> [N, L, 2]``); in training, the identity.

    Args:
        flip_permutation: the landmark scheme's flip permutation.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, flip_permutation: Sequence[int], **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.flip_permutation = tuple(int(i) for i in flip_permutation)

    def unmirrored_pair(self, shape):
        """``[2N, L, 2]`` -> the plain and the mapped-back mirrored shapes, ``[N, L, 2]``
        each."""
        shape = keras.ops.cast(shape, "float32")
        half = keras.ops.shape(shape)[0] // 2
        plain, mirrored = shape[:half], shape[half:]
        mirrored = keras.ops.take(mirrored, list(self.flip_permutation), axis=1)
        mirrored = keras.ops.stack([1.0 - mirrored[..., 0], mirrored[..., 1]], axis=-1)
        return plain, mirrored

    def call(self, shape, training=None):
        if training:
            return shape
        plain, mirrored = self.unmirrored_pair(shape)
        return 0.5 * (plain + mirrored)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(flip_permutation=list(self.flip_permutation))
        return config


@keras.saving.register_keras_serializable(package="common")
class MirroredPair(MergeMirrored):
    """Flip test, for the confidence: at inference, the plain and the mapped-back
    mirrored shapes stacked (``[2N, L, 2] -> [N, 2, L, 2]``, the estimates
    ``common.confidence.ShapeAgreementConfidence`` compares); in training, the shape
    twice (they agree: no mirrored half exists).

    Args:
        flip_permutation: the landmark scheme's flip permutation.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def call(self, shape, training=None):
        if training:
            return keras.ops.stack([shape, shape], axis=1)
        return keras.ops.stack(self.unmirrored_pair(shape), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, *input_shape[1:])
