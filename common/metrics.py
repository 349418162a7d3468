"""Landmark error metrics shared by the MSRRN and CCNN evaluations (NumPy only).

Conventions (all errors are *fractions* of the normaliser; multiply by 100 for %):

* Point error of point ``l`` of face ``n``: the Euclidean distance
  ``e[n, l] = ||p[n, l] - g[n, l]||_2`` between prediction ``p`` and ground truth
  ``g``, in pixels.
* Normalised mean error of a face (NME, also called NRMSE in the MSRRN paper):
  ``nme[n] = (1 / L) * sum_l e[n, l] / d[n]``, where ``d[n]`` is the normaliser of
  face ``n`` (:func:`normalizer`).
* Cumulative error distribution (CED) of per-face errors ``x_1..x_N``:
  ``CED(t) = #{i : x_i <= t} / N``.
* Area under the CED up to ``T``, divided by ``T`` (the 300-W / Menpo convention,
  e.g. "AUC@0.08"): ``AUC_T = (1 / T) * integral_0^T CED(t) dt``, in [0, 1].
* Failure rate at ``T``: ``#{i : x_i > T} / N``.

Normalisers (``kind`` argument):

* ``"inter_pupil"``: distance between the two pupil (eye) centres. MSRRN (Wang et
  al. 2017, "Evaluation protocols") reports errors "normalized by the Euclidean
  distance of pupils of eyes"; for 68 points each pupil is the mean of the six eye
  contour points (36-41 and 42-47), for 5 points it is the eye-centre landmark.
* ``"inter_ocular"``: distance between the outer eye corners (points 36 and 45 of
  the 68-point mark-up), the 300-W convention of Sagonas et al. (2013/2016). A
  scheme without eye corners (the 5-point one) falls back to the eye-centre
  distance, the convention of MTFL / TCDCN (Zhang et al. 2014).
* ``"box_width"``: width of the face box, the convention of Sun et al. (CVPR 2013,
  "Deep convolutional network cascade for facial point detection") used for the
  CCNN per-point error plots.
* ``"box_diagonal"``: diagonal ``sqrt(w^2 + h^2)`` of the face box, a normaliser
  that stays meaningful for profile faces (used e.g. by the Menpo 2017 benchmark).

Indices never appear here: the eye points come from :mod:`common.schemes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from common.schemes import LandmarkScheme, scheme_for

NORMALIZER_KINDS = ("inter_pupil", "inter_ocular", "box_width", "box_diagonal")
"""The ``kind`` values accepted by :func:`normalizer` and :func:`nme`."""

DEFAULT_THRESHOLDS = (0.08, 0.10)
"""Thresholds at which :func:`summarize` reports AUC and failure rate."""


def _as_landmarks(array: np.ndarray, name: str) -> np.ndarray:
    """Returns ``array`` as float64 ``[N, L, 2]`` or raises a ValueError."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [N, L, 2], got {array.shape}")
    return array


def _as_errors(errors: np.ndarray) -> np.ndarray:
    """Returns ``errors`` as a non-empty finite float64 vector or raises a ValueError."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1:
        raise ValueError(f"errors must be a vector [N], got shape {errors.shape}")
    if errors.size == 0:
        raise ValueError("errors is empty: need at least one face")
    bad = np.flatnonzero(~np.isfinite(errors))
    if bad.size:
        raise ValueError(f"errors has {bad.size} non-finite value(s), first at face {bad[0]}")
    return errors


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a positive finite number, got {threshold}")
    return threshold


def normalizer(true_landmarks: np.ndarray, kind: str,
               scheme: LandmarkScheme | None = None,
               boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-face normalising distance for the error metrics.

    See the module docstring for the formula and source of each ``kind``.

    Args:
        true_landmarks: ground-truth landmarks ``[N, L, 2]`` in pixels.
        kind: one of ``"inter_pupil"``, ``"inter_ocular"``, ``"box_width"``,
            ``"box_diagonal"``.
        scheme: the landmark scheme; by default ``scheme_for(L)``. Only used by the
            eye-based kinds.
        boxes: face boxes ``[N, 4]`` (left, top, right, bottom) in pixels; required by
            the box-based kinds.

    Returns:
        float64 ``[N]`` normalising distances, all positive.

    Raises:
        ValueError: unknown ``kind``, bad shapes, missing ``boxes``, a scheme that
            does not match ``L``, or a zero / non-finite normaliser (the message
            names the face index).
    """
    true_landmarks = _as_landmarks(true_landmarks, "true_landmarks")
    num_faces, num_points = true_landmarks.shape[:2]
    if kind in ("inter_pupil", "inter_ocular"):
        if scheme is None:
            scheme = scheme_for(num_points)
        elif scheme.num_points != num_points:
            raise ValueError(f"scheme {scheme.name!r} has {scheme.num_points} points but the "
                             f"landmarks have {num_points}")
        if kind == "inter_ocular" and scheme.outer_eye_corners is not None:
            left_index, right_index = scheme.outer_eye_corners
            left = true_landmarks[:, left_index]
            right = true_landmarks[:, right_index]
        else:
            # inter_pupil, or inter_ocular on a scheme without corners (MTFL).
            left, right = scheme.pupils(true_landmarks)
        distances = np.linalg.norm(right - left, axis=-1)
    elif kind in ("box_width", "box_diagonal"):
        if boxes is None:
            raise ValueError(f"normalizer kind {kind!r} needs the face boxes [N, 4]")
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (num_faces, 4):
            raise ValueError(f"boxes must have shape [{num_faces}, 4] (left, top, right, "
                             f"bottom), got {boxes.shape}")
        widths = boxes[:, 2] - boxes[:, 0]
        if kind == "box_width":
            distances = widths
        else:
            distances = np.hypot(widths, boxes[:, 3] - boxes[:, 1])
    else:
        raise ValueError(f"unknown normalizer kind {kind!r}; expected one of "
                         f"{', '.join(NORMALIZER_KINDS)}")
    bad = np.flatnonzero(~(np.isfinite(distances) & (distances > 0)))
    if bad.size:
        raise ValueError(f"{kind} normalizer is {distances[bad[0]]:g} (not positive) for face "
                         f"index {bad[0]}" + (f" and {bad.size - 1} other face(s)"
                                              if bad.size > 1 else ""))
    return distances


