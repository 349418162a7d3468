"""Box-robustness evaluation: box sources, offsets and the per-source table."""

import numpy as np
import pytest

from common import box_robustness as br
from common import geometry


def _face(rng, centre=(60.0, 64.0), size=40.0):
    """A fake 68-point face: random points inside a square, a plain image."""
    points = np.asarray(centre, np.float32) + rng.uniform(-0.5, 0.5, (68, 2)) * size
    points = points.astype(np.float32)
    box = np.asarray(geometry.landmark_box(points), np.float32)
    image = np.full((128, 128, 3), 100, np.uint8)
    return image, points, box, "fake.jpg"


def test_jitter_box_stays_within_its_fraction():
    rng = np.random.default_rng(0)
    box = np.array([10.0, 20.0, 50.0, 80.0], np.float32)
    for _ in range(200):
        out = br.jitter_box(box, 0.05, rng)
        offsets = br.box_offsets(out[None], box[None])
        assert abs(offsets["dx"][0]) <= 0.05 + 1e-6
        assert abs(offsets["dy"][0]) <= 0.05 + 1e-6
        assert 0.95 - 1e-6 <= offsets["scale"][0] <= 1.05 + 1e-6
        assert offsets["aspect"][0] == pytest.approx(60.0 / 40.0, rel=1e-5)
        assert offsets["side"][0] == pytest.approx(offsets["scale"][0], rel=1e-5)


def test_landmark_square_box_is_the_extent_square():
    points = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 40.0]], np.float32)
    box = br.landmark_square_box(points)
    np.testing.assert_allclose(box, [0.0, 20.0, 40.0, 60.0], atol=1e-5)


def test_five_point_landmark_square_is_scaled_to_the_face():
    # eyes (30, 40), (70, 40), nose (50, 60), mouth (35, 80), (65, 80): extent 40 x 40
    points = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    box = br.landmark_square_box(points)
    side, cy = 1.78 * 40.0, 60.0 - 0.02 * 40.0
    np.testing.assert_allclose(box, [50 - side / 2, cy - side / 2, 50 + side / 2,
                                     cy + side / 2], atol=1e-4)
    # batched: the same box per face
    np.testing.assert_allclose(br.landmark_square_box(np.stack([points, points])),
                               np.stack([box, box]), atol=1e-5)


def test_box_offsets_against_hand_values():
    ref = np.array([[0.0, 0.0, 100.0, 100.0]])
    box = np.array([[10.0, -5.0, 130.0, 115.0]])  # centre (70, 55), 120 x 120
    off = br.box_offsets(box, ref)
    assert off["dx"][0] == pytest.approx(0.20)
    assert off["dy"][0] == pytest.approx(0.05)
    assert off["scale"][0] == pytest.approx(1.2)
    assert off["side"][0] == pytest.approx(1.2)
    # NaN rows (a detector that missed the face) are left out
    off = br.box_offsets(np.array([[np.nan] * 4, [0, 0, 50, 50]]), np.array([[0, 0, 1, 1]] * 2))
    assert off["dx"].shape == (1,)


def test_source_boxes_with_fake_detectors():
    rng = np.random.default_rng(1)
    faces = [_face(rng), _face(rng)]
    hit = faces[0][2] + np.array([1, -1, 1, 2], np.float32)

    def dlib_finder(image):
        # finds face 0 only: the first call gets a matching box, the second a far one
        dlib_finder.calls += 1
        return [(hit, 1.0)] if dlib_finder.calls == 1 else [(hit + 500.0, 1.0)]
    dlib_finder.calls = 0

    boxes = br.source_boxes(faces, ["stored", "landmark_square", "dlib", "jitter_5"],
                            seed=3, dlib_finder=dlib_finder)
    np.testing.assert_allclose(boxes["stored"], np.stack([f[2] for f in faces]))
    np.testing.assert_allclose(boxes["dlib"][0], hit)
    assert np.all(np.isnan(boxes["dlib"][1]))
    again = br.source_boxes(faces, ["jitter_5"], seed=3)
    np.testing.assert_array_equal(again["jitter_5"], boxes["jitter_5"])  # seeded
    with pytest.raises(ValueError, match="unknown box source"):
        br.source_boxes(faces, ["nope"])


def _mean_shape_in_box(shape_unit):
    """A box-relative method: a fixed shape in [0, 1]^2 of the box (box-sensitive)."""
    def predict(image, boxes):
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        size = (b[:, 2:] - b[:, :2])[:, None]
        return b[:, None, :2] + shape_unit[None] * size
    return predict


