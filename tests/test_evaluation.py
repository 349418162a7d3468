"""Tests of common/evaluation.py on a tiny synthetic data set and a tiny model."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import evaluation, geometry, metrics
from common.pipeline import make_dataset
from common.schemes import IBUG_68
from common.synthetic import ensure_synthetic_dataset

SIZE = 24
MARGIN = 0.2
L = 68


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_synthetic_dataset(68, {"train": 4, "val": 5},
                                    cache_dir=str(tmp_path_factory.mktemp("cache")))


def tiny_model(seed: int = 0) -> keras.Model:
    """image_24 -> {"landmarks", "stage_0"} around the centre of the crop, plus a
    non-landmark output that must be ignored."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((SIZE, SIZE, 3), name=f"image_{SIZE}")
    x = keras.layers.Rescaling(1.0 / 255.0)(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(2 * L, bias_initializer=keras.initializers.Constant(0.5),
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.3))(x)
    landmarks = keras.layers.Reshape((L, 2), name="landmarks")(x)
    stage_0 = keras.layers.Rescaling(0.5, offset=0.25, name="stage_0")(landmarks)
    score = keras.layers.Dense(1, name="score")(x)
    return keras.Model({f"image_{SIZE}": image},
                       {"landmarks": landmarks, "stage_0": stage_0, "score": score})


def test_predict_split_maps_landmark_outputs_to_pixels(data):
    model = tiny_model()
    pred = evaluation.predict_split(model, data, "val", sizes=(SIZE,), margin=MARGIN,
                                    num_landmarks=L, batch_size=2)
    assert pred.num_faces == 5
    assert set(pred.outputs_px) == {"landmarks", "stage_0"}  # "score" is not [N, L, 2]
    assert pred.true_px.shape == (5, L, 2) and pred.boxes.shape == (5, 4)
    assert len(pred.source_paths) == 5 and pred.source_paths[0].startswith("synthetic:")
    assert pred.seconds_per_face > 0
    # Same faces, same order, same crops as the evaluation pipeline.
    ds = make_dataset(data, "val", sizes=(SIZE,), num_landmarks=L, margin=MARGIN,
                      batch_size=5, training=False, with_meta=True)
    inputs, _, meta = next(iter(ds))
    expected = geometry.crop_to_image(model(inputs)["landmarks"], meta["crop_box"]).numpy()
    np.testing.assert_allclose(pred.outputs_px["landmarks"], expected, atol=1e-4)
    np.testing.assert_allclose(pred.true_px, meta["landmarks_px"].numpy())
    np.testing.assert_allclose(pred.crop_boxes, meta["crop_box"].numpy())

    limited = evaluation.predict_split(model, data, "val", sizes=(SIZE,), margin=MARGIN,
                                       num_landmarks=L, batch_size=2, limit=3)
    assert limited.num_faces == 3
    np.testing.assert_allclose(limited.outputs_px["stage_0"], pred.outputs_px["stage_0"][:3],
                               atol=1e-4)


def test_constant_shape_and_scores(data):
    model = tiny_model()
    pred = evaluation.predict_split(model, data, "val", sizes=(SIZE,), margin=MARGIN,
                                    num_landmarks=L)
    # The true landmarks in normalised crop units, averaged: a mean-shape baseline.
    true_norm = geometry.image_to_crop(pred.true_px, pred.crop_boxes).numpy()
    pred = evaluation.add_constant_shape(pred, "mean_shape", true_norm.mean(axis=0))
    assert set(pred.outputs_px) == {"landmarks", "stage_0", "mean_shape"}

    results = evaluation.evaluate_outputs(pred, IBUG_68)
    assert results["num_faces"] == 5
    assert results["kinds"] == ["inter_pupil", "inter_ocular"]
    entry = results["outputs"]["mean_shape"]["inter_pupil"]
    assert {"mean", "median", "std", "count", "auc@0.08", "failure@0.08",
            "failure@0.1"} <= set(entry)
    assert len(entry["per_point"]) == L
    errors = evaluation.face_errors(pred, "mean_shape", "inter_pupil")
    np.testing.assert_allclose(entry["mean"], errors.mean())
    np.testing.assert_allclose(np.mean(entry["per_point"]), errors.mean())
    np.testing.assert_allclose(
        results["outputs"]["landmarks"]["inter_ocular"]["mean"],
        metrics.nme(pred.outputs_px["landmarks"], pred.true_px, "inter_ocular").mean())
    json.dumps(results)  # JSON-ready

    table = evaluation.results_table(results, {"mean shape": "mean_shape",
                                               "final": "landmarks", "absent": "nope"},
                                     "inter_pupil", title="t")
    assert "| mean shape |" in table and "| final |" in table and "absent" not in table
    assert "AUC@0.08" in table and "failure@0.1" in table


