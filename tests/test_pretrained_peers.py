"""Pretrained peers (experiments.peers.dlib_pretrained / .mediapipe_mesh): dlib's 68-point
model, MediaPipe's face mesh through its worker, the mesh-to-iBUG table and the 5-point
forms."""

import io
import os
import sys

import numpy as np
import pytest

from common.schemes import IBUG_68, reduce_to_cuhk5
from experiments import mediapipe_worker, peers
from experiments.mediapipe_correspondence import choose_table, is_held_out, photo_id
from experiments.peers import CUHK5Peer, PeerUnavailable
from experiments.peers.dlib_pretrained import DlibPretrained68
from experiments.peers.mediapipe_mesh import (
    MEDIAPIPE_PYTHON_ENV,
    MESH_TO_IBUG68,
    MediaPipeFaceMesh,
    check_correspondence,
    mesh_to_ibug68,
    square_crop,
    uncrop_points,
)

FAKE_WORKER = [sys.executable, os.path.join(os.path.dirname(__file__), "fake_mesh_worker.py")]


def _dot_image(height, width, x, y, radius=2):
    image = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    image[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = 255
    return image


# ---- dlib ----------------------------------------------------------------------------


def test_dlib_pretrained_unavailable_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # import fails
    with pytest.raises(PeerUnavailable, match="pip install face-recognition-models"):
        DlibPretrained68()
    for name in ("dlib_pretrained68_detect", "dlib_pretrained68_cuhk5"):
        with pytest.raises(PeerUnavailable, match="face-recognition-models"):
            peers.make_peer(name)
        assert "face-recognition-models" in peers.peer_unavailable(name)
    assert isinstance(PeerUnavailable("x"), ImportError)  # callers may skip on it


def test_dlib_pretrained_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        DlibPretrained68(mode="tracker", model_path="unused")


def _read_300w_face(shared_data, name="helen/trainset/100032540_1"):
    import cv2

    path = shared_data / "w300" / f"{name}.jpg"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    lines = (shared_data / "w300" / f"{name}.pts").read_text().splitlines()
    body = lines[lines.index("{") + 1:lines.index("}")]
    # .pts are 1-based pixel positions; the package puts pixel centres at integers.
    points = np.array([[float(v) for v in line.split()] for line in body]) - 1.0
    return image, points


def _pupil_nme(predicted, truth, points=slice(None)):
    left, right = IBUG_68.pupils(truth)
    error = np.linalg.norm(predicted - truth, axis=-1)[points].mean()
    return float(error / np.linalg.norm(left - right))


@pytest.mark.realdata
def test_dlib_pretrained_on_a_real_face(shared_data):
    if peers.peer_unavailable("dlib_pretrained68"):
        pytest.skip("face-recognition-models not installed")
    from common.box_robustness import landmark_square_box

    image, truth = _read_300w_face(shared_data)
    box = landmark_square_box(truth)
    peer = DlibPretrained68(mode="detect", on_miss="nan")
    assert peer.name == "dlib_pretrained68_detect"
    points = peer.predict(image, box)
    assert points.shape == (68, 2) and peer.misses == 0
    assert _pupil_nme(points, truth) < 0.08
    five = CUHK5Peer(peer)
    assert five.name == "dlib_pretrained68_detect_cuhk5"
    np.testing.assert_allclose(five.predict(image, box), reduce_to_cuhk5(points), atol=1e-4)
    assert five.misses == 0   # attributes of the wrapped peer pass through


# ---- the mesh-to-iBUG table ----------------------------------------------------------


def test_correspondence_table_is_valid():
    check_correspondence(MESH_TO_IBUG68)
    assert len(MESH_TO_IBUG68) == 68
    flat = [i for group in MESH_TO_IBUG68 for i in group]
    assert all(0 <= i < 468 for i in flat)
    assert all(len(set(g)) == len(g) and 1 <= len(g) <= 3 for g in MESH_TO_IBUG68)
    groups = [tuple(sorted(g)) for g in MESH_TO_IBUG68]
    assert len(set(groups)) == 68        # no two iBUG points read the same vertices


def test_correspondence_check_rejects_bad_tables():
    with pytest.raises(ValueError, match="68 entries"):
        check_correspondence(MESH_TO_IBUG68[:67])
    for bad in ((468,), (), (3, 3)):
        with pytest.raises(ValueError, match="entry 5"):
            check_correspondence(MESH_TO_IBUG68[:5] + (bad,) + MESH_TO_IBUG68[6:])


def test_mesh_to_ibug68_averages_groups():
    mesh = np.random.default_rng(0).uniform(0, 100, (2, 468, 3))
    points = mesh_to_ibug68(mesh)
    assert points.shape == (2, 68, 2)
    for k in (0, 1, 40):
        np.testing.assert_allclose(points[:, k], mesh[:, list(MESH_TO_IBUG68[k]), :2].mean(1))


def test_choose_table_recovers_a_planted_correspondence():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 100, (30, 68, 2))
    truth[:, 36:48] = rng.uniform(40, 60, (30, 12, 2))
    truth[:, 36:42, 0] -= 30           # image-left eye
    mesh = rng.uniform(0, 100, (30, 468, 2))
    planted = rng.choice(468, 68, replace=False)
    mesh[:, planted] = truth + rng.normal(0, 0.1, truth.shape)
    table, errors = choose_table(mesh, truth, candidates=4)
    assert [g[0] for g in table] == planted.tolist() and all(len(g) == 1 for g in table)
    assert errors.max() < 0.01


