"""Tests of the CCNN configuration, networks, stages and cascade."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ccnn_tf import windows as win
from ccnn_tf.config import CCNNConfig
from ccnn_tf.model import (
    CCNNCascade,
    CCNNRefineStage,
    PerImageStandardization,
    average_duplicate_points,
    averaging_matrix,
    build_ccnn,
    build_lightweight_cnn,
    network_targets,
    transfer_stage_weights,
)
from ccnn_tf.summary import PAPER_TOTAL_PARAMETERS, format_table, parameter_table
from common.confidence import confidence_from_disagreement, shape_disagreement
from common.schemes import CUHK_5

# The exact count of our reconstruction of the paper's networks; a change to the
# layer widths must show up here.
EXPECTED_TOTAL_PARAMETERS = 643_920
EXPECTED_PER_NETWORK = {"F1": 92_576, "EN1": 92_052, "NM1": 92_052, "refine": 18_362}


def _images(config: CCNNConfig, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.input_size
    return {f"image_{size}": rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny_config() -> CCNNConfig:
    return CCNNConfig.preset("tiny")


# --- Config --------------------------------------------------------------------------

def test_box_perturbation_on_in_quick_off_in_paper():
    from ccnn_tf.training import augment_config
    from common.box_perturbation import DETECTOR_RANGES_CUHK5

    quick = CCNNConfig.preset("quick")
    assert quick.augment.box_ranges == DETECTOR_RANGES_CUHK5
    assert not quick.augment.box_ranges.is_identity
    ranges = augment_config(quick).box_ranges
    assert (ranges.shift_x, ranges.shift_y, ranges.scale) == (
        (-0.12, 0.10), (-0.14, 0.05), (0.95, 1.57))
    for name in ("paper", "tiny"):
        assert augment_config(CCNNConfig.preset(name)).box_ranges.is_identity
    assert CCNNConfig.preset("paper") == CCNNConfig()
    # The fields switch it off (e.g. compare_real --config_json) and only train.
    off = quick.replace(box_shift_x=[0, 0], box_shift_y=[0, 0], box_scale_range=[1, 1])
    assert augment_config(off).box_ranges.is_identity
    training_only = set(off.flat_dict()) - set(off.structural_dict())
    assert {"box_shift_x", "box_shift_y", "box_scale_range",
            "box_aspect_range"} <= training_only
    with pytest.raises(ValueError, match="shift_y"):
        CCNNConfig(box_shift_y=(0.1, -0.1))


def test_config_of_an_earlier_run_loads_without_box_perturbation():
    values = json.loads(json.dumps(CCNNConfig().flat_dict()))  # the old flat form
    for name in ("box_shift_x", "box_shift_y", "box_scale_range", "box_aspect_range"):
        del values[name]
    config = CCNNConfig.from_dict(values)
    assert config == CCNNConfig() and config.augment.box_ranges.is_identity


def test_config_round_trip_and_replace():
    config = CCNNConfig()
    restored = CCNNConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    changed = config.replace(num_stages=2, stage2_half_sizes=[[0.1, 0.1], [0.2, 0.2]])
    assert changed.num_stages == 2 and changed.stage2_half_sizes == ((0.1, 0.1), (0.2, 0.2))
    assert config.num_stages == 3  # frozen dataclass, copy on replace
    with pytest.raises(ValueError, match="unknown"):
        CCNNConfig.from_dict({"no_such_field": 1})
    with pytest.raises(ValueError, match="num_stages"):
        config.replace(num_stages=4)
    assert CCNNConfig.preset("tiny").stage2_half_sizes == config.stage2_half_sizes


def test_config_paper_values():
    config = CCNNConfig()
    assert config.stage2_half_sizes == ((0.16, 0.16), (0.18, 0.18))  # formula 5
    assert config.stage3_half_sizes == ((0.08, 0.08), (0.09, 0.09))  # section 3.1.3
    assert config.stage2_shake_stddev == pytest.approx(np.sqrt(1e-4))  # N(0, 1e-4)
    assert (config.dropout, config.learning_rate) == (0.25, 5e-3)
    assert (config.lr_decay_rate, config.lr_decay_steps) == (0.9, 100)
    assert config.refine_input_size == 15
    # 3 rotations x flip turn 10,000 faces into 60,000 (section 4.1).
    assert len(config.rotation_angles_deg) * (2 if config.flip else 1) * 10_000 == 60_000


def test_optimizer_choice():
    """SGD with momentum by default (section 3.3); Adam on request, both with the
    staircase decay; an unknown optimizer is refused."""
    from ccnn_tf.training import build_optimizer

    sgd = build_optimizer(CCNNConfig().replace(momentum=0.9))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    adam = build_optimizer(CCNNConfig().replace(optimizer="adam", learning_rate=1e-3,
                                                lr_decay_steps=10))
    assert isinstance(adam, keras.optimizers.Adam)
    schedule = adam.learning_rate if callable(adam.learning_rate) else adam._learning_rate
    assert float(schedule(25)) == pytest.approx(1e-3 * 0.9 ** 2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        CCNNConfig().replace(optimizer="rmsprop")


# --- Parameter count -------------------------------------------------------------------

def test_parameter_count_matches_the_paper():
    rows = parameter_table(CCNNConfig())
    assert len(rows) == 23
    assert [r["stage"] for r in rows] == [1] * 3 + [2] * 10 + [3] * 10
    assert [r["network"] for r in rows[:5]] == ["F1", "EN1", "NM1", "LE21", "LE22"]
    assert rows[-1]["network"] == "RM32"
    assert [r["outputs"] for r in rows[:3]] == [10, 6, 6]  # "10d-fc2, 6d-fc2, 6d-fc2"
    assert all(r["outputs"] == 2 and r["input"] == "15x15x3" for r in rows[3:])
    for r in rows:
        key = r["network"] if r["stage"] == 1 else "refine"
        assert r["parameters"] == EXPECTED_PER_NETWORK[key], r
    total = sum(r["parameters"] for r in rows)
    assert abs(total - PAPER_TOTAL_PARAMETERS) <= 0.10 * PAPER_TOTAL_PARAMETERS
    assert total == EXPECTED_TOTAL_PARAMETERS
    text = format_table(rows)
    assert "643,920 parameters" in text and "2.46 MiB" in text


def test_lightweight_cnn_structure():
    net = build_lightweight_cnn(39, 10, (32, 64, 64), (5, 3, 3), 130, name="F1")
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds.count("Conv2D") == 3 and kinds.count("MaxPooling2D") == 3
    assert kinds.count("Dense") == 2 and kinds.count("Dropout") == 1
    assert kinds[1] == "PerImageStandardization"
    assert net.output_shape == (None, 10)
    assert len(net.losses) == 5  # L2 on every kernel (formula 6)
    assert isinstance(net.get_layer("F1_conv1").kernel_initializer,
                      keras.initializers.GlorotUniform)  # Xavier
    x = np.random.default_rng(0).uniform(0, 255, (4, 39, 39, 3)).astype(np.float32)
    np.testing.assert_allclose(net(x, training=False), net(x, training=False))
    assert not np.allclose(net(x, training=True), net(x, training=False))  # dropout


def test_per_image_standardization():
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    x[1] = 42.0  # a flat image stays finite
    y = PerImageStandardization()(x).numpy()
    np.testing.assert_allclose(y[[0, 2]].mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y[[0, 2]].std(axis=(1, 2, 3)), 1.0, atol=1e-4)
    np.testing.assert_allclose(y[1], 0.0)


# --- Averaging (formula 4) ----------------------------------------------------------

def test_averaging_formula_4():
    indices = (0, 1, 2, 3, 4, 0, 1, 2, 2, 3, 4)  # F1, EN1, NM1
    matrix = averaging_matrix(indices, 5)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    estimates = np.random.default_rng(0).normal(size=(2, 11, 2)).astype(np.float32)
    averaged = average_duplicate_points(estimates, indices, 5).numpy()
    np.testing.assert_allclose(averaged[:, 0], (estimates[:, 0] + estimates[:, 5]) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(
        averaged[:, 2], (estimates[:, 2] + estimates[:, 7] + estimates[:, 8]) / 3, atol=1e-6)
    np.testing.assert_allclose(averaged[:, 4], (estimates[:, 4] + estimates[:, 10]) / 2,
                               atol=1e-6)
    with pytest.raises(ValueError, match="no estimate"):
        averaging_matrix((0, 1), 3)


# --- Cascade -------------------------------------------------------------------------

def test_paper_cascade_outputs():
    config = CCNNConfig(flip_test=False, confidence_source="pairs")
    model = build_ccnn(config, network_outputs=True)
    assert model.count_params() == EXPECTED_TOTAL_PARAMETERS
    outputs = model(_images(config), training=False)
    assert set(outputs) == {"landmarks", "stage_1", "stage_2", "stage_3", "stage_1_networks",
                            "stage_2_networks", "stage_3_networks", "confidence"}
    for key in ("landmarks", "stage_1", "stage_2", "stage_3"):
        assert outputs[key].shape == (2, 5, 2) and outputs[key].dtype == tf.float32
    assert outputs["stage_1_networks"].shape == (2, 11, 2)
    assert outputs["stage_2_networks"].shape == (2, 10, 2)
    np.testing.assert_allclose(outputs["landmarks"], outputs["stage_3"])
    # Each stage's points are the average of its networks' estimates.
    for k in (2, 3):
        pairs = outputs[f"stage_{k}_networks"].numpy().reshape(2, 5, 2, 2)
        np.testing.assert_allclose(outputs[f"stage_{k}"], pairs.mean(axis=2), atol=1e-6)
    # The confidence is the agreement of stage 3's two networks per point.
    pairs = outputs["stage_3_networks"].numpy().reshape(2, 5, 2, 2).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(outputs["confidence"], confidence_from_disagreement(
        shape_disagreement(pairs)), rtol=1e-4)


@pytest.mark.parametrize("num_stages", [1, 2])
def test_fewer_stages(tiny_config, num_stages):
    model = build_ccnn(tiny_config, num_stages=num_stages)
    outputs = model(_images(tiny_config))
    stages = {"landmarks"} | {f"stage_{k}" for k in range(1, num_stages + 1)}
    assert set(outputs) == stages | {"confidence"}  # the flip test's, at any depth
    np.testing.assert_allclose(outputs["landmarks"], outputs[f"stage_{num_stages}"])
    pairs = model.with_inference_options(confidence_source="pairs")
    assert set(pairs(_images(tiny_config))) == (
        stages | ({"confidence"} if num_stages >= 2 else set()))


def test_stage1_windows_switch(tiny_config):
    with_windows = build_ccnn(tiny_config, num_stages=1).stage_layer(1)
    np.testing.assert_allclose(
        with_windows.region_windows(),
        win.region_boxes(tiny_config.stage1_regions, tiny_config.margin))
    without = build_ccnn(tiny_config.replace(stage1_windows=False), num_stages=1)
    np.testing.assert_allclose(without.stage_layer(1).region_windows(), [[0, 0, 1, 1]] * 3)
    assert without.count_params() == build_ccnn(tiny_config, num_stages=1).count_params()


def test_untrained_refine_stage_starts_near_its_anchors(tiny_config):
    stage = build_ccnn(tiny_config.replace(weight_decay=0.0)).stage_layer(2)
    for network in stage.networks:  # only the output bias (the window centre) left
        for weight in network.trainable_weights:
            if weight.path.endswith("fc2/kernel"):
                weight.assign(tf.zeros_like(weight))
    anchors = np.random.default_rng(0).uniform(0.3, 0.7, (2, 5, 2)).astype(np.float32)
    images = _images(tiny_config)[f"image_{tiny_config.input_size}"]
    points, _ = stage(images, anchors, training=False)
    np.testing.assert_allclose(points, anchors, atol=1e-6)


def test_shake_only_when_training(tiny_config):
    stage = CCNNRefineStage(
        tiny_config.stage2_half_sizes, tiny_config.refine_input_size, 5,
        tiny_config.refine_conv_filters, tiny_config.refine_kernel_sizes,
        tiny_config.refine_fc_units, 0.0, 0.0, margin=0.25, shake_stddev=0.01, seed=1)
    anchors = tf.tile(tf.constant([[[0.3, 0.4]] * 5]), [4000, 1, 1])
    still = stage.windows(anchors, training=False).numpy()
    np.testing.assert_allclose(stage.windows(anchors, training=False), still)
    shaken = stage.windows(anchors, training=True).numpy()
    offsets = shaken - still
    np.testing.assert_allclose(offsets[..., :2], offsets[..., 2:], atol=1e-6)  # translation
    # 0.01 of the face box = 0.01 / 1.5 crop units with margin 0.25.
    np.testing.assert_allclose(offsets[..., :2].std(), 0.01 / 1.5, rtol=0.03)
    # Through the layer: training=False is deterministic, training=True is not (no
    # dropout here, so the difference is the shake).
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    first = stage(images, anchors[:2], training=False)[0]
    np.testing.assert_allclose(stage(images, anchors[:2], training=False)[0], first)
    assert not np.allclose(stage(images, anchors[:2], training=True)[0], first)
    stage.trainable = False  # a frozen stage runs in inference mode
    np.testing.assert_allclose(stage(images, anchors[:2], training=True)[0], first)


def _separate_networks(model: CCNNCascade, images: np.ndarray,
                       outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    """Every stage's estimates with each network called on its own crop, as built."""
    stage1 = model.stage_layer(1)
    windows = stage1.windows(len(images))
    crops = win.crop_windows(images, windows, stage1.input_size)
    estimates = [win.from_window(tf.reshape(net(crops[:, r]), [-1, len(indices), 2]),
                                 windows[:, r:r + 1])
                 for r, (net, indices) in enumerate(zip(stage1.networks,
                                                        stage1.point_indices))]
    result = {"stage_1_networks": tf.concat(estimates, axis=1).numpy()}
    for k in range(2, model.num_stages + 1):
        stage = model.stage_layer(k)
        windows = stage.windows(outputs[f"stage_{k - 1}"])  # the same anchors
        crops = win.crop_windows(images, windows, stage.input_size)
        relative = tf.stack([net(crops[:, j]) for j, net in enumerate(stage.networks)], 1)
        result[f"stage_{k}_networks"] = win.from_window(relative, windows).numpy()
    return result


