"""Tests of the MSRRN config and model (tiny sizes; CPU)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.confidence import confidence_from_disagreement, shape_disagreement
from msrrn_tf.config import MSRRNConfig
from msrrn_tf.model import (
    MSRRN,
    RecurrentRegressionNetwork,
    ShapeOffset,
    build_msrrn,
    schematic_mean_shape,
    stage_scales,
)

TINY = MSRRNConfig.preset("small", scales=(16, 32, 64), patch_size=8)


def random_inputs(scales, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {f"image_{s}": rng.uniform(0, 255, (batch, s, s, 3)).astype(np.float32)
            for s in scales}


def trainable_signature(model):
    return [(v.path, tuple(v.shape)) for v in model.trainable_variables]


# --- config -------------------------------------------------------------------------


def test_config_defaults_follow_the_paper():
    config = MSRRNConfig()
    assert config.scales == (50, 100, 200)
    assert config.num_stages == 3
    assert config.num_landmarks == 68
    assert config.iterations == 10_000
    assert config.noise_sigma == 0.5
    assert config.max_rotation_deg == 15.0
    assert config.flip


def test_config_round_trip():
    config = MSRRNConfig().replace(hidden_size=8, init="mean_shape", patch_extent=0.1)
    assert MSRRNConfig.from_dict(config.to_dict()) == config
    assert MSRRNConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["model"]["scales"] == [50, 100, 200]
    assert set(config.to_dict()) == {"model", "train", "augment"}
    # The groups: where each field lives, and the flat names that reach them.
    assert config.model.hidden_size == config.hidden_size == 8
    assert config.train.batch_size == 64 and config.augment.noise_sigma == 0.5
    assert MSRRNConfig(model={"margin": 0.3}) == MSRRNConfig(margin=0.3)
    assert MSRRNConfig().replace(train=config.train.replace(batch_size=4)).batch_size == 4
    assert set(config.structural_dict()) <= set(config.model.to_dict()) - {"flip_test"}
    with pytest.raises(ValueError, match="unknown MSRRNConfig field"):
        MSRRNConfig(no_such_field=1)
    with pytest.raises(ValueError, match="unknown MSRRNModelConfig field"):
        MSRRNConfig(model={"batch_size": 4})  # a train field in the model group
    with pytest.raises(AttributeError, match="no attribute 'box_rangez'"):
        config.box_rangez  # noqa: B018
    assert MSRRNConfig.from_dict({"scales": [20, 40]}).scales == (20, 40)
    assert MSRRNConfig.preset("small").regression_fc_units != MSRRNConfig().regression_fc_units


def test_config_augmentation():
    augment = MSRRNConfig().augment_config()
    assert augment.rotation_deg == (-15.0, 15.0)
    assert augment.flip_prob == 0.5 and augment.noise_sigma == 0.5
    assert MSRRNConfig(flip=False, max_rotation_deg=0.0, noise_sigma=0.0).augment_config(
    ).is_identity


BOX_FIELDS = ("box_shift_x", "box_shift_y", "box_scale_range", "box_aspect_range")


def test_box_perturbation_on_in_quick_off_in_paper():
    from common.box_perturbation import DETECTOR_RANGES_68
    quick = MSRRNConfig.preset("quick")
    assert quick.augment.box_ranges == DETECTOR_RANGES_68
    assert not quick.augment.box_ranges.is_identity
    ranges = quick.augment_config().box_ranges
    assert (ranges.shift_x, ranges.shift_y, ranges.scale) == (
        (-0.15, 0.17), (-0.15, 0.19), (0.83, 1.37))
    paper = MSRRNConfig.preset("paper")
    assert paper == MSRRNConfig() and paper.augment_config().box_ranges.is_identity
    # --config_json switches it off.
    off = quick.replace(**json.loads(
        '{"box_shift_x": [0, 0], "box_shift_y": [0, 0], "box_scale_range": [1, 1]}'))
    assert off.augment_config().box_ranges.is_identity
    with pytest.raises(ValueError, match="box_scale_range|scale"):
        MSRRNConfig(box_scale_range=(1.2, 0.8))


def test_config_json_of_an_earlier_run_loads_without_box_perturbation():
    # A run saved before the box fields existed was trained without box perturbation;
    # its config.json still loads and says so.
    values = MSRRNConfig().replace(**QUICK_VALUES).flat_dict()  # the old flat form
    for name in BOX_FIELDS:
        del values[name]
    config = MSRRNConfig.from_json(json.dumps(values))
    assert config.augment.box_ranges.is_identity and config.scales == (32, 64, 128)
    assert MSRRNConfig.from_dict(config.to_dict()) == config


QUICK_VALUES = {"scales": (32, 64, 128), "patch_size": 8, "batch_size": 32,
                "iterations": 2500}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown MSRRNConfig field"):
        MSRRNConfig().replace(num_stage=2)
    with pytest.raises(ValueError, match="unknown MSRRNConfig field"):
        MSRRNConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="init"):
        MSRRNConfig(init="zeros")
    with pytest.raises(ValueError, match="coarse to fine"):
        MSRRNConfig(scales=(200, 100, 50))
    with pytest.raises(ValueError, match="init_noise"):
        MSRRNConfig(init_noise=-0.01)


# --- model --------------------------------------------------------------------------


def test_outputs_keys_shapes_and_dtypes():
    model = build_msrrn(TINY)
    inputs = random_inputs(TINY.scales)
    inputs["ignored_extra_key"] = np.zeros(3, np.float32)
    out = model(inputs)
    assert set(out) == {"landmarks", "stage_0", "stage_1", "stage_2", "stage_3"} | (
        {"confidence"} if TINY.flip_test else set())
    for key, value in out.items():
        shape = (2,) if key == "confidence" else (2, 68, 2)
        assert value.shape == shape and value.dtype == tf.float32
    np.testing.assert_array_equal(out["landmarks"], out["stage_3"])
    # An untrained model starts at the mean shape and moves little.
    assert np.abs(out["stage_3"] - model.mean_shape).max() < 0.2


def test_stage_t_reads_scale_t():
    assert stage_scales((50, 100, 200), 3) == [50, 100, 200]
    assert stage_scales((50, 100, 200), 1) == [50]
    assert stage_scales((50, 100, 200), 4) == [50, 100, 200, 200]
    assert build_msrrn(TINY, num_stages=1).input_sizes == (16,)
    assert build_msrrn(TINY, num_stages=2).input_sizes == (16, 32)


def test_default_parameter_count():
    model = build_msrrn(MSRRNConfig())
    k = MSRRNConfig().patch_size // 4  # two 2x2 pools
    regression = ((3 * 3 * 3 + 1) * 16 + (3 * 3 * 16 + 1) * 32
                  + (68 * k * k * 32 + 1) * 256 + (256 + 1) * 136)
    initial = ((3 * 3 * 3 + 1) * 16 + (3 * 3 * 16 + 1) * 32 + (3 * 3 * 32 + 1) * 64
               + (6 * 6 * 64 + 1) * 256 + (256 + 1) * 136)
    assert model.regressor.count_params() == regression == 5_053_800
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == regression + initial
    assert regression + initial == 5_702_552 - 136  # the mean shape is not trainable


@pytest.mark.parametrize("hidden_size", [0, 4])
def test_regression_weights_shared_across_stages(hidden_size):
    config = TINY.replace(hidden_size=hidden_size)
    models = {t: build_msrrn(config, num_stages=t) for t in (1, 2, 3)}
    signatures = {t: trainable_signature(m) for t, m in models.items()}
    assert signatures[1] == signatures[2] == signatures[3]
    for model in models.values():
        # One regressor object; the model's variables are its and S^0's, no copies.
        own = model.initial_shape.trainable_variables + model.regressor.trainable_variables
        assert {id(v) for v in model.trainable_variables} == {id(v) for v in own}
        assert len(model.trainable_variables) == len(own)
        regressors = [layer for layer in model.layers
                      if isinstance(layer, RecurrentRegressionNetwork)]
        assert len(regressors) == 1
    # The one-stage model with the three-stage weights reproduces stage 1 exactly
    # (its bias correction included).
    models[3].set_shape_offsets(np.full((4, 68, 2), 0.01, np.float32))
    models[1].copy_weights_from(models[3])
    inputs = random_inputs(TINY.scales)
    np.testing.assert_allclose(models[1](inputs)["stage_1"], models[3](inputs)["stage_1"],
                               atol=1e-6)
    with pytest.raises(ValueError, match="no weight matching"):
        models[3].copy_weights_from(models[1])  # stages 2 and 3 have no offsets there


@pytest.mark.parametrize("hidden_size", [0, 4])
def test_gradient_reaches_shared_weights_from_every_stage(hidden_size):
    model = build_msrrn(TINY.replace(hidden_size=hidden_size))
    inputs = random_inputs(TINY.scales)
    weights = model.regressor.trainable_variables
    probe = tf.constant(np.random.default_rng(1).normal(size=(2, 68, 2)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        out = model(inputs, training=True)
        # Each stage's own update, S^t - S^{t-1}, is made by the shared weights.
        updates = [tf.reduce_sum(probe * (out[f"stage_{t}"] - out[f"stage_{t - 1}"]))
                   for t in (1, 2, 3)]
    for t, update in enumerate(updates, start=1):
        grads = tape.gradient(update, weights)
        for var, grad in zip(weights, grads):
            if t == 1 and "recurrent_kernel" in var.path:
                continue  # the state entering stage 1 is zero
            assert grad is not None, f"stage {t}: no gradient to {var.path}"
            assert float(tf.reduce_max(tf.abs(grad))) > 0, f"stage {t}: zero grad {var.path}"


@pytest.mark.parametrize("init,hidden_size", [("cnn", 0), ("mean_shape", 4)])
def test_save_load_round_trip(tmp_path, init, hidden_size):
    model = build_msrrn(TINY.replace(init=init, hidden_size=hidden_size, patch_extent=0.3))
    model.set_mean_shape(schematic_mean_shape(68) * 0.9 + 0.03)
    inputs = random_inputs(TINY.scales)
    path = tmp_path / "msrrn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MSRRN)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded.mean_shape, model.mean_shape)
    want, got = model(inputs), loaded(inputs)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6)


def test_init_noise_perturbs_the_stages_in_training_only(tmp_path):
    # Without the flip test, whose inference output (averaged with the mirrored face)
    # differs from the training one by design.
    noisy = build_msrrn(TINY.replace(init_noise=0.05, flip_test=False))
    clean = build_msrrn(TINY.replace(flip_test=False))
    assert trainable_signature(noisy) == trainable_signature(clean)
    clean.set_weights(noisy.get_weights())
    inputs = random_inputs(TINY.scales)
    want = clean(inputs)
    for key, value in noisy(inputs).items():  # inference: exactly the clean model
        np.testing.assert_array_equal(value, want[key])
    trained = noisy(inputs, training=True)
    np.testing.assert_allclose(trained["stage_0"], want["stage_0"], atol=1e-6)
    shift = np.asarray(trained["stage_1"]) - np.asarray(want["stage_1"])
    assert 0.02 < shift.std() < 0.1  # about the noise (0.05), plus the update's reaction
    path = tmp_path / "noisy.keras"
    noisy.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["init_noise"] == 0.05
    np.testing.assert_allclose(loaded(inputs)["landmarks"], want["landmarks"], atol=1e-6)


def test_bias_correction_offsets_outputs_not_the_recurrence(tmp_path):
    corrected = build_msrrn(TINY)  # MSRRNConfig.bias_correction is on by default
    plain = build_msrrn(TINY.replace(bias_correction=False))
    assert trainable_signature(corrected) == trainable_signature(plain)
    assert sum(isinstance(layer, ShapeOffset) for layer in corrected.layers) == 4
    inputs = random_inputs(TINY.scales)
    np.testing.assert_array_equal(corrected.get_shape_offsets(), 0.0)
    before = corrected(inputs)
    offsets = np.random.default_rng(1).normal(0, 0.02, (4, 68, 2)).astype(np.float32)
    corrected.set_shape_offsets(offsets)
    after = corrected(inputs)
    # Each output moves by exactly its own offset: the next stage read the
    # uncorrected shape (else stage_2 would also move by what stage_1's offset did).
    for t in range(4):
        np.testing.assert_allclose(np.asarray(after[f"stage_{t}"]) - before[f"stage_{t}"],
                                   np.broadcast_to(offsets[t], (2, 68, 2)), atol=1e-6)
    np.testing.assert_array_equal(after["landmarks"], after["stage_3"])
    path = tmp_path / "corrected.keras"
    corrected.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.get_shape_offsets(), offsets)
    np.testing.assert_allclose(loaded(inputs)["landmarks"], after["landmarks"], atol=1e-6)
    with pytest.raises(ValueError, match=r"offsets must be \[4, 68, 2\]"):
        corrected.set_shape_offsets(offsets[:3])
    with pytest.raises(ValueError, match="bias_correction=False"):
        plain.set_shape_offsets(offsets)
    np.testing.assert_array_equal(plain.get_shape_offsets(), 0.0)


def test_fit_bias_correction_removes_the_training_mean_residual(tmp_path):
    from common import evaluation
    from common.synthetic import ensure_synthetic_dataset
    from msrrn_tf.training import fit_bias_correction

    data = ensure_synthetic_dataset(68, {"train": 12, "val": 4}, cache_dir=str(tmp_path))
    model = build_msrrn(TINY)

    def residuals():
        pred = evaluation.predict_split(model, data, "train", sizes=model.input_sizes,
                                        margin=TINY.margin, num_landmarks=68)
        names = [f"stage_{t}" for t in range(4)]
        return np.stack([evaluation.mean_crop_residuals(pred, names)[n] for n in names])

    before = residuals()
    assert np.abs(before).max() > 0.01  # an untrained model is far off on average
    report = fit_bias_correction(model, data, "train", margin=TINY.margin)
    assert report["faces"] == 12
    np.testing.assert_allclose(model.get_shape_offsets(), before, atol=1e-6)
    np.testing.assert_allclose(residuals(), 0.0, atol=1e-5)
    fit_bias_correction(model, data, "train", margin=TINY.margin)  # refit: same offsets
    np.testing.assert_allclose(model.get_shape_offsets(), before, atol=1e-6)
    assert fit_bias_correction(model, data, "train", margin=TINY.margin, limit=5)["faces"] == 5
    with pytest.raises(ValueError, match="bias_correction=False"):
        fit_bias_correction(build_msrrn(TINY.replace(bias_correction=False)), data, "train",
                            margin=TINY.margin)


def test_flip_test_averages_the_mirrored_prediction(tmp_path):
    from common.schemes import IBUG_68

    flipped = build_msrrn(TINY)  # MSRRNConfig.flip_test is on by default
    plain = build_msrrn(TINY.replace(flip_test=False))
    assert trainable_signature(flipped) == trainable_signature(plain)
    flipped.set_shape_offsets(np.full((4, 68, 2), 0.003, np.float32))
    plain.copy_weights_from(flipped)
    inputs = random_inputs(TINY.scales, batch=3)
    mirrored_inputs = {k: v[:, :, ::-1] for k, v in inputs.items()}
    got, direct, mirror = flipped(inputs), plain(inputs), plain(mirrored_inputs)
    perm = list(IBUG_68.flip_permutation)
    assert set(got) == set(direct) | {"confidence"}
    for key in direct:
        # Reference: each prediction without its offset, the mirrored one mapped back.
        offset = 0.003
        back = np.asarray(mirror[key])[:, perm] - offset
        back[..., 0] = 1.0 - back[..., 0]
        want = 0.5 * (np.asarray(direct[key]) - offset + back) + offset
        np.testing.assert_allclose(got[key], want, atol=1e-5)
        if key == "landmarks":  # the confidence: agreement of these two shapes
            pair = np.stack([np.asarray(direct[key]) - offset, back], axis=1)
            np.testing.assert_allclose(got["confidence"], confidence_from_disagreement(
                shape_disagreement(pair)), rtol=1e-3)
    assert np.all((np.asarray(got["confidence"]) > 0) & (np.asarray(got["confidence"]) <= 1))
    np.testing.assert_allclose(flipped(inputs, training=True)["confidence"], 1.0, atol=1e-6)
    # Training sees one copy of each face: exactly the plain model.
    np.testing.assert_allclose(flipped(inputs, training=True)["landmarks"],
                               direct["landmarks"], atol=1e-6)
    path = tmp_path / "flip.keras"
    flipped.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["flip_test"] is True
    np.testing.assert_allclose(loaded(inputs)["landmarks"], got["landmarks"], atol=1e-6)

    # Switching the flip test after training: same weights and offsets, other inference.
    switched = loaded.with_flip_test(False)
    assert switched is not loaded and not switched.flip_test and loaded.flip_test
    np.testing.assert_allclose(switched.get_shape_offsets(), loaded.get_shape_offsets())
    assert "confidence" not in switched(inputs)
    for key in direct:
        np.testing.assert_allclose(switched(inputs)[key], direct[key], atol=1e-6)
    back_on = switched.with_flip_test(True)
    np.testing.assert_allclose(back_on(inputs)["landmarks"], got["landmarks"], atol=1e-6)
    assert back_on.with_flip_test(True) is back_on
    assert switched.with_flip_test(None) is switched and back_on.with_flip_test(None) is back_on


def test_get_config_from_config():
    model = build_msrrn(TINY)
    clone = MSRRN.from_config(json.loads(json.dumps(model.get_config())))
    assert trainable_signature(clone) == trainable_signature(model)
    clone.set_weights(model.get_weights())
    inputs = random_inputs(TINY.scales)
    np.testing.assert_allclose(clone(inputs)["landmarks"], model(inputs)["landmarks"],
                               atol=1e-6)


def test_mean_shape_init():
    model = build_msrrn(TINY.replace(init="mean_shape", flip_test=False))
    mean = np.random.default_rng(0).uniform(0.2, 0.8, (10, 68, 2))
    model.set_mean_shape(mean)
    out = model(random_inputs(TINY.scales))
    np.testing.assert_allclose(out["stage_0"], np.broadcast_to(mean.mean(0), (2, 68, 2)),
                               atol=1e-6)
    assert not model.initial_shape.trainable_variables
    with pytest.raises(ValueError, match="mean shape"):
        model.set_mean_shape(np.zeros((5, 2)))


def test_weight_decay_losses():
    assert not build_msrrn(TINY.replace(weight_decay=0.0)).losses
    model = build_msrrn(TINY.replace(weight_decay=1e-3))
    # One L2 term per kernel: 3 + 1 + 1 initial-shape, 2 + 1 + 1 regression.
    assert len(model.losses) == 9


def test_mixed_precision_outputs_float32():
    model = build_msrrn(TINY.replace(hidden_size=4), dtype="mixed_bfloat16")
    assert model.regressor.blocks[0].compute_dtype == "bfloat16"
    out = model(random_inputs(TINY.scales))
    assert all(v.dtype == tf.float32 for v in out.values())


def test_jit_compile():
    model = build_msrrn(TINY)
    inputs = random_inputs(TINY.scales)
    compiled = tf.function(lambda x: model(x), jit_compile=True)
    np.testing.assert_allclose(compiled(inputs)["landmarks"], model(inputs)["landmarks"],
                               atol=1e-5)


# --- a tiny MSRRN must learn a synthetic task -------------------------------------------

TOY_TEMPLATE = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.7]], np.float32)


def toy_batch(rng, n, sizes):
    """Bright blobs (one colour channel per landmark) at jittered template points."""
    target = TOY_TEMPLATE + rng.uniform(-0.08, 0.08, (n, 3, 2)).astype(np.float32)
    inputs = {}
    for s in sizes:
        centres = (np.arange(s) + 0.5) / s  # DESIGN.md: pixel j is at u = (j + 0.5) / S
        dx = centres[None, None, None, :] - target[:, :, 0, None, None]
        dy = centres[None, None, :, None] - target[:, :, 1, None, None]
        blobs = np.exp(-(dx ** 2 + dy ** 2) / (2 * 0.04 ** 2))  # [n, 3, s, s]
        inputs[f"image_{s}"] = (255 * blobs.transpose(0, 2, 3, 1)).astype(np.float32)
    return inputs, target


def test_tiny_msrrn_learns_toy_task():
    keras.utils.set_random_seed(0)
    config = MSRRNConfig.preset("small", scales=(24, 48), num_stages=2, num_landmarks=3,
                                patch_size=8, init="mean_shape",
                                regression_conv_filters=(8, 8), regression_fc_units=(32,),
                                weight_decay=0.0)
    with pytest.raises(ValueError, match="flip_test needs"):
        build_msrrn(config)  # three points have no mirror layout
    model = build_msrrn(config.replace(flip_test=False))
    model.set_mean_shape(TOY_TEMPLATE)
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def train_step(inputs, target):
        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(out[f"stage_{t}"] - target))
                             for t in (1, 2)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    val_inputs, val_target = toy_batch(np.random.default_rng(1), 64, config.scales)

    def error():
        return float(np.mean((model(val_inputs)["landmarks"] - val_target) ** 2))

    before = error()
    rng = np.random.default_rng(0)
    for _ in range(50):
        train_step(*toy_batch(rng, 16, config.scales))
    after = error()
    assert after < 0.2 * before, (before, after)


@pytest.mark.parametrize("stop", [True, False])
def test_regressor_layer_shape_gradient_switch(stop):
    layer = RecurrentRegressionNetwork(5, patch_size=4, conv_filters=(4,), fc_units=(8,),
                                       stop_shape_gradient=stop)
    images = tf.constant(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), tf.float32)
    shape = tf.Variable(np.random.default_rng(1).uniform(0.2, 0.8, (2, 5, 2)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        delta = layer(images, shape)
    assert delta.shape == (2, 5, 2)
    grad = tape.gradient(delta, shape)
    assert (grad is None) == stop
    clone = RecurrentRegressionNetwork.from_config(layer.get_config())
    clone.build(images.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(images, shape), delta, atol=1e-6)
