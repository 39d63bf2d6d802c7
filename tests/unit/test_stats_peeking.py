"""Peeking: what repeated looks at an A/A experiment do to the false-positive rate.

2,000 simulated experiments per scenario, a look every 100 units per arm up
to 2,000 units per arm (20 looks). Per-unit outcomes are drawn once as a
(2000, 2000) matrix per arm and every look's summary comes from cumulative
sums, so a scenario costs a few hundred milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from rollout.experiments.stats.sequential import (
    group_sequential_design,
    group_sequential_test,
    mixing_variance_from_mde,
    mixture_log_likelihood_ratio,
    msprt,
)

EXPERIMENTS = 2_000
UNITS = 2_000
STEP = 100
ALPHA = 0.05
LOOKS = np.arange(STEP, UNITS + 1, STEP)
FRACTIONS = (LOOKS / UNITS).tolist()
# The false-positive rate of a valid procedure is at most alpha; allow two
# binomial standard errors of simulation noise above it.
CEILING = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)


@dataclass(frozen=True)
class Looks:
    """Per-look effect estimates, their variances and z statistics, (experiments, looks)."""

    effects: np.ndarray
    variances: np.ndarray

    @property
    def z(self) -> np.ndarray:
        return self.effects / np.sqrt(self.variances)


def _arm_looks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the mean at every look, from cumulative sums."""
    sums = np.cumsum(values, axis=1)[:, LOOKS - 1]
    squares = np.cumsum(values * values, axis=1)[:, LOOKS - 1]
    means = sums / LOOKS
    variances = (squares - sums * means) / (LOOKS - 1)
    return means, variances / LOOKS


def _simulate(outcome: str, seed: int, effect: float = 0.0) -> Looks:
    rng = np.random.default_rng(seed)
    shape = (EXPERIMENTS, UNITS)
    if outcome == "normal":
        control = rng.standard_normal(shape)
        treatment = rng.standard_normal(shape) + effect
    else:
        control = (rng.random(shape) < 0.1).astype(np.float64)
        treatment = (rng.random(shape) < 0.1 + effect).astype(np.float64)
    mean_c, var_c = _arm_looks(control)
    mean_t, var_t = _arm_looks(treatment)
    return Looks(effects=mean_t - mean_c, variances=var_c + var_t)


@pytest.fixture(scope="module", params=[("normal", 20240611), ("binary", 20240612)])
def aa(request: pytest.FixtureRequest) -> tuple[str, Looks]:
    outcome, seed = request.param
    return outcome, _simulate(outcome, seed)


def _group_sequential_rate(looks: Looks, kind: str) -> float:
    design = group_sequential_design(FRACTIONS, ALPHA, kind)  # type: ignore[arg-type]
    crossed = np.abs(looks.z) >= np.asarray(design.boundaries)
    return float(crossed.any(axis=1).mean())


def _msprt_rate(looks: Looks, mde: float) -> float:
    log_lr = mixture_log_likelihood_ratio(
        looks.effects, looks.variances, mixing_variance_from_mde(mde)
    )
    # Reject at the first look where 1/Λ ≤ alpha, i.e. ln Λ ≥ −ln alpha.
    return float((log_lr >= -math.log(ALPHA)).any(axis=1).mean())


def test_naive_peeking_inflates_the_false_positive_rate(aa: tuple[str, Looks]) -> None:
    outcome, looks = aa
    critical = stats.norm.ppf(1 - ALPHA / 2)
    at_the_end = float((np.abs(looks.z[:, -1]) >= critical).mean())
    peeking = float((np.abs(looks.z) >= critical).any(axis=1).mean())
    # A single look is fine; stopping at the first p < 0.05 among 20 is not.
    assert at_the_end <= CEILING, f"{outcome}: fixed-horizon rate {at_the_end:.4f}"
    assert peeking > 0.12, f"{outcome}: naive peeking rate {peeking:.4f} should be inflated"


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_group_sequential_boundaries_hold_the_false_positive_rate(
    aa: tuple[str, Looks], kind: str
) -> None:
    outcome, looks = aa
    rate = _group_sequential_rate(looks, kind)
    assert rate <= CEILING, f"{outcome}/{kind}: false-positive rate {rate:.4f} > {CEILING:.4f}"


def test_msprt_holds_the_false_positive_rate(aa: tuple[str, Looks]) -> None:
    outcome, looks = aa
    # Plan for an effect of a tenth of a standard deviation of the outcome.
    sd = 1.0 if outcome == "normal" else math.sqrt(0.1 * 0.9)
    rate = _msprt_rate(looks, 0.1 * sd)
    assert rate <= CEILING, f"{outcome}: mSPRT false-positive rate {rate:.4f} > {CEILING:.4f}"


def test_per_experiment_calls_agree_with_the_vectorized_simulation(
    aa: tuple[str, Looks],
) -> None:
    _, looks = aa
    design = group_sequential_design(FRACTIONS, ALPHA, "pocock")
    vectorized = (np.abs(looks.z) >= np.asarray(design.boundaries)).any(axis=1)
    tau2 = mixing_variance_from_mde(0.1)
    log_lr = mixture_log_likelihood_ratio(looks.effects, looks.variances, tau2)
    msprt_vectorized = (log_lr >= -math.log(ALPHA)).any(axis=1)
    # Every rejecting experiment plus a few that did not.
    rows = np.concatenate([np.flatnonzero(vectorized | msprt_vectorized), np.arange(10)])
    for row in rows[:40]:
        gs = group_sequential_test(looks.z[row].tolist(), FRACTIONS, ALPHA, "pocock")
        assert gs.crossed == bool(vectorized[row])
        sprt = msprt(looks.effects[row], looks.variances[row], ALPHA, mixing_variance=tau2)
        assert sprt.rejected == bool(msprt_vectorized[row])


def test_sequential_tests_still_detect_a_real_effect() -> None:
    # Power sanity: 0.15 standard deviations is detected almost always by the
    # end (fixed-sample power ≈ 0.99), so the valid procedures are not simply
    # refusing to reject.
    looks = _simulate("normal", 7, effect=0.15)
    for kind in ("obrien_fleming", "pocock"):
        rate = _group_sequential_rate(looks, kind)
        assert rate > 0.9, f"{kind}: power {rate:.3f}"
    power = _msprt_rate(looks, 0.1)
    assert power > 0.75, f"mSPRT power {power:.3f}"
