"""Model-agnostic evaluation shared by MSRRN and CCNN: predict, score, report.

* :func:`predict_split` runs a landmark model over one split of a TFRecord folder
  with the deterministic evaluation pipeline (``common.pipeline.make_dataset(...,
  training=False, with_meta=True)``, i.e. ``common.geometry.preprocess_faces``, the
  function the exported SavedModel wraps) and maps every landmark output
  (``"landmarks"``, ``"stage_0"``, ``"stage_1"``, ...) back to image pixels with
  ``common.geometry.crop_to_image``.
* :func:`evaluate_outputs` scores every output with ``common.metrics`` (NME per
  normaliser, AUC and failure rate, per-point mean errors).
* :func:`write_report` writes the results as JSON + Markdown + a CED plot, each file
  atomically.
* :func:`nme_val_metric` is the validation metric of the training runner
  (``common.training.train_model(val_metric=...)``).
* :func:`load_model` loads a ``.keras`` file or a run directory (its ``model.keras``
  or, failing that, its latest checkpoint).

Errors are measured in image pixels against the record's original landmarks
(``meta["landmarks_px"]``), never against normalised targets, so they are what a
user of the exported model sees.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import atomic, geometry, landmark_model, metrics, plots
from common.pipeline import make_dataset
from common.schemes import LandmarkScheme
from common.tfrecord import find_shards, split_aliases

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
"""The final model written by ``common.training.train_model`` into a run directory."""

ARCHITECTURE_FILE = "model_config.json"
"""The serialised model architecture (``save_architecture``), used to rebuild a model
from a checkpoint when a run has no ``model.keras`` yet."""

DEFAULT_KINDS = ("inter_pupil", "inter_ocular")
DEFAULT_THRESHOLDS = metrics.DEFAULT_THRESHOLDS

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The folder holding ``common`` and its sibling packages (the model packages)."""


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------

THREE_HUNDRED_W_TEST_SPLITS = ("common", "challenging", "full")
"""The 300-W test sets (MSRRN paper, "Datasets"): LFPW + HELEN test ("common"), IBUG
("challenging") and their union ("full", a ``dataset.json`` alias)."""

_SHARD_NAME = re.compile(r"^.+-(?P<split>[^-/]+)-\d{5}-of-\d{5}\.tfrecord$")


def available_splits(data: str) -> list[str]:
    """Split names of the shards in a TFRecord folder, plus its ``dataset.json``
    aliases (sorted)."""
    if not os.path.isdir(data):
        return []
    names = {m.group("split") for f in os.listdir(data) for m in [_SHARD_NAME.match(f)] if m}
    return sorted(names | set(split_aliases(data)))


def default_eval_splits(data: str) -> list[str]:
    """The splits to evaluate by default.

    300-W (a folder with "common" and "challenging" shards): the three test sets
    ``THREE_HUNDRED_W_TEST_SPLITS`` ("full" is the union, whether or not
    ``dataset.json`` declares it). Otherwise every split except "train" and the
    parts of a "train" alias (a tuning split carved from it, ``common.prepare``):
    "val", "test", ..., or "train" when it is the only one.

    Args:
        data: a TFRecord folder.

    Returns:
        Split names (or aliases) for ``predict_split``.

    Raises:
        FileNotFoundError: ``data`` holds no shards.
    """
    splits = available_splits(data)
    if "common" in splits and "challenging" in splits:
        return list(THREE_HUNDRED_W_TEST_SPLITS)
    if not splits:
        raise FileNotFoundError(f"no TFRecord shards in {data!r}")
    training = {"train", *split_aliases(data).get("train", ())}  # + a tuning split
    held_out = [s for s in splits if s not in training]
    return held_out or ["train"]


