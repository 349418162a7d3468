r"""How face boxes of different sources differ on the same faces.

Measures, on converted data folders (``common.prepare``), how the boxes of dlib's
detector, of the pretrained MTCNN (``peers`` extra), the landmark-extent square and
the data set's stored boxes differ from each other: centre shift (fraction of the
reference box's width / height), size (``sqrt(w h)`` ratio) and aspect (``h / w``).
These are the ranges a box-robust model's training perturbation has to cover
(``common.pipeline.AugmentConfig.box_shift`` / ``box_scale``).

    python -m experiments.box_variance --data=data/ytf68,data/w300,data/sun5 \
        --split=train --limit=500 --output=results/box_variance
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from common import atomic, box_robustness

PAIRS_REFERENCE = "dlib"
PERCENTILES = (5, 25, 50, 75, 95)


def measure(data: str, split: str, limit: int | None, sources: Sequence[str],
            seed: int = 0) -> dict:
    """Box offsets between every ordered pair of sources on one split.

    Returns:
        ``{"faces": N, "available": {source: count}, "pairs": {"A vs B": {stat:
        {"p5": .., ..., "mean": ..}}}}`` where A's box is measured in B's units.
    """
    from experiments.peers import iterate_faces

    faces = box_robustness.limit_faces(iterate_faces(data, split), limit)
    boxes = box_robustness.source_boxes(faces, sources, seed=seed)
    result = {"data": data, "split": split, "faces": len(faces),
              "available": {s: int(np.all(np.isfinite(b), axis=1).sum())
                            for s, b in boxes.items()},
              "pairs": {}}
    for a, b in itertools.permutations(sources, 2):
        if b not in ("dlib", "stored"):
            continue  # offsets are reported against the two reference conventions
        offsets = box_robustness.box_offsets(boxes[a], boxes[b])
        if len(offsets["dx"]) == 0:
            continue
        result["pairs"][f"{a} vs {b}"] = {
            stat: {**{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES},
                   "mean": float(np.mean(v)), "faces": int(len(v))}
            for stat, v in offsets.items()}
    return result


def markdown(results: Sequence[dict]) -> str:
    """One table per data folder: median and 5-95 % range of each statistic."""
    lines = []
    for res in results:
        lines += [f"### {res['data']} ({res['split']}, {res['faces']} faces; boxes found: "
                  + ", ".join(f"{s} {n}" for s, n in res["available"].items()) + ")", "",
                  "| boxes vs reference | faces | dx (% of w) | dy (% of h) | size ratio | "
                  "crop side ratio | aspect h/w |", "|---|---:|---:|---:|---:|---:|---:|"]
        for pair, stats in res["pairs"].items():
            cells = []
            for stat in ("dx", "dy", "scale", "side", "aspect"):
                s = stats[stat]
                factor = 100.0 if stat in ("dx", "dy") else 1.0
                digits = 1 if stat in ("dx", "dy") else 3
                cells.append(f"{factor * s['p50']:.{digits}f} [{factor * s['p5']:.{digits}f}, "
                             f"{factor * s['p95']:.{digits}f}]")
            lines.append(f"| {pair} | {stats['dx']['faces']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Median [5th, 95th percentile]. dx, dy: centre shift over the reference "
                 "box's width / height; size ratio: sqrt(w h) over the reference's; crop side "
                 "ratio: max(w, h) over the reference's (the square crop the model sees).")
    return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("data", None, "Converted data folders (common.prepare), comma-separated.",
                      required=True)
    flags.DEFINE_string("split", "train", "Split to measure (never a test split you score on).")
    flags.DEFINE_integer("limit", 500, "Faces per folder (the first N of the split); 0 = all.")
    flags.DEFINE_list("sources", ["stored", "landmark_square", "dlib", "mtcnn"],
                      "Box sources (common.box_robustness.ALL_SOURCES); mtcnn is dropped "
                      "with a note when the mtcnn package is absent.")
    flags.DEFINE_string("output", "results/box_variance", "Folder for the JSON and Markdown.")


def main(argv: Sequence[str]) -> int:
    del argv
    sources = list(FLAGS.sources)
    if "mtcnn" in sources and not box_robustness.mtcnn_available():
        print("mtcnn is not installed (pip install -e \".[peers]\"): its boxes are skipped")
        sources.remove("mtcnn")
    results = []
    for data in FLAGS.data:
        start = time.time()
        results.append(measure(data, FLAGS.split, FLAGS.limit or None, sources))
        print(f"{data}: {results[-1]['faces']} faces in {time.time() - start:.0f} s")
    os.makedirs(FLAGS.output, exist_ok=True)
    atomic.write_text(os.path.join(FLAGS.output, "box_variance.json"),
                      json.dumps(results, indent=2))
    text = markdown(results)
    atomic.write_text(os.path.join(FLAGS.output, "box_variance.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
