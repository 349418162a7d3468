"""The one record type every reader returns, the error every reader raises, and the
conversion of dlib's inclusive pixel rectangles to boxes (pure Python, no dlib)."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Bad input data, with the file (and line, when there is one) it came from.

    The message always starts with ``path:line:`` (or ``path:`` without a line) so a
    user can open the offending place directly.
    """

    def __init__(self, path: str, reason: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def inclusive_rect_to_box(left: float, top: float, right: float,
                          bottom: float) -> tuple[float, float, float, float]:
    """The box covering an inclusive pixel rectangle (dlib's ``rectangle``, imglab).

    dlib rectangles are integer pixel indices with *inclusive* right and bottom
    (``width == right - left + 1``). With pixel centres at integers (pixel ``i``
    covers ``[i - 0.5, i + 0.5]``, see docs/DESIGN.md) the pixels ``left..right`` x
    ``top..bottom`` cover ``(left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)``; for
    imglab's ``left, top, width, height`` that is ``(left - 0.5, top - 0.5,
    left + width - 0.5, top + height - 0.5)``. The one place of this convention:
    ``common.boxes.dlib_rect_to_box`` and ``common.readers.read_imglab_xml`` use it.

    Args:
        left, top, right, bottom: the rectangle, right and bottom inclusive.

    Returns:
        (left, top, right, bottom) of the box as Python floats (float64: callers
        cast to float32 and check the result).
    """
    return (float(left) - 0.5, float(top) - 0.5, float(right) + 0.5, float(bottom) + 0.5)


@dataclasses.dataclass
class FaceRecord:
    """One annotated face.

    Attributes:
        image_path: path of the image file (absolute, or as given by the list file
            resolved against the list's folder).
        landmarks: float32 ``(N, 2)`` array of (x, y), 0-based pixel coordinates
            (pixel centres at integers).
        box: optional float32 ``(4,)`` face box (left, top, right, bottom) in pixels.
        attributes: optional integer attributes (e.g. MTFL gender, smile, glasses, pose).
        split: optional split name ("train", "common", "challenging", ...).
        source: where the record came from, "file:line" (used in error messages).
    """

    image_path: str
    landmarks: np.ndarray
    box: np.ndarray | None = None
    attributes: dict[str, int] = dataclasses.field(default_factory=dict)
    split: str = ""
    source: str = ""

    def __post_init__(self):
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 2)
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
