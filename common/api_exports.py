"""The public names a model package (``msrrn_tf``, ``ccnn_tf``) exports, loaded lazily.

Both packages export the same API (``common.api``); this module gives each its module
``__getattr__`` / ``__dir__`` so that ``import msrrn_tf`` does not import TensorFlow
and the names load on first use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

API_NAMES = ("Prediction", "Predictor", "load_model", "resolve_model_path")


def lazy_api(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``'s public API."""
    def __getattr__(name: str) -> Any:
        if name in API_NAMES:
            from common import api

            return getattr(api, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(API_NAMES))

    return __getattr__, __dir__
