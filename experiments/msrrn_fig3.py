"""MSRRN Figure 3: CED curves of our MSRRN and its peers on every evaluation split.

::

    python -m experiments.msrrn_fig3
    python -m experiments.msrrn_fig3 --data=/data/300w

The paper's Fig. 3 plots the cumulative error distribution (fraction of test faces
whose inter-pupil NME is at most x) of MSRRN and the methods it re-implemented. Here
every curve is a method run in this harness on the same faces and face boxes: our
MSRRN, dlib ERT, the mean shape and LBF when available (the comparisons of
:func:`experiments.msrrn_table1.comparisons`, shared with Table 1 and cached), one
PNG per evaluation split, plus the 5-point CED when MTCNN ran. The table gives each
curve's AUC (area under the CED up to the threshold, divided by it) and failure rate
(fraction of faces above the threshold), inter-pupil, at 0.08 and 0.10.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from experiments import harness, msrrn_table1

FAMILY = "msrrn"
NAME = "msrrn_fig3"
TITLE = "MSRRN Figure 3: CED curves of ours and the peers on each evaluation split"

KIND = "inter_pupil"


def _curve_table(results: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]],
                                                      dict[str, str]]:
    """Rows (methods) of mean NME, AUC and failure rate at each threshold."""
    thresholds = results["thresholds"]
    columns = {"mean": "NME"}
    columns.update({f"auc@{t:g}": f"AUC@{t:g}" for t in thresholds})
    columns.update({f"failure@{t:g}": f"failure@{t:g}" for t in thresholds})
    columns["count"] = "faces"
    table = {msrrn_table1.method_label(method): scores[KIND]
             for method, scores in results["methods"].items() if KIND in scores}
    return table, columns


def _copier(source: str):
    return lambda path: shutil.copyfile(source, path)


def run(setting: harness.Setting, *, verbose: bool = True) -> harness.ExperimentOutput:
    """Regenerates Figure 3 (see the module docstring).

    Args:
        setting: data, results folder, training and peers (``experiments.harness``).
        verbose: progress output.

    Returns:
        The written experiment (``msrrn_fig3.json`` / ``.md``, ``ced_<split>.png`` and,
        with MTCNN, ``ced5_<split>.png``).
    """
    from common.metrics import results_markdown

    data, splits, reports = msrrn_table1.comparisons(setting, verbose=verbose)
    figures = {}
    blocks = []
    results: dict[str, Any] = {"data": os.path.abspath(data), "splits": splits,
                               "kind": KIND, "curves": {}}
    for split in splits:
        report = reports[split]
        scores = report["results"]
        table, columns = _curve_table(scores)
        blocks.append(results_markdown(
            table, columns, f"{split} ({scores['num_faces']} faces), inter-pupil NME: "
            "AUC and failure rate per threshold (%)"))
        results["curves"][split] = {
            method: {k: v for k, v in values[KIND].items() if k != "per_point"}
            for method, values in scores["methods"].items() if KIND in values}
        # The CED of compare_real is the very plot: every method's per-face errors on
        # this split, from the one comparison run of Table 1.
        figures[f"ced_{split}"] = _copier(report["paths"]["ced"])
        if "five_point_ced" in report["paths"]:
            figures[f"ced5_{split}"] = _copier(report["paths"]["five_point_ced"])
    blocks.append("Each curve: fraction of the split's faces whose NME (mean point error "
                  "over the inter-pupil distance) is at most x. `ced5_*`: the 5-point "
                  "reduction, normalised by the eye-centre distance, with MTCNN.")
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n\n".join(blocks), figures=figures)


if __name__ == "__main__":
    harness.main(run, FAMILY)
