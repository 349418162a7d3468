"""Tests of common.readers (annotation formats) and common.images (decoding)."""

import os
import pathlib
import struct
import zlib

import cv2
import numpy as np
import pytest

from common import images, readers
from common.records import DataError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------
# Helpers writing small annotation files.

def _pts_text(points: np.ndarray, n_points: int | None = None) -> str:
    n_points = len(points) if n_points is None else n_points
    rows = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points:  {n_points}\n{{\n{rows}\n}}\n"


def _write(path: pathlib.Path, text: str | bytes, newline: str = "\n") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.replace("\n", newline).encode()
    path.write_bytes(text)
    return path


def _fake_300w(root: pathlib.Path) -> dict[str, np.ndarray]:
    """Writes one face per subset (1-based points); returns the 0-based points."""
    expected = {}
    for i, (sub, _) in enumerate(readers.SUBSETS_300W):
        ext = ".png" if sub.startswith("lfpw") else ".jpg"
        points = RNG.uniform(1, 100, size=(68, 2)).round(3)
        _write(root / sub / f"face_{i}.pts", _pts_text(points))
        _write(root / sub / f"face_{i}{ext}", b"not opened by the reader")
        expected[str(root / sub / f"face_{i}{ext}")] = points - 1
    return expected


CUHK_LINES = [
    # path left right top bottom x1 y1 ... x5 y5
    (r"lfw_5590\Aaron_0001.jpg 84 161 92 169 106.25 107.75 146.75 112.25 125.25 142.75 "
     "105.25 157.75 139.75 161.75"),
    "net_7876/1_0_0.jpg 11 92 22 88 30 40 60 41 45 55 35 70 58 71",
]


def _imglab_xml(boxes: str) -> str:
    return ("<?xml version='1.0' encoding='ISO-8859-1'?>\n<dataset>\n<images>\n"
            f"  <image file='a.jpg'>\n{boxes}  </image>\n</images>\n</dataset>\n")


def _imglab_box(top: int, left: int, points: np.ndarray, order=None, extra: str = "") -> str:
    order = range(len(points)) if order is None else order
    parts = "".join(f"      <part name='{i:02d}' x='{points[i][0]:g}' y='{points[i][1]:g}'/>\n"
                    for i in order)
    return (f"    <box top='{top}' left='{left}' width='40' height='30'{extra}>\n"
            f"{parts}    </box>\n")


# ---------------------------------------------------------------------------
# Readers on good input.

def test_read_300w_splits_and_one_based(tmp_path):
    expected = _fake_300w(tmp_path)
    records = readers.read_300w(str(tmp_path))
    assert len(records) == len(readers.SUBSETS_300W)
    splits = {r.image_path: r.split for r in records}
    assert sorted(splits.values()) == sorted(["train"] * 3 + ["common"] * 2 + ["challenging"])
    assert splits[str(tmp_path / "ibug" / "face_5.jpg")] == "challenging"
    assert splits[str(tmp_path / "lfpw" / "testset" / "face_3.png")] == "common"
    for record in records:
        assert record.landmarks.dtype == np.float32 and record.landmarks.shape == (68, 2)
        np.testing.assert_allclose(record.landmarks, expected[record.image_path], atol=1e-4)
        assert record.box is None and record.source.endswith(".pts")


def test_read_300w_plain_folder_of_pts(tmp_path):
    points = RNG.uniform(1, 50, size=(68, 2))
    _write(tmp_path / "x" / "a.pts", _pts_text(points))
    _write(tmp_path / "x" / "a.jpg", b"")
    (record,) = readers.read_300w(str(tmp_path))
    assert record.split == ""
    np.testing.assert_allclose(record.landmarks, points - 1, atol=1e-3)


def test_read_cuhk_list_crlf_backslash(tmp_path):
    path = _write(tmp_path / "list.txt", "\n".join(CUHK_LINES) + "\n", newline="\r\n")
    records = readers.read_cuhk_list(str(path))
    assert [r.image_path for r in records] == [str(tmp_path / "lfw_5590" / "Aaron_0001.jpg"),
                                              str(tmp_path / "net_7876" / "1_0_0.jpg")]
    # left, RIGHT, top, BOTTOM in the file; (left, top, right, bottom) stored.
    np.testing.assert_array_equal(records[0].box, [84, 92, 161, 169])
    np.testing.assert_array_equal(records[0].landmarks[0], [106.25, 107.75])
    np.testing.assert_array_equal(records[0].landmarks[4], [139.75, 161.75])
    assert records[1].source == f"{path}:2"


