"""The MSRRN model: an initial shape refined by ONE regression network applied
recurrently, coarse to fine, over three image scales.

Wang et al., "Multiscale recurrent regression networks for face alignment" (2017),
"Proposed method":

    S^t = S^{t-1} + f_RRN(phi(I^(t), S^{t-1})),   t = 1 .. T,

where phi samples shape-indexed patches around the landmarks of S^{t-1} in the
stage's scaled image I^(t) (50, 100, 200 px) and f_RRN (conv, max pool, ReLU, fully
connected; eq. 2) has the same parameters at every stage. S^0 comes from a small
CNN on the coarsest image or is the training mean shape.

Weight sharing across scales needs patches of one size: every stage samples
``patch_size`` x ``patch_size`` pixels of its own image, so a finer stage sees a
smaller physical region (coarse to fine). Layout of ``MSRRN`` (a functional graph
inside a ``keras.Model`` subclass):

    image_50 --normalise--> InitialShapeNetwork (or MeanShape) -----> stage_0
    image_50,  stage_0 --> RecurrentRegressionNetwork --> + --------> stage_1
    image_100, stage_1 --> (same layer, same weights)  --> + -------> stage_2
    image_200, stage_2 --> (same layer, same weights)  --> + -------> stage_3 = landmarks

With ``bias_correction`` every reported output ``stage_t`` is the shape above plus a
fixed per-landmark offset (``ShapeOffset``) fitted on the training faces after
training (``msrrn_tf.training.fit_bias_correction``); the next stage still reads the
uncorrected shape.

The fixed-shape layers (``MeanShape``, ``ShapeOffset``) live in ``msrrn_tf.shapes`` and
the flip-test layers (``MirrorBatch``, ``MergeMirrored``, ``MirroredPair``) in
``msrrn_tf.flip``; both are re-exported here. Their registered Keras names
(``msrrn_tf>MeanShape``, ...) are unchanged, so models saved before the split load.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from common.confidence import ShapeAgreementConfidence
from common.landmark_model import LandmarkModelMixin
from msrrn_tf.config import INIT_MODES, MSRRNConfig
from msrrn_tf.flip import MergeMirrored, MirrorBatch, MirroredPair
from msrrn_tf.layers import ShapeIndexedPatches
from msrrn_tf.shapes import (  # noqa: F401  (re-exported)
    MeanShape,
    ShapeOffset,
    _LandmarkConstant,
    schematic_mean_shape,
)


def _l2(weight_decay: float):
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def _conv_blocks(prefix: str, filters: Sequence[int], kernel_size: int, pool_size: int,
                 weight_decay: float, dtype) -> list[keras.layers.Layer]:
    """conv (same) -> max pool -> ReLU per block: the order of eq. 2."""
    layers = []
    for i, width in enumerate(filters):
        layers += [
            keras.layers.Conv2D(width, kernel_size, padding="same",
                                kernel_regularizer=_l2(weight_decay), dtype=dtype,
                                name=f"{prefix}conv_{i}"),
            keras.layers.MaxPooling2D(pool_size, dtype=dtype, name=f"{prefix}pool_{i}"),
            keras.layers.ReLU(dtype=dtype, name=f"{prefix}relu_{i}"),
        ]
    return layers


def _small_dense(units: int, weight_decay: float, dtype, name: str) -> keras.layers.Dense:
    # Small initial outputs: S^t starts near S^{t-1} (near the mean shape at S^0),
    # while the gradients to every earlier layer are non-zero from the first step.
    return keras.layers.Dense(
        units, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3),
        kernel_regularizer=_l2(weight_decay), dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="msrrn_tf")
class InitialShapeNetwork(keras.layers.Layer):
    """The CNN that predicts S^0 from the coarsest image ("Proposed method", last
    paragraph: "we further propose a CNN, which aims to predict a initial shape").

    It predicts a residual from the training mean shape (a non-trainable weight,
    ``set_mean_shape``), so an untrained network already outputs the mean shape.
    Input: normalised images ``[N, S, S, C]``; output: float32 ``[N, L, 2]``.

    Args:
        num_landmarks: L.
        conv_filters: channels of the conv (same) -> max pool 2 -> ReLU blocks.
        kernel_size: conv kernel side.
        fc_units: hidden fully connected widths (ReLU).
        weight_decay: L2 factor on every kernel.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, num_landmarks: int, conv_filters: Sequence[int] = (16, 32, 64),
                 kernel_size: int = 3, fc_units: Sequence[int] = (256,),
                 weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_landmarks = int(num_landmarks)
        self.conv_filters = tuple(int(f) for f in conv_filters)
        self.kernel_size = int(kernel_size)
        self.fc_units = tuple(int(u) for u in fc_units)
        self.weight_decay = float(weight_decay)
        dtype = self.dtype_policy
        self.mean = MeanShape(self.num_landmarks, name="mean")
        self.blocks = _conv_blocks("", self.conv_filters, self.kernel_size, 2,
                                   self.weight_decay, dtype)
        self.flatten = keras.layers.Flatten(dtype=dtype, name="flatten")
        self.hidden = [keras.layers.Dense(u, activation="relu",
                                          kernel_regularizer=_l2(self.weight_decay),
                                          dtype=dtype, name=f"fc_{i}")
                       for i, u in enumerate(self.fc_units)]
        self.residual = _small_dense(2 * self.num_landmarks, self.weight_decay, dtype, "residual")

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.mean.build(shape)
        for layer in self.blocks:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        shape = (shape[0], int(np.prod(shape[1:])))
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.residual.build(shape)

    def set_mean_shape(self, shapes: np.ndarray) -> None:
        """Sets the mean shape the residual is added to (see ``MeanShape``)."""
        self.mean.set_mean_shape(shapes)

    def call(self, images):
        x = images
        for layer in self.blocks:
            x = layer(x)
        x = self.flatten(x)
        for layer in self.hidden:
            x = layer(x)
        residual = keras.ops.reshape(self.residual(x), (-1, self.num_landmarks, 2))
        return self.mean(images) + keras.ops.cast(residual, "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_landmarks, 2)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_landmarks=self.num_landmarks, conv_filters=self.conv_filters,
                      kernel_size=self.kernel_size, fc_units=self.fc_units,
                      weight_decay=self.weight_decay)
        return config


