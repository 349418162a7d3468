"""Our model and its peers on real data, in one run: same training split, same boxes.

::

    python -m experiments.compare_real --family=msrrn --data=/tmp/data/ytf68
    python -m experiments.compare_real --family=ccnn --data=/tmp/data/sun5 --steps=1500
    python -m experiments.compare_real --family=msrrn --data=DIR --model=runs/msrrn-x

For the data folder of ``common.prepare`` (or ``common.synthetic``) and one family:

1. our model is trained on ``--train_split`` with the package's own library function
   (``msrrn_tf.training.train_msrrn``, ``ccnn_tf.training.train_ccnn``) unless
   ``--model`` gives a trained one;
2. the trainable peers of ``common.peers`` are fitted on the *same* training faces with
   the *same* face boxes (the boxes stored in the TFRecords): dlib's ERT with dlib's
   default options (``common.peers.DLIB_DEFAULT_OPTIONS``: 10 cascades x 500 trees of
   depth 4, nu 0.1, 400 pool pixels, 20 initialisations per face; Kazemi and Sullivan,
   CVPR 2014) and the mean shape. By default dlib trains in a child process while our
   model trains; fitted peers are kept in ``--output/peers`` and reused by a rerun on
   the same shards with the same options;
3. the pretrained MTCNN (5 points) runs in both modes of ``common.peers.MTCNNPeer``:
   ``mtcnn`` (its own detector, detection matched to our box) and ``mtcnn_box`` (its
   last stage on our box);
   optionally OpenCV's Facemark LBF (``lbf``, ``common.peers.LBFPeer``) is trained
   like dlib on the same faces and boxes, with ``common.peers.LBF_QUICK_OPTIONS`` by
   default (``--lbf_options``), by the C++ program ``tools/lbf_tool.cpp`` that
   ``--lbf_tool`` or ``$FACE_ALIGN_LBF_TOOL`` names (README, "Optional peers"); it
   is among the default peers when that variable is set, and skipped with a note in
   the report when it is asked for but not configured;
4. everything is scored on the same faces of ``--eval_split``:

   * MSRRN family (68 points): inter-pupil NME (the paper's NRMSE) and inter-ocular
     NME (300-W), AUC@0.08, failure rates at 0.08 and 0.10, a CED of all methods and
     the stage ablation of our model (mean shape, S^0, S^1..S^T, as Table 2). MTCNN
     predicts 5 points only: it is compared on the 5-point reduction of the 68 points
     (``common.synthetic.to_five_points``: eye centres, nose tip, mouth corners),
     with every 68-point method reduced the same way;
   * CCNN family (5 points): error normalised by the face-box width (Sun et al.
     2013, the paper's test error) and by the inter-ocular distance, per point (LE,
     RE, N, LM, RM) and mean, the error after every stage (stage 1 > 2 > 3, the
     paper's Experiment 1) and the per-point plot of all methods (the paper's Fig. 7);
   * time per face of every method: one face at a time (batch 1) including its own
     crop, our model through the serving function of the exported model
     (``common.export.LandmarkServingModule``); our batched forward time as well.

Writes ``compare_<family>.json``, ``.md``, ``_ced.png`` (and ``_per_point.png`` /
``_five_point_ced.png``) into ``--output`` and prints the Markdown.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FAMILIES = ("msrrn", "ccnn")

PEER_NAMES = ("dlib_ert", "mean_shape", "mtcnn", "mtcnn_box", "lbf")
"""Names accepted by ``--peers``; ``mtcnn`` means both MTCNN modes (``mtcnn`` and
``mtcnn_box``), ``mtcnn_box`` the box mode alone; ``lbf`` is OpenCV's Facemark LBF
(optional: ``$FACE_ALIGN_LBF_TOOL``)."""

DEFAULT_PEERS = ("dlib_ert", "mean_shape", "mtcnn") + (
    ("lbf",) if os.environ.get("FACE_ALIGN_LBF_TOOL") else ())
"""The peers run when none are named: LBF too when ``$FACE_ALIGN_LBF_TOOL`` is set
(``common.peers.LBF_TOOL_ENV``; read when this module is imported)."""

TRAINED_PEERS = ("mean_shape", "dlib_ert", "lbf")
"""Peers fitted on the training split (MTCNN is pretrained)."""

METHOD_LABELS = {"msrrn": "MSRRN (ours)", "ccnn": "CCNN (ours)", "dlib_ert": "dlib ERT",
                 "mean_shape": "mean shape", "mtcnn": "MTCNN (detect)",
                 "mtcnn_box": "MTCNN (ONet on our box)", "lbf": "OpenCV LBF"}

FAMILY_SETTINGS = {
    "msrrn": {"kinds": ("inter_pupil", "inter_ocular"), "thresholds": (0.08, 0.10),
              "ced_max": 0.15, "default_preset": "quick"},
    "ccnn": {"kinds": ("box_width", "inter_ocular"), "thresholds": (0.05, 0.10),
             "ced_max": 0.15, "default_preset": "quick"},
}
"""Per family: the normalisers (the first is the headline metric and the CED's), the
AUC / failure thresholds, the CED's x range and the default training preset."""

KIND_LABELS = {"inter_pupil": "inter-pupil", "inter_ocular": "inter-ocular",
               "box_width": "face-box width", "box_diagonal": "face-box diagonal"}
"""Short names of the normalisers (``common.metrics.NORMALIZER_KINDS``) for columns."""

NORMALISERS = {"inter_pupil": "inter-pupil distance", "inter_ocular": "inter-ocular distance",
               "box_width": "face-box width", "box_diagonal": "face-box diagonal"}
"""The normalisers in words, for sentences and axis labels."""

PEER_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# Trained peers (cached)
# --------------------------------------------------------------------------------------


def _shard_signature(data: str, split: str) -> list[list[Any]]:
    """``[[file name, bytes, mtime], ...]`` of the split's shards: the cache key of the
    training data (a re-prepared folder invalidates trained peers)."""
    from common.tfrecord import find_shards

    return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))]
            for f in sorted(find_shards(data, split))]


