"""Tracking, smoothing and confidence in common.predict's video / frame-folder path."""

import json

import cv2
import numpy as np
import pytest

from common import predict, smoothing, tracking
from common.synthetic import generate_face

SIZE = 32


def _predictor(with_confidence: bool) -> predict.LandmarkPredictor:
    """A stand-in model: five points at fixed crop positions whose landmark box is
    about the input box (so tracking keeps the box), confidence 0.8."""
    template = np.array([[0.3, 0.32], [0.7, 0.32], [0.5, 0.5], [0.35, 0.72], [0.65, 0.72]],
                        np.float32)

    def run_crops(inputs):
        n = len(inputs[f"image_{SIZE}"])
        points = np.repeat(template[None], n, axis=0)
        if not with_confidence:
            return points  # an older export: landmarks only
        return {"landmarks": points, "confidence": np.full(n, 0.8, np.float32)}

    return predict.LandmarkPredictor(run_crops, sizes=[SIZE], margin=0.2, num_landmarks=5)


def _frames(folder, count=8):
    face = generate_face(0, seed=0)
    folder.mkdir()
    for i in range(count):
        image = np.roll(face.image, i, axis=1)
        assert cv2.imwrite(str(folder / f"frame_{i + 1:04d}.png"), image[:, :, ::-1])
    return face.box


def test_numbered_frames_orders_by_number(tmp_path):
    for name in ("f10.jpg", "f2.jpg", "f1.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in predict.numbered_frames(str(tmp_path))] == [
        "f1.jpg", "f2.jpg", "f10.jpg"]
    (tmp_path / "notes.txt").write_text("x")
    assert predict.numbered_frames(str(tmp_path)) is None


@pytest.mark.parametrize("with_confidence", [True, False])
def test_frame_folder_is_tracked_and_smoothed(tmp_path, capsys, with_confidence):
    box = _frames(tmp_path / "clip")
    calls = []

    def finder(image):
        calls.append(1)
        return [(box, 1.0)]

    summary = predict.predict_paths(
        _predictor(with_confidence), [str(tmp_path / "clip")], str(tmp_path / "out"),
        overlay=False, progress=False, finder=finder, frames_fps=30.0,
        tracking=tracking.TrackerParams(detect_every=5),
        smoothing=smoothing.OneEuroParams())
    (result,) = summary.results
    assert result.kind == "video" and result.frames == 8 and result.status == "ok"
    assert len(calls) == 2  # frames 0 and 5
    err = capsys.readouterr().err
    assert "tracking faces" in err and "2 of 8 frames (6 calls saved)" in err
    lines = [json.loads(line) for line in open(result.landmarks)]
    assert [line["frame"] for line in lines] == list(range(8))
    faces = [line["faces"][0] for line in lines]
    assert {f["track_id"] for f in faces} == {0}
    assert [f["box_source"] for f in faces[:3]] == ["dlib", "tracked", "tracked"]
    assert all(np.asarray(f["landmarks_smoothed"]).shape == (5, 2) for f in faces)
    assert faces[0]["landmarks_smoothed"] == faces[0]["landmarks"]  # first sample as is
    want = 0.8 if with_confidence else None
    assert all(f["confidence"] == want for f in faces)


def test_notrack_reads_the_folder_as_images(tmp_path):
    box = _frames(tmp_path / "clip", count=3)
    summary = predict.predict_paths(
        _predictor(True), [str(tmp_path / "clip")], str(tmp_path / "out"), overlay=False,
        progress=False, finder=lambda image: [(box, 1.0)], tracking=None)
    assert [r.kind for r in summary.results] == ["image"] * 3
    record = json.loads(open(summary.results[0].landmarks).read())
    assert record["faces"][0]["confidence"] == 0.8
    assert "track_id" not in record["faces"][0]