def _split_source(data: str, split: str) -> str | list[str]:
    """What ``make_dataset`` should read for ``split``: ``data`` itself, or for 300-W's
    "full" without a ``dataset.json`` alias the shards of "common" and "challenging"."""
    if (split == "full" and os.path.isdir(data) and "full" not in available_splits(data)
            and {"common", "challenging"} <= set(available_splits(data))):
        return sorted(f for part in ("common", "challenging") for f in find_shards(data, part))
    return data


# --------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
    """A model's landmark predictions over one split, in image pixels.

    Attributes:
        outputs_px: ``{output name: float32 [N, L, 2]}`` (x, y) pixels for every
            landmark output of the model ("landmarks", "stage_0", ...), plus any
            added with :func:`add_constant_shape`.
        true_px: float32 ``[N, L, 2]`` ground-truth landmarks in pixels.
        boxes: float32 ``[N, 4]`` face boxes (l, t, r, b) the crops were made from.
        source_paths: ``N`` source paths of the records, for tracing.
        seconds_per_face: wall time of the model's forward pass per face (after one
            warm-up batch, crops and I/O excluded).
        crop_boxes: float32 ``[N, 4]`` crop boxes of the model inputs.
        per_face: ``{output name: float32 [N]}`` the model's per-face outputs
            (e.g. ``"confidence"``, ``common.confidence``).
    """

    outputs_px: dict[str, np.ndarray]
    true_px: np.ndarray
    boxes: np.ndarray
    source_paths: list[str]
    seconds_per_face: float
    crop_boxes: np.ndarray | None = None
    per_face: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_faces(self) -> int:
        return int(self.true_px.shape[0])


def _as_output_dict(outputs: Any) -> dict[str, Any]:
    return dict(outputs) if isinstance(outputs, Mapping) else {"landmarks": outputs}


def _is_landmark_tensor(value: Any, num_landmarks: int) -> bool:
    shape = getattr(value, "shape", None)
    return (shape is not None and len(shape) == 3 and shape[-1] == 2
            and shape[1] == num_landmarks)


def _forward_fn(model: Callable) -> Callable:
    """The model's inference call as a traced function (Keras models: training=False)."""
    if isinstance(model, keras.Model):
        return tf.function(lambda inputs: model(inputs, training=False), autograph=False,
                           reduce_retracing=True)
    return model


def predict_split(model: Callable, data: str, split: str, *, sizes: Sequence[int],
                  margin: float, num_landmarks: int, batch_size: int = 64,
                  limit: int | None = None) -> Predictions:
    """Runs ``model`` over one split and maps its landmark outputs to pixels.

    Args:
        model: a Keras model (or any callable) taking ``{f"image_{s}": float32
            [B, s, s, 3]}`` and returning ``{"landmarks": [B, L, 2], ...}`` (or one
            tensor) in normalised crop coordinates.
        data: TFRecord folder (``common.prepare`` / ``common.synthetic``), glob or
            file; ``split`` may be a ``dataset.json`` alias ("full").
        split: split name.
        sizes: the model's input sides.
        margin: the crop margin the model was trained with.
        num_landmarks: L.
        batch_size: faces per forward pass.
        limit: evaluate only the first ``limit`` faces.

    Returns:
        The :class:`Predictions`. Every output of shape ``[B, L, 2]`` is kept.

    Raises:
        ValueError: the split is empty or the model has no landmark output.
    """
    dataset = make_dataset(_split_source(data, split), split, sizes=sizes,
                           num_landmarks=num_landmarks, margin=margin,
                           batch_size=batch_size, training=False, with_meta=True)
    if limit is not None:
        dataset = dataset.unbatch().take(int(limit)).batch(batch_size)
    forward = _forward_fn(model)
    outputs: dict[str, list[np.ndarray]] = {}
    per_face: dict[str, list[np.ndarray]] = {}
    true, boxes, crop_boxes, paths = [], [], [], []
    seconds, timed_faces, warmed_up = 0.0, 0, False
    for inputs, _, meta in dataset:
        if not warmed_up:  # tracing and first-call costs are not inference time
            forward(inputs)
            warmed_up = True
        start = time.perf_counter()
        result = _as_output_dict(forward(inputs))
        result = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
                  for k, v in result.items()}
        seconds += time.perf_counter() - start
        count = int(meta["crop_box"].shape[0])
        timed_faces += count
        for key, value in result.items():
            if _is_landmark_tensor(value, num_landmarks):
                pixels = geometry.crop_to_image(value.astype(np.float32), meta["crop_box"])
                outputs.setdefault(key, []).append(pixels.numpy())
            elif value.shape == (count,):
                per_face.setdefault(key, []).append(value.astype(np.float32))
        true.append(meta["landmarks_px"].numpy())
        boxes.append(meta["box"].numpy())
        crop_boxes.append(meta["crop_box"].numpy())
        paths += [p.decode("utf-8", "replace") for p in meta["source_path"].numpy()]
    if not true:
        raise ValueError(f"split {split!r} of {data!r} holds no faces")
    if not outputs:
        raise ValueError(f"the model returns no landmark output of shape "
                         f"[N, {num_landmarks}, 2]")
    return Predictions(
        outputs_px={k: np.concatenate(v) for k, v in outputs.items()},
        true_px=np.concatenate(true).astype(np.float32),
        boxes=np.concatenate(boxes).astype(np.float32),
        source_paths=paths,
        seconds_per_face=seconds / max(timed_faces, 1),
        crop_boxes=np.concatenate(crop_boxes).astype(np.float32),
        per_face={k: np.concatenate(v) for k, v in per_face.items()})


