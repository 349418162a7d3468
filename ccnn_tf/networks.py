"""The lightweight CNNs of CCNN and how a stage runs them (the paper's section 3.1).

* ``build_lightweight_cnn`` is the one builder of all 23 networks (conv+ReLU+max-pool
  blocks, a hidden fully connected layer with dropout, a linear output layer), each
  starting with the per-crop standardisation (``PerImageStandardization``).
* ``run_networks`` runs the networks of a stage as one graph: each layer of its
  networks is one grouped convolution (the fully connected layers are 1x1 ones),
  instead of one small op per network and layer; ``TraceOptions`` (per stage,
  ``CCNNCascade.trace_options``) sets how the stages trace them (for export).

Part of ``ccnn_tf.model``, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from ccnn_tf.config import CCNNConfig

_PACKAGE = "ccnn_tf"
_DEFAULTS = CCNNConfig()


def standardize(x: tf.Tensor, axes: Sequence[int]) -> tf.Tensor:
    """Per-image standardisation (section 4.1) over ``axes``.

    Args:
        x: float tensor whose ``axes`` have static sizes.
        axes: the axes of one image (e.g. height, width, channels).

    Returns:
        ``(x - mean) / max(std, 1 / sqrt(count))``, mean and standard deviation over
        ``axes``, ``count`` the number of values they hold.
    """
    mean = ops.mean(x, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    count = math.prod(int(x.shape[a]) for a in axes)
    std = ops.maximum(ops.sqrt(variance), 1.0 / math.sqrt(count))
    return (x - mean) / std


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerImageStandardization(layers.Layer):
    """Subtracts each image's mean and divides by its standard deviation (section 4.1).

    The paper writes "minus the mean and dividing the variance"; like
    ``tf.image.per_image_standardization`` we divide by the standard deviation, floored
    at ``1 / sqrt(number of values)`` so that flat images stay finite.
    """

    def call(self, images: tf.Tensor) -> tf.Tensor:
        x = ops.cast(images, self.compute_dtype)
        return standardize(x, tuple(range(1, len(x.shape))))

    def compute_output_shape(self, input_shape):
        return input_shape


def build_lightweight_cnn(input_size: int, num_outputs: int, conv_filters: Sequence[int],
                          kernel_sizes: Sequence[int], fc_units: int,
                          dropout: float = _DEFAULTS.dropout,
                          weight_decay: float = _DEFAULTS.weight_decay,
                          input_channels: int = 3, output_bias: float = 0.0,
                          name: str = "lightweight_cnn") -> keras.Model:
    """Builds one CCNN network; the single builder of all 23 (sections 3.2-3.3).

    Layers: per-image standardisation, then per entry of ``conv_filters`` a valid
    convolution with ReLU and a 2x2 max-pooling, then flatten, a fully connected layer
    with ReLU and dropout, and a linear fully connected output layer. Kernels use the
    Xavier (Glorot uniform) initialisation and an L2 penalty (formula 6); biases start
    at zero and are not penalised.

    Args:
        input_size: side of the square input.
        num_outputs: number of outputs (2 per predicted point).
        conv_filters: channels of each convolution.
        kernel_sizes: kernel side of each convolution (same length as conv_filters).
        fc_units: width of the hidden fully connected layer.
        dropout: dropout rate after the hidden fully connected layer (section 3.3).
        weight_decay: L2 coefficient; the loss gets ``weight_decay * sum(W ** 2)`` for
            every kernel. 0 disables it.
        input_channels: channels of the input (3, RGB).
        output_bias: initial bias of the output layer. The stages use 0.5, so that an
            untrained network predicts the centre of its window (and an untrained
            refinement stage returns roughly its anchors).
        name: model name (e.g. "F1", "LE21").

    Returns:
        A functional ``keras.Model`` mapping float ``[N, input_size, input_size,
        input_channels]`` (any scale; it standardises) to ``[N, num_outputs]``.
    """
    if len(conv_filters) != len(kernel_sizes):
        raise ValueError("conv_filters and kernel_sizes must have the same length")
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    common = {"kernel_initializer": "glorot_uniform", "bias_initializer": "zeros",
              "kernel_regularizer": regularizer}
    inputs = keras.Input((input_size, input_size, input_channels), name=f"{name}_input")
    x = PerImageStandardization(name=f"{name}_standardize")(inputs)
    for i, (filters, kernel) in enumerate(zip(conv_filters, kernel_sizes), start=1):
        x = layers.Conv2D(filters, kernel, padding="valid", activation="relu",
                          name=f"{name}_conv{i}", **common)(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool{i}")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(fc_units, activation="relu", name=f"{name}_fc1", **common)(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    outputs = layers.Dense(num_outputs, name=f"{name}_fc2", **{
        **common, "bias_initializer": keras.initializers.Constant(output_bias)})(x)
    return keras.Model(inputs, outputs, name=name)


@dataclasses.dataclass(frozen=True)
class TraceOptions:
    """How a stage traces its networks and crops its windows (an export's choice).

    Each stage layer holds its own (``stage.trace_options``); ``CCNNCascade.
    trace_options(...)`` changes them for one cascade within a context, which is how
    the export hooks (``ccnn_tf.export.export_hooks``) trace the serving graph and the
    TFLite graph. No module state: other cascades and traces are unaffected.

    Attributes:
        frozen_weights: read the networks' weights as constants. A function traced
            with it (e.g. an export's serving signature) then holds the weights of
            that moment instead of reading the variables, so that graph optimisation
            builds the grouped kernels of ``run_networks`` once (and oneDNN keeps
            their reordered copies) instead of concatenating the weights of a stage's
            networks on every call. Later weight changes do not reach such a
            function: for export only, never during training.
        grouped: one grouped convolution per layer and stage (default), or one
            convolution per network (what TFLite's builtin kernels run fast: they
            have grouped convolutions only on their slow reference path, and the
            per-network weights quantise like the networks' own).
        crop_windows: the window crop, ``crop_windows(images, windows, size)``;
            ``None``: ``ccnn_tf.windows.crop_windows`` (``tf.image.crop_and_resize``).
            The TFLite trace uses ``ccnn_tf.export.crop_windows_matmul`` (builtin ops).
    """

    frozen_weights: bool = False
    grouped: bool = True
    crop_windows: Callable[..., Any] | None = None


DEFAULT_TRACE_OPTIONS = TraceOptions()


@functools.cache
def grouped_convolutions_supported(gradient: bool = False, bias_add: bool = True) -> bool:
    """Whether this process's TensorFlow runs a grouped convolution in a graph on the
    default device, followed by its bias and a ReLU (and, with ``gradient``, its
    gradient).

    TensorFlow's CPU kernels run the fused convolution + ``BiasAdd`` that graph
    optimisation makes of a grouped convolution, and the gradient of one, only through
    oneDNN, which TensorFlow enables by default on x86 CPUs with AVX-512 (e.g. Intel
    Xeon), not on others (measured with TF 2.21 on an AVX2-only AMD EPYC: "Fused conv
    implementation does not support grouped convolutions for now", "Gradients for
    grouped convolutions are not supported on CPU"; ``TF_ENABLE_ONEDNN_OPTS=1`` turns
    oneDNN on there). A bias added with a plain add (``bias_add=False``) is not fused
    and runs everywhere, but slower than the networks one by one. :func:`run_networks`
    therefore groups only where the fused form (``bias_add=True``) runs, and convolves
    network by network elsewhere (the same function). Probed once per process, eagerly.
    """
    with tf.init_scope():
        x = tf.ones([1, 9, 9, 4])
        kernel = tf.ones([3, 3, 2, 4])

        @tf.function(autograph=False)  # arguments, not constants: nothing folds away
        def probe(x, kernel, bias):
            y = tf.nn.conv2d(x, kernel, 1, "VALID")
            y = tf.nn.relu(tf.nn.bias_add(y, bias) if bias_add else y + bias)
            # tf.gradients, not a GradientTape: init_scope pauses tape recording.
            return [y, *tf.gradients(tf.reduce_sum(y), [x, kernel])] if gradient else [y]

        try:
            probe(x, kernel, tf.zeros([4]))
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError,
                tf.errors.NotFoundError):
            return False
    return True


def _layers_of(network: keras.Model, kind: type) -> list[layers.Layer]:
    return [layer for layer in network.layers if type(layer) is kind]


def run_networks(networks: Sequence[keras.Model], crops: tf.Tensor, *, training: bool = False,
                 dropout: float = 0.0, seed: keras.random.SeedGenerator | None = None,
                 compute_dtype: str | None = None, grouped: bool = True,
                 frozen_weights: bool = False) -> tf.Tensor:
    """Runs K networks of one structure, each on its own input, as one graph.

    The same function as calling ``networks[k](crops[:, k])`` for every ``k``, but
    every layer of the K networks is one op: each convolution is one grouped
    convolution (network k's kernel on channel group k), and so is each fully
    connected layer (a grouped 1x1 convolution). Each network keeps its own weights
    (read from its layers at call time, so the variables, their names and the saved
    files are those of the K separate networks); only the op count changes, which is
    what most of the small CCNN networks' time went to (hundreds of tiny ops per
    face). With ``grouped=False``, under mixed precision, or where TensorFlow has no
    grouped convolution (:func:`grouped_convolutions_supported`) each layer is one
    convolution per network instead (same results).

    Args:
        networks: K networks built by ``build_lightweight_cnn`` with the same input
            size, convolutions and hidden width (output widths may differ).
        crops: float ``[N, K, S, S, C]``, 0..255 (any scale; each crop is
            standardised like ``PerImageStandardization``).
        training: apply dropout.
        dropout: dropout rate after the hidden fully connected layer.
        seed: seed generator of the dropout.
        compute_dtype: dtype of the convolutions and products; default: the compute
            dtype the networks were built with (``"float16"`` under the
            ``mixed_float16`` policy). The standardisation runs in float32.
        grouped: use grouped convolutions (when the dtype allows).
        frozen_weights: read the weights as constants (``TraceOptions``).

    Returns:
        float32 ``[N, K, max outputs]``; network k's outputs are
        ``[:, k, :outputs_k]`` (the rest is zero).
    """
    count = len(networks)
    convs = [_layers_of(net, layers.Conv2D) for net in networks]
    pools = [_layers_of(net, layers.MaxPooling2D) for net in networks]
    dense = [_layers_of(net, layers.Dense) for net in networks]
    widths = [d[-1].units for d in dense]
    width = max(widths)
    compute_dtype = compute_dtype or convs[0][0].compute_dtype

    def weight(variable: Any) -> tf.Tensor:
        if frozen_weights:
            with tf.init_scope():  # read the current value eagerly, also while tracing
                value = keras.ops.convert_to_numpy(variable)
            return tf.constant(value, compute_dtype)
        return tf.cast(variable, compute_dtype)

    def padded(variable: Any, outputs: int) -> tf.Tensor:  # zero outputs up to width
        value = weight(variable)
        if outputs == width:
            return value
        return tf.pad(value, [[0, 0]] * (len(value.shape) - 1) + [[0, width - outputs]])

    # Activations: [one tensor holding network k in channel group k] when grouped, else
    # one tensor per network. TensorFlow's CPU kernels have no float16 gradient of a
    # grouped convolution ("Gradients for grouped convolutions are not supported on
    # CPU"), so under mixed precision every network convolves separately.
    # Grouped only where the fused grouped kernel runs (oneDNN): TensorFlow's own CPU
    # kernel runs a grouped convolution with a plain add, but slower than the networks
    # one by one (CCNN's paper cascade, frozen weights, TF 2.21 on an AMD EPYC without
    # oneDNN: 361 against 558 faces/s at batch 64, 6.3 against 3.8 ms at batch 1).
    # A function traced with frozen weights is an export, served on CPUs this process
    # cannot see: its grouped convolutions add their biases with a plain add, which no
    # graph optimisation fuses into a kernel without groups (a CPU without oneDNN has
    # none), so it still serves there. Training and evaluation keep BiasAdd (fused).
    portable = frozen_weights
    grouped = (grouped and compute_dtype != "float16"
               and grouped_convolutions_supported(gradient=training))

    def conv(xs: list[tf.Tensor], kernels: Sequence[tf.Tensor], biases: Sequence[tf.Tensor],
             strides: Any = 1, padding: str = "VALID") -> list[tf.Tensor]:
        if grouped:
            y = tf.nn.conv2d(xs[0], tf.concat(list(kernels), axis=-1), strides, padding)
            bias = tf.concat(list(biases), axis=-1)
            return [y + bias if portable else tf.nn.bias_add(y, bias)]
        return [tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides, padding), bias)
                for x, kernel, bias in zip(xs, kernels, biases)]

    x = standardize(tf.cast(crops, tf.float32), (2, 3, 4))
    _, _, side, _, channels = x.shape
    if grouped:  # [N, K, S, S, C] -> [N, S, S, K * C]
        x = tf.reshape(tf.transpose(x, [0, 2, 3, 1, 4]), [-1, side, side, count * channels])
        xs = [tf.cast(x, compute_dtype)]
    else:
        xs = [tf.cast(x, compute_dtype) for x in tf.unstack(x, count, axis=1)]
    for i, (layer, pool) in enumerate(zip(convs[0], pools[0])):
        xs = conv(xs, [weight(c[i].kernel) for c in convs], [weight(c[i].bias) for c in convs],
                  layer.strides, layer.padding.upper())
        xs = [tf.nn.max_pool2d(tf.nn.relu(x), pool.pool_size, pool.strides,
                               pool.padding.upper()) for x in xs]
    # Each network's Flatten (h, w, F order) as the channels of a 1x1 image, so that
    # the fully connected layers are (grouped) 1x1 convolutions.
    _, h, w, features = xs[0].shape
    if grouped:  # [N, h, w, K * F] -> [N, 1, 1, K * h * w * F]
        x = tf.reshape(xs[0], [-1, h, w, count, features // count])
        xs = [tf.reshape(tf.transpose(x, [0, 3, 1, 2, 4]), [-1, 1, 1, h * w * features])]
    else:
        xs = [tf.reshape(x, [-1, 1, 1, h * w * features]) for x in xs]
    xs = conv(xs, [weight(d[0].kernel)[None, None] for d in dense],
              [weight(d[0].bias) for d in dense])
    xs = [tf.nn.relu(x) for x in xs]
    if training and dropout > 0:
        xs = [keras.random.dropout(x, dropout, seed=seed) for x in xs]
    if grouped:
        xs = conv(xs, [padded(d[-1].kernel, o)[None, None] for d, o in zip(dense, widths)],
                  [padded(d[-1].bias, o) for d, o in zip(dense, widths)])
        outputs = tf.reshape(xs[0], [-1, count, width])
    else:
        xs = conv(xs, [weight(d[-1].kernel)[None, None] for d in dense],
                  [weight(d[-1].bias) for d in dense])
        outputs = tf.stack([tf.pad(tf.reshape(x, [-1, o]), [[0, 0], [0, width - o]])
                            for x, o in zip(xs, widths)], axis=1)
    return tf.cast(outputs, tf.float32)
