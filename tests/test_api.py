"""Tests of the public API (common.api), the model-path resolver, quiet start-up and
predict's output folder (issues 16 and 18)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
from absl import flags

from common import api, export, predict, quiet
from common.model_path import ModelPathError, resolve_model_path
from common.synthetic import generate_face

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
MARGIN = 0.2

# The README example (/work/notes/api.md), run as written with the paths replaced.
README_EXAMPLE = '''
import ccnn_tf

predictor = ccnn_tf.Predictor.from_export("runs/ccnn/export")   # or .from_run("runs/ccnn")
result = predictor("photo.png", boxes=[[40.0, 50.0, 160.0, 170.0]])  # no boxes: dlib finds them
print(result.landmarks.shape)   # (faces, 5, 2): (x, y) image pixels
print(result.boxes)             # (faces, 4): (l, t, r, b) image pixels
'''

TF_STARTUP_LINE = ("cuda_", "cudart_stub", "cpu_feature_guard", "oneDNN", "port.cc",
                   "op_level_cost_estimator", "absl::InitializeLog", "TF_ENABLE_ONEDNN_OPTS")


def make_model(num_landmarks: int) -> keras.Model:
    keras.utils.set_random_seed(num_landmarks)
    key = f"image_{SIZE}"
    inputs = {key: keras.Input((SIZE, SIZE, 3), name=key)}
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs[key])
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(num_landmarks * 2, activation="sigmoid")(x)
    return keras.Model(inputs, {"landmarks": keras.layers.Reshape((num_landmarks, 2))(x)})


@pytest.fixture(scope="module")
def model():
    return make_model(5)


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    """One tiny SavedModel, copied into the layouts below."""
    return export.export_saved_model(model, str(tmp_path_factory.mktemp("sm") / "1"),
                                     sizes=[SIZE], margin=MARGIN, num_landmarks=5)


def _run_dir(root: pathlib.Path, model, saved_model: str, style: str, layout: str
             ) -> pathlib.Path:
    """A training run as MSRRN (config.json) or CCNN (run.json) writes it, with its
    export in the ``new`` layout, the ``old`` one of that model, or ``none``."""
    run = root / f"{style}-{layout}"
    run.mkdir()
    model.save(run / "model.keras")
    if style == "msrrn":
        (run / "config.json").write_text(json.dumps(
            {"config": {"class": "msrrn_tf.config.MSRRNConfig",
                        "values": {"scales": [SIZE], "margin": MARGIN}}}))
    else:  # CCNN's cascade run: no config.json at the top, run.json
        (run / "run.json").write_text(json.dumps(
            {"config": {"input_size": SIZE, "margin": MARGIN, "num_landmarks": 5}}))
    if layout == "new":
        shutil.copytree(saved_model, run / "export" / "saved_model" / "1")
        (run / "export" / "export_report.json").write_text("{}")
    elif layout == "old" and style == "msrrn":  # RUN/export = the SavedModel
        shutil.copytree(saved_model, run / "export")
    elif layout == "old":  # EXPORT/saved_model = the SavedModel, TFLite beside it
        shutil.copytree(saved_model, run / "export" / "saved_model")
        (run / "export" / "ccnn_float32.tflite").write_bytes(b"")
    return run


@pytest.fixture(scope="module")
def runs(model, saved_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {(style, layout): _run_dir(root, model, saved_model, style, layout)
            for style in ("msrrn", "ccnn") for layout in ("new", "old", "none")}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    face = generate_face(0)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    assert cv2.imwrite(str(path), face.image[:, :, ::-1])
    return path, face.image, face.box.astype(np.float32)


# --------------------------------------------------------------------------- resolver


def test_resolver_finds_every_layout(runs):
    for (style, layout), run in runs.items():
        resolved = resolve_model_path(run)
        assert resolved.run_dir == str(run), (style, layout)
        if layout == "none":
            assert resolved.kind == "keras" and resolved.path == str(run / "model.keras")
            continue
        expected = {("msrrn", "old"): run / "export",
                    ("ccnn", "old"): run / "export" / "saved_model"}.get(
            (style, layout), run / "export" / "saved_model" / "1")
        assert resolved.kind == "saved_model" and resolved.path == str(expected)
        assert resolved.export_dir == str(run / "export")
        for alias in (run / "export", expected, expected / "saved_model.pb"):
            assert resolve_model_path(alias) == resolved, alias
    tflite = resolve_model_path(runs["ccnn", "old"] / "export" / "ccnn_float32.tflite")
    assert tflite.kind == "tflite" and tflite.run_dir == str(runs["ccnn", "old"])
    assert resolve_model_path(runs["ccnn", "new"] / "export" / "saved_model").path.endswith(
        os.path.join("saved_model", "1"))


def test_resolver_picks_the_highest_version(saved_model, tmp_path):
    for version in ("2", "10"):
        shutil.copytree(saved_model, tmp_path / "saved_model" / version)
    assert resolve_model_path(tmp_path).path == str(tmp_path / "saved_model" / "10")


def test_resolver_error_lists_what_it_looked_for(tmp_path):
    with pytest.raises(ModelPathError) as error:
        resolve_model_path(tmp_path)
    message = str(error.value)
    for looked in ("saved_model.pb", os.path.join("saved_model", "<version>"), "*.tflite",
                   "*.keras"):
        assert looked in message
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(ModelPathError, match="does not exist"):
        resolve_model_path(tmp_path / "nowhere")
    (tmp_path / "run.json").write_text("{}")  # a run without a model
    with pytest.raises(ModelPathError, match=r"model\.keras[\s\S]*checkpoints"):
        resolve_model_path(tmp_path)


def test_run_config_reads_every_run_format(tmp_path):
    from common.model_path import run_config

    (tmp_path / "stage2").mkdir()
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage2" / "config.json").write_text(json.dumps(  # a CCNN stage's runner
        {"config": {"class": None, "values": {"batch_size": 8,
                                              "ccnn": {"margin": 0.1, "input_size": 32}}}}))
    (tmp_path / "stage1" / "config.json").write_text(json.dumps({"margin": 0.5}))
    values = run_config(tmp_path)  # the last stage
    assert values["margin"] == 0.1 and values["input_size"] == 32 and values["batch_size"] == 8
    assert run_config(tmp_path / "stage2")["margin"] == 0.1
    (tmp_path / "run.json").write_text(json.dumps({"config": {"margin": 0.3}}))
    assert run_config(tmp_path)["margin"] == 0.3
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        run_config(tmp_path)
    assert run_config(None) == {}


def test_readme_predict_commands_work_for_every_run_layout(runs, photo, tmp_path, capsys):
    """Issue 18 item 3: --model=RUN_DIR/export and --model=RUN_DIR for both models
    (CCNN's run dir has run.json, not config.json: its margin came out unknown)."""
    path, _, box = photo
    boxes_json = tmp_path / "boxes.json"
    boxes_json.write_text(json.dumps({path.name: [box.tolist()]}))
    reference = None
    for (style, layout), run in sorted(runs.items()):
        for model in ([run, run / "export"] if layout != "none" else [run]):
            values = flags.FlagValues()
            holders = predict.define_flags(scheme="cuhk5", flag_values=values)
            out = tmp_path / f"{style}-{layout}-{model.name}"
            argv = values(["predict", f"--model={model}", f"--input={path}",
                           f"--output={out}", "--nooverlay", f"--boxes_json={boxes_json}"])
            assert predict.main(argv, holders) == 0, (style, layout, model)
            record = json.loads((out / "landmarks" / "photo.json").read_text())
            points = np.asarray(record["faces"][0]["landmarks"])
            reference = points if reference is None else reference
            np.testing.assert_allclose(points, reference, atol=2e-4)
    assert "1 ok" in capsys.readouterr().out


# --------------------------------------------------------------------------- the API


def test_predictor_inputs_and_boxes(runs, photo):
    path, image, box = photo
    predictor = api.Predictor.from_export(runs["ccnn", "new"] / "export",
                                          detector=lambda rgb: [(box, 0.9)])
    assert predictor.num_landmarks == 5
    from_path = predictor(str(path), boxes=[box])
    assert from_path.landmarks.shape == (1, 5, 2) and from_path.boxes.shape == (1, 4)
    np.testing.assert_array_equal(predictor(image, boxes=[box]).landmarks,
                                  from_path.landmarks)
    np.testing.assert_array_equal(predictor(image[:, :, ::-1].copy(), boxes=[box],
                                            bgr=True).landmarks, from_path.landmarks)
    detected = predictor(image)  # the pluggable detector
    np.testing.assert_allclose(detected.landmarks, from_path.landmarks, atol=1e-5)
    assert detected.scores.tolist() == pytest.approx([0.9])
    points, boxes, scores, confidence = detected  # a NamedTuple
    assert points is detected.landmarks and boxes is detected.boxes
    assert scores is detected.scores and confidence is detected.confidence
    assert confidence.shape == (1,)
    assert np.isnan(confidence).all() or ((confidence >= 0) & (confidence <= 1)).all()
    assert np.isnan(from_path.scores).all()
    # Batched across images: the same as one at a time.
    flipped = np.ascontiguousarray(image[:, ::-1])
    batch = predictor.predict_batch([image, flipped, image], [[box], [], [box, box - 2]])
    assert [len(r.landmarks) for r in batch] == [1, 0, 2]
    np.testing.assert_allclose(batch[0].landmarks, from_path.landmarks, atol=1e-5)
    np.testing.assert_allclose(batch[2].landmarks[1], predictor(image, [box - 2]).landmarks[0],
                               atol=1e-5)
    # The Keras model of the run gives the same landmarks in this process.
    in_process = api.Predictor.from_run(runs["ccnn", "none"])
    np.testing.assert_allclose(in_process(image, [box]).landmarks, from_path.landmarks,
                               atol=1e-4)
    assert isinstance(api.load_model(runs["msrrn", "old"]), keras.Model)


def test_predictor_accepts_pil_images(runs, photo):
    pil = pytest.importorskip("PIL.Image")
    _, image, box = photo
    predictor = api.Predictor.from_export(runs["msrrn", "old"])
    np.testing.assert_array_equal(predictor(pil.fromarray(image), [box]).landmarks,
                                  predictor(image, [box]).landmarks)


@pytest.mark.parametrize("boxes, message", [
    ([[-1e30, -1e30, 1e30, 1e30]], "mostly outside"),
    ([[10, 10, 10.001, 40]], "narrower than MIN_BOX_SIDE"),
    ([[np.inf, 10, 20, 40]], "finite"),
    ([[1, 2, 3]], r"\[K, 4\]"),
])
def test_predictor_rejects_bad_boxes(runs, photo, boxes, message):
    _, image, _ = photo
    predictor = api.Predictor.from_export(runs["msrrn", "new"])
    with pytest.raises(ValueError, match=message):
        predictor(image, boxes=boxes)


def test_predictor_rejects_bad_images(runs):
    predictor = api.Predictor.from_export(runs["msrrn", "new"])
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((20, 20, 3), np.float32), boxes=[[2, 2, 15, 15]])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor(np.zeros((20, 20, 2), np.uint8), boxes=[[2, 2, 15, 15]])


