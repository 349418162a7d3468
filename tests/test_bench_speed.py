"""Tests of experiments/bench_speed.py: the summaries, and the tiny preset end to end."""

import importlib.util
import json

import numpy as np
import pytest
from absl import flags

from experiments import bench_speed
from experiments.speed import profiling

MODEL_FORMS = {"keras_eager", "keras_predict_on_batch", "keras_xla", "saved_model_default",
               "saved_model_cropped", "crop_only", "tflite"}


def _case(method, form, faces, seconds, steps=0):
    case = bench_speed.Case(method, form, "CPU", faces, lambda: None, steps=steps)
    case.seconds = list(seconds)
    case.cpu_seconds = [s / 2 for s in seconds]
    return case


def test_time_cases_interleaves_and_calibrates():
    calls = []
    cases = [bench_speed.Case("a", "f", "CPU", 1, lambda: calls.append("a")),
             bench_speed.Case("b", "f", "CPU", 1, lambda: calls.append("b"), steps=1)]
    bench_speed.time_cases(cases, repeats=3, warmup=2, sample_seconds=1e-3, max_inner=4)
    assert all(len(c.seconds) == 3 and min(c.seconds) > 0 for c in cases)
    assert cases[0].inner == 4  # a no-op needs the most calls per sample
    assert cases[1].inner == 1  # training cases keep one call per sample
    assert calls.count("b") == 2 + 3


def test_rows_targets_and_summaries():
    cases = [_case("ccnn", "saved_model_default", 1, [0.004, 0.002, 0.003]),
             _case("ccnn", "saved_model_default", 64, [0.05, 0.04, 0.06]),
             _case("msrrn", "tflite", 1, [0.02]),
             _case("msrrn", "tflite", 64, [0.2]),
             _case("dlib_ert_68", "dlib_predict", 1, [0.001]),
             _case("ccnn", "train_stage_1", 128, [0.5], steps=2)]
    rows = bench_speed.result_rows(cases, 64)
    assert [(r["method"], r["form"]) for r in rows] == [
        ("ccnn", "saved_model_default"), ("msrrn", "tflite"), ("dlib_ert_68", "dlib_predict")]
    ccnn = rows[0]
    assert ccnn["batch_1"]["median_ms_per_face"] == pytest.approx(3.0)
    assert ccnn["batch_1"]["q25_ms_per_face"] == pytest.approx(2.5)
    assert ccnn["batched"]["median_faces_per_s"] == pytest.approx(64 / 0.05)
    assert ccnn["batched"]["cpu_per_wall"] == pytest.approx(0.5)
    assert rows[2]["batched"] is None

    checks = {(c["method"], c["form"]): c for c in bench_speed.check_targets(rows)}
    assert set(checks) == {("ccnn", "saved_model_default"), ("msrrn", "tflite")}
    assert checks["ccnn", "saved_model_default"]["latency_pass"]        # 3 ms < 5 ms
    assert checks["ccnn", "saved_model_default"]["throughput_pass"]     # 1280/s >= 1000
    assert not checks["msrrn", "tflite"]["latency_pass"]                # 20 ms >= 10 ms
    assert checks["msrrn", "tflite"]["throughput_pass"]                 # 320/s >= 200
    assert not checks["msrrn", "tflite"]["pass"]
    assert "peer" not in checks["msrrn", "tflite"]  # without landmark counts

    # With the landmark counts, each check carries dlib ERT's time from the same run.
    checks = {(c["method"], c["form"]): c
              for c in bench_speed.check_targets(rows, {"msrrn": 68, "ccnn": 5})}
    assert checks["msrrn", "tflite"]["peer"] == "dlib_ert_68"
    assert checks["msrrn", "tflite"]["peer_ms_per_face"] == pytest.approx(1.0)
    assert "peer_faces_per_s" not in checks["msrrn", "tflite"]  # no batched dlib row
    assert "peer" not in checks["ccnn", "saved_model_default"]  # no dlib_ert_5 row

    (train,) = bench_speed.training_rows(cases)
    assert train["batch_size"] == 64
    assert train["median_ms_per_batch"] == pytest.approx(250.0)
    assert train["median_faces_per_s"] == pytest.approx(256.0)


