"""Train -> evaluate -> export, once for every model family.

A model package supplies a small *task* (:class:`LandmarkTask`): how to train its
model in a run directory (with ``common.training.train_model``, once or once per
stage), how to evaluate a trained model on a split, and how to export it.
:func:`train_evaluate_export` runs the three in order with the bookkeeping every
family shares: the data spec and its validation folders, the run folder's layout
(``RUN/eval/`` for the report, ``RUN/export/`` for the export, see
``docs/DESIGN.md``, "Run folders"), the faces the export's parity check reads and the
description written into the export report.

MSRRN (``msrrn_tf.training.train_msrrn``) and CCNN (``ccnn_tf.training.train_ccnn``,
whose task trains its three stages in series) are thin wrappers around it; a third
model writes its task and calls it too (``tests/test_toy_model.py``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from common.multidata import DataSpec

EVAL_DIR = "eval"
"""Sub-folder of a run directory holding the evaluation report."""

EXPORT_DIR = "export"
"""Sub-folder of a run directory holding the export (``common.export`` layout)."""


@dataclasses.dataclass
class TaskTraining:
    """What a task's :meth:`LandmarkTask.train` produced.

    Attributes:
        model: the trained model, or ``None`` when nothing can be evaluated yet (e.g.
            no CCNN stage finished).
        complete: whether the model is the finished one, to be exported (a CCNN run
            with only some stages trained is evaluated but not exported).
        info: JSON-ready facts the export report records (``steps``, ``config``...).
        result: the family's own training record (e.g. the runner's ``TrainResult``),
            handed back untouched in :attr:`RunOutcome.training`.
    """

    model: Any
    complete: bool = True
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    result: Any = None


class LandmarkTask(Protocol):
    """How one model family trains, evaluates and exports (module docstring)."""

    def train(self, run_dir: str) -> TaskTraining:
        """Trains (or resumes) the model in ``run_dir``."""

    def evaluate(self, model: Any, data: DataSpec, split: str, out_dir: str,
                 training: TaskTraining) -> Any:
        """Evaluates ``model`` on ``split`` of ``data`` and writes the report to
        ``out_dir``; returns the family's evaluation record."""

    def export(self, model: Any, export_dir: str, *, data: str, split: str,
               info: Mapping[str, Any]) -> Any:
        """Exports ``model`` to ``export_dir``, checking parity on faces of ``split``
        of the folder ``data``; ``info`` goes into the export report."""


@dataclasses.dataclass(frozen=True)
class FunctionTask:
    """A :class:`LandmarkTask` from three functions (the methods' signatures); a
    missing ``evaluate_fn`` / ``export_fn`` makes that step return ``None``."""

    train_fn: Callable[[str], TaskTraining]
    evaluate_fn: Callable[..., Any] | None = None
    export_fn: Callable[..., Any] | None = None

    def train(self, run_dir: str) -> TaskTraining:
        return self.train_fn(run_dir)

    def evaluate(self, model: Any, data: DataSpec, split: str, out_dir: str,
                 training: TaskTraining) -> Any:
        if self.evaluate_fn is None:
            return None
        return self.evaluate_fn(model, data, split, out_dir, training)

    def export(self, model: Any, export_dir: str, *, data: str, split: str,
               info: Mapping[str, Any]) -> Any:
        if self.export_fn is None:
            return None
        return self.export_fn(model, export_dir, data=data, split=split, info=info)


@dataclasses.dataclass
class RunOutcome:
    """What :func:`train_evaluate_export` did.

    Attributes:
        run_dir: the run directory.
        training: the task's :class:`TaskTraining`.
        evaluation: the task's evaluation record, or ``None`` (not asked for, or no
            folder has the validation split).
        export: the task's export record, or ``None``.
        export_dir: the export folder when exported, else ``None``.
        seconds: wall time of the whole call.
    """

    run_dir: str
    training: TaskTraining
    evaluation: Any = None
    export: Any = None
    export_dir: str | None = None
    seconds: float = 0.0


def validation_spec(data: str | Sequence[str] | DataSpec,
                    split: str | None) -> DataSpec | None:
    """The folders of ``data`` that have ``split`` (``None`` if none or no split)."""
    return DataSpec.parse(data).with_split(split) if split else None


def export_info(data: str | Sequence[str] | DataSpec, run_dir: str,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every export report records of its training run: the data (absolute
    spec and its parsed form), the run directory, then ``extra``."""
    spec = DataSpec.parse(data)
    return {"training_data": str(spec.absolute()), "data_spec": spec.to_dict(),
            "run_dir": os.path.abspath(run_dir), **dict(extra or {})}


def train_evaluate_export(task: LandmarkTask, *, data: str | Sequence[str] | DataSpec,
                          run_dir: str, train_split: str = "train",
                          val_split: str | None = "val", evaluate: bool = True,
                          export: bool = True) -> RunOutcome:
    """Trains ``task``'s model in ``run_dir``, evaluates it on ``val_split`` into
    ``run_dir/eval`` and exports it to ``run_dir/export``.

    Args:
        task: the family's :class:`LandmarkTask`.
        data: the training data (``common.multidata.DataSpec`` or its string).
        run_dir: the run directory (rerunning resumes: the task's ``train``).
        train_split: the split trained on (the export's parity faces when no folder
            has ``val_split``).
        val_split: the split evaluated (folders without it are left out), or ``None``.
        evaluate: evaluate after training (when some folder has ``val_split``).
        export: export a complete model.

    Returns:
        A :class:`RunOutcome`.
    """
    start = time.perf_counter()
    spec = DataSpec.parse(data)
    val_spec = validation_spec(spec, val_split)
    trained = task.train(run_dir)
    outcome = RunOutcome(run_dir=run_dir, training=trained)
    if trained.model is None:
        outcome.seconds = time.perf_counter() - start
        return outcome
    if evaluate and val_spec is not None:
        outcome.evaluation = task.evaluate(trained.model, val_spec, val_split,
                                           os.path.join(run_dir, EVAL_DIR), trained)
    if export and trained.complete:
        export_dir = os.path.join(run_dir, EXPORT_DIR)
        outcome.export = task.export(
            trained.model, export_dir, data=(val_spec or spec).folders[0],
            split=val_split if val_spec is not None else train_split,
            info=export_info(spec, run_dir, trained.info))
        outcome.export_dir = export_dir if outcome.export is not None else None
    outcome.seconds = time.perf_counter() - start
    return outcome
