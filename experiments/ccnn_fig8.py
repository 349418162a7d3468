"""CCNN Fig. 8: example faces with the landmarks after stage 1, 2 and 3.

::

    python -m experiments.ccnn_fig8                 # synthetic faces, quick preset
    python -m experiments.ccnn_fig8 --data=DIR --model=runs/ccnn

As the paper's Fig. 8, one row per stage of the shared default cascade (row k: the
points after stage k, red crosses) over the same faces, with the ground truth (green
dots) in every cell. Faces are the first ones of the evaluation split, each shown in
the crop the model sees. Writes ``ccnn_fig8.json`` (the faces and their per-stage
errors), ``.md`` and ``faces.png`` into ``--output/ccnn_fig8``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments import harness
from experiments.ccnn_common import EVAL_SPLIT, default_cascade, model_note, stage_label

FAMILY = "ccnn"
NAME = "ccnn_fig8"
TITLE = "CCNN Fig. 8: landmarks after each stage"


def crop_view(image: np.ndarray, crop_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of an image inside a crop box, and the offset to shift points by.

    Args:
        image: ``[H, W, 3]``.
        crop_box: ``(l, t, r, b)`` pixels (pixel centres at integers).

    Returns:
        ``(view [h, w, 3], offset (x0, y0))``: a point ``p`` of the image is at
        ``p - offset`` in the view. The view is clipped to the image.
    """
    height, width = image.shape[:2]
    left, top, right, bottom = (float(v) for v in crop_box)
    x0 = min(max(0, math.floor(left)), width - 1)
    y0 = min(max(0, math.floor(top)), height - 1)
    x1 = max(min(width, math.ceil(right) + 1), x0 + 1)
    y1 = max(min(height, math.ceil(bottom) + 1), y0 + 1)
    return image[y0:y1, x0:x1], np.array([x0, y0], np.float32)


def run(setting: harness.Setting, *, num_faces: int = 6,
        verbose: bool = True) -> harness.ExperimentOutput:
    """Draws the first ``num_faces`` evaluation faces after every stage.

    Args:
        setting: the experiment's setting.
        num_faces: faces (columns) shown.
        verbose: training progress.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    from ccnn_tf.evaluate import point_labels, stage_outputs
    from common import evaluation, metrics, plots
    from experiments.peers import iterate_faces

    data, ours = default_cascade(setting, verbose=verbose)
    pred = evaluation.predict_split(ours.model, data, EVAL_SPLIT, sizes=ours.sizes,
                                    margin=ours.margin, num_landmarks=ours.num_landmarks,
                                    limit=num_faces)
    faces = list(iterate_faces(data, EVAL_SPLIT, num_faces))
    if [f.source_path for f in faces] != list(pred.source_paths):
        raise AssertionError("the faces read differ from the faces predicted")
    stages = stage_outputs(pred.outputs_px)
    views, offsets = zip(*(crop_view(f.image, box) for f, box in zip(faces, pred.crop_boxes)))
    offsets = np.stack(offsets)[:, None, :]
    errors = {s: metrics.nme(pred.outputs_px[s], pred.true_px, "box_width",
                             boxes=pred.boxes) for s in stages}

    images, predicted, true, titles = [], [], [], []
    for stage in stages:
        images += views
        predicted.append(pred.outputs_px[stage] - offsets)
        true.append(pred.true_px - offsets)
        titles += [f"{stage_label(stage)}: {100 * e:.1f} %" for e in errors[stage]]
    results = {
        "data": os.path.abspath(data), "split": EVAL_SPLIT, "stages": stages,
        "point_labels": point_labels(ours.num_landmarks), "model": ours.info,
        "faces": [{"source_path": f.source_path, "box": pred.boxes[i],
                   "true": pred.true_px[i],
                   "predicted": {s: pred.outputs_px[s][i] for s in stages},
                   "box_width_error": {s: float(errors[s][i]) for s in stages}}
                  for i, f in enumerate(faces)],
        "mean_box_width_error": {s: float(errors[s].mean()) for s in stages},
    }
    means = ", ".join(f"{stage_label(s)} {100 * errors[s].mean():.2f} %" for s in stages)
    lines = [(f"The first {len(faces)} {EVAL_SPLIT!r} faces of `{data}`, one row per stage "
              "(red crosses: the points after that stage; green dots: ground truth), each in "
              "the crop the model sees. Cell titles: the face's mean error in % of the "
              "face-box width."), "",
             f"- mean over these faces: {means}.",
             ("- paper: the same layout on LFPW faces (Fig. 8); stage 1 has visible flaws, "
              "stage 2 improves markedly, stage 3 is indistinguishable by eye."),
             model_note(ours.info)]
    figures = {"faces": lambda path: plots.plot_landmark_grid(
        images, np.concatenate(predicted), np.concatenate(true), path, ncols=len(faces),
        titles=titles)}
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n".join(lines), figures=figures)


if __name__ == "__main__":
    harness.main(run, FAMILY)