def point_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Euclidean distance between predicted and true points, ``||p - g||_2``.

    Args:
        pred: predicted landmarks ``[N, L, 2]``.
        true: ground-truth landmarks ``[N, L, 2]`` in the same units.

    Returns:
        float64 ``[N, L]`` distances in the units of the inputs.

    Raises:
        ValueError: the shapes are not ``[N, L, 2]`` or differ.
    """
    pred = _as_landmarks(pred, "pred")
    true = _as_landmarks(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true shapes differ: {pred.shape} vs {true.shape}")
    return np.linalg.norm(pred - true, axis=-1)


def per_point_nme(pred: np.ndarray, true: np.ndarray, kind: str,
                  scheme: LandmarkScheme | None = None,
                  boxes: np.ndarray | None = None) -> np.ndarray:
    """Normalised error of every point, ``e[n, l] / d[n]``.

    Averaging over faces gives the per-point curves of the CCNN paper (Figures 4-7,
    errors normalised by the face-box width as in Sun et al. 2013).

    Args:
        pred: predicted landmarks ``[N, L, 2]`` in pixels.
        true: ground-truth landmarks ``[N, L, 2]`` in pixels.
        kind: normaliser kind, see :func:`normalizer`.
        scheme: landmark scheme (default ``scheme_for(L)``).
        boxes: face boxes ``[N, 4]``, for the box-based kinds.

    Returns:
        float64 ``[N, L]`` errors as fractions of the normaliser.
    """
    errors = point_errors(pred, true)
    return errors / normalizer(true, kind, scheme=scheme, boxes=boxes)[:, None]


def nme(pred: np.ndarray, true: np.ndarray, kind: str,
        scheme: LandmarkScheme | None = None,
        boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-face normalised mean error, ``(1 / L) * sum_l ||p_l - g_l||_2 / d``.

    With ``kind="inter_pupil"`` this is the NRMSE of MSRRN (Wang et al. 2017).

    Args:
        pred: predicted landmarks ``[N, L, 2]`` in pixels.
        true: ground-truth landmarks ``[N, L, 2]`` in pixels.
        kind: normaliser kind, see :func:`normalizer`.
        scheme: landmark scheme (default ``scheme_for(L)``).
        boxes: face boxes ``[N, 4]``, for the box-based kinds.

    Returns:
        float64 ``[N]`` errors as fractions of the normaliser.
    """
    return per_point_nme(pred, true, kind, scheme=scheme, boxes=boxes).mean(axis=1)


