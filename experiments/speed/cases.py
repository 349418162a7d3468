"""What a speed benchmark times: test faces, our models and their exported forms,
the peers, and the training step, each as ``Case`` objects.

Part of ``experiments.bench_speed`` (its docstring lists the forms).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from experiments.speed.options import DLIB_PREDICTOR_SIZE_OPTIONS, MODELS
from experiments.speed.timing import Case, quiet_tflite

# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Faces:
    """Synthetic test faces (``common.synthetic``), one per image.

    Attributes:
        images: uint8 ``[N, S, S, 3]``.
        boxes: float32 ``[N, 4]`` detector-like face boxes.
        landmarks68: float32 ``[N, 68, 2]`` pixels.
        landmarks5: float32 ``[N, 5, 2]`` pixels.
    """

    images: np.ndarray
    boxes: np.ndarray
    landmarks68: np.ndarray
    landmarks5: np.ndarray

    def landmarks(self, num_points: int) -> np.ndarray:
        return self.landmarks68 if num_points == 68 else self.landmarks5


def synthetic_faces(count: int, image_size: int, seed: int) -> Faces:
    """``count`` synthetic faces of ``image_size`` pixels (faces ``0..count-1`` of
    ``seed``)."""
    from common import synthetic

    config = synthetic.SyntheticFaceConfig(image_size=image_size)
    faces = [synthetic.generate_face(i, seed, config) for i in range(count)]
    return Faces(images=np.stack([f.image for f in faces]),
                 boxes=np.stack([f.box for f in faces]).astype(np.float32),
                 landmarks68=np.stack([f.landmarks68 for f in faces]),
                 landmarks5=np.stack([f.landmarks5 for f in faces]))


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelUnderTest:
    """One of our models and how it is fed.

    Attributes:
        name: "msrrn" or "ccnn".
        model: the Keras model (variables on the CPU).
        sizes: input sides (``image_<s>`` keys).
        margin: crop margin of ``preprocess_faces``.
        num_landmarks: L.
        train_batch_size: batch of the training-throughput measurement.
        train_config: the config the training step is built from (optimiser).
        source: where the weights come from (for the report).
    """

    name: str
    model: Any
    sizes: tuple[int, ...]
    margin: float
    num_landmarks: int
    train_batch_size: int
    train_config: Any
    source: str


def _model_file(path: str) -> str:
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.keras")
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"{path} holds no model.keras")
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model at {path!r}")
    return path


def load_or_build(name: str, path: str | None, config: Any,
                  flip_test: bool | None = None,
                  confidence_source: str | None = None) -> ModelUnderTest:
    """A trained model from ``path``, or a fresh one from ``config`` (paper defaults).

    Args:
        name: "msrrn" or "ccnn".
        path: ``.keras`` file or run folder with ``model.keras``; ``None`` to build.
        config: ``MSRRNConfig`` / ``CCNNConfig`` (``None``: the paper's defaults).
            With a ``path`` only its training batch size and optimiser are used.
        flip_test: switch the model's flip test on or off; ``None``: as it is.
        confidence_source: an inference option of the model (CCNN: ``"flip"`` or
            ``"pairs"``, ``CCNNCascade.with_inference_options``); ``None``: as it is.

    Returns:
        The model, built with its variables on the CPU.
    """
    import keras
    import tensorflow as tf

    import ccnn_tf  # noqa: F401  (register the model families)
    import msrrn_tf  # noqa: F401
    from common import landmark_model

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    family = landmark_model.get_family(name)
    default = family.default_config()
    config = config or default
    options = {"flip_test": flip_test}
    if confidence_source is not None:
        options["confidence_source"] = confidence_source
    with tf.device("/CPU:0"):
        if path:
            model = keras.saving.load_model(_model_file(path), compile=False)
            # A model saved before it stored its margin: its run's, else the config's.
            if landmark_model.margin_of(model) is None:
                try:
                    landmark_model.complete_margin(model, _model_file(path))
                except ValueError:
                    model.margin = float(config.margin)
        else:
            model = family.build(config)
        model = model.with_inference_options(**options)
    described = [f"flip test {'on' if model.flip_test else 'off'}" if flip_test is None
                 else f"flip test switched {'on' if flip_test else 'off'}"]
    if getattr(model, "confidence_source", None):
        described.append(f"confidence from {model.confidence_source}")
    return ModelUnderTest(
        name, model, landmark_model.input_sizes_of(model), landmark_model.margin_of(model),
        landmark_model.num_landmarks_of(model), config.batch_size, config,
        (f"{_model_file(path)} (trained)" if path else
         f"freshly built {type(config).__name__}"
         f"{'()' if config == default else '(...)'} (untrained)")
        + "".join(f", {d}" for d in described))


def clone_model(model: Any, **changes: Any) -> Any:
    """A new model of the same class from ``get_config`` with ``changes`` (fresh weights)."""
    return type(model).from_config({**model.get_config(), **changes})


def _on_device(model: Any, device: str) -> Any:
    """``model`` with its variables on ``device`` (a copy for the GPU)."""
    import tensorflow as tf

    if device == "CPU":
        return model
    with tf.device(f"/{device}:0"):
        copy = clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def _sync(device: str) -> None:
    if device != "CPU":
        import tensorflow as tf

        tf.test.experimental.sync_devices()


def model_crops(mut: ModelUnderTest, images: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
    import tensorflow as tf

    from common import geometry

    with tf.device("/CPU:0"):
        inputs, _ = geometry.preprocess_faces(tf.constant(images), tf.constant(boxes),
                                              mut.sizes, mut.margin)
    return {k: v.numpy() for k, v in inputs.items()}


def export_model(mut: ModelUnderTest, work_dir: str) -> dict[str, Any]:
    """Exports the SavedModel and the cropped-input TFLite file of a model.

    Returns:
        ``{"saved_model": dir, "tflite": path, "tflite_bytes": n, "seconds": {...}}``.
    """
    from common import export

    result: dict[str, Any] = {"seconds": {}}
    start = time.perf_counter()
    result["saved_model"] = export.export_saved_model(
        mut.model, os.path.join(work_dir, f"{mut.name}_saved_model"), sizes=mut.sizes,
        margin=mut.margin, num_landmarks=mut.num_landmarks)
    result["seconds"]["saved_model"] = time.perf_counter() - start
    path = os.path.join(work_dir, f"{mut.name}.tflite")
    start = time.perf_counter()
    # The model's export hooks say how (CCNN: traced anew, batch 1, builtin-op crops).
    export.tflite_variant(mut.model, "tflite_float32", os.path.basename(path)).convert(
        result["saved_model"], path)
    result["seconds"]["tflite"] = time.perf_counter() - start
    result["tflite"] = path
    result["tflite_bytes"] = os.path.getsize(path)
    return result


def xla_function(mut: ModelUnderTest) -> Callable[[Mapping[str, Any]], Any]:
    """The model's call on crops compiled by XLA (``tf.function(jit_compile=True)``).

    Traced in the model's TFLite export trace (``ExportHooks.trace``), whose ops XLA
    compiles: CCNN's window crops as matrix products (XLA has no ``CropAndResize``),
    its weights frozen, one convolution per network; MSRRN as it is. The batch stays
    dynamic; XLA compiles once per batch size (the warm-up calls do).
    """
    import tensorflow as tf

    from common import landmark_model

    spec = {f"image_{s}": tf.TensorSpec([None, s, s, 3], tf.float32) for s in mut.sizes}
    hooks = landmark_model.export_hooks_of(mut.model)
    fn = tf.function(lambda crops: mut.model(crops, training=False)["landmarks"],
                     jit_compile=True)
    with hooks.trace(landmark_model.TFLITE_TARGET):
        return fn.get_concrete_function(spec)


def xla_deviation_px(mut: ModelUnderTest, faces: Faces, batch_size: int) -> float:
    """Largest difference between :func:`xla_function`'s landmarks and the Keras
    model's on ``batch_size`` faces, in pixels of the largest crop."""
    import tensorflow as tf

    cropped = model_crops(mut, faces.images[:batch_size], faces.boxes[:batch_size])
    with tf.device("/CPU:0"):
        crops = {k: tf.constant(v) for k, v in cropped.items()}
        ours = mut.model(crops, training=False)["landmarks"].numpy()
        compiled = xla_function(mut)(crops).numpy()
    return float(np.abs(compiled - ours).max() * max(mut.sizes))


def model_cases(mut: ModelUnderTest, exported: Mapping[str, Any], faces: Faces,
                batch_size: int, device: str, threads: int) -> list[Case]:
    """The inference cases of one model on one device (batch 1 and ``batch_size``)."""
    import tensorflow as tf

    from common import export, geometry

    tf_device = f"/{device}:0"
    cases: list[Case] = []
    with tf.device(tf_device):
        model = _on_device(mut.model, device)
        loaded = tf.saved_model.load(exported["saved_model"])
        serve_default = loaded.signatures[export.DEFAULT_SIGNATURE]
        serve_cropped = loaded.signatures[export.CROPPED_SIGNATURE]
        compiled = xla_function(mut)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                      tf.TensorSpec([None, 4], tf.float32)])
        def crop(images, boxes):
            return geometry.preprocess_faces(images, boxes, mut.sizes, mut.margin)[0]

    def on_device(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            with tf.device(tf_device):
                out = fn()
            _sync(device)
            return out
        return call

    for batch in (1, batch_size):
        images, boxes = faces.images[:batch], faces.boxes[:batch]
        cropped = model_crops(mut, images, boxes)
        with tf.device(tf_device):
            images_t, boxes_t = tf.constant(images), tf.constant(boxes)
            crops_t = {k: tf.constant(v) for k, v in cropped.items()}
        fns = {
            "keras_eager": lambda c=crops_t: model(c, training=False)["landmarks"].numpy(),
            "keras_predict_on_batch":
                lambda c=crops_t: model.predict_on_batch(c)["landmarks"],
            "saved_model_default": lambda i=images_t, b=boxes_t: serve_default(
                images=i, boxes=b)["landmarks"].numpy(),
            "saved_model_cropped":
                lambda c=crops_t: serve_cropped(**c)["landmarks"].numpy(),
            "keras_xla": lambda c=crops_t: compiled(c).numpy(),
            "crop_only": lambda i=images_t, b=boxes_t: crop(i, b),
        }
        cases += [Case(mut.name, form, device, batch, on_device(fn))
                  for form, fn in fns.items()]
        if device == "CPU":
            cases += tflite_cases(mut.name, exported["tflite"], cropped, threads)
    return cases


def _interpreter(path: str, threads: int):
    import tensorflow as tf

    with quiet_tflite():
        return tf.lite.Interpreter(model_path=path, num_threads=threads)


def tflite_cases(name: str, path: str, cropped: Mapping[str, np.ndarray], threads: int
                 ) -> list[Case]:
    """TFLite cases for one batch of crops: face by face, and in one invoke when the
    file has a dynamic batch."""
    from common.export import CROPPED_SIGNATURE

    batch = len(next(iter(cropped.values())))
    per_face = [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in cropped.items()}
                for i in range(batch)]
    runner = _interpreter(path, threads).get_signature_runner(CROPPED_SIGNATURE)

    def face_by_face():
        return [runner(**inputs)["landmarks"] for inputs in per_face]

    cases = [Case(name, "tflite", "CPU", batch, face_by_face)]
    interpreter = _interpreter(path, threads)
    dynamic = all(int(d["shape_signature"][0]) == -1
                  for d in interpreter.get_input_details())
    if batch > 1 and dynamic:
        batched = interpreter.get_signature_runner(CROPPED_SIGNATURE)
        inputs = {k: np.ascontiguousarray(v) for k, v in cropped.items()}
        cases.append(Case(name, "tflite_batch_invoke", "CPU", batch,
                          lambda: batched(**inputs)["landmarks"]))
    return cases


