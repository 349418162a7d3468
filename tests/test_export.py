"""Tests of SavedModel / TFLite export and the parity checks (common/export.py)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import export, geometry

SIZE = 32
NUM_LANDMARKS = 5
MARGIN = 0.2


@keras.saving.register_keras_serializable(package="common_tests")
class TinyExportNet(keras.Model):
    """``{"image_32"}`` -> ``{"stage_0", "landmarks"}``: a two-stage toy cascade."""

    def __init__(self, size: int = SIZE, num_landmarks: int = NUM_LANDMARKS,
                 filters: int = 4, **kwargs):
        key = f"image_{size}"
        inputs = {key: keras.Input((size, size, 3), name=key)}
        x = keras.layers.Rescaling(1.0 / 255.0)(inputs[key])
        x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        stage_0 = keras.layers.Reshape((num_landmarks, 2))(
            keras.layers.Dense(num_landmarks * 2, activation="sigmoid")(x))
        delta = keras.layers.Reshape((num_landmarks, 2))(
            keras.layers.Dense(num_landmarks * 2)(x))
        landmarks = keras.layers.Add()([stage_0, delta])
        super().__init__(inputs=inputs, outputs={"stage_0": stage_0, "landmarks": landmarks},
                         **kwargs)
        self.size = size
        self.num_landmarks = num_landmarks
        self.filters = filters

    def get_config(self):
        return {"size": self.size, "num_landmarks": self.num_landmarks,
                "filters": self.filters, "name": self.name, "trainable": self.trainable}


def make_model(seed: int) -> TinyExportNet:
    keras.utils.set_random_seed(seed)
    return TinyExportNet()


def export_model(model, export_dir):
    return export.export_saved_model(model, str(export_dir), sizes=[SIZE], margin=MARGIN,
                                     num_landmarks=NUM_LANDMARKS)


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("export") / "1")


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 12, 40, 45], [0, 0, 79, 59], [30, 20, 70, 50]], np.float32)
    return images, boxes


def test_signatures_and_export_info(exported):
    loaded = tf.saved_model.load(exported)
    assert set(loaded.signatures) == {"serving_default", "serving_cropped"}
    default = loaded.signatures["serving_default"]
    _, inputs = default.structured_input_signature
    assert inputs["images"].dtype == tf.uint8
    assert inputs["images"].shape.as_list() == [None, None, None, 3]
    assert inputs["boxes"].dtype == tf.float32
    assert inputs["boxes"].shape.as_list() == [None, 4]
    assert list(default.structured_outputs) == ["landmarks"]
    assert default.structured_outputs["landmarks"].shape.as_list() == [None, NUM_LANDMARKS, 2]

    cropped = loaded.signatures["serving_cropped"]
    _, inputs = cropped.structured_input_signature
    assert inputs["image_32"].shape.as_list() == [None, SIZE, SIZE, 3]
    assert inputs["image_32"].dtype == tf.float32
    assert set(cropped.structured_outputs) == {"landmarks", "stage_0"}

    info = export.read_export_info(exported)
    assert info["sizes"] == [SIZE] and info["margin"] == MARGIN
    assert info["num_landmarks"] == NUM_LANDMARKS
    assert info["model_class"].endswith("TinyExportNet")


def test_serving_default_matches_preprocess_model_crop_to_image(exported, model, faces):
    images, boxes = faces
    loaded = tf.saved_model.load(exported)
    served = loaded.signatures["serving_default"](images=tf.constant(images),
                                                  boxes=tf.constant(boxes))["landmarks"]
    inputs, crop_boxes = geometry.preprocess_faces(images, boxes, [SIZE], MARGIN)
    expected = geometry.crop_to_image(model(inputs)["landmarks"], crop_boxes)
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_in_process_parity(exported, model, faces):
    report = export.check_parity(exported, model, *faces, atol=1e-4, fresh_process=False)
    assert report["num_faces"] == 3
    assert set(report) == {"landmarks", "cropped/landmarks", "cropped/stage_0", "num_faces"}


@pytest.mark.slow
def test_fresh_process_parity(exported, model, faces):
    report = export.check_parity(exported, model, *faces, atol=1e-4)
    assert max(report["landmarks"], report["cropped/stage_0"]) <= 1e-4


def test_parity_failure_is_reported(exported, faces):
    with pytest.raises(export.ParityError, match=r"serving_default landmarks \(pixels\): "
                                                 r"max abs difference .* > atol"):
        export.check_parity(exported, make_model(1), *faces, fresh_process=False)


@pytest.fixture(scope="module")
def tflite_float(exported, tmp_path_factory):
    return export.export_tflite(exported, str(tmp_path_factory.mktemp("lite") / "m.tflite"))


def test_tflite_float_parity(tflite_float, model, faces):
    assert export.tflite_input_sizes(tflite_float) == [SIZE]
    report = export.check_tflite_parity(tflite_float, model, *faces, margin=MARGIN,
                                        atol=1e-4, fresh_process=False)
    assert report["num_faces"] == 3 and "cropped/stage_0" in report
    assert os.listdir(os.path.dirname(tflite_float)) == ["m.tflite"]  # no temp files


@pytest.mark.slow
def test_tflite_fresh_process_parity(tflite_float, model, faces):
    report = export.check_tflite_parity(tflite_float, model, *faces, margin=MARGIN,
                                        atol=1e-4)
    assert report["landmarks"] <= 1e-4


def test_tflite_quantized(model, faces, tmp_path):
    inputs, _ = geometry.preprocess_faces(*faces, [SIZE], MARGIN)
    calibration = [{"image_32": inputs["image_32"][i:i + 1].numpy()} for i in range(3)]
    dynamic = export.export_tflite(model, str(tmp_path / "dynamic.tflite"), quantize=True)
    full = export.export_tflite(model, str(tmp_path / "int8.tflite"), quantize=True,
                                representative_data=calibration)
    for path in (dynamic, full):
        report = export.check_tflite_parity(path, model, *faces, margin=MARGIN,
                                            atol=2.0, fresh_process=False)
        assert report["landmarks"] <= 2.0  # pixels, on ~30-80 px crops
    with pytest.raises(ValueError, match="quantize=True"):
        export.export_tflite(model, str(tmp_path / "x.tflite"),
                             representative_data=calibration)


def tree_digest(directory) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def test_export_is_atomic(tmp_path, faces, monkeypatch):
    old_model, new_model = make_model(2), make_model(3)
    target = tmp_path / "1"
    export_model(old_model, target)
    before = tree_digest(target)
    real_save = tf.saved_model.save

    def crashing_save(obj, export_dir, **kwargs):
        real_save(obj, export_dir, **kwargs)
        with open(os.path.join(export_dir, "variables", "variables.index"), "wb") as f:
            f.write(b"half written")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        export_model(new_model, target)
    monkeypatch.undo()
    # The previous export is untouched and nothing is left behind.
    assert os.listdir(tmp_path) == ["1"]
    assert tree_digest(target) == before

    export_model(new_model, target)
    assert os.listdir(tmp_path) == ["1"]
    export.check_parity(str(target), new_model, *faces, fresh_process=False)


def test_refuses_to_replace_other_directories(model, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export_model(model, tmp_path)
    with pytest.raises(ValueError, match="local path"):
        export_model(model, "gs://bucket/model/1")


@pytest.mark.parametrize("images, boxes, message", [
    (np.zeros((20, 20, 3), np.uint8), [[1, 1, 10, 10]],
     r"Shape of tensor images \[20,20,3\] is not compatible"),
    (np.zeros((1, 20, 20, 4), np.uint8), [[1, 1, 10, 10]],
     r"Shape of tensor images \[1,20,20,4\] is not compatible"),
    (np.zeros((1, 20, 20, 3), np.float32), [[1, 1, 10, 10]], "uint8"),
    (np.zeros((1, 20, 20, 3), np.uint8), [1, 1, 10, 10],
     r"Shape of tensor boxes \[4\] is not compatible"),
    (np.zeros((0, 20, 20, 3), np.uint8), np.zeros((0, 4)), "at least one image"),
    (np.zeros((1, 20, 20, 3), np.uint8), [[5, 5, 5, 10]], "right > left"),
    (np.zeros((1, 20, 20, 3), np.uint8), [[5, 5, 10, 5]], "bottom > top"),
    (np.zeros((2, 20, 20, 3), np.uint8), [[1, 1, 10, 10]], "same N"),
])
def test_serving_input_validation(exported, images, boxes, message):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    boxes = tf.constant(np.asarray(boxes, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(images=tf.constant(images), boxes=boxes)


def test_cropped_input_validation(exported):
    serve = tf.saved_model.load(exported).signatures["serving_cropped"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_32"):
        serve(image_32=tf.zeros((1, 16, 16, 3)))


def test_export_info_is_json(exported):
    with open(os.path.join(exported, export.EXPORT_INFO)) as f:
        assert json.load(f)["signatures"] == ["serving_default", "serving_cropped"]


# --------------------------------------------------------------------------------------
# The export as a unit (common.export.write_export)
# --------------------------------------------------------------------------------------


def tflite_variants():
    """Two TFLite files, as the exporters write them (float32, dynamic range)."""
    return [export.TFLiteVariant("tflite_float32", "model_float32.tflite",
                                 lambda saved, path: export.export_tflite(saved, path)),
            export.TFLiteVariant("tflite_dynamic", "model_dynamic_int8.tflite",
                                 lambda saved, path: export.export_tflite(saved, path,
                                                                          quantize=True))]


def write_unit(model, export_dir, **kwargs):
    return export.write_export(model, str(export_dir), sizes=[SIZE], margin=MARGIN,
                               num_landmarks=NUM_LANDMARKS, tflite=tflite_variants(),
                               **kwargs)


def test_write_export_layout_and_report(model, faces, tmp_path):
    target = tmp_path / "export"

    def check(name, path):
        if name == "saved_model":
            return export.check_parity(path, model, *faces, fresh_process=False)
        return export.check_tflite_parity(path, model, *faces, margin=MARGIN, atol=2.0,
                                          fresh_process=False)

    report = write_unit(model, target, check=check, info={"training_data": "/data/x"})
    assert sorted(os.listdir(target)) == ["export_report.json", "model_dynamic_int8.tflite",
                                          "model_float32.tflite", "saved_model"]
    assert os.listdir(target / "saved_model") == ["1"]
    assert export.saved_model_dir(str(target)) == str(target / "saved_model" / "1")
    written = export.read_report(str(target))
    assert written == report
    assert written["weights_sha256"] == export.weights_sha256(model)
    assert written["weights_sha256"] != export.weights_sha256(make_model(1))
    assert written["files"]["saved_model"] == str(target / "saved_model" / "1")
    assert set(written["parity"]) == {"saved_model", "tflite_float32", "tflite_dynamic"}
    assert written["training_data"] == "/data/x" and written["sizes"] == [SIZE]
    assert set(written["signatures"]) == {"serving_default", "serving_cropped"}
    assert os.listdir(tmp_path) == ["export"]


def test_failed_check_keeps_the_previous_export(tmp_path):
    target = tmp_path / "export"
    write_unit(make_model(2), target)
    before = tree_digest(target)

    def failing(name, path):
        if name == "tflite_float32":
            raise export.ParityError("too far (simulated)")
        return {}

    with pytest.raises(export.ParityError, match="simulated"):
        write_unit(make_model(3), target, check=failing)
    assert tree_digest(target) == before
    assert os.listdir(tmp_path) == ["export"]


def test_saved_model_dir_finds_old_layouts(model, faces, tmp_path):
    msrrn_old = export_model(model, tmp_path / "msrrn_run" / "export")  # SavedModel itself
    ccnn_old = export_model(model, tmp_path / "ccnn" / "saved_model")   # EXPORT/saved_model
    assert export.saved_model_dir(msrrn_old) == msrrn_old
    assert export.saved_model_dir(str(tmp_path / "ccnn")) == ccnn_old
    for export_dir in (msrrn_old, str(tmp_path / "ccnn")):
        landmarks = export.run_saved_model(export.saved_model_dir(export_dir), *faces)
        assert landmarks["landmarks"].shape == (3, NUM_LANDMARKS, 2)
    with pytest.raises(FileNotFoundError, match=r"saved_model/<version>"):
        export.saved_model_dir(str(tmp_path))


@pytest.mark.parametrize("unit", [True, False], ids=["write_export", "export_saved_model"])
def test_export_respects_the_umask(model, tmp_path, unit):
    previous = os.umask(0o022)
    try:
        target = tmp_path / "export"
        if unit:
            write_unit(model, target)
        else:
            export_model(model, target)
    finally:
        os.umask(previous)
    modes = {}
    for root, dirs, names in os.walk(target):
        for name in dirs + names + ([""] if root == str(target) else []):
            path = os.path.join(root, name)
            modes[os.path.relpath(path, target)] = os.stat(path).st_mode & 0o777
    # World-readable (and folders world-listable), as with umask 022 everything else.
    bad = {k: oct(v) for k, v in modes.items()
           if v & 0o044 != 0o044 or (os.path.isdir(target / k) and v & 0o011 != 0o011)}
    assert len(modes) > 4 and bad == {}


_KILLED_EXPORT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from common import export
import test_export as t

stage = sys.argv[1]
def die():
    os.kill(os.getpid(), signal.SIGKILL)

variants = t.tflite_variants()
if stage == "tflite":  # the first TFLite file written, the second half-written
    convert = variants[1].convert
    def half(saved, path):
        with open(path, "wb") as f:
            f.write(b"TFL3 half")
        die()
    variants[1] = export.TFLiteVariant(variants[1].name, variants[1].filename, half)
elif stage == "exchanged":  # swapped in, the previous export not yet removed
    real = export._exchange
    export._exchange = lambda a, b: (real(a, b), die())
export.write_export(t.make_model(3), {target!r}, sizes=[t.SIZE], margin=t.MARGIN,
                    num_landmarks=t.NUM_LANDMARKS, tflite=variants)
"""


