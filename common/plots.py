"""Evaluation figures: CED curves, landmark grids and per-point error plots.

Every function draws on its own ``matplotlib.figure.Figure`` with an Agg canvas
(never ``pyplot``), so plotting needs no display, leaves matplotlib's global state
and backend alone and is safe to call from scripts and tests. Each writes a PNG
of exactly ``figsize * dpi`` pixels (no tight bounding box) and returns its path.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common import metrics

PathLike = str | os.PathLike

_TRUE_COLOUR = "#00c000"
_PRED_COLOUR = "#ff2020"
# Colours of the intermediate cascade stages, early to late (distinct from the
# true/predicted colours above).
_STAGE_COLOURS = ("#3d7eff", "#ffd400", "#ff4fd8", "#00e5ff", "#ffffff", "#8c564b")


def _new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=figure.dpi)
    return path


def plot_ced(curves: Mapping[str, np.ndarray], path: PathLike,
             max_threshold: float = 0.1,
             title: str = "Cumulative error distribution",
             xlabel: str = "NME (normalised by inter-pupil distance)", *,
             auc_threshold: float | None = None,
             num_points: int = 1000,
             figsize: tuple[float, float] = (6.4, 4.8),
             dpi: float = 100) -> pathlib.Path:
    """Plots the CED curves of several methods on one axes (MSRRN paper, Fig. 3).

    Args:
        curves: ``{method name: per-face errors [N]}`` (fractions of the normaliser),
            drawn in order.
        path: output PNG path (parent folders are created).
        max_threshold: right end of the x axis.
        title: axes title.
        xlabel: x-axis label (name the normaliser here).
        auc_threshold: threshold of the AUC in the legend; ``max_threshold`` by
            default.
        num_points: samples of each curve.
        figsize: figure size in inches.
        dpi: dots per inch; the PNG is ``figsize * dpi`` pixels.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: no curves, or a curve with empty / non-finite errors.
    """
    if not curves:
        raise ValueError("plot_ced needs at least one curve")
    auc_threshold = max_threshold if auc_threshold is None else auc_threshold
    figure = _new_figure(figsize, dpi)
    axes = figure.add_subplot()
    for name, errors in curves.items():
        errors = np.asarray(errors, dtype=np.float64).reshape(-1)
        thresholds, fractions = metrics.ced_curve(errors, max_threshold, num_points)
        label = (f"{name}  (NME {100 * errors.mean():.2f}%, "
                 f"AUC@{auc_threshold:g} {metrics.auc(errors, auc_threshold):.3f})")
        axes.plot(thresholds, fractions, linewidth=1.8, label=label)
    axes.set_xlim(0, max_threshold)
    axes.set_ylim(0, 1.0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of test faces")
    axes.set_title(title)
    axes.grid(True, linestyle=":", linewidth=0.7)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def _as_display_image(image: np.ndarray) -> np.ndarray:
    """Returns an image as uint8 ``[H, W, 3]`` or ``[H, W]`` (0..255 input)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"an image must be [H, W, 3] or [H, W], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image


