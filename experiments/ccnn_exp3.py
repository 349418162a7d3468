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
from experiments.ccnn_common import NO_SHAKE, Arm, stage_ablation

FAMILY = "ccnn"
NAME = "ccnn_exp3"
TITLE = "CCNN Experiment 3 (Fig. 6): stage 1 with vs without shake"

ARMS = (
    Arm("shake-", "no_shake", NO_SHAKE,
        "no shake (all `stage*_shake_stddev=0`); rotation and flip augmentation as in "
        "the default."),
    Arm("shake+", "default", {},
        "the default cascade: while training, each window is translated by "
        "N(0, 0.01^2) of the face-box width / height, per face and window."),
)
CLAIM = ("shake+", "shake-")
PAPER_MEANS = {"shake-": 0.0235, "shake+": 0.0190}
"""Mean stage-1 test error of Fig. 6 (section 4.2, Experiment 3), quoted."""


def run(setting: harness.Setting, *, stages: int = 1,
        verbose: bool = True) -> harness.ExperimentOutput:
    """Trains stage 1 without shake and compares it with the default, per point.

    Args:
        setting: the experiment's setting.
        stages: stages trained by the variant and compared (1: the paper's).
        verbose: training progress.

    Returns:
        The written ``harness.ExperimentOutput``.
    """
    return stage_ablation(
        setting, name=NAME, title=TITLE, arms=ARMS, claim=CLAIM, quoted_means=PAPER_MEANS,
        stages=stages, verbose=verbose,
        figure_title="Per-point error after {stage}: shake+ vs shake- (cf. Fig. 6)",
        description="The shake (random translation of the windows while training) on and "
        "off, measured after the first stage like the paper's Fig. 6.")


if __name__ == "__main__":
    harness.main(run, FAMILY)
