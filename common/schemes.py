"""Landmark schemes, defined once for the whole package.

Two schemes are used by the two papers:

* ``IBUG_68``: the 68-point iBUG / 300-W mark-up used by MSRRN (Wang et al. 2017,
  "Datasets"): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
* ``CUHK_5``: the 5-point mark-up of Sun et al. (CVPR 2013) used by CCNN: left eye
  centre, right eye centre, nose tip, left mouth corner, right mouth corner, where
  "left" means the image left.

Each scheme carries the flip permutation (which index a point takes after a
horizontal flip), the points whose mean gives each pupil, and the outer eye
corners, so that metrics and augmentation never hard-code indices.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LandmarkScheme:
    """A landmark mark-up.

    Attributes:
        name: short identifier ("ibug68", "cuhk5").
        point_names: one name per point, in annotation order.
        flip_permutation: ``flip_permutation[i]`` is the index that point ``i`` takes
            after a horizontal flip of the image (a permutation and an involution).
        left_pupil: indices whose mean is the image-left eye centre.
        right_pupil: indices whose mean is the image-right eye centre.
        outer_eye_corners: (image-left outer corner, image-right outer corner), or
            ``None`` when the scheme has no eye corners (then the inter-ocular
            distance is the inter-pupil distance, the MTFL convention).
    """

    name: str
    point_names: tuple[str, ...]
    flip_permutation: tuple[int, ...]
    left_pupil: tuple[int, ...]
    right_pupil: tuple[int, ...]
    outer_eye_corners: tuple[int, int] | None

    @property
    def num_points(self) -> int:
        return len(self.point_names)

    def __post_init__(self):
        n = len(self.point_names)
        perm = np.asarray(self.flip_permutation)
        if sorted(self.flip_permutation) != list(range(n)):
            raise ValueError(f"{self.name}: flip_permutation is not a permutation of 0..{n - 1}")
        if not np.array_equal(perm[perm], np.arange(n)):
            raise ValueError(f"{self.name}: flip_permutation must be its own inverse")

    def pupils(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns the (left, right) pupil positions of ``landmarks [..., N, 2]``."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        return (landmarks[..., list(self.left_pupil), :].mean(axis=-2),
                landmarks[..., list(self.right_pupil), :].mean(axis=-2))


def _ibug68_flip() -> tuple[int, ...]:
    pairs = []
    pairs += [(i, 16 - i) for i in range(8)]                       # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                  # brows
    pairs += [(31, 35), (32, 34)]                                  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]    # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                        # inner lips
    perm = list(range(68))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


_IBUG68_NAMES = tuple(
    [f"jaw_{i}" for i in range(17)]
    + [f"right_brow_{i}" for i in range(5)] + [f"left_brow_{i}" for i in range(5)]
    + [f"nose_bridge_{i}" for i in range(4)] + [f"nose_base_{i}" for i in range(5)]
    + [f"right_eye_{i}" for i in range(6)] + [f"left_eye_{i}" for i in range(6)]
    + [f"outer_lip_{i}" for i in range(12)] + [f"inner_lip_{i}" for i in range(8)])

IBUG_68 = LandmarkScheme(
    name="ibug68",
    point_names=_IBUG68_NAMES,
    flip_permutation=_ibug68_flip(),
    left_pupil=(36, 37, 38, 39, 40, 41),
    right_pupil=(42, 43, 44, 45, 46, 47),
    outer_eye_corners=(36, 45),
)

CUHK_5 = LandmarkScheme(
    name="cuhk5",
    point_names=("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"),
    flip_permutation=(1, 0, 2, 4, 3),
    left_pupil=(0,),
    right_pupil=(1,),
    outer_eye_corners=None,
)

SCHEMES = {s.name: s for s in (IBUG_68, CUHK_5)}


def scheme_for(num_points: int) -> LandmarkScheme:
    """Returns the scheme with ``num_points`` points (68 or 5)."""
    for scheme in SCHEMES.values():
        if scheme.num_points == num_points:
            return scheme
    raise ValueError(f"no landmark scheme has {num_points} points (known: 68, 5)")


@dataclasses.dataclass(frozen=True)
class Reduction:
    """A fixed linear map from one scheme's points to another's: each target point is
    the mean of a group of source points.

    Attributes:
        source: the scheme of the input landmarks.
        target: the scheme of the output landmarks.
        groups: ``groups[j]`` are the source indices whose mean is target point ``j``.
    """

    source: LandmarkScheme
    target: LandmarkScheme
    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.groups) != self.target.num_points:
            raise ValueError(f"{self.source.name}->{self.target.name}: {len(self.groups)} "
                             f"groups for {self.target.num_points} target points")
        for group in self.groups:
            if not group or not all(0 <= i < self.source.num_points for i in group):
                raise ValueError(f"{self.source.name}->{self.target.name}: group {group} "
                                 f"is empty or out of 0..{self.source.num_points - 1}")
        # A reduction must commute with the horizontal flip, or flipped faces would
        # reduce to points that are not the flipped reduced points.
        src_flip, dst_flip = self.source.flip_permutation, self.target.flip_permutation
        for j, group in enumerate(self.groups):
            if sorted(src_flip[i] for i in group) != sorted(self.groups[dst_flip[j]]):
                raise ValueError(f"{self.source.name}->{self.target.name}: group {j} "
                                 "does not flip onto its mirror group")

    def __call__(self, landmarks: np.ndarray) -> np.ndarray:
        """Reduces ``landmarks [..., source points, 2]`` to ``[..., target points, 2]``.

        NaN in a group's points gives NaN for that target point. The dtype is kept for
        floating inputs (float64 otherwise).

        Raises:
            ValueError: the point axis does not hold ``source.num_points`` points.
        """
        landmarks = np.asarray(landmarks)
        if landmarks.ndim < 2 or landmarks.shape[-2:] != (self.source.num_points, 2):
            raise ValueError(f"{self.source.name}->{self.target.name}: expected landmarks "
                             f"[..., {self.source.num_points}, 2], got {landmarks.shape}")
        dtype = landmarks.dtype if np.issubdtype(landmarks.dtype, np.floating) else np.float64
        points = landmarks.astype(np.float64)
        reduced = np.stack([points[..., list(g), :].mean(axis=-2) for g in self.groups], -2)
        return reduced.astype(dtype)


IBUG68_TO_CUHK5 = Reduction(
    source=IBUG_68,
    target=CUHK_5,
    groups=(IBUG_68.left_pupil, IBUG_68.right_pupil, (30,), (48,), (54,)),
)
"""68 iBUG points -> the 5 CUHK points (Sun et al. 2013), the project's one definition.