def test_package_exports_are_lazy():
    code = ("import sys, msrrn_tf, ccnn_tf; assert 'tensorflow' not in sys.modules; "
            "assert msrrn_tf.Predictor is ccnn_tf.Predictor; "
            "assert sorted(msrrn_tf.__all__) == sorted(ccnn_tf.__all__); print('ok')")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


# --------------------------------------------------------------------------- quiet


def test_verbose_requested():
    assert not quiet.verbose_requested([], environ={})
    assert quiet.verbose_requested([], environ={"FACE_ALIGN_VERBOSE": "1"})
    assert quiet.verbose_requested(["--verbosity=1"], environ={})
    assert quiet.verbose_requested(["-v", "2"], environ={})
    assert not quiet.verbose_requested(["--verbosity=0"], environ={})


def test_filtered_stderr_drops_only_startup_lines(capfd):
    with quiet.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n"
                    b"I0000 00:00:1796173143.506186    4944 port.cc:153] oneDNN custom\n"
                    b"E0000 00:00:1796173147.563108    4944 cuda_platform.cc:52] failed\n"
                    b"a real message\n")
        print("python too", file=sys.stderr)
    # (under pytest sys.stderr is not file descriptor 2, so the order may differ)
    assert sorted(capfd.readouterr().err.splitlines()) == ["a real message", "python too"]


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "FACE_ALIGN_VERBOSE",
                        quiet.QUIET_CHILDREN_ENV)}
    return dict(env, PYTHONPATH=str(REPO_ROOT), **extra)


