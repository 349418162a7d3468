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
    import ccnn_tf  # noqa: F401  (register the model families)
    import msrrn_tf  # noqa: F401
    from common import landmark_model

    entry = landmark_model.get_family(family)
    preset = preset or FAMILY_SETTINGS.get(family, {}).get("default_preset",
                                                           entry.default_preset)
    start = time.perf_counter()
    if model_path:
        model = entry.load(model_path)
        info = {"source": os.path.abspath(model_path)}
    else:
        if entry.train is None:
            raise ValueError(f"family {family!r} registers no train function; pass model_path")
        trained = entry.train(data, run_dir=run_dir, train_split=train_split,
                              eval_split=eval_split, steps=steps, preset=preset,
                              batch_size=batch_size, config_overrides=config_overrides,
                              seed=seed, verbose=verbose)
        model, info = trained.model, dict(trained.info)
    sizes = landmark_model.input_sizes_of(model)
    margin = landmark_model.margin_of(model)
    num_landmarks = landmark_model.num_landmarks_of(model)
    info["num_stages"] = int(getattr(model, "num_stages", 1))
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
