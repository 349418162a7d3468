"""Hypothesis fuzzing of the readers, the image decoder and the geometry.

Readers (``common.readers``) get generated files: valid records mixed with broken
ones (a field replaced by NaN/inf/garbage, a field dropped or added, degenerate
boxes, wrong point counts) and garbage lines, with random whitespace, CRLF/LF,
blank lines and a BOM. Properties:

* ``on_error="skip"`` never raises; every line (box, ``.pts`` file) is either a
  record or a skipped entry, exactly once; valid ones are records with exactly the
  landmarks written (float32 of the parsed value, minus 1 for 1-based formats),
  broken ones are skipped; landmarks are always finite float32 ``(N, 2)``.
* ``on_error="fail"`` raises ``DataError`` with the first skipped entry's
  ``path:line: reason``, or returns the same records when nothing was skipped.
* Arbitrary text or bytes raise nothing but ``DataError``.

``common.images.load_image`` on random bytes, on every prefix of valid JPEG/PNG
files and on files with corrupted pixel data raises nothing but ``DataError`` (a
strict prefix always raises it). ``common.geometry``: crop/un-crop, flip twice and
rotate back are identities, crop boxes are squares around their face box,
``landmark_box`` is a finite square around the landmarks' centre, and
``validate_serving_inputs`` accepts exactly the finite, non-empty boxes that overlap
their image.

Files whose structure is broken as a whole (no CSV header, invalid XML) raise
``DataError`` in both modes, by design (``common.readers`` docstring); the valid-file
generators therefore keep the header and the XML well-formed.

Numbers in the valid-file fuzz stay within float32 (up to 3e38): values beyond it
are the subject of ``test_values_beyond_float32_are_rejected``. Exotic line
separators (form feed, U+2028, ...) and CSV quotes are likewise left to the targeted
tests at the end (findings of this fuzzing, now fixed; one known limitation remains
an expected failure).
"""

import contextlib
import dataclasses
import math
import os
import pathlib
import re
import struct
import tempfile
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common import boxes as boxes_lib
from common import geometry, images, readers
from common.records import DataError
from common.schemes import CUHK_5, IBUG_68

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FUZZ_FEW = settings(FUZZ, max_examples=20)

BENIGN = ("box without landmarks", "box marked ignore")
"""imglab skip reasons that are not errors (reported whatever ``on_error`` says)."""


# ---------------------------------------------------------------------------
# Tokens.

def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# Letters, digits, punctuation and symbols: no whitespace, no line breaks, nothing
# that XML or CSV would interpret.
SAFE_CHARS = st.characters(codec="utf-8", categories=("L", "N", "P", "S"),
                           exclude_characters="<>&\"',")
GARBAGE = st.text(SAFE_CHARS, min_size=1, max_size=8).filter(
    lambda t: not _is_float(t) and t not in ("version", "n_points"))
PATHS = st.text(SAFE_CHARS, min_size=1, max_size=12)
SANE_NUMBER = st.one_of(
    st.integers(-10_000, 10_000).map(str),
    st.builds(format, st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False),
              st.sampled_from(["g", ".3f", ".6e", ".17g", ""])))
NON_FINITE = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "+Infinity", "1e309",
                              "-1e999"])
HUGE_FLOAT32 = st.sampled_from(["3e38", "-3.4e38", "1e30", "-1e20", "1e-30"])
SEPARATORS = st.sampled_from([" ", "\t", "  ", " \t "])
LINE_ENDS = st.sampled_from(["\n", "\r\n"])
BLANK_LINES = st.sampled_from(["", " ", "\t", "  \t "])


@dataclasses.dataclass
class Expect:
    """What must become of one line (imglab box, ``.pts`` file).

    Attributes:
        status: "good" (a record), "bad" (skipped as an error), "benign" (skipped,
            not an error) or "unknown" (either; e.g. a garbage line).
        landmarks: float32 ``(N, 2)`` of a good record.
        box: float32 ``(4,)`` of a good record with a box, else None.
    """

    status: str
    landmarks: np.ndarray | None = None
    box: np.ndarray | None = None


def _floats32(tokens, minus: float = 0.0) -> np.ndarray:
    return (np.array([float(t) for t in tokens], np.float64) - minus).astype(np.float32)


@st.composite
def _mutated(draw, fields: list[str], good: Expect, numeric: range,
             degenerate=None) -> tuple[list[str], Expect]:
    """A valid record's fields, or a broken variant of them, with its expectation.

    Args:
        fields: the valid record's fields.
        good: its expectation.
        numeric: indices of the fields that must be numbers.
        degenerate: optional ``fields -> fields`` making the box degenerate.
    """
    kinds = ["valid", "valid", "replace", "delete", "insert", "garbage"]
    kind = draw(st.sampled_from(kinds + (["degenerate"] if degenerate else [])))
    fields = list(fields)
    if kind == "valid":
        return fields, good
    if kind == "replace":
        i = draw(st.sampled_from(numeric))
        token = draw(st.one_of(NON_FINITE, GARBAGE, HUGE_FLOAT32))
        fields[i] = token
        finite = _is_float(token) and math.isfinite(float(token))
        return fields, Expect("unknown" if finite else "bad")
    if kind == "delete":
        del fields[draw(st.integers(0, len(fields) - 1))]
        return fields, Expect("bad")
    if kind == "insert":
        token = draw(st.one_of(SANE_NUMBER, GARBAGE))
        fields.insert(draw(st.integers(0, len(fields))), token)
        return fields, Expect("bad")
    if kind == "degenerate":
        return degenerate(fields), Expect("bad")
    garbage = draw(st.lists(st.one_of(SANE_NUMBER, GARBAGE, NON_FINITE), min_size=1,
                            max_size=20))
    return garbage, Expect("unknown")


