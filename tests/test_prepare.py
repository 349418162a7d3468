"""Tests of common.boxes and common.prepare (conversion to TFRecords)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from common import boxes, prepare, tfrecord
from common.records import DataError, FaceRecord

FIVE_POINTS = np.array([[20.0, 22.0], [40.0, 22.0], [30.0, 32.0], [22.0, 42.0], [38.0, 42.0]])


def _write_image(path, seed=0, size=(56, 64)):
    """A small noise image (no face for dlib to find), JPEG or PNG by extension."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return str(path)


def _cuhk_dataset(tmp_path, malformed=True):
    """A CUHK list: 4 good faces, a corrupt image (line 3), a malformed line (5)."""
    images = tmp_path / "imgs"
    images.mkdir()
    for i, name in enumerate(["a.jpg", "b.png", "d.jpg", "e.png"]):
        _write_image(images / name, seed=i)
    (images / "c.jpg").write_bytes(b"this is not an image")
    lines = []
    for i, name in enumerate(["a.jpg", "b.png", "c.jpg", "d.jpg", "bad", "e.png"]):
        points = FIVE_POINTS + i
        coords = " ".join(f"{v:.2f}" for v in points.reshape(-1))
        if name == "bad":
            if malformed:
                lines.append("imgs/a.jpg 10 50 12")  # too few fields
        else:
            lines.append(f"imgs/{name} {10 + i} {50 + i} {12 + i} {52 + i} {coords}")
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _csv_dataset(tmp_path, names, num_points=5):
    """A landmark CSV (no boxes) over noise images named ``names``."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    header = "image," + ",".join(f"x{i},y{i}" for i in range(num_points))
    rows = [header]
    rng = np.random.default_rng(1)
    for i, name in enumerate(names):
        _write_image(images / name, seed=100 + i)
        points = rng.uniform(15, 45, size=(num_points, 2))
        rows.append(name + "," + ",".join(f"{v:.3f}" for v in points.reshape(-1)))
    path = tmp_path / "landmarks.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _read_all(files):
    faces = []
    for serialized in tf.data.TFRecordDataset(files):
        face = tfrecord.parse_face(serialized)
        faces.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in face.items()})
    return faces


def _outputs(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


class _NoFaces:
    """A detector that finds nothing and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return []


# --- boxes ---------------------------------------------------------------------------

def test_dlib_rect_to_box_is_inclusive():
    import dlib

    rect = dlib.rectangle(10, 20, 29, 39)  # 20 x 20 pixels, right/bottom inclusive
    box = boxes.dlib_rect_to_box(rect)
    np.testing.assert_array_equal(box, [9.5, 19.5, 29.5, 39.5])
    assert box[2] - box[0] == rect.width()


def test_choose_box_prefers_matching_detection():
    face = boxes.landmark_box(FIVE_POINTS).numpy()
    far = face + 200.0
    near = face + np.array([1, -1, 2, 1], np.float32)
    choice = boxes.choose_box(FIVE_POINTS, [far, near])
    assert choice.source == "dlib"
    np.testing.assert_allclose(choice.box, near)
    assert choice.iou >= boxes.DEFAULT_MIN_IOU
    assert choice.num_detections == 2
    fallback = boxes.choose_box(FIVE_POINTS, [far])
    assert fallback.source == "landmarks"
    np.testing.assert_allclose(fallback.box, face)


def test_choose_box_rejects_detection_without_landmarks():
    left_part = np.array([0, 0, 25, 60], np.float32)  # holds 2 of the 5 points
    assert boxes.fraction_inside(FIVE_POINTS, left_part) == 0.4
    assert boxes.choose_box(FIVE_POINTS, [left_part], min_iou=0.0).source == "landmarks"
    assert boxes.choose_box(FIVE_POINTS, [left_part], min_iou=0.0,
                            min_inside=0.4).source == "dlib"


