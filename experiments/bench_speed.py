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
  - ``keras_xla``: the model's call on crops compiled by XLA (``jit_compile=True``,
    ``experiments.speed.cases.xla_function``, traced as for TFLite: CCNN's window crops
    as matrix products, since XLA has no ``CropAndResize``); its largest landmark
    difference from the Keras model is reported (``xla_max_deviation_px``);
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
* any pretrained peer registered in ``experiments.peers`` and named in ``--peers``
  (``pretrained_peers``): its ``predict`` at batch 1, its ``predict_batch`` batched.

Training throughput (faces/s): the compiled loop of ``common.training.train_model``
(``common.training.make_training_steps``: forward, the models' own losses, L2
penalties, gradients, SGD update) on a fixed in-memory batch of synthetic faces (the
input pipeline is measured by ``experiments.bench_pipeline``), with the config's batch
size: MSRRN (the eq. 5 loss over every stage) and each CCNN stage (trained with the
earlier stages frozen, as ``ccnn_tf.training`` does).

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

The command and ``run_benchmark`` live here; the parts are in ``experiments.speed``:
``options`` (models, peers, targets, presets), ``timing`` (``Case``, the interleaved
rounds, summaries), ``cases`` (test faces, our models' forms, the peers, the training
step), ``profiling`` and ``report`` (rows, target checks, Markdown).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from experiments.speed.cases import (
    Faces,
    ModelUnderTest,
    dlib_cases,
    export_model,
    load_or_build,
    model_cases,
    mtcnn_cases,
    mtcnn_onet_batch,
    pretrained_peer_cases,
    synthetic_faces,
    tflite_cases,
    training_cases,
    xla_deviation_px,
)
from experiments.speed.options import (
    DLIB_PREDICTOR_SIZE_OPTIONS,
    DLIB_TRAINING_SHORTCUTS,
    EXPORTED_FORMS,
    FORM_DESCRIPTIONS,
    MODELS,
    PEERS,
    TARGETS,
    TINY_DLIB_OPTIONS,
    BenchOptions,
    preset_options,
    pretrained_peers,
)
from experiments.speed.profiling import (
    profile_model,
    profile_ops,
    stage_cases,
    stage_summary,
)
from experiments.speed.report import (
    _to_json,
    check_targets,
    format_markdown,
    result_rows,
    training_rows,
)
from experiments.speed.roofline import measure_machine, model_cost, roofline_rows
from experiments.speed.timing import (
    Case,
    configure_threads,
    environment_report,
    latency_summary,
    throughput_summary,
    time_cases,
)

__all__ = [
    "DLIB_PREDICTOR_SIZE_OPTIONS", "DLIB_TRAINING_SHORTCUTS", "EXPORTED_FORMS",
    "FORM_DESCRIPTIONS", "MODELS", "PEERS", "TARGETS", "TINY_DLIB_OPTIONS", "BenchOptions",
    "Case", "Faces", "ModelUnderTest", "check_targets", "configure_threads", "define_flags",
    "dlib_cases", "environment_report", "export_model", "format_markdown",
    "latency_summary", "load_or_build", "main", "model_cases", "mtcnn_cases",
    "mtcnn_onet_batch", "options_from_flags", "preset_options", "pretrained_peer_cases",
    "pretrained_peers", "profile_model",
    "profile_ops", "result_rows", "run_benchmark", "stage_cases", "stage_summary",
    "synthetic_faces", "tflite_cases", "throughput_summary", "time_cases", "training_cases",
    "xla_deviation_px",
    "training_rows",
]


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
    known_peers = (*PEERS, *pretrained_peers())
    unknown = set(options.models) - set(MODELS) or set(options.peers) - set(known_peers)
    if unknown:
        raise ValueError(f"unknown models/peers {sorted(unknown)}; known: {MODELS}, "
                         f"{known_peers}")
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
            mut = load_or_build(  # per-model flags: --<name>_flip_test, ...
                name, paths[name], configs[name], getattr(options, f"{name}_flip_test"),
                getattr(options, f"{name}_confidence_source", None))
            models[name] = mut
            exports[name] = export_model(mut, work_dir)
            model_info[name] = {
                "source": mut.source, "sizes": list(mut.sizes), "margin": mut.margin,
                "num_landmarks": mut.num_landmarks,
                "parameters": int(mut.model.count_params()),
                "config": mut.model.get_config(), "train_batch_size": mut.train_batch_size,
                "tflite_bytes": exports[name]["tflite_bytes"],
                "export_seconds": exports[name]["seconds"],
                "xla_max_deviation_px": xla_deviation_px(mut, faces, options.batch_size)}
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
        for name in (p for p in options.peers if p not in PEERS):
            try:
                peer_cases, peer_info[name] = pretrained_peer_cases(name, faces,
                                                                    options.batch_size)
                cases += peer_cases
            except ImportError as error:
                notes.append(f"{name} skipped: {error}")

        all_cases = cases + train_cases
        log(f"timing {len(all_cases)} cases x {options.repeats} rounds")
        time_cases(all_cases, repeats=options.repeats, warmup=options.warmup,
                   sample_seconds=options.sample_seconds, seed=options.seed, log=log)

        rows = result_rows(cases, options.batch_size)
        roofline: dict[str, Any] = {}
        if models and options.roofline:
            log("roofline: FLOPs of each graph, this machine's matmul rate and bandwidth")
            costs = {name: model_cost(mut.model, mut.sizes, mut.num_landmarks,
                                      options.batch_size) for name, mut in models.items()}
            machine = measure_machine(options.threads)
            roofline = {"costs": costs, "machine": machine,
                        "rows": roofline_rows(rows, costs, machine)}
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
        "roofline": roofline,
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
    flags.DEFINE_list("peers", list(PEERS), "Peers to time: dlib_ert, mtcnn_box, or any "
                      "pretrained peer of experiments.peers (empty: none).", flag_values=fv)
    flags.DEFINE_string("msrrn_model", None, "Trained MSRRN: .keras file or run folder with "
                        "model.keras (default: freshly built MSRRNConfig()).", flag_values=fv)
    flags.DEFINE_boolean("msrrn_flip_test", None, "Time MSRRN with (--msrrn_flip_test) or "
                         "without (--nomsrrn_flip_test) its flip test; default: as built "
                         "(MSRRNConfig().flip_test) or trained.", flag_values=fv)
    flags.DEFINE_boolean("ccnn_flip_test", None, "Time CCNN with or without its flip-test "
                         "average; default: as built (CCNNConfig().flip_test) or trained.",
                         flag_values=fv)
    flags.DEFINE_enum("ccnn_confidence_source", None, ["flip", "pairs"], "Time CCNN with "
                      "its confidence from the flip test (a mirrored pass) or from its "
                      "paired networks; default: as built or trained.", flag_values=fv)
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
    flags.DEFINE_bool("roofline", True,
                      "Report each model's FLOPs and bytes per face from its graph, this "
                      "machine's measured matmul GFLOP/s and memory bandwidth, and each "
                      "form's fraction of that bound (a few seconds).", flag_values=fv)
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
        "ccnn_flip_test": values.ccnn_flip_test,
        "ccnn_confidence_source": values.ccnn_confidence_source,
        "train": values.train, "threads": values.threads,
        "inter_op_threads": values.inter_op_threads, "profile": values.profile,
        "roofline": values.roofline, "use_gpu": values.gpu, "seed": values.seed}
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