@st.composite
def _joined(draw, fields: list[str]) -> str:
    """Whitespace-separated fields, random separators and padding."""
    line = draw(st.sampled_from(["", " ", "\t"])) + fields[0]
    for field in fields[1:]:
        line += draw(SEPARATORS) + field
    return line + draw(st.sampled_from(["", " ", "\t "]))


@st.composite
def _comma_joined(draw, fields: list[str]) -> str:
    return ",".join(draw(st.sampled_from(["", " "])) + f + draw(st.sampled_from(["", " "]))
                    for f in fields)


@st.composite
def cuhk_row(draw):
    left, top = draw(st.integers(-500, 500)), draw(st.integers(-500, 500))
    right, bottom = left + draw(st.integers(1, 500)), top + draw(st.integers(1, 500))
    coords = draw(st.lists(SANE_NUMBER, min_size=10, max_size=10))
    fields = [draw(PATHS), str(left), str(right), str(top), str(bottom), *coords]
    good = Expect("good", _floats32(coords).reshape(5, 2),
                  np.array([left, top, right, bottom], np.float32))

    def swap_left_right(f):
        return [f[0], f[2], f[1], *f[3:]]

    fields, expect = draw(_mutated(fields, good, range(1, 15), swap_left_right))
    return draw(_joined(fields)), expect


@st.composite
def mtfl_row(draw):
    coords = draw(st.lists(SANE_NUMBER, min_size=10, max_size=10))
    attributes = [str(draw(st.sampled_from(v))) for v in readers._MTFL_ATTRIBUTE_VALUES]
    values = _floats32(coords, minus=1.0)
    good = Expect("good", np.stack([values[:5], values[5:]], axis=1))
    fields, expect = draw(_mutated([draw(PATHS), *coords, *attributes], good, range(1, 15)))
    return draw(_joined(fields)), expect


@st.composite
def csv_row(draw, num_points: int):
    coords = draw(st.lists(SANE_NUMBER, min_size=2 * num_points, max_size=2 * num_points))
    good = Expect("good", _floats32(coords).reshape(num_points, 2))
    fields, expect = draw(_mutated([draw(PATHS), *coords], good,
                                   range(1, 1 + 2 * num_points)))
    return draw(_comma_joined(fields)), expect


