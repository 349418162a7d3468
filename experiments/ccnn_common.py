"""What the CCNN experiment scripts (``experiments.ccnn_*``) share.

* :func:`default_cascade` / :func:`trained_cascade`: the data and the one trained
  default cascade every CCNN experiment reads, and the ablation variants
  (``experiments.harness.trained_model`` trains each once per ``runs_dir``; a process
  that runs several experiments loads each once);
* :func:`evaluate`: a cascade scored on the evaluation split, every stage, under both
  normalisers of the CCNN paper's family (face-box width, Sun et al. 2013, the
  paper's "test error"; inter-ocular distance);
* :func:`stage_ablation`: the two first-stage ablations of the paper (Experiment 2,
  windows+/-; Experiment 3, shake+/-) as one function: cascades that differ in a few
  config fields (:class:`Arm`), compared per point after the same stage(s).

The numbers the paper publishes are kept here once (``PAPER_*``) and always reported
as quoted, never as measured.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import harness

FAMILY = "ccnn"

EVAL_SPLIT = "val"
"""The split every CCNN experiment scores (the training split is "train")."""

PAPER_DATA = "LFPW, 3,466 test faces"
"""The paper's test set (section 4.1)."""

PAPER_STAGE_MEANS = {"stage_1": 0.0221, "stage_2": 0.0137, "stage_3": 0.0103}
"""Mean test error after each stage (Experiment 1, section 4.2), face-box width."""

QUOTED = "quoted from the paper, not run here"


_LOADED: dict[tuple[str, tuple[Any, ...]], Any] = {}
"""Cascades :func:`trained_cascade` returned in this process, by model path and stamp."""


def trained_cascade(setting: harness.Setting, data: str, *, variant: str = "default",
                    overrides: Mapping[str, Any] | None = None, verbose: bool = True):
    """``harness.trained_model`` of the family, remembered for the rest of the process.

    ``harness.trained_model`` trains a variant once per ``runs_dir``; reusing a finished
    run still replays the stage bookkeeping of ``ccnn_tf.training.train_ccnn`` (about
    10 s of CPU each time). Within one process (``experiments.reproduce``, the tests)
    the experiments therefore share the loaded cascade as long as its final model file
    is unchanged. The cascade is only read (evaluated, timed, copied), never changed.

    Args:
        setting: the experiment's setting.
        data: TFRecord folder.
        variant: variant name (``"default"``: the shared default cascade).
        overrides: ``CCNNConfig`` fields of the variant.
        verbose: training progress.

    Returns:
        ``experiments.compare_real.OurModel``.
    """
    overrides = dict(overrides or {})
    path = (setting.model if variant == "default" and not overrides and setting.model
            else harness.model_run_dir(FAMILY, setting, data, variant=variant,
                                       overrides=overrides))
    stamp = harness._model_stamp(path)
    key = (os.path.abspath(path), tuple(stamp or ()))
    if stamp is not None and key in _LOADED:
        return _LOADED[key]
    ours = harness.trained_model(FAMILY, setting, data, variant=variant, overrides=overrides,
                                 verbose=verbose)
    stamp = harness._model_stamp(path)
    if stamp is not None:
        _LOADED[(os.path.abspath(path), tuple(stamp))] = ours
    return ours


def default_cascade(setting: harness.Setting, *, verbose: bool = True):
    """The data folder and the default cascade of ``setting`` (:func:`trained_cascade`).

    Args:
        setting: the experiment's setting; ``setting.model`` replaces training.
        verbose: training progress.

    Returns:
        ``(data folder, experiments.compare_real.OurModel)``.
    """
    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    return data, trained_cascade(setting, data, verbose=verbose)


def evaluate(model, data: str, setting: harness.Setting):
    """Scores every stage of a cascade on :data:`EVAL_SPLIT` (``setting.limit`` faces).

    Returns:
        ``ccnn_tf.evaluate.CascadeEvaluation`` (Table 3's timing is not measured).
    """
    from ccnn_tf import evaluate as ccnn_evaluate

    return ccnn_evaluate.evaluate_cascade(model, data, EVAL_SPLIT, limit=setting.limit,
                                          cost=False)


