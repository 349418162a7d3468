"""MSRRN (68 points) face alignment: the public Python API.

    import msrrn_tf
    predictor = msrrn_tf.Predictor.from_export("runs/NAME/export")   # or .from_run(run_dir)
    result = predictor("photo.jpg")          # every face dlib finds
    result.landmarks                         # float32 [F, L, 2] (x, y) image pixels
    result.boxes                             # float32 [F, 4] (l, t, r, b) pixels
    predictor(rgb_array, boxes=[[l, t, r, b]])
    model = msrrn_tf.load_model("runs/NAME")     # the Keras model

The API is the same for both models (``common.api``); the names below are loaded on
first use, so ``import msrrn_tf`` does not import TensorFlow.
"""

from common.api_exports import API_NAMES, lazy_api
from common.landmark_model import register_family_module as _register_family_module
from common.quiet import configure_for_entry_point as _configure_for_entry_point

__all__ = list(API_NAMES)

_configure_for_entry_point()
_register_family_module("msrrn", "msrrn_tf.family")  # the model family (no TensorFlow)
__getattr__, __dir__ = lazy_api(__name__)
