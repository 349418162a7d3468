"""Evaluation of a CCNN cascade: the paper's Experiments 1-4 and Table 3.

``python -m ccnn_tf.evaluate --model=RUN_OR_MODEL [--data=DIR] [--split=val]``

* Per-point errors (LE, RE, N, LM, RM) and their mean, normalised by the face-box
  width (Sun et al. 2013, the CCNN paper's "test error") and by the inter-ocular
  distance (eye centres, the MTFL convention for 5 points); failure rates (a face
  whose mean error, or a point whose error, exceeds 10 % of the box width fails, as in
  Sun et al.).
* The error after stage 1, 2 and 3 with the per-point line plot of Experiment 1
  (Figure 4).
* ``--compare_runs=windows+=RUN_A,windows-=RUN_B`` puts several runs side by side
  (Experiment 2: windows+/-; Experiment 3: shake+/-; both are measured on the first
  stage, the plot shows each run's stage-1 and final errors).
* Table 3: parameters, size in MB (float32) and milliseconds per face on the CPU
  (batch 1, and batched), per number of stages.

Writes ``NAME.json``, ``NAME.md``, ``NAME_ced.png`` and ``NAME_per_point.png`` into
``--output`` (default: ``RUN/eval``). The library functions here are also what
``ccnn_tf.training.train_ccnn`` calls after training; flags are defined only when
this module runs as a program.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ccnn_tf.model import (
    CONFIDENCE_SOURCES,
    CCNNCascade,
    point_abbreviation,
    transfer_stage_weights,
)
from ccnn_tf.runs import load_cascade, run_data
from common import atomic, evaluation, metrics, multidata, plots
from common.schemes import scheme_for

KINDS = ("box_width", "inter_ocular")
"""Normalisers reported: Sun et al.'s face-box width (the paper's) and inter-ocular."""

THRESHOLDS = (0.05, 0.10)
"""Thresholds of the per-face AUC and failure rate."""

FAILURE_THRESHOLD = 0.10
"""Sun et al. (2013): a point whose error exceeds 10 % of the box width is a failure."""

KIND_LABELS = {"box_width": "face-box width", "inter_ocular": "inter-ocular distance"}

PAPER_TABLE3 = {
    "parameters": 643_920, "megabytes": 2.46, "ms_per_face": 14.7,
    "device": "GPU (RTX 2080 Ti)", "mean_error_stages": (0.0221, 0.0137, 0.0103)}
"""The paper's numbers (sections 3.2.4, 4.2): parameters, MB, ms per face on its GPU,
mean test error after stages 1-3 (Experiment 1, LFPW)."""


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def model_geometry(model: keras.Model) -> tuple[tuple[int, ...], float, int]:
    """``(sizes, margin, num_landmarks)`` of a ``CCNNCascade`` (its
    ``common.landmark_model`` contract)."""
    return tuple(model.input_sizes), float(model.margin), int(model.num_landmarks)


def point_labels(num_points: int = 5) -> list[str]:
    """The paper's point labels: LE, RE, N, LM, RM."""
    return [point_abbreviation(n) for n in scheme_for(num_points).point_names]


def stage_outputs(outputs: Sequence[str]) -> list[str]:
    """The ``stage_k`` output names, in stage order."""
    return sorted((o for o in outputs if o.startswith("stage_") and o[6:].isdigit()),
                  key=lambda o: int(o[6:]))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class CascadeEvaluation:
    """The evaluation of one cascade on one split.

    Attributes:
        results: JSON-ready results: ``common.evaluation.evaluate_outputs`` plus
            ``"stages"``, ``"point_labels"``, per-point failure rates
            (``outputs[o][kind]["per_point_failure@0.1"]``), ``"data"``, ``"split"``
            and, when measured, ``"cost"`` (Table 3, :func:`model_cost`).
        face_errors: ``{output: per-face box-width NME [N]}`` for CED plots.
    """

    results: dict[str, Any]
    face_errors: dict[str, np.ndarray]


