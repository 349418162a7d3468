"""The CCNN experiment scripts (``experiments.ccnn_*``) end to end on tiny synthetic data.

One tiny default cascade (preset "tiny", 2 steps per stage) is trained once for the
module and shared by every experiment through ``harness.trained_model``'s cache, as
``experiments.reproduce`` shares it; the ablation variants train their first stage
only.
"""

import importlib
import json
import pathlib

import numpy as np
import pytest

from experiments import ccnn_common, harness

MODULES = ("ccnn_exp1", "ccnn_exp2", "ccnn_exp3", "ccnn_fig7", "ccnn_table3", "ccnn_fig8")
TINY_DLIB = {"cascade_depth": 2, "num_trees_per_cascade_level": 4, "tree_depth": 2,
             "oversampling_amount": 1, "feature_pool_size": 40, "num_test_splits": 4}
POINTS = ["LE", "RE", "N", "LM", "RM"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from common.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("ccnn_experiments")
    data = ensure_synthetic_dataset(5, {"train": 32, "val": 8}, seed=0,
                                    cache_dir=str(root / "cache"), progress=False)
    return harness.Setting(data=data, output=str(root / "out"), runs_dir=str(root / "runs"),
                           preset="tiny", steps=2, peers=("dlib_ert", "mean_shape"),
                           dlib_options=TINY_DLIB)


@pytest.fixture(scope="module")
def default_model(setting):
    """The shared default cascade, trained once for all tests of this module (and
    loaded once: the experiments get the same object from ``trained_cascade``)."""
    data = harness.prepared_data(setting, "ccnn", progress=False)
    ours = ccnn_common.trained_cascade(setting, data, verbose=False)
    assert ccnn_common.trained_cascade(setting, data, verbose=False) is ours
    return ours


def _read(output, name):
    folder = pathlib.Path(output.paths["json"]).parent
    assert folder.name == name
    with open(output.paths["json"]) as f:
        written = json.load(f)
    markdown = pathlib.Path(output.paths["md"]).read_text()
    assert markdown == output.markdown
    assert markdown.startswith(f"# {output.title}\n")
    for stem, path in output.paths.items():
        assert pathlib.Path(path).stat().st_size > 0, stem
        if stem not in ("json", "md"):
            assert path.endswith(".png") and f"![{stem}]({stem}.png)" in markdown
    return written, markdown


def _per_point_ok(entry):
    assert len(entry["box_width"]["per_point"]) == 5
    assert len(entry["inter_ocular"]["per_point"]) == 5
    assert np.isclose(np.mean(entry["box_width"]["per_point"]), entry["box_width"]["mean"])


@pytest.mark.parametrize("name", MODULES)
def test_module_interface(name):
    module = importlib.import_module(f"experiments.{name}")
    assert module.FAMILY == "ccnn"
    assert module.NAME == name
    assert module.TITLE.startswith("CCNN ")
    assert callable(module.run)
    source = pathlib.Path(module.__file__).read_text()
    assert source.rstrip().endswith('if __name__ == "__main__":\n    harness.main(run, FAMILY)')


def test_ablations_share_the_no_shake_variant():
    from experiments import ccnn_exp2, ccnn_exp3

    exp2 = {arm.label: arm for arm in ccnn_exp2.ARMS}
    exp3 = {arm.label: arm for arm in ccnn_exp3.ARMS}
    # windows+ of Experiment 2 is shake- of Experiment 3: one variant, trained once.
    assert (exp2["windows+"].variant, dict(exp2["windows+"].overrides)) == (
        exp3["shake-"].variant, dict(exp3["shake-"].overrides))
    assert exp2["windows-"].overrides == {"stage1_windows": False}
    assert all(v == 0.0 for v in exp3["shake-"].overrides.values())
    assert exp3["shake+"].variant == "default"


def test_stage_ablation_rejects_bad_arguments(tmp_path):
    setting = harness.Setting(output=str(tmp_path), runs_dir=str(tmp_path))
    arms = [ccnn_common.Arm("a"), ccnn_common.Arm("b", "v", {"stage1_windows": False})]
    with pytest.raises(ValueError, match="include"):
        ccnn_common.stage_ablation(setting, name="x", title="x", arms=arms, claim=("a", "c"),
                                   quoted_means={}, description="", figure_title="")
    with pytest.raises(ValueError, match="stages"):
        ccnn_common.stage_ablation(setting, name="x", title="x", arms=arms, claim=("a", "b"),
                                   quoted_means={}, description="", figure_title="", stages=4)


def test_crop_view_clips_and_offsets():
    from experiments.ccnn_fig8 import crop_view

    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    view, offset = crop_view(image, np.array([-5.0, 2.4, 10.2, 40.0]))
    assert offset.tolist() == [0, 2]
    assert view.shape == (18, 12, 3)
    assert np.array_equal(view[0, 0], image[2, 0])


def test_plot_grouped_bars(tmp_path):
    from common import plots

    path = plots.plot_grouped_bars({"CPU": [1.0, 2.0, 3.0], "GPU": [0.5, np.nan, 0.7]},
                                   ["1", "2", "3"], tmp_path / "bars.png", figsize=(4, 3),
                                   dpi=50)
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="categories"):
        plots.plot_grouped_bars({"CPU": [1.0]}, ["1", "2"], tmp_path / "bad.png")