def test_grouped_networks_compute_the_separate_networks(tiny_config):
    keras.utils.set_random_seed(0)  # the same weights whatever ran before on this worker
    model = build_ccnn(tiny_config.replace(flip_test=False, dropout=0.0,
                                           stage1_shake_stddev=0.0,
                                           stage2_shake_stddev=0.0, stage3_shake_stddev=0.0),
                       network_outputs=True)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # non-zero biases, so that a misplaced one shows
        if weight.path.endswith("bias"):
            weight.assign(rng.normal(0, 0.1, weight.shape))
    x = _images(tiny_config, n=3)
    images = x[f"image_{tiny_config.input_size}"]
    outputs = model(x, training=False)
    for key, expected in _separate_networks(model, images, outputs).items():
        np.testing.assert_allclose(outputs[key], expected, atol=1e-5, err_msg=key)
    # Training mode (stage 1 then runs its networks separately) without dropout and
    # shake is the same function (but for the flip confidence: training runs no
    # mirrored pass, so it is 1 there).
    trained = model(x, training=True)
    np.testing.assert_allclose(trained["confidence"], np.ones(3), atol=1e-6)
    # (5e-5: the two modes differ in float rounding, and a later stage's window moves
    # with the earlier stage's points, so the sampled pixels amplify it; measured
    # 1.4e-5 on an AMD EPYC, below 1e-5 on Intel.)
    for key in outputs.keys() - {"confidence"}:
        np.testing.assert_allclose(trained[key], outputs[key], atol=5e-5, err_msg=key)
    # Traced with one convolution per network (TFLite) or with frozen weights (export).
    for options in ({"grouped": False}, {"frozen_weights": True}):
        with model.trace_options(**options):
            traced = tf.function(lambda inputs: model(inputs, training=False))
            got = traced(x)
        # One convolution per network sums in another order; stage 3's windows sit on
        # stage 2's outputs, so float32 reorderings reached 1.6e-5 there (seen once
        # under xdist); a misplaced weight or bias moves outputs by ~0.1.
        for key in outputs:
            np.testing.assert_allclose(got[key], outputs[key], atol=5e-5,
                                       err_msg=f"{options} {key}")


