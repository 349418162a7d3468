"""Tests of common.multidata: several data folders at once (spec, mixing, scheme check,
per-data-set reports) and the trainers' multi-folder --data."""

import json
import math
import os

import numpy as np
import pytest

from common import evaluation, multidata
from common.multidata import DataSpec
from common.pipeline import make_dataset
from common.records import DataError
from common.synthetic import write_synthetic_tfrecords


def _folder(root, name, num_points=68, seed=0, splits=None):
    path = os.path.join(str(root), name)
    write_synthetic_tfrecords(path, num_points, splits or {"train": 6, "val": 3}, seed=seed,
                              progress=False)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    return (_folder(root, "alpha", seed=1, splits={"train": 8, "val": 3}),
            _folder(root, "beta", seed=2, splits={"train": 4, "val": 2}))


def test_data_spec_parses_weights_names_and_records_itself(folders):
    a, b = folders
    spec = DataSpec.parse(f"{a}:0.7,{b}:0.3")
    assert spec.folders == (a, b) and spec.weights == (0.7, 0.3)
    assert spec.names == ["alpha", "beta"] and spec.data == [a, b]
    assert spec.probabilities == pytest.approx([0.7, 0.3])
    assert DataSpec.parse(str(spec)) == spec
    record = json.loads(json.dumps(spec.to_dict()))
    assert record["folders"] == [os.path.abspath(a), os.path.abspath(b)]
    assert record["weights"] == [0.7, 0.3]
    one = DataSpec.parse(a)
    assert one.data == a and one.weights is None
    assert DataSpec.parse("gs://bucket/data").folders == ("gs://bucket/data",)
    assert DataSpec(("x/data", "y/data")).names == ["x/data", "y/data"]
    with pytest.raises(ValueError, match="every data folder or for none"):
        DataSpec.parse(f"{a}:1,{b}")
    with pytest.raises(ValueError, match="positive sum"):
        DataSpec((a, b), (0.0, 0.0))


def test_a_landmark_scheme_mismatch_names_the_folder(folders, tmp_path):
    five = _folder(tmp_path, "five", num_points=5)
    assert multidata.check_landmark_scheme(list(folders)) == 68
    with pytest.raises(DataError, match=r"five: faces with 5 landmarks, but .*alpha has 68"):
        multidata.check_landmark_scheme(f"{folders[0]},{five}")
    with pytest.raises(DataError, match=r"alpha: faces with 68 landmarks, but the model"):
        multidata.check_landmark_scheme(folders[0], num_landmarks=5)


def test_multi_folder_training_data_mix_in_the_given_proportions(folders):
    """0.7 / 0.3 of the faces from each folder (8 and 4 faces: sizes would give 2/3)."""
    spec = DataSpec.parse(f"{folders[0]}:0.7,{folders[1]}:0.3")
    dataset = make_dataset(spec.data, "train", sizes=(16,), num_landmarks=68, margin=0.2,
                           batch_size=40, training=True, seed=3, with_meta=True,
                           weights=spec.weights)
    n = 0
    from_beta = 0
    for _, _, meta in dataset.take(40):  # 1,600 faces
        paths = meta["source_path"].numpy()
        n += len(paths)
        from_beta += sum(p.startswith(b"synthetic:seed=2:") for p in paths)
    assert n == 1600
    share = from_beta / n
    sigma = math.sqrt(0.3 * 0.7 / n)  # binomial standard deviation of the share
    assert abs(share - 0.3) < 4 * sigma, (share, sigma)
    # Unweighted: one set, in proportion to the sizes (4 of 12 faces per epoch).
    epoch = make_dataset(spec.folders, "train", sizes=(16,), num_landmarks=68, margin=0.2,
                         batch_size=12, training=True, repeat=False, seed=3, with_meta=True)
    paths = [p for _, _, m in epoch for p in m["source_path"].numpy()]
    assert sum(p.startswith(b"synthetic:seed=2:") for p in paths) == 4


