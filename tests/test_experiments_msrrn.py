"""The MSRRN table and figure experiments on a tiny synthetic data set.

One tiny MSRRN (trained for 2 steps) and one tiny dlib ERT are shared by all tests
through the module-scoped setting and its ``runs_dir``, as ``experiments.reproduce``
shares them between experiments.
"""

import glob
import json
import os

import numpy as np
import pytest

from experiments import harness

TINY_MSRRN = {"scales": (16, 24, 32), "num_stages": 3, "patch_size": 4,
              "regression_conv_filters": (4,), "regression_fc_units": (16,),
              "init_conv_filters": (4, 4), "init_fc_units": (16,), "batch_size": 8}
TINY_DLIB = {"cascade_depth": 2, "num_trees_per_cascade_level": 4, "tree_depth": 2,
             "oversampling_amount": 1, "feature_pool_size": 40, "num_test_splits": 4}
PEERS = ("dlib_ert", "mean_shape")


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A setting whose model is a tiny MSRRN trained once (2 steps, 3 stages)."""
    from common.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("msrrn_experiments")
    data = ensure_synthetic_dataset(68, {"train": 24, "val": 8}, seed=0,
                                    cache_dir=str(root / "cache"))
    base = harness.Setting(data=data, output=str(root / "results"),
                           runs_dir=str(root / "runs"), steps=2, peers=PEERS,
                           dlib_options=TINY_DLIB)
    ours = harness.trained_model("msrrn", base, data, variant="tiny", overrides=TINY_MSRRN,
                                 verbose=False)
    return base.replace(model=ours.info["run_dir"])


def _written(output):
    with open(output.paths["json"]) as f:
        results = json.load(f)
    with open(output.paths["md"]) as f:
        markdown = f.read()
    assert markdown == output.markdown
    return results, markdown


def _check_png(path, shape=None):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    if shape is not None:
        assert image.shape[:2] == shape


def test_select_faces():
    from experiments.msrrn_fig5 import select_faces

    errors = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])
    groups = select_faces(errors, per_group=3)
    assert groups == {"best": [9, 1, 5], "median": [3, 7, 0], "worst": [2, 6, 4]}
    assert select_faces(errors[:4], per_group=3) == {"best": [1], "median": [3],
                                                     "worst": [2]}
    assert select_faces(errors[:1]) == {"best": [0], "median": [0], "worst": [0]}


@pytest.mark.slow
def test_table1(setting):
    from experiments import msrrn_table1

    output = msrrn_table1.run(setting, verbose=False)
    results, markdown = _written(output)
    assert results["name"] == "msrrn_table1" and results["splits"] == ["val"]
    assert not results["is_300w"]
    assert set(results["methods"]) == {"msrrn", *PEERS}
    for method in results["methods"].values():
        for kind in ("inter_pupil", "inter_ocular"):
            assert method["val"][kind]["mean"] > 0 and method["val"][kind]["count"] == 8
    quoted = results["paper_table1"]
    assert quoted["source"] == msrrn_table1.QUOTED_NOTE and not quoted["comparable"]
    assert set(quoted["methods"]) == {m for m, _ in msrrn_table1.PAPER_METHODS}
    assert {"FPLL", "ERT", "TCDCN", "MSRRN"} <= set(quoted["methods"])
    assert msrrn_table1.QUOTED_NOTE in markdown and "not comparable here" in markdown
    for label in ("MSRRN (ours)", "dlib ERT", "mean shape"):
        assert label in markdown
    # The peers were fitted once, into the one cache under runs_dir.
    fitted = glob.glob(os.path.join(setting.runs_dir, "**", "dlib_ert.dat"), recursive=True)
    assert len(fitted) == 1
    assert results["peers"]["val"]["dlib_ert"]["options"] == TINY_DLIB


@pytest.mark.slow
def test_fig3_reuses_the_comparison(setting):
    from experiments import msrrn_fig3

    output = msrrn_fig3.run(setting, verbose=False)
    results, markdown = _written(output)
    assert set(results["curves"]["val"]) == {"msrrn", *PEERS}
    for scores in results["curves"]["val"].values():
        assert 0 <= scores["auc@0.08"] <= 1 and 0 <= scores["failure@0.1"] <= 1
    assert "AUC@0.08" in markdown and "![ced_val](ced_val.png)" in markdown
    _check_png(output.paths["ced_val"])
    data = harness.prepared_data(setting, "msrrn")
    assert harness.compared("msrrn", setting, data, "val", verbose=False)["reused"]


@pytest.mark.slow
def test_table2(setting):
    from experiments import msrrn_table2

    output = msrrn_table2.run(setting, verbose=False)
    results, markdown = _written(output)
    assert results["num_stages"] == 3
    rows = results["table2"]["val"]
    assert {"mean shape", "1 stage", "2 stages", "3 stages"} <= set(rows)
    assert all(rows[r]["inter_pupil"] > 0 for r in rows)
    assert results["true_ablation"] is None and "--true_ablation" in markdown
    out_dir = setting.out_dir("msrrn_table2")
    for suffix in (".json", ".md", "_ced.png"):
        assert os.path.getsize(os.path.join(out_dir, f"table2_val{suffix}")) > 0
    assert "(table2_val_ced.png)" in markdown


@pytest.mark.slow
def test_table2_true_ablation(setting):
    from experiments import msrrn_table2

    output = msrrn_table2.run(setting, true_ablation=True, ablation_overrides=TINY_MSRRN,
                              verbose=False)
    results, markdown = _written(output)
    ablation = results["true_ablation"]["val"]
    assert set(ablation) == {"T=1 model", "T=2 model", "T=3 model"}
    assert all(row["inter_pupil"]["mean"] > 0 for row in ablation.values())
    assert "True ablation" in markdown
    for stages in (1, 2):
        assert glob.glob(os.path.join(setting.runs_dir, f"msrrn-stages_{stages}-*"))


@pytest.mark.slow
def test_fig5(setting):
    from experiments import msrrn_fig5

    output = msrrn_fig5.run(setting, verbose=False)
    results, markdown = _written(output)
    assert results["split"] == "val" and results["methods"] == ["ours", "dlib ERT"]
    assert set(results["faces"]) == {"best", "median", "worst"}
    best, worst = results["faces"]["best"][0], results["faces"]["worst"][0]
    assert best["ours"] <= worst["ours"] and best["dlib ERT"] > 0
    # 8 faces: 2 per group, each drawn with ours and dlib ERT (4 panels of 250 px).
    _check_png(output.paths["examples"], shape=(3 * 250, 4 * 250))
    assert "![examples](examples.png)" in markdown
