"""Training MSRRN end to end: data, mean shape, loss, runner, evaluation, export.

``train_msrrn`` is the library side of ``python -m msrrn_tf.train``: it takes an
``MSRRNConfig`` and explicit arguments (never flags), and

1. builds the training pipeline (``common.pipeline.make_dataset`` with the paper's
   augmentation, ``MSRRNConfig.augment_config()``: Gaussian pixel noise, flips,
   rotations of +-15 deg; "Implementational details") at ``config.scales``;
2. computes the mean shape S^0 starts from: the mean of the training landmarks in
   normalised crop coordinates (symmetrised when flips are on, since the flipped
   faces are training faces too);
3. builds the model and the SGD + momentum optimiser (eq. 6) inside the strategy
   scope and trains with ``common.training.train_model`` (checkpoints, automatic
   resume, TensorBoard, validation NME) on the loss of eq. (5):

       sum over stages t = 0..T of  ||S^t - S*||_2^2    (+ lambda ||W||^2)

   i.e. per face the sum of squared coordinate errors of every stage, averaged over
   the batch. S^0 (the initial-shape CNN) is included so that the CNN is trained;
   lambda ||W||^2 is the kernel regularisers' loss (``MSRRNConfig.weight_decay``);
4. fits the bias correction (``fit_bias_correction``, when
   ``config.bias_correction``): the mean residual of every stage output on the
   unaugmented training faces becomes a fixed offset of that output, and the
   corrected model is saved as ``run_dir/model.keras`` (the runner's checkpoints
   hold the uncorrected one);
5. evaluates the validation split (``common.evaluation``): the stage ablation of
   Table 2 from the one model, a CED plot, JSON and Markdown, under
   ``run_dir/eval``; with several data folders (``common.multidata``: ``data`` as
   ``"a:0.7,b:0.3"``, the training faces drawn by these weights) on the union of
   their val faces, with the error of each folder beside it;
6. exports the model (``common.export.write_export``: ``saved_model/1/`` and
   ``export_report.json``) to ``run_dir/export``.

**What "mean shape" means in Table 2.** The paper's first row ("we first leveraged
the meanshape as the baseline method") is the training mean shape placed in the
face crop, with no image information: exactly ``MSRRNConfig(init="mean_shape")``'s
S^0, and the shape the initial-shape CNN predicts a residual from. Here it is
``model.mean_shape`` (normalised crop coordinates) mapped into every crop box
(``common.evaluation.add_constant_shape``); the CNN's own prediction S^0 is reported
as a separate row ("initial CNN (S^0)"). The rows "1 stage", "2 stages" and
"3 stages" are S^1, S^2, S^3 of the same T = 3 model (the paper's recurrent stages
share their weights, so S^t is what a T = t model with these weights predicts);
``--stages`` trains separate T = 1 and T = 2 models for the true ablation.

The ``"quick"`` preset (``QUICK_OVERRIDES``, ``QUICK_SYNTHETIC_SPLITS``) is the no-flag
default of the command line: the paper's geometry scaled to 32/64/128-px crops,
narrower layers, 2,500 iterations and 2,000 synthetic training faces, so that data
generation, training, evaluation and export finish in well under 15 minutes on two
(shared) CPU cores while the stages improve monotonically (README, "Synthetic
default data", has the measured table and the command).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import evaluation, multidata, training
from common import task as task_lib
from common.geometry import crop_boxes_from_face_boxes, image_to_crop
from common.multidata import DataSpec
from common.pipeline import make_dataset
from common.run_files import read_run_record
from common.schemes import LandmarkScheme, scheme_for
from common.tfrecord import find_shards, parse_face
from msrrn_tf.config import QUICK_OVERRIDES, MSRRNConfig  # noqa: F401  (re-exported)
from msrrn_tf.model import MSRRN, build_msrrn

QUICK_SYNTHETIC_SPLITS = {"train": 2000, "val": 200}
"""Faces per split of the embedded synthetic data set used by the ``"quick"`` preset
(and by default when no data folder is given)."""

PAPER_SYNTHETIC_SPLITS = {"train": 3148, "val": 554}
"""Synthetic stand-in for 300-W with the paper's sizes: 3,148 training faces (LFPW +
HELEN train) and 554 test faces (the full set), "Datasets"."""

STAGE_ROW_LABELS = ("mean shape", "initial CNN (S^0)")
"""Labels of the two baseline rows of the Table 2 report."""


def synthetic_splits(preset: str) -> dict[str, int]:
    """Faces per split of the default synthetic data for a preset."""
    return dict(QUICK_SYNTHETIC_SPLITS if preset == "quick" else PAPER_SYNTHETIC_SPLITS)


# --------------------------------------------------------------------------------------
# Loss and mean shape
# --------------------------------------------------------------------------------------


def squared_shape_error(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """``||S - S*||_2^2`` per face: the sum of squared coordinate errors (eq. 4, 5).

    Args:
        y_true: ``[B, L, 2]`` ground truth (normalised crop coordinates).
        y_pred: ``[B, L, 2]`` prediction.

    Returns:
        ``[B]`` per-face losses (the runner averages them over the global batch).
    """
    return tf.reduce_sum(tf.square(y_pred - y_true), axis=[1, 2])


def stage_losses(num_stages: int, init: str) -> dict[str, Any]:
    """The loss mapping of eq. (5) for ``common.training.train_model``: one squared
    error per stage output, S^0 included when it is learnt (``init="cnn"``)."""
    first = 0 if init == "cnn" else 1
    return {f"stage_{t}": squared_shape_error for t in range(first, num_stages + 1)}


def training_mean_shape(data: str | Sequence[str] | DataSpec, split: str, *, margin: float,
                        num_landmarks: int,
                        flip_permutation: Sequence[int] | None = None,
                        limit: int | None = None) -> np.ndarray:
    """Mean training shape in normalised crop coordinates (S^0 of MSRRN).

    Every face's landmarks are mapped into its (unaugmented) crop box,
    ``image_to_crop(landmarks, crop_boxes_from_face_boxes(box, margin))``, and
    averaged. With ``flip_permutation`` the mean is symmetrised, ``(m + flip(m)) / 2``
    with ``flip(u, v) = (1 - u, v)`` and the points permuted, as the flip
    augmentation makes the mirrored faces part of the training distribution.

    With several data folders (``common.multidata.DataSpec``) the mean of each is
    weighted by its sampling weight (the faces training draws), or by its number of
    faces without weights.

    Args:
        data: TFRecord folder, glob or file, or a data spec of several.
        split: the training split.
        margin: crop margin.
        num_landmarks: L.
        flip_permutation: the scheme's flip permutation, or ``None`` (no flips).
        limit: use only the first ``limit`` faces (of each folder).

    Returns:
        float32 ``[L, 2]``.
    """
    spec = DataSpec.parse(data)

    def normalised(serialized):
        face = parse_face(serialized, num_landmarks)
        crop_box = crop_boxes_from_face_boxes(face["box"][None], margin)
        return image_to_crop(face["landmarks"][None], crop_box)[0]

    means, counts = [], []
    for folder in spec.folders:
        files = find_shards(folder, split) if os.path.isdir(folder) else find_shards(folder)
        dataset = tf.data.TFRecordDataset(files)
        if limit:
            dataset = dataset.take(limit)
        shapes = dataset.map(normalised, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
        total, count = np.zeros((num_landmarks, 2)), 0
        for batch in shapes:
            total += batch.numpy().sum(axis=0)
            count += int(batch.shape[0])
        if count == 0:
            raise ValueError(f"split {split!r} of {folder!r} holds no faces")
        means.append(total / count)
        counts.append(count)
    shares = np.asarray(spec.weights if spec.weights is not None else counts, np.float64)
    mean = np.tensordot(shares / shares.sum(), np.stack(means), axes=1)
    if flip_permutation is not None:
        mirrored = np.stack([1.0 - mean[:, 0], mean[:, 1]], axis=-1)[list(flip_permutation)]
        mean = 0.5 * (mean + mirrored)
    return mean.astype(np.float32)


BIAS_CORRECTION_FILE = "bias_correction.json"
"""Where ``train_msrrn`` records the fitted offsets in a run directory."""


def fit_bias_correction(model: MSRRN, data: str | Sequence[str] | DataSpec, split: str, *,
                        margin: float,
                        limit: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Fits the per-stage, per-landmark offsets of ``model`` on training faces.

    The offsets are first reset to zero, the model predicts the (unaugmented)
    faces of ``split`` with the evaluation pipeline, and each output's offset is
    set to its mean residual ``truth - prediction`` in normalised crop coordinates
    (``common.evaluation.mean_crop_residuals``), so refitting gives the same
    result. See ``MSRRNConfig.bias_correction`` for why.

    Args:
        model: an MSRRN built with ``bias_correction=True``.
        data: TFRecord folder, or a data spec of several (their union).
        split: the training split.
        margin: the crop margin the model was trained with.
        limit: use only the first ``limit`` faces.
        batch_size: faces per forward pass.

    Returns:
        ``{"split", "faces", "offsets": [T + 1][L][2] lists, "mean_offset": {stage:
        [dx, dy]}, "rms_offset": {stage: value}}`` (normalised crop units).

    Raises:
        ValueError: the model has no bias correction.
    """
    if not model.bias_correction:
        raise ValueError("the model was built with bias_correction=False; rebuild it with "
                         "MSRRNConfig(bias_correction=True)")
    zeros = np.zeros((model.num_stages + 1, model.num_landmarks, 2), np.float32)
    model.set_shape_offsets(zeros)
    pred = predict_msrrn(model, data, split, margin=margin, batch_size=batch_size, limit=limit)
    names = [f"stage_{t}" for t in range(model.num_stages + 1)]
    residuals = evaluation.mean_crop_residuals(pred, names)
    offsets = np.stack([residuals[name] for name in names])
    model.set_shape_offsets(offsets)
    return {
        "split": split,
        "faces": pred.num_faces,
        "offsets": offsets.tolist(),
        "mean_offset": {name: [float(v) for v in residuals[name].mean(axis=0)]
                        for name in names},
        "rms_offset": {name: float(np.sqrt(np.mean(residuals[name] ** 2))) for name in names},
    }