def test_photo_split_keeps_a_photo_together():
    assert photo_id("../w300/helen/trainset/100040721_2.jpg (x.pts)") == "100040721"
    assert photo_id("afw/1051618982_1.jpg") == "1051618982"
    assert is_held_out("a/100040721_1.jpg") == is_held_out("b/100040721_2.jpg")
    names = [f"{i}_1.jpg" for i in range(2000)]
    assert 0.17 < np.mean([is_held_out(n) for n in names]) < 0.23


# ---- the worker protocol -------------------------------------------------------------


def test_worker_protocol_round_trip(tmp_path):
    crops = np.random.default_rng(2).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    request, reply = str(tmp_path / "req.npz"), str(tmp_path / "rep.npz")
    mediapipe_worker.write_request(request, crops, reply)
    read_crops, read_reply = mediapipe_worker.read_request(request)
    np.testing.assert_array_equal(read_crops, crops)
    assert read_reply == reply

    def fake(crop):   # found only for crops whose first pixel is even
        return None if crop[0, 0, 0] % 2 else np.full((468, 3), crop[0, 0, 0] / 255.0)

    stdin = io.StringIO(f"{request}\n{tmp_path / 'missing.npz'}\n{request}\n\n")
    stdout = io.StringIO()
    assert mediapipe_worker.serve(fake, stdin, stdout) == 2
    lines = stdout.getvalue().splitlines()
    assert lines[0] == mediapipe_worker.READY_LINE
    assert lines[1] == f"ok {reply}" and lines[3] == f"ok {reply}"
    assert lines[2].startswith("error ") and "missing.npz" in lines[2]
    points, found, seconds = mediapipe_worker.read_response(reply, 3)
    expected = crops[:, 0, 0, 0] % 2 == 0
    np.testing.assert_array_equal(found, expected)
    assert np.isnan(points[~found]).all() and (seconds >= 0).all()
    np.testing.assert_allclose(points[found, 0, 0], crops[found, 0, 0, 0] / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="expected 4"):
        mediapipe_worker.read_response(reply, 4)
    with pytest.raises(ValueError, match="uint8"):
        mediapipe_worker.write_request(request, crops.astype(np.float32), reply)


