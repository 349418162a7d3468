"""The renderer of ``common.synthetic``: background, body, face, features, shading,
occluders and image degradation, drawn with OpenCV from the projected points.

Private to ``common.synthetic`` (step 3 of its docstring); the names here may change
with the generator (``common.synthetic.GENERATOR_VERSION``).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from common.synthetic import SyntheticFaceConfig

_SHIFT = 4  # OpenCV fixed-point bits: drawing at 1/16 pixel keeps features exact.
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


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
