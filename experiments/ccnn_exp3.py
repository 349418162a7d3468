"""CCNN Experiment 3 (Fig. 6): stage 1 with vs without shake.

::

    python -m experiments.ccnn_exp3                 # synthetic faces, quick preset
    python -m experiments.ccnn_exp3 --data=DIR --steps=1500

* "shake-": every stage's shake set to 0 (the variant ``no_shake``, shared with
  Experiment 2's windows+ arm and trained once for both).
* "shake+": stage 1 of the shared default cascade: during training its regions are
  translated by a random shake (standard deviation 0.01 of the face box, section
  3.1.2; ``CCNNConfig.stage1_shake_stddev``).

The paper measures the shake on the first stage (section 4.2, Experiment 3: "the test
error of each key point in the first stage"), so the variant trains stage 1 only;
``run(setting, stages=3)`` would also train and compare its later stages. Writes
``ccnn_exp3.json``, ``.md`` and ``per_point.png`` into ``--output/ccnn_exp3``.
"""

from __future__ import annotations

from experiments import harness
from experiments.ccnn_common import NO_SHAKE, Arm, StageAblation

FAMILY = "ccnn"

EXPERIMENT = StageAblation(
    name="ccnn_exp3",
    title="CCNN Experiment 3 (Fig. 6): stage 1 with vs without shake",
    arms=(
        Arm("shake-", "no_shake", NO_SHAKE,
            "no shake (all `stage*_shake_stddev=0`); rotation and flip augmentation as in "
            "the default."),
        Arm("shake+", "default", {},
            "the default cascade: while training, each window is translated by "
            "N(0, 0.01^2) of the face-box width / height, per face and window."),
    ),
    claim=("shake+", "shake-"),
    # Mean stage-1 test error of Fig. 6 (section 4.2, Experiment 3), quoted.
    quoted_means={"shake-": 0.0235, "shake+": 0.0190},
    description="The shake (random translation of the windows while training) on and "
    "off, measured after the first stage like the paper's Fig. 6.",
    figure_title="Per-point error after {stage}: shake+ vs shake- (cf. Fig. 6)",
)
NAME, TITLE, ARMS = EXPERIMENT.name, EXPERIMENT.title, EXPERIMENT.arms
run = EXPERIMENT.run


if __name__ == "__main__":
    harness.main(run, FAMILY)
