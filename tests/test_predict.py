"""Tests of prediction on real-world inputs (common/predict.py and the entry points)."""

import csv
import json
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from common import export, predict
from common.synthetic import generate_face

SIZE = 32
NUM_LANDMARKS = 5
MARGIN = 0.2
DETECT_MAX_SIDE = 1000  # the 3000 px test image is detected at 1/3 scale


def make_model(seed: int = 0) -> keras.Model:
    """``{"image_32"} -> {"landmarks": [N, 5, 2]}``, sensitive to where things are."""
    keras.utils.set_random_seed(seed)
    key = f"image_{SIZE}"
    inputs = {key: keras.Input((SIZE, SIZE, 3), name=key)}
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs[key])
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(NUM_LANDMARKS * 2, activation="sigmoid")(x)
    landmarks = keras.layers.Reshape((NUM_LANDMARKS, 2))(x)
    return keras.Model(inputs=inputs, outputs={"landmarks": landmarks})


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    return export.export_saved_model(model, str(tmp_path_factory.mktemp("export") / "1"),
                                     sizes=[SIZE], margin=MARGIN,
                                     num_landmarks=NUM_LANDMARKS)


@pytest.fixture(scope="module")
def predictor(export_dir):
    return predict.LandmarkPredictor.from_path(export_dir)


@pytest.fixture(scope="module")
def face(request):
    """(RGB image, face box or None, real): a real face dlib finds, else a synthetic one.

    The box is ``None`` for the real face (dlib detects it); the synthetic face comes
    with its box, passed through ``boxes=`` because dlib may not find a drawn face.
    """
    try:
        data = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        synthetic = generate_face(0)
        return synthetic.image, synthetic.box, False
    folder = data / "sun5" / "lfw_5590"
    path = folder / "AJ_Cook_0001.jpg"
    if not path.is_file():
        path = min(folder.glob("*.jpg"))
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(image), None, True


def _serving_default(export_dir, image, boxes):
    loaded = tf.saved_model.load(export_dir)
    images = np.repeat(image[None], len(boxes), axis=0)
    return loaded.signatures["serving_default"](
        images=tf.constant(images), boxes=tf.constant(boxes, tf.float32))["landmarks"].numpy()


def test_predict_equals_serving_default(export_dir, predictor):
    assert predictor.sizes == (SIZE,)
    assert predictor.margin == pytest.approx(MARGIN)
    assert predictor.num_landmarks == NUM_LANDMARKS
    rng = np.random.default_rng(0)
    # 1000 x 1200: big enough that small faces are cropped from a support region only.
    image = rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 3)  # structure at several scales
    boxes = np.array([[100.3, 120.7, 160.2, 181.1],     # small face, region crop
                      [-40.0, 700.0, 90.0, 830.0],      # partly outside, left edge
                      [1150.5, 950.5, 1300.0, 1100.0],  # partly outside, bottom right
                      [200.0, 100.0, 1100.0, 950.0],    # huge face: coarse pyramid levels
                      [601.0, 401.0, 617.0, 417.0]],    # 16 px face: upsampled crop
                     np.float32)
    expected = _serving_default(export_dir, image, boxes)
    actual = predictor.predict(image, boxes, batch_size=2)
    assert actual.shape == (len(boxes), NUM_LANDMARKS, 2)
    # 1e-4 px, or one float32 step for coordinates beyond 1024 px.
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=2.5e-7)
    assert predictor.predict(image, np.zeros((0, 4))).shape == (0, NUM_LANDMARKS, 2)


