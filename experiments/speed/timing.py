"""How a speed benchmark times things: ``Case``, interleaved rounds, summaries, and
the threads and environment of the run.

Part of ``experiments.bench_speed`` (its method is described there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One timed thing: ``fn()`` processes ``faces`` faces (a batch, or training steps).

    Attributes:
        method: "msrrn", "ccnn", "dlib_ert_68", "mtcnn_onet", ...
        form: a key of ``FORM_DESCRIPTIONS``, or "train" / "train_stage_k".
        device: "CPU" or "GPU".
        faces: faces per call of ``fn``.
        fn: the call to time; it returns once the result is available.
        steps: training steps per call (training cases).
        inner: calls per sample (set by the warm-up).
        seconds: per-call wall seconds, one per sample.
        cpu_seconds: per-call process CPU seconds, one per sample.
    """

    method: str
    form: str
    device: str
    faces: int
    fn: Callable[[], Any]
    steps: int = 0
    inner: int = 1
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)


def _sample(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per call over ``calls`` consecutive calls."""
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - start
    return wall / calls, (time.process_time() - cpu) / calls


def time_cases(cases: Sequence[Case], *, repeats: int, warmup: int, sample_seconds: float,
               seed: int = 0, max_inner: int = 200, log: Callable[[str], None] | None = None
               ) -> None:
    """Times ``cases`` in interleaved rounds (fills ``Case.seconds``/``cpu_seconds``).

    Each case is called ``warmup`` times (at least once; the last warm-up call sets
    ``inner``, the number of calls per sample, to last about ``sample_seconds``;
    training cases keep one call per sample). Then, ``repeats`` times, every case is
    sampled once in a freshly shuffled order.
    """
    rng = np.random.default_rng(seed)
    for case in cases:
        for _ in range(max(warmup - 1, 0)):
            case.fn()
        once, _ = _sample(case.fn, 1)
        if not case.steps:
            case.inner = int(np.clip(round(sample_seconds / max(once, 1e-9)), 1, max_inner))
    for round_index in range(repeats):
        for i in rng.permutation(len(cases)):
            case = cases[i]
            wall, cpu = _sample(case.fn, case.inner)
            case.seconds.append(wall)
            case.cpu_seconds.append(cpu)
        if log is not None:
            log(f"  round {round_index + 1}/{repeats} done")


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def latency_summary(case: Case) -> dict[str, float]:
    """ms per face of a batch-1 case: median, q25, q75 over its samples."""
    q25, q50, q75 = _quartiles([1000.0 * s / case.faces for s in case.seconds])
    return {"median_ms_per_face": q50, "q25_ms_per_face": q25, "q75_ms_per_face": q75,
            **_common_summary(case)}


def throughput_summary(case: Case) -> dict[str, float]:
    """faces/s of a batched (or training) case: median, q25, q75 over its samples."""
    q25, q50, q75 = _quartiles([case.faces / s for s in case.seconds])
    return {"median_faces_per_s": q50, "q25_faces_per_s": q25, "q75_faces_per_s": q75,
            "median_ms_per_batch": 1000.0 * float(np.median(case.seconds))
            / max(case.steps, 1),
            "batch_size": case.faces // max(case.steps, 1), **_common_summary(case)}


def _common_summary(case: Case) -> dict[str, float]:
    wall, cpu = np.asarray(case.seconds), np.asarray(case.cpu_seconds)
    return {"samples": len(case.seconds), "calls_per_sample": case.inner,
            "cpu_ms_per_face": 1000.0 * float(np.median(cpu)) / case.faces,
            "cpu_per_wall": float(np.median(cpu / wall))}


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def configure_threads(intra: int, inter: int) -> dict[str, Any]:
    """Sets ``tf.config.threading`` (before TensorFlow starts) and reports it.

    Returns:
        ``{"intra_op": ..., "inter_op": ..., "applied": bool, "note": ...}``; when
        TensorFlow was already running the settings cannot change and the current
        ones (0 = TensorFlow's default, one per core) are reported.
    """
    import tensorflow as tf

    note = ""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        applied = True
    except RuntimeError as error:  # the runtime is already initialised
        applied, note = False, str(error)
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "applied": applied, "note": note}


def environment_report() -> dict[str, Any]:
    """Versions, CPUs, load average and the thread-related environment variables."""
    import keras
    import tensorflow as tf

    affinity = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count())
    env_keys = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                "TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES")
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpus_usable": affinity,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "env": {k: os.environ[k] for k in env_keys if k in os.environ}}


def quiet_tflite() -> contextlib.AbstractContextManager[None]:
    """Hides tf.lite.Interpreter's deprecation notice
    (``common.export_check.quiet_lite_deprecation``, imported when used)."""
    from common.export_check import quiet_lite_deprecation

    return quiet_lite_deprecation()
