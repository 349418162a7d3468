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
* :func:`compared` / :func:`fitted_peer`: ``experiments.compare_real.compare`` of our
  default model and the peers on one evaluation split, run once and cached, and the
  fitted peers themselves, all from ONE peer cache per family and data set under
  ``runs_dir`` (:func:`comparison_dir`), so that every table and figure sees the same
  dlib ERT, trained once;
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
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ccnn_tf  # noqa: F401  (registers the model family; imports no TensorFlow)
import msrrn_tf  # noqa: F401
from common import atomic, landmark_model

FAMILY_POINTS = {name: family.num_landmarks
                 for name, family in landmark_model.families().items()}
"""Landmarks per registered family (``common.landmark_model``)."""

DEFAULT_OUTPUT = "results"
DEFAULT_RUNS_DIR = os.path.join("results", "runs")

QUICK_DLIB_OPTIONS: dict[str, Any] = {"num_trees_per_cascade_level": 100,
                                      "oversampling_amount": 5}
"""dlib ERT training options of the quick presets (:func:`dlib_options`).

dlib's defaults (``experiments.peers.DLIB_DEFAULT_OPTIONS``: 10 cascades of 500 trees, 20
initialisations per face) took 57 min on the 2,661 ytf68 training faces on two shared
cores. A fifth of the trees and a quarter of the initialisations (a twentieth of the
tree fits) took 137 s on the 2,000 synthetic training faces of the default data set
(two cores shared with other jobs, beside our model's training) and reached 5.3 %
inter-pupil NME on its 200 val faces, so that dlib trains beside our quick model within
the experiments' time budget. Real data (``--data``), the ``"paper"`` preset, or
``--dlib_options='{}'`` use dlib's defaults."""


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
        peers: peer names of ``experiments.compare_real.PEER_NAMES`` run beside our
            model; ``None``: ``compare_real.DEFAULT_PEERS`` (skipped with a note when
            not installed).
        dlib_options: dlib ERT training options (overrides of dlib's defaults);
            ``None``: :func:`dlib_options` of the preset.
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
    peers: tuple[str, ...] | None = None
    dlib_options: Mapping[str, Any] | None = None

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
    from common import landmark_model

    entry = landmark_model.get_family(family)
    if entry.synthetic_data is None:
        raise ValueError(f"family {family!r} registers no synthetic data set")
    return entry.synthetic_data(preset, progress=progress)


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
    run_dir = model_run_dir(family, setting, data, variant=variant, overrides=overrides,
                            train_split=train_split)
    return train_or_load_ours(family, data, train_split=train_split, eval_split=eval_split,
                              run_dir=run_dir, model_path=model_path, steps=setting.steps,
                              preset=setting.preset, config_overrides=overrides or None,
                              seed=setting.seed, verbose=verbose)


def model_run_dir(family: str, setting: Setting, data: str, *, variant: str = "default",
                  overrides: Mapping[str, Any] | None = None,
                  train_split: str = "train") -> str:
    """The run directory :func:`trained_model` trains a variant in (under ``runs_dir``,
    named by everything the model depends on)."""
    key = {"family": family, "data": os.path.abspath(data), "variant": variant,
           "overrides": dict(overrides or {}), "preset": setting.preset,
           "steps": setting.steps, "seed": setting.seed, "train_split": train_split}
    return os.path.join(setting.runs_dir, f"{family}-{variant}-{_digest(key)}")


def dlib_options(setting: Setting) -> dict[str, Any]:
    """dlib ERT training options of a setting: ``setting.dlib_options`` if given, else
    ``QUICK_DLIB_OPTIONS`` on the embedded synthetic default data (no ``data``) with a
    preset other than ``"paper"``, and dlib's own defaults (``{}``) everywhere else:
    on real data the peer is never weakened to save time."""
    if setting.dlib_options is not None:
        return dict(setting.dlib_options)
    quick = setting.data is None and setting.preset != "paper"
    return dict(QUICK_DLIB_OPTIONS) if quick else {}


def peer_names(setting: Setting) -> list[str]:
    """The peers of a setting (``compare_real.DEFAULT_PEERS`` unless ``setting.peers``)."""
    from experiments import compare_real

    return list(compare_real.DEFAULT_PEERS if setting.peers is None else setting.peers)


def comparison_dir(setting: Setting, family: str, data: str) -> str:
    """The folder of the comparisons of ``family`` on ``data`` under ``runs_dir``.

    It is the ``output`` of every ``compare_real.compare`` call made by
    :func:`compared`, so its ``peers/`` subfolder is the one cache of fitted peers
    (dlib ERT, mean shape) that all experiments of the family share on that data set
    (:func:`fitted_peer` reads the same one); a fitted peer is reused while the
    training shards and its options are unchanged.
    """
    key = {"family": family, "data": os.path.abspath(data)}
    return os.path.join(setting.runs_dir, f"compare-{family}-{_digest(key)}")


def _model_stamp(path: str | None) -> list[Any] | None:
    """Identifies the trained model at ``path`` (file or run directory): its final file's
    path, size and mtime; ``None`` when there is none yet."""
    if not path:
        return None
    from common.evaluation import MODEL_FILE

    final = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(final):
        return None
    return [os.path.abspath(final), os.path.getsize(final), int(os.path.getmtime(final))]


def compared(family: str, setting: Setting, data: str, eval_split: str, *,
             train_split: str = "train", verbose: bool = True) -> dict[str, Any]:
    """``compare_real.compare`` of our default model and the peers on one split, cached.

    Our model is the one :func:`trained_model` returns for the default variant (the
    same run directory, or ``setting.model``); the trained peers come from the shared
    cache of :func:`comparison_dir` (fitted in a child process while our model trains,
    when it is not trained yet). The reports ``compare`` writes (``compare_<family>``
    ``.json``, ``.md``, ``_ced.png``, ...) are moved into a subfolder per split and
    reused by any later call with the same model, peers, options and limit.

    Args:
        family: ``"msrrn"`` or ``"ccnn"``.
        setting: the setting (model, preset, steps, seed, peers, dlib options, limit).
        data: TFRecord folder (:func:`prepared_data`).
        eval_split: the split every method is scored on.
        train_split: the split our model and the trained peers learn from.
        verbose: progress output.

    Returns:
        ``compare``'s ``{"results", "markdown", "paths"}`` (paths of the moved files:
        ``"json"``, ``"markdown"``, ``"ced"`` and whatever else ``compare`` wrote) plus
        ``"reused"``: whether it came from the cache.
    """
    from experiments import compare_real

    output = comparison_dir(setting, family, data)
    run_dir = model_run_dir(family, setting, data, train_split=train_split)
    model_path = setting.model
    peers, options = peer_names(setting), dlib_options(setting)
    key = {"family": family, "data": os.path.abspath(data), "eval_split": eval_split,
           "train_split": train_split, "peers": peers, "dlib_options": options,
           "limit": setting.limit, "preset": setting.preset, "steps": setting.steps,
           "seed": setting.seed, "model": os.path.abspath(model_path or run_dir)}
    folder = os.path.join(output, f"{eval_split}-{_digest(key)}")
    record_path = os.path.join(folder, "compared.json")
    stamp = _model_stamp(model_path or run_dir)
    if stamp is not None and os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if (record.get("model_stamp") == stamp
                and all(os.path.isfile(p) for p in record["paths"].values())):
            with open(record["paths"]["json"]) as f:
                results = json.load(f)
            with open(record["paths"]["markdown"]) as f:
                markdown = f.read()
            return {"results": results, "markdown": markdown, "paths": record["paths"],
                    "reused": True}
    report = compare_real.compare(
        family, data, output=output, train_split=train_split, eval_split=eval_split,
        model_path=model_path, steps=setting.steps, preset=setting.preset, peers=peers,
        run_dir=run_dir, dlib_options=options,
        # A child process fits the peers only while our model trains.
        parallel_peers=_model_stamp(model_path or run_dir) is None,
        limit=setting.limit, seed=setting.seed, verbose=verbose)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for kind, path in report["paths"].items():
        paths[kind] = os.path.join(folder, os.path.basename(path))
        os.replace(path, paths[kind])
    record = {"key": key, "model_stamp": _model_stamp(model_path or run_dir),
              "paths": paths}
    atomic.write_text(record_path, json.dumps(record, indent=2) + "\n")
    return {**report, "paths": paths, "reused": False}


def fitted_peer(setting: Setting, family: str, data: str, name: str, *,
                train_split: str = "train"):
    """A trained peer (``"dlib_ert"``, ``"mean_shape"``) from the shared cache of
    :func:`comparison_dir`, fitted there first when absent (the same options as
    :func:`compared`, so each fits once for both)."""
    from experiments import compare_real

    cache_dir = os.path.join(comparison_dir(setting, family, data), "peers")
    records = compare_real.fit_trained_peers(data, train_split, [name], cache_dir,
                                             dlib_options=dlib_options(setting), reuse=True)
    return compare_real.load_trained_peer(name, records[name])




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
        atomic.write_atomically(path, draw, suffix=".png")
        paths[stem] = path
        links.append(f"![{stem}]({stem}.png)")
    body = f"# {title}\n\n{markdown.strip()}\n"
    if links:
        body += "\n" + "\n\n".join(links) + "\n"
    full = {"name": name, "title": title, "setting": dataclasses.asdict(setting), **results}
    paths["json"] = os.path.join(out_dir, f"{name}.json")
    paths["md"] = os.path.join(out_dir, f"{name}.md")
    atomic.write_text(paths["json"], json.dumps(full, indent=2, default=json_default) + "\n")
    atomic.write_text(paths["md"], body)
    return ExperimentOutput(name=name, title=title, markdown=body, results=full, paths=paths)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays (anything else: str)."""
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
    define_shared_flags()


def define_shared_flags() -> None:
    """Defines the flags of a :class:`Setting` that every experiment program shares
    (this module's scripts and ``experiments.reproduce``); read by
    :func:`shared_setting_fields`."""
    from absl import flags

    flags.DEFINE_integer("limit", None, "Score only the first LIMIT faces of each "
                         "evaluation split.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of training and sampling.")
    flags.DEFINE_string("format", "auto", "Reader of raw data (auto, 300w, cuhk, mtfl, "
                        "csv, imglab).")
    flags.DEFINE_float("val_fraction", 0.1, "For raw data: fraction held out as 'val'.",
                       lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_list("peers", None, "Peers run beside our model (experiments.compare_real "
                      "names: dlib_ert, mean_shape, mtcnn, ...). Default: compare_real's "
                      "default peers, each skipped with a note when not installed.")
    flags.DEFINE_string("dlib_options", None, "JSON object of dlib ERT training options "
                        "(overrides of dlib's defaults), e.g. '{}' for dlib's defaults. "
                        "Default: dlib's defaults for the paper preset, else "
                        "experiments.harness.QUICK_DLIB_OPTIONS.")
    # Flags defined here belong to this module, and `--help` lists only the main
    # module's: make them the running program's, so its --help shows them.
    values = flags.FLAGS
    for flag in values.get_key_flags_for_module(sys.modules[__name__]):
        values.register_key_flag_for_module(sys.argv[0], flag)


def shared_setting_fields() -> dict[str, Any]:
    """The :class:`Setting` fields of the parsed :func:`define_shared_flags` flags.

    Raises:
        ValueError, TypeError: ``--dlib_options`` is not a JSON object.
    """
    from absl import flags

    values = flags.FLAGS
    return {"limit": values.limit, "seed": values.seed, "format": values.format,
            "val_fraction": values.val_fraction,
            "peers": tuple(values.peers) if values.peers is not None else None,
            "dlib_options": parse_json_object(values.dlib_options, "--dlib_options")}


def setting_from_flags() -> Setting:
    """The :class:`Setting` of the parsed flags of :func:`define_flags`."""
    from absl import flags

    values = flags.FLAGS
    return Setting(data=values.data, output=values.output, runs_dir=values.runs_dir,
                   preset=values.preset, steps=values.steps, model=values.model,
                   **shared_setting_fields())


def parse_json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """A JSON object given on the command line (``None`` for no text).

    Raises:
        ValueError: not JSON.
        TypeError: JSON, but not an object.
    """
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a JSON object, got {text!r}")
    return value


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
