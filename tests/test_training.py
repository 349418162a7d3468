"""Tests of the shared training runner (common/training.py) on a tiny model."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also run as a script by the SIGKILL test
    sys.path.insert(0, str(REPO_ROOT))

from common import training  # noqa: E402 (after the sys.path entry above)

SIZE = 32
NUM_LANDMARKS = 5


@keras.saving.register_keras_serializable(package="common_tests")
class TinyTrainNet(keras.Model):
    """A few conv filters: ``{"image_32"}`` -> ``{"landmarks": [N, 5, 2]}``."""

    def __init__(self, size: int = SIZE, num_landmarks: int = NUM_LANDMARKS,
                 filters: int = 4, **kwargs):
        key = f"image_{size}"
        inputs = {key: keras.Input((size, size, 3), name=key)}
        x = keras.layers.Rescaling(1.0 / 255.0)(inputs[key])
        x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(num_landmarks * 2, dtype="float32")(x)
        landmarks = keras.layers.Reshape((num_landmarks, 2), dtype="float32")(x)
        super().__init__(inputs=inputs, outputs={"landmarks": landmarks}, **kwargs)
        self.size = size
        self.num_landmarks = num_landmarks
        self.filters = filters

    def get_config(self):
        return {"size": self.size, "num_landmarks": self.num_landmarks,
                "filters": self.filters, "name": self.name, "trainable": self.trainable}


def toy_arrays(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat grey images; the landmarks move linearly with the grey level (learnable)."""
    rng = np.random.default_rng(seed)
    grey = rng.uniform(0, 255, size=(n, 1, 1, 1)).astype(np.float32)
    images = np.broadcast_to(grey, (n, SIZE, SIZE, 3)).copy()
    base = rng.uniform(0.2, 0.8, size=(1, NUM_LANDMARKS, 2)).astype(np.float32)
    landmarks = base + 0.3 * (grey.reshape(n, 1, 1) / 255.0 - 0.5)
    return images, landmarks.astype(np.float32)


def toy_dataset(batch_size: int = 8, seed: int = 0, n: int = 64) -> tf.data.Dataset:
    images, landmarks = toy_arrays(n, seed)
    ds = tf.data.Dataset.from_tensor_slices(
        ({f"image_{SIZE}": images}, {"landmarks": landmarks}))
    return ds.shuffle(n, seed=seed).batch(batch_size, drop_remainder=True)


def train(run_dir, steps, **kwargs):
    defaults = {
        "build_model": lambda: TinyTrainNet(),
        "build_optimizer": lambda: keras.optimizers.Adam(1e-2),
        "loss": keras.losses.MeanSquaredError(),
        "train_dataset": toy_dataset(),
        "steps": steps, "run_dir": str(run_dir), "checkpoint_every": 3, "log_every": 1,
        "verbose": False}
    defaults.update(kwargs)
    return training.train_model(**defaults)


def test_step_decay_is_a_staircase():
    schedule = training.step_decay(5e-3, 0.9, 100)
    values = [float(schedule(s)) for s in (0, 99, 100, 250)]
    np.testing.assert_allclose(values, [5e-3, 5e-3, 4.5e-3, 5e-3 * 0.81], rtol=1e-6)
    assert isinstance(keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)),
        keras.optimizers.schedules.ExponentialDecay)


def test_select_strategy_names(monkeypatch):
    assert training.select_strategy("default") is tf.distribute.get_strategy()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.select_strategy("multi_worker")
    with pytest.raises(ValueError, match="unknown strategy 'gpu'"):
        training.select_strategy("gpu")


def test_configure_precision_sets_and_resets_policy():
    try:
        assert training.configure_precision(True).name == "mixed_float16"
        assert keras.mixed_precision.global_policy().compute_dtype == "float16"
    finally:
        assert training.configure_precision(False).name == "float32"


def test_loss_computer_scalar_and_per_example_agree():
    y_true = tf.random.uniform((4, NUM_LANDMARKS, 2), seed=1)
    y_pred = tf.random.uniform((4, NUM_LANDMARKS, 2), seed=2)
    expected = float(tf.reduce_mean(tf.square(y_true - y_pred)))
    scalar = training._LossComputer(keras.losses.MeanSquaredError(), None)
    per_example = training._LossComputer(
        {"landmarks": keras.losses.mean_squared_error}, {"landmarks": 2.0})
    outputs = {"landmarks": y_pred}
    targets = {"landmarks": y_true}
    assert float(scalar.replica_mean(targets, outputs)) == pytest.approx(expected)
    assert float(per_example.replica_mean(targets, outputs)) == pytest.approx(2 * expected)
    total, count = scalar.batch_sum(targets, outputs)
    assert float(total / count) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no loss"):
        training._LossComputer(keras.losses.MeanSquaredError(), {"stage_1": 1.0})


