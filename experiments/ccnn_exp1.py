"""CCNN Experiment 1 (Fig. 4): per-point error after stage 1, 2 and 3.

::

    python -m experiments.ccnn_exp1                 # synthetic faces, quick preset
    python -m experiments.ccnn_exp1 --data=DIR --steps=1500
    python -m experiments.ccnn_exp1 --data=DIR --model=runs/ccnn

Scores every stage of the shared default cascade on the evaluation split: the error of
each point (LE, RE, N, LM, RM) and their mean, normalised by the face-box width (Sun
et al. 2013, the paper's test error) and by the inter-ocular distance, with the
failure rates of ``ccnn_tf.evaluate.stage_table``. Writes ``ccnn_exp1.json``, ``.md``,
``per_point.png`` (face-box width, as Fig. 4) and ``per_point_inter_ocular.png`` into
``--output/ccnn_exp1``.
"""

from __future__ import annotations

import itertools
import os

from experiments import harness
from experiments.ccnn_common import (
    EVAL_SPLIT,
    PAPER_DATA,
    PAPER_STAGE_MEANS,
    QUOTED,
    default_cascade,
    evaluate,
    model_note,
    stage_entries,
    stage_label,
)

FAMILY = "ccnn"
NAME = "ccnn_exp1"
TITLE = "CCNN Experiment 1 (Fig. 4): per-point error after each stage"


def run(setting: harness.Setting, *, verbose: bool = True) -> harness.ExperimentOutput:
    """Scores the default cascade after each stage, per point.

    Args:
        setting: the experiment's setting.
        verbose: training progress.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    from ccnn_tf.evaluate import KIND_LABELS, stage_table
    from common import plots

    data, ours = default_cascade(setting, verbose=verbose)
    results = evaluate(ours.model, data, setting).results
    stages, kinds, labels = results["stages"], results["kinds"], results["point_labels"]
    entries = stage_entries(results, stages)
    means = [entries[s]["box_width"]["mean"] for s in stages]
    decreasing = bool(len(means) > 1 and all(a > b for a, b in itertools.pairwise(means)))
    written = {"data": os.path.abspath(data), "split": EVAL_SPLIT,
               "num_faces": results["num_faces"], "point_labels": labels, "kinds": kinds,
               "stages": entries, "model": ours.info,
               "checks": {"stage_errors_decrease": decreasing},
               "paper": {"mean": PAPER_STAGE_MEANS, "data": PAPER_DATA, "note": QUOTED}}
    quoted = " / ".join(f"{100 * PAPER_STAGE_MEANS[s]:.2f}" for s in sorted(PAPER_STAGE_MEANS))
    ours_means = " > ".join(f"{100 * m:.2f}" for m in means)
    lines = [f"{results['num_faces']} {EVAL_SPLIT!r} faces of `{data}`.", "",
             *[stage_table(results, kind) for kind in kinds],
             (f"- mean error after stages 1..{len(stages)} (% of the face-box width): "
              f"{ours_means}: {'decreasing' if decreasing else 'NOT decreasing'}."),
             f"- paper ({PAPER_DATA}; {QUOTED}): {quoted} % after stages 1 / 2 / 3.",
             model_note(ours.info)]

    def figure(kind: str):
        series = {stage_label(s): entries[s][kind]["per_point"] for s in stages}
        return lambda path: plots.plot_per_point_errors(
            series, labels, path, title="Per-point error after each stage (cf. Fig. 4)",
            ylabel=f"mean error (% of the {KIND_LABELS[kind]})")

    figures = {"per_point": figure("box_width"),
               "per_point_inter_ocular": figure("inter_ocular")}
    return harness.write_outputs(setting, NAME, title=TITLE, results=written,
                                 markdown="\n".join(lines), figures=figures)


if __name__ == "__main__":
    harness.main(run, FAMILY)
