"""The contract of a trained landmark model, and the registry of model families.

Every trained model of this project (MSRRN, CCNN, a model added later) is a Keras
model ``{f"image_{s}": float32 [N, s, s, 3]} -> {"landmarks": [N, L, 2], "stage_*":
...}`` (``docs/DESIGN.md``, "Models") that also exposes, and serialises through
``get_config``, what the shared code needs to evaluate, export and serve it:

* ``family``: the registered family name (a class attribute, :func:`register_family`).
* ``num_landmarks``: ``L``; ``scheme``: its ``common.schemes.LandmarkScheme``.
* ``input_sizes``: the input sides it reads (``image_<s>`` keys), coarse to fine.
* ``margin``: the crop margin of ``common.geometry.preprocess_faces`` it was trained
  with (``None`` only for a model saved before margins were stored in the model: the
  loaders, :func:`complete_margin`, then take it from its run's ``config.json``).
* ``stage_names``: its per-stage outputs in order (``"stage_0"``, ... ; empty for a
  one-shot model).
* ``export_hooks()``: an :class:`ExportHooks` (how ``common.export`` traces, converts
  and checks it); ``baseline_shapes()``: constant shapes evaluated beside its outputs
  (MSRRN: its mean shape).

:class:`LandmarkModelMixin` supplies the derived members (``scheme``, the default
hooks, no baselines), so a model class defines only what it stores. The functions
below (:func:`input_sizes_of`, :func:`margin_of`, ...) read the contract and fall back
to what any functional Keras model shows (its ``image_<s>`` inputs), so the shared code
never asks which family a model is.

The registry maps a family name to a :class:`ModelFamily` (how to load and train one);
a model package registers its family when imported (``msrrn_tf/__init__.py`` announces
``msrrn_tf.family``, :func:`register_family_module`, which registers it), so the
shared code reaches every family through :func:`get_family` / :func:`family_of`, never
by naming a model package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from common.schemes import LandmarkScheme, scheme_for

SAVED_MODEL_TARGET = "saved_model"
"""Export target of the SavedModel's serving functions (:meth:`ExportHooks.trace`)."""

TFLITE_TARGET = "tflite"
"""Export target of the TFLite conversion (:meth:`ExportHooks.trace`)."""

DEFAULT_TOLERANCES: Mapping[str, float] = {"saved_model": 1e-4, "tflite_float32": 1e-4}
"""Parity tolerances of an export's files, in normalised crop units (fractions of the
crop side; the pixel tolerance is the same fraction of the smallest test crop side)."""


@dataclasses.dataclass(frozen=True)
class ExportHooks:
    """How ``common.export`` exports one model (the model's ``export_hooks()``).

    Attributes:
        trace: ``trace(target)`` -> the context the model is traced in for ``target``
            (:data:`SAVED_MODEL_TARGET` or :data:`TFLITE_TARGET`); e.g. CCNN freezes its
            weights into the serving graph and crops its windows with TFLite builtins
            for the converter. Default: no context.
        tflite_trace_batch: a static batch size for the TFLite trace (CCNN: 1); ``None``
            converts the SavedModel's ``serving_cropped`` (dynamic batch).
        tolerances: parity tolerance per exported file name (``"saved_model"``,
            ``"tflite_float32"``, ...), normalised crop units; names not listed use
            :data:`DEFAULT_TOLERANCES`.
        float32_copy: ``float32_copy(model)`` -> the model to export (same weights,
            float32 compute), e.g. for a mixed-precision model; default: the model.
        tflite_source: ``"saved_model"``: TFLite files are converted from the
            export's SavedModel (``serving_cropped``); ``"keras"``: from the model
            traced anew in ``trace("tflite")`` with ``tflite_trace_batch``.
    """

    trace: Callable[[str], contextlib.AbstractContextManager] = (
        lambda target: contextlib.nullcontext())
    tflite_trace_batch: int | None = None
    tolerances: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_TOLERANCES))
    float32_copy: Callable[[Any], Any] = lambda model: model
    tflite_source: str = "saved_model"

    def tolerance(self, name: str) -> float:
        """The parity tolerance of the exported file ``name`` (normalised crop units)."""
        if name in self.tolerances:
            return float(self.tolerances[name])
        if name in DEFAULT_TOLERANCES:
            return float(DEFAULT_TOLERANCES[name])
        raise KeyError(f"no parity tolerance for {name!r}; the model's export_hooks() "
                       f"list {sorted(self.tolerances)}")


DEFAULT_EXPORT_HOOKS = ExportHooks()


@runtime_checkable
class LandmarkModel(Protocol):
    """What every trained landmark model exposes (module docstring)."""

    family: str
    num_landmarks: int
    input_sizes: tuple[int, ...]
    margin: float | None
    stage_names: tuple[str, ...]

    @property
    def scheme(self) -> LandmarkScheme: ...

    def export_hooks(self) -> ExportHooks: ...

    def baseline_shapes(self) -> Mapping[str, Any]: ...


