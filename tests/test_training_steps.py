"""``common.training.make_training_steps``: the runner's own step, without a run folder."""

import keras
import numpy as np
import tensorflow as tf

from common import training


def _tiny_net() -> keras.Model:
    inputs = {"image_16": keras.Input((16, 16, 3), name="image_16")}
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs["image_16"])
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu",
                            kernel_regularizer=keras.regularizers.L2(1e-3))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10)(x)
    return keras.Model(inputs, {"landmarks": keras.layers.Reshape((5, 2))(x)})


def _fixed_batch_dataset() -> tf.data.Dataset:
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    landmarks = rng.uniform(0.2, 0.8, (8, 5, 2)).astype(np.float32)
    return tf.data.Dataset.from_tensors(({"image_16": images}, {"landmarks": landmarks}))


def test_training_steps_match_train_model(tmp_path):
    keras.utils.set_random_seed(0)
    initial = _tiny_net().get_weights()

    def build_model():
        model = _tiny_net()
        model.set_weights(initial)
        return model

    def build_optimizer():
        return keras.optimizers.SGD(0.05, momentum=0.9)

    loss = keras.losses.MeanSquaredError()
    result = training.train_model(
        build_model=build_model, build_optimizer=build_optimizer, loss=loss,
        train_dataset=_fixed_batch_dataset().repeat(), steps=3, run_dir=str(tmp_path),
        checkpoint_every=100, log_every=1, save_final_model=False, verbose=False)

    built = []
    run_steps = training.make_training_steps(
        lambda: built.append(build_model()) or built[-1], build_optimizer, loss,
        _fixed_batch_dataset())
    losses = [float(run_steps(tf.constant(1))) for _ in range(3)]
    np.testing.assert_allclose(losses, result.history["loss"], rtol=1e-5)
    for ours, theirs in zip(built[0].get_weights(), result.model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(built[0].get_weights()[-1], initial[-1])  # it did train