def test_keras_predictor_matches_export(model, predictor, tmp_path):
    in_process = predict.LandmarkPredictor.from_keras(model, margin=MARGIN)
    assert in_process.sizes == (SIZE,) and in_process.num_landmarks == NUM_LANDMARKS
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70], [50, 20, 110, 80]], np.float32)
    np.testing.assert_allclose(in_process.predict(image, boxes), predictor.predict(image, boxes),
                               atol=1e-4)
    # A .keras file beside a run config.json: sizes and margin come from the config.
    path = tmp_path / "model.keras"
    model.save(path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"config": {"class": "x.Config", "values": {"input_size": SIZE, "margin": MARGIN}}}))
    loaded = predict.LandmarkPredictor.from_path(str(path))
    assert loaded.sizes == (SIZE,) and loaded.margin == pytest.approx(MARGIN)
    np.testing.assert_allclose(loaded.predict(image, boxes), predictor.predict(image, boxes),
                               atol=1e-4)


def test_check_boxes_rejects_bad_boxes():
    with pytest.raises(ValueError, match="right > left"):
        predict.check_boxes([[10, 10, 5, 20]], 50, 50)
    with pytest.raises(ValueError, match="right of its image"):
        predict.check_boxes([[60, 10, 70, 20]], 50, 50)
    with pytest.raises(ValueError, match="finite"):
        predict.check_boxes([[np.nan, 10, 70, 20]], 50, 50)
    # Issue 18: absurd boxes used to pass ("ok" landmarks of 1e29, or on one pixel).
    with pytest.raises(ValueError, match="box 1 .*mostly outside"):
        predict.check_boxes([[5, 5, 30, 30], [-1e30, -1e30, 1e30, 1e30]], 50, 50)
    with pytest.raises(ValueError, match="narrower than MIN_BOX_SIDE"):
        predict.check_boxes([[10, 10, 10.001, 30]], 50, 50)
    with pytest.raises(ValueError, match="mostly outside"):
        predict.check_boxes([[40, 10, 100, 30]], 50, 50)  # 9.5 of 60 px inside
    # A face cut by the border (a third inside on each axis) is fine.
    predict.check_boxes([[-40, -40, 20, 20]], 50, 50)