class LandmarkModelMixin:
    """The derived members of :class:`LandmarkModel` (mix into a ``keras.Model``).

    The class sets ``family`` (a class attribute) and the instance ``num_landmarks``,
    ``input_sizes``, ``margin`` and ``stage_names`` (serialised in its ``get_config``).
    """

    family: str = ""

    @property
    def scheme(self) -> LandmarkScheme:
        """The landmark scheme of ``num_landmarks`` (``common.schemes.scheme_for``)."""
        return scheme_for(int(self.num_landmarks))

    def export_hooks(self) -> ExportHooks:
        """How ``common.export`` exports this model (default: nothing special)."""
        return DEFAULT_EXPORT_HOOKS

    def baseline_shapes(self) -> Mapping[str, Any]:
        """Constant shapes ``{output name: [L, 2]}`` (normalised crop coordinates)
        that evaluation reports beside the model's outputs; default none."""
        return {}


# --------------------------------------------------------------------------------------
# Reading the contract (with the fallbacks of a plain Keras model)
# --------------------------------------------------------------------------------------


def sizes_from_inputs(model: Any) -> tuple[int, ...] | None:
    """The sides of a functional model's ``image_<s>`` inputs (sorted), else ``None``."""
    names = [getattr(t, "name", "") for t in (getattr(model, "inputs", None) or [])]
    sizes = [int(n.split("_", 1)[1]) for n in names
             if n.startswith("image_") and n.split("_", 1)[1].isdigit()]
    return tuple(sorted(sizes)) or None


def input_sizes_of(model: Any) -> tuple[int, ...] | None:
    """``model.input_sizes``, else the sides of its ``image_<s>`` inputs, else ``None``."""
    sizes = getattr(model, "input_sizes", None)
    if sizes:
        return tuple(int(s) for s in sizes)
    return sizes_from_inputs(model)


def margin_of(model: Any) -> float | None:
    """``model.margin`` (``None`` when the model does not store it)."""
    margin = getattr(model, "margin", None)
    return None if margin is None else float(margin)


def num_landmarks_of(model: Any) -> int | None:
    """``model.num_landmarks`` (also a CCNN cascade's ``num_points``), else from its
    ``landmarks`` output shape, else ``None``."""
    for name in ("num_landmarks", "num_points"):
        value = getattr(model, name, None)
        if value is not None:
            return int(value)
    outputs = getattr(model, "output", None)
    if isinstance(outputs, Mapping) and "landmarks" in outputs:
        shape = getattr(outputs["landmarks"], "shape", None)
        if shape is not None and len(shape) == 3 and shape[1] is not None:
            return int(shape[1])
    return None


def stage_names_of(model: Any) -> tuple[str, ...]:
    """``model.stage_names``, else ``()``."""
    return tuple(getattr(model, "stage_names", ()) or ())


def export_hooks_of(model: Any) -> ExportHooks:
    """``model.export_hooks()``, else :data:`DEFAULT_EXPORT_HOOKS`."""
    hooks = getattr(model, "export_hooks", None)
    return hooks() if callable(hooks) else DEFAULT_EXPORT_HOOKS


def baseline_shapes_of(model: Any) -> dict[str, Any]:
    """``model.baseline_shapes()``, else ``{}``."""
    shapes = getattr(model, "baseline_shapes", None)
    return dict(shapes()) if callable(shapes) else {}


def complete_margin(model: Any, path: str | os.PathLike | None = None,
                    margin: float | None = None) -> Any:
    """Gives a loaded model its crop margin when it does not store one.

    A model saved before the margin was a model attribute (MSRRN runs before the
    contract) reads it from its run's config (``common.model_path.run_config``).

    Args:
        model: the loaded model.
        path: where it was loaded from (a run directory or a file in one).
        margin: an explicit margin; overrides the model's.

    Returns:
        ``model``, its ``margin`` set.

    Raises:
        ValueError: no margin in the model, its run or the arguments.
    """
    if margin is None:
        margin = margin_of(model)
    if margin is None and path is not None:
        from common.model_path import resolve_model_path, run_config

        try:
            run_dir = resolve_model_path(os.fspath(path)).run_dir
        except (OSError, ValueError):
            run_dir = None
        margin = run_config(run_dir).get("margin") if run_dir else None
    if margin is None:
        raise ValueError(f"the crop margin of the model at {path!r} is unknown (the model "
                         "stores none and no run config.json/run.json beside it has "
                         "'margin'); pass margin= (--margin)")
    model.margin = float(margin)
    return model


