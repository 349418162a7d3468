"""Converts an annotated face list into sharded TFRecords (``common.tfrecord`` schema).

Usage::

    python -m common.prepare --input=/path/to/ytf68/landmarks.csv \\
        --output=/tmp/data/ytf68 --split_by=identity --val_fraction=0.1

What ends up in ``--output``:

* ``{prefix}-{split}-{i:05d}-of-{n:05d}.tfrecord``: one set of shards per split.
  A reader that has splits keeps them (300-W: ``train``, ``common``,
  ``challenging``); otherwise, or when the reader's splits are all ``train`` (a
  300-W tree of only ``afw/`` and ``helen/trainset/``), the records are split into
  ``train`` and ``val`` (``--split_by=identity|photo|random``; 300-W by photo) or
  all go to ``--split_name`` (``--split_by=none``). With ``--tune_fraction`` the
  training faces are written as ``tune_train`` and ``tune_val`` instead (a tuning
  split that shares no face, nor with ``--split_by=identity`` any identity, with
  ``val``), and ``train`` is the alias of the two.
* ``dataset.json``: counts per split, split aliases (``"full": ["common",
  "challenging"]`` when both exist, see ``SPLIT_ALIASES``), format, input, number of
  landmarks, settings, box-source counts and the skipped records. It is written
  last, so a folder without it holds no finished conversion.
* ``skipped.txt``: one ``source<TAB>reason`` line per skipped record.
* ``box_cache.json``: the boxes chosen for records without one (``common.boxes``),
  reused by a re-run.

Each face's ``source_path`` is ``"{image path} ({list file}:{line})"``.

Errors: the whole list is read (and its annotations checked) before any image is
opened. With ``on_error="fail"`` the first bad record (a reader error, then an image
that cannot be decoded, a wrong number of landmarks, landmarks far outside the image
or a given face box outside it, see ``check_inside_image``) raises ``DataError``
naming the list file and line (and the image). With ``on_error="skip"`` every bad
record is counted and named; ``written + skipped == read`` always holds.

A face listed twice (the same image with the same landmarks) is dropped and counted
(``duplicates`` in ``dataset.json``, and among the skipped records), or with
``--on_duplicate=fail`` stops the conversion at the repeat's line. No face is thus in
two splits, and ``--split_by=random`` moves whole images, so that two faces of one
photo never land in train and val.

An existing conversion in ``--output`` is replaced only by a complete new one: the
new files are written into a hidden temporary folder inside ``--output`` and moved in
at the end (``dataset.json`` last). Every failure (a bad list, a bad image, nothing
writable, a crash) therefore leaves the previous conversion as it was (a crash
during the final moves leaves a folder without ``dataset.json``, i.e. no finished
conversion). The box cache is kept in every case.

Faces without a box are detected on a copy of the image at most
``common.boxes.DETECT_MAX_SIDE`` (1,600) pixels long, as predict does, so huge photos
need little memory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np

from common import atomic, schemes, tfrecord
from common import boxes as boxes_lib
from common.records import DataError, FaceRecord

SPLIT_ALIASES = {"full": ("common", "challenging"), "train": ("tune_train", "tune_val")}
"""Split names that stand for the union of other splits (300-W "full" test set; the
training faces when a tuning split was carved from them, ``split_records``)."""

SPLIT_BY = ("identity", "photo", "random", "none")
ON_ERROR = ("skip", "fail")
ON_DUPLICATE = ("drop", "fail")
DATASET_JSON = "dataset.json"
SKIPPED_TXT = "skipped.txt"
BOX_CACHE_JSON = "box_cache.json"

_TRAILING_NUMBER = re.compile(r"_\d+$")
_LOG = logging.getLogger(__name__)


def identity_of(image_path: str) -> str:
    """The identity a face image belongs to, from its file name.

    The name without extension and without its last ``_NN`` number: ytf68 frames
    ``Luis_Fonsi_21.jpg`` -> ``Luis_Fonsi``, LFW ``Aaron_Eckhart_0001.jpg`` ->
    ``Aaron_Eckhart``. A name without such a number is its own identity.
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return _TRAILING_NUMBER.sub("", stem) or stem