def _check_points(points: np.ndarray, num_faces: int, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[0] != num_faces or points.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [{num_faces}, L, 2], got {points.shape}")
    return points


def plot_landmark_grid(images: Sequence[np.ndarray] | np.ndarray,
                       predicted: np.ndarray,
                       true: np.ndarray | None,
                       path: PathLike,
                       ncols: int = 4,
                       titles: Sequence[str] | None = None,
                       stages: Sequence[np.ndarray] | None = None, *,
                       cell_size: float = 2.5,
                       dpi: float = 100,
                       marker_size: float = 9.0) -> pathlib.Path:
    """Draws faces in a grid with their predicted (and true) landmarks.

    Points are in image pixels with pixel centres at integers (``docs/DESIGN.md``),
    which is where ``imshow`` puts them. Ground truth is green dots, the final
    prediction red crosses and intermediate cascade stages small dots in other
    colours, so the coarse-to-fine refinement can be seen.

    Args:
        images: ``N`` RGB images, uint8 (or float 0..255) ``[H, W, 3]``; sizes may
            differ. Greyscale ``[H, W]`` is accepted.
        predicted: final predicted landmarks ``[N, L, 2]`` in pixels.
        true: ground-truth landmarks ``[N, L, 2]`` in pixels, or ``None``.
        path: output PNG path (parent folders are created).
        ncols: faces per row.
        titles: optional ``N`` captions.
        stages: optional per-stage predictions, each ``[N, L, 2]`` pixels, early to
            late (e.g. the ``stage_k`` outputs mapped back to pixels).
        cell_size: size of one grid cell in inches.
        dpi: dots per inch; the PNG is ``(ncols * cell_size, nrows * cell_size) *
            dpi`` pixels with ``nrows = ceil(N / ncols)``.
        marker_size: marker area in points^2 of the final prediction.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: no images, or shapes that do not match the number of images.
    """
    images = [_as_display_image(image) for image in images]
    num_faces = len(images)
    if num_faces == 0:
        raise ValueError("plot_landmark_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    predicted = _check_points(predicted, num_faces, "predicted")
    if true is not None:
        true = _check_points(true, num_faces, "true")
    stages = [_check_points(stage, num_faces, f"stages[{k}]")
              for k, stage in enumerate(stages or ())]
    if titles is not None and len(titles) != num_faces:
        raise ValueError(f"got {len(titles)} titles for {num_faces} images")

    ncols = min(ncols, num_faces)
    nrows = -(-num_faces // ncols)
    figure = _new_figure((ncols * cell_size, nrows * cell_size), dpi)
    handles = {}
    for index in range(nrows * ncols):
        axes = figure.add_subplot(nrows, ncols, index + 1)
        axes.set_axis_off()
        if index >= num_faces:
            continue
        axes.imshow(images[index], cmap="gray" if images[index].ndim == 2 else None,
                    interpolation="bilinear")
        for k, stage in enumerate(stages):
            colour = _STAGE_COLOURS[k % len(_STAGE_COLOURS)]
            handles[f"stage {k}"] = axes.scatter(
                stage[index, :, 0], stage[index, :, 1], s=marker_size * 0.7, c=colour,
                marker="o", linewidths=0, alpha=0.8)
        if true is not None:
            handles["true"] = axes.scatter(true[index, :, 0], true[index, :, 1],
                                           s=marker_size, c=_TRUE_COLOUR, marker="o",
                                           linewidths=0)
        handles["predicted"] = axes.scatter(predicted[index, :, 0], predicted[index, :, 1],
                                            s=marker_size * 1.5, c=_PRED_COLOUR, marker="x",
                                            linewidths=1.0)
        # Keep the view on the image even when a prediction falls outside it.
        height, width = images[index].shape[:2]
        axes.set_xlim(-0.5, width - 0.5)
        axes.set_ylim(height - 0.5, -0.5)
        if titles is not None:
            axes.set_title(str(titles[index]), fontsize="small")
    if len(handles) > 1:
        figure.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                      ncol=len(handles), fontsize="small", frameon=False, markerscale=1.5)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.95 if titles is None else 0.92,
                           bottom=0.06 if len(handles) > 1 else 0.01,
                           wspace=0.04, hspace=0.12 if titles is not None else 0.04)
    return _save(figure, path)


def plot_per_point_errors(series: Mapping[str, np.ndarray],
                          point_names: Sequence[str],
                          path: PathLike,
                          title: str = "Per-point test error",
                          ylabel: str = "mean error (%)", *,
                          scale: float = 100.0,
                          figsize: tuple[float, float] | None = None,
                          dpi: float = 100) -> pathlib.Path:
    """Line plot of per-point mean errors, as in the CCNN paper's Figures 4-7.

    The x axis lists the points followed by a final "mean" column holding each
    series' average over the points; each series is one line with markers.

    Args:
        series: ``{label: per-point mean errors [L]}``, e.g.
            ``metrics.per_point_nme(...).mean(axis=0)`` (fractions), drawn in order.
        point_names: the ``L`` point names for the x axis.
        path: output PNG path (parent folders are created).
        title: axes title.
        ylabel: y-axis label.
        scale: factor applied to the values before plotting (100 turns fractions
            into the percentages of ``ylabel``; use 1 for values already in %).
        figsize: figure size in inches; by default ``(6.4, 4.8)`` for up to 12
            points and wider for more.
        dpi: dots per inch; the PNG is ``figsize * dpi`` pixels.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: no series, or a series whose length differs from the names.
    """
    if not series:
        raise ValueError("plot_per_point_errors needs at least one series")
    num_points = len(point_names)
    if figsize is None:
        figsize = (6.4, 4.8) if num_points <= 12 else (max(6.4, 0.18 * num_points + 2), 4.8)
    figure = _new_figure(figsize, dpi)
    axes = figure.add_subplot()
    positions = np.arange(num_points + 1)
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1) * scale
        if values.size != num_points:
            raise ValueError(f"series {label!r} has {values.size} values for "
                             f"{num_points} point names")
        mean = values.mean()
        axes.plot(positions, np.append(values, mean), marker="o", markersize=4,
                  linewidth=1.5, label=f"{label}  (mean {mean:.2f})")
    axes.axvline(num_points - 0.5, color="0.6", linestyle="--", linewidth=0.8)
    axes.set_xticks(positions)
    many = num_points > 12
    axes.set_xticklabels([*point_names, "mean"], rotation=90 if many else 30,
                         ha="center" if many else "right",
                         fontsize="x-small" if many else "small")
    axes.set_xlim(-0.5, num_points + 0.5)
    return _finish_value_axes(figure, axes, path, title, ylabel)