def test_assign_boxes_uses_landmarks_on_non_face_and_reuses_cache(tmp_path, monkeypatch):
    records = [FaceRecord(_write_image(tmp_path / "noise.png"), FIVE_POINTS),
               FaceRecord(str(tmp_path / "given.png"), FIVE_POINTS, box=[1, 2, 30, 40])]
    cache = str(tmp_path / "cache.json")
    stats = boxes.assign_boxes(records, cache_path=cache, progress=False)  # real dlib
    assert stats.sources == ["landmarks", "given"]
    assert stats.counts == {"given": 1, "dlib": 0, "landmarks": 1}
    assert stats.detector_calls == 1
    np.testing.assert_allclose(records[0].box, boxes.landmark_box(FIVE_POINTS).numpy())
    assert os.path.exists(cache)

    def no_detector(*args, **kwargs):
        raise AssertionError("the detector must not run on a cached re-run")

    monkeypatch.setattr(boxes, "DlibBoxFinder", no_detector)
    again = [FaceRecord(records[0].image_path, FIVE_POINTS)]
    stats = boxes.assign_boxes(again, images_loader=no_detector, cache_path=cache,
                               progress=False)
    assert stats.cache_hits == 1 and stats.detector_calls == 0
    np.testing.assert_array_equal(again[0].box, records[0].box)


def test_box_cache_ignored_for_other_settings(tmp_path):
    path = str(tmp_path / "cache.json")
    record = FaceRecord("x.png", FIVE_POINTS)
    cache = boxes.BoxCache(path, {"upsample": 1})
    cache.put(record.image_path, record.landmarks, boxes.BoxChoice(np.ones(4), "landmarks"))
    cache.save()
    assert boxes.BoxCache(path, {"upsample": 1}).get("x.png", FIVE_POINTS) is not None
    assert boxes.BoxCache(path, {"upsample": 2}).get("x.png", FIVE_POINTS) is None
    # Another landmark set is another key.
    assert boxes.BoxCache(path, {"upsample": 1}).get("x.png", FIVE_POINTS + 1) is None


# --- splits --------------------------------------------------------------------------

def test_identity_of():
    assert prepare.identity_of("/d/images/Luis_Fonsi_21.jpg") == "Luis_Fonsi"
    assert prepare.identity_of("lfw_5590/Aaron_Eckhart_0001.jpg") == "Aaron_Eckhart"
    assert prepare.identity_of("Raja_Zafar-ul-Haq_22.jpg") == "Raja_Zafar-ul-Haq"
    assert prepare.identity_of("face.png") == "face"


def _named_records(names):
    return [FaceRecord(f"/x/{name}", FIVE_POINTS) for name in names]


def test_identity_split_never_mixes_identities():
    rng = np.random.default_rng(0)
    names = [f"Person_{p}_{k:02d}.jpg" for p in range(40) for k in range(rng.integers(1, 12))]
    records = _named_records(names)
    splits = prepare.split_records(records, "identity", val_fraction=0.2, seed=3)
    by_identity = {}
    for record, split in zip(records, splits):
        by_identity.setdefault(prepare.identity_of(record.image_path), set()).add(split)
    assert all(len(s) == 1 for s in by_identity.values())
    val = splits.count("val")
    assert 0.2 * len(records) <= val < 0.2 * len(records) + 12
    assert splits == prepare.split_records(records, "identity", val_fraction=0.2, seed=3)
    assert splits != prepare.split_records(records, "identity", val_fraction=0.2, seed=4)


def test_random_split_and_reader_splits():
    records = _named_records([f"img_{i}.jpg" for i in range(50)])
    splits = prepare.split_records(records, "random", val_fraction=0.1, seed=0)
    assert splits.count("val") == 5
    assert splits == prepare.split_records(records, "random", val_fraction=0.1, seed=0)
    assert prepare.split_records(records, "none", split_name="test") == ["test"] * 50
    records[0].split, records[1].split = "train", "challenging"
    assert prepare.split_records(records, "random")[:2] == ["train", "challenging"]


