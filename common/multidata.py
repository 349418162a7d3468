"""Several converted data sets at once: the data spec, the scheme check, per-data-set scores.

A data spec names one or more ``common.prepare`` folders, each optionally with a
sampling weight: ``"data/ytf68,data/w300"`` (the training faces of both, read as one
set, i.e. in proportion to their sizes) or ``"data/ytf68:0.7,data/w300v:0.3"`` (each
training face drawn from ``ytf68`` with probability 0.7, whatever the sizes;
``common.pipeline.make_dataset(weights=...)``). The trainers
(``msrrn_tf.train``, ``ccnn_tf.train``) and ``experiments.compare_real`` take it as
``--data``; every evaluation split is scored per folder and on the union of the
folders (:func:`predict_per_dataset`, :func:`per_dataset_report`).

All folders must hold faces of one landmark scheme (:func:`check_landmark_scheme`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from common import metrics
from common.pipeline import parse_data_spec
from common.records import DataError
from common.tfrecord import DATASET_INFO, Face, find_shards, parse_face

UNION = "all"
"""The name of the union of the data sets in per-data-set reports."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One or more TFRecord folders and their optional sampling weights.

    Attributes:
        folders: the folders (or globs), in the order given.
        weights: one sampling weight per folder (not normalised), or ``None``: the
            folders are read as one data set.
    """

    folders: tuple[str, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "folders", tuple(os.fspath(f) for f in self.folders))
        if not self.folders:
            raise ValueError("no data folder given")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if len(weights) != len(self.folders):
                raise ValueError(f"{len(weights)} weights for {len(self.folders)} data "
                                 f"folders {list(self.folders)}")
            if not all(w >= 0.0 for w in weights) or sum(weights) <= 0.0:
                raise ValueError(f"data set weights must be >= 0 with a positive sum, "
                                 f"got {list(weights)}")
            object.__setattr__(self, "weights", weights)

    @classmethod
    def parse(cls, spec: str | os.PathLike | Sequence[str] | DataSpec) -> DataSpec:
        """A spec from ``"a:0.7,b:0.3"``, ``"a,b"``, one folder, a list, or a spec."""
        if isinstance(spec, DataSpec):
            return spec
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        folders, weights = parse_data_spec(spec)
        return cls(tuple(folders), None if weights is None else tuple(weights))

    @property
    def data(self) -> str | list[str]:
        """What ``make_dataset`` reads: the one folder, or the list of them."""
        return self.folders[0] if len(self.folders) == 1 else list(self.folders)

    @property
    def names(self) -> list[str]:
        """A short unique name per folder (its base name, with its parent when two
        folders share one)."""
        base = [os.path.basename(os.path.normpath(f)) or f for f in self.folders]
        names = []
        for folder, name in zip(self.folders, base):
            if base.count(name) > 1:
                parent = os.path.basename(os.path.dirname(os.path.normpath(folder)))
                name = f"{parent}/{name}"
            names.append(name)
        if len(set(names)) < len(names):  # still equal: fall back to the full paths
            names = list(self.folders)
        return names

    @property
    def probabilities(self) -> list[float] | None:
        """The weights normalised to sum to 1 (``None`` without weights)."""
        if self.weights is None:
            return None
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def __str__(self) -> str:
        if self.weights is None:
            return ",".join(self.folders)
        return ",".join(f"{f}:{w:g}" for f, w in zip(self.folders, self.weights))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"spec", "folders" (absolute), "names", "weights"}``."""
        return {"spec": str(self), "folders": [os.path.abspath(f) for f in self.folders],
                "names": self.names,
                "weights": None if self.weights is None else list(self.weights)}

    def absolute(self) -> DataSpec:
        """The same spec with absolute folder paths (what run records store)."""
        return DataSpec(tuple(os.path.abspath(f) for f in self.folders), self.weights)

    def with_split(self, split: str) -> DataSpec | None:
        """The folders that hold ``split`` (their weights kept), or ``None``."""
        keep = [i for i, f in enumerate(self.folders) if has_split(f, split)]
        if not keep:
            return None
        weights = None if self.weights is None else tuple(self.weights[i] for i in keep)
        if weights is not None and sum(weights) <= 0.0:
            weights = None
        return DataSpec(tuple(self.folders[i] for i in keep), weights)


def has_split(data: str, split: str) -> bool:
    """True when ``data`` (a folder, or a glob or file: always) has shards of ``split``."""
    if not os.path.isdir(data):
        return True
    try:
        find_shards(data, split)
    except FileNotFoundError:
        return False
    return True


