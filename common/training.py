"""The training runner shared by MSRRN and CCNN: strategies, precision, resume.

Both packages describe *what* to train (a model builder, an optimiser builder, a loss
and datasets); :func:`train_model` owns *how*: distribution strategy, checkpoints,
automatic resume, TensorBoard, progress display, validation and the final
``model.keras``. Its parts, re-exported here: ``common.training_steps`` (losses, the
compiled loop, :func:`make_training_steps`), ``common.run_lock`` (:func:`run_dir_lock`)
and ``common.run_files`` (atomic writes, :func:`resolve_config`).

Layout of a run directory::

    run_dir/
      config.json          resolved model config + runner settings (written atomically)
      checkpoints/         tf.train.CheckpointManager: model, optimiser, step counter
      tensorboard/         scalars: loss, learning rate, steps/s, validation metrics
      history.json         logged values so far (survives resume), with the
                           training speed and the wall time of every log
      model.keras          the final model (written atomically)
      run.lock             while a training runs: its pid and host (run_dir_lock)

Why a custom loop and not ``model.fit`` + ``BackupAndRestore``: in Keras 3,
``BackupAndRestore`` resumes at epoch granularity only (the batch index it records is
not used to skip batches), and it writes its weights file and its metadata JSON in
two separate, non-atomic steps, so a SIGKILL between them leaves an inconsistent
backup. The papers train for a number of *iterations*, not epochs. A
``tf.train.CheckpointManager`` over ``{model, optimizer, step}`` saves all three in
one checkpoint whose index file is replaced atomically, so rerunning the same
command resumes at exactly the saved step, with the optimiser's slots and
iteration count (hence its learning-rate schedule) intact, and stops at the same
total number of steps. The loop follows the ``strategy.run``-inside-``tf.function``
pattern, scaling each replica's loss by the global batch.

Running on several GPUs, a GPU cluster or a TPU:

* One machine, all its GPUs: ``strategy="mirrored"``.
* Several machines: set ``TF_CONFIG`` on every worker, e.g.
  ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
  "task": {"type": "worker", "index": 0}}`` (``index`` differs per worker), and run
  the same command with ``strategy="multi_worker"`` on each machine. ``run_dir``
  must be on a file system every worker can read (NFS, GCS, ...): worker 0 (or the
  ``chief``) writes checkpoints, ``config.json``, TensorBoard logs and
  ``model.keras``; other workers write throw-away copies under
  ``run_dir/.workers/`` and resume from the chief's checkpoints. Pass the training
  data as a callable ``(tf.distribute.InputContext) -> tf.data.Dataset`` that shards
  by ``input_context.input_pipeline_id`` and batches with
  ``input_context.get_per_replica_batch_size(global_batch)``.
* Cloud TPU: ``strategy="tpu"`` (with ``tpu="name-or-grpc-address"`` for
  :func:`select_strategy` when not running on the TPU VM itself). ``run_dir`` and the
  data must be on GCS; raise ``steps_per_loop`` (e.g. 100) so many steps run per host
  round trip. TPU programs are always XLA-compiled; ``jit_compile`` is irrelevant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from common.run_files import (  # noqa: F401
    _join,
    _to_jsonable,
    atomic_write_text,
    resolve_config,
    save_model_atomically,
)
from common.run_lock import (  # noqa: F401
    LOCK_FILE,
    RunDirLocked,
    _acquire_lock,
    _held_locks,
    _process_alive,
    _read_lock,
    _try_create_lock,
    run_dir_lock,
)
from common.training_steps import (  # noqa: F401
    DatasetSpec,
    LossFn,
    LossSpec,
    _build_model_and_optimizer,
    _build_once,
    _distribute,
    _LossComputer,
    _make_train_loop,
    _strip_to_pair,
    _unreduced,
    make_training_steps,
)

logger = logging.getLogger(__name__)

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")
"""The names accepted by :func:`select_strategy`."""

ValMetric = Callable[[keras.Model, tf.data.Dataset], Mapping[str, float]]


# --------------------------------------------------------------------------------------
# Strategy and precision
# --------------------------------------------------------------------------------------


def select_strategy(name: str, *, tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns the distribution strategy called ``name``.

    Args:
        name: one of :data:`STRATEGY_NAMES`:
            ``"default"``: ``tf.distribute.get_strategy()`` (one device, no-op scope);
            ``"mirrored"``: synchronous data parallelism over all visible GPUs of this
            machine, or the CPU when there is none;
            ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` over the cluster
            described by the ``TF_CONFIG`` environment variable (create it at the
            start of the program, before any other TensorFlow op runs);
            ``"tpu"``: ``TPUStrategy`` over the TPU found by ``TPUClusterResolver``.
        tpu: TPU name or ``grpc://`` address for ``"tpu"``; ``None`` lets the
            resolver find the local TPU (TPU VM) or the ``TPU_NAME`` one.

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name, a missing ``TF_CONFIG`` with
            ``"multi_worker"``, or no reachable TPU with ``"tpu"``.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] if gpus else ["/cpu:0"]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                'strategy "multi_worker" needs the TF_CONFIG environment variable, '
                'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
                '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\' on each '
                'worker (see common/training.py); for one machine use "mirrored"')
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise ValueError(
                f'strategy "tpu": no TPU found (tpu={tpu!r}); run on a Cloud TPU VM, '
                f"or pass the TPU name / grpc:// address ({error})") from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGY_NAMES}")


def configure_precision(mixed_precision: bool) -> keras.DTypePolicy:
    """Sets the global Keras dtype policy; call it before building the model.

    With ``mixed_precision=True`` the policy is ``"mixed_float16"``: layers compute in
    float16 and keep float32 variables. A model's output layers (the landmark
    regression heads) must stay float32 (pass ``dtype="float32"`` to them), both for
    numerical accuracy and because the exported signatures promise float32;
    :func:`train_model` casts outputs to float32 before the loss and wraps the
    optimiser in ``keras.optimizers.LossScaleOptimizer``.

    Args:
        mixed_precision: ``True`` for ``"mixed_float16"``, ``False`` for ``"float32"``.

    Returns:
        The policy now in force.
    """
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if mixed_precision else "float32")
    return keras.mixed_precision.global_policy()


def step_decay(initial: float, decay_rate: float, decay_steps: int
               ) -> keras.optimizers.schedules.ExponentialDecay:
    """A staircase learning rate: ``initial * decay_rate ** floor(step / decay_steps)``.

    CCNN (Sun et al. 2013 as reimplemented) uses ``step_decay(5e-3, 0.9, 100)``.

    Args:
        initial: learning rate at step 0.
        decay_rate: factor applied every ``decay_steps`` steps.
        decay_steps: steps between two decays.

    Returns:
        A serialisable Keras schedule.
    """
    return keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=initial, decay_steps=decay_steps,
        decay_rate=decay_rate, staircase=True)


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_model` returns.

    Attributes:
        model: the trained model (built under the strategy's scope).
        history: logged values, lists aligned per prefix: ``step``, ``loss``,
            ``learning_rate``, ``steps_per_second`` (training steps per second of the
            training loop since the previous log, validation and checkpoints
            excluded) and ``wall_seconds`` (wall time since the run first started,
            summed over resumed runs) for training logs; ``val_step``,
            ``val_wall_seconds`` and ``val_<name>`` for each validation. Restored
            from ``history.json`` on resume.
        steps_done: the global step reached (``steps`` unless interrupted).
        run_dir: the run directory.
        initial_step: the step the run started from (0, or the resumed checkpoint).
        optimizer: the optimiser (its ``iterations`` count every step ever taken).
        loop_seconds: wall time this call spent in the training loop (graph tracing
            included; validation, checkpoints and logs excluded).
    """

    model: keras.Model
    history: dict[str, list[float]]
    steps_done: int
    run_dir: str
    initial_step: int = 0
    optimizer: keras.optimizers.Optimizer | None = None
    loop_seconds: float = 0.0

    @property
    def steps_per_second(self) -> float | None:
        """Training steps per second of this call's loop (``None`` if none ran)."""
        done = self.steps_done - self.initial_step
        return done / self.loop_seconds if done > 0 and self.loop_seconds > 0 else None

    def speed(self, batch_size: int) -> str:
        """This call's training speed as one line (:func:`format_speed`)."""
        return format_speed(self.steps_done - self.initial_step, self.loop_seconds,
                            batch_size)


