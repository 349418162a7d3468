"""Throughput of the tf.data input pipeline and of the synthetic face generator.

Usage::

    python -m experiments.bench_pipeline                      # synthetic 68-point faces
    python -m experiments.bench_pipeline --source=random --image_size=640
    python -m experiments.bench_pipeline --data=/path/to/tfrecords --split=train

Without ``--data`` it first writes ``--num_faces`` faces into a temporary folder
(``common.synthetic.write_synthetic_tfrecords``, or random-noise JPEGs with a random
landmark layout for ``--source=random``) and reports that generation rate; then it
reports faces per second of the augmented training pipeline (``--sizes``, by default
MSRRN's 50/100/200 crops with its augmentation) and of the evaluation pipeline.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "", "Existing TFRecord folder (or glob); empty: generate "
                    "--num_faces faces into a temporary folder.")
flags.DEFINE_string("split", "train", "Split to read from --data.")
flags.DEFINE_enum("source", "synthetic", ["synthetic", "random"],
                  "What to generate without --data: common.synthetic faces, or random "
                  "noise images of --image_size pixels.")
flags.DEFINE_integer("num_faces", 400, "Faces to generate (without --data).")
flags.DEFINE_integer("num_points", 68, "Landmarks per face (68 or 5).")
flags.DEFINE_integer("image_size", 480, "Image side of --source=random images.")
flags.DEFINE_list("sizes", ["50", "100", "200"], "Crop sizes (MSRRN: 50,100,200).")
flags.DEFINE_float("margin", 0.2, "Crop margin around the face box.")
flags.DEFINE_integer("batch_size", 32, "Faces per batch.")
flags.DEFINE_integer("num_batches", 0, "Timed training batches; 0: two passes over the faces.")
flags.DEFINE_enum("augment", "msrrn", ["msrrn", "ccnn", "full", "none"],
                  "Augmentation: MSRRN (+-15 deg, flip, noise 0.5), CCNN (-15..12 deg, "
                  "flip), full (all kinds incl. box jitter and photometry) or none.")
flags.DEFINE_integer("seed", 0, "Seed of the data and the pipeline.")

AUGMENT_PRESETS = {
    "none": {},
    "msrrn": {"rotation_deg": (-15.0, 15.0), "flip_prob": 0.5, "noise_sigma": 0.5},
    "ccnn": {"rotation_deg": (-15.0, 12.0), "flip_prob": 0.5},
    "full": {"rotation_deg": (-15.0, 15.0), "flip_prob": 0.5, "noise_sigma": 0.5,
             "brightness": 16.0, "contrast": (0.8, 1.2), "box_shift": 0.05, "box_scale": 0.1},
}


def write_random_tfrecords(output_dir: str, num_faces: int, num_points: int, image_size: int,
                           seed: int = 0) -> float:
    """Writes random-noise JPEG faces with a plausible box; returns faces per second."""
    import tensorflow as tf

    from common.geometry import landmark_box
    from common.tfrecord import ShardWriter, serialize_face

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with ShardWriter(output_dir, "random", "train", num_shards=4) as writer:
        for i in range(num_faces):
            image = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            side = rng.uniform(0.3, 0.6) * image_size
            centre = rng.uniform(0.35, 0.65, 2) * image_size
            points = (centre + rng.uniform(-0.5, 0.5, (num_points, 2)) * side).astype(np.float32)
            jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
            writer.write(serialize_face(jpeg, image_size, image_size, points,
                                        landmark_box(points).numpy(), box_source="landmarks",
                                        split="train", source_path=f"random:{i}"))
    return num_faces / (time.perf_counter() - start)


def synthetic_rates(output_dir: str, num_faces: int, num_points: int, seed: int = 0,
                    ) -> tuple[float, float]:
    """Synthetic generation rates in faces/s: (generate_face alone, written to TFRecords)."""
    import tensorflow  # noqa: F401  (imported before timing: the writer needs it)

    from common import synthetic

    count = min(num_faces, 100)
    start = time.perf_counter()
    for index in range(count):
        synthetic.generate_face(index, seed)
    generate_rate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    synthetic.write_synthetic_tfrecords(output_dir, num_points, {"train": num_faces}, seed=seed,
                                        num_shards=4, progress=False)
    return generate_rate, num_faces / (time.perf_counter() - start)


def time_dataset(dataset, num_batches: int, warmup: int = 2) -> tuple[float, int]:
    """Iterates ``warmup`` untimed then ``num_batches`` timed batches; (faces/s, faces)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    faces = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        faces += int(batch[1]["landmarks"].shape[0])
    return faces / max(time.perf_counter() - start, 1e-9), faces


def run_benchmark(data: str, split: str, *, sizes: Sequence[int], num_points: int,
                  margin: float, batch_size: int, num_batches: int, augment: str,
                  seed: int, num_faces: int) -> dict[str, float]:
    """Measures training and evaluation pipeline throughput on ``data``.

    Returns:
        ``{"train_faces_per_s", "eval_faces_per_s"}``.
    """
    from common.pipeline import AugmentConfig, make_dataset

    common = {"sizes": sizes, "num_landmarks": num_points, "margin": margin,
              "batch_size": batch_size, "seed": seed}
    train = make_dataset(data, split, training=True,
                         augment=AugmentConfig(**AUGMENT_PRESETS[augment]), **common)
    train_rate, train_faces = time_dataset(train, num_batches)
    evaluation = make_dataset(data, split, training=False, repeat=True, **common)
    eval_rate, _ = time_dataset(evaluation, max(1, num_faces // batch_size))
    print(f"training pipeline ({augment} augmentation, sizes {list(sizes)}, batch {batch_size}): "
          f"{train_rate:.1f} faces/s over {train_faces} faces")
    print(f"evaluation pipeline (sizes {list(sizes)}): {eval_rate:.1f} faces/s")
    return {"train_faces_per_s": train_rate, "eval_faces_per_s": eval_rate}


def main(argv):
    del argv
    sizes = [int(s) for s in FLAGS.sizes]
    num_batches = FLAGS.num_batches or max(1, -(-2 * FLAGS.num_faces // FLAGS.batch_size))
    data, temporary = FLAGS.data, None
    if not data:
        temporary = data = tempfile.mkdtemp(prefix="bench_pipeline_")
        if FLAGS.source == "synthetic":
            generate_rate, write_rate = synthetic_rates(data, FLAGS.num_faces, FLAGS.num_points,
                                                        FLAGS.seed)
            print(f"synthetic generation: {generate_rate:.1f} faces/s (generate_face), "
                  f"{write_rate:.1f} faces/s (generated and written to TFRecords)")
        else:
            rate = write_random_tfrecords(data, FLAGS.num_faces, FLAGS.num_points,
                                          FLAGS.image_size, FLAGS.seed)
            print(f"random {FLAGS.image_size}px JPEG faces written: {rate:.1f} faces/s")
    try:
        run_benchmark(data, FLAGS.split, sizes=sizes, num_points=FLAGS.num_points,
                      margin=FLAGS.margin, batch_size=FLAGS.batch_size, num_batches=num_batches,
                      augment=FLAGS.augment, seed=FLAGS.seed, num_faces=FLAGS.num_faces)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
