"""The tables and notes of a comparison report: labels, summary rows, per-point
tables, the 5-point reduction and the setup notes.

Part of ``experiments.compare_real``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METHOD_LABELS = {"msrrn": "MSRRN (ours)", "ccnn": "CCNN (ours)", "dlib_ert": "dlib ERT",
                 "mean_shape": "mean shape", "mtcnn": "MTCNN (detect)",
                 "mtcnn_box": "MTCNN (ONet on our box)", "lbf": "OpenCV LBF"}


def method_label(method: str) -> str:
    """The display name of a method: ``METHOD_LABELS``, else the ``label`` of the peer
    registered as ``method`` (``experiments.peers.PEERS``), else ``method``."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    from experiments.peers import PEERS

    factory = PEERS.get(method)
    return getattr(getattr(factory, "func", factory), "label", "") or method


KIND_LABELS = {"inter_pupil": "inter-pupil", "inter_ocular": "inter-ocular",
               "box_width": "face-box width", "box_diagonal": "face-box diagonal"}
"""Short names of the normalisers (``common.metrics.NORMALIZER_KINDS``) for columns."""

NORMALISERS = {"inter_pupil": "inter-pupil distance", "inter_ocular": "inter-ocular distance",
               "box_width": "face-box width", "box_diagonal": "face-box diagonal"}
"""The normalisers in words, for sentences and axis labels."""


def summary_row(results: Mapping[str, Any], method: str, kinds: Sequence[str],
                 thresholds: Sequence[float], ms: float | None = None) -> dict[str, Any]:
    entry = results["outputs"][method]
    row: dict[str, Any] = {}
    for kind in kinds:
        row[f"{kind}"] = entry[kind]["mean"]
    first = entry[kinds[0]]
    for t in thresholds:
        row[f"auc@{t:g}"] = first[f"auc@{t:g}"]
    for t in thresholds:
        row[f"failure@{t:g}"] = first[f"failure@{t:g}"]
    row["count"] = first["count"]
    if ms is not None:
        row["ms"] = f"{ms:.2f}" if np.isfinite(ms) else "-"
    return row


def summary_columns(kinds: Sequence[str], thresholds: Sequence[float],
                     with_ms: bool = True) -> dict[str, str]:
    columns = {kind: f"NME {KIND_LABELS.get(kind, kind)}" for kind in kinds}
    first = KIND_LABELS.get(kinds[0], kinds[0])
    for t in thresholds:
        columns[f"auc@{t:g}"] = f"AUC@{t:g} ({first})"
    for t in thresholds:
        columns[f"failure@{t:g}"] = f"failure@{t:g} ({first})"
    columns["count"] = "faces"
    if with_ms:
        columns["ms"] = "ms / face (batch 1)"
    return columns



def point_labels(scheme) -> list[str]:
    from ccnn_tf.model import point_abbreviation

    return [point_abbreviation(n) for n in scheme.point_names]


def per_point_table(rows: Mapping[str, Sequence[float]], labels: Sequence[str],
                     kind: str) -> str:
    lines = [f"### Per-point error (% of the {NORMALISERS.get(kind, kind)})", "",
             "| method | " + " | ".join(labels) + " | mean |",
             "|---|" + "---:|" * (len(labels) + 1)]
    for label, values in rows.items():
        values = list(values)
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in values)
                     + f" | {100 * float(np.mean(values)):.2f} |")
    return "\n".join(lines) + "\n"


