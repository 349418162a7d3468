"""CCNN Table 3: parameters, size and milliseconds per face, per number of stages.

::

    python -m experiments.ccnn_table3               # synthetic faces, quick preset
    python -m experiments.ccnn_table3 --model=runs/ccnn

For the first 1, 2 and 3 stages of the shared default cascade
(``ccnn_tf.evaluate.truncated_cascade``): learnable parameters, size in MB (float32,
MiB as the paper's 2.46 MB for 643,920 parameters) and the median milliseconds of one
forward pass on one face (batch 1, after warm-up; ``ccnn_tf.evaluate.time_per_face``)
on the CPU and, when TensorFlow sees one, on the GPU. Each timed cascade is built on
the device it runs on, so no weight crosses devices during a timing. The whole
pipeline of the exported model (``serving_default``: crop from the image and box,
cascade, back to pixels; ``compare_real.time_ours_per_face``) is timed on real
evaluation faces as well. The paper's numbers are reported beside, as quoted.
Writes ``ccnn_table3.json``, ``.md`` and ``ms_per_face.png`` into
``--output/ccnn_table3``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import harness
from experiments.ccnn_common import EVAL_SPLIT, QUOTED, default_cascade, model_note

FAMILY = "ccnn"
NAME = "ccnn_table3"
TITLE = "CCNN Table 3: parameters, size and time per face"

PAPER_RATIOS = {"chen_rui": 0.58, "resnet18": 0.056}
"""Section 4.2: CCNN has about 58 % of the parameters of Chen Rui's cascade and 5.6 %
of ResNet-18's (quoted)."""


def devices() -> list[tuple[str, str]]:
    """``[(label, TensorFlow device)]``: the CPU, and the first GPU when one is visible."""
    import tensorflow as tf

    found = [("CPU", "/CPU:0")]
    if tf.config.list_physical_devices("GPU"):
        found.append(("GPU", "/GPU:0"))
    return found


def parameter_count(model) -> int:
    """Learnable parameters of a model (every trainable weight)."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def run(setting: harness.Setting, *, timing_faces: int = 50,
        verbose: bool = True) -> harness.ExperimentOutput:
    """Measures parameters, size and time per face of the cascade's first k stages.

    Args:
        setting: the experiment's setting.
        timing_faces: timed single-face passes per cascade and device (median).
        verbose: training progress.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    import tensorflow as tf

    from ccnn_tf.evaluate import PAPER_TABLE3, time_per_face, truncated_cascade
    from common import plots
    from experiments.compare_real import time_ours_per_face
    from experiments.peers import iterate_faces

    data, ours = default_cascade(setting, verbose=verbose)
    model = ours.model
    found = devices()
    faces = list(iterate_faces(data, EVAL_SPLIT, timing_faces + 2))
    rows, serving = [], {}
    for k in range(1, model.num_stages + 1):
        row = {"stages": k}
        for label, device in found:
            with tf.device(device):  # the weights are created on the timed device
                sub = truncated_cascade(model, k)
            row.setdefault("parameters", parameter_count(sub))
            row[f"{label.lower()}_ms_per_face"] = time_per_face(sub, timing_faces, device)
            if k == model.num_stages:
                with tf.device(device):
                    serving[label] = 1e3 * time_ours_per_face(
                        dataclasses.replace(ours, model=sub), faces, timing_faces)
        row["megabytes"] = row["parameters"] * 4 / 2**20
        rows.append(row)
    total = rows[-1]
    checks = {"parameters_equal_model": total["parameters"] == parameter_count(model),
              "parameters_equal_paper": total["parameters"] == PAPER_TABLE3["parameters"]}
    results = {
        "data": os.path.abspath(data), "timing_faces": timing_faces,
        "devices": {label: device for label, device in found},
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "cpu_threads": os.cpu_count(), "by_stages": rows,
        "parameters": total["parameters"], "megabytes": total["megabytes"],
        "serving_ms_per_face": serving, "checks": checks, "model": ours.info,
        "paper": {**{k: v for k, v in PAPER_TABLE3.items() if k != "mean_error_stages"},
                  "fraction_of_parameters": PAPER_RATIOS, "note": QUOTED},
    }

    header = "| model | parameters | size (MB, float32) | " + " | ".join(
        f"ms / face, {label}, batch 1" for label, _ in found) + " |"
    lines = ["### Table 3: size and speed", "", header,
             "|---|---:|---:|" + "---:|" * len(found)]
    for row in rows:
        lines.append(f"| ours, {row['stages']} stage(s) | {row['parameters']:,} | "
                     f"{row['megabytes']:.2f} | " + " | ".join(
                         f"{row[f'{label.lower()}_ms_per_face']:.2f}" for label, _ in found)
                     + " |")
    lines.append(f"| ours, {model.num_stages} stage(s), `serving_default` (crop from image "
                 "and box included) | | | "
                 + " | ".join(f"{serving[label]:.2f}" for label, _ in found) + " |")
    paper_cells = " | ".join(f"{PAPER_TABLE3['ms_per_face']:.1f} ({PAPER_TABLE3['device']})"
                             if i == len(found) - 1 else "-" for i in range(len(found)))
    lines += [(f"| paper ({QUOTED}) | {PAPER_TABLE3['parameters']:,} | "
               f"{PAPER_TABLE3['megabytes']:.2f} | {paper_cells} |"), "",
              f"- ms per face: median of {timing_faces} single-face forward passes after two "
              f"warm-up passes; CPU: {os.cpu_count()} logical cores shared with any other "
              "load on the machine"
              + ("; GPU: " + ", ".join(results["gpus"]) if len(found) > 1
                 else "; no GPU visible to TensorFlow") + ".",
              (f"- paper ({QUOTED}): {PAPER_TABLE3['parameters']:,} parameters, "
               f"{PAPER_TABLE3['megabytes']} MB, {PAPER_TABLE3['ms_per_face']} ms per face on "
               f"its {PAPER_TABLE3['device']}; about {100 * PAPER_RATIOS['chen_rui']:.0f} % of "
               f"the parameters of Chen Rui's cascade and {100 * PAPER_RATIOS['resnet18']:.1f} "
               "% of ResNet-18's."),
              "- checks: " + ", ".join(f"{k}: {v}" for k, v in checks.items()) + ".",
              model_note(ours.info)]

    categories = [f"{row['stages']} stage(s)" for row in rows] + ["serving (crop incl.)"]
    series = {f"{label}, batch 1": [row[f"{label.lower()}_ms_per_face"] for row in rows]
              + [serving[label]] for label, _ in found}
    figures = {"ms_per_face": lambda path: plots.plot_grouped_bars(
        series, categories, path, title="Milliseconds per face (cf. Table 3)",
        ylabel="ms per face (median, batch 1)")}
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n".join(lines), figures=figures)


if __name__ == "__main__":
    harness.main(run, FAMILY)
