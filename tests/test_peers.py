"""Tests of the peer methods (experiments.peers)."""

import importlib.util
import sys

import cv2
import numpy as np
import pytest

from common.boxes import dlib_rect_to_box, fraction_inside
from common.schemes import CUHK_5
from experiments import peers
from experiments.peers import DlibERT, Face, MeanShape, evaluate_peer, iterate_faces

# Small forests keep training under a second (dlib's defaults: 10 x 500 trees).
TINY_ERT = {"cascade_depth": 6, "num_trees_per_cascade_level": 40, "oversampling_amount": 5,
            "tree_depth": 3, "feature_pool_size": 200, "random_seed": "test"}

_DOT_TEMPLATE = np.array([(0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75)])


def dot_faces(count: int, seed: int = 0, size: int = 64) -> list[Face]:
    """Dark images with a bright dot at each of 5 landmarks, shapes varying per face."""
    rng = np.random.default_rng(seed)
    faces = []
    for i in range(count):
        side = rng.uniform(30, 44)
        left, top = rng.uniform(2, size - side - 2, 2)
        box = np.array([left, top, left + side, top + side], np.float32)
        shape = (_DOT_TEMPLATE + rng.uniform(-0.07, 0.07, 2)
                 + rng.uniform(-0.05, 0.05, (5, 2)))
        points = (box[:2] + shape * side).astype(np.float32)
        image = np.full((size, size, 3), 30, np.uint8)
        # Drawn at 1/16 pixel (shift=4) so the dots sit at the sub-pixel landmarks.
        for x, y in np.round(points * 16).astype(int).tolist():
            cv2.circle(image, (x, y), 32, (230, 230, 230), -1, cv2.LINE_AA, 4)
        faces.append(Face(image, points, box, f"dots:{i}"))
    return faces


@pytest.fixture(scope="module")
def dots() -> list[Face]:
    return dot_faces(40)


@pytest.fixture(scope="module")
def tiny_ert(dots) -> DlibERT:
    return DlibERT.train(dots, TINY_ERT, num_threads=1)


def test_dlib_defaults_recorded():
    assert peers.dlib_default_options() == peers.DLIB_DEFAULT_OPTIONS


def test_unknown_dlib_option_is_named():
    with pytest.raises(ValueError, match="tree_deep"):
        DlibERT.training_options({"tree_deep": 3})


@pytest.mark.parametrize("rect", [(0, 0, 9, 9), (13, 7, 60, 61), (-5, -3, 20, 30)])
def test_dlib_rect_round_trip(rect):
    import dlib

    original = dlib.rectangle(*rect)
    back = peers.box_to_dlib_rect(dlib_rect_to_box(original))
    assert (back.left(), back.top(), back.right(), back.bottom()) == rect


def test_box_to_dlib_rect_rounds_to_nearest_pixel():
    rect = peers.box_to_dlib_rect(np.array([10.2, 4.9, 30.6, 20.4]))
    # left = round(10.7) = 11, top = round(5.4) = 5, right = round(30.1) = 30,
    # bottom = round(19.9) = 20.
    assert (rect.left(), rect.top(), rect.right(), rect.bottom()) == (11, 5, 30, 20)


def test_dlib_ert_beats_mean_shape(dots, tiny_ert):
    ert = evaluate_peer(tiny_ert, dots, "inter_pupil", CUHK_5)
    mean = evaluate_peer(MeanShape().fit(dots), dots, "inter_pupil", CUHK_5)
    assert ert.errors.shape == (40,)
    assert ert.predictions.shape == (40, 5, 2)
    assert ert.errors.mean() < 0.35 * mean.errors.mean()
    assert ert.seconds_per_face > 0
    assert tiny_ert.train_seconds > 0
    assert tiny_ert.resolved_options["cascade_depth"] == 6
    assert tiny_ert.resolved_options["num_threads"] == 1


def test_dlib_ert_save_load_identical(dots, tiny_ert, tmp_path):
    path = str(tmp_path / "sub" / "ert.dat")
    tiny_ert.save(path)
    loaded = DlibERT.load(path)
    assert list(tmp_path.glob("sub/*.tmp")) == []
    images = [face.image for face in dots[:8]]
    boxes = np.stack([face.box for face in dots[:8]])
    np.testing.assert_array_equal(loaded.predict_batch(images, boxes),
                                  tiny_ert.predict_batch(images, boxes))


