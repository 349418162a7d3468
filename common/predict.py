"""Landmark prediction on real-world inputs (folders of photos, videos), for both models.

Three layers:

* :class:`LandmarkPredictor`: one image + face boxes -> landmarks in image pixels,
  from an exported SavedModel (``common.export``) or a Keras model / training run.
* :func:`predict_paths`: files, folders and videos -> one status per file, a JSON
  (JSON lines for videos) per readable file, overlay images/videos and a summary.
* :func:`define_flags` / :func:`main`: the command line shared by
  ``python -m msrrn_tf.predict`` and ``python -m ccnn_tf.predict``.

This module keeps :func:`predict_paths`, the flags and :func:`main`, and re-exports the
rest from its parts: ``common.predict_batching`` (:class:`LandmarkPredictor`, the batch
queue), ``common.predict_inputs`` (input files, numbered frames, boxes JSON, output
names, stale outputs), ``common.predict_outputs`` (results, summary, drawing, video
output) and ``common.predict_run`` (the streaming run, with the tracked frame loop).

Batching without replicating images
-----------------------------------
``serving_default`` takes one image per face (``images [N, H, W, 3]``), so a photo with
ten faces would be copied ten times, and ``crop_faces`` turns the whole image into
float32 plus a 6-level mip-map pyramid: 770 MB per copy for an 8000 x 8000 photo.
Instead, each face is cropped on the Python side by ``common.geometry.multiscale_crops``
(the crop ``preprocess_faces`` uses) from its *support region* only: the crop box plus
``2 ** PYRAMID_LEVELS + 2`` pixels, with its top-left corner on a multiple of
``2 ** (PYRAMID_LEVELS - 1)`` and its bottom-right corner on such a multiple or on the
image edge. Every pyramid block of the region is then a block of the full image's
pyramid (same pixels, same odd-edge padding), and every sample the crop reads lies
inside the region or outside the full image, so the crop equals the full-image crop up
to float32 rounding of the shifted coordinates (about 1e-5 px). The crops of many faces
(across files and video frames) are stacked into batches of ``batch_size`` for the bare
model (the export's ``serving_cropped`` signature, or the Keras model) and mapped back
with ``common.geometry.crop_to_image`` using crop boxes computed from the full-image
face boxes, exactly as ``serving_default`` does.

Robustness
----------
``predict_paths`` streams its inputs (a generator over folders, frames read one at a
time) and never stops on a bad file: each file gets exactly one status, ``"ok"``,
``"no_face"`` or ``"error: <reason>"``. Decoding goes by content
(``common.images.load_image``: grey, RGBA, 16-bit, PNG named ``.jpg`` all work);
detection runs on a copy downscaled to ``detect_max_side`` (huge photos), with the
boxes mapped back to full resolution for the landmarks. Memory is bounded: at most
``batch_size`` faces are waiting for the model, and at most ``max_pending_units``
images/frames (each kept only as its overlay canvas, at most ``overlay_max_side``
pixels) or ``max_pending_bytes`` of them are waiting to be written.

Output layout (``output_dir``)::

    landmarks/<name>.json     one per readable image: faces with box, score, landmarks
    landmarks/<name>.jsonl    one per video: a line per frame
    overlays/<name>.jpg       landmarks drawn (images with faces)
    overlays/<name>.mp4       landmarks drawn on every frame (mp4v; MJPG .avi fallback)
    summary.json, summary.csv one row per file: file, status, faces, frames, seconds

``<name>`` is the file's path relative to the input folder (or its file name for a
file given directly) without its extension (``photos/a.jpg`` -> ``landmarks/a.json``);
files of one folder whose names differ only by extension (``a.jpg``, ``a.png``) keep
it as ``a_jpg``, ``a_png`` (:func:`output_stems`), and two inputs still mapping to one
name get ``-2``, ``-3``... in input order. Folders are walked in sorted order, their
sub-folders only with ``recursive``; files with neither an image
(:data:`IMAGE_EXTENSIONS`) nor a video extension are skipped. Every file is written
atomically, and a rerun into the same folder removes the outputs it did not write
(:func:`remove_stale_outputs`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from common import boxes as boxes_lib
from common import model_path

# The parts of predict, re-exported here so that ``common.predict.X`` keeps working.
from common.boxes import detect_faces  # noqa: F401
from common.images import load_image  # noqa: F401
from common.predict_batching import (  # noqa: F401
    _SUPPORT_ALIGN,
    _SUPPORT_PAD,
    CONFIDENCE_KEY,
    LandmarkPredictor,
    _BatchQueue,
    _export_margin,
    _input_key,
    _landmarks_and_confidence,
    _points_json,
    _read_json_file,
    _sizes_from_model,
    _Unit,
    check_boxes,
    support_region,
)
from common.predict_inputs import (  # noqa: F401
    _FRAME_EXTENSIONS,
    _FRAME_NUMBER,
    IMAGE_EXTENSIONS,
    OUTPUT_SUFFIXES,
    VIDEO_EXTENSIONS,
    Detection,
    Finder,
    _parse_boxes,
    iter_input_files,
    load_boxes_json,
    numbered_frames,
    output_stems,
    remove_stale_outputs,
)
from common.predict_outputs import (  # noqa: F401
    _BOX_COLOUR,
    _LINE_COLOUR,
    _POINT_COLOUR,
    _VIDEO_CODECS,
    DEFAULT_OVERLAY_MAX_SIDE,
    STATUS_ERROR,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUS_SKIPPED,
    FileResult,
    Summary,
    _downscaled,
    _Progress,
    _segments,
    _VideoOutput,
    _write_summary,
    draw_landmarks,
)
from common.predict_run import DEFAULT_FRAMES_FPS, _Run
from common.schemes import SCHEMES, LandmarkScheme, scheme_for

DEFAULT_DETECT_MAX_SIDE = boxes_lib.DETECT_MAX_SIDE
"""Longest side of the copy the detector sees. dlib's HOG detector with ``upsample=1``
finds faces down to about 40 px of that copy (faces of 200 px in an 8000 px photo)
and takes about 1 s per megapixel of it."""

DEFAULT_MAX_PENDING_BYTES = 512 * 2**20
"""Flush a partial batch once the waiting overlay canvases and crops hold this much."""


def predict_paths(predictor: LandmarkPredictor, inputs: Sequence[str] | str, output_dir: str,
                  batch_size: int = 32, upsample: int = 1, overlay: bool = True, *,
                  boxes: Mapping[str, Any] | str | None = None,
                  scheme: LandmarkScheme | str | None = None,
                  detect_max_side: int | None = DEFAULT_DETECT_MAX_SIDE,
                  overlay_max_side: int | None = DEFAULT_OVERLAY_MAX_SIDE,
                  max_frames: int | None = None,
                  max_pending_units: int | None = None,
                  max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                  finder: Finder | None = None,
                  progress: TextIO | None | bool = True,
                  recursive: bool = False,
                  remove_stale: bool = True,
                  tracking: Any = "default", smoothing: Any = "default",
                  smoothing_centre: Any = "default",
                  frames_fps: float = DEFAULT_FRAMES_FPS) -> Summary:
    """Predicts landmarks for every face in files, folders and videos.

    Never raises for a bad input file: each file gets one status (``"ok"``,
    ``"no_face"``, ``"error: <reason>"``, or ``"skipped"`` for a file of a folder
    that has neither an image nor a video extension) in the returned summary, which
    is also written to ``output_dir/summary.json`` and ``summary.csv``. See the
    module docstring for batching, memory bounds and the output layout.

    Predict owns ``landmarks/`` and ``overlays/`` of ``output_dir``: once the run is
    complete, every output file there that this run did not write (an input deleted
    since, an input that now fails, an old name) is removed (``remove_stale``), so
    the folder holds exactly the results listed in the summary.

    Args:
        predictor: the model.
        inputs: image files, video files (by extension, ``VIDEO_EXTENSIONS``) and
            folders (hidden entries skipped), or one of them.
        output_dir: where the results go (created).
        batch_size: faces per model call.
        upsample: dlib's upsampling (1 finds faces down to ~40 px of the detection
            copy).
        overlay: also write overlay images/videos with the landmarks drawn.
        boxes: face boxes instead of detection, as a mapping or the path of a JSON
            file (:func:`load_boxes_json`); files without an entry are detected.
        scheme: the landmark scheme (object or name) used to draw contours; must
            have the model's number of points. Default: ``scheme_for(L)`` when known.
        detect_max_side: longest side of the copy the detector runs on (huge images
            are downscaled for detection only); ``None``: full resolution.
        overlay_max_side: longest side of overlays; ``None``: full resolution.
        max_frames: read at most this many frames per video.
        max_pending_units: images/frames waiting to be written before a partial
            batch is run; default ``2 * batch_size``.
        max_pending_bytes: bytes of waiting canvases and crops before a partial
            batch is run.
        finder: detector override, ``image -> [(box, score)]``; default
            ``common.boxes.DlibBoxFinder(upsample)``.
        progress: stream for the progress line (``True``: stderr; ``False``/``None``:
            silent).
        recursive: also walk the sub-folders of input folders.
        remove_stale: remove outputs of earlier runs this run did not write.
        tracking: ``common.tracking.TrackerParams`` for videos and folders of
            numbered frames (:func:`numbered_frames`): boxes from the previous
            frame's landmarks, the detector only on some frames, a ``track_id`` per
            face; ``"default"``: ``TrackerParams()``; ``None``: detect every frame
            (and read frame folders as separate images). Videos with boxes from
            ``boxes`` are never tracked.
        smoothing: ``common.smoothing.OneEuroParams`` of the causal smoothing of
            tracked faces (``landmarks_smoothed`` beside the raw ``landmarks`` in the
            JSON lines); ``"default"``: ``OneEuroParams()``; ``None``: off.
        smoothing_centre: the filter of each face's centroid
            (``TrackSmoother(centre_params=)``); ``"default"``:
            ``common.smoothing.DEFAULT_CENTRE``; ``None``: no centroid split.
        frames_fps: frame rate of folders of numbered frames.

    Returns:
        The summary, one row per file in input order (files are finished in the
        order they were read).

    Raises:
        ValueError: ``scheme`` does not match the model, or bad arguments.
        DataError: ``boxes`` names an unreadable JSON file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tracking == "default" or smoothing == "default":
        from common import smoothing as smoothing_lib
        from common import tracking as tracking_lib

        tracking = tracking_lib.TrackerParams() if tracking == "default" else tracking
        smoothing = smoothing_lib.OneEuroParams() if smoothing == "default" else smoothing
    if smoothing_centre == "default":
        from common.smoothing import DEFAULT_CENTRE

        smoothing_centre = DEFAULT_CENTRE
    if not frames_fps > 0:
        raise ValueError(f"frames_fps must be > 0, got {frames_fps}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; known: {sorted(SCHEMES)}")
        scheme = SCHEMES[scheme]
    if scheme is None:
        try:
            scheme = scheme_for(predictor.num_landmarks)
        except ValueError:
            scheme = None
    elif scheme.num_points != predictor.num_landmarks:
        raise ValueError(f"the model predicts {predictor.num_landmarks} landmarks but scheme "
                         f"{scheme.name!r} has {scheme.num_points}")
    if isinstance(boxes, (str, os.PathLike)):
        boxes = load_boxes_json(os.fspath(boxes))
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    stream = sys.stderr if progress is True else (progress or None)
    meter = _Progress(stream)
    start = time.monotonic()
    run = _Run(predictor, output_dir, batch_size=batch_size, finder=finder, upsample=upsample,
               overlay=overlay, boxes=boxes, scheme=scheme, detect_max_side=detect_max_side,
               overlay_max_side=overlay_max_side, max_frames=max_frames,
               max_pending_units=max_pending_units or 2 * batch_size,
               max_pending_bytes=max_pending_bytes, progress=meter, recursive=recursive,
               tracking=tracking, smoothing=smoothing, smoothing_centre=smoothing_centre,
               frames_fps=frames_fps)
    try:
        run.run(list(inputs))
    finally:
        meter.close()
    summary = Summary(run.results, time.monotonic() - start, predictor.name, output_dir)
    if remove_stale:
        remove_stale_outputs(output_dir, [p for r in summary.results
                                          for p in (r.landmarks, r.overlay)])
    _write_summary(summary, output_dir)
    return summary


