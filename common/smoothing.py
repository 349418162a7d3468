"""Causal temporal smoothing of landmark tracks: the One-Euro filter.

Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass Filter for
Noisy Input in Interactive Systems", CHI 2012. Per coordinate ``x`` sampled at times
``t_i`` (``dt = t_i - t_{i-1}``), with ``alpha(fc) = 1 / (1 + tau / dt)`` and
``tau = 1 / (2 pi fc)``:

    dx_i     = (x_i - xhat_{i-1}) / dt
    dxhat_i  = alpha(d_cutoff) dx_i + (1 - alpha(d_cutoff)) dxhat_{i-1}
    fc_i     = min_cutoff + beta |dxhat_i|
    xhat_i   = alpha(fc_i) x_i + (1 - alpha(fc_i)) xhat_{i-1}

and ``xhat_0 = x_0``, ``dxhat_0 = 0``. A still point is low-passed at ``min_cutoff``
(Hz), which removes jitter; a moving one raises the cut-off with its speed, which
keeps the lag small.

Scale: the filter runs on the landmarks divided by the face size ``s`` (inter-ocular
distance or box side, :func:`face_size`). The positions cancel out of the recursion
(it is linear in them), so only the speed term changes: ``fc_i = min_cutoff + beta
|dxhat_i| / s``. ``min_cutoff`` is in Hz and ``beta`` in 1 / (face sizes per second),
so one setting behaves the same on a 40-pixel face and on a 400-pixel one (the same
motion in face sizes gives the same cut-off). The filter is causal: each output uses
only the samples up to it, so it runs live, frame by frame.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from common.schemes import LandmarkScheme


@dataclasses.dataclass(frozen=True)
class OneEuroParams:
    """The One-Euro filter's settings (face-size normalised, module docstring).

    Attributes:
        min_cutoff: cut-off frequency of a still face, Hz (paper's ``f_cmin``; 1 Hz,
            the paper's usual starting point).
        beta: speed coefficient, 1 / (face sizes per second): the cut-off rises by
            ``beta`` Hz per face size per second of motion. The defaults (here and
            ``DEFAULT_CENTRE``) were chosen on a grid of ``experiments.bench_video``
            (jitter, NME and lag on moving synthetic faces and shaken real stills,
            seeds 0 and 1) and checked on fresh seed-2 clips (notes: video.md).
        d_cutoff: cut-off of the speed estimate, Hz (the paper uses 1 Hz).
    """

    min_cutoff: float = 1.0
    beta: float = 10.0
    d_cutoff: float = 1.0

    def __post_init__(self):
        if not self.min_cutoff > 0:
            raise ValueError(f"min_cutoff must be > 0 Hz, got {self.min_cutoff}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not self.d_cutoff > 0:
            raise ValueError(f"d_cutoff must be > 0 Hz, got {self.d_cutoff}")


DEFAULT_CENTRE = OneEuroParams(min_cutoff=1.0, beta=30.0)
"""The filter of a face's centroid in :class:`TrackSmoother` (fast: it carries the
translation and averages the noise of every point)."""


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """``alpha = 1 / (1 + tau / dt)`` with ``tau = 1 / (2 pi cutoff)`` (Casiez et al.).

    Args:
        cutoff: cut-off frequency (Hz), scalar or array.
        dt: time step (s), > 0.

    Returns:
        ``alpha`` in (0, 1), the weight of the new sample.
    """
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
    return 1.0 / (1.0 + tau / dt)


def face_size(landmarks: np.ndarray, scheme: LandmarkScheme | None = None) -> float:
    """The face size the filter's speed is measured in: inter-ocular or box side.

    Args:
        landmarks: ``[L, 2]`` pixels.
        scheme: the landmark scheme; when given, the distance between its pupils
            (inter-pupil for 68 points, inter-ocular for the 5-point layout).

    Returns:
        the size in pixels (the larger side of the landmarks' extent without a
        scheme, or when the pupils coincide); at least 1e-6.
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if scheme is not None and scheme.num_points == len(points):
        left, right = scheme.pupils(points)
        size = float(np.linalg.norm(left - right))
        if size > 1e-6:
            return size
    extent = points.max(axis=0) - points.min(axis=0)
    return max(float(extent.max()), 1e-6)


