"""Our model and its peers on real data, in one run: same training split, same boxes.

::

    python -m experiments.compare_real --family=msrrn --data=/tmp/data/ytf68
    python -m experiments.compare_real --family=ccnn --data=/tmp/data/sun5 --steps=1500
    python -m experiments.compare_real --family=msrrn --data=DIR --model=runs/msrrn-x

For the data folder of ``common.prepare`` (or ``common.synthetic``) and one family:

1. our model is trained on ``--train_split`` with the package's own library function
   (``msrrn_tf.training.train_msrrn``, ``ccnn_tf.training.train_ccnn``) unless
   ``--model`` gives a trained one;
2. the trainable peers of ``experiments.peers`` are fitted on the *same* training faces with
   the *same* face boxes (the boxes stored in the TFRecords): dlib's ERT with dlib's
   default options (``experiments.peers.DLIB_DEFAULT_OPTIONS``: 10 cascades x 500 trees of
   depth 4, nu 0.1, 400 pool pixels, 20 initialisations per face; Kazemi and Sullivan,
   CVPR 2014) and the mean shape. By default dlib trains in a child process while our
   model trains; fitted peers are kept in ``--output/peers`` and reused by a rerun on
   the same shards with the same options;
3. the pretrained MTCNN (5 points) runs in both modes of ``experiments.peers.MTCNNPeer``:
   ``mtcnn`` (its own detector, detection matched to our box) and ``mtcnn_box`` (its
   last stage on our box);
   optionally OpenCV's Facemark LBF (``lbf``, ``experiments.peers.LBFPeer``) is trained
   like dlib on the same faces and boxes, with ``experiments.peers.LBF_QUICK_OPTIONS`` by
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

from common import box_robustness
from experiments.comparison import robustness
from experiments.comparison.ours import (
    FAMILIES,
    FAMILY_SETTINGS,
    OurModel,
    time_ours_per_face,
    train_or_load_ours,
)
from experiments.comparison.peer_cache import (
    PEER_CACHE_VERSION,
    TRAINED_PEERS,
    cached_peer_info,
    fit_trained_peers,
    fit_trained_peers_in_child,
    load_trained_peer,
    peer_cache_key,
    resolved_lbf_options,
)
from experiments.comparison.report import (
    KIND_LABELS,
    METHOD_LABELS,
    NORMALISERS,
    five_point_comparison,
    method_label,
    per_point_table,
    point_labels,
    setup_notes,
    summary_columns,
    summary_row,
)

__all__ = [
    "DEFAULT_PEERS", "FAMILIES", "FAMILY_SETTINGS", "KIND_LABELS", "METHOD_LABELS",
    "NORMALISERS", "PEER_CACHE_VERSION", "PEER_NAMES", "TRAINED_PEERS", "OurModel",
    "cached_peer_info", "compare", "expand_peers", "fit_trained_peers", "five_point_peer",
    "load_trained_peer", "main", "method_label", "peer_cache_key", "per_point_table",
    "point_count_note", "resolved_lbf_options", "skip_unavailable_peers", "summary_columns",
    "summary_row", "time_ours_per_face", "train_or_load_ours",
]

logger = logging.getLogger(__name__)

PEER_NAMES = ("dlib_ert", "mean_shape", "mtcnn", "mtcnn_box", "lbf")
"""Names accepted by ``--peers``; ``mtcnn`` means both MTCNN modes (``mtcnn`` and
``mtcnn_box``), ``mtcnn_box`` the box mode alone; ``lbf`` is OpenCV's Facemark LBF
(optional: ``$FACE_ALIGN_LBF_TOOL``)."""

DEFAULT_PEERS = ("dlib_ert", "mean_shape", "mtcnn") + (
    ("lbf",) if os.environ.get("FACE_ALIGN_LBF_TOOL") else ())
"""The peers run when none are named: LBF too when ``$FACE_ALIGN_LBF_TOOL`` is set
(``experiments.peers.LBF_TOOL_ENV``; read when this module is imported)."""


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------


def expand_peers(names: Sequence[str]) -> list[str]:
    """``--peers`` names to methods: ``mtcnn`` becomes ``mtcnn`` and ``mtcnn_box``.

    Accepted: ``PEER_NAMES`` and any other peer registered in
    ``experiments.peers.PEERS`` (a pretrained peer added as a module of that package).
    """
    from experiments.peers import PEERS

    known = [*PEER_NAMES, *(name for name in PEERS if name not in PEER_NAMES)]
    methods: list[str] = []
    for name in names:
        if name not in known:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(known)}")
        for method in (("mtcnn", "mtcnn_box") if name == "mtcnn" else (name,)):
            if method not in methods:
                methods.append(method)
    return methods


def five_point_peer(method: str) -> bool:
    """Whether the peer registered as ``method`` predicts the 5 CUHK points only (its
    class's ``scheme``; MTCNN): beside a 68-point model it is compared on the 5-point
    reduction."""
    from experiments.peers import PEERS

    factory = PEERS.get(method)
    scheme = getattr(getattr(factory, "func", factory), "scheme", None)
    return scheme is not None and scheme.num_points == 5


def skip_unavailable_peers(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """The methods whose peer can be built here, and a note for each one that cannot.

    A registered peer with a missing optional package, model file or venv (its class's
    ``unavailable()``, ``experiments.peers.peer_unavailable``: e.g. ``dlib_pretrained68``
    without ``face-recognition-models``, ``mediapipe_mesh`` without its venv) is
    skipped with a note in the report, as MTCNN without its package and LBF without
    its tool.
    """
    from experiments.peers import peer_unavailable

    kept, notes = [], []
    for method in methods:
        why = peer_unavailable(method)
        if why:
            notes.append(f"{method_label(method)} (`{method}`) skipped: {why}")
        else:
            kept.append(method)
    return kept, notes


def point_count_note(method: str, num_landmarks: int) -> str:
    """Why the peer ``method`` cannot be compared with a ``num_landmarks``-point model
    (``""``: it can).

    A peer with a fixed scheme (its class's ``scheme``) is compared when it has our point
    count, or 5 points beside a 68-point model (on the 5-point reduction); a trainable
    peer (no fixed scheme) learns ours. Otherwise (e.g. ``dlib_pretrained68`` beside
    CCNN's 5 points) the note names the peer's 5-point form where one is registered.
    """
    from experiments.peers import PEERS, peer_class

    scheme = getattr(peer_class(method), "scheme", None) if method in PEERS else None
    if scheme is None or scheme.num_points == num_landmarks or (
            scheme.num_points == 5 and num_landmarks == 68):
        return ""
    hint = (f"; its 5-point form is `{method}_cuhk5`"
            if num_landmarks == 5 and f"{method}_cuhk5" in PEERS else "")
    return (f"{method_label(method)} (`{method}`) skipped: it predicts "
            f"{scheme.num_points} points, our model {num_landmarks}{hint}.")


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


def per_dataset_section(parts: Mapping[str, Any], spec, combined, methods: Sequence[str],
                        kinds: Sequence[str], scheme, split: str
                        ) -> tuple[dict[str, Any], str]:
    """Every method's error per data set (the faces of each folder, in the union's
    order) and on the union: JSON and a Markdown table (headline normaliser).

    Args:
        parts: ``common.multidata.predict_per_dataset``'s result for our model (its
            folder parts give each folder's faces; ``UNION`` is all of them).
        spec: the data spec.
        combined: predictions of the union with every method's ``outputs_px``.
        methods: the methods (keys of ``combined.outputs_px``) to score.
        kinds: normalisers; the first is the table's.
        scheme: landmark scheme.
        split: the scored split (for the title).
    """
    from common import metrics, multidata
    from common.metrics import results_markdown

    bounds, start = {}, 0
    for name, part in parts.items():
        if name != multidata.UNION:
            bounds[name] = slice(start, start + part.num_faces)
            start += part.num_faces
    bounds[multidata.UNION] = slice(0, start)
    folders = dict(zip(spec.names, spec.folders))
    section: dict[str, Any] = {}
    table: dict[str, dict[str, float]] = {}
    for name, rows in bounds.items():
        entry: dict[str, Any] = {
            "folder": os.path.abspath(folders[name]) if name in folders else None,
            "num_faces": rows.stop - rows.start, "methods": {}}
        for method in methods:
            entry["methods"][method] = {
                kind: float(np.mean(metrics.nme(
                    combined.outputs_px[method][rows], combined.true_px[rows], kind,
                    scheme=scheme, boxes=combined.boxes[rows]))) for kind in kinds}
        section[name] = entry
        table[f"{name} ({entry['num_faces']} faces)"] = {
            method_label(m): entry["methods"][m][kinds[0]] for m in methods}
    columns = {method_label(m): method_label(m) for m in methods}
    markdown = results_markdown(table, columns,
                                f"Per data set ({split!r}): {KIND_LABELS[kinds[0]]} NME",
                                row_header="data set")
    return section, markdown


def _stage_keys(outputs: Sequence[str]) -> list[str]:
    return sorted((o for o in outputs if o.startswith("stage_") and o[6:].isdigit()),
                  key=lambda o: int(o[6:]))



def compare(family: str, data, *, output: str, train_split: str = "train",
            eval_split: str = "val", model_path: str | None = None,
            steps: int | None = None, preset: str | None = None,
            batch_size: int | None = None,
            config_overrides: Mapping[str, Any] | None = None,
            peers: Sequence[str] = DEFAULT_PEERS,
            run_dir: str | None = None, dlib_options: Mapping[str, Any] | None = None,
            dlib_threads: int = 2, parallel_peers: bool = True, reuse_peers: bool = True,
            limit: int | None = None, timing_faces: int = 50, seed: int | None = 0,
            verbose: bool = True, lbf_options: Mapping[str, Any] | None = None,
            lbf_tool: str | None = None,
            box_sources: Sequence[str] = robustness.DEFAULT_SOURCES,
            box_faces: int = robustness.DEFAULT_FACES) -> dict[str, Any]:
    """Trains (or loads) our model and the peers, evaluates all, writes the reports.

    Args:
        family: ``"msrrn"`` (68 points) or ``"ccnn"`` (5 points).
        data: TFRecord folder of ``common.prepare`` / ``common.synthetic``, or
            several (``common.multidata.DataSpec``: ``"a,b"`` or ``"a:0.7,b:0.3"``):
            our model trains on their training faces drawn by the weights, the
            trained peers on the union of the training faces (no weights), and every
            method is scored on the union of the folders' ``eval_split`` faces and
            per folder (``per_dataset``: a row per folder plus the union).
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
        box_sources: box sources of the box-robustness table
            (``common.box_robustness.ALL_SOURCES``).
        box_faces: eval faces of the box-robustness table (the first ones); 0: no table.

    Returns:
        ``{"results": the JSON written, "markdown": the Markdown written, "paths":
        files}``.
    """
    from common import atomic, evaluation, multidata, plots
    from common.metrics import results_markdown
    from common.schemes import scheme_for
    from experiments import peers as peer_lib

    spec = multidata.DataSpec.parse(data)
    multidata.check_landmark_scheme(spec)
    data_name = ", ".join(spec.names)

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
            lbf_tool = peer_lib.check_lbf_tool(lbf_tool)["tool"]
        except peer_lib.LBFUnavailable as e:
            methods.remove("lbf")
            notes.append(f"LBF skipped: {e}.")
    methods, skipped = skip_unavailable_peers(methods)
    notes += skipped
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
            target=fit_trained_peers_in_child,
            args=(os.getpid(), str(spec), train_split, trained, cache_dir),
            kwargs={**peer_kwargs, "reuse": reuse_peers}, name="compare_real-peers")
        child.start()
        log(f"fitting {', '.join(trained)} on {train_split!r} in child process "
            f"{child.pid}")
    try:
        log(f"our model: {'loading ' + model_path if model_path else 'training'}")
        ours = train_or_load_ours(family, spec, train_split=train_split,
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
        records = fit_trained_peers(str(spec), train_split, trained, cache_dir, **peer_kwargs,
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
    def predict(folder: str, split: str):
        return evaluation.predict_model(ours.model, folder, split, margin=ours.margin,
                                        limit=limit)
    parts = multidata.predict_per_dataset(predict, spec, eval_split)
    pred = multidata.union_of(parts)
    faces = list(peer_lib.iterate_faces(str(spec), eval_split, limit))
    _check_same_faces(pred, faces)
    log(f"our model evaluated on {pred.num_faces} {eval_split!r} faces")

    # 4. Peers on the same faces and boxes (those with our point count, or 5 points).
    for method in list(methods):
        note = point_count_note(method, ours.num_landmarks)
        if note:
            methods.remove(method)
            notes.append(note)
    outputs = {family: pred.outputs_px["landmarks"]}
    for key in ["mean_shape", *_stage_keys(pred.outputs_px)]:
        if key in pred.outputs_px:
            outputs[f"{family}:{key}"] = pred.outputs_px[key]
    seconds = {family: time_ours_per_face(ours, faces, timing_faces)}
    five_point_outputs: dict[str, np.ndarray] = {}
    five_point_faces = None
    if ours.num_landmarks != 5 and any(five_point_peer(m) for m in methods):
        from common.synthetic import to_five_points

        five_point_faces = [(f[0], to_five_points(f[1]), f[2], f[3]) for f in faces]
    method_info: dict[str, Any] = {}
    box_methods = {method_label(family): box_robustness.model_box_predictor(
        ours.model, ours.sizes, ours.margin)}
    for method in methods:
        if method in TRAINED_PEERS:
            peer = load_trained_peer(method, records[method], lbf_tool=lbf_tool)
            info = {k: v for k, v in records[method].items() if k != "key"}
            info["options"] = records[method]["key"]["options"]
        else:
            peer = peer_lib.make_peer(method)
            info = {"pretrained": True}
        start = time.perf_counter()
        five_only = five_point_peer(method) and five_point_faces is not None
        result = peer_lib.evaluate_peer(peer, five_point_faces if five_only else faces,
                                            kinds[0])
        info["eval_seconds"] = time.perf_counter() - start
        seconds[method] = result.seconds_per_face
        if method.startswith("mtcnn"):
            info.update(calls=peer.calls, misses=peer.misses)
        if five_only:
            five_point_outputs[method] = result.predictions
        else:
            outputs[method] = result.predictions
            if method != "mean_shape":
                box_methods[method_label(method)] = robustness.peer_box_predictor(peer)
        method_info[method] = info
        log(f"{method}: {1e3 * result.seconds_per_face:.2f} ms per face")

    combined = dataclasses.replace(pred, outputs_px=outputs)
    scored = evaluation.evaluate_outputs(combined, scheme, kinds=kinds,
                                         thresholds=thresholds)
    final_methods = [family, *[m for m in methods if m in outputs]]

    results: dict[str, Any] = {
        "family": family, "data": ",".join(os.path.abspath(f) for f in spec.folders),
        "data_spec": spec.to_dict(), "train_split": train_split,
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
    table = {method_label(m): summary_row(scored, m, kinds, thresholds, 1e3 * seconds[m])
             for m in final_methods}
    tables.append(results_markdown(
        table, summary_columns(kinds, thresholds),
        f"{pred.num_faces} {eval_split!r} faces of {data_name}"
        f", errors in % of the {NORMALISERS[kinds[0]]} (and {NORMALISERS[kinds[1]]})"))
    if len(spec.folders) > 1:
        results["per_dataset"], per_dataset_md = per_dataset_section(
            parts, spec, combined, final_methods, kinds, scheme, eval_split)
        tables.append(per_dataset_md)
    stage_keys = [k for k in outputs if k.startswith(f"{family}:")]
    stage_table = {}
    for key in stage_keys:
        name = key.split(":", 1)[1]
        label = {"mean_shape": "mean shape (in our crop)",
                 "stage_0": "initial CNN (S^0)"}.get(name, name.replace("_", " "))
        stage_table[label] = summary_row(scored, key, kinds, thresholds)
    tables.append(results_markdown(stage_table, summary_columns(kinds, thresholds, False),
                                   f"Stages of our {family.upper()} model"))
    stage_errors = [scored["outputs"][f"{family}:{k}"][kinds[0]]["mean"]
                    for k in _stage_keys(pred.outputs_px) if k != "stage_0"]
    results["stage_errors_decrease"] = bool(
        len(stage_errors) > 1 and all(a > b for a, b in itertools.pairwise(stage_errors)))

    if box_faces:
        log(f"box robustness on {min(box_faces, len(faces))} faces: "
            + ", ".join(box_sources))
        section = robustness.robustness_section(box_methods, faces, kind=kinds[0],
                                                sources=box_sources, num_faces=box_faces,
                                                seed=seed or 0)
        notes += section["notes"]
        if section["table"] is not None:
            results["box_robustness"] = section["table"].to_json()
            tables.append(section["markdown"])

    paths: dict[str, str] = {}
    name = f"compare_{family}"
    if ours.num_landmarks == 5:
        labels = point_labels(scheme)
        for kind in kinds:
            rows = {method_label(m): scored["outputs"][m][kind]["per_point"]
                    for m in final_methods}
            rows.update({f"{family.upper()} {k.split(':', 1)[1].replace('_', ' ')}":
                         scored["outputs"][k][kind]["per_point"]
                         for k in stage_keys if k.split(":", 1)[1].startswith("stage_")})
            tables.append(per_point_table(rows, labels, kind))
        # The mean shape (several times the others' error) is left to the table so
        # that the plot's scale shows the differences between the real methods.
        series = {method_label(m): scored["outputs"][m][kinds[0]]["per_point"]
                  for m in final_methods if m != "mean_shape"}
        paths["per_point"] = atomic.write_figure(
            plots.plot_per_point_errors, os.path.join(output, f"{name}_per_point.png"),
            series, labels, title=f"Per-point error on {eval_split} (cf. CCNN Fig. 7)",
            ylabel=f"mean error (% of the {NORMALISERS[kinds[0]]})")
        notes.append(f"![per-point errors]({os.path.basename(paths['per_point'])})")
    elif five_point_outputs:
        five = five_point_comparison(pred, outputs, five_point_outputs, final_methods,
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
            notes.insert(0, f"- {method_label(family)} {100 * ours_error:.2f} % vs "
                         f"{method_label(method)} {100 * other:.2f} % "
                         f"({KIND_LABELS[headline]} NME): "
                         f"{'lower' if ours_error < other else 'NOT lower'}.")
    if stage_errors:
        checks["stage_errors_decrease"] = results["stage_errors_decrease"]
        notes.insert(0, "- stage errors (" + KIND_LABELS[headline] + "): "
                     + " > ".join(f"{100 * e:.2f}" for e in stage_errors) + " %: "
                     + ("decreasing" if results["stage_errors_decrease"]
                        else "NOT decreasing") + ".")
    results["checks"] = checks
    notes.append(setup_notes(family, ours, records, method_info, pred, train_split,
                              eval_split))
    results["wall_seconds"] = time.perf_counter() - wall_start
    ced = {method_label(m): evaluation.face_errors(combined, m, headline, scheme)
           for m in final_methods}
    paths.update(evaluation.write_report(
        results, output, name, ced,
        f"{family.upper()} vs peers on {data_name} ({eval_split})", tables,
        ced_xlabel=f"NME (normalised by the {NORMALISERS[headline]})",
        ced_max_threshold=settings["ced_max"], notes="\n\n".join(notes)))
    with open(paths["markdown"]) as f:
        markdown = f.read()
    log(f"reports written to {output}")
    return {"results": results, "markdown": markdown, "paths": paths}



# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    from absl import flags

    from experiments.peers import PEERS

    flags.DEFINE_enum("family", None, list(FAMILIES),
                      "msrrn: 68 points, ours = MSRRN; ccnn: 5 points, ours = CCNN.",
                      required=True)
    flags.DEFINE_string("data", None, "TFRecord folder written by `python -m "
                        "common.prepare` (e.g. /tmp/data/ytf68, /tmp/data/sun5), or "
                        "several, comma-separated, optionally weighted "
                        "(data/ytf68:0.7,data/w300v:0.3): ours trains on the weighted "
                        "mix, the trained peers on the union of the training faces; every "
                        "method is scored per folder and on the union of --eval_split.",
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
                        "quick|tuned|paper|tiny). Default: quick.")
    flags.DEFINE_integer("batch_size", None, "Override of the preset's batch size.",
                         lower_bound=1)
    flags.DEFINE_string("config_json", None,
                        "Our config's fields to change after --preset (MSRRNConfig or "
                        "CCNNConfig): a JSON object, e.g. '{\"learning_rate\": 0.02}', "
                        "or a JSON file holding one or a run's config.json.")
    flags.DEFINE_string("output", None, "Report folder (default results/compare_<family>); "
                        "also holds run/ (ours) and peers/ (fitted peers).")
    flags.DEFINE_string("run_dir", None, "Our run directory (default <output>/run); "
                        "rerunning resumes a partial run and reuses a finished one.")
    flags.DEFINE_list("peers", list(DEFAULT_PEERS),
                      "Peers: dlib_ert, mean_shape, mtcnn (both modes: detect and ONet on "
                      "our box), mtcnn_box (box mode only), lbf (OpenCV's Facemark LBF; "
                      "needs --lbf_tool or $FACE_ALIGN_LBF_TOOL, default peer when that "
                      "is set), or a pretrained peer registered in experiments.peers: "
                      + ", ".join(name for name in PEERS if name not in PEER_NAMES)
                      + " (skipped with a note when its package or venv is missing).")
    flags.DEFINE_string("dlib_options", None,
                        "JSON object of dlib shape-predictor option overrides, e.g. "
                        "'{\"oversampling_amount\": 5}'. Default: dlib's defaults "
                        "(experiments.peers.DLIB_DEFAULT_OPTIONS).")
    flags.DEFINE_integer("dlib_threads", 2, "dlib training threads.", lower_bound=1)
    flags.DEFINE_string("lbf_tool", None,
                        "The lbf_tool program built from tools/lbf_tool.cpp (README, "
                        "'Optional peers'). Default: $FACE_ALIGN_LBF_TOOL.")
    flags.DEFINE_string("lbf_options", None,
                        "JSON object of FacemarkLBF parameter overrides of OpenCV's "
                        "defaults (experiments.peers.LBF_DEFAULT_OPTIONS), e.g. "
                        "'{\"initShape_n\": 3}'. Default: "
                        "experiments.peers.LBF_QUICK_OPTIONS; '{}': OpenCV's defaults.")
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
    flags.DEFINE_integer("box_faces", robustness.DEFAULT_FACES,
                         "Eval faces (the first ones) of the box-robustness table: every "
                         "method under each --box_sources box; 0: no table.", lower_bound=0)
    flags.DEFINE_list("box_sources", list(robustness.DEFAULT_SOURCES),
                      "Box sources of the box-robustness table (common.box_robustness): "
                      "stored, landmark_square, dlib, mtcnn (needs the mtcnn package), "
                      "jitter_5, jitter_10.")


def main(argv: Sequence[str]) -> None:
    """Runs :func:`compare` with the flags and prints the Markdown report."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # TensorFlow logs every checkpoint at INFO
        absl_logging.set_verbosity(absl_logging.WARNING)
    from common.config import config_json_flag

    parsed = {"config_json": config_json_flag(values.config_json)}
    for name in ("dlib_options", "lbf_options"):
        try:
            parsed[name] = json.loads(values[name].value) if values[name].value else None
        except json.JSONDecodeError as error:
            raise app.UsageError(f"--{name}: not valid JSON: {error}") from error
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
        lbf_options=parsed["lbf_options"], lbf_tool=values.lbf_tool,
        box_sources=values.box_sources, box_faces=values.box_faces)
    print(report["markdown"], flush=True)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