def test_frozen_network_weights_keep_the_traced_values(tiny_config):
    model = build_ccnn(tiny_config)
    x = _images(tiny_config, n=2)
    live = tf.function(lambda inputs: model(inputs, training=False)["landmarks"])
    with model.trace_options(frozen_weights=True):
        frozen = tf.function(lambda inputs: model(inputs, training=False)["landmarks"])
        before = frozen(x).numpy()
    np.testing.assert_allclose(live(x), before, atol=1e-5)
    bias = model.stage_layer(3).networks[0].layers[-1].bias
    bias.assign(bias + 0.25)
    np.testing.assert_array_equal(frozen(x), before)  # an export's snapshot
    assert not np.allclose(live(x), before, atol=1e-3)  # training and evaluation


def _compile(model: CCNNCascade, learning_rate: float = 0.05) -> None:
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss={"landmarks": "mse"}, run_eagerly=True)


def test_frozen_stage_keeps_its_weights(tiny_config):
    model = build_ccnn(tiny_config, num_stages=2)
    model.train_only_stage(2)
    assert model.frozen_stages == (1,)
    before = [[w.copy() for w in model.stage_layer(k).get_weights()] for k in (1, 2)]
    _compile(model)
    x = _images(tiny_config, n=4)
    y = {"landmarks": np.full((4, 5, 2), 0.5, np.float32)}
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    for old, new in zip(before[0], model.stage_layer(1).get_weights()):
        np.testing.assert_array_equal(old, new)
    assert any(not np.array_equal(old, new)
               for old, new in zip(before[1], model.stage_layer(2).get_weights()))
    model.set_frozen_stages([])
    assert model.frozen_stages == ()
    with pytest.raises(ValueError, match="no such stages"):
        model.set_frozen_stages([3])