@pytest.mark.parametrize("split_by", ["identity", "random"])
def test_tuning_split_is_carved_from_train_only(split_by):
    rng = np.random.default_rng(1)
    names = [f"Person_{p}_{k:02d}.jpg" for p in range(60) for k in range(rng.integers(1, 9))]
    records = _named_records(names)
    plain = prepare.split_records(records, split_by, val_fraction=0.1, seed=5)
    tuned = prepare.split_records(records, split_by, val_fraction=0.1, seed=5,
                                  tune_fraction=0.25)
    # val is untouched; every other face is in exactly one tuning part.
    assert [s == "val" for s in tuned] == [s == "val" for s in plain]
    assert set(tuned) == {"val", "tune_train", "tune_val"}
    train = plain.count("train")
    tune_val = tuned.count("tune_val")
    assert 0.25 * train - 1 <= tune_val < 0.25 * train + 9
    if split_by == "identity":
        parts = {}
        for record, split in zip(records, tuned):
            parts.setdefault(prepare.identity_of(record.image_path), set()).add(split)
        assert all(len(p) == 1 for p in parts.values())
    # Reader-given splits: only "train" is carved.
    records[0].split = "challenging"
    reader = prepare.split_records(records, split_by, tune_fraction=0.25)
    assert reader[0] == "challenging" and set(reader[1:]) == {"tune_train", "tune_val"}
    with pytest.raises(ValueError, match="tune_fraction"):
        prepare.split_records(records, "random", tune_fraction=1.0)
    with pytest.raises(ValueError, match="tune_fraction needs"):
        prepare.split_records(_named_records(names), "none", tune_fraction=0.1)


# --- conversion ----------------------------------------------------------------------

def test_prepare_cuhk_skip_counts_and_round_trip(tmp_path):
    out = str(tmp_path / "out")
    summary = prepare.prepare_dataset(_cuhk_dataset(tmp_path), out, on_error="skip",
                                      split_by="none", num_shards=2, progress=False)
    assert summary.format == "cuhk"
    assert summary.read == 6
    assert summary.written == {"train": 4}
    assert summary.num_written + len(summary.skipped) == summary.read
    reasons = dict(summary.skipped)
    list_path = os.path.join(str(tmp_path), "list.txt")
    assert "wrong number of fields" in reasons[f"{list_path}:5"]
    assert "c.jpg" in reasons[f"{list_path}:3"] and "image" in reasons[f"{list_path}:3"]
    assert summary.box_sources == {"given": 4, "dlib": 0, "landmarks": 0}
    assert "skipped 1" in summary.report()

    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["splits"] == {"train": 4} and meta["read"] == 6
    assert meta["num_landmarks"] == 5 and len(meta["skipped"]) == 2
    assert len((tmp_path / "out" / "skipped.txt").read_text().splitlines()) == 2

    files = tfrecord.find_shards(out, "train")
    assert len(files) == 2
    faces = sorted(_read_all(files), key=lambda f: f["source_path"])
    assert len(faces) == 4
    for face, i in zip(faces, [0, 1, 3, 5]):  # the good lines
        np.testing.assert_allclose(face["landmarks"], FIVE_POINTS + i, atol=1e-5)
        np.testing.assert_allclose(face["box"], [10 + i, 12 + i, 50 + i, 52 + i])
        assert face["box_source"] == b"given" and face["split"] == b"train"
        assert face["image"].shape == (56, 64, 3)


@pytest.mark.parametrize("malformed, message", [
    (True, r"list\.txt:5: wrong number of fields"),  # annotations are checked first
    (False, r"list\.txt:3: .*c\.jpg")])
def test_prepare_fail_names_line_and_leaves_no_output(tmp_path, malformed, message):
    list_path = _cuhk_dataset(tmp_path, malformed)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        prepare.prepare_dataset(list_path, str(out), on_error="fail", split_by="none",
                                progress=False)
    assert not [n for n in _outputs(out) if n.endswith((".tfrecord", ".tmp", "dataset.json"))]


def test_cli_fail_exits_non_zero(tmp_path, repo_root):
    list_path = _cuhk_dataset(tmp_path, malformed=False)
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "common.prepare", f"--input={list_path}", f"--output={out}",
         "--on_error=fail", "--split_by=none", "--noprogress"],
        check=False, cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode != 0
    assert f"{list_path}:3" in run.stderr and "c.jpg" in run.stderr
    assert not [n for n in _outputs(out) if n.endswith((".tfrecord", ".tmp", "dataset.json"))]


