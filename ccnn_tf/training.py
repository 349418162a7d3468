"""Stage-by-stage training of the CCNN cascade (the paper's section 3.3 and 4.1).

"Parallel within groups and serial between groups" (section 3.3):

* ``train_ccnn_stage(config, k, ...)`` trains the group of stage ``k`` as one model: a
  ``k``-stage cascade (``ccnn_tf.model.build_ccnn``) whose stages ``1 .. k-1`` carry the
  weights of the previous stage's run and are frozen. One step updates all networks
  of the group at once; each network has its own loss (below), and the groups'
  parameters are disjoint, so this is the same as training the networks side by side.
* ``train_ccnn(config, stages="all", ...)`` runs the stages in series, each in its own
  run directory under ``run_dir`` (checkpoints, automatic resume, TensorBoard and
  progress come from ``common.training.train_model``), then evaluates the cascade on
  the validation split and, once every stage is trained, assembles and exports it.

Where the windows of stage ``k`` come from. The frozen earlier stages are part of the
training model and run in inference mode (no dropout, no shake) on every training
batch, so the anchors of stage ``k`` are the previous stages' predictions *on the very
augmented (rotated, flipped) face the batch holds*. A cache of predictions keyed by the
training data would have to enumerate every augmentation draw to stay correct; running
the frozen stages in the graph costs one forward pass of small networks per step and
is exact by construction. The anchors are constants for the loss (``CCNNRefineStage``
stops their gradient), and only stage ``k``'s windows are shaken (section 3.1.2).

Loss. Each network regresses its points relative to its own window (formula 9), so
the error of an estimate is divided by its window's width and height (a constant per
network: the shake translates a window without resizing it), squared, and averaged
over that network's outputs (the MSE of formula 3); the group's loss is the sum of its
networks' losses, plus the L2 penalty of formula 6 (``weight_decay``, as kernel
regularizers of the trainable networks only). With ``stage1_windows=False``
("windows-", Experiment 2) the stage-1 window is the whole input, i.e. the error is
measured in absolute crop coordinates.

Optimiser: SGD with learning rate 5e-3, multiplied by 0.9 every 100 steps (section
3.3, ``common.training.step_decay``). Augmentation (section 4.1): every training face
is rotated by one of ``config.rotation_angles_deg`` (0, -15 or +12 degrees about the
crop centre) and flipped with probability 0.5 (left/right landmarks swapped), i.e. one
of the paper's six variants per face, drawn afresh every time the face is used.

Layout of a run directory::

    run_dir/
      config.json          the CCNNConfig and the data the run trains on
      stage1/ stage2/ stage3/   one common.training run each (config.json,
                           checkpoints/, tensorboard/, history.json, model.keras)
      model.keras          the assembled cascade (all stages, nothing frozen)
      eval/                evaluation on the validation split (ccnn_tf.evaluate)
      export/              saved_model/1/, *.tflite, export_report.json (ccnn_tf.export)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ccnn_tf.config import CCNNConfig
from ccnn_tf.model import (
    CCNNCascade,
    CCNNStage1,
    build_ccnn,
)
from ccnn_tf.runs import (  # the run layout, re-exported: callers know it from here
    MODEL_FILE,  # noqa: F401
    RUN_FILE,
    STAGE_NAMES,
    _previous_fingerprint_recorded,
    assemble_cascade,
    completed_stages,  # noqa: F401
    consistent_stages,
    latest_cascade,  # noqa: F401
    load_stage_model,
    read_run,
    run_config,  # noqa: F401
    stage_dir,
    weights_fingerprint,
)
from common import multidata, training
from common import task as task_lib
from common.evaluation import nme_val_metric, save_architecture
from common.multidata import DataSpec
from common.pipeline import AugmentConfig, make_dataset
from common.schemes import scheme_for
from common.synthetic import ensure_synthetic_dataset

logger = logging.getLogger(__name__)

def build_config(preset: str = "quick", *, steps: int | None = None,
                 batch_size: int | None = None, shake: bool = True, windows: bool = True,
                 seed: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> CCNNConfig:
    """A preset with the command-line overrides applied (``ccnn_tf.train``).

    Args:
        preset: a name of ``CCNNConfig.PRESETS`` (``"paper"``, ``"quick"``, ``"tiny"``).
        overrides: config fields changed before the arguments below
            (``--config_json``; flat names or groups).
        steps: training steps per stage.
        batch_size: global batch size.
        shake: ``False`` turns the shake off in every stage ("shake-", Experiment 3).
        windows: ``False`` makes stage 1 position absolutely ("windows-",
            Experiment 2).
        seed: seed of the shake and of the input pipeline.

    Returns:
        The configuration.
    """
    config = CCNNConfig.preset(preset)
    if overrides:
        config = config.replace(**overrides)
    changes: dict[str, Any] = {} if windows else {"stage1_windows": False}
    if steps is not None:
        changes["steps_per_stage"] = int(steps)
    if batch_size is not None:
        changes["batch_size"] = int(batch_size)
    if not shake:
        changes.update(stage1_shake_stddev=0.0, stage2_shake_stddev=0.0,
                       stage3_shake_stddev=0.0)
    if seed is not None:
        changes["seed"] = int(seed)
    return config.replace(**changes)


QUICK_SYNTHETIC_SPLITS = {"train": 3000, "val": 300}
"""Synthetic faces per split of the quick preset (``common.synthetic``)."""

PAPER_SYNTHETIC_SPLITS = {"train": 10000, "val": 1000}
"""Synthetic faces per split of the paper preset (10,000 training faces, section 4.1)."""


def synthetic_data(preset: str = "quick", cache_dir: str | None = None,
                   splits: Mapping[str, int] | None = None, progress: bool = True) -> str:
    """The embedded synthetic 5-point faces for a preset (generated once, cached).

    Args:
        preset: ``"quick"`` (:data:`QUICK_SYNTHETIC_SPLITS`) or ``"paper"``
            (:data:`PAPER_SYNTHETIC_SPLITS`).
        cache_dir: cache root (``common.synthetic.ensure_synthetic_dataset``).
        splits: faces per split, overriding the preset's.
        progress: print generation progress.

    Returns:
        The data folder.
    """
    if splits is None:
        splits = PAPER_SYNTHETIC_SPLITS if preset == "paper" else QUICK_SYNTHETIC_SPLITS
    return ensure_synthetic_dataset(num_points=5, splits=dict(splits), seed=0,
                                    cache_dir=cache_dir, progress=progress)


def augment_config(config: CCNNConfig) -> AugmentConfig:
    """The training augmentation of section 4.1 as a ``common.pipeline.AugmentConfig``.

    One of the ``rotation_angles_deg`` (0, -15, +12) uniformly, and a horizontal flip
    with probability 0.5 when ``config.flip``: the paper's six variants of each face;
    and the face-box perturbation of the ``box_*`` fields (off in ``CCNNConfig()``,
    the paper's setting; the ``quick`` preset's detector variance).
    """
    return AugmentConfig(rotation_choices_deg=tuple(config.rotation_angles_deg),
                         flip_prob=0.5 if config.flip else 0.0,
                         **config.augment.box_ranges.as_fields())


def build_optimizer(config: CCNNConfig) -> keras.optimizers.Optimizer:
    """SGD (or ``config.optimizer="adam"``: Adam) with the staircase decay of section
    3.3 (``config.learning_rate`` etc.)."""
    schedule = training.step_decay(config.learning_rate, config.lr_decay_rate,
                                   config.lr_decay_steps)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkLayout:
    """What every estimate of a stage's ``"stage_k_networks"`` output is.

    Attributes:
        point_indices: ``[J]`` landmark index of each estimate.
        window_sizes: float32 ``[J, 2]`` (width, height) of the window the estimate's
            network sees, in normalised crop coordinates.
        weights: float32 ``[J]``: ``1 / (2 * points of the estimate's network)``, so
            that summing ``weights * squared error`` over the estimates gives the sum
            over networks of each network's MSE.
    """

    point_indices: tuple[int, ...]
    window_sizes: np.ndarray
    weights: np.ndarray


def network_layout(stage: Any) -> NetworkLayout:
    """The layout of a stage layer's per-network estimates.

    Window sizes come from the layer's own ``windows`` method (unshaken), so they
    follow its geometry exactly.

    Args:
        stage: a ``CCNNStage1`` or ``CCNNRefineStage`` layer.

    Returns:
        The :class:`NetworkLayout`.
    """
    if isinstance(stage, CCNNStage1):
        boxes = stage.windows(1, training=False)[0].numpy()  # [R, 4]
        counts = [len(indices) for indices in stage.point_indices]
        boxes = np.repeat(boxes, counts, axis=0)
        weights = np.repeat([1.0 / (2 * c) for c in counts], counts)
    else:
        anchors = tf.zeros([1, stage.num_points, 2])
        boxes = stage.windows(anchors, training=False)[0].numpy()  # [K, 4]
        weights = np.full(len(boxes), 0.5)
    sizes = boxes[:, 2:] - boxes[:, :2]
    return NetworkLayout(point_indices=tuple(int(i) for i in stage.estimate_point_indices),
                         window_sizes=sizes.astype(np.float32),
                         weights=weights.astype(np.float32))


def window_relative_loss(layout: NetworkLayout) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The per-example loss of one stage group (module docstring, formulas 3 and 9).

    Args:
        layout: the stage's :class:`NetworkLayout`.

    Returns:
        ``loss(landmarks [B, L, 2], estimates [B, J, 2]) -> [B]``: the sum over the
        group's networks of the mean squared window-relative error of each network.
    """
    indices = list(layout.point_indices)
    sizes = tf.constant(layout.window_sizes)
    weights = tf.constant(layout.weights)

    def loss(landmarks: tf.Tensor, estimates: tf.Tensor) -> tf.Tensor:
        targets = tf.gather(landmarks, indices, axis=1)
        relative = (tf.cast(estimates, tf.float32) - targets) / sizes
        return tf.reduce_sum(weights * tf.reduce_sum(tf.square(relative), axis=-1), axis=-1)

    return loss


def box_width_val_metric(output_key: str = "landmarks"
                         ) -> Callable[[keras.Model, tf.data.Dataset], dict[str, float]]:
    """Validation metrics for ``train_model``: NME by face-box width and inter-ocular.

    The face-box-width NME (Sun et al.'s normaliser, the CCNN paper's test error) needs
    the face boxes, so the validation dataset must yield ``(inputs, targets, meta)``
    (``make_dataset(..., with_meta=True)``): a normalised error times the crop side is
    pixels, divided by the box width. The inter-ocular NME comes from
    ``common.evaluation.nme_val_metric``.

    Args:
        output_key: the model output to score.

    Returns:
        ``metric(model, dataset) -> {"nme_box_width": ..., "nme_inter_ocular": ...}``.
    """
    inter_ocular = nme_val_metric("inter_ocular", scheme_for(5), output_key=output_key)
    cache: dict[int, Callable] = {}

    def metric(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, float]:
        if id(model) not in cache:
            cache.clear()
            # Traced once per model, for any batch size (the short last batch too).
            cache[id(model)] = tf.function(
                lambda inputs: tf.cast(model(inputs, training=False)[output_key], tf.float32),
                input_signature=[dataset.element_spec[0]])
        predict = cache[id(model)]
        total, count = 0.0, 0
        for inputs, targets, meta in dataset:
            pred = predict(inputs)
            crop, box = meta["crop_box"], meta["box"]
            distance = tf.norm(pred - targets["landmarks"], axis=-1)  # [B, L] crop units
            pixels = distance * (crop[:, 2:3] - crop[:, 0:1])
            errors = tf.reduce_mean(pixels / (box[:, 2:3] - box[:, 0:1]), axis=1)
            total += float(tf.reduce_sum(errors))
            count += int(errors.shape[0])
        if count == 0:
            raise ValueError("the validation dataset is empty")
        return {"nme_box_width": total / count, **inter_ocular(model, dataset)}

    return metric


# --------------------------------------------------------------------------------------
# Run bookkeeping
# --------------------------------------------------------------------------------------


def _record_run(run_dir: str, config: CCNNConfig, data: DataSpec) -> None:
    """Writes the run's ``config.json``; refuses a config whose cascade (the weights'
    fields, ``structural_dict``) differs from the recorded one."""
    previous = read_run(run_dir)
    if previous is not None:
        old = CCNNConfig.from_dict(previous.values).structural_dict()
        changed = sorted(k for k, v in config.structural_dict().items() if old.get(k) != v)
        if changed:
            raise ValueError(
                f"{run_dir} holds a CCNN run with different {', '.join(changed)}; "
                "use another --run_dir for a different cascade (e.g. an ablation)")
    tf.io.gfile.makedirs(run_dir)
    # The layout of every run's config.json (common.run_files.read_run_record):
    # "data.spec" is what --data would be (ccnn_tf.runs.run_data).
    record = {"config": training.resolve_config(config), "data": data.absolute().to_dict()}
    training.atomic_write_text(os.path.join(run_dir, RUN_FILE),
                               json.dumps(record, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def _train_dataset_fn(data: DataSpec, config: CCNNConfig, batch_size: int,
                      shuffle_buffer: int | None, split: str = "train",
                      seed: int | None = None
                      ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The augmented training input as a function of the input context (sharding);
    ``seed`` of the data order, shake and augmentation."""
    augment = augment_config(config)

    def make(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines = context.num_input_pipelines
        return make_dataset(
            data.data, split, sizes=(config.input_size,), num_landmarks=config.num_landmarks,
            margin=config.margin, batch_size=context.get_per_replica_batch_size(batch_size),
            training=True, augment=augment, seed=seed, shuffle_buffer=shuffle_buffer,
            shard=(pipelines, context.input_pipeline_id) if pipelines > 1 else None,
            weights=data.weights)

    return make


def validation_dataset(data: str | DataSpec, config: CCNNConfig, split: str = "val",
                       batch_size: int = 64, limit: int | None = None
                       ) -> tf.data.Dataset | None:
    """The deterministic validation input with metadata, or ``None`` without the split.

    Args:
        data: TFRecord folder, or a data spec (the union of its folders that hold
            ``split``).
        config: the configuration (input size, margin, landmarks).
        split: the split name.
        batch_size: faces per batch.
        limit: keep only the first ``limit`` faces.
    """
    spec = DataSpec.parse(data).with_split(split)
    if spec is None:
        return None
    try:
        dataset = make_dataset(spec.data, split, sizes=(config.input_size,),
                               num_landmarks=config.num_landmarks, margin=config.margin,
                               batch_size=batch_size, training=False, with_meta=True,
                               cache=True)
    except FileNotFoundError:
        return None
    if limit is not None:
        dataset = dataset.unbatch().take(limit).batch(batch_size)
    return dataset


def has_split(data: str | DataSpec, split: str) -> bool:
    """True when ``data`` (a folder, or any folder of a data spec) holds TFRecord shards
    of ``split``."""
    return DataSpec.parse(data).with_split(split) is not None


def train_ccnn_stage(config: CCNNConfig, stage: int, *, data: str | DataSpec, run_dir: str,
                     steps: int | None = None, batch_size: int | None = None,
                     strategy: str | tf.distribute.Strategy = "default",
                     mixed_precision: bool | None = None, checkpoint_every: int = 500,
                     eval_every: int | None = None, log_every: int = 50,
                     val_split: str = "val", val_limit: int | None = 1000,
                     shuffle_buffer: int | None = None, verbose: bool = True,
                     train_split: str = "train") -> training.TrainResult:
    """Trains the networks of one stage with the earlier stages frozen (section 3.3).

    Stage ``k`` is trained in ``run_dir/stage{k}`` as a ``k``-stage cascade whose
    stages ``< k`` are copied from ``run_dir/stage{k-1}/model.keras`` and frozen.
    Rerunning resumes from the stage's latest checkpoint. If the earlier stages were
    retrained after this stage started, the stale run is refused.

    Args:
        config: the configuration (``config.num_stages`` is not used here).
        stage: 1, 2 or 3.
        data: TFRecord folder with ``train_split`` (and ``val_split``) shards.
        run_dir: the CCNN run directory (the stage's run is a sub-directory).
        steps: training steps of this stage; default ``config.steps_per_stage``.
        batch_size: global batch size; default ``config.batch_size``.
        strategy: a ``tf.distribute.Strategy`` or a name for
            ``common.training.select_strategy``.
        mixed_precision: passed to ``train_model`` (``None`` keeps the policy).
        checkpoint_every: checkpoint every this many steps.
        eval_every: validate every this many steps (always at the end).
        log_every: log the loss every this many steps.
        val_split: validation split (skipped when ``data`` has none).
        val_limit: validate on at most this many faces during training.
        shuffle_buffer: records in the shuffle buffer; default: the whole training
            split when it fits in memory (``common.pipeline.shuffle_buffer_size``).
        verbose: show a progress bar.
        train_split: the split (or ``dataset.json`` alias) trained on.

    Returns:
        The ``common.training.TrainResult`` of the stage (its model is the
        ``k``-stage training cascade with per-network outputs).

    Raises:
        FileNotFoundError: the previous stage has not finished.
        ValueError: the run holds a different cascade, or stale stage weights.
    """
    if not 1 <= stage <= len(STAGE_NAMES):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    steps = config.steps_per_stage if steps is None else int(steps)
    batch_size = config.batch_size if batch_size is None else int(batch_size)
    if isinstance(strategy, str):
        # First, before any TensorFlow op: collective ops (multi_worker) must be
        # configured at program start-up.
        strategy = training.select_strategy(strategy)
    data = DataSpec.parse(data)
    multidata.check_landmark_scheme(data, config.num_landmarks)
    _record_run(run_dir, config, data)
    if config.seed is not None:  # initial weights, dropout and augmentation repeatable
        keras.utils.set_random_seed(int(config.seed) + stage)
    directory = stage_dir(run_dir, stage)
    earlier = tuple(range(1, stage))

    previous_weights: dict[int, list[np.ndarray]] = {}
    fingerprint = None
    if earlier:
        previous = load_stage_model(run_dir, stage - 1)
        previous_weights = {k: previous.stage_layer(k).get_weights() for k in earlier}
        fingerprint = weights_fingerprint(previous, earlier)
        recorded = _previous_fingerprint_recorded(directory)
        started = training.checkpoint_step(directory) > 0
        if started and recorded is not None and recorded != fingerprint:
            raise ValueError(
                f"stages {list(earlier)} changed since {directory} started training "
                "from them; delete that directory to retrain stage "
                f"{stage} on the new weights")
        del previous

    layouts: list[NetworkLayout] = []

    def build_model() -> CCNNCascade:
        # Trained (and validated) without the mirrored pass: it only acts at inference.
        model = build_ccnn(config.replace(flip_test=False, confidence_source="pairs"),
                           num_stages=stage, frozen_stages=earlier,
                           network_outputs=True, name="ccnn")
        for k, weights in previous_weights.items():
            model.stage_layer(k).set_weights(weights)
        layouts.append(network_layout(model.stage_layer(stage)))
        save_architecture(model, directory)  # loadable from checkpoints meanwhile
        return model

    def loss(landmarks: tf.Tensor, estimates: tf.Tensor) -> tf.Tensor:
        # Traced after build_model ran, so the layout of the built model is known.
        return window_relative_loss(layouts[-1])(landmarks, estimates)

    # A resumed stage draws batches it has not seen (common.training.resume_seed).
    train_data = _train_dataset_fn(data, config, batch_size, shuffle_buffer, train_split,
                                   seed=training.resume_seed(config.seed, directory))
    val_data = validation_dataset(data, config, val_split, limit=val_limit)
    record = {"ccnn": config.to_dict(), "stage": stage, "data": data.to_dict(),
              "train_split": train_split,
              "batch_size": batch_size, "previous_stages": list(earlier),
              "previous_stages_fingerprint": fingerprint,
              "augmentation": dataclasses.asdict(augment_config(config))}
    result = training.train_model(
        build_model=build_model, build_optimizer=lambda: build_optimizer(config),
        loss={f"stage_{stage}_networks": loss},
        train_dataset=train_data, steps=steps, run_dir=directory, val_dataset=val_data,
        checkpoint_every=checkpoint_every, eval_every=eval_every, log_every=log_every,
        strategy=strategy, config=record,
        val_metric=box_width_val_metric() if val_data is not None else None,
        mixed_precision=mixed_precision, verbose=verbose)
    # The frozen stages must come out exactly as they went in.
    for k, weights in previous_weights.items():
        for got, expected in zip(result.model.stage_layer(k).get_weights(), weights):
            if not np.array_equal(got, expected):
                raise AssertionError(f"frozen stage {k} changed while training stage {stage}")
    return result


@dataclasses.dataclass
class CCNNTrainSummary:
    """What :func:`train_ccnn` did.

    Attributes:
        run_dir: the run directory.
        stage_results: ``{stage: TrainResult}`` of the stages trained now.
        evaluation: the validation results (``ccnn_tf.evaluate.evaluate_cascade``)
            or ``None``.
        report_paths: files of the evaluation report.
        export: the export report (``ccnn_tf.export.export_cascade``) or ``None``.
    """

    run_dir: str
    stage_results: dict[int, training.TrainResult]
    evaluation: dict[str, Any] | None = None
    report_paths: dict[str, str] = dataclasses.field(default_factory=dict)
    export: dict[str, Any] | None = None


def parse_stages(stages: str | int | Sequence[int], num_stages: int) -> tuple[int, ...]:
    """``"all"`` -> ``(1, .., num_stages)``; ``2`` or ``"2"`` -> ``(2,)``."""
    if isinstance(stages, str):
        if stages == "all":
            return tuple(range(1, num_stages + 1))
        stages = int(stages)
    if isinstance(stages, int):
        stages = (stages,)
    stages = tuple(int(s) for s in stages)
    bad = [s for s in stages if not 1 <= s <= num_stages]
    if bad:
        raise ValueError(f"stages {bad} outside 1..{num_stages}")
    return stages


@training.locks_run_dir
def train_ccnn(config: CCNNConfig, stages: str | int | Sequence[int] = "all", *,
               data: str | DataSpec, run_dir: str, steps: int | None = None,
               batch_size: int | None = None,
               strategy: str | tf.distribute.Strategy = "default",
               mixed_precision: bool | None = None, checkpoint_every: int = 500,
               eval_every: int | None = None, log_every: int = 50,
               val_split: str = "val", evaluate: bool = True, export: bool = True,
               verbose: bool = True, train_split: str = "train") -> CCNNTrainSummary:
    """Trains stages in series, then evaluates and (when complete) exports the cascade.

    Holds the run directory's lock meanwhile (``common.training.locks_run_dir``): a
    second training on the same ``run_dir`` gets ``common.training.RunDirLocked``.

    Args:
        config: the configuration.
        stages: ``"all"``, one stage or several, trained in the given order.
        data: TFRecord folder with ``train_split`` and ``val_split`` shards, or
            several (``common.multidata.DataSpec``, ``"a:0.7,b:0.3"``: training faces
            drawn by the weights; evaluation per folder and on their union).
        run_dir: the CCNN run directory.
        steps: steps per stage; default ``config.steps_per_stage``.
        batch_size: global batch; default ``config.batch_size``.
        strategy: strategy object or name (selected once for all stages).
        mixed_precision: see ``common.training.train_model``.
        checkpoint_every, eval_every, log_every: see :func:`train_ccnn_stage`.
        val_split: the validation split.
        evaluate: evaluate the latest cascade on ``val_split`` afterwards (written to
            ``run_dir/eval``; Table 3, the timing, is left to ``ccnn_tf.evaluate``).
        export: once all ``config.num_stages`` stages are trained, write
            ``run_dir/model.keras`` and export it to ``run_dir/export``.
        verbose: progress bars and a printed summary.
        train_split: the split (or alias) every stage trains on.

    Returns:
        A :class:`CCNNTrainSummary`.
    """
    from ccnn_tf import evaluate as ccnn_evaluate  # imported late: plots, reports
    from ccnn_tf import export as ccnn_export

    order = parse_stages(stages, config.num_stages)
    if isinstance(strategy, str):
        strategy = training.select_strategy(strategy)
    batch = batch_size or config.batch_size

    def train_stages(run_dir: str) -> task_lib.TaskTraining:
        results = {}
        for stage in order:
            if verbose:
                print(f"--- CCNN stage {stage}/{config.num_stages} -> "
                      f"{stage_dir(run_dir, stage)}", flush=True)
            results[stage] = train_ccnn_stage(
                config, stage, data=data, run_dir=run_dir, steps=steps,
                batch_size=batch_size, strategy=strategy, mixed_precision=mixed_precision,
                checkpoint_every=checkpoint_every, eval_every=eval_every,
                log_every=log_every, val_split=val_split, verbose=verbose,
                train_split=train_split)
            if verbose:
                print(f"stage {stage}: {results[stage].speed(batch)}", flush=True)
        consistent = consistent_stages(run_dir)
        complete = consistent >= config.num_stages
        model = None
        if complete:
            model = assemble_cascade(run_dir, config)
        elif consistent:
            model = load_stage_model(run_dir, consistent)
            if verbose:
                print(f"stages {consistent + 1}..{config.num_stages} are not trained (or "
                      "were trained on earlier weights): evaluating the first "
                      f"{consistent} stage(s), not exporting", flush=True)
        return task_lib.TaskTraining(model=model, complete=complete,
                                     info={"config": config.to_dict()}, result=results)

    def evaluate_model(model: Any, val_spec: DataSpec, split: str, out_dir: str,
                       trained: task_lib.TaskTraining) -> Any:
        evaluated = ccnn_evaluate.evaluate_cascade(model, val_spec, split,
                                                   batch_size=batch, cost=False)
        paths = ccnn_evaluate.write_cascade_report(
            evaluated, out_dir, name=f"ccnn_{split}",
            title=f"CCNN on {split} ({', '.join(val_spec.names)})")
        if verbose:
            print(ccnn_evaluate.stage_table(evaluated.results), flush=True)
            if evaluated.results.get("per_dataset"):
                print(multidata.per_dataset_markdown(evaluated.results["per_dataset"],
                                                     split, evaluated.results["kinds"]),
                      flush=True)
        return evaluated.results, paths

    def export_model(model: Any, export_dir: str, *, data: str, split: str,
                     info: Mapping[str, Any]) -> dict[str, Any]:
        report = ccnn_export.export_cascade(model, export_dir, data=data, split=split,
                                            extra_info=info)
        if verbose:
            print(ccnn_export.format_export_report(report), flush=True)
        return report

    outcome = task_lib.train_evaluate_export(
        task_lib.FunctionTask(train_stages, evaluate_model, export_model), data=data,
        run_dir=run_dir, train_split=train_split, val_split=val_split, evaluate=evaluate,
        export=export)
    summary = CCNNTrainSummary(run_dir=run_dir, stage_results=outcome.training.result,
                               export=outcome.export)
    if outcome.evaluation is not None:
        summary.evaluation, summary.report_paths = outcome.evaluation
    return summary


def stage_errors(results: Mapping[str, Any], kind: str = "box_width") -> dict[str, float]:
    """``{"stage_1": mean NME, ...}`` from ``evaluate_cascade`` results."""
    outputs = results["outputs"]
    return {name: outputs[name][kind]["mean"] for name in sorted(outputs)
            if name.startswith("stage_")}