def test_save_load_round_trip(tiny_config, tmp_path):
    model = build_ccnn(tiny_config, frozen_stages=[1], network_outputs=True)
    x = _images(tiny_config, n=3)
    expected = model(x, training=False)
    path = tmp_path / "ccnn.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, CCNNCascade)
    assert restored.frozen_stages == (1,) and restored.num_stages == 3
    assert restored.get_config() == model.get_config()
    actual = restored(x, training=False)
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-6)


def test_transfer_stage_weights_and_network_targets(tiny_config):
    source = build_ccnn(tiny_config, num_stages=1)
    target = build_ccnn(tiny_config, num_stages=2)
    assert transfer_stage_weights(source, target) == (1,)
    for a, b in zip(source.stage_layer(1).get_weights(), target.stage_layer(1).get_weights()):
        np.testing.assert_array_equal(a, b)
    landmarks = np.arange(20, dtype=np.float32).reshape(2, 5, 2)
    targets = network_targets(landmarks, target.stage_layer(1)).numpy()
    assert targets.shape == (2, 11, 2)
    np.testing.assert_array_equal(targets[:, 5:8], landmarks[:, :3])  # EN1
    targets = network_targets(landmarks, target.stage_layer(2)).numpy()
    np.testing.assert_array_equal(targets[:, 0::2], landmarks)
    np.testing.assert_array_equal(targets[:, 1::2], landmarks)


