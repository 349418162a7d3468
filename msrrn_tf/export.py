"""Exports a trained MSRRN: ``python -m msrrn_tf.export``.

Writes an export in the one layout of ``common.export.write_export`` (as one unit:
a crash leaves the previous export or the complete new one)::

    OUTPUT/saved_model/1/          SavedModel, signatures of ``common.export``
                                   (``serving_default``: uint8 images + face boxes ->
                                   landmarks in image pixels; ``serving_cropped``: crops
                                   -> normalised landmarks and every stage)
    OUTPUT/model_float32.tflite    with ``--tflite``: ``serving_cropped`` in TFLite
    OUTPUT/export_report.json      parity figures, config, weights hash, commit

then loads each file in a fresh Python process and compares it with the Keras model
(tolerance ``--atol``, default 1e-4 in normalised crop units, the same fraction of the
crop side in pixels), printing the largest differences::

    python -m msrrn_tf.export --model=runs/msrrn-x --output=models/msrrn --tflite
    saved_model_cli show --all --dir models/msrrn/saved_model/1
    tensorflow_model_server --model_base_path=$PWD/models/msrrn/saved_model ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    flags.DEFINE_string("model", None, "A .keras model, or a run directory of "
                        "`python -m msrrn_tf.train`.", required=True)
    flags.DEFINE_string("output", None, "Export folder to write (saved_model/1/, "
                        "*.tflite, export_report.json); replaced as a unit.", required=True)
    flags.DEFINE_boolean("tflite", False, "Also write model_float32.tflite (serving_cropped: "
                         "pre-cropped float faces -> normalised landmarks) and check its "
                         "parity.")
    flags.DEFINE_float("margin", None, "Crop margin of serving_default (default: the model "
                       "run's config.json, else MSRRNConfig().margin).")
    flags.DEFINE_boolean("flip_test", None, "Export with the flip test (predict the "
                         "mirrored face too and average) or, --noflip_test, without it "
                         "(faster: the mirrored face is not run); default: as the model was "
                         "trained (MSRRNConfig.flip_test).")
    flags.DEFINE_string("data", None, "TFRecord folder whose first faces are used for the "
                        "parity check (default: random images).")
    flags.DEFINE_string("split", "val", "Split of --data for the parity check.")
    flags.DEFINE_float("atol", 1e-4, "Parity tolerance in normalised crop units (the "
                       "served pixels: the same fraction of the smallest test crop side).",
                       lower_bound=0.0)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every checkpoint save at INFO
        logging.set_verbosity(logging.WARNING)
    from msrrn_tf.evaluate import load_with_margin
    from msrrn_tf.training import export_msrrn

    model, margin = load_with_margin(FLAGS.model, FLAGS.margin, FLAGS.flip_test)
    print(f"exporting {FLAGS.model} (T={model.num_stages}, sizes {model.input_sizes}, "
          f"margin {margin:g}, flip test {'on' if model.flip_test else 'off'})", flush=True)
    export_msrrn(model, FLAGS.output, margin=margin, data=FLAGS.data, split=FLAGS.split,
                 parity_check=True, tflite=FLAGS.tflite, atol=FLAGS.atol,
                 info={"model_source": os.path.abspath(FLAGS.model)})


if __name__ == "__main__":
    _define_flags()
    app.run(main)
