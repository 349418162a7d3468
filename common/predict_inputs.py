"""What ``common.predict`` reads and the names it writes under.

Input files and folders (:func:`iter_input_files`, :data:`IMAGE_EXTENSIONS`,
:data:`VIDEO_EXTENSIONS`), folders of numbered frames (:func:`numbered_frames`), boxes
files (:func:`load_boxes_json`), output names (:func:`output_stems`) and the removal of
stale outputs (:func:`remove_stale_outputs`). ``common.predict`` re-exports them.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from common.records import DataError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg",
                              ".mpeg", ".wmv", ".flv", ".3gp"})
"""File extensions read as videos (``cv2.VideoCapture``)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib",
                              ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                              ".pnm", ".pfm", ".jp2", ".j2k", ".sr", ".ras", ".exr", ".hdr",
                              ".pic", ".avif"})
"""File extensions read as images (decoded by content, ``common.images.load_image``).
Files in a folder with neither an image nor a video extension are skipped (status
``"skipped"``); a file named directly on the command line is always tried."""

OUTPUT_SUFFIXES = (".json", ".jsonl", ".jpg", ".mp4", ".avi")
"""What predict writes under ``landmarks/`` and ``overlays/`` (and so may remove there)."""

Detection = tuple[np.ndarray, float | None]
Finder = Callable[[np.ndarray], Sequence[Detection]]


def load_boxes_json(path: str) -> dict[str, Any]:
    """Reads a boxes file for ``predict_paths(boxes=...)``.

    Format: a JSON object from file to boxes. A key is the file as given, its
    absolute path, its path relative to the input folder, or its file name. A value
    is a list of boxes, each ``[l, t, r, b]`` (pixels, pixel centres at integers) or
    ``{"box": [l, t, r, b], "score": s}``; for a video, either such a list (used on
    every frame) or ``{"<frame index>": [boxes]}`` (frames not listed have no face).
    A listed file is never run through the detector; ``[]`` means "no face".

    Raises:
        DataError: the file is not such a JSON object.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(path, f"cannot read boxes JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(path, "boxes JSON must be an object {file: [[l, t, r, b], ...]}")
    return data


def _parse_boxes(value: Any) -> list[Detection]:
    if not isinstance(value, list):
        raise TypeError(f"boxes must be a list, got {type(value).__name__}")
    found = []
    for item in value:
        score = None
        if isinstance(item, Mapping):
            score = item.get("score")
            item = item.get("box")
        box = np.asarray(item, np.float32)
        if box.shape != (4,):
            raise ValueError(f"a box must be [l, t, r, b], got {item!r}")
        found.append((box, None if score is None else float(score)))
    return found


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """Output names (no extension) of the files of one folder.

    ``a.jpg`` -> ``a`` (``landmarks/a.json``, ``overlays/a.jpg``); files whose stems
    collide within the folder (``a.jpg`` and ``a.png``, or ``a.JPG`` and ``a.jpg``)
    all keep their extension as ``a_jpg``, ``a_png``, whatever else is in the folder.

    Args:
        names: file names of one folder.

    Returns:
        ``{name: stem}``.
    """
    by_stem = collections.Counter(os.path.splitext(n)[0].lower() for n in names)
    stems = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        stems[name] = f"{stem}_{ext[1:]}" if by_stem[stem.lower()] > 1 and ext else stem
    return stems


def iter_input_files(inputs: Iterable[str], exclude: str | None = None,
                     recursive: bool = False) -> Iterator[tuple[str, str, str]]:
    """Walks files and folders lazily, in sorted order.

    Args:
        inputs: files, folders (hidden entries skipped) and videos.
        exclude: a folder whose contents are skipped (the output folder).
        recursive: also walk the sub-folders of folders.

    Yields:
        ``(path, name, stem)``: ``name`` is the path relative to its input folder (or
        the file name of a file given directly), ``stem`` the output name without
        extension (:func:`output_stems`), e.g. ``("in/sub/a.jpg", "sub/a.jpg",
        "sub/a")``.
    """
    exclude = os.path.realpath(exclude) if exclude else None
    for item in inputs:
        item = os.fspath(item)
        if not os.path.isdir(item):
            name = os.path.basename(item.rstrip("/\\")) or item
            yield item, name, os.path.splitext(name)[0] or name
            continue
        for root, dirs, files in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(root, d)) != exclude
                             ) if recursive else []
            names = sorted(n for n in files if not n.startswith("."))
            stems = output_stems(names)
            for name in names:
                path = os.path.join(root, name)
                relative = os.path.relpath(path, item)
                yield path, relative, os.path.join(os.path.dirname(relative), stems[name])


def remove_stale_outputs(output_dir: str, keep: Iterable[str]) -> list[str]:
    """Removes what an earlier run left under ``landmarks/`` and ``overlays/``.

    Only files predict writes (:data:`OUTPUT_SUFFIXES`) are removed, and folders
    left empty; ``summary.*`` and anything else in ``output_dir`` stay.

    Args:
        output_dir: the output folder.
        keep: the files this run wrote.

    Returns:
        The removed files.
    """
    keep = {os.path.abspath(p) for p in keep if p}
    removed = []
    for sub in ("landmarks", "overlays"):
        top = os.path.join(output_dir, sub)
        for root, _, files in os.walk(top, topdown=False):
            for name in files:
                path = os.path.abspath(os.path.join(root, name))
                if name.endswith(OUTPUT_SUFFIXES) and path not in keep:
                    os.remove(path)
                    removed.append(path)
            if root != top and not os.listdir(root):
                os.rmdir(root)
    return removed


_FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_FRAME_NUMBER = re.compile(r"(\d+)\D*$")


def numbered_frames(folder: str) -> list[str] | None:
    """The frames of a folder of numbered frames, in frame order, else ``None``.

    A folder is a frame sequence when it has no sub-folders and at least two visible
    files, all images (by extension) whose names end in a number (``000001.jpg``,
    ``frame_12.png``), each number once; they are ordered by that number.

    Args:
        folder: a path (anything but a folder gives ``None``).
    """
    if not os.path.isdir(folder):
        return None
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    if len(entries) < 2 or any(e.is_dir() for e in entries):
        return None
    numbered = []
    for entry in entries:
        stem, extension = os.path.splitext(entry.name)
        match = _FRAME_NUMBER.search(stem)
        if extension.lower() not in _FRAME_EXTENSIONS or not match:
            return None
        numbered.append((int(match.group(1)), entry.path))
    if len({n for n, _ in numbered}) != len(numbered):
        return None
    return [path for _, path in sorted(numbered)]