def check_inside_image(record: FaceRecord, height: int, width: int) -> None:
    """Rejects a face that cannot belong to a ``height x width`` image.

    A face cut by the image border has landmarks outside the image, so points may
    lie up to ``limit = max(height, width)`` pixels outside the image rectangle
    ``[-0.5, width - 0.5] x [-0.5, height - 0.5]``; a point farther out means
    coordinates of another resolution, swapped columns or a typo. A given face box
    must overlap the image (as ``common.geometry.validate_serving_inputs`` asks).

    Raises:
        DataError: (naming the image) "landmarks outside the image" or "face box
            outside the image".
    """
    limit = max(height, width)
    points = np.asarray(record.landmarks, np.float64).reshape(-1, 2)
    outside = ((points[:, 0] < -0.5 - limit) | (points[:, 0] > width - 0.5 + limit)
               | (points[:, 1] < -0.5 - limit) | (points[:, 1] > height - 0.5 + limit))
    if outside.any():
        i = int(np.argmax(outside))
        x, y = points[i]
        raise DataError(record.image_path, f"landmarks outside the image: point {i} at "
                        f"({x:g}, {y:g}) is more than {limit} px outside the "
                        f"{width}x{height} image")
    if record.box is not None:
        left, top, right, bottom = (float(v) for v in record.box)
        if not (left < width - 0.5 and right > -0.5 and top < height - 0.5
                and bottom > -0.5):
            raise DataError(record.image_path, "face box outside the image: (left "
                            f"{left:g}, top {top:g}, right {right:g}, bottom {bottom:g}) "
                            f"does not overlap the {width}x{height} image")


def _image_key(image_path: str) -> str:
    return os.path.normcase(os.path.abspath(image_path))


def find_duplicates(records: Sequence[FaceRecord]
                    ) -> list[tuple[int, int]]:
    """Faces given twice: the same image with the same landmarks (to 1e-3 px).

    Args:
        records: the faces, in reading order.

    Returns:
        ``(index of the repeat, index of its first occurrence)`` for every repeat.
    """
    first: dict[tuple[str, bytes], int] = {}
    repeats = []
    for i, record in enumerate(records):
        points = np.round(np.asarray(record.landmarks, np.float64), 3) + 0.0  # no -0.0
        key = (_image_key(record.image_path), points.tobytes())
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    return repeats


def _carve(records: Sequence[FaceRecord], indices: Sequence[int], split_by: str,
           fraction: float, rng: np.random.Generator) -> set[int]:
    """The members of ``indices`` that go to a held-out split (see ``split_records``)."""
    n = len(indices)
    target = fraction * n
    groups: dict[str, list[int]] = collections.defaultdict(list)
    if split_by == "random":
        # Whole images (all the faces of one photo go together), in reading order; with
        # one face per image this is a random count of faces.
        for i in indices:
            groups[_image_key(records[i].image_path)].append(i)
        names = list(groups)
        target = min(max(round(target), 1), n - 1) if n > 1 else 0
    else:
        # "identity" and "photo" group by the same name: 300-W's NAME_1.jpg, NAME_2.jpg
        # (the faces of one photo) are the photo NAME, as ytf68's frames are a person.
        for i in indices:
            groups[identity_of(records[i].image_path)].append(i)
        names = sorted(groups)
    if len(names) < 2:
        _LOG.warning("only one %s: no held-out split",
                     "image" if split_by == "random" else split_by)
        return set()
    chosen: set[int] = set()
    for k in rng.permutation(len(names))[:-1]:  # the last identity always trains
        if len(chosen) >= target:
            break
        chosen.update(groups[names[k]])
    return chosen