def predict_model(model: Any, data: str, split: str, *, batch_size: int = 64,
                  limit: int | None = None, margin: float | None = None) -> Predictions:
    """:func:`predict_split` of a ``common.landmark_model.LandmarkModel``: its input
    sizes, margin (or ``margin``) and ``L`` from the contract, plus its baseline
    shapes (``baseline_shapes()``, e.g. MSRRN's ``"mean_shape"``).

    Raises:
        ValueError: the model's margin is unknown and ``margin`` not given.
    """
    margin = landmark_model.margin_of(model) if margin is None else float(margin)
    if margin is None:
        raise ValueError(f"the crop margin of {type(model).__name__} is unknown; pass margin=")
    pred = predict_split(model, data, split, sizes=landmark_model.input_sizes_of(model),
                         margin=margin, num_landmarks=landmark_model.num_landmarks_of(model),
                         batch_size=batch_size, limit=limit)
    for name, shape in landmark_model.baseline_shapes_of(model).items():
        pred = add_constant_shape(pred, name, np.asarray(shape, np.float32))
    return pred


def add_constant_shape(pred: Predictions, name: str, shape_norm: np.ndarray) -> Predictions:
    """Adds an image-independent prediction: one normalised shape in every crop box.

    Used for a mean-shape baseline: ``shape_norm`` is e.g. the training mean shape
    in normalised crop coordinates, so the prediction of face ``n`` is
    ``crop_to_image(shape_norm, crop_boxes[n])``.

    Args:
        pred: predictions with ``crop_boxes``.
        name: output name to add (e.g. ``"mean_shape"``).
        shape_norm: ``[L, 2]`` normalised crop coordinates.

    Returns:
        ``pred`` with ``outputs_px[name]`` added (a copy; ``pred`` is unchanged).
    """
    if pred.crop_boxes is None:
        raise ValueError("add_constant_shape needs predictions with crop_boxes")
    shape_norm = np.asarray(shape_norm, np.float32)
    if shape_norm.shape != pred.true_px.shape[1:]:
        raise ValueError(f"shape must be {pred.true_px.shape[1:]}, got {shape_norm.shape}")
    tiled = np.broadcast_to(shape_norm, pred.true_px.shape)
    pixels = geometry.crop_to_image(tiled, pred.crop_boxes).numpy()
    return dataclasses.replace(pred, outputs_px={**pred.outputs_px, name: pixels})


# --------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------


