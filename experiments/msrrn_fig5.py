"""MSRRN Figure 5: example faces with the landmarks of our MSRRN, dlib ERT and the truth.

::

    python -m experiments.msrrn_fig5
    python -m experiments.msrrn_fig5 --data=/data/300w      # examples from "full"

The paper's Fig. 5 shows faces aligned by MSRRN under varied expressions, poses and
occlusions. Here the faces are chosen by our own error, not by hand: the best, the
median and the worst faces of the last evaluation split (300-W "full", else "val")
by our inter-pupil NME. Each face is drawn twice, cropped to our model's crop box:
with our prediction and with dlib ERT's (trained on the same training split, from
the shared peer cache of ``experiments.harness.fitted_peer``), both against the
ground truth (green dots: truth; red crosses: prediction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import harness

FAMILY = "msrrn"
NAME = "msrrn_fig5"
TITLE = "MSRRN Figure 5: best, median and worst faces by our error (ours vs dlib ERT)"

KIND = "inter_pupil"
FACES_PER_GROUP = 3
GROUPS = ("best", "median", "worst")


def select_faces(errors: np.ndarray, per_group: int = FACES_PER_GROUP
                 ) -> dict[str, list[int]]:
    """Indices of the best, median and worst faces by error.

    Args:
        errors: ``[N]`` per-face errors.
        per_group: faces per group (fewer when ``N < 3 * per_group``).

    Returns:
        ``{"best": [...], "median": [...], "worst": [...]}``, best first within
        "best", worst first within "worst".
    """
    errors = np.asarray(errors, np.float64)
    count = max(1, min(per_group, errors.size // len(GROUPS)))
    order = [int(i) for i in np.argsort(errors, kind="stable")]
    start = max(0, (len(order) - count) // 2)
    return {"best": order[:count], "median": order[start:start + count],
            "worst": order[::-1][:count]}


def _crop(image: np.ndarray, crop_box: np.ndarray, points: Sequence[np.ndarray]
          ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The part of ``image`` inside ``crop_box`` (clipped to the image) and the points
    moved into it."""
    height, width = image.shape[:2]
    left, top = (max(0, int(np.floor(v))) for v in crop_box[:2])
    right = min(width, int(np.ceil(crop_box[2])) + 1)
    bottom = min(height, int(np.ceil(crop_box[3])) + 1)
    offset = np.array([left, top], np.float32)
    return image[top:bottom, left:right], [p - offset for p in points]


def run(setting: harness.Setting, *, split: str | None = None,
        verbose: bool = True) -> harness.ExperimentOutput:
    """Regenerates Figure 5 (see the module docstring).

    Args:
        setting: data, results folder, training and peers (``experiments.harness``).
        split: the split to draw from (default: the last evaluation split).
        verbose: progress output.

    Returns:
        The written experiment (``msrrn_fig5.json`` / ``.md`` / ``examples.png``).
    """
    from common import metrics, plots
    from common.evaluation import default_eval_splits, face_errors
    from experiments.peers import iterate_faces
    from msrrn_tf.training import predict_msrrn

    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    split = split or default_eval_splits(data)[-1]
    ours = harness.trained_model(FAMILY, setting, data, verbose=verbose)
    pred = predict_msrrn(ours.model, data, split, margin=ours.margin, limit=setting.limit)
    errors = face_errors(pred, "landmarks", KIND)
    groups = select_faces(errors)
    wanted = {i for indices in groups.values() for i in indices}
    faces = {}
    for index, face in enumerate(iterate_faces(data, split, setting.limit)):
        if index in wanted:
            if face.source_path != pred.source_paths[index]:
                raise AssertionError(f"face {index} differs between the model's pipeline "
                                     "and the peers' reader")
            faces[index] = face
    dlib = None
    if "dlib_ert" in harness.peer_names(setting):
        dlib = harness.fitted_peer(setting, FAMILY, data, "dlib_ert")

    methods = ["ours"] + (["dlib ERT"] if dlib is not None else [])
    images, predicted, true, titles = [], [], [], []
    selected: dict[str, list[dict[str, Any]]] = {}
    for group, indices in groups.items():
        for rank, index in enumerate(indices, 1):
            face = faces[index]
            outputs = {"ours": pred.outputs_px["landmarks"][index]}
            if dlib is not None:
                outputs["dlib ERT"] = np.asarray(dlib.predict(face.image, face.box),
                                                 np.float32)
            entry = {"index": index, "source_path": face.source_path}
            for method in methods:
                error = float(metrics.nme(outputs[method][None], face.landmarks[None],
                                          KIND)[0])
                entry[method] = error
                crop, (points, truth) = _crop(face.image, pred.crop_boxes[index],
                                              [outputs[method], face.landmarks])
                images.append(crop)
                predicted.append(points)
                true.append(truth)
                titles.append(f"{group} {rank}: {method} {100 * error:.1f}%")
            selected.setdefault(group, []).append(entry)
    per_row = len(images) // len(groups)

    def draw(path: str) -> None:
        plots.plot_landmark_grid(images, np.stack(predicted), np.stack(true), path,
                                 ncols=per_row, titles=titles)

    intro = (f"Faces of {split!r} ({pred.num_faces}) chosen by our inter-pupil NME: "
             f"{len(groups['best'])} best, median and worst (rows). Each face is shown "
             f"with {' and '.join(methods)} (red crosses) against the ground truth (green "
             "dots), cropped to our model's crop box; the titles give each method's "
             "inter-pupil NME on that face.")
    lines = [intro, "",
             "| group | face | " + " | ".join(f"{m} NME (%)" for m in methods) + " |",
             "|---|---|" + "---:|" * len(methods)]
    for group, entries in selected.items():
        for entry in entries:
            lines.append(f"| {group} | `{os.path.basename(entry['source_path'])}` | "
                         + " | ".join(f"{100 * entry[m]:.2f}" for m in methods) + " |")
    if dlib is None:
        lines.append("\ndlib ERT is not among the peers of this run: ours only.")
    results = {"data": os.path.abspath(data), "split": split, "kind": KIND,
               "num_faces": pred.num_faces, "methods": methods,
               "mean_error": float(np.mean(errors)), "faces": selected}
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n".join(lines), figures={"examples": draw})


if __name__ == "__main__":
    harness.main(run, FAMILY)
