"""A third model, added in this file alone (``docs/DESIGN.md``, "Adding a model").

``MeanShapeModel`` is the mean shape as a trainable Keras model (one bias per
coordinate, the pixels ignored). It satisfies ``common.landmark_model.LandmarkModel``
(``LandmarkModelMixin`` + ``num_landmarks``, ``input_sizes``, ``margin``,
``stage_names`` stored and serialised) and registers the family ``"toy_mean_shape"``.
Everything else is the shared code, unchanged: the pipeline that trains it, the
evaluation, the export with its fresh-process parity checks, ``common.api.Predictor``
on the export, ``experiments.comparison.ours.train_or_load_ours`` and the
box-robustness table.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from common import landmark_model
from common.landmark_model import LandmarkModelMixin, TrainedModel

pytestmark = pytest.mark.slow  # trains, exports (two fresh processes) and serves

FAMILY = "toy_mean_shape"
SIZE = 24
MARGIN = 0.15


@keras.saving.register_keras_serializable(package=FAMILY)
class MeanShapeModel(LandmarkModelMixin, keras.Model):
    """The mean shape in the crop, learnt: ``landmarks = bias`` for every face."""

    family = FAMILY

    def __init__(self, *, num_landmarks: int = 5, input_size: int = SIZE,
                 margin: float = MARGIN, **kwargs):
        image = keras.Input((input_size, input_size, 3), name=f"image_{input_size}")
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(image)
        ignored = keras.layers.Rescaling(0.0, name="ignore_pixels")(pooled)
        flat = keras.layers.Dense(2 * num_landmarks, kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(0.5),
                                  name="mean_shape")(ignored)
        landmarks = keras.layers.Reshape((num_landmarks, 2), name="landmarks")(flat)
        super().__init__(inputs={f"image_{input_size}": image},
                         outputs={"landmarks": landmarks}, **kwargs)
        self.num_landmarks = int(num_landmarks)
        self.input_sizes = (int(input_size),)
        self.margin = float(margin)
        self.stage_names = ()

    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "num_landmarks": self.num_landmarks, "input_size": self.input_sizes[0],
                "margin": self.margin}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> MeanShapeModel:
        return cls(**config)


def load(path: str, **options) -> MeanShapeModel:
    from common import evaluation

    return evaluation.load_model(path)


def train(data: str, *, run_dir: str, train_split: str = "train", steps: int | None = None,
          **unused) -> TrainedModel:
    """Trains, evaluates and exports through ``common.task.train_evaluate_export``."""
    from common import evaluation, export, task
    from common.pipeline import make_dataset

    def fit(run_dir: str) -> task.TaskTraining:
        model = MeanShapeModel()
        dataset = make_dataset(data, train_split, sizes=model.input_sizes,
                               num_landmarks=model.num_landmarks, margin=model.margin,
                               batch_size=16, training=True, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss={"landmarks": "mse"})
        model.fit(dataset, steps_per_epoch=steps or 80, epochs=1, verbose=0,
                  shuffle=False)
        os.makedirs(run_dir, exist_ok=True)
        model.save(os.path.join(run_dir, "model.keras"))
        return task.TaskTraining(model, info={"steps": steps or 80})

    def evaluate(model, spec, split, out_dir, trained):
        return evaluation.evaluate_outputs(evaluation.predict_model(model, spec.data, split),
                                           model.scheme, kinds=("box_width",))

    def export_fn(model, export_dir, *, data, split, info):
        return export.export_model(model, export_dir, data=data, split=split, num_faces=4,
                                   info=info)

    outcome = task.train_evaluate_export(task.FunctionTask(fit, evaluate, export_fn),
                                         data=data, run_dir=run_dir,
                                         train_split=train_split)
    return TrainedModel(outcome.training.model,
                        {"source": "trained", "run_dir": run_dir,
                         "evaluation": outcome.evaluation, "export": outcome.export,
                         "export_dir": outcome.export_dir})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The registered family, its synthetic data and a trained run."""
    from common.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("toy")
    data = ensure_synthetic_dataset(5, {"train": 96, "val": 12}, seed=0,
                                    cache_dir=str(root / "cache"), progress=False)
    with landmark_model.registered_family(FAMILY, num_landmarks=5, load=load,
                                          build=lambda config=None: MeanShapeModel(),
                                          train=train):
        run_dir = str(root / "run")
        trained = landmark_model.get_family(FAMILY).train(data, run_dir=run_dir)
        yield {"data": data, "run_dir": run_dir, "model": trained.model, "root": root,
               "info": trained.info}


