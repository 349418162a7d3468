"""MSRRN Table 1: mean error of our MSRRN and its peers on the evaluation splits.

::

    python -m experiments.msrrn_table1                      # synthetic faces
    python -m experiments.msrrn_table1 --data=/data/300w    # 300-W: common, challenging, full

The paper (Wang et al. 2017, "Comparisons with state-of-the-art methods") reports the
mean inter-pupil NME (its "NRMSE") on the 300-W common, challenging and full sets of
MSRRN and 12 published methods, "directly cropped from the original papers". Here:

* **run here**: our MSRRN and the peers of ``experiments.compare_real`` (dlib ERT
  trained on the same training split, the mean shape, LBF when OpenCV's Facemark is
  installed), each on the same faces with the same face boxes, through
  :func:`experiments.harness.compared` (one run per split, cached, peers fitted once
  under ``runs_dir``). The splits are ``common.evaluation.default_eval_splits``:
  common / challenging / full on 300-W, else ``val``. Errors in % of the inter-pupil
  distance (the paper's metric) and of the outer-eye-corner distance (300-W's);
  MTCNN, a 5-point method, is compared on the 5-point reduction of all methods;
* **quoted from the paper, not run here**: the published numbers of the other
  methods (:data:`PAPER_TABLE1`), comparable only on real 300-W with the paper's
  protocol.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import harness

FAMILY = "msrrn"
NAME = "msrrn_table1"
TITLE = "MSRRN Table 1: mean error on the evaluation splits, ours and peers (same run)"

KINDS = ("inter_pupil", "inter_ocular")
"""The normalisers: the paper's inter-pupil NRMSE first, then 300-W's inter-ocular."""

QUOTED_NOTE = "quoted from the paper, not run here"

PAPER_METHODS = (
    ("FPLL", "Zhu and Ramanan 2012"),
    ("DRMF", "Asthana et al. 2013"),
    ("RCPR", "Burgos-Artizzu et al. 2013"),
    ("SDM", "Xiong and De la Torre 2013"),
    ("GN-DPM", "Tzimiropoulos and Pantic 2014"),
    ("ESR", "Cao et al. 2012"),
    ("LBF", "Ren et al. 2014"),
    ("ERT", "Kazemi and Sullivan 2014"),
    ("CFSS", "Zhu et al. 2015"),
    ("CFAN", "Zhang et al. 2014"),
    ("BPCPR", "Sun et al. 2015"),
    ("TCDCN", "Zhang et al. 2016"),
    ("MSRRN", "Wang et al. 2017, this paper"),
)
"""The rows of the paper's Table 1: the 12 methods it names ("Comparisons with
state-of-the-art methods") and MSRRN itself."""

PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    method: {"common": None, "challenging": None, "full": None}
    for method, _ in PAPER_METHODS
}
"""The paper's Table 1, inter-pupil NME in % per 300-W set, quoted, never run here.

The paper's text available to this project names the methods of Table 1 but not the
table's numbers (the table did not survive the text extraction), so every cell is
``None`` ("not available") rather than a number recalled from elsewhere. Filling it
from the published article (Appl. Inform. 4:13, 2017, Table 1) makes the report show
them beside ours.
"""

THREE_HUNDRED_W = ("common", "challenging", "full")


def method_label(method: str) -> str:
    """Display name of a ``compare_real`` method (``"dlib_ert"`` -> ``"dlib ERT"``)."""
    from experiments.compare_real import METHOD_LABELS

    return METHOD_LABELS.get(method, method.replace("_", " "))


def comparisons(setting: harness.Setting, *, verbose: bool = True
                ) -> tuple[str, list[str], dict[str, dict[str, Any]]]:
    """Our MSRRN and the peers on every evaluation split (cached, shared by the MSRRN
    experiments).

    Returns:
        ``(data folder, splits, {split: harness.compared(...) report})``.
    """
    from common.evaluation import default_eval_splits

    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    splits = default_eval_splits(data)
    reports = {split: harness.compared(FAMILY, setting, data, split, verbose=verbose)
               for split in splits}
    return data, splits, reports


def is_300w(splits: Sequence[str]) -> bool:
    """Whether the evaluation splits are 300-W's test sets (the paper's protocol)."""
    return tuple(splits) == THREE_HUNDRED_W


