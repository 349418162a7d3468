"""How well the per-face confidence ranks failures, on one split of one data set.

    python -m experiments.confidence_auc --family=msrrn --model=/work/runs/msrrn-ytf68 \
        --data=/work/data/ytf68 --output=results/confidence/ytf68
    python -m experiments.confidence_auc --family=ccnn --model=/work/runs/ccnn-sun5 \
        --data=/work/data/sun5 --output=results/confidence/sun5

A failure is a face whose error (``common.metrics.nme``: inter-pupil for 68 points,
inter-ocular for the 5-point layout, i.e. the eye-centre distance) exceeds
``--threshold`` (10 %). The failure-ranking AUC is the probability that a random
failure has a lower score than a random success (``common.confidence.failure_auc``;
0.5 is chance). Scored signals:

* ``confidence``: the model's own output (``common.confidence``: flip-test agreement
  for MSRRN; for CCNN the source ``--confidence_source`` picks, default as saved:
  ``flip``, its flip-test agreement, or ``pairs``, its paired networks' agreement);
* ``last_update``: minus the size of the last stage's update (mean point move from
  stage T-1 to stage T, over the crop side), a signal every cascade has;
* ``flip_agreement``: minus the mean distance between the landmarks and those of a
  second pass on the mirrored crops, mapped back (over the crop side), for any model.

Writes ``confidence_auc.json`` (AUCs, failure counts, the command) and
``error_vs_confidence.png`` into ``--output``, each atomically.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from common import atomic, evaluation, plots
from common.confidence import failure_auc
from common.schemes import scheme_for


def load_family_model(family: str, path: str, confidence_source: str | None = None
                      ) -> tuple[Any, list[int], float, int]:
    """The trained model (Keras, with its ``confidence`` output), its sizes, margin
    and number of landmarks; ``confidence_source`` (``None``: as saved) switches what
    the confidence compares (an inference option of the model, e.g. CCNN's). A model
    whose confidence comes from its flip test (MSRRN) is loaded with it switched on."""
    import ccnn_tf  # noqa: F401  (register the model families)
    import msrrn_tf  # noqa: F401
    from common import landmark_model

    options = {} if confidence_source is None else {"confidence_source": confidence_source}
    model = landmark_model.get_family(family).load(path, **options)
    if "confidence" not in (getattr(model, "output", None) or {}):
        model = model.with_inference_options(flip_test=True)
    return (model, list(landmark_model.input_sizes_of(model)),
            float(landmark_model.margin_of(model)),
            int(landmark_model.num_landmarks_of(model)))


_MIRRORED = "mirrored_landmarks"


def _with_mirrored_pass(model: Any, flip_permutation: Sequence[int]) -> Any:
    """``model`` plus ``"mirrored_landmarks"``: its landmarks on the mirrored crops,
    mapped back (for the ``flip_agreement`` signal of any model)."""
    import tensorflow as tf

    permutation = list(flip_permutation)

    def forward(inputs):
        outputs = dict(model(inputs, training=False))
        mirrored = model({k: tf.reverse(v, axis=[2]) for k, v in inputs.items()},
                         training=False)["landmarks"]
        mirrored = tf.gather(mirrored, permutation, axis=1)
        outputs[_MIRRORED] = tf.stack([1.0 - mirrored[..., 0], mirrored[..., 1]], axis=-1)
        return outputs

    return tf.function(forward, autograph=False, reduce_retracing=True)


def last_stage_update(pred: evaluation.Predictions) -> np.ndarray:
    """Mean point move of the last stage over the crop side, ``[N]``."""
    stages = sorted(k for k in pred.outputs_px if k.startswith("stage_")
                    and k.split("_", 1)[1].isdigit())
    if len(stages) < 2:
        raise ValueError(f"need two stages, the model has {stages}")
    last, before = pred.outputs_px[stages[-1]], pred.outputs_px[stages[-2]]
    side = pred.crop_boxes[:, 2] - pred.crop_boxes[:, 0]
    return np.linalg.norm(last - before, axis=-1).mean(axis=1) / side


def measure(family: str, model_path: str, data: str, split: str = "val",
            threshold: float = 0.10, limit: int | None = None,
            confidence_source: str | None = None) -> dict[str, Any]:
    """Runs the model over the split and scores every signal (module docstring).

    Returns:
        ``{"faces", "failures", "kind", "auc": {signal: AUC}, "signals": {signal:
        [N]}, "errors": [N]}``.
    """
    model, sizes, margin, num_landmarks = load_family_model(family, model_path,
                                                            confidence_source)
    source = getattr(model, "confidence_source", "flip")
    scheme = scheme_for(num_landmarks)
    pred = evaluation.predict_split(_with_mirrored_pass(model, scheme.flip_permutation), data,
                                    split, sizes=sizes, margin=margin,
                                    num_landmarks=num_landmarks, limit=limit)
    kind = "inter_pupil" if scheme.outer_eye_corners is not None else "inter_ocular"
    errors = evaluation.face_errors(pred, "landmarks", kind, scheme)
    if "confidence" not in pred.per_face:
        raise ValueError(f"the model at {model_path} has no 'confidence' output")
    side = pred.crop_boxes[:, 2] - pred.crop_boxes[:, 0]
    flip = np.linalg.norm(pred.outputs_px["landmarks"] - pred.outputs_px[_MIRRORED],
                          axis=-1).mean(axis=1) / side
    signals = {"confidence": pred.per_face["confidence"].astype(np.float64),
               "last_update": -last_stage_update(pred), "flip_agreement": -flip}
    return {"faces": len(errors), "failures": int((errors > threshold).sum()),
            "kind": kind, "threshold": threshold, "confidence_source": source,
            "mean_error": float(errors.mean()),
            "auc": {name: failure_auc(value, errors, threshold)
                    for name, value in signals.items()},
            "confidence_quantiles": {
                group: [round(float(q), 4) for q in np.quantile(
                    signals["confidence"][mask], [0.1, 0.5, 0.9])]
                for group, mask in (("failures", errors > threshold),
                                    ("successes", errors <= threshold)) if mask.any()},
            "signals": signals, "errors": errors}


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_enum("family", None, ["msrrn", "ccnn"], "Model family.", required=True)
    flags.DEFINE_string("model", None, "Training run directory or .keras file.",
                        required=True)
    flags.DEFINE_string("data", None, "TFRecord folder (common.prepare).", required=True)
    flags.DEFINE_string("split", "val", "Split to measure on.")
    flags.DEFINE_float("threshold", 0.10, "Failure threshold (fraction of the eye "
                       "distance).")
    flags.DEFINE_integer("limit", None, "Use only the first faces (quick checks).")
    flags.DEFINE_enum("confidence_source", None, ["flip", "pairs"], "CCNN only: what its "
                      "confidence output compares (default: as the model was saved).")
    flags.DEFINE_string("output", None, "Folder for the JSON and the plot.", required=True)


def main(argv: Sequence[str]) -> None:
    del argv
    result = measure(FLAGS.family, FLAGS.model, FLAGS.data, FLAGS.split, FLAGS.threshold,
                     FLAGS.limit, FLAGS.confidence_source)
    os.makedirs(FLAGS.output, exist_ok=True)
    report = {k: v for k, v in result.items() if k not in ("signals", "errors")}
    report.update(command=" ".join(["python -m experiments.confidence_auc"] + sys.argv[1:]),
                  model=os.path.abspath(FLAGS.model), data=os.path.abspath(FLAGS.data),
                  split=FLAGS.split)
    atomic.write_text(os.path.join(FLAGS.output, "confidence_auc.json"),
                      json.dumps(report, indent=2) + "\n")
    name = os.path.basename(os.path.abspath(FLAGS.data))
    series = {f"confidence, {result['confidence_source']} (AUC "
              f"{result['auc']['confidence']:.3f})":
              (result["signals"]["confidence"], result["errors"])}
    atomic.write_figure(plots.plot_error_vs_confidence, os.path.join(
        FLAGS.output, "error_vs_confidence.png"), series, threshold=FLAGS.threshold,
        title=f"{FLAGS.family} on {name}/{FLAGS.split}: {result['failures']} failures of "
              f"{result['faces']} faces", ylabel=f"NME ({result['kind']})")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