def test_the_toy_model_satisfies_the_contract(toy):
    model = toy["model"]
    assert isinstance(model, landmark_model.LandmarkModel)
    assert landmark_model.family_of(model).name == FAMILY
    assert landmark_model.describe(model) == {
        "family": FAMILY, "num_landmarks": 5, "scheme": "cuhk5", "input_sizes": [SIZE],
        "margin": MARGIN, "stage_names": []}
    loaded = landmark_model.get_family(FAMILY).load(toy["run_dir"])
    assert loaded.margin == MARGIN and loaded.input_sizes == (SIZE,)
    np.testing.assert_array_equal(loaded.get_weights()[-1], model.get_weights()[-1])


def test_trained_evaluated_and_compared_through_the_shared_code(toy):
    from common import evaluation
    from experiments.comparison.ours import train_or_load_ours

    model, data = toy["model"], toy["data"]
    kinds = ("box_width",)
    trained = toy["info"]["evaluation"]  # common.task.train_evaluate_export's
    again = evaluation.evaluate_outputs(evaluation.predict_model(model, data, "val"),
                                        model.scheme, kinds=kinds)
    assert trained["outputs"] == again["outputs"]  # (its timing differs)
    untrained = evaluation.evaluate_outputs(
        evaluation.predict_model(MeanShapeModel(), data, "val"), model.scheme, kinds=kinds)
    error = trained["outputs"]["landmarks"]["box_width"]["mean"]
    assert error < 0.5 * untrained["outputs"]["landmarks"]["box_width"]["mean"]  # it learnt
    ours = train_or_load_ours(FAMILY, data, train_split="train", eval_split="val",
                              run_dir=toy["run_dir"], model_path=toy["run_dir"])
    assert (ours.sizes, ours.margin, ours.num_landmarks) == ((SIZE,), MARGIN, 5)


def test_exported_and_served_through_the_shared_code(toy):
    from common import box_robustness, evaluation
    from common.api import Predictor
    from experiments.peers.evaluate import iterate_faces

    model, data = toy["model"], toy["data"]
    export_dir = toy["info"]["export_dir"]  # written by common.task.train_evaluate_export
    assert export_dir == os.path.join(toy["run_dir"], "export")
    report = toy["info"]["export"]
    with open(os.path.join(export_dir, "export_report.json")) as f:
        written = json.load(f)
    for got in (report, written):  # what every family's export records of its run
        assert got["run_dir"] == os.path.abspath(toy["run_dir"])
        assert got["check_split"] == "val" and got["steps"] == 80
        assert got["data_spec"]["names"] == [os.path.basename(data)]
    assert set(report["parity"]) == {"saved_model", "tflite_float32"}
    for parity in report["parity"].values():
        assert parity["max_abs_diff_normalised"] <= parity["tolerance_normalised"]
    assert report["contract"]["family"] == FAMILY and report["margin"] == MARGIN

    faces = list(iterate_faces(data, "val", 6))
    pred = evaluation.predict_model(model, data, "val", limit=6)
    for source in (export_dir, os.path.join(toy["run_dir"], "model.keras")):
        predictor = Predictor.from_export(source)
        for face, expected in zip(faces, pred.outputs_px["landmarks"]):
            result = predictor(face.image, boxes=face.box[None])
            np.testing.assert_allclose(result.landmarks[0], expected, atol=1e-3)

    boxes = box_robustness.source_boxes(faces, ("stored", "landmark_square", "jitter_5"))
    table = box_robustness.score_under_boxes(
        {"toy": box_robustness.model_box_predictor(model, model.input_sizes, model.margin)},
        faces, boxes, kind="box_width")
    scored = evaluation.evaluate_outputs(pred, model.scheme, kinds=("box_width",))
    np.testing.assert_allclose(table.nme["toy"]["stored"],
                               scored["outputs"]["landmarks"]["box_width"]["mean"], rtol=1e-4)
    assert "| toy |" in table.markdown()