@keras.saving.register_keras_serializable(package="msrrn_tf")
class RecurrentRegressionNetwork(keras.layers.Layer):
    """f_RRN: one shared regressor from shape-indexed patches to a shape update.

    ``layer(images, shape)`` samples a k x k patch around each landmark of ``shape``
    in ``images`` (phi, eq. 3), runs conv -> max pool -> ReLU blocks on every patch
    with weights shared over landmarks, concatenates the features of all
    landmarks, and maps them through fully connected layers to the update
    ``delta [N, L, 2]`` (eq. 2), so that S^t = S^{t-1} + delta. The same layer
    object is called at every stage and scale; its weights do not depend on the
    number of stages.

    With ``hidden_size > 0`` a GRU cell after the hidden FC layers carries a state
    between stages ("memorize the descents"): ``layer(images, shape, state)``
    returns ``(delta, new_state)``; ``state=None`` starts from zeros.

    Args:
        num_landmarks: L.
        patch_size: k, patch side in samples.
        patch_extent: patch side as a fraction of the image, or ``None`` for k
            pixels of whatever scale the layer is called on.
        conv_filters: channels of the per-patch conv blocks.
        kernel_size: conv kernel side.
        pool_size: max-pool window and stride of every block.
        fc_units: hidden fully connected widths (ReLU) over all landmarks.
        hidden_size: recurrent state size, 0 for none.
        weight_decay: L2 factor on every kernel.
        stop_shape_gradient: block gradients through the sampling positions.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, num_landmarks: int, patch_size: int, patch_extent: float | None = None,
                 conv_filters: Sequence[int] = (16, 32), kernel_size: int = 3,
                 pool_size: int = 2, fc_units: Sequence[int] = (256,), hidden_size: int = 0,
                 weight_decay: float = 0.0, stop_shape_gradient: bool = True, **kwargs):
        # The shape is kept in float32 (no autocast); images are cast below.
        super().__init__(autocast=False, **kwargs)
        self.num_landmarks = int(num_landmarks)
        self.patch_size = int(patch_size)
        self.patch_extent = None if patch_extent is None else float(patch_extent)
        self.conv_filters = tuple(int(f) for f in conv_filters)
        self.kernel_size = int(kernel_size)
        self.pool_size = int(pool_size)
        self.fc_units = tuple(int(u) for u in fc_units)
        self.hidden_size = int(hidden_size)
        self.weight_decay = float(weight_decay)
        self.stop_shape_gradient = bool(stop_shape_gradient)
        dtype = self.dtype_policy
        self.patches = ShapeIndexedPatches(self.patch_size, self.patch_extent, dtype=dtype,
                                           name="patches")
        self.blocks = _conv_blocks("", self.conv_filters, self.kernel_size, self.pool_size,
                                   self.weight_decay, dtype)
        self.hidden = [keras.layers.Dense(u, activation="relu",
                                          kernel_regularizer=_l2(self.weight_decay),
                                          dtype=dtype, name=f"fc_{i}")
                       for i, u in enumerate(self.fc_units)]
        self.cell = None
        if self.hidden_size:
            self.cell = keras.layers.GRUCell(
                self.hidden_size, kernel_regularizer=_l2(self.weight_decay),
                recurrent_regularizer=_l2(self.weight_decay), dtype=dtype, name="gru")
        self.delta = _small_dense(2 * self.num_landmarks, self.weight_decay, dtype, "delta")

    def _feature_shapes(self, channels: int) -> tuple[tuple, int]:
        """Per-patch block output shapes and the concatenated feature length."""
        shape = (None, self.patch_size, self.patch_size, channels)
        shapes = []
        for layer in self.blocks:
            shapes.append(shape)
            shape = layer.compute_output_shape(shape)
        if min(shape[1:3]) < 1:
            raise ValueError(f"patch_size {self.patch_size} is too small for "
                             f"{len(self.conv_filters)} pools of {self.pool_size}")
        return shapes, self.num_landmarks * int(np.prod(shape[1:]))

    def build(self, images_shape, shape_shape=None, state_shape=None):
        shapes, features = self._feature_shapes(int(images_shape[-1]))
        for layer, shape in zip(self.blocks, shapes):
            layer.build(shape)
        shape = (None, features)
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.cell is not None:
            self.cell.build(shape)
            shape = (None, self.hidden_size)
        self.delta.build(shape)

    def call(self, images, shape, state=None):
        shape = keras.ops.cast(shape, "float32")
        at = keras.ops.stop_gradient(shape) if self.stop_shape_gradient else shape
        images = keras.ops.cast(images, self.compute_dtype)
        patches = self.patches(images, at)  # [N, L, k, k, C]
        k, channels = self.patch_size, patches.shape[-1]
        x = keras.ops.reshape(patches, (-1, k, k, channels))
        for layer in self.blocks:
            x = layer(x)
        x = keras.ops.reshape(x, (-1, self._feature_shapes(channels)[1]))
        for layer in self.hidden:
            x = layer(x)
        if self.cell is not None:
            if state is None:
                state = keras.ops.zeros((keras.ops.shape(x)[0], self.hidden_size), x.dtype)
            x, _ = self.cell(x, [keras.ops.cast(state, x.dtype)])
            state = x
        delta = keras.ops.reshape(self.delta(x), (-1, self.num_landmarks, 2))
        delta = keras.ops.cast(delta, "float32")
        return delta if self.cell is None else (delta, state)

    def compute_output_spec(self, images, shape, state=None):
        batch = images.shape[0]
        delta = keras.KerasTensor((batch, self.num_landmarks, 2), dtype="float32")
        if self.cell is None:
            return delta
        return delta, keras.KerasTensor((batch, self.hidden_size), dtype=self.compute_dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_landmarks=self.num_landmarks, patch_size=self.patch_size,
                      patch_extent=self.patch_extent, conv_filters=self.conv_filters,
                      kernel_size=self.kernel_size, pool_size=self.pool_size,
                      fc_units=self.fc_units, hidden_size=self.hidden_size,
                      weight_decay=self.weight_decay,
                      stop_shape_gradient=self.stop_shape_gradient)
        return config


def stage_scales(scales: Sequence[int], num_stages: int) -> list[int]:
    """The image size each stage reads: stage t (1-based) reads ``scales[t - 1]``;
    stages beyond the last scale reuse the finest one."""
    return [scales[min(t, len(scales) - 1)] for t in range(num_stages)]


@keras.saving.register_keras_serializable(package="msrrn_tf")
class MSRRN(LandmarkModelMixin, keras.Model):
    """Multiscale recurrent regression network (Wang et al. 2017).

    A ``common.landmark_model.LandmarkModel`` of family ``"msrrn"``: ``input_sizes``,
    ``margin`` (stored in the model; ``None`` for a model saved before it was, which
    the loaders complete from its run's ``config.json``), ``num_landmarks``,
    ``stage_names`` (``"stage_0"`` .. ``"stage_T"``) and the ``"mean_shape"`` baseline.

    Inputs: a dict ``{f"image_{s}": float32 [N, s, s, 3] in 0..255}`` (extra keys
    are ignored; only the scales the stages read are needed). Outputs: a dict with
    ``"stage_0"`` (S^0), ``"stage_1"`` .. ``"stage_T"`` and ``"landmarks"`` (= S^T),
    all float32 ``[N, L, 2]`` in normalised crop coordinates, also under mixed
    precision.

    Args:
        scales: image sizes, coarse to fine; S^0 reads ``scales[0]``.
        num_stages: T; stage t reads ``scales[t - 1]``.
        num_landmarks: L.
        init: "cnn" (``InitialShapeNetwork``) or "mean_shape" (``MeanShape``).
        patch_size: k of the shape-indexed patches.
        patch_extent: patch side as a fraction of the crop, or ``None`` for k pixels
            at every scale.
        regression_conv_filters: conv widths of the shared regressor.
        regression_kernel_size: conv kernel side of the shared regressor.
        regression_pool_size: max-pool size of the shared regressor.
        regression_fc_units: hidden FC widths of the shared regressor.
        hidden_size: recurrent state size (0 for none).
        init_conv_filters: conv widths of the initial-shape CNN.
        init_kernel_size: conv kernel side of the initial-shape CNN.
        init_fc_units: hidden FC widths of the initial-shape CNN.
        weight_decay: lambda of eq. (5), L2 on every kernel.
        stop_shape_gradient: block gradients through the patch sampling positions.
        init_noise: standard deviation of Gaussian noise added to every coordinate of
            S^0 before the first stage, in training only (0: none); ``"stage_0"``
            stays the unperturbed S^0.
        flip_test: at inference, also predict the mirrored face and average the two
            (``MirrorBatch`` / ``MergeMirrored``; training is unchanged). Needs the
            68-point iBUG layout's flip permutation (``common.schemes``). Adds the
            output ``"confidence"`` ``[N]``: how well the two shapes of the last
            stage agree (``common.confidence``).
        bias_correction: give every output a ``ShapeOffset`` (zeros until
            ``set_shape_offsets``). The offsets only change what the model reports:
            each stage still starts from the previous stage's uncorrected shape, as
            in training. ``False`` (the default here, for models saved before the
            option existed) builds no offset weights.
        margin: the crop margin of ``common.geometry.preprocess_faces`` the model is
            trained with (``MSRRNConfig.margin``); ``None``: unknown (a model saved
            before the margin was stored).
        dtype: dtype policy of the layers (e.g. "mixed_float16"), ``None`` for the
            global policy.
        **kwargs: ``keras.Model`` arguments (name, trainable).
    """

    family = "msrrn"

    def __init__(self, *, scales: Sequence[int] = (50, 100, 200), num_stages: int = 3,
                 num_landmarks: int = 68, init: str = "cnn", patch_size: int = 12,
                 patch_extent: float | None = None,
                 regression_conv_filters: Sequence[int] = (16, 32),
                 regression_kernel_size: int = 3, regression_pool_size: int = 2,
                 regression_fc_units: Sequence[int] = (256,), hidden_size: int = 0,
                 init_conv_filters: Sequence[int] = (16, 32, 64), init_kernel_size: int = 3,
                 init_fc_units: Sequence[int] = (256,), weight_decay: float = 0.0,
                 stop_shape_gradient: bool = True, init_noise: float = 0.0,
                 bias_correction: bool = False, flip_test: bool = False,
                 margin: float | None = None, dtype=None, **kwargs):
        if init_noise < 0:
            raise ValueError(f"init_noise must be >= 0, got {init_noise}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        scales = tuple(int(s) for s in scales)
        per_stage = stage_scales(scales, num_stages)
        used = sorted({scales[0], *per_stage})

        # === Inputs: a list of named inputs, so a dict with extra keys is accepted ===
        inputs = [keras.Input((s, s, 3), name=f"image_{s}", dtype="float32") for s in used]
        by_size = dict(zip(used, inputs))
        normalise = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype=dtype,
                                           name="normalise")
        images = {s: normalise(x) for s, x in by_size.items()}
        merge = None
        if flip_test:
            from common.schemes import scheme_for  # only the permutation

            try:
                permutation = scheme_for(num_landmarks).flip_permutation
            except ValueError as error:
                raise ValueError(f"flip_test needs a landmark layout with a mirror "
                                 f"permutation: {error}; build with flip_test=False") from None
            mirror = MirrorBatch(dtype=dtype, name="mirror_batch")
            images = {s: mirror(x) for s, x in images.items()}
            merge = MergeMirrored(permutation, name="merge_mirrored")

        # === Initial shape S^0 on the coarsest scale ===
        if init == "cnn":
            initial = InitialShapeNetwork(num_landmarks, init_conv_filters, init_kernel_size,
                                          init_fc_units, weight_decay, dtype=dtype,
                                          name="initial_shape")
        else:
            initial = MeanShape(num_landmarks, name="initial_shape")
        offsets: list[ShapeOffset] = []

        def report(raw, t: int):
            # The output of stage t as reported: the shape itself (averaged with the
            # mirrored face's under flip_test), plus its fitted bias correction. The
            # next stage still reads ``raw``.
            if merge is not None:
                raw = merge(raw)
            if not bias_correction:
                return raw
            offsets.append(ShapeOffset(num_landmarks, name=f"stage_{t}"))
            return offsets[-1](raw)

        suffix = "_raw" if bias_correction else ""
        shape = keras.layers.Activation("linear", dtype="float32", name=f"stage_0{suffix}")(
            initial(images[scales[0]]))
        outputs = {"stage_0": report(shape, 0)}
        if init_noise > 0:
            # Training only: the stages start from a perturbed S^0, as they will
            # from the initial CNN's larger errors on unseen faces.
            shape = keras.layers.GaussianNoise(init_noise, dtype="float32",
                                               name="init_noise")(shape)

        # === T stages of one shared regressor, coarse to fine ===
        regressor = RecurrentRegressionNetwork(
            num_landmarks, patch_size, patch_extent, regression_conv_filters,
            regression_kernel_size, regression_pool_size, regression_fc_units, hidden_size,
            weight_decay, stop_shape_gradient, dtype=dtype, name="recurrent_regression")
        state = None
        for t, size in enumerate(per_stage, start=1):
            if hidden_size:
                delta, state = regressor(images[size], shape, state)
            else:
                delta = regressor(images[size], shape)
            shape = keras.layers.Add(dtype="float32", name=f"stage_{t}{suffix}")([shape, delta])
            outputs[f"stage_{t}"] = report(shape, t)
        outputs["landmarks"] = keras.layers.Activation(
            "linear", dtype="float32", name="landmarks")(outputs[f"stage_{num_stages}"])
        if merge is not None:
            # The agreement of the last stage's two shapes (face and mirror image).
            pair = MirroredPair(permutation, name="mirrored_pair")(shape)
            outputs["confidence"] = ShapeAgreementConfidence(name="confidence")(pair)

        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.scales = scales
        self.num_stages = int(num_stages)
        self.num_landmarks = int(num_landmarks)
        self.init = init
        self.patch_size = int(patch_size)
        self.patch_extent = None if patch_extent is None else float(patch_extent)
        self.regression_conv_filters = tuple(regression_conv_filters)
        self.regression_kernel_size = int(regression_kernel_size)
        self.regression_pool_size = int(regression_pool_size)
        self.regression_fc_units = tuple(regression_fc_units)
        self.hidden_size = int(hidden_size)
        self.init_conv_filters = tuple(init_conv_filters)
        self.init_kernel_size = int(init_kernel_size)
        self.init_fc_units = tuple(init_fc_units)
        self.weight_decay = float(weight_decay)
        self.stop_shape_gradient = bool(stop_shape_gradient)
        self.init_noise = float(init_noise)
        self.bias_correction = bool(bias_correction)
        self.flip_test = bool(flip_test)
        self.margin = None if margin is None else float(margin)
        self.stage_names = tuple(f"stage_{t}" for t in range(self.num_stages + 1))
        self.shape_offsets = offsets
        self._layer_dtype = dtype
        self.input_sizes = tuple(used)
        self.initial_shape = initial
        self.regressor = regressor

    def set_mean_shape(self, shapes: np.ndarray) -> None:
        """Sets the mean shape S^0 starts from (normalised crop coordinates).

        Args:
            shapes: ``[L, 2]`` mean shape or ``[N, L, 2]`` training shapes to average.
        """
        self.initial_shape.set_mean_shape(shapes)

    def set_shape_offsets(self, offsets) -> None:
        """Sets the bias correction of every output (see ``ShapeOffset``).

        Args:
            offsets: ``[T + 1, L, 2]`` offsets of ``stage_0`` .. ``stage_T`` in
                normalised crop coordinates (``landmarks`` is ``stage_T``).

        Raises:
            ValueError: the model was built without ``bias_correction``, or the
                shape is wrong.
        """
        if not self.bias_correction:
            raise ValueError("this MSRRN was built with bias_correction=False")
        offsets = np.asarray(offsets, np.float32)
        expected = (self.num_stages + 1, self.num_landmarks, 2)
        if offsets.shape != expected:
            raise ValueError(f"offsets must be {list(expected)}, got {list(offsets.shape)}")
        for layer, offset in zip(self.shape_offsets, offsets):
            layer.set_offset(offset)

    def copy_weights_from(self, other: MSRRN) -> None:
        """Copies every weight of this model from ``other``, matched by path.

        The trainable weights (S^0 network and the one shared regressor) and the
        mean shape are the same for every T, so a model with fewer stages takes a
        longer one's weights (the stage ablation); the bias correction of each
        stage it has is copied too.

        Args:
            other: an MSRRN of the same widths, with at least as many stages.

        Raises:
            ValueError: a weight of this model has no counterpart in ``other``.
        """
        source = {v.path: v for v in other.weights}
        missing = [v.path for v in self.weights
                   if v.path not in source or tuple(source[v.path].shape) != tuple(v.shape)]
        if missing:
            raise ValueError(f"{other.name!r} has no weight matching {missing[:5]}")
        for variable in self.weights:
            variable.assign(source[variable.path])

    def with_flip_test(self, enabled: bool | None) -> MSRRN:
        """This model with the flip test switched on or off, same weights.

        The flip test only acts at inference, so a model trained with it can be
        served without it (faster: the mirrored face is not run) and vice versa. The
        bias correction is kept as fitted: it was fitted on the outputs of the model
        as trained (averaged ones when the flip test was on); the README reports what
        switching costs on real faces.

        Args:
            enabled: whether the returned model runs the flip test; ``None``: as this
                one does (callers pass an optional flag straight through).

        Returns:
            ``self`` when it already does as asked, else a new model (weights copied).

        Raises:
            ValueError: ``enabled`` for a landmark layout without a mirror permutation.
        """
        if enabled is None or bool(enabled) == self.flip_test:
            return self
        config = self.get_config()
        config.update(flip_test=bool(enabled), name=self.name)
        clone = type(self).from_config(config)
        clone.copy_weights_from(self)
        return clone

    def with_inference_options(self, flip_test: bool | None = None,
                               **options) -> MSRRN:
        """``with_flip_test(flip_test)``: the inference options of the
        ``common.landmark_model`` contract (MSRRN has only the flip test).

        Raises:
            ValueError: an option MSRRN does not have (e.g. ``confidence_source``).
        """
        unknown = sorted(k for k, v in options.items() if v is not None)
        if unknown:
            raise ValueError(f"MSRRN has no inference option {unknown} (only flip_test)")
        return self.with_flip_test(flip_test)

    def get_shape_offsets(self) -> np.ndarray:
        """The bias correction of ``stage_0`` .. ``stage_T``, ``[T + 1, L, 2]`` (zeros
        for a model without ``bias_correction``)."""
        if not self.bias_correction:
            return np.zeros((self.num_stages + 1, self.num_landmarks, 2), np.float32)
        return np.stack([keras.ops.convert_to_numpy(layer.offset)
                         for layer in self.shape_offsets])

    @property
    def mean_shape(self) -> np.ndarray:
        """The current mean shape, ``[L, 2]``."""
        layer = self.initial_shape
        layer = layer.mean if isinstance(layer, InitialShapeNetwork) else layer
        return keras.ops.convert_to_numpy(layer.mean_shape)

    def baseline_shapes(self) -> dict[str, np.ndarray]:
        """``{"mean_shape": [L, 2]}``: the training mean shape in every crop (the
        "mean shape" row of Table 2)."""
        return {"mean_shape": self.mean_shape}

    def get_config(self) -> dict:
        dtype = self._layer_dtype
        if dtype is not None and not isinstance(dtype, str):
            dtype = keras.dtype_policies.serialize(dtype)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype,
            "scales": list(self.scales),
            "num_stages": self.num_stages,
            "num_landmarks": self.num_landmarks,
            "init": self.init,
            "patch_size": self.patch_size,
            "patch_extent": self.patch_extent,
            "regression_conv_filters": list(self.regression_conv_filters),
            "regression_kernel_size": self.regression_kernel_size,
            "regression_pool_size": self.regression_pool_size,
            "regression_fc_units": list(self.regression_fc_units),
            "hidden_size": self.hidden_size,
            "init_conv_filters": list(self.init_conv_filters),
            "init_kernel_size": self.init_kernel_size,
            "init_fc_units": list(self.init_fc_units),
            "weight_decay": self.weight_decay,
            "stop_shape_gradient": self.stop_shape_gradient,
            "init_noise": self.init_noise,
            "bias_correction": self.bias_correction,
            "flip_test": self.flip_test,
            "margin": self.margin,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> MSRRN:
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def build_msrrn(config: MSRRNConfig, *, num_stages: int | None = None, dtype=None,
                name: str = "msrrn") -> MSRRN:
    """Builds MSRRN from a config.

    Args:
        config: the hyper-parameters.
        num_stages: overrides ``config.num_stages`` (the stage ablation: 1, 2, 3);
            the trainable weights are the same in number, names and shapes for
            every value.
        dtype: dtype policy for the layers, ``None`` for the global policy.
        name: model name.

    Returns:
        The (built) model.
    """
    return MSRRN(
        scales=config.scales,
        num_stages=config.num_stages if num_stages is None else num_stages,
        num_landmarks=config.num_landmarks,
        init=config.init,
        patch_size=config.patch_size,
        patch_extent=config.patch_extent,
        regression_conv_filters=config.regression_conv_filters,
        regression_kernel_size=config.regression_kernel_size,
        regression_pool_size=config.regression_pool_size,
        regression_fc_units=config.regression_fc_units,
        hidden_size=config.hidden_size,
        init_conv_filters=config.init_conv_filters,
        init_kernel_size=config.init_kernel_size,
        init_fc_units=config.init_fc_units,
        weight_decay=config.weight_decay,
        stop_shape_gradient=config.stop_shape_gradient,
        init_noise=config.init_noise,
        bias_correction=config.bias_correction,
        flip_test=config.flip_test,
        margin=config.margin,
        dtype=dtype,
        name=name,
    )


__all__ = [
    "MSRRN",
    "InitialShapeNetwork",
    "MeanShape",
    "MergeMirrored",
    "MirrorBatch",
    "RecurrentRegressionNetwork",
    "ShapeOffset",
    "build_msrrn",
    "schematic_mean_shape",
    "stage_scales",
]
