"""Readers for the landmark annotation formats, one small function per format.

Every reader takes ``(path, on_error="fail", skipped=None)`` and returns a list of
``common.records.FaceRecord`` with float32 ``(N, 2)`` landmarks in 0-based pixel
coordinates (pixel centres at integers, see docs/DESIGN.md). Readers never open
images (conversion does); image paths are resolved against the annotation file's
folder and each record's ``source`` says where it came from.

Formats (``FORMATS`` maps the names to the readers):

* ``"300w"``: the 300-W folder tree, one ``.pts`` file (1-based) per image.
* ``"cuhk"``: the list of Sun et al. (CVPR 2013),
  ``path left right top bottom x1 y1 ... x5 y5`` (0-based).
* ``"mtfl"``: the MTFL list of Zhang et al. (ECCV 2014),
  ``path x1..x5 y1..y5 gender smile glasses pose`` (1-based).
* ``"csv"``: ``image,x0,y0,x1,y1,...`` with a header row (0-based).
* ``"imglab"``: dlib's imglab XML (0-based, several faces per image).

Bad input (wrong number of fields, wrong point count, non-numeric values, NaN or
infinite coordinates or ones beyond float32, degenerate boxes (checked in float32,
as stored), MTFL attributes beyond int64) raises ``DataError`` naming the file and
line. Lines end at "\n" only (CRLF or LF) and fields are separated by ASCII
whitespace, so line numbers are those an editor shows. With ``on_error="skip"``
the face is left out instead and ``(source, reason)`` is appended to ``skipped``;
that list also receives faces a format legitimately leaves out (imglab boxes
without landmarks or marked ignore).
Problems with the annotation file as a whole (missing, unreadable, no header,
CSV that cannot be split into rows, invalid XML) always raise.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import re
import xml.parsers.expat
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from common.records import DataError, FaceRecord, inclusive_rect_to_box
from common.schemes import CUHK_5, IBUG_68

ON_ERROR = ("fail", "skip")
Skipped = list[tuple[str, str]]

# 300-W subsets and the MSRRN paper's splits (Wang et al. 2017, "Datasets"):
# train = LFPW train + HELEN train + AFW (3,148 faces), "common" = LFPW test + HELEN
# test (554), "challenging" = IBUG (135). The "full" set (689) is common +
# challenging; consumers form that union, records carry one split each.
SUBSETS_300W = (
    ("lfpw/trainset", "train"),
    ("helen/trainset", "train"),
    ("afw", "train"),
    ("lfpw/testset", "common"),
    ("helen/testset", "common"),
    ("ibug", "challenging"),
)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".bmp")
MTFL_ATTRIBUTES = ("gender", "smile", "glasses", "pose")
# Valid MTFL attribute values (README of the MTFL set); used only to recognise the
# format, not to reject records.
_MTFL_ATTRIBUTE_VALUES = ((1, 2), (1, 2), (1, 2), (1, 2, 3, 4, 5))
_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


class _BadRecord(Exception):
    """One face's annotation is unusable; ``line`` overrides the record's line."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


