"""Inference and training speed of MSRRN and CCNN beside dlib ERT and MTCNN's ONet.

Usage::

    python -m experiments.bench_speed                      # paper configs, CPU
    python -m experiments.bench_speed --repeats=30 --models=ccnn
    python -m experiments.bench_speed --msrrn_model=runs/msrrn --ccnn_model=runs/ccnn
    python -m experiments.bench_speed --preset=tiny --repeats=2   # smoke run

Writes ``bench_speed.json`` and ``bench_speed.md`` under ``--output`` and prints the
Markdown.

What is measured, per face at batch 1 (latency, ms/face) and for batches of
``--batch_size`` faces (throughput, faces/s):

* our models (``msrrn``: 68 points, ``msrrn_tf.config.MSRRNConfig``; ``ccnn``: 5 points,
  ``ccnn_tf.config.CCNNConfig``) in these forms:

  - ``keras_eager``: ``model(crops, training=False)``, eager Keras call on faces
    already cropped by ``common.geometry.preprocess_faces``;
  - ``keras_predict_on_batch``: ``model.predict_on_batch(crops)`` (Keras' compiled
    predict function; its ``jit_compile="auto"`` leaves XLA off on CPU-only machines);
  - ``saved_model_default``: the exported ``serving_default`` signature on uint8
    images + face boxes, i.e. end to end: input checks, the crop
    (``preprocess_faces``), the model and the mapping back to pixels;
  - ``saved_model_cropped``: the exported ``serving_cropped`` signature on crops;
  - ``tflite``: ``tf.lite.Interpreter`` on the cropped-input TFLite file
    (MSRRN: ``common.export.export_tflite``; CCNN: ``ccnn_tf.export.export_tflite``,
    which calls it on a batch-1 trace with builtin-op window crops, since
    ``CropAndResize`` is no TFLite builtin). The batch is run face by face, as
    ``common.export.run_tflite`` does;
  - ``tflite_batch_invoke`` (only for a TFLite file with a dynamic batch): the whole
    batch in one ``invoke``;
  - ``crop_only``: ``preprocess_faces`` alone, the part of ``saved_model_default``
    that the ``*_cropped``, ``keras_*`` and ``tflite`` rows do not include;

* ``dlib_ert_68`` / ``dlib_ert_5``: ``experiments.peers.DlibERT`` (dlib's
  ``shape_predictor``, single-threaded) trained on ``--dlib_faces`` synthetic faces.
  The predictor has dlib's default size (10 cascade levels x 500 trees of depth 4,
  400 feature-pool pixels), which is what its prediction time depends on; only
  training-time options (``oversampling_amount``, ``num_test_splits``,
  ``DLIB_TRAINING_SHORTCUTS``) are lowered so that training takes about a minute.
  Its accuracy is irrelevant here. A batch is a loop over ``predict``;
* ``mtcnn_onet``: the landmark stage of MTCNN (``experiments.peers.MTCNNPeer`` in
  ``"box"`` mode: ONet alone on the given box, with the package's own crop,
  normalisation and landmark mapping). Batch 1 is ``MTCNNPeer.predict``; a batch
  runs ONet once on the patches of all its faces (as MTCNN runs ONet on all
  proposals at once), with the same package functions.

Training throughput (faces/s): the compiled loop of ``common.training.train_model``
(its ``_make_train_loop``: forward, the models' own losses, L2 penalties, gradients,
SGD update) on a fixed in-memory batch of synthetic faces (the input pipeline is
measured by ``experiments.bench_pipeline``), with the config's batch size: MSRRN (the
eq. 5 loss over every stage) and each CCNN stage (trained with the earlier stages
frozen, as ``ccnn_tf.training`` does).

Method. Every case is warmed up (``--warmup`` calls; the first one traces), then timed
in ``--repeats`` rounds; in each round every case is timed once, in a shuffled order,
so that the load of other processes on the machine falls on all rows alike. A sample
is the mean over enough consecutive calls to last about ``--sample_seconds``. Reported:
median and interquartile range (q25-q75) over the rounds, and the process CPU time per
wall second (up to the thread count; lower values mean that other processes took the
cores). Compare rows of one run only.

Without ``--msrrn_model`` / ``--ccnn_model`` the models are freshly built (untrained)
with the paper configs: the speed does not depend on the weights. When GPUs are
visible the TensorFlow forms and training are also timed on ``/GPU:0`` (TFLite, dlib
and MTCNN stay on the CPU); without one that part is skipped.

Targets (``TARGETS``) are checked for the exported forms on the CPU. When a model
misses one (``--profile=auto``), ``serving_default`` is profiled: op-level times from a
traced run (``tf.compat.v1`` session with ``FULL_TRACE`` on the exported graph),
grouped by op type and by layer, and the time of every cascade stage (prefix models
sharing the weights).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

MODELS = ("msrrn", "ccnn")
PEERS = ("dlib_ert", "mtcnn_box")

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
    "saved_model_default": "SavedModel serving_default: uint8 images + boxes (incl. crop)",
    "saved_model_cropped": "SavedModel serving_cropped on crops",
    "tflite": "TFLite interpreter on crops, face by face",
    "tflite_batch_invoke": "TFLite interpreter on crops, one invoke per batch",
    "crop_only": "preprocess_faces alone (the crop in serving_default)",
    "dlib_predict": "dlib shape_predictor on image + box (1 thread)",
    "onet_box": "MTCNN ONet on image + box (package crop)",
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
    use_gpu: bool = True
    seed: int = 0
    preset: str = "paper"


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
    if preset == "paper":
        values: dict[str, Any] = {}
    elif preset == "tiny":
        from ccnn_tf.config import CCNNConfig
        from msrrn_tf.config import MSRRNConfig

        values = {"msrrn_config": MSRRNConfig.small(scales=(24, 48, 96), patch_size=8,
                                                    batch_size=8),
                  "ccnn_config": CCNNConfig.tiny(), "dlib_faces": 12,
                  "dlib_options": TINY_DLIB_OPTIONS, "image_size": 96, "batch_size": 8,
                  "train_steps_per_sample": 1, "sample_seconds": 0.01,
                  "profile_traces": 1}
    else:
        raise ValueError(f"unknown preset {preset!r}; expected 'paper' or 'tiny'")
    values.update(overrides)
    return BenchOptions(preset=preset, **values)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One timed thing: ``fn()`` processes ``faces`` faces (a batch, or training steps).

    Attributes:
        method: "msrrn", "ccnn", "dlib_ert_68", "mtcnn_onet", ...
        form: a key of ``FORM_DESCRIPTIONS``, or "train" / "train_stage_k".
        device: "CPU" or "GPU".
        faces: faces per call of ``fn``.
        fn: the call to time; it returns once the result is available.
        steps: training steps per call (training cases).
        inner: calls per sample (set by the warm-up).
        seconds: per-call wall seconds, one per sample.
        cpu_seconds: per-call process CPU seconds, one per sample.
    """

    method: str
    form: str
    device: str
    faces: int
    fn: Callable[[], Any]
    steps: int = 0
    inner: int = 1
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)