def split_table(reports: Mapping[str, Mapping[str, Any]], entry: str,
                kinds: Sequence[str] = KINDS) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Rows (methods) x columns (split, normaliser) of mean NMEs.

    Args:
        reports: ``{split: compared report}``.
        entry: ``"methods"`` (all points) or ``"five_point"`` (the 5-point reduction).
        kinds: normalisers.

    Returns:
        ``(table, columns)`` for ``common.metrics.results_markdown``.
    """
    from experiments.compare_real import KIND_LABELS

    table: dict[str, dict[str, Any]] = {}
    columns: dict[str, str] = {}
    for split, report in reports.items():
        for kind in kinds:
            columns[f"{split}:{kind}"] = f"{split}, {KIND_LABELS.get(kind, kind)}"
        for method, scores in report["results"].get(entry, {}).items():
            row = table.setdefault(method_label(method), {})
            for kind in kinds:
                if kind in scores:
                    row[f"{split}:{kind}"] = scores[kind]["mean"]
    return table, columns


def _quoted_markdown(comparable: bool) -> str:
    from common.metrics import results_markdown

    table = {f"{method} ({citation})": {split: (None if value is None else value / 100)
                                         for split, value in PAPER_TABLE1[method].items()}
             for method, citation in PAPER_METHODS}
    columns = {split: f"{split}, inter-pupil" for split in THREE_HUNDRED_W}
    text = results_markdown(table, columns, f"Published results ({QUOTED_NOTE})")
    missing = all(v is None for row in PAPER_TABLE1.values() for v in row.values())
    notes = [(f"- Every number in this table is {QUOTED_NOTE}: the paper's Table 1 "
              "(errors of the other methods taken by the paper from their original "
              "publications).")]
    if missing:
        notes.append("- `-`: not available. The paper's text at hand names these methods "
                     "but not Table 1's numbers, so they are left empty instead of being "
                     "filled from memory (`experiments.msrrn_table1.PAPER_TABLE1`).")
    notes.append("- Comparable with the rows above only on real 300-W (train on LFPW + "
                 "HELEN training images, test on common / challenging / full, dlib face "
                 "boxes, inter-pupil NME)"
                 + ("." if comparable else "; this run's data is not 300-W, so they are "
                    "not comparable here."))
    return text + "\n" + "\n".join(notes) + "\n"


def run(setting: harness.Setting, *, verbose: bool = True) -> harness.ExperimentOutput:
    """Regenerates Table 1 (see the module docstring).

    Args:
        setting: data, results folder, training and peers (``experiments.harness``).
        verbose: progress output.

    Returns:
        The written experiment (``msrrn_table1.json`` / ``.md``).
    """
    from common.metrics import results_markdown

    data, splits, reports = comparisons(setting, verbose=verbose)
    comparable = is_300w(splits)
    first = reports[splits[0]]["results"]
    table, columns = split_table(reports, "methods")
    blocks = [results_markdown(table, columns, "Run here: same training split, same faces, "
                               "same face boxes (NME, % of the normaliser)")]
    counts = ", ".join(f"{s}: {reports[s]['results']['num_faces']} faces" for s in splits)
    blocks.append(f"Data: `{os.path.abspath(data)}` ({counts}); training split "
                  f"{first['train_split']!r}. Inter-pupil = the paper's NRMSE (eye centres "
                  "= means of the six eye points); inter-ocular = outer eye corners "
                  "(300-W).")
    options = harness.dlib_options(setting)
    blocks.append("dlib ERT: " + (f"dlib's defaults with {options}" if options
                                  else "dlib's default options")
                  + f", fitted on {first['train_split']!r} with the stored boxes. Full "
                  "same-run reports (setup, timing, CED): "
                  + ", ".join(f"`{reports[s]['paths']['markdown']}`" for s in splits) + ".")
    five_table, five_columns = split_table(reports, "five_point", ("inter_ocular",))
    if five_table:
        blocks.append(results_markdown(
            five_table, five_columns, "Run here, 5-point reduction (eye centres, nose tip, "
            "mouth corners) for the 5-point MTCNN; inter-ocular = eye-centre distance"))
    notes = sorted({line for r in reports.values() for line in r["markdown"].splitlines()
                    if "skipped" in line.lower()})
    if notes:
        blocks.append("\n".join(f"- {line.lstrip('- ')}" for line in notes))
    blocks.append(_quoted_markdown(comparable))

    results = {
        "data": os.path.abspath(data),
        "splits": splits,
        "is_300w": comparable,
        "kinds": list(KINDS),
        "methods": {m: {s: {k: reports[s]["results"]["methods"][m][k] for k in KINDS
                            if k in reports[s]["results"]["methods"][m]}
                        for s in splits if m in reports[s]["results"]["methods"]}
                    for m in first["methods"]},
        "five_point": {s: reports[s]["results"].get("five_point", {}) for s in splits},
        "ours": first["ours"],
        "peers": {s: reports[s]["results"]["peers"] for s in splits},
        "comparisons": {s: reports[s]["paths"]["json"] for s in splits},
        "paper_table1": {"source": QUOTED_NOTE, "comparable": comparable,
                         "unit": "% of the inter-pupil distance",
                         "methods": {m: dict(PAPER_TABLE1[m]) for m, _ in PAPER_METHODS}},
    }
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n\n".join(blocks))


if __name__ == "__main__":
    harness.main(run, FAMILY)