def test_read_mtfl_list_one_based(tmp_path):
    path = _write(tmp_path / "mtfl.txt", r" lfw_5590\A_0001.jpg 107.25 147.75 126.25 106.25 "
                  "140.75 108.75 113.25 143.75 158.75 162.75 1 2 2 3\n")
    (record,) = readers.read_mtfl_list(str(path))
    assert record.image_path == str(tmp_path / "lfw_5590" / "A_0001.jpg")
    np.testing.assert_allclose(record.landmarks, [[106.25, 107.75], [146.75, 112.25],
                                                  [125.25, 142.75], [105.25, 157.75],
                                                  [139.75, 161.75]])
    assert record.box is None
    assert record.attributes == {"gender": 1, "smile": 2, "glasses": 2, "pose": 3}


@pytest.mark.parametrize("with_images_folder", [True, False])
def test_read_landmark_csv(tmp_path, with_images_folder):
    if with_images_folder:
        (tmp_path / "images").mkdir()
    path = _write(tmp_path / "marks.csv",
                  "image,x0,y0,x1,y1,x2,y2\na.jpg,1,2,3,4,5,6\n\nsub/b.jpg,7.5,8,9,10,11,12\n")
    records = readers.read_landmark_csv(str(path))
    folder = tmp_path / "images" if with_images_folder else tmp_path
    assert [r.image_path for r in records] == [str(folder / "a.jpg"), str(folder / "sub" / "b.jpg")]
    np.testing.assert_array_equal(records[1].landmarks, [[7.5, 8], [9, 10], [11, 12]])
    assert records[1].source == f"{path}:4"


def test_read_imglab_two_faces_ordered_parts_and_empty_boxes(tmp_path):
    a = RNG.integers(0, 100, size=(68, 2))
    b = RNG.integers(0, 100, size=(68, 2))
    boxes = (_imglab_box(10, 20, a, order=RNG.permutation(68))
             + "    <box top='5' left='5' width='10' height='10'/>\n"
             + _imglab_box(50, 60, b)
             + _imglab_box(1, 1, b, extra=" ignore='1'"))
    path = _write(tmp_path / "faces.xml", _imglab_xml(boxes))
    skipped = []
    records = readers.read_imglab_xml(str(path), skipped=skipped)
    assert len(records) == 2
    assert {r.image_path for r in records} == {str(tmp_path / "a.jpg")}
    np.testing.assert_array_equal(records[0].landmarks, a)
    np.testing.assert_array_equal(records[1].landmarks, b)
    # dlib rectangles (right = left + width - 1, bottom = top + height - 1 inclusive)
    # as the pixel area they cover, like common.boxes.dlib_rect_to_box.
    np.testing.assert_array_equal(records[0].box, [19.5, 9.5, 59.5, 39.5])
    assert [reason for _, reason in skipped] == ["box without landmarks", "box marked ignore"]
    assert skipped[0][0] == f"{path}:{5 + 68 + 2}"


# ---------------------------------------------------------------------------
# Format detection and the entry point.