class OneEuroFilter:
    """One-Euro filter of one track's landmarks ``[L, 2]`` (module docstring).

    Args:
        params: the settings.
    """

    def __init__(self, params: OneEuroParams = OneEuroParams()):
        self.params = params
        self.reset()

    def reset(self) -> None:
        """Forgets the past: the next sample is returned as it is."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, points: np.ndarray, t: float, size: float) -> np.ndarray:
        """Filters one sample.

        Args:
            points: ``[L, 2]`` positions (pixels).
            t: its time (seconds), later than the previous sample's.
            size: the face size (pixels, :func:`face_size`) the speed is divided by.

        Returns:
            float64 ``[L, 2]`` smoothed positions.

        Raises:
            ValueError: a non-positive size, a time not after the last, or a change
                of the number of points.
        """
        x = np.asarray(points, np.float64)
        if not size > 0:
            raise ValueError(f"face size must be > 0, got {size}")
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return self._x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"the track had points {self._x.shape}, got {x.shape}")
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"time must increase: {t} after {self._t}")
        p = self.params
        a_d = smoothing_factor(p.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1.0 - a_d) * self._dx
        cutoff = p.min_cutoff + p.beta * np.abs(self._dx) / float(size)
        a = smoothing_factor(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = float(t)
        return self._x.copy()


class TrackSmoother:
    """One :class:`OneEuroFilter` per track id (several faces at once).

    With ``centre_params``, each face is split into its centroid (the mean of its
    points) and its points relative to the centroid, each with its own filter: the
    centroid, which carries the face's translation and averages the noise of all
    points, can follow fast motion (a high ``beta``) with little jitter, while the
    relative shape, which moves only as the face turns or zooms, is low-passed
    harder (``params``) without the translation raising its cut-off.

    Args:
        params: the filter settings of the points (relative to the centroid when
            ``centre_params`` is given), shared by every track.
        scheme: the landmark scheme, for the face size (:func:`face_size`).
        centre_params: the centroid's filter (default ``DEFAULT_CENTRE``), or
            ``None`` to filter the points as they are.
    """

    def __init__(self, params: OneEuroParams = OneEuroParams(),
                 scheme: LandmarkScheme | None = None,
                 centre_params: OneEuroParams | None = DEFAULT_CENTRE):
        self.params = params
        self.scheme = scheme
        self.centre_params = centre_params
        self._filters: dict[int, OneEuroFilter] = {}
        self._centres: dict[int, OneEuroFilter] = {}

    def __call__(self, track_id: int, points: np.ndarray, t: float) -> np.ndarray:
        """Smooths one face of one frame; a new id starts a new filter.

        Args:
            track_id: the face's track id (``common.tracking``).
            points: ``[L, 2]`` raw landmarks (pixels).
            t: the frame's time (seconds).

        Returns:
            float64 ``[L, 2]`` smoothed landmarks.
        """
        track = self._filters.get(track_id)
        if track is None:
            track = self._filters[track_id] = OneEuroFilter(self.params)
        size = face_size(points, self.scheme)
        if self.centre_params is None:
            return track(points, t, size)
        points = np.asarray(points, np.float64)
        centre = points.mean(axis=0, keepdims=True)
        centre_filter = self._centres.get(track_id)
        if centre_filter is None:
            centre_filter = self._centres[track_id] = OneEuroFilter(self.centre_params)
        return centre_filter(centre, t, size) + track(points - centre, t, size)

    def drop_except(self, track_ids) -> None:
        """Forgets the filters of tracks not in ``track_ids`` (ended tracks)."""
        keep = set(track_ids)
        for track_id in list(self._filters):
            if track_id not in keep:
                del self._filters[track_id]
                self._centres.pop(track_id, None)