class _ErrorPolicy:
    """Turns a bad record into a ``DataError`` or a ``skipped`` entry."""

    def __init__(self, path: str, on_error: str, skipped: Skipped | None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path = path
        self.skip = on_error == "skip"
        self.skipped = skipped if skipped is not None else []

    @contextlib.contextmanager
    def record_at(self, line: int | None, path: str | None = None) -> Iterator[None]:
        """Context for reading one record that starts at ``path:line``."""
        try:
            yield
        except _BadRecord as e:
            self.reject(e.reason, e.line if e.line is not None else line, path)

    def reject(self, reason: str, line: int | None, path: str | None = None) -> None:
        path = path or self.path
        if not self.skip:
            raise DataError(path, reason, line)
        self.note_skip(_source(path, line), reason)

    def note_skip(self, source: str, reason: str) -> None:
        self.skipped.append((source, reason))


def _source(path: str, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else path


# ---------------------------------------------------------------------------
# Validation shared by all readers.

def _numbers(tokens: Sequence[str], what: str = "value") -> np.ndarray:
    """Parses tokens as floats (NaN and inf parse; ``_face_record`` rejects them)."""
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise _BadRecord(f"non-numeric {what} {token!r}") from None
    return np.asarray(values, dtype=np.float64)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _expect_fields(fields: Sequence[str], count: int, layout: str) -> None:
    if len(fields) != count:
        raise _BadRecord(f"wrong number of fields: expected {count} ({layout}), "
                         f"got {len(fields)}")


def _to_float32(values: np.ndarray) -> np.ndarray:
    """float64 to float32; values beyond float32 become inf (without a warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32)


def _face_record(image_path: str, points: np.ndarray, *, num_points: int | None,
                 source: str, box: Sequence[float] | None = None, split: str = "",
                 attributes: dict[str, int] | None = None) -> FaceRecord:
    """Builds a record after the checks every format shares.

    Args:
        image_path: resolved image path.
        points: ``(N, 2)`` 0-based pixel coordinates.
        num_points: the required N, or None when any N is accepted.
        source: "file:line" of the annotation.
        box: optional (left, top, right, bottom).
        split: split name.
        attributes: optional integer attributes.

    Raises:
        _BadRecord: wrong point count, non-finite values (NaN, inf, or beyond
            float32), degenerate box (checked in float32, as stored).
    """
    parsed = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if num_points is not None and len(parsed) != num_points:
        raise _BadRecord(f"wrong point count: expected {num_points}, got {len(parsed)}")
    if len(parsed) == 0:
        raise _BadRecord("no landmarks")
    # The checks look at the float32 values the record stores: a finite float64 may
    # overflow to inf, and a box 1..1.00000001 becomes flat.
    points32 = _to_float32(parsed)
    finite = np.isfinite(points32).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        if np.isfinite(parsed[i]).all():
            raise _BadRecord(f"landmark coordinate out of float32 range at point {i} "
                             "(0-based)")
        raise _BadRecord(f"non-finite landmark coordinate (NaN or inf) at point {i} "
                         "(0-based)")
    if box is not None:
        parsed_box = np.asarray(box, dtype=np.float64).reshape(4)
        box = _to_float32(parsed_box)
        if not np.isfinite(box).all():
            if np.isfinite(parsed_box).all():
                raise _BadRecord("face box value out of float32 range")
            raise _BadRecord("non-finite face box value (NaN or inf)")
        left, top, right, bottom = (float(v) for v in box)
        if right <= left or bottom <= top:
            raise _BadRecord(f"degenerate face box (left {left:g}, top {top:g}, "
                             f"right {right:g}, bottom {bottom:g})")
    return FaceRecord(image_path=image_path, landmarks=points32, box=box,
                      attributes=dict(attributes or {}), split=split, source=source)


# ---------------------------------------------------------------------------
# File helpers.

def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.isdir(path):
        raise DataError(path, "is a directory, expected an annotation file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None


def _read_text(path: str) -> str:
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(path, "not a UTF-8 text file", line) from None


# ASCII whitespace (what ``bytes.split()`` splits on, less the line feed): the field
# separators and what is stripped from lines. ``str.split()`` and ``str.splitlines()``
# would also break at \x1c-\x1f, \x85, U+2028, ... which may be part of a path.
_SPACE = " \t\r\x0b\x0c"
_SPACE_RUN = re.compile(f"[{re.escape(_SPACE)}]+")


def _split_lines(text: str) -> list[str]:
    """Lines split at "\n" only (CRLF or LF), so that line numbers match editors'."""
    return [line.strip(_SPACE) for line in text.split("\n")]


def _fields(line: str) -> list[str]:
    """Whitespace-separated fields (ASCII whitespace only, see ``_SPACE``)."""
    line = line.strip(_SPACE)
    return _SPACE_RUN.split(line) if line else []


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, stripped line) of the non-blank lines (CRLF or LF).

    Lines end at "\n" only: other characters ``str.splitlines`` breaks at (form
    feed, U+2028, ...) stay inside their line.
    """
    for number, line in enumerate(_split_lines(_read_text(path)), start=1):
        if line:
            yield number, line


def _resolve(folder: str, image: str) -> str:
    """Resolves a list file's image path (``\\`` or ``/`` separators) against ``folder``."""
    return os.path.normpath(os.path.join(folder, image.replace("\\", "/")))


# ---------------------------------------------------------------------------
# 300-W.

def _parse_pts(pts_path: str, num_points: int) -> tuple[np.ndarray, int]:
    """Reads a ``.pts`` file; returns its 1-based ``(N, 2)`` points and the line of '{'."""
    try:
        lines = list(_lines(pts_path))
    except DataError as e:  # one .pts file is one face: skippable
        raise _BadRecord(e.reason, e.line) from None
    header_count = header_line = open_line = close_line = None
    points: list[np.ndarray] = []
    for number, line in lines:
        if open_line is None:
            key, _, value = line.partition(":")
            if line == "{":
                open_line = number
            elif key.strip() == "n_points":
                try:
                    header_count, header_line = int(value), number
                except ValueError:
                    raise _BadRecord(f"n_points is not an integer: {value.strip()!r}",
                                     number) from None
            elif key.strip() != "version":
                raise _BadRecord(f"unexpected header line {line!r} (expected "
                                 "'version:', 'n_points:' or '{')", number)
        elif line == "}":
            close_line = number
            break
        else:
            fields = _fields(line)
            try:
                _expect_fields(fields, 2, "x y")
                points.append(_numbers(fields, "coordinate"))
            except _BadRecord as e:
                raise _BadRecord(e.reason, number) from None
    last_line = lines[-1][0] if lines else None
    if open_line is None:
        raise _BadRecord("no '{' opening the point list", last_line)
    if close_line is None:
        raise _BadRecord("no '}' closing the point list (truncated file?)", last_line)
    if header_count is not None and header_count != num_points:
        raise _BadRecord(f"wrong point count: n_points is {header_count}, expected "
                         f"{num_points}", header_line)
    if len(points) != num_points:
        raise _BadRecord(f"wrong point count: expected {num_points}, got {len(points)}",
                         close_line)
    return np.stack(points), open_line


def _image_beside(pts_path: str) -> str:
    stem = os.path.splitext(pts_path)[0]
    for ext in _IMAGE_EXTENSIONS:
        if os.path.isfile(stem + ext):
            return stem + ext
    raise _BadRecord("no image (.png/.jpg) with the same name beside the .pts file")


def _pts_files(folder: str, recursive: bool) -> list[str]:
    if not recursive:
        return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                      if name.endswith(".pts"))
    return sorted(os.path.join(d, name) for d, _, names in os.walk(folder)
                  for name in names if name.endswith(".pts"))


