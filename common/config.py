"""Grouped model configs: the mechanics shared by ``MSRRNConfig`` and ``CCNNConfig``.

A model's config is a frozen dataclass of three groups, each a frozen dataclass of its
own (``docs/DESIGN.md``, "Configs and presets")::

    config.model     what the network computes (its weights depend on these fields,
                     except the inference options listed in ``INFERENCE_FIELDS``)
    config.train     how it is optimised (schedule, optimiser, regularisation, seeds)
    config.augment   how the training faces are perturbed

Field names are unique across the groups of one config, so a field can be named
without its group wherever a user gives one: ``config.replace(margin=0.3)``,
``--config_json='{"margin": 0.3}'``, the flat ``config.json`` of runs written before
the groups existed. Reading ``config.margin`` reads ``config.model.margin``.
``to_dict()`` writes the nested form; ``from_dict`` reads either.

Named presets sit in the config class (``PRESETS``, the one place a preset is
defined): ``MSRRNConfig.preset("quick", batch_size=16)``.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from common.box_perturbation import BoxRanges

_Config = TypeVar("_Config", bound="GroupedConfig")
_Group = TypeVar("_Group", bound="ConfigGroup")


def to_tuples(value: Any) -> Any:
    """Lists (from JSON or flags) as tuples, recursively, so a config stays hashable."""
    if isinstance(value, list | tuple):
        return tuple(to_tuples(v) for v in value)
    return value


def to_lists(value: Any) -> Any:
    """``value`` with every tuple turned into a list, through nested lists and mappings
    (what JSON writes back)."""
    if isinstance(value, Mapping):
        return {k: to_lists(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_lists(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ConfigGroup:
    """Base of one group of a config: lists become tuples, then :meth:`validate` runs.

    Attributes:
        INFERENCE_FIELDS: fields of the group that change only how a trained model is
            run (the weights do not depend on them); they may differ between the
            stages of one run and be switched after training.
    """

    INFERENCE_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, field.name, to_tuples(value))
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` for an invalid field value (override per group)."""

    def replace(self: _Group, **changes: Any) -> _Group:
        """A copy with ``changes`` applied (validated).

        Raises:
            ValueError: a name is not a field of the group (the message lists them).
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s) {unknown}; "
                             f"known: {names}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The group as a JSON-friendly dict (tuples become lists)."""
        return {f.name: to_lists(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class BoxAugmentGroup(ConfigGroup):
    """The face-box perturbation fields both models' augmentation groups share.

    Attributes:
        box_shift_x, box_shift_y: (low, high) training shifts of the face box centre,
            fractions of the box width / height (``common.pipeline.AugmentConfig``).
            Neither paper perturbs the box: ``(0, 0)`` (off) by default, so a model's
            ``paper`` preset has the paper's augmentation only; the ``quick`` presets
            set the measured detector variance (``common.box_perturbation``).
            ``[0, 0]`` in ``--config_json`` switches a shift off.
        box_scale_range: (low, high) training factor of the box sides (the crop
            side); ``(1, 1)``: off.
        box_aspect_range: (low, high) training factor of the box's height/width;
            ``(1, 1)`` (off) in every preset: the square crop on the longer side turns
            an aspect change into a scale change, which ``box_scale_range`` covers.
    """

    box_shift_x: tuple[float, float] = (0.0, 0.0)
    box_shift_y: tuple[float, float] = (0.0, 0.0)
    box_scale_range: tuple[float, float] = (1.0, 1.0)
    box_aspect_range: tuple[float, float] = (1.0, 1.0)

    def validate(self) -> None:
        self.box_ranges  # noqa: B018 (validates the ranges)

    @property
    def box_ranges(self) -> BoxRanges:
        """The training face-box perturbation, a ``common.box_perturbation.BoxRanges``.

        Raises:
            ValueError: a ``box_*`` field is not a valid ``(low, high)`` range.
        """
        return BoxRanges(shift_x=self.box_shift_x, shift_y=self.box_shift_y,
                         scale=self.box_scale_range, aspect=self.box_aspect_range)


@dataclasses.dataclass(frozen=True, init=False)
class GroupedConfig:
    """Base of a model config whose fields are :class:`ConfigGroup` dataclasses.

    Subclasses are ``@dataclasses.dataclass(frozen=True, init=False)`` (they keep this
    constructor), declare each group as ``name: GroupClass = dataclasses.field(
    default_factory=GroupClass)`` and their named presets in ``PRESETS``.

    The constructor and :meth:`replace` take group names (a group object or a
    mapping of its fields) and field names (routed to their group):
    ``MSRRNConfig(margin=0.3)``, ``MSRRNConfig(model={"margin": 0.3})`` and
    ``MSRRNConfig(model=MSRRNModelConfig(margin=0.3))`` are the same config.

    Attributes:
        PRESETS: ``{name: overrides}``; the overrides are what :meth:`replace` takes.
    """

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, **values: Any):
        groups = self._routed({name: group_cls()
                               for name, group_cls in self.group_classes().items()}, values)
        for name, group in groups.items():
            object.__setattr__(self, name, group)

    # -- structure ----------------------------------------------------------------

    @classmethod
    def group_classes(cls) -> dict[str, type[ConfigGroup]]:
        """``{group name: group class}`` in declaration order."""
        return {f.name: f.default_factory for f in dataclasses.fields(cls)}

    @classmethod
    def field_groups(cls) -> dict[str, str]:
        """``{field name: group name}`` over every group.

        Raises:
            TypeError: two groups declare the same field name.
        """
        cached = cls.__dict__.get("_field_groups")
        if cached is not None:
            return cached
        owners: dict[str, str] = {}
        for group, group_cls in cls.group_classes().items():
            for field in dataclasses.fields(group_cls):
                if field.name in owners:
                    raise TypeError(f"{cls.__name__}: field {field.name!r} is in both "
                                    f"{owners[field.name]!r} and {group!r}")
                owners[field.name] = group
        cls._field_groups = owners
        return owners

    def __getattr__(self, name: str) -> Any:
        # Only reached when ordinary lookup fails: a field named without its group.
        group = type(self).field_groups().get(name)
        if group is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(getattr(self, group), name)

    # -- changes ------------------------------------------------------------------

    @classmethod
    def _routed(cls, groups: dict[str, ConfigGroup],
                values: Mapping[str, Any]) -> dict[str, ConfigGroup]:
        """``groups`` with ``values`` applied: group objects replace a group, then
        group mappings and field names change fields (every changed group validated)."""
        classes = cls.group_classes()
        owners = cls.field_groups()
        groups = dict(groups)
        per_group: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key in classes:
                if isinstance(value, classes[key]):
                    groups[key] = value
                elif isinstance(value, Mapping):
                    per_group.setdefault(key, {}).update(value)
                else:
                    raise TypeError(f"{cls.__name__}.{key} must be a "
                                    f"{classes[key].__name__} or a mapping, got "
                                    f"{type(value).__name__}")
            elif key in owners:
                per_group.setdefault(owners[key], {})[key] = value
            else:
                raise ValueError(
                    f"unknown {cls.__name__} field(s) [{key!r}]; groups: "
                    f"{list(classes)}; fields: {sorted(owners)}")
        for name, changes in per_group.items():
            groups[name] = groups[name].replace(**changes)
        return groups

    def replace(self: _Config, **changes: Any) -> _Config:
        """A copy with ``changes`` applied (every changed group validated).

        Args:
            **changes: group names with a group object or a mapping of that group's
                fields, and/or field names (routed to their group).

        Returns:
            The new config.

        Raises:
            ValueError: a name that is neither a group nor a field (the message lists
                the known ones), or an invalid value.
            TypeError: a group given as something other than its class or a mapping.
        """
        current = {name: getattr(self, name) for name in self.group_classes()}
        return type(self)(**self._routed(current, changes))

    # -- presets ------------------------------------------------------------------

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """The names of the presets of :attr:`PRESETS`."""
        return tuple(cls.PRESETS)

    @classmethod
    def preset(cls: type[_Config], name: str, **overrides: Any) -> _Config:
        """The config of a named preset with ``overrides`` applied on top.

        Raises:
            ValueError: an unknown preset (names the known ones) or field.
        """
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; expected one of "
                             f"{cls.preset_names()}")
        return cls().replace(**cls.PRESETS[name]).replace(**overrides)

    # -- serialisation ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{group: {field: value}}``, JSON-friendly (tuples become lists)."""
        return {name: getattr(self, name).to_dict() for name in self.group_classes()}

    def flat_dict(self) -> dict[str, Any]:
        """``{field: value}`` over every group (JSON-friendly)."""
        return {k: v for group in self.to_dict().values() for k, v in group.items()}

    def structural_dict(self) -> dict[str, Any]:
        """The fields the weights depend on: the ``model`` group without its
        inference options (``ConfigGroup.INFERENCE_FIELDS``)."""
        model = self.model
        return {k: v for k, v in model.to_dict().items()
                if k not in type(model).INFERENCE_FIELDS}

    @classmethod
    def from_dict(cls: type[_Config], values: Mapping[str, Any]) -> _Config:
        """Builds a config from ``to_dict()`` output or from flat field names (the
        ``config.json`` of older runs); missing fields keep their defaults.

        Raises:
            ValueError: a key that is neither a group nor a field.
        """
        return cls().replace(**values)

    def to_json(self) -> str:
        """The config as indented JSON (nested by group)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[_Config], text: str) -> _Config:
        """Parses ``to_json()`` output (or a flat JSON object of fields)."""
        return cls.from_dict(json.loads(text))


def flatten_config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config's values with nested group mappings lifted to the top.

    Reads what any run wrote: flat field names, ``{"model": {...}, ...}`` groups, or a
    runner config holding a model config (CCNN stages: ``{"ccnn": {"model": ...}}``).
    Keys at the top win over nested ones.
    """
    merged: dict[str, Any] = {}
    for value in values.values():
        if isinstance(value, Mapping):
            merged.update(flatten_config_values(value))
    merged.update({k: v for k, v in values.items() if not isinstance(v, Mapping)})
    return merged


def overrides_from_json(text: str) -> dict[str, Any]:
    """Config overrides from a ``--config_json`` value: a JSON object of fields (flat
    names or ``{"model": {...}}`` groups), or the path of a JSON file holding one or a
    run's ``config.json`` (its ``config.values`` are used).

    Raises:
        ValueError: neither an existing file nor valid JSON, or not a JSON object
            (the message names the file where there is one).
    """
    import os

    source = "--config_json"
    if os.path.isfile(text):
        source = text
        with open(text) as f:
            text = f.read()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: neither a file nor valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{source}: must be a JSON object, got {type(values).__name__}")
    if isinstance(values.get("config"), dict):  # a run's config.json
        values = values["config"].get("values", values["config"])
    return values


def config_json_flag(text: str | None) -> dict[str, Any] | None:
    """:func:`overrides_from_json` for a command's ``--config_json`` flag: ``None`` when
    the flag is empty, an ``absl.app.UsageError`` naming what is wrong otherwise."""
    if not text:
        return None
    from absl import app

    try:
        return overrides_from_json(text)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
