"""The TFRecord schema written by ``common.prepare`` and ``common.synthetic``.

One ``tf.train.Example`` per face:

=====================  =========  ============================================
key                    type       meaning
=====================  =========  ============================================
image/encoded          bytes      the image file's bytes (JPEG or PNG)
image/height           int64      image height in pixels
image/width            int64      image width in pixels
landmarks              float[2N]  x0, y0, x1, y1, ... 0-based pixels
num_landmarks          int64      N
box                    float[4]   face box left, top, right, bottom (pixels)
box/source             bytes      "given", "dlib" or "landmarks"
split                  bytes      split name ("train", "val", "common", ...)
source_path            bytes      original image path (and line) for tracing
attributes             int64[]    optional attributes (MTFL), may be empty
=====================  =========  ============================================

Shards are named ``{prefix}-{split}-{shard:05d}-of-{num_shards:05d}.tfrecord``.
"""

from __future__ import annotations

import glob
import json
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

BOX_SOURCES = ("given", "dlib", "landmarks")


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def serialize_face(image_bytes: bytes, height: int, width: int, landmarks: np.ndarray,
                   box: np.ndarray, box_source: str = "given", split: str = "",
                   source_path: str = "", attributes=()) -> bytes:
    """Serialises one face into a ``tf.train.Example`` (see the module docstring)."""
    if box_source not in BOX_SOURCES:
        raise ValueError(f"box_source must be one of {BOX_SOURCES}, got {box_source!r}")
    landmarks = np.asarray(landmarks, np.float32).reshape(-1, 2)
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": _bytes([image_bytes]),
        "image/height": _ints([int(height)]),
        "image/width": _ints([int(width)]),
        "landmarks": _floats(landmarks.reshape(-1).tolist()),
        "num_landmarks": _ints([landmarks.shape[0]]),
        "box": _floats(np.asarray(box, np.float32).reshape(4).tolist()),
        "box/source": _bytes([box_source.encode()]),
        "split": _bytes([split.encode()]),
        "source_path": _bytes([source_path.encode()]),
        "attributes": _ints([int(a) for a in attributes]),
    }))
    return example.SerializeToString()


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "landmarks": tf.io.VarLenFeature(tf.float32),
    "num_landmarks": tf.io.FixedLenFeature([], tf.int64),
    "box": tf.io.FixedLenFeature([4], tf.float32),
    "box/source": tf.io.FixedLenFeature([], tf.string, default_value=b"given"),
    "split": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "source_path": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "attributes": tf.io.VarLenFeature(tf.int64),
}


def decode_face_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes stored JPEG/PNG bytes to RGB uint8 [H, W, 3] exactly as OpenCV does.

    JPEGs use the accurate integer DCT, which matches ``common.images.load_image``
    (cv2) bit for bit; TF's default fast DCT differs by up to ~20 grey levels, which
    would make training pixels differ from evaluation/prediction pixels.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(encoded, channels=3))
    return tf.ensure_shape(image, [None, None, 3])


def parse_face(serialized: tf.Tensor, num_landmarks: int | None = None) -> dict:
    """Parses one serialised face into tensors (graph-compatible).

    Args:
        serialized: scalar string tensor.
        num_landmarks: when given, the static landmark count (68 or 5).

    Returns:
        dict with ``image`` uint8 [H, W, 3] RGB, ``landmarks`` float32 [N, 2],
        ``box`` float32 [4], ``box_source``, ``split``, ``source_path`` strings and
        ``attributes`` int64 [K].
    """
    f = tf.io.parse_single_example(serialized, _FEATURES)
    image = decode_face_image(f["image/encoded"])
    landmarks = tf.reshape(tf.sparse.to_dense(f["landmarks"]), [-1, 2])
    if num_landmarks is not None:
        landmarks = tf.ensure_shape(landmarks, [num_landmarks, 2])
    return {
        "image": image,
        "landmarks": landmarks,
        "box": f["box"],
        "box_source": f["box/source"],
        "split": f["split"],
        "source_path": f["source_path"],
        "attributes": tf.sparse.to_dense(f["attributes"]),
    }


def shard_name(output_dir: str, prefix: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(output_dir, f"{prefix}-{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


DATASET_INFO = "dataset.json"


def split_aliases(data_dir: str) -> dict[str, list[str]]:
    """Split aliases declared in ``data_dir/dataset.json`` (e.g. 300-W "full")."""
    path = os.path.join(data_dir, DATASET_INFO)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return dict(json.load(f).get("aliases", {}))


def find_shards(data: str, split: str | None = None) -> list[str]:
    """Lists the TFRecord shards of ``split`` in a folder (or expands a glob/file).

    A split may be an alias declared in the folder's ``dataset.json`` (the 300-W
    "full" set is the union of "common" and "challenging", MSRRN paper, "Datasets").

    Raises:
        FileNotFoundError: when nothing matches, naming what was looked for.
    """
    if os.path.isdir(data):
        if split and split in split_aliases(data):
            return sorted(f for part in split_aliases(data)[split]
                          for f in find_shards(data, part))
        pattern = os.path.join(data, f"*-{split}-*.tfrecord" if split else "*.tfrecord")
    else:
        pattern = data
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern!r}"
                                + (f" (split {split!r})" if split else ""))
    return files


class ShardWriter:
    """Writes serialised examples round-robin into ``num_shards`` shards, atomically.

    Shards are written under temporary names and renamed only by ``close()`` after a
    successful run, so an interrupted conversion never leaves output that looks
    complete. Use as a context manager; on an exception the temporary files are
    removed.
    """

    def __init__(self, output_dir: str, prefix: str, split: str, num_shards: int = 1):
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        os.makedirs(output_dir, exist_ok=True)
        self.final = [shard_name(output_dir, prefix, split, i, num_shards)
                      for i in range(num_shards)]
        self.tmp = [p + ".tmp" for p in self.final]
        self._writers = [tf.io.TFRecordWriter(p) for p in self.tmp]
        self.count = 0

    def write(self, serialized: bytes) -> None:
        self._writers[self.count % len(self._writers)].write(serialized)
        self.count += 1

    def close(self, commit: bool = True) -> list[str]:
        for w in self._writers:
            w.close()
        if commit:
            for tmp, final in zip(self.tmp, self.final):
                os.replace(tmp, final)
            return list(self.final)
        for tmp in self.tmp:
            if os.path.exists(tmp):
                os.remove(tmp)
        return []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(commit=exc_type is None)
        return False


class Face(NamedTuple):
    """One face as the peers see it (unpacks as ``image, landmarks, box, source_path``).

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        landmarks: float32 ``[L, 2]`` (x, y) pixels.
        box: float32 ``[4]`` face box (left, top, right, bottom) in pixels.
        source_path: the record's original image path, for tracing.
    """

    image: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    source_path: str
