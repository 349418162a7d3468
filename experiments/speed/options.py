"""What a speed benchmark run measures: models, peers, targets, forms, presets.

Part of ``experiments.bench_speed`` (its options; the flags map one to one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

MODELS = ("msrrn", "ccnn")
PEERS = ("dlib_ert", "mtcnn_box")
"""The peers timed by default; ``--peers`` also takes any pretrained peer registered in
``experiments.peers`` (``pretrained_peers``), timed through its ``predict``."""


def pretrained_peers() -> tuple[str, ...]:
    """The registered peers that need no training (``Peer.trainable`` false), other than
    the ones of ``PEERS``, which have cases of their own."""
    import functools

    from experiments.peers import PEERS as REGISTERED

    def trainable(factory) -> bool:
        cls = factory.func if isinstance(factory, functools.partial) else factory
        return bool(getattr(cls, "trainable", False))

    return tuple(name for name, factory in REGISTERED.items()
                 if name not in PEERS and not trainable(factory))

TARGETS: dict[str, dict[str, float]] = {
    "msrrn": {"max_ms_per_face": 10.0, "min_faces_per_s": 200.0},
    "ccnn": {"max_ms_per_face": 5.0, "min_faces_per_s": 1000.0},
}
"""Speed targets of the exported models on the CPU: single-face latency below
``max_ms_per_face`` and batched throughput of at least ``min_faces_per_s``."""

EXPORTED_FORMS = ("saved_model_default", "saved_model_cropped", "tflite")
"""The forms the targets apply to; ``saved_model_default`` (end to end) is the
headline."""

FORM_DESCRIPTIONS = {
    "keras_eager": "Keras model, eager call on crops",
    "keras_predict_on_batch": "Keras predict_on_batch on crops",
    "keras_xla": "Keras call on crops compiled by XLA (jit_compile, TFLite trace)",
    "saved_model_default": "SavedModel serving_default: uint8 images + boxes (incl. crop)",
    "saved_model_cropped": "SavedModel serving_cropped on crops",
    "tflite": "TFLite interpreter on crops, face by face",
    "tflite_batch_invoke": "TFLite interpreter on crops, one invoke per batch",
    "crop_only": "preprocess_faces alone (the crop in serving_default)",
    "dlib_predict": "dlib shape_predictor on image + box (1 thread)",
    "onet_box": "MTCNN ONet on image + box (package crop)",
    "peer_predict": "a pretrained peer of experiments.peers on image + box",
}

DLIB_TRAINING_SHORTCUTS = {"oversampling_amount": 1, "num_test_splits": 5}
"""dlib options lowered to train quickly. Both only act during training
(initialisations per face, candidate splits per node); the predictor's size
(``cascade_depth``, ``num_trees_per_cascade_level``, ``tree_depth``,
``feature_pool_size``) keeps dlib's defaults, so its prediction time is that of a
normally trained model."""

DLIB_PREDICTOR_SIZE_OPTIONS = ("cascade_depth", "num_trees_per_cascade_level", "tree_depth",
                               "feature_pool_size")
"""The dlib options that set the predictor's size, hence its prediction time."""

TINY_DLIB_OPTIONS = {"cascade_depth": 2, "num_trees_per_cascade_level": 10,
                     "oversampling_amount": 1, "num_test_splits": 2,
                     "feature_pool_size": 50}
