"""Procedural synthetic faces with exact 68-point and 5-point ground truth.

This is the package's embedded default training data and its test data: no download
is needed to train, evaluate or export a model end to end.

How a face is made (``generate_face``):

1. **Shape.** A parametric 3-D template of the 68 iBUG points (x right, y down, z
   towards the camera; one unit is about half a face width, the eye line is at
   ``y = 0``) is built from random *identity* parameters (face width and length,
   jaw squareness, eye spacing/size/tilt, brow height/arch, nose length/width/depth,
   mouth position/width, lip thickness, a little asymmetry) and random *expression*
   parameters (mouth opening, smile, brow raise, eye closure). The image-left half
   is built and mirrored with ``IBUG_68.flip_permutation``.
2. **Pose and camera.** A random rotation (yaw, pitch, roll, uniform within
   ``SyntheticFaceConfig`` limits) about the head centre, a pinhole camera at a
   random distance (mild perspective), a random scale and translation in the image.
   The 2-D landmarks are the projected template points, hence exact.
3. **Rendering** (OpenCV). Cluttered background, clothes, neck, ears and hair, a
   skin-coloured face polygon whose outline *is* the jaw contour (points 0-16),
   brows whose upper edge runs along points 17-26, eyes whose corners are points
   36/39 and 42/45 with the pupil at the eye centre (mean of the six eye points),
   nose shading, nostrils and the nose base along 31-35, lips whose outer and inner
   outlines are points 48-59 and 60-67 (teeth and a dark mouth when open), shading
   from a random light, then random occluders, colour changes, blur, noise and JPEG
   artefacts. Every drawn feature uses the same projected points as the ground
   truth, so the image determines the landmarks.
4. **Face box.** A square box mimicking dlib's detector (brows to chin, so the jaw
   points often lie just outside it) with random shift and scale, so models crop
   from a detector-like box, never from the true landmarks.

Face ``index`` of ``seed`` depends only on ``(seed, index)`` and the config (its
random streams are the children of ``np.random.SeedSequence([seed, index])``, one per
stage: geometry, box, painting, occluder, degradation), so a data set can be
generated in any order or in parallel and is identical across runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
import zlib
from collections.abc import Mapping

import cv2
import numpy as np

from common import atomic
from common.schemes import CUHK_5, IBUG_68

GENERATOR_VERSION = 1
"""Bump whenever a change alters the generated faces: it invalidates cached data sets."""

NOSE_TIP = IBUG_68.point_names.index("nose_bridge_3")
LEFT_MOUTH_CORNER = IBUG_68.point_names.index("outer_lip_0")
RIGHT_MOUTH_CORNER = IBUG_68.point_names.index("outer_lip_6")

_SPLIT_STRIDE = 1_000_000_000
"""Indices of different splits are this far apart, so splits never share a face."""

_KNOWN_SPLIT_BLOCKS = {"train": 0, "val": 1, "test": 2}

_SHIFT = 4  # OpenCV fixed-point bits: drawing at 1/16 pixel keeps features exact.
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


@dataclasses.dataclass(frozen=True)
class SyntheticFaceConfig:
    """Settings of the synthetic face generator (defaults are the project's data).

    Attributes:
        image_size: side of the square RGB image in pixels.
        face_size_range: (min, max) of the landmarks' larger extent as a fraction of
            ``image_size``.
        center_jitter: largest offset of the landmark centre from the image centre,
            as a fraction of ``image_size``.
        max_yaw: largest |yaw| in degrees (uniform in [-max_yaw, max_yaw]).
        max_pitch: largest |pitch| in degrees.
        max_roll: largest |roll| (in-plane rotation) in degrees.
        camera_distance_range: camera distance in template units (one unit is about
            half a face width, i.e. ~7 cm); smaller means stronger perspective.
        mouth_open_prob: probability that the mouth is open.
        smile_prob: probability of a smile (corners up and out).
        eye_closed_prob: probability of squinting or closed eyes.
        occlusion_prob: probability of an occluder (bar, hand, sunglasses, blob)
            over part of the face.
        blur_prob: probability of Gaussian or motion blur.
        max_blur_sigma: largest Gaussian blur sigma in pixels of a 128-pixel image
            (scaled with ``image_size``).
        max_noise_sigma: largest Gaussian pixel-noise sigma in grey levels (0..255).
        jpeg_prob: probability of JPEG artefacts (encode/decode).
        jpeg_quality_range: (min, max) JPEG quality of those artefacts.
        box_shift: largest shift of the face box centre, as a fraction of its side.
        box_scale_range: (min, max) scale of the face box relative to a dlib-like box.
        record_jpeg_quality: JPEG quality of the images stored in TFRecords.
    """

    image_size: int = 128
    face_size_range: tuple[float, float] = (0.45, 0.65)
    center_jitter: float = 0.08
    max_yaw: float = 30.0
    max_pitch: float = 20.0
    max_roll: float = 25.0
    camera_distance_range: tuple[float, float] = (7.0, 20.0)
    mouth_open_prob: float = 0.35
    smile_prob: float = 0.4
    eye_closed_prob: float = 0.1
    occlusion_prob: float = 0.3
    blur_prob: float = 0.4
    max_blur_sigma: float = 1.3
    max_noise_sigma: float = 8.0
    jpeg_prob: float = 0.7
    jpeg_quality_range: tuple[int, int] = (30, 95)
    box_shift: float = 0.06
    box_scale_range: tuple[float, float] = (0.9, 1.08)
    record_jpeg_quality: int = 95

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")


@dataclasses.dataclass
class SyntheticFace:
    """One generated face.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB image.
        landmarks68: float32 ``[68, 2]`` (x, y) pixels, iBUG order (``IBUG_68``).
        landmarks5: float32 ``[5, 2]`` (x, y) pixels, CUHK order (``CUHK_5``), from
            ``to_five_points(landmarks68)``.
        box: float32 ``[4]`` detector-like face box (left, top, right, bottom).
        visible: bool ``[68]``; False where an occluder covers the point or the point
            lies outside the image.
        pose: float32 ``[3]`` (yaw, pitch, roll) in degrees: positive yaw turns the
            face towards the image right, positive pitch tilts it up, positive roll
            turns it clockwise in the image.
        index: the face's index.
        seed: the data set seed.
    """

    image: np.ndarray
    landmarks68: np.ndarray
    landmarks5: np.ndarray
    box: np.ndarray
    visible: np.ndarray
    pose: np.ndarray
    index: int
    seed: int


def to_five_points(landmarks68: np.ndarray) -> np.ndarray:
    """Converts 68-point landmarks to the 5-point CUHK mark-up.

    Eye centres are the means of the six eye points of each eye (the pupils of
    ``IBUG_68``), the nose tip is the last nose-bridge point and the mouth corners
    are the outer lip corners.

    Args:
        landmarks68: ``[..., 68, 2]`` array.

    Returns:
        float32 ``[..., 5, 2]`` array in ``CUHK_5`` order (left eye, right eye, nose,
        left mouth corner, right mouth corner; "left" is the image left).
    """
    landmarks68 = np.asarray(landmarks68, dtype=np.float64)
    if landmarks68.shape[-2:] != (IBUG_68.num_points, 2):
        raise ValueError(f"expected [..., 68, 2] landmarks, got shape {landmarks68.shape}")
    left_eye, right_eye = IBUG_68.pupils(landmarks68)
    five = np.stack([left_eye, right_eye, landmarks68[..., NOSE_TIP, :],
                     landmarks68[..., LEFT_MOUTH_CORNER, :],
                     landmarks68[..., RIGHT_MOUTH_CORNER, :]], axis=-2)
    assert five.shape[-2] == CUHK_5.num_points
    return five.astype(np.float32)


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


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

_HAIR_COLOURS = np.array([[25, 20, 18], [55, 38, 28], [95, 65, 42], [185, 155, 105],
                          [140, 70, 40], [165, 160, 155]], float)
_IRIS_COLOURS = np.array([[85, 52, 28], [45, 30, 20], [70, 110, 150], [80, 110, 70],
                          [120, 95, 55]], float)
_SKIN_LIGHT = np.array([245.0, 212.0, 188.0])
_SKIN_DARK = np.array([80.0, 52.0, 38.0])


def _fx(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates to OpenCV fixed-point int32 vertices."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _col(colour) -> tuple:
    if isinstance(colour, (int, float)):
        return (min(max(float(colour), 0.0), 255.0),) * 3
    return tuple(min(max(float(c), 0.0), 255.0) for c in colour)


def _poly(img: np.ndarray, points: np.ndarray, colour) -> None:
    cv2.fillPoly(img, [_fx(points)], _col(colour), _AA, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, colour, thickness: int, closed=False) -> None:
    cv2.polylines(img, [_fx(points)], closed, _col(colour), max(1, int(thickness)), _AA, _SHIFT)


def _circle(img: np.ndarray, centre, radius: float, colour, thickness: int = -1) -> None:
    c = np.round(np.asarray(centre) * _ONE).astype(int)
    cv2.circle(img, (int(c[0]), int(c[1])), max(1, round(radius * _ONE)), _col(colour),
               thickness, _AA, _SHIFT)


def _ellipse(img: np.ndarray, centre, axes, angle: float, colour, thickness: int = -1) -> None:
    c = np.round(np.asarray(centre) * _ONE).astype(int)
    a = np.maximum(np.round(np.asarray(axes) * _ONE).astype(int), 1)
    cv2.ellipse(img, (int(c[0]), int(c[1])), (int(a[0]), int(a[1])), float(angle), 0.0, 360.0,
                _col(colour), thickness, _AA, _SHIFT)


def _blend(img: np.ndarray, layer: np.ndarray, alpha: float) -> None:
    cv2.addWeighted(layer, alpha, img, 1.0 - alpha, 0.0, dst=img)


def _draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient, a low-frequency texture and random shapes."""
    # Built on a coarse grid and upsampled once: a linear gradient survives the
    # interpolation exactly, the random texture becomes smooth blotches.
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    cells = int(rng.integers(2, 12))
    ramp = np.linspace(-0.5, 0.5, cells)
    g = (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]) + 0.5
    grid = c0 + (c1 - c0) * g[..., None]
    if rng.random() < 0.7:
        grid += rng.uniform(-1, 1, (cells, cells, 3)) * rng.uniform(15, 60)
    grid = np.clip(grid, 0, 255).astype(np.uint8)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 14))):
        colour = rng.uniform(0, 255, 3)
        kind = rng.integers(5)
        fill = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
        centre = rng.uniform(-0.1, 1.1, 2) * size
        extent = rng.uniform(0.05, 0.45) * size
        if kind == 0:
            _circle(img, centre, extent * 0.5, colour, fill)
        elif kind == 1:
            axes = extent * rng.uniform(0.2, 1.0, 2)
            _ellipse(img, centre, axes, rng.uniform(0, 180), colour, fill)
        elif kind == 2:
            box = cv2.boxPoints((tuple(centre), tuple(extent * rng.uniform(0.2, 1.5, 2)),
                                 float(rng.uniform(0, 90))))
            _poly(img, box, colour) if fill < 0 else _line(img, box, colour, fill, True)
        elif kind == 3:
            end = centre + rng.normal(0, 1, 2) * extent
            _line(img, np.stack([centre, end]), colour, int(rng.integers(1, max(2, size // 20))))
        else:
            n = int(rng.integers(3, 8))
            verts = centre + rng.uniform(-1, 1, (n, 2)) * extent
            _poly(img, verts, colour)
    return img


class _Renderer:
    """Draws one face into an image; all positions come from the projected points."""

    def __init__(self, rng: np.random.Generator, img: np.ndarray, lm: np.ndarray, aux: dict,
                 ppu: float, p: dict, roll: float):
        self.rng, self.img, self.lm, self.aux, self.ppu, self.p = rng, img, lm, aux, ppu, p
        self.roll = roll
        t = rng.beta(1.3, 1.6)
        self.skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * t + rng.normal(0, 7, 3)
        self.hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.2)
        if rng.random() < 0.15:
            self.lips = rng.uniform([120, 10, 30], [220, 80, 110])  # lipstick
        else:
            self.lips = self.skin * np.array([0.82, 0.55, 0.55]) + np.array([15, 0, 5])
        self.light = rng.normal(0, 1, 2)
        self.light *= rng.uniform(0.0, 0.35) / max(np.linalg.norm(self.light), 1e-6)

    def px(self, units: float) -> float:
        return units * self.ppu

    def thick(self, units: float) -> int:
        return max(1, round(units * self.ppu))

    def draw_body(self) -> None:
        aux, rng = self.aux, self.rng
        _poly(self.img, aux["clothes"], rng.uniform(0, 255, 3))
        self.has_hair = rng.random() < 0.85
        if self.has_hair:
            _poly(self.img, aux["hair"], self.hair)
        _poly(self.img, aux["neck"], self.skin * 0.72)
        for centre in aux["ears"]:
            _ellipse(self.img, centre, (self.px(0.13), self.px(0.28)), self.roll, self.skin * 0.85)

    def draw_face(self) -> np.ndarray:
        """Fills the face polygon; returns its outline in pixels."""
        outline = np.concatenate([self.lm[0:17], self.aux["forehead"]])
        _poly(self.img, outline, self.skin)
        if self.has_hair and self.rng.random() < 0.5:
            # A fringe over the top of the forehead; it stays above the brows.
            _poly(self.img, self.aux["fringe"], self.hair)
        return outline

    def draw_brows(self) -> None:
        colour = self.hair * 0.7 if self.rng.random() < 0.8 else self.skin * 0.35
        for idx, low in ((slice(17, 22), "brow_l"), (slice(22, 27), "brow_r")):
            _poly(self.img, np.concatenate([self.lm[idx], self.aux[low][::-1]]), colour)

    def draw_eyes(self) -> None:
        rng, img = self.rng, self.img
        iris_colour = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2)
        sclera = np.array([225.0, 220.0, 212.0]) * rng.uniform(0.8, 1.0)
        iris_r = self.px(self.p["eye_w"] * rng.uniform(0.2, 0.24))
        lash = self.skin * 0.15
        for idx, crease in ((slice(36, 42), "crease_l"), (slice(42, 48), "crease_r")):
            eye = self.lm[idx]
            centre = eye.mean(axis=0)
            _line(img, self.aux[crease], self.skin * 0.75, self.thick(0.015))
            # Sclera, then iris and pupil clipped to the eye opening.
            x0, y0 = np.floor(eye.min(axis=0) - 2).astype(int)
            x1, y1 = np.ceil(eye.max(axis=0) + 3).astype(int)
            h, w = img.shape[:2]
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if x1 > x0 and y1 > y0:
                roi = img[y0:y1, x0:x1]
                layer = np.empty_like(roi)
                layer[:] = _col(sclera)
                offset = np.array([x0, y0])
                _circle(layer, centre - offset, iris_r, iris_colour)
                _circle(layer, centre - offset, iris_r * 0.55, iris_colour * 0.5)
                _circle(layer, centre - offset, iris_r * 0.4, (12, 10, 10))
                if rng.random() < 0.7:  # a catch light on the iris, off the pupil
                    _circle(layer, centre - offset + iris_r * np.array([-0.45, -0.45]),
                            iris_r * 0.15, (240, 240, 240))
                mask = np.zeros(roi.shape[:2], np.uint8)
                _poly(mask, eye - offset, 255)
                alpha = mask[..., None].astype(np.float32) / 255.0
                roi[:] = (layer * alpha + roi * (1 - alpha)).astype(np.uint8)
            _line(img, eye[[0, 1, 2, 3]], lash, self.thick(0.03))
            _line(img, eye[[3, 4, 5, 0]], self.skin * 0.6, self.thick(0.012))

    def draw_nose(self) -> None:
        lm, aux, img = self.lm, self.aux, self.img
        # The side away from the light is darker.
        shadow = img.copy()
        side = aux["nose_side"]
        if self.light[0] >= 0:
            wall = np.concatenate([side[:2], lm[[31, 32, 33]], lm[[30, 29, 28, 27]]])
        else:
            wall = np.concatenate([side[3:1:-1], lm[[35, 34, 33]], lm[[30, 29, 28, 27]]])
        _poly(shadow, wall, self.skin * 0.7)
        _blend(img, shadow, 0.45)
        highlight = img.copy()
        _circle(highlight, lm[30], self.px(0.05), self.skin * 1.1 + 15)
        _blend(img, highlight, 0.4)
        tone = self.skin * 0.55
        for ala in ("ala_l", "ala_r"):
            _line(img, aux[ala], tone, self.thick(0.018))
        _line(img, lm[31:36], tone, self.thick(0.02))
        for centre in aux["nostrils"]:
            _ellipse(img, centre, (self.px(0.06), self.px(0.025)), self.roll, self.skin * 0.3)

    def draw_mouth(self) -> None:
        lm, img = self.lm, self.img
        upper = np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]])
        lower = np.concatenate([lm[54:60], lm[[48, 60, 67, 66, 65, 64]]])
        _poly(img, upper, self.lips * 0.9)
        _poly(img, lower, self.lips)
        if self.p["mouth_open"] > 0.01:
            _poly(img, lm[60:68], (45, 12, 15))
            teeth = np.concatenate([lm[60:65], self.aux["teeth"][::-1]])
            _poly(img, teeth, np.array([235, 230, 215]) * self.rng.uniform(0.8, 1.0))
        _line(img, lm[60:65], self.lips * 0.45, self.thick(0.015))
        _line(img, lm[[64, 65, 66, 67, 60]], self.lips * 0.5, 1)

    def shade(self, outline: np.ndarray) -> None:
        """Lambert-like shading from a random light: a blurred, shifted face mask."""
        # The smooth part is computed at a quarter of the resolution.
        h, w = self.img.shape[:2]
        small = 4
        def to_small(points):
            return (points + 0.5) / small - 0.5

        mask = np.zeros((h // small, w // small), np.float32)
        _poly(mask, to_small(outline + self.light * self.px(1.0)), 1.0)
        dome = cv2.GaussianBlur(mask, (0, 0), max(self.px(0.35) / small, 0.5))
        ambient = self.rng.uniform(0.5, 0.75)
        gain = ambient + (1.0 - ambient) * 1.1 * np.sqrt(np.clip(dome, 0.0, 1.0))
        # Soft shadows of the eye sockets and under the nose and the lower lip.
        hollows = np.zeros_like(mask)
        for centre in self.aux["eye_centres"]:
            _ellipse(hollows, to_small(centre), (self.px(0.3) / small, self.px(0.2) / small),
                     self.roll, 1.0)
        _poly(hollows, to_small(self.lm[[31, 32, 33, 34, 35]]), 0.7)
        _poly(hollows, to_small(self.lm[[55, 56, 57, 58, 59]]), 0.6)
        hollows = cv2.GaussianBlur(hollows, (0, 0), max(self.px(0.08) / small, 0.5))
        gain -= self.rng.uniform(0.05, 0.2) * hollows
        gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
        face = np.zeros((h, w), np.float32)
        _poly(face, outline, 1.0)  # anti-aliased, so the edge is shaded partially
        shade = 1.0 + face * (gain - 1.0)
        self.img[:] = cv2.multiply(self.img, cv2.merge([shade, shade, shade]), dtype=cv2.CV_8U)

    def draw_glasses(self) -> None:
        """Clear glasses: frames only, the eyes stay visible."""
        colour = self.rng.uniform(0, 120, 3)
        for centre in self.aux["eye_centres"]:
            _ellipse(self.img, centre, (self.px(0.3), self.px(0.2)), self.roll, colour,
                     self.thick(0.025))
        _line(self.img, self.aux["eye_centres"] + [[self.px(0.3), 0], [-self.px(0.3), 0]],
              colour, self.thick(0.025))


def _draw_occluder(rng: np.random.Generator, img: np.ndarray, lm: np.ndarray, eye_centres,
                   ppu: float, skin: np.ndarray) -> np.ndarray:
    """Draws one random occluder over the face; returns its uint8 mask."""
    mask = np.zeros(img.shape[:2], np.uint8)
    kind = rng.choice(["bar", "hand", "glasses", "blob"], p=[0.3, 0.3, 0.15, 0.25])
    anchor = lm[rng.integers(68)] + rng.normal(0, 0.15 * ppu, 2)
    colour = rng.uniform(0, 255, 3)
    layers = (img, mask)
    if kind == "bar":
        size = (rng.uniform(1.5, 4.0) * ppu, rng.uniform(0.2, 0.6) * ppu)
        box = cv2.boxPoints((tuple(anchor), size, float(rng.uniform(0, 180))))
        for layer, c in zip(layers, (colour, 255)):
            _poly(layer, box, c)
    elif kind == "hand":
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        hand = skin * rng.uniform(0.8, 1.1) if rng.random() < 0.7 else colour
        palm = anchor - direction * 0.45 * ppu
        for layer, c in zip(layers, (hand, 255)):
            _ellipse(layer, palm, (0.45 * ppu, 0.38 * ppu), math.degrees(angle), c)
            for k in range(4):
                base = palm + normal * (k - 1.5) * 0.2 * ppu
                tip = base + direction * rng.uniform(0.6, 0.9) * ppu
                _line(layer, np.stack([base, tip]), c, max(1, int(0.16 * ppu)))
        _line(img, np.stack([palm - normal * 0.4 * ppu, palm + normal * 0.4 * ppu]), hand * 0.7, 1)
    elif kind == "glasses":
        dark = rng.uniform(0, 60, 3)
        for layer, c in zip(layers, (dark, 255)):
            for centre in eye_centres:
                _ellipse(layer, centre, (0.33 * ppu, 0.22 * ppu), 0.0, c)
            _line(layer, eye_centres, c, max(1, int(0.04 * ppu)))
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.3, 0.8, n) * ppu
        verts = anchor + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        for layer, c in zip(layers, (colour, 255)):
            _poly(layer, verts, c)
    return mask


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise; faces take random windows of it.

    Drawing fresh Gaussian noise costs more than rendering the rest of a face, and a
    random window of a large fixed field is just as unpredictable to a model.
    """
    side = max(4 * size, 512)
    return np.random.default_rng(20170101).standard_normal((side, side, 3), dtype=np.float32)


def _degrade(rng: np.random.Generator, img: np.ndarray,
             config: SyntheticFaceConfig) -> np.ndarray:
    """Colour changes, blur, noise and JPEG artefacts."""
    size = config.image_size
    # Gamma, contrast, per-channel gain and brightness as one lookup table.
    levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
    curve = levels ** rng.uniform(0.7, 1.4) * 255.0
    curve = (curve - 128.0) * rng.uniform(0.7, 1.15) + 128.0
    curve = curve * (rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)) + rng.uniform(-20, 20)
    img = cv2.LUT(img, np.clip(curve, 0, 255).astype(np.uint8).reshape(1, 256, 3))
    if rng.random() < config.blur_prob:
        sigma = rng.uniform(0.3, max(config.max_blur_sigma, 0.31)) * size / 128
        if rng.random() < 0.75:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        else:  # motion blur along a random direction
            k = 2 * math.ceil(2 * sigma) + 1
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2, :] = 1.0
            rot = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), rng.uniform(0, 180), 1.0)
            kernel = cv2.warpAffine(kernel, rot, (k, k))
            img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    noise = rng.uniform(0, config.max_noise_sigma)
    if noise > 0.5:
        h, w = img.shape[:2]
        bank = _noise_bank(max(h, w))
        y, x = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
        noisy = img + bank[y:y + h, x:x + w] * noise
        img = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < config.jpeg_prob:
        lo, hi = config.jpeg_quality_range
        quality = int(rng.integers(lo, hi + 1))
        ok, data = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            img = np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
    return img


def _face_box(rng: np.random.Generator, lm: np.ndarray, config: SyntheticFaceConfig) -> np.ndarray:
    """A square dlib-like box: brows to chin, jittered in position and scale."""
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    brow_top = lm[17:27, 1].min()
    centre = np.array([(lo[0] + hi[0]) / 2, (brow_top + hi[1]) / 2])
    side = 0.5 * ((hi[0] - lo[0]) + (hi[1] - brow_top)) * rng.uniform(*config.box_scale_range)
    centre = centre + rng.uniform(-config.box_shift, config.box_shift, 2) * side
    return np.concatenate([centre - side / 2, centre + side / 2]).astype(np.float32)


def generate_face(index: int, seed: int = 0,
                  config: SyntheticFaceConfig | None = None) -> SyntheticFace:
    """Generates synthetic face ``index`` of data set ``seed``.

    The result depends only on ``(seed, index)`` and ``config``.

    Args:
        index: face index (>= 0).
        seed: data set seed (>= 0).
        config: generator settings; ``SyntheticFaceConfig()`` when None.

    Returns:
        The face: image, exact 68- and 5-point landmarks, face box, visibility, pose.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    config = config or SyntheticFaceConfig()
    size = config.image_size
    # Independent streams per stage: a change to, say, the renderer leaves every
    # face's landmarks and box as they were.
    rng, box_rng, paint_rng, occluder_rng, degrade_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(5))

    params = _sample_shape(rng, config)
    pts3d, aux3d = _template_3d(params, rng)
    yaw = rng.uniform(-config.max_yaw, config.max_yaw)
    pitch = rng.uniform(-config.max_pitch, config.max_pitch)
    roll = rng.uniform(-config.max_roll, config.max_roll)
    camera = _Camera(_rotation(yaw, pitch, roll), rng.uniform(*config.camera_distance_range))
    face_size = rng.uniform(*config.face_size_range) * size
    centre = (0.5 + rng.uniform(-config.center_jitter, config.center_jitter, 2)) * size - 0.5
    camera.place(pts3d, face_size, centre)
    lm = camera.project(pts3d)
    ends = np.cumsum([len(points) for points in aux3d.values()])
    aux = dict(zip(aux3d, np.split(camera.project(np.concatenate(list(aux3d.values()))),
                                   ends[:-1])))

    img = _draw_background(paint_rng, size)
    renderer = _Renderer(paint_rng, img, lm, aux, camera.pixels_per_unit(), params, roll)
    renderer.draw_body()
    outline = renderer.draw_face()
    renderer.draw_brows()
    renderer.draw_nose()
    renderer.draw_eyes()
    renderer.draw_mouth()
    renderer.shade(outline)
    if paint_rng.random() < 0.1:
        renderer.draw_glasses()

    visible = np.ones(68, bool)
    if occluder_rng.random() < config.occlusion_prob:
        mask = _draw_occluder(occluder_rng, img, lm, aux["eye_centres"], camera.pixels_per_unit(),
                              renderer.skin)
        ij = np.clip(np.round(lm).astype(int), 0, size - 1)
        visible &= mask[ij[:, 1], ij[:, 0]] < 128
    inside = np.all((lm >= -0.5) & (lm <= size - 0.5), axis=1)
    visible &= inside

    img = _degrade(degrade_rng, img, config)
    box = _face_box(box_rng, lm, config)
    lm = lm.astype(np.float32)
    return SyntheticFace(image=img, landmarks68=lm, landmarks5=to_five_points(lm), box=box,
                         visible=visible, pose=np.array([yaw, pitch, roll], np.float32),
                         index=int(index), seed=int(seed))


