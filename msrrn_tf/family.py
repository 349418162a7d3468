"""MSRRN's entry in the model-family registry (``common.landmark_model``).

Registered when ``msrrn_tf`` is imported; nothing here imports TensorFlow until a
function is called. The shared code (experiments, prediction, export) reaches MSRRN
through ``common.landmark_model.get_family("msrrn")`` and the model's own contract
attributes, never by branching on the family.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from common.landmark_model import TrainedModel, register_family

logger = logging.getLogger(__name__)

NAME = "msrrn"


def load(path: str, *, margin: float | None = None, flip_test: bool | None = None,
         **options: Any) -> Any:
    """A trained MSRRN (``.keras`` or run directory), its crop margin set.

    The margin is ``margin`` if given, else the model's own (stored since the
    ``LandmarkModel`` contract), else its run's ``config.json``; a model with none of
    them (an old ``.keras`` file outside its run) gets ``MSRRNConfig().margin`` with a
    warning.

    Args:
        path: the model file or run directory.
        margin: overrides the model's margin.
        flip_test: switch the flip test (``MSRRN.with_flip_test``); ``None``: as trained.
        **options: other inference options (``MSRRN.with_inference_options``).

    Returns:
        The model.
    """
    from common import evaluation
    from common.landmark_model import complete_margin

    model = evaluation.load_model(path)
    try:
        complete_margin(model, path, margin)
    except ValueError:
        from msrrn_tf.config import MSRRNConfig

        default = MSRRNConfig().margin
        logger.warning("%s stores no crop margin and has no run config beside it; using "
                       "MSRRNConfig().margin = %g (pass margin= / --margin)", path, default)
        model.margin = default
    return model.with_inference_options(flip_test=flip_test, **options)


def build(config: Any = None) -> Any:
    """A fresh MSRRN of ``config`` (default: the paper's ``MSRRNConfig()``)."""
    from msrrn_tf.config import MSRRNConfig
    from msrrn_tf.model import build_msrrn

    return build_msrrn(config or MSRRNConfig())


def default_config() -> Any:
    """``MSRRNConfig()`` (the paper's defaults)."""
    from msrrn_tf.config import MSRRNConfig

    return MSRRNConfig()


def train(data: str, *, run_dir: str, train_split: str = "train",
          eval_split: str | None = None, steps: int | None = None, preset: str = "quick",
          batch_size: int | None = None, config_overrides: Mapping[str, Any] | None = None,
          seed: int | None = 0, verbose: bool = True) -> TrainedModel:
    """Trains MSRRN with ``msrrn_tf.training.train_msrrn`` (resuming ``run_dir``) and
    exports it; ``steps`` is the total; ``eval_split`` is not used (no selection)."""
    del eval_split
    from msrrn_tf import training

    config = training.MSRRNConfig.preset(preset).replace(**(config_overrides or {}))
    if batch_size:
        config = config.replace(batch_size=int(batch_size))
    result = training.train_msrrn(
        config, data=data, run_dir=run_dir, steps=steps, train_split=train_split,
        val_split=None, evaluate=False, export=True, seed=seed, verbose=verbose,
        checkpoint_every=500)
    model = result.model
    if model.margin is None:
        model.margin = float(config.margin)
    return TrainedModel(model, {
        "source": "trained", "run_dir": os.path.abspath(run_dir), "preset": preset,
        "steps": result.steps_done, "resumed_from_step": result.initial_step,
        "config": config.to_dict(), "training_speed": result.speed()})


def synthetic_data(preset: str | None = None, progress: bool = True) -> str:
    """The embedded synthetic 68-point faces of a preset (generated once, cached)."""
    from common.synthetic import ensure_synthetic_dataset
    from msrrn_tf import training

    return ensure_synthetic_dataset(68, training.synthetic_splits(preset or "quick"),
                                    seed=0, progress=progress)


FAMILY = register_family(
    NAME, num_landmarks=68, load=load, build=build, default_config=default_config,
    train=train, synthetic_data=synthetic_data, default_preset="quick",
    description="MSRRN (Wang et al. 2017): 68 points, three scales, one shared regressor")