def model_note(info: Mapping[str, Any], label: str = "CCNN") -> str:
    """One Markdown line on how a cascade was obtained (``OurModel.info``)."""
    if info.get("source") == "trained":
        return (f"- {label}: preset {info['preset']!r}, {info['steps_per_stage']} steps per "
                f"stage, {info['num_stages']} stage(s), trained on 'train' (cached in "
                f"`{info['run_dir']}` and shared by the experiments that use it).")
    return f"- {label}: loaded from `{info['source']}` (not trained here)."


def stage_entries(results: Mapping[str, Any], stages: Sequence[str]) -> dict[str, Any]:
    """``{stage: {kind: summary}}`` of ``evaluate_cascade`` results, for the JSON."""
    return {stage: {kind: dict(results["outputs"][stage][kind]) for kind in results["kinds"]}
            for stage in stages}


def stage_label(stage: str) -> str:
    """``"stage_2"`` -> ``"stage 2"``."""
    return stage.replace("_", " ")


NO_SHAKE = {"stage1_shake_stddev": 0.0, "stage2_shake_stddev": 0.0,
            "stage3_shake_stddev": 0.0}
"""The config fields of the "shake-" variant. Experiments 2 and 3 both train its first
stage with these very overrides, so ``harness.trained_model`` trains it once for both."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One line of an ablation: a label and the cascade behind it.

    Attributes:
        label: the label in the tables and the plot (``"windows-"``).
        variant: ``"default"`` (the shared default cascade) or a variant name for
            ``harness.trained_model`` (part of its cache folder).
        overrides: ``CCNNConfig`` fields of the variant (empty for the default).
        description: what the arm is, for the report.
    """

    label: str
    variant: str = "default"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class StageAblation:
    """One of the paper's first-stage ablations (Experiment 2 or 3), as declared data.

    An experiment module declares one and exposes its ``run``; everything else is
    :func:`stage_ablation`, whose arguments these fields are.

    Attributes:
        name: experiment name (folder, file stem).
        title: report title.
        arms: the cascades compared, in plot order.
        claim: ``(lower, higher)`` labels: the arm the paper finds better first.
        quoted_means: the paper's mean stage-1 errors by label (quoted).
        description: what the experiment compares, for the report.
        figure_title: the plot's title (``{stage}``: the plotted stage).
    """

    name: str
    title: str
    arms: tuple[Arm, ...]
    claim: tuple[str, str]
    quoted_means: Mapping[str, float]
    description: str
    figure_title: str

    def run(self, setting: harness.Setting, *, stages: int = 1,
            verbose: bool = True) -> harness.ExperimentOutput:
        """Trains the arms' first stage(s) and compares them per point.

        Args:
            setting: the experiment's setting.
            stages: stages trained by the variants and compared (1: the paper's).
            verbose: training progress.

        Returns:
            The written ``harness.ExperimentOutput``.
        """
        return stage_ablation(
            setting, name=self.name, title=self.title, arms=self.arms, claim=self.claim,
            quoted_means=self.quoted_means, description=self.description,
            figure_title=self.figure_title, stages=stages, verbose=verbose)