def five_point_comparison(pred, outputs: Mapping[str, np.ndarray],
                           five_point: Mapping[str, np.ndarray], methods: Sequence[str],
                           thresholds: Sequence[float], seconds: Mapping[str, float]
                           ) -> dict[str, Any]:
    """68-point methods reduced to 5 points beside the 5-point peers (MTCNN)."""
    from common import evaluation
    from common.metrics import results_markdown
    from common.schemes import CUHK_5
    from common.synthetic import to_five_points

    reduced = {m: to_five_points(outputs[m]) for m in methods if m in outputs}
    reduced.update(five_point)
    order = [m for m in [*methods, *five_point] if m in reduced]
    five = evaluation.Predictions(
        outputs_px={m: reduced[m] for m in order}, true_px=to_five_points(pred.true_px),
        boxes=pred.boxes, source_paths=pred.source_paths,
        seconds_per_face=pred.seconds_per_face)
    kinds = ("inter_ocular", "box_width")
    scored = evaluation.evaluate_outputs(five, CUHK_5, kinds=kinds, thresholds=thresholds)
    table = {method_label(m): summary_row(scored, m, kinds, thresholds,
                                            1e3 * seconds[m]) for m in order}
    markdown = results_markdown(
        table, summary_columns(kinds, thresholds),
        "5-point reduction (eye centres = mean of the 6 eye points, nose tip 30, mouth "
        "corners 48/54), errors in % of the eye-centre distance (and face-box width)")
    ced = {method_label(m): evaluation.face_errors(five, m, "inter_ocular", CUHK_5)
           for m in order}
    return {"results": {m: scored["outputs"][m] for m in order}, "markdown": markdown,
            "ced": ced}


def setup_notes(family: str, ours: Any, records: Mapping[str, Any],
                 method_info: Mapping[str, Any], pred, train_split: str,
                 eval_split: str) -> str:
    from experiments import peers as peer_lib

    lines = ["### Setup", ""]
    info = ours.info
    if info.get("source") == "trained":
        steps = (f"{info['steps']} steps" if "steps" in info
                 else f"{info['steps_per_stage']} steps per stage")
        lines.append(f"- ours: trained on {train_split!r} with preset {info['preset']!r}, "
                     f"{steps} ({info['seconds']:.0f} s in this run; run dir "
                     f"`{info['run_dir']}`), inputs {list(ours.sizes)} px, margin "
                     f"{ours.margin:g}.")
        if info.get("training_speed"):
            lines.append(f"- ours, training speed: {info['training_speed']}.")
    else:
        lines.append(f"- ours: loaded from `{info['source']}` (not trained here).")
    lines.append(f"- ours, batched forward pass: {1e3 * pred.seconds_per_face:.2f} ms per "
                 "face (crop excluded); the table's time is one face at a time through "
                 "the export's serving function, crop included.")
    for name, record in records.items():
        options = record["key"]["options"]
        if name == "dlib_ert":
            what = "dlib's default options" + (f" with {options}" if options else "")
        elif name == "lbf":
            info = record["train_info"]
            changed = {k: v for k, v in options.items()
                       if v != peer_lib.LBF_DEFAULT_OPTIONS[k]}
            what = (f"`cv::face::FacemarkLBF` of OpenCV {info['opencv']} (`lbf_tool`), "
                    "OpenCV's default parameters"
                    + (f" with {changed}" if changed else "")
                    + f", {info['n_landmarks']} model points; OpenCV's box test kept "
                    f"{info['accepted']} of {info['faces']} faces"
                    + (f"; its training took {info['train_cpu_seconds']:.0f} s of CPU"
                       if "train_cpu_seconds" in info else ""))
        else:
            what = "mean of the normalised box coordinates"
        lines.append(f"- {method_label(name)}: {what}, fitted on {record['num_faces']} "
                     f"{train_split!r} faces and their stored boxes in "
                     f"{record['train_seconds']:.0f} s"
                     + (" (reused from an earlier run on the same shards)"
                        if record["reused"] else "") + ".")
    if "lbf" in records:
        lines.append("- OpenCV LBF's time per face is that of `FacemarkLBF::fit` inside "
                     "the tool (grey image given, model loaded once).")
    for name in ("mtcnn", "mtcnn_box"):
        if name in method_info:
            info = method_info[name]
            lines.append(f"- {method_label(name)}: pretrained (`mtcnn` package)"
                         + (f", detection missed or not matched to our box on "
                            f"{info['misses']} of {info['calls']} faces (ONet on our box "
                            "used for those)" if name == "mtcnn" else "") + ".")
    lines.append(f"- every method sees the same {pred.num_faces} {eval_split!r} faces and "
                 "the same face boxes (stored in the TFRecords).")
    return "\n".join(lines)
