"""Derives the MediaPipe-mesh -> iBUG-68 correspondence on 300-W training faces.

MediaPipe's 468-vertex face mesh has no iBUG numbering, and no vertex sits exactly on
every iBUG point: iBUG's jaw points follow the visible face outline (a contour that
slides over the skin as the head turns), while mesh vertices are fixed on the skin.
So the table ``experiments.peers.mediapipe_mesh.MESH_TO_IBUG68`` is *chosen*, on faces it
is never scored on:

1. the w300 faces converted by ``common.prepare --format=300w`` are split by photo
   (``photo_id``: ``NAME_1`` / ``NAME_2`` are one photo) into a choosing part and a
   held-out part (``is_held_out``: a stable hash puts ``--holdout_percent`` % of the
   photos out);
2. the mesh is run on the choosing faces with their stored boxes;
3. for each iBUG point, every single vertex and every mean of 2 or 3 of its
   ``--candidates`` nearest vertices is scored by its mean distance to the annotation
   over the choosing faces, normalised per face by the inter-pupil distance; the best
   is kept (a mean of several vertices only where it beats the best single one by
   ``--min_gain`` of that error, so the table stays simple).

It prints the table as Python (paste it into ``MESH_TO_IBUG68``) and the error per
point group on the choosing and the held-out faces. Example::

    python -m experiments.mediapipe_correspondence --data=/work/data/w300

The meshes are cached in ``--cache`` (an ``.npz``) so that reruns do not rerun
MediaPipe.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re

import numpy as np
from absl import app, flags

IBUG_GROUPS = {
    "jaw": range(17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}
"""iBUG-68 point groups for the per-group errors."""


def photo_id(source_path: str) -> str:
    """The photo a 300-W face comes from: its file name without extension and without
    the trailing ``_N`` face number (``helen/trainset/100040721_2.jpg`` -> ``100040721``).
    """
    name = os.path.basename(source_path.split(" (")[0])
    stem = os.path.splitext(name)[0]
    return re.sub(r"_\d+$", "", stem)


def is_held_out(source_path: str, percent: float = 20.0) -> bool:
    """Whether the face's photo is in the held-out ``percent`` % (stable SHA-1 hash)."""
    digest = hashlib.sha1(photo_id(source_path).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 10000 < percent * 100


def normalised_errors(mesh: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Distance of every vertex to every iBUG point over the inter-pupil distance.

    Args:
        mesh: ``[N, 468, 2]`` pixels.
        landmarks: ``[N, 68, 2]`` pixels.

    Returns:
        float64 ``[N, 68, 468]``.
    """
    from common.schemes import IBUG_68

    left, right = IBUG_68.pupils(landmarks)
    pupil = np.linalg.norm(left - right, axis=-1)
    distance = np.linalg.norm(landmarks[:, :, None, :] - mesh[:, None, :, :], axis=-1)
    return distance / pupil[:, None, None]


def choose_table(mesh: np.ndarray, landmarks: np.ndarray, candidates: int = 10,
                 max_group: int = 3, min_gain: float = 0.03
                 ) -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
    """The best vertex group per iBUG point (see the module docstring).

    Args:
        mesh: ``[N, 468, 2]`` pixels on the choosing faces (no NaN).
        landmarks: ``[N, 68, 2]`` annotations of the same faces.
        candidates: vertices (nearest on average) among which groups are searched.
        max_group: largest group size.
        min_gain: a larger group must lower the mean error by this fraction.

    Returns:
        ``(table, errors)``: 68 tuples of vertex indices and their mean normalised
        errors ``[68]`` on these faces.
    """
    from common.schemes import IBUG_68

    single = normalised_errors(mesh, landmarks).mean(axis=0)          # [68, 468]
    left, right = IBUG_68.pupils(landmarks)
    pupil = np.linalg.norm(left - right, axis=-1)
    table, errors = [], []
    for point in range(landmarks.shape[1]):
        nearest = np.argsort(single[point])[:candidates]
        best, best_error = (int(nearest[0]),), float(single[point, nearest[0]])
        for size in range(2, max_group + 1):
            for group in itertools.combinations(nearest.tolist(), size):
                centre = mesh[:, list(group)].mean(axis=1)
                error = float((np.linalg.norm(centre - landmarks[:, point], axis=-1)
                               / pupil).mean())
                if error < best_error * (1.0 - min_gain):
                    best, best_error = tuple(sorted(group)), error
        table.append(best)
        errors.append(best_error)
    return tuple(table), np.asarray(errors)


def group_errors(points: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Mean inter-pupil-normalised point error (%) per ``IBUG_GROUPS`` group and all."""
    from common.schemes import IBUG_68

    left, right = IBUG_68.pupils(landmarks)
    pupil = np.linalg.norm(left - right, axis=-1)
    per_point = np.linalg.norm(points - landmarks, axis=-1) / pupil[:, None]   # [N, 68]
    out = {name: 100 * float(np.nanmean(per_point[:, list(idx)]))
           for name, idx in IBUG_GROUPS.items()}
    out["inner (17-67)"] = 100 * float(np.nanmean(per_point[:, 17:]))
    out["all 68"] = 100 * float(np.nanmean(per_point))
    return out


def format_table(table) -> str:
    """The table as the Python literal of ``MESH_TO_IBUG68``, one iBUG group a line."""
    lines = ["MESH_TO_IBUG68: tuple[tuple[int, ...], ...] = ("]
    for name, idx in IBUG_GROUPS.items():
        entries = ", ".join("(" + ", ".join(str(v) for v in table[i]) + ",)"
                            if len(table[i]) == 1 else
                            "(" + ", ".join(str(v) for v in table[i]) + ")" for i in idx)
        lines.append(f"    # {name} {idx.start}-{idx.stop - 1}")
        for chunk in _wrap(entries, 88):
            lines.append(f"    {chunk}")
    lines.append(")")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    parts, line = [], ""
    for item in re.findall(r"\([^)]*\)", text):
        piece = item + ","
        if line and len(line) + 1 + len(piece) > width:
            parts.append(line)
            line = piece
        else:
            line = f"{line} {piece}".strip()
    if line:
        parts.append(line)
    return parts


def load_meshes(data: str, split: str, cache: str | None, python: str | None = None
                ) -> dict[str, np.ndarray]:
    """Meshes (stored boxes) and annotations of a converted split, cached in ``cache``.

    Returns:
        ``{"mesh" [N, 468, 2], "landmarks" [N, 68, 2], "boxes" [N, 4], "sources" [N]}``
        with NaN meshes where MediaPipe found no face.
    """
    if cache and os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    from experiments.peers import iterate_faces
    from experiments.peers.mediapipe_mesh import MediaPipeFaceMesh

    faces = list(iterate_faces(data, split))
    peer = MediaPipeFaceMesh(python=python)
    try:
        mesh, _ = peer.predict_mesh_timed([f.image for f in faces],
                                          np.stack([f.box for f in faces]))
    finally:
        peer.close()
    result = {"mesh": mesh, "landmarks": np.stack([f.landmarks for f in faces]),
              "boxes": np.stack([f.box for f in faces]),
              "sources": np.array([f.source_path for f in faces])}
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        tmp = f"{cache}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **result)
        os.replace(tmp, cache)
    return result


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's flags (only when run as a script, so that other entry
    points can import ``photo_id`` / ``is_held_out``)."""
    flags.DEFINE_string("data", "/work/data/w300", "Converted 300-W folder (common.prepare "
                        "--format=300w) whose faces choose the table.")
    flags.DEFINE_string("split", "train", "Split of --data to read.")
    flags.DEFINE_float("holdout_percent", 20.0, "Percent of the photos held out (never used "
                       "to choose; scored for the report).")
    flags.DEFINE_string("cache", os.path.expanduser("~/.cache/face_align_tf/w300_meshes.npz"),
                        "Where the meshes are cached ('' for no cache).")
    flags.DEFINE_string("python", None, "The MediaPipe venv's Python (default: "
                        "$FACE_ALIGN_MEDIAPIPE_PYTHON or the default venv).")
    flags.DEFINE_integer("candidates", 10, "Nearest vertices searched for groups per point.")
    flags.DEFINE_integer("max_group", 3, "Largest number of vertices averaged per point.")
    flags.DEFINE_float("min_gain", 0.03, "Relative error drop a larger group must bring.")


def main(argv):
    del argv
    from experiments.peers.mediapipe_mesh import MESH_TO_IBUG68, mesh_to_ibug68

    data = load_meshes(FLAGS.data, FLAGS.split, FLAGS.cache or None, FLAGS.python)
    held = np.array([is_held_out(s, FLAGS.holdout_percent) for s in data["sources"]])
    found = np.all(np.isfinite(data["mesh"]), axis=(1, 2))
    choose = ~held & found
    print(f"{len(held)} faces, {len(set(map(photo_id, data['sources'])))} photos; "
          f"choosing on {choose.sum()} faces ({(~held).sum() - choose.sum()} without a "
          f"mesh), {held.sum()} held out ({(held & ~found).sum()} without a mesh)")
    table, _ = choose_table(data["mesh"][choose], data["landmarks"][choose],
                            FLAGS.candidates, FLAGS.max_group, FLAGS.min_gain)
    print(format_table(table))
    if MESH_TO_IBUG68 and tuple(map(tuple, MESH_TO_IBUG68)) != table:
        print("NOTE: differs from experiments.peers.mediapipe_mesh.MESH_TO_IBUG68")
    for label, mask in (("choosing faces", choose), ("held-out faces", held & found)):
        points = mesh_to_ibug68(data["mesh"][mask], table)
        errors = group_errors(points, data["landmarks"][mask])
        print(f"{label} ({mask.sum()}): " + ", ".join(f"{k} {v:.2f} %"
                                                       for k, v in errors.items()))


if __name__ == "__main__":
    define_flags()
    app.run(main)