def _one_of_each(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    root = tmp_path / "300w"
    _fake_300w(root)
    mtfl = "a.jpg 107.25 147.75 126.25 106.25 140.75 108.75 113.25 143.75 158.75 162.75 1 2 2 3"
    return {
        "300w": root,
        "cuhk": _write(tmp_path / "trainImageList.txt", "\n".join(CUHK_LINES) + "\n"),
        "mtfl": _write(tmp_path / "training.txt", mtfl + "\n"),
        "csv": _write(tmp_path / "marks.csv", "image,x0,y0\na.jpg,1,2\n"),
        "imglab": _write(tmp_path / "faces.xml",
                         _imglab_xml(_imglab_box(1, 2, np.ones((5, 2))))),
    }


def test_detect_format_and_read_dataset(tmp_path):
    for name, path in _one_of_each(tmp_path).items():
        assert readers.detect_format(str(path)) == name
        result = readers.read_dataset(str(path))
        assert result.format == name and result.records and result.skipped == []
    assert set(readers.FORMATS) == {"300w", "cuhk", "mtfl", "csv", "imglab"}


def test_detect_format_by_content_and_integer_mtfl(tmp_path):
    xml = _write(tmp_path / "faces.dat", _imglab_xml(""))
    assert readers.detect_format(str(xml)) == "imglab"
    # Integer coordinates: the attribute ranges still tell MTFL from CUHK.
    mtfl = _write(tmp_path / "m.txt", "a.jpg 10 20 30 40 50 60 70 80 90 95 2 1 1 5\n")
    assert readers.detect_format(str(mtfl)) == "mtfl"


@pytest.mark.parametrize("content", ["hello world\n", "a.jpg 1 2 3\n", "",
                                     "a b c d e f g h i j k l m n o\n"])
def test_detect_format_unrecognised(tmp_path, content):
    path = _write(tmp_path / "list.txt", content)
    with pytest.raises(DataError,
                       match=r"list\.txt: unrecognised.*tried 300w.*imglab.*csv.*cuhk.*mtfl"):
        readers.detect_format(str(path))


def test_detect_format_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="nothing.txt: file not found"):
        readers.detect_format(str(tmp_path / "nothing.txt"))
    with pytest.raises(DataError, match="no .pts files"):
        readers.detect_format(str(tmp_path))


def test_read_dataset_arguments(tmp_path):
    path = _one_of_each(tmp_path)["csv"]
    with pytest.raises(ValueError, match="unknown format"):
        readers.read_dataset(str(path), format="xyz")
    with pytest.raises(ValueError, match="on_error"):
        readers.read_dataset(str(path), on_error="ignore")
    empty = _write(tmp_path / "empty.csv", "image,x0,y0\n")
    with pytest.raises(DataError, match="no faces read"):
        readers.read_dataset(str(empty))


# ---------------------------------------------------------------------------
# Bad input: DataError naming file and line; on_error="skip" counts.

GOOD_CUHK = CUHK_LINES[1]
GOOD_MTFL = "a.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3"
BAD_LINES = [
    ("cuhk", GOOD_CUHK + " 5", "wrong number of fields: expected 15"),
    ("cuhk", GOOD_CUHK.replace(" 30 ", " abc "), "non-numeric value 'abc'"),
    ("cuhk", GOOD_CUHK.replace(" 30 ", " nan "), "NaN or inf"),
    ("cuhk", GOOD_CUHK.replace(" 30 ", " inf "), "NaN or inf"),
    ("cuhk", GOOD_CUHK.replace(" 11 92 ", " 92 11 "), "degenerate face box"),
    ("mtfl", GOOD_MTFL.replace(" 5 ", " "), "wrong number of fields: expected 15"),
    ("mtfl", GOOD_MTFL.replace(" 5 ", " x5 "), "non-numeric coordinate 'x5'"),
    ("mtfl", GOOD_MTFL.replace(" 5 ", " NaN "), "NaN or inf"),
    ("mtfl", GOOD_MTFL[:-1] + "frontal", "attribute pose is not an integer"),
    ("csv", "a.jpg,1,2,3", "wrong number of fields: expected 5"),
    ("csv", "a.jpg,1,2,3,y", "non-numeric coordinate 'y'"),
    ("csv", "a.jpg,1,nan,3,4", "NaN or inf"),
]


def _list_with_bad_line(tmp_path, fmt, bad):
    good = {"cuhk": GOOD_CUHK, "mtfl": GOOD_MTFL, "csv": "a.jpg,1,2,3,4"}[fmt]
    lines = [good, good, bad, good]
    if fmt == "csv":
        lines.insert(0, "image,x0,y0,x1,y1")
    name = "list.csv" if fmt == "csv" else "list.txt"
    return _write(tmp_path / name, "\n".join(lines) + "\n"), (4 if fmt == "csv" else 3)


@pytest.mark.parametrize("fmt, bad, reason", BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path, fmt, bad, reason):
    path, line = _list_with_bad_line(tmp_path, fmt, bad)
    with pytest.raises(DataError) as info:
        readers.read_dataset(str(path), format=fmt)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)
    assert info.value.line == line


@pytest.mark.parametrize("fmt, bad, reason", BAD_LINES[:2] + BAD_LINES[-2:])
def test_bad_line_skipped(tmp_path, fmt, bad, reason):
    path, line = _list_with_bad_line(tmp_path, fmt, bad)
    result = readers.read_dataset(str(path), format=fmt, on_error="skip")
    assert len(result.records) == 3
    assert len(result.skipped) == 1
    source, why = result.skipped[0]
    assert source == f"{path}:{line}" and reason in why