def stage_ablation(setting: harness.Setting, *, name: str, title: str,
                   arms: Sequence[Arm], claim: tuple[str, str],
                   quoted_means: Mapping[str, float], description: str,
                   figure_title: str, stages: int = 1,
                   verbose: bool = True) -> harness.ExperimentOutput:
    """Cascades differing in one design choice, per point, after the first stage(s).

    The paper measures Experiments 2 and 3 on the first stage (section 4.2: "the test
    error of each key point in the first stage"), so by default a variant trains stage
    1 only (``num_stages = stages``), and the default arm is the same stage(s) of the
    shared default cascade (when ``setting.model`` gives a model trained elsewhere, the
    default config is trained like the variants instead, variant ``"reference"``).
    Stage ``k`` is trained with stages ``< k`` frozen and never sees later stages, so
    the default's stage 1 is what a one-stage run of the default config gives with the
    same steps, seed and data.

    Args:
        setting: the experiment's setting.
        name: experiment name (folder, file stem).
        title: report title.
        arms: the cascades compared, in plot order (the paper's Figs. 5 and 6 draw the
            ablated arm first, in blue).
        claim: ``(lower, higher)``: the labels of the arm the paper finds better and
            of the arm it is compared with; checked per compared stage.
        quoted_means: the paper's mean stage-1 errors by label (quoted).
        description: what the experiment compares, for the report.
        figure_title: the plot's title; ``{stage}`` is replaced by the plotted stage
            (the last one compared).
        stages: stages trained by the variants and compared (1: the paper's
            comparison; 2 or 3 also train and compare the variants' later stages).
        verbose: training progress.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    from common import plots
    from experiments.compare_real import NORMALISERS, per_point_table

    if not 1 <= stages <= 3:
        raise ValueError(f"stages must be 1, 2 or 3, got {stages}")
    labels = [arm.label for arm in arms]
    if len(set(labels)) != len(labels) or not set(claim) <= set(labels):
        raise ValueError(f"arm labels {labels} must be distinct and include {claim}")
    data = harness.prepared_data(setting, FAMILY, progress=verbose)
    models, overrides, variants = {}, {}, {}
    for arm in arms:
        variant = arm.variant
        if variant == "default" and setting.model:
            # A given model was trained on its own schedule: train the default config
            # with the same steps as the other arms, so that only the ablated choice
            # differs between them.
            variant = "reference"
        variants[arm.label] = variant
        overrides[arm.label] = ({} if variant == "default"
                                else {**arm.overrides, "num_stages": stages})
        models[arm.label] = trained_cascade(setting, data, variant=variant,
                                            overrides=overrides[arm.label], verbose=verbose)
        if models[arm.label].info["num_stages"] < stages:
            raise ValueError(f"{arm.label}: the cascade has "
                             f"{models[arm.label].info['num_stages']} stages, "
                             f"{stages} are compared")
    evaluated = {label: evaluate(ours.model, data, setting).results
                 for label, ours in models.items()}
    compared = [f"stage_{k}" for k in range(1, stages + 1)]
    first = evaluated[labels[0]]
    kinds, point_labels = first["kinds"], first["point_labels"]

    arm_results = {
        arm.label: {"variant": variants[arm.label], "overrides": overrides[arm.label],
                    "description": arm.description, "model": models[arm.label].info,
                    "stages": stage_entries(evaluated[arm.label], compared)}
        for arm in arms}
    lower, higher = claim
    checks = {f"{lower}_lower_than_{higher}_{stage}": bool(
        arm_results[lower]["stages"][stage]["box_width"]["mean"]
        < arm_results[higher]["stages"][stage]["box_width"]["mean"]) for stage in compared}
    results = {"data": os.path.abspath(data), "split": EVAL_SPLIT,
               "num_faces": first["num_faces"], "point_labels": point_labels,
               "kinds": kinds, "compared_stages": compared, "labels": labels,
               "arms": arm_results, "checks": checks,
               "paper": {"mean_stage_1": dict(quoted_means), "data": PAPER_DATA,
                         "note": QUOTED}}

    tables = []
    for kind in kinds:
        rows = {f"{label}, {stage_label(stage)}":
                arm_results[label]["stages"][stage][kind]["per_point"]
                for stage in compared for label in labels}
        tables.append(per_point_table(rows, point_labels, kind))
    quoted = ", ".join(f"{label} {100 * value:.2f} %" for label, value in quoted_means.items())
    lines = [description, ""]
    lines += [f"- **{arm.label}**: {arm.description}" for arm in arms]
    lines += ["", (f"{first['num_faces']} {EVAL_SPLIT!r} faces of `{data}`, every arm on the "
                   "same faces and boxes."), "", *tables,
              (f"Paper ({PAPER_DATA}; {QUOTED}): mean stage-1 error {quoted} (% of the "
               f"{NORMALISERS['box_width']}; its per-point values are only drawn in the "
               "figure)."), "",
              "Checks (face-box width): " + ", ".join(f"{k}: {v}" for k, v in checks.items())
              + ".", "", "### Setup", ""]
    for arm in arms:
        what = ("default cascade" if variants[arm.label] == "default"
                else f"variant {variants[arm.label]!r}, {overrides[arm.label]}")
        lines.append(model_note(models[arm.label].info, f"{arm.label} ({what})"))
    last = compared[-1]
    series = {label: arm_results[label]["stages"][last]["box_width"]["per_point"]
              for label in labels}
    figures = {"per_point": lambda path: plots.plot_per_point_errors(
        series, point_labels, path, title=figure_title.format(stage=stage_label(last)),
        ylabel=f"mean error (% of the {NORMALISERS['box_width']})")}
    return harness.write_outputs(setting, name, title=title, results=results,
                                 markdown="\n".join(lines), figures=figures)