# --------------------------------------------------------------------------------------
# Family registry
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained (or loaded) model of a family and how it was obtained.

    Attributes:
        model: the Keras model (a :class:`LandmarkModel`, margin set).
        info: JSON-ready description (source, preset, steps, training speed...).
    """

    model: Any
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A registered model family (:func:`register_family`).

    Attributes:
        name: the family name (``"msrrn"``, ``"ccnn"``), also the models' ``family``.
        num_landmarks: ``L`` of its default configuration.
        load: ``load(path, **options)`` -> the trained model of a run directory or a
            ``.keras`` file, margin set (options: ``flip_test``, ...).
        build: ``build(config=None)`` -> a fresh (untrained) model of ``config``
            (default: the family's ``default_config()``).
        default_config: ``default_config()`` -> the family's config with the paper's
            defaults.
        train: ``train(data, *, run_dir, train_split, eval_split, steps, preset,
            batch_size, config_overrides, seed, verbose)`` -> :class:`TrainedModel`
            (trains, or resumes / reuses the run); ``None``: not trainable here.
        synthetic_data: ``synthetic_data(preset, progress)`` -> the folder of the
            family's embedded synthetic data set; ``None``: none.
        default_preset: the training preset experiments use by default.
        steps_unit: what ``train``'s ``steps`` counts (``"total"``, ``"per stage"``).
        description: one line.
    """

    name: str
    num_landmarks: int
    load: Callable[..., Any]
    build: Callable[..., Any] | None = None
    default_config: Callable[[], Any] | None = None
    train: Callable[..., TrainedModel] | None = None
    synthetic_data: Callable[..., str] | None = None
    default_preset: str = "quick"
    steps_unit: str = "total"
    description: str = ""


_FAMILIES: dict[str, ModelFamily] = {}
_LAZY: dict[str, str] = {}  # family name -> module that registers it when imported


def register_family_module(name: str, module: str) -> None:
    """Announces a family whose module registers it when first needed.

    A model package's ``__init__`` calls this (``msrrn_tf``: ``"msrrn_tf.family"``):
    importing the package stays light and its ``__init__`` imports none of its own
    modules (no import circle); :func:`get_family` imports ``module``, which calls
    :func:`register_family`.

    Args:
        name: the family name.
        module: the dotted module that registers it.
    """
    if name not in _FAMILIES:
        _LAZY[name] = module


def _resolve(name: str) -> None:
    module = _LAZY.pop(name, None)
    if module is not None and name not in _FAMILIES:
        import importlib

        importlib.import_module(module)  # registers the family
        if name not in _FAMILIES:
            raise ValueError(f"{module} was announced for family {name!r} but did not "
                             "register it (register_family)")


def register_family(name: str, **fields: Any) -> ModelFamily:
    """Registers (or replaces) a model family; a model package calls it when imported.

    Args:
        name: the family name.
        **fields: the other :class:`ModelFamily` fields.

    Returns:
        The registered family.
    """
    family = ModelFamily(name=name, **fields)
    _FAMILIES[name] = family
    _LAZY.pop(name, None)
    return family


def unregister_family(name: str) -> None:
    """Removes a family (tests registering a toy one)."""
    _FAMILIES.pop(name, None)
    _LAZY.pop(name, None)


def families() -> dict[str, ModelFamily]:
    """The registered families by name (a copy; announced ones are imported)."""
    for name in list(_LAZY):
        _resolve(name)
    return dict(_FAMILIES)


def family_names() -> list[str]:
    """The registered (or announced) family names."""
    return list(_FAMILIES) + [n for n in _LAZY if n not in _FAMILIES]


def get_family(name: str) -> ModelFamily:
    """The registered family ``name``.

    Raises:
        ValueError: no such family (names the registered ones).
    """
    _resolve(name)
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; registered: "
                         f"{family_names() or 'none (import the model packages)'}") from None


def family_of(model: Any) -> ModelFamily | None:
    """The registered family of a model (its ``family`` attribute), else ``None``."""
    name = getattr(model, "family", None) or ""
    _resolve(name)
    return _FAMILIES.get(name)


@contextlib.contextmanager
def registered_family(name: str, **fields: Any) -> Iterator[ModelFamily]:
    """A family registered for the duration of the context (tests)."""
    previous = _FAMILIES.get(name)
    family = register_family(name, **fields)
    try:
        yield family
    finally:
        if previous is None:
            unregister_family(name)
        else:
            _FAMILIES[name] = previous


def describe(model: Any) -> dict[str, Any]:
    """The contract values of a model, JSON-ready (reports, ``export_report.json``)."""
    scheme = getattr(model, "scheme", None)
    return {"family": getattr(model, "family", None) or None,
            "num_landmarks": num_landmarks_of(model),
            "scheme": getattr(scheme, "name", None),
            "input_sizes": list(input_sizes_of(model) or ()),
            "margin": margin_of(model),
            "stage_names": list(stage_names_of(model))}


__all__: Sequence[str] = (
    "DEFAULT_EXPORT_HOOKS", "DEFAULT_TOLERANCES", "ExportHooks", "LandmarkModel",
    "LandmarkModelMixin", "ModelFamily", "SAVED_MODEL_TARGET", "TFLITE_TARGET",
    "TrainedModel", "baseline_shapes_of", "complete_margin", "describe", "export_hooks_of",
    "families", "family_names", "family_of", "get_family", "input_sizes_of", "margin_of",
    "num_landmarks_of", "register_family", "register_family_module", "registered_family",
    "sizes_from_inputs", "stage_names_of", "unregister_family")