def plot_grouped_bars(series: Mapping[str, Sequence[float]],
                      categories: Sequence[str],
                      path: PathLike,
                      title: str = "",
                      ylabel: str = "", *,
                      value_format: str = "{:.2f}",
                      figsize: tuple[float, float] = (6.4, 4.8),
                      dpi: float = 100) -> pathlib.Path:
    """Grouped bar chart: one group per category, one bar per series, values on top.

    Used for the CCNN paper's Table 3 (milliseconds per face per number of stages,
    one bar per device).

    Args:
        series: ``{label: values [C]}``, one value per category, drawn in order;
            a NaN value leaves its bar out.
        categories: the ``C`` category names of the x axis.
        path: output PNG path (parent folders are created).
        title: axes title.
        ylabel: y-axis label.
        value_format: format of the value written above each bar.
        figsize: figure size in inches.
        dpi: dots per inch; the PNG is ``figsize * dpi`` pixels.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: no series or categories, or a series whose length differs from
            the categories.
    """
    if not series or not categories:
        raise ValueError("plot_grouped_bars needs at least one series and one category")
    num = len(categories)
    figure = _new_figure(figsize, dpi)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    positions = np.arange(num)
    for index, (label, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size != num:
            raise ValueError(f"series {label!r} has {values.size} values for {num} "
                             "categories")
        shown = np.isfinite(values)
        offsets = positions + (index - (len(series) - 1) / 2) * width
        bars = axes.bar(offsets[shown], values[shown], width, label=label)
        axes.bar_label(bars, labels=[value_format.format(v) for v in values[shown]],
                       fontsize="x-small", padding=2)
    axes.set_xticks(positions)
    axes.set_xticklabels(list(categories))
    axes.set_ylim(bottom=0)
    axes.margins(y=0.12)
    return _finish_value_axes(figure, axes, path, title, ylabel)


def _finish_value_axes(figure, axes, path: PathLike, title: str, ylabel: str
                       ) -> pathlib.Path:
    """Shared finish of the per-category value plots: y from 0, labels, y grid,
    legend, saved PNG."""
    axes.set_ylim(bottom=0)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, axis="y", linestyle=":", linewidth=0.7)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_error_vs_confidence(series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                             path: PathLike, threshold: float = 0.10, *,
                             title: str = "Error against confidence",
                             xlabel: str = "confidence",
                             ylabel: str = "NME (fraction of the normaliser)",
                             figsize: tuple[float, float] = (6.4, 4.8),
                             dpi: float = 100) -> pathlib.Path:
    """Scatter of per-face error against confidence, one colour per series, with the
    failure threshold as a horizontal line (``common.confidence``).

    Args:
        series: ``{label: (confidence [N], errors [N])}``; the label should carry the
            failure-ranking AUC.
        path: output PNG path (parent folders are created).
        threshold: failure threshold drawn as a dashed line.
        title: axes title.
        xlabel: x-axis label.
        ylabel: y-axis label (name the normaliser here).
        figsize: figure size in inches.
        dpi: resolution.

    Returns:
        The written path.
    """
    figure = _new_figure(figsize, dpi)
    axes = figure.add_subplot(1, 1, 1)
    top = threshold * 3
    for label, (confidence, errors) in series.items():
        confidence = np.asarray(confidence, np.float64).reshape(-1)
        errors = np.asarray(errors, np.float64).reshape(-1)
        axes.scatter(confidence, np.minimum(errors, top), s=6, alpha=0.5, label=label)
    axes.axhline(threshold, color="k", linestyle="--", linewidth=0.8,
                 label=f"failure: error > {threshold:g}")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(0, top * 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel + f" (clipped at {top:g})")
    axes.set_title(title)
    axes.grid(True, linestyle=":", linewidth=0.7)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)