def ced_curve(errors: np.ndarray, max_threshold: float,
              num_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution, ``CED(t) = #{i : x_i <= t} / N``.

    Args:
        errors: per-face errors ``[N]``.
        max_threshold: largest threshold of the curve.
        num_points: number of evenly spaced thresholds from 0 to ``max_threshold``
            (both included).

    Returns:
        ``(thresholds, fractions)``, two float64 ``[num_points]`` arrays.

    Raises:
        ValueError: empty or non-finite errors, a non-positive threshold or fewer
            than two points.
    """
    errors = _as_errors(errors)
    max_threshold = _check_threshold(max_threshold)
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {num_points}")
    thresholds = np.linspace(0.0, max_threshold, num_points)
    counts = np.searchsorted(np.sort(errors), thresholds, side="right")
    return thresholds, counts / errors.size


def auc(errors: np.ndarray, threshold: float) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold``.

    The 300-W / Menpo convention (e.g. AUC@0.08). The CED is a step function, so the
    integral is computed exactly rather than by sampling the curve: each face
    contributes ``max(0, T - x_i) / N``, giving
    ``AUC_T = mean_i(max(0, T - x_i)) / T``. All-zero errors give 1, errors all
    ``>= T`` give 0, errors uniform on [0, T] give about 0.5.

    Args:
        errors: per-face errors ``[N]``.
        threshold: upper integration limit ``T`` (> 0).

    Returns:
        The normalised area, in [0, 1].
    """
    errors = _as_errors(errors)
    threshold = _check_threshold(threshold)
    # mean(max(0, 1 - x / T)) is the same area and exactly 1 for all-zero errors.
    return float(np.mean(np.clip(1.0 - errors / threshold, 0.0, 1.0)))


def failure_rate(errors: np.ndarray, threshold: float) -> float:
    """Fraction of faces whose error exceeds ``threshold``, ``#{i : x_i > T} / N``.

    Args:
        errors: per-face errors ``[N]``.
        threshold: failure threshold ``T`` (> 0), e.g. 0.08 or 0.10.

    Returns:
        The failure rate, in [0, 1].
    """
    errors = _as_errors(errors)
    threshold = _check_threshold(threshold)
    return float(np.mean(errors > threshold))


def summarize(errors: np.ndarray,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, float | int]:
    """Summary statistics of per-face errors, as plain Python numbers for JSON.

    Args:
        errors: per-face errors ``[N]`` (fractions of the normaliser).
        thresholds: thresholds for the AUC and failure-rate entries.

    Returns:
        A dict with ``"count"`` (int), ``"mean"``, ``"median"``, ``"std"``
        (population standard deviation) and, for every threshold ``t``,
        ``f"auc@{t:g}"`` and ``f"failure@{t:g}"`` (e.g. ``"auc@0.08"``).
    """
    errors = _as_errors(errors)
    summary: dict[str, float | int] = {
        "count": int(errors.size),
        "mean": float(np.mean(errors)),
        "median": float(np.median(errors)),
        "std": float(np.std(errors)),
    }
    for threshold in thresholds:
        summary[f"auc@{threshold:g}"] = auc(errors, threshold)
        summary[f"failure@{threshold:g}"] = failure_rate(errors, threshold)
    return summary


def _format_cell(value: object, percent: bool, decimals: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(float(value))
        return f"{value * 100 if percent else value:.{decimals}f}"
    return str(value)


def results_markdown(table: Mapping[str, Mapping[str, float]],
                     columns: Sequence[str] | Mapping[str, str],
                     title: str | None = None, *,
                     row_header: str = "method",
                     percent: bool = True,
                     decimals: int = 2) -> str:
    """Formats a results table (rows = methods) as Markdown.

    Floats are fractions and are written as percentages with ``decimals`` places
    (``0.0523`` -> ``5.23``) when ``percent`` is true, and the headers of those
    columns get " (%)"; integers (such as ``"count"``) are written as they are,
    missing entries as ``-``. ``summarize`` outputs can be passed directly.

    Args:
        table: ``{row name: {column key: value}}``, rows in display order.
        columns: the column keys to show, in order, or ``{key: header}`` to give
            them display names.
        title: optional heading written above the table (``### title``).
        row_header: header of the first column.
        percent: write floats as percentages.
        decimals: decimal places for floats.

    Returns:
        The Markdown text, ending with a newline.
    """
    headers = dict(columns) if isinstance(columns, Mapping) else {key: key for key in columns}
    if not headers:
        raise ValueError("results_markdown needs at least one column")
    cells = [[_format_cell(row.get(key), percent, decimals) for key in headers]
             for row in table.values()]
    header_cells = []
    for key, header in headers.items():
        is_float = any(isinstance(row.get(key), (float, np.floating)) for row in table.values())
        header_cells.append(f"{header} (%)" if percent and is_float else header)
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join([row_header, *header_cells]) + " |")
    lines.append("|" + "---|" + "---:|" * len(header_cells))
    for name, row_cells in zip(table, cells):
        lines.append("| " + " | ".join([str(name), *row_cells]) + " |")
    return "\n".join(lines) + "\n"