def _startup_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(k in line for k in TF_STARTUP_LINE)]


@pytest.mark.slow
@pytest.mark.parametrize("quiet_parent", [True, False])
def test_a_spawned_child_of_a_quiet_process_is_quiet(quiet_parent):
    # compare_real fits its peers in a spawned child, which imports TensorFlow anew.
    code = ("import multiprocessing\n"
            "from common import quiet\n"
            f"if {quiet_parent}: quiet.configure([])\n"
            "if __name__ == '__main__':\n"
            "    import common.geometry\n"
            "    child = multiprocessing.get_context('spawn').Process(\n"
            "        target=common.geometry.landmark_box, args=([[0., 0.], [1., 1.]], 1., 0.))\n"
            "    child.start(); child.join(); print('exit', child.exitcode)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_quiet_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert "exit 0" in done.stdout, done.stderr[-3000:]
    if quiet_parent:
        assert _startup_lines(done.stderr) == [], done.stderr[-3000:]
    else:  # the reference: TensorFlow's start-up lines do appear without it
        assert _startup_lines(done.stderr), done.stderr[-3000:]


@pytest.mark.slow
def test_train_help_prints_no_tensorflow_startup_line():
    done = subprocess.run([sys.executable, "-m", "msrrn_tf.train", "--help"], cwd=REPO_ROOT,
                          env=_quiet_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert "--run_dir" in done.stdout  # (absl exits 1 after --help)
    assert _startup_lines(done.stderr) == [], done.stderr[-3000:]


@pytest.mark.slow
def test_readme_example_matches_the_quiet_predict_cli(saved_model, photo, tmp_path):
    """Issue 16: the README example gives the CLI's landmarks (1e-4 px) and a full
    ``python -m ccnn_tf.predict`` prints no TensorFlow start-up line."""
    path, _, box = photo
    run = tmp_path / "runs" / "ccnn"
    shutil.copytree(saved_model, run / "export" / "saved_model" / "1")
    shutil.copy(path, tmp_path / "photo.png")
    example = README_EXAMPLE.replace("[[40.0, 50.0, 160.0, 170.0]]", repr([box.tolist()]))
    assert example != README_EXAMPLE
    cwd = os.getcwd()
    namespace: dict = {}
    try:
        os.chdir(tmp_path)
        exec(compile(example, "README example", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    result = namespace["result"]
    (tmp_path / "boxes.json").write_text(json.dumps({"photo.png": [box.tolist()]}))
    done = subprocess.run(
        [sys.executable, "-m", "ccnn_tf.predict", "--model=runs/ccnn/export",
         "--input=photo.png", "--output=predictions", "--boxes_json=boxes.json"],
        cwd=tmp_path, env=_quiet_env(), capture_output=True, text=True, timeout=300,
        check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 ok" in done.stdout
    assert _startup_lines(done.stderr) == [], done.stderr[-3000:]
    record = json.loads((tmp_path / "predictions" / "landmarks" / "photo.json").read_text())
    np.testing.assert_allclose(np.asarray(record["faces"][0]["landmarks"]),
                               result.landmarks[0], atol=1e-4)
    assert (tmp_path / "predictions" / "overlays" / "photo.jpg").is_file()


# --------------------------------------------------------------------------- predict


def _predictor(saved_model):
    return predict.LandmarkPredictor.from_path(saved_model)


def _write(path: pathlib.Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def test_output_names_collisions_skips_and_recursion(saved_model, tmp_path):
    folder = tmp_path / "in"
    for name in ("a.jpg", "a.png", "b.JPG", "sub/c.png", "x.y.png"):
        _write(folder / name)
    (folder / "notes.xml").write_text("<xml/>")
    (folder / "style.xsl").write_text("<xsl/>")
    box = [[5.0, 5.0, 40.0, 40.0]]
    boxes = {n: box for n in ("a.jpg", "a.png", "b.JPG", "sub/c.png", "x.y.png")}
    flat = predict.predict_paths(_predictor(saved_model), [str(folder)], str(tmp_path / "o1"),
                                 boxes=boxes, progress=False)
    written = sorted(os.listdir(tmp_path / "o1" / "landmarks"))
    assert written == ["a_jpg.json", "a_png.json", "b.json", "x.y.json"]
    assert sorted(os.listdir(tmp_path / "o1" / "overlays")) == [
        "a_jpg.jpg", "a_png.jpg", "b.jpg", "x.y.jpg"]
    assert flat.counts == {"ok": 4, "no_face": 0, "error": 0, "skipped": 2}
    assert flat.failure() == ""
    deep = predict.predict_paths(_predictor(saved_model), [str(folder)], str(tmp_path / "o2"),
                                 boxes=boxes, progress=False, recursive=True, overlay=False)
    assert os.path.isfile(tmp_path / "o2" / "landmarks" / "sub" / "c.json")
    assert deep.counts["ok"] == 5
    # The same file name from two inputs: -2, in input order.
    twice = predict.predict_paths(_predictor(saved_model), [str(folder / "b.JPG")] * 2,
                                  str(tmp_path / "o3"), boxes=boxes, progress=False,
                                  overlay=False)
    assert [os.path.basename(r.landmarks) for r in twice.results] == ["b.json", "b-2.json"]


def test_rerun_removes_stale_outputs(saved_model, tmp_path):
    """Issue 18 item 2: a deleted and a corrupted input leave no "ok" result behind."""
    folder = tmp_path / "in"
    for name in ("keep.png", "gone.png", "broken.png"):
        _write(folder / name)
    boxes = {n: [[5.0, 5.0, 40.0, 40.0]] for n in ("keep.png", "gone.png", "broken.png")}
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "notes.md").write_text("mine")  # not predict's: stays
    (out / "overlays" / "keep.png.jpg").write_bytes(b"old name")  # an old double extension
    first = predict.predict_paths(_predictor(saved_model), [str(folder)], str(out),
                                  boxes=boxes, progress=False)
    assert first.counts["ok"] == 3
    (folder / "gone.png").unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    second = predict.predict_paths(_predictor(saved_model), [str(folder)], str(out),
                                   boxes=boxes, progress=False)
    assert second.counts == {"ok": 1, "no_face": 0, "error": 1, "skipped": 0}
    assert sorted(os.listdir(out / "landmarks")) == ["keep.json"]
    assert sorted(os.listdir(out / "overlays")) == ["keep.jpg"]
    assert (out / "notes.md").read_text() == "mine"


def _main(saved_model, *args: str) -> int:
    values = flags.FlagValues()
    holders = predict.define_flags(scheme="cuhk5", flag_values=values)
    return predict.main(values(["predict", f"--model={saved_model}", *args]), holders)


def test_cli_exit_status(saved_model, tmp_path, capsys):
    """Issue 18 item 6: a missing input, nothing to do or only failures exit non-zero."""
    out = f"--output={tmp_path / 'out'}"
    assert _main(saved_model, f"--input={tmp_path / 'missing.jpg'}", out) == 2
    assert "input not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert _main(saved_model, f"--input={empty}", out) == 1
    assert "no image or video to process (1 other files skipped)" in capsys.readouterr().err
    assert _main(saved_model, f"--input={empty}", out, "--allow_empty") == 0
    (empty / "bad.jpg").write_bytes(b"not a jpeg")
    assert _main(saved_model, f"--input={empty}", out) == 1
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("predict: error")]  # (the others: the progress line)
    assert len(err) == 1 and err[0].startswith("predict: error: every file failed (1;")
    _write(empty / "good.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"good.png": [[5, 5, 40, 40]]}))
    assert _main(saved_model, f"--input={empty}", out,
                 f"--boxes_json={tmp_path / 'boxes.json'}") == 0
    assert _main(tmp_path / "no-model", f"--input={empty}", out) == 2
    assert "no model at" in capsys.readouterr().err


def test_boxes_json_absurd_box_is_an_error_not_ok(saved_model, tmp_path):
    _write(tmp_path / "in" / "a.png")
    summary = predict.predict_paths(_predictor(saved_model), [str(tmp_path / "in")],
                                    str(tmp_path / "out"), progress=False,
                                    boxes={"a.png": [[-1e30, -1e30, 1e30, 1e30]]})
    (result,) = summary.results
    assert result.status.startswith("error: ") and "mostly outside" in result.status


def test_default_detector_matches_predict_on_a_real_photo(shared_data, runs, tmp_path):
    """dlib by default: the API's faces and landmarks are predict's on a real photo."""
    folder = shared_data / "sun5" / "lfw_5590"
    path = folder / "AJ_Cook_0001.jpg"
    if not path.is_file():
        path = min(folder.glob("*.jpg"))
    predictor = api.Predictor.from_export(runs["ccnn", "new"])
    result = predictor(str(path))
    assert len(result.boxes) >= 1 and np.isfinite(result.scores).all()
    summary = predict.predict_paths(predictor.landmark_predictor, [str(path)],
                                    str(tmp_path / "out"), progress=False, overlay=False)
    record = json.loads(pathlib.Path(summary.results[0].landmarks).read_text())
    np.testing.assert_allclose([f["box"] for f in record["faces"]], result.boxes, atol=1e-3)
    np.testing.assert_allclose([f["landmarks"] for f in record["faces"]], result.landmarks,
                               atol=1e-4)
