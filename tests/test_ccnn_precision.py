"""Tests of the CCNN cascade in reduced precision: mixed_float16 and the int8 TFLite."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ccnn_tf import export as ccnn_export
from ccnn_tf.config import CCNNConfig
from ccnn_tf.model import build_ccnn
from common import export as common_export


def _images(config: CCNNConfig, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.input_size
    return {f"image_{size}": rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)}


@pytest.fixture
def mixed_float16():
    """Sets the global ``mixed_float16`` policy for one test and restores the old one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_mixed_precision_forward_and_gradient_step(mixed_float16):
    config = CCNNConfig.preset("tiny", dropout=0.0)
    keras.utils.set_random_seed(0)
    model = build_ccnn(config, network_outputs=True)
    network = model.stage_layer(2).networks[0]
    assert network.get_layer(f"{network.name}_conv1").compute_dtype == "float16"
    assert {v.dtype for v in model.weights} == {"float32"}  # variables stay float32
    reference = ccnn_export.float32_cascade(model)  # same weights, float32 compute
    assert reference is not model
    assert reference.stage_layer(2).networks[0].layers[-1].compute_dtype == "float32"

    x = _images(config, 4)
    outputs = model(x, training=False)
    expected = reference(x, training=False)
    assert set(outputs) == set(expected)
    for key, value in outputs.items():
        # Coordinates leave the model (and every stage's window geometry) in float32.
        assert value.dtype == tf.float32, key
        assert np.all(np.isfinite(value)), key
    # float16 networks: ~1e-3 relative. Compared stage by stage on the same anchors
    # inside the face: an untrained cascade on noise places later windows off the
    # image, where a crop of a few pixels and zeros makes any rounding chaotic.
    np.testing.assert_allclose(outputs["stage_1"], expected["stage_1"], atol=5e-3)
    images = x[f"image_{config.input_size}"]
    anchors = np.random.default_rng(1).uniform(0.3, 0.7, (4, 5, 2)).astype(np.float32)
    for k in (2, 3):
        points, estimates = model.stage_layer(k)(images, anchors, training=False)
        want_points, want_estimates = reference.stage_layer(k)(images, anchors, training=False)
        assert points.dtype == estimates.dtype == tf.float32
        np.testing.assert_allclose(points, want_points, atol=5e-3, err_msg=f"stage {k}")
        np.testing.assert_allclose(estimates, want_estimates, atol=5e-3,
                                   err_msg=f"stage {k}")

    # One loss-scaled step, as common.training does under this policy.
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01))
    targets = np.full((4, 5, 2), 0.5, np.float32)
    before = [w.copy() for w in model.get_weights()]
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.add_n([tf.reduce_mean(tf.square(out[f"stage_{k}"] - targets))
                         for k in (1, 2, 3)])
        loss += tf.add_n([tf.cast(value, tf.float32) for value in model.losses])
        scaled = optimizer.scale_loss(loss)
    assert loss.dtype == tf.float32 and np.isfinite(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    after = model.get_weights()
    assert {w.dtype for w in after} == {np.dtype("float32")}
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(old, new) for old, new in zip(before, after))


def test_export_of_a_mixed_precision_cascade_is_float32(mixed_float16):
    model = build_ccnn(CCNNConfig.preset("tiny"))
    copy = ccnn_export.float32_cascade(model)
    assert copy is not model
    assert copy.stage_layer(3).networks[0].layers[-1].compute_dtype == "float32"
    for old, new in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(old, new)
    keras.mixed_precision.set_global_policy("float32")
    float_model = build_ccnn(CCNNConfig.preset("tiny"))
    assert ccnn_export.float32_cascade(float_model) is float_model


def _op_dtypes(path: str) -> dict[str, set[str]]:
    interpreter = common_export._interpreter(path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    kinds: dict[str, set[str]] = {}
    for op in interpreter._get_ops_details():
        kinds.setdefault(op["op_name"], set()).update(
            np.dtype(tensors[i]["dtype"]).name for i in op["outputs"])
    return kinds


@pytest.mark.slow
def test_int8_networks_with_degenerate_calibration_ranges(tmp_path):
    # With the output layers zeroed every network predicts its window centre: the
    # output activations (and, for windows off the noise image, crop statistics) are
    # constant over the calibration data. Such zero-width ranges made the full-int8
    # cascade abort in TFLite's SQUARED_DIFFERENCE (ccnn_tf.export docstring); the
    # int8 variant keeps that arithmetic in float32 and must run, in a fresh process.
    keras.utils.set_random_seed(0)
    config = CCNNConfig.preset("tiny", weight_decay=0.0)
    model = build_ccnn(config)
    for k in (1, 2, 3):
        for network in model.stage_layer(k).networks:
            kernel = network.layers[-1].kernel
            kernel.assign(tf.zeros_like(kernel))
    calibration = ccnn_export.calibration_crops(model, None, count=8)
    assert calibration.shape == (8, config.input_size, config.input_size, 3)
    path = ccnn_export.export_tflite(model, str(tmp_path / "int8.tflite"), quantize=True,
                                     representative_data=calibration)
    kinds = _op_dtypes(path)
    assert kinds["CONV_2D"] == {"int8"} and kinds["MAX_POOL_2D"] == {"int8"}
    assert "QUANTIZE" in kinds and "DEQUANTIZE" in kinds
    for geometry_op in ("MUL", "ADD", "SUB", "BATCH_MATMUL", "MEAN"):
        assert kinds.get(geometry_op, {"float32"}) <= {"float32", "bool"}, geometry_op

    images, boxes = ccnn_export.synthetic_check_faces(4)
    diffs = common_export.check_tflite_parity(path, model, images, boxes,
                                              margin=config.margin, atol=np.inf)
    assert diffs["num_faces"] == 4
    # Constant outputs: every stage's point is its windows' centre, exactly in int8 up
    # to the quantisation of 0.5.
    assert diffs["cropped/stage_1"] < 1e-2, diffs
    with pytest.raises(ValueError, match="quantize=True"):
        ccnn_export.export_tflite(model, str(tmp_path / "x.tflite"),
                                  representative_data=calibration)
