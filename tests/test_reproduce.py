"""``experiments.reproduce``: the report, failure handling and the command line."""

import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

from experiments import harness, reproduce

TINY_MSRRN = {"scales": (16, 24, 32), "num_stages": 3, "patch_size": 4,
              "regression_conv_filters": (4,), "regression_fc_units": (16,),
              "init_conv_filters": (4, 4), "init_fc_units": (16,), "batch_size": 8}
TINY_DLIB = {"cascade_depth": 2, "num_trees_per_cascade_level": 4, "tree_depth": 2,
             "oversampling_amount": 1, "feature_pool_size": 40, "num_test_splits": 4}


def _fake_modules():
    """Three experiment modules: one writes a figure, one fails, one is CCNN's."""
    seen = {}

    def run_ok(setting, *, flavour="plain"):
        seen["ok"] = (setting.data, flavour)
        return harness.write_outputs(
            setting, "fake_ok", title="Fake table (Table 9)", results={"value": 1.5},
            markdown="Intro.\n\n## Details\n\nSee [the paper](https://example.com/p.pdf) "
                     "and [below](#details).\n\n```\n# not a heading\n```",
            figures={"curves": lambda path: pathlib.Path(path).write_bytes(b"\x89PNG fake")})

    def run_fail(setting):
        raise RuntimeError("boom in the fake experiment")

    def run_ccnn(setting):
        seen["ccnn"] = setting.data
        return harness.write_outputs(setting, "fake_ccnn", title="Fake CCNN figure",
                                     results={}, markdown="Nothing to see.")

    modules = {}
    for name, family, title, run in (("fake_ok", "msrrn", "Fake table (Table 9)", run_ok),
                                     ("fake_fail", "msrrn", "Fake failure", run_fail),
                                     ("fake_ccnn", "ccnn", "Fake CCNN figure", run_ccnn)):
        module = types.ModuleType(f"experiments.{name}")
        module.FAMILY, module.TITLE, module.run = family, title, run
        modules[name] = module
    return modules, seen


def test_report_continues_past_failures(tmp_path):
    modules, seen = _fake_modules()
    output = tmp_path / "results"
    settings = {"msrrn": harness.Setting(data="m-data", output=str(output)),
                "ccnn": harness.Setting(data="c-data", output=str(output))}
    lines = []
    records, paths = reproduce.reproduce(
        ["fake_ok", "fake_fail", "fake_ccnn"], settings, str(output),
        options={"fake_ok": {"flavour": "spicy"}}, load=modules.__getitem__,
        log=lines.append)

    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert seen == {"ok": ("m-data", "spicy"), "ccnn": "c-data"}
    assert "boom in the fake experiment" in records[1].error
    assert any("[reproduce 2/3] fake_fail: FAILED" in line for line in lines)
    assert any("[reproduce 3/3] fake_ccnn: done in" in line for line in lines)

    report = (output / "report.md").read_text()
    assert paths["md"] == str(output / "report.md")
    assert report.startswith(f"# {reproduce.REPORT_TITLE}")
    assert "## Setting" in report and "`m-data`" in report and "`c-data`" in report
    # Table of contents: one entry per experiment, each anchor a section of the report.
    for record in records:
        heading = f"{record.name}: {record.title}"
        assert f"[{heading}](#{reproduce._anchor(heading)})" in report
        assert f"\n## {heading}\n" in report
    assert "(#fake_ok-fake-table-table-9)" in report
    # Figure links resolve from the report; other links are left alone.
    assert "![curves](fake_ok/curves.png)" in report
    assert (output / "fake_ok" / "curves.png").is_file()
    assert "(https://example.com/p.pdf)" in report and "(#details)" in report
    assert "\n### Details\n" in report and "\n# not a heading\n" in report
    assert "boom in the fake experiment" in report and "Traceback" in report
    assert "| fake_fail | failed |" in report

    summary = json.loads((output / "report.json").read_text())
    assert summary["failed"] == ["fake_fail"]
    assert [e["status"] for e in summary["experiments"]] == ["ok", "failed", "ok"]
    assert summary["experiments"][0]["results"]["value"] == 1.5
    assert summary["experiments"][0]["seconds"] >= 0
    assert summary["settings"]["ccnn"]["data"] == "c-data"