@pytest.mark.slow
def test_exp1_stages(setting, default_model):
    from experiments import ccnn_exp1

    written, markdown = _read(ccnn_exp1.run(setting, verbose=False), "ccnn_exp1")
    assert written["point_labels"] == POINTS
    assert list(written["stages"]) == ["stage_1", "stage_2", "stage_3"]
    for entry in written["stages"].values():
        _per_point_ok(entry)
    assert written["num_faces"] == 8
    assert written["model"]["run_dir"] == default_model.info["run_dir"]  # shared, not retrained
    assert "stage_errors_decrease" in written["checks"]
    assert "| output | LE | RE | N | LM | RM |" in markdown
    assert "not run here" in markdown and "2.21 / 1.37 / 1.03" in markdown


@pytest.mark.slow
def test_exp2_exp3_ablations(setting, default_model):
    from experiments import ccnn_exp2, ccnn_exp3

    exp3, markdown3 = _read(ccnn_exp3.run(setting, verbose=False), "ccnn_exp3")
    exp2, markdown2 = _read(ccnn_exp2.run(setting, verbose=False), "ccnn_exp2")
    assert list(exp3["arms"]) == ["shake-", "shake+"]
    assert list(exp2["arms"]) == ["windows-", "windows+", "windows+, shake+"]
    for written in (exp2, exp3):
        assert written["compared_stages"] == ["stage_1"]
        for arm in written["arms"].values():
            _per_point_ok(arm["stages"]["stage_1"])
        assert written["paper"]["note"] == ccnn_common.QUOTED
    # The variants train stage 1 only; the default arm is the shared cascade.
    assert exp3["arms"]["shake-"]["model"]["num_stages"] == 1
    assert exp3["arms"]["shake-"]["overrides"]["stage1_shake_stddev"] == 0.0
    assert exp3["arms"]["shake+"]["model"]["run_dir"] == default_model.info["run_dir"]
    assert exp2["arms"]["windows-"]["model"]["config"]["model"]["stage1_windows"] is False
    # windows+ (no shake) is exp3's shake- run: trained once for both.
    assert (exp2["arms"]["windows+"]["model"]["run_dir"]
            == exp3["arms"]["shake-"]["model"]["run_dir"])
    assert set(exp3["checks"]) == {"shake+_lower_than_shake-_stage_1"}
    assert set(exp2["checks"]) == {"windows+_lower_than_windows-_stage_1"}
    assert "| windows-, stage 1 |" in markdown2 and "| shake+, stage 1 |" in markdown3


@pytest.mark.slow
def test_fig7_peers(setting, default_model):
    from experiments import ccnn_fig7

    written, markdown = _read(ccnn_fig7.run(setting, verbose=False), "ccnn_fig7")
    assert set(written["methods"]) == {"ccnn", "dlib_ert", "mean_shape"}
    for entry in written["methods"].values():
        _per_point_ok(entry)
    assert written["dlib_options"] == TINY_DLIB
    assert written["peers"]["dlib_ert"]["options"] == TINY_DLIB
    assert written["model"]["run_dir"] == default_model.info["run_dir"]
    assert set(written["stages"]) == {"stage_1", "stage_2", "stage_3"}
    peers_dir = pathlib.Path(harness.comparison_dir(setting, "ccnn", setting.data)) / "peers"
    assert (peers_dir / "dlib_ert.dat").is_file()
    assert "| LE | RE | N | LM | RM | mean |" in markdown and "not run here" in markdown
    # A rerun reuses the cached comparison (no peer refitted, nothing retrained).
    again, _ = _read(ccnn_fig7.run(setting, verbose=False), "ccnn_fig7")
    assert again["comparison_reused"] and again["methods"] == written["methods"]