def split_records(records: Sequence[FaceRecord], split_by: str = "identity",
                  val_fraction: float = 0.1, seed: int = 0,
                  split_name: str = "train", tune_fraction: float = 0.0) -> list[str]:
    """Assigns a split name to each record.

    Args:
        records: the faces, in reading order.
        split_by: ``"identity"``: whole identities (``identity_of``) go to ``val``
            until it holds at least ``val_fraction`` of the records, so no identity
            is in both splits; ``"photo"``: the same grouping under the name that
            fits 300-W, whose faces of one photo are ``NAME_1.jpg``, ``NAME_2.jpg``
            (``identity_of`` gives ``NAME``); ``"random"``: seeded random images
            (all faces of an image file together) until ``val`` holds
            ``val_fraction`` of the records; ``"none"``: every record gets
            ``split_name``. Records whose reader gave them a split keep it,
            whatever ``split_by`` says; when those splits hold no evaluation split
            (every record "train", e.g. a 300-W tree of only ``afw/`` and
            ``helen/trainset/``), ``val`` is carved from them as from a list
            without splits. A full 300-W tree (``common``, ``challenging``) keeps
            the paper's splits and gets no ``val``.
        val_fraction: wanted fraction of records in ``val``, in [0, 1).
        seed: random seed (identity order or record order).
        split_name: the split of every record for ``split_by="none"``.
        tune_fraction: when > 0, the ``"train"`` records are split again, the same
            way (whole identities or random faces, another seeded draw), into
            ``"tune_train"`` and ``"tune_val"`` (about ``tune_fraction`` of the
            training faces): a tuning split that shares nothing with ``val``, for
            choosing settings without looking at ``val`` (``prepare_dataset``
            declares ``"train"`` as the alias of the two). ``val`` is the same as
            with ``tune_fraction=0``.

    Returns:
        one split name per record (``"train"``/``"val"``, the reader's, or
        ``"tune_train"``/``"tune_val"`` in place of ``"train"``).
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 <= tune_fraction < 1.0:
        raise ValueError(f"tune_fraction must be in [0, 1), got {tune_fraction}")
    if tune_fraction and split_by == "none":
        raise ValueError("tune_fraction needs split_by 'identity' or 'random', got 'none'")
    n = len(records)
    if any(r.split for r in records):
        splits = [r.split or split_name for r in records]
    elif split_by == "none":
        splits = [split_name] * n
    else:
        splits = ["train"] * n
    if val_fraction > 0.0 and split_by != "none" and n and set(splits) == {"train"}:
        # No evaluation split: none from the reader (e.g. a partial 300-W tree of
        # only training subsets) or no reader splits at all.
        train = range(n)
        val = _carve(records, train, split_by, val_fraction, np.random.default_rng(seed))
        splits = ["val" if i in val else "train" for i in train]
    if tune_fraction:
        train = [i for i, split in enumerate(splits) if split == "train"]
        tune = _carve(records, train, split_by, tune_fraction,
                      np.random.default_rng([seed, 1]))
        if tune:
            for i in train:
                splits[i] = "tune_val" if i in tune else "tune_train"
    return splits


@dataclasses.dataclass
class PrepareSummary:
    """What a conversion did.

    Attributes:
        output_dir: the output folder.
        format: the list format read (resolved when ``"auto"`` was asked).
        input_path: the list file (or folder) read.
        num_landmarks: landmarks per face.
        read: records read, good or bad (reader errors included).
        written: faces written per split.
        skipped: ``(source, reason)`` per skipped record, in reading order.
        box_sources: faces written per box source.
        shards: shard files per split.
        detector_calls: images dlib ran on (0 on a cached re-run).
        seconds: wall time.
        duplicates: repeated faces dropped (also in ``skipped``).
    """

    output_dir: str
    format: str
    input_path: str
    num_landmarks: int
    read: int
    written: dict[str, int]
    skipped: list[tuple[str, str]]
    box_sources: dict[str, int]
    shards: dict[str, list[str]]
    detector_calls: int
    seconds: float
    duplicates: int = 0

    @property
    def num_written(self) -> int:
        return sum(self.written.values())

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """Skipped sources grouped by reason, most frequent reason first."""
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for source, reason in self.skipped:
            groups[reason].append(source)
        return dict(sorted(groups.items(), key=lambda item: -len(item[1])))

    def report(self, max_named: int = 3) -> str:
        """A human-readable summary (counts per split, skips, box sources)."""
        lines = [(f"converted {self.input_path} ({self.format}, {self.num_landmarks} "
                  f"landmarks) into {self.output_dir} in {self.seconds:.1f}s"),
                 (f"  read {self.read}, written {self.num_written}, skipped "
                  f"{len(self.skipped)} (duplicate faces dropped: {self.duplicates})")]
        for split, count in self.written.items():
            lines.append(f"  split {split}: {count} faces in {len(self.shards.get(split, []))}"
                         " shard(s)")
        lines.append("  box sources: " + ", ".join(f"{k} {v}" for k, v in self.box_sources.items())
                     + f" (detector ran on {self.detector_calls} images)")
        for reason, sources in self.skipped_by_reason().items():
            named = ", ".join(sources[:max_named]) + (", ..." if len(sources) > max_named else "")
            lines.append(f"  skipped {len(sources)}: {reason} [{named}]")
        return "\n".join(lines)


def _split_source(source: str) -> tuple[str, int | None]:
    """Splits ``"file:line"`` into (file, line); (source, None) without a line."""
    path, _, line = source.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return source, None


def _record_error(record: FaceRecord, error: Exception) -> DataError:
    """A ``DataError`` placed at the record's list line, naming the image problem."""
    path, line = _split_source(record.source or record.image_path)
    return DataError(path, str(error), line)


