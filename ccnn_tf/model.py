"""The CCNN cascade: 23 lightweight CNNs in three groups (the paper's sections 3.1-3.3).

* ``build_lightweight_cnn`` (``ccnn_tf.networks``, re-exported here) is the one
  builder of all 23 networks (conv+ReLU+max-pool blocks, a hidden fully connected
  layer with dropout, a linear output layer).
* ``CCNNStage1`` holds the three stage-1 networks F1, EN1 and NM1: each sees a region
  of the face box and predicts its points relative to it (formula 9); duplicated points
  are averaged (formula 4).
* ``CCNNRefineStage`` holds the ten networks of stage 2 or stage 3 (the same class with
  other window sizes): two windows per point of the previous stage (formula 5), each
  network predicts its point relative to its window, the two estimates of a point are
  averaged.
* ``CCNNCascade`` chains them: a Keras functional model taking
  ``{"image_{S}": [N, S, S, 3]}`` (0..255) and returning ``"landmarks"`` and
  ``"stage_1"`` ... ``"stage_{num_stages}"``, all ``[N, 5, 2]`` in normalised crop
  coordinates (docs/DESIGN.md).

Training is "parallel within groups and serial between groups" (section 3.3): a stage
is one layer, so one step updates its whole group; ``CCNNCascade.train_only_stage(k)``
freezes every other stage. A frozen stage also runs in inference mode (no dropout, no
shake), since its output is then only the anchor of the next stage.

The anchors of a refinement stage are constants (the windows move with them, they are
not differentiated), so a loss on ``"landmarks"`` trains only the last stage; train
stage k with a loss on ``"stage_k"`` (or ``"landmarks"`` of a k-stage cascade) and the
other stages frozen, or put a loss on every stage output. The ``"stage_k_networks"``
outputs with ``network_targets`` give each CNN its own loss, as the paper trains them.

The shake (section 3.1.2) is applied inside the stages, to the windows, only in
training mode. The stages crop with ``tf.image.crop_and_resize``, which XLA cannot
compile, so they declare ``supports_jit = False`` (``jit_compile="auto"`` then stays off).

Speed. A stage runs its networks as one graph (``run_networks``): each layer of its
networks is one grouped convolution (the fully connected layers are 1x1 ones), instead
of one small op per network and layer. The weights stay those of the separate networks
(same variables, names and saved files); exports trace with
``CCNNCascade.trace_options(frozen_weights=True)`` (the cascade's export hooks) so
that the grouped kernels are built once. On a CPU this took the exported cascade for
one face from ~6 to ~2.5 ms.

Precision. Under the ``mixed_float16`` policy the networks compute in float16 and
keep float32 variables; images, window geometry, crops, the per-crop standardisation
and every output stay float32 (the stages take float32 inputs, ``input_dtype``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ccnn_tf import windows as win
from ccnn_tf.config import CCNNConfig
from ccnn_tf.networks import (  # noqa: F401 (re-exported: ccnn_tf.model's public names)
    DEFAULT_TRACE_OPTIONS,
    PerImageStandardization,
    TraceOptions,
    build_lightweight_cnn,
    run_networks,
    standardize,
)
from common.confidence import ShapeAgreementConfidence
from common.landmark_model import LandmarkModelMixin
from common.mirror import MergeMirrored, MirrorBatch, MirroredPair, PlainHalf
from common.schemes import CUHK_5, scheme_for

_PACKAGE = "ccnn_tf"
_DEFAULTS = CCNNConfig()
# Initial output bias of the stage networks: the centre of the window, in formula-9 units.
_WINDOW_CENTRE = 0.5

CONFIDENCE_SOURCES = ("flip", "pairs")
"""What CCNN's ``"confidence"`` output compares (``CCNNConfig.confidence_source``):
``"flip"``, the last stage's points on the face and on its mirror image (mapped back);
``"pairs"``, the last stage's two networks per point."""