def test_prepare_csv_identity_split_landmark_boxes_and_cache(tmp_path, monkeypatch):
    names = [f"{who}_{k:02d}.jpg" for who in ("Ann_Lee", "Bo_Ma", "Cy_Po", "Di_Wu")
             for k in range(3)]
    csv_path = _csv_dataset(tmp_path, names)
    out = str(tmp_path / "out")
    finder = _NoFaces()
    first = prepare.prepare_dataset(csv_path, out, split_by="identity", val_fraction=0.25,
                                    progress=False, finder=finder)
    assert first.format == "csv"
    assert first.written == {"train": 9, "val": 3} or first.written == {"val": 3, "train": 9}
    assert first.box_sources["landmarks"] == 12 and finder.calls == 12
    faces = _read_all(tfrecord.find_shards(out))
    identities = {}
    for face in faces:
        image = face["source_path"].decode().split(" (")[0]
        identities.setdefault(prepare.identity_of(image), set()).add(face["split"])
        assert face["box_source"] == b"landmarks"
        np.testing.assert_allclose(face["box"], boxes.landmark_box(face["landmarks"]).numpy(),
                                   atol=1e-4)
    assert len(identities) == 4 and all(len(s) == 1 for s in identities.values())

    # Second run: boxes come from the cache, the detector is not even built.
    def no_detector(*args, **kwargs):
        raise AssertionError("the detector must not run on a cached re-run")

    monkeypatch.setattr(boxes, "DlibBoxFinder", no_detector)
    second = prepare.prepare_dataset(csv_path, out, split_by="identity", val_fraction=0.25,
                                     progress=False, num_shards=3)
    assert second.detector_calls == 0 and second.box_sources == first.box_sources
    # The old single-shard files are gone: only the new 3-shard (train) set is there.
    assert all("-of-00003" in f for f in tfrecord.find_shards(out, "train"))
    assert len(tfrecord.find_shards(out, "val")) == 3


def test_prepare_tuning_split_writes_parts_and_train_alias(tmp_path):
    from common.evaluation import available_splits, default_eval_splits

    names = [f"{who}_{k:02d}.jpg" for who in ("Ann_Lee", "Bo_Ma", "Cy_Po", "Di_Wu", "Ed_Ko")
             for k in range(2)]
    csv_path = _csv_dataset(tmp_path, names)
    out = str(tmp_path / "out")
    summary = prepare.prepare_dataset(csv_path, out, split_by="identity", val_fraction=0.2,
                                      tune_fraction=0.25, progress=False, finder=_NoFaces())
    assert summary.written == {"tune_train": 6, "tune_val": 2, "val": 2}
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["aliases"] == {"train": ["tune_train", "tune_val"]}
    assert meta["settings"]["tune_fraction"] == 0.25
    # "train" still reads every training face; default evaluation is val only.
    train = _read_all(tfrecord.find_shards(out, "train"))
    assert len(train) == 8 and {f["split"] for f in train} == {b"tune_train", b"tune_val"}
    assert "train" in available_splits(out)
    assert default_eval_splits(out) == ["val"]
    val = {f["source_path"] for f in _read_all(tfrecord.find_shards(out, "val"))}
    assert not val & {f["source_path"] for f in train}


