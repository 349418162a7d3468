"""Trains the CCNN cascade stage by stage (the paper's section 3.3).

Usage::

    python -m ccnn_tf.train                       # quick preset, synthetic faces
    python -m ccnn_tf.train --stage=1             # one stage (2 and 3 follow later)
    python -m ccnn_tf.train --data=/tmp/data/sun5 --preset=paper --run_dir=runs/sun5
    python -m ccnn_tf.train --nowindows --run_dir=runs/windows-   # Experiment 2
    python -m ccnn_tf.train --noshake --run_dir=runs/shake-       # Experiment 3

Stage k trains in RUN_DIR/stage{k} with stages < k loaded from RUN_DIR/stage{k-1} and
frozen; rerunning a command resumes from the latest checkpoint. After training the
cascade is evaluated on the validation split (RUN_DIR/eval) and, once all stages are
trained, exported (RUN_DIR/export). See ``ccnn_tf.training`` for the details.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags
from absl import logging as absl_logging

from ccnn_tf.config import CCNNConfig
from common.config import config_json_flag
from common.training import STRATEGY_NAMES

_STAGE = flags.DEFINE_enum("stage", "all", ["1", "2", "3", "all"],
                           "Stage to train, or all three in series.")
_DATA = flags.DEFINE_string(
    "data", None, "TFRecord folder of 5-point faces (common.prepare output, e.g. the "
    "CUHK/MTFL lists), or several, comma-separated, each optionally with a sampling "
    "weight (data/a:0.7,data/b:0.3: training faces drawn 70/30 whatever the sizes); all "
    "with the same landmarks; --val_split is scored per folder and on their union. "
    "Default: the embedded synthetic 5-point faces.")
_TRAIN_SPLIT = flags.DEFINE_string(
    "train_split", "train", "Split of --data to train on (e.g. tune_train of a "
    "`common.prepare --tune_fraction` folder).")
_VAL_SPLIT = flags.DEFINE_string("val_split", "val", "Split for the validation error "
                                 "during training and the final evaluation.")
_RUN_DIR = flags.DEFINE_string("run_dir", "runs/ccnn", "Run directory (stage1/, stage2/, "
                               "stage3/, eval/, export/).")
_PRESET = flags.DEFINE_enum(
    "preset", "quick", list(CCNNConfig.preset_names()),
    "quick: 500 steps per stage with a faster SGD (minutes on a CPU), the paper's "
    "augmentation plus a face-box perturbation over the measured detector variance "
    "(common.box_perturbation; the box_* config fields); paper: the paper's SGD "
    "schedule, 5000 steps per stage and the paper's augmentation only (rotations "
    "0/-15/+12 degrees, flips; no box perturbation); tiny: very small networks, for "
    "smoke tests only (ccnn_tf.config.PRESETS defines every preset).")
_CONFIG_JSON = flags.DEFINE_string(
    "config_json", None,
    "CCNNConfig overrides as a JSON object or the path of a JSON file, e.g. "
    "'{\"lr_decay_steps\": 300, \"box_scale_range\": [1, 1]}' or runs/x/config.json "
    "(its config.values are used). Applied after --preset, before --steps/--batch_size/"
    "--shake/--windows/--seed.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per stage (default: the "
                              "preset's).", lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size (default: the "
                                   "preset's, 64).", lower_bound=1)
_SHAKE = flags.DEFINE_bool("shake", True, "Shake the windows during training "
                           "(--noshake: the shake- arm of Experiment 3).")
_WINDOWS = flags.DEFINE_bool("windows", True, "Stage 1 positions relative to its regions "
                             "(--nowindows: absolute positioning, the windows- arm of "
                             "Experiment 2).")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the initial weights, dropout, shake and "
                             "input pipeline (default: the preset's; quick: 0, so the same "
                             "command trains the same cascade; paper: random).")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", list(STRATEGY_NAMES),
    "Distribution: default (one device); mirrored (synchronous data parallelism over all "
    "visible GPUs of this machine, as the paper's two GPUs); multi_worker (several "
    "machines, TF_CONFIG); tpu.")
_MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision", False, "Compute in float16 with float32 variables and "
    "outputs (mixed_float16; for GPUs; the export is float32).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 250, "Checkpoint every this "
                                         "many steps (a rerun resumes from the latest).",
                                         lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Validate every this many steps "
                                   "(always at the end of a stage).", lower_bound=1)
_EVALUATE = flags.DEFINE_bool("evaluate", True, "Evaluate on the validation split after "
                              "training.")
_EXPORT = flags.DEFINE_bool("export", True, "Export SavedModel + TFLite once all stages "
                            "are trained.")


def main(argv: Sequence[str]) -> None:
    """Entry point of ``python -m ccnn_tf.train``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # TensorFlow's INFO lines hide the tables
        absl_logging.set_verbosity(absl_logging.WARNING)
    from ccnn_tf import training  # TensorFlow is imported only when running

    config = training.build_config(_PRESET.value, steps=_STEPS.value,
                                   batch_size=_BATCH_SIZE.value, shake=_SHAKE.value,
                                   windows=_WINDOWS.value, seed=_SEED.value,
                                   overrides=config_json_flag(_CONFIG_JSON.value))
    data = _DATA.value or training.synthetic_data(_PRESET.value)
    from common.records import DataError
    from common.training import RunDirLocked

    try:
        training.train_ccnn(
            config, _STAGE.value, data=data, run_dir=_RUN_DIR.value,
            strategy=_STRATEGY.value, mixed_precision=_MIXED_PRECISION.value or None,
            checkpoint_every=_CHECKPOINT_EVERY.value, eval_every=_EVAL_EVERY.value,
            evaluate=_EVALUATE.value, export=_EXPORT.value, train_split=_TRAIN_SPLIT.value,
            val_split=_VAL_SPLIT.value)
    except RunDirLocked as error:  # a second training on the same --run_dir
        raise SystemExit(f"error: {error}") from None
    except DataError as error:  # e.g. folders of two landmark schemes
        raise SystemExit(f"error: --data: {error}") from None


if __name__ == "__main__":
    app.run(main)
