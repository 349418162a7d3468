"""The ``LandmarkModel`` contract (``common.landmark_model``) and the family registry.

* Both models expose and serialise the contract (``margin`` in MSRRN's config too);
  models saved before it still load (an MSRRN config without ``margin``, a CCNN
  config with ``num_points``).
* No code outside the model packages branches on the family: the sources are parsed
  for ``family == "msrrn"``-like comparisons, ``isinstance(model, MSRRN)`` and the
  per-family config keys (``"scales"`` / ``"input_size"``) in ``common/predict*``.
"""

from __future__ import annotations

import ast
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_PACKAGES = ("msrrn_tf", "ccnn_tf")
FAMILY_NAMES = {"msrrn", "ccnn"}
MODEL_CLASSES = {"MSRRN", "CCNNCascade", "CCNNStage1", "CCNNRefineStage"}

# Benchmarks of the two models' own internals (their training steps per stage, the
# initial-shape network, stage prefixes): not served through the contract.
ALLOWED = {
    ("experiments/speed/cases.py", "training_cases"),
    ("experiments/speed/profiling.py", "stage_cases"),
}


def _sources():
    for top in ("common", "experiments", "tests"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    yield os.path.relpath(path, ROOT), path


def _is_family_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in FAMILY_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_family_literal(e) for e in node.elts)
    return False


def _class_names(node: ast.AST) -> list[str]:
    nodes = node.elts if isinstance(node, ast.Tuple) else [node]
    return [n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in nodes]