def num_landmarks_of(folder: str) -> int:
    """Landmarks per face of a TFRecord folder: ``dataset.json``'s ``num_landmarks``, or
    the first record's.

    Raises:
        FileNotFoundError: no ``dataset.json`` and no shards.
    """
    info = os.path.join(folder, DATASET_INFO)
    if os.path.isdir(folder) and os.path.isfile(info):
        with open(info) as f:
            value = json.load(f).get("num_landmarks")
        if value is not None:
            return int(value)
    for serialized in tf.data.TFRecordDataset(find_shards(folder)[:1]).take(1):
        return int(parse_face(serialized)["landmarks"].shape[0])
    raise FileNotFoundError(f"{folder}: no faces in its first shard")


def check_landmark_scheme(spec: DataSpec | str | Sequence[str],
                          num_landmarks: int | None = None) -> int:
    """Checks that every folder holds faces with the same number of landmarks.

    Args:
        spec: the data spec (or what :meth:`DataSpec.parse` reads).
        num_landmarks: the number the model expects; default the first folder's.

    Returns:
        The common number of landmarks.

    Raises:
        DataError: naming the first folder whose faces have another number (and the
            folder or model it disagrees with).
    """
    spec = DataSpec.parse(spec)
    expected, reference = num_landmarks, "the model"
    for folder in spec.folders:
        count = num_landmarks_of(folder)
        if expected is None:
            expected, reference = count, folder
        elif count != expected:
            raise DataError(folder, f"faces with {count} landmarks, but {reference} has "
                            f"{expected}: every data folder of --data must use the same "
                            f"landmark scheme (68 iBUG points or 5 points)")
    return int(expected)


# --------------------------------------------------------------------------------------
# Predictions per data set
# --------------------------------------------------------------------------------------


