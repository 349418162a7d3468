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
import hashlib
import json
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
from common.synthetic_render import _degrade, _draw_background, _draw_occluder, _Renderer
from common.synthetic_shape import _Camera, _rotation, _sample_shape, _template_3d

GENERATOR_VERSION = 1
"""Bump whenever a change alters the generated faces: it invalidates cached data sets."""

NOSE_TIP = IBUG_68.point_names.index("nose_bridge_3")
LEFT_MOUTH_CORNER = IBUG_68.point_names.index("outer_lip_0")
RIGHT_MOUTH_CORNER = IBUG_68.point_names.index("outer_lip_6")

_SPLIT_STRIDE = 1_000_000_000
"""Indices of different splits are this far apart, so splits never share a face."""

_KNOWN_SPLIT_BLOCKS = {"train": 0, "val": 1, "test": 2}


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