# --------------------------------------------------------------------------------------
# Command line (shared by msrrn_tf.predict and ccnn_tf.predict)
# --------------------------------------------------------------------------------------


def define_flags(scheme: str, flag_values=None) -> dict[str, Any]:
    """Defines the prediction flags; call from an entry point's ``__main__`` block.

    Args:
        scheme: default landmark scheme for drawing (``"ibug68"`` or ``"cuhk5"``).
        flag_values: the ``absl.flags.FlagValues`` (default ``absl.flags.FLAGS``).

    Returns:
        ``{name: FlagHolder}``, to pass to :func:`main`.
    """
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    holders = {
        "model": flags.DEFINE_string(
            "model", None, "A training run directory, its export/ (either layout), a "
            "SavedModel folder, a .keras or a .tflite file.", required=True, flag_values=fv),
        "input": flags.DEFINE_multi_string(
            "input", None, "Image, video or folder (recursed) to process.",
            required=True, flag_values=fv),
        "output": flags.DEFINE_string(
            "output", None, "Folder for the JSON results, overlays and summary.",
            required=True, flag_values=fv),
        "batch_size": flags.DEFINE_integer(
            "batch_size", 32, "Faces per model call.", lower_bound=1, flag_values=fv),
        "upsample": flags.DEFINE_integer(
            "upsample", 1, "dlib detector upsampling (1: faces down to ~40 px).",
            lower_bound=0, flag_values=fv),
        "overlay": flags.DEFINE_boolean(
            "overlay", True, "Write overlay images/videos (--nooverlay to skip).",
            flag_values=fv),
        "boxes_json": flags.DEFINE_string(
            "boxes_json", None, "JSON {file: [[l, t, r, b], ...]} of face boxes to use "
            "instead of dlib for the files it lists.", flag_values=fv),
        "scheme": flags.DEFINE_enum(
            "scheme", scheme, sorted(SCHEMES), "Landmark scheme used for drawing.",
            flag_values=fv),
        "detect_max_side": flags.DEFINE_integer(
            "detect_max_side", DEFAULT_DETECT_MAX_SIDE, "Longest side of the image copy the "
            "detector sees (0: full resolution).", lower_bound=0, flag_values=fv),
        "overlay_max_side": flags.DEFINE_integer(
            "overlay_max_side", DEFAULT_OVERLAY_MAX_SIDE, "Longest side of overlays "
            "(0: full resolution).", lower_bound=0, flag_values=fv),
        "max_frames": flags.DEFINE_integer(
            "max_frames", 0, "Frames read per video (0: all).", lower_bound=0, flag_values=fv),
        "margin": flags.DEFINE_float(
            "margin", None, "Crop margin, for a Keras model whose run has no config.json.",
            flag_values=fv),
        "sizes": flags.DEFINE_list(
            "sizes", None, "Input sides, for a Keras model whose run has no config.json.",
            flag_values=fv),
        "recursive": flags.DEFINE_boolean(
            "recursive", False, "Also process the sub-folders of --input folders.",
            flag_values=fv),
        "allow_empty": flags.DEFINE_boolean(
            "allow_empty", False, "Exit 0 even when no image or video was found to "
            "process (by default that is an error).", flag_values=fv),
        **define_video_flags(fv),
    }
    return holders