def test_prepare_300w_tree_writes_reader_splits_and_full_alias(tmp_path):
    root = tmp_path / "300w"
    rng = np.random.default_rng(2)
    for sub, count in (("afw", 2), ("lfpw/testset", 1), ("ibug", 1)):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            _write_image(root / sub / f"img{i}.png", seed=i)
            points = rng.uniform(10, 50, size=(68, 2)) + 1.0
            body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
            (root / sub / f"img{i}.pts").write_text(
                f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    out = tmp_path / "out"
    summary = prepare.prepare_dataset(str(root), str(out), progress=False, finder=_NoFaces())
    assert summary.format == "300w"
    assert summary.written == {"train": 2, "common": 1, "challenging": 1}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["aliases"] == {"full": ["common", "challenging"]}
    assert meta["num_landmarks"] == 68


def _write_300w_faces(root, sub, names, rng):
    (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        _write_image(root / sub / f"{name}.jpg", seed=i)
        points = rng.uniform(10, 50, size=(68, 2)) + 1.0
        body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
        (root / sub / f"{name}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")


def _photo_faces(photos, seed):
    """300-W names: photo P with k faces gives P_1 .. P_k (k from 1 to 3)."""
    rng = np.random.default_rng(seed)
    return [f"{p}_{k}" for p in photos for k in range(1, int(rng.integers(1, 4)) + 1)]


@pytest.mark.parametrize("split_by", ["photo", "identity", "random"])
def test_prepare_partial_300w_tree_carves_val_and_tuning_split_by_photo(tmp_path, split_by):
    from common.evaluation import default_eval_splits

    root = tmp_path / "w300"
    rng = np.random.default_rng(4)
    afw = _photo_faces([f"{1000 + i}" for i in range(8)], seed=1)
    helen = _photo_faces([f"{2000 + i}" for i in range(8)], seed=2)
    _write_300w_faces(root, "afw", afw, rng)
    _write_300w_faces(root, "helen/trainset", helen, rng)
    out = str(tmp_path / "out")
    summary = prepare.prepare_dataset(str(root), out, split_by=split_by, val_fraction=0.25,
                                      tune_fraction=0.25, seed=1, progress=False,
                                      finder=_NoFaces())
    total = len(afw) + len(helen)
    assert set(summary.written) == {"val", "tune_train", "tune_val"}
    assert sum(summary.written.values()) == total
    assert 0.25 * total <= summary.written["val"] < 0.25 * total + 3  # whole photos
    by_photo = {}
    for split in summary.written:
        for face in _read_all(tfrecord.find_shards(out, split)):
            stem = os.path.basename(face["source_path"].decode().split(" (")[0])
            by_photo.setdefault(stem.rsplit("_", 1)[0], set()).add(split)
    assert len(by_photo) == 16
    assert all(len(splits) == 1 for splits in by_photo.values()), by_photo
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["aliases"] == {"train": ["tune_train", "tune_val"]}
    assert meta["settings"]["split_by_used"] == ("identity" if split_by == "identity"
                                                 else "photo")
    assert default_eval_splits(out) == ["val"]
    # The same command gives the same split.
    again = prepare.prepare_dataset(str(root), str(tmp_path / "again"), split_by=split_by,
                                    val_fraction=0.25, tune_fraction=0.25, seed=1,
                                    progress=False, finder=_NoFaces())
    assert again.written == summary.written


def test_prepare_300w_tree_with_a_test_subset_keeps_the_papers_splits(tmp_path):
    from common.evaluation import default_eval_splits

    root = tmp_path / "w300"
    rng = np.random.default_rng(5)
    _write_300w_faces(root, "afw", _photo_faces(["11", "12", "13"], seed=3), rng)
    _write_300w_faces(root, "helen/testset", ["21_1", "22_1"], rng)
    _write_300w_faces(root, "ibug", ["31_1"], rng)
    out = str(tmp_path / "out")
    summary = prepare.prepare_dataset(str(root), out, val_fraction=0.5, tune_fraction=0.4,
                                      progress=False, finder=_NoFaces())
    # No val carved (the reader gives evaluation splits); the tuning split still is.
    assert "val" not in summary.written and "train" not in summary.written
    assert summary.written["common"] == 2 and summary.written["challenging"] == 1
    assert set(summary.written) == {"tune_train", "tune_val", "common", "challenging"}
    assert default_eval_splits(out) == ["common", "challenging", "full"]


# --- real data -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.realdata
def test_dlib_finds_ytf68_faces(shared_data):
    import csv

    from common.images import load_image

    with open(shared_data / "ytf68" / "landmarks.csv") as f:
        rows = list(csv.reader(f))[1:6]
    finder = boxes.DlibBoxFinder(upsample=1)
    for row in rows:
        landmarks = np.array(row[1:], np.float32).reshape(68, 2)
        image = load_image(str(shared_data / "ytf68" / "images" / row[0]))
        detections = finder(image)
        assert detections, row[0]
        choice = boxes.choose_box(landmarks, [box for box, _ in detections])
        assert choice.source == "dlib", row[0]
        reference = boxes.landmark_box(landmarks).numpy()
        assert boxes.box_iou(choice.box, reference) >= boxes.DEFAULT_MIN_IOU


@pytest.mark.slow
@pytest.mark.realdata
def test_convert_sun5_first_50(shared_data, tmp_path):
    out = str(tmp_path / "sun5")
    summary = prepare.prepare_dataset(str(shared_data / "sun5" / "trainImageList.txt"), out,
                                      split_by="random", val_fraction=0.1,
                                      max_records=50, progress=False)
    assert summary.format == "cuhk" and summary.read == 50 and not summary.skipped
    assert summary.written == {"train": 45, "val": 5} or summary.written == {"val": 5, "train": 45}
    assert summary.box_sources["given"] == 50
    faces = _read_all(tfrecord.find_shards(out, "val"))
    assert len(faces) == 5 and all(f["landmarks"].shape == (5, 2) for f in faces)


# --- duplicates, splits by image, huge images (issue 18) ----------------------------

def _csv_with_duplicates(tmp_path):
    """6 faces on 4 images; line 4 repeats line 2 (same image and landmarks); line 6
    is another face of image a.jpg (other landmarks: not a repeat)."""
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]):
        _write_image(images / name, seed=i)
    points = FIVE_POINTS.reshape(-1)
    rows = ["image," + ",".join(f"x{i},y{i}" for i in range(5))]
    for name, shift in [("a.jpg", 0), ("b.jpg", 0), ("a.jpg", 0), ("c.jpg", 0),
                        ("a.jpg", 4), ("d.jpg", 0)]:
        rows.append(f"{name}," + ",".join(f"{v + shift:.3f}" for v in points))
    path = tmp_path / "landmarks.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_duplicate_faces_are_dropped_and_counted_or_fail(tmp_path):
    csv_path = _csv_with_duplicates(tmp_path)
    out = tmp_path / "out"
    summary = prepare.prepare_dataset(csv_path, str(out), split_by="random", val_fraction=0.3,
                                      progress=False, finder=_NoFaces())
    assert summary.duplicates == 1 and summary.num_written == 5 and summary.read == 6
    reason = f"duplicate face (same image and landmarks as {csv_path}:2)"
    assert summary.skipped == [(f"{csv_path}:4", reason)]
    assert "duplicate faces dropped: 1" in summary.report()
    meta = json.loads((out / prepare.DATASET_JSON).read_text())
    assert meta["duplicates"] == 1 and meta["written"] == 5
    faces = _read_all(tfrecord.find_shards(str(out)))
    keys = [(f["source_path"].decode().split(" (")[0], f["landmarks"].tobytes()) for f in faces]
    assert len(set(keys)) == len(keys) == 5
    with pytest.raises(DataError, match=r"landmarks\.csv:4: .*same face .*landmarks\.csv:2"):
        prepare.prepare_dataset(csv_path, str(tmp_path / "fail"), on_duplicate="fail",
                                progress=False, finder=_NoFaces())