# --------------------------------------------------------------------------------------
# Evaluation (Table 2 from one model)
# --------------------------------------------------------------------------------------


def stage_rows(num_stages: int) -> dict[str, str]:
    """``{row label: output name}`` of the Table 2 ablation of one model."""
    rows = {STAGE_ROW_LABELS[0]: "mean_shape", STAGE_ROW_LABELS[1]: "stage_0"}
    for t in range(1, num_stages + 1):
        rows[f"{t} stage" + ("s" if t > 1 else "")] = f"stage_{t}"
    return rows


def predict_msrrn(model: MSRRN, data: str | Sequence[str] | DataSpec, split: str, *,
                  margin: float, batch_size: int = 64, limit: int | None = None
                  ) -> evaluation.Predictions:
    """``common.evaluation.predict_split`` for MSRRN, plus the ``"mean_shape"``
    baseline (the model's mean shape in every crop box).

    Args:
        model: the MSRRN model.
        data: TFRecord folder, or a data spec of several (the union of the
            folders that hold ``split``, ``common.multidata.predict_union``).
        split: split name (or ``dataset.json`` alias).
        margin: the crop margin the model was trained with.
        batch_size: faces per forward pass.
        limit: evaluate only the first ``limit`` faces (of each folder).

    Returns:
        Predictions with outputs ``mean_shape``, ``stage_0`` .. ``stage_T``,
        ``landmarks``.
    """
    return multidata.predict_union(_msrrn_predictor(model, margin, batch_size, limit),
                                   data, split)