def test_serving_signature_rejects_absurd_boxes(export_dir):
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    image = tf.zeros((1, 50, 60, 3), tf.uint8)
    for box, message in (([-1e30, -1e30, 1e30, 1e30], "mostly outside"),
                         ([10, 10, 10.001, 30], "narrower than MIN_BOX_SIDE"),
                         ([10, 10, 30, 10.5], "shorter than MIN_BOX_SIDE"),
                         ([50, 10, 300, 30], "mostly outside")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(images=image, boxes=tf.constant([box], tf.float32))
    good = serve(images=image, boxes=tf.constant([[10, 10, 40, 40]], tf.float32))
    assert np.isfinite(good["landmarks"].numpy()).all()


def test_detect_faces_maps_boxes_back_to_full_resolution():
    seen = []

    def finder(image):
        seen.append(image.shape)
        return [(np.array([9.5, 19.5, 29.5, 39.5], np.float32), 1.5)]

    image = np.zeros((1000, 2000, 3), np.uint8)
    (box, score), = predict.detect_faces(finder, image, max_side=500)
    assert seen == [(250, 500, 3)]
    # Pixel edges scale by 4: edge 10 -> 40, i.e. box coordinate 39.5.
    np.testing.assert_allclose(box, [39.5, 79.5, 119.5, 159.5])
    assert score == 1.5
    (box, _), = predict.detect_faces(finder, image, max_side=None)
    np.testing.assert_allclose(box, [9.5, 19.5, 29.5, 39.5])


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _write(path, rgb):
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def _write_video(path, frames, fps=5.0):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def _count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="module")
def mixed_run(predictor, face, tmp_path_factory):
    """One predict_paths run over a folder of good, odd and broken files."""
    image, box, real = face
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    height, width = image.shape[:2]
    boxes = {}
    _write(folder / "face.jpg", image)
    _write(folder / "noise.png", rng.integers(0, 256, (200, 240, 3), dtype=np.uint8))
    _write(folder / "tiny.png", image[::16, ::16][:16, :16])
    _write(folder / "tiny_boxed.png", image[::16, ::16][:16, :16])
    boxes["tiny_boxed.png"] = [{"box": [2.0, 2.0, 13.0, 13.0], "score": 0.5}]
    # 3000 x 3000 (8000 px takes the same path): the face scaled x3, detected at 1/3.
    large = np.full((3000, 3000, 3), 128, np.uint8)
    large[1200:1200 + 3 * height, 1500:1500 + 3 * width] = cv2.resize(
        image, (3 * width, 3 * height), interpolation=cv2.INTER_CUBIC)
    _write(folder / "large.jpg", large)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert cv2.imwrite(str(folder / "grey.png"), grey)
    rgba = np.concatenate([image[:, :, ::-1], np.full((height, width, 1), 200, np.uint8)], 2)
    _, data = cv2.imencode(".png", rgba)
    (folder / "rgba_png_named.jpg").write_bytes(data.tobytes())
    _, data = cv2.imencode(".jpg", image[:, :, ::-1])
    (folder / "corrupt.jpg").write_bytes(data.tobytes()[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.jpg").write_bytes(b"")
    _write_video(folder / "clip.mp4", [np.roll(image, 2 * i, axis=1) for i in range(5)])
    if not real:  # a drawn face: give dlib's job to the boxes file
        for name in ("face.jpg", "grey.png", "rgba_png_named.jpg", "clip.mp4"):
            boxes[name] = [box.tolist()]
        boxes["large.jpg"] = [((box + 0.5) * 3 - 0.5 + [1500, 1200, 1500, 1200]).tolist()]
    boxes_path = folder.parent / f"{folder.name}-boxes.json"
    boxes_path.write_text(json.dumps(boxes))
    output = tmp_path_factory.mktemp("predictions")
    summary = predict.predict_paths(predictor, [str(folder)], str(output), batch_size=2,
                                    boxes=str(boxes_path), detect_max_side=DETECT_MAX_SIDE,
                                    progress=False)
    return summary, folder, output, real


def test_predict_paths_one_status_per_file(mixed_run):
    summary, folder, _, _ = mixed_run
    files = sorted(p.name for p in folder.iterdir())
    by_name = {os.path.basename(r.file): r for r in summary.results}
    assert sorted(by_name) == files and len(summary.results) == len(files)
    status = {name: r.status for name, r in by_name.items()}
    for name in ("face.jpg", "large.jpg", "grey.png", "rgba_png_named.jpg", "tiny_boxed.png",
                 "clip.mp4"):
        assert status[name] == "ok", (name, status[name])
    assert status["noise.png"] == "no_face"
    assert status["tiny.png"] == "no_face"
    assert status["corrupt.jpg"].startswith("error: truncated image")
    assert status["notes.txt"] == "skipped"  # not an image by name (issue 16)
    assert status["empty.jpg"] == "error: empty file"
    counts = summary.counts
    assert counts == {"ok": 6, "no_face": 2, "error": 2, "skipped": 1}
    assert sum(counts.values()) == len(files)
    assert summary.num_faces == sum(r.faces for r in summary.results)
    assert by_name["clip.mp4"].frames == 5 and by_name["clip.mp4"].faces == 5


def test_predict_paths_writes_json_overlays_and_summary(mixed_run, predictor):
    summary, _, output, _ = mixed_run
    for result in summary.results:
        if result.status == "ok" and result.kind == "image":
            record = _read_json(result.landmarks)
            assert record["status"] == "ok" and record["model"] == predictor.name
            assert len(record["faces"]) == result.faces >= 1
            for face_record in record["faces"]:
                assert np.asarray(face_record["landmarks"]).shape == (NUM_LANDMARKS, 2)
                assert len(face_record["box"]) == 4
            overlay = cv2.imread(result.overlay)
            assert overlay is not None and max(overlay.shape[:2]) <= 2048
        elif result.status.startswith("error"):
            assert result.landmarks == "" and result.overlay == ""
    written = {os.path.basename(p) for p in os.listdir(output / "landmarks")}
    assert "face.json" in written and "corrupt.json" not in written
    assert not [p for p in written if p.endswith(".jpg.json")]  # no double extensions
    with open(output / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [r.file for r in summary.results]
    assert {"file", "status", "faces", "seconds"} <= set(rows[0])
    data = json.loads((output / "summary.json").read_text())
    assert data["counts"] == summary.counts and data["files"] == len(rows)
    assert not [p for p in os.listdir(output / "landmarks") if p.startswith(".")]
    text = summary.format()
    assert "6 ok, 2 no face, 2 errors, 1 skipped" in text and "corrupt.jpg" in text


def test_predict_paths_large_image_boxes_map_back(mixed_run, face):
    summary, _, _, real = mixed_run
    image = face[0]
    (result,) = [r for r in summary.results if r.file.endswith("large.jpg")]
    record = _read_json(result.landmarks)
    assert record["image_size"] == {"width": 3000, "height": 3000}
    found = np.asarray(record["faces"][0]["box"])
    if real:
        from common.boxes import DlibBoxFinder, box_iou

        (small_box, _), = DlibBoxFinder(1)(image)
        expected = (small_box + 0.5) * 3 - 0.5 + [1500, 1200, 1500, 1200]
        assert box_iou(found, expected) > 0.8
        assert record["faces"][0]["box_source"] == "dlib"
    points = np.asarray(record["faces"][0]["landmarks"])
    assert np.all(points > [1000, 700]) and np.all(points < [2700, 2400])


def test_predict_paths_video(mixed_run):
    summary = mixed_run[0]
    (result,) = [r for r in summary.results if r.file.endswith("clip.mp4")]
    with open(result.landmarks) as f:
        lines = [json.loads(line) for line in f]
    assert [line["frame"] for line in lines] == list(range(5))
    assert all(len(line["faces"]) == 1 for line in lines)
    assert result.overlay.endswith((".mp4", ".avi")) and _count_frames(result.overlay) == 5


def test_model_failure_is_reported_per_file(tmp_path):
    def broken(inputs):
        raise RuntimeError("out of memory")

    failing = predict.LandmarkPredictor(broken, sizes=[SIZE], margin=MARGIN,
                                        num_landmarks=NUM_LANDMARKS)
    image = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "c.png"):
        _write(tmp_path / name, image)
    boxes = {"a.png": [[5, 5, 50, 50]], "b.png": [], "c.png": [[10, 10, 20, 20]]}
    summary = predict.predict_paths(failing, [str(tmp_path)], str(tmp_path / "out"),
                                    boxes=boxes, progress=False, finder=lambda image: [])
    status = [r.status for r in summary.results]
    assert status[0].startswith("error: model failed (RuntimeError: out of memory")
    assert status[1] == "no_face" and status[2].startswith("error: model failed")


def test_cli_flags(export_dir, tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    _write(tmp_path / "x.png", image)
    (tmp_path / "boxes.json").write_text(json.dumps({"x.png": [[10, 10, 50, 50]]}))
    values = flags.FlagValues()
    holders = predict.define_flags(scheme="cuhk5", flag_values=values)
    argv = values(["predict", f"--model={export_dir}", f"--input={tmp_path / 'x.png'}",
                   f"--output={tmp_path / 'out'}", "--nooverlay", "--batch_size=4",
                   f"--boxes_json={tmp_path / 'boxes.json'}"])
    assert predict.main(argv, holders) == 0
    assert "1 ok, 0 no face, 0 errors" in capsys.readouterr().out
    assert not (tmp_path / "out" / "overlays").exists()
    record = json.loads((tmp_path / "out" / "landmarks" / "x.json").read_text())
    assert record["scheme"] == "cuhk5" and record["faces"][0]["box_source"] == "given"


def test_entry_points_define_nothing_at_import():
    import ccnn_tf.predict  # noqa: F401
    import msrrn_tf.predict  # noqa: F401

    assert "batch_size" not in flags.FLAGS