def _toy_faces(n: int, size: int, rng: np.random.Generator):
    """Images with one bright blob per landmark (a different colour each)."""
    mean = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.58], [0.38, 0.75], [0.62, 0.75]])
    points = (mean + rng.uniform(-0.06, 0.06, (n, 1, 2))
              + rng.normal(0, 0.015, (n, 5, 2))).astype(np.float32)
    centres = (np.arange(size) + 0.5) / size
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)
    images = np.zeros((n, size, size, 3), np.float32)
    for p in range(5):
        dx = centres[None, None, :] - points[:, p, 0, None, None]
        dy = centres[None, :, None] - points[:, p, 1, None, None]
        blob = np.exp(-(dx**2 + dy**2) / (2 * 0.04**2))
        images += 255.0 * blob[..., None] * colours[p]
    return np.clip(images, 0, 255), points


@pytest.mark.slow
def test_tiny_cascade_learns_a_toy_task(tiny_config):
    keras.utils.set_random_seed(0)
    config = tiny_config.replace(dropout=0.0, weight_decay=0.0)
    model = build_ccnn(config, num_stages=2)
    images, points = _toy_faces(256, config.input_size, np.random.default_rng(0))
    x, y = {f"image_{config.input_size}": images}, {"landmarks": points}
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss={"landmarks": "mse", "stage_1": "mse"}, jit_compile=False)
    before = model.evaluate(x, {**y, "stage_1": points}, verbose=0, return_dict=True)
    model.fit(x, {**y, "stage_1": points}, epochs=8, batch_size=32, verbose=0)
    after = model.evaluate(x, {**y, "stage_1": points}, verbose=0, return_dict=True)
    assert after["loss"] < 0.05 * before["loss"], (before, after)
    # The refinement stage improves on stage 1.
    assert after["landmarks_loss"] < after["stage_1_loss"], after


