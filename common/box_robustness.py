"""Landmark methods scored under several face-box sources (box robustness).

Users bring face boxes from many detectors, and each detector has its own convention
(where the box sits on the face, how large it is). A landmark model that is good only
on the boxes it was trained with is fragile. This module gives every method the same
faces under several box sources and reports the error per source, so a model's
sensitivity to the box convention is measured rather than guessed:

* ``stored``: the box stored with the face (``common.prepare``: the data set's own box,
  else a matched dlib detection, else ``common.geometry.landmark_box``);
* ``landmark_square``: the tight square on the landmarks' extent
  (``landmark_square_box``: the convention of dlib's ``train_shape_predictor`` users
  who box their faces from the annotation); for 5 points, which span only the inner
  face, that square scaled to the face (:data:`INNER_FACE_COUNTS`);
* ``dlib``: dlib's HOG detection matched to the face (``common.boxes.choose_box``);
  faces it misses have no box of this source;
* ``mtcnn``: the pretrained MTCNN's detection matched to the face (needs the ``mtcnn``
  package, the ``peers`` extra; skipped when it is absent);
* ``jitter_5`` / ``jitter_10``: the stored box with its centre moved and its size
  changed by up to +-5 % / +-10 % of its side (``jitter_box``), seeded.

Every method is scored on the faces for which every requested source has a box, so
the columns of one table compare the same faces. The worst/best ratio of a method is
taken over ``BOUNDED_SOURCES`` present in the table; the +-10 % column is reported
only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from common import atomic, metrics
from common.boxes import BOX_SOURCE_DLIB, choose_box

LANDMARK_SQUARE = (1.0, 0.0)
"""``(scale, shift_y)`` of ``common.geometry.landmark_box`` for the landmark-extent
square: side = the extent's longer side, centred on the extent."""

INNER_FACE_COUNTS = frozenset({5})
"""Landmark counts whose points span only the inner face (the 5 CUHK points: eyes to
mouth corners, 0.48-0.65 of a face box). Their ``landmark_square`` is the box users
derive from such an annotation, ``common.geometry.landmark_box`` with its defaults for
that count (5 points: the extent square x1.78, the median CUHK box), not the tight
square, which would be a box no detector gives."""

ALL_SOURCES = ("stored", "landmark_square", "dlib", "mtcnn", "jitter_5", "jitter_10")
BOUNDED_SOURCES = ("stored", "landmark_square", "dlib", "mtcnn", "jitter_5")
DEFAULT_FACES = 200
"""Eval faces (the first ones) of a box-robustness table by default."""
JITTER_FRACTIONS = {"jitter_5": 0.05, "jitter_10": 0.10}
MTCNN_MIN_IOU = 0.3
"""Least IoU between an MTCNN detection and the dlib-like landmark box for the
detection to count as the face (MTCNN's boxes are taller and narrower than dlib's,
so dlib's 0.4 of ``common.boxes.choose_box`` is too strict for them)."""

BoxPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(image uint8 [H, W, 3] RGB, boxes float32 [K, 4]) -> float32 [K, L, 2]`` pixels."""


def landmark_square_box(landmarks: np.ndarray) -> np.ndarray:
    """The square box derived from the annotation, float32 ``[..., 4]`` (l, t, r, b).

    The tight square on the landmarks' extent (:data:`LANDMARK_SQUARE`), except for
    the landmark counts of :data:`INNER_FACE_COUNTS`, which get
    ``common.geometry.landmark_box``'s default box (5 points: the extent square
    scaled to the face).
    """
    from common import geometry

    landmarks = np.asarray(landmarks, np.float32)
    if int(landmarks.shape[-2]) in INNER_FACE_COUNTS:
        return np.asarray(geometry.landmark_box(landmarks), np.float32)
    return np.asarray(geometry.landmark_box(landmarks, *LANDMARK_SQUARE), np.float32)


def jitter_box(box: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The box with its centre shifted and its size scaled by up to ``fraction``.

    The centre moves by ``dx * w`` and ``dy * h`` and both sides are multiplied by one
    factor ``1 + s``, with ``dx``, ``dy``, ``s`` uniform in ``[-fraction, fraction]``.

    Args:
        box: float ``[4]`` (left, top, right, bottom).
        fraction: the largest relative shift and size change, e.g. 0.05.
        rng: the random generator (the caller seeds it).

    Returns:
        float32 ``[4]``.
    """
    from common import geometry

    dx, dy, s = rng.uniform(-fraction, fraction, 3)
    edges = geometry.perturb_box_edges(np.asarray(box, np.float64).reshape(4), dx, dy,
                                       1.0 + s)
    return np.array(edges, np.float32)