def evaluate_cascade(model: keras.Model, data, split: str = "val", *,
                     batch_size: int = 64, limit: int | None = None,
                     kinds: Sequence[str] = KINDS,
                     thresholds: Sequence[float] = THRESHOLDS,
                     cost: bool = True, timing_faces: int = 50) -> CascadeEvaluation:
    """Predicts a split with the cascade and scores every stage.

    Args:
        model: a ``CCNNCascade`` (any number of stages).
        data: TFRecord folder, or several (``common.multidata.DataSpec``): scored on
            the union of the folders that hold ``split``, and per folder
            (``results["per_dataset"]``, the final output's NME per folder and
            union).
        split: the split.
        batch_size: faces per forward pass.
        limit: evaluate the first ``limit`` faces only.
        kinds: normalisers (``common.metrics.NORMALIZER_KINDS``).
        thresholds: thresholds of the per-face AUC and failure rate.
        cost: also measure Table 3 (:func:`model_cost`).
        timing_faces: single-face forward passes timed for Table 3.

    Returns:
        The :class:`CascadeEvaluation`.
    """
    sizes, margin, num_points = model_geometry(model)
    scheme = scheme_for(num_points)
    spec = multidata.DataSpec.parse(data)
    multidata.check_landmark_scheme(spec, num_points)

    def predict(folder: str, name: str) -> evaluation.Predictions:
        return evaluation.predict_split(model, folder, name, sizes=sizes, margin=margin,
                                        num_landmarks=num_points, batch_size=batch_size,
                                        limit=limit)

    parts = multidata.predict_per_dataset(predict, spec, split)
    pred = multidata.union_of(parts)
    results = evaluation.evaluate_outputs(pred, scheme, kinds, thresholds)
    if len(spec.folders) > 1:
        results["data_spec"] = spec.to_dict()
        results["per_dataset"] = multidata.per_dataset_scores(parts, spec, kinds=kinds,
                                                              scheme=scheme)
    results.update(data=",".join(spec.folders), split=split,
                   stages=stage_outputs(results["outputs"]),
                   point_names=list(scheme.point_names), point_labels=point_labels(num_points),
                   failure_threshold=FAILURE_THRESHOLD)
    face_errors = {}
    for output, points in pred.outputs_px.items():
        for kind in kinds:
            per_point = metrics.per_point_nme(points, pred.true_px, kind, scheme=scheme,
                                              boxes=pred.boxes)
            entry = results["outputs"][output][kind]
            entry[f"per_point_failure@{FAILURE_THRESHOLD:g}"] = [
                float(v) for v in (per_point > FAILURE_THRESHOLD).mean(axis=0)]
            entry[f"point_failure@{FAILURE_THRESHOLD:g}"] = float(
                (per_point > FAILURE_THRESHOLD).mean())
            if kind == "box_width":
                face_errors[output] = per_point.mean(axis=1)
    if cost:
        results["cost"] = model_cost(model, timing_faces=timing_faces)
        results["cost"]["batched_ms_per_face"] = 1000.0 * pred.seconds_per_face
    return CascadeEvaluation(results=results, face_errors=face_errors)


# --------------------------------------------------------------------------------------
# Table 3: parameters, size, time
# --------------------------------------------------------------------------------------


def truncated_cascade(model: CCNNCascade, num_stages: int) -> CCNNCascade:
    """The first ``num_stages`` stages of a cascade, with its weights."""
    config = {**model.get_config(), "num_stages": num_stages, "frozen_stages": (),
              "network_outputs": False}
    config.pop("name", None)
    truncated = CCNNCascade.from_config(config)
    transfer_stage_weights(model, truncated, range(1, num_stages + 1))
    return truncated


def _parameters(model: CCNNCascade, stage: int) -> int:
    layer = model.stage_layer(stage)
    return int(sum(int(np.prod(w.shape)) for net in layer.networks
                   for w in net.trainable_weights))


