"""Predicts 68 MSRRN landmarks on photos, folders and videos.

    python -m msrrn_tf.predict --model=EXPORT_DIR --input=IMAGE|DIR|VIDEO --output=DIR
        [--batch_size=32] [--upsample=1] [--nooverlay] [--boxes_json=FILE]

Faces are found with dlib (or taken from ``--boxes_json``); see ``common.predict`` for
the outputs (per-file JSON, overlays, ``summary.json``/``summary.csv``).
"""

from absl import app, flags

from common import predict


def _run() -> None:
    holders = predict.define_flags(scheme="ibug68")
    flags.adopt_module_key_flags(predict)  # --helpshort lists them
    app.run(lambda argv: predict.main(argv, holders))


if __name__ == "__main__":
    _run()