class MTCNNBoxFinder:
    """Face boxes of the pretrained MTCNN (``mtcnn`` package), best score first.

    Raises:
        ImportError: the ``mtcnn`` package is not installed (``pip install -e
            ".[peers]"``).
    """

    def __init__(self):
        try:
            import mtcnn
        except ImportError as e:
            raise ImportError("MTCNN boxes need the 'mtcnn' package: "
                              "pip install -e \".[peers]\"") from e
        self._detector = mtcnn.MTCNN()

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        result = np.asarray(self._detector.detect_faces(
            np.asarray(image), box_format="xyxy", output_type="numpy"),
            np.float64).reshape(-1, 16)
        order = np.argsort(-result[:, 5])
        return [result[i, 1:5].astype(np.float32) for i in order]


def mtcnn_available() -> bool:
    """Whether the ``mtcnn`` package can be imported."""
    try:
        import mtcnn  # noqa: F401
    except ImportError:
        return False
    return True


def _matched(landmarks: np.ndarray, detections: Sequence[np.ndarray],
             min_iou: float | None = None) -> np.ndarray:
    kwargs = {} if min_iou is None else {"min_iou": min_iou}
    choice = choose_box(landmarks, detections, **kwargs)
    if choice.source != BOX_SOURCE_DLIB:  # choose_box fell back to the landmark box
        return np.full(4, np.nan, np.float32)
    return np.asarray(choice.box, np.float32)


def source_boxes(faces: Sequence[Any], sources: Sequence[str] = ALL_SOURCES, *,
                 seed: int = 0, dlib_finder: Callable | None = None,
                 mtcnn_finder: Callable | None = None) -> dict[str, np.ndarray]:
    """The box of every face under every source.

    Args:
        faces: ``(image, landmarks, box, ...)`` tuples (e.g. ``common.peers.Face``):
            uint8 RGB image, float ``[L, 2]`` pixels, float ``[4]`` stored box.
        sources: names from ``ALL_SOURCES``.
        seed: seed of the jittered sources.
        dlib_finder: ``image -> [(box, score), ...]`` (default
            ``common.boxes.DlibBoxFinder(upsample=1)``).
        mtcnn_finder: ``image -> [box, ...]`` (default ``MTCNNBoxFinder``).

    Returns:
        ``{source: float32 [N, 4]}``, NaN rows where the source has no box for a face
        (a detector that misses it).

    Raises:
        ValueError: an unknown source name.
        ImportError: ``"mtcnn"`` asked for without the ``mtcnn`` package.
    """
    unknown = [s for s in sources if s not in ALL_SOURCES]
    if unknown:
        raise ValueError(f"unknown box source(s) {unknown}; known: {list(ALL_SOURCES)}")
    if "dlib" in sources and dlib_finder is None:
        from common.boxes import DlibBoxFinder

        dlib_finder = DlibBoxFinder(upsample=1)
    if "mtcnn" in sources and mtcnn_finder is None:
        mtcnn_finder = MTCNNBoxFinder()
    rngs = {name: np.random.default_rng([seed, i]) for i, name in enumerate(ALL_SOURCES)}
    out: dict[str, list[np.ndarray]] = {name: [] for name in sources}
    for face in faces:
        image, landmarks, box = face[0], np.asarray(face[1], np.float32), face[2]
        box = np.asarray(box, np.float32).reshape(4)
        for name in sources:
            if name == "stored":
                value = box
            elif name == "landmark_square":
                value = landmark_square_box(landmarks)
            elif name == "dlib":
                value = _matched(landmarks, [d for d, _ in dlib_finder(image)])
            elif name == "mtcnn":
                value = _matched(landmarks, mtcnn_finder(image), MTCNN_MIN_IOU)
            else:
                value = jitter_box(box, JITTER_FRACTIONS[name], rngs[name])
            out[name].append(np.asarray(value, np.float32).reshape(4))
    return {name: np.stack(values) if values else np.zeros((0, 4), np.float32)
            for name, values in out.items()}


