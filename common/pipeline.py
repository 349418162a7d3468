"""The ``tf.data`` input pipeline shared by both models (training and evaluation).

``make_dataset`` reads the TFRecord shards of one split (``common.tfrecord``), crops
every face with ``common.geometry`` and yields ``(inputs, targets)`` batches (see
``docs/DESIGN.md``). Evaluation (``training=False``) runs exactly
``common.geometry.preprocess_faces``, the function the exported model wraps.

Training augmentation (``AugmentConfig``) consists of pure graph functions of explicit
arguments. Each example's random draws come from a stateless seed
``(seed, position in the shuffled, repeated stream)``, so a run with a fixed ``seed``
is reproducible and every epoch still sees new draws. Per example, in order:

1. box jitter of the face box (``jitter_boxes``: centre shift, scale and aspect over
   the ranges of ``AugmentConfig.box_ranges``, e.g. the detector variance of
   ``common.box_perturbation``), then the crop box
   (``crop_boxes_from_face_boxes``);
2. one resampling of the crop at the largest size with a random rotation and flip
   (``crop_faces``); the landmarks get the same rotation/flip and a flipped face's
   left/right indices are swapped with the scheme's flip permutation;
3. brightness and contrast on that crop, then area downscaling to the other sizes
   (so every scale shows the same face with the same photometry);
4. Gaussian pixel noise, drawn independently for every scale, and clipping to 0..255.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from common import geometry
from common.box_perturbation import BoxRanges
from common.schemes import scheme_for
from common.tfrecord import find_shards, parse_face

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; the defaults mean "no augmentation".

    Attributes:
        rotation_deg: (low, high) in-plane rotation in degrees, uniform,
            counter-clockwise as displayed. MSRRN (Wang et al. 2017, "Experimental
            settings"): ``(-15, 15)``; CCNN ("left 15-degree and right 12-degree
            center rotation"): ``(-15, 12)``.
        rotation_choices_deg: when not empty, the rotation is drawn uniformly from
            these angles (degrees) instead of from ``rotation_deg``; e.g. CCNN's
            three discrete poses ``(0, -15, 12)``.
        flip_prob: probability of a horizontal flip (MSRRN and CCNN flip; 0.5).
        noise_sigma: standard deviation of per-pixel Gaussian noise in grey levels of
            0..255 (MSRRN: 0.5).
        brightness: largest brightness change in grey levels; the change is uniform
            in ``[-brightness, brightness]``.
        contrast: (low, high) contrast factor, uniform; pixel values are scaled about
            the crop's per-channel mean.
        box_shift: largest shift of the face box centre, a fraction of the box width
            (x) and height (y), uniform and independent per axis: the symmetric
            shorthand of ``box_shift_x = box_shift_y = (-box_shift, box_shift)``.
        box_scale: largest relative change of the face box size: the factor is
            uniform in ``[1 - box_scale, 1 + box_scale]``; the symmetric shorthand of
            ``box_scale_range``.
        box_shift_x: (low, high) shift of the face box centre, a fraction of the box
            width, positive to the right (the ranges of ``common.box_perturbation``).
            ``(0, 0)``: ``box_shift`` decides.
        box_shift_y: (low, high) shift of the centre, a fraction of the box height,
            positive downwards. ``(0, 0)``: ``box_shift`` decides.
        box_scale_range: (low, high) factor of both box sides (so of the square crop's
            side). ``(1, 1)``: ``box_scale`` decides.
        box_aspect_range: (low, high) factor of the box's height/width ratio.

    A shorthand and its explicit range cannot both be set. Every range is uniform and
    relative to the stored face box; ``box_ranges`` gives the ranges in effect.
    """

    rotation_deg: tuple[float, float] = (0.0, 0.0)
    rotation_choices_deg: tuple[float, ...] = ()
    flip_prob: float = 0.0
    noise_sigma: float = 0.0
    brightness: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    box_shift: float = 0.0
    box_scale: float = 0.0
    box_shift_x: tuple[float, float] = (0.0, 0.0)
    box_shift_y: tuple[float, float] = (0.0, 0.0)
    box_scale_range: tuple[float, float] = (1.0, 1.0)
    box_aspect_range: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        # Lists (e.g. from JSON) become tuples so that configs compare and hash.
        for name in ("rotation_deg", "contrast", "rotation_choices_deg", "box_shift_x",
                     "box_shift_y", "box_scale_range", "box_aspect_range"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("rotation_deg", "contrast"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"AugmentConfig.{name} must be (low, high), "
                                 f"got {getattr(self, name)}")
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"AugmentConfig.{name} must be (low, high), got {(low, high)}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.contrast[0] < 0.0:
            raise ValueError(f"AugmentConfig.contrast must be >= 0, got {self.contrast}")
        for name in ("noise_sigma", "brightness", "box_shift"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.box_scale < 1.0:
            raise ValueError(f"AugmentConfig.box_scale must be in [0, 1), got {self.box_scale}")
        if self.box_shift and (self.box_shift_x != (0.0, 0.0) or self.box_shift_y != (0.0, 0.0)):
            raise ValueError("AugmentConfig: set box_shift or box_shift_x/box_shift_y, not both")
        if self.box_scale and self.box_scale_range != (1.0, 1.0):
            raise ValueError("AugmentConfig: set box_scale or box_scale_range, not both")
        self.box_ranges  # noqa: B018 (validates the ranges)

    @property
    def box_ranges(self) -> BoxRanges:
        """The face-box perturbation in effect (shorthands expanded), validated.

        Raises:
            ValueError: a range is not ``(low, high)`` or a factor is not positive.
        """
        symmetric = (-self.box_shift, self.box_shift)
        try:
            return BoxRanges(
                shift_x=self.box_shift_x if self.box_shift_x != (0.0, 0.0) else symmetric,
                shift_y=self.box_shift_y if self.box_shift_y != (0.0, 0.0) else symmetric,
                scale=(self.box_scale_range if self.box_scale_range != (1.0, 1.0)
                       else (1.0 - self.box_scale, 1.0 + self.box_scale)),
                aspect=self.box_aspect_range)
        except ValueError as error:
            raise ValueError(f"AugmentConfig box ranges: {error}") from None

    @property
    def is_identity(self) -> bool:
        """True when this configuration changes nothing."""
        return not (self.rotates or self.flip_prob or self.noise_sigma or self.brightness
                    or self.contrast != (1.0, 1.0) or not self.box_ranges.is_identity)

    @property
    def rotates(self) -> bool:
        """True when faces may be rotated."""
        return any(self.rotation_choices_deg) or (
            not self.rotation_choices_deg and self.rotation_deg != (0.0, 0.0))


def _resolve_files(data: str | os.PathLike | Sequence[str | os.PathLike], split: str,
                   ) -> list[str]:
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        files.extend(find_shards(item, split) if os.path.isdir(item) else find_shards(item))
    return files


def _augment_example(image: tf.Tensor, box: tf.Tensor, landmarks: tf.Tensor,
                     seed: tf.Tensor, *, sizes: Sequence[int], margin: float,
                     augment: AugmentConfig, flip_permutation: Sequence[int] | None,
                     ) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
    """Augmented crops of a batch of faces (the training counterpart of
    ``preprocess_faces``), with its normalised landmarks and crop boxes.

    Args:
        image: uint8 ``[N, H, W, 3]``.
        box: float32 ``[N, 4]`` face boxes.
        landmarks: float32 ``[N, L, 2]`` pixels.
        seed: int64 ``[2]`` stateless seed; the result is a pure function of it.
        sizes, margin: as in ``preprocess_faces``.
        augment: the augmentation.
        flip_permutation: the scheme's flip permutation.

    Returns:
        (inputs dict, normalised landmarks ``[N, L, 2]``, crop boxes ``[N, 4]``).
    """
    seeds = tf.random.experimental.stateless_split(seed, 7)
    n = tf.shape(image)[0]
    ranges = augment.box_ranges
    if not ranges.is_identity:
        box = geometry.jitter_boxes(box, ranges.scale, ranges.shift_x, seeds[0],
                                    shift_y_range=ranges.shift_y, aspect_range=ranges.aspect)
    crop_boxes = geometry.crop_boxes_from_face_boxes(box, margin)
    angles = None
    if augment.rotates and augment.rotation_choices_deg:
        choices = tf.constant(augment.rotation_choices_deg, tf.float32)
        pick = tf.random.stateless_uniform([n], seeds[1], 0, len(augment.rotation_choices_deg),
                                           dtype=tf.int32)
        angles = tf.gather(choices, pick) * (math.pi / 180.0)
    elif augment.rotates:
        low, high = augment.rotation_deg
        angles = tf.random.stateless_uniform([n], seeds[1], low, high) * (math.pi / 180.0)
    flips = None
    if augment.flip_prob > 0.0:
        flips = tf.random.stateless_uniform([n], seeds[2]) < augment.flip_prob

    crop = geometry.crop_faces(image, crop_boxes, max(sizes), angles=angles, flips=flips)
    if augment.contrast != (1.0, 1.0):
        factor = tf.random.stateless_uniform([n, 1, 1, 1], seeds[3], *augment.contrast)
        mean = tf.reduce_mean(crop, axis=[1, 2], keepdims=True)
        crop = (crop - mean) * factor + mean
    if augment.brightness > 0.0:
        crop += tf.random.stateless_uniform([n, 1, 1, 1], seeds[4], -augment.brightness,
                                            augment.brightness)
    crop = tf.clip_by_value(crop, 0.0, 255.0)
    inputs = {}
    noise_seeds = tf.random.experimental.stateless_split(seeds[5], len(sizes))
    for i, size in enumerate(sizes):
        scaled = geometry.resize_area(crop, size)
        if augment.noise_sigma > 0.0:
            noise = tf.random.stateless_normal(tf.shape(scaled), noise_seeds[i],
                                               stddev=augment.noise_sigma)
            scaled = tf.clip_by_value(scaled + noise, 0.0, 255.0)
        inputs[f"image_{size}"] = scaled

    targets = geometry.image_to_crop(landmarks, crop_boxes)
    if angles is not None or flips is not None:
        targets = geometry.transform_crop_landmarks(targets, angles, flips, flip_permutation)
    return inputs, targets, crop_boxes


SHUFFLE_MEMORY_BYTES = 2 * 1024 ** 3
"""Default memory budget of the training shuffle buffer (serialised records)."""


def shuffle_buffer_size(files: Sequence[str], memory_bytes: int = SHUFFLE_MEMORY_BYTES,
                        minimum: int = 1000) -> int:
    """Records of a training shuffle buffer that mixes the whole split when it fits.

    Converted lists keep their source order (a folder of one identity's video frames,
    LFW faces before web faces), so a buffer of a few thousand records would feed
    training long runs of one identity or source. The buffer therefore holds every
    record of ``files`` when their serialised size fits in ``memory_bytes``; above
    that, as many records as fit (at the first file's mean record size), but at
    least ``minimum``.

    Args:
        files: the TFRecord files of the split (of this input pipeline).
        memory_bytes: memory budget of the buffer.
        minimum: smallest buffer returned.

    Returns:
        The buffer size in records.
    """
    if not files:
        return minimum
    sizes = [tf.io.gfile.stat(f).length for f in files]
    counted = files if sum(sizes) <= memory_bytes else files[:1]
    records = sum(1 for f in counted for _ in tf.data.TFRecordDataset(f))
    if counted is files:
        return max(records, 1)
    per_record = max(sizes[0] / max(records, 1), 1.0)
    return max(minimum, int(memory_bytes / per_record))


def _record_stream(files: Sequence[str], *, training: bool, shard: tuple[int, int],
                   seed: int | None, cache: bool | str, shuffle_buffer: int | None,
                   repeat: bool) -> tf.data.Dataset:
    """Serialised records of ``files``: sharded, and for training cached, shuffled, repeated.

    Args are those of ``make_dataset`` (``shard`` = ``(num_pipelines, pipeline_id)``).
    """
    num_pipelines, pipeline_id = shard
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    shard_records = num_pipelines > 1 and not shard_files
    if shard_files:
        files = files[pipeline_id::num_pipelines]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    # Record sharding needs the same file order in every pipeline: no file shuffle.
    if training and not shard_records:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    if shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
        if cache:
            dataset = dataset.cache("" if cache is True else cache)
        if shuffle_buffer is None:
            shuffle_buffer = shuffle_buffer_size(files)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    return dataset


def parse_data_spec(spec: str | Sequence[str]) -> tuple[list[str], list[float] | None]:
    """Data folders and optional sampling weights from ``"a:0.7,b:0.3"`` (or a list).

    Args:
        spec: comma-separated folders (or a list of them), each optionally followed by
            ``:WEIGHT``; either every folder has a weight or none has.

    Returns:
        ``(folders, weights)``; ``weights`` is ``None`` when none is given.

    Raises:
        ValueError: a weight that is not a non-negative number, or weights on only
            some folders.
    """
    items = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [p for p in items if p]
    if not items:
        raise ValueError("no data folder given")
    folders, weights = [], []
    for item in items:
        head, sep, tail = item.rpartition(":")
        # "gs://bucket/x" or "C:\\data" is a folder, not a weight.
        if sep and head and not os.path.exists(item) and not {"/", "\\"} & set(tail):
            try:
                weight = float(tail)
            except ValueError:
                raise ValueError(f"bad weight {tail!r} in data spec {item!r}; expected "
                                 "FOLDER or FOLDER:WEIGHT") from None
            if not weight >= 0.0:
                raise ValueError(f"weight of {head!r} must be >= 0, got {tail}")
            folders.append(head)
            weights.append(weight)
        else:
            folders.append(item)
    if weights and len(weights) != len(folders):
        raise ValueError(f"give a weight for every data folder or for none: {items}")
    return folders, (weights or None)


def make_dataset(data: str | os.PathLike | Sequence[str | os.PathLike], split: str, *,
                 sizes: Sequence[int], num_landmarks: int, margin: float, batch_size: int,
                 training: bool, augment: AugmentConfig | None = None,
                 flip_permutation: Sequence[int] | None = None,
                 shuffle_buffer: int | None = None,
                 repeat: bool | None = None, seed: int | None = None, with_meta: bool = False,
                 cache: bool | str = False, drop_remainder: bool | None = None,
                 shard: tuple[int, int] | None = None,
                 weights: Sequence[float] | None = None) -> tf.data.Dataset:
    """Batches of cropped faces and normalised landmarks from TFRecord shards.

    Args:
        data: a folder of shards (``find_shards(data, split)``), a glob or file, or
            a list of those.
        split: split name in the shard file names ("train", "val", "common", ...).
        sizes: input sides, e.g. ``(50, 100, 200)`` (MSRRN) or ``(39,)``.
        num_landmarks: points per face (68 or 5); records must match.
        margin: crop margin (``common.geometry.crop_boxes_from_face_boxes``).
        batch_size: faces per batch.
        training: shuffle and augment (otherwise deterministic evaluation order and
            ``preprocess_faces`` crops).
        augment: augmentation, used only when ``training``; ``None`` for none.
        flip_permutation: left/right permutation for flips; default
            ``scheme_for(num_landmarks).flip_permutation``.
        shuffle_buffer: records in the shuffle buffer (training); default
            ``shuffle_buffer_size(files)``: the whole split when it fits in 2 GiB.
        repeat: repeat forever; default ``training``.
        seed: seed of the shuffles and augmentation draws; ``None`` for a fresh one.
        with_meta: also yield a third dict: ``crop_box`` [B, 4] (the crop actually
            used), ``box`` [B, 4] (the record's face box), ``landmarks_px`` [B, L, 2]
            (the record's landmarks, before any augmentation), ``image_size`` int32
            [B, 2] (height, width), ``source_path`` string [B].
        cache: ``True`` to cache in memory, or a file name prefix. Evaluation caches
            the finished crops; training caches the serialised records (the crops
            change every epoch).
        drop_remainder: drop a last partial batch; default ``training``.
        shard: ``(num_pipelines, pipeline_id)`` to read only this input pipeline's
            part of the data (``tf.distribute.InputContext.num_input_pipelines`` and
            ``.input_pipeline_id``): whole files when there are at least
            ``num_pipelines`` files, else every ``num_pipelines``-th record.
            ``batch_size`` is then this pipeline's batch. Augmentation draws differ
            between pipelines.
        weights: with ``data`` a list of several data sets and ``training``, the
            probability of drawing a training face from each (normalised to sum to
            1; ``parse_data_spec`` reads them from ``"a:0.7,b:0.3"``): every data set
            is shuffled and repeated on its own and the faces are sampled from them
            by these weights. ``None`` (default) reads the data sets as one, in
            proportion to their sizes. Evaluation ignores it.

    Returns:
        ``tf.data.Dataset`` of ``(inputs, targets)`` or ``(inputs, targets, meta)``
        with ``inputs = {f"image_{s}": float32 [B, s, s, 3]}`` (0..255) and
        ``targets = {"landmarks": float32 [B, L, 2]}`` (normalised crop coordinates).
    """
    sizes = tuple(int(s) for s in sizes)
    if not sizes:
        raise ValueError("sizes must not be empty")
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    augment = augment if training and augment is not None and not augment.is_identity else None
    if augment is not None and augment.flip_prob > 0.0 and flip_permutation is None:
        flip_permutation = scheme_for(num_landmarks).flip_permutation
    if flip_permutation is not None and len(flip_permutation) != num_landmarks:
        raise ValueError(f"flip_permutation has {len(flip_permutation)} entries, "
                         f"expected {num_landmarks}")
    if seed is None:
        base_seed = int(np.random.default_rng().integers(2**31 - 1))
        shuffle_seed = None
    else:
        base_seed = shuffle_seed = int(seed)

    num_pipelines, pipeline_id = shard or (1, 0)
    if not 0 <= pipeline_id < num_pipelines:
        raise ValueError(f"shard must be (num_pipelines, pipeline_id), got {shard}")

    cache_name = "" if cache is True else (cache or "")
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if weights is not None and training:
        if len(weights) != len(items):
            raise ValueError(f"{len(weights)} weights for {len(items)} data sets {items}")
        total = float(sum(weights))
        if not all(w >= 0.0 for w in weights) or total <= 0.0:
            raise ValueError(f"data set weights must be >= 0 with a positive sum, got "
                             f"{list(weights)}")
        streams = [_record_stream(_resolve_files(item, split), training=True,
                                  shard=(num_pipelines, pipeline_id), seed=shuffle_seed,
                                  cache=f"{cache_name}-{i}" if cache_name else cache,
                                  shuffle_buffer=shuffle_buffer, repeat=True)
                   for i, item in enumerate(items)]
        dataset = tf.data.Dataset.sample_from_datasets(
            streams, weights=[w / total for w in weights], seed=shuffle_seed)
    else:
        dataset = _record_stream(_resolve_files(data, split), training=training,
                                 shard=(num_pipelines, pipeline_id), seed=shuffle_seed,
                                 cache=cache, shuffle_buffer=shuffle_buffer, repeat=repeat)
    # The example's index in the (shuffled, repeated) stream seeds its augmentation.
    dataset = dataset.enumerate()

    def example(index: tf.Tensor, serialized: tf.Tensor):
        face = parse_face(serialized, num_landmarks)
        image = face["image"][None]
        box = face["box"][None]
        landmarks = face["landmarks"][None]
        if augment is None:
            inputs, crop_boxes = geometry.preprocess_faces(image, box, sizes, margin)
            targets = geometry.image_to_crop(landmarks, crop_boxes)
        else:
            stream = index * num_pipelines + pipeline_id  # unique across pipelines
            seed_pair = tf.stack([tf.constant(base_seed, tf.int64), stream])
            inputs, targets, crop_boxes = _augment_example(
                image, box, landmarks, seed_pair, sizes=sizes, margin=margin,
                augment=augment, flip_permutation=flip_permutation)
        inputs = {k: v[0] for k, v in inputs.items()}
        outputs = (inputs, {"landmarks": targets[0]})
        if with_meta:
            meta = {
                "crop_box": crop_boxes[0],
                "box": face["box"],
                "landmarks_px": face["landmarks"],
                "image_size": tf.shape(face["image"])[:2],
                "source_path": face["source_path"],
            }
            outputs += (meta,)
        return outputs

    dataset = dataset.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
    if not training:
        if cache:
            dataset = dataset.cache(cache_name)
        if repeat:
            dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(AUTOTUNE)
