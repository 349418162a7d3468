"""The MSRRN configuration: the paper's defaults in one typed object.

Wang, Sun, Lu, Feng, Zhou, "Multiscale recurrent regression networks for face
alignment", Applied Informatics 4:13 (2017). Section names below refer to that
paper ("Proposed method", "Implementational details and evaluation protocols",
"Performance effects with different stages", "Computational time").

The paper's text gives the scales, the number of stages, the landmark count, the
augmentation, the optimiser family and the iteration count, but its Fig. 2 (the
layer table) and its hyper-parameters (lambda, eta, batch size) are not in the
text we reproduce from. Where the paper is silent, the field documents the choice
made here and why. Model code never reads this object directly; ``build_msrrn``
turns it into explicit constructor arguments.

The config has three groups (``common.config``): ``model`` (:class:`MSRRNModelConfig`),
``train`` (:class:`MSRRNTrainConfig`) and ``augment`` (:class:`MSRRNAugmentConfig`).
A field may be named without its group (``MSRRNConfig().replace(margin=0.3)``,
``config.margin``); the named presets are :data:`PRESETS` (``MSRRNConfig.preset``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from common.box_perturbation import DETECTOR_RANGES_68
from common.config import BoxAugmentGroup, ConfigGroup, GroupedConfig

INIT_MODES = ("cnn", "mean_shape")


@dataclasses.dataclass(frozen=True)
class MSRRNModelConfig(ConfigGroup):
    """What MSRRN computes: scales, stages, layer widths, margin, inference options.

    Attributes:
        scales: square crop sizes in pixels, coarse to fine. "Implementational
            details": the crops are rescaled to 200 x 200, 100 x 100 and 50 x 50.
            Stage ``t`` (1-based) reads ``scales[t - 1]``, so the regression runs
            coarse to fine ("Proposed method": "in a coarse-to-fine manner").
        num_stages: T, the number of recurrent stages. "Proposed method": "we
            downscale three times ... thus we specified T to 3". The stage ablation
            ("Performance effects with different stages") uses T in {1, 2, 3}; the
            regression weights are the same objects for every T. Stages beyond
            ``len(scales)`` reuse the finest scale.
        num_landmarks: L. "Proposed method": "L was specified to be 68".
        margin: crop margin around the dlib face box, as a fraction of the box
            side on each side (crop side = max(w, h) * (1 + 2 * margin), see
            ``common.geometry.crop_boxes_from_face_boxes``). The paper crops at
            the dlib box but gives no margin. dlib's frontal detector box runs from
            the brows to just below the lips and usually cuts the jaw line and chin;
            0.2 keeps all 68 points inside the crop, with room for the +-15 deg
            rotation augmentation.
        patch_size: side k of the shape-indexed patch, in pixels of the stage's
            own scale (paper silent). The same k at every scale is required by the
            weight sharing (one regressor reads every stage), and it makes the
            physical region shrink coarse to fine: 12 px is 24 % of the crop at 50,
            12 % at 100 and 6 % at 200, i.e. about a third of the face at stage 1
            (absorbing initial-shape errors of +-12 % of the crop) down to about
            half an eye width at stage 3. 12 halves twice (2 x 2 pooling) to a
            3 x 3 grid whose centre cell is centred on the landmark.
        patch_extent: patch side as a fraction of the crop, or ``None`` (default)
            for ``patch_size`` pixels at every scale (one sample per pixel). A
            number gives the same physical region at every scale instead.
        regression_conv_filters: output channels of the conv blocks of the shared
            regression network f_RRN ("Proposed method", eq. 2: convolution, max
            pooling, ReLU, fully connected). Each block is conv(k x k, same) ->
            max pool -> ReLU, applied to each landmark's patch with weights shared
            over landmarks. Widths are not in the text; 16 and 32 are kept small
            because the convs run on N x 68 patches of only 12 x 12 px per stage
            (a 3 x 3 x 32 map per patch), and the capacity sits in the FC layer
            over all landmarks.
        regression_kernel_size: conv kernel side of the regression network (3, the
            smallest kernel that grows the receptive field; paper silent).
        regression_pool_size: max-pool window and stride after each regression conv
            (2; 12 -> 6 -> 3).
        regression_fc_units: widths of the hidden fully connected layers of the
            regression network, applied to the features of all landmarks
            concatenated (so the update sees the whole shape: "the shape-index
            features implicitly exploit the shape constraints for the holistic
            regression"). A last linear layer gives the 2L shape update.
        hidden_size: size of a recurrent hidden state carried between stages (a
            GRU cell after the hidden FC layers), or 0 for none. "Proposed method"
            says the shared parameters "memorize the shape residual descents"; the
            equations have no state beyond the shape itself, so 0 (pure parameter
            sharing) is the default and the state is an option.
        init: how S^0 is obtained. "cnn" ("Proposed method", last paragraph: "we
            further propose a CNN, which aims to predict a initial shape") predicts
            a residual from the training mean shape; "mean_shape" is the baseline of
            "Performance effects with different stages".
        init_conv_filters: channels of the initial-shape CNN's conv blocks (conv
            3 x 3 -> max pool 2 -> ReLU) on the coarsest scale (paper silent).
        init_kernel_size: conv kernel side of the initial-shape CNN.
        init_fc_units: hidden fully connected widths of the initial-shape CNN.
        bias_correction: after training, fit a constant per-landmark, per-stage
            offset on the (unaugmented) training faces and add it to every output
            (paper silent; ``msrrn_tf.training.fit_bias_correction``). Flip
            augmentation makes the model mirror-symmetric, so it cannot learn an
            annotation convention that is not (ytf68's points sit on average 0.7 %
            of the crop width right of where the flip-trained model puts them; the
            trained model itself is unbiased on exact synthetic labels). The offset
            is the training faces' mean residual, so held-out faces choose nothing.
            Measured by re-scoring a finished run on a second identity split of
            ytf68 (README, "MSRRN on YouTube-Faces frames"; 3,000 steps, paper
            scales): 8.07 -> 7.48 % inter-pupil NME.
        flip_test: at inference, predict the face and its mirror image and average
            the two shapes (the mirrored one mapped back), at twice the cost per face
            (paper silent; training is unchanged). Measured the same way, with the
            bias correction fitted on the averaged outputs: 7.48 -> 7.04 %.
    """

    INFERENCE_FIELDS: ClassVar[frozenset[str]] = frozenset({"flip_test"})

    scales: tuple[int, ...] = (50, 100, 200)
    num_stages: int = 3
    num_landmarks: int = 68
    margin: float = 0.2
    patch_size: int = 12
    patch_extent: float | None = None
    regression_conv_filters: tuple[int, ...] = (16, 32)
    regression_kernel_size: int = 3
    regression_pool_size: int = 2
    regression_fc_units: tuple[int, ...] = (256,)
    hidden_size: int = 0
    init: str = "cnn"
    init_conv_filters: tuple[int, ...] = (16, 32, 64)
    init_kernel_size: int = 3
    init_fc_units: tuple[int, ...] = (256,)
    bias_correction: bool = True
    flip_test: bool = True

    def validate(self) -> None:
        if not self.scales or any(int(s) <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive sizes, got {self.scales}")
        if list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must run coarse to fine (increasing), got {self.scales}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {self.num_landmarks}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.patch_extent is not None and self.patch_extent <= 0:
            raise ValueError(f"patch_extent must be positive or None, got {self.patch_extent}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.hidden_size < 0:
            raise ValueError(f"hidden_size must be >= 0, got {self.hidden_size}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


@dataclasses.dataclass(frozen=True)
class MSRRNTrainConfig(ConfigGroup):
    """How MSRRN is optimised: loss regularisation, SGD, schedule, training-only tricks.

    Attributes:
        stop_shape_gradient: stop gradients through the *positions* at which the
            patches are sampled (paper silent). The shape still receives gradients
            through the additive update S^t = S^{t-1} + f(.); only the
            d(patch)/d(position) term (an image-gradient, high-frequency and noisy)
            is dropped, as is usual for shape-indexed features.
        init_noise: standard deviation (normalised crop units) of Gaussian noise added
            to every coordinate of S^0 before the first stage while training (paper
            silent; 0 = off). The initial CNN is more accurate on its training faces
            than on new ones, so without it the shared regressor learns from easier
            starting shapes than it meets at test time; a cascade's usual remedy
            (ERT trains from several perturbed initial shapes per face). Measured on
            a second identity split of ytf68 (3,000 steps, paper scales): 0.02 gave
            8.43 % inter-pupil NME against 8.07 % without, so it stays off.
        bias_correction_faces: at most this many training faces for the fit.
        weight_decay: lambda of eq. (5), applied as an L2 kernel regulariser
            (lambda * sum(w^2)) on every kernel (not biases). The value is not in
            the text; 1e-4 is small because the data term is measured in
            normalised [0, 1] crop coordinates (squared errors around 1e-3).
        learning_rate: eta of eq. (6) (paper silent). 0.01 for SGD with momentum,
            for the eq. (5) data term summed over the 2L coordinates of a face and
            averaged over the batch (a per-coordinate mean would need ~136x more).
        momentum: SGD momentum ("Proposed method": stochastic gradient descent;
            momentum value not given, 0.9 is the usual choice).
        batch_size: faces per iteration (paper silent). With 64, the paper's 10,000
            iterations are about 200 epochs of the 3,148 training faces.
        iterations: training iterations. "Computational time": "10 h ... for 10,000
            iterations".
    """

    stop_shape_gradient: bool = True
    init_noise: float = 0.0
    bias_correction_faces: int = 5000
    weight_decay: float = 1e-4
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    iterations: int = 10_000

    def validate(self) -> None:
        if self.bias_correction_faces < 1:
            raise ValueError(
                f"bias_correction_faces must be >= 1, got {self.bias_correction_faces}")
        if self.init_noise < 0:
            raise ValueError(f"init_noise must be >= 0, got {self.init_noise}")


@dataclasses.dataclass(frozen=True)
class MSRRNAugmentConfig(BoxAugmentGroup):
    """The training augmentation: the paper's ("Implementational details") and the
    face-box perturbation of ``common.config.BoxAugmentGroup`` (off by default).

    Attributes:
        noise_sigma: per-pixel Gaussian noise sigma in grey levels of 0..255
            ("Implementational details": "Gaussian noise of sigma = 0.5").
        flip: random horizontal flips ("Implementational details": "flipping").
        max_rotation_deg: in-plane rotations uniform in +-this many degrees
            ("Implementational details": "random in-plane rotations +-15 deg from a
            uniform distribution").
        box_shift_x, box_shift_y: (low, high) training shifts of the face box centre,
            fractions of the box width / height (``common.pipeline.AugmentConfig``).
            Not in the paper, which trains and tests on dlib's boxes: ``(0, 0)``
            here, so ``MSRRNConfig()`` (the ``paper`` preset) is the paper's
            augmentation only. The ``quick`` preset sets the detector variance of
            ``common.box_perturbation.DETECTOR_RANGES_68`` (``(-0.15, 0.17)`` and
            ``(-0.15, 0.19)``), so that the model takes the boxes of dlib, MTCNN or
            the landmark extent alike. ``[0, 0]`` in ``--config_json`` switches a
            shift off.
        box_scale_range: (low, high) training factor of the box sides (the crop
            side). ``(1, 1)``: off (paper); ``quick``: ``(0.83, 1.37)``.
        box_aspect_range: (low, high) training factor of the box's height/width;
            ``(1, 1)`` (off) in both presets: the square crop on the longer side
            turns an aspect change into a scale change, which ``box_scale_range``
            covers.
    """

    noise_sigma: float = 0.5
    flip: bool = True
    max_rotation_deg: float = 15.0

    def pipeline_config(self):
        """The augmentation as a ``common.pipeline.AugmentConfig``: rotation uniform in
        +-``max_rotation_deg``, flips with probability 0.5 when ``flip``, pixel noise
        ``noise_sigma`` (the paper lists nothing else) and the face-box perturbation.

        Returns:
            ``common.pipeline.AugmentConfig``.
        """
        # Imported here so that importing the config stays free of TensorFlow.
        from common.pipeline import AugmentConfig

        return AugmentConfig(rotation_deg=(-self.max_rotation_deg, self.max_rotation_deg),
                             flip_prob=0.5 if self.flip else 0.0,
                             noise_sigma=self.noise_sigma, **self.box_ranges.as_fields())


@dataclasses.dataclass(frozen=True, init=False)
class MSRRNConfig(GroupedConfig):
    """Hyper-parameters of MSRRN: the model, its optimisation and its augmentation.

    ``MSRRNConfig()`` is the ``"paper"`` preset. Build others with
    :meth:`preset` (``MSRRNConfig.preset("quick", batch_size=16)``) and change fields
    with :meth:`replace` (group mappings or field names).

    Attributes:
        model: what the network computes (:class:`MSRRNModelConfig`).
        train: how it is optimised (:class:`MSRRNTrainConfig`).
        augment: the training augmentation (:class:`MSRRNAugmentConfig`).
    """

    model: MSRRNModelConfig = dataclasses.field(default_factory=MSRRNModelConfig)
    train: MSRRNTrainConfig = dataclasses.field(default_factory=MSRRNTrainConfig)
    augment: MSRRNAugmentConfig = dataclasses.field(default_factory=MSRRNAugmentConfig)

    def augment_config(self):
        """``self.augment.pipeline_config()``: the training augmentation as a
        ``common.pipeline.AugmentConfig``."""
        return self.augment.pipeline_config()


QUICK_OVERRIDES: dict[str, Any] = {
    "scales": (32, 64, 128),
    "patch_size": 8,
    "regression_conv_filters": (16, 16),
    "regression_fc_units": (128,),
    "init_conv_filters": (8, 16, 32),
    "init_fc_units": (128,),
    "batch_size": 32,
    "learning_rate": 0.01,
    "iterations": 2500,
    **DETECTOR_RANGES_68.as_fields(),
}
"""``MSRRNConfig`` fields changed by the ``"quick"`` preset (tuned on two shared CPU
cores; the stages, loss, optimiser, margin and weight decay stay the paper's, and the
paper's augmentation gets a face-box perturbation on top):

* the paper's geometry scaled by 0.64: crops of 32, 64 and 128 px with 8-px patches
  cover the same fractions of the crop at every stage (25 %, 12.5 %, 6.25 %) as
  50, 100 and 200 px with 12-px patches. The synthetic faces are about 85-120 px
  across their crop, so 128 px keeps all their detail, and the crops cost a quarter
  of the 200-px ones (on two cores the 200-px pipeline alone took as long as the
  training step);
* about half the paper's widths (the regression convs, FC layers and the
  initial-shape CNN);
* 2,500 iterations of 32 faces (40 epochs of the 2,000 synthetic training faces)
  with a cosine decay from 0.01. Measured on the synthetic val split (inter-pupil
  NME after 3 stages): 5.5 % after 1,500 or 2,000 steps, 5.0 % after 2,500; a
  learning rate of 0.02 trained worse (6.4 % at 2,000 steps);
* the face-box perturbation ``common.box_perturbation.DETECTOR_RANGES_68`` (centre
  shifts of -15..+17 % of the box width and -15..+19 % of its height, crop side x0.83
  to x1.37: the measured differences between dlib's, MTCNN's and the landmark-extent
  boxes), so that the model does not depend on one detector's boxes. The ``"paper"``
  preset has none (the paper's augmentation only).
"""

SMALL_OVERRIDES: dict[str, Any] = {
    "regression_conv_filters": (8, 8),
    "regression_fc_units": (64,),
    "init_conv_filters": (8, 8, 16),
    "init_fc_units": (64,),
    "batch_size": 16,
    "iterations": 200,
}
"""The ``"small"`` preset: the paper's scales and stages, narrow layers, a short
schedule (tests and quick CPU runs)."""

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": QUICK_OVERRIDES,
    "small": SMALL_OVERRIDES,
    "tiny": {**SMALL_OVERRIDES, "scales": (24, 48, 96), "patch_size": 8, "batch_size": 8},
}
"""Named presets (:meth:`MSRRNConfig.preset`): the fields each changes from the
paper's defaults. ``"tiny"`` is the smoke-test model of ``experiments.bench_speed``
(its numbers mean nothing)."""

MSRRNConfig.PRESETS = PRESETS