# --------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------


def dlib_cases(faces: Faces, train_faces: Faces, num_points: int, options: Mapping[str, Any],
               batch_size: int, threads: int) -> tuple[list[Case], dict[str, Any]]:
    """Trains dlib ERT on ``train_faces`` and returns its cases and its description."""
    from experiments.peers import DLIB_DEFAULT_OPTIONS, DlibERT

    train = [(image, points, box) for image, points, box in zip(
        train_faces.images, train_faces.landmarks(num_points), train_faces.boxes)]
    peer = DlibERT.train(train, dict(options), num_threads=threads)
    method = f"dlib_ert_{num_points}"
    images = list(faces.images[:batch_size])
    boxes = faces.boxes[:batch_size]
    cases = [Case(method, "dlib_predict", "CPU", 1,
                  lambda: peer.predict(faces.images[0], faces.boxes[0])),
             Case(method, "dlib_predict", "CPU", batch_size,
                  lambda: peer.predict_batch(images, boxes))]
    default_size = all(peer.resolved_options[key] == DLIB_DEFAULT_OPTIONS[key]
                       for key in DLIB_PREDICTOR_SIZE_OPTIONS)
    info = {"train_faces": len(train), "train_seconds": peer.train_seconds,
            "options": peer.resolved_options, "predict_threads": 1,
            "default_predictor_size": default_size}
    return cases, info


