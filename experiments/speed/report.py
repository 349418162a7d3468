"""The results of a speed benchmark: rows, target checks, the Markdown report.

Part of ``experiments.bench_speed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.speed.options import EXPORTED_FORMS, FORM_DESCRIPTIONS, TARGETS
from experiments.speed.timing import Case, latency_summary, throughput_summary

# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def result_rows(cases: Sequence[Case], batch_size: int) -> list[dict[str, Any]]:
    """One row per (method, form, device) with its batch-1 and batched summaries."""
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for case in cases:
        if case.steps:
            continue
        key = (case.method, case.form, case.device)
        row = grouped.setdefault(key, {
            "method": case.method, "form": case.form, "device": case.device,
            "description": FORM_DESCRIPTIONS.get(case.form, case.form),
            "includes_crop": case.form in ("saved_model_default", "crop_only",
                                           "dlib_predict", "onet_box", "peer_predict"),
            "batch_1": None, "batched": None})
        if case.faces == 1 and row["batch_1"] is None:
            row["batch_1"] = latency_summary(case)
        if case.faces == batch_size and (batch_size > 1 or row["batched"] is None):
            row["batched"] = throughput_summary(case)
    return list(grouped.values())


def training_rows(cases: Sequence[Case]) -> list[dict[str, Any]]:
    return [{"model": c.method, "what": c.form, "device": c.device,
             "steps_per_sample": c.steps, **throughput_summary(c)}
            for c in cases if c.steps]


def check_targets(rows: Sequence[Mapping[str, Any]],
                  num_landmarks: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Pass/fail of ``TARGETS`` for the exported forms on the CPU.

    Args:
        rows: ``result_rows``.
        num_landmarks: ``{model: L}``; with it each check also holds the time of
            dlib ERT with as many points in the same run (``peer``, ``peer_ms_per_face``,
            ``peer_faces_per_s``), when it was measured.
    """
    peers = {row["method"]: row for row in rows
             if row["form"] == "dlib_predict" and row["device"] == "CPU"}
    checks = []
    for row in rows:
        target = TARGETS.get(row["method"])
        if target is None or row["form"] not in EXPORTED_FORMS or row["device"] != "CPU":
            continue
        check = {"method": row["method"], "form": row["form"], **target}
        peer = peers.get(f"dlib_ert_{(num_landmarks or {}).get(row['method'])}")
        if peer is not None:
            check["peer"] = peer["method"]
            if peer["batch_1"]:
                check["peer_ms_per_face"] = peer["batch_1"]["median_ms_per_face"]
            if peer["batched"]:
                check["peer_faces_per_s"] = peer["batched"]["median_faces_per_s"]
        if row["batch_1"]:
            ms = row["batch_1"]["median_ms_per_face"]
            check["ms_per_face"] = ms
            check["latency_pass"] = ms < target["max_ms_per_face"]
        if row["batched"]:
            rate = row["batched"]["median_faces_per_s"]
            check["faces_per_s"] = rate
            check["throughput_pass"] = rate >= target["min_faces_per_s"]
        check["pass"] = bool(check.get("latency_pass", True)
                             and check.get("throughput_pass", True))
        checks.append(check)
    return checks


def _fmt_value(summary: Mapping[str, float] | None, key: str, spec: str) -> str:
    return "-" if not summary else format(summary[key], spec)


