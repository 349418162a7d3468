"""The shape model of ``common.synthetic``: a random 3-D template of the 68 iBUG
points (identity and expression parameters) and the camera that projects it.

Private to ``common.synthetic`` (steps 1 and 2 of its docstring); the names here
may change with the generator (``common.synthetic.GENERATOR_VERSION``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from common.schemes import IBUG_68

if TYPE_CHECKING:
    from common.synthetic import SyntheticFaceConfig

# --------------------------------------------------------------------------------------
# Shape model
# --------------------------------------------------------------------------------------

_FLIP = np.asarray(IBUG_68.flip_permutation)
_CENTRE_POINTS = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)  # points on the mid line


def _mirror(points: np.ndarray) -> np.ndarray:
    """Mirrors 3-D points about the x = 0 plane."""
    return points * np.array([-1.0, 1.0, 1.0])


def _surface_z(x: np.ndarray, face_w: float) -> np.ndarray:
    """Depth of the (cylinder-like) front of the face at ``x``."""
    return -0.6 * (x / face_w) ** 2


def _sample_shape(rng: np.random.Generator, config: SyntheticFaceConfig) -> dict:
    """Draws the identity and expression parameters of one face."""
    p = {
        "face_w": rng.uniform(0.9, 1.1),
        "face_len": rng.uniform(0.9, 1.12),
        "jaw_sq": rng.uniform(2.0, 3.4),
        "eye_x": rng.uniform(0.42, 0.52),
        "eye_w": rng.uniform(0.40, 0.52),
        "eye_h": rng.uniform(0.075, 0.12),
        "eye_tilt": rng.uniform(-0.04, 0.04),
        "brow_y": rng.uniform(-0.34, -0.24),
        "brow_arch": rng.uniform(0.02, 0.1),
        "brow_th": rng.uniform(0.05, 0.1),
        "nose_y": rng.uniform(0.5, 0.7),
        "nose_w": rng.uniform(0.17, 0.27),
        "nose_d": rng.uniform(0.4, 0.65),
        "mouth_y": rng.uniform(0.95, 1.12),
        "mouth_w": rng.uniform(0.32, 0.46),
        "lip_up": rng.uniform(0.05, 0.1),
        "lip_low": rng.uniform(0.06, 0.12),
        "hair_len": rng.uniform(0.2, 2.4),
        "mouth_open": (rng.uniform(0.03, 0.32) if rng.random() < config.mouth_open_prob
                       else 0.0),
        "smile": rng.uniform(0.2, 1.0) if rng.random() < config.smile_prob else 0.0,
        "brow_raise": rng.uniform(-0.04, 0.1),
        "eye_open": (rng.uniform(0.0, 0.6) if rng.random() < config.eye_closed_prob
                     else rng.uniform(0.8, 1.25)),
    }
    return p


def _template_3d(p: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Builds the 68 3-D landmarks and the auxiliary 3-D points used for drawing.

    Returns:
        (landmarks [68, 3], aux) where ``aux`` maps a name to a ``[K, 3]`` array.
    """
    pts = np.zeros((68, 3))
    fw = p["face_w"]

    # Jaw 0..8 (image left, from the temple down to the chin): a super-ellipse.
    y_top, y_chin = 0.05, 1.62 * p["face_len"]
    e = 2.0 / p["jaw_sq"]
    phi = np.linspace(0.0, np.pi / 2, 9)
    jx = -fw * np.cos(phi) ** e
    jy = y_top + (y_chin - y_top) * np.sin(phi) ** e
    jz = -0.6 * (jx / fw) ** 2 + 0.1 * np.sin(phi)
    # An open mouth drops the chin.
    jy = jy + p["mouth_open"] * 0.8 * np.sin(phi) ** 4
    pts[0:9] = np.stack([jx, jy, jz], axis=1)

    # Brows 17..21 (image left, outer to inner); the points are the brows' upper edge.
    t = np.linspace(0.0, 1.0, 5)
    bx = -(p["eye_x"] + p["eye_w"] * 0.85) + t * (p["eye_x"] + p["eye_w"] * 0.85 - 0.18)
    by = (p["brow_y"] - p["brow_raise"] + 0.07 * (1 - t) ** 2
          - p["brow_arch"] * np.sin(np.pi * (0.15 + 0.7 * t)))
    pts[17:22] = np.stack([bx, by, _surface_z(bx, fw) + 0.06], axis=1)

    # Nose bridge 27..30 and the image-left nose base 31..33.
    ny, nd, nw = p["nose_y"], p["nose_d"], p["nose_w"]
    pts[27:31] = [[0, -0.02, 0.05], [0, ny * 0.34, nd * 0.42], [0, ny * 0.67, nd * 0.72],
                  [0, ny, nd]]
    pts[31:34] = [[-nw, ny + 0.1, nd * 0.2], [-nw * 0.5, ny + 0.13, nd * 0.42],
                  [0, ny + 0.15, nd * 0.55]]

    # Image-left eye 36..41: outer corner, upper lid x2, inner corner, lower lid x2.
    ex, hw, eh, op = -p["eye_x"], p["eye_w"] / 2, p["eye_h"], p["eye_open"]
    outer_y, inner_y = p["eye_tilt"], 0.01

    def lid(f: float) -> float:  # lid height along the eye, from outer to inner corner
        return outer_y + (inner_y - outer_y) * f

    eyes = [[ex - hw, outer_y],
            [ex - hw * 0.38, lid(0.31) - eh * op],
            [ex + hw * 0.32, lid(0.66) - eh * op * 0.95],
            [ex + hw, inner_y],
            [ex + hw * 0.32, lid(0.66) + eh * op * 0.62],
            [ex - hw * 0.38, lid(0.31) + eh * op * 0.6]]
    eyes = np.asarray(eyes)
    pts[36:42, :2] = eyes
    pts[36:42, 2] = _surface_z(eyes[:, 0], fw) - 0.05

    # Mouth: outer 48..51, 57..59 and inner 60..62, 66..67 of the image-left half.
    my, gap, sm = p["mouth_y"], p["mouth_open"], p["smile"]
    mw = p["mouth_w"] * (1 + 0.12 * sm)
    up, low = p["lip_up"], p["lip_low"]
    corner_y = my - 0.07 * sm
    pts[48, :2] = [-mw, corner_y]
    pts[49, :2] = [-mw * 0.6, my - up * 0.8 - 0.03 * sm]
    pts[50, :2] = [-mw * 0.22, my - up * 1.05]
    pts[51, :2] = [0, my - up * 0.88]
    pts[59, :2] = [-mw * 0.6, my + gap + low * 0.75 - 0.04 * sm]
    pts[58, :2] = [-mw * 0.26, my + gap + low]
    pts[57, :2] = [0, my + gap + low * 1.03]
    pts[60, :2] = [-mw * 0.84, corner_y + 0.005]
    pts[61, :2] = [-mw * 0.35, my - 0.01 - 0.02 * sm]
    pts[62, :2] = [0, my - 0.01]
    pts[67, :2] = [-mw * 0.35, my + gap * 0.95 + 0.005]
    pts[66, :2] = [0, my + gap + 0.005]
    mouth = [48, 49, 50, 51, 57, 58, 59, 60, 61, 62, 66, 67]
    pts[mouth, 2] = _surface_z(pts[mouth, 0], fw) + 0.2

    # The other half by symmetry: point i of the image-right half mirrors flip[i].
    left = np.r_[0:8, 17:22, 31:33, 36:42, 48:51, 58:61, 61, 67]
    pts[_FLIP[left]] = _mirror(pts[left])
    pts[list(_CENTRE_POINTS), 0] = 0.0
    # A little asymmetry and irregularity.
    pts += rng.normal(0.0, 0.008, pts.shape)

    aux = _aux_points_3d(pts, p)
    return pts, aux