def test_dlib_ert_fit_matches_train(dots, tiny_ert):
    peer = peers.make_peer("dlib_ert", options=TINY_ERT, num_threads=1).fit(dots)
    np.testing.assert_array_equal(peer.predict(dots[0].image, dots[0].box),
                                  tiny_ert.predict(dots[0].image, dots[0].box))


def test_dlib_ert_needs_a_predictor():
    with pytest.raises(RuntimeError, match="train/fit or load"):
        DlibERT().predict(np.zeros((8, 8, 3), np.uint8), np.array([0, 0, 4, 4]))


def test_mean_shape_exact_when_all_shapes_equal():
    normalised = np.array([[0.2, 0.3], [0.8, 0.3], [0.5, 0.6], [0.3, 0.8], [0.7, 0.8]])
    boxes = np.array([[0, 0, 10, 10], [5, 7, 45, 27], [-3, 2, 97, 202]], np.float32)
    faces = [(None, b[:2] + normalised * (b[2:] - b[:2]), b, "") for b in boxes]
    peer = MeanShape().fit(faces)
    np.testing.assert_allclose(peer.mean, normalised, atol=1e-6)
    result = evaluate_peer(peer, faces, "inter_pupil", CUHK_5)
    np.testing.assert_allclose(result.errors, 0.0, atol=1e-6)


