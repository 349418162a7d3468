"""Face-box perturbation ranges of training, measured from real detector variance.

A landmark model that only works with one detector's boxes is fragile (README "Box
robustness"). Training therefore moves and scales each face box (``common.pipeline.
AugmentConfig``, drawn by ``common.geometry.jitter_boxes``) over the range by which the
boxes of different sources differ on real faces. That range was measured, not guessed:
``python -m experiments.box_variance --data=/work/data/ytf68,/work/data/w300,/work/data/sun5
--split=train --limit=300`` (docs/EXPERIMENTS.md, "How face boxes of different sources
differ"; 5th and 95th percentiles over the first 300 training faces of each folder).

Every range is relative to the box stored with the training face (the box being
perturbed): centre shifts are fractions of its width (x) and height (y), positive to the
right and down; the scale multiplies both sides, so it is the ratio of the square crop's
side the model sees (``common.geometry.crop_boxes_from_face_boxes``: the longer side).
All draws are uniform in ``(low, high)``.

The box conventions themselves (where a box sits on a face) stay defined only in
``common.boxes`` and ``common.geometry.landmark_box``; this module holds numbers only
and imports no TensorFlow, so that the model configs can use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class BoxRanges:
    """Ranges of a training face-box perturbation (uniform draws).

    Attributes:
        shift_x: (low, high) centre shift, a fraction of the box width.
        shift_y: (low, high) centre shift, a fraction of the box height.
        scale: (low, high) factor of both sides.
        aspect: (low, high) factor of the height over width ratio (the height is
            multiplied by its square root, the width divided by it). The models crop
            the square on the box's longer side, so an aspect change reaches them only
            as a change of that side; the presets leave it at ``(1, 1)`` and cover the
            crop side with ``scale``.
    """

    shift_x: tuple[float, float] = (0.0, 0.0)
    shift_y: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    aspect: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        for name in ("shift_x", "shift_y", "scale", "aspect"):
            object.__setattr__(self, name, check_range(getattr(self, name), name,
                                                       positive=name in ("scale", "aspect")))

    @property
    def is_identity(self) -> bool:
        """True when the ranges move no box."""
        return self == BoxRanges()

    def as_fields(self, prefix: str = "box_") -> dict[str, tuple[float, float]]:
        """The ranges as the config fields ``box_shift_x``, ``box_shift_y``,
        ``box_scale_range``, ``box_aspect_range`` (of ``MSRRNConfig``, ``CCNNConfig``
        and ``common.pipeline.AugmentConfig``)."""
        return {f"{prefix}shift_x": self.shift_x, f"{prefix}shift_y": self.shift_y,
                f"{prefix}scale_range": self.scale, f"{prefix}aspect_range": self.aspect}


def check_range(values: Sequence[float], name: str, *, positive: bool = False,
                ) -> tuple[float, float]:
    """A validated ``(low, high)`` pair of floats.

    Args:
        values: two numbers (a list from JSON is fine).
        name: the field name, for the error message.
        positive: require ``low > 0`` (factors).

    Returns:
        ``(low, high)`` as floats.

    Raises:
        ValueError: not two finite numbers with ``low <= high`` (and ``low > 0`` when
            ``positive``), or a shift of a whole box or more.
    """
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (low, high), got {values!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
    if positive and low <= 0.0:
        raise ValueError(f"{name} must be positive factors, got {(low, high)}")
    if not positive and max(abs(low), abs(high)) >= 1.0:
        raise ValueError(f"{name} must stay within (-1, 1) box sides, got {(low, high)}")
    return low, high


DETECTOR_RANGES_68 = BoxRanges(shift_x=(-0.15, 0.17), shift_y=(-0.15, 0.19),
                               scale=(0.83, 1.37))
"""The 68-point presets' perturbation (MSRRN ``quick``), relative to the stored box of a
``common.prepare`` folder (dlib's matched detection, else the dlib-like landmark box).

The union, rounded outwards, of the 5th-95th percentile ranges of docs/EXPERIMENTS.md's
ytf68 and w300 tables for the landmark-extent square and MTCNN's boxes against dlib's
(and against the stored boxes):

* centre x: landmark square ytf68 [-14.8, +17.0] %, w300 [-9.1, +16.6] %; MTCNN ytf68
  [-13.8, +12.3] %, w300 [-9.7, +13.3] % of the width -> (-0.15, +0.17);
* centre y: landmark square ytf68 [+2.0, +18.6] %, w300 [+2.0, +16.7] %; MTCNN ytf68
  [-14.4, +2.4] %, w300 [-14.7, +2.4] % of the height -> (-0.15, +0.19);
* crop side: landmark square ytf68 [0.831, 1.144], w300 [0.890, 1.096]; MTCNN ytf68
  [0.986, 1.360], w300 [1.002, 1.366] -> (0.83, 1.37).

These ranges also hold the stored box itself and the +-5 % jitter of the box-robustness
table (``common.box_robustness``)."""

DETECTOR_RANGES_CUHK5 = BoxRanges(shift_x=(-0.12, 0.10), shift_y=(-0.14, 0.05),
                                  scale=(0.95, 1.57))
"""The 5-point presets' perturbation (CCNN ``quick``), relative to the CUHK boxes of
Sun et al. that the sun5 training faces come with.

The union, rounded outwards, of docs/EXPERIMENTS.md's sun5 5th-95th percentiles of
dlib's and MTCNN's boxes against the stored (CUHK) boxes, and the +-5 % jitter:

* centre x: dlib [-10.4, +7.2] %, MTCNN [-11.8, +10.0] % of the width -> (-0.12, +0.10);
* centre y: dlib [-12.7, +3.9] %, MTCNN [-13.8, +0.2] % of the height, the jitter +5 %
  -> (-0.14, +0.05);
* crop side: dlib [1.011, 1.380], MTCNN [1.213, 1.567], the jitter 0.95 -> (0.95, 1.57).

Not covered: the 5-point landmark-extent square (crop side 0.48-0.65 of the CUHK box,
the inner face only), a box no detector gives; CCNN's stage-1 regions are fixed parts
of the face box (docs/DESIGN.md), which such a box would cut through."""

CENTRED_RANGES_CUHK5 = BoxRanges(shift_x=(-0.12, 0.10), shift_y=(-0.14, 0.10),
                                 scale=(0.85, 1.57))
"""The CCNN ``tuned`` preset's perturbation: :data:`DETECTOR_RANGES_CUHK5` widened to
boxes smaller (crop side from x0.85, not x0.95) and lower (centre y up to +10 %, not
+5 %) than the stored one, so that the stored box and its +-5 % jitter lie inside the
range instead of on its edge.

Chosen on the sun5 tuning split (``experiments.ccnn_stage1`` variant ``adam_box_low``
against ``adam``, stage 1 alone, scored by ``experiments.compare_real --box_faces=500``
on ``tune_val``): worst/best over the box sources 1.213 -> 1.086, stored boxes 4.04 ->
3.84 %, dlib's boxes 3.55 -> 3.72 % of the box width."""