def _remove_previous_output(output_dir: str, prefix: str) -> None:
    """Removes a previous conversion's shards and metadata (not the box cache).

    Left in place, old shards of another ``num_shards`` or split would be picked up
    with the new ones by ``find_shards``.
    """
    if not os.path.isdir(output_dir):
        return
    pattern = re.compile(re.escape(prefix) + r"-.+-\d{5}-of-\d{5}\.tfrecord(\.tmp)?$")
    for name in os.listdir(output_dir):
        if pattern.match(name) or name in (DATASET_JSON, SKIPPED_TXT):
            os.remove(os.path.join(output_dir, name))




def prepare_dataset(input_path: str, output_dir: str, format: str = "auto",
                    prefix: str | None = None, num_shards: int = 1,
                    val_fraction: float = 0.1, split_by: str = "identity", seed: int = 0,
                    upsample: int = 1, on_error: str = "fail",
                    max_records: int | None = None, split_name: str = "train",
                    progress: bool = True, box_cache: bool = True,
                    finder=None, tune_fraction: float = 0.0,
                    on_duplicate: str = "drop", points: str | None = None
                    ) -> PrepareSummary:
    """Reads a face list and writes it as sharded TFRecords (see the module docstring).

    Args:
        input_path: the list file (or 300-W folder) to read.
        output_dir: the output folder (created). A previous conversion there with the
            same prefix is replaced only once the new one is complete: the new shards,
            ``skipped.txt`` and ``dataset.json`` are written into a hidden temporary
            folder inside it and moved in at the end, so that any failure (a bad list,
            a bad image, nothing writable, a crash) leaves the previous conversion as
            it was.
        format: ``"auto"``, ``"300w"``, ``"cuhk"``, ``"mtfl"``, ``"csv"`` or
            ``"imglab"`` (``common.readers.read_dataset``).
        prefix: shard name prefix; default: the output folder's name.
        num_shards: shards per split (each split gets at most one per face).
        val_fraction: fraction of the faces for ``val`` (see ``split_records``).
        split_by: ``"identity"``, ``"photo"``, ``"random"`` or ``"none"``
            (``split_records``); a 300-W tree split ``"random"`` is split by photo.
        seed: seed of the train/val split.
        upsample: dlib's upsampling for faces without a box.
        on_error: ``"fail"``: stop at the first bad record; ``"skip"``: skip and
            report bad records.
        max_records: convert only the first ``max_records`` faces the reader
            returns (reader errors are all counted); ``None`` for all.
        split_name: the split of every face when ``split_by="none"``.
        progress: show a progress bar on stderr.
        box_cache: keep chosen boxes in ``output_dir/box_cache.json`` and reuse it.
        finder: face detector override (tests); default dlib's.
        tune_fraction: fraction of the training faces carved out as a tuning split
            (``tune_train`` / ``tune_val``, alias ``train``; see ``split_records``).
        on_duplicate: a face given twice (same image, same landmarks,
            :func:`find_duplicates`): ``"drop"`` keeps the first and lists the repeat
            among the skipped records (``PrepareSummary.duplicates`` counts them);
            ``"fail"`` raises ``DataError`` at the repeat's line.
        points: write the landmarks in this scheme of ``common.schemes`` (``"cuhk5"``:
            68 iBUG points reduced to the 5 CUHK points by
            ``common.schemes.IBUG68_TO_CUHK5``); ``None``: as read. Boxes, checks and
            splits use the points as read, so a reduced folder has the same faces,
            boxes and splits as the full one made with the same flags.

    Returns:
        the summary (also stored in ``dataset.json``).

    Raises:
        DataError: with ``on_error="fail"``, for the first bad record (message
            ``list:line: reason``); with ``on_duplicate="fail"`` for a repeated face;
            always when nothing at all can be written.
    """
    from common.readers import read_dataset

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
    if points is not None and points not in schemes.SCHEMES:
        raise ValueError(f"points must be one of {sorted(schemes.SCHEMES)}, got {points!r}")
    start = time.monotonic()
    prefix = prefix or os.path.basename(os.path.normpath(output_dir)) or "faces"
    settings = {"format": format, "prefix": prefix, "num_shards": num_shards,
                "val_fraction": val_fraction, "split_by": split_by, "seed": seed,
                "upsample": upsample, "on_error": on_error, "max_records": max_records,
                "split_name": split_name, "tune_fraction": tune_fraction,
                "on_duplicate": on_duplicate, "points": points}

    result = read_dataset(input_path, format=format, on_error=on_error)
    records = list(result.records)
    skipped: list[tuple[str, str]] = list(result.skipped)
    if max_records is not None:
        records = records[:max_records]
    read = len(records) + len(skipped)
    if not records:
        raise DataError(input_path, f"no usable face records ({len(skipped)} skipped)")
    repeats = find_duplicates(records)
    if repeats and on_duplicate == "fail":
        repeat, original = records[repeats[0][0]], records[repeats[0][1]]
        raise _record_error(repeat, DataError(
            repeat.image_path, "the same face (image and landmarks) as "
            f"{original.source or original.image_path}; pass on_duplicate='drop' "
            "(--on_duplicate=drop) to keep only the first"))
    for repeat, original in repeats:
        first = records[original].source or records[original].image_path
        skipped.append((records[repeat].source or records[repeat].image_path,
                        f"duplicate face (same image and landmarks as {first})"))
    dropped = {repeat for repeat, _ in repeats}
    records = [r for i, r in enumerate(records) if i not in dropped]
    num_landmarks = records[0].landmarks.shape[0]
    reduce = None if points is None else schemes.reduction(num_landmarks, points)
    if result.format == "300w" and split_by == "random":
        # 300-W crops every face of a photo into its own NAME_k image file: whole image
        # files would put faces of one photo into train and val.
        _LOG.warning("300-W: --split_by=random groups the faces of one photo "
                     "(NAME_1, NAME_2, ...), i.e. --split_by=photo")
        split_by = "photo"
    settings["split_by_used"] = split_by
    splits = split_records(records, split_by, val_fraction, seed, split_name, tune_fraction)
    split_names = list(dict.fromkeys(splits))  # reading order, no repeats

    os.makedirs(output_dir, exist_ok=True)
    staging_name = os.path.join(output_dir, "conversion")
    atomic.remove_stale_temps(staging_name)  # left by conversions that were killed
    staging = atomic.make_temp_dir(staging_name)
    try:
        return _convert(records, splits, split_names, skipped, read, input_path, output_dir,
                        staging, prefix, num_shards, upsample, on_error, finder, box_cache,
                        progress, num_landmarks, result.format, settings, start,
                        len(repeats), reduce)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(records: list[FaceRecord], splits: list[str], split_names: list[str],
             skipped: list[tuple[str, str]], read: int, input_path: str, output_dir: str,
             staging: str, prefix: str, num_shards: int, upsample: int, on_error: str,
             finder, box_cache: bool, progress: bool, num_landmarks: int, list_format: str,
             settings: dict, start: float, duplicates: int,
             reduce: schemes.Reduction | None = None) -> PrepareSummary:
    """Writes the conversion into ``staging``, then moves it into ``output_dir``
    (landmarks through ``reduce`` where given)."""
    from common.images import encode_for_tfrecord, load_image

    assigner = boxes_lib.BoxAssigner(
        load_image, upsample=upsample, finder=finder,
        cache_path=os.path.join(output_dir, BOX_CACHE_JSON) if box_cache else None)
    written = {name: 0 for name in split_names}
    box_sources = {source: 0 for source in tfrecord.BOX_SOURCES}
    box_sources_by_split = {name: dict(box_sources) for name in split_names}
    bar = boxes_lib.ProgressBar(len(records), "records") if progress else None
    try:
        with contextlib.ExitStack() as stack:
            writers = {name: stack.enter_context(tfrecord.ShardWriter(
                staging, prefix, name, min(num_shards, splits.count(name))))
                for name in split_names}
            for record, split in zip(records, splits):
                try:
                    if record.landmarks.shape[0] != num_landmarks:
                        raise DataError(record.image_path, f"{record.landmarks.shape[0]} "
                                        f"landmarks, expected {num_landmarks}")
                    image_bytes, height, width = encode_for_tfrecord(record.image_path)
                    check_inside_image(record, height, width)
                    choice = assigner.choose(record)
                except DataError as e:
                    error = _record_error(record, e)
                    if on_error == "fail":
                        raise error from e
                    skipped.append((record.source or record.image_path, str(e)))
                    continue
                finally:
                    if bar:
                        bar.update()
                source_path = (f"{record.image_path} ({record.source})" if record.source
                               else record.image_path)
                writers[split].write(tfrecord.serialize_face(
                    image_bytes, height, width,
                    record.landmarks if reduce is None else reduce(record.landmarks),
                    choice.box,
                    box_source=choice.source, split=split, source_path=source_path,
                    attributes=list(record.attributes.values())))
                written[split] += 1
                box_sources[choice.source] += 1
                box_sources_by_split[split][choice.source] += 1
            if not any(written.values()):
                # Raising here makes every ShardWriter drop its temporary files.
                raise DataError(input_path, f"no face could be written ({len(skipped)} skipped)")
    finally:
        assigner.save()
        if bar:
            bar.close()

    # Empty splits (every face of them skipped) leave no shards behind.
    shards = {}
    for name, writer in writers.items():
        if written[name]:
            shards[name] = [os.path.join(output_dir, os.path.basename(p))
                            for p in writer.final]
        else:
            for path in writer.final:
                os.remove(path)
    written = {name: count for name, count in written.items() if count}
    if reduce is not None:
        num_landmarks = reduce.target.num_points
    summary = PrepareSummary(
        output_dir=output_dir, format=list_format, input_path=input_path,
        num_landmarks=num_landmarks, read=read, written=written, skipped=skipped,
        box_sources=box_sources, shards=shards, detector_calls=assigner.detector_calls,
        seconds=time.monotonic() - start, duplicates=duplicates)
    assert summary.num_written + len(skipped) == read, "counts must add up"

    with open(os.path.join(staging, SKIPPED_TXT), "w", encoding="utf-8") as f:
        f.writelines(f"{source}\t{reason}\n" for source, reason in skipped)
    aliases = {alias: list(parts) for alias, parts in SPLIT_ALIASES.items()
               if alias not in written and all(p in written for p in parts)}
    attribute_names = list(records[0].attributes)
    dataset = {
        "format": list_format,
        "input_path": os.path.abspath(input_path),
        "num_landmarks": num_landmarks,
        "prefix": prefix,
        "splits": written,
        "aliases": aliases,
        "shards": {name: [os.path.basename(p) for p in paths] for name, paths in shards.items()},
        "read": read,
        "written": summary.num_written,
        "box_sources": box_sources,
        "box_sources_by_split": {name: box_sources_by_split[name] for name in written},
        "attribute_names": attribute_names,
        "settings": settings,
        "skipped": [{"source": s, "reason": r} for s, r in skipped],
        "duplicates": duplicates,
        "seconds": round(summary.seconds, 2),
    }
    atomic.write_text(os.path.join(staging, DATASET_JSON),
                      json.dumps(dataset, indent=2) + "\n")
    _install(staging, output_dir, prefix)
    return summary