def _msrrn_predictor(model: MSRRN, margin: float, batch_size: int, limit: int | None):
    """``(folder, split) -> Predictions`` of one folder (``predict_msrrn``)."""

    def predict(folder: str, split: str) -> evaluation.Predictions:
        pred = evaluation.predict_split(model, folder, split, sizes=model.input_sizes,
                                        margin=margin, num_landmarks=model.num_landmarks,
                                        batch_size=batch_size, limit=limit)
        return evaluation.add_constant_shape(pred, "mean_shape", model.mean_shape)

    return predict


def evaluate_split(model: MSRRN, data: str | Sequence[str] | DataSpec, split: str, *,
                   margin: float, out_dir: str, scheme: LandmarkScheme | None = None,
                   kinds: Sequence[str] = evaluation.DEFAULT_KINDS,
                   limit: int | None = None, batch_size: int = 64,
                   extra: Mapping[str, Any] | None = None
                   ) -> tuple[evaluation.Predictions, dict[str, Any]]:
    """The Table 2 report of one split (``stage_ablation_report``), per data set too.

    With several data folders the report is on the union of their ``split`` faces
    and also holds ``"per_dataset"`` (the final shape's NME of every folder and of
    the union, ``common.multidata.per_dataset_report``), in the JSON and as a
    Markdown table.

    Returns:
        ``(predictions of the union, report)``; the report is
        ``stage_ablation_report``'s plus ``"per_dataset"`` (JSON rows) and
        ``"per_dataset_table"`` (Markdown), both ``None`` for one folder.
    """
    spec = DataSpec.parse(data)
    parts = multidata.predict_per_dataset(
        _msrrn_predictor(model, margin, batch_size, limit), spec, split)
    pred = multidata.union_of(parts)
    extra = {"split": split, "data": str(spec.absolute()), **(extra or {})}
    tables: list[str] = []
    per_dataset = table = None
    if len(spec.folders) > 1:
        per_dataset, table = multidata.per_dataset_report(parts, spec, split, kinds=kinds,
                                                          scheme=scheme)
        extra.update(data_spec=spec.to_dict(), per_dataset=per_dataset)
        tables.append(table)
    report = stage_ablation_report(
        pred, model.num_stages, out_dir, split, scheme=scheme, kinds=kinds,
        title=f"MSRRN stage ablation (Table 2), split {split!r}", extra=extra,
        extra_tables=tables)
    report["per_dataset"] = per_dataset
    report["per_dataset_table"] = table
    return pred, report