def _owner(outputs, models):
    """The index of the model whose outputs these are."""
    close = [i for i, expected in enumerate(models)
             if np.allclose(outputs, expected, atol=0.05)]
    assert len(close) == 1, close
    return close[0]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tflite", "exchanged"])
def test_sigkill_mid_export_leaves_one_model(tmp_path, faces, stage):
    """SIGKILL an export of model B over model A's: every file belongs to one model."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "export"
    models = [make_model(2), make_model(3)]
    write_unit(models[0], target)
    script = tmp_path / "killed_export.py"
    script.write_text(_KILLED_EXPORT.format(tests=os.path.dirname(__file__),
                                            target=str(target)))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    done = subprocess.run([sys.executable, str(script), stage], check=False, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    inputs, _ = geometry.preprocess_faces(*faces, [SIZE], MARGIN)
    crops = {k: v.numpy() for k, v in inputs.items()}
    expected = [m(crops, training=False)["landmarks"].numpy() for m in models]
    files = sorted(os.path.relpath(os.path.join(root, n), target)
                   for root, _, names in os.walk(target) for n in names)
    owners = {}
    saved = export.saved_model_dir(str(target))
    cropped = tf.saved_model.load(saved).signatures["serving_cropped"]
    owners["saved_model"] = _owner(cropped(**crops)["landmarks"].numpy(), expected)
    for name in files:
        if name.endswith(".tflite"):
            owners[name] = _owner(export.run_tflite(str(target / name), crops)["landmarks"],
                                  expected)
    hashes = [export.weights_sha256(m) for m in models]
    owners["report"] = hashes.index(export.read_report(str(target))["weights_sha256"])
    assert len(set(owners.values())) == 1, owners
    assert {"export_report.json", "model_float32.tflite", "model_dynamic_int8.tflite"} <= set(
        files) and all(f.startswith("saved_model/1/") or "/" not in f for f in files), files
    assert owners["report"] == (1 if stage == "exchanged" else 0)

    # The next export removes what the killed one left beside the folder.
    export.write_export(models[1], str(target), sizes=[SIZE], margin=MARGIN,
                        num_landmarks=NUM_LANDMARKS)
    assert sorted(os.listdir(tmp_path)) == ["export", "killed_export.py"]


def test_an_interrupted_two_rename_swap_is_restored(tmp_path, monkeypatch):
    """Without an atomic exchange (not Linux), a crash between the two renames leaves the
    previous export at .NAME.old-*: the next export puts it back before anything else."""
    target = tmp_path / "export"
    (target / "saved_model" / "1").mkdir(parents=True)
    (target / "export_report.json").write_text("{}")
    os.rename(target, tmp_path / ".export.old-0123")  # the crash: first rename done
    export._restore_interrupted(str(target))
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert (target / "export_report.json").read_text() == "{}"
    # And the fallback itself replaces an export completely.
    monkeypatch.setattr(export, "_exchange", lambda a, b: False)
    new = tmp_path / "new"
    new.mkdir()
    (new / "export_report.json").write_text('{"new": 1}')
    export._replace_dir(str(new), str(target))
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert os.listdir(target) == ["export_report.json"]