def test_find_duplicates_compares_image_and_landmarks():
    records = [FaceRecord("/x/a.jpg", FIVE_POINTS), FaceRecord("/x/./a.jpg", FIVE_POINTS),
               FaceRecord("/x/a.jpg", FIVE_POINTS + 1), FaceRecord("/x/b.jpg", FIVE_POINTS),
               FaceRecord("/x/a.jpg", FIVE_POINTS + 1e-5)]
    assert prepare.find_duplicates(records) == [(1, 0), (4, 0)]


def test_random_split_keeps_the_faces_of_one_image_together():
    rng = np.random.default_rng(0)
    names = [f"photo_{p}.jpg" for p in range(30) for _ in range(rng.integers(1, 6))]
    records = [FaceRecord(f"/x/{name}", FIVE_POINTS + i) for i, name in enumerate(names)]
    for seed in range(10):
        splits = prepare.split_records(records, "random", val_fraction=0.2, seed=seed)
        by_image = {}
        for record, split in zip(records, splits):
            by_image.setdefault(record.image_path, set()).add(split)
        assert all(len(s) == 1 for s in by_image.values()), seed
        assert round(0.2 * len(records)) <= splits.count("val") < 0.2 * len(records) + 6


def test_detection_runs_on_a_downscaled_copy():
    seen = []

    def finder(image):
        seen.append(image.shape)
        return [(np.array([100.0, 200.0, 300.0, 400.0]), 1.0)]

    image = np.zeros((4000, 2000, 3), np.uint8)
    (box, score), = boxes.detect_faces(finder, image)
    assert seen == [(1600, 800, 3)] and score == 1.0
    np.testing.assert_allclose(box, (np.array([100, 200, 300, 400]) + 0.5) * 2.5 - 0.5)
    assert boxes.detect_faces(finder, image[:100, :100])[0][0][0] == 100.0  # small: as is


