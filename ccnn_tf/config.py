"""The one configuration object of the CCNN model, holding the paper's defaults.

CCNN is the improved cascaded CNN of the paper "Face alignment algorithm based on an
improved cascaded convolutional neural network" (5 landmarks, 23 lightweight networks
in 3 groups). Every field documents where its value comes from: a section or formula of
the paper, or "chosen" where the paper leaves the value open (its Table 2, the
stage-1 layer table, is missing from the text we have).

Units. Landmarks and windows are in normalised crop coordinates of the model input
(docs/DESIGN.md): the model input is the face box expanded by ``margin`` on every side
(a square of side ``max(w, h) * (1 + 2 * margin)``), so the face box occupies the centred
square ``[m / (1 + 2m), (1 + m) / (1 + 2m)]``. Window half-sizes and the shake standard
deviation are given, as in the paper, relative to the face box; the model converts them
with ``margin``.

Parameter count. With the layer widths below, the 23 networks have exactly the paper's
643,920 parameters (section 3.2.4; 2.46 MB as float32):

===========  ========  ===================================================  ==========
stage        networks  layers                                               parameters
===========  ========  ===================================================  ==========
1            F1        39x39x3, conv5x5x32, pool, conv3x3x64, pool,             92,576
                       conv3x3x64, pool, fc130, fc10
1            EN1, NM1  same, last layer fc6                                 2 x 92,052
2            10        15x15x3, conv5x5x24, pool, conv3x3x48, pool,        10 x 18,362
                       fc120, fc2
3            10        same as stage 2 (section 3.2.4)                     10 x 18,362
total        23                                                                643,920
===========  ========  ===================================================  ==========

Stage-1 networks thus have 8 layers and stage-2/3 networks 6 (section 3, improvement 1:
"a maximum of 8 layers and a minimum of 6"); the last layers of F1, EN1 and NM1 are
"10d-fc2, 6d-fc2 and 6d-fc2" (section 3.2.4). The widths themselves are our
reconstruction: among widths of the usual sizes, this is a combination whose total
equals the published count; it is not claimed to be the authors' table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from common.box_perturbation import CENTRED_RANGES_CUHK5, DETECTOR_RANGES_CUHK5
from common.config import BoxAugmentGroup, ConfigGroup, GroupedConfig
from common.schemes import CUHK_5

_ALL_POINTS = CUHK_5.point_names
_EYES_NOSE = ("left_eye", "right_eye", "nose")
_NOSE_MOUTH = ("nose", "left_mouth", "right_mouth")


@dataclasses.dataclass(frozen=True)
class CCNNModelConfig(ConfigGroup):
    """What the cascade computes: crop, stages, networks, windows, inference options.

    Attributes:
        num_landmarks: number of landmarks, 5 (the ``CUHK_5`` scheme: left eye, right
            eye, nose tip, left and right mouth corner; section 1).
        input_size: side in pixels of the square face crop the model takes
            (``inputs["image_{input_size}"]``). Chosen: 96. With ``margin`` 0.1 the face
            box spans 80 pixels, so a stage-2 window (0.32 of the box) covers about 26
            pixels and a stage-3 window (0.16) about 13 pixels, i.e. the 15x15 window
            inputs are sampled near native resolution instead of being blown up from a
            handful of pixels.
        margin: crop margin around the face box, as a fraction of its longer side on
            each side (``common.geometry.crop_boxes_from_face_boxes``). Chosen: 0.1, room
            for windows that reach past the face box (shake, stage-1 errors, rotation).
            The paper crops the face frame itself (section 3.1.1); the regions below
            are still taken relative to the face box.
        num_stages: number of cascade stages, 3 (section 3, improvement 3; Experiment
            1). 1 or 2 give the faster variants mentioned at the end of section 4.2.
        stage1_network_names: names of the stage-1 networks (section 3.1.1, 3.2.4).
        stage1_points: the landmarks each stage-1 network predicts, by ``CUHK_5`` name
            (section 3.1.1: the whole face, the eyes and nose tip, the nose tip and
            mouth corners). Duplicated points are averaged (formula 4).
        stage1_regions: the input region of each stage-1 network as (left, top, right,
            bottom) fractions of the face box. F1 sees the face box (section 3.1.1);
            EN1 and NM1 see its upper and lower 80 %, overlapping in the nose band.
            Chosen: the paper's Figure 1(a) draws the three areas without numbers; 0.8
            keeps the 31:39 aspect of Sun et al.'s EN1/NM1 inputs the paper improves on.
        stage1_windows: relative positioning of stage 1 ("windows+", Experiment 2).
            True: each stage-1 network sees its region and predicts coordinates
            relative to it (formula 9). False ("windows-", absolute positioning): every
            stage-1 network sees the whole model input (no region crop) and predicts
            normalised crop coordinates directly; the networks and the averaging are
            unchanged, so only the use of windows differs between the two arms.
        stage1_input_size: side of the square stage-1 network inputs. Chosen: 39
            (Table 2 is missing; 39 is the input size of Sun et al.'s level 1, which
            the paper reduces the later levels from, and fits the parameter count).
        stage1_conv_filters: channels of the three stage-1 convolutions (chosen, see
            the module docstring).
        stage1_kernel_sizes: kernel sizes of the three stage-1 convolutions (chosen).
        stage1_fc_units: width of the hidden fully connected layer of F1, EN1 and NM1
            (chosen; the output layers are 10d and 6d, section 3.2.4).
        refine_input_size: side of the stage-2 and stage-3 window inputs, 15 (section
            3.2.2: "reduced from 32x32x3 to 15x15x3"; section 3.2.4: stage 3 has the
            structure of stage 2).
        refine_conv_filters: channels of the two convolutions of every stage-2/3
            network (section 3.2.2: "2 sets of convolutional pooling layers and 2
            fully connected layers"; widths chosen).
        refine_kernel_sizes: kernel sizes of those convolutions (chosen).
        refine_fc_units: width of the hidden fully connected layer of every stage-2/3
            network (chosen; the output layer has 2 units, one point).
        stage2_half_sizes: the two windows of each stage-2 point as (a, b) half-size
            fractions of the face box width and height: the window is
            ``[x - a w, y - b h, x + a w, y + b h]`` (formula 5; a1 = b1 = 0.16,
            a2 = b2 = 0.18, section 3.1.2).
        stage3_half_sizes: the same for stage 3 (a1 = b1 = 0.08, a2 = b2 = 0.09,
            section 3.1.3).
        flip_test: at inference, also run the cascade on the mirrored crop and report
            the mean of the two shapes (not in the paper; inference only, switchable
            after training: ``CCNNCascade.with_inference_options``). On a tuning
            split (sun5 tune_val, 900 faces) it cut the inter-ocular error from 4.95
            to 4.71 % (better on 69 % of the faces), and with the ``"flip"``
            confidence the mirrored pass is run anyway; off by default until the
            published CCNN tables are re-measured with it (``--flip_test`` of
            ``ccnn_tf.evaluate`` / ``ccnn_tf.export`` turns it on).
        confidence_source: what the ``"confidence"`` output compares: ``"flip"``, the
            last stage's points on the face and on its mirror image (runs the mirrored
            pass, doubling inference time; failure-ranking AUC 0.85+ on sun5 val), or
            ``"pairs"``, the last stage's two networks per point (free, AUC 0.67).
            Inference only, switchable after training.
    """

    INFERENCE_FIELDS: ClassVar[frozenset[str]] = frozenset({"flip_test", "confidence_source"})

    num_landmarks: int = CUHK_5.num_points
    input_size: int = 96
    margin: float = 0.1
    num_stages: int = 3
    stage1_network_names: tuple[str, ...] = ("F1", "EN1", "NM1")
    stage1_points: tuple[tuple[str, ...], ...] = (_ALL_POINTS, _EYES_NOSE, _NOSE_MOUTH)
    stage1_regions: tuple[tuple[float, float, float, float], ...] = (
        (0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.8), (0.0, 0.2, 1.0, 1.0))
    stage1_windows: bool = True
    stage1_input_size: int = 39
    stage1_conv_filters: tuple[int, ...] = (32, 64, 64)
    stage1_kernel_sizes: tuple[int, ...] = (5, 3, 3)
    stage1_fc_units: int = 130
    refine_input_size: int = 15
    refine_conv_filters: tuple[int, ...] = (24, 48)
    refine_kernel_sizes: tuple[int, ...] = (5, 3)
    refine_fc_units: int = 120
    stage2_half_sizes: tuple[tuple[float, float], ...] = ((0.16, 0.16), (0.18, 0.18))
    stage3_half_sizes: tuple[tuple[float, float], ...] = ((0.08, 0.08), (0.09, 0.09))
    flip_test: bool = False
    confidence_source: str = "flip"

    def validate(self) -> None:
        if not 1 <= self.num_stages <= 3:
            raise ValueError(f"num_stages must be 1, 2 or 3, got {self.num_stages}")
        n1 = len(self.stage1_network_names)
        if len(self.stage1_points) != n1 or len(self.stage1_regions) != n1:
            raise ValueError("stage1_network_names, stage1_points and stage1_regions "
                             "must have the same length")
        covered = {name for points in self.stage1_points for name in points}
        unknown = covered - set(CUHK_5.point_names)
        if unknown:
            raise ValueError(f"stage1_points names unknown points: {sorted(unknown)}")
        if len(covered) != self.num_landmarks:
            raise ValueError("stage-1 networks must predict every landmark at least once")
        if len(self.stage1_conv_filters) != len(self.stage1_kernel_sizes):
            raise ValueError("stage1_conv_filters and stage1_kernel_sizes differ in length")
        if len(self.refine_conv_filters) != len(self.refine_kernel_sizes):
            raise ValueError("refine_conv_filters and refine_kernel_sizes differ in length")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.confidence_source not in ("flip", "pairs"):
            raise ValueError(f"confidence_source must be 'flip' or 'pairs', got "
                             f"{self.confidence_source!r}")

    @property
    def stage_half_sizes(self) -> tuple[tuple[tuple[float, float], ...], ...]:
        """Window half-sizes of the refinement stages 2 and 3, in that order."""
        return (self.stage2_half_sizes, self.stage3_half_sizes)


@dataclasses.dataclass(frozen=True)
class CCNNTrainConfig(ConfigGroup):
    """How each stage is optimised (section 3.3): SGD, decay, dropout, L2, seed.

    Attributes:
        dropout: dropout rate after the hidden fully connected layer, 0.25 (section
            3.3).
        weight_decay: L2 penalty coefficient on the kernels (formula 6); the loss gets
            ``weight_decay * sum(W ** 2)``. The paper does not give the value; chosen
            1e-4, small against the data term in window-relative units.
        learning_rate: initial SGD learning rate, 5e-3 (section 3.3).
        lr_decay_rate: the learning rate is multiplied by 0.9 ... (section 3.3)
        lr_decay_steps: ... every 100 iterations (section 3.3), staircase.
        momentum: SGD momentum. The paper says SGD and gives no momentum: 0.
        optimizer: ``"sgd"`` (section 3.3, with ``momentum``) or ``"adam"`` (not in the
            paper; Adam with ``learning_rate`` and the same staircase decay, the
            default betas; ``momentum`` unused), for training budgets far below the
            paper's.
        batch_size: chosen, 64 ("selected according to the actual situation").
        steps_per_stage: training steps per stage. Chosen: 5000; with the decay above
            the learning rate is then 5e-3 * 0.9**50, about 2.6e-5, and further steps
            change little.
        seed: seed of the initial weights, dropout and the shake random generator
            (None: nondeterministic).
    """

    dropout: float = 0.25
    weight_decay: float = 1e-4
    learning_rate: float = 5e-3
    lr_decay_rate: float = 0.9
    lr_decay_steps: int = 100
    momentum: float = 0.0
    optimizer: str = "sgd"
    batch_size: int = 64
    steps_per_stage: int = 5000
    seed: int | None = None

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("sgd", "adam")

    def validate(self) -> None:
        if self.optimizer not in self.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {self.OPTIMIZERS}, got "
                             f"{self.optimizer!r}")


@dataclasses.dataclass(frozen=True)
class CCNNAugmentConfig(BoxAugmentGroup):
    """The training augmentation: rotations and flips (section 4.1), the shake of the
    windows (sections 3.1.2, 3.1.3) and the face-box perturbation of
    ``common.config.BoxAugmentGroup`` (off by default).

    Attributes:
        rotation_angles_deg: the in-plane rotations of section 4.1: each training face
            is used as is and rotated 15 degrees left (-15) and 12 degrees right (+12)
            about its centre, with the landmarks rotated alike (formula 8).
        flip: horizontal flip augmentation (section 4.1); with the three angles it
            turns 10,000 training faces into 60,000.
        stage1_shake_stddev: standard deviation of the training-time shake of the
            stage-1 regions, in face-box units. Experiment 3 measures the shake on the
            first stage, so it is on by default, with the stage-2 value.
        stage2_shake_stddev: standard deviation of the shake of the stage-2 windows,
            in face-box units. Section 3.1.2 gives shake ~ N(0, 1e-4), read as variance
            1e-4, i.e. a translation with standard deviation 0.01 of the face box
            width (x) and height (y), drawn independently per window and per sample,
            during training only.
        stage3_shake_stddev: the same for stage 3: "shake is the same as the second
            stage" (section 3.1.3). (The abstract's "smaller shake" would follow if the
            shake were relative to the window; we take the explicit sentence.)
        box_shift_x, box_shift_y: (low, high) training shifts of the face box centre,
            fractions of the box width / height (``common.pipeline.AugmentConfig``).
            Not in the paper (section 4.1 lists rotations and flips only): ``(0, 0)``
            here, so ``CCNNConfig()`` (the ``paper`` preset) has the paper's
            augmentation only. The ``quick`` preset sets the detector variance of
            ``common.box_perturbation.DETECTOR_RANGES_CUHK5`` (``(-0.12, 0.10)`` and
            ``(-0.14, 0.05)``, dlib's and MTCNN's boxes against the CUHK boxes).
            ``[0, 0]`` in ``--config_json`` switches a shift off.
        box_scale_range: (low, high) training factor of the box sides (the crop
            side). ``(1, 1)``: off (paper); ``quick``: ``(0.95, 1.57)``.
        box_aspect_range: (low, high) training factor of the box's height/width;
            ``(1, 1)`` (off) in every preset: the square crop on the longer side turns
            an aspect change into a scale change.
    """

    rotation_angles_deg: tuple[float, ...] = (0.0, -15.0, 12.0)
    flip: bool = True
    stage1_shake_stddev: float = 0.01
    stage2_shake_stddev: float = 0.01
    stage3_shake_stddev: float = 0.01

    @property
    def stage_shake_stddevs(self) -> tuple[float, float, float]:
        """Shake standard deviation of stages 1, 2 and 3 (face-box units)."""
        return (self.stage1_shake_stddev, self.stage2_shake_stddev, self.stage3_shake_stddev)


@dataclasses.dataclass(frozen=True, init=False)
class CCNNConfig(GroupedConfig):
    """Hyper-parameters of the CCNN cascade, its training and its augmentation.

    ``CCNNConfig()`` is the ``"paper"`` preset; :meth:`preset` builds the others
    (``CCNNConfig.preset("quick", steps_per_stage=200)``), :meth:`replace` changes
    fields (group mappings or field names; ``config.margin`` reads
    ``config.model.margin``).

    Attributes:
        model: what the cascade computes (:class:`CCNNModelConfig`).
        train: how each stage is optimised (:class:`CCNNTrainConfig`).
        augment: the training augmentation (:class:`CCNNAugmentConfig`).
    """

    model: CCNNModelConfig = dataclasses.field(default_factory=CCNNModelConfig)
    train: CCNNTrainConfig = dataclasses.field(default_factory=CCNNTrainConfig)
    augment: CCNNAugmentConfig = dataclasses.field(default_factory=CCNNAugmentConfig)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> CCNNConfig:
        """The configuration of a named preset (:data:`PRESETS`, the one place presets
        are defined), with ``changes`` applied on top.

        * ``"paper"``: ``CCNNConfig()``, the paper's values (plain SGD at 5e-3, 5000
          steps per stage) and the paper's augmentation only (rotations 0/-15/+12
          degrees and flips, section 4.1; no box perturbation).
        * ``"quick"``: the paper's networks, windows, shake, augmentation and decay
          schedule (x0.9 every 100 steps), trained for 500 steps per stage with SGD at
          3e-2 with momentum 0.9, so that all three stages train in a few minutes on
          two CPU cores and the stage-wise error decrease of Experiment 1 shows. The
          learning rate and momentum are not the paper's: with 500 steps plain SGD at
          5e-3 barely leaves the mean shape (measured on the synthetic faces: stage-1
          error 9.1 % of the box width after 500 steps at 5e-3 with momentum, 6.5 %
          at 3e-2). On top of the paper's augmentation it perturbs the face box over
          the measured detector variance (``common.box_perturbation.DETECTOR_RANGES_CUHK5``:
          centre shifts of -12..+10 % of the box width and -14..+5 % of its height,
          crop side x0.95 to x1.57), so that the cascade takes dlib's or MTCNN's boxes
          as well as the CUHK ones.
        * ``"tuned"``: ``"quick"`` with the settings chosen on the sun5 tuning split
          (``experiments.ccnn_stage1``, README "Why stage 1 is behind the paper"):
          Adam at 1e-3 instead of SGD with momentum (stage 1 on ``tune_val``: 4.27
          instead of 6.58 % of the box width after 1,500 steps, with the box
          perturbation on), the learning rate x0.9 every 300 steps (not 100), 1,500
          steps per stage, and the box perturbation widened to boxes smaller and lower
          than the stored one (``common.box_perturbation.CENTRED_RANGES_CUHK5``: stage
          1's worst/best over the box sources 1.21 -> 1.09 on ``tune_val``).
        * ``"tiny"``: networks of a few hundred parameters, for tests and smoke runs.

        Raises:
            ValueError: an unknown preset (names the known ones).
        """
        return super().preset(name, **changes)


_QUICK: dict[str, Any] = {"steps_per_stage": 500, "learning_rate": 0.03, "momentum": 0.9,
                          "seed": 0, **DETECTOR_RANGES_CUHK5.as_fields()}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": _QUICK,
    "tuned": {**_QUICK, "optimizer": "adam", "learning_rate": 1e-3, "momentum": 0.0,
              "lr_decay_steps": 300, "steps_per_stage": 1500,
              **CENTRED_RANGES_CUHK5.as_fields()},
    "tiny": {"input_size": 32, "stage1_input_size": 16, "stage1_conv_filters": (4, 8),
             "stage1_kernel_sizes": (3, 3), "stage1_fc_units": 16, "refine_input_size": 9,
             "refine_conv_filters": (4,), "refine_kernel_sizes": (3,),
             "refine_fc_units": 8, "batch_size": 8, "steps_per_stage": 20, "seed": 1},
}
"""Named presets (:meth:`CCNNConfig.preset`): the fields each changes from the paper's
defaults."""

CCNNConfig.PRESETS = PRESETS