def test_val_metric_equals_pixel_nme(data):
    """Normalised-crop NME == pixel NME: square crops map by one scale + shift."""
    model = tiny_model(seed=3)
    pred = evaluation.predict_split(model, data, "val", sizes=(SIZE,), margin=MARGIN,
                                    num_landmarks=L)
    for kind in ("inter_pupil", "inter_ocular"):
        metric = evaluation.nme_val_metric(kind, IBUG_68)
        ds = make_dataset(data, "val", sizes=(SIZE,), num_landmarks=L, margin=MARGIN,
                          batch_size=2, training=False)
        value = metric(model, ds)[f"nme_{kind}"]
        np.testing.assert_allclose(
            value, evaluation.face_errors(pred, "landmarks", kind).mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="inter_pupil"):
        evaluation.nme_val_metric("box_width", IBUG_68)


def test_write_report_is_complete_and_atomic(tmp_path):
    rng = np.random.default_rng(0)
    results = {"outputs": {"landmarks": {"inter_pupil": metrics.summarize(rng.uniform(0, .1, 9))}},
               "thresholds": [0.08, 0.1]}
    table = evaluation.results_table(results, {"final": "landmarks"}, "inter_pupil")
    paths = evaluation.write_report(results, str(tmp_path / "out"), "val",
                                    {"final": rng.uniform(0, 0.1, 9)}, "A title", table,
                                    notes="Some notes.")
    assert set(paths) == {"json", "markdown", "ced"}
    with open(paths["json"]) as f:
        assert json.load(f) == results
    with open(paths["markdown"]) as f:
        text = f.read()
    assert text.startswith("# A title") and "| final |" in text and "Some notes." in text
    assert "val_ced.png" in text
    with open(paths["ced"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["val.json", "val.md", "val_ced.png"]
    assert "ced" not in evaluation.write_report(results, str(tmp_path / "o2"), "x", {}, "t")


def test_default_eval_splits(tmp_path):
    def touch(folder, *splits):
        folder.mkdir()
        for split in splits:
            (folder / f"p-{split}-00000-of-00001.tfrecord").write_bytes(b"")
        return str(folder)

    assert evaluation.default_eval_splits(touch(tmp_path / "w", "train", "common",
                                                "challenging")) == ["common", "challenging",
                                                                    "full"]
    assert evaluation.default_eval_splits(touch(tmp_path / "s", "train", "val", "test")) == [
        "test", "val"]
    assert evaluation.default_eval_splits(touch(tmp_path / "t", "train")) == ["train"]
    with pytest.raises(FileNotFoundError):
        evaluation.default_eval_splits(touch(tmp_path / "e"))


def test_full_split_without_alias_reads_both_parts(tmp_path, data):
    folder = tmp_path / "w"
    folder.mkdir()
    for split in ("common", "challenging"):
        src = next(f for f in os.listdir(data) if "-val-" in f)
        os.symlink(os.path.join(data, src), folder / f"x-{split}-00000-of-00001.tfrecord")
    pred = evaluation.predict_split(tiny_model(), str(folder), "full", sizes=(SIZE,),
                                    margin=MARGIN, num_landmarks=L)
    assert pred.num_faces == 10


def test_load_model_from_file_and_checkpoint(tmp_path):
    model = tiny_model(seed=1)
    inputs = {f"image_{SIZE}": np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3))
              .astype(np.float32)}
    expected = model(inputs)["landmarks"].numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(evaluation.load_model(path)(inputs)["landmarks"], expected,
                               atol=1e-6)

    run_dir = tmp_path / "run"
    evaluation.save_architecture(model, str(run_dir))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run_dir / "checkpoints"),
                               max_to_keep=1).save()
    loaded = evaluation.load_model(str(run_dir))
    np.testing.assert_allclose(loaded(inputs)["landmarks"], expected, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        evaluation.load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        evaluation.load_model(str(tmp_path / "empty"))


def test_mean_crop_residuals_in_crop_units():
    rng = np.random.default_rng(0)
    pred_px = rng.uniform(0, 100, (3, 5, 2)).astype(np.float32)
    crop_boxes = np.array([[10, 20, 110, 220], [0, 0, 50, 100], [5, 5, 205, 405]], np.float32)
    size = crop_boxes[:, None, 2:4] - crop_boxes[:, None, 0:2]
    offset = np.array([0.05, -0.02], np.float32)  # crop units, the same on every face
    true_px = pred_px + offset * size
    pred = evaluation.Predictions(
        outputs_px={"landmarks": pred_px, "stage_0": true_px}, true_px=true_px,
        boxes=crop_boxes, source_paths=["a", "b", "c"], seconds_per_face=0.0,
        crop_boxes=crop_boxes)
    residuals = evaluation.mean_crop_residuals(pred, ["landmarks", "stage_0"])
    np.testing.assert_allclose(residuals["landmarks"], np.tile(offset, (5, 1)), atol=1e-6)
    np.testing.assert_allclose(residuals["stage_0"], 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="no output 'stage_9'"):
        evaluation.mean_crop_residuals(pred, ["stage_9"])
    with pytest.raises(ValueError, match="crop boxes"):
        evaluation.mean_crop_residuals(
            evaluation.Predictions(pred.outputs_px, true_px, crop_boxes, [], 0.0), ["landmarks"])
