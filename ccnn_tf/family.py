"""CCNN's entry in the model-family registry (``common.landmark_model``).

Registered when ``ccnn_tf`` is imported; nothing here imports TensorFlow until a
function is called. The shared code reaches CCNN through
``common.landmark_model.get_family("ccnn")`` and the cascade's own contract
attributes, never by branching on the family.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from common.landmark_model import TrainedModel, register_family

NAME = "ccnn"


def load(path: str, *, margin: float | None = None, **options: Any) -> Any:
    """A trained cascade (``.keras`` file, CCNN run or stage directory).

    Args:
        path: the model file or directory.
        margin: must equal the cascade's own (its windows are placed for it).
        **options: inference options (``flip_test``, ``confidence_source``:
            ``CCNNCascade.with_inference_options``).

    Returns:
        The cascade.
    """
    from ccnn_tf.runs import load_cascade

    model = load_cascade(path)
    if margin is not None and float(margin) != float(model.margin):
        raise ValueError(f"{path}: a CCNN cascade is trained for its margin "
                         f"{model.margin:g}, not {margin:g}")
    return model.with_inference_options(**options)


def build(config: Any = None) -> Any:
    """A fresh cascade of ``config`` (default: the paper's ``CCNNConfig()``)."""
    from ccnn_tf.config import CCNNConfig
    from ccnn_tf.model import build_ccnn

    return build_ccnn(config or CCNNConfig())


def default_config() -> Any:
    """``CCNNConfig()`` (the paper's defaults)."""
    from ccnn_tf.config import CCNNConfig

    return CCNNConfig()


def train(data: str, *, run_dir: str, train_split: str = "train",
          eval_split: str | None = "val", steps: int | None = None, preset: str = "quick",
          batch_size: int | None = None, config_overrides: Mapping[str, Any] | None = None,
          seed: int | None = 0, verbose: bool = True) -> TrainedModel:
    """Trains all stages with ``ccnn_tf.training.train_ccnn`` (resuming ``run_dir``)
    and exports the cascade; ``steps`` is per stage; ``eval_split`` is logged at the
    end of every stage (nothing is selected on it)."""
    from ccnn_tf import training
    from ccnn_tf.runs import load_cascade

    config = training.build_config(preset, steps=steps, batch_size=batch_size, seed=seed)
    config = config.replace(**(config_overrides or {}))
    summary = training.train_ccnn(
        config, "all", data=data, run_dir=run_dir, train_split=train_split,
        val_split=eval_split, evaluate=False, export=True, verbose=verbose)
    return TrainedModel(load_cascade(run_dir), {
        "source": "trained", "run_dir": os.path.abspath(run_dir), "preset": preset,
        "steps_per_stage": config.steps_per_stage, "config": config.to_dict(),
        "training_speed": "; ".join(f"stage {k}: {r.speed(config.batch_size)}"
                                    for k, r in sorted(summary.stage_results.items()))})


def synthetic_data(preset: str | None = None, progress: bool = True) -> str:
    """The embedded synthetic 5-point faces of a preset (generated once, cached)."""
    from ccnn_tf import training

    return training.synthetic_data(preset or "quick", progress=progress)


FAMILY = register_family(
    NAME, num_landmarks=5, load=load, build=build, default_config=default_config,
    train=train, synthetic_data=synthetic_data, default_preset="quick",
    steps_unit="per stage",
    description="CCNN: 5 points, a three-stage cascade of 23 small CNNs")
