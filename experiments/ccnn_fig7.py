"""CCNN Experiment 4 (Fig. 7): per-point error of CCNN beside peers on the same faces.

::

    python -m experiments.ccnn_fig7                 # synthetic faces, quick preset
    python -m experiments.ccnn_fig7 --data=DIR --steps=1500 --dlib_options='{}'

The shared default cascade and the peers of ``experiments.compare_real`` run in one
harness (``harness.compared``, i.e. ``compare_real.compare``) on the same evaluation
faces and the same face boxes: dlib's ERT and the mean shape fitted on the same
training split and boxes, the pretrained MTCNN (its own detector, and its last stage
on our box) when the ``mtcnn`` package is installed, and any other peer of
``--peers`` or of ``compare_real``'s defaults (OpenCV's Facemark LBF, ``lbf``, where
it is available). The fitted peers and the comparison are cached under
``--runs_dir`` (``harness.comparison_dir``) and shared with every other experiment
of the family on the same data. dlib trains with ``harness.dlib_options`` (a
reduced forest for the quick preset, its defaults for the paper preset or with
``--dlib_options='{}'``).

The paper's Fig. 7 draws Sun et al. (2013) and Chen Rui's cascade on LFPW; the text
gives only CCNN's mean (1.03 %), which is reported as quoted, not as a result.
Writes ``ccnn_fig7.json``, ``.md`` and ``per_point.png`` into ``--output/ccnn_fig7``;
the full same-run report of ``compare_real`` (CED, timing, setup) stays in the cache.
"""

from __future__ import annotations

from experiments import harness
from experiments.ccnn_common import (
    EVAL_SPLIT,
    PAPER_DATA,
    PAPER_STAGE_MEANS,
    QUOTED,
    model_note,
)

FAMILY = "ccnn"
NAME = "ccnn_fig7"
TITLE = "CCNN Experiment 4 (Fig. 7): per-point error of CCNN and its peers"


def run(setting: harness.Setting, *, verbose: bool = True) -> harness.ExperimentOutput:
    """Runs CCNN and the peers on the same faces and boxes; per-point errors.

    Args:
        setting: the experiment's setting (``peers`` and ``dlib_options`` choose the
            peers and dlib's training options).
        verbose: progress output.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    from ccnn_tf.evaluate import point_labels
    from common import plots
    from common.metrics import results_markdown
    from experiments import compare_real

    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    report = harness.compared(FAMILY, setting, data, EVAL_SPLIT, verbose=verbose)
    compared = report["results"]
    kinds, thresholds = compared["kinds"], compared["thresholds"]
    methods = list(compared["methods"])  # ours first
    labels = {m: compare_real.METHOD_LABELS.get(m, m) for m in methods}
    points = point_labels(5)
    ms = {m: (1e3 * compared["seconds_per_face"][m]
              if compared["seconds_per_face"].get(m) is not None else float("nan"))
          for m in methods}

    results = {
        "data": compared["data"], "split": EVAL_SPLIT, "num_faces": compared["num_faces"],
        "point_labels": points, "kinds": kinds, "labels": labels,
        "methods": compared["methods"], "ms_per_face": ms, "stages": compared["stages"],
        "peers": compared["peers"], "dlib_options": harness.dlib_options(setting),
        "checks": compared["checks"], "model": compared["ours"],
        "comparison_report": dict(report["paths"]), "comparison_reused": report["reused"],
        "paper": {"methods": {"CCNN": {"mean": PAPER_STAGE_MEANS["stage_3"]}},
                  "data": PAPER_DATA, "note": QUOTED + "; Sun et al. (2013) and Chen "
                  "Rui's per-point errors are only drawn in Fig. 7, not given in the text"},
    }
    summary = results_markdown(
        {labels[m]: compare_real.summary_row({"outputs": compared["methods"]}, m, kinds,
                                              thresholds, ms[m]) for m in methods},
        compare_real.summary_columns(kinds, thresholds),
        f"{compared['num_faces']} {EVAL_SPLIT!r} faces, the same faces and boxes for all")
    tables = [compare_real.per_point_table(
        {labels[m]: compared["methods"][m][kind]["per_point"] for m in methods},
        points, kind) for kind in kinds]
    options = harness.dlib_options(setting)
    dlib_note = f"dlib's defaults with {options}" if options else "dlib's defaults"
    lines = [summary, *tables,
             (f"- paper ({PAPER_DATA}; {QUOTED}): CCNN mean "
              f"{100 * PAPER_STAGE_MEANS['stage_3']:.2f} % of the face-box width; Sun et "
              "al. (2013) and Chen Rui's per-point errors are only drawn in its Fig. 7."),
             model_note(compared["ours"]),
             (f"- peers: {', '.join(labels[m] for m in methods[1:])}; the trained ones "
              f"fitted on 'train' with the same boxes (dlib ERT: {dlib_note}) and cached in "
              f"`{harness.comparison_dir(setting, FAMILY, data)}/peers`."),
             (f"- full same-run report (CED, setup, timing): "
              f"`{report['paths'].get('markdown')}`"
              + (" (reused)." if report["reused"] else "."))]
    # The mean shape (several times the others' error) stays in the tables, so that
    # the plot's scale shows the differences between the real methods.
    series = {labels[m]: compared["methods"][m]["box_width"]["per_point"]
              for m in methods if m != "mean_shape"}
    figures = {"per_point": lambda path: plots.plot_per_point_errors(
        series, points, path, title="Per-point error, same faces and boxes (cf. Fig. 7)",
        ylabel=f"mean error (% of the {compare_real.NORMALISERS['box_width']})")}
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n".join(lines), figures=figures)


if __name__ == "__main__":
    harness.main(run, FAMILY)