def averaging_matrix(point_indices: Sequence[int], num_points: int) -> np.ndarray:
    """The matrix of formula 4: ``P = (1/N) sum_i P_i`` over a point's N estimates.

    Args:
        point_indices: for each estimate, the landmark index it estimates.
        num_points: number of landmarks.

    Returns:
        float32 ``[num_points, len(point_indices)]`` with ``1 / N_p`` where estimate
        ``j`` is of point ``p``.

    Raises:
        ValueError: when some landmark has no estimate.
    """
    matrix = np.zeros((num_points, len(point_indices)), np.float32)
    matrix[np.asarray(point_indices), np.arange(len(point_indices))] = 1.0
    counts = matrix.sum(axis=1, keepdims=True)
    if np.any(counts == 0):
        raise ValueError(f"landmarks {np.flatnonzero(counts[:, 0] == 0).tolist()} have no "
                         "estimate")
    return matrix / counts


def average_duplicate_points(points: tf.Tensor, point_indices: Sequence[int],
                             num_points: int) -> tf.Tensor:
    """Averages the estimates of each landmark (formula 4).

    Args:
        points: float ``[N, J, 2]`` estimates.
        point_indices: ``[J]`` landmark index of each estimate.
        num_points: number of landmarks.

    Returns:
        float32 ``[N, num_points, 2]``.
    """
    matrix = tf.constant(averaging_matrix(point_indices, num_points))
    return tf.einsum("pj,njc->npc", matrix, tf.cast(points, tf.float32))


def point_abbreviation(point_name: str) -> str:
    """"left_eye" -> "LE", "nose" -> "N" (the paper's network names, section 3.2)."""
    return "".join(word[0].upper() for word in point_name.split("_"))


