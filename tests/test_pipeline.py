"""Tests of common.pipeline on tiny TFRecords written in a temporary folder."""

import os

import numpy as np
import pytest
import tensorflow as tf
import test_geometry
from test_geometry import draw_dots

from common import geometry
from common.pipeline import AugmentConfig, make_dataset, parse_data_spec, shuffle_buffer_size
from common.schemes import CUHK_5
from common.tfrecord import ShardWriter, find_shards, serialize_face

NUM_FACES = 6
SIZES = (32, 64)


def find_dot(crop, expected_xy, radius=3):
    """The brightest pixel (x, y) near ``expected_xy`` and the index of its dot colour."""
    found, colour = test_geometry.find_dot(crop, expected_xy, radius)
    return found, test_geometry.closest_colour(colour)


def write_split(folder, split, images, landmarks, boxes, num_shards=2):
    with ShardWriter(str(folder), "test", split, num_shards=num_shards) as writer:
        for i, (image, points, box) in enumerate(zip(images, landmarks, boxes)):
            png = tf.io.encode_png(image).numpy()
            writer.write(serialize_face(png, image.shape[0], image.shape[1], points, box,
                                        split=split, source_path=f"face{i}.png"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Six 5-point faces: coloured dots on black at the landmarks, plus grey faces."""
    folder = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    unit = np.array([[-0.2, -0.15], [0.2, -0.15], [0.0, 0.05], [-0.15, 0.25], [0.17, 0.22]])
    images, landmarks, boxes = [], [], []
    for i in range(NUM_FACES):
        height, width = 120 + 10 * i, 140
        side = rng.uniform(80, 120)
        centre = np.array([width / 2, height / 2]) + rng.uniform(-5, 5, 2)
        points = np.round(centre + unit * side).astype(np.float32)
        images.append(draw_dots(height, width, points, sigma=3.0))
        landmarks.append(points)
        boxes.append(geometry.landmark_box(points).numpy())
    write_split(folder, "train", images, landmarks, boxes)
    grey = [np.full(im.shape, 128, np.uint8) for im in images]
    write_split(folder, "grey", grey, landmarks, boxes, num_shards=1)
    return folder


def collect(dataset, count):
    """The first ``count`` examples of a batched dataset, unbatched to NumPy."""
    return list(dataset.unbatch().take(count).as_numpy_iterator())


def test_eval_shapes_dtypes_and_meta(data_dir):
    ds = make_dataset(data_dir, "train", sizes=SIZES, num_landmarks=5, margin=0.2,
                      batch_size=4, training=False, with_meta=True)
    batches = list(ds.as_numpy_iterator())
    assert [b[1]["landmarks"].shape[0] for b in batches] == [4, 2]  # no drop in eval
    inputs, targets, meta = batches[0]
    assert sorted(inputs) == ["image_32", "image_64"]
    for size in SIZES:
        assert inputs[f"image_{size}"].shape == (4, size, size, 3)
        assert inputs[f"image_{size}"].dtype == np.float32
        assert 0.0 <= inputs[f"image_{size}"].min() and inputs[f"image_{size}"].max() <= 255.0
    assert targets["landmarks"].shape == (4, 5, 2) and targets["landmarks"].dtype == np.float32
    assert meta["crop_box"].shape == (4, 4) and meta["box"].shape == (4, 4)
    assert meta["landmarks_px"].shape == (4, 5, 2)
    assert meta["image_size"].dtype == np.int32 and meta["image_size"].shape == (4, 2)
    assert meta["source_path"][0].decode().startswith("face")
    spec = ds.element_spec
    assert spec[0]["image_64"].shape.as_list() == [None, 64, 64, 3]
    assert spec[1]["landmarks"].shape.as_list() == [None, 5, 2]


def test_eval_is_deterministic_and_uses_preprocess_faces(data_dir):
    kwargs = {"sizes": SIZES, "num_landmarks": 5, "margin": 0.2, "batch_size": 3,
              "training": False, "with_meta": True}
    first = collect(make_dataset(data_dir, "train", **kwargs), NUM_FACES)
    second = collect(make_dataset(data_dir, "train", **kwargs), NUM_FACES)
    for a, b in zip(first, second):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    # The same crops as preprocess_faces on the decoded record.
    shards = sorted(str(p) for p in data_dir.glob("*-train-*.tfrecord"))
    raw = next(iter(tf.data.TFRecordDataset(shards[0]).take(1)))
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "box": tf.io.FixedLenFeature([4], tf.float32)}
    example = tf.io.parse_single_example(raw, features)
    image = tf.io.decode_png(example["image/encoded"], channels=3)[None]
    inputs, crop_boxes = geometry.preprocess_faces(image, example["box"][None], SIZES, 0.2)
    inputs0, targets0, meta0 = first[0]
    np.testing.assert_array_equal(inputs0["image_64"], inputs["image_64"].numpy()[0])
    np.testing.assert_array_equal(meta0["crop_box"], crop_boxes.numpy()[0])
    # Targets map back to the pixel landmarks.
    back = geometry.crop_to_image(targets0["landmarks"][None], meta0["crop_box"][None])
    np.testing.assert_allclose(back.numpy()[0], meta0["landmarks_px"], atol=1e-3)


def test_dots_found_through_augmented_pipeline(data_dir):
    augment = AugmentConfig(rotation_deg=(-30, 30), flip_prob=0.5, box_shift=0.05,
                            box_scale=0.1)
    ds = make_dataset(data_dir, "train", sizes=SIZES, num_landmarks=5, margin=0.2,
                      batch_size=4, training=True, augment=augment, seed=3)
    flipped = set()
    for inputs, targets in collect(ds, 2 * NUM_FACES):
        for size in SIZES:
            crop = inputs[f"image_{size}"]
            ids = []
            for point in targets["landmarks"]:
                expected = point * size - 0.5
                found, dot_id = find_dot(crop, expected, radius=2 if size < 64 else 3)
                assert np.linalg.norm(found - expected) <= 1.0, (size, found, expected)
                ids.append(dot_id)
            # Either the identity or the flip permutation (left/right swapped).
            assert ids in ([0, 1, 2, 3, 4], list(CUHK_5.flip_permutation)), ids
            flipped.add(ids[0] == 1)
    assert flipped == {True, False}


def test_box_perturbation_moves_landmarks_with_the_box(data_dir):
    # Asymmetric ranges (everything right, up and mostly larger): the dots drawn at the
    # landmarks are found in the crop of the perturbed box within 1 px of the returned
    # normalised landmarks, and the crop box moved as the ranges say.
    augment = AugmentConfig(box_shift_x=(0.10, 0.20), box_shift_y=(-0.20, -0.10),
                            box_scale_range=(0.8, 1.4))
    margin = 0.2
    ds = make_dataset(data_dir, "train", sizes=SIZES, num_landmarks=5, margin=margin,
                      batch_size=3, training=True, augment=augment, seed=5,
                      with_meta=True)
    scales = []
    for inputs, targets, meta in collect(ds, 3 * NUM_FACES):
        box, crop_box = meta["box"], meta["crop_box"]
        w, h = box[2] - box[0], box[3] - box[1]
        dx = ((crop_box[0] + crop_box[2]) - (box[0] + box[2])) / 2 / w
        dy = ((crop_box[1] + crop_box[3]) - (box[1] + box[3])) / 2 / h
        scale = (crop_box[2] - crop_box[0]) / (max(w, h) * (1 + 2 * margin))
        assert 0.10 - 1e-4 <= dx <= 0.20 + 1e-4 and -0.20 - 1e-4 <= dy <= -0.10 + 1e-4
        assert 0.8 - 1e-4 <= scale <= 1.4 + 1e-4
        scales.append(scale)
        unperturbed = geometry.image_to_crop(
            meta["landmarks_px"][None],
            geometry.crop_boxes_from_face_boxes(box[None], margin)).numpy()[0]
        assert np.abs(targets["landmarks"] - unperturbed).max() > 0.03  # it did move
        for size in SIZES:
            # 32-px crops of boxes up to x1.4 put the nose and mouth dots ~3 px apart, so
            # they are searched within 2 px (as the rotation test above does).
            test_geometry.assert_dots_found(inputs[f"image_{size}"], targets["landmarks"],
                                            range(5), tol=1.0, radius=2 if size < 64 else 3)
    assert np.ptp(scales) > 0.2  # drawn, not fixed


def test_augment_config_box_ranges():
    # The symmetric shorthands of earlier configs expand to explicit ranges.
    old = AugmentConfig(box_shift=0.05, box_scale=0.1).box_ranges
    assert old.shift_x == old.shift_y == (-0.05, 0.05)
    assert old.scale == pytest.approx((0.9, 1.1))
    assert old.aspect == (1.0, 1.0)
    explicit = AugmentConfig(box_shift_x=[-0.15, 0.17], box_shift_y=(-0.15, 0.19),
                             box_scale_range=(0.83, 1.37), box_aspect_range=(0.9, 1.2))
    ranges = explicit.box_ranges
    assert (ranges.shift_x, ranges.shift_y) == ((-0.15, 0.17), (-0.15, 0.19))
    assert (ranges.scale, ranges.aspect) == ((0.83, 1.37), (0.9, 1.2))
    assert not explicit.is_identity
    assert not AugmentConfig(box_aspect_range=(0.9, 1.1)).is_identity
    assert AugmentConfig().box_ranges.is_identity
    # An augmentation dict of an earlier run (no explicit ranges) still loads.
    assert AugmentConfig(**{"box_scale": 0.0, "box_shift": 0.0, "flip_prob": 0.5}).box_ranges \
        .is_identity
    with pytest.raises(ValueError, match="not both"):
        AugmentConfig(box_shift=0.05, box_shift_x=(-0.1, 0.1))
    with pytest.raises(ValueError, match="not both"):
        AugmentConfig(box_scale=0.1, box_scale_range=(0.9, 1.2))
    for bad in ({"box_shift_x": (0.2, 0.1)}, {"box_scale_range": (0.0, 1.2)},
                {"box_aspect_range": (1.0,)}, {"box_shift_y": (-1.5, 0.0)}):
        with pytest.raises(ValueError, match="box ranges"):
            AugmentConfig(**bad)


def test_training_augmentation_varies_and_is_reproducible(data_dir):
    augment = AugmentConfig(rotation_deg=(-15, 15), flip_prob=0.5, noise_sigma=0.5,
                            brightness=10.0, contrast=(0.8, 1.2), box_shift=0.05,
                            box_scale=0.05)
    kwargs = {"sizes": (16,), "num_landmarks": 5, "margin": 0.2, "batch_size": 2,
              "training": True, "augment": augment, "with_meta": True}
    run_a = collect(make_dataset(data_dir, "train", seed=7, **kwargs), 2 * NUM_FACES)
    run_b = collect(make_dataset(data_dir, "train", seed=7, **kwargs), 2 * NUM_FACES)
    for a, b in zip(run_a, run_b):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    run_c = collect(make_dataset(data_dir, "train", seed=8, **kwargs), 2 * NUM_FACES)
    assert not all(np.array_equal(a[0]["image_16"], c[0]["image_16"])
                   for a, c in zip(run_a, run_c))
    # Two epochs of one seed: every face is seen twice, augmented differently.
    by_face = {}
    for _, targets, meta in run_a:
        by_face.setdefault(meta["source_path"], []).append(targets["landmarks"])
    assert len(by_face) == NUM_FACES
    for views in by_face.values():
        assert len(views) == 2 and not np.allclose(views[0], views[1])


def test_training_defaults_drop_remainder_and_shuffle(data_dir):
    ds = make_dataset(data_dir, "train", sizes=(16,), num_landmarks=5, margin=0.2,
                      batch_size=4, training=True, repeat=False, seed=1, with_meta=True)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 1 and batches[0][1]["landmarks"].shape == (4, 5, 2)
    assert ds.element_spec[0]["image_16"].shape.as_list() == [4, 16, 16, 3]
    # Without augmentation, training crops are the evaluation crops.
    evals = {m["source_path"]: i["image_16"] for i, _, m in collect(
        make_dataset(data_dir, "train", sizes=(16,), num_landmarks=5, margin=0.2,
                     batch_size=6, training=False, with_meta=True), NUM_FACES)}
    inputs, _, meta = batches[0]
    for image, path in zip(inputs["image_16"], meta["source_path"]):
        np.testing.assert_array_equal(image, evals[path])


def test_photometric_augmentation_statistics(data_dir):
    kwargs = {"sizes": (32,), "num_landmarks": 5, "margin": 0.0, "batch_size": NUM_FACES,
              "training": True, "repeat": False, "seed": 5, "drop_remainder": False}
    clean = collect(make_dataset(data_dir, "grey", **kwargs), NUM_FACES)
    assert all(np.all(x[0]["image_32"] == 128.0) for x in clean)  # faces inside the image
    noisy = collect(make_dataset(data_dir, "grey", augment=AugmentConfig(noise_sigma=4.0),
                                 **kwargs), NUM_FACES)
    residual = np.stack([x[0]["image_32"] for x in noisy]) - 128.0
    assert residual.std() == pytest.approx(4.0, rel=0.1) and abs(residual.mean()) < 0.2
    shifted = collect(make_dataset(data_dir, "grey", augment=AugmentConfig(brightness=20.0),
                                   **kwargs), NUM_FACES)
    deltas = np.array([x[0]["image_32"].mean() - 128.0 for x in shifted])
    assert np.all(np.abs(deltas) <= 20.0) and deltas.std() > 1.0
    for x in shifted:  # one delta per face
        np.testing.assert_allclose(x[0]["image_32"], x[0]["image_32"][0, 0, 0], atol=1e-3)


def test_multiple_inputs_and_errors(data_dir):
    shards = sorted(str(p) for p in data_dir.glob("*-train-*.tfrecord"))
    ds = make_dataset(shards, "train", sizes=(8,), num_landmarks=5, margin=0.1,
                      batch_size=10, training=False)
    assert next(iter(ds))[1]["landmarks"].shape[0] == NUM_FACES
    ds = make_dataset(str(data_dir / "*-grey-*.tfrecord"), "grey", sizes=(8,),
                      num_landmarks=5, margin=0.1, batch_size=10, training=False)
    assert next(iter(ds))[1]["landmarks"].shape[0] == NUM_FACES
    with pytest.raises(FileNotFoundError):
        make_dataset(data_dir, "nope", sizes=(8,), num_landmarks=5, margin=0.1,
                     batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        next(iter(make_dataset(data_dir, "train", sizes=(8,), num_landmarks=68, margin=0.1,
                               batch_size=2, training=False)))
    with pytest.raises(ValueError, match="flip_permutation"):
        make_dataset(data_dir, "train", sizes=(8,), num_landmarks=5, margin=0.1, batch_size=2,
                     training=True, augment=AugmentConfig(flip_prob=0.5),
                     flip_permutation=(0, 1))


@pytest.mark.parametrize("kwargs", [
    {"rotation_deg": (10, -10)}, {"flip_prob": 1.5}, {"noise_sigma": -1.0},
    {"contrast": (1.2, 0.8)}, {"box_scale": 1.0}, {"brightness": -1.0},
])
def test_augment_config_validation(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_augment_config_defaults_are_identity():
    assert AugmentConfig().is_identity
    assert AugmentConfig(rotation_choices_deg=[0.0]).is_identity
    assert not AugmentConfig(rotation_deg=(-15, 12)).is_identity
    assert not AugmentConfig(rotation_choices_deg=(0, -15, 12)).is_identity
    assert AugmentConfig(rotation_deg=[-15, 15]) == AugmentConfig(rotation_deg=(-15.0, 15.0))


def test_discrete_rotation_choices(data_dir):
    # One face, many draws: the target moves by one of three rigid rotations only.
    augment = AugmentConfig(rotation_choices_deg=(0, -15, 12))
    ds = make_dataset(data_dir, "train", sizes=(8,), num_landmarks=5, margin=0.2,
                      batch_size=NUM_FACES, training=True, augment=augment, seed=2,
                      shuffle_buffer=1, with_meta=True)
    angles = set()
    for _, targets, meta in collect(ds, 4 * NUM_FACES):
        norm = geometry.image_to_crop(meta["landmarks_px"][None], meta["crop_box"][None])
        for angle in (0, -15, 12):
            expected = geometry.transform_crop_landmarks(norm, [np.deg2rad(angle)], None)
            if np.allclose(expected.numpy()[0], targets["landmarks"], atol=1e-4):
                angles.add(angle)
                break
        else:
            raise AssertionError("rotation is not one of the choices")
    assert angles == {0, -15, 12}


def test_sharded_input_pipelines_partition_the_data(data_dir):
    def paths(num, index, split="train"):
        ds = make_dataset(data_dir, split, sizes=(8,), num_landmarks=5, margin=0.2,
                          batch_size=1, training=False, with_meta=True, shard=(num, index))
        return [m["source_path"] for _, _, m in collect(ds, NUM_FACES)]

    everything = sorted(f"face{i}.png".encode() for i in range(NUM_FACES))
    for split in ("train", "grey"):  # by file (2 shards), by record (1 shard)
        parts = [paths(2, i, split) for i in range(2)]
        assert sorted(p for part in parts for p in part) == everything
        assert all(parts)
    with pytest.raises(ValueError, match="shard"):
        paths(2, 2)


def _ordered_split(folder, count, num_shards=1):
    """``count`` tiny faces in source order, face i's box left edge = i."""
    image = np.zeros((16, 16, 3), np.uint8)
    png = tf.io.encode_png(image).numpy()
    points = np.full((5, 2), 8.0, np.float32)
    with ShardWriter(str(folder), "ordered", "train", num_shards=num_shards) as writer:
        for i in range(count):
            writer.write(serialize_face(png, 16, 16, points, [i, 0, i + 8, 8],
                                        split="train", source_path=f"face{i}.png"))
    return find_shards(str(folder), "train")


def test_shuffle_buffer_size_whole_split_or_memory_bound(tmp_path):
    files = _ordered_split(tmp_path, 30, num_shards=2)
    assert shuffle_buffer_size(files) == 30  # the whole split fits
    per_record = sum(os.path.getsize(f) for f in files) / 30
    assert shuffle_buffer_size(files, memory_bytes=int(10.5 * per_record),
                               minimum=1) in (10, 11)
    assert shuffle_buffer_size(files, memory_bytes=int(10.5 * per_record),
                               minimum=20) == 20
    assert shuffle_buffer_size([]) == 1000


def test_default_training_shuffle_mixes_an_ordered_split(tmp_path):
    """Faces written in source order reach training mixed over the whole split."""
    _ordered_split(tmp_path, 200)
    dataset = make_dataset(str(tmp_path), "train", sizes=(8,), num_landmarks=5,
                           margin=0.0, batch_size=20, training=True, seed=3, with_meta=True)
    _, _, meta = next(iter(dataset))
    first = meta["box"].numpy()[:, 0]
    # A buffer of all 200 records draws the first batch from the whole file (a
    # 20-record buffer could only reach the first 39 records).
    assert first.max() > 100, first
    small = make_dataset(str(tmp_path), "train", sizes=(8,), num_landmarks=5, margin=0.0,
                         batch_size=20, training=True, seed=3, with_meta=True,
                         shuffle_buffer=20)
    assert next(iter(small))[2]["box"].numpy()[:, 0].max() < 40


def test_weighted_data_sets_mix_in_the_given_proportions(data_dir, tmp_path):
    """Two data sets drawn 3:1 whatever their sizes (6 and 2 faces)."""
    small = tmp_path / "small"
    images = [draw_dots(100, 100, np.array([[50.0, 50.0]] * 5, np.float32), sigma=3.0)] * 2
    points = [np.array([[40, 40], [60, 40], [50, 50], [42, 60], [58, 60]], np.float32)] * 2
    boxes = [geometry.landmark_box(p).numpy() for p in points]
    with ShardWriter(str(small), "small", "train", num_shards=1) as writer:
        for i, (image, p, box) in enumerate(zip(images, points, boxes)):
            writer.write(serialize_face(tf.io.encode_png(image).numpy(), 100, 100, p, box,
                                        split="train", source_path=f"small{i}.png"))
    folders, weights = parse_data_spec(f"{data_dir}:3,{small}:1")
    assert folders == [str(data_dir), str(small)] and weights == [3.0, 1.0]
    ds = make_dataset(folders, "train", sizes=(16,), num_landmarks=5, margin=0.2,
                      batch_size=50, training=True, seed=5, with_meta=True, weights=weights)
    paths = [m["source_path"] for _, _, m in collect(ds, 2000)]
    share = np.mean([p.startswith(b"small") for p in paths])
    assert abs(share - 0.25) < 0.04, share  # binomial sd at n=2000: ~0.01
    # without weights the two folders are one data set: 2 of 8 faces
    ds = make_dataset(folders, "train", sizes=(16,), num_landmarks=5, margin=0.2,
                      batch_size=8, training=True, repeat=False, seed=5, with_meta=True)
    assert sorted(p[:5] for _, _, m in collect(ds, 8) for p in [m["source_path"]]).count(
        b"small") == 2
    with pytest.raises(ValueError, match="weights"):
        make_dataset(folders, "train", sizes=(16,), num_landmarks=5, margin=0.2,
                     batch_size=2, training=True, weights=[1.0])


def test_parse_data_spec_errors():
    assert parse_data_spec("a,b") == (["a", "b"], None)
    assert parse_data_spec(["a:0.5", " b:0.5 "]) == (["a", "b"], [0.5, 0.5])
    with pytest.raises(ValueError, match="for none"):
        parse_data_spec("a:1,b")
    with pytest.raises(ValueError, match="bad weight"):
        parse_data_spec("a:x")
    with pytest.raises(ValueError, match=">= 0"):
        parse_data_spec("a:-1")