@pytest.mark.parametrize("fmt", ["cuhk", "mtfl", "csv", "imglab"])
def test_missing_file(tmp_path, fmt):
    path = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        readers.FORMATS[fmt](str(path))


@pytest.mark.parametrize("header", ["image,x0,y0,x1", "a.jpg,1,2"])
def test_csv_bad_header(tmp_path, header):
    path = _write(tmp_path / "m.csv", header + "\n")
    with pytest.raises(DataError, match=r"m\.csv:1: .*header"):
        readers.read_landmark_csv(str(path))


def test_non_utf8_list(tmp_path):
    path = _write(tmp_path / "l.txt", GOOD_CUHK.encode() + b"\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"l\.txt:2: not a UTF-8"):
        readers.read_cuhk_list(str(path))


PTS_CASES = [
    # (edit of the 68 good lines, expected line, reason)
    (lambda rows: rows[:-1], 71, "wrong point count: expected 68, got 67"),
    (lambda rows: rows[:10] + ["1.0 abc"] + rows[11:], 14, "non-numeric coordinate 'abc'"),
    (lambda rows: rows[:10] + ["1.0 nan"] + rows[11:], 3, "NaN or inf) at point 10"),
    (lambda rows: rows[:10] + ["1.0 2.0 3.0"] + rows[11:], 14, "wrong number of fields"),
]


@pytest.mark.parametrize("edit, line, reason", PTS_CASES)
def test_bad_pts(tmp_path, edit, line, reason):
    _fake_300w(tmp_path)
    rows = [f"{x} {y}" for x, y in RNG.uniform(1, 9, size=(68, 2))]
    pts = tmp_path / "ibug" / "face_5.pts"
    _write(pts, "version: 1\nn_points: 68\n{\n" + "\n".join(edit(rows)) + "\n}\n")
    with pytest.raises(DataError) as info:
        readers.read_300w(str(tmp_path))
    assert str(info.value).startswith(f"{pts}:{line}: ")
    assert reason in str(info.value)
    result = readers.read_dataset(str(tmp_path), on_error="skip")
    assert len(result.records) == len(readers.SUBSETS_300W) - 1
    assert len(result.skipped) == 1 and reason in result.skipped[0][1]


def test_pts_without_image_and_bad_header(tmp_path):
    _fake_300w(tmp_path)
    os.remove(tmp_path / "afw" / "face_2.jpg")
    with pytest.raises(DataError, match=r"face_2\.pts: no image"):
        readers.read_300w(str(tmp_path))
    _write(tmp_path / "afw" / "face_2.jpg", b"")
    _write(tmp_path / "afw" / "face_2.pts", _pts_text(np.ones((68, 2)), n_points=39))
    with pytest.raises(DataError, match=r"face_2\.pts:2: wrong point count: n_points is 39"):
        readers.read_300w(str(tmp_path))


def test_imglab_errors(tmp_path):
    points = np.ones((68, 2))
    cases = [
        (_imglab_box(1, 2, points) + _imglab_box(1, 2, points[:67]),
         5 + 70, "wrong point count: expected 68, got 67"),
        (_imglab_box(1, 2, points, order=range(1, 68)), 5, "part names are not 0..66"),
        (_imglab_box(1, 2, points).replace("name='03'", "name='eye'"), 9, "is not an integer"),
        (_imglab_box(1, 2, points).replace("x='1'", "x='nan'", 1), 5, "NaN or inf"),
        (_imglab_box(1, 2, points).replace("width='40'", "width='0'"), 5, "degenerate face box"),
    ]
    for boxes, line, reason in cases:
        path = _write(tmp_path / "f.xml", _imglab_xml(boxes))
        with pytest.raises(DataError) as info:
            readers.read_imglab_xml(str(path))
        assert str(info.value).startswith(f"{path}:{line}: "), (str(info.value), reason)
        assert reason in str(info.value)
    path = _write(tmp_path / "f.xml", "<dataset><images><image file='a.jpg'>\n<box")
    with pytest.raises(DataError, match=r"f\.xml:2: not valid XML"):
        readers.read_imglab_xml(str(path))


# ---------------------------------------------------------------------------
# Images.

def _png(pixels: np.ndarray, color_type: int) -> bytes:
    """A minimal PNG encoder (any colour type and bit depth cv2.imwrite lacks)."""
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
    body = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


RGB = RNG.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, size=(6, 9), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, size=(6, 9), dtype=np.uint8)
# Smooth ramps with distinct channels survive JPEG well enough to check RGB order.
_ROWS, _COLS = np.mgrid[0:6, 0:9]
SMOOTH = np.stack([40 + 15 * _COLS, 60 + 20 * _ROWS, np.full((6, 9), 200)], axis=2).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                        [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


IMAGE_CASES = {
    # name: (file bytes, expected RGB or None when lossy)
    "rgb_png_named_jpg": (_png(RGB, 2), RGB),
    "grey_png": (_png(GREY, 0), np.repeat(GREY[..., None], 3, axis=2)),
    "grey_alpha_png": (_png(np.stack([GREY, ALPHA], axis=2), 4),
                       np.repeat(GREY[..., None], 3, axis=2)),
    "rgba_png": (_png(np.concatenate([RGB, ALPHA[..., None]], axis=2), 6), RGB),
    "rgb16_png": (_png(RGB.astype(np.uint16) * 257 + 100, 2), RGB),
    "grey16_png": (_png((GREY.astype(np.int64) * 257 - (GREY > 0) * 100).astype(np.uint16), 0),
                   np.repeat(GREY[..., None], 3, axis=2)),
    "rgb_jpeg": (_jpeg(SMOOTH), None),
    "progressive_jpeg": (cv2.imencode(".jpg", SMOOTH[..., ::-1].copy(),
                                      [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), None),
    "grey_jpeg": (cv2.imencode(".jpg", SMOOTH[..., 0])[1].tobytes(), None),
    "bmp": (cv2.imencode(".bmp", RGB[..., ::-1].copy())[1].tobytes(), RGB),
}


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_load_image_converts_to_rgb8(tmp_path, name):
    data, expected = IMAGE_CASES[name]
    path = _write(tmp_path / f"{name}.jpg", data)  # extension deliberately wrong
    image = images.load_image(str(path))
    assert image.dtype == np.uint8 and image.shape == (6, 9, 3)
    if expected is not None:
        np.testing.assert_array_equal(image, expected)
    else:
        reference = SMOOTH if name != "grey_jpeg" else np.repeat(SMOOTH[..., :1], 3, axis=2)
        error = np.abs(image.astype(int) - reference)
        assert error.mean() < 6 and error.max() < 24
    assert images.read_image_size(str(path)) == (6, 9)


def _truncate(data: bytes) -> bytes:
    return data[:len(data) * 2 // 3]


BAD_IMAGES = [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"just some text\n", "not a decodable image"),
    # Chunk structure intact, IDAT payload overwritten (bad CRC, bad zlib data).
    ("corrupt.png", _png(RGB, 2)[:41] + b"\xaa" * 100 + _png(RGB, 2)[141:],
     "not a decodable image"),
    ("cut.jpg", _truncate(_jpeg(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))),
     "truncated image"),
    ("cut_header.jpg", _jpeg(RGB)[:30], "truncated image"),
    ("cut.png", _truncate(_png(RGB, 2)), "truncated image"),
    ("no_iend.png", _png(RGB, 2)[:-12], "truncated image"),
]


@pytest.mark.parametrize("name, data, reason", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_load_image_rejects_bad_files(tmp_path, name, data, reason):
    path = _write(tmp_path / name, data)
    with pytest.raises(DataError, match=f"{name}: {reason}"):
        images.load_image(str(path))
    with pytest.raises(DataError, match=reason):
        images.encode_for_tfrecord(str(path))


def test_load_image_missing_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jpg: file not found"):
        images.load_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(DataError, match="is a directory"):
        images.load_image(str(tmp_path))


def test_jpeg_with_trailing_bytes_is_complete(tmp_path):
    path = _write(tmp_path / "tail.jpg", _jpeg(RGB) + b"\x00" * 16)
    assert images.load_image(str(path)).shape == (6, 9, 3)


def test_truncated_jpeg_with_exif_thumbnail_is_detected(tmp_path):
    # A complete thumbnail (with its own EOI) inside APP1 must not hide the cut.
    thumbnail = _jpeg(RGB)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 8) + b"Exif\x00\x00" + thumbnail
    main = _jpeg(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = _write(tmp_path / "exif.jpg", _truncate(main[:2] + app1 + main[2:]))
    with pytest.raises(DataError, match="truncated image"):
        images.load_image(str(path))


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_encode_for_tfrecord_round_trip(tmp_path, name):
    tf = pytest.importorskip("tensorflow")
    data, _ = IMAGE_CASES[name]
    path = _write(tmp_path / f"{name}.img", data)
    encoded, height, width = images.encode_for_tfrecord(str(path))
    expected = images.load_image(str(path))
    assert (height, width) == expected.shape[:2]
    passthrough = name in ("rgb_png_named_jpg", "rgb_jpeg", "progressive_jpeg")
    assert (encoded == data) == passthrough
    if encoded.startswith(b"\xff\xd8"):
        # Bit-exact with OpenCV only with the accurate IDCT; decode_image uses
        # the fast one and is off by a few grey levels.
        exact = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        np.testing.assert_array_equal(exact.numpy(), expected)
        fast = tf.io.decode_image(encoded, channels=3).numpy().astype(int)
        assert np.abs(fast - expected).max() <= 8
    else:
        assert encoded.startswith(b"\x89PNG")
        decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        np.testing.assert_array_equal(decoded.numpy(), expected)


# ---------------------------------------------------------------------------
# Real data (../shared/data; skipped when absent).

@pytest.mark.realdata
def test_real_cuhk_list(shared_data):
    path = shared_data / "sun5" / "trainImageList.txt"
    result = readers.read_dataset(str(path))
    assert result.format == "cuhk" and not result.skipped
    records = result.records
    assert len(records) == 10_000
    sizes = np.array([images.read_image_size(r.image_path) for r in records])
    boxes = np.stack([r.box for r in records])
    assert np.all(boxes[:, :2] >= 0)
    assert np.all(boxes[:, 2] <= sizes[:, 1] - 1) and np.all(boxes[:, 3] <= sizes[:, 0] - 1)
    points = np.stack([r.landmarks for r in records])
    assert np.all(points[..., 0] >= boxes[:, None, 0])
    assert np.all(points[..., 0] <= boxes[:, None, 2])
    for record in records[::2500]:
        assert images.load_image(record.image_path).shape[:2] == tuple(
            images.read_image_size(record.image_path))


@pytest.mark.realdata
def test_real_mtfl_matches_cuhk(shared_data):
    mtfl = readers.read_dataset(str(shared_data / "sun5" / "mtfl_training.txt"))
    assert mtfl.format == "mtfl" and len(mtfl.records) == 10_000
    cuhk = {r.image_path: r.landmarks
            for r in readers.read_cuhk_list(str(shared_data / "sun5" / "trainImageList.txt"))}
    assert {r.image_path for r in mtfl.records} == set(cuhk)
    for record in mtfl.records:
        np.testing.assert_allclose(record.landmarks, cuhk[record.image_path], atol=1e-4)
        assert set(record.attributes) == set(readers.MTFL_ATTRIBUTES)


@pytest.mark.realdata
def test_real_ytf68_csv(shared_data):
    result = readers.read_dataset(str(shared_data / "ytf68" / "landmarks.csv"))
    assert result.format == "csv" and len(result.records) == 2961
    assert all(r.landmarks.shape == (68, 2) for r in result.records)
    assert all(os.path.isfile(r.image_path) for r in result.records)


@pytest.mark.realdata
def test_real_dlib_imglab(shared_data):
    for name in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
        result = readers.read_dataset(str(shared_data / "dlib_faces" / name))
        assert result.format == "imglab"
        per_image = {}
        for r in result.records:
            assert r.landmarks.shape == (68, 2) and r.box is not None
            assert os.path.isfile(r.image_path)
            per_image[r.image_path] = per_image.get(r.image_path, 0) + 1
        assert max(per_image.values()) >= 2


@pytest.mark.realdata
def test_real_jpeg_round_trip(shared_data):
    tf = pytest.importorskip("tensorflow")
    for path in sorted((shared_data / "ytf68" / "images").glob("*.jpg"))[:3]:
        encoded, height, width = images.encode_for_tfrecord(str(path))
        assert encoded == path.read_bytes()
        assert (height, width) == images.read_image_size(str(path))
        decoded = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        np.testing.assert_array_equal(decoded.numpy(), images.load_image(str(path)))