def read_300w(root: str, on_error: str = "fail",
              skipped: Skipped | None = None) -> list[FaceRecord]:
    """Reads the 300-W folder tree.

    Each image (``.png``/``.jpg``) has a same-named ``.pts`` file::

        version: 1
        n_points: 68
        {
        x y          (68 lines, 1-based pixels)
        }

    Splits follow the MSRRN paper: "train" = ``lfpw/trainset`` +
    ``helen/trainset`` + ``afw``; "common" = ``lfpw/testset`` + ``helen/testset``;
    "challenging" = ``ibug``. The "full" test set is common + challenging: a union
    formed by consumers, not a split of its own. Missing subsets are left out. A
    folder that has none of the subsets but holds ``.pts`` files (anywhere below
    it) is read as one set with split "".

    Args:
        root: the folder holding ``lfpw``, ``helen``, ``afw`` and ``ibug``.
        on_error: "fail" (raise) or "skip" (leave bad faces out).
        skipped: list that receives ``(source, reason)`` of skipped faces.

    Returns:
        One record per ``.pts`` file, ordered by subset then file name; ``source``
        is the ``.pts`` path.

    Raises:
        DataError: bad ``.pts`` file (with ``on_error="fail"``), or no ``.pts``
            files at all.
    """
    policy = _ErrorPolicy(root, on_error, skipped)
    if not os.path.isdir(root):
        raise DataError(root, "file not found" if not os.path.exists(root)
                        else "not a directory (expected the 300-W folder)")
    jobs = [(_pts_files(os.path.join(root, sub), recursive=False), split)
            for sub, split in SUBSETS_300W if os.path.isdir(os.path.join(root, sub))]
    if not any(files for files, _ in jobs):
        jobs = [(_pts_files(root, recursive=True), "")]
    if not any(files for files, _ in jobs):
        raise DataError(root, "no .pts files found (expected the 300-W folders "
                        + ", ".join(sub for sub, _ in SUBSETS_300W) + ")")
    records = []
    for files, split in jobs:
        for pts_path in files:
            with policy.record_at(None, pts_path):
                points, open_line = _parse_pts(pts_path, IBUG_68.num_points)
                image_path = _image_beside(pts_path)
                # Checks of the points as a whole point at the line opening them.
                with policy.record_at(open_line, pts_path):
                    records.append(_face_record(image_path, points - 1.0,
                                                num_points=IBUG_68.num_points,
                                                source=pts_path, split=split))
    return records


