"""MSRRN Table 2: the error with more recurrent stages (mean shape, 1, 2, 3 stages).

::

    python -m experiments.msrrn_table2
    python -m experiments.msrrn_table2 --true_ablation    # also trains T = 1, 2 models

The paper ("Performance effects with different stages") starts from the mean shape
and reports the error after 1, 2 and 3 stages. By default the rows are the stages of
our one trained T = 3 model (``msrrn_tf.training.stage_ablation_report``: the
training mean shape in the face crop, the initial-shape CNN S^0, then S^1, S^2,
S^3; the stages share their weights, so S^t is what a T = t model with these
weights predicts). With ``true_ablation`` it also trains separate models with
``num_stages`` = 1 and 2 (``harness.trained_model`` variants ``stages_1`` and
``stages_2``, trained once and cached) and reports their final errors beside the
T = 3 model's. Per evaluation split; errors in % of the inter-pupil distance (the
paper's) and of the outer-eye-corner distance.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

from experiments import harness

FAMILY = "msrrn"
NAME = "msrrn_table2"
TITLE = "MSRRN Table 2: error after each recurrent stage (stage ablation)"

KINDS = ("inter_pupil", "inter_ocular")


def _true_ablation(setting: harness.Setting, data: str, splits: list[str], ours,
                   overrides: Mapping[str, Any] | None, verbose: bool
                   ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{split: {"T=t model": {kind: summary}}}`` of separately trained models."""
    from common import evaluation
    from msrrn_tf.training import predict_msrrn

    models = {}
    for stages in range(1, ours.model.num_stages):
        models[stages] = harness.trained_model(
            FAMILY, setting, data, variant=f"stages_{stages}",
            overrides={**(overrides or {}), "num_stages": stages}, verbose=verbose)
    models[ours.model.num_stages] = ours
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        for stages, model in sorted(models.items()):
            pred = predict_msrrn(model.model, data, split, margin=model.margin,
                                 limit=setting.limit)
            scored = evaluation.evaluate_outputs(pred, kinds=KINDS)["outputs"]["landmarks"]
            table.setdefault(split, {})[f"T={stages} model"] = {
                kind: {k: v for k, v in scored[kind].items() if k != "per_point"}
                for kind in KINDS}
    return table


def run(setting: harness.Setting, *, true_ablation: bool = False,
        ablation_overrides: Mapping[str, Any] | None = None,
        verbose: bool = True) -> harness.ExperimentOutput:
    """Regenerates Table 2 (see the module docstring).

    Args:
        setting: data, results folder and training (``experiments.harness``).
        true_ablation: also train and score models with fewer stages (slow: one
            training per model).
        ablation_overrides: config fields of the separately trained models besides
            ``num_stages`` (default: the preset's config).
        verbose: progress output.

    Returns:
        The written experiment (``msrrn_table2.json`` / ``.md``, and per split the
        ``stage_ablation_report`` files ``table2_<split>.json`` / ``.md`` /
        ``_ced.png``).
    """
    from common.evaluation import default_eval_splits
    from common.metrics import results_markdown
    from msrrn_tf.training import (
        format_table2,
        predict_msrrn,
        stage_ablation_report,
        stage_rows,
    )

    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    splits = default_eval_splits(data)
    ours = harness.trained_model(FAMILY, setting, data, verbose=verbose)
    num_stages = int(ours.model.num_stages)
    out_dir = setting.out_dir(NAME)
    rows = stage_rows(num_stages)
    tables: dict[str, dict[str, dict[str, float]]] = {}
    decreasing: dict[str, bool] = {}
    files: dict[str, dict[str, str]] = {}
    for split in splits:
        pred = predict_msrrn(ours.model, data, split, margin=ours.margin, limit=setting.limit)
        report = stage_ablation_report(
            pred, num_stages, out_dir, f"table2_{split}", kinds=KINDS,
            title=f"MSRRN stage ablation (Table 2), split {split!r}",
            extra={"split": split, "data": os.path.abspath(data)})
        tables[split] = report["table2"]
        files[split] = report["paths"]
        errors = [report["table2"][label][KINDS[0]] for label, output in rows.items()
                  if output != "stage_0"]
        decreasing[split] = all(a > b for a, b in itertools.pairwise(errors))
        if verbose:
            print(f"[{NAME}] {split} ({pred.num_faces} faces), inter-pupil NME:\n"
                  + format_table2(report["table2"]), flush=True)

    columns = {f"{split}:{kind}": f"{split}, {kind.replace('_', '-')}"
               for split in splits for kind in KINDS}
    table = {label: {f"{split}:{kind}": tables[split][label][kind]
                     for split in splits for kind in KINDS} for label in rows}
    blocks = [results_markdown(table, columns, f"Stages of our T = {num_stages} model "
                               "(NME, % of the normaliser)")]
    blocks.append("Rows: the training mean shape placed in the face crop (no image "
                  "information; the paper's baseline), the initial-shape CNN S^0 (not a "
                  "row of the paper's table), and the shape after each recurrent stage "
                  "S^t of the same model. More stages lower the error on: "
                  + ", ".join(f"{s} {'yes' if ok else 'NO'}" for s, ok in decreasing.items())
                  + ".")
    blocks += [f"![stage CED, {split}]({os.path.basename(files[split]['ced'])})"
               for split in splits if "ced" in files[split]]
    results: dict[str, Any] = {
        "data": os.path.abspath(data), "splits": splits, "kinds": list(KINDS),
        "num_stages": num_stages, "ours": ours.info, "rows": list(rows),
        "table2": tables, "stage_errors_decrease": decreasing, "reports": files,
        "true_ablation": None,
    }
    if true_ablation:
        ablation = _true_ablation(setting, data, splits, ours, ablation_overrides, verbose)
        results["true_ablation"] = ablation
        labels = list(next(iter(ablation.values())))
        abl_table = {"mean shape": table[next(iter(rows))]}
        abl_table.update({label: {f"{split}:{kind}": ablation[split][label][kind]["mean"]
                                  for split in splits for kind in KINDS}
                          for label in labels})
        blocks.append(results_markdown(abl_table, columns, "True ablation: separately "
                                       "trained models with T stages (final NME, %)"))
        blocks.append(f"The T < {num_stages} models are trained with the same preset, "
                      "steps and seed (`harness.trained_model` variants `stages_<T>`).")
    else:
        blocks.append("Separately trained T = 1, 2 models (the true ablation): not run "
                      "(`--true_ablation`).")
    return harness.write_outputs(setting, NAME, title=TITLE, results=results,
                                 markdown="\n\n".join(blocks))


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_boolean("true_ablation", False, "Also train models with 1 and 2 stages "
                         "(one training each) and report their errors.")
    harness.main(lambda setting: run(setting, true_ablation=flags.FLAGS.true_ablation),
                 FAMILY)