# --------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------


def split_index_offset(split: str) -> int:
    """First face index of ``split``: splits use disjoint index ranges.

    "train", "val" and "test" start at 0, 1e9 and 2e9; any other split name starts
    at a block chosen from a hash of the name (from 3e9 on). A split's faces thus
    stay the same when another split's size changes.
    """
    if split in _KNOWN_SPLIT_BLOCKS:
        return _KNOWN_SPLIT_BLOCKS[split] * _SPLIT_STRIDE
    return (3 + zlib.crc32(split.encode()) % 1_000_000) * _SPLIT_STRIDE


def _check_splits(splits: Mapping[str, int]) -> None:
    offsets = {}
    for split, count in splits.items():
        if not split or "-" in split or "/" in split:
            raise ValueError(f"bad split name {split!r} (non-empty, no '-' or '/')")
        if not 0 <= int(count) < _SPLIT_STRIDE:
            raise ValueError(f"split {split!r}: count must be in [0, {_SPLIT_STRIDE}), got {count}")
        offset = split_index_offset(split)
        if offset in offsets:
            raise ValueError(f"splits {offsets[offset]!r} and {split!r} share an index range")
        offsets[offset] = split


def write_synthetic_tfrecords(output_dir: str, num_points: int, splits: Mapping[str, int],
                              seed: int = 0, config: SyntheticFaceConfig | None = None,
                              num_shards: int = 1, prefix: str = "synthetic",
                              progress: bool = True) -> dict[str, list[str]]:
    """Generates synthetic faces and writes them as TFRecord shards.

    Face ``k`` of split ``s`` is ``generate_face(split_index_offset(s) + k, seed)``;
    its image is stored as JPEG (``config.record_jpeg_quality``, 4:4:4), its box with box
    source "given" and its source path as ``"synthetic:seed=S:index=I"``.

    Args:
        output_dir: folder for the shards (created if needed).
        num_points: 68 (iBUG) or 5 (CUHK) landmarks per face.
        splits: faces per split, e.g. ``{"train": 2000, "val": 200, "test": 200}``.
        seed: data set seed.
        config: generator settings; ``SyntheticFaceConfig()`` when None.
        num_shards: shards per split.
        prefix: shard file name prefix.
        progress: print progress and the generation rate to stderr.

    Returns:
        The shard paths written, per split.
    """
    if num_points not in (IBUG_68.num_points, CUHK_5.num_points):
        raise ValueError(f"num_points must be 68 or 5, got {num_points}")
    _check_splits(splits)
    # TensorFlow is imported here, not at module level, so that generating faces does
    # not pay for (or require) a TensorFlow import.
    from common.tfrecord import ShardWriter, serialize_face

    config = config or SyntheticFaceConfig()
    # No chroma subsampling: pupils and lip corners are a pixel or two wide.
    jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, config.record_jpeg_quality,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    written = {}
    for split, count in splits.items():
        offset = split_index_offset(split)
        start = last_report = time.perf_counter()
        with ShardWriter(output_dir, prefix, split, num_shards) as writer:
            for k in range(int(count)):
                index = offset + k
                face = generate_face(index, seed, config)
                ok, data = cv2.imencode(".jpg", face.image[..., ::-1], jpeg_params)
                if not ok:
                    raise RuntimeError(f"JPEG encoding failed for face {index}")
                landmarks = face.landmarks68 if num_points == 68 else face.landmarks5
                writer.write(serialize_face(
                    data.tobytes(), face.image.shape[0], face.image.shape[1], landmarks,
                    face.box, box_source="given", split=split,
                    source_path=f"synthetic:seed={seed}:index={index}"))
                now = time.perf_counter()
                if progress and (now - last_report > 5.0 or k + 1 == count):
                    last_report = now
                    print(f"{split}: {k + 1}/{count} faces, "
                          f"{(k + 1) / max(now - start, 1e-9):.0f} faces/s",
                          file=sys.stderr, flush=True)
        written[split] = writer.final
    return written


