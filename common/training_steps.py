"""The training step of the runner: losses, distributed datasets, the compiled loop.

``_LossComputer`` (per-output losses reduced over the global batch), the dataset
distribution, the model / optimiser / step-counter builder and the compiled
``strategy.run``-inside-``tf.function`` loop that :func:`common.training.train_model`
runs, and :func:`make_training_steps`: that loop without a run folder (benchmarks).
``common.training`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
LossSpec = LossFn | Mapping[str, LossFn]
DatasetSpec = tf.data.Dataset | Callable[[tf.distribute.InputContext], tf.data.Dataset]


def _strip_to_pair(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Drops a third (metadata) element so only ``(inputs, targets)`` is distributed."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise ValueError(
            "datasets must yield (inputs, targets) or (inputs, targets, meta); "
            f"got element_spec {spec}")
    if len(spec) == 2:
        return dataset
    return dataset.map(lambda inputs, targets, *rest: (inputs, targets))


def _distribute(strategy: tf.distribute.Strategy, dataset: DatasetSpec,
                repeat: bool) -> tf.distribute.DistributedDataset:
    """Distributes a dataset or a ``(input_context) -> dataset`` function."""
    def prepare(ds: tf.data.Dataset) -> tf.data.Dataset:
        ds = _strip_to_pair(ds)
        return ds.repeat() if repeat else ds

    if isinstance(dataset, tf.data.Dataset):
        return strategy.experimental_distribute_dataset(prepare(dataset))
    if callable(dataset):
        return strategy.distribute_datasets_from_function(
            lambda context: prepare(dataset(context)))
    raise TypeError(f"expected a tf.data.Dataset or a callable, got {type(dataset)}")


def _build_once(model: keras.Model, dataset: DatasetSpec) -> None:
    """Builds a model that has no variables yet by calling it on a dummy batch."""
    if model.built and model.weights:
        return
    if isinstance(dataset, tf.data.Dataset):
        spec = dataset.element_spec[0]
    else:
        spec = dataset(tf.distribute.InputContext()).element_spec[0]
    dummy = tf.nest.map_structure(
        lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), spec)
    model(dummy, training=False)


def _unreduced(fn: LossFn) -> LossFn:
    """A Keras ``Loss`` object as its per-example (``reduction="none"``) twin.

    Keras 3 ``Loss`` objects already divide their batch mean by the number of
    replicas inside a replica context; evaluating them per example and averaging
    over the global batch here keeps one reduction rule for every kind of loss.
    """
    if isinstance(fn, keras.losses.Loss) and fn.reduction not in (None, "none"):
        return type(fn).from_config({**fn.get_config(), "reduction": "none"})
    return fn


class _LossComputer:
    """Weighted sum of per-output losses, reduced for distributed training.

    ``loss`` is one callable ``(y_true, y_pred)`` applied to the ``"landmarks"``
    output, or a mapping ``{output_key: callable}``. An output key absent from the
    targets is supervised with ``targets["landmarks"]`` (cascade stages share the
    final ground truth). A callable may return a tensor with a leading batch axis
    (averaged over the other axes, then over the *global* batch) or a scalar (taken
    as the mean over the replica's batch). Keras ``Loss`` objects are evaluated per
    example (their batch reduction is replaced by the global-batch mean).
    """

    def __init__(self, loss: LossSpec, loss_weights: Mapping[str, float] | None):
        losses = dict(loss) if isinstance(loss, Mapping) else {"landmarks": loss}
        self.losses = {key: _unreduced(fn) for key, fn in losses.items()}
        self.weights = dict(loss_weights or {})
        unknown = set(self.weights) - set(self.losses)
        if unknown:
            raise ValueError(f"loss_weights keys {sorted(unknown)} have no loss")

    def _terms(self, targets, outputs):
        if not isinstance(outputs, Mapping):
            outputs = {"landmarks": outputs}
        if not isinstance(targets, Mapping):
            targets = {"landmarks": targets}
        for key, fn in self.losses.items():
            if key not in outputs:
                raise KeyError(f"loss for output {key!r} but the model returns "
                               f"{sorted(outputs)}")
            y_true = targets[key] if key in targets else targets["landmarks"]
            y_pred = tf.cast(outputs[key], tf.float32)
            value = tf.cast(fn(tf.cast(y_true, tf.float32), y_pred), tf.float32)
            yield self.weights.get(key, 1.0), value, y_pred

    def replica_mean(self, targets, outputs) -> tf.Tensor:
        """This replica's share of the global-batch mean loss (sums to the mean)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        total = tf.constant(0.0)
        for weight, value, _ in self._terms(targets, outputs):
            if value.shape.rank == 0:
                term = value / replicas
            else:
                per_example = tf.reduce_mean(value, axis=list(range(1, value.shape.rank)))
                term = tf.nn.compute_average_loss(per_example)
            total += weight * term
        return total

    def batch_sum(self, targets, outputs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(sum over the batch of the per-example loss, batch size)``."""
        total = tf.constant(0.0)
        count = tf.constant(0.0)
        for weight, value, y_pred in self._terms(targets, outputs):
            batch = tf.cast(tf.shape(y_pred)[0], tf.float32)
            if value.shape.rank == 0:
                term = value * batch
            else:
                term = tf.reduce_sum(
                    tf.reduce_mean(value, axis=list(range(1, value.shape.rank))))
            total += weight * term
            count = batch
        return total, count


def _build_model_and_optimizer(
        build_model: Callable[[], keras.Model],
        build_optimizer: Callable[[], keras.optimizers.Optimizer],
        dataset: DatasetSpec) -> tuple[keras.Model, keras.optimizers.Optimizer, tf.Variable]:
    """Builds model, optimiser (with its slots) and step counter; call under a scope."""
    model = build_model()
    _build_once(model, dataset)
    optimizer = build_optimizer()
    if (keras.mixed_precision.global_policy().compute_dtype == "float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Slots exist before a restore, so checkpointed optimiser state is loaded at once.
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return model, optimizer, step_var


def _make_train_loop(strategy: tf.distribute.Strategy, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, loss_computer: _LossComputer,
                     step_var: tf.Variable, jit_compile: bool) -> Callable:
    """``train_loop(iterator, num_steps) -> mean loss``: runs steps on every replica."""
    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            value = loss_computer.replica_mean(targets, outputs)
            if model.losses:
                value += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(x, tf.float32) for x in model.losses]))
            scaled = optimizer.scale_loss(value)
        grads = tape.gradient(scaled, model.trainable_variables)
        # Keras optimisers all-reduce (sum) the replicas' gradients here.
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value

    if jit_compile:  # the replica step only: iterators cannot be XLA-compiled
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            inputs, targets = next(iterator)
            per_replica = strategy.run(replica_step, args=(inputs, targets))
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        step_var.assign_add(tf.cast(num_steps, tf.int64))
        return total / tf.cast(num_steps, tf.float32)

    return train_loop


def make_training_steps(
    build_model: Callable[[], keras.Model],
    build_optimizer: Callable[[], keras.optimizers.Optimizer],
    loss: LossSpec,
    dataset: DatasetSpec,
    *,
    loss_weights: Mapping[str, float] | None = None,
    jit_compile: bool = False,
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[tf.Tensor | int], tf.Tensor]:
    """The compiled training loop of :func:`train_model`, without its run folder.

    Builds the model, the optimiser (with its slots) and the step counter exactly as
    ``train_model`` does, and returns its compiled loop over a repeated ``dataset``:
    the same forward pass, losses (``loss``, ``loss_weights``, the model's own
    regularisation losses, scaled by the global batch), gradients and update, but no
    checkpoints, logs or evaluation. For measuring the training step
    (``experiments.bench_speed``).

    Args:
        build_model: returns the model (called once, under the caller's device and
            strategy scope).
        build_optimizer: returns its optimiser.
        loss: as in ``train_model``.
        dataset: ``(inputs, targets)`` batches (or a per-replica function), repeated.
        loss_weights: as in ``train_model``.
        jit_compile: XLA-compile the replica step.
        strategy: the distribution strategy (default: the current one).

    Returns:
        ``run_steps(num_steps) -> mean loss`` (a scalar tensor): runs ``num_steps``
        steps on the next batches. Pass a ``tf.constant`` to avoid retracing.
    """
    strategy = strategy or tf.distribute.get_strategy()
    model, optimizer, step_var = _build_model_and_optimizer(build_model, build_optimizer,
                                                            dataset)
    loop = _make_train_loop(strategy, model, optimizer, _LossComputer(loss, loss_weights),
                            step_var, jit_compile=jit_compile)
    iterator = iter(_distribute(strategy, dataset, repeat=True))

    def run_steps(num_steps: tf.Tensor | int) -> tf.Tensor:
        return loop(iterator, num_steps)

    return run_steps