# ---------------------------------------------------------------------------
# Text lists.

def read_cuhk_list(path: str, on_error: str = "fail",
                   skipped: Skipped | None = None) -> list[FaceRecord]:
    """Reads a CUHK list of Sun et al. (CVPR 2013), e.g. ``trainImageList.txt``.

    One face per line: ``path left right top bottom x1 y1 ... x5 y5``. The box is
    given as left, RIGHT, top, BOTTOM and stored as (left, top, right, bottom);
    points are 0-based pixels in ``CUHK_5`` order. Image paths may use ``\\`` or
    ``/`` and are relative to the list's folder; CRLF and LF both work.

    Args:
        path: the list file.
        on_error: "fail" (raise) or "skip" (leave bad faces out).
        skipped: list that receives ``(source, reason)`` of skipped faces.

    Returns:
        One record per line, ``source`` = "path:line".
    """
    policy = _ErrorPolicy(path, on_error, skipped)
    folder = os.path.dirname(path)
    num_points = CUHK_5.num_points
    records = []
    for number, line in _lines(path):
        with policy.record_at(number):
            fields = _fields(line)
            _expect_fields(fields, 5 + 2 * num_points,
                           "path left right top bottom x1 y1 ... x5 y5")
            values = _numbers(fields[1:])
            left, right, top, bottom = values[:4]
            records.append(_face_record(
                _resolve(folder, fields[0]), values[4:], num_points=num_points,
                source=_source(path, number), box=(left, top, right, bottom)))
    return records


def read_mtfl_list(path: str, on_error: str = "fail",
                   skipped: Skipped | None = None) -> list[FaceRecord]:
    """Reads an MTFL list of Zhang et al. (ECCV 2014), e.g. ``training.txt``.

    One face per line: ``path x1 .. x5 y1 .. y5 gender smile glasses pose``, all x
    first, 1-based (1 is subtracted). No face box. Attributes are stored as
    ``{"gender", "smile", "glasses", "pose"}`` integers (1 male / 2 female,
    1 yes / 2 no, 1 yes / 2 no, 1..5 left profile .. right profile).

    Args:
        path: the list file.
        on_error: "fail" (raise) or "skip" (leave bad faces out).
        skipped: list that receives ``(source, reason)`` of skipped faces.

    Returns:
        One record per line, ``source`` = "path:line".
    """
    policy = _ErrorPolicy(path, on_error, skipped)
    folder = os.path.dirname(path)
    num_points = CUHK_5.num_points
    records = []
    for number, line in _lines(path):
        with policy.record_at(number):
            fields = _fields(line)
            _expect_fields(fields, 1 + 2 * num_points + len(MTFL_ATTRIBUTES),
                           "path x1..x5 y1..y5 gender smile glasses pose")
            coords = _numbers(fields[1:1 + 2 * num_points], "coordinate")
            attributes = {}
            for name, token in zip(MTFL_ATTRIBUTES, fields[1 + 2 * num_points:]):
                try:
                    value = int(token)
                except ValueError:
                    raise _BadRecord(f"attribute {name} is not an integer: {token!r}") from None
                if not _INT64_MIN <= value <= _INT64_MAX:  # the TFRecord stores int64
                    raise _BadRecord(f"attribute {name} out of range: {token}")
                attributes[name] = value
            points = np.stack([coords[:num_points], coords[num_points:]], axis=1) - 1.0
            records.append(_face_record(
                _resolve(folder, fields[0]), points, num_points=num_points,
                source=_source(path, number), attributes=attributes))
    return records