def test_score_under_boxes_ranks_a_box_sensitive_method():
    rng = np.random.default_rng(2)
    faces = [_face(rng, centre=(64 + rng.uniform(-5, 5), 64), size=40) for _ in range(6)]
    lookup = {id(f[0]): f[1] for f in faces}
    # the box-blind oracle: the true points whatever the box
    def oracle(image, boxes):
        return np.repeat(lookup[id(image)][None], len(boxes), axis=0)

    shape_unit = np.stack([(f[1] - f[2][:2]) / (f[2][2:] - f[2][:2]) for f in faces]).mean(0)
    boxes = br.source_boxes(faces, ["stored", "landmark_square", "jitter_10"], seed=0)
    boxes["landmark_square"][2] = np.nan  # a source without a box for face 2
    table = br.score_under_boxes({"oracle": oracle, "box_shape": _mean_shape_in_box(shape_unit)},
                                 faces, boxes, kind="inter_pupil")
    assert table.num_faces == 5 and table.missing["landmark_square"] == 1
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in table.nme["oracle"].values())
    sensitive = table.nme["box_shape"]
    assert sensitive["landmark_square"] > sensitive["stored"]  # other convention, more error
    assert table.ratio["box_shape"] == pytest.approx(
        sensitive["landmark_square"] / sensitive["stored"])  # jitter_10 is not bounded
    text = table.markdown()
    assert "| box_shape |" in text and "5 faces" in text and "landmark_square 1" in text
    with pytest.raises(ValueError, match="no face has a box"):
        br.score_under_boxes({"oracle": oracle}, faces[:1],
                             {"stored": np.full((1, 4), np.nan)}, kind="inter_pupil")


def test_model_box_predictor_maps_crop_outputs_to_pixels():
    keras = pytest.importorskip("keras")
    shape = np.random.default_rng(4).uniform(0.2, 0.8, (68, 2)).astype(np.float32)
    inputs = keras.Input((16, 16, 3), name="image_16")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    zero = keras.layers.Lambda(lambda t: 0.0 * t[:, :1])(pooled)
    out = keras.layers.Lambda(lambda z: z[:, :, None] + shape[None])(zero)
    model = keras.Model({"image_16": inputs}, {"landmarks": out})
    predict = br.model_box_predictor(model, [16], margin=0.25)
    box = np.array([[20.0, 30.0, 60.0, 70.0]], np.float32)
    got = predict(np.zeros((100, 100, 3), np.uint8), box)
    crop = np.asarray(geometry.crop_boxes_from_face_boxes(box, 0.25))
    expected = crop[:, None, :2] + shape[None] * (crop[:, None, 2:] - crop[:, None, :2])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def synthetic_folders(tmp_path_factory):
    from common.synthetic import ensure_synthetic_dataset

    cache = str(tmp_path_factory.mktemp("box_cache"))
    return {n: ensure_synthetic_dataset(n, {"train": 4, "val": 6}, seed=0, cache_dir=cache)
            for n in (5, 68)}


@pytest.mark.parametrize("family", ["msrrn", "ccnn"])
def test_evaluators_box_table_matches_the_comparisons_section(family, synthetic_folders,
                                                              tmp_path):
    """Each evaluator's table (``evaluate_box_robustness``) is compare_real's section for
    the same model, faces and sources, read through the landmark-model contract."""
    import json

    import keras

    from common import landmark_model
    from common.multidata import iterate_faces

    keras.utils.set_random_seed(0)
    if family == "msrrn":
        from msrrn_tf.config import MSRRNConfig
        from msrrn_tf.model import build_msrrn

        model, kind = build_msrrn(MSRRNConfig.preset("small", scales=(16, 32, 64), patch_size=8)), \
            "inter_pupil"
        data = synthetic_folders[68]
    else:
        from ccnn_tf.config import CCNNConfig
        from ccnn_tf.model import build_ccnn

        model, kind = build_ccnn(CCNNConfig.preset("tiny")), "box_width"
        data = synthetic_folders[5]
    sources = ("stored", "landmark_square", "jitter_5")
    section = br.evaluate_box_robustness(model, data, "val", str(tmp_path), kind=kind,
                                         sources=sources, num_faces=5, label="ours")
    table = section["table"]
    assert table.sources == list(sources) and table.num_faces == 5
    with open(tmp_path / "box_robustness.json") as f:
        assert json.load(f)["nme"] == table.nme
    assert (tmp_path / "box_robustness.md").read_text().startswith("| method |")
    faces = list(iterate_faces(data, "val"))
    predictor = br.model_box_predictor(model, landmark_model.input_sizes_of(model),
                                       landmark_model.margin_of(model))
    reference = br.robustness_section({"ours": predictor}, faces, kind=kind,
                                      sources=sources, num_faces=5)["table"]
    np.testing.assert_allclose([table.nme["ours"][s] for s in sources],
                               [reference.nme["ours"][s] for s in sources], rtol=1e-6)
    assert table.ratio["ours"] == pytest.approx(reference.ratio["ours"], rel=1e-6)
    # Another box convention moves an untrained model's error: the columns differ.
    assert table.nme["ours"]["stored"] != table.nme["ours"]["landmark_square"]


def test_evaluate_box_robustness_needs_the_contract(synthetic_folders, tmp_path):
    def bare(inputs, training=False):
        return inputs

    with pytest.raises(ValueError, match="input sizes or crop margin"):
        br.evaluate_box_robustness(bare, synthetic_folders[68], "val", str(tmp_path),
                                   kind="inter_pupil", num_faces=2)
