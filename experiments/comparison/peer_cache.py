"""The trained peers of a comparison, fitted once and cached by what they learnt from.

Part of ``experiments.compare_real``: a peer fitted on a split's shards with given
options is written to the cache folder with a JSON record (its key: peer, data folder,
shard names, sizes and times, options) and reused by any later run with the same key.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

TRAINED_PEERS = ("mean_shape", "dlib_ert", "lbf")
"""Peers fitted on the training split (MTCNN is pretrained)."""

PEER_CACHE_VERSION = 1


def _shard_signature(data: str, split: str) -> list[list[Any]]:
    """``[[file name, bytes, mtime], ...]`` of the split's shards: the cache key of the
    training data (a re-prepared folder invalidates trained peers); for several
    folders (``common.multidata.DataSpec``) those of each folder holding the split."""
    from common.multidata import DataSpec
    from common.tfrecord import find_shards

    spec = DataSpec.parse(data)
    folders = spec.folders if len(spec.folders) == 1 else spec.with_split(split).folders
    return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))]
            for folder in folders for f in sorted(find_shards(folder, split))]


def _real_data(data) -> str | list[str]:
    """The folder resolved through symbolic links, or the list of several folders."""
    from common.multidata import DataSpec

    folders = [os.path.realpath(f) for f in DataSpec.parse(data).folders]
    return folders[0] if len(folders) == 1 else folders


def peer_cache_key(name: str, data, split: str,
                   options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a trained peer depends on: its name, the training shards and options.
    The folder is resolved through symbolic links, so a linked or relative path to
    the same converted data reuses the fit. Several folders (``"a,b"``): the peer
    learns the union of their training faces (sampling weights do not apply)."""
    return {"version": PEER_CACHE_VERSION, "peer": name, "data": _real_data(data),
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
    defaults (``experiments.peers.LBF_DEFAULT_OPTIONS``); ``None``:
    ``experiments.peers.LBF_QUICK_OPTIONS``."""
    from experiments import peers

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
        dlib_options: overrides of dlib's defaults (``experiments.peers.DLIB_DEFAULT_OPTIONS``).
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
        experiments.peers.LBFUnavailable: LBF asked for without a working ``lbf_tool``.
    """
    from common import atomic
    from experiments import peers

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
    from experiments import peers

    if name == "dlib_ert":
        return peers.DlibERT.load(record["path"])
    if name == "lbf":
        return peers.LBFPeer.load(record["path"], tool=lbf_tool)
    return peers.MeanShape.load(record["path"])


def die_with_parent(parent_pid: int) -> None:
    """Makes this (child) process end when ``parent_pid`` dies, even by SIGKILL.

    On Linux the kernel sends SIGTERM at the parent's death (``prctl``
    ``PR_SET_PDEATHSIG``); elsewhere a daemon thread polls the parent. A parent that
    already died before the call ends the child at once.
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before the hook was set
        os._exit(1)


def fit_trained_peers_in_child(parent_pid: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`fit_trained_peers` in ``compare_real``'s child process, ended with its
    parent (:func:`die_with_parent`): a killed comparison leaves no dlib fit running."""
    die_with_parent(parent_pid)
    return fit_trained_peers(*args, **kwargs)