Image-left eye centre = mean of the six image-left eye-contour points 36-41,
image-right eye centre = mean of 42-47 (the pupils of ``IBUG_68``, the same points the
inter-pupil NME uses), nose tip = 30, image-left / image-right mouth corner = 48 / 54.
"Left" is the image left in both schemes (iBUG names 36-41 the subject's right eye),
so the reduction commutes with the flip (checked at construction)."""


def reduce_to_cuhk5(landmarks: np.ndarray) -> np.ndarray:
    """68 iBUG points ``[..., 68, 2]`` -> 5 CUHK points ``[..., 5, 2]`` (``IBUG68_TO_CUHK5``)."""
    return IBUG68_TO_CUHK5(landmarks)


REDUCTIONS = {(r.source.name, r.target.name): r for r in (IBUG68_TO_CUHK5,)}
"""Every reduction between schemes, keyed by (source name, target name)."""


def reduction(num_points: int, target: str) -> Reduction | None:
    """The reduction of ``num_points`` landmarks to the scheme named ``target``;
    ``None`` when they already are that scheme.

    Raises:
        ValueError: an unknown scheme name, or no reduction from ``num_points`` points
            to it (naming the known ones).
    """
    if target not in SCHEMES:
        raise ValueError(f"unknown landmark scheme {target!r}; known: {', '.join(SCHEMES)}")
    source = scheme_for(num_points).name
    if source == target:
        return None
    if (source, target) not in REDUCTIONS:
        known = ", ".join(f"{a} -> {b}" for a, b in REDUCTIONS)
        raise ValueError(f"no reduction from {source} ({num_points} points) to {target}; "
                         f"known: {known}")
    return REDUCTIONS[source, target]
