"""Tests of the synthetic face generator (``common.synthetic``)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from common import synthetic
from common.schemes import CUHK_5, IBUG_68
from common.synthetic import (
    SyntheticFaceConfig,
    ensure_synthetic_dataset,
    generate_face,
    split_index_offset,
    to_five_points,
    write_synthetic_tfrecords,
)

SMALL = SyntheticFaceConfig(image_size=64)
CLEAN = SyntheticFaceConfig(occlusion_prob=0.0, eye_closed_prob=0.0, blur_prob=0.0,
                            max_noise_sigma=0.0, jpeg_prob=0.0)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks68, b.landmarks68)
    np.testing.assert_array_equal(a.box, b.box)
    np.testing.assert_array_equal(a.visible, b.visible)


def test_same_seed_and_index_give_the_same_face_in_any_order():
    first = generate_face(5, seed=3)
    generate_face(6, seed=3)
    _assert_same(first, generate_face(5, seed=3))


def test_other_index_or_seed_gives_another_face():
    face = generate_face(5, seed=3)
    for other in (generate_face(6, seed=3), generate_face(5, seed=4)):
        assert not np.array_equal(face.image, other.image)
        assert np.abs(face.landmarks68 - other.landmarks68).max() > 1.0


def test_negative_index_is_rejected():
    with pytest.raises(ValueError, match="index"):
        generate_face(-1)


def test_too_small_image_is_rejected():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticFaceConfig(image_size=16)


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_dtypes_and_finite_values(size):
    config = SyntheticFaceConfig(image_size=size)
    for index in range(10):
        face = generate_face(index, config=config)
        assert face.image.shape == (size, size, 3) and face.image.dtype == np.uint8
        assert face.landmarks68.shape == (68, 2) and face.landmarks68.dtype == np.float32
        assert face.landmarks5.shape == (5, 2) and face.landmarks5.dtype == np.float32
        assert face.box.shape == (4,) and face.box.dtype == np.float32
        assert face.visible.shape == (68,) and face.visible.dtype == bool
        assert face.pose.shape == (3,)
        assert np.all(np.isfinite(face.landmarks68)) and np.all(np.isfinite(face.box))
        assert face.box[0] < face.box[2] and face.box[1] < face.box[3]


def test_pose_stays_within_the_configured_range():
    config = SyntheticFaceConfig(max_yaw=10.0, max_pitch=5.0, max_roll=2.0)
    poses = np.stack([generate_face(i, config=config).pose for i in range(20)])
    assert np.all(np.abs(poses) <= [10.0, 5.0, 2.0])


def test_landmarks_lie_inside_the_image_and_near_the_box():
    faces = [generate_face(i, config=SMALL) for i in range(40)]
    inside = [np.all((f.landmarks68 >= -0.5) & (f.landmarks68 <= 63.5)) for f in faces]
    assert np.mean(inside) >= 0.9
    for f in faces:
        left, t, r, b = f.box
        side = r - left
        assert abs((r - left) - (b - t)) < 1e-3  # dlib-like boxes are square
        # The box mimics a detector: it covers most of the face, with some slack.
        lm = f.landmarks68
        near = ((lm[:, 0] > left - 0.25 * side) & (lm[:, 0] < r + 0.25 * side)
                & (lm[:, 1] > t - 0.25 * side) & (lm[:, 1] < b + 0.25 * side))
        assert near.all()
        centre = lm.mean(axis=0)
        assert left < centre[0] < r and t < centre[1] < b


def test_visible_is_false_only_under_occluders_or_outside_the_image():
    size = SMALL.image_size
    no_occluder = SyntheticFaceConfig(image_size=size, occlusion_prob=0.0)
    for i in range(20):
        face = generate_face(i, config=no_occluder)
        inside = np.all((face.landmarks68 >= -0.5) & (face.landmarks68 <= size - 0.5), axis=1)
        np.testing.assert_array_equal(face.visible, inside)
    always = SyntheticFaceConfig(image_size=size, occlusion_prob=1.0)
    hidden = [(~generate_face(i, config=always).visible).sum() for i in range(20)]
    assert sum(h > 0 for h in hidden) >= 10
    assert max(hidden) < 68


def test_occluders_do_not_move_the_landmarks():
    a = generate_face(7, config=SyntheticFaceConfig(occlusion_prob=0.0))
    b = generate_face(7, config=SyntheticFaceConfig(occlusion_prob=1.0))
    np.testing.assert_array_equal(a.landmarks68, b.landmarks68)
    np.testing.assert_array_equal(a.box, b.box)
    assert not np.array_equal(a.image, b.image)


def test_to_five_points_matches_the_schemes():
    face = generate_face(3)
    five = to_five_points(face.landmarks68)
    left, right = IBUG_68.pupils(face.landmarks68)
    np.testing.assert_allclose(five[0], left, atol=1e-4)
    np.testing.assert_allclose(five[1], right, atol=1e-4)
    names = IBUG_68.point_names
    np.testing.assert_allclose(five[2], face.landmarks68[names.index("nose_bridge_3")])
    np.testing.assert_allclose(five[3], face.landmarks68[names.index("outer_lip_0")])
    np.testing.assert_allclose(five[4], face.landmarks68[names.index("outer_lip_6")])
    np.testing.assert_allclose(face.landmarks5, five)
    assert five.shape == (CUHK_5.num_points, 2)
    batch = np.stack([face.landmarks68] * 3)[None]
    assert to_five_points(batch).shape == (1, 3, 5, 2)
    with pytest.raises(ValueError, match="68"):
        to_five_points(np.zeros((5, 2)))


def test_left_points_are_on_the_image_left():
    """'Left' is the image left for both schemes (at small yaw and roll)."""
    config = SyntheticFaceConfig(max_yaw=10.0, max_roll=10.0)
    for i in range(10):
        face = generate_face(i, config=config)
        lm, five = face.landmarks68, face.landmarks5
        assert five[0, 0] < five[2, 0] < five[1, 0]
        assert five[3, 0] < five[4, 0]
        assert lm[0, 0] < lm[8, 0] < lm[16, 0]
        assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]


def test_pupils_are_drawn_at_the_eye_centres():
    """The pixel at each eye centre (the pupil) is darker than the cheek."""
    darker, pupils, cheeks = [], [], []
    for i in range(40):
        face = generate_face(i, config=CLEAN)
        grey = face.image.astype(np.float64).mean(axis=-1)
        lm = face.landmarks68
        cx, cy = np.round(0.5 * (lm[31] + lm[2])).astype(int)
        cheek = grey[cy - 1:cy + 2, cx - 1:cx + 2].mean()
        for eye in IBUG_68.pupils(lm):
            x, y = np.round(eye).astype(int)
            darker.append(grey[y, x] < cheek)
            pupils.append(grey[y, x])
            cheeks.append(cheek)
    assert np.mean(darker) >= 0.9
    assert np.mean(pupils) < 0.5 * np.mean(cheeks)


def test_mouth_interior_is_dark_when_open():
    config = SyntheticFaceConfig(mouth_open_prob=1.0, occlusion_prob=0.0, jpeg_prob=0.0,
                                 blur_prob=0.0, max_noise_sigma=0.0)
    dark = 0
    for i in range(20):
        face = generate_face(i, config=config)
        grey = face.image.astype(np.float64).mean(axis=-1)
        lm = face.landmarks68
        # Just above the inner lower lip (below the teeth) lies the dark mouth.
        x, y = np.round(0.25 * lm[62] + 0.75 * lm[66]).astype(int)
        lips = [grey[tuple(np.round(0.5 * (lm[a] + lm[b]))[::-1].astype(int))]
                for a, b in ((51, 62), (57, 66))]
        dark += grey[y, x] < min(lips)
    assert dark >= 14


def _face_box_frame(faces):
    """Landmarks relative to the square crop of the face box (what a model sees)."""
    lm = np.stack([f.landmarks68 for f in faces]).astype(np.float64)
    boxes = np.stack([f.box for f in faces]).astype(np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    return lm, centre, side


def test_mean_shape_is_a_poor_predictor():
    """Predicting the training mean shape (in the face box frame) fails: NME > 10%."""
    train = [generate_face(i, config=SMALL) for i in range(150)]
    test = [generate_face(split_index_offset("test") + i, config=SMALL) for i in range(80)]
    lm, centre, side = _face_box_frame(train)
    mean_shape = ((lm - centre[:, None]) / side[:, None, None]).mean(axis=0)
    lm, centre, side = _face_box_frame(test)
    predicted = centre[:, None] + mean_shape[None] * side[:, None, None]
    left, right = IBUG_68.pupils(lm)
    nme = np.linalg.norm(predicted - lm, axis=-1).mean(axis=-1) / np.linalg.norm(left - right,
                                                                              axis=-1)
    assert nme.mean() > 0.10, nme.mean()


def test_split_offsets_are_disjoint():
    offsets = {split_index_offset(s) for s in ("train", "val", "test", "extra", "common")}
    assert len(offsets) == 5
    with pytest.raises(ValueError, match="split"):
        write_synthetic_tfrecords("/nonexistent", 68, {"a-b": 1}, progress=False)


@pytest.mark.parametrize("num_points", [68, 5])
def test_tfrecord_round_trip(tmp_path, num_points):
    import tensorflow as tf

    from common.tfrecord import find_shards, parse_face

    written = write_synthetic_tfrecords(str(tmp_path), num_points, {"train": 3, "val": 2},
                                        seed=1, config=SMALL, num_shards=2, progress=False)
    assert sorted(written) == ["train", "val"] and len(written["train"]) == 2
    assert find_shards(str(tmp_path), "val") == sorted(written["val"])
    sources = {}
    for split, count in (("train", 3), ("val", 2)):
        dataset = tf.data.TFRecordDataset(written[split]).map(
            lambda s: parse_face(s, num_landmarks=num_points))
        records = list(dataset.as_numpy_iterator())
        assert len(records) == count
        for record in records:
            source = record["source_path"].decode()
            seed, index = (int(part.split("=")[1]) for part in source.split(":")[1:])
            assert seed == 1
            face = generate_face(index, seed=1, config=SMALL)
            expected = face.landmarks68 if num_points == 68 else face.landmarks5
            np.testing.assert_array_equal(record["landmarks"], expected)
            np.testing.assert_array_equal(record["box"], face.box)
            assert record["image"].shape == (64, 64, 3)
            # JPEG at quality 95: close to the generated image.
            assert np.abs(record["image"].astype(int) - face.image).mean() < 4.0
            assert record["split"].decode() == split
            assert record["box_source"].decode() == "given"
            sources[source] = split
    assert len(sources) == 5  # different splits never share an index


def test_ensure_synthetic_dataset_generates_once(tmp_path, monkeypatch):
    from common.tfrecord import find_shards

    splits = {"train": 2, "val": 1}
    path = ensure_synthetic_dataset(5, splits, seed=2, cache_dir=str(tmp_path))
    assert os.path.basename(path).startswith("synthetic-5-")
    assert len(find_shards(path, "train")) == 1 and len(find_shards(path, "val")) == 1
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no temp folders left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached data set")

    monkeypatch.setattr(synthetic, "write_synthetic_tfrecords", fail)
    assert ensure_synthetic_dataset(5, splits, seed=2, cache_dir=str(tmp_path)) == path
    monkeypatch.setenv("FACE_ALIGN_CACHE", str(tmp_path))
    assert ensure_synthetic_dataset(5, splits, seed=2) == path
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_synthetic_dataset(5, splits, seed=3)  # other parameters: another folder
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # failed run cleaned up


@pytest.mark.slow
def test_command_line(tmp_path, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "common.synthetic", f"--output={tmp_path}", "--num_points=5",
         "--train=4", "--val=2", "--test=0", "--image_size=48"],
        check=False, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "faces/s" in result.stdout
    names = sorted(os.listdir(tmp_path))
    assert names == ["synthetic-train-00000-of-00001.tfrecord",
                     "synthetic-val-00000-of-00001.tfrecord"]