def peer_cache_key(name: str, data: str, split: str,
                   options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a trained peer depends on: its name, the training shards and options.
    The folder is resolved through symbolic links, so a linked or relative path to
    the same converted data reuses the fit."""
    return {"version": PEER_CACHE_VERSION, "peer": name, "data": os.path.realpath(data),
            "split": split, "shards": _shard_signature(data, split),
            "options": dict(options or {})}


_PEER_SUFFIXES = {"dlib_ert": ".dat", "mean_shape": ".npy", "lbf": ".yml"}


def _peer_paths(cache_dir: str, name: str) -> tuple[str, str]:
    return (os.path.join(cache_dir, f"{name}{_PEER_SUFFIXES[name]}"),
            os.path.join(cache_dir, f"{name}.json"))


def cached_peer_info(cache_dir: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of a trained peer in ``cache_dir`` if it matches ``key``, else None."""
    model_path, info_path = _peer_paths(cache_dir, key["peer"])
    needed = [model_path, info_path] + ([model_path + ".layout.json"]
                                        if key["peer"] == "lbf" else [])
    if not all(os.path.isfile(path) for path in needed):
        return None
    with open(info_path) as f:
        info = json.load(f)
    return info if info.get("key") == json.loads(json.dumps(key)) else None


def resolved_lbf_options(lbf_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The FacemarkLBF parameters of a comparison: ``lbf_options`` over OpenCV's
    defaults (``common.peers.LBF_DEFAULT_OPTIONS``); ``None``:
    ``common.peers.LBF_QUICK_OPTIONS``."""
    from common import peers

    return peers.lbf_options(peers.LBF_QUICK_OPTIONS if lbf_options is None
                             else lbf_options)


def fit_trained_peers(data: str, split: str, names: Sequence[str], cache_dir: str, *,
                      dlib_options: Mapping[str, Any] | None = None,
                      dlib_threads: int = 2, reuse: bool = True,
                      lbf_options: Mapping[str, Any] | None = None,
                      lbf_tool: str | None = None) -> dict[str, Any]:
    """Fits the trainable peers on the training faces of ``split`` (their stored boxes).

    Each peer is written to ``cache_dir`` (``dlib_ert.dat``, ``mean_shape.npy``,
    ``lbf.yml`` + ``lbf.yml.layout.json``) with a JSON record of what it was trained
    on; a matching record is reused when ``reuse``. Runs in a child process when the
    comparison trains dlib beside our model.

    Args:
        data: TFRecord folder.
        split: the training split.
        names: peers to fit, a subset of ``TRAINED_PEERS``.
        cache_dir: folder of the fitted peers.
        dlib_options: overrides of dlib's defaults (``common.peers.DLIB_DEFAULT_OPTIONS``).
        dlib_threads: dlib training threads.
        reuse: reuse peers already fitted on the same shards with the same options.
        lbf_options: overrides of OpenCV's FacemarkLBF defaults
            (:func:`resolved_lbf_options`; ``None``: ``LBF_QUICK_OPTIONS``).
        lbf_tool: the ``lbf_tool`` program (default ``$FACE_ALIGN_LBF_TOOL``).

    Returns:
        ``{name: record}``; a record holds ``key``, ``path``, ``train_seconds``,
        ``num_faces``, ``fitted_at`` (epoch seconds), ``reused``, for dlib the
        ``resolved_options`` and for LBF the tool's ``train_info`` (OpenCV version,
        faces accepted by OpenCV's box test).

    Raises:
        common.peers.LBFUnavailable: LBF asked for without a working ``lbf_tool``.
    """
    from common import atomic, peers

    os.makedirs(cache_dir, exist_ok=True)
    records: dict[str, Any] = {}
    todo = []
    for name in names:
        if name not in TRAINED_PEERS:
            raise ValueError(f"{name!r} is not a trained peer ({TRAINED_PEERS})")
        options: dict[str, Any] = {}
        if name == "dlib_ert":
            options = dict(dlib_options or {})
        elif name == "lbf":
            options = resolved_lbf_options(lbf_options)
        key = peer_cache_key(name, data, split, options)
        info = cached_peer_info(cache_dir, key) if reuse else None
        if info is not None:
            records[name] = {**info, "path": _peer_paths(cache_dir, name)[0],
                             "reused": True}
        else:
            todo.append((name, key))
    if not todo:
        return records
    faces = list(peers.iterate_faces(data, split))
    for name, key in todo:
        model_path, info_path = _peer_paths(cache_dir, name)
        start = time.perf_counter()
        if name == "dlib_ert":
            peer = peers.DlibERT.train(faces, key["options"], num_threads=dlib_threads)
            extra = {"resolved_options": peer.resolved_options,
                     "train_seconds": peer.train_seconds}
        elif name == "lbf":
            peer = peers.LBFPeer.train(faces, key["options"], tool=lbf_tool)
            extra = {"train_info": peer.train_info, "train_seconds": peer.train_seconds,
                     "tool": peer.tool}
        else:
            peer = peers.MeanShape().fit(faces)
            extra = {"train_seconds": time.perf_counter() - start}
        peer.save(model_path)
        info = {"key": key, "path": model_path, "num_faces": len(faces),
                "fitted_at": time.time(), **extra}
        atomic.write_text(info_path, json.dumps(info, indent=2))
        records[name] = {**info, "reused": False}
    return records


def load_trained_peer(name: str, record: Mapping[str, Any], *, lbf_tool: str | None = None):
    """The fitted peer of a :func:`fit_trained_peers` record (``lbf_tool``: the program
    that runs a fitted LBF, default ``$FACE_ALIGN_LBF_TOOL``)."""
    from common import peers

    if name == "dlib_ert":
        return peers.DlibERT.load(record["path"])
    if name == "lbf":
        return peers.LBFPeer.load(record["path"], tool=lbf_tool)
    return peers.MeanShape.load(record["path"])


# --------------------------------------------------------------------------------------
# Our model
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class OurModel:
    """Our trained model and how to feed it.

    Attributes:
        model: the Keras model.
        sizes: its input sides.
        margin: its crop margin.
        num_landmarks: L.
        info: JSON-ready description (source, preset, steps, training seconds).
    """

    model: Any
    sizes: tuple[int, ...]
    margin: float
    num_landmarks: int
    info: dict[str, Any]


def train_or_load_ours(family: str, data: str, *, train_split: str, eval_split: str,
                       run_dir: str, model_path: str | None = None,
                       steps: int | None = None, preset: str | None = None,
                       batch_size: int | None = None,
                       config_overrides: Mapping[str, Any] | None = None,
                       seed: int | None = 0, verbose: bool = True) -> OurModel:
    """Trains our model of ``family`` with the package's training function, or loads it.

    Args:
        family: ``"msrrn"`` or ``"ccnn"``.
        data: TFRecord folder.
        train_split: the training split.
        eval_split: the evaluation split (CCNN logs its error on it at the end of every
            stage; nothing is selected on it).
        run_dir: the run directory (rerunning resumes, a finished run is reused).
        model_path: a trained model (``.keras`` or run directory): no training.
        steps: training steps (MSRRN: total; CCNN: per stage); default the preset's.
        preset: training preset (``msrrn_tf.training.PRESETS`` /
            ``ccnn_tf.training.PRESETS``); default ``"quick"``.
        batch_size: override of the preset's batch size.
        config_overrides: fields of the preset's config to change
            (``MSRRNConfig`` / ``CCNNConfig``), applied before ``steps``/``batch_size``.
        seed: seed of the data order and augmentation.
        verbose: progress output.

    Returns:
        The :class:`OurModel`.
    """
    preset = preset or FAMILY_SETTINGS[family]["default_preset"]
    start = time.perf_counter()
    if family == "msrrn":
        from msrrn_tf import training as msrrn_training

        if model_path:
            from msrrn_tf.evaluate import load_with_margin

            model, margin = load_with_margin(model_path)
            info = {"source": os.path.abspath(model_path)}
        else:
            config = msrrn_training.preset_config(preset).replace(**(config_overrides or {}))
            if batch_size:
                config = config.replace(batch_size=int(batch_size))
            result = msrrn_training.train_msrrn(
                config, data=data, run_dir=run_dir, steps=steps, train_split=train_split,
                val_split=None, evaluate=False, export=True, seed=seed, verbose=verbose,
                checkpoint_every=500)
            model, margin = result.model, config.margin
            info = {"source": "trained", "run_dir": os.path.abspath(run_dir),
                    "preset": preset, "steps": result.steps_done,
                    "resumed_from_step": result.initial_step, "config": config.to_dict(),
                    "training_speed": result.speed()}
        sizes = tuple(int(s) for s in model.input_sizes)
        num_landmarks = int(model.num_landmarks)
        info["num_stages"] = int(model.num_stages)
    elif family == "ccnn":
        from ccnn_tf import evaluate as ccnn_evaluate
        from ccnn_tf import training as ccnn_training

        if model_path:
            model = ccnn_evaluate.load_cascade(model_path)
            info = {"source": os.path.abspath(model_path)}
        else:
            config = ccnn_training.build_config(preset, steps=steps, batch_size=batch_size,
                                                seed=seed)
            config = config.replace(**(config_overrides or {}))
            summary = ccnn_training.train_ccnn(
                config, "all", data=data, run_dir=run_dir, train_split=train_split,
                val_split=eval_split, evaluate=False, export=True, verbose=verbose)
            model = ccnn_evaluate.load_cascade(run_dir)
            info = {"source": "trained", "run_dir": os.path.abspath(run_dir),
                    "preset": preset, "steps_per_stage": config.steps_per_stage,
                    "config": config.to_dict(),
                    "training_speed": "; ".join(
                        f"stage {k}: {r.speed(config.batch_size)}"
                        for k, r in sorted(summary.stage_results.items()))}
        sizes, margin, num_landmarks = ccnn_evaluate.model_geometry(model)
        info["num_stages"] = int(model.num_stages)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    info["seconds"] = time.perf_counter() - start
    return OurModel(model=model, sizes=tuple(sizes), margin=float(margin),
                    num_landmarks=int(num_landmarks), info=info)


def time_ours_per_face(ours: OurModel, faces: Sequence[Any], count: int = 50) -> float:
    """Median seconds to align one face (batch 1) with our model, crop included.

    Runs the serving function of the exported model (``LandmarkServingModule``: crop
    from the uint8 image and box, model, back to pixels), so the number is what a user
    calling the SavedModel one face at a time sees, and compares with the peers'
    ``predict`` calls.
    """
    from common.export import LandmarkServingModule

    module = LandmarkServingModule(ours.model, ours.sizes, ours.margin, ours.num_landmarks)
    times = []
    for index, face in enumerate(faces[:max(1, count) + 2]):
        image, box = np.asarray(face[0])[None], np.asarray(face[2], np.float32)[None]
        start = time.perf_counter()
        module.serving_default(image, box)["landmarks"].numpy()
        if index >= 2:  # the first calls trace
            times.append(time.perf_counter() - start)
    return float(np.median(times)) if times else float("nan")


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------


def expand_peers(names: Sequence[str]) -> list[str]:
    """``--peers`` names to methods: ``mtcnn`` becomes ``mtcnn`` and ``mtcnn_box``."""
    methods: list[str] = []
    for name in names:
        if name not in PEER_NAMES:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_NAMES)}")
        for method in (("mtcnn", "mtcnn_box") if name == "mtcnn" else (name,)):
            if method not in methods:
                methods.append(method)
    return methods


def _mtcnn_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mtcnn") is not None


def _check_same_faces(pred, faces: Sequence[Any]) -> None:
    """Our evaluation pipeline and the peers' face reader must see the same faces."""
    if len(faces) != pred.num_faces:
        raise AssertionError(f"{pred.num_faces} faces predicted but {len(faces)} read")
    true = np.stack([np.asarray(f[1], np.float32) for f in faces])
    boxes = np.stack([np.asarray(f[2], np.float32) for f in faces])
    if not (np.allclose(true, pred.true_px, atol=1e-4)
            and np.allclose(boxes, pred.boxes, atol=1e-4)
            and [str(f[3]) for f in faces] == list(pred.source_paths)):
        raise AssertionError("the peers' faces differ from our evaluation faces (order, "
                             "landmarks or boxes)")


def _stage_keys(outputs: Sequence[str]) -> list[str]:
    return sorted((o for o in outputs if o.startswith("stage_") and o[6:].isdigit()),
                  key=lambda o: int(o[6:]))


def _summary_row(results: Mapping[str, Any], method: str, kinds: Sequence[str],
                 thresholds: Sequence[float], ms: float | None = None) -> dict[str, Any]:
    entry = results["outputs"][method]
    row: dict[str, Any] = {}
    for kind in kinds:
        row[f"{kind}"] = entry[kind]["mean"]
    first = entry[kinds[0]]
    for t in thresholds:
        row[f"auc@{t:g}"] = first[f"auc@{t:g}"]
    for t in thresholds:
        row[f"failure@{t:g}"] = first[f"failure@{t:g}"]
    row["count"] = first["count"]
    if ms is not None:
        row["ms"] = f"{ms:.2f}" if np.isfinite(ms) else "-"
    return row


def _summary_columns(kinds: Sequence[str], thresholds: Sequence[float],
                     with_ms: bool = True) -> dict[str, str]:
    columns = {kind: f"NME {KIND_LABELS.get(kind, kind)}" for kind in kinds}
    first = KIND_LABELS.get(kinds[0], kinds[0])
    for t in thresholds:
        columns[f"auc@{t:g}"] = f"AUC@{t:g} ({first})"
    for t in thresholds:
        columns[f"failure@{t:g}"] = f"failure@{t:g} ({first})"
    columns["count"] = "faces"
    if with_ms:
        columns["ms"] = "ms / face (batch 1)"
    return columns


def compare(family: str, data: str, *, output: str, train_split: str = "train",
            eval_split: str = "val", model_path: str | None = None,
            steps: int | None = None, preset: str | None = None,
            batch_size: int | None = None,
            config_overrides: Mapping[str, Any] | None = None,
            peers: Sequence[str] = DEFAULT_PEERS,
            run_dir: str | None = None, dlib_options: Mapping[str, Any] | None = None,
            dlib_threads: int = 2, parallel_peers: bool = True, reuse_peers: bool = True,
            limit: int | None = None, timing_faces: int = 50, seed: int | None = 0,
            verbose: bool = True, lbf_options: Mapping[str, Any] | None = None,
            lbf_tool: str | None = None) -> dict[str, Any]:
    """Trains (or loads) our model and the peers, evaluates all, writes the reports.

    Args:
        family: ``"msrrn"`` (68 points) or ``"ccnn"`` (5 points).
        data: TFRecord folder of ``common.prepare`` / ``common.synthetic``.
        output: report folder (also holds ``run/`` and ``peers/`` by default).
        train_split: split our model and the trained peers learn from.
        eval_split: split every method is scored on.
        model_path: our trained model (skips our training).
        steps: our training steps (MSRRN total, CCNN per stage).
        preset: our training preset (default ``"quick"``).
        batch_size: override of the preset's batch size.
        config_overrides: fields of our preset's config to change.
        peers: names of ``PEER_NAMES`` (``lbf`` without a working ``lbf_tool`` is
            skipped with a note, as MTCNN without its package).
        run_dir: our run directory (default ``output/run``).
        dlib_options: overrides of dlib's default training options.
        dlib_threads: dlib training threads.
        parallel_peers: fit the trained peers in a child process while our model
            trains.
        reuse_peers: reuse peers fitted before on the same shards and options.
        limit: score only the first ``limit`` faces of the eval split (all methods).
        timing_faces: faces timed one by one per method.
        seed: seed of our training's data order and augmentation.
        verbose: progress output.
        lbf_options: overrides of OpenCV's FacemarkLBF defaults
            (:func:`resolved_lbf_options`; ``None``: ``LBF_QUICK_OPTIONS``).
        lbf_tool: the ``lbf_tool`` program (default ``$FACE_ALIGN_LBF_TOOL``).

    Returns:
        ``{"results": the JSON written, "markdown": the Markdown written, "paths":
        files}``.
    """
    from common import atomic, evaluation, plots
    from common import peers as common_peers
    from common.metrics import results_markdown
    from common.schemes import scheme_for

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    settings = FAMILY_SETTINGS[family]
    kinds, thresholds = settings["kinds"], settings["thresholds"]
    methods = expand_peers(peers)
    notes: list[str] = []
    if any(m.startswith("mtcnn") for m in methods) and not _mtcnn_available():
        methods = [m for m in methods if not m.startswith("mtcnn")]
        notes.append("MTCNN skipped: the `mtcnn` package is not installed "
                     "(pip install mtcnn).")
    if "lbf" in methods:
        try:
            lbf_tool = common_peers.check_lbf_tool(lbf_tool)["tool"]
        except common_peers.LBFUnavailable as e:
            methods.remove("lbf")
            notes.append(f"LBF skipped: {e}.")
    os.makedirs(output, exist_ok=True)
    run_dir = run_dir or os.path.join(output, "run")
    cache_dir = os.path.join(output, "peers")
    trained = [m for m in TRAINED_PEERS if m in methods]
    wall_start, start_epoch = time.perf_counter(), time.time()

    def log(message: str) -> None:
        if verbose:
            print(f"[compare_real {time.perf_counter() - wall_start:7.1f}s] {message}",
                  flush=True)

    # 1-2. Trained peers (in a child process, while ours trains) and our model.
    peer_kwargs = {"dlib_options": dlib_options, "dlib_threads": dlib_threads,
                   "lbf_options": lbf_options, "lbf_tool": lbf_tool}
    child = None
    if trained and parallel_peers and not model_path:
        child = multiprocessing.get_context("spawn").Process(
            target=fit_trained_peers, args=(data, train_split, trained, cache_dir),
            kwargs={**peer_kwargs, "reuse": reuse_peers}, name="compare_real-peers")
        child.start()
        log(f"fitting {', '.join(trained)} on {train_split!r} in child process "
            f"{child.pid}")
    try:
        log(f"our model: {'loading ' + model_path if model_path else 'training'}")
        ours = train_or_load_ours(family, data, train_split=train_split,
                                  eval_split=eval_split, run_dir=run_dir,
                                  model_path=model_path, steps=steps, preset=preset,
                                  batch_size=batch_size,
                                  config_overrides=config_overrides, seed=seed,
                                  verbose=verbose)
        log(f"our model ready ({ours.info['seconds']:.0f} s)")
        if child is not None:
            log("waiting for the peers' child process")
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"fitting the peers failed in the child process "
                                   f"(exit code {child.exitcode})")
        # Reads what the child fitted (or fits here, sequentially).
        records = fit_trained_peers(data, train_split, trained, cache_dir, **peer_kwargs,
                                    reuse=reuse_peers or child is not None) if trained else {}
    finally:
        if child is not None and child.is_alive():
            child.terminate()
            child.join()
    for record in records.values():  # fitted by this run, or by an earlier one
        record["reused"] = record.get("fitted_at", 0.0) < start_epoch
    log("peers fitted: " + ", ".join(f"{k} ({v['train_seconds']:.0f} s"
                                     + (", reused)" if v["reused"] else ")")
                                     for k, v in records.items()))

    # 3. Our predictions on the eval split (every stage).
    scheme = scheme_for(ours.num_landmarks)
    if family == "msrrn":
        from msrrn_tf.training import predict_msrrn

        pred = predict_msrrn(ours.model, data, eval_split, margin=ours.margin, limit=limit)
    else:
        pred = evaluation.predict_split(ours.model, data, eval_split, sizes=ours.sizes,
                                        margin=ours.margin,
                                        num_landmarks=ours.num_landmarks, limit=limit)
    faces = list(common_peers.iterate_faces(data, eval_split, limit))
    _check_same_faces(pred, faces)
    log(f"our model evaluated on {pred.num_faces} {eval_split!r} faces")

    # 4. Peers on the same faces and boxes.
    outputs = {family: pred.outputs_px["landmarks"]}
    for key in ["mean_shape", *_stage_keys(pred.outputs_px)]:
        if key in pred.outputs_px:
            outputs[f"{family}:{key}"] = pred.outputs_px[key]
    seconds = {family: time_ours_per_face(ours, faces, timing_faces)}
    five_point_outputs: dict[str, np.ndarray] = {}
    five_point_faces = None
    if ours.num_landmarks != 5 and any(m.startswith("mtcnn") for m in methods):
        from common.synthetic import to_five_points

        five_point_faces = [(f[0], to_five_points(f[1]), f[2], f[3]) for f in faces]
    method_info: dict[str, Any] = {}
    for method in methods:
        if method in TRAINED_PEERS:
            peer = load_trained_peer(method, records[method], lbf_tool=lbf_tool)
            info = {k: v for k, v in records[method].items() if k != "key"}
            info["options"] = records[method]["key"]["options"]
        else:
            peer = common_peers.make_peer(method)
            info = {"pretrained": True}
        start = time.perf_counter()
        five_only = method.startswith("mtcnn") and five_point_faces is not None
        result = common_peers.evaluate_peer(peer, five_point_faces if five_only else faces,
                                            kinds[0])
        info["eval_seconds"] = time.perf_counter() - start
        seconds[method] = result.seconds_per_face
        if method.startswith("mtcnn"):
            info.update(calls=peer.calls, misses=peer.misses)
        if five_only:
            five_point_outputs[method] = result.predictions
        else:
            outputs[method] = result.predictions
        method_info[method] = info
        log(f"{method}: {1e3 * result.seconds_per_face:.2f} ms per face")

    combined = dataclasses.replace(pred, outputs_px=outputs)
    scored = evaluation.evaluate_outputs(combined, scheme, kinds=kinds,
                                         thresholds=thresholds)
    final_methods = [family, *[m for m in methods if m in outputs]]

    results: dict[str, Any] = {
        "family": family, "data": os.path.abspath(data), "train_split": train_split,
        "eval_split": eval_split, "num_faces": pred.num_faces,
        "kinds": list(kinds), "thresholds": list(thresholds),
        "ours": {**ours.info, "batched_seconds_per_face": pred.seconds_per_face,
                 "sizes": list(ours.sizes), "margin": ours.margin},
        "peers": method_info,
        "seconds_per_face": {m: seconds.get(m) for m in [family, *methods]},
        "methods": {m: scored["outputs"][m] for m in final_methods},
        "stages": {key.split(":", 1)[1]: scored["outputs"][key]
                   for key in outputs if key.startswith(f"{family}:")},
    }

    # Tables.
    tables = []
    table = {METHOD_LABELS[m]: _summary_row(scored, m, kinds, thresholds, 1e3 * seconds[m])
             for m in final_methods}
    tables.append(results_markdown(
        table, _summary_columns(kinds, thresholds),
        f"{pred.num_faces} {eval_split!r} faces of {os.path.basename(os.path.abspath(data))}"
        f", errors in % of the {NORMALISERS[kinds[0]]} (and {NORMALISERS[kinds[1]]})"))
    stage_keys = [k for k in outputs if k.startswith(f"{family}:")]
    stage_table = {}
    for key in stage_keys:
        name = key.split(":", 1)[1]
        label = {"mean_shape": "mean shape (in our crop)",
                 "stage_0": "initial CNN (S^0)"}.get(name, name.replace("_", " "))
        stage_table[label] = _summary_row(scored, key, kinds, thresholds)
    tables.append(results_markdown(stage_table, _summary_columns(kinds, thresholds, False),
                                   f"Stages of our {family.upper()} model"))
    stage_errors = [scored["outputs"][f"{family}:{k}"][kinds[0]]["mean"]
                    for k in _stage_keys(pred.outputs_px) if k != "stage_0"]
    results["stage_errors_decrease"] = bool(
        len(stage_errors) > 1 and all(a > b for a, b in itertools.pairwise(stage_errors)))

    paths: dict[str, str] = {}
    name = f"compare_{family}"
    if ours.num_landmarks == 5:
        labels = _point_labels(scheme)
        for kind in kinds:
            rows = {METHOD_LABELS[m]: scored["outputs"][m][kind]["per_point"]
                    for m in final_methods}
            rows.update({f"{family.upper()} {k.split(':', 1)[1].replace('_', ' ')}":
                         scored["outputs"][k][kind]["per_point"]
                         for k in stage_keys if k.split(":", 1)[1].startswith("stage_")})
            tables.append(_per_point_table(rows, labels, kind))
        # The mean shape (several times the others' error) is left to the table so
        # that the plot's scale shows the differences between the real methods.
        series = {METHOD_LABELS[m]: scored["outputs"][m][kinds[0]]["per_point"]
                  for m in final_methods if m != "mean_shape"}
        paths["per_point"] = atomic.write_figure(
            plots.plot_per_point_errors, os.path.join(output, f"{name}_per_point.png"),
            series, labels, title=f"Per-point error on {eval_split} (cf. CCNN Fig. 7)",
            ylabel=f"mean error (% of the {NORMALISERS[kinds[0]]})")
        notes.append(f"![per-point errors]({os.path.basename(paths['per_point'])})")
    elif five_point_outputs:
        five = _five_point_comparison(pred, outputs, five_point_outputs, final_methods,
                                      thresholds, seconds)
        results["five_point"] = five["results"]
        tables.append(five["markdown"])
        paths["five_point_ced"] = atomic.write_figure(
            plots.plot_ced, os.path.join(output, f"{name}_five_point_ced.png"),
            five["ced"], max_threshold=settings["ced_max"],
            title="5-point reduction (eye centres, nose tip, mouth corners)",
            xlabel="NME (normalised by the eye-centre distance)")
        notes.append(f"![5-point CED]({os.path.basename(paths['five_point_ced'])})")

    # Checks and notes.
    headline = kinds[0]
    ours_error = scored["outputs"][family][headline]["mean"]
    checks = {}
    for method in ("dlib_ert", "lbf", "mean_shape"):
        if method in outputs:
            other = scored["outputs"][method][headline]["mean"]
            checks[f"beats_{method}"] = bool(ours_error < other)
            notes.insert(0, f"- {METHOD_LABELS[family]} {100 * ours_error:.2f} % vs "
                         f"{METHOD_LABELS[method]} {100 * other:.2f} % "
                         f"({KIND_LABELS[headline]} NME): "
                         f"{'lower' if ours_error < other else 'NOT lower'}.")
    if stage_errors:
        checks["stage_errors_decrease"] = results["stage_errors_decrease"]
        notes.insert(0, "- stage errors (" + KIND_LABELS[headline] + "): "
                     + " > ".join(f"{100 * e:.2f}" for e in stage_errors) + " %: "
                     + ("decreasing" if results["stage_errors_decrease"]
                        else "NOT decreasing") + ".")
    results["checks"] = checks
    notes.append(_setup_notes(family, ours, records, method_info, pred, train_split,
                              eval_split))
    results["wall_seconds"] = time.perf_counter() - wall_start
    ced = {METHOD_LABELS[m]: evaluation.face_errors(combined, m, headline, scheme)
           for m in final_methods}
    paths.update(evaluation.write_report(
        results, output, name, ced,
        f"{family.upper()} vs peers on {os.path.basename(os.path.abspath(data))} "
        f"({eval_split})", tables,
        ced_xlabel=f"NME (normalised by the {NORMALISERS[headline]})",
        ced_max_threshold=settings["ced_max"], notes="\n\n".join(notes)))
    with open(paths["markdown"]) as f:
        markdown = f.read()
    log(f"reports written to {output}")
    return {"results": results, "markdown": markdown, "paths": paths}


def _point_labels(scheme) -> list[str]:
    from ccnn_tf.model import point_abbreviation

    return [point_abbreviation(n) for n in scheme.point_names]


def _per_point_table(rows: Mapping[str, Sequence[float]], labels: Sequence[str],
                     kind: str) -> str:
    lines = [f"### Per-point error (% of the {NORMALISERS.get(kind, kind)})", "",
             "| method | " + " | ".join(labels) + " | mean |",
             "|---|" + "---:|" * (len(labels) + 1)]
    for label, values in rows.items():
        values = list(values)
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in values)
                     + f" | {100 * float(np.mean(values)):.2f} |")
    return "\n".join(lines) + "\n"