@pytest.mark.slow
def test_table3_cost(setting, default_model):
    from experiments import ccnn_table3

    written, markdown = _read(ccnn_table3.run(setting, timing_faces=2, verbose=False),
                              "ccnn_table3")
    model = default_model.model
    assert written["parameters"] == ccnn_table3.parameter_count(model)
    assert written["parameters"] == sum(int(np.prod(w.shape)) for w in model.weights
                                        if w.trainable)
    assert written["checks"]["parameters_equal_model"]
    rows = written["by_stages"]
    assert [r["stages"] for r in rows] == [1, 2, 3]
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[2]["parameters"]
    assert np.isclose(rows[-1]["megabytes"], written["parameters"] * 4 / 2**20)
    assert all(r["cpu_ms_per_face"] > 0 for r in rows)
    assert written["serving_ms_per_face"]["CPU"] > 0
    assert ("GPU" in written["devices"]) == bool(written["gpus"])
    assert "643,920" in markdown and "not run here" in markdown


@pytest.mark.slow
def test_fig8_faces(setting, default_model):
    from matplotlib import image as mpimg

    from experiments import ccnn_fig8

    output = ccnn_fig8.run(setting, num_faces=3, verbose=False)
    written, _ = _read(output, "ccnn_fig8")
    assert written["stages"] == ["stage_1", "stage_2", "stage_3"]
    assert len(written["faces"]) == 3
    for face in written["faces"]:
        assert set(face["predicted"]) == set(written["stages"])
        assert np.asarray(face["predicted"]["stage_3"]).shape == (5, 2)
    # 3 faces (columns) x 3 stages (rows), 2.5-inch cells at 100 dpi.
    assert mpimg.imread(output.paths["faces"]).shape[:2] == (750, 750)


@pytest.mark.slow
def test_stage1_study_one_factor_per_variant(tmp_path):
    """``experiments.ccnn_stage1``: each variant is the recipe with its fields changed
    (one factor), trained as stage 1 alone on the given splits; a rerun reuses the runs;
    the table holds every variant and seed."""
    from common.synthetic import ensure_synthetic_dataset
    from experiments import ccnn_stage1

    recipe = ccnn_stage1.variant_config("recipe", preset="tiny", steps=2, seed=1)
    no_box = ccnn_stage1.variant_config("no_box", preset="tiny", steps=2, seed=1)
    assert recipe.num_stages == 1 and recipe.lr_decay_steps == 300 and recipe.seed == 1
    assert no_box.replace(**{k: getattr(recipe, k) for k in ccnn_stage1.NO_BOX_PERTURBATION}
                          ) == recipe and no_box.box_scale_range == (1.0, 1.0)
    assert recipe.steps_per_stage == 2
    assert ccnn_stage1.variant_config("adam_steps_4500", preset="tiny", steps=2
                                      ).steps_per_stage == 4500  # the variant's own budget
    with pytest.raises(ValueError, match="unknown variant 'bigger'"):
        ccnn_stage1.variant_config("bigger")

    data = ensure_synthetic_dataset(5, {"train": 16, "val": 8}, seed=0,
                                    cache_dir=str(tmp_path / "cache"), progress=False)
    out = tmp_path / "study"
    results = ccnn_stage1.run(data, str(out), variants=["no_dropout"], seeds=[0, 1],
                              steps=2, preset="tiny", train_split="train",
                              eval_split="val", verbose=False)
    assert list(results["variants"]) == ["recipe", "no_dropout"]
    row = results["variants"]["no_dropout"]
    assert row["changes"] == {"dropout": 0.0} and set(row["seeds"]) == {"0", "1"}
    errors = [row["seeds"][s]["box_width"]["mean"] for s in ("0", "1")]
    assert errors[0] != errors[1]  # the seed reaches the weights
    assert row["mean"]["box_width"] == pytest.approx(np.mean(errors))
    assert len(row["seeds"]["0"]["box_width"]["per_point"]) == 5
    assert json.loads((out / "ccnn_stage1.json").read_text()) == results
    markdown = (out / "ccnn_stage1.md").read_text()
    assert "| no_dropout | no dropout |" in markdown and "| recipe |" in markdown
    assert (out / "ccnn_stage1.png").stat().st_size > 0
    stamp = (out / "runs" / "recipe-s0" / "stage1" / "model.keras").stat().st_mtime_ns
    again = ccnn_stage1.run(data, str(out), variants=["recipe"], seeds=[0], steps=2,
                            preset="tiny", train_split="train", eval_split="val",
                            verbose=False)
    assert (out / "runs" / "recipe-s0" / "stage1" / "model.keras").stat().st_mtime_ns == stamp
    assert (again["variants"]["recipe"]["seeds"]["0"]
            == results["variants"]["recipe"]["seeds"]["0"])