def test_profile_scopes():
    prefix = "StatefulPartitionedCall_1/StatefulPartitionedCall/"
    assert profiling._scope(prefix + "msrrn_1/recurrent_regression_3/conv_0_1/Conv2D",
                              "msrrn") == "model/recurrent_regression_3"
    assert profiling._scope(prefix + "AvgPool2D_4", "msrrn") == "serving/AvgPool2D"
    assert profiling._scope(prefix + "ccnn_1/stage_2_1/CropAndResize",
                              "ccnn") == "model/stage_2_1"
    # A nested network's op outside the model's name scope, found by its weight path.
    assert profiling._scope(prefix + "N22_fc2/MatMul", "ccnn",
                              frozenset({"N22_fc2", "kernel"})) == "model/N22_fc2"


@pytest.mark.slow
def test_main_tiny_preset(tmp_path, capsys):
    values = flags.FlagValues()
    bench_speed.define_flags(values)
    values(["bench_speed", "--preset=tiny", "--repeats=1", "--warmup=1",
            f"--output={tmp_path}", "--profile=never", "--nomsrrn_flip_test"])
    bench_speed.main(["bench_speed"], flag_values=values)

    result = json.loads((tmp_path / "bench_speed.json").read_text())
    markdown = (tmp_path / "bench_speed.md").read_text()
    assert "| method | form | device | ms/face at batch 1 | faces/s at batch 8 |" in markdown
    assert markdown in capsys.readouterr().out
    assert "* msrrn saved_model_default: " in markdown
    assert "dlib_ert_68 in this run: " in markdown and "dlib_ert_5 in this run: " in markdown
    assert result["fresh_weights"] and result["settings"]["preset"] == "tiny"
    assert result["environment"]["gpu"]["available"] or "skipped" in (
        result["environment"]["gpu"]["note"])

    rows = {(r["method"], r["form"]): r for r in result["rows"] if r["device"] == "CPU"}
    expected = {(m, f) for m in ("msrrn", "ccnn") for f in MODEL_FORMS}
    expected |= {("dlib_ert_68", "dlib_predict"), ("dlib_ert_5", "dlib_predict")}
    if importlib.util.find_spec("mtcnn") is not None:
        expected.add(("mtcnn_onet", "onet_box"))
    assert expected <= set(rows)
    for key in expected:
        single, batched = rows[key]["batch_1"], rows[key]["batched"]
        assert single["median_ms_per_face"] > 0, key
        assert batched["median_faces_per_s"] > 0 and batched["batch_size"] == 8, key
    assert rows["msrrn", "saved_model_default"]["includes_crop"]
    assert not rows["msrrn", "saved_model_cropped"]["includes_crop"]

    training = {(r["model"], r["what"]) for r in result["training"]
                if r["median_faces_per_s"] > 0}
    assert training == {("msrrn", "train"), ("ccnn", "train_stage_1"),
                        ("ccnn", "train_stage_2"), ("ccnn", "train_stage_3")}
    targets = {(c["method"], c["form"]) for c in result["targets"]}
    assert targets == {(m, f) for m in ("msrrn", "ccnn") for f in bench_speed.EXPORTED_FORMS}
    assert result["models"]["msrrn"]["tflite_bytes"] > 0
    # The same model compiled by XLA: the same landmarks (pixels of a 32-px crop).
    for name in ("msrrn", "ccnn"):
        assert 0 <= result["models"][name]["xla_max_deviation_px"] < 1e-3
    # --nomsrrn_flip_test: the MSRRN timed (and exported) runs without the flip test.
    assert result["models"]["msrrn"]["config"]["flip_test"] is False
    assert "flip test switched off" in result["models"]["msrrn"]["source"]
    assert result["peers"]["dlib_ert_68"]["options"]["cascade_depth"] == 2
    # The roofline: both models' cost, the machine, every CPU model form but the crop.
    roof = result["roofline"]
    assert set(roof["costs"]) == {"msrrn", "ccnn"}
    assert roof["machine"]["gflops"] > 0 and roof["machine"]["bandwidth_gbs"] > 0
    roof_forms = {(r["method"], r["form"]) for r in roof["rows"]}
    assert roof_forms >= {(m, f) for m in ("msrrn", "ccnn") for f in MODEL_FORMS
                          if f != "crop_only"}
    assert roof_forms <= set(rows) and not any(f == "crop_only" for _, f in roof_forms)
    assert all(r["fraction"] > 0 for r in roof["rows"])
    assert "## Roofline (CPU, batch throughput)" in markdown