def stage_ablation_report(pred: evaluation.Predictions, num_stages: int, out_dir: str,
                          name: str, *, scheme: LandmarkScheme | None = None,
                          title: str = "MSRRN stage ablation (Table 2)",
                          kinds: Sequence[str] = evaluation.DEFAULT_KINDS,
                          extra: Mapping[str, Any] | None = None,
                          extra_tables: Sequence[str] = ()) -> dict[str, Any]:
    """Scores the stages of one model and writes the Table 2 report.

    Args:
        pred: predictions with ``mean_shape`` and ``stage_*`` outputs.
        num_stages: T.
        out_dir: report folder.
        name: report file stem.
        scheme: landmark scheme.
        title: report title.
        kinds: normalisers (the first one is plotted in the CED).
        extra: entries added to the JSON (e.g. the run settings).
        extra_tables: Markdown tables written after the stage tables (e.g. the
            error per data set).

    Returns:
        ``{"results": evaluate_outputs(...) (+ extra), "table2": {row: mean NME per
        kind}, "paths": written files}``.
    """
    results = evaluation.evaluate_outputs(pred, scheme, kinds=kinds)
    rows = stage_rows(num_stages)
    table2 = {label: {kind: results["outputs"][output][kind]["mean"] for kind in kinds}
              for label, output in rows.items()}
    results["table2"] = table2
    results.update(extra or {})
    tables = [evaluation.results_table(results, rows, kind,
                                       title=f"{kind.replace('_', '-')} NME")
              for kind in kinds] + list(extra_tables)
    ced = {label: evaluation.face_errors(pred, output, kinds[0], scheme)
           for label, output in rows.items()}
    paths = evaluation.write_report(
        results, out_dir, name, ced, title, tables,
        ced_xlabel=f"NME (normalised by {kinds[0].replace('_', '-')} distance)",
        notes=("Rows: the training mean shape in the crop (no image), the initial-shape "
               "CNN S^0, and the shape after each recurrent stage S^t of the same model "
               f"({pred.num_faces} faces, {1e3 * pred.seconds_per_face:.2f} ms per face)."))
    return {"results": results, "table2": table2, "paths": paths}


