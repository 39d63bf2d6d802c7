"""Seeded simulations of bandit runs with planted reward rates and batched updates.

1. Regret: Thompson sampling (binary and Gaussian) and top-two Thompson, run
   through the controller's ``step``, lose less reward than the fixed equal
   split over the same traffic.
2. Analysis: under a time trend in the base rate while the allocation shifts,
   the IPW intervals cover the planted effect 95% ± 2% of the time over 500
   runs; the naive difference of means is visibly biased and under-covers.
"""

from __future__ import annotations

import numpy as np
import pytest

from rollout.core.bandits.arms import ArmStats, BinaryStats, GaussianStats
from rollout.core.bandits.policies import (
    ThompsonBeta,
    ThompsonGaussian,
    TopTwoThompson,
    allocation,
)
from rollout.core.bandits.state import BanditConfig, initial_state, step
from rollout.experiments.stats.ipw import analyse_ipw

pytestmark = pytest.mark.unit

UPDATES = 25
BATCH = 400


def _regret_ratio(config: BanditConfig, means: np.ndarray, runs: int, seed: int) -> float:
    """Mean cumulative expected regret of the bandit over ``runs`` runs, divided by
    that of the fixed equal split on the same traffic (UPDATES × BATCH decisions)."""
    rng = np.random.default_rng(seed)
    gaps = means.max() - means
    k = means.size
    binary = config.policy.reward == "binary"
    total = 0.0
    for _ in range(runs):
        state = initial_state(config)
        for t in range(UPDATES):
            n = rng.multinomial(BATCH, np.array(state.weights_bp) / 10_000)
            total += float(n @ gaps)
            batch: dict[str, ArmStats] = {}
            for i in range(k):
                if binary:
                    batch[config.arms[i]] = BinaryStats(int(rng.binomial(n[i], means[i])),
                                                        int(n[i]))
                else:
                    y = rng.normal(means[i], 1.0, n[i])
                    batch[config.arms[i]] = GaussianStats(int(n[i]), float(y.sum()),
                                                          float((y * y).sum()))
            state, _ = step(state, batch, (), float(t), config)
    equal = runs * UPDATES * BATCH * float(gaps.mean())
    return total / equal


@pytest.mark.parametrize(
    ("policy", "means", "bound"),
    [
        # Ratios measured with these seeds: 0.29, 0.20, 0.73.
        (ThompsonBeta(draws=2_000), np.array([0.05, 0.06, 0.08]), 0.5),
        (ThompsonGaussian(draws=2_000), np.array([1.0, 1.1, 1.3]), 0.4),
        (TopTwoThompson(draws=2_000), np.array([0.05, 0.06, 0.08]), 0.9),
    ],
    ids=["thompson_beta", "thompson_gaussian", "top_two"],
)
def test_bandits_have_less_regret_than_the_equal_split(
        policy: ThompsonBeta | ThompsonGaussian | TopTwoThompson, means: np.ndarray,
        bound: float) -> None:
    config = BanditConfig(arms=("v0", "v1", "v2"), policy=policy, seed=1)
    ratio = _regret_ratio(config, means, runs=20, seed=3)
    assert ratio < bound


def test_ipw_intervals_cover_under_drift_and_the_naive_difference_does_not() -> None:
    """Three binary arms with additive effects 0, +0.02, +0.05 on a base rate that
    rises from 0.10 to 0.30 over the run; Thompson sampling (5% floor) moves
    traffic to the best arm, so the control's rows come mostly from the early,
    low-rate period. 20 updates of 250 decisions, 500 runs."""
    effects = np.array([0.0, 0.02, 0.05])
    k, updates, batch, runs = 3, 20, 250, 500
    total = updates * batch
    base = 0.10 + 0.20 * np.arange(total) / total
    policy = ThompsonBeta(draws=1_000)
    rng = np.random.default_rng(7)
    estimates = {name: np.empty((runs, 3)) for name in ("hajek", "horvitz_thompson", "naive")}
    for run in range(runs):
        weights = np.full(k, 1.0 / k)
        successes, trials = np.zeros(k, np.int64), np.zeros(k, np.int64)
        arms = np.empty(total, np.int64)
        props = np.empty(total)
        rewards = np.empty(total)
        for u in range(updates):
            rows = slice(u * batch, (u + 1) * batch)
            chosen = rng.choice(k, size=batch, p=weights)
            y = (rng.random(batch) < base[rows] + effects[chosen]).astype(np.float64)
            arms[rows], props[rows], rewards[rows] = chosen, weights[chosen], y
            successes += np.bincount(chosen, weights=y, minlength=k).astype(np.int64)
            trials += np.bincount(chosen, minlength=k)
            stats_ = {f"v{i}": BinaryStats(int(successes[i]), int(trials[i])) for i in range(k)}
            weights = np.array(allocation(policy, stats_, seed=rng).weights_bp) / 10_000
        result = analyse_ipw(arms, props, rewards, k)
        for name, table in estimates.items():
            d = result.difference(2, name)  # type: ignore[arg-type]
            assert d.status == "ok"
            table[run] = (d.estimate, d.ci_low, d.ci_high)
    truth = effects[2]
    coverage = {n: float(np.mean((t[:, 1] <= truth) & (truth <= t[:, 2])))
                for n, t in estimates.items()}
    bias = {n: float(t[:, 0].mean() - truth) for n, t in estimates.items()}
    # Measured with this seed: Hajek 0.956, HT 0.964, naive 0.424 (bias +0.040).
    assert 0.93 <= coverage["hajek"] <= 0.97
    assert 0.93 <= coverage["horvitz_thompson"] <= 0.97
    for name in ("hajek", "horvitz_thompson"):
        spread = float(estimates[name][:, 0].std())
        assert abs(bias[name]) < 3 * spread / np.sqrt(runs)
    assert coverage["naive"] < 0.7
    assert bias["naive"] > 0.02