# --------------------------------------------------------------------------------------
# One training per run directory
# --------------------------------------------------------------------------------------


def locks_run_dir(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a training function ``f(..., run_dir=..., strategy=...)`` (both
    keyword arguments) so that it runs holding :func:`run_dir_lock` on ``run_dir``.

    The strategy is selected first (a name becomes :func:`select_strategy`'s object,
    before any other TensorFlow op), so that only the chief locks.
    """
    @functools.wraps(function)
    def locked(*args: Any, run_dir: str | os.PathLike,
               strategy: str | tf.distribute.Strategy = "default", **kwargs: Any) -> Any:
        if isinstance(strategy, str):
            strategy = select_strategy(strategy)
        with run_dir_lock(run_dir, enabled=is_chief(strategy)):
            return function(*args, run_dir=run_dir, strategy=strategy, **kwargs)

    return locked


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes checkpoints, logs and the final model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(
            resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def _worker_dir(run_dir: str, strategy: tf.distribute.Strategy) -> str:
    """A per-worker scratch directory for non-chief writes (all workers must save)."""
    resolver = strategy.cluster_resolver
    return _join(run_dir, ".workers", f"{resolver.task_type}_{resolver.task_id}")


def checkpoint_step(run_dir: str | os.PathLike) -> int:
    """The step of the checkpoint :func:`train_model` would resume ``run_dir`` from (0:
    none)."""
    latest = tf.train.latest_checkpoint(_join(os.fspath(run_dir), "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def resume_seed(seed: int | None, run_dir: str | os.PathLike) -> int | None:
    """The input pipeline's seed for a run that starts or resumes in ``run_dir``.

    A fixed ``seed`` makes the data order and augmentation repeatable, so a resumed
    run seeded the same way would feed again the batches it has already trained on;
    resumed at step N, it is seeded by ``(seed, N)`` instead: still repeatable, and a
    stream it has not seen. ``None`` stays ``None`` (a fresh random stream).
    """
    if seed is None:
        return None
    step = checkpoint_step(run_dir)
    if step == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), step]).generate_state(1)[0] & 0x7FFFFFFF)


def resolve_init_checkpoint(path: str) -> str:
    """A checkpoint prefix from a run dir, a checkpoints dir or a prefix (the latest
    checkpoint of a directory).

    Raises:
        FileNotFoundError: ``path`` holds no checkpoint.
    """
    for candidate in (_join(path, "checkpoints"), path):
        if tf.io.gfile.isdir(candidate):
            latest = tf.train.latest_checkpoint(candidate)
            if latest:
                return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"init_checkpoint {path!r}: no checkpoint found")


_OPTIMIZER_WEIGHT = "optimizer/_trainable_variables/{}/.ATTRIBUTES/VARIABLE_VALUE"


def restore_model_weights(model: keras.Model, prefix: str) -> int:
    """Warm start: a runner checkpoint's model weights (not its optimiser state).

    ``tf.train.Checkpoint(model=model)`` alone does not reach the weights of layers a
    Keras 3 model keeps in Python lists (MSRRN's conv blocks and hidden layers): in
    the runner's checkpoints those weights are saved under the optimiser, as its
    ``_trainable_variables`` in the order of ``model.trainable_variables``. They are
    restored from there (checked one by one for shape), everything else through the
    model's own object graph.

    Args:
        model: the built model (the same architecture as the checkpoint's).
        prefix: a checkpoint prefix (``resolve_init_checkpoint``).

    Returns:
        The number of trainable weights restored through the optimiser's list.

    Raises:
        ValueError: another number of trainable weights, or a weight of another
            shape, naming the weight.
    """
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    reader = tf.train.load_checkpoint(prefix)
    names = reader.get_variable_to_shape_map()
    count = 0
    while _OPTIMIZER_WEIGHT.format(count) in names:
        count += 1
    variables = model.trainable_variables
    if not count:
        return 0
    if count != len(variables):
        raise ValueError(f"{prefix}: {count} trainable weights, the model has "
                         f"{len(variables)}")
    for i, variable in enumerate(variables):
        value = reader.get_tensor(_OPTIMIZER_WEIGHT.format(i))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{prefix}: trainable weight {i} "
                             f"({getattr(variable, 'path', variable.name)}) has shape "
                             f"{tuple(value.shape)} there, {tuple(variable.shape)} here")
        variable.assign(value)
    return count


@locks_run_dir
def train_model(
    *,
    build_model: Callable[[], keras.Model],
    build_optimizer: Callable[[], keras.optimizers.Optimizer],
    loss: LossSpec,
    train_dataset: DatasetSpec,
    steps: int,
    run_dir: str | os.PathLike,
    val_dataset: tf.data.Dataset | None = None,
    checkpoint_every: int = 500,
    eval_every: int | None = None,
    log_every: int = 50,
    strategy: str | tf.distribute.Strategy = "default",
    config: Any = None,
    val_metric: ValMetric | None = None,
    loss_weights: Mapping[str, float] | None = None,
    mixed_precision: bool | None = None,
    jit_compile: bool = False,
    steps_per_loop: int = 1,
    max_checkpoints: int = 3,
    init_checkpoint: str | None = None,
    save_final_model: bool = True,
    data_info: Any = None,
    verbose: bool = True,
) -> TrainResult:
    """Trains a model for ``steps`` global steps, resuming from ``run_dir`` if possible.

    Rerunning the same call with the same ``run_dir`` continues from the latest
    checkpoint (model weights, optimiser state and step counter) and stops at the
    same total ``steps``; a run killed at any moment (even SIGKILL) resumes from its
    last complete checkpoint. Checkpoints are written every ``checkpoint_every``
    steps and at the end. The data pipeline is not checkpointed: a resumed run draws
    fresh shuffled batches.

    Args:
        build_model: returns the (registered, serialisable) model; called inside
            ``strategy.scope()``. Models take ``{f"image_{s}": ...}`` and return
            ``{"landmarks": ..., "stage_k": ...}``.
        build_optimizer: returns the optimiser; called inside ``strategy.scope()``.
        loss: ``(y_true, y_pred) -> loss`` on ``"landmarks"``, or
            ``{output_key: fn}`` (see ``loss_weights``). A fn returns a scalar batch
            mean or per-example values with a leading batch axis.
        train_dataset: yields ``(inputs, targets)`` (or ``(inputs, targets, meta)``,
            meta is dropped) batched by the *global* batch size; or a function
            ``(tf.distribute.InputContext) -> dataset`` batched per replica
            (needed for ``multi_worker`` input sharding). Repeated indefinitely.
        steps: total number of training steps (not additional steps).
        run_dir: directory for checkpoints, logs, ``config.json``, ``model.keras``.
        val_dataset: optional finite validation dataset, same element structure.
        checkpoint_every: save a checkpoint every this many steps.
        eval_every: validate every this many steps (and at the end); ``None``:
            only at the end. Ignored without ``val_dataset``.
        log_every: log the mean loss since the last log and the learning rate to
            TensorBoard and the history every this many steps.
        strategy: a strategy or a name for :func:`select_strategy`.
        config: the resolved model config (dataclass or mapping), written to
            ``run_dir/config.json`` together with these runner settings.
        val_metric: ``(model, val_dataset) -> {name: value}`` (e.g. NME); reported
            as ``val_<name>``. Default: the mean loss on ``val_dataset``
            (``val_loss``).
        loss_weights: ``{output_key: weight}`` for a mapping ``loss``; missing
            keys weigh 1.
        mixed_precision: ``True``/``False`` sets the global policy with
            :func:`configure_precision` before building; ``None`` keeps it.
        jit_compile: XLA-compile the per-replica training step.
        steps_per_loop: training steps per ``tf.function`` call (raise it on TPU).
        max_checkpoints: number of checkpoints kept.
        init_checkpoint: warm start: model weights (only) from this run dir,
            checkpoint dir or prefix, used when ``run_dir`` has no checkpoint yet
            (:func:`restore_model_weights`).
        save_final_model: write ``run_dir/model.keras`` at the end.
        data_info: JSON-ready description of the training data (e.g.
            ``common.multidata.DataSpec.to_dict()``), written to ``config.json`` as
            ``"data"``.
        verbose: show a progress bar.

    Returns:
        A :class:`TrainResult`.

    The chief holds ``run_dir/run.lock`` meanwhile (:func:`run_dir_lock`): a second
    training on the same ``run_dir`` is refused.

    Raises:
        ValueError: for inconsistent arguments.
        RunDirLocked: another live process trains in ``run_dir``.
    """
    run_dir = os.fspath(run_dir)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if checkpoint_every < 1 or log_every < 1 or steps_per_loop < 1:
        raise ValueError("checkpoint_every, log_every and steps_per_loop must be >= 1")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    if isinstance(strategy, str):
        strategy = select_strategy(strategy)
    if mixed_precision is not None:
        configure_precision(mixed_precision)

    chief = is_chief(strategy)
    write_dir = run_dir if chief else _worker_dir(run_dir, strategy)
    tf.io.gfile.makedirs(write_dir)
    loss_computer = _LossComputer(loss, loss_weights)

    with strategy.scope():
        model, optimizer, step_var = _build_model_and_optimizer(
            build_model, build_optimizer, train_dataset)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
        manager = tf.train.CheckpointManager(checkpoint, _join(write_dir, "checkpoints"),
                                             max_to_keep=max_checkpoints)
        # Every worker restores from the chief's checkpoints (shared file system).
        latest = tf.train.latest_checkpoint(_join(run_dir, "checkpoints"))
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
        elif init_checkpoint:
            source = resolve_init_checkpoint(init_checkpoint)
            restore_model_weights(model, source)
            logger.info("warm start from %s", source)

    initial_step = int(step_var.numpy())
    settings = {
        "steps": steps, "checkpoint_every": checkpoint_every, "eval_every": eval_every,
        "log_every": log_every, "steps_per_loop": steps_per_loop,
        "strategy": type(strategy).__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "jit_compile": jit_compile, "init_checkpoint": init_checkpoint,
        "optimizer": _to_jsonable(keras.optimizers.serialize(optimizer)),
    }
    if chief:
        record = {"config": resolve_config(config), "training": settings,
                  "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
        if data_info is not None:
            record["data"] = _to_jsonable(data_info)
        atomic_write_text(_join(run_dir, "config.json"),
                          json.dumps(record, indent=2, sort_keys=True) + "\n")
    if latest:
        logger.info("resuming %s from step %d", run_dir, initial_step)

    history = _load_history(run_dir, initial_step)
    writer = (tf.summary.create_file_writer(_join(run_dir, "tensorboard")) if chief
              else tf.summary.create_noop_writer())

    train_loop = _make_train_loop(strategy, model, optimizer, loss_computer, step_var,
                                  jit_compile)

    @tf.function
    def eval_step(inputs, targets):
        return loss_computer.batch_sum(targets, model(inputs, training=False))

    def evaluate() -> dict[str, float]:
        if val_metric is not None:
            metrics = val_metric(model, val_dataset)
            return {k if k.startswith("val_") else f"val_{k}": float(v)
                    for k, v in metrics.items()}
        return {"val_loss": _mean_loss(strategy, eval_step, val_dataset)}

    step = initial_step
    progbar = None
    if verbose:
        progbar = keras.utils.Progbar(steps, stateless_metrics=[])  # show as-is
        progbar.update(min(step, steps))
    if step < steps:
        iterator = iter(_distribute(strategy, train_dataset, repeat=True))
    val_logs: dict[str, float] = {}
    window_sum, window_steps, window_seconds, loop_seconds = 0.0, 0, 0.0, 0.0
    # Wall time carries over resumes: the last logged value up to the checkpoint.
    wall_offset = (history.get("wall_seconds") or [0.0])[-1]
    wall_start = time.perf_counter()

    def wall_seconds() -> float:
        return wall_offset + time.perf_counter() - wall_start

    while step < steps:
        boundaries = [steps, _next_multiple(step, checkpoint_every),
                      _next_multiple(step, log_every), step + steps_per_loop]
        if val_dataset is not None and eval_every:
            boundaries.append(_next_multiple(step, eval_every))
        chunk = min(boundaries) - step
        chunk_start = time.perf_counter()
        chunk_loss = float(train_loop(iterator, tf.constant(chunk, tf.int32)))
        chunk_seconds = time.perf_counter() - chunk_start
        window_seconds += chunk_seconds
        loop_seconds += chunk_seconds
        step += chunk
        if not np.isfinite(chunk_loss):
            raise FloatingPointError(f"loss became {chunk_loss} at step {step}")
        window_sum += chunk_loss * chunk
        window_steps += chunk
        mean_loss = window_sum / window_steps  # mean since the last log
        learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if step % log_every == 0 or step == steps:
            steps_per_second = window_steps / max(window_seconds, 1e-9)
            _append(history, step=step, loss=mean_loss, learning_rate=learning_rate,
                    steps_per_second=steps_per_second, wall_seconds=wall_seconds())
            _write_scalars(writer, step, {"loss": mean_loss, "learning_rate": learning_rate,
                                          "steps_per_second": steps_per_second})
            window_sum, window_steps, window_seconds = 0.0, 0, 0.0
        if val_dataset is not None and (
                step == steps or (eval_every and step % eval_every == 0)):
            val_logs = evaluate()
            _append(history, val_step=step, val_wall_seconds=wall_seconds(), **val_logs)
            _write_scalars(writer, step, val_logs)
        if step % checkpoint_every == 0 or step == steps:
            # History first: a kill between the two writes then leaves a history that
            # runs ahead of the last checkpoint (trimmed on resume, _load_history), never
            # a checkpoint whose history is missing its earlier steps.
            if chief:
                atomic_write_text(_join(run_dir, "history.json"),
                                  json.dumps(history) + "\n")
            manager.save(checkpoint_number=step)
        if progbar is not None:
            progbar.update(step, [("loss", mean_loss), ("lr", learning_rate),
                                  *val_logs.items()])
    writer.flush()

    if save_final_model and (chief and (step > initial_step or not tf.io.gfile.exists(
            _join(run_dir, "model.keras")))):
        save_model_atomically(model, _join(run_dir, "model.keras"))
    if not chief:
        tf.io.gfile.rmtree(write_dir)
    return TrainResult(model=model, history=history, steps_done=step, run_dir=run_dir,
                       initial_step=initial_step, optimizer=optimizer,
                       loop_seconds=loop_seconds)


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


def format_speed(steps: int, loop_seconds: float, batch_size: int) -> str:
    """One line on training speed, e.g. ``2500 steps in 160 s of training loop: 15.6
    steps/s, 250 faces/s at batch 16``.

    Args:
        steps: steps run (``steps_done - initial_step``).
        loop_seconds: wall time of those steps (``TrainResult.loop_seconds``).
        batch_size: the global batch size.
    """
    if steps <= 0 or loop_seconds <= 0:
        return "no training steps run (already at the final step)"
    rate = steps / loop_seconds
    return (f"{steps} steps in {loop_seconds:.0f} s of training loop: {rate:.2f} steps/s, "
            f"{rate * batch_size:.0f} faces/s at batch {batch_size}")


def _write_scalars(writer, step: int, values: Mapping[str, float]) -> None:
    """Writes TensorBoard scalars with core TF ops.

    ``tf.summary.scalar`` needs the ``tensorboard`` package at write time; this writes
    the same event records (scalars plugin metadata) without it.
    """
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _append(history: dict[str, list[float]], **values: float) -> None:
    for key, value in values.items():
        history.setdefault(key, []).append(value)


def _load_history(run_dir: str, initial_step: int) -> dict[str, list[float]]:
    """The saved history up to ``initial_step`` (later entries were not checkpointed)."""
    path = _join(run_dir, "history.json")
    if initial_step == 0 or not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    history: dict[str, list[float]] = {}
    for step_key in ("step", "val_step"):
        keep = [i for i, s in enumerate(saved.get(step_key, [])) if s <= initial_step]
        prefix_keys = [k for k in saved
                       if (k.startswith("val_") if step_key == "val_step"
                           else not k.startswith("val_"))]
        for key in prefix_keys:
            history[key] = [saved[key][i] for i in keep if i < len(saved[key])]
    return history


def _mean_loss(strategy: tf.distribute.Strategy, eval_step: Callable,
               dataset: tf.data.Dataset) -> float:
    """Mean per-example loss over a finite dataset, evaluated on every replica.

    ``eval_step(inputs, targets) -> (loss_sum, count)`` runs on each replica.
    """
    total, count = 0.0, 0.0
    for inputs, targets in _distribute(strategy, dataset, repeat=False):
        sums, counts = strategy.run(eval_step, args=(inputs, targets))
        total += float(strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None))
        count += float(strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None))
    if count == 0:
        raise ValueError("val_dataset is empty")
    return total / count