def _fmt_latency(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return "-"
    return (f"{summary['median_ms_per_face']:.3g} "
            f"[{summary['q25_ms_per_face']:.3g}-{summary['q75_ms_per_face']:.3g}]")


def _fmt_rate(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return "-"
    return (f"{summary['median_faces_per_s']:.4g} "
            f"[{summary['q25_faces_per_s']:.4g}-{summary['q75_faces_per_s']:.4g}]")


def _target_text(row: Mapping[str, Any], checks: Sequence[Mapping[str, Any]]) -> str:
    for check in checks:
        if check["method"] == row["method"] and check["form"] == row["form"] \
                and row["device"] == "CPU":
            parts = []
            if "latency_pass" in check:
                parts.append(f"<{check['max_ms_per_face']:g} ms: "
                             f"{'PASS' if check['latency_pass'] else 'FAIL'}")
            if "throughput_pass" in check:
                parts.append(f">={check['min_faces_per_s']:g}/s: "
                             f"{'PASS' if check['throughput_pass'] else 'FAIL'}")
            return "; ".join(parts)
    return ""


def format_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown report of a ``run_benchmark`` result."""
    settings, env = result["settings"], result["environment"]
    threads = env["threads"]
    batch = settings["batch_size"]
    unset = "" if threads["applied"] else f" (could not be set: {threads['note']})"
    sources = " ".join(f"{name}: {info['source']}." for name, info in result["models"].items())
    if result.get("fresh_weights"):
        sources += " Speed does not depend on the weights."
    machine = (
        f"Threads: TensorFlow intra-op {threads['intra_op']}, inter-op "
        f"{threads['inter_op']}{unset}; TFLite {settings['threads']}; dlib 1 (its "
        f"predictor is single-threaded). CPUs usable: {env['cpus_usable']} of "
        f"{env['cpu_count']}; load average {_load(env.get('load_average'))} at the start, "
        f"{_load(result.get('load_average_end'))} at the end (a shared machine: compare "
        "rows of this run only).")
    method = (
        f"Each value: median [q25-q75] over {settings['repeats']} interleaved rounds "
        f"(shuffled order, {settings['warmup']} warm-up calls, one sample ~ "
        f"{settings['sample_seconds']:g} s); images {settings['image_size']} px "
        "(synthetic faces, one per image). CPU ms/face: median process CPU time per face "
        "(all threads; less sensitive to other processes than wall time). CPU/wall: CPU "
        "seconds per wall second (up to the thread count; less means the cores were "
        "taken by others).")
    header = (f"| method | form | device | ms/face at batch 1 | faces/s at batch {batch} | "
              f"CPU ms/face (1 / {batch}) | CPU/wall (1 / {batch}) | target |")
    lines = ["# Speed of MSRRN and CCNN beside dlib ERT and MTCNN (ONet)", "",
             f"Preset `{settings['preset']}`. {sources}", "", machine, method, "",
             header, "|---|---|---|---|---|---|---|---|"]
    checks = result["targets"]
    for row in result["rows"]:
        cpu_ms = " / ".join(_fmt_value(row[k], "cpu_ms_per_face", ".3g")
                            for k in ("batch_1", "batched"))
        cpu_wall = " / ".join(_fmt_value(row[k], "cpu_per_wall", ".2f")
                              for k in ("batch_1", "batched"))
        lines.append(f"| {row['method']} | {row['form']} | {row['device']} | "
                     f"{_fmt_latency(row['batch_1'])} | {_fmt_rate(row['batched'])} | "
                     f"{cpu_ms} | {cpu_wall} | {_target_text(row, checks)} |")
    for name, info in result.get("peers", {}).items():
        if "options" in info:
            o = info["options"]
            lines += ["", (f"{name}: trained on {info['train_faces']} synthetic faces in "
                      f"{info['train_seconds']:.0f} s; predictor of {o['cascade_depth']} "
                      f"cascade levels x {o['num_trees_per_cascade_level']} trees of depth "
                      f"{o['tree_depth']}, feature pool {o['feature_pool_size']} ("
                      + ("dlib's defaults" if info["default_predictor_size"]
                         else "NOT dlib's defaults: its time is not representative")
                      + "); training-only options "
                      f"oversampling_amount={o['oversampling_amount']}, "
                      f"num_test_splits={o['num_test_splits']}.")]
    deviations = {name: info["xla_max_deviation_px"]
                  for name, info in result["models"].items() if "xla_max_deviation_px" in info}
    if deviations:
        lines += ["", "`keras_xla` landmarks vs the Keras model's, largest difference: "
                  + ", ".join(f"{name} {value:.2g} px" for name, value in deviations.items())
                  + f" (batch {batch}, pixels of the largest crop)."]
    lines += ["", "Forms: " + "; ".join(
        f"`{k}`: {v}" for k, v in FORM_DESCRIPTIONS.items()
        if any(r["form"] == k for r in result["rows"])) + "."]
    if result.get("training"):
        lines += ["", "## Training throughput", "",
                  "| model | what | device | batch | ms/step | faces/s |",
                  "|---|---|---|---|---|---|"]
        for row in result["training"]:
            lines.append(f"| {row['model']} | {row['what']} | {row['device']} | "
                         f"{row['batch_size']} | {row['median_ms_per_batch']:.4g} | "
                         f"{_fmt_rate(row)} |")
        lines += ["", ("Compiled training loop of `common.training.train_model` on a fixed "
                  "in-memory batch (no input pipeline).")]
    lines += ["", "## Targets (CPU, exported forms)", ""]
    for check in checks:
        peer = ""
        if "peer" in check:
            peer = (f"; {check['peer']} in this run: "
                    f"{check.get('peer_ms_per_face', float('nan')):.3g} ms/face, "
                    f"{check.get('peer_faces_per_s', float('nan')):.4g} faces/s")
        lines.append(f"* {check['method']} {check['form']}: "
                     f"{check.get('ms_per_face', float('nan')):.3g} ms/face (target < "
                     f"{check['max_ms_per_face']:g}: "
                     f"{'PASS' if check.get('latency_pass', True) else 'FAIL'}), "
                     f"{check.get('faces_per_s', float('nan')):.4g} faces/s (target >= "
                     f"{check['min_faces_per_s']:g}: "
                     f"{'PASS' if check.get('throughput_pass', True) else 'FAIL'}): "
                     f"{'PASS' if check['pass'] else 'FAIL'}{peer}")
    for name, profile in result.get("profile", {}).items():
        lines += ["", f"## Profile: {name}", ""]
        for part in profile.get("breakdown", []):
            lines.append(
                f"* batch {part['batch_size']}: serving_default "
                f"{part['serving_default_ms_per_face']:.3g} ms/face (wall) vs crop_only "
                f"{part['crop_ms_per_face']:.3g} + serving_cropped "
                f"{part['model_ms_per_face']:.3g}; CPU time: serving_default "
                f"{part['serving_default_cpu_ms_per_face']:.3g} ms/face vs crop "
                f"{part['crop_cpu_ms_per_face']:.3g} + model "
                f"{part['model_cpu_ms_per_face']:.3g} (crop {part['crop_share_cpu']:.0%})")
        if profile.get("stages"):
            lines += ["", "| part | batch | ms/face | increment ms/face |", "|---|---|---|---|"]
            for row in profile["stages"]:
                lines.append(f"| {row['part']} | {row['batch_size']} | "
                             f"{row['ms_per_face']:.3g} | {row['increment_ms_per_face']:.3g} |")
        for ops in profile.get("ops", []):
            lines += ["", (f"serving_default ops at batch {ops['batch_size']} (traced; wall "
                      f"{ops['wall_ms']:.3g} ms untraced, summed op time "
                      f"{ops['op_ms_total']:.3g} ms):"), "",
                      "| op type | ms | share | layer / op group | ms | share |",
                      "|---|---|---|---|---|---|"]
            for (t, t_ms, t_share), (s, s_ms, s_share) in zip(ops["by_op_type"],
                                                              ops["by_scope"]):
                lines.append(f"| {t} | {t_ms:.3g} | {t_share:.0%} | {s} | {s_ms:.3g} | "
                             f"{s_share:.0%} |")
    if result.get("roofline"):
        from experiments.speed.roofline import roofline_markdown

        roof = result["roofline"]
        lines += ["", roofline_markdown(roof["costs"], roof["machine"], roof["rows"])]
    gpu = result["environment"]["gpu"]
    lines += ["", f"GPU: {gpu['note']}"]
    for note in result.get("notes", []):
        lines.append(f"* {note}")
    return "\n".join(line for line in lines if line is not None) + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.1f}" for v in values)


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json(dataclasses.asdict(value))
    return value
