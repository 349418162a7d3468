"""End-to-end check of ``experiments.compare_real`` on tiny synthetic data sets."""

import importlib
import importlib.util
import json

import pytest

from experiments import compare_real
from experiments import peers as peer_lib

TINY_DLIB = {"cascade_depth": 2, "num_trees_per_cascade_level": 4, "tree_depth": 2,
             "oversampling_amount": 1, "feature_pool_size": 40, "num_test_splits": 4}
HAS_MTCNN = importlib.util.find_spec("mtcnn") is not None
TINY_LBF = {"initShape_n": 1, "stages_n": 2, "tree_n": 2, "feats_m": [40, 40],
            "radius_m": [0.3, 0.15]}


def _lbf_configured() -> bool:
    try:
        peer_lib.check_lbf_tool()
    except peer_lib.LBFUnavailable:
        return False
    return True
TINY_MSRRN = {"scales": (16, 32), "num_stages": 2, "patch_size": 4,
              "regression_conv_filters": (4,), "regression_fc_units": (16,),
              "init_conv_filters": (4, 4), "init_fc_units": (16,), "batch_size": 8}


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """One synthetic-data cache for the module: each data set is generated once (the
    comparisons only read it; fitted peers live in each test's own output folder)."""
    return tmp_path_factory.mktemp("compare_real_data")


def _data(cache, num_points):
    from common.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(num_points, {"train": 24, "val": 8}, seed=0,
                                    cache_dir=str(cache / "cache"), progress=False)


def _check_export(export_dir, num_landmarks):
    """The training run leaves an export in the one layout (common.export.write_export),
    which the one loading code serves like the run's Keras model, for both models."""
    import numpy as np

    from common.api import Predictor
    from common.synthetic import generate_face

    assert (export_dir / "saved_model" / "1" / "saved_model.pb").is_file()
    report = json.loads((export_dir / "export_report.json").read_text())
    assert len(report["weights_sha256"]) == 64 and report["parity"]
    face = generate_face(3)
    box = face.box.astype(np.float32)[None]
    served = Predictor.from_export(str(export_dir))(face.image, boxes=box)
    in_process = Predictor.from_run(str(export_dir.parent))(face.image, boxes=box)
    assert served.landmarks.shape == (1, num_landmarks, 2)
    np.testing.assert_allclose(served.landmarks, in_process.landmarks, atol=1e-3)


def _check_report(report, output, family, methods):
    results = report["results"]
    assert set(results["methods"]) == set(methods)
    name = f"compare_{family}"
    for suffix in (".json", ".md", "_ced.png"):
        assert (output / f"{name}{suffix}").stat().st_size > 0
    with open(output / f"{name}.json") as f:
        written = json.load(f)
    assert set(written["methods"]) == set(methods)
    assert written["num_faces"] == 8
    for method in [family, *methods]:
        assert written["seconds_per_face"][method] > 0
    markdown = (output / f"{name}.md").read_text()
    assert report["markdown"] == markdown
    for method in methods:
        assert compare_real.METHOD_LABELS[method] in markdown
    return written


@pytest.mark.slow
def test_compare_msrrn_family(tmp_path, data_cache, monkeypatch):
    output = tmp_path / "msrrn"
    report = compare_real.compare(
        "msrrn", _data(data_cache, 68), output=str(output), steps=2,
        config_overrides=TINY_MSRRN, dlib_options=TINY_DLIB, dlib_threads=1,
        parallel_peers=True, timing_faces=2, verbose=False)
    written = _check_report(report, output, "msrrn", ["msrrn", "dlib_ert", "mean_shape"])
    # The stage ablation: the model's mean shape, S^0 and each stage.
    assert set(written["stages"]) == {"mean_shape", "stage_0", "stage_1", "stage_2"}
    assert "inter_pupil" in written["methods"]["msrrn"]
    assert {"beats_dlib_ert", "beats_mean_shape"} <= set(written["checks"])
    assert written["peers"]["dlib_ert"]["options"] == TINY_DLIB
    assert "- ours, training speed: 2 steps in " in report["markdown"]
    _check_export(output / "run" / "export", 68)
    # The box-robustness table: every method under each box source, same faces.
    table = written["box_robustness"]
    assert {"stored", "landmark_square", "jitter_5", "jitter_10"} <= set(table["sources"])
    assert {"MSRRN (ours)", "dlib ERT"} <= set(table["nme"])
    assert all(ratio >= 1.0 for ratio in table["ratio"].values())
    assert "### Box robustness" in report["markdown"] and "worst/best" in report["markdown"]
    if HAS_MTCNN:  # 5 points only: compared on the 5-point reduction
        assert {"mtcnn", "mtcnn_box", "msrrn", "dlib_ert"} <= set(written["five_point"])
        assert (output / "compare_msrrn_five_point_ced.png").stat().st_size > 0

    # A second run with --model reuses the fitted peers and trains nothing; LBF,
    # asked for without a configured lbf_tool, and MediaPipe's mesh without its venv
    # are skipped with a note; dlib's pretrained model (where installed) runs in its
    # 5-point form on the 5-point reduction.
    monkeypatch.delenv(peer_lib.LBF_TOOL_ENV, raising=False)
    monkeypatch.setenv("FACE_ALIGN_MEDIAPIPE_PYTHON", str(tmp_path / "no" / "python"))
    pretrained = [] if peer_lib.peer_unavailable("dlib_pretrained68") else [
        "dlib_pretrained68_cuhk5"]
    again = compare_real.compare(
        "msrrn", _data(data_cache, 68), output=str(output),
        model_path=str(output / "run"), peers=["dlib_ert", "lbf", "mediapipe_mesh", *pretrained],
        dlib_options=TINY_DLIB, timing_faces=2, verbose=False, box_faces=0)
    assert "box_robustness" not in again["results"]
    assert again["results"]["ours"]["source"].endswith("run")
    assert again["results"]["peers"]["dlib_ert"]["reused"]
    assert set(again["results"]["methods"]) == {"msrrn", "dlib_ert"}
    assert "lbf" not in again["results"]["peers"]
    assert "mediapipe_mesh" not in again["results"]["peers"]
    assert "LBF skipped: no OpenCV LBF tool configured" in again["markdown"]
    assert "FACE_ALIGN_LBF_TOOL" in again["markdown"]
    assert "(`mediapipe_mesh`) skipped: mediapipe_mesh needs a Python" in again["markdown"]
    if pretrained:
        assert again["results"]["peers"]["dlib_pretrained68_cuhk5"]["pretrained"]
        assert {"msrrn", "dlib_ert", "dlib_pretrained68_cuhk5"} <= set(
            again["results"]["five_point"])