def format_table2(table2: Mapping[str, Mapping[str, float]], kind: str = "inter_pupil"
                  ) -> str:
    """One line per row, e.g. ``"  3 stages           5.12 %"``, for logs."""
    return "\n".join(f"  {label:<20s} {100 * values[kind]:6.2f} %"
                     for label, values in table2.items())


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class MSRRNTrainResult:
    """What :func:`train_msrrn` returns.

    Attributes:
        run_dir: the run directory.
        model: the trained model.
        config: the config trained with.
        steps_done: the global step reached.
        initial_step: the step training (re)started from.
        history: the runner's history (loss, learning rate, validation NME).
        evaluation: the validation results (``stage_ablation_report``), or ``None``.
        export_dir: the export folder (``common.export.write_export``), or ``None``.
        seconds: wall time of this call (training, bias correction, evaluation and
            export: the time to the reported accuracy).
        loop_seconds: wall time of the training loop alone (graph tracing included;
            validation and checkpoints excluded); see :meth:`speed`.
    """

    run_dir: str
    model: MSRRN
    config: MSRRNConfig
    steps_done: int
    initial_step: int
    history: dict[str, list[float]]
    evaluation: dict[str, Any] | None = None
    export_dir: str | None = None
    seconds: float = 0.0
    loop_seconds: float = 0.0

    def speed(self) -> str:
        """Steps/s and faces/s of the training loop, as one line."""
        return training.format_speed(self.steps_done - self.initial_step,
                                     self.loop_seconds, self.config.batch_size)


def _momentum_sgd(config: MSRRNConfig, steps: int, schedule: str
                  ) -> keras.optimizers.Optimizer:
    if schedule == "constant":
        learning_rate: Any = config.learning_rate
    elif schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(steps, 1), alpha=0.01)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum)