def _five_point_comparison(pred, outputs: Mapping[str, np.ndarray],
                           five_point: Mapping[str, np.ndarray], methods: Sequence[str],
                           thresholds: Sequence[float], seconds: Mapping[str, float]
                           ) -> dict[str, Any]:
    """68-point methods reduced to 5 points beside the 5-point peers (MTCNN)."""
    from common import evaluation
    from common.metrics import results_markdown
    from common.schemes import CUHK_5
    from common.synthetic import to_five_points

    reduced = {m: to_five_points(outputs[m]) for m in methods if m in outputs}
    reduced.update(five_point)
    order = [m for m in [*methods, *five_point] if m in reduced]
    five = evaluation.Predictions(
        outputs_px={m: reduced[m] for m in order}, true_px=to_five_points(pred.true_px),
        boxes=pred.boxes, source_paths=pred.source_paths,
        seconds_per_face=pred.seconds_per_face)
    kinds = ("inter_ocular", "box_width")
    scored = evaluation.evaluate_outputs(five, CUHK_5, kinds=kinds, thresholds=thresholds)
    table = {METHOD_LABELS[m]: _summary_row(scored, m, kinds, thresholds,
                                            1e3 * seconds[m]) for m in order}
    markdown = results_markdown(
        table, _summary_columns(kinds, thresholds),
        "5-point reduction (eye centres = mean of the 6 eye points, nose tip 30, mouth "
        "corners 48/54), errors in % of the eye-centre distance (and face-box width)")
    ced = {METHOD_LABELS[m]: evaluation.face_errors(five, m, "inter_ocular", CUHK_5)
           for m in order}
    return {"results": {m: scored["outputs"][m] for m in order}, "markdown": markdown,
            "ced": ced}