def define_video_flags(fv) -> dict[str, Any]:
    """The tracking and smoothing flags (part of :func:`define_flags`)."""
    from absl import flags

    from common.smoothing import DEFAULT_CENTRE, OneEuroParams
    from common.tracking import TrackerParams

    tracker, euro = TrackerParams(), OneEuroParams()
    return {
        "track": flags.DEFINE_boolean(
            "track", True, "Track faces in videos and folders of numbered frames: boxes "
            "from the previous frame's landmarks, the detector only on some frames "
            "(--notrack: detect every frame).", flag_values=fv),
        "detect_every": flags.DEFINE_integer(
            "detect_every", tracker.detect_every, "When tracking, run the detector at least "
            "every this many frames (0: only on the first frame and on failures).",
            lower_bound=0, flag_values=fv),
        "min_confidence": flags.DEFINE_float(
            "min_confidence", tracker.min_confidence, "When tracking, re-detect when a "
            "face's confidence falls below this.", lower_bound=0.0, upper_bound=1.0,
            flag_values=fv),
        "smooth": flags.DEFINE_boolean(
            "smooth", True, "Smooth tracked landmarks over time (causal One-Euro filter; "
            "'landmarks_smoothed' beside the raw 'landmarks'; --nosmooth: off).",
            flag_values=fv),
        "smooth_min_cutoff": flags.DEFINE_float(
            "smooth_min_cutoff", euro.min_cutoff, "One-Euro cut-off frequency of a still "
            "face, Hz (lower: steadier, more lag).", flag_values=fv),
        "smooth_beta": flags.DEFINE_float(
            "smooth_beta", euro.beta, "One-Euro speed coefficient per face size per second "
            "(higher: less lag on motion).", flag_values=fv),
        "smooth_centre_beta": flags.DEFINE_float(
            "smooth_centre_beta", DEFAULT_CENTRE.beta, "One-Euro speed coefficient of each "
            "face's centroid, filtered apart from the points around it (0: filter the "
            "points as they are).", lower_bound=0.0, flag_values=fv),
        "smooth_d_cutoff": flags.DEFINE_float(
            "smooth_d_cutoff", euro.d_cutoff, "One-Euro cut-off of the speed estimate, Hz.",
            flag_values=fv),
        "frames_fps": flags.DEFINE_float(
            "frames_fps", DEFAULT_FRAMES_FPS, "Frame rate of a folder of numbered frames.",
            flag_values=fv),
    }


