"""Multi-armed bandits over model versions: the pure core.

``arms`` (sufficient statistics and conjugate posteriors), ``policies``
(Thompson sampling, top-two Thompson, epsilon-greedy, and the floor-mixed
basis-point weights they give), ``ranges`` (sticky bucket ranges: new weights
with the fewest units changing arm), ``contextual`` (LinUCB and linear
Thompson with replayable choices and logged propensities) and ``state`` (the
controller's pure ``step`` and its JSON round trip). The analysis of a bandit
run (inverse-propensity weighting) is :mod:`rollout.experiments.stats.ipw`.
"""

from rollout.core.bandits.arms import BinaryStats, GaussianStats, InvalidBanditInput
from rollout.core.bandits.policies import (
    EpsilonGreedy,
    PolicyConfig,
    ThompsonBeta,
    ThompsonGaussian,
    TopTwoThompson,
    Weights,
    allocation,
)
from rollout.core.bandits.ranges import rebalance
from rollout.core.bandits.state import BanditConfig, BanditState, BanditUpdate, initial_state, step

__all__ = [
    "BanditConfig",
    "BanditState",
    "BanditUpdate",
    "BinaryStats",
    "EpsilonGreedy",
    "GaussianStats",
    "InvalidBanditInput",
    "PolicyConfig",
    "ThompsonBeta",
    "ThompsonGaussian",
    "TopTwoThompson",
    "Weights",
    "allocation",
    "initial_state",
    "rebalance",
    "step",
]