def time_per_face(model: keras.Model, faces: int = 50, device: str = "/CPU:0") -> float:
    """Median milliseconds of one forward pass on a single face (batch 1).

    Args:
        model: the model.
        faces: timed passes (after two warm-up passes).
        device: the device to run on (Table 3 reports the CPU).

    Returns:
        Milliseconds per face.
    """
    sizes, _, _ = model_geometry(model)
    rng = np.random.default_rng(0)
    inputs = {f"image_{s}": tf.constant(rng.uniform(0, 255, (1, s, s, 3)), tf.float32)
              for s in sizes}
    with tf.device(device):
        forward = tf.function(lambda x: model(x, training=False))
        for _ in range(2):
            tf.nest.map_structure(lambda t: t.numpy(), forward(inputs))
        times = []
        for _ in range(max(1, faces)):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), forward(inputs))
            times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def model_cost(model: CCNNCascade, timing_faces: int = 50) -> dict[str, Any]:
    """Table 3: parameters, MB and CPU milliseconds per face, per number of stages.

    Args:
        model: the cascade.
        timing_faces: timed single-face passes per cascade length.

    Returns:
        ``{"parameters", "megabytes" (float32, MiB as the paper's 2.46 MB),
        "ms_per_face" (CPU, batch 1), "device", "by_stages": [{"stages": k,
        "parameters", "megabytes", "ms_per_face"}, ...]}``.
    """
    rows = []
    cumulative = 0
    for k in range(1, model.num_stages + 1):
        cumulative += _parameters(model, k)
        sub = model if k == model.num_stages else truncated_cascade(model, k)
        rows.append({"stages": k, "parameters": cumulative,
                     "megabytes": cumulative * 4 / 2**20,
                     "ms_per_face": time_per_face(sub, timing_faces)})
    final = rows[-1]
    return {"parameters": final["parameters"], "megabytes": final["megabytes"],
            "ms_per_face": final["ms_per_face"], "device": "CPU, batch 1",
            "cpu_threads": os.cpu_count(), "by_stages": rows}