@st.composite
def line_file(draw, fmt: str):
    """A CUHK/MTFL list or landmark CSV: (text, {line number: Expect})."""
    if fmt == "csv":
        num_points = draw(st.integers(1, 6))
        row = csv_row(num_points)
        lines = ["image," + ",".join(f"x{i},y{i}" for i in range(num_points))]
        blanks = st.sampled_from(["", " ", ",,", " , "])
    else:
        row = cuhk_row() if fmt == "cuhk" else mtfl_row()
        lines, blanks = [], BLANK_LINES
    expected = {}
    for text, expect in draw(st.lists(row, min_size=1, max_size=12)):
        lines += draw(st.lists(blanks, max_size=2))
        lines.append(text)
        expected[len(lines)] = expect
    lines += draw(st.lists(blanks, max_size=2))
    text = "".join(line + draw(LINE_ENDS) for line in lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text, expected


# ---------------------------------------------------------------------------
# imglab XML and 300-W .pts files.

@st.composite
def imglab_box(draw, num_points: int, kind: str | None = None) -> tuple[list[str], Expect]:
    """The lines of one ``<box>`` (first line: the box element) and its expectation."""
    kinds = ["valid", "empty", "ignore", "valid", "missing_attr", "bad_attr", "narrow",
             "part_no_x", "part_bad_value", "duplicate_name", "names_from_1", "wrong_count",
             "valid", "huge"]
    kind = kind or draw(st.sampled_from(kinds))
    attrs = {"top": draw(st.integers(-100, 1000)), "left": draw(st.integers(-100, 1000)),
             "width": draw(st.integers(2, 500)), "height": draw(st.integers(2, 500))}
    attrs = {k: str(v) for k, v in attrs.items()}
    count = num_points
    if kind == "wrong_count":
        count = num_points + 1 if num_points == 1 else num_points + draw(st.sampled_from([-1, 1]))
    coords = draw(st.lists(SANE_NUMBER, min_size=2 * count, max_size=2 * count))
    if kind == "huge":
        coords[draw(st.integers(0, 2 * count - 1))] = draw(HUGE_FLOAT32)
    names = list(range(count))
    parts = [{"name": draw(st.sampled_from(["{:d}", "{:02d}"])).format(i),
              "x": coords[2 * i], "y": coords[2 * i + 1]} for i in names]
    parts = draw(st.permutations(parts))
    expect = Expect("bad")
    if kind in ("valid", "huge"):
        left, top, width, height = (float(attrs[k]) for k in ("left", "top", "width", "height"))
        # The pixels of dlib's inclusive rectangle (common.boxes.dlib_rect_to_box).
        expect = Expect("good", _floats32(coords).reshape(count, 2),
                        np.array([left - 0.5, top - 0.5, left + width - 0.5,
                                  top + height - 0.5], np.float32))
    elif kind == "missing_attr":
        del attrs[draw(st.sampled_from(sorted(attrs)))]
    elif kind == "bad_attr":
        attrs[draw(st.sampled_from(sorted(attrs)))] = draw(st.one_of(NON_FINITE, GARBAGE))
    elif kind == "narrow":  # no pixel: left + width - 0.5 <= left - 0.5
        attrs["width"] = str(draw(st.integers(-50, 0)))
    elif kind == "part_no_x":
        del parts[draw(st.integers(0, count - 1))]["x"]
    elif kind == "part_bad_value":
        parts[draw(st.integers(0, count - 1))]["y"] = draw(st.one_of(NON_FINITE, GARBAGE))
    elif kind == "duplicate_name":
        parts.append(dict(parts[draw(st.integers(0, count - 1))]))
    elif kind == "names_from_1":
        for part in parts:
            part["name"] = str(int(part["name"]) + 1)
    elif kind == "empty":
        parts, expect = [], Expect("benign")
    elif kind == "ignore":
        attrs["ignore"] = "1"
        expect = Expect("benign")
    attr_text = " ".join(f"{k}='{v}'" for k, v in draw(st.permutations(list(attrs.items()))))
    lines = [f"    <box {attr_text}>"]
    lines += ["      <part " + " ".join(f"{k}='{v}'" for k, v in part.items()) + "/>"
              for part in parts]
    lines.append("    </box>")
    return lines, expect


@st.composite
def imglab_file(draw):
    """An imglab XML file: (text, {box line: Expect}, {line in a box: box line}).

    A bad box is reported at its ``<box>`` line or at the line of its bad ``<part>``.
    """
    num_points = draw(st.integers(1, 6))
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", "<dataset>", "<images>"]
    expected, box_of_line = {}, {}

    def add_box(box_lines, expect):
        start = len(lines) + 1
        expected[start] = expect
        box_of_line.update({start + i: start for i in range(len(box_lines))})
        lines.extend(box_lines)

    if draw(st.booleans()):  # a box outside any <image>
        box_lines, expect = draw(imglab_box(num_points, "valid"))
        add_box(box_lines, Expect("bad"))
    first = True
    for _ in range(draw(st.integers(1, 3))):
        has_file = draw(st.integers(0, 5)) > 0
        lines.append(f"  <image file='{draw(PATHS)}'>" if has_file else "  <image>")
        for _ in range(draw(st.integers(0, 3))):
            # The first face of the file fixes the point count: make it a good one.
            box_lines, expect = draw(imglab_box(num_points, "valid" if first else None))
            if not has_file and expect.status != "benign":
                expect = Expect("bad")
            first = first and expect.status != "good"
            add_box(box_lines, expect)
        lines.append("  </image>")
    lines += ["</images>", "</dataset>"]
    return "".join(line + draw(LINE_ENDS) for line in lines), expected, box_of_line


@st.composite
def pts_file(draw) -> tuple[bytes, Expect]:
    """One 300-W ``.pts`` file (1-based) and its expectation."""
    coords = draw(st.lists(SANE_NUMBER, min_size=136, max_size=136))
    header = ["version: 1", "n_points:  68", "{"]
    rows = [draw(_joined([coords[2 * i], coords[2 * i + 1]])) for i in range(68)]
    good = Expect("good", _floats32(coords, minus=1.0).reshape(68, 2))
    kind = draw(st.sampled_from(["valid", "valid", "no_version", "drop_point", "extra_point",
                                 "bad_value", "n_points", "n_points_text", "no_open",
                                 "no_close", "three_fields", "unknown_header", "not_utf8",
                                 "empty"]))
    expect = Expect("bad")
    if kind in ("valid", "no_version"):
        expect = good
        header = header[1:] if kind == "no_version" else header
    elif kind == "drop_point":
        del rows[draw(st.integers(0, 67))]
    elif kind == "extra_point":
        rows.insert(draw(st.integers(0, 68)), "1 1")
    elif kind == "bad_value":
        rows[draw(st.integers(0, 67))] = f"1 {draw(st.one_of(NON_FINITE, GARBAGE))}"
    elif kind == "n_points":
        header[1] = f"n_points: {draw(st.sampled_from([0, 5, 67, 69]))}"
    elif kind == "n_points_text":
        header[1] = f"n_points: {draw(GARBAGE)}"
    elif kind == "no_open":
        header = header[:2]
    elif kind == "three_fields":
        rows[draw(st.integers(0, 67))] += " 0"
    elif kind == "unknown_header":
        header.insert(1, f"{draw(GARBAGE)}: 1")
    lines = header + rows + ([] if kind == "no_close" else ["}"])
    text = "".join(line + draw(LINE_ENDS) for line in lines).encode()
    if kind == "not_utf8":
        text = text.replace(b"version", b"vers\xff\xfeion", 1)
    elif kind == "empty":
        text = b""
    return text, expect


# ---------------------------------------------------------------------------
# The shared check.

def line_key(source: str) -> int:
    """The key of a record or skipped entry of a list: its line."""
    return int(source.rpartition(":")[2])


def file_key(source: str) -> str:
    """The key of a 300-W record or skipped entry: its ``.pts`` file."""
    head, _, tail = source.rpartition(":")
    return head if head and tail.isdigit() else source


def _check_finite_records(records, num_points: int | None = None) -> None:
    for record in records:
        assert record.landmarks.dtype == np.float32
        assert record.landmarks.ndim == 2 and record.landmarks.shape[1] == 2
        assert num_points is None or record.landmarks.shape[0] == num_points
        assert np.isfinite(record.landmarks).all(), record
        if record.box is not None:
            assert record.box.dtype == np.float32 and record.box.shape == (4,)
            assert np.isfinite(record.box).all(), record
            assert record.box[2] > record.box[0] and record.box[3] > record.box[1], record


def check_reader(read, path: str, expected: dict, key=line_key,
                 num_points: int | None = None) -> None:
    """The skip/fail properties of the module docstring for one generated input.

    Args:
        read: the reader.
        path: its input.
        expected: ``{key: Expect}`` for every line (box, file) of the input.
        key: maps a record's or skipped entry's source to its key.
        num_points: the point count every record must have, if fixed.
    """
    skipped = []
    records = read(path, on_error="skip", skipped=skipped)
    _check_finite_records(records, num_points)
    record_keys = [key(r.source) for r in records]
    skipped_keys = [key(source) for source, _ in skipped]
    assert sorted(record_keys + skipped_keys, key=str) == sorted(expected, key=str)
    reasons = {k: reason for k, (_, reason) in zip(skipped_keys, skipped)}
    by_key = dict(zip(record_keys, records))
    for k, expect in expected.items():
        if expect.status == "good":
            assert k in by_key, (k, reasons.get(k))
            np.testing.assert_array_equal(by_key[k].landmarks, expect.landmarks)
            if expect.box is not None:
                np.testing.assert_array_equal(by_key[k].box, expect.box)
        elif expect.status == "bad":
            assert k in reasons and reasons[k] not in BENIGN, (k, reasons.get(k))
        elif expect.status == "benign":
            assert reasons.get(k) in BENIGN, (k, reasons.get(k))

    errors = [(source, reason) for source, reason in skipped if reason not in BENIGN]
    if errors:
        with pytest.raises(DataError) as info:
            read(path, on_error="fail")
        assert str(info.value) == f"{errors[0][0]}: {errors[0][1]}"
    else:
        again = read(path, on_error="fail")
        assert [r.source for r in again] == [r.source for r in records]
        for a, b in zip(again, records):
            np.testing.assert_array_equal(a.landmarks, b.landmarks)


@contextlib.contextmanager
def _in_temp_file(name: str, data: str | bytes):
    """A temporary folder holding ``name`` with ``data``; yields the file's path."""
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        yield str(path)


# ---------------------------------------------------------------------------
# Readers.

LINE_READERS = {"cuhk": (readers.read_cuhk_list, "list.txt", CUHK_5.num_points),
                "mtfl": (readers.read_mtfl_list, "list.txt", CUHK_5.num_points),
                "csv": (readers.read_landmark_csv, "marks.csv", None)}


@pytest.mark.parametrize("fmt", list(LINE_READERS))
@FUZZ
@given(data=st.data())
def test_line_readers_on_generated_lists(fmt, data):
    read, name, num_points = LINE_READERS[fmt]
    text, expected = data.draw(line_file(fmt))
    with _in_temp_file(name, text) as path:
        check_reader(read, path, expected, num_points=num_points)


@FUZZ
@given(generated=imglab_file())
def test_imglab_reader_on_generated_xml(generated):
    text, expected, box_of_line = generated
    with _in_temp_file("faces.xml", text) as path:
        check_reader(readers.read_imglab_xml, path, expected,
                     key=lambda source: box_of_line[line_key(source)])


@FUZZ_FEW
@given(files=st.lists(st.tuples(pts_file(), st.integers(0, 9)), min_size=1, max_size=3))
def test_300w_reader_on_generated_pts(files):
    with tempfile.TemporaryDirectory() as root:
        expected = {}
        for i, ((data, expect), image_choice) in enumerate(files):
            pts = os.path.join(root, f"face_{i}.pts")
            pathlib.Path(pts).write_bytes(data)
            if image_choice:  # the image beside it (never opened by the reader)
                ext = [".png", ".jpg", ".JPG", ".jpeg"][image_choice % 4]
                pathlib.Path(root, f"face_{i}{ext}").write_bytes(b"")
            else:
                expect = Expect("bad")
            expected[pts] = expect
        check_reader(readers.read_300w, root, expected, key=file_key,
                     num_points=IBUG_68.num_points)


def _only_data_errors(read, path: str) -> None:
    for on_error in ("skip", "fail"):
        try:
            records = read(path, on_error=on_error)
        except DataError:
            continue
        _check_finite_records(records)


ALL_READERS = {"cuhk": (readers.read_cuhk_list, "list.txt"),
               "mtfl": (readers.read_mtfl_list, "list.txt"),
               "csv": (readers.read_landmark_csv, "marks.csv"),
               "imglab": (readers.read_imglab_xml, "faces.xml")}


@pytest.mark.parametrize("fmt", list(ALL_READERS))
@FUZZ
@given(content=st.one_of(st.text(max_size=400), st.binary(max_size=400)),
       with_header=st.booleans())
def test_readers_on_arbitrary_content_raise_only_data_error(fmt, content, with_header):
    read, name = ALL_READERS[fmt]
    if fmt == "csv" and isinstance(content, str) and with_header:
        content = "image,x0,y0\n" + content  # get past the header check
    with _in_temp_file(name, content) as path:
        _only_data_errors(read, path)


@FUZZ_FEW
@given(content=st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_300w_reader_on_arbitrary_pts_raises_only_data_error(content):
    with tempfile.TemporaryDirectory() as root:
        pathlib.Path(root, "x.pts").write_bytes(
            content if isinstance(content, bytes) else content.encode("utf-8"))
        pathlib.Path(root, "x.png").write_bytes(b"")
        _only_data_errors(readers.read_300w, root)


# ---------------------------------------------------------------------------
# Images.

_RNG = np.random.default_rng(0)
_PIXELS = _RNG.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
VALID_IMAGES = {
    "jpeg": cv2.imencode(".jpg", _PIXELS)[1].tobytes(),
    "progressive": cv2.imencode(".jpg", _PIXELS, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
    "png": cv2.imencode(".png", _PIXELS)[1].tobytes(),
    "grey_png": cv2.imencode(".png", _PIXELS[..., 0])[1].tobytes(),
}


def _load(data: bytes):
    """``load_image`` on ``data``: the image, or the DataError raised."""
    with _in_temp_file("image.jpg", data) as path:
        try:
            return images.load_image(path)
        except DataError as e:
            return e


@FUZZ
@given(prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
                               b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]),
       body=st.binary(max_size=300))
def test_load_image_random_bytes_only_data_error(prefix, body):
    result = _load(prefix + body)
    if not isinstance(result, DataError):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3


@FUZZ
@given(name=st.sampled_from(sorted(VALID_IMAGES)), cut=st.integers(0, 10_000))
def test_load_image_prefixes_of_valid_files(name, cut):
    data = VALID_IMAGES[name]
    cut = cut % (len(data) + 1)
    result = _load(data[:cut])
    if cut == len(data):
        assert result.shape == (8, 12, 3)
    else:
        assert isinstance(result, DataError)
        assert any(r in str(result) for r in ("empty file", "truncated image",
                                              "not a decodable image")), str(result)


def _payload_start(name: str, data: bytes) -> int:
    """Where the compressed pixels start (after the JPEG SOS / PNG IDAT header)."""
    if data.startswith(b"\x89PNG"):
        return data.find(b"IDAT") + 4
    sos = data.find(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


@FUZZ
@given(name=st.sampled_from(sorted(VALID_IMAGES)),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                      max_size=4))
def test_load_image_corrupted_pixels_only_data_error(name, edits):
    # Headers are kept so that no edit can make the decoder allocate a huge image.
    data = bytearray(VALID_IMAGES[name])
    start = _payload_start(name, bytes(data))
    for position, value in edits:
        data[start + position % (len(data) - start)] = value
    result = _load(bytes(data))
    if not isinstance(result, DataError):
        assert result.shape == (8, 12, 3) and result.dtype == np.uint8


# ---------------------------------------------------------------------------
# Geometry.

COORD = st.floats(-2000, 3000, allow_nan=False, allow_subnormal=False, width=32)
ORIGIN = st.floats(-1000, 1000, allow_nan=False, allow_subnormal=False, width=32)
SIDE = st.floats(1, 2000, allow_nan=False, width=32)


@st.composite
def face_boxes(draw, n: int):
    rows = []
    for _ in range(n):
        left, top = draw(ORIGIN), draw(ORIGIN)
        rows.append([left, top, left + draw(SIDE), top + draw(SIDE)])
    return np.array(rows, np.float32)


@st.composite
def points_and_boxes(draw):
    n, num = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    points = np.array(draw(st.lists(COORD, min_size=n * num * 2, max_size=n * num * 2)),
                      np.float32).reshape(n, num, 2)
    return points, draw(face_boxes(n))


@FUZZ
@given(points_and_boxes())
def test_crop_to_image_inverts_image_to_crop(generated):
    points, crop_boxes = generated
    back = geometry.crop_to_image(geometry.image_to_crop(points, crop_boxes), crop_boxes)
    origin = crop_boxes[:, None, :2]
    scale = np.abs(points) + np.abs(origin) + np.abs(points - origin)
    np.testing.assert_array_less(np.abs(back.numpy() - points), 1e-6 * scale + 1e-6)


UNIT = st.floats(-0.5, 1.5, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def crop_points(draw, scheme):
    n = draw(st.integers(1, 3))
    size = n * scheme.num_points * 2
    points = np.array(draw(st.lists(UNIT, min_size=size, max_size=size)), np.float32)
    angles = np.array(draw(st.lists(st.floats(-3.0, 3.0, width=32), min_size=n,
                                    max_size=n)), np.float32)
    flips = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return points.reshape(n, scheme.num_points, 2), angles, flips


@pytest.mark.parametrize("scheme", [CUHK_5, IBUG_68], ids=lambda s: s.name)
@FUZZ_FEW
@given(data=st.data())
def test_flip_twice_rotate_back_and_numpy_twin(scheme, data):
    points, angles, flips = data.draw(crop_points(scheme))
    perm = scheme.flip_permutation
    twice = geometry.transform_crop_landmarks(
        geometry.transform_crop_landmarks(points, None, flips, perm), None, flips, perm)
    np.testing.assert_allclose(twice.numpy(), points, atol=1e-6)
    rotated = geometry.transform_crop_landmarks(points, angles, None)
    back = geometry.transform_crop_landmarks(rotated, -angles, None)
    np.testing.assert_allclose(back.numpy(), points, atol=1e-5)
    # F = flip o rotate: undo the flip (an involution, indices included), then rotate back.
    moved = geometry.transform_crop_landmarks(points, angles, flips, perm)
    unflipped = geometry.transform_crop_landmarks(moved, None, flips, perm)
    back = geometry.transform_crop_landmarks(unflipped, -angles, None)
    np.testing.assert_allclose(back.numpy(), points, atol=1e-5)
    for i in range(len(points)):
        twin = geometry.np_crop_landmark_transform(points[i], angles[i], flips[i], perm)
        np.testing.assert_allclose(moved.numpy()[i], twin, atol=1e-5)


@FUZZ
@given(boxes=st.integers(1, 4).flatmap(face_boxes), margin=st.floats(0, 1, width=32))
def test_crop_boxes_are_squares_around_the_face_box(boxes, margin):
    crop = geometry.crop_boxes_from_face_boxes(boxes, margin).numpy().astype(np.float64)
    boxes = boxes.astype(np.float64)
    tol = 1e-6 * (np.abs(boxes).max() + 1) * 4
    width, height = crop[:, 2] - crop[:, 0], crop[:, 3] - crop[:, 1]
    np.testing.assert_allclose(width, height, atol=tol)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    np.testing.assert_allclose(width, side, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(crop[:, 0] + crop[:, 2], boxes[:, 0] + boxes[:, 2], atol=tol)
    np.testing.assert_allclose(crop[:, 1] + crop[:, 3], boxes[:, 1] + boxes[:, 3], atol=tol)
    assert (crop[:, :2] <= boxes[:, :2] + tol).all() and (crop[:, 2:] >= boxes[:, 2:] - tol).all()


@st.composite
def landmark_sets(draw):
    num = draw(st.sampled_from([5, 68, 3]))
    n = draw(st.integers(1, 3))
    values = draw(st.lists(COORD, min_size=n * num * 2, max_size=n * num * 2))
    points = np.array(values, np.float32).reshape(n, num, 2)
    if draw(st.booleans()):  # all points of a face in one place: a zero-size face
        points[0] = points[0, :1]
    params = {} if num in geometry.LANDMARK_BOX_PARAMS else {
        "scale": draw(st.floats(0.5, 3)), "shift_y": draw(st.floats(-0.2, 0.2))}
    return points, params


@FUZZ
@given(landmark_sets())
def test_landmark_box_is_finite_square_around_the_landmark_centre(generated):
    points, params = generated
    box = geometry.landmark_box(points, **params).numpy().astype(np.float64)
    assert box.shape == (len(points), 4) and np.isfinite(box).all()
    lo, hi = points.min(axis=1).astype(np.float64), points.max(axis=1).astype(np.float64)
    centre = (lo + hi) / 2
    tol = 1e-6 * (np.abs(points).max() + 1) * 4
    assert (box[:, :2] <= centre + tol).all() and (box[:, 2:] >= centre - tol).all()
    np.testing.assert_allclose(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1], atol=tol)


BOX_VALUE = st.one_of(
    st.integers(-60, 60).map(float),
    st.floats(-100, 100, width=32, allow_nan=False, allow_subnormal=False).map(
        lambda v: v if abs(v) > 1e-3 else 0.0),
    st.sampled_from([math.nan, math.inf, -math.inf]))


def _box_is_valid(box: np.ndarray, height: int, width: int) -> bool:
    """The rules of ``geometry.check_face_boxes``, written out in float32."""
    left, top, right, bottom = box.astype(np.float32)
    h, w, half = np.float32(height), np.float32(width), np.float32(0.5)
    if not (np.isfinite(box).all() and right - left > 0 and bottom - top > 0
            and left < w - half and right > -half and top < h - half and bottom > -half):
        return False
    side, fraction = np.float32(geometry.MIN_BOX_SIDE), np.float32(geometry.MIN_BOX_INSIDE)
    inside_w = min(right, w - half) - max(left, -half)
    inside_h = min(bottom, h - half) - max(top, -half)
    return bool(right - left >= side and bottom - top >= side
                and inside_w >= fraction * (right - left)
                and inside_h >= fraction * (bottom - top))


@FUZZ
@given(height=st.integers(1, 40), width=st.integers(1, 40),
       boxes=st.integers(1, 3).flatmap(
           lambda n: st.lists(st.lists(BOX_VALUE, min_size=4, max_size=4), min_size=n,
                              max_size=n)))
def test_validate_serving_inputs_rejects_exactly_the_bad_boxes(height, width, boxes):
    boxes = np.array(boxes, np.float32)
    frames = np.zeros((len(boxes), height, width, 3), np.uint8)
    valid = all(_box_is_valid(box, height, width) for box in boxes)
    if valid:
        _, checked = geometry.validate_serving_inputs(frames, boxes)
        np.testing.assert_array_equal(checked.numpy(), boxes)
        np.testing.assert_array_equal(geometry.check_face_boxes(boxes, height, width), boxes)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError):
            geometry.validate_serving_inputs(frames, boxes)
        with pytest.raises(ValueError):
            geometry.check_face_boxes(boxes, height, width)


@st.composite
def boxes_inside(draw, height: int, width: int):
    """1-3 valid boxes (``_box_is_valid``) overlapping a ``height x width`` image:
    sides from ``MIN_BOX_SIDE`` up, at least ``MIN_BOX_INSIDE`` (plus 5 %) inside."""
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row = []
        for extent in (width, height):
            side = draw(st.floats(geometry.MIN_BOX_SIDE, max(geometry.MIN_BOX_SIDE, min(
                60.0, extent / (geometry.MIN_BOX_INSIDE + 0.05)))))
            low = -0.5 - (1 - geometry.MIN_BOX_INSIDE - 0.05) * side
            high = extent - 0.5 - (geometry.MIN_BOX_INSIDE + 0.05) * side
            row.append((draw(st.floats(low, max(low, high))), side))
        (left, box_w), (top, box_h) = row
        box = np.array([left, top, left + box_w, top + box_h], np.float32)
        assume(_box_is_valid(box, height, width))
        rows.append(box)
    return np.array(rows, np.float32)


@FUZZ_FEW
@given(data=st.data(), height=st.integers(1, 40), width=st.integers(1, 40),
       which=st.integers(0, 2),
       fault=st.sampled_from(["swap_x", "swap_y", "flat_x", "flat_y", "nan", "inf",
                              "right_of", "left_of", "above", "below"]))
def test_validate_serving_inputs_rejects_degenerate_boxes(data, height, width, which, fault):
    boxes = data.draw(boxes_inside(height, width))
    frames = np.zeros((len(boxes), height, width, 3), np.uint8)
    geometry.validate_serving_inputs(frames, boxes)  # accepted before the fault
    box = boxes[which % len(boxes)]
    left, top, right, bottom = box.copy()
    box[:] = {"swap_x": [right, top, left, bottom], "swap_y": [left, bottom, right, top],
              "flat_x": [left, top, left, bottom], "flat_y": [left, top, right, top],
              "nan": [left, math.nan, right, bottom], "inf": [left, top, math.inf, bottom],
              "right_of": [width - 0.5, top, width + 5, bottom],
              "left_of": [-20, top, -0.5, bottom],
              "above": [left, -30, right, -0.5],
              "below": [left, height - 0.5, right, height + 10]}[fault]
    with pytest.raises(tf.errors.InvalidArgumentError):
        geometry.validate_serving_inputs(frames, boxes)


# ---------------------------------------------------------------------------
# Findings of the fuzzing (fixed), and one limitation (an expected failure).

CUHK_GOOD = "a.jpg 11 92 22 88 30 40 60 41 45 55 35 70 58 71"
BEYOND_FLOAT32 = [
    ("cuhk_point", "list.txt", CUHK_GOOD.replace(" 58 ", " 1e39 ")),
    ("cuhk_box", "list.txt", CUHK_GOOD.replace(" 92 ", " 1e39 ")),
    ("cuhk_box_rounds_to_flat", "list.txt", CUHK_GOOD.replace(" 11 92 ", " 1 1.00000001 ")),
    ("mtfl_point", "list.txt", "a.jpg 1 2 3 4 5e38 6 7 8 9 10 1 2 2 3"),
    ("csv_point", "marks.csv", "image,x0,y0\na.jpg,-1e39,2"),
    ("imglab_point", "faces.xml",
     ("<dataset><images><image file='a.jpg'><box top='1' left='2' width='30' height='30'>"
      "<part name='0' x='1e39' y='5'/></box></image></images></dataset>")),
]
_BEYOND_READERS = {"cuhk": readers.read_cuhk_list, "mtfl": readers.read_mtfl_list,
                   "csv": readers.read_landmark_csv, "imglab": readers.read_imglab_xml}


# Checked in float32, as stored (1e39 would become inf, a box 1..1.00000001 flat),
# without numpy's overflow warning.
@pytest.mark.filterwarnings("error:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("case, name, text", BEYOND_FLOAT32, ids=[c[0] for c in BEYOND_FLOAT32])
def test_values_beyond_float32_are_rejected(case, name, text):
    read = _BEYOND_READERS[case.split("_")[0]]
    with _in_temp_file(name, text + "\n") as path:
        skipped = []
        records = read(path, on_error="skip", skipped=skipped)
        _check_finite_records(records)
        assert not records and len(skipped) == 1


def test_mtfl_attribute_beyond_int64_is_rejected():
    text = ("a.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3\n"
            "b.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 99999999999999999999\n")
    with _in_temp_file("list.txt", text) as path:
        skipped = []
        records = readers.read_mtfl_list(path, on_error="skip", skipped=skipped)
        assert all(-2 ** 63 <= v < 2 ** 63 for r in records for v in r.attributes.values())
        assert [source for source, _ in skipped] == [f"{path}:2"]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_csv_oversized_field_is_a_data_error(on_error):
    text = "image,x0,y0\na.jpg,1,2\nb.jpg,1," + "9" * 200_000 + "\n"
    with _in_temp_file("marks.csv", text) as path:
        try:
            readers.read_landmark_csv(path, on_error=on_error)
        except DataError as e:
            assert str(e).startswith(f"{path}:3: ")


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_csv_unmatched_quote_names_its_line(on_error):
    text = 'image,x0,y0\na.jpg,1,2\n"b.jpg,3,4\nc.jpg,5,6\nd.jpg,7,8\n'
    with (_in_temp_file("marks.csv", text) as path,
          pytest.raises(DataError, match=f"^{re.escape(path)}:3: ")):
        readers.read_landmark_csv(path, on_error=on_error)


@pytest.mark.parametrize("fmt, line", [
    ("cuhk", CUHK_GOOD.replace(" 11 ", "\x0c11 ")),
    ("cuhk", CUHK_GOOD.replace("a.jpg", "a\u2028b.jpg")),
    ("csv", "a\x1cb.jpg,1,2"),
])
def test_line_numbers_count_only_newlines(fmt, line):
    read, name, _ = LINE_READERS[fmt]
    bad = "bad line" if fmt == "cuhk" else "c.jpg,1"
    header = "image,x0,y0\n" if fmt == "csv" else ""
    with _in_temp_file(name, f"{header}{line}\n{bad}\n") as path:
        skipped = []
        records = read(path, on_error="skip", skipped=skipped)
        bad_line = 3 if fmt == "csv" else 2
        assert [r.source for r in records] == [f"{path}:{bad_line - 1}"]
        assert [s for s, _ in skipped] == [f"{path}:{bad_line}"]


@pytest.mark.parametrize("top, left, width, height", [(10, 20, 40, 30), (0, 0, 80, 80)])
def test_imglab_box_matches_dlib_detection_convention(top, left, width, height):
    import dlib

    xml = (f"<dataset><images><image file='a.jpg'><box top='{top}' left='{left}' "
           f"width='{width}' height='{height}'><part name='0' x='5' y='5'/></box>"
           "</image></images></dataset>")
    with _in_temp_file("faces.xml", xml) as path:
        record, = readers.read_imglab_xml(path)
    rect = dlib.rectangle(left, top, left + width - 1, top + height - 1)
    np.testing.assert_array_equal(record.box, boxes_lib.dlib_rect_to_box(rect))


def _jpeg_cut_with_eoi() -> bytes:
    data = cv2.imencode(".jpg", _RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    return data[:len(data) * 2 // 3] + b"\xff\xd9"


@pytest.mark.xfail(strict=True, reason=(
    "limitation: load_image detects truncation only by a missing EOI; a cut JPEG "
    "with an EOI appended decodes with grey rows (libjpeg only warns)"))
def test_load_image_rejects_cut_jpeg_with_eoi():
    assert isinstance(_load(_jpeg_cut_with_eoi()), DataError)


def test_load_image_png_whose_header_lies_about_its_size():
    """IHDR says 16 x 9 (valid CRC) over the pixel data of 12 x 8: only DataError."""
    data = bytearray(VALID_IMAGES["png"])
    ihdr = data.find(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 16, 9)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    result = _load(bytes(data))
    assert isinstance(result, DataError) or result.shape == (9, 16, 3)