@pytest.mark.slow
def test_compare_ccnn_family(tmp_path, data_cache):
    output = tmp_path / "ccnn"
    report = compare_real.compare(
        "ccnn", _data(data_cache, 5), output=str(output), preset="tiny", steps=2,
        dlib_options=TINY_DLIB, dlib_threads=1, parallel_peers=False, timing_faces=2,
        verbose=False)
    methods = ["ccnn", "dlib_ert", "mean_shape"] + (["mtcnn", "mtcnn_box"] if HAS_MTCNN
                                                    else [])
    written = _check_report(report, output, "ccnn", methods)
    assert set(written["stages"]) == {"stage_1", "stage_2", "stage_3"}
    assert "stage_errors_decrease" in written["checks"]
    for method in methods:
        assert len(written["methods"][method]["box_width"]["per_point"]) == 5
        assert "inter_ocular" in written["methods"][method]
    assert (output / "compare_ccnn_per_point.png").stat().st_size > 0
    assert "| LE | RE | N | LM | RM | mean |" in report["markdown"]
    assert ("- ours, training speed: stage 1: 2 steps in " in report["markdown"]
            and "; stage 3: 2 steps in " in report["markdown"])
    assert "CCNN (ours)" in written["box_robustness"]["nme"]
    _check_export(output / "run" / "export", 5)


def test_expand_peers():
    assert compare_real.expand_peers(["dlib_ert", "mtcnn"]) == ["dlib_ert", "mtcnn",
                                                                 "mtcnn_box"]
    assert compare_real.expand_peers(["mtcnn_box", "mtcnn"]) == ["mtcnn_box", "mtcnn"]
    with pytest.raises(ValueError, match="unknown peer"):
        compare_real.expand_peers(["sdm"])


def test_lbf_is_a_trained_peer_and_a_default_when_configured(monkeypatch):
    assert compare_real.expand_peers(["lbf"]) == ["lbf"]
    assert "lbf" in compare_real.TRAINED_PEERS
    assert compare_real.METHOD_LABELS["lbf"] == "OpenCV LBF"
    try:
        monkeypatch.setenv(peer_lib.LBF_TOOL_ENV, "/somewhere/lbf_tool")
        assert "lbf" in importlib.reload(compare_real).DEFAULT_PEERS
        monkeypatch.delenv(peer_lib.LBF_TOOL_ENV)
        assert "lbf" not in importlib.reload(compare_real).DEFAULT_PEERS
    finally:
        monkeypatch.undo()
        importlib.reload(compare_real)


def test_resolved_lbf_options():
    assert compare_real.resolved_lbf_options() == peer_lib.lbf_options(
        peer_lib.LBF_QUICK_OPTIONS)
    assert compare_real.resolved_lbf_options({}) == peer_lib.LBF_DEFAULT_OPTIONS


