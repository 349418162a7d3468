"""A roofline for the models of ``experiments.bench_speed`` (issue 17).

For each model: the floating-point operations and a lower bound on the bytes moved per
face, from its inference graph; for the machine: the measured float32 matrix-product
rate and memory bandwidth (not the vendor's figures). A form's bound is

    faces/s <= min(peak FLOP/s, intensity x bandwidth) / FLOPs per face,

with ``intensity = FLOPs / bytes`` per face, and the report gives each measured form's
fraction of that bound.

* FLOPs: TensorFlow's profiler (``tf.compat.v1.profiler``, float operations) on the
  model traced at batch ``B`` with frozen weights, divided by ``B``; it counts
  convolutions, matrix products and element-wise arithmetic (a multiply-add is 2), not
  crops, gathers or copies.
* Bytes: the weights read once per batch (``4 x parameters / B``) plus the float32
  inputs and outputs of one face: what any implementation must move at least. The
  activations are left out (they may stay in cache), so the bound is optimistic.
* Peak FLOP/s: the best of several float32 ``tf.linalg.matmul`` of two 1024 x 1024
  matrices on the benchmark's threads; bandwidth: the best NumPy copy of a 128 MB array
  (bytes read + written per second), one thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def graph_flops(model: Any, sizes: Sequence[int], batch: int = 8) -> float:
    """Float operations per face of ``model`` (inputs ``image_<s>``) at ``batch``."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    specs = {f"image_{s}": tf.TensorSpec([batch, s, s, 3], tf.float32) for s in sizes}

    @tf.autograph.experimental.do_not_convert
    def forward(inputs):
        return model(inputs, training=False)

    concrete = tf.function(forward).get_concrete_function(specs)
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return float(profile.total_float_ops) / batch


def model_cost(model: Any, sizes: Sequence[int], num_landmarks: int,
               batch: int) -> dict[str, float]:
    """``{"flops", "bytes", "intensity", "parameters"}`` per face at ``batch``
    (module docstring: what is counted)."""
    flops = graph_flops(model, sizes, batch=min(batch, 8))
    parameters = int(model.count_params())
    inputs = sum(4 * s * s * 3 for s in sizes)
    outputs = 4 * 2 * num_landmarks
    moved = 4.0 * parameters / batch + inputs + outputs
    return {"flops": flops, "bytes": moved, "intensity": flops / moved,
            "parameters": parameters, "batch": batch}


def measure_machine(threads: int, repeats: int = 5) -> dict[str, float]:
    """``{"gflops", "bandwidth_gbs"}``: the float32 matmul rate and the copy bandwidth
    of this machine (module docstring)."""
    import tensorflow as tf

    n = 1024
    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(a, b).numpy()  # warm-up and trace
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            result = matmul(a, b)
        result.numpy()
        best = min(best, (time.perf_counter() - start) / 4)
    gflops = 2.0 * n ** 3 / best / 1e9

    source = np.ones(32 * 1024 * 1024, np.float32)  # 128 MB
    target = np.empty_like(source)
    np.copyto(target, source)
    best_copy = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best_copy = min(best_copy, time.perf_counter() - start)
    bandwidth = 2.0 * source.nbytes / best_copy / 1e9
    return {"gflops": gflops, "bandwidth_gbs": bandwidth, "threads": threads,
            "matmul_side": n, "copy_bytes": int(source.nbytes)}


def bound_faces_per_second(cost: Mapping[str, float], machine: Mapping[str, float]) -> float:
    """The roofline's faces/s: ``min(peak, intensity x bandwidth) / FLOPs per face``."""
    attainable = min(machine["gflops"], cost["intensity"] * machine["bandwidth_gbs"]) * 1e9
    return attainable / cost["flops"]


def limiting_resource(cost: Mapping[str, float], machine: Mapping[str, float]) -> str:
    """``"memory"`` when bandwidth x intensity is below the peak rate, else
    ``"compute"``."""
    memory_bound = cost["intensity"] * machine["bandwidth_gbs"] < machine["gflops"]
    return "memory" if memory_bound else "compute"


def roofline_rows(rows: Sequence[Mapping[str, Any]], costs: Mapping[str, Mapping[str, float]],
                  machine: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each CPU throughput row of a model in ``costs`` beside its bound.

    Args:
        rows: ``experiments.speed.report.result_rows`` (``method``, ``form``,
            ``device``, ``batched`` with ``median_faces_per_s``).
        costs: ``{model name: model_cost(...)}``.
        machine: :func:`measure_machine`.

    Returns:
        ``[{"method", "form", "faces_per_second", "gflops", "bound_faces_per_second",
        "fraction", "limit"}]``; ``limit`` is ``"compute"`` or ``"memory"``.
    """
    out = []
    for row in rows:
        cost = costs.get(row.get("method"))
        throughput = (row.get("batched") or {}).get("median_faces_per_s")
        if cost is None or row.get("device") != "CPU" or not throughput:
            continue
        if row.get("form") == "crop_only":
            continue
        bound = bound_faces_per_second(cost, machine)
        out.append({"method": row["method"], "form": row["form"],
                    "faces_per_second": float(throughput),
                    "gflops": float(throughput) * cost["flops"] / 1e9,
                    "bound_faces_per_second": bound,
                    "fraction": float(throughput) / bound,
                    "limit": limiting_resource(cost, machine)})
    return out


def roofline_markdown(costs: Mapping[str, Mapping[str, float]], machine: Mapping[str, float],
                      rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's roofline section."""
    lines = ["## Roofline (CPU, batch throughput)", "",
             f"Machine, measured in this run: {machine['gflops']:.1f} GFLOP/s (float32 "
             f"matmul {machine['matmul_side']}^2, {machine['threads']} threads), "
             f"{machine['bandwidth_gbs']:.1f} GB/s (NumPy copy of "
             f"{machine['copy_bytes'] / 2**20:.0f} MB, read + write). FLOPs from the "
             "inference graph; bytes: weights once per batch + inputs + outputs "
             "(experiments/speed/roofline.py).", "",
             "| model | MFLOP / face | KB / face (batch) | FLOP / byte | bound faces/s | limit |",
             "|---|---:|---:|---:|---:|---|"]
    for name, cost in costs.items():
        lines.append(f"| {name} | {cost['flops'] / 1e6:.1f} | {cost['bytes'] / 1e3:.1f} "
                     f"({cost['batch']}) | {cost['intensity']:.0f} | "
                     f"{bound_faces_per_second(cost, machine):.0f} | "
                     f"{limiting_resource(cost, machine)} |")
    lines += ["", "| model | form | faces/s | GFLOP/s | fraction of the bound |",
              "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['form']} | {row['faces_per_second']:.0f} | "
                     f"{row['gflops']:.1f} | {100 * row['fraction']:.0f} % |")
    return "\n".join(lines) + "\n"
