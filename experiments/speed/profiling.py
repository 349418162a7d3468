"""Where the time of a served model goes: op-level traces, stage prefixes, the
crop-versus-model breakdown.

Part of ``experiments.bench_speed`` (run for models that miss a target).
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments.speed.cases import Faces, ModelUnderTest, clone_model, model_crops
from experiments.speed.options import BenchOptions
from experiments.speed.timing import Case, time_cases

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
                prefix = clone_model(model, num_stages=k, **(
                    {"frozen_stages": ()} if mut.name == "ccnn" else {}))
                if mut.name == "ccnn":
                    transfer_stage_weights(model, prefix)
                else:
                    prefix.copy_weights_from(model)
            parts[f"stages 1..{k}"] = _compiled_landmarks(prefix)
    cases = []
    for batch in (1, batch_size):
        with tf.device("/CPU:0"):
            crops = {k: tf.constant(v) for k, v in model_crops(
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