def _sample(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per call over ``calls`` consecutive calls."""
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - start
    return wall / calls, (time.process_time() - cpu) / calls


def time_cases(cases: Sequence[Case], *, repeats: int, warmup: int, sample_seconds: float,
               seed: int = 0, max_inner: int = 200, log: Callable[[str], None] | None = None
               ) -> None:
    """Times ``cases`` in interleaved rounds (fills ``Case.seconds``/``cpu_seconds``).

    Each case is called ``warmup`` times (at least once; the last warm-up call sets
    ``inner``, the number of calls per sample, to last about ``sample_seconds``;
    training cases keep one call per sample). Then, ``repeats`` times, every case is
    sampled once in a freshly shuffled order.
    """
    rng = np.random.default_rng(seed)
    for case in cases:
        for _ in range(max(warmup - 1, 0)):
            case.fn()
        once, _ = _sample(case.fn, 1)
        if not case.steps:
            case.inner = int(np.clip(round(sample_seconds / max(once, 1e-9)), 1, max_inner))
    for round_index in range(repeats):
        for i in rng.permutation(len(cases)):
            case = cases[i]
            wall, cpu = _sample(case.fn, case.inner)
            case.seconds.append(wall)
            case.cpu_seconds.append(cpu)
        if log is not None:
            log(f"  round {round_index + 1}/{repeats} done")


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def latency_summary(case: Case) -> dict[str, float]:
    """ms per face of a batch-1 case: median, q25, q75 over its samples."""
    q25, q50, q75 = _quartiles([1000.0 * s / case.faces for s in case.seconds])
    return {"median_ms_per_face": q50, "q25_ms_per_face": q25, "q75_ms_per_face": q75,
            **_common_summary(case)}


def throughput_summary(case: Case) -> dict[str, float]:
    """faces/s of a batched (or training) case: median, q25, q75 over its samples."""
    q25, q50, q75 = _quartiles([case.faces / s for s in case.seconds])
    return {"median_faces_per_s": q50, "q25_faces_per_s": q25, "q75_faces_per_s": q75,
            "median_ms_per_batch": 1000.0 * float(np.median(case.seconds))
            / max(case.steps, 1),
            "batch_size": case.faces // max(case.steps, 1), **_common_summary(case)}


def _common_summary(case: Case) -> dict[str, float]:
    wall, cpu = np.asarray(case.seconds), np.asarray(case.cpu_seconds)
    return {"samples": len(case.seconds), "calls_per_sample": case.inner,
            "cpu_ms_per_face": 1000.0 * float(np.median(cpu)) / case.faces,
            "cpu_per_wall": float(np.median(cpu / wall))}


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def configure_threads(intra: int, inter: int) -> dict[str, Any]:
    """Sets ``tf.config.threading`` (before TensorFlow starts) and reports it.

    Returns:
        ``{"intra_op": ..., "inter_op": ..., "applied": bool, "note": ...}``; when
        TensorFlow was already running the settings cannot change and the current
        ones (0 = TensorFlow's default, one per core) are reported.
    """
    import tensorflow as tf

    note = ""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        applied = True
    except RuntimeError as error:  # the runtime is already initialised
        applied, note = False, str(error)
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "applied": applied, "note": note}


def environment_report() -> dict[str, Any]:
    """Versions, CPUs, load average and the thread-related environment variables."""
    import keras
    import tensorflow as tf

    affinity = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count())
    env_keys = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                "TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES")
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpus_usable": affinity,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "env": {k: os.environ[k] for k in env_keys if k in os.environ}}


@contextlib.contextmanager
def _quiet_lite() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated",
                                category=UserWarning)
        yield


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Faces:
    """Synthetic test faces (``common.synthetic``), one per image.

    Attributes:
        images: uint8 ``[N, S, S, 3]``.
        boxes: float32 ``[N, 4]`` detector-like face boxes.
        landmarks68: float32 ``[N, 68, 2]`` pixels.
        landmarks5: float32 ``[N, 5, 2]`` pixels.
    """

    images: np.ndarray
    boxes: np.ndarray
    landmarks68: np.ndarray
    landmarks5: np.ndarray

    def landmarks(self, num_points: int) -> np.ndarray:
        return self.landmarks68 if num_points == 68 else self.landmarks5


def synthetic_faces(count: int, image_size: int, seed: int) -> Faces:
    """``count`` synthetic faces of ``image_size`` pixels (faces ``0..count-1`` of
    ``seed``)."""
    from common import synthetic

    config = synthetic.SyntheticFaceConfig(image_size=image_size)
    faces = [synthetic.generate_face(i, seed, config) for i in range(count)]
    return Faces(images=np.stack([f.image for f in faces]),
                 boxes=np.stack([f.box for f in faces]).astype(np.float32),
                 landmarks68=np.stack([f.landmarks68 for f in faces]),
                 landmarks5=np.stack([f.landmarks5 for f in faces]))


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelUnderTest:
    """One of our models and how it is fed.

    Attributes:
        name: "msrrn" or "ccnn".
        model: the Keras model (variables on the CPU).
        sizes: input sides (``image_<s>`` keys).
        margin: crop margin of ``preprocess_faces``.
        num_landmarks: L.
        train_batch_size: batch of the training-throughput measurement.
        train_config: the config the training step is built from (optimiser).
        source: where the weights come from (for the report).
    """

    name: str
    model: Any
    sizes: tuple[int, ...]
    margin: float
    num_landmarks: int
    train_batch_size: int
    train_config: Any
    source: str


def _model_file(path: str) -> str:
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.keras")
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"{path} holds no model.keras")
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model at {path!r}")
    return path


def load_or_build(name: str, path: str | None, config: Any,
                  flip_test: bool | None = None) -> ModelUnderTest:
    """A trained model from ``path``, or a fresh one from ``config`` (paper defaults).

    Args:
        name: "msrrn" or "ccnn".
        path: ``.keras`` file or run folder with ``model.keras``; ``None`` to build.
        config: ``MSRRNConfig`` / ``CCNNConfig`` (``None``: the paper's defaults).
            With a ``path`` only its training batch size and optimiser are used.
        flip_test: MSRRN only: switch its flip test on or off; ``None``: as it is.

    Returns:
        The model, built with its variables on the CPU.
    """
    import keras
    import tensorflow as tf

    if name == "msrrn":
        from msrrn_tf.config import MSRRNConfig
        from msrrn_tf.model import build_msrrn

        config = config or MSRRNConfig()
        with tf.device("/CPU:0"):
            if path:
                model = keras.saving.load_model(_model_file(path), compile=False)
            else:
                model = build_msrrn(config)
            model = model.with_flip_test(flip_test)
        if path:
            from msrrn_tf.evaluate import model_margin

            margin = model_margin(_model_file(path), config.margin)
        else:
            margin = config.margin
        return ModelUnderTest(
            name, model, tuple(model.input_sizes), margin, model.num_landmarks,
            config.batch_size, config,
            f"{_model_file(path)} (trained)" if path else "freshly built MSRRNConfig"
            f"{'()' if config == MSRRNConfig() else '(...)'} (untrained)"
            + ("" if flip_test is None else f", flip test switched {'on' if flip_test else 'off'}"))
    if name == "ccnn":
        from ccnn_tf.config import CCNNConfig
        from ccnn_tf.model import build_ccnn

        config = config or CCNNConfig()
        with tf.device("/CPU:0"):
            if path:
                model = keras.saving.load_model(_model_file(path), compile=False)
            else:
                model = build_ccnn(config)
        args = model.get_config()
        return ModelUnderTest(
            name, model, (int(args["input_size"]),), float(args["margin"]),
            int(args["num_points"]), config.batch_size, config,
            f"{_model_file(path)} (trained)" if path else "freshly built CCNNConfig"
            f"{'()' if config == CCNNConfig() else '(...)'} (untrained)")
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def _clone(model: Any, **changes: Any) -> Any:
    """A new model of the same class from ``get_config`` with ``changes`` (fresh weights)."""
    return type(model).from_config({**model.get_config(), **changes})


def _on_device(model: Any, device: str) -> Any:
    """``model`` with its variables on ``device`` (a copy for the GPU)."""
    import tensorflow as tf

    if device == "CPU":
        return model
    with tf.device(f"/{device}:0"):
        copy = _clone(model)
        copy.set_weights(model.get_weights())
    return copy


def _sync(device: str) -> None:
    if device != "CPU":
        import tensorflow as tf

        tf.test.experimental.sync_devices()


def _crops(mut: ModelUnderTest, images: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
    import tensorflow as tf

    from common import geometry

    with tf.device("/CPU:0"):
        inputs, _ = geometry.preprocess_faces(tf.constant(images), tf.constant(boxes),
                                              mut.sizes, mut.margin)
    return {k: v.numpy() for k, v in inputs.items()}


def export_model(mut: ModelUnderTest, work_dir: str) -> dict[str, Any]:
    """Exports the SavedModel and the cropped-input TFLite file of a model.

    Returns:
        ``{"saved_model": dir, "tflite": path, "tflite_bytes": n, "seconds": {...}}``.
    """
    from common import export

    result: dict[str, Any] = {"seconds": {}}
    start = time.perf_counter()
    result["saved_model"] = export.export_saved_model(
        mut.model, os.path.join(work_dir, f"{mut.name}_saved_model"), sizes=mut.sizes,
        margin=mut.margin, num_landmarks=mut.num_landmarks)
    result["seconds"]["saved_model"] = time.perf_counter() - start
    path = os.path.join(work_dir, f"{mut.name}.tflite")
    start = time.perf_counter()
    if mut.name == "ccnn":
        from ccnn_tf.export import export_tflite as ccnn_export_tflite

        ccnn_export_tflite(mut.model, path)
    else:
        export.export_tflite(result["saved_model"], path)
    result["seconds"]["tflite"] = time.perf_counter() - start
    result["tflite"] = path
    result["tflite_bytes"] = os.path.getsize(path)
    return result


def model_cases(mut: ModelUnderTest, exported: Mapping[str, Any], faces: Faces,
                batch_size: int, device: str, threads: int) -> list[Case]:
    """The inference cases of one model on one device (batch 1 and ``batch_size``)."""
    import tensorflow as tf

    from common import export, geometry

    tf_device = f"/{device}:0"
    cases: list[Case] = []
    with tf.device(tf_device):
        model = _on_device(mut.model, device)
        loaded = tf.saved_model.load(exported["saved_model"])
        serve_default = loaded.signatures[export.DEFAULT_SIGNATURE]
        serve_cropped = loaded.signatures[export.CROPPED_SIGNATURE]

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                      tf.TensorSpec([None, 4], tf.float32)])
        def crop(images, boxes):
            return geometry.preprocess_faces(images, boxes, mut.sizes, mut.margin)[0]

    def on_device(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            with tf.device(tf_device):
                out = fn()
            _sync(device)
            return out
        return call

    for batch in (1, batch_size):
        images, boxes = faces.images[:batch], faces.boxes[:batch]
        cropped = _crops(mut, images, boxes)
        with tf.device(tf_device):
            images_t, boxes_t = tf.constant(images), tf.constant(boxes)
            crops_t = {k: tf.constant(v) for k, v in cropped.items()}
        fns = {
            "keras_eager": lambda c=crops_t: model(c, training=False)["landmarks"].numpy(),
            "keras_predict_on_batch":
                lambda c=crops_t: model.predict_on_batch(c)["landmarks"],
            "saved_model_default": lambda i=images_t, b=boxes_t: serve_default(
                images=i, boxes=b)["landmarks"].numpy(),
            "saved_model_cropped":
                lambda c=crops_t: serve_cropped(**c)["landmarks"].numpy(),
            "crop_only": lambda i=images_t, b=boxes_t: crop(i, b),
        }
        cases += [Case(mut.name, form, device, batch, on_device(fn))
                  for form, fn in fns.items()]
        if device == "CPU":
            cases += tflite_cases(mut.name, exported["tflite"], cropped, threads)
    return cases


def _interpreter(path: str, threads: int):
    import tensorflow as tf

    with _quiet_lite():
        return tf.lite.Interpreter(model_path=path, num_threads=threads)


def tflite_cases(name: str, path: str, cropped: Mapping[str, np.ndarray], threads: int
                 ) -> list[Case]:
    """TFLite cases for one batch of crops: face by face, and in one invoke when the
    file has a dynamic batch."""
    from common.export import CROPPED_SIGNATURE

    batch = len(next(iter(cropped.values())))
    per_face = [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in cropped.items()}
                for i in range(batch)]
    runner = _interpreter(path, threads).get_signature_runner(CROPPED_SIGNATURE)

    def face_by_face():
        return [runner(**inputs)["landmarks"] for inputs in per_face]

    cases = [Case(name, "tflite", "CPU", batch, face_by_face)]
    interpreter = _interpreter(path, threads)
    dynamic = all(int(d["shape_signature"][0]) == -1
                  for d in interpreter.get_input_details())
    if batch > 1 and dynamic:
        batched = interpreter.get_signature_runner(CROPPED_SIGNATURE)
        inputs = {k: np.ascontiguousarray(v) for k, v in cropped.items()}
        cases.append(Case(name, "tflite_batch_invoke", "CPU", batch,
                          lambda: batched(**inputs)["landmarks"]))
    return cases


# --------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------


def dlib_cases(faces: Faces, train_faces: Faces, num_points: int, options: Mapping[str, Any],
               batch_size: int, threads: int) -> tuple[list[Case], dict[str, Any]]:
    """Trains dlib ERT on ``train_faces`` and returns its cases and its description."""
    from experiments.peers import DLIB_DEFAULT_OPTIONS, DlibERT

    train = [(image, points, box) for image, points, box in zip(
        train_faces.images, train_faces.landmarks(num_points), train_faces.boxes)]
    peer = DlibERT.train(train, dict(options), num_threads=threads)
    method = f"dlib_ert_{num_points}"
    images = list(faces.images[:batch_size])
    boxes = faces.boxes[:batch_size]
    cases = [Case(method, "dlib_predict", "CPU", 1,
                  lambda: peer.predict(faces.images[0], faces.boxes[0])),
             Case(method, "dlib_predict", "CPU", batch_size,
                  lambda: peer.predict_batch(images, boxes))]
    default_size = all(peer.resolved_options[key] == DLIB_DEFAULT_OPTIONS[key]
                       for key in DLIB_PREDICTOR_SIZE_OPTIONS)
    info = {"train_faces": len(train), "train_seconds": peer.train_seconds,
            "options": peer.resolved_options, "predict_threads": 1,
            "default_predictor_size": default_size}
    return cases, info


def mtcnn_onet_batch(peer: Any, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """ONet on one face per image, all faces in one ONet call.

    The steps of ``MTCNNPeer.onet_on_boxes`` (square boxes, the package's
    normalisation, ``extract_patches`` at 48 x 48, ONet, ``adjust_landmarks``) with
    face ``i`` taken from ``images[i]``.

    Returns:
        float32 ``[N, 5, 2]`` pixels.
    """
    import tensorflow as tf
    from mtcnn.utils.images import extract_patches, normalize_images
    from mtcnn.utils.landmarks import adjust_landmarks

    from experiments.peers import MTCNN_ONET_SIZE, square_box

    squares = np.stack([square_box(box) for box in boxes])
    rows = np.concatenate([np.arange(len(squares), dtype=np.float64)[:, None], squares], 1)
    normalised = normalize_images(np.asarray(images, np.float32))
    patches = extract_patches(tf.constant(normalised), rows,
                              expected_size=(MTCNN_ONET_SIZE, MTCNN_ONET_SIZE))
    _, landmarks, _ = peer.onet(patches)
    landmarks = np.asarray(adjust_landmarks(landmarks, rows), np.float64)
    return np.stack([landmarks[:, 0:5], landmarks[:, 5:10]], axis=-1).astype(np.float32)


def mtcnn_cases(faces: Faces, batch_size: int) -> list[Case]:
    """MTCNN's ONet on the given boxes, on the CPU."""
    import tensorflow as tf

    from experiments.peers import MTCNNPeer

    with tf.device("/CPU:0"):
        peer = MTCNNPeer(mode="box")
        _ = peer.onet  # built here, so its variables live on the CPU
    images, boxes = faces.images[:batch_size], faces.boxes[:batch_size]

    def on_cpu(fn):
        def call():
            with tf.device("/CPU:0"):
                return fn()
        return call

    return [Case("mtcnn_onet", "onet_box", "CPU", 1,
                 on_cpu(lambda: peer.predict(faces.images[0], faces.boxes[0]))),
            Case("mtcnn_onet", "onet_box", "CPU", batch_size,
                 on_cpu(lambda: mtcnn_onet_batch(peer, images, boxes)))]


# --------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------


def _training_batch(mut: ModelUnderTest, faces: Faces, batch_size: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A training batch of synthetic crops and their normalised landmarks."""
    import tensorflow as tf

    from common import geometry

    index = np.arange(batch_size) % len(faces.images)
    images, boxes = faces.images[index], faces.boxes[index]
    with tf.device("/CPU:0"):
        inputs, crop_boxes = geometry.preprocess_faces(
            tf.constant(images), tf.constant(boxes), mut.sizes, mut.margin)
        targets = geometry.image_to_crop(faces.landmarks(mut.num_landmarks)[index], crop_boxes)
    return ({k: v.numpy() for k, v in inputs.items()},
            {"landmarks": targets.numpy().astype(np.float32)})


def _train_step_case(method: str, form: str, device: str, model: Any, optimizer: Any,
                     loss: Any, inputs: Mapping[str, np.ndarray],
                     targets: Mapping[str, np.ndarray], steps: int) -> Case:
    """A case running ``steps`` steps of ``common.training``'s compiled training loop.

    Uses the runner's own (private) loop so that the measured step is exactly the one
    ``train_model`` runs, without its checkpoints and logs.
    """
    import tensorflow as tf

    from common import training

    strategy = tf.distribute.get_strategy()
    dataset = tf.data.Dataset.from_tensors((dict(inputs), dict(targets)))
    model_built, optimizer_built, step_var = training._build_model_and_optimizer(
        lambda: model, lambda: optimizer, dataset)
    loop = training._make_train_loop(strategy, model_built, optimizer_built,
                                     training._LossComputer(loss, None), step_var,
                                     jit_compile=False)
    iterator = iter(training._distribute(strategy, dataset, repeat=True))
    num_steps = tf.constant(steps, tf.int32)
    batch = len(next(iter(inputs.values())))
    tf_device = f"/{device}:0"

    def run():
        with tf.device(tf_device):
            return float(loop(iterator, num_steps))

    return Case(method, form, device, batch * steps, run, steps=steps)


def training_cases(mut: ModelUnderTest, faces: Faces, device: str, steps: int) -> list[Case]:
    """Training-throughput cases: MSRRN's step, or one per CCNN stage."""
    import keras
    import tensorflow as tf

    inputs, targets = _training_batch(mut, faces, mut.train_batch_size)
    cases = []
    with tf.device(f"/{device}:0"):
        if mut.name == "msrrn":
            from msrrn_tf.training import stage_losses

            model = _clone(mut.model)
            optimizer = keras.optimizers.SGD(mut.train_config.learning_rate,
                                              momentum=mut.train_config.momentum)
            loss = stage_losses(model.num_stages, model.init)
            cases.append(_train_step_case("msrrn", "train", device, model, optimizer, loss,
                                          inputs, targets, steps))
        else:
            from ccnn_tf.training import (
                build_optimizer,
                network_layout,
                window_relative_loss,
            )

            num_stages = mut.model.get_config()["num_stages"]
            for stage in range(1, num_stages + 1):
                model = _clone(mut.model, num_stages=stage,
                               frozen_stages=tuple(range(1, stage)), network_outputs=True)
                loss = {f"stage_{stage}_networks":
                        window_relative_loss(network_layout(model.stage_layer(stage)))}
                cases.append(_train_step_case(
                    "ccnn", f"train_stage_{stage}", device, model,
                    build_optimizer(mut.train_config), loss, inputs, targets, steps))
    return cases


# --------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------


_CALL_PREFIX = re.compile(r"^(Stateful)?PartitionedCall(_\d+)?$")


def _scope(node_name: str, model_name: str, model_scopes: frozenset[str] = frozenset()
           ) -> str:
    """Groups a traced node by layer: ``model/<layer>`` or ``serving/<op group>``.

    Nodes under the model's name scope are the model's; so are top-level nodes named
    after one of its (nested) layers, ``model_scopes`` (the components of its weight
    paths). Everything else belongs to the serving function (crop, mapping back).
    """
    parts = [p for p in node_name.split("/") if not _CALL_PREFIX.match(p)]
    if not parts:
        return "serving/(call)"
    if re.fullmatch(re.escape(model_name) + r"(_\d+)?", parts[0]):
        return f"model/{parts[1] if len(parts) > 1 else parts[0]}"
    base = re.sub(r"_\d+$", "", parts[0])
    if parts[0] in model_scopes or base in model_scopes:
        return f"model/{parts[0]}"
    return f"serving/{base}"


def profile_ops(export_dir: str, images: np.ndarray, boxes: np.ndarray, *, model_name: str,
                intra: int, inter: int, traces: int = 3, top: int = 12,
                model_scopes: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Op-level profile of ``serving_default`` for one batch.

    Loads the exported graph in a ``tf.compat.v1`` session (same thread settings) and
    runs it with ``FULL_TRACE``; op durations are summed by op type and by layer and
    averaged over ``traces`` runs. With inter-op parallelism, ops overlap, so the
    summed op time can exceed the wall time.

    Returns:
        ``{"wall_ms", "traced_wall_ms", "op_ms_total", "by_op_type": [[name, ms,
        share], ...], "by_scope": [...]}``.
    """
    import tensorflow as tf

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra,
                                      inter_op_parallelism_threads=inter)
    by_type: collections.Counter = collections.Counter()
    by_scope: collections.Counter = collections.Counter()
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the v1 loader's deprecation notice
    try:
        with graph.as_default(), tf.compat.v1.Session(graph=graph, config=config) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
            signature = meta.signature_def["serving_default"]
            feed = {signature.inputs["images"].name: images,
                    signature.inputs["boxes"].name: boxes}
            fetch = signature.outputs["landmarks"].name
            for _ in range(2):
                sess.run(fetch, feed)
            walls = []
            for _ in range(3):
                start = time.perf_counter()
                sess.run(fetch, feed)
                walls.append(time.perf_counter() - start)
            traced = []
            options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
            for _ in range(traces):
                metadata = tf.compat.v1.RunMetadata()
                start = time.perf_counter()
                sess.run(fetch, feed, options=options, run_metadata=metadata)
                traced.append(time.perf_counter() - start)
                for device in metadata.step_stats.dev_stats:
                    for node in device.node_stats:
                        micros = node.op_end_rel_micros - node.op_start_rel_micros
                        label = node.timeline_label
                        op_type = (label.split(" = ", 1)[1].split("(", 1)[0]
                                   if " = " in label else node.node_name)
                        by_type[op_type] += micros
                        by_scope[_scope(node.node_name, model_name, model_scopes)] += micros
    finally:
        logger.setLevel(level)
    total = sum(by_type.values())

    def table(counter):
        return [[name, micros / 1000.0 / traces, micros / total if total else 0.0]
                for name, micros in counter.most_common(top)]

    return {"batch_size": len(images), "wall_ms": 1000.0 * float(np.median(walls)),
            "traced_wall_ms": 1000.0 * float(np.median(traced)),
            "op_ms_total": total / 1000.0 / traces, "by_op_type": table(by_type),
            "by_scope": table(by_scope)}


def stage_cases(mut: ModelUnderTest, faces: Faces, batch_size: int) -> list[Case]:
    """Prefix models (the first k stages, shared weights) as compiled functions, and
    MSRRN's initial-shape network alone, on the CPU."""
    import tensorflow as tf

    from ccnn_tf.model import transfer_stage_weights

    model = mut.model
    num_stages = model.get_config()["num_stages"]
    parts: dict[str, Callable] = {}
    with tf.device("/CPU:0"):
        if mut.name == "msrrn":
            normalise = model.get_layer("normalise")

            @tf.function
            def initial_shape(crops):
                return model.initial_shape(normalise(crops[f"image_{model.scales[0]}"]))

            parts["initial shape S^0"] = initial_shape
        for k in range(1, num_stages + 1):
            if k == num_stages:
                prefix = model
            else:
                prefix = _clone(model, num_stages=k, **(
                    {"frozen_stages": ()} if mut.name == "ccnn" else {}))
                if mut.name == "ccnn":
                    transfer_stage_weights(model, prefix)
                else:
                    prefix.copy_weights_from(model)
            parts[f"stages 1..{k}"] = _compiled_landmarks(prefix)
    cases = []
    for batch in (1, batch_size):
        with tf.device("/CPU:0"):
            crops = {k: tf.constant(v) for k, v in _crops(
                mut, faces.images[:batch], faces.boxes[:batch]).items()}

        cases += [Case(mut.name, label, "CPU", batch, lambda f=fn, c=crops: _run_on_cpu(f, c))
                  for label, fn in parts.items()]
    return cases


def _compiled_landmarks(model: Any) -> Callable[[Mapping[str, Any]], Any]:
    """``crops -> model(crops)["landmarks"]`` as a ``tf.function``; keys the model does not
    take are dropped."""
    import tensorflow as tf

    names = frozenset(getattr(t, "name", "") for t in model.inputs)

    @tf.function
    def landmarks(crops):
        inputs = {key: value for key, value in crops.items() if key in names}
        return model(inputs, training=False)["landmarks"]

    return landmarks


def _run_on_cpu(fn: Callable[[Any], Any], inputs: Any) -> np.ndarray:
    import tensorflow as tf

    with tf.device("/CPU:0"):
        return fn(inputs).numpy()


def stage_summary(cases: Sequence[Case], batch_size: int) -> list[dict[str, Any]]:
    """Median ms per face of each part, and of each stage's increment.

    The increment of ``stages 1..k`` is the median over rounds of its time minus that
    of ``stages 1..k-1`` in the same round (paired, so load changes between rounds
    cancel); the initial-shape network is reported alone.
    """
    rows = []
    for batch in (1, batch_size):
        previous = None
        for case in (c for c in cases if c.faces == batch):
            seconds = np.asarray(case.seconds)
            if case.form.startswith("stages") and previous is not None:
                increment = seconds - previous
            else:
                increment = seconds
            if case.form.startswith("stages"):
                previous = seconds
            rows.append({"part": case.form, "batch_size": batch,
                         "ms_per_face": 1000.0 * float(np.median(seconds)) / batch,
                         "increment_ms_per_face": 1000.0 * float(np.median(increment)) / batch})
    return rows


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def result_rows(cases: Sequence[Case], batch_size: int) -> list[dict[str, Any]]:
    """One row per (method, form, device) with its batch-1 and batched summaries."""
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for case in cases:
        if case.steps:
            continue
        key = (case.method, case.form, case.device)
        row = grouped.setdefault(key, {
            "method": case.method, "form": case.form, "device": case.device,
            "description": FORM_DESCRIPTIONS.get(case.form, case.form),
            "includes_crop": case.form in ("saved_model_default", "crop_only",
                                           "dlib_predict", "onet_box"),
            "batch_1": None, "batched": None})
        if case.faces == 1 and row["batch_1"] is None:
            row["batch_1"] = latency_summary(case)
        if case.faces == batch_size and (batch_size > 1 or row["batched"] is None):
            row["batched"] = throughput_summary(case)
    return list(grouped.values())


def training_rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    return [{"model": c.method, "what": c.form, "device": c.device,
             "steps_per_sample": c.steps, **throughput_summary(c)}
            for c in cases if c.steps]


def check_targets(rows: Sequence[Mapping[str, Any]],
                  num_landmarks: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Pass/fail of ``TARGETS`` for the exported forms on the CPU.

    Args:
        rows: ``result_rows``.
        num_landmarks: ``{model: L}``; with it each check also holds the time of
            dlib ERT with as many points in the same run (``peer``, ``peer_ms_per_face``,
            ``peer_faces_per_s``), when it was measured.
    """
    peers = {row["method"]: row for row in rows
             if row["form"] == "dlib_predict" and row["device"] == "CPU"}
    checks = []
    for row in rows:
        target = TARGETS.get(row["method"])
        if target is None or row["form"] not in EXPORTED_FORMS or row["device"] != "CPU":
            continue
        check = {"method": row["method"], "form": row["form"], **target}
        peer = peers.get(f"dlib_ert_{(num_landmarks or {}).get(row['method'])}")
        if peer is not None:
            check["peer"] = peer["method"]
            if peer["batch_1"]:
                check["peer_ms_per_face"] = peer["batch_1"]["median_ms_per_face"]
            if peer["batched"]:
                check["peer_faces_per_s"] = peer["batched"]["median_faces_per_s"]
        if row["batch_1"]:
            ms = row["batch_1"]["median_ms_per_face"]
            check["ms_per_face"] = ms
            check["latency_pass"] = ms < target["max_ms_per_face"]
        if row["batched"]:
            rate = row["batched"]["median_faces_per_s"]
            check["faces_per_s"] = rate
            check["throughput_pass"] = rate >= target["min_faces_per_s"]
        check["pass"] = bool(check.get("latency_pass", True)
                             and check.get("throughput_pass", True))
        checks.append(check)
    return checks


def _fmt_value(summary: Mapping[str, float] | None, key: str, spec: str) -> str:
    return "-" if not summary else format(summary[key], spec)


def _fmt_latency(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return "-"
    return (f"{summary['median_ms_per_face']:.3g} "
            f"[{summary['q25_ms_per_face']:.3g}-{summary['q75_ms_per_face']:.3g}]")


def _fmt_rate(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return "-"
    return (f"{summary['median_faces_per_s']:.4g} "
            f"[{summary['q25_faces_per_s']:.4g}-{summary['q75_faces_per_s']:.4g}]")


def _target_text(row: Mapping[str, Any], checks: Sequence[Mapping[str, Any]]) -> str:
    for check in checks:
        if check["method"] == row["method"] and check["form"] == row["form"] \
                and row["device"] == "CPU":
            parts = []
            if "latency_pass" in check:
                parts.append(f"<{check['max_ms_per_face']:g} ms: "
                             f"{'PASS' if check['latency_pass'] else 'FAIL'}")
            if "throughput_pass" in check:
                parts.append(f">={check['min_faces_per_s']:g}/s: "
                             f"{'PASS' if check['throughput_pass'] else 'FAIL'}")
            return "; ".join(parts)
    return ""


def format_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown report of a ``run_benchmark`` result."""
    settings, env = result["settings"], result["environment"]
    threads = env["threads"]
    batch = settings["batch_size"]
    unset = "" if threads["applied"] else f" (could not be set: {threads['note']})"
    sources = " ".join(f"{name}: {info['source']}." for name, info in result["models"].items())
    if result.get("fresh_weights"):
        sources += " Speed does not depend on the weights."
    machine = (
        f"Threads: TensorFlow intra-op {threads['intra_op']}, inter-op "
        f"{threads['inter_op']}{unset}; TFLite {settings['threads']}; dlib 1 (its "
        f"predictor is single-threaded). CPUs usable: {env['cpus_usable']} of "
        f"{env['cpu_count']}; load average {_load(env.get('load_average'))} at the start, "
        f"{_load(result.get('load_average_end'))} at the end (a shared machine: compare "
        "rows of this run only).")
    method = (
        f"Each value: median [q25-q75] over {settings['repeats']} interleaved rounds "
        f"(shuffled order, {settings['warmup']} warm-up calls, one sample ~ "
        f"{settings['sample_seconds']:g} s); images {settings['image_size']} px "
        "(synthetic faces, one per image). CPU ms/face: median process CPU time per face "
        "(all threads; less sensitive to other processes than wall time). CPU/wall: CPU "
        "seconds per wall second (up to the thread count; less means the cores were "
        "taken by others).")
    header = (f"| method | form | device | ms/face at batch 1 | faces/s at batch {batch} | "
              f"CPU ms/face (1 / {batch}) | CPU/wall (1 / {batch}) | target |")
    lines = ["# Speed of MSRRN and CCNN beside dlib ERT and MTCNN (ONet)", "",
             f"Preset `{settings['preset']}`. {sources}", "", machine, method, "",
             header, "|---|---|---|---|---|---|---|---|"]
    checks = result["targets"]
    for row in result["rows"]:
        cpu_ms = " / ".join(_fmt_value(row[k], "cpu_ms_per_face", ".3g")
                            for k in ("batch_1", "batched"))
        cpu_wall = " / ".join(_fmt_value(row[k], "cpu_per_wall", ".2f")
                              for k in ("batch_1", "batched"))
        lines.append(f"| {row['method']} | {row['form']} | {row['device']} | "
                     f"{_fmt_latency(row['batch_1'])} | {_fmt_rate(row['batched'])} | "
                     f"{cpu_ms} | {cpu_wall} | {_target_text(row, checks)} |")
    for name, info in result.get("peers", {}).items():
        if "options" in info:
            o = info["options"]
            lines += ["", (f"{name}: trained on {info['train_faces']} synthetic faces in "
                      f"{info['train_seconds']:.0f} s; predictor of {o['cascade_depth']} "
                      f"cascade levels x {o['num_trees_per_cascade_level']} trees of depth "
                      f"{o['tree_depth']}, feature pool {o['feature_pool_size']} ("
                      + ("dlib's defaults" if info["default_predictor_size"]
                         else "NOT dlib's defaults: its time is not representative")
                      + "); training-only options "
                      f"oversampling_amount={o['oversampling_amount']}, "
                      f"num_test_splits={o['num_test_splits']}.")]
    lines += ["", "Forms: " + "; ".join(
        f"`{k}`: {v}" for k, v in FORM_DESCRIPTIONS.items()
        if any(r["form"] == k for r in result["rows"])) + "."]
    if result.get("training"):
        lines += ["", "## Training throughput", "",
                  "| model | what | device | batch | ms/step | faces/s |",
                  "|---|---|---|---|---|---|"]
        for row in result["training"]:
            lines.append(f"| {row['model']} | {row['what']} | {row['device']} | "
                         f"{row['batch_size']} | {row['median_ms_per_batch']:.4g} | "
                         f"{_fmt_rate(row)} |")
        lines += ["", ("Compiled training loop of `common.training.train_model` on a fixed "
                  "in-memory batch (no input pipeline).")]
    lines += ["", "## Targets (CPU, exported forms)", ""]
    for check in checks:
        peer = ""
        if "peer" in check:
            peer = (f"; {check['peer']} in this run: "
                    f"{check.get('peer_ms_per_face', float('nan')):.3g} ms/face, "
                    f"{check.get('peer_faces_per_s', float('nan')):.4g} faces/s")
        lines.append(f"* {check['method']} {check['form']}: "
                     f"{check.get('ms_per_face', float('nan')):.3g} ms/face (target < "
                     f"{check['max_ms_per_face']:g}: "
                     f"{'PASS' if check.get('latency_pass', True) else 'FAIL'}), "
                     f"{check.get('faces_per_s', float('nan')):.4g} faces/s (target >= "
                     f"{check['min_faces_per_s']:g}: "
                     f"{'PASS' if check.get('throughput_pass', True) else 'FAIL'}): "
                     f"{'PASS' if check['pass'] else 'FAIL'}{peer}")
    for name, profile in result.get("profile", {}).items():
        lines += ["", f"## Profile: {name}", ""]
        for part in profile.get("breakdown", []):
            lines.append(
                f"* batch {part['batch_size']}: serving_default "
                f"{part['serving_default_ms_per_face']:.3g} ms/face (wall) vs crop_only "
                f"{part['crop_ms_per_face']:.3g} + serving_cropped "
                f"{part['model_ms_per_face']:.3g}; CPU time: serving_default "
                f"{part['serving_default_cpu_ms_per_face']:.3g} ms/face vs crop "
                f"{part['crop_cpu_ms_per_face']:.3g} + model "
                f"{part['model_cpu_ms_per_face']:.3g} (crop {part['crop_share_cpu']:.0%})")
        if profile.get("stages"):
            lines += ["", "| part | batch | ms/face | increment ms/face |", "|---|---|---|---|"]
            for row in profile["stages"]:
                lines.append(f"| {row['part']} | {row['batch_size']} | "
                             f"{row['ms_per_face']:.3g} | {row['increment_ms_per_face']:.3g} |")
        for ops in profile.get("ops", []):
            lines += ["", (f"serving_default ops at batch {ops['batch_size']} (traced; wall "
                      f"{ops['wall_ms']:.3g} ms untraced, summed op time "
                      f"{ops['op_ms_total']:.3g} ms):"), "",
                      "| op type | ms | share | layer / op group | ms | share |",
                      "|---|---|---|---|---|---|"]
            for (t, t_ms, t_share), (s, s_ms, s_share) in zip(ops["by_op_type"],
                                                              ops["by_scope"]):
                lines.append(f"| {t} | {t_ms:.3g} | {t_share:.0%} | {s} | {s_ms:.3g} | "
                             f"{s_share:.0%} |")
    gpu = result["environment"]["gpu"]
    lines += ["", f"GPU: {gpu['note']}"]
    for note in result.get("notes", []):
        lines.append(f"* {note}")
    return "\n".join(line for line in lines if line is not None) + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.1f}" for v in values)


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json(dataclasses.asdict(value))
    return value


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def run_benchmark(options: BenchOptions, output_dir: str | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the benchmark; writes ``bench_speed.json`` and ``.md`` into ``output_dir``.

    Args:
        options: what to measure and how.
        output_dir: output folder (``None``: write nothing).
        log: progress messages.

    Returns:
        The result (the JSON content; ``"markdown"`` holds the report).
    """
    unknown = set(options.models) - set(MODELS) or set(options.peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown models/peers {sorted(unknown)}; known: {MODELS}, {PEERS}")
    if options.profile not in ("auto", "always", "never"):
        raise ValueError(f"profile must be auto, always or never, got {options.profile!r}")
    inter = options.inter_op_threads or options.threads
    threads = configure_threads(options.threads, inter)  # before TensorFlow starts
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(options.seed)
    env = environment_report()
    env["threads"] = threads
    gpus = tf.config.list_physical_devices("GPU") if options.use_gpu else []
    if not options.use_gpu:
        gpu_note = "disabled (--nogpu)"
    elif gpus:
        gpu_note = f"timed on {gpus[0].name} as well (TensorFlow forms and training)"
    else:
        gpu_note = "no GPU visible: the GPU measurements were skipped"
    env["gpu"] = {"available": bool(gpus), "devices": [g.name for g in gpus],
                  "note": gpu_note}
    devices = ["CPU"] + (["GPU"] if gpus else [])
    notes: list[str] = []
    start_all = time.perf_counter()
    user_log = log

    def log(message: str) -> None:
        user_log(f"[{time.perf_counter() - start_all:6.1f} s] {message}")

    log(f"generating {max(options.batch_size, 1)} synthetic test faces "
        f"({options.image_size} px)")
    faces = synthetic_faces(max(options.batch_size, 1), options.image_size, options.seed + 1)

    cases: list[Case] = []
    train_cases: list[Case] = []
    models: dict[str, ModelUnderTest] = {}
    exports: dict[str, dict[str, Any]] = {}
    model_info: dict[str, Any] = {}
    configs = {"msrrn": options.msrrn_config, "ccnn": options.ccnn_config}
    paths = {"msrrn": options.msrrn_model, "ccnn": options.ccnn_model}
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as work_dir:
        for name in options.models:
            log(f"{name}: building/loading, exporting SavedModel and TFLite")
            mut = load_or_build(name, paths[name], configs[name],
                                options.msrrn_flip_test if name == "msrrn" else None)
            models[name] = mut
            exports[name] = export_model(mut, work_dir)
            model_info[name] = {
                "source": mut.source, "sizes": list(mut.sizes), "margin": mut.margin,
                "num_landmarks": mut.num_landmarks,
                "parameters": int(mut.model.count_params()),
                "config": mut.model.get_config(), "train_batch_size": mut.train_batch_size,
                "tflite_bytes": exports[name]["tflite_bytes"],
                "export_seconds": exports[name]["seconds"]}
            for device in devices:
                cases += model_cases(mut, exports[name], faces, options.batch_size, device,
                                     options.threads)
                if options.train:
                    train_cases += training_cases(mut, faces, device,
                                                  options.train_steps_per_sample)

        peer_info: dict[str, Any] = {}
        if "dlib_ert" in options.peers:
            dlib_options = dict(options.dlib_options if options.dlib_options is not None
                                else DLIB_TRAINING_SHORTCUTS)
            point_counts = [models[n].num_landmarks for n in options.models] or [68]
            train_faces = synthetic_faces(options.dlib_faces, options.image_size,
                                          options.seed + 2)
            for num_points in sorted(set(point_counts), reverse=True):
                log(f"dlib ERT ({num_points} points): training on {options.dlib_faces} faces")
                try:
                    peer_cases, info = dlib_cases(faces, train_faces, num_points, dlib_options,
                                                  options.batch_size, options.threads)
                except ImportError as error:
                    notes.append(f"dlib ERT skipped: {error}")
                    break
                cases += peer_cases
                peer_info[f"dlib_ert_{num_points}"] = info
        if "mtcnn_box" in options.peers:
            try:
                cases += mtcnn_cases(faces, options.batch_size)
                peer_info["mtcnn_onet"] = {"mode": "box", "onet_input": 48}
            except ImportError as error:
                notes.append(f"MTCNN skipped: {error}")

        all_cases = cases + train_cases
        log(f"timing {len(all_cases)} cases x {options.repeats} rounds")
        time_cases(all_cases, repeats=options.repeats, warmup=options.warmup,
                   sample_seconds=options.sample_seconds, seed=options.seed, log=log)

        rows = result_rows(cases, options.batch_size)
        checks = check_targets(rows, {name: mut.num_landmarks
                                      for name, mut in models.items()})
        profile: dict[str, Any] = {}
        for name, mut in models.items():
            missed = any(not c["pass"] for c in checks if c["method"] == name)
            if options.profile == "never" or (options.profile == "auto" and not missed):
                continue
            log(f"{name}: profiling ({'a target was missed' if missed else 'requested'})")
            profile[name] = profile_model(mut, exports[name], faces, rows, options, inter)

    result = {
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fresh_weights": any(paths[n] is None for n in options.models),
        "weights_note": "models without a path are freshly built with the paper configs "
                        "(untrained); speed does not depend on the weights",
        "settings": {**{k: v for k, v in dataclasses.asdict(options).items()
                        if k not in ("msrrn_config", "ccnn_config")},
                     "inter_op_threads": inter},
        "environment": env,
        "models": model_info,
        "peers": peer_info,
        "rows": rows,
        "training": training_rows(train_cases),
        "targets": checks,
        "targets_definition": TARGETS,
        "profile": profile,
        "notes": notes,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "seconds": time.perf_counter() - start_all,
    }
    result = _to_json(result)
    markdown = format_markdown(result)
    if output_dir:
        from common.training import atomic_write_text

        os.makedirs(output_dir, exist_ok=True)
        atomic_write_text(os.path.join(output_dir, "bench_speed.json"),
                          json.dumps(result, indent=2) + "\n")
        atomic_write_text(os.path.join(output_dir, "bench_speed.md"), markdown)
    result["markdown"] = markdown
    return result


def profile_model(mut: ModelUnderTest, exported: Mapping[str, Any], faces: Faces,
                  rows: Sequence[Mapping[str, Any]], options: BenchOptions, inter: int
                  ) -> dict[str, Any]:
    """Where the time of ``serving_default`` goes: crop vs model, stages, ops."""
    def summary(form: str, batch: int) -> Mapping[str, float] | None:
        for row in rows:
            if row["method"] == mut.name and row["form"] == form and row["device"] == "CPU":
                return row["batch_1"] if batch == 1 else row["batched"]
        return None

    breakdown = []
    for batch in (1, options.batch_size):
        parts = {form: summary(form, batch) for form in
                 ("saved_model_default", "crop_only", "saved_model_cropped")}
        if not all(parts.values()):
            continue
        wall = {form: (s["median_ms_per_face"] if batch == 1
                       else 1000.0 / s["median_faces_per_s"]) for form, s in parts.items()}
        cpu = {form: s["cpu_ms_per_face"] for form, s in parts.items()}
        breakdown.append({
            "batch_size": batch, "serving_default_ms_per_face": wall["saved_model_default"],
            "crop_ms_per_face": wall["crop_only"],
            "model_ms_per_face": wall["saved_model_cropped"],
            "crop_share": wall["crop_only"] / wall["saved_model_default"],
            "serving_default_cpu_ms_per_face": cpu["saved_model_default"],
            "crop_cpu_ms_per_face": cpu["crop_only"],
            "model_cpu_ms_per_face": cpu["saved_model_cropped"],
            "crop_share_cpu": cpu["crop_only"] / (cpu["crop_only"] + cpu["saved_model_cropped"])})
    stages = stage_cases(mut, faces, options.batch_size)
    time_cases(stages, repeats=options.repeats, warmup=options.warmup,
               sample_seconds=options.sample_seconds, seed=options.seed + 1)
    scopes = frozenset(part for v in mut.model.weights for part in v.path.split("/"))
    ops = [profile_ops(exported["saved_model"], faces.images[:batch], faces.boxes[:batch],
                       model_name=mut.model.name, intra=options.threads, inter=inter,
                       traces=options.profile_traces, model_scopes=scopes)
           for batch in (1, options.batch_size)]
    return {"breakdown": breakdown, "stages": stage_summary(stages, options.batch_size),
            "ops": ops}


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Defines the command-line flags; called from ``__main__`` (and by tests, with
    their own ``FlagValues``), never at import."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    flags.DEFINE_string("output", "results/bench_speed",
                        "Folder for bench_speed.json and bench_speed.md.", flag_values=fv)
    flags.DEFINE_enum("preset", "paper", ["paper", "tiny"],
                      "paper: MSRRNConfig()/CCNNConfig() and dlib's default predictor size; "
                      "tiny: tiny models, tiny dlib, small images (a smoke test).",
                      flag_values=fv)
    flags.DEFINE_integer("repeats", None, "Timed rounds (default 15).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("warmup", None, "Untimed calls per case before timing (default 2).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("sample_seconds", None, "Approximate duration of one timing sample "
                       "(default 0.05 s).", flag_values=fv)
    flags.DEFINE_list("models", list(MODELS), "Our models to time: msrrn, ccnn.",
                      flag_values=fv)
    flags.DEFINE_list("peers", list(PEERS), "Peers to time: dlib_ert, mtcnn_box "
                      "(empty: none).", flag_values=fv)
    flags.DEFINE_string("msrrn_model", None, "Trained MSRRN: .keras file or run folder with "
                        "model.keras (default: freshly built MSRRNConfig()).", flag_values=fv)
    flags.DEFINE_boolean("msrrn_flip_test", None, "Time MSRRN with (--msrrn_flip_test) or "
                         "without (--nomsrrn_flip_test) its flip test; default: as built "
                         "(MSRRNConfig().flip_test) or trained.", flag_values=fv)
    flags.DEFINE_string("ccnn_model", None, "Trained CCNN: .keras file or run folder with "
                        "model.keras (default: freshly built CCNNConfig()).", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Faces per batch of the throughput "
                         "measurement (default 64).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("image_size", None, "Side of the synthetic test images in pixels "
                         "(default 256).", lower_bound=32, flag_values=fv)
    flags.DEFINE_integer("dlib_faces", None, "Synthetic faces dlib ERT is trained on "
                         "(default 200).", lower_bound=2, flag_values=fv)
    flags.DEFINE_integer("train_steps_per_sample", None,
                         "Training steps per timing sample (default 2).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool("train", True, "Also measure training throughput.", flag_values=fv)
    flags.DEFINE_integer("threads", 2, "TensorFlow intra-op threads and TFLite threads.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("inter_op_threads", None,
                         "TensorFlow inter-op threads (default: --threads).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_enum("profile", "auto", ["auto", "always", "never"],
                      "Profile serving_default: for models that miss a target (auto), "
                      "always or never.", flag_values=fv)
    flags.DEFINE_bool("gpu", True, "Also time on /GPU:0 when a GPU is visible.",
                      flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic faces, weights and timing order.",
                         flag_values=fv)


def options_from_flags(values: flags.FlagValues) -> BenchOptions:
    """``BenchOptions`` from parsed flags (the preset, then the flags given)."""
    overrides: dict[str, Any] = {
        "models": tuple(m for m in values.models if m),
        "peers": tuple(p for p in values.peers if p),
        "msrrn_model": values.msrrn_model, "ccnn_model": values.ccnn_model,
        "msrrn_flip_test": values.msrrn_flip_test,
        "train": values.train, "threads": values.threads,
        "inter_op_threads": values.inter_op_threads, "profile": values.profile,
        "use_gpu": values.gpu, "seed": values.seed}
    for name in ("repeats", "warmup", "sample_seconds", "batch_size", "image_size",
                 "dlib_faces", "train_steps_per_sample"):
        value = getattr(values, name)
        if value is not None:
            overrides[name] = value
    return preset_options(values.preset, **overrides)


def main(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> None:
    """Entry point of ``python -m experiments.bench_speed``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flag_values if flag_values is not None else flags.FLAGS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "verbosity" not in values or not values["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # SavedModel INFO lines
    result = run_benchmark(options_from_flags(values), values.output,
                           log=lambda message: print(message, flush=True))
    print(result["markdown"], flush=True)
    print(f"written to {os.path.join(values.output, 'bench_speed.json')} and "
          "bench_speed.md", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
