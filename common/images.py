"""Image decoding by content, and the image bytes stored in TFRecords.

Face data sets are messy: PNG files named ``.jpg``, grey, grey+alpha and RGBA
images, 16-bit PNGs and half-downloaded files all occur in real copies of 300-W,
YouTube Faces and friends. ``load_image`` turns every decodable file into an RGB
``uint8 [H, W, 3]`` array (the single image convention of the package) and raises
``common.records.DataError`` with a clear reason for everything else.

Conventions:

* The format is read from the file's bytes, never from its extension.
* EXIF orientation is ignored (``cv2.IMREAD_UNCHANGED``), as ``tf.io.decode_jpeg``
  ignores it too and as the landmark annotations were made on the stored pixels.
* An alpha channel is dropped (not composited), like
  ``tf.io.decode_image(..., channels=3)`` does.
* 16-bit images are scaled to 8 bits by rounding ``v * 255 / 65535``.
* JPEG files must end with an EOI marker after their first scan and PNG files with
  an IEND chunk; otherwise the file is a "truncated image" even when OpenCV could
  decode part of it (it silently fills the missing rows with grey).
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from common.records import DataError

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry precision, size and component count; 0xC4 (DHT),
# 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
_PNG_COLOR_RGB = 2


@dataclasses.dataclass(frozen=True)
class _Header:
    """What the container headers say about an image file.

    Attributes:
        kind: "jpeg", "png" or "other".
        complete: False when the data stops before the JPEG EOI / PNG IEND.
        height: pixel rows, 0 when unknown.
        width: pixel columns, 0 when unknown.
        rgb8: True for an 8-bit, 3-component JPEG or an 8-bit RGB PNG, the only
            files whose original bytes are stored in TFRecords.
    """

    kind: str
    complete: bool = True
    height: int = 0
    width: int = 0
    rgb8: bool = False


def _scan_jpeg(data: bytes) -> _Header:
    """Walks the JPEG marker segments up to the first scan."""
    height = width = 0
    rgb8 = False
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            i += 1  # extraneous bytes before a marker: libjpeg skips them as well
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xD9:  # EOI before any scan: no pixels at all
            return _Header("jpeg", False, height, width, rgb8)
        if marker == 0xDA:  # SOS: entropy-coded data follows
            # 0xFF is byte-stuffed inside entropy-coded data, so FFD9 after the
            # first scan can only be the EOI marker.
            complete = data.rfind(b"\xff\xd9") > i
            return _Header("jpeg", complete, height, width, rgb8)
        if i + 4 > n:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF and i + 10 <= n:
            precision = data[i + 4]
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            rgb8 = precision == 8 and data[i + 9] == 3
        i += 2 + length
    return _Header("jpeg", False, height, width, rgb8)


def _scan_png(data: bytes) -> _Header:
    """Walks the PNG chunks up to IEND."""
    height = width = 0
    rgb8 = False
    i, n = len(_PNG_MAGIC), len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        chunk_type = data[i + 4:i + 8]
        end = i + 12 + length  # length, type, payload, CRC
        if chunk_type == b"IHDR" and i + 8 + 13 <= n:
            width = int.from_bytes(data[i + 8:i + 12], "big")
            height = int.from_bytes(data[i + 12:i + 16], "big")
            bit_depth, color_type = data[i + 16], data[i + 17]
            rgb8 = bit_depth == 8 and color_type == _PNG_COLOR_RGB
        if end > n:
            break
        if chunk_type == b"IEND":
            return _Header("png", True, height, width, rgb8)
        i = end
    return _Header("png", False, height, width, rgb8)


def _scan(data: bytes) -> _Header:
    if data.startswith(_JPEG_MAGIC):
        return _scan_jpeg(data)
    if data.startswith(_PNG_MAGIC):
        return _scan_png(data)
    return _Header("other")


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.isdir(path):
        raise DataError(path, "is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise DataError(path, "empty file")
    return data


def _to_rgb8(path: str, decoded: np.ndarray) -> np.ndarray:
    """Converts an OpenCV ``IMREAD_UNCHANGED`` array to RGB uint8 [H, W, 3]."""
    if decoded.dtype == np.uint16:
        # Round v * 255 / 65535 = v / 257 to the nearest integer.
        decoded = ((decoded.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise DataError(path, f"unsupported pixel type {decoded.dtype} (expected 8 or 16 bits)")
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    channels = decoded.shape[2]
    if channels in (1, 2):  # grey, grey + alpha
        rgb = np.repeat(decoded[:, :, :1], 3, axis=2)
    elif channels in (3, 4):  # BGR, BGRA
        rgb = decoded[:, :, 2::-1]
    else:
        raise DataError(path, f"unsupported number of channels ({channels})")
    return np.ascontiguousarray(rgb)


def _decode(path: str) -> tuple[bytes, _Header, np.ndarray]:
    """Reads, checks and decodes an image file: (bytes, header, RGB uint8 image)."""
    data = _read_bytes(path)
    header = _scan(data)
    if not header.complete:
        end = "EOI marker" if header.kind == "jpeg" else "IEND chunk"
        raise DataError(path, f"truncated image ({header.kind.upper()} data ends before "
                              f"its {end})")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        what = f"{header.kind.upper()} data is corrupt" if header.kind != "other" else (
            "unknown format")
        raise DataError(path, f"not a decodable image ({what})")
    return data, header, _to_rgb8(path, decoded)


def load_image(path: str) -> np.ndarray:
    """Decodes an image file by its content into RGB.

    Args:
        path: image file (JPEG, PNG or any other format OpenCV reads; the
            extension is ignored).

    Returns:
        uint8 ``[H, W, 3]`` RGB array. Grey images are repeated into three
        channels, alpha is dropped and 16-bit values are scaled to 8 bits.

    Raises:
        DataError: "file not found", "empty file", "truncated image",
            "not a decodable image", or an unsupported pixel type.
    """
    return _decode(path)[2]


def encode_for_tfrecord(path: str) -> tuple[bytes, int, int]:
    """Returns the bytes to store for an image in a TFRecord, and its size.

    An 8-bit RGB JPEG or 8-bit RGB PNG is stored as it is (no quality loss, no
    growth); every other file (grey, alpha, 16-bit, palette, other formats, CMYK
    JPEG) is stored as a PNG of the RGB image ``load_image`` returns.

    Decoding the bytes gives exactly ``load_image(path)`` with
    ``tf.io.decode_png(..., channels=3)`` for PNG and with
    ``tf.io.decode_jpeg(..., channels=3, dct_method="INTEGER_ACCURATE")`` for JPEG
    (OpenCV's libjpeg default). ``tf.io.decode_image`` uses the fast integer IDCT
    for JPEG and differs by a few grey levels.

    Args:
        path: image file.

    Returns:
        (encoded bytes, height, width).

    Raises:
        DataError: as ``load_image``.
    """
    data, header, rgb = _decode(path)
    height, width = rgb.shape[:2]
    if header.rgb8:
        return data, height, width
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DataError(path, "could not re-encode the image as PNG")
    return encoded.tobytes(), height, width


def read_image_size(path: str) -> tuple[int, int]:
    """Returns (height, width) of an image, from the JPEG/PNG header when possible.

    Reads only the headers of JPEG and PNG files (fast; no completeness check),
    and decodes other formats.

    Raises:
        DataError: as ``load_image``.
    """
    data = _read_bytes(path)
    header = _scan(data)
    if header.height > 0 and header.width > 0:
        return header.height, header.width
    height, width = load_image(path).shape[:2]
    return height, width