def _constant_model(shape):
    """A model predicting one normalised shape in every crop."""
    import tensorflow as tf

    def model(inputs):
        batch = tf.shape(next(iter(inputs.values())))[0]
        return {"landmarks": tf.tile(tf.constant(shape, tf.float32)[None], [batch, 1, 1])}

    return model


def test_per_dataset_report_scores_each_folder_and_their_union(folders):
    shape = np.random.default_rng(0).uniform(0.3, 0.7, size=(68, 2)).astype(np.float32)
    model = _constant_model(shape)

    def predict(folder, split):
        return evaluation.predict_split(model, folder, split, sizes=(16,), margin=0.2,
                                        num_landmarks=68)

    spec = DataSpec.parse(f"{folders[0]}:0.7,{folders[1]}:0.3")
    parts = multidata.predict_per_dataset(predict, spec, "val")
    assert list(parts) == ["alpha", "beta", multidata.UNION]
    assert [p.num_faces for p in parts.values()] == [3, 2, 5]
    table, markdown = multidata.per_dataset_report(parts, spec, "val",
                                                   kinds=("inter_pupil", "inter_ocular"))
    for name, folder in zip(spec.names, spec.folders):
        alone = predict(folder, "val")
        expected = evaluation.face_errors(alone, "landmarks", "inter_pupil").mean()
        assert table[name]["inter_pupil"] == pytest.approx(expected, rel=1e-6)
        assert table[name]["folder"] == os.path.abspath(folder)
    union = (3 * table["alpha"]["inter_pupil"] + 2 * table["beta"]["inter_pupil"]) / 5
    assert table[multidata.UNION]["inter_pupil"] == pytest.approx(union, rel=1e-6)
    assert table["alpha"]["weight"] == pytest.approx(0.7)
    assert "| alpha | 3 | 0.70 |" in markdown and "| all | 5 |" in markdown
    # A folder without the split is left out (the union is the others').
    only = multidata.predict_per_dataset(predict, spec.folders, "train")
    assert [p.num_faces for p in only.values()] == [8, 4, 12]
    with pytest.raises(FileNotFoundError, match="no folder"):
        multidata.predict_per_dataset(predict, spec, "test")


TINY_MSRRN = {
    "scales": [16, 24, 32], "patch_size": 6, "regression_conv_filters": [4],
    "regression_fc_units": [16], "init_conv_filters": [4], "init_fc_units": [16],
    "batch_size": 4,
}


@pytest.mark.slow
def test_msrrn_trains_on_two_weighted_folders_and_reports_each(folders, tmp_path):
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.training import train_msrrn

    config = MSRRNConfig().replace(**TINY_MSRRN)
    spec = f"{folders[0]}:0.7,{folders[1]}:0.3"
    run = tmp_path / "run"
    result = train_msrrn(config, data=spec, run_dir=str(run), steps=2, checkpoint_every=2,
                         export=False, seed=0, verbose=False)
    assert result.steps_done == 2
    per = result.evaluation["per_dataset"]
    assert list(per) == ["alpha", "beta", "all"]
    assert [per[k]["num_faces"] for k in per] == [3, 2, 5]
    written = json.loads((run / "eval" / "val.json").read_text())
    assert written["per_dataset"]["beta"]["weight"] == pytest.approx(0.3)
    assert written["data_spec"]["weights"] == [0.7, 0.3]
    assert "per data set" in (run / "eval" / "val.md").read_text()
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["folders"] == [os.path.abspath(f) for f in folders]
    assert record["data"]["weights"] == [0.7, 0.3]


def test_msrrn_refuses_folders_of_another_scheme(folders, tmp_path):
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.training import train_msrrn

    five = _folder(tmp_path, "five", num_points=5)
    with pytest.raises(DataError, match="five: faces with 5 landmarks"):
        train_msrrn(MSRRNConfig().replace(**TINY_MSRRN), data=f"{folders[0]},{five}",
                    run_dir=str(tmp_path / "run"), steps=1, export=False, verbose=False)


def _cli(module, *args, cwd):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


