"""Serving parity on real faces: SavedModel and TFLite against the Keras model.

``tests/test_export.py`` checks the exporters on noise images and toy models; here
the real models (a tiny MSRRN, a tiny CCNN cascade, random-init weights, which is
enough for parity) are exported and run on real photos with their real boxes:
16 random faces (fixed seed) of ``../shared/data/ytf68`` (68 points, boxes from
dlib, as ``python -m common.prepare`` finds them) and of ``../shared/data/sun5``
(CUHK list, 5 points, the authors' boxes), converted with ``common.prepare`` into
TFRecords under ``tmp_path`` and read back with ``common.export.parity_faces``
(images of different sizes padded into one batch).

In a fresh Python process (``common.export.check_parity``, ``check_tflite_parity``,
``ccnn_tf.export.export_cascade``):

* ``serving_default(images, boxes)`` must match ``preprocess_faces`` + model +
  ``crop_to_image`` in this process;
* the TFLite model of ``serving_cropped`` must match the model on the same crops,

within the exporters' documented tolerances: MSRRN 1e-4 (pixels and normalised
units, ``check_parity``'s default, ``msrrn_tf.export --atol``) for both; CCNN
``ccnn_tf.export.TOLERANCES`` (normalised crop units, and the same fraction of the
smallest crop side in pixels).

Skipped when the real data is absent.
"""

from __future__ import annotations

import csv
import inspect

import keras
import numpy as np
import pytest
from test_msrrn_cli import TINY_CONFIG

from ccnn_tf import export as ccnn_export
from ccnn_tf.config import CCNNConfig
from ccnn_tf.model import build_ccnn
from common import export
from common.prepare import prepare_dataset
from msrrn_tf.config import MSRRNConfig
from msrrn_tf.model import build_msrrn
from msrrn_tf.training import training_mean_shape

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

NUM_FACES = 16
SEED = 0
SPLIT = "test"

MSRRN_ATOL = inspect.signature(export.check_parity).parameters["atol"].default
"""The SavedModel/TFLite tolerance of the MSRRN export (1e-4 px and normalised)."""


def _convert(lines: list[str], header: str | None, list_path, out_dir, format: str) -> str:
    """Writes ``lines`` (image paths made absolute) as a list file and converts it."""
    list_path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + lines))
    summary = prepare_dataset(str(list_path), str(out_dir), format=format, split_by="none",
                              split_name=SPLIT, progress=False)
    assert summary.written == {SPLIT: len(lines)} and not summary.skipped
    return str(out_dir)


def _sample(rows: list, seed: int = SEED) -> list:
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), NUM_FACES, replace=False))]


@pytest.fixture(scope="module")
def ytf68(shared_data, tmp_path_factory) -> str:
    folder = shared_data / "ytf68"
    with open(folder / "landmarks.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    lines = [",".join([str(folder / "images" / row[0]), *row[1:]]) for row in _sample(rows)]
    tmp = tmp_path_factory.mktemp("ytf68")
    return _convert(lines, ",".join(header), tmp / "landmarks.csv", tmp / "records", "csv")


@pytest.fixture(scope="module")
def sun5(shared_data, tmp_path_factory) -> str:
    folder = shared_data / "sun5"
    rows = (folder / "trainImageList.txt").read_text().splitlines()
    lines = [" ".join([str(folder / line.split()[0]), *line.split()[1:]])
             for line in _sample([r for r in rows if r.strip()])]
    tmp = tmp_path_factory.mktemp("sun5")
    return _convert(lines, None, tmp / "list.txt", tmp / "records", "cuhk")


def _check_real_faces(images: np.ndarray, boxes: np.ndarray) -> None:
    """The faces are real photos of several sizes (padded into one batch)."""
    assert len(images) == NUM_FACES and images.dtype == np.uint8
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert images.std() > 20  # not blank


def test_msrrn_savedmodel_and_tflite_match_keras_on_real_faces(ytf68, tmp_path):
    images, boxes = export.parity_faces(ytf68, SPLIT, NUM_FACES)
    _check_real_faces(images, boxes)
    config = MSRRNConfig.preset("small", **TINY_CONFIG)
    keras.utils.set_random_seed(SEED)
    model = build_msrrn(config)
    # The mean shape of these faces, so that the stages sample patches on the face.
    model.set_mean_shape(training_mean_shape(ytf68, SPLIT, margin=config.margin,
                                             num_landmarks=config.num_landmarks))

    saved = export.export_saved_model(model, str(tmp_path / "msrrn" / "1"),
                                      sizes=model.input_sizes, margin=config.margin,
                                      num_landmarks=config.num_landmarks)
    report = export.check_parity(saved, model, images, boxes, atol=MSRRN_ATOL)
    assert report["num_faces"] == NUM_FACES
    assert {"landmarks", "cropped/landmarks", "cropped/stage_3"} <= set(report)
    print(f"MSRRN SavedModel max abs diff: {report}")

    tflite = export.export_tflite(saved, str(tmp_path / "msrrn.tflite"))
    report = export.check_tflite_parity(tflite, model, images, boxes, margin=config.margin,
                                        atol=MSRRN_ATOL)
    assert report["num_faces"] == NUM_FACES
    print(f"MSRRN TFLite max abs diff: {report}")


def test_ccnn_savedmodel_and_tflite_match_keras_on_real_faces(sun5, tmp_path):
    _check_real_faces(*export.parity_faces(sun5, SPLIT, NUM_FACES))
    keras.utils.set_random_seed(SEED)
    model = build_ccnn(CCNNConfig.preset("tiny"))
    # export_cascade checks every file in a fresh process and raises ParityError
    # beyond ccnn_export.TOLERANCES.
    # The dynamic-range quantised TFLite is left out: its tolerance (0.01) is set
    # for trained cascades, and random-init weights quantise worse.
    report = ccnn_export.export_cascade(model, str(tmp_path / "ccnn"), data=sun5,
                                        split=SPLIT, num_faces=NUM_FACES,
                                        quantization=None)
    assert set(report["parity"]) == {"saved_model", "tflite_float32"}
    for name, parity in report["parity"].items():
        assert parity["num_faces"] == NUM_FACES, name
        assert parity["tolerance_normalised"] == ccnn_export.TOLERANCES[name]
        assert parity["max_abs_diff_normalised"] <= parity["tolerance_normalised"], name
        assert parity["max_abs_diff_pixels"] <= parity["tolerance_pixels"], name
        print(f"CCNN {name}: max abs diff {parity['max_abs_diff_normalised']:.2e} "
              f"(normalised), {parity['max_abs_diff_pixels']:.2e} px")