def _setup_notes(family: str, ours: OurModel, records: Mapping[str, Any],
                 method_info: Mapping[str, Any], pred, train_split: str,
                 eval_split: str) -> str:
    from common import peers as common_peers

    lines = ["### Setup", ""]
    info = ours.info
    if info.get("source") == "trained":
        steps = (f"{info['steps']} steps" if "steps" in info
                 else f"{info['steps_per_stage']} steps per stage")
        lines.append(f"- ours: trained on {train_split!r} with preset {info['preset']!r}, "
                     f"{steps} ({info['seconds']:.0f} s in this run; run dir "
                     f"`{info['run_dir']}`), inputs {list(ours.sizes)} px, margin "
                     f"{ours.margin:g}.")
        if info.get("training_speed"):
            lines.append(f"- ours, training speed: {info['training_speed']}.")
    else:
        lines.append(f"- ours: loaded from `{info['source']}` (not trained here).")
    lines.append(f"- ours, batched forward pass: {1e3 * pred.seconds_per_face:.2f} ms per "
                 "face (crop excluded); the table's time is one face at a time through "
                 "the export's serving function, crop included.")
    for name, record in records.items():
        options = record["key"]["options"]
        if name == "dlib_ert":
            what = "dlib's default options" + (f" with {options}" if options else "")
        elif name == "lbf":
            info = record["train_info"]
            changed = {k: v for k, v in options.items()
                       if v != common_peers.LBF_DEFAULT_OPTIONS[k]}
            what = (f"`cv::face::FacemarkLBF` of OpenCV {info['opencv']} (`lbf_tool`), "
                    "OpenCV's default parameters"
                    + (f" with {changed}" if changed else "")
                    + f", {info['n_landmarks']} model points; OpenCV's box test kept "
                    f"{info['accepted']} of {info['faces']} faces"
                    + (f"; its training took {info['train_cpu_seconds']:.0f} s of CPU"
                       if "train_cpu_seconds" in info else ""))
        else:
            what = "mean of the normalised box coordinates"
        lines.append(f"- {METHOD_LABELS[name]}: {what}, fitted on {record['num_faces']} "
                     f"{train_split!r} faces and their stored boxes in "
                     f"{record['train_seconds']:.0f} s"
                     + (" (reused from an earlier run on the same shards)"
                        if record["reused"] else "") + ".")
    if "lbf" in records:
        lines.append("- OpenCV LBF's time per face is that of `FacemarkLBF::fit` inside "
                     "the tool (grey image given, model loaded once).")
    for name in ("mtcnn", "mtcnn_box"):
        if name in method_info:
            info = method_info[name]
            lines.append(f"- {METHOD_LABELS[name]}: pretrained (`mtcnn` package)"
                         + (f", detection missed or not matched to our box on "
                            f"{info['misses']} of {info['calls']} faces (ONet on our box "
                            "used for those)" if name == "mtcnn" else "") + ".")
    lines.append(f"- every method sees the same {pred.num_faces} {eval_split!r} faces and "
                 "the same face boxes (stored in the TFRecords).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    from absl import flags

    flags.DEFINE_enum("family", None, list(FAMILIES),
                      "msrrn: 68 points, ours = MSRRN; ccnn: 5 points, ours = CCNN.",
                      required=True)
    flags.DEFINE_string("data", None, "TFRecord folder written by `python -m "
                        "common.prepare` (e.g. /tmp/data/ytf68, /tmp/data/sun5).",
                        required=True)
    flags.DEFINE_string("train_split", "train",
                        "Split our model and the trained peers (dlib ERT, mean shape) "
                        "learn from.")
    flags.DEFINE_string("eval_split", "val", "Split every method is scored on.")
    flags.DEFINE_string("model", None, "Our trained model (.keras file or run directory): "
                        "skip our training.")
    flags.DEFINE_integer("steps", None, "Our training steps (MSRRN: total; CCNN: per "
                         "stage). Default: the preset's.", lower_bound=0)
    flags.DEFINE_string("preset", None, "Our training preset (msrrn: quick|paper; ccnn: "
                        "quick|paper|tiny). Default: quick.")
    flags.DEFINE_integer("batch_size", None, "Override of the preset's batch size.",
                         lower_bound=1)
    flags.DEFINE_string("config_json", None,
                        "JSON object of our config's fields to change after --preset "
                        "(MSRRNConfig or CCNNConfig), e.g. '{\"learning_rate\": 0.02}'.")
    flags.DEFINE_string("output", None, "Report folder (default results/compare_<family>); "
                        "also holds run/ (ours) and peers/ (fitted peers).")
    flags.DEFINE_string("run_dir", None, "Our run directory (default <output>/run); "
                        "rerunning resumes a partial run and reuses a finished one.")
    flags.DEFINE_list("peers", list(DEFAULT_PEERS),
                      "Peers: dlib_ert, mean_shape, mtcnn (both modes: detect and ONet on "
                      "our box), mtcnn_box (box mode only), lbf (OpenCV's Facemark LBF; "
                      "needs --lbf_tool or $FACE_ALIGN_LBF_TOOL, default peer when that "
                      "is set).")
    flags.DEFINE_string("dlib_options", None,
                        "JSON object of dlib shape-predictor option overrides, e.g. "
                        "'{\"oversampling_amount\": 5}'. Default: dlib's defaults "
                        "(common.peers.DLIB_DEFAULT_OPTIONS).")
    flags.DEFINE_integer("dlib_threads", 2, "dlib training threads.", lower_bound=1)
    flags.DEFINE_string("lbf_tool", None,
                        "The lbf_tool program built from tools/lbf_tool.cpp (README, "
                        "'Optional peers'). Default: $FACE_ALIGN_LBF_TOOL.")
    flags.DEFINE_string("lbf_options", None,
                        "JSON object of FacemarkLBF parameter overrides of OpenCV's "
                        "defaults (common.peers.LBF_DEFAULT_OPTIONS), e.g. "
                        "'{\"initShape_n\": 3}'. Default: "
                        "common.peers.LBF_QUICK_OPTIONS; '{}': OpenCV's defaults.")
    flags.DEFINE_boolean("parallel_peers", True,
                         "Fit dlib ERT and the mean shape in a child process while our "
                         "model trains.")
    flags.DEFINE_boolean("reuse_peers", True,
                         "Reuse peers fitted earlier (in <output>/peers) on the same "
                         "shards with the same options.")
    flags.DEFINE_integer("limit", None, "Score only the first this many eval faces.",
                         lower_bound=1)
    flags.DEFINE_integer("timing_faces", 50, "Faces timed one at a time for our model.",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of our training's data order and augmentation.")


def main(argv: Sequence[str]) -> None:
    """Runs :func:`compare` with the flags and prints the Markdown report."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # TensorFlow logs every checkpoint at INFO
        absl_logging.set_verbosity(absl_logging.WARNING)
    parsed = {}
    for name in ("dlib_options", "config_json", "lbf_options"):
        parsed[name] = json.loads(values[name].value) if values[name].value else None
        if parsed[name] is not None and not isinstance(parsed[name], dict):
            raise app.UsageError(f"--{name} must be a JSON object")
    report = compare(
        values.family, values.data,
        output=values.output or os.path.join("results", f"compare_{values.family}"),
        train_split=values.train_split, eval_split=values.eval_split,
        model_path=values.model, steps=values.steps, preset=values.preset,
        batch_size=values.batch_size, config_overrides=parsed["config_json"],
        peers=values.peers, run_dir=values.run_dir,
        dlib_options=parsed["dlib_options"], dlib_threads=values.dlib_threads,
        parallel_peers=values.parallel_peers, reuse_peers=values.reuse_peers,
        limit=values.limit, timing_faces=values.timing_faces, seed=values.seed,
        lbf_options=parsed["lbf_options"], lbf_tool=values.lbf_tool)
    print(report["markdown"], flush=True)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
