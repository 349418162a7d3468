"""The per-face confidence (common.confidence) and its SavedModel output."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import confidence, export, geometry


def test_failure_auc_against_hand_counts():
    # failures (error > 0.1): faces 1 and 3 with confidences 0.2, 0.6; successes:
    # 0.9, 0.5, 0.6. Pairs (failure below success): 0.2 < all 3 -> 3; 0.6 < 0.9 -> 1,
    # 0.6 vs 0.6 tie -> 0.5, 0.6 > 0.5 -> 0. AUC = 4.5 / 6 = 0.75.
    conf = np.array([0.9, 0.2, 0.5, 0.6, 0.6])
    errors = np.array([0.05, 0.3, 0.02, 0.15, 0.08])
    assert confidence.failure_auc(conf, errors, 0.1) == pytest.approx(0.75)
    assert confidence.failure_auc(-conf, errors, 0.1) == pytest.approx(0.25)
    assert np.isnan(confidence.failure_auc(conf, errors * 0, 0.1))
    with pytest.raises(ValueError):
        confidence.failure_auc(conf[:2], errors, 0.1)


def test_layer_matches_the_numpy_definition():
    rng = np.random.default_rng(0)
    estimates = rng.normal(0.5, 0.02, (4, 2, 5, 2)).astype(np.float32)
    estimates[0, 1] = estimates[0, 0]  # exact agreement: confidence 1
    got = confidence.ShapeAgreementConfidence(scale=0.02)(estimates).numpy()
    # K = 2: each estimate is half the pair's distance from their mean.
    half = 0.5 * np.linalg.norm(estimates[:, 0] - estimates[:, 1], axis=-1).mean(-1)
    np.testing.assert_allclose(got, np.exp(-half / 0.02), rtol=1e-5)
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    layer = confidence.ShapeAgreementConfidence.from_config(
        confidence.ShapeAgreementConfidence(scale=0.03).get_config())
    assert layer.scale == 0.03


@keras.saving.register_keras_serializable(package="common_tests")
class NetWithConfidence(keras.Model):
    """``image_16`` -> landmarks [N, 3, 2] and a per-face confidence [N]."""

    def __init__(self, **kwargs):
        image = keras.Input((16, 16, 3), name="image_16")
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))
        points = keras.layers.Reshape((3, 2))(keras.layers.Dense(6, activation="sigmoid")(x))
        pair = keras.layers.Reshape((2, 3, 2))(keras.layers.Dense(12)(x))
        super().__init__(inputs={"image_16": image}, outputs={
            "landmarks": points,
            "confidence": confidence.ShapeAgreementConfidence(name="confidence")(pair)},
            **kwargs)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable}


def test_serving_default_passes_the_confidence_through(tmp_path):
    keras.utils.set_random_seed(0)
    model = NetWithConfidence()
    path = export.export_saved_model(model, str(tmp_path / "1"), sizes=[16], margin=0.2,
                                     num_landmarks=3)
    loaded = tf.saved_model.load(path)
    default = loaded.signatures["serving_default"]
    assert set(default.structured_outputs) == {"landmarks", "confidence"}
    assert default.structured_outputs["confidence"].dtype == tf.float32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 40, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 30], [10, 8, 38, 36]], np.float32)
    served = default(images=tf.constant(images), boxes=tf.constant(boxes))
    inputs, _ = geometry.preprocess_faces(images, boxes, [16], 0.2)
    want = model(inputs, training=False)["confidence"].numpy()
    assert served["confidence"].shape == (2,)
    np.testing.assert_allclose(served["confidence"], want, atol=1e-5)
    # The Python API hands it on, face by face.
    from common.api import Predictor

    predictor = Predictor.from_export(path)
    result = predictor.predict_batch(list(images), [boxes[:1], boxes[1:]])
    np.testing.assert_allclose([r.confidence[0] for r in result], want, atol=1e-5)


@pytest.mark.slow
def test_confidence_is_lower_for_a_shuffled_pixels_face():
    """A tiny MSRRN (flip test on) trained briefly on synthetic faces is more
    confident on unseen synthetic faces than on the same crops with their pixels
    shuffled (a non-face)."""
    from common.synthetic import generate_face
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.model import build_msrrn

    keras.utils.set_random_seed(0)
    config = MSRRNConfig.preset("small", scales=(16, 32, 64), patch_size=8)
    model = build_msrrn(config)
    faces = [generate_face(i, seed=3) for i in range(160)]
    images = np.stack([f.image for f in faces])
    boxes = np.stack([f.box for f in faces]).astype(np.float32)
    inputs, crop_boxes = geometry.preprocess_faces(images, boxes, config.scales,
                                                   config.margin)
    targets = geometry.image_to_crop(np.stack([f.landmarks68 for f in faces]),
                                     crop_boxes).numpy()
    model.set_mean_shape(targets[:128])
    optimizer = keras.optimizers.Adam(3e-3)
    train = {k: v[:128] for k, v in inputs.items()}

    @tf.function
    def step(batch, target):
        with tf.GradientTape() as tape:
            out = model(batch, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(out[f"stage_{t}"] - target))
                             for t in range(config.num_stages + 1)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.choice(128, 32, replace=False)
        step({k: tf.gather(v, idx) for k, v in train.items()}, targets[idx])
    held_out = {k: v[128:] for k, v in inputs.items()}
    shuffled = {}
    for key, value in held_out.items():
        flat = value.numpy().reshape(value.shape[0], -1, 3)
        shuffled[key] = np.stack([f[rng.permutation(len(f))] for f in flat]).reshape(
            value.shape)
    real = model(held_out, training=False)["confidence"].numpy()
    fake = model(shuffled, training=False)["confidence"].numpy()
    assert np.median(real) > np.median(fake) and real.mean() > fake.mean()
    # How well it tells the two apart (0.5: chance); 0.76 measured for this 150-step
    # toy model, the bar leaves room for platform differences.
    assert confidence.failure_auc(np.concatenate([real, fake]),
                                  np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                  0.5) > 0.65


def _ccnn_on_synthetic_faces(steps: int):
    """A tiny CCNN trained for ``steps`` on synthetic 5-point faces (every stage at
    once, a loss on each stage output), and its crops of 32 unseen faces."""
    from ccnn_tf.config import CCNNConfig
    from ccnn_tf.model import build_ccnn
    from common.synthetic import generate_face

    keras.utils.set_random_seed(0)
    config = CCNNConfig.preset("tiny")
    model = build_ccnn(config)
    faces = [generate_face(i, seed=3) for i in range(160)]
    inputs, crop_boxes = geometry.preprocess_faces(
        np.stack([f.image for f in faces]), np.stack([f.box for f in faces]).astype(
            np.float32), [config.input_size], config.margin)
    targets = geometry.image_to_crop(np.stack([f.landmarks5 for f in faces]),
                                     crop_boxes).numpy()
    key = model.input_key
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step(batch, target):
        with tf.GradientTape() as tape:
            out = model({key: batch}, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(out[f"stage_{k}"] - target))
                             for k in (1, 2, 3)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    rng = np.random.default_rng(0)
    images = inputs[key].numpy()
    for _ in range(steps):
        idx = rng.choice(128, 32, replace=False)
        step(tf.constant(images[idx]), tf.constant(targets[idx]))
    return model, images[128:]


@pytest.mark.slow
def test_ccnn_flip_confidence_is_lower_for_a_shuffled_pixels_face():
    """The same for a tiny CCNN with its flip-test confidence (the default source)."""
    model, held_out = _ccnn_on_synthetic_faces(300)
    assert model.confidence_source == "flip"
    rng = np.random.default_rng(1)
    flat = held_out.reshape(held_out.shape[0], -1, 3)
    shuffled = np.stack([f[rng.permutation(len(f))] for f in flat]).reshape(held_out.shape)
    real = model({model.input_key: held_out}, training=False)["confidence"].numpy()
    fake = model({model.input_key: shuffled}, training=False)["confidence"].numpy()
    assert np.median(real) > np.median(fake) and real.mean() > fake.mean()
    assert confidence.failure_auc(np.concatenate([real, fake]),
                                  np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                  0.5) > 0.65


def test_ccnn_saved_model_confidence_in_unit_range(tmp_path):
    """The exported cascade's ``serving_default`` serves the flip confidence, in
    [0, 1], as the Keras cascade computes it."""
    from ccnn_tf.config import CCNNConfig
    from ccnn_tf.export import export_saved_model
    from ccnn_tf.model import build_ccnn

    keras.utils.set_random_seed(2)
    config = CCNNConfig.preset("tiny")
    model = build_ccnn(config)
    path = export_saved_model(model, str(tmp_path / "1"))
    default = tf.saved_model.load(path).signatures["serving_default"]
    assert default.structured_outputs["confidence"].dtype == tf.float32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 48, 3), np.uint8)
    boxes = np.array([[5, 5, 40, 40], [10, 8, 38, 36], [0, 0, 47, 47]], np.float32)
    served = default(images=tf.constant(images), boxes=tf.constant(boxes))
    got = served["confidence"].numpy()
    assert got.shape == (3,) and np.all((got >= 0) & (got <= 1))
    inputs, _ = geometry.preprocess_faces(images, boxes, [config.input_size], config.margin)
    want = model(inputs, training=False)
    np.testing.assert_allclose(got, want["confidence"].numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(served["landmarks"].shape, (3, 5, 2))


def test_parity_compares_the_confidence_as_its_disagreement_in_crop_units():
    """A quantised export moves the disagreement d by ~1e-3 of the crop; exp(-d / 0.01)
    then moves by ~10 %: the crop-unit tolerance must bound d, not the confidence."""
    from common import export_check

    model = NetWithConfidence()
    assert export_check.confidence_scale_of(model) == confidence.DEFAULT_SCALE
    nested = keras.Sequential([keras.Input((2, 3, 2)),
                               confidence.ShapeAgreementConfidence(scale=0.03)])
    assert export_check.confidence_scale_of(nested) == 0.03
    d = np.array([0.0, 0.004, 0.02, 0.5])
    conf = confidence.confidence_from_disagreement(d)
    np.testing.assert_allclose(export_check._disagreement(conf, 0.01), d, atol=1e-9)

    crops = {"image_16": np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3))
             .astype(np.float32)}
    outputs = {k: v.numpy() for k, v in model(crops, training=False).items()}
    shifted = dict(outputs, confidence=outputs["confidence"] * np.exp(-0.003 / 0.01))
    report = export_check._parity_report(
        model, crops, "landmarks", np.zeros((3, 3, 2)), np.zeros((3, 3, 2)), shifted,
        0.005, landmarks_label="landmarks", cropped_label="cropped")
    assert report["cropped/confidence"] == pytest.approx(0.003, rel=1e-4)
    with pytest.raises(export.ParityError, match="disagreement"):  # 0.003 > 0.002
        export_check._parity_report(
            model, crops, "landmarks", np.zeros((3, 3, 2)), np.zeros((3, 3, 2)), shifted,
            0.002, landmarks_label="landmarks", cropped_label="cropped")