@pytest.mark.slow
def test_msrrn_cli_accepts_weighted_folders_and_refuses_a_scheme_mismatch(folders, tmp_path):
    run = tmp_path / "run"
    done = _cli("msrrn_tf.train", f"--data={folders[0]}:0.7,{folders[1]}:0.3",
                f"--run_dir={run}", f"--config_json={json.dumps(TINY_MSRRN)}", "--steps=1",
                "--noexport", "--eval_every=0", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "final shape per data set" in done.stdout
    assert list(json.loads((run / "eval" / "val.json").read_text())["per_dataset"]) == [
        "alpha", "beta", "all"]
    five = _folder(tmp_path, "five", num_points=5)
    bad = _cli("msrrn_tf.train", f"--data={folders[0]},{five}", f"--run_dir={tmp_path / 'x'}",
               "--steps=1", "--noexport", cwd=str(tmp_path))
    assert bad.returncode != 0 and "five: faces with 5 landmarks" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ccnn_cli_trains_on_two_weighted_folders_and_reports_each(tmp_path):
    a = _folder(tmp_path, "five_a", num_points=5, seed=3, splits={"train": 16, "val": 4})
    b = _folder(tmp_path, "five_b", num_points=5, seed=4, splits={"train": 8, "val": 2})
    run = tmp_path / "run"
    done = _cli("ccnn_tf.train", f"--data={a}:0.6,{b}:0.4", f"--run_dir={run}",
                "--preset=tiny", "--steps=2", "--batch_size=8", "--checkpoint_every=2",
                "--noexport", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((run / "eval" / "ccnn_val.json").read_text())
    per = results["per_dataset"]
    assert list(per) == ["five_a", "five_b", "all"]
    assert [per[k]["num_faces"] for k in per] == [4, 2, 6]
    assert per["five_b"]["weight"] == pytest.approx(0.4)
    assert "per data set" in (run / "eval" / "ccnn_val.md").read_text()
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["weights"] == [0.6, 0.4]
    from ccnn_tf.runs import run_data

    assert DataSpec.parse(run_data(str(run))).folders == (a, b)


@pytest.mark.slow
def test_msrrn_init_from_starts_from_another_runs_weights(folders, tmp_path):
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.training import check_init_from, train_msrrn

    config = MSRRNConfig().replace(**TINY_MSRRN)
    source = train_msrrn(config, data=folders[0], run_dir=str(tmp_path / "pre"), steps=2,
                         checkpoint_every=2, evaluate=False, export=False, seed=0,
                         verbose=False)
    fresh = train_msrrn(config, data=folders[1], run_dir=str(tmp_path / "fresh"), steps=0,
                        evaluate=False, export=False, seed=1, verbose=False)
    tuned = train_msrrn(config, data=folders[1], run_dir=str(tmp_path / "tuned"), steps=0,
                        evaluate=False, export=False, seed=1, verbose=False,
                        init_from=str(tmp_path / "pre"))
    pairs = list(zip(source.model.trainable_weights, tuned.model.trainable_weights,
                     fresh.model.trainable_weights))
    assert pairs
    for a, b, _ in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), c.numpy()) for a, _, c in pairs)
    record = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert record["training"]["init_checkpoint"].startswith(str(tmp_path / "pre"))
    # Another architecture: a clear error naming the weight and the differing field.
    wider = config.replace(regression_fc_units=(24,))
    with pytest.raises(ValueError, match=r"do not fit this model .*differs in "
                                         r"regression_fc_units"):
        check_init_from(wider, str(tmp_path / "pre"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        check_init_from(config, str(tmp_path / "nothing"))
    done = _cli("msrrn_tf.train", f"--data={folders[1]}", f"--run_dir={tmp_path / 'x'}",
                f"--config_json={json.dumps({**TINY_MSRRN, 'regression_fc_units': [24]})}",
                f"--init_from={tmp_path / 'pre'}", "--steps=1", cwd=str(tmp_path))
    assert done.returncode != 0 and "do not fit this model" in done.stderr
    assert "Traceback" not in done.stderr