def _arc(x_half: float, y0: float, height: float, z0: float, n: int = 13,
         z_front: float = 0.0) -> np.ndarray:
    """Points on a half ellipse from (-x_half, y0) over the top to (x_half, y0)."""
    a = np.linspace(0.0, np.pi, n)
    x = -x_half * np.cos(a)
    y = y0 - height * np.sin(a)
    z = z0 * (x / x_half) ** 2 + z_front * np.sin(a)
    return np.stack([x, y, z], axis=1)


def _aux_points_3d(pts: np.ndarray, p: dict) -> dict:
    """Auxiliary 3-D points that the renderer draws (outside the 68 landmarks)."""
    fw = p["face_w"]
    aux = {}
    # Forehead from the image-right temple over the top back to the image-left one,
    # so that jaw + forehead is one closed outline.
    forehead = _arc(fw * 1.0, pts[0, 1], 1.0, -0.6, z_front=-0.1)
    forehead[0], forehead[-1] = pts[0], pts[16]
    aux["forehead"] = forehead[::-1][1:-1]
    aux["hair"] = np.concatenate([
        np.array([[-fw * 1.15, p["hair_len"], -0.8]]),
        _arc(fw * 1.14, 0.1, 1.3, -0.7, n=15, z_front=-0.2),
        np.array([[fw * 1.15, p["hair_len"], -0.8]])])
    # A fringe: its lower edge follows the forehead surface above the highest brow
    # point, so that it never covers the brows whatever the pose.
    fringe_x = np.linspace(-fw * 0.95, fw * 0.95, 7)
    fringe_y = pts[17:27, 1].min() - 0.12 - 0.08 * (1 - (fringe_x / fw) ** 2)
    fringe_low = np.stack([fringe_x, fringe_y, _surface_z(fringe_x, fw) + 0.1], axis=1)
    aux["fringe"] = np.concatenate([fringe_low, _arc(fw * 1.05, fringe_y[0], 1.0, -0.6)[::-1]])
    aux["ears"] = np.array([[-fw * 1.0, 0.3, -0.9], [fw * 1.0, 0.3, -0.9]])
    neck_x = 0.55 * fw
    aux["neck"] = np.array([[-neck_x, 0.9, -0.8], [-neck_x * 1.05, 2.6, -0.9],
                            [neck_x * 1.05, 2.6, -0.9], [neck_x, 0.9, -0.8]])
    aux["clothes"] = np.array([[-neck_x * 1.1, 2.3, -0.9], [-2.4, 2.9, -1.2], [-3.0, 6.0, -1.2],
                               [3.0, 6.0, -1.2], [2.4, 2.9, -1.2], [neck_x * 1.1, 2.3, -0.9],
                               [0.0, 2.6, -0.5]])
    # Lower edges of the brows (the landmarks are their upper edges).
    th = p["brow_th"] * np.array([0.55, 0.8, 1.0, 1.0, 0.9])
    for name, idx in (("brow_l", slice(17, 22)), ("brow_r", slice(22, 27))):
        low = pts[idx].copy()
        low[:, 1] += th if name == "brow_l" else th[::-1]
        aux[name] = low
    # Creases above the upper lids.
    for name, idx in (("crease_l", [36, 37, 38, 39]), ("crease_r", [42, 43, 44, 45])):
        crease = pts[idx].copy()
        crease[:, 1] -= np.array([0.02, 0.07, 0.07, 0.03]) * max(p["eye_open"], 0.5)
        aux[name] = crease
    # Nostrils, alar wings and the nose side walls.
    ny, nw, nd = p["nose_y"], p["nose_w"], p["nose_d"]
    aux["nostrils"] = np.array([[-nw * 0.5, ny + 0.1, nd * 0.3], [nw * 0.5, ny + 0.1, nd * 0.3]])
    aux["ala_l"] = np.array([pts[31], [-nw * 1.08, ny + 0.02, nd * 0.2],
                             [-nw * 0.8, ny - 0.08, nd * 0.4]])
    aux["ala_r"] = _mirror(aux["ala_l"])
    aux["ala_r"][0] = pts[35]
    aux["nose_side"] = np.array([[-0.13, 0.05, 0.0], [-nw * 0.95, ny - 0.05, nd * 0.25],
                                 [nw * 0.95, ny - 0.05, nd * 0.25], [0.13, 0.05, 0.0]])
    # Upper teeth hang below the inner upper lip, at most to the lower lip.
    teeth = pts[[60, 61, 62, 63, 64]].copy()
    teeth[:, 1] += min(0.65 * p["mouth_open"], 0.07) * np.array([0.3, 0.9, 1.0, 0.9, 0.3])
    aux["teeth"] = teeth
    # Sunglasses lenses around the eye centres.
    aux["eye_centres"] = np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)])
    return aux


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix (angles in degrees) for x right, y down, z towards the camera."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


class _Camera:
    """Pose, perspective projection and image placement of one face."""

    _PIVOT = np.array([0.0, 0.55, -0.7])  # roughly the head centre

    def __init__(self, rotation: np.ndarray, distance: float):
        self.rotation = rotation
        self.distance = distance
        self.scale = 1.0
        self.offset = np.zeros(2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """3-D template points ``[K, 3]`` to image pixels ``[K, 2]``."""
        cam = (points - self._PIVOT) @ self.rotation.T
        mag = self.distance / (self.distance - cam[:, 2:3])
        return cam[:, :2] * mag * self.scale + self.offset

    def place(self, landmarks3d: np.ndarray, face_size: float, centre: np.ndarray) -> None:
        """Sets scale and offset so the landmarks' extent is ``face_size`` at ``centre``."""
        self.scale, self.offset = 1.0, np.zeros(2)
        xy = self.project(landmarks3d)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        self.scale = face_size / max(hi - lo)
        self.offset = centre - self.scale * (lo + hi) / 2

    def pixels_per_unit(self) -> float:
        return self.scale
