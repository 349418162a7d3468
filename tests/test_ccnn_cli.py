"""End-to-end tests of CCNN training, evaluation and export (library and CLIs).

A tiny cascade (``CCNNConfig.tiny``) is trained for a few steps per stage on a tiny
synthetic 5-point set: stages in series, resume, evaluation files, export + parity.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ccnn_tf import training
from ccnn_tf.config import CCNNConfig
from ccnn_tf.evaluate import compare_runs
from ccnn_tf.model import build_ccnn
from ccnn_tf.summary import parameter_table
from common.synthetic import ensure_synthetic_dataset

pytestmark = pytest.mark.slow

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("synthetic")
    return ensure_synthetic_dataset(5, {"train": 32, "val": 12}, seed=0, cache_dir=str(cache))


def _run(module: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{module} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_layout_and_loss_follow_the_windows():
    config = CCNNConfig.preset("tiny")
    model = build_ccnn(config, network_outputs=True)
    first = training.network_layout(model.stage_layer(1))
    assert first.point_indices == (0, 1, 2, 3, 4, 0, 1, 2, 2, 3, 4)  # F1, EN1, NM1
    np.testing.assert_allclose(first.weights, [0.1] * 5 + [1 / 6] * 6)
    scale = 1 / (1 + 2 * config.margin)
    np.testing.assert_allclose(first.window_sizes[0], [scale, scale], rtol=1e-6)
    np.testing.assert_allclose(first.window_sizes[5], [scale, 0.8 * scale], rtol=1e-6)
    second = training.network_layout(model.stage_layer(2))
    np.testing.assert_allclose(second.window_sizes[:2, 0], [0.32 * scale, 0.36 * scale],
                               rtol=1e-5)
    loss = training.window_relative_loss(second)
    truth = tf.random.uniform([3, 5, 2])
    exact = tf.gather(truth, list(second.point_indices), axis=1)
    np.testing.assert_allclose(loss(truth, exact).numpy(), 0.0, atol=1e-10)
    # One window width off on x for every estimate: each network's MSE is 1/2.
    shifted = exact + tf.constant(second.window_sizes * np.float32([1, 0]))
    np.testing.assert_allclose(loss(truth, shifted).numpy(), [5.0] * 3, rtol=1e-5)


def test_stages_in_series_resume_and_stale_weights(data, tmp_path):
    config = CCNNConfig.preset("tiny")
    run_dir = str(tmp_path / "run")
    common = {"data": data, "run_dir": run_dir, "steps": STEPS, "checkpoint_every": 2,
              "verbose": False}
    with pytest.raises(FileNotFoundError, match="stage 1"):
        training.train_ccnn_stage(config, 2, **common)
    # The training split is the one asked for (here one that does not exist).
    with pytest.raises(FileNotFoundError, match="tune_train"):
        training.train_ccnn_stage(config, 1, **{**common, "run_dir": str(tmp_path / "other")},
                                  train_split="tune_train")
    first = training.train_ccnn_stage(config, 1, **common)
    assert first.steps_done == STEPS and "val_nme_box_width" in first.history
    stage1 = training.load_stage_model(run_dir, 1)

    second = training.train_ccnn_stage(config, 2, **common)
    for got, expected in zip(second.model.stage_layer(1).get_weights(),
                             stage1.stage_layer(1).get_weights()):
        np.testing.assert_array_equal(got, expected)  # loaded, frozen, unchanged
    assert second.model.frozen_stages == (1,)
    stage2 = training.load_stage_model(run_dir, 2)
    assert not all(np.array_equal(a, b) for a, b in zip(
        stage2.stage_layer(2).get_weights(),
        build_ccnn(config, num_stages=2).stage_layer(2).get_weights()))

    # Resume: the same call continues from the checkpoint to a larger total.
    more = training.train_ccnn_stage(config, 2, **{**common, "steps": STEPS + 2})
    assert (more.initial_step, more.steps_done) == (STEPS, STEPS + 2)

    # Retraining stage 1 makes stage 2's checkpoints stale: refused.
    assert training.consistent_stages(run_dir) == 2
    training.train_ccnn_stage(config, 1, **{**common, "steps": STEPS + 2})
    assert training.consistent_stages(run_dir) == 1
    with pytest.raises(ValueError, match="changed since"):
        training.train_ccnn_stage(config, 2, **{**common, "steps": STEPS + 4})
    # A different cascade in the same run directory is refused too.
    with pytest.raises(ValueError, match="input_size"):
        training.train_ccnn_stage(config.replace(input_size=40), 1, **common)


def test_cli_train_evaluate_export(data, tmp_path):
    run_dir = str(tmp_path / "run")
    trained = _run("ccnn_tf.train", f"--data={data}", f"--run_dir={run_dir}", "--preset=tiny",
                   f"--steps={STEPS}", "--batch_size=8", "--checkpoint_every=2",
                   "--noexport", '--config_json={"lr_decay_steps": 3}', cwd=str(tmp_path))
    assert "stage_3" in trained.stdout
    from common.config import flatten_config_values
    from common.run_files import read_run_record

    assert flatten_config_values(read_run_record(run_dir).values)["lr_decay_steps"] == 3
    for k in (1, 2, 3):
        assert f"stage {k}: {STEPS} steps in " in trained.stdout
    assert "faces/s at batch 8" in trained.stdout
    for k in (1, 2, 3):
        assert os.path.isfile(os.path.join(run_dir, f"stage{k}", "model.keras"))
        assert os.path.isfile(os.path.join(run_dir, f"stage{k}", "config.json"))
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "eval", "ccnn_val.json")) as f:
        results = json.load(f)
    assert results["stages"] == ["stage_1", "stage_2", "stage_3"]

    out = str(tmp_path / "eval")
    evaluated = _run("ccnn_tf.evaluate", f"--model={run_dir}", "--split=val",
                     f"--output={out}", "--timing_faces=2", "--box_faces=3",
                     "--box_sources=stored,jitter_5", cwd=str(tmp_path))
    for name in ("ccnn_val.json", "ccnn_val.md", "ccnn_val_ced.png",
                 "ccnn_val_per_point.png", "box_robustness_val.md"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "box_robustness_val.json")) as f:
        box_table = json.load(f)
    assert box_table["sources"] == ["stored", "jitter_5"] and box_table["num_faces"] == 3
    assert box_table["kind"] == "box_width" and "| CCNN |" in evaluated.stdout
    with open(os.path.join(out, "ccnn_val.json")) as f:
        results = json.load(f)
    assert results["point_labels"] == ["LE", "RE", "N", "LM", "RM"]
    assert results["num_faces"] == 12 and results["data"] == data
    for output in ("stage_1", "stage_2", "stage_3", "landmarks"):
        for kind in ("box_width", "inter_ocular"):
            entry = results["outputs"][output][kind]
            # Four steps per stage do not make a good model (an inter-ocular error
            # above 1 is possible), so check consistency, not quality.
            assert len(entry["per_point"]) == 5 and np.isfinite(entry["mean"])
            assert entry["mean"] > 0
            np.testing.assert_allclose(entry["mean"], np.mean(entry["per_point"]), rtol=1e-5)
            assert "failure@0.1" in entry and len(entry["per_point_failure@0.1"]) == 5
    cost = results["cost"]
    assert [row["stages"] for row in cost["by_stages"]] == [1, 2, 3]
    expected = sum(row["parameters"] for row in parameter_table(CCNNConfig.preset("tiny")))
    assert cost["parameters"] == expected and cost["ms_per_face"] > 0
    with open(os.path.join(out, "ccnn_val.md")) as f:
        markdown = f.read()
    assert "after each stage" in markdown and "Table 3" in markdown
    # The flip test (off by default) switched on after training: other landmarks.
    flipped = str(tmp_path / "eval_flip")
    _run("ccnn_tf.evaluate", f"--model={run_dir}", "--split=val", f"--output={flipped}",
         "--timing_faces=2", "--flip_test", "--confidence_source=pairs", cwd=str(tmp_path))
    with open(os.path.join(flipped, "ccnn_val.json")) as f:
        flip_results = json.load(f)
    assert flip_results["num_faces"] == 12
    assert (flip_results["outputs"]["landmarks"]["box_width"]["mean"]
            != results["outputs"]["landmarks"]["box_width"]["mean"])

    compare = str(tmp_path / "compare")
    compared = compare_runs({"windows+": run_dir, "again": os.path.join(run_dir, "stage2")},
                            None, "val", compare)
    assert list(compared["results"]) == ["windows+", "again"]
    assert compared["results"]["again"]["stages"] == ["stage_1", "stage_2"]
    assert os.path.isfile(os.path.join(compare, "ccnn_compare_per_point_stage1.png"))
    assert os.path.isfile(compared["paths"]["markdown"])

    exported = str(tmp_path / "export")
    _run("ccnn_tf.export", f"--model={run_dir}", f"--output={exported}", "--num_faces=4",
         cwd=str(tmp_path))
    with open(os.path.join(exported, "export_report.json")) as f:
        report = json.load(f)
    assert set(report["parity"]) == {"saved_model", "tflite_float32", "tflite_dynamic"}
    for name, parity in report["parity"].items():
        assert parity["max_abs_diff_normalised"] <= parity["tolerance_normalised"], name
        assert parity["num_faces"] == 4
    assert os.path.isfile(os.path.join(exported, "saved_model", "1", "saved_model.pb"))
    assert sorted(n for n in os.listdir(exported) if n.endswith(".tflite")) == [
        "model_dynamic_int8.tflite", "model_float32.tflite"]
    assert os.path.abspath(report["training_data"]) == os.path.abspath(data)

    # The SavedModel alone (no Python model classes) maps images + boxes to pixels.
    loaded = tf.saved_model.load(os.path.join(exported, "saved_model", "1"))
    images = np.zeros((2, 128, 128, 3), np.uint8)
    boxes = np.array([[30, 30, 90, 90], [20, 25, 100, 105]], np.float32)
    served = loaded.signatures["serving_default"](images=images, boxes=boxes)
    assert served["landmarks"].shape == (2, 5, 2)
    # The default confidence (flip test agreement) is served, in [0, 1].
    assert served["confidence"].shape == (2,)
    assert np.all((served["confidence"].numpy() >= 0) & (served["confidence"].numpy() <= 1))
