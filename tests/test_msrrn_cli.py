"""End-to-end tests of the MSRRN command lines: train (+ resume), evaluate, export.

A tiny model (small scales and widths) trains for a few steps on a tiny synthetic
set; every command runs in its own process, as a user would run it.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from common.evaluation import load_model
from common.synthetic import ensure_synthetic_dataset

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "scales": [16, 24, 32], "patch_size": 6, "regression_conv_filters": [4],
    "regression_fc_units": [16], "init_conv_filters": [4], "init_fc_units": [16],
}


def run_cli(module: str, *args: str) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{module} {' '.join(args)} failed:\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_synthetic_dataset(68, {"train": 12, "val": 4},
                                    cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data):
    """A run trained for 4 steps with the T = 1 ablation model, then resumed to 6."""
    run = tmp_path_factory.mktemp("runs") / "msrrn"
    common = [f"--data={data}", f"--run_dir={run}", f"--config_json={json.dumps(TINY_CONFIG)}",
              "--batch_size=4", "--checkpoint_every=2", "--eval_every=2", "--log_every=1",
              "--seed=0"]
    first = run_cli("msrrn_tf.train", *common, "--steps=4", "--stages=1")
    assert first.splitlines()[0] == f"run directory: {run}"
    assert "Table 2" in first and "SavedModel parity" in first
    second = run_cli("msrrn_tf.train", *common, "--steps=6", "--noexport")
    return run, first, second


def test_train_writes_a_complete_run(run_dir):
    run, first, _ = run_dir
    assert (run / "model.keras").is_file()
    assert (run / "model_config.json").is_file()
    assert (run / "export" / "saved_model" / "1" / "saved_model.pb").is_file()
    assert (run / "export" / "saved_model" / "1" / "export_info.json").is_file()
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["training_data"] and report["config"]["model"]["scales"] == [16, 24, 32]
    assert any((run / "tensorboard").iterdir())
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["values"]["model"]["scales"] == [16, 24, 32]
    assert record["config"]["values"]["train"]["batch_size"] == 4
    assert record["training"]["checkpoint_every"] == 2
    results = json.loads((run / "eval" / "val.json").read_text())
    assert list(results["table2"]) == ["mean shape", "initial CNN (S^0)", "1 stage",
                                       "2 stages", "3 stages"]
    assert (run / "eval" / "val_ced.png").is_file()
    # The T = 1 ablation model has its own run.
    assert (run / "stages_1" / "model.keras").is_file()
    sub = json.loads((run / "stages_1" / "config.json").read_text())
    assert sub["config"]["values"]["model"]["num_stages"] == 1
    assert "trained 4 steps (from step 0)" in first
    assert re.search(r"4 steps in \d+ s of training loop: [\d.]+ steps/s, \d+ faces/s at "
                     r"batch 4\)", first)
    assert results["steps_per_second"] > 0 and results["training_loop_seconds"] > 0
    # The bias correction was fitted on the 12 training faces and saved with the model.
    correction = json.loads((run / "bias_correction.json").read_text())
    assert correction["faces"] == 12 and len(correction["offsets"]) == 4
    assert "Bias correction fitted on 12 'train' faces" in first
    np.testing.assert_allclose(load_model(str(run)).get_shape_offsets(),
                               correction["offsets"], atol=1e-7)
    # ... and the true ablation was evaluated after training.
    summary = json.loads((run / "eval" / "msrrn_eval.json").read_text())
    assert list(summary["splits"]["val"]["ablation"]) == ["mean shape", "T=1 model",
                                                          "T=3 model"]


def test_rerun_resumes(run_dir):
    run, _, second = run_dir
    assert "trained 6 steps (from step 4)" in second
    assert re.search(r"\(2 steps in \d+ s of training loop", second)
    assert "resuming" in second
    checkpoints = os.listdir(run / "checkpoints")
    assert any(name.startswith("ckpt-6") for name in checkpoints)
    history = json.loads((run / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4, 5, 6]
    assert history["val_step"] == [2, 4, 6]
    assert all(v > 0 for v in history["val_nme_inter_pupil"])


def test_evaluate_writes_reports(run_dir, data, tmp_path):
    run, _, _ = run_dir
    out = tmp_path / "eval"
    output = run_cli("msrrn_tf.evaluate", f"--model={run}", f"--data={data}",
                     f"--output={out}", f"--ablation_models={run / 'stages_1'}",
                     "--box_faces=3", "--box_sources=stored,landmark_square,jitter_10")
    assert "val: stages of one model" in output
    assert "flip test on" in output  # as trained (MSRRNConfig.flip_test)
    assert sorted(os.listdir(out)) == ["box_robustness_val.json", "box_robustness_val.md",
                                       "msrrn_eval.json", "msrrn_eval.md",
                                       "msrrn_eval_ced.png", "val.json", "val.md",
                                       "val_ced.png"]
    box_table = json.loads((out / "box_robustness_val.json").read_text())
    assert box_table["sources"] == ["stored", "landmark_square", "jitter_10"]
    assert box_table["num_faces"] == 3 and set(box_table["nme"]) == {"MSRRN"}
    assert "| MSRRN |" in output  # the table is printed
    summary = json.loads((out / "msrrn_eval.json").read_text())
    split = summary["splits"]["val"]
    assert split["num_faces"] == 4
    assert list(split["stages"]) == ["mean shape", "initial CNN (S^0)", "1 stage",
                                     "2 stages", "3 stages"]
    assert list(split["ablation"]) == ["mean shape", "T=1 model", "T=3 model"]
    for kind in ("inter_pupil", "inter_ocular"):
        entry = split["stages"]["3 stages"][kind]
        assert {"mean", "auc@0.08", "failure@0.08", "failure@0.1"} <= set(entry)
    per_split = json.loads((out / "val.json").read_text())
    assert len(per_split["outputs"]["landmarks"]["inter_pupil"]["per_point"]) == 68
    markdown = (out / "msrrn_eval.md").read_text()
    assert "separately trained models" in markdown and "AUC@0.08" in markdown


def test_export_with_tflite_and_parity(run_dir, data, tmp_path):
    run, _, _ = run_dir
    out = tmp_path / "exported"
    output = run_cli("msrrn_tf.export", f"--model={run / 'model.keras'}", f"--output={out}",
                     "--tflite", f"--data={data}", "--noflip_test")
    # Trained with the flip test, exported without it; parity is against that model.
    assert "flip test off" in output
    assert (out / "saved_model" / "1" / "saved_model.pb").is_file()
    assert (out / "model_float32.tflite").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["parity"]) == {"saved_model", "tflite_float32"}
    assert "SavedModel parity (fresh process" in output
    assert "TFLite parity (fresh process" in output
