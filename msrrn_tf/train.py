"""Trains MSRRN: ``python -m msrrn_tf.train`` (thin entry point over
``msrrn_tf.training.train_msrrn``).

With no flags it trains the ``quick`` preset on the embedded synthetic 68-point faces
(generated once into ``$FACE_ALIGN_CACHE`` or ``~/.cache/face_align_tf``), evaluates
the stage ablation of Table 2 on the synthetic val split, and exports a SavedModel,
in well under 15 minutes on two CPU cores::

    python -m msrrn_tf.train                                  # quick, synthetic data
    python -m msrrn_tf.train --preset=paper --data=/data/300w --val_split=full \\
        --run_dir=runs/msrrn-300w --stages=1,2                # the paper's setting
    python -m msrrn_tf.train --run_dir=runs/msrrn-300w ...    # same command: resumes

With ``--stages=1,2`` it also trains T = 1 and T = 2 models (same schedule, each in
``<run_dir>/stages_<T>``) and writes the true ablation of Table 2 to
``<run_dir>/eval/msrrn_eval.md``; every run writes the ablation over the stages of
its own model to ``<run_dir>/eval/<val_split>.md``.

The run directory is printed first. Rerunning with the same ``--run_dir`` resumes
from its latest checkpoint; its saved ``config.json`` is then the base config (flags
given explicitly still override it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS

_CONFIG_FLAGS = {"steps": "iterations", "batch_size": "batch_size",
                 "learning_rate": "learning_rate"}


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    from common.training import STRATEGY_NAMES
    from msrrn_tf.config import MSRRNConfig

    flags.DEFINE_string(
        "data", None,
        "TFRecord folder written by `python -m common.prepare` (e.g. 300-W: splits "
        "train, common, challenging and the alias full), or several, comma-separated, "
        "each optionally with a sampling weight: data/ytf68,data/w300 (one training "
        "set) or data/ytf68:0.7,data/w300v:0.3 (training faces drawn 70/30 whatever "
        "the sizes). All must hold the same landmark scheme; --val_split is scored on "
        "every folder that has it and on their union. Default: the embedded "
        "synthetic 68-point faces (common.synthetic), generated once into the cache.")
    flags.DEFINE_string("train_split", "train", "Split to train on.")
    flags.DEFINE_string("val_split", "val",
                        "Split for the validation NME and the final Table 2 evaluation "
                        "(300-W: common, challenging or full); empty for none.")
    flags.DEFINE_string(
        "run_dir", None,
        "Run directory (checkpoints, TensorBoard, config.json, model.keras, eval/, "
        "export/). Default: runs/msrrn-<timestamp>. Rerun with the same --run_dir to "
        "resume from its latest checkpoint.")
    flags.DEFINE_enum(
        "preset", "quick", list(MSRRNConfig.preset_names()),
        "quick: reduced widths and a short schedule on 2,000 synthetic faces (the whole "
        "job finishes in under 15 minutes on 2 CPU cores), trained with the paper's "
        "augmentation plus a face-box perturbation over the measured detector variance "
        "(common.box_perturbation; the box_* config fields, [0, 0] / [1, 1] switch it "
        "off); paper: MSRRNConfig defaults (10,000 iterations of batch 64, the paper's "
        "setting, and the paper's augmentation only: rotation +-15 deg, flips, pixel "
        "noise sigma 0.5, no box perturbation); small, tiny: narrow test-size models "
        "(msrrn_tf.config.PRESETS, where every preset is defined).")
    flags.DEFINE_string(
        "config_json", None,
        "MSRRNConfig overrides as a JSON object or the path of a JSON file, e.g. "
        "'{\"hidden_size\": 64, \"patch_size\": 16}' or runs/x/config.json (its "
        "config.values are used). Applied after --preset, before --steps/--batch_size/"
        "--learning_rate.")
    flags.DEFINE_integer("steps", None, "Total training iterations (default: the preset's "
                         "MSRRNConfig.iterations).", lower_bound=0)
    flags.DEFINE_integer("batch_size", None, "Global batch size (default: the preset's).",
                         lower_bound=1)
    flags.DEFINE_float("learning_rate", None,
                       "Initial SGD learning rate eta (default: the preset's).")
    flags.DEFINE_enum("schedule", "cosine", ["cosine", "constant"],
                      "Learning-rate schedule: cosine decay to 1% over the run, or "
                      "constant (the paper gives none).")
    flags.DEFINE_list(
        "stages", [],
        "Stage ablation (Table 2): also train models with these numbers of stages T, "
        "each in <run_dir>/stages_<T>, e.g. --stages=1,2, and write the ablation over "
        "the separately trained models to <run_dir>/eval/msrrn_eval.{json,md}. "
        "(Re-)evaluate them with `python -m msrrn_tf.evaluate --model=<run_dir> "
        "--ablation_models=<run_dir>/stages_1,<run_dir>/stages_2`.")
    flags.DEFINE_integer("checkpoint_every", 250, "Save a checkpoint every this many steps "
                         "(a killed run resumes from the last one).", lower_bound=1)
    flags.DEFINE_integer("eval_every", 500, "Compute the validation NME every this many "
                         "steps (and at the end); 0 for only at the end.", lower_bound=0)
    flags.DEFINE_integer("log_every", 50, "Log the loss to TensorBoard every this many "
                         "steps.", lower_bound=1)
    flags.DEFINE_integer("val_limit", None, "Use only the first this many validation "
                         "faces.", lower_bound=1)
    flags.DEFINE_enum(
        "strategy", "default", list(STRATEGY_NAMES),
        "Distribution: default (one device); mirrored (all GPUs of this machine); "
        "multi_worker (a GPU cluster: set TF_CONFIG on every machine, e.g. "
        "'{\"cluster\": {\"worker\": [\"h1:12345\", \"h2:12345\"]}, \"task\": "
        "{\"type\": \"worker\", \"index\": 0}}', put --run_dir and --data on a shared "
        "file system and run the same command on each); tpu (Cloud TPU VM; --run_dir "
        "and --data on GCS). --batch_size is the global batch.")
    flags.DEFINE_boolean("mixed_precision", False,
                         "Train in mixed_float16 (GPU/TPU; landmark outputs stay float32).")
    flags.DEFINE_boolean("jit_compile", False, "XLA-compile the training step.")
    flags.DEFINE_boolean("export", True, "Export a SavedModel to <run_dir>/export and "
                         "check its parity in a fresh process.")
    flags.DEFINE_integer("seed", 0, "Seed of the data order, augmentation and weight "
                         "initialisation: the same command trains the same model; another "
                         "value gives an independent training.")
    flags.DEFINE_string(
        "init_from", None,
        "Start from another run's weights (its run directory, checkpoints folder or a "
        "checkpoint prefix), e.g. a run pretrained on the synthetic faces, then train "
        "on --data: same architecture required (scales, patch size, widths, "
        "landmarks; a clear error otherwise); the mean shape and bias offsets come "
        "with the weights, the optimiser and step start afresh. Ignored when "
        "--run_dir already has a checkpoint (it resumes).")
    flags.DEFINE_string("cache_dir", None, "Cache folder for the synthetic data (default: "
                        "$FACE_ALIGN_CACHE or ~/.cache/face_align_tf).")


def _saved_config(run_dir: str):
    """The MSRRNConfig recorded in ``run_dir/config.json``, or ``None``."""
    from common.run_files import read_run_record
    from msrrn_tf.config import MSRRNConfig

    record = read_run_record(run_dir, legacy=False)
    return None if record is None else MSRRNConfig.from_dict(record.values)


def _resolve_config(run_dir: str):
    """The preset (or a resumed run's saved config), then --config_json, then the
    explicitly given --steps / --batch_size / --learning_rate."""
    from common.config import config_json_flag
    from msrrn_tf.config import MSRRNConfig

    config = _saved_config(run_dir)
    if config is not None:
        print(f"resuming: base config from {os.path.join(run_dir, 'config.json')}",
              flush=True)
        if FLAGS["preset"].present:
            print(f"note: --preset={FLAGS.preset} is ignored when resuming", flush=True)
    else:
        config = MSRRNConfig.preset(FLAGS.preset)
    overrides = config_json_flag(FLAGS.config_json)
    if overrides:
        config = config.replace(**overrides)
    explicit = {field: getattr(FLAGS, flag) for flag, field in _CONFIG_FLAGS.items()
                if getattr(FLAGS, flag) is not None}
    return config.replace(**explicit)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every checkpoint save at INFO
        logging.set_verbosity(logging.WARNING)
    from msrrn_tf import training

    run_dir = FLAGS.run_dir or training.default_run_dir()
    print(f"run directory: {os.path.abspath(run_dir)}", flush=True)
    try:
        stages = sorted({int(s) for s in FLAGS.stages})
    except ValueError as error:
        raise app.UsageError(f"--stages must be a comma list of integers: {error}") from error
    if any(t < 1 for t in stages):
        raise app.UsageError("--stages values must be >= 1")
    config = _resolve_config(run_dir)
    from common.training import select_strategy

    # First TensorFlow op of the program (multi_worker needs that), shared by all runs.
    strategy = select_strategy(FLAGS.strategy)

    data = FLAGS.data
    if data is None:
        from common.synthetic import ensure_synthetic_dataset

        splits = training.synthetic_splits(FLAGS.preset)
        print(f"data: synthetic 68-point faces {splits} (generated once, then cached)",
              flush=True)
        data = ensure_synthetic_dataset(config.num_landmarks, splits,
                                        cache_dir=FLAGS.cache_dir, progress=True)
    from common.multidata import DataSpec, check_landmark_scheme

    try:
        data = DataSpec.parse(data)
        check_landmark_scheme(data, config.num_landmarks)
    except (ValueError, FileNotFoundError) as error:  # DataError is a ValueError
        raise SystemExit(f"error: --data: {error}") from None
    print(f"data: {data}", flush=True)

    common_args = {
        "data": data, "train_split": FLAGS.train_split, "val_split": FLAGS.val_split or None,
        "checkpoint_every": FLAGS.checkpoint_every, "eval_every": FLAGS.eval_every or None,
        "log_every": FLAGS.log_every, "strategy": strategy,
        "mixed_precision": FLAGS.mixed_precision, "jit_compile": FLAGS.jit_compile,
        "schedule": FLAGS.schedule, "val_limit": FLAGS.val_limit, "seed": FLAGS.seed}
    from common.training import RunDirLocked

    if FLAGS.init_from:  # before any training: a source that does not fit stops here
        try:
            training.check_init_from(config, FLAGS.init_from)
        except (ValueError, FileNotFoundError) as error:
            raise SystemExit(f"error: {error}") from None
        print(f"init from: {FLAGS.init_from}", flush=True)

    try:
        result = training.train_msrrn(config, run_dir=run_dir, export=FLAGS.export,
                                      init_from=FLAGS.init_from, **common_args)
    except RunDirLocked as error:  # a second training on the same --run_dir
        raise SystemExit(f"error: {error}") from None
    print(f"trained {result.steps_done} steps (from step {result.initial_step}) in "
          f"{result.seconds:.0f} s with evaluation and export ({result.speed()}); "
          f"model: {os.path.join(run_dir, 'model.keras')}", flush=True)
    ablation = {}
    for num_stages in stages:
        if num_stages == config.num_stages:
            continue
        sub_dir = training.ablation_run_dir(run_dir, num_stages)
        print(f"stage ablation: training T={num_stages} in {sub_dir}", flush=True)
        sub = training.train_msrrn(config.replace(num_stages=num_stages), run_dir=sub_dir,
                                   export=False, **common_args)
        print(f"T={num_stages}: {sub.steps_done} steps in {sub.seconds:.0f} s "
              f"({sub.speed()})", flush=True)
        ablation[num_stages] = sub.model
    if ablation and FLAGS.val_split:
        from msrrn_tf.evaluate import evaluate_msrrn

        evaluate_msrrn(result.model, data, [FLAGS.val_split], margin=config.margin,
                       out_dir=os.path.join(run_dir, "eval"), ablation_models=ablation,
                       limit=FLAGS.val_limit)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
