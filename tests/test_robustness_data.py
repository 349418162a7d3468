"""Bad data sets through the conversion (``python -m common.prepare``).

A folder of images where some are fine (JPEG, PNG, a PNG named ``.jpg``, grey, RGBA,
16-bit) and some are broken (corrupt, truncated, empty, text, missing), listed by a
CUHK list and by a landmark CSV whose other lines are broken too (malformed, wrong
point count, NaN/inf, non-numeric, degenerate box). The conversion must:

* with ``--on_error=skip``: write every good face (read back with
  ``common.tfrecord.parse_face``: same landmarks, same pixels as
  ``common.images.load_image``), name every bad line with its reason in
  ``skipped.txt`` and ``dataset.json``, and make the counts add up
  (written + skipped == non-blank lines);
* with ``--on_error=fail``: exit non-zero with a message naming the list file and
  line (and the image), and leave nothing that looks like a finished conversion.

Landmarks outside the image: a face cut by the image border has points outside it,
so points a little outside are kept (here half an image size). A point more than
``OUTSIDE_LIMIT`` image sizes (``max(height, width)``) outside the image rectangle
``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` cannot be a face in that image (coordinates of
another resolution, swapped columns, a typo): the record must be rejected with the
reason "landmarks outside the image" (``test_far_outside_landmarks_are_rejected``).

The CLI runs (subprocesses, all four started at once) are ``slow``; the same checks
run in-process on ``prepare_dataset``, which the CLI wraps, in the default suite.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from common import images, prepare, tfrecord
from common.records import DataError

HEIGHT, WIDTH = 48, 64
FIVE_POINTS = np.array([[20.0, 18.0], [44.0, 18.0], [32.0, 28.0], [22.0, 38.0], [42.0, 38.0]])
BOX = (8, 56, 4, 44)  # CUHK order: left right top bottom
OUTSIDE_LIMIT = 1.0
"""Image sizes a landmark may lie outside the image before the record is an error."""


# ---------------------------------------------------------------------------
# The image folder.

def _noise(seed: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    high = 65536 if dtype == np.uint16 else 256
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return rng.integers(0, high, size=shape).astype(dtype)


def _encode(ext: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def _corrupt_jpeg() -> bytes:
    """A complete JPEG whose frame header declares zero colour components."""
    data = _encode(".jpg", _noise(20))
    sof = data.find(b"\xff\xc0")
    return data[:sof + 9] + b"\x00" + data[sof + 10:]


def _corrupt_png() -> bytes:
    """A PNG with its chunk structure intact and its IDAT payload overwritten."""
    data = _encode(".png", _noise(21))
    idat = data.find(b"IDAT") + 4
    return data[:idat] + b"\xaa" * 64 + data[idat + 64:]


# name: (file bytes or None for a missing file, reason it is skipped or None).
IMAGE_FILES = {
    "rgb.jpg": (_encode(".jpg", _noise(1)), None),
    "rgb.png": (_encode(".png", _noise(2)), None),
    "png_named.jpg": (_encode(".png", _noise(3)), None),
    "grey.jpg": (_encode(".jpg", _noise(4, channels=1)), None),
    "grey.png": (_encode(".png", _noise(5, channels=1)), None),
    "rgba.png": (_encode(".png", _noise(6, channels=4)), None),
    "deep.png": (_encode(".png", _noise(7, dtype=np.uint16)), None),
    "corrupt.jpg": (_corrupt_jpeg(), "not a decodable image"),
    "corrupt.png": (_corrupt_png(), "not a decodable image"),
    "cut.jpg": (_encode(".jpg", _noise(8))[:600], "truncated image"),
    "empty.jpg": (b"", "empty file"),
    "text.jpg": (b"image,x0,y0\nthis is a list, not an image\n", "not a decodable image"),
    "missing.jpg": (None, "file not found"),
}
GOOD_IMAGES = [name for name, (_, reason) in IMAGE_FILES.items() if reason is None]
BAD_IMAGES = [name for name, (_, reason) in IMAGE_FILES.items() if reason is not None]


def _write_images(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in IMAGE_FILES.items():
        if data is not None:
            (folder / name).write_bytes(data)


# ---------------------------------------------------------------------------
# The lists: one entry per line, what it says and what must happen to it.

@dataclasses.dataclass
class Line:
    """One line of a list and its expected fate.

    Attributes:
        text: the line without its line ending.
        image: the image file name.
        landmarks: the (5, 2) points a written face must carry, or None.
        reason: a substring of the skip reason, or None for a written face.
        image_fault: True when the image, not the annotation, is bad.
        number: 1-based line number in the written file (set by ``_write_list``).
    """

    text: str
    image: str
    landmarks: np.ndarray | None = None
    reason: str | None = None
    image_fault: bool = False
    number: int = 0


def _coords(points: np.ndarray, sep: str) -> str:
    return sep.join(f"{v:g}" for v in np.asarray(points, np.float64).reshape(-1))


def _cuhk(image: str, points: np.ndarray, box=BOX) -> str:
    return f"images/{image} {' '.join(str(v) for v in box)} {_coords(points, ' ')}"


def _csv(image: str, points: np.ndarray) -> str:
    return f"{image},{_coords(points, ',')}"


def _near_outside_points() -> np.ndarray:
    """A face cut by the left border: one point half an image size outside."""
    points = FIVE_POINTS.copy()
    points[0] = [-0.5 * WIDTH, 10.0]
    return points


def _lines(fmt: str, annotation_faults: bool = True) -> list[Line]:
    """The lines of a CUHK list (``fmt="cuhk"``) or landmark CSV (``"csv"``).

    One line per image file (good or bad), a face cut by the border, then (with
    ``annotation_faults``) broken annotations of a good image.
    """
    row = _cuhk if fmt == "cuhk" else _csv
    lines = []
    for i, name in enumerate(IMAGE_FILES):
        reason = IMAGE_FILES[name][1]
        points = FIVE_POINTS + 0.25 * i
        lines.append(Line(row(name, points), name, None if reason else points, reason,
                          image_fault=reason is not None))
    lines.append(Line(row("rgb.jpg", _near_outside_points()), "rgb.jpg",
                      _near_outside_points()))
    if not annotation_faults:
        return lines
    good = row("rgb.jpg", FIVE_POINTS)
    sep = " " if fmt == "cuhk" else ","
    tokens = good.split(sep)
    first_coordinate = 5 if fmt == "cuhk" else 1
    faults = [
        (sep.join(tokens[:4]), "wrong number of fields"),                     # malformed
        (row("rgb.jpg", FIVE_POINTS[:4]), "wrong number of fields"),          # 4 points
        (row("rgb.jpg", np.vstack([FIVE_POINTS, [[1, 2]]])), "wrong number of fields"),
        (sep.join(tokens[:first_coordinate] + ["nan"] + tokens[first_coordinate + 1:]),
         "NaN or inf"),
        (sep.join(tokens[:-1] + ["-inf"]), "NaN or inf"),
        (sep.join(tokens[:-1] + ["12px"]), "non-numeric"),
    ]
    if fmt == "cuhk":
        faults.append((_cuhk("rgb.jpg", FIVE_POINTS, box=(56, 8, 4, 44)),
                       "degenerate face box"))
    lines += [Line(text, "rgb.jpg", None, reason) for text, reason in faults]
    return lines


def _first_failure(lines: list[Line]) -> Line:
    """The line ``on_error="fail"`` stops at: annotations are all checked first."""
    bad = [line for line in lines if line.reason is not None]
    return next((line for line in bad if not line.image_fault), bad[0])


def _write_list(folder: pathlib.Path, fmt: str, lines: list[Line]) -> str:
    """Writes the list (images in ``folder/images``) with CRLF and blank lines mixed in.

    Returns:
        the list path.
    """
    _write_images(folder / "images")
    body = ["image," + ",".join(f"x{i},y{i}" for i in range(5))] if fmt == "csv" else []
    for i, line in enumerate(lines):
        if i % 5 == 2:
            body.append("   " if fmt == "cuhk" else "")  # blank lines are not faces
        body.append(line.text)
        line.number = len(body)
    text = "".join(b + ("\r\n" if i % 3 == 1 else "\n") for i, b in enumerate(body))
    path = folder / ("list.txt" if fmt == "cuhk" else "landmarks.csv")
    path.write_text(text, newline="")
    return str(path)


def _dataset(folder: pathlib.Path, fmt: str, **kwargs) -> tuple[str, list[Line]]:
    lines = _lines(fmt, **kwargs)
    return _write_list(folder, fmt, lines), lines


# ---------------------------------------------------------------------------
# Checks of an output folder.

def _read_faces(files: list[str]) -> list[dict]:
    faces = []
    for serialized in tf.data.TFRecordDataset(files):
        face = tfrecord.parse_face(serialized)
        faces.append({k: v.numpy() for k, v in face.items()})
    return faces


def check_skip_output(out: pathlib.Path, list_path: str, lines: list[Line],
                      fmt: str) -> None:
    """Everything good is written, everything bad is named, the counts add up."""
    good = [line for line in lines if line.reason is None]
    bad = [line for line in lines if line.reason is not None]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    meta = json.loads((out / prepare.DATASET_JSON).read_text())
    assert meta["read"] == len(lines)
    assert meta["written"] == sum(meta["splits"].values()) == len(good)
    assert len(meta["skipped"]) == len(bad)
    assert meta["written"] + len(meta["skipped"]) == meta["read"]

    # skipped.txt and dataset.json name the same lines, with their reasons.
    listed = [tuple(row.split("\t")) for row in
              (out / prepare.SKIPPED_TXT).read_text(encoding="utf-8").splitlines()]
    assert listed == [(s["source"], s["reason"]) for s in meta["skipped"]]
    reasons = dict(listed)
    assert len(reasons) == len(bad)
    for line in bad:
        reason = reasons[f"{list_path}:{line.number}"]
        assert line.reason in reason, (line.text, reason)
        if line.image_fault:
            assert line.image in reason, reason  # the image is named too

    # Exactly the good faces are in the shards, nothing else is.
    shards = [str(out / name) for names in meta["shards"].values() for name in names]
    assert sorted(shards) == sorted(tfrecord.find_shards(str(out)))
    faces = _read_faces(shards)
    assert len(faces) == len(good)
    by_line = {}
    for face in faces:
        source = face["source_path"].decode()
        assert source.endswith(")") and f"({list_path}:" in source, source
        by_line[int(source.rsplit(":", 1)[1][:-1])] = face
    assert sorted(by_line) == [line.number for line in good]
    for line in good:
        face = by_line[line.number]
        image_path = str(pathlib.Path(list_path).parent / "images" / line.image)
        np.testing.assert_allclose(face["landmarks"], line.landmarks, atol=1e-4)
        np.testing.assert_array_equal(face["image"], images.load_image(image_path))
        assert face["image"].shape == (HEIGHT, WIDTH, 3)
        if fmt == "cuhk":
            left, right, top, bottom = BOX
            np.testing.assert_array_equal(face["box"], [left, top, right, bottom])
            assert face["box_source"] == b"given"
        else:
            assert face["box_source"] in (b"dlib", b"landmarks")
            assert np.isfinite(face["box"]).all()


def check_no_finished_output(out: pathlib.Path) -> None:
    """Nothing in ``out`` looks like a finished conversion (no shard, no metadata)."""
    names = os.listdir(out) if out.is_dir() else []
    assert not [n for n in names if n.endswith(".tfrecord")], names
    assert not [n for n in names if n.endswith(".tmp")], names
    assert prepare.DATASET_JSON not in names and prepare.SKIPPED_TXT not in names


def check_consistent_output(out: pathlib.Path) -> None:
    """Shards exist only with a dataset.json that lists exactly them, with their counts."""
    names = os.listdir(out) if out.is_dir() else []
    shards = sorted(n for n in names if n.endswith(".tfrecord"))
    if prepare.DATASET_JSON not in names:
        assert not shards, names
        return
    meta = json.loads((out / prepare.DATASET_JSON).read_text())
    assert sorted(n for files in meta["shards"].values() for n in files) == shards
    for split, files in meta["shards"].items():
        count = sum(1 for _ in tf.data.TFRecordDataset([str(out / n) for n in files]))
        assert count == meta["splits"][split]


class _NoFaces:
    """A detector that finds nothing (keeps in-process runs fast and deterministic)."""

    def __call__(self, image):
        return []


def _prepare(list_path: str, out: pathlib.Path, on_error: str):
    return prepare.prepare_dataset(list_path, str(out), on_error=on_error, split_by="none",
                                   num_shards=2, progress=False, finder=_NoFaces())


# ---------------------------------------------------------------------------
# In-process (the library function behind the CLI).

@pytest.mark.parametrize("fmt", ["cuhk", "csv"])
def test_skip_writes_every_good_face_and_names_every_bad_line(tmp_path, fmt):
    list_path, lines = _dataset(tmp_path, fmt)
    summary = _prepare(list_path, tmp_path / "out", "skip")
    assert summary.format == fmt
    assert summary.num_written == len(GOOD_IMAGES) + 1  # + the face cut by the border
    assert summary.num_written + len(summary.skipped) == summary.read == len(lines)
    check_skip_output(tmp_path / "out", list_path, lines, fmt)


@pytest.mark.parametrize("fmt, annotation_faults, first_bad", [
    # Annotations are all checked before any image is opened.
    ("cuhk", True, "wrong number of fields"),
    ("csv", True, "wrong number of fields"),
    ("cuhk", False, "corrupt.jpg: not a decodable image"),
    ("csv", False, "corrupt.jpg: not a decodable image"),
])
def test_fail_names_list_line_and_leaves_no_output(tmp_path, fmt, annotation_faults,
                                                   first_bad):
    # The image faults come first in the list, yet the first annotation fault wins.
    list_path, lines = _dataset(tmp_path, fmt, annotation_faults=annotation_faults)
    first = _first_failure(lines)
    with pytest.raises(DataError) as info:
        _prepare(list_path, tmp_path / "out", "fail")
    message = str(info.value)
    assert message.startswith(f"{list_path}:{first.number}: "), message
    assert first_bad in message
    check_no_finished_output(tmp_path / "out")


def _tree(folder: pathlib.Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))
            if (folder / n).is_file()}


@pytest.mark.parametrize("annotation_faults", [True, False], ids=["bad_list", "bad_image"])
def test_failed_rerun_keeps_the_previous_conversion(tmp_path, annotation_faults):
    """Every failure of --on_error=fail treats an existing conversion alike: it stays,
    complete and untouched (the new one is staged and moved in only when complete)."""
    out = tmp_path / "out"
    list_path, _ = _dataset(tmp_path / "a", "cuhk")
    _prepare(list_path, out, "skip")
    check_consistent_output(out)
    before = _tree(out)
    # Fails at the list's annotations, or at an image after good faces were written.
    bad_list, _ = _dataset(tmp_path / "b", "cuhk", annotation_faults=annotation_faults)
    with pytest.raises(DataError, match=str(bad_list)):
        _prepare(bad_list, out, "fail")
    assert _tree(out) == before
    assert sorted(os.listdir(out)) == sorted(before)  # no staging folder left either
    check_consistent_output(out)


def test_all_images_bad_writes_nothing(tmp_path):
    lines = [line for line in _lines("cuhk", annotation_faults=False) if line.reason]
    list_path = _write_list(tmp_path, "cuhk", lines)
    with pytest.raises(DataError, match="no face could be written"):
        _prepare(list_path, tmp_path / "out", "skip")
    check_no_finished_output(tmp_path / "out")


def _far_outside_lines(fmt: str) -> list[Line]:
    row = _cuhk if fmt == "cuhk" else _csv
    far = FIVE_POINTS.copy()
    far[2] = [WIDTH + 2 * max(HEIGHT, WIDTH), 28.0]  # 2 image sizes right of the image
    huge = FIVE_POINTS.copy()
    huge[4] = [42.0, 1e6]
    return [Line(row("rgb.jpg", FIVE_POINTS), "rgb.jpg", FIVE_POINTS),
            Line(row("rgb.png", far), "rgb.png", None, "landmarks outside the image"),
            Line(row("rgb.jpg", _near_outside_points()), "rgb.jpg", _near_outside_points()),
            Line(row("grey.png", huge), "grey.png", None, "landmarks outside the image")]


@pytest.mark.parametrize("fmt", ["cuhk", "csv"])
def test_far_outside_landmarks_are_rejected(tmp_path, fmt):
    lines = _far_outside_lines(fmt)
    list_path = _write_list(tmp_path, fmt, lines)
    summary = _prepare(list_path, tmp_path / "skip", "skip")
    assert summary.num_written == 2
    check_skip_output(tmp_path / "skip", list_path, lines, fmt)
    with pytest.raises(DataError, match=f"{list_path}:{lines[1].number}: .*landmarks "
                       "outside the image"):
        _prepare(list_path, tmp_path / "fail", "fail")


# ---------------------------------------------------------------------------
# The real CLI, in subprocesses started together.

@dataclasses.dataclass
class CliRun:
    list_path: str
    lines: list[Line]
    out: pathlib.Path
    fmt: str
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("cli")
    runs = {}
    for name, fmt, on_error, annotation_faults in (
            ("cuhk_skip", "cuhk", "skip", True), ("csv_skip", "csv", "skip", True),
            ("cuhk_fail", "cuhk", "fail", True), ("csv_fail", "csv", "fail", False)):
        list_path, lines = _dataset(root / name, fmt, annotation_faults=annotation_faults)
        run = CliRun(list_path, lines, root / name / "out", fmt)
        command = [sys.executable, "-m", "common.prepare", f"--input={list_path}",
                   f"--output={run.out}", f"--on_error={on_error}", "--split_by=none",
                   "--num_shards=2", "--noprogress"]
        process = subprocess.Popen(
            command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        runs[name] = (run, process)
    for run, process in runs.values():
        run.stdout, run.stderr = process.communicate(timeout=600)
        run.returncode = process.returncode
    return {name: run for name, (run, _) in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cuhk_skip", "csv_skip"])
def test_cli_skip(cli_runs, name):
    run = cli_runs[name]
    assert run.returncode == 0, run.stderr[-2000:]
    bad = sum(line.reason is not None for line in run.lines)
    assert f"read {len(run.lines)}, written {len(run.lines) - bad}, skipped {bad}" in run.stdout
    check_skip_output(run.out, run.list_path, run.lines, run.fmt)


@pytest.mark.slow
@pytest.mark.parametrize("name, first_bad", [
    ("cuhk_fail", "wrong number of fields"),
    ("csv_fail", "corrupt.jpg: not a decodable image")])
def test_cli_fail(cli_runs, name, first_bad):
    run = cli_runs[name]
    assert run.returncode != 0
    first = _first_failure(run.lines)
    assert f"error: {run.list_path}:{first.number}: " in run.stderr, run.stderr[-2000:]
    assert first_bad in run.stderr
    assert "Traceback" not in run.stderr
    check_no_finished_output(run.out)