# The peak is read from /proc/self/status (VmHWM: this process's own address space), not
# from getrusage's ru_maxrss: Linux carries ru_maxrss over an exec, so a child started
# from a large pytest process reports the parent's resident size (2.8 GB in one CI run).
_CONVERT_AND_MEASURE = """
import sys
from common import prepare
prepare.prepare_dataset(sys.argv[1], sys.argv[2], split_by="none", progress=False)
with open("/proc/self/status") as status:
    print([line.split()[1] for line in status if line.startswith("VmHWM:")][0])  # KiB
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_one_huge_image_converts_in_little_memory(tmp_path, repo_root):
    """An 8000x8000 photo whose face needs the (real, dlib) detector: below 1.5 GB."""
    side = 8000
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    image = np.empty((side, side, 3), np.uint8)
    image[..., 0] = ramp[None, :]
    image[..., 1] = ramp[:, None]
    image[..., 2] = 128
    (tmp_path / "images").mkdir()
    assert cv2.imwrite(str(tmp_path / "images" / "huge.jpg"), image)
    del image
    points = FIVE_POINTS * 100 + 1000
    (tmp_path / "list.csv").write_text(
        "image," + ",".join(f"x{i},y{i}" for i in range(5)) + "\n"
        "huge.jpg," + ",".join(f"{v:.1f}" for v in points.reshape(-1)) + "\n")
    run = subprocess.run([sys.executable, "-c", _CONVERT_AND_MEASURE, str(tmp_path / "list.csv"),
                          str(tmp_path / "out")], check=False, cwd=repo_root,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                              "PYTHONPATH": str(repo_root)})
    assert run.returncode == 0, run.stderr[-2000:]
    peak_gb = int(run.stdout.split()[-1]) * 1024 / 1e9
    assert peak_gb < 1.5, f"peak memory {peak_gb:.2f} GB"


def test_prepare_reduces_68_points_to_cuhk5_with_the_same_faces_boxes_and_splits(tmp_path):
    from common.schemes import reduce_to_cuhk5

    names = [f"{who}_{k:02d}.jpg" for who in ("Ann_Lee", "Bo_Ma", "Cy_Po", "Di_Wu")
             for k in range(2)]
    csv_path = _csv_dataset(tmp_path, names, num_points=68)
    full, five = str(tmp_path / "full"), str(tmp_path / "five")
    kwargs = dict(split_by="identity", val_fraction=0.25, progress=False, box_cache=False)
    prepare.prepare_dataset(csv_path, full, finder=_NoFaces(), **kwargs)
    summary = prepare.prepare_dataset(csv_path, five, finder=_NoFaces(), points="cuhk5",
                                      **kwargs)
    assert summary.num_landmarks == 5
    meta = json.loads((tmp_path / "five" / "dataset.json").read_text())
    assert meta["num_landmarks"] == 5 and meta["settings"]["points"] == "cuhk5"
    by_source = {f["source_path"]: f for f in _read_all(tfrecord.find_shards(full))}
    reduced = _read_all(tfrecord.find_shards(five))
    assert len(reduced) == len(by_source) == 8
    for face in reduced:
        original = by_source[face["source_path"]]
        assert face["split"] == original["split"]
        np.testing.assert_array_equal(face["box"], original["box"])  # from the 68 points
        np.testing.assert_allclose(face["landmarks"],
                                   reduce_to_cuhk5(original["landmarks"]), atol=1e-5)
    # 5 points cannot be reduced to 68; an unknown scheme is named.
    (tmp_path / "c5").mkdir()
    with pytest.raises(ValueError, match="no reduction from cuhk5"):
        prepare.prepare_dataset(_csv_dataset(tmp_path / "c5", names), str(tmp_path / "x"),
                                finder=_NoFaces(), points="ibug68", **kwargs)
    with pytest.raises(ValueError, match="points must be one of"):
        prepare.prepare_dataset(csv_path, str(tmp_path / "y"), points="mtfl", **kwargs)
