"""Why CCNN's stage 1 is behind the paper: one-factor experiments on a tuning split.

::

    python -m common.prepare --input=../shared/data/sun5/trainImageList.txt \\
        --output=data/sun5_t --split_by=random --val_fraction=0.1 --tune_fraction=0.1
    python -m experiments.ccnn_stage1 --data=data/sun5_t --output=results/ccnn_stage1
    python -m experiments.ccnn_stage1 --data=data/sun5_t --variants=recipe,no_box --seeds=0,1

Every variant is stage 1 alone (F1, EN1, NM1 and the average of formula 4), trained on
``--train_split`` (``tune_train``) and scored on ``--eval_split`` (``tune_val``), never
on the val split the README's CCNN tables report: the choice made here is then tested
once on val. A variant is the ``recipe`` (README's CCNN recipe: the quick preset with
the learning rate x0.9 every 300 steps) with the config fields of :data:`VARIANTS`
changed, so each row differs from the recipe in one factor. Runs are cached in
``--output/runs/<variant>-s<seed>`` (a rerun reuses finished ones, resumes partial
ones); the table (``ccnn_stage1.md`` / ``.json``) gives the stage-1 error per variant,
its mean over the seeds and the difference to the recipe, and ``ccnn_stage1.png`` draws
it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from common.box_perturbation import CENTRED_RANGES_CUHK5, BoxRanges
from common.config import to_lists

RECIPE: dict[str, Any] = {"lr_decay_steps": 300}
"""README's CCNN recipe on top of the quick preset (``compare_real --config_json``)."""

_ADAM: dict[str, Any] = {"optimizer": "adam", "learning_rate": 1e-3}
"""Adam at 1e-3 (the ``adam`` variant), the base of the other Adam variants."""

NO_BOX_PERTURBATION = BoxRanges().as_fields()
"""The config fields of no face-box perturbation (the paper's augmentation)."""

VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "recipe": ({}, "README's CCNN recipe (quick preset, x0.9 every 300 steps)"),
    "no_box": (NO_BOX_PERTURBATION, "no face-box perturbation (the paper's augmentation)"),
    "no_rotation": ({"rotation_angles_deg": (0.0,)}, "no +-15/12 degree rotations"),
    "no_shake": ({"stage1_shake_stddev": 0.0}, "no shake of the stage-1 regions"),
    "no_dropout": ({"dropout": 0.0}, "no dropout"),
    "no_weight_decay": ({"weight_decay": 0.0}, "no L2 penalty"),
    "weight_decay_1e-5": ({"weight_decay": 1e-5}, "L2 penalty 1e-5 instead of 1e-4"),
    "weight_decay_1e-6": ({"weight_decay": 1e-6}, "L2 penalty 1e-6 instead of 1e-4"),
    "lr_0.01": ({"learning_rate": 0.01}, "SGD learning rate 0.01 instead of 0.03"),
    "lr_0.06": ({"learning_rate": 0.06}, "SGD learning rate 0.06 instead of 0.03"),
    "adam": (_ADAM,
             "Adam at 1e-3 instead of SGD with momentum at 0.03"),
    "adam_lr_3e-3": ({**_ADAM, "learning_rate": 3e-3}, "Adam at 3e-3"),
    "adam_lr_3e-4": ({**_ADAM, "learning_rate": 3e-4}, "Adam at 3e-4"),
    "adam_no_box": ({**_ADAM, **NO_BOX_PERTURBATION},
                    "Adam at 1e-3 and no face-box perturbation"),
    "adam_box_low": ({**_ADAM, **CENTRED_RANGES_CUHK5.as_fields()},
                     "Adam at 1e-3, box range widened to boxes smaller and lower than "
                     "the stored one (side 0.85-1.57, centre y -0.14..+0.10)"),
    "adam_decay_100": ({**_ADAM, "lr_decay_steps": 100},
                       "Adam at 1e-3, x0.9 every 100 steps (the paper's decay)"),
    "adam_steps_4500": ({**_ADAM, "steps_per_stage": 4500},
                        "Adam at 1e-3, 4500 steps (3 times the budget)"),
    "decay_1000": ({"lr_decay_steps": 1000}, "learning rate x0.9 every 1000 steps"),
    "batch_128": ({"batch_size": 128}, "batch 128 instead of 64 (twice the faces)"),
    "regions_0.7": ({"stage1_regions": ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.7),
                                        (0.0, 0.3, 1.0, 1.0))},
                    "EN1 / NM1 on the upper / lower 70 % of the box (not 80 %)"),
    "margin_0.2": ({"margin": 0.2}, "crop margin 0.2 of the box (not 0.1)"),
}
"""The variants: config fields changed from the recipe, and what the change is."""


def variant_config(name: str, *, preset: str = "quick", steps: int | None = None,
                   seed: int = 0):
    """The stage-1 ``CCNNConfig`` of a variant of :data:`VARIANTS`.

    Raises:
        ValueError: an unknown variant (naming the known ones).
    """
    from ccnn_tf.config import CCNNConfig

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    changes = {**RECIPE, **({} if steps is None else {"steps_per_stage": steps}),
               **VARIANTS[name][0], "num_stages": 1, "seed": seed}
    return CCNNConfig.preset(preset, **changes)


def stage1_errors(results: Mapping[str, Any]) -> dict[str, Any]:
    """Mean and per-point stage-1 errors (both normalisers) of ``evaluate_cascade``
    results."""
    return {kind: {"mean": float(results["outputs"]["stage_1"][kind]["mean"]),
                   "per_point": [float(v) for v in
                                 results["outputs"]["stage_1"][kind]["per_point"]]}
            for kind in results["kinds"]}