def family_branches(source: str, relative: str) -> list[str]:
    """``file:line: code`` of every branch on the model family in ``source``."""
    tree = ast.parse(source, relative)
    functions = {}  # node -> enclosing function name
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                functions.setdefault(child, node.name)
    found = []
    predict_module = relative.startswith("common/predict")
    for node in ast.walk(tree):
        bad = False
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            bad = any(_is_family_literal(n) for n in [node.left, *node.comparators])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "isinstance" and len(node.args) == 2):
            bad = bool(set(_class_names(node.args[1])) & MODEL_CLASSES)
        elif predict_module and isinstance(node, ast.Constant):
            bad = node.value in ("scales", "input_size")
        if bad and (relative, functions.get(node)) not in ALLOWED:
            found.append(f"{relative}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_the_detector_finds_family_branches():
    code = ('def f(model, family, name):\n'
            '    if family == "msrrn":\n        pass\n'
            '    if name in ("msrrn", "ccnn"):\n        pass\n'
            '    return isinstance(model, MSRRN)\n')
    assert len(family_branches(code, "experiments/x.py")) == 3
    assert len(family_branches('x = {"scales": 1}\n', "common/predict_batching.py")) == 1
    assert family_branches('x = family_name == "toy"\n', "common/x.py") == []


def test_no_family_branches_outside_the_model_packages():
    found = []
    for relative, path in _sources():
        if relative.startswith("tests/"):
            continue  # tests name the models they test
        with open(path) as f:
            found += family_branches(f.read(), relative)
    assert not found, "branches on the model family outside " + "/".join(
        MODEL_PACKAGES) + ":\n" + "\n".join(found)


def test_both_families_register_on_import():
    import ccnn_tf  # noqa: F401
    import msrrn_tf  # noqa: F401
    from common import landmark_model

    names = landmark_model.family_names()
    assert {"msrrn", "ccnn"} <= set(names)
    assert landmark_model.get_family("msrrn").num_landmarks == 68
    assert landmark_model.get_family("ccnn").steps_unit == "per stage"
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        landmark_model.get_family("nope")


def test_msrrn_stores_its_margin_and_old_configs_load():
    from common import landmark_model
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.model import MSRRN, build_msrrn

    config = MSRRNConfig(scales=(16, 24, 32), num_stages=2, margin=0.3, flip_test=False,
                         init_conv_filters=(4,), regression_conv_filters=(4,),
                         regression_fc_units=(8,), init_fc_units=(8,), patch_size=4)
    model = build_msrrn(config)
    assert model.margin == 0.3 and model.get_config()["margin"] == 0.3
    assert model.input_sizes == (16, 24) and model.stage_names == ("stage_0", "stage_1",
                                                                  "stage_2")
    assert model.scheme.name == "ibug68" and landmark_model.family_of(model).name == "msrrn"
    assert isinstance(model, landmark_model.LandmarkModel)
    assert set(model.baseline_shapes()) == {"mean_shape"}
    old = model.get_config()
    del old["margin"]  # saved before the contract
    assert MSRRN.from_config(old).margin is None
    assert model.with_flip_test(True).margin == 0.3  # inference variants keep it
    with pytest.raises(ValueError, match="no inference option"):
        model.with_inference_options(confidence_source="pairs")


def test_ccnn_num_landmarks_and_the_old_num_points_name(tmp_path):
    from ccnn_tf.config import CCNNConfig
    from ccnn_tf.model import CCNNCascade, build_ccnn
    from common import landmark_model

    model = build_ccnn(CCNNConfig.preset("tiny"))
    assert model.num_landmarks == model.num_points == 5
    assert model.input_sizes == (model.get_config()["input_size"],)
    assert landmark_model.describe(model)["scheme"] == "cuhk5"
    old = model.get_config()
    old["num_points"] = old.pop("num_landmarks")  # a cascade saved before the contract
    assert CCNNCascade.from_config(old).num_landmarks == 5
    with pytest.raises(ValueError, match="num_points 4 != num_landmarks 5"):
        CCNNCascade.from_config({**model.get_config(), "num_points": 4})


def test_presets_are_defined_next_to_the_configs_and_keep_their_values():
    from ccnn_tf import training as ccnn_training
    from ccnn_tf.config import CCNNConfig
    from common.box_perturbation import (
        CENTRED_RANGES_CUHK5,
        DETECTOR_RANGES_68,
        DETECTOR_RANGES_CUHK5,
    )
    from msrrn_tf.config import MSRRNConfig

    quick = MSRRNConfig().replace(**DETECTOR_RANGES_68.as_fields(),
        scales=(32, 64, 128), patch_size=8, regression_conv_filters=(16, 16),
        regression_fc_units=(128,), init_conv_filters=(8, 16, 32), init_fc_units=(128,),
        batch_size=32, learning_rate=0.01, iterations=2500)
    assert MSRRNConfig.preset("quick") == quick
    assert MSRRNConfig.preset("paper") == MSRRNConfig()
    assert MSRRNConfig.preset("small", batch_size=4) == MSRRNConfig().replace(
        regression_conv_filters=(8, 8), regression_fc_units=(64,),
        init_conv_filters=(8, 8, 16), init_fc_units=(64,), batch_size=4, iterations=200)
    assert CCNNConfig.preset("quick") == ccnn_training.build_config("quick") == CCNNConfig(
        steps_per_stage=500, learning_rate=0.03, momentum=0.9, seed=0,
        **DETECTOR_RANGES_CUHK5.as_fields())
    assert CCNNConfig.preset("tuned") == CCNNConfig.preset(
        "quick", optimizer="adam", learning_rate=1e-3, lr_decay_steps=300,
        steps_per_stage=1500).replace(momentum=0.0, **CENTRED_RANGES_CUHK5.as_fields())
    tiny = CCNNConfig.preset("tiny", seed=3)
    assert tiny.seed == 3 and tiny.input_size == 32 and tiny.refine_conv_filters == (4,)
    assert tiny.model == CCNNConfig.preset("tiny").model  # the seed is a train field
    with pytest.raises(ValueError, match="unknown MSRRNConfig preset 'fast'"):
        MSRRNConfig.preset("fast")
    with pytest.raises(ValueError, match="unknown CCNNConfig preset 'fast'"):
        ccnn_training.build_config("fast")


def test_config_json_overrides_for_both_trainers(tmp_path):
    """``--config_json`` of both trainers: a JSON object (flat or grouped fields), a
    file, or a run's config.json; the CLI flags still apply on top; bad input names
    itself."""
    from ccnn_tf import training as ccnn_training
    from ccnn_tf.config import CCNNConfig
    from common.config import overrides_from_json

    text = '{"lr_decay_steps": 300, "augment": {"box_scale_range": [1, 1]}}'
    config = ccnn_training.build_config("quick", steps=7, windows=False,
                                        overrides=overrides_from_json(text))
    assert config.lr_decay_steps == 300 and config.box_scale_range == (1.0, 1.0)
    assert config.steps_per_stage == 7 and config.stage1_windows is False
    assert config.box_shift_x == CCNNConfig.preset("quick").box_shift_x
    run_file = tmp_path / "config.json"
    run_file.write_text(json.dumps({"config": {"class": "CCNNConfig",
                                               "values": config.to_dict()}}))
    assert CCNNConfig.from_dict(overrides_from_json(str(run_file))) == config
    with pytest.raises(ValueError, match="--config_json: neither a file nor valid JSON"):
        overrides_from_json("{lr_decay_steps: 3}")
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{bad}: must be a JSON object, got list"):
        overrides_from_json(str(bad))
    with pytest.raises(ValueError, match="no_such_field"):
        ccnn_training.build_config("quick", overrides={"no_such_field": 1})
    # The flag form every command uses: empty is None, bad input a usage error.
    from absl import app

    from common.config import config_json_flag, to_lists

    assert config_json_flag(None) is None and config_json_flag("") is None
    assert config_json_flag(text) == overrides_from_json(text)
    with pytest.raises(app.UsageError, match=f"{bad}: must be a JSON object"):
        config_json_flag(str(bad))
    assert to_lists({"a": ((1, 2), [3]), "b": 4}) == {"a": [[1, 2], [3]], "b": 4}
