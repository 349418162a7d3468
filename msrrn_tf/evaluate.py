"""Evaluates a trained MSRRN: ``python -m msrrn_tf.evaluate``.

Metrics (``common.metrics``): the inter-pupil NME (the paper's NRMSE, "Evaluation
protocols"), the inter-ocular NME (300-W convention), AUC@0.08 and the failure rates
at 0.08 and 0.10, per split. On 300-W data (a folder with "common" and
"challenging" shards) the three test sets common, challenging and full are evaluated
by default; otherwise every non-training split (or ``--splits``).

For every split it writes the stage ablation of Table 2 from the one model (mean
shape, initial CNN S^0, after stage 1, 2, 3; see ``msrrn_tf.training`` for what
"mean shape" means) and, with ``--ablation_models`` (models trained with
``python -m msrrn_tf.train --stages=1,2``), the true ablation over separately trained
T = 1, 2, 3 models::

    python -m msrrn_tf.evaluate --model=runs/msrrn-x --data=/data/300w
    python -m msrrn_tf.evaluate --model=runs/msrrn-x/model.keras --data=/data/synth \\
        --splits=val --ablation_models=runs/msrrn-x/stages_1,runs/msrrn-x/stages_2

Files in ``--output`` (default ``<run dir>/eval``): ``<split>.json/.md/_ced.png``
(stage ablation per split) and ``msrrn_eval.json/.md/_ced.png`` (all splits, the
true ablation, CED of the final predictions).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags, logging

FLAGS = flags.FLAGS

REPORT_NAME = "msrrn_eval"


def evaluate_msrrn(model, data, splits: Sequence[str], *, margin: float, out_dir: str,
                   ablation_models: Mapping[int, Any] | None = None,
                   kinds: Sequence[str] = ("inter_pupil", "inter_ocular"),
                   limit: int | None = None, batch_size: int = 64,
                   verbose: bool = True) -> dict[str, Any]:
    """Evaluates MSRRN on several splits and writes the reports.

    Args:
        model: the MSRRN model (T stages).
        data: TFRecord folder, or several (``common.multidata.DataSpec``, e.g.
            ``"data/ytf68,data/w300v"``): each split is scored on the union of the
            folders that have it and per folder (``"per_dataset"``, a table row per
            folder and the union).
        splits: split names or aliases ("common", "challenging", "full", "val").
        margin: the crop margin the models were trained with.
        out_dir: report folder.
        ablation_models: ``{T: model}`` trained with T stages (the true ablation of
            Table 2); ``model`` itself is used for its own T.
        kinds: normalisers (the first is the CED's).
        limit: evaluate only the first ``limit`` faces of each split.
        batch_size: faces per forward pass.
        verbose: print the tables.

    Returns:
        ``{split: {"stages": {row: {kind: summary}}, "ablation": {row: {kind:
        summary}}}, "files": {...}}``; summaries are ``common.metrics.summarize``
        dicts (fractions).
    """
    from common import evaluation, multidata
    from common.schemes import scheme_for
    from msrrn_tf.training import evaluate_split, predict_msrrn, stage_rows

    scheme = scheme_for(model.num_landmarks)
    spec = multidata.DataSpec.parse(data)
    multidata.check_landmark_scheme(spec, model.num_landmarks)
    models = {int(t): m for t, m in (ablation_models or {}).items()}
    models[model.num_stages] = model
    summary: dict[str, Any] = {
        "data": ",".join(os.path.abspath(f) for f in spec.folders), "margin": margin,
        "kinds": list(kinds), "splits": {}}
    if len(spec.folders) > 1:
        summary["data_spec"] = spec.to_dict()
    tables: list[str] = []
    ced = {}
    files: dict[str, Any] = {}
    for split in splits:
        split_spec = spec.with_split(split)
        if split_spec is None:
            raise FileNotFoundError(f"no folder of {str(spec)!r} has split {split!r}")
        pred, report = evaluate_split(model, spec, split, margin=margin, out_dir=out_dir,
                                      scheme=scheme, kinds=kinds, limit=limit,
                                      batch_size=batch_size)
        files[split] = report["paths"]
        results = report["results"]
        rows = stage_rows(model.num_stages)
        entry = {"num_faces": pred.num_faces, "seconds_per_face": pred.seconds_per_face,
                 "stages": {label: _strip(results["outputs"][output])
                            for label, output in rows.items()}}
        if report["per_dataset"]:
            entry["per_dataset"] = report["per_dataset"]
        ced[f"{split} ({pred.num_faces} faces)"] = evaluation.face_errors(
            pred, "landmarks", kinds[0], scheme)
        for kind in kinds:
            tables.append(evaluation.results_table(
                results, rows, kind, title=f"{split}: stages of one model, "
                f"{kind.replace('_', '-')} NME"))

        if len(models) > 1:
            ablation = {"mean shape": entry["stages"]["mean shape"]}
            for t in sorted(models):
                other = pred if models[t] is model else predict_msrrn(
                    models[t], split_spec, split, margin=margin, batch_size=batch_size,
                    limit=limit)
                scored = evaluation.evaluate_outputs(other, scheme, kinds=kinds)
                ablation[f"T={t} model"] = _strip(scored["outputs"]["landmarks"])
            entry["ablation"] = ablation
            for kind in kinds:
                table = {label: values[kind] for label, values in ablation.items()}
                tables.append(_markdown(table, results["thresholds"], f"{split}: separately "
                                        f"trained models, {kind.replace('_', '-')} NME"))
        summary["splits"][split] = entry
        if verbose:
            print("\n".join(tables[-len(kinds) * (2 if len(models) > 1 else 1):]), flush=True)
        if report["per_dataset"]:
            tables.append(report["per_dataset_table"])
            if verbose:
                print(report["per_dataset_table"], flush=True)

    files["summary"] = evaluation.write_report(
        summary, out_dir, REPORT_NAME, ced, "MSRRN evaluation", tables,
        ced_xlabel=f"NME (normalised by {kinds[0].replace('_', '-')} distance)",
        notes=("NME = mean point-to-point error over the 68 points divided by the "
               "inter-pupil distance (eye-centre = mean of the six eye points; the paper's "
               "NRMSE) or the outer-eye-corner distance (300-W inter-ocular). AUC and "
               "failure rates per threshold; all values in %. 'mean shape' is the "
               "training mean shape in the face crop (no image information)."))
    summary["files"] = files
    return summary


def _strip(per_kind: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A summary without the per-point list (kept in the per-split JSON)."""
    return {kind: {k: v for k, v in values.items() if k != "per_point"}
            for kind, values in per_kind.items()}


def _markdown(table: Mapping[str, Mapping[str, Any]], thresholds: Sequence[float],
              title: str) -> str:
    from common.metrics import results_markdown

    columns = {"mean": "NME"}
    for t in thresholds:
        columns[f"auc@{t:g}"] = f"AUC@{t:g}"
        columns[f"failure@{t:g}"] = f"failure@{t:g}"
    columns["count"] = "faces"
    return results_markdown(table, columns, title)


def model_margin(path: str, default: float) -> float:
    """The crop margin of the model at ``path`` (a run directory or a file in it): the
    model's own, else its run's ``config.json``, else ``default``. Kept for callers
    of the older API; the shared code reads ``model.margin``."""
    from common import model_path

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    margin = model_path.run_config(folder).get("margin")
    return default if margin is None else float(margin)


def load_with_margin(path: str, margin: float | None = None,
                     flip_test: bool | None = None) -> tuple[Any, float]:
    """A trained MSRRN (``.keras`` or run directory) and its crop margin
    (``msrrn_tf.family.load``: ``margin`` if given, else the model's, else its run's,
    else the config default with a warning). ``flip_test`` switches the model's flip
    test on or off (``MSRRN.with_flip_test``); ``None`` keeps it as trained."""
    from msrrn_tf.family import load

    model = load(path, margin=margin, flip_test=flip_test)
    return model, float(model.margin)


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    flags.DEFINE_string("model", None, "A .keras model, or a run directory of "
                        "`python -m msrrn_tf.train` (its model.keras, else its latest "
                        "checkpoint).", required=True)
    flags.DEFINE_string("data", None, "TFRecord folder (`python -m common.prepare`), or "
                        "several, comma-separated (data/ytf68,data/w300v; weights "
                        "FOLDER:W are accepted and ignored): every split is scored per "
                        "folder and on their union. "
                        "Default: the quick preset's synthetic data set.")
    flags.DEFINE_list("splits", None, "Splits to evaluate. Default: common, challenging "
                      "and full on 300-W data, else every split but train.")
    flags.DEFINE_string("output", None, "Report folder (default: <model run dir>/eval).")
    flags.DEFINE_list("ablation_models", [], "Models trained with fewer stages "
                      "(`python -m msrrn_tf.train --stages=1,2` writes <run_dir>/stages_1, "
                      "stages_2) for the true Table 2 ablation.")
    flags.DEFINE_float("margin", None, "Crop margin (default: the model run's config.json, "
                       "else MSRRNConfig().margin).")
    flags.DEFINE_boolean("flip_test", None, "Run the flip test (predict the mirrored face "
                         "too and average): --flip_test / --noflip_test; default: as the "
                         "model was trained (MSRRNConfig.flip_test).")
    flags.DEFINE_integer("limit", None, "Evaluate only the first this many faces per split.",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Faces per forward pass.", lower_bound=1)
    flags.DEFINE_string("cache_dir", None, "Cache folder of the default synthetic data.")
    from common import box_robustness

    box_robustness.define_flags(flags)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every checkpoint save at INFO
        logging.set_verbosity(logging.WARNING)
    from common import evaluation

    model, margin = load_with_margin(FLAGS.model, FLAGS.margin, FLAGS.flip_test)
    ablation = {}
    for path in FLAGS.ablation_models:
        other = evaluation.load_model(path).with_flip_test(FLAGS.flip_test)
        ablation[other.num_stages] = other
    data = FLAGS.data
    if data is None:
        from common.synthetic import ensure_synthetic_dataset
        from msrrn_tf.training import synthetic_splits

        data = ensure_synthetic_dataset(model.num_landmarks, synthetic_splits("quick"),
                                        cache_dir=FLAGS.cache_dir, progress=True)
    from common.multidata import DataSpec

    try:
        spec = DataSpec.parse(data)
    except ValueError as error:
        raise SystemExit(f"error: --data: {error}") from None
    splits = FLAGS.splits or list(dict.fromkeys(
        s for folder in spec.folders for s in evaluation.default_eval_splits(folder)))
    model_dir = (FLAGS.model if os.path.isdir(FLAGS.model)
                 else os.path.dirname(os.path.abspath(FLAGS.model)))
    out_dir = FLAGS.output or os.path.join(model_dir, "eval")
    print(f"evaluating {FLAGS.model} on {data} splits {splits} (margin {margin:g}, "
          f"flip test {'on' if model.flip_test else 'off'})", flush=True)
    summary = evaluate_msrrn(model, data, splits, margin=margin, out_dir=out_dir,
                             ablation_models=ablation, limit=FLAGS.limit,
                             batch_size=FLAGS.batch_size)
    box_files = []
    if FLAGS.box_faces:
        from common import box_robustness

        box_files = box_robustness.write_box_tables(
            model, data, splits, out_dir, kind="inter_pupil", num_faces=FLAGS.box_faces,
            sources=FLAGS.box_sources, label="MSRRN")
    print(f"reports written to {out_dir}: "
          + ", ".join(os.path.basename(p) for p in [*summary["files"]["summary"].values(),
                                                     *box_files]),
          flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