def video_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``predict_paths`` keyword arguments from the values of
    :func:`define_video_flags`."""
    from common.smoothing import DEFAULT_CENTRE, OneEuroParams
    from common.tracking import TrackerParams

    tracking = (TrackerParams(detect_every=values["detect_every"],
                              min_confidence=values["min_confidence"])
                if values["track"] else None)
    smoothing = (OneEuroParams(values["smooth_min_cutoff"], values["smooth_beta"],
                               values["smooth_d_cutoff"])
                 if values["track"] and values["smooth"] else None)
    centre = (OneEuroParams(DEFAULT_CENTRE.min_cutoff, values["smooth_centre_beta"],
                            DEFAULT_CENTRE.d_cutoff)
              if values["smooth_centre_beta"] > 0 else None)
    return {"tracking": tracking, "smoothing": smoothing, "smoothing_centre": centre,
            "frames_fps": values["frames_fps"]}


def main(argv: Sequence[str], holders: Mapping[str, Any]) -> int:
    """Runs :func:`predict_paths` with the flags of :func:`define_flags` and prints the
    summary. The model is loaded through the Python API (``common.api.Predictor``).

    Args:
        argv: remaining command-line arguments (must be empty).
        holders: what :func:`define_flags` returned.

    Returns:
        0; 1 with a one-line reason on stderr when nothing was processed (unless
        ``--allow_empty``) or every file failed; 2 when an input or the model does
        not exist. Per-file problems are otherwise reported in the summary.
    """
    from absl import app

    from common.api import Predictor

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = {name: holder.value for name, holder in holders.items()}
    missing = [p for p in values["input"] if not os.path.exists(p)]
    if missing:
        print(f"predict: error: input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        api = Predictor.from_export(
            values["model"], margin=values["margin"],
            sizes=[int(s) for s in values["sizes"]] if values["sizes"] else None,
            upsample=values["upsample"], batch_size=values["batch_size"],
            detect_max_side=values["detect_max_side"] or None)
    except model_path.ModelPathError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    summary = predict_paths(
        api.landmark_predictor, values["input"], values["output"],
        batch_size=api.batch_size, upsample=api.upsample, overlay=values["overlay"],
        boxes=values["boxes_json"], scheme=values["scheme"],
        detect_max_side=api.detect_max_side,
        overlay_max_side=values["overlay_max_side"] or None,
        max_frames=values["max_frames"] or None, recursive=values["recursive"],
        **video_options(values))
    print(summary.format())
    failure = summary.failure(allow_empty=values["allow_empty"])
    if failure:
        print(f"predict: error: {failure}", file=sys.stderr)
        return 1
    return 0