def pretrained_peer_cases(name: str, faces: Faces, batch_size: int
                          ) -> tuple[list[Case], dict[str, Any]]:
    """A pretrained peer of ``experiments.peers`` (``options.pretrained_peers``): its
    ``predict`` at batch 1 and its ``predict_batch``, and its description.

    Raises:
        ImportError: the peer's package is not installed.
    """
    from experiments.peers import make_peer

    peer = make_peer(name).fit()
    images, boxes = list(faces.images[:batch_size]), faces.boxes[:batch_size]
    cases = [Case(name, "peer_predict", "CPU", 1,
                  lambda: peer.predict(faces.images[0], faces.boxes[0])),
             Case(name, "peer_predict", "CPU", batch_size,
                  lambda: peer.predict_batch(images, boxes))]
    return cases, peer.describe()


def mtcnn_onet_batch(peer: Any, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """ONet on one face per image, all faces in one ONet call.

    The steps of ``MTCNNPeer.onet_on_boxes`` (square boxes, the package's
    normalisation, ``extract_patches`` at 48 x 48, ONet, ``adjust_landmarks``) with
    face ``i`` taken from ``images[i]``.

    Returns:
        float32 ``[N, 5, 2]`` pixels.
    """
    import tensorflow as tf
    from mtcnn.utils.images import extract_patches, normalize_images
    from mtcnn.utils.landmarks import adjust_landmarks

    from experiments.peers import MTCNN_ONET_SIZE, square_box

    squares = np.stack([square_box(box) for box in boxes])
    rows = np.concatenate([np.arange(len(squares), dtype=np.float64)[:, None], squares], 1)
    normalised = normalize_images(np.asarray(images, np.float32))
    patches = extract_patches(tf.constant(normalised), rows,
                              expected_size=(MTCNN_ONET_SIZE, MTCNN_ONET_SIZE))
    _, landmarks, _ = peer.onet(patches)
    landmarks = np.asarray(adjust_landmarks(landmarks, rows), np.float64)
    return np.stack([landmarks[:, 0:5], landmarks[:, 5:10]], axis=-1).astype(np.float32)


def mtcnn_cases(faces: Faces, batch_size: int) -> list[Case]:
    """MTCNN's ONet on the given boxes, on the CPU."""
    import tensorflow as tf

    from experiments.peers import MTCNNPeer

    with tf.device("/CPU:0"):
        peer = MTCNNPeer(mode="box")
        _ = peer.onet  # built here, so its variables live on the CPU
    images, boxes = faces.images[:batch_size], faces.boxes[:batch_size]

    def on_cpu(fn):
        def call():
            with tf.device("/CPU:0"):
                return fn()
        return call

    return [Case("mtcnn_onet", "onet_box", "CPU", 1,
                 on_cpu(lambda: peer.predict(faces.images[0], faces.boxes[0]))),
            Case("mtcnn_onet", "onet_box", "CPU", batch_size,
                 on_cpu(lambda: mtcnn_onet_batch(peer, images, boxes)))]


# --------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------


def _training_batch(mut: ModelUnderTest, faces: Faces, batch_size: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A training batch of synthetic crops and their normalised landmarks."""
    import tensorflow as tf

    from common import geometry

    index = np.arange(batch_size) % len(faces.images)
    images, boxes = faces.images[index], faces.boxes[index]
    with tf.device("/CPU:0"):
        inputs, crop_boxes = geometry.preprocess_faces(
            tf.constant(images), tf.constant(boxes), mut.sizes, mut.margin)
        targets = geometry.image_to_crop(faces.landmarks(mut.num_landmarks)[index], crop_boxes)
    return ({k: v.numpy() for k, v in inputs.items()},
            {"landmarks": targets.numpy().astype(np.float32)})


def _train_step_case(method: str, form: str, device: str, model: Any, optimizer: Any,
                     loss: Any, inputs: Mapping[str, np.ndarray],
                     targets: Mapping[str, np.ndarray], steps: int) -> Case:
    """A case running ``steps`` steps of ``common.training``'s compiled training loop.

    Uses the runner's own loop (``common.training.make_training_steps``) so that the
    measured step is exactly the one ``train_model`` runs, without its checkpoints
    and logs.
    """
    import tensorflow as tf

    from common import training

    dataset = tf.data.Dataset.from_tensors((dict(inputs), dict(targets)))
    run_steps = training.make_training_steps(lambda: model, lambda: optimizer, loss, dataset,
                                             jit_compile=False)
    num_steps = tf.constant(steps, tf.int32)
    batch = len(next(iter(inputs.values())))
    tf_device = f"/{device}:0"

    def run():
        with tf.device(tf_device):
            return float(run_steps(num_steps))

    return Case(method, form, device, batch * steps, run, steps=steps)


def training_cases(mut: ModelUnderTest, faces: Faces, device: str, steps: int) -> list[Case]:
    """Training-throughput cases: MSRRN's step, or one per CCNN stage."""
    import keras
    import tensorflow as tf

    inputs, targets = _training_batch(mut, faces, mut.train_batch_size)
    cases = []
    with tf.device(f"/{device}:0"):
        if mut.name == "msrrn":
            from msrrn_tf.training import stage_losses

            model = clone_model(mut.model)
            optimizer = keras.optimizers.SGD(mut.train_config.learning_rate,
                                              momentum=mut.train_config.momentum)
            loss = stage_losses(model.num_stages, model.init)
            cases.append(_train_step_case("msrrn", "train", device, model, optimizer, loss,
                                          inputs, targets, steps))
        else:
            from ccnn_tf.training import (
                build_optimizer,
                network_layout,
                window_relative_loss,
            )

            num_stages = mut.model.get_config()["num_stages"]
            for stage in range(1, num_stages + 1):
                model = clone_model(mut.model, num_stages=stage,
                               frozen_stages=tuple(range(1, stage)), network_outputs=True)
                loss = {f"stage_{stage}_networks":
                        window_relative_loss(network_layout(model.stage_layer(stage)))}
                cases.append(_train_step_case(
                    "ccnn", f"train_stage_{stage}", device, model,
                    build_optimizer(mut.train_config), loss, inputs, targets, steps))
    return cases
