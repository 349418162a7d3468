"""A confidence per face in ``[0, 1]``: how much a model's redundant estimates agree.

Both models make more than one estimate of the same shape, and when those estimates
disagree the fit has usually failed:

* MSRRN with its flip test (``MSRRNConfig.flip_test``, on by default) predicts the
  face and its mirror image; the mirrored prediction, mapped back, should land on
  the same points.
* CCNN's stages 2 and 3 have two networks per point, each on its own window
  (Sun et al. 2013, section 3.1.2); their two estimates of a point should agree.

With ``K`` estimates ``e_k [L, 2]`` of a face, in normalised crop coordinates (the
crop is a fixed multiple of the face box, so these units are scale free), the
disagreement is the mean distance of the estimates from their average,

    d = mean_{k, l} || e_{k, l} - mean_k e_{k, l} ||,

and the confidence is ``exp(-d / scale)``: 1 when they agree exactly, falling
monotonically as they part (the ranking, hence the failure-ranking AUC, does not
depend on ``scale``; ``scale`` only sets where 0.5 lies). ``ShapeAgreementConfidence``
is that map as a Keras layer, so it is part of a model's output dict and of its
SavedModel; :func:`failure_auc` measures how well a confidence ranks failures
(``experiments/confidence_auc.py``).
"""

from __future__ import annotations

import keras
import numpy as np

DEFAULT_SCALE = 0.01
"""Disagreement (normalised crop units) at which the confidence is ``exp(-1)``.
With a crop of about three inter-ocular distances, 0.01 is ~3 % of the inter-ocular
distance between the estimates, where failures (error > 10 %) start to dominate
(measured by ``experiments/confidence_auc.py``)."""


def shape_disagreement(estimates: np.ndarray) -> np.ndarray:
    """Mean distance of ``K`` estimates of each shape from their average.

    Args:
        estimates: ``[N, K, L, 2]``.

    Returns:
        float64 ``[N]``.
    """
    estimates = np.asarray(estimates, np.float64)
    if estimates.ndim != 4 or estimates.shape[-1] != 2:
        raise ValueError(f"estimates must be [N, K, L, 2], got {estimates.shape}")
    centre = estimates.mean(axis=1, keepdims=True)
    return np.linalg.norm(estimates - centre, axis=-1).mean(axis=(1, 2))


def confidence_from_disagreement(disagreement: np.ndarray,
                                 scale: float = DEFAULT_SCALE) -> np.ndarray:
    """``exp(-d / scale)`` in ``[0, 1]`` (module docstring)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return np.exp(-np.asarray(disagreement, np.float64) / scale)


@keras.saving.register_keras_serializable(package="common")
class ShapeAgreementConfidence(keras.layers.Layer):
    """``[N, K, L, 2]`` estimates of each shape -> confidence ``[N]`` in ``[0, 1]``.

    Args:
        scale: disagreement (normalised crop units) mapped to ``exp(-1)``.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, scale: float = DEFAULT_SCALE, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)

    def call(self, estimates):
        estimates = keras.ops.cast(estimates, "float32")
        centre = keras.ops.mean(estimates, axis=1, keepdims=True)
        distance = keras.ops.sqrt(keras.ops.sum(keras.ops.square(estimates - centre), axis=-1)
                                  + 1e-20)
        return keras.ops.exp(-keras.ops.mean(distance, axis=(1, 2)) / self.scale)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(scale=self.scale)
        return config


def failure_auc(confidence: np.ndarray, errors: np.ndarray, threshold: float = 0.10) -> float:
    """How well a low confidence ranks failures: the ROC AUC of ``-confidence`` for
    ``errors > threshold`` (Mann-Whitney, ties counted half).

    Args:
        confidence: ``[N]``.
        errors: ``[N]`` normalised errors (e.g. ``common.metrics.nme`` per face).
        threshold: the failure threshold (0.10: 10 % of the normaliser).

    Returns:
        the probability that a random failure has a lower confidence than a random
        success; ``nan`` when either class is empty.
    """
    confidence = np.asarray(confidence, np.float64).reshape(-1)
    errors = np.asarray(errors, np.float64).reshape(-1)
    if confidence.shape != errors.shape:
        raise ValueError(f"{confidence.shape} confidences for {errors.shape} errors")
    failed = errors > threshold
    n_fail, n_ok = int(failed.sum()), int((~failed).sum())
    if not n_fail or not n_ok:
        return float("nan")
    order = np.argsort(-confidence, kind="mergesort")
    ranks = np.empty(len(confidence), np.float64)
    values = -confidence[order]
    # average ranks of ties (1-based)
    _, start, counts = np.unique(values, return_index=True, return_counts=True)
    for s, c in zip(start, counts):
        ranks[order[s:s + c]] = s + (c + 1) / 2.0
    rank_sum = ranks[failed].sum()
    return float((rank_sum - n_fail * (n_fail + 1) / 2.0) / (n_fail * n_ok))
