"""Scores the pretrained peers (dlib 68, MediaPipe mesh) under several face-box sources.

For each converted folder ``--data`` (``PATH:SPLIT[:heldout]``; ``:heldout`` keeps only
the photos that ``experiments.mediapipe_correspondence`` held out when it chose the
mesh table), every peer of ``--peers`` is run on the same faces with the boxes of
each ``--sources`` (``common.box_robustness.source_boxes``: ``stored``,
``landmark_square``, ``dlib``, ...; only the faces for which every source has a box),
and the mean inter-pupil NME is printed for the 68 points and for the 5 CUHK points
they reduce to (``common.schemes.reduce_to_cuhk5``), the jaw (0-16) and inner (17-67)
point errors, with the median ms per face and
the faces the peer missed (NaN, left out of the mean). On a 5-point folder (CUHK_5,
e.g. ``sun5``) the 5-point forms are scored by ``--five_point_kind`` (error / box width
by default), with the error per point. Example::

    python -m experiments.eval_pretrained \\
        --data=/work/data/w300:train:heldout,/work/data/ytf68:val
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("data", ["/work/data/w300:train:heldout", "/work/data/ytf68:val"],
                  "Comma-separated PATH:SPLIT[:heldout] of converted folders.")
flags.DEFINE_list("peers", ["dlib_pretrained68", "mediapipe_mesh"],
                  "Pretrained 68-point peers registered in experiments.peers "
                  "(dlib_pretrained68, dlib_pretrained68_detect, mediapipe_mesh); "
                  "their 5-point forms are scored in the NME5 column.")
flags.DEFINE_list("sources", ["stored", "dlib", "landmark_square"],
                  "Box sources (common.box_robustness.ALL_SOURCES).")
flags.DEFINE_string("five_point_kind", "box_width", "NME normaliser on 5-point data "
                    "(common.metrics.nme kinds), where the peers' 5-point forms are scored.")
flags.DEFINE_integer("limit", None, "Read at most this many faces per folder.")


def evaluate(faces, peer_names, sources, five_point_kind: str = "box_width") -> list[dict]:
    """One row per (peer, source): NME 68 / 5 (%), misses, ms per face, faces, and the
    mean point error (%) per iBUG group (``mediapipe_correspondence.group_errors``).

    On 5-point faces (CUHK_5) the peers' 5-point forms (``CUHK5Peer``) are scored with
    the normaliser ``five_point_kind`` (``common.metrics.nme``; the CCNN papers' error
    over the box width by default); the 68-point columns are then NaN and ``points``
    holds the per-point errors (%)."""
    from common import metrics
    from common.box_robustness import source_boxes
    from common.schemes import CUHK_5, reduce_to_cuhk5
    from experiments.mediapipe_correspondence import group_errors
    from experiments.peers import CUHK5Peer, Face, evaluate_peer, make_peer, peer_unavailable

    five_point = [name for name in peer_names if name.endswith("_cuhk5")]
    if five_point:
        raise ValueError(f"{five_point}: give the 68-point peers; the NME5 column scores "
                         "their 5-point form")
    boxes = source_boxes(faces, sources)
    keep = np.all([np.all(np.isfinite(b), axis=1) for b in boxes.values()], axis=0)
    rows = []
    for name in peer_names:
        why = peer_unavailable(name)
        if why:
            print(f"skipping {name}: {why}")
            continue
        peer = make_peer(name)
        for source in sources:
            chosen = [Face(f.image, f.landmarks, box, f.source_path)
                      for f, box, k in zip(faces, boxes[source], keep) if k]
            if chosen[0].landmarks.shape[0] == CUHK_5.num_points:
                rows.append(_five_point_row(CUHK5Peer(peer), chosen, five_point_kind,
                                            name, source))
                continue
            result = evaluate_peer(peer, chosen, "inter_pupil")
            five = metrics.nme(reduce_to_cuhk5(result.predictions),
                               reduce_to_cuhk5(result.landmarks), "inter_pupil",
                               scheme=CUHK_5)
            rows.append({"peer": name, "source": source, "faces": len(chosen),
                         "missed": int(np.isnan(result.errors).sum()),
                         "nme68": 100 * float(np.nanmean(result.errors)),
                         "nme5": 100 * float(np.nanmean(five)),
                         **group_errors(result.predictions, result.landmarks),
                         "ms": 1000 * result.seconds_per_face})
        if hasattr(peer, "close"):
            peer.close()
    return rows


def _five_point_row(peer, faces, kind: str, name: str, source: str) -> dict:
    from common import metrics
    from experiments.peers import evaluate_peer

    result = evaluate_peer(peer, faces, kind)
    per_point = metrics.per_point_nme(result.predictions, result.landmarks, kind,
                                      boxes=result.boxes)
    nan = float("nan")
    return {"peer": name, "source": source, "faces": len(faces),
            "missed": int(np.isnan(result.errors).sum()), "nme68": nan,
            "nme5": 100 * float(np.nanmean(result.errors)), "jaw": nan,
            "inner (17-67)": nan, "ms": 1000 * result.seconds_per_face,
            "points": (100 * np.nanmean(per_point, axis=0)).round(2).tolist()}


def main(argv):
    del argv
    from experiments.mediapipe_correspondence import is_held_out
    from experiments.peers import iterate_faces

    for spec in FLAGS.data:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "heldout"):
            raise ValueError(f"--data entry {spec!r}: expected PATH:SPLIT[:heldout]")
        faces = list(iterate_faces(parts[0], parts[1], FLAGS.limit))
        if len(parts) == 3:
            faces = [f for f in faces if is_held_out(f.source_path)]
        print(f"== {spec}: {len(faces)} faces")
        print(f"{'peer':<20} {'boxes':<16} {'faces':>5} {'missed':>6} "
              f"{'NME68 %':>8} {'NME5 %':>7} {'jaw %':>6} {'inner %':>7} {'ms/face':>8}")
        for row in evaluate(faces, FLAGS.peers, FLAGS.sources, FLAGS.five_point_kind):
            print(f"{row['peer']:<20} {row['source']:<16} {row['faces']:>5} "
                  f"{row['missed']:>6} {row['nme68']:>8.2f} {row['nme5']:>7.2f} "
                  f"{row['jaw']:>6.2f} {row['inner (17-67)']:>7.2f} "
                  f"{row['ms']:>8.2f}"
                  + (f"  per point {row['points']}" if "points" in row else ""))


if __name__ == "__main__":
    app.run(main)