def test_unknown_module_is_a_recorded_failure(tmp_path):
    settings = {"msrrn": harness.Setting(output=str(tmp_path))}
    records = reproduce.run_experiments(["no_such_experiment"], settings, log=lambda _: None)
    assert records[0].status == "failed" and "ModuleNotFoundError" in records[0].error


def test_registry_modules_follow_the_contract():
    assert len(set(reproduce.EXPERIMENTS)) == len(reproduce.EXPERIMENTS) == 10
    assert [n for n in reproduce.EXPERIMENTS if n.startswith("msrrn")] == [
        "msrrn_table1", "msrrn_table2", "msrrn_fig3", "msrrn_fig5"]
    for name in reproduce.EXPERIMENTS:
        if importlib.util.find_spec(f"experiments.{name}") is None:
            continue  # written by another part of the project
        module = importlib.import_module(f"experiments.{name}")
        assert module.FAMILY in harness.FAMILY_POINTS and name.startswith(module.FAMILY)
        assert isinstance(module.TITLE, str) and module.TITLE
        assert callable(module.run)


def test_cli_rejects_unknown_experiments(repo_root):
    result = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--only=nope"],
                            cwd=repo_root, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0 and "unknown experiments ['nope']" in result.stderr


@pytest.mark.slow
def test_cli_runs_the_selected_experiments(tmp_path, repo_root):
    from common.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(68, {"train": 24, "val": 8}, seed=0,
                                    cache_dir=str(tmp_path / "cache"))
    runs, output = tmp_path / "runs", tmp_path / "results"
    tiny = harness.trained_model("msrrn", harness.Setting(runs_dir=str(runs), steps=2), data,
                                 variant="tiny", overrides=TINY_MSRRN, verbose=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce",
         "--only=msrrn_table2,ccnn_exp1,msrrn_fig5",
         f"--msrrn_data={data}", f"--msrrn_model={tiny.info['run_dir']}",
         f"--ccnn_data={tmp_path / 'missing'}", f"--runs_dir={runs}", f"--output={output}",
         "--peers=dlib_ert,mean_shape", f"--dlib_options={json.dumps(TINY_DLIB)}"],
        cwd=repo_root, capture_output=True, text=True, timeout=600, env=env, check=False)
    # ccnn_exp1 fails (no data there), the others still run, and the exit status says so.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[reproduce 2/3] ccnn_exp1: FAILED" in result.stdout
    assert "[reproduce 3/3] msrrn_fig5: done in" in result.stdout
    summary = json.loads((output / "report.json").read_text())
    assert {e["name"]: e["status"] for e in summary["experiments"]} == {
        "msrrn_table2": "ok", "ccnn_exp1": "failed", "msrrn_fig5": "ok"}
    assert summary["settings"]["msrrn"]["dlib_options"] == TINY_DLIB
    report = (output / "report.md").read_text()
    assert "![examples](msrrn_fig5/examples.png)" in report
    assert "(msrrn_table2/table2_val_ced.png)" in report
    assert (output / "msrrn_fig5" / "examples.png").is_file()
    assert "| msrrn_table2 | ok |" in report


@pytest.mark.parametrize("module", ["experiments.reproduce", "experiments.ccnn_exp2"])
def test_help_lists_the_shared_setting_flags(module):
    """The flags defined in ``experiments.harness`` show in the program's own --help."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "Traceback" not in result.stderr, result.stderr  # absl exits 1 after --help
    for flag in ("--limit", "--seed", "--format", "--val_fraction", "--peers",
                 "--dlib_options", "--runs_dir"):
        assert flag in result.stdout, (module, flag)