"""dlib options of the ``tiny`` preset (a smoke test; not representative)."""


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Everything a benchmark run depends on (flags map one to one).

    Attributes:
        models: our models to time (``MODELS``).
        msrrn_config: MSRRN architecture and training batch when no model path is
            given (``None``: ``MSRRNConfig()``, the paper's).
        ccnn_config: the same for CCNN (``None``: ``CCNNConfig()``).
        msrrn_model: a trained MSRRN (``.keras`` file or a run folder holding
            ``model.keras``), or ``None`` for a freshly built one.
        ccnn_model: the same for CCNN.
        msrrn_flip_test: switch MSRRN's flip test on or off (``MSRRN.with_flip_test``);
            ``None``: as built or trained.
        ccnn_flip_test, ccnn_confidence_source: switch CCNN's flip test and
            confidence source (``CCNNCascade.with_inference_options``; ``"pairs"``
            with the flip test off runs no mirrored pass); ``None``: as built or
            trained.
        peers: peers to time (``PEERS``); dlib needs ``dlib``, MTCNN the ``mtcnn``
            package (skipped with a note when missing).
        repeats: timed rounds.
        warmup: untimed calls per case before timing.
        sample_seconds: approximate duration of one timing sample.
        batch_size: faces per batch of the throughput measurement.
        image_size: side of the synthetic test images (the crop's cost grows with it).
        dlib_faces: synthetic faces dlib is trained on.
        dlib_options: dlib training options (``None``: dlib's defaults with
            ``DLIB_TRAINING_SHORTCUTS``).
        train_steps_per_sample: training steps per timing sample.
        train: also measure training throughput.
        threads: TensorFlow intra-op threads (and TFLite threads).
        inter_op_threads: TensorFlow inter-op threads (``None``: ``threads``).
        profile: ``"auto"`` (profile models that miss a target), ``"always"`` or
            ``"never"``.
        profile_traces: traced runs averaged by the op-level profile.
        roofline: report each model's FLOPs and bytes per face, this machine's
            measured matmul rate and bandwidth, and each form's fraction of the bound
            (``experiments.speed.roofline``).
        use_gpu: also time on ``/GPU:0`` when one is visible.
        seed: seed of the synthetic faces, the weights and the timing order.
        preset: name recorded in the output (``"paper"`` or ``"tiny"``).
    """

    models: tuple[str, ...] = MODELS
    msrrn_config: Any = None
    ccnn_config: Any = None
    msrrn_model: str | None = None
    ccnn_model: str | None = None
    msrrn_flip_test: bool | None = None
    ccnn_flip_test: bool | None = None
    ccnn_confidence_source: str | None = None
    peers: tuple[str, ...] = PEERS
    repeats: int = 15
    warmup: int = 2
    sample_seconds: float = 0.05
    batch_size: int = 64
    image_size: int = 256
    dlib_faces: int = 200
    dlib_options: Mapping[str, Any] | None = None
    train_steps_per_sample: int = 2
    train: bool = True
    threads: int = 2
    inter_op_threads: int | None = None
    profile: str = "auto"
    profile_traces: int = 3
    roofline: bool = True
    use_gpu: bool = True
    seed: int = 0
    preset: str = "paper"


_BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {"dlib_faces": 12, "dlib_options": TINY_DLIB_OPTIONS, "image_size": 96,
             "batch_size": 8, "train_steps_per_sample": 1, "sample_seconds": 0.01,
             "profile_traces": 1},
}
"""What each benchmark preset changes in the timing (the models come from the
``MSRRNConfig`` / ``CCNNConfig`` preset of the same name)."""


def preset_options(preset: str, **overrides: Any) -> BenchOptions:
    """``BenchOptions`` of a preset with ``overrides`` applied.

    Args:
        preset: ``"paper"`` (the paper configs, dlib's default predictor size) or
            ``"tiny"`` (tiny models, tiny dlib, small images: a smoke test whose
            numbers mean nothing).
        **overrides: ``BenchOptions`` fields.

    Returns:
        The options.
    """
    from ccnn_tf.config import CCNNConfig
    from msrrn_tf.config import MSRRNConfig

    if preset not in _BENCH_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(_BENCH_PRESETS)}")
    # The models are the configs' own presets of that name (defined only there).
    values: dict[str, Any] = {"msrrn_config": MSRRNConfig.preset(preset),
                              "ccnn_config": CCNNConfig.preset(preset),
                              **_BENCH_PRESETS[preset]}
    values.update(overrides)
    return BenchOptions(preset=preset, **values)