def concat_predictions(preds: Sequence[Any]) -> Any:
    """The union of several ``common.evaluation.Predictions`` (faces in the given order).

    Outputs and per-face values present in every part are kept; the time per face
    is the face-weighted mean.
    """
    preds = list(preds)
    if not preds:
        raise ValueError("no predictions to concatenate")
    if len(preds) == 1:
        return preds[0]

    def joined(key_sets: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        keys = [k for k in key_sets[0] if all(k in d for d in key_sets)]
        return {k: np.concatenate([d[k] for d in key_sets]) for k in keys}

    faces = np.array([p.num_faces for p in preds], np.float64)
    crop_boxes = (None if any(p.crop_boxes is None for p in preds)
                  else np.concatenate([p.crop_boxes for p in preds]))
    return dataclasses.replace(
        preds[0], outputs_px=joined([p.outputs_px for p in preds]),
        true_px=np.concatenate([p.true_px for p in preds]),
        boxes=np.concatenate([p.boxes for p in preds]),
        source_paths=[s for p in preds for s in p.source_paths],
        seconds_per_face=float(np.dot(faces, [p.seconds_per_face for p in preds])
                               / max(faces.sum(), 1.0)),
        crop_boxes=crop_boxes, per_face=joined([p.per_face for p in preds]))


def predict_per_dataset(predict: Callable[[str, str], Any], spec: DataSpec | str,
                        split: str) -> dict[str, Any]:
    """Predictions of every folder that holds ``split``, plus their union.

    Args:
        predict: ``(folder, split) -> Predictions`` (e.g. a partial of
            ``common.evaluation.predict_split``).
        spec: the data spec.
        split: the split (or ``dataset.json`` alias) to predict.

    Returns:
        ``{folder name: Predictions}`` in the spec's order, then ``UNION``: the union
        (present only with two or more folders).

    Raises:
        FileNotFoundError: no folder holds ``split``.
    """
    spec = DataSpec.parse(spec)
    parts = {name: predict(folder, split) for name, folder in zip(spec.names, spec.folders)
             if has_split(folder, split)}
    if not parts:
        raise FileNotFoundError(f"no folder of {str(spec)!r} has shards of split {split!r}")
    if len(spec.folders) > 1:
        parts[UNION] = concat_predictions(list(parts.values()))
    return parts


def predict_union(predict: Callable[[str, str], Any], spec: DataSpec | str,
                  split: str) -> Any:
    """The predictions of ``split`` over all folders that hold it (one ``Predictions``)."""
    return union_of(predict_per_dataset(predict, spec, split))


def union_of(parts: Mapping[str, Any]) -> Any:
    """The union entry of :func:`predict_per_dataset`'s result (the only folder's
    predictions when there is one folder)."""
    return parts.get(UNION) or next(iter(parts.values()))


def per_dataset_scores(parts: Mapping[str, Any], spec: DataSpec | str, *,
                       output: str = "landmarks", kinds: Sequence[str] = ("inter_pupil",),
                       scheme=None) -> dict[str, Any]:
    """The mean NME of one output per data set and on their union.

    Args:
        parts: :func:`predict_per_dataset`'s result.
        spec: the data spec (for the folder paths and weights).
        output: the output scored (``"landmarks"``: the model's final shape).
        kinds: normalisers (``common.metrics.NORMALIZER_KINDS``).
        scheme: landmark scheme (default ``scheme_for(L)``).

    Returns:
        ``{name: {"folder", "num_faces", "weight" (normalised, or None), kind: mean
        NME, ...}}`` in the order of ``parts``.
    """
    spec = DataSpec.parse(spec)
    folders = dict(zip(spec.names, spec.folders))
    weights = dict(zip(spec.names, spec.probabilities or [None] * len(spec.folders)))
    table: dict[str, Any] = {}
    for name, pred in parts.items():
        row: dict[str, Any] = {
            "folder": (os.path.abspath(folders[name]) if name in folders
                       else [os.path.abspath(folders[n]) for n in parts if n in folders]),
            "num_faces": pred.num_faces, "weight": weights.get(name)}
        for kind in kinds:
            errors = metrics.nme(pred.outputs_px[output], pred.true_px, kind, scheme=scheme,
                                 boxes=pred.boxes)
            row[kind] = float(np.mean(errors))
        table[name] = row
    return table


def per_dataset_markdown(table: Mapping[str, Mapping[str, Any]], split: str,
                         kinds: Sequence[str], output: str = "landmarks") -> str:
    """A Markdown table of :func:`per_dataset_scores`: a row per data set and the union."""
    header = ("| data set | faces | training weight | "
              + " | ".join(f"{k.replace('_', '-')} NME" for k in kinds) + " |")
    lines = [f"### Split {split!r} per data set ({output})", "", header,
             "|" + "---|" * (3 + len(kinds))]
    for name, row in table.items():
        weight = "" if row.get("weight") is None else f"{row['weight']:.2f}"
        lines.append(f"| {name} | {row['num_faces']} | {weight} | "
                     + " | ".join(f"{100 * row[k]:.2f} %" for k in kinds) + " |")
    return "\n".join(lines)


def per_dataset_report(parts: Mapping[str, Any], spec: DataSpec | str, split: str, *,
                       output: str = "landmarks", kinds: Sequence[str] = ("inter_pupil",),
                       scheme=None) -> tuple[dict[str, Any], str]:
    """:func:`per_dataset_scores` and its :func:`per_dataset_markdown` table."""
    table = per_dataset_scores(parts, spec, output=output, kinds=kinds, scheme=scheme)
    return table, per_dataset_markdown(table, split, kinds, output)


def iterate_faces(data, split: str, limit: int | None = None) -> Iterator[Face]:
    """Reads the faces of a split from TFRecord shards, in file order, unaugmented.

    Args:
        data: a folder of shards (``common.tfrecord.find_shards``), a glob or a file;
            or several folders (``common.multidata.DataSpec``, ``"a,b"``): the faces
            of every folder that holds ``split``, folder after folder (the order of
            ``common.multidata.predict_per_dataset``; weights are ignored).
        split: split name in the shard file names ("train", "val", "common", ...) or
            an alias of the folder's ``dataset.json``.
        limit: read at most this many faces (of each folder); ``None`` for all.

    Yields:
        ``Face(image, landmarks, box, source_path)`` with NumPy arrays.

    Raises:
        FileNotFoundError: no shard matches.
    """
    spec = DataSpec.parse(data)
    if len(spec.folders) > 1:
        present = spec.with_split(split)
        if present is None:
            raise FileNotFoundError(f"no folder of {str(spec)!r} has split {split!r}")
        for folder in present.folders:
            yield from iterate_faces(folder, split, limit)
        return
    dataset = tf.data.TFRecordDataset(find_shards(spec.folders[0], split))
    if limit is not None:
        dataset = dataset.take(int(limit))
    dataset = dataset.map(parse_face, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for face in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        yield Face(image=face["image"], landmarks=face["landmarks"].astype(np.float32),
                   box=face["box"].astype(np.float32),
                   source_path=face["source_path"].decode("utf-8", "replace"))