def mean_crop_residuals(pred: Predictions, outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean signed error ``truth - prediction`` of each landmark, in normalised crop
    coordinates (fractions of the crop box's width and height), over all faces.

    A model trained with flip augmentation cannot learn an annotation convention
    that is not mirror-symmetric (points marked half a pixel right of the feature,
    1-based coordinates, ...): a mirrored face carries the opposite offset, so the
    model learns their average. Measured on training faces, these means are the
    systematic part of its error that a constant correction removes.

    Args:
        pred: predictions with ``crop_boxes``.
        outputs: output names (keys of ``pred.outputs_px``).

    Returns:
        ``{output: float32 [L, 2]}``.

    Raises:
        ValueError: ``pred`` has no crop boxes, or an output is missing.
    """
    if pred.crop_boxes is None:
        raise ValueError("the predictions carry no crop boxes")
    size = (pred.crop_boxes[:, None, 2:4] - pred.crop_boxes[:, None, 0:2]).astype(np.float64)
    residuals = {}
    for name in outputs:
        if name not in pred.outputs_px:
            raise ValueError(f"no output {name!r} among {sorted(pred.outputs_px)}")
        error = (pred.true_px.astype(np.float64) - pred.outputs_px[name]) / size
        residuals[name] = error.mean(axis=0).astype(np.float32)
    return residuals


def face_errors(pred: Predictions, output: str, kind: str,
                scheme: LandmarkScheme | None = None) -> np.ndarray:
    """Per-face NME of one output (``common.metrics.nme``), e.g. for a CED curve.

    Args:
        pred: the predictions.
        output: output name ("landmarks", "stage_1", ...).
        kind: normaliser kind (``common.metrics.NORMALIZER_KINDS``).
        scheme: landmark scheme (default ``scheme_for(L)``).

    Returns:
        float64 ``[N]`` errors as fractions of the normaliser.
    """
    return metrics.nme(pred.outputs_px[output], pred.true_px, kind, scheme=scheme,
                       boxes=pred.boxes)


def evaluate_outputs(pred: Predictions, scheme: LandmarkScheme | None = None,
                     kinds: Sequence[str] = DEFAULT_KINDS,
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Scores every output of ``pred`` under every normaliser.

    Args:
        pred: the predictions.
        scheme: landmark scheme (default ``scheme_for(L)``).
        kinds: normaliser kinds (``"inter_pupil"``: the MSRRN paper's NRMSE;
            ``"inter_ocular"``: the 300-W convention; ``"box_width"``: Sun et al.).
        thresholds: thresholds of the AUC and failure-rate entries.

    Returns:
        A JSON-ready dict::

            {"num_faces": N, "seconds_per_face": s, "kinds": [...],
             "thresholds": [...],
             "outputs": {output: {kind: {count, mean, median, std,
                                         "auc@0.08", "failure@0.08", ...,
                                         "per_point": [L mean errors]}}}}

        with every error a fraction of the normaliser.
    """
    results: dict[str, Any] = {
        "num_faces": pred.num_faces,
        "seconds_per_face": float(pred.seconds_per_face),
        "kinds": list(kinds),
        "thresholds": [float(t) for t in thresholds],
        "outputs": {},
    }
    for output, points in pred.outputs_px.items():
        per_kind = {}
        for kind in kinds:
            per_point = metrics.per_point_nme(points, pred.true_px, kind, scheme=scheme,
                                              boxes=pred.boxes)
            summary: dict[str, Any] = metrics.summarize(per_point.mean(axis=1), thresholds)
            summary["per_point"] = [float(v) for v in per_point.mean(axis=0)]
            per_kind[kind] = summary
        results["outputs"][output] = per_kind
    return results


def results_table(results: Mapping[str, Any], rows: Mapping[str, str], kind: str,
                  columns: Sequence[str] | Mapping[str, str] | None = None,
                  title: str | None = None) -> str:
    """A Markdown table of some outputs of :func:`evaluate_outputs` for one normaliser.

    Args:
        results: the output of :func:`evaluate_outputs`.
        rows: ``{row label: output name}`` in display order; outputs absent from
            ``results`` are skipped.
        kind: the normaliser kind.
        columns: summary keys to show; default mean, AUC and failure rate at each
            threshold, and count.
        title: optional table heading.

    Returns:
        Markdown text (``common.metrics.results_markdown``).
    """
    if columns is None:
        columns = {"mean": "NME"}
        for t in results.get("thresholds", DEFAULT_THRESHOLDS):
            columns[f"auc@{t:g}"] = f"AUC@{t:g}"
            columns[f"failure@{t:g}"] = f"failure@{t:g}"
        columns["count"] = "faces"
    table = {label: results["outputs"][output][kind] for label, output in rows.items()
             if output in results["outputs"]}
    return metrics.results_markdown(table, columns, title)


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def write_report(results: Mapping[str, Any], out_dir: str, name: str,
                 ced: Mapping[str, np.ndarray], title: str,
                 markdown_tables: str | Iterable[str] = (), *,
                 ced_xlabel: str = "NME (normalised by inter-pupil distance)",
                 ced_max_threshold: float = 0.1,
                 notes: str | None = None) -> dict[str, str]:
    """Writes ``name.json``, ``name.md`` and ``name_ced.png`` into ``out_dir``.

    Every file is written under a temporary name and renamed into place, so a reader
    never sees a partial report.

    Args:
        results: JSON-ready results (e.g. from :func:`evaluate_outputs`, possibly
            nested per split).
        out_dir: output folder (created if needed).
        name: file name stem.
        ced: ``{curve label: per-face errors [N]}`` for the CED plot (may be empty:
            then no PNG is written).
        title: report and plot title.
        markdown_tables: Markdown blocks (e.g. :func:`results_table`) written
            under the title, in order.
        ced_xlabel: x-axis label of the CED plot (name the normaliser).
        ced_max_threshold: right end of the CED plot's x axis.
        notes: optional Markdown paragraph written after the tables.

    Returns:
        ``{"json": path, "markdown": path, "ced": path}`` (``"ced"`` only when
        ``ced`` is not empty).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"),
             "markdown": os.path.join(out_dir, f"{name}.md")}
    # Insertion order is kept: rows appear in the JSON as in the tables.
    atomic.write_text(paths["json"], json.dumps(results, indent=2) + "\n")
    if isinstance(markdown_tables, str):
        markdown_tables = [markdown_tables]
    blocks = [f"# {title}", *markdown_tables]
    if notes:
        blocks.append(notes)
    if ced:
        paths["ced"] = os.path.join(out_dir, f"{name}_ced.png")
        blocks.append(f"![CED]({os.path.basename(paths['ced'])})")
    atomic.write_text(paths["markdown"], "\n\n".join(b.strip("\n") for b in blocks) + "\n")
    if ced:
        atomic.write_figure(plots.plot_ced, paths["ced"], ced,
                            max_threshold=ced_max_threshold, title=title, xlabel=ced_xlabel)
    return paths


# --------------------------------------------------------------------------------------
# Validation metric for the training runner
# --------------------------------------------------------------------------------------


def _normalised_nme(pred: tf.Tensor, true: tf.Tensor, kind: str,
                    scheme: LandmarkScheme) -> tf.Tensor:
    """Per-face NME ``[B]`` computed in normalised crop coordinates (graph ops)."""
    errors = tf.norm(pred - true, axis=-1)  # [B, L]
    if kind == "inter_ocular" and scheme.outer_eye_corners is not None:
        left = tf.gather(true, scheme.outer_eye_corners[0], axis=1)
        right = tf.gather(true, scheme.outer_eye_corners[1], axis=1)
    elif kind in ("inter_pupil", "inter_ocular"):
        left = tf.reduce_mean(tf.gather(true, list(scheme.left_pupil), axis=1), axis=1)
        right = tf.reduce_mean(tf.gather(true, list(scheme.right_pupil), axis=1), axis=1)
    else:
        raise ValueError(f"nme_val_metric supports inter_pupil and inter_ocular, got {kind!r}")
    return tf.reduce_mean(errors, axis=1) / tf.norm(right - left, axis=-1)


def _landmarks_of(targets: Any) -> Any:
    """The landmarks of a dataset's targets: ``targets["landmarks"]`` or ``targets``."""
    return targets["landmarks"] if isinstance(targets, Mapping) else targets


def nme_val_metric(kind: str, scheme: LandmarkScheme, output_key: str = "landmarks",
                   name: str | None = None
                   ) -> Callable[[keras.Model, tf.data.Dataset], dict[str, float]]:
    """A validation metric for ``common.training.train_model(val_metric=...)``.

    The NME is computed on the normalised crop coordinates of the targets and the
    model output directly. This equals the pixel NME of :func:`evaluate_outputs`:
    ``crop_to_image`` maps a square crop box (``crop_boxes_from_face_boxes`` always
    makes square ones) by one uniform scale ``s`` and a translation, so every point
    error and the normalising distance are both multiplied by ``s``, and their ratio
    is unchanged. (For the box-based normalisers the face box would be needed, so only
    the eye-based ones are offered.)

    Args:
        kind: ``"inter_pupil"`` or ``"inter_ocular"``.
        scheme: the landmark scheme.
        output_key: the model output to score.
        name: metric name; default ``f"nme_{kind}"`` (reported as ``val_nme_...``).

    Returns:
        ``metric(model, val_dataset) -> {name: mean NME over the dataset}``; the
        dataset yields ``(inputs, targets)`` or ``(inputs, targets, meta)``.
    """
    if kind not in ("inter_pupil", "inter_ocular"):
        raise ValueError(f"nme_val_metric supports inter_pupil and inter_ocular, got {kind!r}")
    name = name or f"nme_{kind}"
    cache: dict[int, Callable] = {}

    def batch_errors(model: keras.Model, signature: list[Any]) -> Callable:
        if id(model) not in cache:
            # Straight-line code: nothing to convert; traced once per model, for any
            # batch size (the short last batch too).
            @tf.function(autograph=False, input_signature=signature)
            def run(inputs, landmarks):
                outputs = _as_output_dict(model(inputs, training=False))
                pred = tf.cast(outputs[output_key], tf.float32)
                return _normalised_nme(pred, tf.cast(landmarks, tf.float32), kind, scheme)

            cache.clear()  # one model at a time: keep no stale graph alive
            cache[id(model)] = run
        return cache[id(model)]

    def metric(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, float]:
        inputs_spec, targets_spec = dataset.element_spec[:2]
        run = batch_errors(model, [inputs_spec, _landmarks_of(targets_spec)])
        total, count = 0.0, 0
        for element in dataset:
            errors = run(element[0], _landmarks_of(element[1])).numpy()
            total += float(errors.sum())
            count += errors.size
        if count == 0:
            raise ValueError("the validation dataset is empty")
        return {name: total / count}

    return metric


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def import_model_modules(config: Any) -> list[str]:
    """Imports the modules that define a serialised model's custom Keras classes.

    A Keras config names the module of every class (``"module": "pkg.model"``); the
    ones in a package of this project (a sibling folder of ``common``) are imported,
    which registers their classes. ``common`` so depends on no model package: the
    model file says what it needs.

    Args:
        config: a Keras serialised object (``model.keras``'s ``config.json``,
            ``model_config.json``).

    Returns:
        The modules imported.
    """
    modules: set[str] = set()
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module = item.get("module")
            if isinstance(module, str) and "class_name" in item:
                modules.add(module)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    imported = []
    for module in sorted(modules):
        top = module.split(".")[0]
        if top == "common" or not os.path.isfile(os.path.join(_PROJECT_ROOT, top,
                                                               "__init__.py")):
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:  # a package may be absent in a trimmed install
            logger.debug("could not import %s: %s", module, error)
            continue
        imported.append(module)
    return imported


def _load_keras_file(path: str) -> keras.Model:
    """``keras.saving.load_model`` after importing the classes the file names."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f, zipfile.ZipFile(io.BytesIO(f.read())) as z:
            import_model_modules(json.loads(z.read("config.json")))
    except (zipfile.BadZipFile, KeyError, ValueError):
        pass  # not a Keras v3 archive: keras reports it
    return keras.saving.load_model(path, compile=False)


def save_architecture(model: keras.Model, run_dir: str) -> str:
    """Writes the model's serialised architecture to ``run_dir/model_config.json``.

    With it, :func:`load_model` can rebuild the model from a checkpoint of a run that
    has not yet written ``model.keras`` (an interrupted or running training). Works
    for local and ``gs://`` run directories.

    Args:
        model: the (registered, serialisable) model.
        run_dir: the run directory.

    Returns:
        The file path.
    """
    from common.training import atomic_write_text

    tf.io.gfile.makedirs(run_dir)
    path = f"{run_dir.rstrip('/')}/{ARCHITECTURE_FILE}"
    config = keras.saving.serialize_keras_object(model)
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def load_model(path: str, *, build_model: Callable[[], keras.Model] | None = None,
               prefer_checkpoint: bool = False) -> keras.Model:
    """Loads a model (:func:`_load_model`); a model of the ``common.landmark_model``
    contract saved before it stored its crop margin gets its run's (when known)."""
    model = _load_model(path, build_model=build_model, prefer_checkpoint=prefer_checkpoint)
    if hasattr(model, "margin") and model.margin is None:
        try:
            landmark_model.complete_margin(model, path)
        except ValueError:
            pass  # unknown here: the caller's loader decides (an error, or a default)
    return model


def _load_model(path: str, *, build_model: Callable[[], keras.Model] | None = None,
                prefer_checkpoint: bool = False) -> keras.Model:
    """Loads a model from a ``.keras`` file or a run directory.

    In a run directory, ``model.keras`` (the finished model) is used when present
    (unless ``prefer_checkpoint``), else the latest checkpoint of ``checkpoints/``
    restored into a model rebuilt from ``model_config.json``
    (:func:`save_architecture`) or by ``build_model``.

    Args:
        path: a ``.keras`` file, or a run directory of ``common.training``.
        build_model: builds the architecture for a checkpoint when the run has no
            ``model_config.json``.
        prefer_checkpoint: use the latest checkpoint even when ``model.keras``
            exists.

    Returns:
        The model (inference-ready).

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
    """
    path = os.fspath(path).rstrip("/")
    gfile = tf.io.gfile
    if gfile.exists(path) and not gfile.isdir(path):
        return _load_keras_file(path)
    if not gfile.isdir(path):
        raise FileNotFoundError(f"no model at {path!r} (expected a .keras file or a run "
                                "directory)")
    final = f"{path}/{MODEL_FILE}"
    latest = tf.train.latest_checkpoint(f"{path}/checkpoints")
    if gfile.exists(final) and not (prefer_checkpoint and latest):
        return _load_keras_file(final)
    if not latest:
        raise FileNotFoundError(f"{path!r} has neither {MODEL_FILE} nor a checkpoint")
    architecture = f"{path}/{ARCHITECTURE_FILE}"
    if gfile.exists(architecture):
        with gfile.GFile(architecture) as f:
            config = json.load(f)
        import_model_modules(config)
        model = keras.saving.deserialize_keras_object(config)
    elif build_model is not None:
        model = build_model()
    else:
        raise FileNotFoundError(f"{path!r} has a checkpoint but no {ARCHITECTURE_FILE}; "
                                "pass build_model")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    logger.info("loaded %s", latest)
    return model
