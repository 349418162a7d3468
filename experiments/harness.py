"""Shared plumbing of the table and figure scripts of ``experiments/``.

Every experiment module (``experiments.msrrn_table1``, ``experiments.ccnn_exp1``, ...)
is a function ``run(setting: Setting) -> ExperimentOutput`` plus a three-line absl
``main``. This module gives them, once:

* :class:`Setting`: where the data is, where results go, how our models are trained
  (preset / steps) or which trained model to use;
* :func:`prepared_data`: a TFRecord folder for any input the package reads (a folder
  of ``common.prepare`` / ``common.synthetic`` TFRecords is used as is; a 300-W tree,
  CUHK or MTFL list, landmark CSV or imglab XML is converted once with
  ``common.prepare`` into ``runs_dir/data`` and reused); no data means the embedded
  synthetic faces of the family;
* :func:`trained_model`: our model trained with the package's own training function
  (``experiments.compare_real.train_or_load_ours``), cached under ``runs_dir`` by
  everything it depends on, so that ``experiments.reproduce`` trains each variant
  once for all the tables that need it;
* :func:`write_outputs`: the JSON + Markdown + PNG files of one experiment, written
  atomically, and the :class:`ExperimentOutput` that ``experiments.reproduce``
  assembles into one report;
* :func:`define_flags` / :func:`setting_from_flags` / :func:`main`: the same flags
  with the same help text in every script.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

FAMILY_POINTS = {"msrrn": 68, "ccnn": 5}
"""Landmarks per family."""

DEFAULT_OUTPUT = "results"
DEFAULT_RUNS_DIR = os.path.join("results", "runs")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one experiment runs on.

    Attributes:
        data: a TFRecord folder, or a raw data set that ``common.prepare`` reads (300-W
            folder, CUHK / MTFL list, landmark CSV, imglab XML); ``None``: the
            embedded synthetic faces of the family (the quick preset's splits).
        output: results root; each experiment writes into ``output/<name>``.
        runs_dir: cache of trained models and converted data shared by experiments.
        preset: training preset of our models (default: the family's ``"quick"``).
        steps: training steps of our models (MSRRN: total; CCNN: per stage).
        model: a trained model of the family (``.keras`` or run directory) used
            instead of training the default variant.
        limit: score only the first this many faces of each evaluation split.
        seed: seed of training and of any sampling.
        format: reader of a raw ``data`` (``common.readers``; ``"auto"`` detects).
        val_fraction: for raw data: fraction held out as the ``val`` split.
    """

    data: str | None = None
    output: str = DEFAULT_OUTPUT
    runs_dir: str = DEFAULT_RUNS_DIR
    preset: str | None = None
    steps: int | None = None
    model: str | None = None
    limit: int | None = None
    seed: int = 0
    format: str = "auto"
    val_fraction: float = 0.1

    def replace(self, **changes: Any) -> Setting:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def out_dir(self, name: str) -> str:
        """The folder of experiment ``name``."""
        return os.path.join(self.output, name)


@dataclasses.dataclass(frozen=True)
class ExperimentOutput:
    """What an experiment wrote.

    Attributes:
        name: module-level name (``"msrrn_table1"``); also the folder and file stem.
        title: one-line title (the paper's table or figure it regenerates).
        markdown: the Markdown report (figures linked by file name).
        results: the JSON-ready results.
        paths: file kind (``"json"``, ``"md"``, figure stems) -> path.
    """

    name: str
    title: str
    markdown: str
    results: Mapping[str, Any]
    paths: Mapping[str, str]


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_tfrecord_folder(path: str) -> bool:
    """Whether ``path`` is a folder of TFRecord shards (``common.tfrecord``)."""
    return os.path.isdir(path) and any(name.endswith(".tfrecord") for name in os.listdir(path))


