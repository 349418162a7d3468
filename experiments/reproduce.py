"""Runs every table and figure experiment and writes one report.

::

    python -m experiments.reproduce                              # synthetic faces
    python -m experiments.reproduce --msrrn_data=/data/300w --ccnn_data=/data/sun5
    python -m experiments.reproduce --only=msrrn_table1,msrrn_fig3 --output=results

Each experiment of :data:`EXPERIMENTS` (a module ``experiments.<name>`` with
``run(setting) -> harness.ExperimentOutput``, ``FAMILY`` and ``TITLE``) runs with the
:class:`experiments.harness.Setting` of its family (``--msrrn_*`` / ``--ccnn_*``
flags) and one shared ``--runs_dir``, so each model variant and each peer is trained
once for all the experiments that need it. An experiment that fails is recorded
(with its error) and the others still run; the exit status is 1 if any failed.

Writes ``OUTPUT/<experiment>/...`` (each experiment's files), ``OUTPUT/report.md``
(title, setting, table of contents, every experiment's Markdown with its figure
links made relative to the report, time per experiment) and ``OUTPUT/report.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from common import atomic, landmark_model
from experiments import harness

EXPERIMENTS = (
    "msrrn_table1",
    "msrrn_table2",
    "msrrn_fig3",
    "msrrn_fig5",
    "ccnn_exp1",
    "ccnn_exp2",
    "ccnn_exp3",
    "ccnn_fig7",
    "ccnn_table3",
    "ccnn_fig8",
)
"""The experiment modules of ``experiments/``, in the order they run (Table 1 first:
it trains our MSRRN and fits dlib ERT beside it; the later MSRRN ones reuse both)."""

REPORT_TITLE = "Reproduction report: MSRRN (Wang et al. 2017) and CCNN"

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


@dataclasses.dataclass
class ExperimentRecord:
    """How one experiment went.

    Attributes:
        name: module name.
        family: ``"msrrn"`` / ``"ccnn"`` (``None`` when the module could not load).
        title: its title.
        status: ``"ok"`` or ``"failed"``.
        seconds: wall time.
        output: what it wrote (``None`` on failure).
        error: the exception's type and message (failure only).
        traceback: the formatted traceback (failure only).
    """

    name: str
    family: str | None
    title: str
    status: str
    seconds: float
    output: harness.ExperimentOutput | None = None
    error: str | None = None
    traceback: str | None = None


def _relative_links(markdown: str, source_dir: str, report_dir: str) -> str:
    """Rewrites relative link targets of Markdown written in ``source_dir`` so that they
    resolve from ``report_dir``."""
    prefix = os.path.relpath(os.path.abspath(source_dir), os.path.abspath(report_dir))

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        joined = os.path.normpath(os.path.join(prefix, target)).replace(os.sep, "/")
        return f"{match.group(1)}{joined}{match.group(3)}"

    return _LINK.sub(rewrite, markdown)


def _demote_headings(markdown: str) -> str:
    """Moves every Markdown heading one level down (``#`` -> ``##``), outside code."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        lines.append("#" + line if not fenced and re.match(r"^#{1,5} ", line) else line)
    return "\n".join(lines)


def _anchor(text: str) -> str:
    """The GitHub-style anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def run_experiments(names: Sequence[str], settings: Mapping[str, harness.Setting], *,
                    options: Mapping[str, Mapping[str, Any]] | None = None,
                    load: Callable[[str], Any] | None = None,
                    log: Callable[[str], None] = print) -> list[ExperimentRecord]:
    """Runs experiments one after the other, continuing past failures.

    Args:
        names: experiment names (modules ``experiments.<name>``).
        settings: ``{family: Setting}``.
        options: ``{name: keyword arguments of its run()}``.
        load: name -> module (default: import ``experiments.<name>``).
        log: progress output.

    Returns:
        One :class:`ExperimentRecord` per name, in order.
    """
    load = load or (lambda name: importlib.import_module(f"experiments.{name}"))
    records = []
    for number, name in enumerate(names, 1):
        prefix = f"[reproduce {number}/{len(names)}] {name}"
        start = time.perf_counter()
        module = None
        try:
            module = load(name)
            family = module.FAMILY
            log(f"{prefix}: {module.TITLE} ({family}) ...")
            output = module.run(settings[family], **dict((options or {}).get(name, {})))
            seconds = time.perf_counter() - start
            records.append(ExperimentRecord(name, family, output.title, "ok", seconds,
                                            output=output))
            log(f"{prefix}: done in {seconds:.1f} s")
        except Exception as error:  # noqa: BLE001 - recorded, and the others still run
            seconds = time.perf_counter() - start
            records.append(ExperimentRecord(
                name, getattr(module, "FAMILY", None), getattr(module, "TITLE", name),
                "failed", seconds, error=f"{type(error).__name__}: {error}",
                traceback=traceback.format_exc()))
            log(f"{prefix}: FAILED after {seconds:.1f} s: {type(error).__name__}: {error}")
    return records


def _setting_lines(settings: Mapping[str, harness.Setting],
                   families: set[str]) -> list[str]:
    lines = []
    for family, setting in settings.items():
        if families and family not in families:
            continue
        values = {k: v for k, v in dataclasses.asdict(setting).items() if v is not None}
        lines.append(f"- {family}: " + ", ".join(f"{k}=`{v}`" for k, v in values.items()))
    return lines


def write_report(records: Sequence[ExperimentRecord], settings: Mapping[str, harness.Setting],
                 output: str, *, total_seconds: float) -> dict[str, str]:
    """Writes ``report.md`` and ``report.json`` into ``output``.

    Returns:
        ``{"md": path, "json": path}``.
    """
    os.makedirs(output, exist_ok=True)
    failed = [r for r in records if r.status != "ok"]
    headings = [f"{r.name}: {r.title}" for r in records]
    lines = [f"# {REPORT_TITLE}", "",
             (f"{len(records)} experiments, {len(records) - len(failed)} ok, "
              f"{len(failed)} failed, {total_seconds / 60:.1f} min in all."),
             "", "## Setting", "",
             *_setting_lines(settings, {r.family for r in records if r.family}), "",
             "## Contents", ""]
    for record, heading in zip(records, headings, strict=True):
        lines.append(f"- [{heading}](#{_anchor(heading)}) ({record.status}, "
                     f"{record.seconds:.0f} s)")
    lines += ["", "## Time per experiment", "", "| experiment | status | seconds |",
              "|---|---|---:|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} |" for r in records]
    for record, heading in zip(records, headings, strict=True):
        lines += ["", f"## {heading}", "", f"*{record.status}, {record.seconds:.1f} s*", ""]
        if record.output is None:
            lines += ["**Failed:**", "", "```", (record.traceback or record.error or "").rstrip(),
                      "```"]
            continue
        body = record.output.markdown
        first, _, rest = body.partition("\n")
        if first.startswith("# "):  # the title is already the section heading
            body = rest
        source_dir = os.path.dirname(record.output.paths.get("md", "")) or output
        lines.append(_demote_headings(_relative_links(body.strip(), source_dir, output)))
    paths = {"md": os.path.join(output, "report.md"),
             "json": os.path.join(output, "report.json")}
    summary = {
        "title": REPORT_TITLE,
        "settings": {family: dataclasses.asdict(s) for family, s in settings.items()},
        "total_seconds": total_seconds,
        "failed": [r.name for r in failed],
        "experiments": [
            {"name": r.name, "family": r.family, "title": r.title, "status": r.status,
             "seconds": r.seconds, "error": r.error, "traceback": r.traceback,
             "paths": dict(r.output.paths) if r.output else {},
             "results": dict(r.output.results) if r.output else None}
            for r in records],
    }
    atomic.write_text(paths["md"], "\n".join(lines) + "\n")
    atomic.write_text(paths["json"], json.dumps(summary, indent=2,
                                                    default=harness.json_default) + "\n")
    return paths


def reproduce(names: Sequence[str], settings: Mapping[str, harness.Setting], output: str,
              *, options: Mapping[str, Mapping[str, Any]] | None = None,
              load: Callable[[str], Any] | None = None,
              log: Callable[[str], None] = print) -> tuple[list[ExperimentRecord],
                                                           dict[str, str]]:
    """Runs the experiments and writes the report (see the module docstring).

    Returns:
        ``(records, {"md": report.md, "json": report.json})``.
    """
    start = time.perf_counter()
    records = run_experiments(names, settings, options=options, load=load, log=log)
    paths = write_report(records, settings, output,
                         total_seconds=time.perf_counter() - start)
    log(f"[reproduce] report: {paths['md']}")
    return records, paths


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _define_flags() -> None:
    """Defines the flags (only when run as a program, never on import)."""
    from absl import flags

    flags.DEFINE_list("only", None, "Run only these experiments (comma-separated): "
                      + ", ".join(EXPERIMENTS) + ". Default: all.")
    flags.DEFINE_string("output", harness.DEFAULT_OUTPUT, "Results root: OUTPUT/<experiment>"
                        "/ and OUTPUT/report.md, OUTPUT/report.json.")
    flags.DEFINE_string("runs_dir", harness.DEFAULT_RUNS_DIR, "Cache of trained models, "
                        "fitted peers and converted data shared by all experiments.")
    for family in harness.FAMILY_POINTS:
        points = harness.FAMILY_POINTS[family]
        flags.DEFINE_string(f"{family}_data", None, f"Data of the {family.upper()} "
                            f"experiments ({points} points): a TFRecord folder or a raw data "
                            "set common.prepare reads. Default: the embedded synthetic faces.")
        flags.DEFINE_string(f"{family}_model", None, f"A trained {family.upper()} model "
                            "(.keras or run directory) used instead of training the default "
                            "variant.")
        flags.DEFINE_integer(f"{family}_steps", None, f"Training steps of our "
                             f"{family.upper()} models ("
                             f"{landmark_model.get_family(family).steps_unit}). Default: "
                             "the preset's.", lower_bound=1)
        flags.DEFINE_string(f"{family}_preset", None, f"Training preset of our "
                            f"{family.upper()} models. Default: quick.")
    harness.define_shared_flags()
    flags.DEFINE_boolean("true_ablation", False, "msrrn_table2: also train MSRRN models with "
                         "1 and 2 stages (one training each).")


def settings_from_flags() -> dict[str, harness.Setting]:
    """``{family: Setting}`` of the parsed flags."""
    from absl import flags

    values = flags.FLAGS
    common = harness.Setting(output=values.output, runs_dir=values.runs_dir,
                             **harness.shared_setting_fields())
    return {family: common.replace(data=values[f"{family}_data"].value,
                                   model=values[f"{family}_model"].value,
                                   steps=values[f"{family}_steps"].value,
                                   preset=values[f"{family}_preset"].value)
            for family in harness.FAMILY_POINTS}


def main(argv: Sequence[str]) -> None:
    """Runs the selected experiments and exits non-zero if any failed."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    values = flags.FLAGS
    names = list(values.only) if values.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise app.UsageError(f"unknown experiments {unknown}; known: {', '.join(EXPERIMENTS)}")
    try:
        settings = settings_from_flags()
    except (ValueError, TypeError) as error:
        raise app.UsageError(str(error)) from error
    options = {"msrrn_table2": {"true_ablation": values.true_ablation}}
    records, _ = reproduce(names, settings, values.output,
                           options={n: o for n, o in options.items() if n in names},
                           log=lambda line: print(line, flush=True))
    failed = [r.name for r in records if r.status != "ok"]
    if failed:
        print(f"[reproduce] {len(failed)} failed: {', '.join(failed)}", flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
