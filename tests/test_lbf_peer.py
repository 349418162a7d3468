"""Tests of the OpenCV Facemark LBF peer (experiments.peers.lbf) and its tool protocol.

The tests that train and fit run only where ``$FACE_ALIGN_LBF_TOOL`` names a working
``lbf_tool`` (built from tools/lbf_tool.cpp, see README "Optional peers").
"""

import os

import cv2
import numpy as np
import pytest

from common.schemes import CUHK_5, IBUG_68
from experiments import peers
from experiments.peers import (
    Face,
    LBFLayout,
    LBFPeer,
    LBFUnavailable,
    MeanShape,
    evaluate_peer,
    lbf,
)

# A few small trees: seconds, not minutes (OpenCV's defaults: 5 stages x 6 trees).
TINY_LBF = {"initShape_n": 2, "stages_n": 2, "tree_n": 3, "feats_m": [60, 60],
            "radius_m": [0.3, 0.15]}


def _tool_or_none():
    try:
        return peers.check_lbf_tool()["tool"]
    except LBFUnavailable:
        return None


LBF_TOOL = _tool_or_none()
needs_tool = pytest.mark.skipif(LBF_TOOL is None,
                                reason=f"${peers.LBF_TOOL_ENV} names no working lbf_tool")


def _permutation(pairs, n):
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def test_opencv_68_table_is_the_ibug_flip():
    assert _permutation(peers.LBF_FLIP_PAIRS[68], 68) == list(IBUG_68.flip_permutation)
    layout = LBFLayout.for_scheme(IBUG_68)
    assert layout.slots == tuple(range(68)) and layout.primary == tuple(range(68))
    assert layout.pupils == (IBUG_68.left_pupil, IBUG_68.right_pupil)


def test_five_points_ride_in_the_29_point_table():
    layout = LBFLayout.for_scheme(CUHK_5)
    flip29 = _permutation(peers.LBF_FLIP_PAIRS[29], 29)
    assert layout.num_slots == 29 and set(layout.slots) == set(range(5))
    # OpenCV's mirrored copy of slot s is slot flip29[s]: it must hold the mirrored point.
    for slot, point in enumerate(layout.slots):
        assert layout.slots[flip29[slot]] == CUHK_5.flip_permutation[point]
    assert [layout.slots[s] for s in layout.primary] == list(range(5))
    assert layout.pupils == ((layout.primary[0],), (layout.primary[1],))


def test_lbf_rect_rounds_edges():
    assert peers.lbf_rect(np.array([10.4, 20.5, 60.49, 70.6])) == (10, 21, 50, 50)
    assert peers.lbf_rect(np.array([3.0, 3.0, 3.2, 3.2])) == (3, 3, 1, 1)


def test_options_checked():
    assert peers.lbf_options() == peers.LBF_DEFAULT_OPTIONS
    assert peers.lbf_options({"stages_n": 2})["stages_n"] == 2
    with pytest.raises(ValueError, match="tree_deep"):
        peers.lbf_options({"tree_deep": 3})
    with pytest.raises(ValueError, match="per stage"):
        peers.lbf_options({"stages_n": 3, "feats_m": [10, 10]})


def test_unconfigured_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv(peers.LBF_TOOL_ENV, raising=False)
    with pytest.raises(LBFUnavailable, match="FACE_ALIGN_LBF_TOOL.*README"):
        peers.check_lbf_tool()
    with pytest.raises(LBFUnavailable):
        LBFPeer()
    not_a_program = tmp_path / "lbf_tool"
    not_a_program.write_text("")
    monkeypatch.setenv(peers.LBF_TOOL_ENV, str(not_a_program))
    with pytest.raises(LBFUnavailable, match="not an executable"):
        peers.check_lbf_tool()


