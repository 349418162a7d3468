"""The MSRRN's flip test: the mirrored images appended to the batch at inference,
and their shapes mapped back (averaged, or kept as a pair for the confidence).

The layers are ``common.mirror``'s (shared with CCNN's flip test); the subclasses here
only keep the names under which MSRRN registered them (``msrrn_tf>MirrorBatch``, ...),
so that model files that name them still load. ``msrrn_tf.model`` re-exports them.
"""

from __future__ import annotations

import keras

from common import mirror


@keras.saving.register_keras_serializable(package="msrrn_tf")
class MirrorBatch(mirror.MirrorBatch):
    """``common.mirror.MirrorBatch`` under MSRRN's registered name."""


@keras.saving.register_keras_serializable(package="msrrn_tf")
class MergeMirrored(mirror.MergeMirrored):
    """``common.mirror.MergeMirrored`` under MSRRN's registered name."""


@keras.saving.register_keras_serializable(package="msrrn_tf")
class MirroredPair(mirror.MirroredPair):
    """``common.mirror.MirroredPair`` under MSRRN's registered name."""
