"""The library shared by both models (readers, geometry, pipeline, export, predict).

Running any ``python -m`` entry point of the project quiets TensorFlow's start-up
lines before TensorFlow is imported (``common.quiet``; ``FACE_ALIGN_VERBOSE=1`` to
see them); importing the package from Python changes nothing.
"""

from common import quiet as _quiet

_quiet.configure_for_entry_point()