def test_trains_logs_and_saves(tmp_path):
    result = train(tmp_path, 40, checkpoint_every=20,
                   config={"filters": 4, "sizes": (SIZE,), "path": tmp_path})
    losses = result.history["loss"]
    assert result.steps_done == 40 and len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])

    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["values"] == {"filters": 4, "sizes": [SIZE],
                                          "path": str(tmp_path)}
    assert record["training"]["steps"] == 40
    assert record["training"]["num_replicas"] == 1
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.index")) == [
        "ckpt-20.index", "ckpt-40.index"]

    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, TinyTrainNet)
    images, _ = toy_arrays(4)
    inputs = {f"image_{SIZE}": images}
    np.testing.assert_allclose(loaded(inputs)["landmarks"],
                               result.model(inputs)["landmarks"], atol=1e-6)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_resume_continues_to_the_same_total(tmp_path):
    first = train(tmp_path, 6)
    assert first.steps_done == 6 and first.initial_step == 0
    assert int(first.optimizer.iterations) == 6

    # A seeded pipeline of the resumed run gets a new, repeatable seed.
    assert training.checkpoint_step(tmp_path) == 6
    assert training.checkpoint_step(tmp_path / "elsewhere") == 0
    assert training.resume_seed(3, tmp_path / "elsewhere") == 3
    assert training.resume_seed(3, tmp_path) == training.resume_seed(3, tmp_path) != 3
    assert training.resume_seed(3, tmp_path) != training.resume_seed(4, tmp_path)
    assert training.resume_seed(None, tmp_path) is None

    again = train(tmp_path, 6)  # already done: restores, runs no step
    assert again.initial_step == 6 and again.steps_done == 6
    for a, b in zip(first.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    second = train(tmp_path, 10)
    assert second.initial_step == 6 and second.steps_done == 10
    assert int(second.optimizer.iterations) == 10
    ckpt = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    assert ckpt.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 10
    # The history of the first run was restored and extended.
    assert second.history["step"] == list(range(1, 11))
    assert second.history["loss"][:6] == first.history["loss"]
    # Speed and wall time are logged with every step; the wall time carries over.
    assert again.steps_per_second is None and again.loop_seconds == 0
    assert len(second.history["steps_per_second"]) == 10
    assert all(rate > 0 for rate in second.history["steps_per_second"])
    wall = second.history["wall_seconds"]
    assert wall[:6] == first.history["wall_seconds"] and wall == sorted(wall)
    assert second.loop_seconds > 0 and second.loop_seconds < wall[-1]
    assert second.steps_per_second == pytest.approx(4 / second.loop_seconds)


def test_format_speed():
    assert training.format_speed(2500, 160.0, 16) == (
        "2500 steps in 160 s of training loop: 15.62 steps/s, 250 faces/s at batch 16")
    assert "no training steps" in training.format_speed(0, 0.0, 16)


def test_validation_and_input_function(tmp_path):
    contexts = []

    def dataset_fn(context):
        contexts.append(context)
        return toy_dataset(batch_size=context.get_per_replica_batch_size(8))

    seen = []

    def val_metric(model, dataset):
        seen.append(model)
        return {"nme": 0.5}

    result = train(tmp_path / "a", 4, train_dataset=dataset_fn,
                   val_dataset=toy_dataset(n=16, seed=1), eval_every=2)
    assert contexts and result.history["val_step"] == [2, 4]
    val_wall = result.history["val_wall_seconds"]
    assert len(val_wall) == 2 and 0 < val_wall[0] < val_wall[1]
    assert len(result.history["val_loss"]) == 2
    assert result.history["val_loss"][-1] > 0

    result = train(tmp_path / "b", 2, val_dataset=toy_dataset(n=16, seed=1),
                   val_metric=val_metric)
    assert result.history["val_nme"] == [0.5] and seen == [result.model]


def test_warm_start_from_another_run(tmp_path):
    source = train(tmp_path / "source", 3)
    warm = train(tmp_path / "warm", 0, init_checkpoint=str(tmp_path / "source"))
    for a, b in zip(source.model.get_weights(), warm.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b)
    assert warm.initial_step == 0


def test_mixed_precision_wraps_optimizer(tmp_path):
    try:
        result = train(tmp_path, 2, mixed_precision=True)
        assert result.model.layers[2].compute_dtype == "float16"
        record = json.loads((tmp_path / "config.json").read_text())
        assert record["training"]["dtype_policy"] == "mixed_float16"
        assert record["training"]["optimizer"]["class_name"] == "LossScaleOptimizer"
    finally:
        training.configure_precision(False)


@pytest.mark.slow
def test_resumes_after_sigkill(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, __file__, "forever", str(tmp_path)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if tf.train.latest_checkpoint(str(tmp_path / "checkpoints")):
                time.sleep(0.5)  # let it get further, possibly mid-save
                break
            assert process.poll() is None, "training subprocess exited early"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint written within 120 s")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    saved = int(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).split("-")[-1])
    assert 0 < saved < 100_000
    resumed = train(tmp_path, saved + 2, checkpoint_every=2)
    assert resumed.initial_step == saved and resumed.steps_done == saved + 2


@pytest.mark.slow
def test_mirrored_two_replicas_match_one_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, "mirrored", str(tmp_path)], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def _mirrored_main(run_dir: str) -> None:
    """Two logical CPUs: a 2-replica run must follow the 1-device run step by step."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategies = {"one": tf.distribute.get_strategy(),
                  "two": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    for loss in (keras.losses.MeanSquaredError(), keras.losses.mean_squared_error,
                 lambda y, p: tf.reduce_mean(tf.square(y - p))):
        results = {}
        for name, strategy in strategies.items():
            keras.utils.set_random_seed(0)
            results[name] = train(
                os.path.join(run_dir, f"{name}-{id(loss)}"), 6,
                strategy=strategy, loss=loss, val_dataset=toy_dataset(n=16, seed=1),
                eval_every=3,  # SGD, unlike Adam, shows a wrongly scaled gradient
                build_optimizer=lambda: keras.optimizers.SGD(0.5))
        one, two = results["one"], results["two"]
        assert two.model.distribute_strategy.num_replicas_in_sync == 2
        np.testing.assert_allclose(two.history["loss"], one.history["loss"], rtol=1e-4)
        np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"],
                                   rtol=1e-4)
        for a, b in zip(two.model.get_weights(), one.model.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _mirrored_main(sys.argv[2])
    else:  # test_resumes_after_sigkill: train "forever" until killed
        train(sys.argv[2], 100_000, checkpoint_every=2, log_every=100)


_HOLD_LOCK = """
import sys, time
from common.training import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


def _lock_record(run_dir):
    return json.loads((pathlib.Path(run_dir) / training.LOCK_FILE).read_text())


def test_second_training_on_a_run_dir_is_refused_until_the_first_is_gone(tmp_path):
    """Two processes on one run directory: the second is refused, then takes the dead
    first's lock over."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        record = _lock_record(run_dir)
        assert record["pid"] == holder.pid and record["host"]
        with pytest.raises(training.RunDirLocked,
                           match=rf"in use by another training \(pid {holder.pid} on "):
            train(run_dir, 3)
        assert not (run_dir / "checkpoints").exists()
        # The command line says so in one line and exits non-zero.
        cli = subprocess.run([sys.executable, "-m", "ccnn_tf.train", f"--run_dir={run_dir}",
                              "--data=/nonexistent", "--preset=tiny"], check=False, env=env,
                             capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
        assert cli.returncode == 1
        assert f"error: {run_dir} is in use by another training (pid {holder.pid}" in (
            cli.stderr)
        assert "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait()
    result = train(run_dir, 3)  # SIGKILLed holder: its lock is stale and taken over
    assert result.steps_done == 3
    assert not (run_dir / training.LOCK_FILE).exists()  # released at the end


def test_stale_and_foreign_locks(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = run_dir / training.LOCK_FILE
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with training.run_dir_lock(run_dir):
        assert _lock_record(run_dir)["pid"] == os.getpid()
        with training.run_dir_lock(run_dir):  # nested in one process: allowed
            pass
        assert lock.exists()
    assert not lock.exists()
    # A process on another host cannot be checked: refused, never taken over.
    lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere.example"}))
    with (pytest.raises(training.RunDirLocked, match=r"on elsewhere.example.*delete .*lock"),
          training.run_dir_lock(run_dir)):
        pass
    assert _lock_record(run_dir)["host"] == "elsewhere.example"