def refine_network_names(stage: int, num_points: int = CUHK_5.num_points,
                         windows_per_point: int = 2) -> list[str]:
    """Names of the networks of a refinement stage: LE21, LE22, RE21, ... (section 3.2)."""
    names = scheme_for(num_points).point_names
    return [f"{point_abbreviation(n)}{stage}{j + 1}" for n in names
            for j in range(windows_per_point)]


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CCNNStage1(layers.Layer):
    """Stage 1: F1, EN1 and NM1 on regions of the face box (section 3.1.1).

    Each network sees its region (cropped from the model input and resized to
    ``input_size``), predicts its points relative to the region (formula 9), and the
    estimates of a point are averaged (formula 4). With ``use_windows=False``
    (Experiment 2, "windows-") each network sees the whole input and predicts crop
    coordinates directly (absolute positioning), and there is no shake.

    Call: ``points, estimates = stage(images, training=...)`` with images float
    ``[N, S, S, 3]`` (0..255); ``points`` ``[N, num_points, 2]`` and ``estimates``
    ``[N, J, 2]`` (every network's points, in crop coordinates, network by network;
    ``estimate_point_indices`` says which landmark each is).

    Args:
        input_size: side of the network inputs.
        point_indices: per network, the landmark indices it predicts.
        regions: per network, its region as (l, t, r, b) fractions of the face box.
        network_names: per network, its name.
        num_points: number of landmarks.
        conv_filters, kernel_sizes, fc_units, dropout, weight_decay: the networks'
            structure (``build_lightweight_cnn``).
        margin: crop margin of the model input (fraction of the face box per side).
        shake_stddev: training-time shake of the regions, in face-box units.
        use_windows: relative ("windows+", True) or absolute ("windows-") positioning.
        seed: seed of the shake generator.
    """

    def __init__(self, input_size: int, point_indices: Sequence[Sequence[int]],
                 regions: Sequence[Sequence[float]], network_names: Sequence[str],
                 num_points: int, conv_filters: Sequence[int], kernel_sizes: Sequence[int],
                 fc_units: int, dropout: float, weight_decay: float, margin: float,
                 shake_stddev: float = 0.0, use_windows: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.point_indices = _as_tuples(point_indices)
        self.regions = _as_tuples(regions)
        self.network_names = tuple(network_names)
        self.num_points = int(num_points)
        self.conv_filters = tuple(conv_filters)
        self.kernel_sizes = tuple(kernel_sizes)
        self.fc_units = int(fc_units)
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.margin = float(margin)
        self.shake_stddev = float(shake_stddev)
        self.use_windows = bool(use_windows)
        self.seed = seed
        if not len(self.point_indices) == len(self.regions) == len(self.network_names):
            raise ValueError("point_indices, regions and network_names differ in length")
        self.estimate_point_indices = tuple(i for idx in self.point_indices for i in idx)
        self._averaging = averaging_matrix(self.estimate_point_indices, self.num_points)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # XLA has no CropAndResize kernel
        self.trace_options = DEFAULT_TRACE_OPTIONS  # an export's (CCNNCascade.trace_options)
        self.networks = [
            build_lightweight_cnn(self.input_size, 2 * len(idx), self.conv_filters,
                                  self.kernel_sizes, self.fc_units, self.dropout,
                                  self.weight_decay, output_bias=_WINDOW_CENTRE,
                                  name=net_name)
            for idx, net_name in zip(self.point_indices, self.network_names)]

    def build(self, input_shape):
        del input_shape  # the networks are built on construction

    @property
    def input_dtype(self) -> str:
        """Images and anchors stay float32 under any policy: the window geometry and
        crops are float32, only the networks compute in the policy's dtype."""
        return "float32"

    def region_windows(self) -> tf.Tensor:
        """The networks' input windows ``[R, 4]`` in crop coordinates (before shake)."""
        if not self.use_windows:
            return tf.constant([[0.0, 0.0, 1.0, 1.0]] * len(self.networks))
        return win.region_boxes(self.regions, self.margin)

    def windows(self, batch_size: tf.Tensor | int, training: bool = False) -> tf.Tensor:
        """The windows ``[N, R, 4]`` the networks see, shaken when training."""
        boxes = tf.tile(self.region_windows()[None], [batch_size, 1, 1])
        if training and self.use_windows and self.shake_stddev > 0:
            boxes = win.shake(boxes, self.shake_stddev * win.face_box_scale(self.margin),
                              self.seed_generator)
        return boxes

    def call(self, images, training=None):
        training = bool(training) and self.trainable
        windows = self.windows(tf.shape(images)[0], training)
        trace = self.trace_options
        crops = (trace.crop_windows or win.crop_windows)(images, windows, self.input_size)
        # Grouped convolutions save hundreds of small ops per call; for training, TF's
        # CPU gradient of stage 1's larger grouped convolutions is slower than that
        # of separate ones (measured: ~20 % per step), unlike the refinement stages'.
        outputs = run_networks(self.networks, crops, training=training,
                               dropout=self.dropout, seed=self.seed_generator,
                               grouped=not training and trace.grouped,
                               frozen_weights=trace.frozen_weights)
        # Network r's outputs are outputs[:, r, :2 * len(point_indices[r])].
        width = outputs.shape[-1]
        columns = [r * width + c for r, indices in enumerate(self.point_indices)
                   for c in range(2 * len(indices))]
        relative = tf.gather(tf.reshape(outputs, [-1, len(self.networks) * width]), columns,
                             axis=1)
        relative = tf.reshape(relative, [-1, len(self.estimate_point_indices), 2])
        network_of_estimate = [r for r, indices in enumerate(self.point_indices)
                               for _ in indices]
        estimates = win.from_window(relative, tf.gather(windows, network_of_estimate, axis=1))
        points = tf.einsum("pj,njc->npc", tf.constant(self._averaging), estimates)
        return points, estimates

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            input_size=self.input_size, point_indices=self.point_indices,
            regions=self.regions, network_names=self.network_names,
            num_points=self.num_points, conv_filters=self.conv_filters,
            kernel_sizes=self.kernel_sizes, fc_units=self.fc_units, dropout=self.dropout,
            weight_decay=self.weight_decay, margin=self.margin,
            shake_stddev=self.shake_stddev, use_windows=self.use_windows, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CCNNRefineStage(layers.Layer):
    """Stage 2 or 3: two windows and two networks per point (sections 3.1.2, 3.1.3).

    The anchors (the previous stage's points) are taken as constants; around each,
    one window per entry of ``half_sizes`` (formula 5), shaken in training (section
    3.1.2), is cropped and resized to ``input_size``; network ``2 p + j`` predicts
    point ``p`` relative to window ``j`` (formula 9); the estimates are mapped back to
    crop coordinates and averaged per point (formula 4).

    Call: ``points, estimates = stage(images, anchors, training=...)`` with images
    float ``[N, S, S, 3]`` (0..255) and anchors ``[N, num_points, 2]``; ``points``
    ``[N, num_points, 2]``, ``estimates`` ``[N, num_points * len(half_sizes), 2]``.

    Args:
        half_sizes: per window of a point, (a, b) half-size fractions of the face box
            width and height, e.g. ((0.16, 0.16), (0.18, 0.18)) for stage 2.
        input_size: side of the window inputs (15).
        num_points: number of landmarks.
        conv_filters, kernel_sizes, fc_units, dropout, weight_decay: the networks'
            structure (``build_lightweight_cnn``).
        margin: crop margin of the model input (fraction of the face box per side).
        shake_stddev: training-time shake of the windows, in face-box units.
        network_names: names of the networks, point-major (default: LE21, LE22, ...
            with ``stage_index``).
        stage_index: the stage number used in the default names.
        seed: seed of the shake generator.
    """

    def __init__(self, half_sizes: Sequence[Sequence[float]], input_size: int,
                 num_points: int, conv_filters: Sequence[int], kernel_sizes: Sequence[int],
                 fc_units: int, dropout: float, weight_decay: float, margin: float,
                 shake_stddev: float = 0.0, network_names: Sequence[str] | None = None,
                 stage_index: int = 2, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.half_sizes = _as_tuples(half_sizes)
        self.input_size = int(input_size)
        self.num_points = int(num_points)
        self.conv_filters = tuple(conv_filters)
        self.kernel_sizes = tuple(kernel_sizes)
        self.fc_units = int(fc_units)
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.margin = float(margin)
        self.shake_stddev = float(shake_stddev)
        self.stage_index = int(stage_index)
        self.seed = seed
        windows_per_point = len(self.half_sizes)
        if network_names is None:
            network_names = refine_network_names(self.stage_index, self.num_points,
                                                 windows_per_point)
        self.network_names = tuple(network_names)
        if len(self.network_names) != self.num_points * windows_per_point:
            raise ValueError("need one network name per point and window")
        self.estimate_point_indices = tuple(p for p in range(self.num_points)
                                            for _ in range(windows_per_point))
        self._averaging = averaging_matrix(self.estimate_point_indices, self.num_points)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # XLA has no CropAndResize kernel
        self.trace_options = DEFAULT_TRACE_OPTIONS  # an export's (CCNNCascade.trace_options)
        self.networks = [
            build_lightweight_cnn(self.input_size, 2, self.conv_filters, self.kernel_sizes,
                                  self.fc_units, self.dropout, self.weight_decay,
                                  output_bias=_WINDOW_CENTRE, name=net_name)
            for net_name in self.network_names]

    def build(self, images_shape, anchors_shape=None):
        del images_shape, anchors_shape  # the networks are built on construction

    @property
    def input_dtype(self) -> str:
        """Images and anchors stay float32 under any policy: the window geometry and
        crops are float32, only the networks compute in the policy's dtype."""
        return "float32"

    def windows(self, anchors: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The windows ``[N, num_points * len(half_sizes), 4]``, point-major, shaken when
        training."""
        anchors = tf.stop_gradient(tf.convert_to_tensor(anchors, tf.float32))
        boxes = tf.stack([win.window_boxes(anchors, a, b, margin=self.margin)
                          for a, b in self.half_sizes], axis=2)  # [N, P, W, 4]
        boxes = tf.reshape(boxes, [-1, self.num_points * len(self.half_sizes), 4])
        if training and self.shake_stddev > 0:
            boxes = win.shake(boxes, self.shake_stddev * win.face_box_scale(self.margin),
                              self.seed_generator)
        return boxes

    def call(self, images, anchors, training=None):
        training = bool(training) and self.trainable
        windows = self.windows(anchors, training)
        trace = self.trace_options
        crops = (trace.crop_windows or win.crop_windows)(images, windows, self.input_size)
        estimates = run_networks(  # [N, K, 2] window-relative
            self.networks, crops, training=training, dropout=self.dropout,
            seed=self.seed_generator, grouped=trace.grouped,
            frozen_weights=trace.frozen_weights)
        estimates = win.from_window(estimates, windows)
        points = tf.einsum("pj,njc->npc", tf.constant(self._averaging), estimates)
        return points, estimates

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            half_sizes=self.half_sizes, input_size=self.input_size,
            num_points=self.num_points, conv_filters=self.conv_filters,
            kernel_sizes=self.kernel_sizes, fc_units=self.fc_units, dropout=self.dropout,
            weight_decay=self.weight_decay, margin=self.margin,
            shake_stddev=self.shake_stddev, network_names=self.network_names,
            stage_index=self.stage_index, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CCNNCascade(LandmarkModelMixin, keras.Model):
    """The CCNN cascade as a functional model (sections 3.1-3.3).

    A ``common.landmark_model.LandmarkModel`` of family ``"ccnn"``: ``input_sizes``
    (``(input_size,)``), ``margin``, ``num_landmarks`` (also readable as ``num_points``,
    the name of cascades saved before, which still load), ``stage_names``
    (``"stage_1"`` ..) and its export hooks (``export_hooks``).

    Inputs: ``{"image_{input_size}": float32 [N, S, S, 3]}`` in 0..255, the face crop
    from ``common.geometry.preprocess_faces`` with ``margin``. Outputs: ``"landmarks"``
    (the last stage's points) and ``"stage_1"`` ... ``"stage_{num_stages}"``, each
    ``[N, num_points, 2]`` normalised crop coordinates; with ``network_outputs`` also
    ``"stage_{k}_networks"``, every network's own estimate ``[N, J, 2]`` (crop
    coordinates; ``stage_layer(k).estimate_point_indices`` names their landmarks), for a
    per-network loss. Also ``"confidence"`` ``[N]`` in [0, 1] (``common.confidence``):
    with ``confidence_source="flip"`` how well the last stage's points on the face and
    on its mirror image agree, with ``"pairs"`` (two or more stages) how well the last
    stage's two networks per point agree.

    Flip test (inference only; training is unchanged and pays nothing): with
    ``flip_test`` or ``confidence_source="flip"`` the whole cascade also runs on the
    mirrored crop, in the same batch (``common.mirror``), its points mapped back with
    the layout's flip permutation. With ``flip_test`` every stage output (and so
    ``"landmarks"``) is the mean of the two shapes; without it they are the plain
    face's, exactly those of a cascade without the mirrored pass. Both switch after
    training (``with_inference_options``); a saved cascade without these fields loads
    with the defaults (``flip_test=False``, ``confidence_source="flip"``).

    Build it from a config with ``build_ccnn``. All arguments are explicit so the model
    serialises through ``get_config``.

    Args:
        input_size: side of the input crop.
        margin: crop margin of the input (fraction of the face box per side).
        num_stages: 1, 2 or 3.
        num_landmarks: number of landmarks (``num_points``: the same, the older name).
        stage1_point_indices, stage1_regions, stage1_network_names, stage1_windows,
        stage1_input_size, stage1_conv_filters, stage1_kernel_sizes, stage1_fc_units:
            stage 1 (``CCNNStage1``).
        refine_input_size, refine_conv_filters, refine_kernel_sizes, refine_fc_units:
            the networks of stages 2 and 3.
        refine_half_sizes: the window half-sizes of stage 2 and of stage 3.
        shake_stddevs: shake of stages 1, 2 and 3 (face-box units).
        dropout, weight_decay: of every network.
        frozen_stages: stages (1-based) whose weights are not trained.
        network_outputs: also output every network's estimates.
        seed: base seed of the shake generators (stage k uses seed + k).
        flip_test: report the mean of the face's and its mirror image's shapes.
        confidence_source: ``"flip"`` or ``"pairs"`` (``CONFIDENCE_SOURCES``).
    """

    family = "ccnn"

    def __init__(self, *, input_size: int, margin: float, num_stages: int,
                 num_landmarks: int | None = None,
                 stage1_point_indices: Sequence[Sequence[int]],
                 stage1_regions: Sequence[Sequence[float]],
                 stage1_network_names: Sequence[str], stage1_windows: bool,
                 stage1_input_size: int, stage1_conv_filters: Sequence[int],
                 stage1_kernel_sizes: Sequence[int], stage1_fc_units: int,
                 refine_input_size: int, refine_conv_filters: Sequence[int],
                 refine_kernel_sizes: Sequence[int], refine_fc_units: int,
                 refine_half_sizes: Sequence[Sequence[Sequence[float]]],
                 shake_stddevs: Sequence[float], dropout: float, weight_decay: float,
                 frozen_stages: Iterable[int] = (), network_outputs: bool = False,
                 seed: int | None = None, flip_test: bool = False,
                 confidence_source: str = "flip", num_points: int | None = None,
                 **kwargs):
        if num_landmarks is None:  # cascades saved before the contract: "num_points"
            num_landmarks = num_points
        elif num_points is not None and int(num_points) != int(num_landmarks):
            raise ValueError(f"num_points {num_points} != num_landmarks {num_landmarks}")
        if num_landmarks is None:
            raise ValueError("CCNNCascade needs num_landmarks")
        if not 1 <= num_stages <= 1 + len(refine_half_sizes):
            raise ValueError(f"num_stages must be in 1..{1 + len(refine_half_sizes)}, "
                             f"got {num_stages}")
        if confidence_source not in CONFIDENCE_SOURCES:
            raise ValueError(f"confidence_source must be one of {CONFIDENCE_SOURCES}, got "
                             f"{confidence_source!r}")
        args = {
            "input_size": int(input_size),
            "margin": float(margin),
            "num_stages": int(num_stages),
            "num_landmarks": int(num_landmarks),
            "stage1_point_indices": _as_tuples(stage1_point_indices),
            "stage1_regions": _as_tuples(stage1_regions),
            "stage1_network_names": tuple(stage1_network_names),
            "stage1_windows": bool(stage1_windows),
            "stage1_input_size": int(stage1_input_size),
            "stage1_conv_filters": tuple(stage1_conv_filters),
            "stage1_kernel_sizes": tuple(stage1_kernel_sizes),
            "stage1_fc_units": int(stage1_fc_units),
            "refine_input_size": int(refine_input_size),
            "refine_conv_filters": tuple(refine_conv_filters),
            "refine_kernel_sizes": tuple(refine_kernel_sizes),
            "refine_fc_units": int(refine_fc_units),
            "refine_half_sizes": _as_tuples(refine_half_sizes),
            "shake_stddevs": tuple(float(s) for s in shake_stddevs),
            "dropout": float(dropout),
            "weight_decay": float(weight_decay),
            "network_outputs": bool(network_outputs),
            "seed": seed,
            "flip_test": bool(flip_test),
            "confidence_source": str(confidence_source),
        }

        def stage_seed(k: int) -> int | None:
            return None if seed is None else seed + k

        # --- Inputs -------------------------------------------------------------
        image_key = f"image_{args['input_size']}"
        inputs = images = keras.Input((input_size, input_size, 3), name=image_key)
        mirrored = args["flip_test"] or args["confidence_source"] == "flip"
        if mirrored:
            permutation = scheme_for(args["num_landmarks"]).flip_permutation
            images = MirrorBatch(dtype="float32", name="mirror_batch")(images)
            # Stage outputs as reported: the mean shape, or the plain face's.
            report = (MergeMirrored(permutation, name="merge_mirrored") if args["flip_test"]
                      else PlainHalf(dtype="float32", name="plain_half"))
            plain = PlainHalf(dtype="float32", name="plain_estimates")
        else:
            report = plain = None

        def reported(values, own=None):
            layer = own if own is not None else report
            return values if layer is None else layer(values)
        # --- Stage 1: global coarse positioning (section 3.1.1) -------------------
        stage1 = CCNNStage1(
            args["stage1_input_size"], args["stage1_point_indices"], args["stage1_regions"],
            args["stage1_network_names"], args["num_landmarks"], args["stage1_conv_filters"],
            args["stage1_kernel_sizes"], args["stage1_fc_units"], args["dropout"],
            args["weight_decay"], args["margin"], shake_stddev=args["shake_stddevs"][0],
            use_windows=args["stage1_windows"], seed=stage_seed(1), name="stage_1")
        points, estimates = stage1(images)
        outputs = {"stage_1": reported(points)}
        if network_outputs:
            outputs["stage_1_networks"] = reported(estimates, plain)
        # --- Stages 2, 3: local refinement in windows (sections 3.1.2, 3.1.3) ------
        for k in range(2, args["num_stages"] + 1):
            stage = CCNNRefineStage(
                args["refine_half_sizes"][k - 2], args["refine_input_size"],
                args["num_landmarks"], args["refine_conv_filters"],
                args["refine_kernel_sizes"], args["refine_fc_units"], args["dropout"],
                args["weight_decay"], args["margin"], shake_stddev=args["shake_stddevs"][k - 1],
                stage_index=k, seed=stage_seed(k), name=f"stage_{k}")
            points, estimates = stage(images, points)
            outputs[f"stage_{k}"] = reported(points)
            if network_outputs:
                outputs[f"stage_{k}_networks"] = reported(estimates, plain)
        outputs["landmarks"] = layers.Identity(name="landmarks", dtype="float32")(
            outputs[f"stage_{args['num_stages']}"])
        if args["confidence_source"] == "flip":
            # The agreement of the last stage's points on the face and its mirror image.
            pair = MirroredPair(permutation, name="mirrored_pair")(points)
            outputs["confidence"] = ShapeAgreementConfidence(name="confidence")(pair)
        elif args["num_stages"] >= 2:
            # The agreement of the last stage's two networks per point (their windows
            # differ), point-major [N, P * W, 2] -> [N, W, P, 2] (common.confidence).
            windows_per_point = len(args["refine_half_sizes"][args["num_stages"] - 2])
            pairs = layers.Reshape((args["num_landmarks"], windows_per_point, 2),
                                   name="network_estimates")(reported(estimates, plain))
            pairs = layers.Permute((2, 1, 3), name="estimates_per_window")(pairs)
            outputs["confidence"] = ShapeAgreementConfidence(name="confidence")(pairs)
        super().__init__(inputs={image_key: inputs}, outputs=outputs, **kwargs)
        self._args = args
        self.num_landmarks = args["num_landmarks"]
        self.input_sizes = (args["input_size"],)
        self.margin = args["margin"]
        self.stage_names = tuple(f"stage_{k}" for k in range(1, args["num_stages"] + 1))
        self.set_frozen_stages(frozen_stages)

    @property
    def num_points(self) -> int:
        """``num_landmarks`` under its older name."""
        return self.num_landmarks

    @property
    def num_stages(self) -> int:
        return self._args["num_stages"]

    @property
    def flip_test(self) -> bool:
        """Whether the reported shapes average the face's and its mirror image's."""
        return self._args["flip_test"]

    @property
    def confidence_source(self) -> str:
        """What the ``"confidence"`` output compares (``CONFIDENCE_SOURCES``)."""
        return self._args["confidence_source"]

    def with_inference_options(self, flip_test: bool | None = None,
                               confidence_source: str | None = None) -> CCNNCascade:
        """This cascade with the flip test / confidence source switched, same weights.

        Both only change inference (the mirrored pass adds no weights), so a cascade
        trained with any setting can be served with any other.

        Args:
            flip_test: average the face's and its mirror image's shapes; ``None``: as
                this cascade does (callers pass optional flags straight through).
            confidence_source: ``"flip"`` or ``"pairs"``; ``None``: as this one.

        Returns:
            ``self`` when it already does as asked, else a new cascade (weights copied).
        """
        changes = {key: value for key, value in (("flip_test", flip_test),
                                                 ("confidence_source", confidence_source))
                   if value is not None and value != self._args[key]}
        if not changes:
            return self
        clone = type(self).from_config({**self.get_config(), **changes})
        transfer_stage_weights(self, clone)
        return clone

    @property
    def input_key(self) -> str:
        """The key of the input dict, ``image_{input_size}``."""
        return f"image_{self._args['input_size']}"

    def stage_layer(self, stage: int) -> CCNNStage1 | CCNNRefineStage:
        """Returns the layer of stage ``stage`` (1-based)."""
        if not 1 <= stage <= self.num_stages:
            raise ValueError(f"stage must be in 1..{self.num_stages}, got {stage}")
        return self.get_layer(f"stage_{stage}")

    @property
    def frozen_stages(self) -> tuple[int, ...]:
        """The stages (1-based) whose weights are frozen."""
        return tuple(k for k in range(1, self.num_stages + 1)
                     if not self.stage_layer(k).trainable)

    def set_frozen_stages(self, stages: Iterable[int]) -> None:
        """Freezes exactly ``stages`` (1-based) and unfreezes the others.

        A frozen stage keeps its weights and runs in inference mode. Compile (again)
        after changing this.
        """
        stages = {int(s) for s in stages}
        bad = stages - set(range(1, self.num_stages + 1))
        if bad:
            raise ValueError(f"no such stages: {sorted(bad)}")
        for k in range(1, self.num_stages + 1):
            self.stage_layer(k).trainable = k not in stages

    def train_only_stage(self, stage: int) -> None:
        """Freezes every stage but ``stage`` ("serial between groups", section 3.3)."""
        self.set_frozen_stages(k for k in range(1, self.num_stages + 1) if k != stage)

    @contextlib.contextmanager
    def trace_options(self, **changes: Any) -> Iterator[None]:
        """Within this context, this cascade's stages trace with ``changes`` applied
        to their ``TraceOptions`` (``frozen_weights``, ``grouped``, ``crop_windows``).

        Only this cascade changes (no module state); its export hooks
        (:meth:`export_hooks`) use it for the serving and TFLite traces.
        """
        stages = [self.stage_layer(k) for k in range(1, self.num_stages + 1)]
        previous = [stage.trace_options for stage in stages]
        for stage in stages:
            stage.trace_options = dataclasses.replace(stage.trace_options, **changes)
        try:
            yield
        finally:
            for stage, options in zip(stages, previous):
                stage.trace_options = options

    def export_hooks(self):
        """The ``common.landmark_model.ExportHooks`` of the cascade
        (``ccnn_tf.export_hooks.export_hooks``)."""
        from ccnn_tf.export_hooks import export_hooks

        return export_hooks(self)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, **self._args,
                "frozen_stages": self.frozen_stages}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> CCNNCascade:
        del custom_objects
        return cls(**config)


def build_ccnn(config: CCNNConfig, *, num_stages: int | None = None,
               frozen_stages: Iterable[int] = (), network_outputs: bool = False,
               name: str = "ccnn") -> CCNNCascade:
    """Builds the CCNN cascade described by ``config``.

    Args:
        config: the configuration (paper defaults: ``CCNNConfig()``).
        num_stages: overrides ``config.num_stages`` (e.g. to train stage by stage).
        frozen_stages: stages (1-based) to freeze.
        network_outputs: also output every network's estimates.
        name: model name.

    Returns:
        The (unbuilt-optimiser, uncompiled) model.
    """
    scheme = scheme_for(config.num_landmarks)
    index = {n: i for i, n in enumerate(scheme.point_names)}
    return CCNNCascade(
        input_size=config.input_size, margin=config.margin,
        num_stages=config.num_stages if num_stages is None else num_stages,
        num_landmarks=config.num_landmarks,
        stage1_point_indices=[[index[n] for n in names] for names in config.stage1_points],
        stage1_regions=config.stage1_regions,
        stage1_network_names=config.stage1_network_names,
        stage1_windows=config.stage1_windows, stage1_input_size=config.stage1_input_size,
        stage1_conv_filters=config.stage1_conv_filters,
        stage1_kernel_sizes=config.stage1_kernel_sizes,
        stage1_fc_units=config.stage1_fc_units, refine_input_size=config.refine_input_size,
        refine_conv_filters=config.refine_conv_filters,
        refine_kernel_sizes=config.refine_kernel_sizes,
        refine_fc_units=config.refine_fc_units, refine_half_sizes=config.model.stage_half_sizes,
        shake_stddevs=config.augment.stage_shake_stddevs, dropout=config.dropout,
        weight_decay=config.weight_decay, frozen_stages=frozen_stages,
        network_outputs=network_outputs, seed=config.seed, flip_test=config.flip_test,
        confidence_source=config.confidence_source, name=name)


def transfer_stage_weights(source: CCNNCascade, target: CCNNCascade,
                           stages: Iterable[int] | None = None) -> tuple[int, ...]:
    """Copies the weights of whole stages between cascades of the same structure.

    Used for serial training: stage k is trained in a k-stage cascade whose first k-1
    stages come from the previous run.

    Args:
        source: the trained cascade.
        target: the cascade to receive the weights.
        stages: the stages to copy (default: every stage both have).

    Returns:
        The stages copied.
    """
    if stages is None:
        stages = range(1, min(source.num_stages, target.num_stages) + 1)
    stages = tuple(stages)
    for k in stages:
        target.stage_layer(k).set_weights(source.stage_layer(k).get_weights())
    return stages


def network_targets(landmarks: tf.Tensor, stage: CCNNStage1 | CCNNRefineStage) -> tf.Tensor:
    """The target of each network estimate of ``stage``: ``[N, J, 2]`` from ``[N, P, 2]``.

    Pairs with the ``"stage_{k}_networks"`` outputs for a per-network loss (each CNN is
    trained on its own points, section 3.3).
    """
    return tf.gather(landmarks, list(stage.estimate_point_indices), axis=1)