def prepared_data(setting: Setting, family: str, *, progress: bool = True) -> str:
    """The TFRecord folder an experiment of ``family`` reads.

    Args:
        setting: the experiment's setting (``data``, ``runs_dir``, ``format``,
            ``val_fraction``, ``seed``, ``preset``).
        family: ``"msrrn"`` or ``"ccnn"``.
        progress: show conversion / generation progress.

    Returns:
        ``setting.data`` when it is a TFRecord folder; else the folder it was
        converted into (``runs_dir/data/<name>-<hash>``, converted once with
        ``on_error="skip"``: bad records are reported and skipped); for no data, the
        family's synthetic data set.

    Raises:
        ValueError: unknown family.
        FileNotFoundError: ``setting.data`` does not exist.
    """
    if family not in FAMILY_POINTS:
        raise ValueError(f"family must be one of {sorted(FAMILY_POINTS)}, got {family!r}")
    if setting.data is None:
        return synthetic_data(family, setting.preset, progress=progress)
    if not os.path.exists(setting.data):
        raise FileNotFoundError(f"data not found: {setting.data}")
    if is_tfrecord_folder(setting.data):
        return setting.data
    from common.prepare import prepare_dataset

    source = os.path.abspath(setting.data)
    key = {"source": source, "format": setting.format, "val_fraction": setting.val_fraction,
           "seed": setting.seed, "mtime": int(os.path.getmtime(source))}
    stem = os.path.basename(source.rstrip(os.sep)).split(".")[0] or "data"
    folder = os.path.join(setting.runs_dir, "data", f"{stem}-{_digest(key)}")
    if not (os.path.isfile(os.path.join(folder, "dataset.json")) and is_tfrecord_folder(folder)):
        prepare_dataset(source, folder, format=setting.format, prefix=stem,
                        val_fraction=setting.val_fraction, seed=setting.seed,
                        on_error="skip", progress=progress)
    return folder


def synthetic_data(family: str, preset: str | None = None, *, progress: bool = True) -> str:
    """The embedded synthetic data set of a family's preset (generated once, cached)."""
    if family == "msrrn":
        from common.synthetic import ensure_synthetic_dataset
        from msrrn_tf import training as msrrn_training

        return ensure_synthetic_dataset(68, msrrn_training.synthetic_splits(preset or "quick"),
                                        seed=0, progress=progress)
    if family == "ccnn":
        from ccnn_tf import training as ccnn_training

        return ccnn_training.synthetic_data(preset or "quick", progress=progress)
    raise ValueError(f"family must be one of {sorted(FAMILY_POINTS)}, got {family!r}")