def box_offsets(boxes: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """How boxes differ from reference boxes, in the reference's units.

    Returns:
        ``{"dx", "dy"}``: centre shift over the reference's width / height;
        ``"scale"``: ``sqrt(w h) / sqrt(w_ref h_ref)``; ``"side"``: ``max(w, h) /
        max(w_ref, h_ref)``, the ratio of the square crops a model sees
        (``common.geometry.crop_boxes_from_face_boxes``); ``"aspect"``: ``h / w`` of
        the boxes; each float64 ``[N]`` over the faces where both boxes are finite.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    reference = np.asarray(reference, np.float64).reshape(-1, 4)
    ok = np.all(np.isfinite(boxes), axis=1) & np.all(np.isfinite(reference), axis=1)
    b, r = boxes[ok], reference[ok]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    rw, rh = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    return {
        "dx": (0.5 * (b[:, 0] + b[:, 2]) - 0.5 * (r[:, 0] + r[:, 2])) / rw,
        "dy": (0.5 * (b[:, 1] + b[:, 3]) - 0.5 * (r[:, 1] + r[:, 3])) / rh,
        "scale": np.sqrt(bw * bh) / np.sqrt(rw * rh),
        "side": np.maximum(bw, bh) / np.maximum(rw, rh),
        "aspect": bh / bw,
    }


@dataclasses.dataclass
class RobustnessTable:
    """NME of every method under every box source, on the same faces.

    Attributes:
        nme: ``{method: {source: mean NME (fraction)}}``.
        ratio: ``{method: worst / best mean NME over the bounded sources present}``.
        num_faces: faces scored (those with a box from every source).
        missing: ``{source: faces without a box of that source}`` (before the
            intersection).
        kind: the normaliser (``common.metrics.normalizer``).
        sources: the columns, in order.
    """

    nme: dict[str, dict[str, float]]
    ratio: dict[str, float]
    num_faces: int
    missing: dict[str, int]
    kind: str
    sources: list[str]

    def markdown(self) -> str:
        """The table as Markdown: a row per method, a column per source, the ratio."""
        bounded = [s for s in self.sources if s in BOUNDED_SOURCES]
        head = "| method | " + " | ".join(self.sources) + " | worst/best |"
        rule = "|---|" + "---:|" * (len(self.sources) + 1)
        rows = [head, rule]
        for method, values in self.nme.items():
            cells = [f"{100.0 * values[s]:.2f}" for s in self.sources]
            rows.append(f"| {method} | " + " | ".join(cells) + f" | {self.ratio[method]:.3f} |")
        notes = ", ".join(f"{s} {n}" for s, n in self.missing.items() if n)
        return "\n".join(rows) + (
            f"\n\n{self.kind} NME (%) on {self.num_faces} faces with a box from every "
            f"source; worst/best over {', '.join(bounded)}"
            + (f"; faces without a box: {notes}" if notes else "") + ".\n")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_under_boxes(methods: Mapping[str, BoxPredictor], faces: Sequence[Any],
                      boxes_by_source: Mapping[str, np.ndarray], *, kind: str,
                      scheme=None) -> RobustnessTable:
    """Scores every method on the same faces under every box source.

    Args:
        methods: ``{name: fn(image, boxes [K, 4]) -> [K, L, 2] pixels}``.
        faces: ``(image, landmarks, box, ...)`` tuples, as for ``source_boxes``.
        boxes_by_source: the output of ``source_boxes`` for these faces.
        kind: normaliser of the NME (``"inter_pupil"``, ``"inter_ocular"``,
            ``"box_width"``; box kinds use the stored box for every source, so the
            columns share one normaliser).
        scheme: landmark scheme (default by landmark count).

    Returns:
        The :class:`RobustnessTable`.

    Raises:
        ValueError: no face has a box from every source, or the box arrays do not
            match the faces.
    """
    sources = list(boxes_by_source)
    n = len(faces)
    for name, boxes in boxes_by_source.items():
        if len(boxes) != n:
            raise ValueError(f"source {name!r} has {len(boxes)} boxes for {n} faces")
    finite = {s: np.all(np.isfinite(b), axis=1) for s, b in boxes_by_source.items()}
    keep = np.flatnonzero(np.all(np.stack(list(finite.values())), axis=0)) if sources else []
    if len(keep) == 0:
        raise ValueError("no face has a box from every source "
                         f"({ {s: int(f.sum()) for s, f in finite.items()} } of {n})")
    true = np.stack([np.asarray(faces[i][1], np.float32) for i in keep])
    stored = np.stack([np.asarray(faces[i][2], np.float32).reshape(4) for i in keep])
    table: dict[str, dict[str, float]] = {}
    ratio: dict[str, float] = {}
    for method, predict in methods.items():
        table[method] = {}
        for source in sources:
            pred = np.stack([np.asarray(predict(faces[i][0], boxes_by_source[source][i][None]),
                                        np.float32)[0] for i in keep])
            errors = metrics.nme(pred, true, kind, scheme=scheme, boxes=stored)
            table[method][source] = float(np.mean(errors))
        bounded = [table[method][s] for s in sources if s in BOUNDED_SOURCES]
        ratio[method] = _ratio(bounded)
    return RobustnessTable(nme=table, ratio=ratio, num_faces=int(len(keep)),
                           missing={s: int((~f).sum()) for s, f in finite.items()},
                           kind=kind, sources=sources)


def _ratio(values: Sequence[float]) -> float:
    """Worst over best; 1 when every value is 0 (a perfect method), NaN for none."""
    if not values:
        return float("nan")
    worst, best = max(values), min(values)
    if best <= 0.0:
        return 1.0 if worst <= 0.0 else float("inf")
    return worst / best


def model_box_predictor(model: Callable, sizes: Sequence[int], margin: float,
                        output: str = "landmarks") -> BoxPredictor:
    """Wraps a Keras landmark model as a ``BoxPredictor``.

    The crop is ``common.geometry.preprocess_faces``, the function of evaluation,
    prediction and export.

    Args:
        model: takes ``{f"image_{s}": float32 [N, s, s, 3]}``, returns a dict with
            ``output`` in normalised crop coordinates (or one tensor).
        sizes: the model's input sides.
        margin: the crop margin it was trained with.
        output: the output key to score.
    """
    from common import geometry

    def predict(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        images = np.repeat(np.asarray(image, np.uint8)[None], len(boxes), axis=0)
        inputs, crop_boxes = geometry.preprocess_faces(images, boxes, sizes, margin)
        result = model(inputs, training=False)
        points = result[output] if isinstance(result, Mapping) else result
        return np.asarray(geometry.crop_to_image(points, crop_boxes), np.float32)

    return predict


def write_table(table: RobustnessTable, out_dir: str, name: str = "box_robustness") -> str:
    """Writes ``NAME.json`` and ``NAME.md`` into ``out_dir`` (atomically); returns the md."""
    os.makedirs(out_dir, exist_ok=True)
    atomic.write_text(os.path.join(out_dir, f"{name}.json"),
                      json.dumps(table.to_json(), indent=2))
    path = os.path.join(out_dir, f"{name}.md")
    atomic.write_text(path, table.markdown())
    return path


def limit_faces(faces: Iterable[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` faces (all for ``None``) as a list."""
    out = []
    for face in faces:
        if limit is not None and len(out) >= limit:
            break
        out.append(face)
    return out


def robustness_section(methods: Mapping[str, BoxPredictor],
                       faces: Sequence[Any], *, kind: str, sources: Sequence[str],
                       num_faces: int, seed: int = 0) -> dict[str, Any]:
    """Scores ``methods`` under every box source on the first ``num_faces`` faces.

    Args:
        methods: ``{label: BoxPredictor}``.
        faces: ``(image, landmarks, box, ...)`` eval faces.
        kind: the normaliser (the comparison's headline metric).
        sources: box sources (``common.ALL_SOURCES``); ``mtcnn`` is
            dropped with a note when the package is missing.
        num_faces: faces scored (the first ones).
        seed: seed of the jittered sources.

    Returns:
        ``{"table": RobustnessTable or None, "markdown": str, "notes": [str]}``.
    """
    notes: list[str] = []
    sources = list(sources)
    if "mtcnn" in sources and not mtcnn_available():
        sources.remove("mtcnn")
        notes.append("Box robustness: MTCNN boxes skipped (the `mtcnn` package is not "
                     "installed).")
    faces = list(faces[:num_faces])
    boxes = source_boxes(faces, sources, seed=seed)
    for name in list(boxes):
        if not np.all(np.isfinite(boxes[name]), axis=1).any():
            del boxes[name]
            notes.append(f"Box robustness: no `{name}` box for any of the {len(faces)} "
                         "faces; that source is left out.")
    try:
        table = score_under_boxes(methods, faces, boxes, kind=kind)
    except ValueError as error:
        notes.append(f"Box robustness table skipped: {error}.")
        return {"table": None, "markdown": "", "notes": notes}
    markdown = "### Box robustness (the same faces under each box source)\n\n" + table.markdown()
    return {"table": table, "markdown": markdown, "notes": notes}


def evaluate_box_robustness(model: Any, data: str, split: str, out_dir: str, *,
                            kind: str, sources: Sequence[str] = ALL_SOURCES,
                            num_faces: int = DEFAULT_FACES, seed: int = 0,
                            label: str | None = None,
                            name: str = "box_robustness") -> dict[str, Any]:
    """The box-robustness table of one trained model, as the evaluators write it.

    The model is read through the landmark-model contract (``common.landmark_model``:
    its input sides and crop margin), so every family gets the same table as
    ``experiments.compare_real``'s (same faces, same box sources, same seed).

    Args:
        model: a trained landmark model (Keras; ``input_sizes`` and ``margin``).
        data: TFRecord folder, or several (``common.multidata.DataSpec``).
        split: the split scored (its first ``num_faces`` faces, folder after folder).
        out_dir: where ``NAME.json`` / ``NAME.md`` are written.
        kind: the normaliser of the NME.
        sources: box sources (``ALL_SOURCES``); ``mtcnn`` dropped with a note when
            the package is missing.
        num_faces: faces scored (the first ones).
        seed: seed of the jittered sources.
        label: the model's row label (default: its class name).
        name: file name stem.

    Returns:
        ``robustness_section``'s dict plus ``"path"`` (the Markdown file, or ``None``
        when no table could be made).

    Raises:
        ValueError: the model does not give its input sides or margin.
    """
    from common import landmark_model, multidata

    sizes = landmark_model.input_sizes_of(model)
    margin = landmark_model.margin_of(model)
    if not sizes or margin is None:
        raise ValueError(f"{type(model).__name__} gives no input sizes or crop margin "
                         "(common.landmark_model): cannot crop faces for the box table")
    faces = list(multidata.iterate_faces(data, split, int(num_faces)))
    methods = {label or type(model).__name__: model_box_predictor(model, sizes, margin)}
    section = robustness_section(methods, faces, kind=kind, sources=sources,
                                 num_faces=num_faces, seed=seed)
    section["path"] = (write_table(section["table"], out_dir, name)
                       if section["table"] is not None else None)
    return section


def define_flags(flags_module: Any) -> None:
    """Defines an evaluator's ``--box_faces`` and ``--box_sources``.

    Args:
        flags_module: ``absl.flags`` (library code does not import absl itself).
    """
    flags = flags_module
    flags.DEFINE_integer("box_faces", 0, "Box-robustness table (common.box_robustness) on "
                         "the first this many faces of each split: the model under the "
                         "stored box, the landmark square, dlib's and MTCNN's detections "
                         "and +-5 / +-10 percent jitter, with the worst/best ratio, written to "
                         "<output>/box_robustness_<split>.md/.json (e.g. 200; 0: no table).",
                         lower_bound=0)
    flags.DEFINE_list("box_sources", list(ALL_SOURCES),
                      "Box sources of the box-robustness table: "
                      + ", ".join(ALL_SOURCES) + ".")


def write_box_tables(model, data, splits: Sequence[str], out_dir: str, *, kind: str,
                     num_faces: int, sources: Sequence[str], label: str) -> list[str]:
    """Writes and prints the box-robustness table of each split; returns the files."""
    paths = []
    for split in splits:
        print(f"box robustness on the first {num_faces} faces of {split}: "
              + ", ".join(sources), flush=True)
        section = evaluate_box_robustness(
            model, data, split, out_dir, kind=kind, sources=sources, num_faces=num_faces,
            label=label, name=f"box_robustness_{split}")
        for note in section["notes"]:
            print(note, flush=True)
        if section["path"]:
            print(section["markdown"], flush=True)
            paths.append(section["path"])
    return paths