@training.locks_run_dir
def train_msrrn(config: MSRRNConfig, *, data: str | Sequence[str] | DataSpec, run_dir: str,
                steps: int | None = None, train_split: str = "train",
                val_split: str | None = "val", checkpoint_every: int = 500,
                eval_every: int | None = None, log_every: int = 50,
                strategy: str | tf.distribute.Strategy = "default",
                mixed_precision: bool = False, jit_compile: bool = False,
                schedule: str = "cosine", val_limit: int | None = None,
                evaluate: bool = True, export: bool = True, parity_check: bool = True,
                seed: int | None = None, verbose: bool = True,
                init_from: str | None = None) -> MSRRNTrainResult:
    """Trains MSRRN (resuming from ``run_dir``), then evaluates and exports it.

    Holds the run directory's lock meanwhile (``common.training.locks_run_dir``): a
    second training on the same ``run_dir`` gets ``common.training.RunDirLocked``.

    Args:
        config: the hyper-parameters (``config.batch_size`` is the global batch,
            ``config.learning_rate`` the initial learning rate).
        data: TFRecord folder with the ``train_split`` and ``val_split`` shards, or
            several (``common.multidata.DataSpec``, e.g. ``"a:0.7,b:0.3"``): every
            folder must have ``train_split`` and the model's number of landmarks;
            with weights each training face is drawn from a folder with its weight's
            probability, without them the folders are one set. Validation and the
            final report use the folders that have ``val_split`` (their union, and
            in the report each folder too). The spec is recorded in
            ``config.json`` (``data``), the report and the export report.
        run_dir: run directory; rerunning with the same one resumes.
        steps: total training steps; default ``config.iterations``.
        train_split: training split name.
        val_split: validation split (validation NME during training, final
            evaluation), or ``None``.
        checkpoint_every: checkpoint every this many steps.
        eval_every: validate every this many steps (and at the end).
        log_every: log the loss every this many steps.
        strategy: distribution strategy or its name (``common.training``).
        mixed_precision: train in ``mixed_float16``.
        jit_compile: XLA-compile the training step.
        schedule: ``"cosine"`` (decay to 1 % of the initial rate over ``steps``) or
            ``"constant"`` (eq. 6 as written; the paper gives no schedule).
        val_limit: use only the first ``val_limit`` validation faces.
        evaluate: write the Table 2 report of the final model to ``run_dir/eval``.
        export: export the model to ``run_dir/export`` (``export_msrrn``).
        parity_check: after exporting, check the SavedModel against the Keras model
            (``common.export.check_parity``, atol 1e-4, in this process; the export
            command line checks in a fresh one).
        seed: seed of the data order, augmentation and initial weights (``None``:
            random); a resumed run draws its batches from a stream seeded by the seed
            and its start step (``common.training.resume_seed``).
        verbose: show progress.
        init_from: start from another run's weights (a run directory, its
            ``checkpoints`` folder or a checkpoint prefix; e.g. a run pretrained on
            the synthetic faces), mean shape and bias offsets included; the
            optimiser and step start afresh. Ignored when ``run_dir`` already has a
            checkpoint (resuming wins). The model's weights must have the same
            shapes (:func:`check_init_from`).

    Returns:
        A :class:`MSRRNTrainResult`.

    Raises:
        ValueError: ``init_from``'s weights do not fit ``config``'s model.
    """
    start = time.perf_counter()
    init_checkpoint = check_init_from(config, init_from) if init_from else None
    if isinstance(strategy, str):
        # Before any dataset op: multi-worker collectives are configured when the
        # eager context starts.
        strategy = training.select_strategy(strategy)
    steps = config.iterations if steps is None else int(steps)
    scheme = scheme_for(config.num_landmarks)
    flip_permutation = scheme.flip_permutation if config.flip else None
    spec = DataSpec.parse(data)
    multidata.check_landmark_scheme(spec, config.num_landmarks)
    data_info = spec.to_dict()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    data_seed = training.resume_seed(seed, run_dir)  # a resumed run: unseen batches

    def train_dataset(context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        context = context or tf.distribute.InputContext()
        return make_dataset(
            spec.data, train_split, sizes=config.scales, num_landmarks=config.num_landmarks,
            margin=config.margin,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            training=True, augment=config.augment_config(),
            flip_permutation=flip_permutation, seed=data_seed, cache=True,
            shard=(context.num_input_pipelines, context.input_pipeline_id),
            weights=spec.weights)

    val_dataset = None
    val_spec = task_lib.validation_spec(spec, val_split)
    if val_split and val_spec is None:
        raise FileNotFoundError(f"no folder of --data {str(spec)!r} has shards of the "
                                f"validation split {val_split!r}")
    if val_split:
        val_dataset = make_dataset(val_spec.data, val_split, sizes=config.scales,
                                   num_landmarks=config.num_landmarks, margin=config.margin,
                                   batch_size=64, training=False, cache=True)
        if val_limit:
            val_dataset = val_dataset.unbatch().take(val_limit).batch(64).cache()

    mean_shape = training_mean_shape(spec, train_split, margin=config.margin,
                                     num_landmarks=config.num_landmarks,
                                     flip_permutation=flip_permutation)

    def build_model() -> MSRRN:
        model = build_msrrn(config)
        model.set_mean_shape(mean_shape)
        evaluation.save_architecture(model, run_dir)
        return model

    def train_in(run_dir: str) -> task_lib.TaskTraining:
        if mixed_precision:
            training.configure_precision(True)
        result = training.train_model(
            build_model=build_model,
            build_optimizer=lambda: _momentum_sgd(config, steps, schedule),
            loss=stage_losses(config.num_stages, config.init),
            train_dataset=train_dataset,
            steps=steps, run_dir=run_dir, val_dataset=val_dataset,
            checkpoint_every=checkpoint_every, eval_every=eval_every, log_every=log_every,
            strategy=strategy, config=config, data_info=data_info,
            init_checkpoint=init_checkpoint,
            val_metric=(evaluation.nme_val_metric("inter_pupil", scheme)
                        if val_dataset else None),
            jit_compile=jit_compile, verbose=verbose,
            # With the bias correction, model.keras is written once, corrected, below.
            save_final_model=not config.bias_correction)
        if mixed_precision:
            training.configure_precision(False)
        if config.bias_correction:
            _correct_bias(result.model, config, spec, train_split, run_dir, strategy,
                          verbose)
        return task_lib.TaskTraining(
            model=result.model, info={"steps": result.steps_done,
                                      "config": config.to_dict()}, result=result)

    def evaluate_model(model: MSRRN, val_spec: DataSpec, split: str, out_dir: str,
                       trained: task_lib.TaskTraining) -> dict[str, Any]:
        result = trained.result
        pred, report = evaluate_split(
            model, val_spec, split, margin=config.margin, out_dir=out_dir, scheme=scheme,
            limit=val_limit,
            extra={"training_data": data_info, "steps": result.steps_done,
                   "config": config.to_dict(),
                   "training_loop_seconds": result.loop_seconds,
                   "steps_per_second": result.steps_per_second})
        if verbose:
            print(f"Table 2 on {split!r} ({pred.num_faces} faces), inter-pupil NME:\n"
                  + format_table2(report["table2"]), flush=True)
            if report["per_dataset"]:
                print("final shape per data set, inter-pupil NME:\n" + "\n".join(
                    f"  {name:<20s} {100 * row['inter_pupil']:6.2f} %  "
                    f"({row['num_faces']} faces)"
                    for name, row in report["per_dataset"].items()), flush=True)
        return report

    def export_model(model: MSRRN, export_dir: str, *, data: str, split: str,
                     info: Mapping[str, Any]) -> str:
        return export_msrrn(model, export_dir, margin=config.margin, data=data, split=split,
                            parity_check=parity_check, fresh_process=False,
                            verbose=verbose, info=info)

    outcome = task_lib.train_evaluate_export(
        task_lib.FunctionTask(train_in, evaluate_model, export_model), data=spec, run_dir=run_dir,
        train_split=train_split, val_split=val_split, evaluate=evaluate, export=export)
    result = outcome.training.result
    return MSRRNTrainResult(run_dir=run_dir, model=result.model, config=config,
                            steps_done=result.steps_done, initial_step=result.initial_step,
                            history=result.history, evaluation=outcome.evaluation,
                            export_dir=outcome.export_dir,
                            seconds=time.perf_counter() - start,
                            loop_seconds=result.loop_seconds)


def _correct_bias(model: MSRRN, config: MSRRNConfig, spec: DataSpec, train_split: str,
                  run_dir: str, strategy: tf.distribute.Strategy, verbose: bool) -> None:
    """Fits the bias correction (``fit_bias_correction``), records it in ``run_dir``
    and writes the corrected ``model.keras`` (chief only)."""
    correction = fit_bias_correction(model, spec, train_split, margin=config.margin,
                                     limit=config.bias_correction_faces)
    if training.is_chief(strategy):
        # The run directory may be an object store: the runner's gfile writers.
        training.atomic_write_text(os.path.join(run_dir, BIAS_CORRECTION_FILE),
                                   json.dumps(correction, indent=1) + "\n")
        training.save_model_atomically(model, os.path.join(run_dir, evaluation.MODEL_FILE))
    if verbose:
        dx, dy = correction["mean_offset"][f"stage_{config.num_stages}"]
        print(f"Bias correction fitted on {correction['faces']} {train_split!r} faces: "
              f"mean offset of the final shape ({100 * dx:+.2f}, {100 * dy:+.2f}) % of "
              f"the crop, rms per point "
              f"{100 * correction['rms_offset'][f'stage_{config.num_stages}']:.2f} %",
              flush=True)


def check_init_from(config: MSRRNConfig, init_from: str) -> str:
    """The checkpoint of ``init_from`` after checking that it fits ``config``'s model.

    The weights are restored into a throwaway model built from ``config``; a weight of
    another shape (other widths, scales, patch size, number of landmarks) raises,
    naming the weight and the config fields in which the source run (its
    ``config.json``) differs.

    Args:
        config: the config of the model to train.
        init_from: a run directory, its ``checkpoints`` folder or a prefix.

    Returns:
        The checkpoint prefix.

    Raises:
        FileNotFoundError: no checkpoint in ``init_from``.
        ValueError: the shapes do not match.
    """
    prefix = training.resolve_init_checkpoint(init_from)
    model = build_msrrn(config)
    try:
        training.restore_model_weights(model, prefix)
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        differs = ""
        source = _run_config_of(init_from)
        if source is not None:
            mine, theirs = config.flat_dict(), source.flat_dict()
            fields = [k for k in mine if mine[k] != theirs.get(k)]
            differs = (f"; its config.json differs in {', '.join(fields)}" if fields
                       else "")
        raise ValueError(f"--init_from {init_from}: its weights do not fit this model "
                         f"({error}){differs}. Start from a run of the same architecture "
                         "(scales, patch size, widths, landmarks)") from None
    return prefix


def _run_config_of(path: str) -> MSRRNConfig | None:
    """The MSRRNConfig in the ``config.json`` of the run holding ``path``, if any."""
    path = os.path.abspath(path)
    for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        record = (read_run_record(candidate, legacy=False)
                  if os.path.isdir(candidate) else None)
        if record is not None:
            return MSRRNConfig.from_dict(record.values) if record.values else None
    return None


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def sample_faces(data: str, split: str, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` faces of a split for parity checks (``common.export.parity_faces``)."""
    from common import export as common_export

    return common_export.parity_faces(data, split, count)


TFLITE_FLOAT32 = "model_float32.tflite"
"""File name of the float32 TFLite model in an MSRRN export."""


def export_msrrn(model: MSRRN, export_dir: str, *, margin: float, data: str | None = None,
                 split: str = "val", parity_check: bool = True, tflite: bool = False,
                 atol: float | None = None, fresh_process: bool = True, verbose: bool = True,
                 info: Mapping[str, Any] | None = None) -> str:
    """Exports MSRRN (``common.export.write_export``: one unit) and checks parity.

    Args:
        model: the trained model.
        export_dir: the export folder: ``saved_model/1/``, ``model_float32.tflite``
            (with ``tflite``) and ``export_report.json`` (``common.export``).
        margin: the crop margin the model was trained with.
        data: TFRecord folder whose faces are used for the parity checks; ``None``
            uses random images.
        split: the split of ``data`` to take faces from.
        parity_check: compare the SavedModel with the Keras model (the TFLite file is
            always checked).
        tflite: also write a float32 TFLite file of ``serving_cropped``.
        atol: parity tolerance in normalised crop units (pixels: the same fraction
            of the smallest test crop side, ``common.export.check_export``); ``None``:
            the model's ``export_hooks().tolerance`` (1e-4).
        fresh_process: load the exports in a new Python process for the checks (so
            nothing of this process, e.g. registered classes, helps them).
        verbose: print the parity results.
        info: more fields for the report (e.g. the run's config and training data).

    Returns:
        The export directory.

    Raises:
        common.export.ParityError: an export disagrees with the model (the previous
            export is kept).
    """
    from common import export as common_export

    if data is not None:
        images, boxes = sample_faces(data, split)
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (2, 96, 120, 3), dtype=np.uint8)
        boxes = np.array([[20, 15, 80, 75], [30, 10, 100, 80]], np.float32)

    def check(name: str, path: str) -> dict[str, Any]:
        if name == "saved_model" and not parity_check:
            return {}
        tolerance = model.export_hooks().tolerance(name) if atol is None else atol
        report = common_export.check_export(name, path, model, images, boxes,
                                            margin=margin, tolerance=tolerance,
                                            fresh_process=fresh_process)
        _print_parity("SavedModel" if name == "saved_model" else "TFLite", report,
                      verbose)
        return report

    variants = [common_export.tflite_variant(model, "tflite_float32", TFLITE_FLOAT32)
                ] if tflite else []
    common_export.write_export(
        model, export_dir, sizes=model.input_sizes, margin=margin,
        num_landmarks=model.num_landmarks, tflite=variants, check=check,
        info={"check_data": data, "check_split": split if data is not None else None,
              **dict(info or {})},
        progress=(lambda line: print(line, flush=True)) if verbose else None)
    export_dir = os.path.abspath(export_dir)
    if verbose:
        print(f"export written to {export_dir}", flush=True)
    return export_dir


def _print_parity(what: str, report: Mapping[str, Any], verbose: bool) -> None:
    if not verbose:
        return
    where = "fresh process" if report["fresh_process"] else "this process"
    print(f"{what} parity ({where}, {report['num_faces']} faces, tolerance "
          f"{report['tolerance_normalised']:g} normalised / "
          f"{report['tolerance_pixels']:.3g} px): "
          + ", ".join(f"{k} {v:.2e}" for k, v in report["per_output"].items()) + " -> OK",
          flush=True)


def default_run_dir(root: str = "runs", prefix: str = "msrrn") -> str:
    """``root/prefix-YYYYmmdd-HHMMSS``."""
    return os.path.join(root, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def ablation_run_dir(run_dir: str, num_stages: int) -> str:
    """Where the T = ``num_stages`` model of the stage ablation is trained."""
    return os.path.join(run_dir, f"stages_{num_stages}")


__all__ = [
    "BIAS_CORRECTION_FILE",
    "QUICK_OVERRIDES",
    "QUICK_SYNTHETIC_SPLITS",
    "MSRRNTrainResult",
    "ablation_run_dir",
    "default_run_dir",
    "export_msrrn",
    "fit_bias_correction",
    "format_table2",
    "predict_msrrn",
    "sample_faces",
    "squared_shape_error",
    "stage_ablation_report",
    "stage_losses",
    "stage_rows",
    "synthetic_splits",
    "train_msrrn",
    "training_mean_shape",
]
