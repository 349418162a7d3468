"""Prints the parameter count of every CCNN network, the total and the model size.

The paper reports 643,920 parameters, about 2.46 MB (section 3.2.4; 643,920 float32
values are 2.46 MiB)::

    python -m ccnn_tf.summary
    python -m ccnn_tf.summary --preset=tiny
    python -m ccnn_tf.summary --config=runs/ccnn/config.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from ccnn_tf.config import CCNNConfig

PAPER_TOTAL_PARAMETERS = 643_920
"""Total parameters of the 23 networks reported in sections 3.2.4 and 4.2."""

BYTES_PER_PARAMETER = 4  # float32

_PRESET = flags.DEFINE_enum(
    "preset", "paper", list(CCNNConfig.preset_names()),
    "Configuration to summarise: a preset of ccnn_tf.config.PRESETS (paper: the "
    "paper's defaults; tiny: the test-size networks).")
_CONFIG = flags.DEFINE_string(
    "config", None,
    "JSON file with CCNNConfig fields (grouped or flat), or a run's config.json; "
    "overrides --preset.")
_NUM_STAGES = flags.DEFINE_integer(
    "num_stages", None, "Number of cascade stages to count (default: the config's).",
    lower_bound=1, upper_bound=3)


def parameter_table(config: CCNNConfig) -> list[dict[str, Any]]:
    """Lists the networks of the cascade built from ``config`` with their sizes.

    Args:
        config: the configuration.

    Returns:
        One dict per network, stage by stage: ``stage`` (1-based), ``network`` (its
        name, e.g. "F1", "LE21"), ``input`` (e.g. "39x39x3"), ``outputs`` (number of
        output values) and ``parameters`` (trainable parameters).
    """
    from ccnn_tf.model import build_ccnn  # TensorFlow only when a table is asked for

    model = build_ccnn(config)
    rows = []
    for stage in range(1, model.num_stages + 1):
        for network in model.stage_layer(stage).networks:
            _, height, width, channels = network.input_shape
            rows.append({
                "stage": stage,
                "network": network.name,
                "input": f"{height}x{width}x{channels}",
                "outputs": int(network.output_shape[-1]),
                "parameters": int(sum(int(w.numpy().size)
                                      for w in network.trainable_weights)),
            })
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Formats ``parameter_table`` rows with per-stage and grand totals and the size."""
    lines = [f"{'stage':>5}  {'network':<8} {'input':<9} {'outputs':>7} {'parameters':>10}"]
    for stage in sorted({r["stage"] for r in rows}):
        stage_rows = [r for r in rows if r["stage"] == stage]
        for r in stage_rows:
            lines.append(f"{r['stage']:>5}  {r['network']:<8} {r['input']:<9} "
                         f"{r['outputs']:>7} {r['parameters']:>10,}")
        subtotal = sum(r["parameters"] for r in stage_rows)
        lines.append(f"{stage:>5}  {'(' + str(len(stage_rows)) + ' nets)':<8} "
                     f"{'':<9} {'':>7} {subtotal:>10,}")
    total = sum(r["parameters"] for r in rows)
    size = total * BYTES_PER_PARAMETER
    lines.append(f"total: {len(rows)} networks, {total:,} parameters "
                 f"({total / PAPER_TOTAL_PARAMETERS:.2%} of the paper's "
                 f"{PAPER_TOTAL_PARAMETERS:,})")
    lines.append(f"size as float32: {size / 2**20:.2f} MiB ({size / 1e6:.2f} MB); "
                 "the paper: about 2.46 MB")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value:
        with open(_CONFIG.value, encoding="utf-8") as f:
            values = json.load(f)
        if isinstance(values.get("config"), dict):  # a run's config.json
            values = values["config"].get("values", values["config"])
        config = CCNNConfig.from_dict(values)
    else:
        config = CCNNConfig.preset(_PRESET.value)
    if _NUM_STAGES.value is not None:
        config = config.replace(num_stages=_NUM_STAGES.value)
    print(format_table(parameter_table(config)))


if __name__ == "__main__":
    app.run(main)