def test_faces_file_protocol(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
              rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)]
    boxes = np.array([[2.2, 3.7, 20.1, 15.5], [1.0, 1.0, 9.0, 12.0]], np.float32)
    landmarks = rng.uniform(0, 10, (2, 5, 2))
    layout = LBFLayout.for_scheme(CUHK_5)
    lbf._write_lbf_faces(str(tmp_path), images, boxes, layout.slots, landmarks)
    lines = (tmp_path / "faces.txt").read_text().splitlines()
    assert lines[0] == "2 29"
    pixels = (tmp_path / "pixels.bin").read_bytes()
    for line, image, box, points in zip(lines[1:], images, boxes, landmarks):
        fields = line.split()
        offset, width, height = (int(v) for v in fields[:3])
        assert (width, height) == (image.shape[1], image.shape[0])
        assert tuple(int(v) for v in fields[3:7]) == peers.lbf_rect(box)
        grey = np.frombuffer(pixels[offset:offset + width * height], np.uint8)
        np.testing.assert_array_equal(grey.reshape(height, width),
                                      cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        slots = np.array(fields[7:], np.float64).reshape(29, 2)
        np.testing.assert_allclose(slots, points[list(layout.slots)], atol=1e-5)


def test_evaluate_peer_uses_the_timed_batch():
    class OutOfProcess:
        name = "fake"
        calls = 0

        def predict(self, image, box):
            raise AssertionError("predict_batch_timed must be used")

        def predict_batch_timed(self, images, boxes):
            OutOfProcess.calls += 1
            points = np.repeat(boxes[:, None, :2], 5, axis=1)
            return points, np.full(len(images), 0.25)

    faces = [(np.zeros((8, 8, 3), np.uint8), np.zeros((5, 2)), np.array([1, 1, 5, 5]), "a"),
             (np.zeros((8, 8, 3), np.uint8), np.ones((5, 2)), np.array([1, 1, 5, 5]), "b")]
    result = evaluate_peer(OutOfProcess(), faces, "box_width", CUHK_5)
    assert OutOfProcess.calls == 1
    assert result.predictions.shape == (2, 5, 2) and result.seconds_per_face == 0.25
    np.testing.assert_allclose(result.errors, [np.sqrt(2) / 4, 0.0])


@pytest.fixture(scope="module")
def synthetic68(tmp_path_factory):
    from common.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(68, {"train": 30, "val": 6}, seed=0,
                                    cache_dir=str(tmp_path_factory.mktemp("lbf-data")),
                                    progress=False)
    return (list(peers.iterate_faces(data, "train")), list(peers.iterate_faces(data, "val")))


@pytest.mark.slow
@needs_tool
def test_lbf_68_trains_fits_and_reloads(synthetic68, tmp_path):
    train, val = synthetic68
    peer = LBFPeer.train(train, TINY_LBF)
    assert peer.train_info["faces"] == peer.train_info["accepted"] == 30
    assert peer.train_info["n_landmarks"] == 68 and peer.train_info["stages_n"] == 2
    assert peer.train_seconds > 0
    images, boxes = [f.image for f in val], np.stack([f.box for f in val])
    points, seconds = peer.predict_batch_timed(images, boxes)
    assert points.shape == (6, 68, 2) and np.all(np.isfinite(points))
    assert seconds.shape == (6,) and np.all(seconds > 0)
    np.testing.assert_allclose(peer.predict(images[0], boxes[0]), points[0], atol=1e-4)
    # Fitting is deterministic: a saved and reloaded model predicts the same points.
    path = str(tmp_path / "sub" / "lbf.yml")
    peer.save(path)
    assert sorted(os.listdir(tmp_path / "sub")) == ["lbf.yml", "lbf.yml.layout.json"]
    np.testing.assert_allclose(LBFPeer.load(path).predict_batch(images, boxes), points,
                               atol=1e-4)
    # Better than the mean shape on the faces it learnt from.
    lbf = evaluate_peer(peer, train, "inter_ocular")
    mean = evaluate_peer(MeanShape().fit(train), train, "inter_ocular")
    assert lbf.errors.mean() < mean.errors.mean()


@pytest.mark.slow
@needs_tool
def test_lbf_5_points(synthetic68):
    from common.synthetic import to_five_points

    train = [Face(f.image, to_five_points(f.landmarks[None])[0], f.box, f.source_path)
             for f in synthetic68[0]]
    peer = peers.make_peer("lbf", options=TINY_LBF).fit(train)
    assert peer.layout.num_slots == 29 and peer.train_info["n_landmarks"] == 29
    lbf = evaluate_peer(peer, train, "inter_ocular")
    assert lbf.predictions.shape == (30, 5, 2) and np.all(np.isfinite(lbf.predictions))
    mean = evaluate_peer(MeanShape().fit(train), train, "inter_ocular")
    assert lbf.errors.mean() < mean.errors.mean()


@needs_tool
def test_lbf_tool_errors_are_reported(tmp_path):
    with pytest.raises(RuntimeError, match="lbf_tool train failed.*faces.txt"):
        lbf._run_lbf_tool([LBF_TOOL, "train", str(tmp_path), str(tmp_path / "m.yml")],
                            "train")
