"""The layout of a CCNN run directory, and loading a cascade from one.

Shared by ``ccnn_tf.training`` (which writes runs), ``ccnn_tf.evaluate`` and
``ccnn_tf.export`` (which read them), so that the three import in one direction
(training -> evaluate -> export, each of them -> runs)::

    run_dir/
      config.json          the CCNNConfig and the data the run trains on
                           (``common.run_files.read_run_record``; runs written before
                           the grouped configs have ``run.json`` instead, still read)
      stage1/ stage2/ stage3/   one common.training run each (config.json,
                           checkpoints/, tensorboard/, history.json, model.keras)
      model.keras          the assembled cascade (all stages, nothing frozen)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ccnn_tf.config import CCNNConfig
from ccnn_tf.model import CCNNCascade, build_ccnn, transfer_stage_weights
from common import evaluation, training
from common.run_files import LEGACY_RUN_FILE, RUN_CONFIG_FILE, RunRecord, read_run_record

logger = logging.getLogger(__name__)


RUN_FILE = RUN_CONFIG_FILE
"""The file in a CCNN run directory recording its config and training data (the
``config.json`` of every run folder, ``common.run_files``)."""

CONFIG_CLASS = f"{CCNNConfig.__module__}.{CCNNConfig.__qualname__}"
"""The ``config.class`` a cascade run's ``config.json`` records (a stage folder's
runner ``config.json`` records none)."""


MODEL_FILE = "model.keras"
"""The assembled cascade (run directory) or a stage's final model (stage directory)."""


STAGE_NAMES = ("stage1", "stage2", "stage3")


def stage_dir(run_dir: str, stage: int) -> str:
    """The run directory of stage ``stage`` (1-based): ``run_dir/stage{k}``."""
    if not 1 <= stage <= len(STAGE_NAMES):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    return os.path.join(run_dir, STAGE_NAMES[stage - 1])


def _read_json(path: str) -> dict[str, Any] | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_run(run_dir: str) -> RunRecord | None:
    """The record of a CCNN cascade run folder (its ``config.json``, or the
    ``run.json`` of an older run), or ``None`` when ``run_dir`` is not one."""
    record = read_run_record(run_dir)
    if record is None:
        return None
    legacy = os.path.basename(record.path) == LEGACY_RUN_FILE
    return record if legacy or record.config_class == CONFIG_CLASS else None


def run_config(run_dir: str) -> CCNNConfig | None:
    """The ``CCNNConfig`` recorded in a run directory (``None`` if there is none)."""
    record = read_run(run_dir)
    return None if record is None else CCNNConfig.from_dict(record.values)


def weights_fingerprint(model: CCNNCascade, stages: Iterable[int]) -> str:
    """A SHA-256 (16 hex digits) of the weights of ``stages`` of a cascade."""
    digest = hashlib.sha256()
    for k in stages:
        for weight in model.stage_layer(k).get_weights():
            digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
    return digest.hexdigest()[:16]


def load_stage_model(run_dir: str, stage: int) -> CCNNCascade:
    """Loads the final model of a finished stage (``run_dir/stage{k}/model.keras``).

    Raises:
        FileNotFoundError: the stage has not finished training.
    """
    path = os.path.join(stage_dir(run_dir, stage), MODEL_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"stage {stage} of {run_dir} has not finished ({path} is missing); train it "
            f"first (--stage={stage})")
    return keras.saving.load_model(path, compile=False)


def _previous_fingerprint_recorded(directory: str) -> str | None:
    record = _read_json(os.path.join(directory, "config.json"))
    if record is None:
        return None
    return record.get("config", {}).get("values", {}).get("previous_stages_fingerprint")


def assemble_cascade(run_dir: str, config: CCNNConfig | None = None,
                     num_stages: int | None = None) -> CCNNCascade:
    """Builds the inference cascade from the last finished stage and saves it.

    The cascade has ``num_stages`` stages (default ``config.num_stages``), nothing
    frozen and no per-network outputs; it is written to ``run_dir/model.keras``.

    Args:
        run_dir: the CCNN run directory.
        config: the configuration; default the one the run recorded.
        num_stages: stages to assemble.

    Returns:
        The cascade.
    """
    config = config or run_config(run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir} has no {RUN_FILE}")
    num_stages = config.num_stages if num_stages is None else num_stages
    source = load_stage_model(run_dir, num_stages)
    cascade = build_ccnn(config, num_stages=num_stages)
    transfer_stage_weights(source, cascade)
    training.save_model_atomically(cascade, os.path.join(run_dir, MODEL_FILE))
    return cascade


def completed_stages(run_dir: str) -> tuple[int, ...]:
    """The stages of a run whose ``model.keras`` exists."""
    return tuple(k for k in range(1, len(STAGE_NAMES) + 1)
                 if tf.io.gfile.exists(os.path.join(stage_dir(run_dir, k), MODEL_FILE)))


def consistent_stages(run_dir: str) -> int:
    """How many leading stages of a run form a consistent, finished cascade.

    Stage ``k`` is consistent when it finished and was trained on the current weights
    of stages ``< k`` (the fingerprint recorded in its ``config.json`` matches the
    finished stage ``k - 1``); retraining stage 2 makes a finished stage 3 stale.

    Args:
        run_dir: the CCNN run directory.

    Returns:
        The largest such ``k`` (0 when stage 1 has not finished).
    """
    done = set(completed_stages(run_dir))
    count = 0
    previous = None
    for k in range(1, len(STAGE_NAMES) + 1):
        if k not in done:
            break
        if k > 1:
            recorded = _previous_fingerprint_recorded(stage_dir(run_dir, k))
            if previous is None:
                previous = load_stage_model(run_dir, k - 1)
            if recorded != weights_fingerprint(previous, range(1, k)):
                logger.warning("stage %d of %s was trained on earlier weights of stages "
                               "1-%d: retrain it", k, run_dir, k - 1)
                break
        count = k
        previous = None
    return count


def latest_cascade(run_dir: str) -> CCNNCascade:
    """The assembled cascade, else the model of the last finished stage.

    Raises:
        FileNotFoundError: no stage has finished.
    """
    final = os.path.join(run_dir, MODEL_FILE)
    if tf.io.gfile.exists(final):
        return keras.saving.load_model(final, compile=False)
    done = completed_stages(run_dir)
    if not done:
        raise FileNotFoundError(f"{run_dir}: no finished stage")
    return load_stage_model(run_dir, max(done))


def load_cascade(path: str) -> keras.Model:
    """Loads a cascade from a ``.keras`` file, a CCNN run or a stage directory.

    A CCNN run directory gives its assembled ``model.keras`` or, before all stages
    are trained, the model of its last finished stage.

    Args:
        path: the model file or directory.

    Returns:
        The model.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and read_run(path) is not None:
        return latest_cascade(path)
    return evaluation.load_model(path)


def run_data(path: str) -> str | None:
    """The training data recorded for the run holding ``path`` (its ``config.json``)."""
    path = os.path.abspath(os.fspath(path))
    candidates = [path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for candidate in candidates:
        if os.path.isdir(candidate):
            record = read_run(candidate)
            if record is not None:
                return record.data
    return None