def _install(staging: str, output_dir: str, prefix: str) -> None:
    """Replaces the previous conversion in ``output_dir`` with the complete new one.

    ``dataset.json`` goes first and comes last: in between (a crash) the folder has
    none, i.e. it holds no finished conversion.
    """
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, DATASET_JSON))
    _remove_previous_output(output_dir, prefix)
    names = sorted(os.listdir(staging), key=lambda name: name == DATASET_JSON)
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))


def main(argv: Sequence[str]) -> int:
    """The ``python -m common.prepare`` entry point (flags are defined below)."""
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        summary = prepare_dataset(
            f.input, f.output, format=f.format, prefix=f.prefix, num_shards=f.num_shards,
            val_fraction=f.val_fraction, split_by=f.split_by, seed=f.seed,
            upsample=f.upsample, on_error=f.on_error, max_records=f.max_records,
            split_name=f.split_name, progress=f.progress, tune_fraction=f.tune_fraction,
            on_duplicate=f.on_duplicate, points=f.points)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.report())
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_enum("format", "auto", ["auto", "300w", "cuhk", "mtfl", "csv", "imglab"],
                      "Input format; auto guesses it from the file name and content.")
    flags.DEFINE_string("input", None, "List file (or 300-W folder) to convert.")
    flags.DEFINE_string("output", None, "Output folder for the shards and dataset.json.")
    flags.DEFINE_string("prefix", None, "Shard name prefix (default: the output folder name).")
    flags.DEFINE_integer("num_shards", 1, "Shards per split.", lower_bound=1)
    flags.DEFINE_float("val_fraction", 0.1,
                       "Fraction of faces for the val split when the format has no "
                       "evaluation split (no splits, or only train: a partial 300-W tree).",
                       lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_enum("split_by", "identity", list(SPLIT_BY),
                      "identity: whole identities (file name before the last _NN) go to val; "
                      "photo: the same grouping, named for 300-W (NAME_1.jpg, NAME_2.jpg are "
                      "faces of the photo NAME); random: seeded random image files (300-W: "
                      "photos); none: all faces in --split_name. A reader's own splits are "
                      "kept (a full 300-W tree: train, common, challenging); when they hold "
                      "only train (a partial 300-W tree), val is carved from it.")
    flags.DEFINE_string("split_name", "train",
                        "Split of every face with --split_by=none (e.g. test).")
    flags.DEFINE_float("tune_fraction", 0.0,
                       "Also split the training faces (whole identities or random faces, "
                       "as --split_by) into tune_train and tune_val, tune_val getting about "
                       "this fraction: a tuning split disjoint from val (train on "
                       "tune_train, score on tune_val, then train on 'train', their union). "
                       "val is the same as without it. 0: no tuning split.",
                       lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_integer("seed", 0, "Seed of the train/val (and tuning) split.")
    flags.DEFINE_integer("upsample", 1,
                         "dlib detector upsampling for faces without a box.", lower_bound=0)
    flags.DEFINE_enum("on_error", "fail", list(ON_ERROR),
                      "fail: stop at the first bad record; skip: skip and report bad records.")
    flags.DEFINE_enum("on_duplicate", "drop", list(ON_DUPLICATE),
                      "A face listed twice (same image, same landmarks): drop keeps the first "
                      "and counts the repeats in the summary; fail stops at the repeat.")
    flags.DEFINE_enum("points", None, sorted(schemes.SCHEMES),
                      "Write the landmarks in this scheme (cuhk5: 68 iBUG points reduced "
                      "to the 5 CUHK points, common.schemes.IBUG68_TO_CUHK5: eye centres, "
                      "nose tip 30, mouth corners 48/54). Boxes and splits are those of "
                      "the points as read. Default: as read.")
    flags.DEFINE_integer("max_records", None, "Convert only the first N faces.", lower_bound=1)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
    flags.mark_flags_as_required(["input", "output"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