@pytest.mark.parametrize("height, width, box", [
    (120, 160, (40.0, 20.0, 110.0, 100.0)),        # small face, no pre-shrink
    (1500, 1400, (300.0, 250.0, 1200.0, 1150.0)),  # side 1350 px: shrunk by 2 first
    (100, 100, (-20.0, -10.0, 60.0, 70.0)),        # box past the image edge
])
def test_square_crop_then_uncrop_finds_a_dot(height, width, box):
    x, y = 0.5 * (box[0] + box[2]) + 7.0, 0.5 * (box[1] + box[3]) - 5.0
    radius = max(2, int((box[2] - box[0]) / 40))
    image = _dot_image(height, width, x, y, radius)
    crop, placement = square_crop(image, np.array(box), size=128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    ys, xs = np.nonzero(crop[..., 0] > 128)
    found = uncrop_points(np.array([(xs.mean() + 0.5) / 128, (ys.mean() + 0.5) / 128]),
                          placement)
    pixel = placement[2] / 128
    np.testing.assert_allclose(found, [x, y], atol=max(1.0, pixel))


def test_mediapipe_peer_through_a_fake_worker():
    peer = MediaPipeFaceMesh(worker_command=FAKE_WORKER, batch_size=2, crop_size=96)
    try:
        images = [_dot_image(90, 120, 50.0, 40.0), _dot_image(200, 200, 130.0, 90.0),
                  np.zeros((50, 50, 3), np.uint8), _dot_image(64, 64, 30.0, 33.0)]
        boxes = np.array([[20, 10, 80, 70], [80, 40, 180, 140], [5, 5, 45, 45],
                          [10, 12, 50, 52]], np.float32)
        points, seconds = peer.predict_batch_timed(images, boxes)
        assert points.shape == (4, 68, 2) and seconds.shape == (4,)
        for i, (x, y) in {0: (50, 40), 1: (130, 90), 3: (30, 33)}.items():
            np.testing.assert_allclose(points[i], np.tile([x, y], (68, 1)), atol=1.0)
        assert np.isnan(points[2]).all()
        assert peer.misses == 1 and peer.missed_indices == [2]
        five = CUHK5Peer(peer).predict_batch(images[:1], boxes[:1])
        np.testing.assert_allclose(five[0], np.tile([50, 40], (5, 1)), atol=1.0)
    finally:
        peer.close()


def test_mediapipe_peer_unavailable_without_venv(monkeypatch, tmp_path):
    monkeypatch.setenv(MEDIAPIPE_PYTHON_ENV, str(tmp_path / "no" / "python"))
    with pytest.raises(PeerUnavailable, match="python3 -m venv"):
        MediaPipeFaceMesh()
    monkeypatch.delenv(MEDIAPIPE_PYTHON_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    why = peers.peer_unavailable("mediapipe_mesh_cuhk5")
    assert "mediapipe==0.10.21" in why and str(tmp_path) in why


@pytest.mark.slow
@pytest.mark.realdata
def test_mediapipe_real_worker_on_a_real_face(shared_data):
    if peers.peer_unavailable("mediapipe_mesh"):
        pytest.skip("no MediaPipe venv (experiments.peers.mediapipe_mesh.MEDIAPIPE_VENV_COMMAND)")
    from common.box_robustness import landmark_square_box

    image, truth = _read_300w_face(shared_data)
    peer = MediaPipeFaceMesh()
    try:
        points = peer.predict(image, landmark_square_box(truth))
    finally:
        peer.close()
    assert points.shape == (68, 2) and peer.misses == 0
    assert _pupil_nme(points, truth) < 0.12
    assert _pupil_nme(points, truth, slice(17, 68)) < 0.08


def test_eval_pretrained_scores_a_fake_mesh(monkeypatch):
    from experiments import eval_pretrained
    from experiments.peers import Face

    monkeypatch.setitem(peers.PEERS, "mediapipe_mesh",
                        lambda: MediaPipeFaceMesh(worker_command=FAKE_WORKER, crop_size=96))
    rng = np.random.default_rng(3)
    faces = []
    for _ in range(3):
        truth = rng.uniform(20, 80, (68, 2))
        faces.append(Face(_dot_image(100, 100, 50.0, 50.0), truth.astype(np.float32),
                          np.array([20, 20, 80, 80], np.float32), "x.jpg"))
    (row,) = eval_pretrained.evaluate(faces, ["mediapipe_mesh"], ["stored"])
    truth = np.stack([f.landmarks for f in faces]).astype(np.float64)
    left, right = IBUG_68.pupils(truth)
    pupil = np.linalg.norm(left - right, axis=-1)
    expected = 100 * np.mean(np.linalg.norm(truth - 50.0, axis=-1).mean(1) / pupil)
    assert row["faces"] == 3 and row["missed"] == 0
    assert row["nme68"] == pytest.approx(expected, rel=0.02)
    five_faces = [f._replace(landmarks=reduce_to_cuhk5(f.landmarks)) for f in faces]
    (row5,) = eval_pretrained.evaluate(five_faces, ["mediapipe_mesh"], ["stored"])
    five_truth = reduce_to_cuhk5(truth)
    per_point = np.linalg.norm(five_truth - 50.0, axis=-1) / 60.0        # box width 60
    assert row5["nme5"] == pytest.approx(100 * per_point.mean(), rel=0.02)
    np.testing.assert_allclose(row5["points"], 100 * per_point.mean(0), rtol=0.03)
    assert np.isnan(row5["nme68"])
    with pytest.raises(ValueError, match="NME5 column"):
        eval_pretrained.evaluate(faces, ["mediapipe_mesh_cuhk5"], ["stored"])


# ---- registry and compare_real -------------------------------------------------------


def test_pretrained_peers_are_registered_classes_with_their_scheme():
    from common.schemes import CUHK_5
    from experiments import compare_real

    names = ["dlib_pretrained68", "dlib_pretrained68_detect", "mediapipe_mesh"]
    for name in names:
        cls = peers.peer_class(name)
        assert issubclass(cls, peers.Peer) and cls.name == name and cls.scheme is IBUG_68
        assert not cls.trainable and not compare_real.five_point_peer(name)
        five = peers.peer_class(f"{name}_cuhk5")
        assert issubclass(five, CUHK5Peer) and five.source is cls
        assert five.name == f"{name}_cuhk5" and five.scheme is CUHK_5
        assert compare_real.five_point_peer(f"{name}_cuhk5")
    labels = [compare_real.method_label(n) for n in names + [f"{n}_cuhk5" for n in names]]
    assert len(set(labels)) == 6
    assert compare_real.expand_peers(["dlib_ert", "mediapipe_mesh_cuhk5"]) == [
        "dlib_ert", "mediapipe_mesh_cuhk5"]
    with pytest.raises(TypeError, match="needs a peer"):
        CUHK5Peer()


def test_registered_five_point_form_builds_its_source_with_options():
    peer = peers.make_peer("mediapipe_mesh_cuhk5", worker_command=FAKE_WORKER, crop_size=96)
    try:
        assert isinstance(peer.peer, MediaPipeFaceMesh) and peer.peer.crop_size == 96
        assert peer.name == "mediapipe_mesh_cuhk5" and peer.describe()["scheme"] == "cuhk5"
        result = peers.evaluate_peer(
            peer, [(_dot_image(90, 120, 50.0, 40.0), np.tile([50.0, 40.0], (5, 1)),
                    np.array([20, 10, 80, 70], np.float32), "x.jpg")], "box_width")
        assert result.predictions.shape == (1, 5, 2)   # through predict_batch_timed
        np.testing.assert_allclose(result.predictions[0], np.tile([50, 40], (5, 1)), atol=1.0)
    finally:
        peer.close()


def test_compare_real_skips_pretrained_peers_whose_package_is_missing(monkeypatch, tmp_path):
    from experiments import compare_real

    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # import fails
    monkeypatch.setenv(MEDIAPIPE_PYTHON_ENV, str(tmp_path / "no" / "python"))
    kept, notes = compare_real.skip_unavailable_peers(
        ["dlib_ert", "dlib_pretrained68_detect", "mean_shape", "mediapipe_mesh_cuhk5"])
    assert kept == ["dlib_ert", "mean_shape"]
    assert len(notes) == 2
    assert "(`dlib_pretrained68_detect`) skipped:" in notes[0]
    assert "pip install face-recognition-models" in notes[0]
    assert "(`mediapipe_mesh_cuhk5`) skipped:" in notes[1] and "python3 -m venv" in notes[1]


def test_compare_real_skips_a_pretrained_peer_with_another_point_count():
    from experiments import compare_real

    note = compare_real.point_count_note("dlib_pretrained68", 5)
    assert "(`dlib_pretrained68`) skipped: it predicts 68 points, our model 5" in note
    assert "`dlib_pretrained68_cuhk5`" in note
    assert compare_real.point_count_note("mediapipe_mesh", 68) == ""
    assert compare_real.point_count_note("mediapipe_mesh_cuhk5", 68) == ""   # 5-point reduction
    assert compare_real.point_count_note("mediapipe_mesh_cuhk5", 5) == ""
    assert compare_real.point_count_note("dlib_ert", 5) == ""                # learns ours
    assert compare_real.point_count_note("mtcnn", 68) == ""