def read_landmark_csv(path: str, on_error: str = "fail",
                      skipped: Skipped | None = None) -> list[FaceRecord]:
    """Reads a landmark CSV: header ``image,x0,y0,x1,y1,...``, then one face per row.

    The number of points is ``(columns - 1) / 2``; coordinates are 0-based pixels.
    Image paths are relative to an ``images/`` folder beside the CSV when there is
    one, else to the CSV's folder.

    Args:
        path: the CSV file.
        on_error: "fail" (raise) or "skip" (leave bad faces out).
        skipped: list that receives ``(source, reason)`` of skipped faces.

    Returns:
        One record per data row, ``source`` = "path:line" of the row's first line.

    Raises:
        DataError: also for a missing or malformed header row, and (whatever
            ``on_error`` says) for a file the CSV parser cannot split into rows
            (an unmatched quote, an oversized field), at the line the broken row
            starts.
    """
    policy = _ErrorPolicy(path, on_error, skipped)
    folder = os.path.dirname(path)
    if os.path.isdir(os.path.join(folder, "images")):
        folder = os.path.join(folder, "images")
    # newline="": quoted fields may hold line breaks; strict: a stray quote is an
    # error, not a field swallowing the following rows.
    rows = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)

    def next_row() -> tuple[list[str] | None, int]:
        """The next row (None at the end) and the line it starts on."""
        start = rows.line_num + 1
        try:
            return next(rows, None), start
        except csv.Error as e:  # the file's structure is broken: always raised
            raise DataError(path, f"malformed CSV ({e})", start) from None

    header, _ = next_row()
    if not header:
        raise DataError(path, "no header row (expected image,x0,y0,...)", 1)
    coordinate_columns = len(header) - 1
    if coordinate_columns < 2 or coordinate_columns % 2:
        raise DataError(path, f"header has {coordinate_columns} coordinate columns; "
                        "expected image,x0,y0,x1,y1,... (an even number)", 1)
    if _is_number(header[1]):
        raise DataError(path, "first row is not a header (expected image,x0,y0,...)", 1)
    records = []
    while True:
        row, number = next_row()
        if row is None:
            break
        row = [field.strip(_SPACE) for field in row]
        if not any(row):
            continue
        with policy.record_at(number):
            _expect_fields(row, len(header), "image,x0,y0,...")
            points = _numbers(row[1:], "coordinate")
            records.append(_face_record(
                _resolve(folder, row[0]), points,
                num_points=coordinate_columns // 2, source=_source(path, number)))
    return records


# ---------------------------------------------------------------------------
# dlib imglab XML.

class _ImglabParser:
    """Streams an imglab XML file with expat, which knows the line numbers."""

    def __init__(self, path: str, policy: _ErrorPolicy):
        self.path = path
        self.folder = os.path.dirname(path)
        self.policy = policy
        self.records: list[FaceRecord] = []
        self.num_points: int | None = None  # set by the first face with parts
        self.image: str | None = None
        self.box: tuple[dict[str, str], int, list[tuple[dict[str, str], int]]] | None = None
        self.expat = xml.parsers.expat.ParserCreate()
        self.expat.StartElementHandler = self._start
        self.expat.EndElementHandler = self._end

    def parse(self, data: bytes) -> list[FaceRecord]:
        try:
            self.expat.Parse(data, True)
        except xml.parsers.expat.ExpatError as e:
            raise DataError(self.path, "not valid XML ("
                            f"{xml.parsers.expat.ErrorString(e.code)})", e.lineno) from None
        return self.records

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        line = self.expat.CurrentLineNumber
        if name == "image":
            self.image = attrs.get("file")
        elif name == "box":
            self.box = (attrs, line, [])
        elif name == "part" and self.box is not None:
            self.box[2].append((attrs, line))

    def _end(self, name: str) -> None:
        if name == "image":
            self.image = None
        elif name == "box" and self.box is not None:
            attrs, line, parts = self.box
            self.box = None
            with self.policy.record_at(line):
                self._finish_box(attrs, line, parts)

    def _finish_box(self, attrs: dict[str, str], line: int,
                    parts: list[tuple[dict[str, str], int]]) -> None:
        source = _source(self.path, line)
        if attrs.get("ignore", "0") not in ("0", ""):
            self.policy.note_skip(source, "box marked ignore")
            return
        if not parts:
            self.policy.note_skip(source, "box without landmarks")
            return
        if not self.image:
            raise _BadRecord("box outside an <image file=...> element")
        missing = [k for k in ("top", "left", "width", "height") if k not in attrs]
        if missing:
            raise _BadRecord(f"box lacks attribute(s) {', '.join(missing)}")
        top, left, width, height = _numbers(
            [attrs["top"], attrs["left"], attrs["width"], attrs["height"]], "box value")
        indexed = {}
        for part, part_line in parts:
            try:
                if "x" not in part or "y" not in part:
                    raise _BadRecord("part lacks x or y")
                try:
                    index = int(part.get("name", ""))
                except ValueError:
                    raise _BadRecord(f"part name {part.get('name')!r} is not an "
                                     "integer") from None
                if index in indexed:
                    raise _BadRecord(f"part {index} appears twice")
                indexed[index] = _numbers([part["x"], part["y"]], "coordinate")
            except _BadRecord as e:
                raise _BadRecord(e.reason, part_line) from None
        if sorted(indexed) != list(range(len(indexed))):
            raise _BadRecord(f"part names are not 0..{len(indexed) - 1} "
                             f"(got {min(indexed)}..{max(indexed)}, {len(indexed)} parts)")
        points = np.stack([indexed[i] for i in range(len(indexed))])
        # dlib rectangles are inclusive: right = left + width - 1 (the pixel index).
        box = inclusive_rect_to_box(left, top, left + width - 1, top + height - 1)
        record = _face_record(_resolve(self.folder, self.image), points,
                              num_points=self.num_points, source=source, box=box)
        self.num_points = self.num_points or len(points)
        self.records.append(record)


def read_imglab_xml(path: str, on_error: str = "fail",
                    skipped: Skipped | None = None) -> list[FaceRecord]:
    """Reads dlib imglab XML (``<image file=...><box ...><part name x y/>``).

    Every ``<box top left width height>`` with parts is one face; parts are
    ordered by their integer ``name`` (which must be 0..N-1) and every face in the
    file must have the N points of the first. The ``<box>`` is a dlib rectangle
    (integer pixel indices, right = left + width - 1 and bottom = top + height - 1
    inclusive); the record's box covers its pixels in the package convention
    (pixel centres at integers): (left - 0.5, top - 0.5, left + width - 0.5,
    top + height - 0.5), the same as ``common.boxes.dlib_rect_to_box`` gives for
    a detection of that rectangle (``common.records.inclusive_rect_to_box``). Boxes
    without parts and boxes with ``ignore='1'`` are skipped and reported in
    ``skipped`` (whatever ``on_error`` says: they are not errors). Image paths
    are relative to the XML file's folder.

    Args:
        path: the XML file.
        on_error: "fail" (raise) or "skip" (leave bad faces out).
        skipped: list that receives ``(source, reason)`` of skipped boxes.

    Returns:
        One record per face, ``source`` = "path:line" of its ``<box>``.
    """
    policy = _ErrorPolicy(path, on_error, skipped)
    return _ImglabParser(path, policy).parse(_read_bytes(path))


# ---------------------------------------------------------------------------
# Format table, detection and the entry point.

Reader = Callable[..., list[FaceRecord]]

FORMATS: dict[str, Reader] = {
    "300w": read_300w,
    "cuhk": read_cuhk_list,
    "mtfl": read_mtfl_list,
    "csv": read_landmark_csv,
    "imglab": read_imglab_xml,
}

_FORMAT_HINTS = ("300w (folder with .pts files), imglab (.xml), csv (.csv with "
                 "image,x0,y0,... header), cuhk (path left right top bottom + 10 "
                 "coordinates), mtfl (path + 10 coordinates + 4 attributes)")
_SNIFF_LINES = 50


def _looks_cuhk(fields: list[str]) -> bool:
    if not all(_is_number(v) for v in fields[1:]):
        return False
    values = [float(v) for v in fields[1:]]
    left, right, top, bottom = values[:4]
    return (all(v.is_integer() for v in values[:4]) and right > left and bottom > top)


def _looks_mtfl(fields: list[str]) -> bool:
    if not all(_is_number(v) for v in fields[1:11]):
        return False
    attributes = fields[11:]
    return all(a.isdigit() and int(a) in valid
               for a, valid in zip(attributes, _MTFL_ATTRIBUTE_VALUES))


def _sniff_text_list(path: str) -> str | None:
    """Recognises CUHK or MTFL lists from their first lines (majority vote)."""
    try:
        text = _read_text(path)
    except DataError:
        return None
    head = text.lstrip()
    if head.startswith(("<?xml", "<dataset")):
        return "imglab"
    first = head.split("\n", 1)[0].strip().lower()
    if first.startswith(("image,", '"image",')):
        return "csv"
    sample = [_fields(line) for line in _split_lines(text) if line][:_SNIFF_LINES]
    if not sample:
        return None
    candidates = [f for f in sample if len(f) == 15]
    # MTFL first: its attribute ranges are strict, while a CUHK-shaped box test can
    # pass on integer-valued MTFL coordinates.
    for name, test in (("mtfl", _looks_mtfl), ("cuhk", _looks_cuhk)):
        if sum(test(f) for f in candidates) * 2 > len(sample):
            return name
    return None


def detect_format(path: str) -> str:
    """Guesses the annotation format of ``path``.

    A folder holding ``.pts`` files is "300w"; ``.xml`` is "imglab"; ``.csv`` is
    "csv"; otherwise the first lines decide: 15 fields whose last four are valid
    MTFL attributes make "mtfl", 15 fields whose fields 2-5 are an integer box
    (left < right, top < bottom) make "cuhk" (XML and ``image,...`` CSV content
    is recognised without the extension too).

    Raises:
        DataError: the path is missing or no format matches (naming those tried).
    """
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.isdir(path):
        if _pts_files(path, recursive=True):
            return "300w"
        raise DataError(path, "folder holds no .pts files; tried " + _FORMAT_HINTS)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".xml":
        return "imglab"
    if ext == ".csv":
        return "csv"
    found = _sniff_text_list(path)
    if found is None:
        raise DataError(path, "unrecognised annotation format; tried " + _FORMAT_HINTS)
    return found


@dataclasses.dataclass
class ReadResult:
    """What ``read_dataset`` returns.

    Attributes:
        records: the faces read.
        skipped: ``(source "file:line", reason)`` of each face left out.
        format: the format name used (a key of ``FORMATS``).
    """

    records: list[FaceRecord]
    skipped: Skipped
    format: str


def read_dataset(path: str, format: str = "auto", on_error: str = "fail") -> ReadResult:
    """Reads any supported annotation file or folder.

    Args:
        path: annotation file, or the 300-W root folder.
        format: a key of ``FORMATS``, or "auto" for ``detect_format``.
        on_error: "fail" raises ``DataError`` on the first bad face; "skip" leaves
            bad faces out and lists them in ``ReadResult.skipped``.

    Returns:
        A ``ReadResult``.

    Raises:
        DataError: bad input, or no face at all could be read.
        ValueError: unknown ``format`` or ``on_error``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: auto, {', '.join(FORMATS)}")
    skipped: Skipped = []
    records = FORMATS[format](path, on_error=on_error, skipped=skipped)
    if not records:
        raise DataError(path, f"no faces read as {format}"
                        + (f" ({len(skipped)} skipped, first: {skipped[0][1]})"
                           if skipped else ""))
    return ReadResult(records=records, skipped=skipped, format=format)