# --------------------------------------------------------------------------------------
# Tables and reports
# --------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def stage_table(results: Mapping[str, Any], kind: str = "box_width") -> str:
    """Markdown: per-point and mean error (%) after every stage (Experiment 1).

    Args:
        results: ``CascadeEvaluation.results``.
        kind: the normaliser.

    Returns:
        Markdown text.
    """
    labels = results["point_labels"]
    failure = f"failure@{FAILURE_THRESHOLD:g}"
    point_failure = f"point_failure@{FAILURE_THRESHOLD:g}"
    heading = (f"### Error (% of the {KIND_LABELS.get(kind, kind)}) after each stage "
               f"({results['num_faces']} faces, {results['split']})")
    header = ("| output | " + " | ".join(labels)
              + " | mean | face failure (%) | point failure (%) |")
    lines = [heading, "", header, "|---|" + "---:|" * (len(labels) + 3)]
    for output in [*results["stages"], "landmarks"]:
        if output == "landmarks" and results["stages"]:
            continue  # the last stage itself
        entry = results["outputs"][output][kind]
        cells = [_percent(v) for v in entry["per_point"]]
        cells += [_percent(entry["mean"]), _percent(entry.get(failure, float("nan"))),
                  _percent(entry.get(point_failure, float("nan")))]
        lines.append(f"| {output} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_table(cost: Mapping[str, Any]) -> str:
    """Markdown: Table 3 (parameters, MB, ms per face), ours per stage and the paper."""
    lines = ["### Table 3: model size and speed", "",
             "| model | parameters | size (MB, float32) | ms per face | device |",
             "|---|---:|---:|---:|---|"]
    for row in cost["by_stages"]:
        lines.append(f"| ours, {row['stages']} stage(s) | {row['parameters']:,} | "
                     f"{row['megabytes']:.2f} | {row['ms_per_face']:.2f} | "
                     f"{cost['device']} |")
    if "batched_ms_per_face" in cost:
        lines.append(f"| ours, batched evaluation | | | {cost['batched_ms_per_face']:.2f} | "
                     "CPU, evaluation batch |")
    lines.append(f"| paper | {PAPER_TABLE3['parameters']:,} | {PAPER_TABLE3['megabytes']:.2f} "
                 f"| {PAPER_TABLE3['ms_per_face']:.1f} | {PAPER_TABLE3['device']} |")
    return "\n".join(lines) + "\n"




def write_cascade_report(evaluated: CascadeEvaluation, out_dir: str, name: str = "ccnn",
                         title: str = "CCNN evaluation") -> dict[str, str]:
    """Writes JSON, Markdown, a CED plot and the per-point plot of Experiment 1.

    Args:
        evaluated: the :func:`evaluate_cascade` result.
        out_dir: output folder.
        name: file name stem.
        title: report title.

    Returns:
        ``{"json", "markdown", "ced", "per_point"}`` paths.
    """
    results = evaluated.results
    tables = [stage_table(results, kind) for kind in results["kinds"]]
    if results.get("per_dataset"):
        tables.append(multidata.per_dataset_markdown(results["per_dataset"], results["split"],
                                                     results["kinds"]))
    if "cost" in results:
        tables.append(cost_table(results["cost"]))
    os.makedirs(out_dir, exist_ok=True)
    per_point = os.path.join(out_dir, f"{name}_per_point.png")
    series = {output.replace("_", " "): results["outputs"][output]["box_width"]["per_point"]
              for output in results["stages"] or ["landmarks"]}
    atomic.write_figure(plots.plot_per_point_errors, per_point, series, results["point_labels"],
                  title="Per-point error after each stage (Experiment 1)",
                  ylabel="mean error (% of face-box width)")
    notes = (f"![per-point errors]({os.path.basename(per_point)})\n\n"
             f"Failure: face mean error, resp. point error, above "
             f"{100 * FAILURE_THRESHOLD:g} % of the normaliser. Paper (LFPW): mean error "
             "2.21 % / 1.37 % / 1.03 % after stages 1 / 2 / 3 (face-box width).")
    ced = {o.replace("_", " "): evaluated.face_errors[o] for o in results["stages"]}
    paths = evaluation.write_report(results, out_dir, name, ced, title, tables,
                                    ced_xlabel="NME (normalised by the face-box width)",
                                    ced_max_threshold=0.15, notes=notes)
    paths["per_point"] = per_point
    return paths


def compare_runs(runs: Mapping[str, str], data: str | None, split: str, out_dir: str, *,
                 name: str = "ccnn_compare", batch_size: int = 64, limit: int | None = None,
                 title: str = "CCNN runs side by side") -> dict[str, Any]:
    """Evaluates several runs on one split and reports them side by side.

    For Experiment 2 (``{"windows+": run_a, "windows-": run_b}``) and Experiment 3
    (``{"shake+": ..., "shake-": ...}``): both are measured on the first stage, so
    the table and plot show every run's stage-1 errors, and also its final ones.

    Args:
        runs: ``{label: run directory or model file}``, in display order.
        data: TFRecord folder; ``None``: the data the first run trained on (every
            run is evaluated on the same faces).
        split: the split.
        out_dir: output folder.
        name: file name stem.
        batch_size: faces per forward pass.
        limit: evaluate the first ``limit`` faces only.
        title: report title.

    Returns:
        ``{"results": {label: results}, "paths": {...}}``.
    """
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    first_path = next(iter(runs.values()))
    source = data or run_data(first_path)
    if source is None:
        raise ValueError(f"no data given and {first_path} records none")
    evaluated: dict[str, CascadeEvaluation] = {}
    for label, path in runs.items():  # every run on the same faces
        evaluated[label] = evaluate_cascade(load_cascade(path), source, split,
                                            batch_size=batch_size, limit=limit, cost=False)
    first = next(iter(evaluated.values())).results
    labels = first["point_labels"]
    lines = ["### Per-point error (% of the face-box width)", "",
             "| run | output | " + " | ".join(labels) + " | mean |",
             "|---|---|" + "---:|" * (len(labels) + 1)]
    stage1_series, final_series = {}, {}
    for label, item in evaluated.items():
        outputs = item.results["outputs"]
        final = item.results["stages"][-1] if item.results["stages"] else "landmarks"
        for output in dict.fromkeys(["stage_1", final]):
            if output not in outputs:
                continue
            entry = outputs[output]["box_width"]
            lines.append(f"| {label} | {output} | "
                         + " | ".join(_percent(v) for v in entry["per_point"])
                         + f" | {_percent(entry['mean'])} |")
        if "stage_1" in outputs:
            stage1_series[label] = outputs["stage_1"]["box_width"]["per_point"]
        final_series[f"{label} ({final})"] = outputs[final]["box_width"]["per_point"]
    os.makedirs(out_dir, exist_ok=True)
    plot_paths = {}
    for key, series, plot_title in (
            ("per_point_stage1", stage1_series, "Stage-1 per-point error (Experiments 2, 3)"),
            ("per_point_final", final_series, "Final per-point error")):
        if series:
            path = os.path.join(out_dir, f"{name}_{key}.png")
            plot_paths[key] = atomic.write_figure(plots.plot_per_point_errors, path, series,
                                            labels, title=plot_title,
                                            ylabel="mean error (% of face-box width)")
    notes = "\n\n".join(f"![{k}]({os.path.basename(p)})" for k, p in plot_paths.items())
    results = {"split": split, "data": source, "runs": dict(runs),
               "results": {label: item.results for label, item in evaluated.items()}}
    ced = {label: item.face_errors[item.results["stages"][0]]
           for label, item in evaluated.items() if item.results["stages"]}
    paths = evaluation.write_report(results, out_dir, name,
                                    {f"{k} (stage 1)": v for k, v in ced.items()}, title,
                                    "\n".join(lines) + "\n",
                                    ced_xlabel="NME (normalised by the face-box width)",
                                    ced_max_threshold=0.15, notes=notes)
    paths.update(plot_paths)
    return {"results": results["results"], "paths": paths}


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "A CCNN run directory (its assembled model.keras, "
                        "or its last finished stage), a stage directory or a .keras file.")
    flags.DEFINE_string("data", None, "TFRecord folder (common.prepare or "
                        "common.synthetic output); default: the data the run trained on.")
    flags.DEFINE_string("split", "val", "Split to evaluate.")
    flags.DEFINE_string("output", None, "Output folder; default MODEL_RUN/eval (or "
                        "./ccnn_compare with --compare_runs).")
    flags.DEFINE_list("compare_runs", [], "Runs to compare side by side, as LABEL=PATH "
                      "(or PATH, labelled by its folder name), e.g. "
                      "windows+=runs/a,windows-=runs/b (Exp. 2) or shake+=...,shake-=... "
                      "(Exp. 3).")
    flags.DEFINE_integer("batch_size", 64, "Faces per forward pass.", lower_bound=1)
    flags.DEFINE_integer("limit", None, "Evaluate only the first LIMIT faces.", lower_bound=1)
    flags.DEFINE_integer("timing_faces", 50, "Single-face forward passes timed for "
                         "Table 3 (ms per face on the CPU).", lower_bound=1)
    define_inference_flags(flags)
    from common import box_robustness

    box_robustness.define_flags(flags)