def trained_model(family: str, setting: Setting, data: str, *, variant: str = "default",
                  overrides: Mapping[str, Any] | None = None, train_split: str = "train",
                  eval_split: str = "val", verbose: bool = True):
    """Our model of ``family`` for ``data``: trained once per variant, then reused.

    Args:
        family: ``"msrrn"`` or ``"ccnn"``.
        setting: preset, steps, seed, ``runs_dir`` and, for the default variant,
            ``model`` (a trained model to use instead of training).
        data: TFRecord folder (:func:`prepared_data`).
        variant: a name for a changed configuration (``"no_shake"``, ``"stages_1"``);
            part of the cache folder's name.
        overrides: config fields of the variant (``MSRRNConfig`` / ``CCNNConfig``).
        train_split: the training split.
        eval_split: the split the training logs its error on (nothing is selected on
            it).
        verbose: training progress.

    Returns:
        ``experiments.compare_real.OurModel`` (model, input sizes, margin, info).
    """
    from experiments.compare_real import train_or_load_ours

    overrides = dict(overrides or {})
    model_path = setting.model if (variant == "default" and not overrides) else None
    key = {"family": family, "data": os.path.abspath(data), "variant": variant,
           "overrides": overrides, "preset": setting.preset, "steps": setting.steps,
           "seed": setting.seed, "train_split": train_split}
    run_dir = os.path.join(setting.runs_dir, f"{family}-{variant}-{_digest(key)}")
    return train_or_load_ours(family, data, train_split=train_split, eval_split=eval_split,
                              run_dir=run_dir, model_path=model_path, steps=setting.steps,
                              preset=setting.preset, config_overrides=overrides or None,
                              seed=setting.seed, verbose=verbose)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(setting: Setting, name: str, *, title: str, results: Mapping[str, Any],
                  markdown: str, figures: Mapping[str, Callable[[str], Any]] | None = None
                  ) -> ExperimentOutput:
    """Writes one experiment's JSON, Markdown and figures into ``setting.out_dir(name)``.

    Args:
        setting: where to write.
        name: the experiment's name (file stem and folder).
        title: its title (first line of the Markdown).
        results: JSON-ready results (``name``, ``title`` and ``setting`` are added).
        markdown: the report body; figures are appended as image links.
        figures: figure stem -> function drawing it into the PNG path it is given
            (e.g. ``lambda path: plots.plot_ced(curves, path)``).

    Returns:
        The :class:`ExperimentOutput`.
    """
    out_dir = setting.out_dir(name)
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    links = []
    for stem, draw in (figures or {}).items():
        path = os.path.join(out_dir, f"{stem}.png")
        tmp = os.path.join(out_dir, f".{stem}.tmp-{os.getpid()}.png")
        draw(tmp)
        os.replace(tmp, path)
        paths[stem] = path
        links.append(f"![{stem}]({stem}.png)")
    body = f"# {title}\n\n{markdown.strip()}\n"
    if links:
        body += "\n" + "\n\n".join(links) + "\n"
    full = {"name": name, "title": title, "setting": dataclasses.asdict(setting), **results}
    paths["json"] = os.path.join(out_dir, f"{name}.json")
    paths["md"] = os.path.join(out_dir, f"{name}.md")
    _atomic_write(paths["json"], json.dumps(full, indent=2, default=_json_default) + "\n")
    _atomic_write(paths["md"], body)
    return ExperimentOutput(name=name, title=title, markdown=body, results=full, paths=paths)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def define_flags(family: str | None = None) -> None:
    """Defines the flags every experiment script takes (help text on each)."""
    from absl import flags

    flags.DEFINE_string(
        "data", None, "TFRecord folder (`python -m common.prepare`), or a raw data set that "
        "common.prepare reads: a 300-W folder, a CUHK list (trainImageList.txt), an MTFL "
        "list, a landmark CSV or an imglab XML (converted once into --runs_dir/data). "
        "Default: the embedded synthetic faces" + (f" ({FAMILY_POINTS[family]} points)."
                                                  if family else "."))
    flags.DEFINE_string("output", DEFAULT_OUTPUT, "Results root: each experiment writes "
                        "JSON, Markdown and PNG files into OUTPUT/<experiment name>.")
    flags.DEFINE_string("runs_dir", DEFAULT_RUNS_DIR, "Cache of trained models and converted "
                        "data, shared by all experiments (a rerun reuses them).")
    flags.DEFINE_string("preset", None, "Training preset of our models (msrrn: quick|paper; "
                        "ccnn: quick|paper|tiny). Default: quick.")
    flags.DEFINE_integer("steps", None, "Training steps of our models (MSRRN: total; CCNN: "
                         "per stage). Default: the preset's.", lower_bound=1)
    flags.DEFINE_string("model", None, "A trained model (.keras or run directory) to use "
                        "instead of training the default variant.")
    flags.DEFINE_integer("limit", None, "Score only the first LIMIT faces of each "
                         "evaluation split.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of training and sampling.")
    flags.DEFINE_string("format", "auto", "Reader of a raw --data (auto, 300w, cuhk, mtfl, "
                        "csv, imglab).")
    flags.DEFINE_float("val_fraction", 0.1, "For raw --data: fraction held out as 'val'.",
                       lower_bound=0.0, upper_bound=0.9)


def setting_from_flags() -> Setting:
    """The :class:`Setting` of the parsed flags of :func:`define_flags`."""
    from absl import flags

    values = flags.FLAGS
    return Setting(data=values.data, output=values.output, runs_dir=values.runs_dir,
                   preset=values.preset, steps=values.steps, model=values.model,
                   limit=values.limit, seed=values.seed, format=values.format,
                   val_fraction=values.val_fraction)


def main(run: Callable[[Setting], ExperimentOutput], family: str | None = None) -> None:
    """The ``__main__`` of an experiment script: flags, run, print the report."""
    from absl import app
    from absl import logging as absl_logging

    define_flags(family)

    def _main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        absl_logging.set_verbosity(absl_logging.WARNING)
        output = run(setting_from_flags())
        print(output.markdown, flush=True)
        print(f"written: {', '.join(sorted(output.paths.values()))}", flush=True)

    app.run(_main)