# --- Flip test -----------------------------------------------------------------------

def _mapped_back(points: np.ndarray) -> np.ndarray:
    """Points predicted on a mirrored crop, in the unmirrored crop's frame."""
    points = np.asarray(points)[:, list(CUHK_5.flip_permutation)]
    return np.stack([1.0 - points[..., 0], points[..., 1]], axis=-1)


def test_flip_test_of_a_mirror_symmetric_face(tiny_config):
    keras.utils.set_random_seed(3)
    plain = build_ccnn(tiny_config.replace(flip_test=False, confidence_source="pairs"))
    flipped = plain.with_inference_options(flip_test=True, confidence_source="flip")
    assert flipped.flip_test and flipped.confidence_source == "flip"
    key = plain.input_key
    x = _images(tiny_config, n=3, seed=5)[key]
    symmetric = 0.5 * (x + x[:, :, ::-1])
    np.testing.assert_array_equal(symmetric, symmetric[:, :, ::-1])
    own = plain({key: symmetric}, training=False)["landmarks"].numpy()
    # The mirrored pass sees the same image: its shape, mapped back, is the plain
    # one with left and right swapped; the flip test reports their mean.
    outputs = flipped({key: symmetric}, training=False)
    np.testing.assert_allclose(outputs["landmarks"], 0.5 * (own + _mapped_back(own)),
                               atol=1e-5)
    np.testing.assert_allclose(outputs["confidence"], confidence_from_disagreement(
        shape_disagreement(np.stack([own, _mapped_back(own)], axis=1))), rtol=1e-3)
    # Any face: the mirrored half is the cascade on the mirrored crop, mapped back.
    on_mirror = plain({key: x[:, :, ::-1]}, training=False)
    outputs = flipped({key: x}, training=False)
    own = plain({key: x}, training=False)
    for k in ("stage_1", "stage_2", "stage_3", "landmarks"):
        np.testing.assert_allclose(outputs[k], 0.5 * (own[k].numpy() + _mapped_back(
            on_mirror[k])), atol=1e-5)