def define_inference_flags(flags_module: Any) -> None:
    """The flags that switch a trained cascade's inference options (evaluate, export).

    Args:
        flags_module: ``absl.flags`` (library code does not import absl itself).
    """
    flags_module.DEFINE_bool(
        "flip_test", None, "Also run the cascade on the mirrored crop and report the mean "
        "of the two shapes (default: as the model was saved; CCNNConfig.flip_test).")
    flags_module.DEFINE_enum(
        "confidence_source", None, list(CONFIDENCE_SOURCES), "What the confidence "
        "output compares: flip (face vs mirror image) or pairs (the last stage's two "
        "networks per point); default: as the model was saved.")


def with_inference_flags(model: keras.Model, values: Any) -> keras.Model:
    """``model`` with the ``define_inference_flags`` values applied (unset: as saved)."""
    return model.with_inference_options(flip_test=values.flip_test,
                                        confidence_source=values.confidence_source)


def _parse_runs(items: Sequence[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = os.path.basename(os.path.normpath(item)), item
        runs[label] = path
    return runs


def main(argv: Sequence[str]) -> None:
    """Entry point of ``python -m ccnn_tf.evaluate``."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # TensorFlow's INFO lines hide the results
        absl_logging.set_verbosity(absl_logging.WARNING)
    if values.compare_runs:
        out_dir = values.output or "ccnn_compare"
        report = compare_runs(_parse_runs(values.compare_runs), values.data, values.split,
                              out_dir, batch_size=values.batch_size, limit=values.limit)
        for label, results in report["results"].items():
            print(f"== {label}")
            print(stage_table(results))
        print("\n".join(f"{k}: {v}" for k, v in report["paths"].items()))
        return
    if not values.model:
        raise app.UsageError("--model (or --compare_runs) is required")
    data = values.data or run_data(values.model)
    if data is None:
        raise app.UsageError(f"--data is required: {values.model} records no data")
    model_dir = (values.model if os.path.isdir(values.model)
                 else os.path.dirname(os.path.abspath(values.model)))
    out_dir = values.output or os.path.join(model_dir, "eval")
    model = with_inference_flags(load_cascade(values.model), values)
    evaluated = evaluate_cascade(model, data, values.split,
                                 batch_size=values.batch_size, limit=values.limit,
                                 timing_faces=values.timing_faces)
    paths = write_cascade_report(evaluated, out_dir, name=f"ccnn_{values.split}",
                                 title=f"CCNN on {values.split} of {data}")
    for kind in evaluated.results["kinds"]:
        print(stage_table(evaluated.results, kind))
    if "cost" in evaluated.results:
        print(cost_table(evaluated.results["cost"]))
    if values.box_faces:
        from common import box_robustness

        for path in box_robustness.write_box_tables(
                model, data, [values.split], out_dir, kind="box_width",
                num_faces=values.box_faces, sources=values.box_sources, label="CCNN"):
            paths[f"box_robustness_{values.split}"] = path
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