def run(data: str, output: str, *, variants: Sequence[str] = tuple(VARIANTS),
        seeds: Sequence[int] = (0,), steps: int | None = 1500, preset: str = "quick",
        train_split: str = "tune_train", eval_split: str = "tune_val",
        verbose: bool = True) -> dict[str, Any]:
    """Trains (or reuses) every variant's stage 1 for every seed and tabulates them.

    Args:
        data: TFRecord folder with ``train_split`` and ``eval_split``.
        output: results folder (runs in ``output/runs``).
        variants: names of :data:`VARIANTS`; ``"recipe"`` is added first if missing.
        seeds: seeds of the initial weights, dropout, shake and input pipeline.
        steps: stage-1 training steps (``None``: the preset's); a variant that sets
            ``steps_per_stage`` itself (``adam_steps_4500``) keeps its own.
        preset: the base preset.
        train_split, eval_split: the tuning splits.
        verbose: training progress.

    Returns:
        The results written to ``output/ccnn_stage1.json``.
    """
    from ccnn_tf import training
    from common import atomic

    names = ["recipe", *[v for v in variants if v != "recipe"]]
    for name in names:
        variant_config(name)  # unknown names fail before any training
    rows: dict[str, Any] = {}
    for name in names:
        per_seed = {}
        for seed in seeds:
            config = variant_config(name, preset=preset, steps=steps, seed=seed)
            run_dir = os.path.join(output, "runs", f"{name}-s{seed}")
            if verbose:
                print(f"=== {name}, seed {seed} -> {run_dir}", flush=True)
            summary = training.train_ccnn(config, 1, data=data, run_dir=run_dir,
                                          train_split=train_split, val_split=eval_split,
                                          export=False, verbose=verbose)
            per_seed[str(seed)] = stage1_errors(summary.evaluation)
        kinds = next(iter(per_seed.values()))
        rows[name] = {"changes": to_lists(VARIANTS[name][0]),
                      "description": VARIANTS[name][1], "seeds": per_seed,
                      "mean": {kind: float(sum(s[kind]["mean"] for s in per_seed.values())
                                           / len(per_seed)) for kind in kinds}}
    results = {"data": os.path.abspath(data), "train_split": train_split,
               "eval_split": eval_split, "steps": steps, "preset": preset,
               "recipe": to_lists(RECIPE), "seeds": list(seeds), "variants": rows}
    os.makedirs(output, exist_ok=True)
    atomic.write_text(os.path.join(output, "ccnn_stage1.json"),
                      json.dumps(results, indent=2))
    markdown = markdown_table(results)
    atomic.write_text(os.path.join(output, "ccnn_stage1.md"), markdown)
    atomic.write_figure(plot, os.path.join(output, "ccnn_stage1.png"), results)
    if verbose:
        print(markdown, flush=True)
    return results


def markdown_table(results: Mapping[str, Any]) -> str:
    """The variants' stage-1 errors (% of the face-box width), per seed and mean."""
    seeds = [str(s) for s in results["seeds"]]
    base = results["variants"]["recipe"]["mean"]["box_width"]
    lines = [f"Stage 1 alone, {results['steps']} steps (unless the change says "
             f"otherwise), trained on "
             f"`{results['train_split']}` and scored on `{results['eval_split']}` of "
             f"`{results['data']}`; error / face-box width (%).", "",
             "| variant | change | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | vs recipe | inter-ocular (%) |",
             "|---|---|" + "---:|" * (len(seeds) + 3)]
    for name, row in results["variants"].items():
        cells = [f"{100 * row['seeds'][s]['box_width']['mean']:.2f}" for s in seeds]
        mean = row["mean"]["box_width"]
        lines.append(f"| {name} | {row['description']} | " + " | ".join(cells)
                     + f" | {100 * mean:.2f} | {100 * (mean - base):+.2f} | "
                     f"{100 * row['mean']['inter_ocular']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: str) -> None:
    """Bars of each variant's mean stage-1 error, the recipe's as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    means = [100 * results["variants"][n]["mean"]["box_width"] for n in names]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(names)), 4))
    axis.bar(range(len(names)), means, color="tab:blue")
    axis.axhline(means[0], color="tab:red", linestyle="--", label="recipe")
    axis.set_xticks(range(len(names)), names, rotation=40, ha="right")
    axis.set_ylabel("stage-1 error (% of the face-box width)")
    axis.set_title(f"CCNN stage 1 on {results['eval_split']}, mean of "
                   f"{len(results['seeds'])} seed(s)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str]) -> None:
    """Entry point of ``python -m experiments.ccnn_stage1``."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        seeds = [int(s) for s in values.seeds]
        for name in values.variants:
            variant_config(name)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    run(values.data, values.output, variants=values.variants, seeds=seeds,
        steps=values.steps, preset=values.preset, train_split=values.train_split,
        eval_split=values.eval_split)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("data", None, "TFRecord folder of 5-point faces with the tuning "
                        "splits (common.prepare --tune_fraction).", required=True)
    flags.DEFINE_string("output", os.path.join("results", "ccnn_stage1"),
                        "Results folder (the runs are cached in OUTPUT/runs).")
    flags.DEFINE_list("variants", list(VARIANTS), "Variants to run (the recipe is always "
                      f"run): {', '.join(VARIANTS)}.")
    flags.DEFINE_list("seeds", ["0"], "Seeds; every variant is trained once per seed.")
    flags.DEFINE_integer("steps", 1500, "Stage-1 training steps.", lower_bound=1)
    flags.DEFINE_string("preset", "quick", "Base preset (ccnn_tf.config.PRESETS).")
    flags.DEFINE_string("train_split", "tune_train", "Split to train on.")
    flags.DEFINE_string("eval_split", "tune_val", "Split to score (never val).")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
