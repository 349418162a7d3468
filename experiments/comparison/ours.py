"""Our model in a comparison: trained with the package's own function, or loaded.

Part of ``experiments.compare_real``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FAMILIES = ("msrrn", "ccnn")

FAMILY_SETTINGS = {
    "msrrn": {"kinds": ("inter_pupil", "inter_ocular"), "thresholds": (0.08, 0.10),
              "ced_max": 0.15, "default_preset": "quick"},
    "ccnn": {"kinds": ("box_width", "inter_ocular"), "thresholds": (0.05, 0.10),
             "ced_max": 0.15, "default_preset": "quick"},
}
"""Per family: the normalisers (the first is the headline metric and the CED's), the
AUC / failure thresholds, the CED's x range and the default training preset."""


@dataclasses.dataclass
class OurModel:
    """Our trained model and how to feed it.

    Attributes:
        model: the Keras model.
        sizes: its input sides.
        margin: its crop margin.
        num_landmarks: L.
        info: JSON-ready description (source, preset, steps, training seconds).
    """

    model: Any
    sizes: tuple[int, ...]
    margin: float
    num_landmarks: int
    info: dict[str, Any]


def train_or_load_ours(family: str, data: str, *, train_split: str, eval_split: str,
                       run_dir: str, model_path: str | None = None,
                       steps: int | None = None, preset: str | None = None,
                       batch_size: int | None = None,
                       config_overrides: Mapping[str, Any] | None = None,
                       seed: int | None = 0, verbose: bool = True) -> OurModel:
    """Trains our model of ``family`` with the package's training function, or loads it.

    Args:
        family: ``"msrrn"`` or ``"ccnn"``.
        data: TFRecord folder.
        train_split: the training split.
        eval_split: the evaluation split (CCNN logs its error on it at the end of every
            stage; nothing is selected on it).
        run_dir: the run directory (rerunning resumes, a finished run is reused).
        model_path: a trained model (``.keras`` or run directory): no training.
        steps: training steps (MSRRN: total; CCNN: per stage); default the preset's.
        preset: training preset (``msrrn_tf.training.PRESETS`` /
            ``ccnn_tf.training.PRESETS``); default ``"quick"``.
        batch_size: override of the preset's batch size.
        config_overrides: fields of the preset's config to change
            (``MSRRNConfig`` / ``CCNNConfig``), applied before ``steps``/``batch_size``.
        seed: seed of the data order and augmentation.
        verbose: progress output.

    Returns:
        The :class:`OurModel`.
    """
    preset = preset or FAMILY_SETTINGS[family]["default_preset"]
    start = time.perf_counter()
    if family == "msrrn":
        from msrrn_tf import training as msrrn_training

        if model_path:
            from msrrn_tf.evaluate import load_with_margin

            model, margin = load_with_margin(model_path)
            info = {"source": os.path.abspath(model_path)}
        else:
            config = msrrn_training.preset_config(preset).replace(**(config_overrides or {}))
            if batch_size:
                config = config.replace(batch_size=int(batch_size))
            result = msrrn_training.train_msrrn(
                config, data=data, run_dir=run_dir, steps=steps, train_split=train_split,
                val_split=None, evaluate=False, export=True, seed=seed, verbose=verbose,
                checkpoint_every=500)
            model, margin = result.model, config.margin
            info = {"source": "trained", "run_dir": os.path.abspath(run_dir),
                    "preset": preset, "steps": result.steps_done,
                    "resumed_from_step": result.initial_step, "config": config.to_dict(),
                    "training_speed": result.speed()}
        sizes = tuple(int(s) for s in model.input_sizes)
        num_landmarks = int(model.num_landmarks)
        info["num_stages"] = int(model.num_stages)
    elif family == "ccnn":
        from ccnn_tf import evaluate as ccnn_evaluate
        from ccnn_tf import training as ccnn_training

        if model_path:
            model = ccnn_evaluate.load_cascade(model_path)
            info = {"source": os.path.abspath(model_path)}
        else:
            config = ccnn_training.build_config(preset, steps=steps, batch_size=batch_size,
                                                seed=seed)
            config = config.replace(**(config_overrides or {}))
            summary = ccnn_training.train_ccnn(
                config, "all", data=data, run_dir=run_dir, train_split=train_split,
                val_split=eval_split, evaluate=False, export=True, verbose=verbose)
            model = ccnn_evaluate.load_cascade(run_dir)
            info = {"source": "trained", "run_dir": os.path.abspath(run_dir),
                    "preset": preset, "steps_per_stage": config.steps_per_stage,
                    "config": config.to_dict(),
                    "training_speed": "; ".join(
                        f"stage {k}: {r.speed(config.batch_size)}"
                        for k, r in sorted(summary.stage_results.items()))}
        sizes, margin, num_landmarks = ccnn_evaluate.model_geometry(model)
        info["num_stages"] = int(model.num_stages)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    info["seconds"] = time.perf_counter() - start
    return OurModel(model=model, sizes=tuple(sizes), margin=float(margin),
                    num_landmarks=int(num_landmarks), info=info)


def time_ours_per_face(ours: OurModel, faces: Sequence[Any], count: int = 50) -> float:
    """Median seconds to align one face (batch 1) with our model, crop included.

    Runs the serving function of the exported model (``LandmarkServingModule``: crop
    from the uint8 image and box, model, back to pixels), so the number is what a user
    calling the SavedModel one face at a time sees, and compares with the peers'
    ``predict`` calls.
    """
    from common.export import LandmarkServingModule

    module = LandmarkServingModule(ours.model, ours.sizes, ours.margin, ours.num_landmarks)
    times = []
    for index, face in enumerate(faces[:max(1, count) + 2]):
        image, box = np.asarray(face[0])[None], np.asarray(face[2], np.float32)[None]
        start = time.perf_counter()
        module.serving_default(image, box)["landmarks"].numpy()
        if index >= 2:  # the first calls trace
            times.append(time.perf_counter() - start)
    return float(np.median(times)) if times else float("nan")