def test_mean_shape_hand_case(tmp_path):
    box = np.array([0, 0, 10, 20], np.float32)
    faces = [(None, np.array([[0.0, 0.0], [10.0, 20.0]]), box, ""),
             (None, np.array([[10.0, 20.0], [0.0, 20.0]]), box, "")]
    peer = MeanShape().fit(faces)
    np.testing.assert_allclose(peer.mean, [[0.5, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(peer.predict(None, [100, 50, 104, 58]), [[102, 54], [102, 58]])
    peer.save(str(tmp_path / "mean.npy"))
    np.testing.assert_array_equal(MeanShape.load(str(tmp_path / "mean.npy")).mean, peer.mean)


def test_mean_shape_rejects_empty_box():
    with pytest.raises(ValueError, match="no area"):
        MeanShape().fit([(None, np.zeros((5, 2)), np.array([3, 3, 3, 9]), "")])


def test_registry():
    assert {"dlib_ert", "mean_shape", "mtcnn", "lbf"} <= set(peers.PEERS)
    assert peers.make_peer("mean_shape").name == "mean_shape"
    assert peers.make_peer("dlib_ert").name == "dlib_ert"
    with pytest.raises(ValueError, match="unknown peer"):
        peers.make_peer("sdm")


def test_mtcnn_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mtcnn", None)
    with pytest.raises(ImportError, match="pip install mtcnn"):
        peers.MTCNNPeer()


def test_iterate_faces_reads_synthetic_records(tmp_path):
    synthetic = pytest.importorskip("common.synthetic")
    synthetic.write_synthetic_tfrecords(str(tmp_path), 5, {"train": 4}, seed=3,
                                        progress=False)
    faces = list(iterate_faces(str(tmp_path), "train"))
    assert len(faces) == 4
    assert len(list(iterate_faces(str(tmp_path), "train", limit=2))) == 2
    for k, (image, landmarks, box, source) in enumerate(faces):
        expected = synthetic.generate_face(k, seed=3)
        assert image.dtype == np.uint8 and image.shape == expected.image.shape
        np.testing.assert_allclose(landmarks, expected.landmarks5, atol=1e-4)
        np.testing.assert_allclose(box, expected.box, atol=1e-4)
        assert source == f"synthetic:seed=3:index={k}"
        # Stored as JPEG: close to, not equal to, the generated pixels.
        assert np.abs(image.astype(float) - expected.image).mean() < 4.0
    with pytest.raises(FileNotFoundError):
        next(iterate_faces(str(tmp_path), "val"))


def test_dlib_ert_on_synthetic_faces():
    synthetic = pytest.importorskip("common.synthetic")
    faces = [Face(f.image, f.landmarks68, f.box, str(i))
             for i, f in enumerate(synthetic.generate_face(i, seed=1) for i in range(40))]
    ert = evaluate_peer(DlibERT.train(faces, TINY_ERT, num_threads=1), faces, "inter_ocular")
    mean = evaluate_peer(MeanShape().fit(faces), faces, "inter_ocular")
    assert ert.errors.mean() < 0.35 * mean.errors.mean()


@pytest.fixture(scope="module")
def sun5_faces(shared_data):
    from common.images import load_image
    from common.readers import read_dataset

    records = read_dataset(str(shared_data / "sun5" / "trainImageList.txt")).records[:3]
    return [Face(load_image(r.image_path), r.landmarks, r.box, r.image_path) for r in records]


@pytest.mark.realdata
@pytest.mark.skipif(importlib.util.find_spec("mtcnn") is None, reason="mtcnn not installed")
@pytest.mark.parametrize("mode", ["detect", "box"])
def test_mtcnn_on_real_faces(sun5_faces, mode):
    peer = peers.MTCNNPeer(mode=mode)
    result = evaluate_peer(peer, sun5_faces, "inter_ocular")
    assert peer.misses == 0
    for points, box in zip(result.predictions, result.boxes):
        assert points.shape == (5, 2) and np.all(np.isfinite(points))
        assert fraction_inside(points, box) == 1.0
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # image-left first
    assert result.errors.max() < 0.15


@pytest.mark.realdata
@pytest.mark.skipif(importlib.util.find_spec("mtcnn") is None, reason="mtcnn not installed")
def test_mtcnn_onet_on_its_own_boxes_reproduces_detector(sun5_faces):
    from mtcnn.utils.images import load_images_batch, standarize_batch

    peer = peers.MTCNNPeer(mode="detect")
    image = sun5_faces[0].image
    images, shapes, _ = standarize_batch(load_images_batch([image]), normalize=True)
    proposals = None
    for stage in peer.detector.stages[:2]:  # PNet, RNet
        proposals = stage(bboxes_batch=proposals, images_normalized=images,
                          images_oshapes=shapes)
    _, _, detected = peer.detect(image)
    ours = peer.onet_on_boxes(image, proposals[:, 1:5])
    for points in detected:
        assert np.abs(ours - points[None]).max(axis=(1, 2)).min() < 1e-3


def test_every_registered_peer_is_a_peer():
    import functools

    from experiments.peers.base import Peer

    for name, factory in peers.PEERS.items():
        cls = factory.func if isinstance(factory, functools.partial) else factory
        assert issubclass(cls, Peer), name
    assert [peers.PEERS[n] for n in ("dlib_ert", "mean_shape", "lbf")] == [
        DlibERT, MeanShape, peers.LBFPeer]
    assert peers.PEERS["mtcnn_box"].keywords == {"mode": "box"}


def test_every_peer_module_is_imported():
    import pkgutil

    names = {m.name for m in pkgutil.iter_modules(peers.__path__)}
    assert {"dlib_ert", "mean_shape", "mtcnn_peer", "lbf"} <= names
    assert all(f"experiments.peers.{name}" in sys.modules for name in names)


def test_register_peer_adds_a_module_peer_and_rejects_a_second(monkeypatch):
    from experiments.peers.base import Peer
    from experiments.peers.registry import register_peer

    monkeypatch.setattr(peers.registry, "PEERS", dict(peers.PEERS))

    @register_peer("toy_center")
    class Center(Peer):
        name = "toy_center"

        def predict(self, image, box):
            box = np.asarray(box, np.float32)
            return (0.5 * (box[:2] + box[2:]))[None]

    peer = peers.registry.make_peer("toy_center")
    assert isinstance(peer, Center) and "toy_center" not in peers.PEERS
    np.testing.assert_array_equal(peer.predict_batch([None, None], [[0, 0, 2, 4], [2, 2, 4, 4]]),
                                  [[[1, 2]], [[3, 3]]])
    assert peer.describe() == {"name": "toy_center", "class": "Center", "scheme": None,
                               "trainable": False}
    assert register_peer("toy_center", Center) is Center  # the same factory again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_peer("toy_center", MeanShape)


def test_describe_names_scheme_and_training():
    assert MeanShape().describe() == {"name": "mean_shape", "class": "MeanShape",
                                      "scheme": None, "trainable": True}
    assert peers.MTCNNPeer.scheme is CUHK_5 and not peers.MTCNNPeer.trainable
    assert DlibERT.trainable and peers.LBFPeer.trainable