@pytest.mark.slow
@pytest.mark.skipif(not _lbf_configured(), reason="$FACE_ALIGN_LBF_TOOL names no lbf_tool")
def test_compare_with_lbf(tmp_path, data_cache):
    output = tmp_path / "msrrn"
    report = compare_real.compare(
        "msrrn", _data(data_cache, 68), output=str(output), steps=2,
        config_overrides=TINY_MSRRN, peers=["lbf", "mean_shape"], lbf_options=TINY_LBF,
        parallel_peers=True, timing_faces=2, verbose=False)
    written = _check_report(report, output, "msrrn", ["msrrn", "lbf", "mean_shape"])
    assert written["peers"]["lbf"]["options"] == peer_lib.lbf_options(TINY_LBF)
    assert written["peers"]["lbf"]["train_info"]["accepted"] == 24
    assert "beats_lbf" in written["checks"]
    assert "`cv::face::FacemarkLBF` of OpenCV" in report["markdown"]

    again = compare_real.compare(
        "msrrn", _data(data_cache, 68), output=str(output), model_path=str(output / "run"),
        peers=["lbf"], lbf_options=TINY_LBF, timing_faces=2, verbose=False)
    assert again["results"]["peers"]["lbf"]["reused"]
    assert set(again["results"]["methods"]) == {"msrrn", "lbf"}


def test_peer_cache_key_follows_symlinks(tmp_path):
    data = tmp_path / "ytf68"
    data.mkdir()
    (data / "ytf68-train-00000-of-00001.tfrecord").write_bytes(b"x" * 10)
    link = tmp_path / "linked"
    link.symlink_to(data)
    key = compare_real.peer_cache_key("dlib_ert", str(data), "train")
    assert compare_real.peer_cache_key("dlib_ert", str(link), "train") == key
    assert key["shards"][0][:2] == ["ytf68-train-00000-of-00001.tfrecord", 10]
    other = tmp_path / "other"
    other.mkdir()
    (other / "ytf68-train-00000-of-00001.tfrecord").write_bytes(b"x" * 10)
    assert compare_real.peer_cache_key("dlib_ert", str(other), "train") != key


def test_a_registered_pretrained_peer_needs_no_edit_here(monkeypatch):
    from common.schemes import CUHK_5
    from experiments.peers import registry
    from experiments.peers.base import Peer

    monkeypatch.setattr(registry, "PEERS", dict(registry.PEERS))
    monkeypatch.setattr(peer_lib, "PEERS", registry.PEERS)

    @registry.register_peer("toy_five")
    class ToyFive(Peer):
        name, label, scheme = "toy_five", "Toy (5 points)", CUHK_5

        def predict(self, image, box):
            raise NotImplementedError

    assert compare_real.expand_peers(["toy_five", "mtcnn"]) == ["toy_five", "mtcnn",
                                                                 "mtcnn_box"]
    assert compare_real.method_label("toy_five") == "Toy (5 points)"
    assert compare_real.method_label("mtcnn_box") == "MTCNN (ONet on our box)"
    assert compare_real.five_point_peer("toy_five") and compare_real.five_point_peer("mtcnn")
    assert not any(compare_real.five_point_peer(m) for m in ("dlib_ert", "lbf", "mean_shape"))


@pytest.mark.slow
def test_compare_on_two_weighted_folders_reports_each_and_the_union(tmp_path, data_cache):
    """Ours trains on the 0.7 / 0.3 mix, dlib ERT on the union of the training faces;
    every method is scored per folder and on the union of the val faces."""
    from common.synthetic import write_synthetic_tfrecords

    first = _data(data_cache, 68)
    second = str(tmp_path / "second")
    write_synthetic_tfrecords(second, 68, {"train": 12, "val": 4}, seed=7, progress=False)
    output = tmp_path / "multi"
    report = compare_real.compare(
        "msrrn", f"{first}:0.7,{second}:0.3", output=str(output), steps=2,
        config_overrides=TINY_MSRRN, peers=["dlib_ert", "mean_shape"],
        dlib_options=TINY_DLIB, dlib_threads=1, parallel_peers=False, timing_faces=2,
        verbose=False, box_faces=0)
    written = json.loads((output / "compare_msrrn.json").read_text())
    assert written["num_faces"] == 12
    assert written["data_spec"]["weights"] == [0.7, 0.3]
    per = written["per_dataset"]
    names = list(per)
    assert names[-1] == "all" and [per[n]["num_faces"] for n in names] == [8, 4, 12]
    for method in ("msrrn", "dlib_ert", "mean_shape"):
        folders = [per[n]["methods"][method]["inter_pupil"] for n in names[:2]]
        union = (8 * folders[0] + 4 * folders[1]) / 12
        assert per["all"]["methods"][method]["inter_pupil"] == pytest.approx(union, rel=1e-5)
        assert per["all"]["methods"][method]["inter_pupil"] == pytest.approx(
            written["methods"][method]["inter_pupil"]["mean"], rel=1e-5)
    assert "Per data set ('val')" in report["markdown"]
    # dlib learnt the union of the training faces (24 + 12), both folders in its key.
    key = json.loads((output / "peers" / "dlib_ert.json").read_text())["key"]
    assert len(key["data"]) == 2 and len(key["shards"]) == 2
    record = json.loads((output / "run" / "config.json").read_text())
    assert record["data"]["weights"] == [0.7, 0.3]