def test_exported_grouped_convolutions_serve_without_onednn(tiny_config):
    """Graph optimisation fuses Conv2D + BiasAdd into a kernel that has no groups
    without oneDNN (TF 2.21 on an AMD EPYC: "Fused conv implementation does not support
    grouped convolutions"): a serving graph traced where oneDNN runs would then fail
    on other CPUs. The grouped convolutions add their biases with a plain add."""
    from ccnn_tf.networks import grouped_convolutions_supported

    if not grouped_convolutions_supported():
        # No oneDNN here, so nothing is grouped: check in a process with oneDNN on.
        if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1":
            pytest.skip("this TensorFlow runs no fused grouped convolution")
        test = f"{__file__}::test_exported_grouped_convolutions_serve_without_onednn"
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist",
                                "-p", "no:cacheprovider", test], capture_output=True,
                               text=True, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"})
        if " skipped" in child.stdout and child.returncode == 0:
            pytest.skip("no grouped convolution with oneDNN either")
        assert child.returncode == 0, child.stdout[-3000:]
        return
    model = build_ccnn(tiny_config)
    spec = tf.TensorSpec([None, tiny_config.input_size, tiny_config.input_size, 3])
    with model.trace_options(frozen_weights=True):
        graph = tf.function(lambda x: model({f"image_{tiny_config.input_size}": x},
                                            training=False)["landmarks"]
                            ).get_concrete_function(spec).graph
    grouped = [op for op in graph.get_operations() if op.type == "Conv2D"
               and op.inputs[0].shape[-1] != op.inputs[1].shape[2]]
    assert len(grouped) >= 4  # stage 1's and the refinement stages' layers
    for op in grouped:
        assert {c.type for c in op.outputs[0].consumers()}.isdisjoint(
            {"BiasAdd", "BiasAddV1"}), op.name


def test_switching_inference_options_changes_only_what_it_should(tiny_config, tmp_path):
    keras.utils.set_random_seed(4)
    assert not tiny_config.flip_test and tiny_config.confidence_source == "flip"  # defaults
    base = build_ccnn(tiny_config.replace(flip_test=False))
    assert not base.flip_test and base.confidence_source == "flip"
    assert base.with_inference_options() is base
    assert base.with_inference_options(flip_test=False, confidence_source="flip") is base
    x = _images(tiny_config, n=3, seed=6)
    want = base(x, training=False)
    pairs = base.with_inference_options(confidence_source="pairs")
    averaged = base.with_inference_options(flip_test=True)
    for model in (pairs, averaged):
        assert model.count_params() == base.count_params()
        for a, b in zip(model.get_weights(), base.get_weights()):
            np.testing.assert_array_equal(a, b)
    # The confidence source: the landmarks stay, the confidence changes.
    got = pairs(x, training=False)
    for k in ("stage_1", "stage_2", "stage_3", "landmarks"):  # another graph: rounding
        np.testing.assert_allclose(got[k], want[k], atol=5e-5)  # cf. the grouped test
    assert np.abs(got["confidence"].numpy() - want["confidence"].numpy()).max() > 1e-3
    # The flip test: the landmarks change, the (flip) confidence stays.
    got = averaged(x, training=False)
    np.testing.assert_allclose(got["confidence"], want["confidence"], rtol=1e-5)
    assert np.abs(got["landmarks"].numpy() - want["landmarks"].numpy()).max() > 1e-4
    # Training sees the batch as given (no mirrored half) and pays nothing.
    trained = averaged(x, training=True)
    assert trained["landmarks"].shape == (3, 5, 2)
    np.testing.assert_allclose(trained["confidence"], np.ones(3), atol=1e-6)
    # Saved and loaded with its options; a config without them (an older save)
    # loads with the defaults.
    path = tmp_path / "flip.keras"
    averaged.save(path)
    restored = keras.models.load_model(path)
    assert restored.flip_test and restored.confidence_source == "flip"
    np.testing.assert_allclose(restored(x, training=False)["landmarks"], got["landmarks"],
                               atol=5e-5)
    old = {k: v for k, v in base.get_config().items()
           if k not in ("flip_test", "confidence_source")}
    older = CCNNCascade.from_config(old)
    assert not older.flip_test and older.confidence_source == "flip"
    with pytest.raises(ValueError, match="confidence_source"):
        base.with_inference_options(confidence_source="learned")
    with pytest.raises(ValueError, match="confidence_source"):
        tiny_config.replace(confidence_source="learned")