def default_cache_root() -> str:
    """``$FACE_ALIGN_CACHE`` or ``~/.cache/face_align_tf``."""
    return os.environ.get("FACE_ALIGN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "face_align_tf")


_MANIFEST = "synthetic.json"


def ensure_synthetic_dataset(num_points: int, splits: Mapping[str, int], seed: int = 0,
                             cache_dir: str | None = None,
                             config: SyntheticFaceConfig | None = None,
                             progress: bool = False) -> str:
    """Returns a folder holding the synthetic data set, generating it if absent.

    The folder is ``<root>/synthetic-<num_points>-<hash>`` where the hash covers the
    splits, seed, config and ``GENERATOR_VERSION``, and ``<root>`` is ``cache_dir``,
    else ``$FACE_ALIGN_CACHE``, else ``~/.cache/face_align_tf``. It is written into a
    temporary folder and renamed when complete, so an interrupted or concurrent run
    never leaves a partial data set behind.

    Args:
        num_points: 68 or 5.
        splits: faces per split, e.g. ``{"train": 2000, "val": 200}``.
        seed: data set seed.
        cache_dir: root folder of the cache (see above).
        config: generator settings; ``SyntheticFaceConfig()`` when None.
        progress: print generation progress.

    Returns:
        The data set folder (pass it to ``common.tfrecord.find_shards``).
    """
    config = config or SyntheticFaceConfig()
    _check_splits(splits)
    params = {"generator_version": GENERATOR_VERSION, "num_points": int(num_points),
              "splits": {k: int(v) for k, v in sorted(splits.items())}, "seed": int(seed),
              "config": dataclasses.asdict(config)}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir or default_cache_root()
    final = os.path.join(root, f"synthetic-{num_points}-{digest}")
    if os.path.isfile(os.path.join(final, _MANIFEST)):
        return final
    os.makedirs(root, exist_ok=True)
    atomic.remove_stale_temps(final)  # left by generations that were killed
    tmp = atomic.make_temp_dir(final)  # the usual permissions, unlike mkdtemp's 0700
    try:
        write_synthetic_tfrecords(tmp, num_points, splits, seed, config, progress=progress)
        with open(os.path.join(tmp, _MANIFEST), "w") as f:
            json.dump(params, f, indent=2, sort_keys=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first; its copy is identical.
            if not os.path.isfile(os.path.join(final, _MANIFEST)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _main(argv) -> None:
    from absl import flags

    import common.tfrecord  # noqa: F401  (imports TensorFlow before the clock starts)

    del argv
    f = flags.FLAGS
    config = SyntheticFaceConfig(image_size=f.image_size)
    splits = {name: getattr(f, name) for name in ("train", "val", "test") if getattr(f, name) > 0}
    start = time.perf_counter()
    written = write_synthetic_tfrecords(f.output, int(f.num_points), splits, f.seed, config,
                                        num_shards=f.num_shards, prefix=f.prefix, progress=True)
    elapsed = time.perf_counter() - start
    total = sum(splits.values())
    for split, paths in written.items():
        print(f"{split}: {splits[split]} faces in {len(paths)} shard(s), e.g. {paths[0]}")
    print(f"{total} faces in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} faces/s)")


def _define_flags() -> None:
    """CLI flags, defined only when run as a script (library code reads no flags)."""
    from absl import flags

    flags.DEFINE_string("output", None, "Folder for the TFRecord shards.", required=True)
    flags.DEFINE_enum("num_points", "68", ["68", "5"], "Landmarks per face: 68 (iBUG) or 5 (CUHK).")
    flags.DEFINE_integer("train", 2000, "Faces in the train split.", lower_bound=0)
    flags.DEFINE_integer("val", 200, "Faces in the val split.", lower_bound=0)
    flags.DEFINE_integer("test", 200, "Faces in the test split.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Data set seed.", lower_bound=0)
    flags.DEFINE_integer("image_size", SyntheticFaceConfig.image_size,
                         "Image side in pixels.", lower_bound=32)
    flags.DEFINE_integer("num_shards", 1, "Shards per split.", lower_bound=1)
    flags.DEFINE_string("prefix", "synthetic", "Shard file name prefix.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