def test_a_registered_pretrained_peer_is_timed_by_name(monkeypatch):
    from experiments import peers
    from experiments.peers import registry
    from experiments.peers.base import Peer
    from experiments.speed import cases, options

    monkeypatch.setattr(registry, "PEERS", dict(registry.PEERS))
    monkeypatch.setattr(peers, "PEERS", registry.PEERS)

    @registry.register_peer("toy_centre")
    class Centre(Peer):
        name = "toy_centre"

        def predict(self, image, box):
            return (0.5 * (box[:2] + box[2:]))[None].astype(np.float32)

    assert "toy_centre" in options.pretrained_peers()
    assert not {"dlib_ert", "mtcnn_box", "mean_shape", "lbf"} & set(options.pretrained_peers())
    faces = cases.Faces(images=np.zeros((3, 8, 8, 3), np.uint8),
                        boxes=np.array([[0, 0, 4, 4]] * 3, np.float32),
                        landmarks68=np.zeros((3, 68, 2), np.float32),
                        landmarks5=np.zeros((3, 5, 2), np.float32))
    timed, info = cases.pretrained_peer_cases("toy_centre", faces, 3)
    assert info["name"] == "toy_centre" and not info["trainable"]
    np.testing.assert_array_equal(timed[1].fn(), [[[2, 2]]] * 3)
    bench_speed.time_cases(timed, repeats=2, warmup=1, sample_seconds=1e-4, max_inner=2)
    (row,) = bench_speed.result_rows(timed, 3)
    assert (row["method"], row["form"], row["includes_crop"]) == (
        "toy_centre", "peer_predict", True)
    assert row["batch_1"]["samples"] == row["batched"]["samples"] == 2


def test_roofline_flops_and_bound_against_hand_counts():
    import keras

    from experiments.speed import roofline

    image = keras.Input((4, 4, 3), name="image_4")
    flat = keras.layers.Flatten()(image)
    dense = keras.layers.Dense(10, name="dense")(flat)  # 48 x 10 multiply-adds + 10 adds
    model = keras.Model({"image_4": image}, {"landmarks": keras.layers.Reshape((5, 2))(dense)})
    flops = roofline.graph_flops(model, (4,), batch=2)
    assert flops == pytest.approx(2 * 48 * 10 + 10, rel=0.05)
    cost = roofline.model_cost(model, (4,), 5, batch=2)
    # weights (490 floats) once per batch of 2, the 48-float input, the 10-float output
    assert cost["bytes"] == pytest.approx(4 * 490 / 2 + 4 * 48 + 4 * 10)
    machine = {"gflops": 100.0, "bandwidth_gbs": 1.0}
    assert roofline.bound_faces_per_second(cost, machine) == pytest.approx(
        cost["intensity"] * 1e9 / cost["flops"])  # memory-bound: bytes / bandwidth
    rows = roofline.roofline_rows(
        [{"method": "toy", "form": "keras", "device": "CPU",
          "batched": {"median_faces_per_s": 1e6}},
         {"method": "toy", "form": "crop_only", "device": "CPU",
          "batched": {"median_faces_per_s": 1e9}},
         {"method": "dlib", "form": "x", "device": "CPU",
          "batched": {"median_faces_per_s": 1.0}}], {"toy": cost}, machine)
    assert [r["form"] for r in rows] == ["keras"] and rows[0]["limit"] == "memory"
    assert rows[0]["fraction"] == pytest.approx(1e6 / (1e9 / cost["bytes"]))
