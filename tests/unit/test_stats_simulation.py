"""Monte Carlo checks of the frequentist family: error rates, CUPED's variance
reduction and power, over thousands of simulated experiments.

Each test draws a whole batch of experiments at once with a seeded numpy
Generator, reduces every experiment to its sufficient statistics along the
unit axis, and then runs the (cheap) statistics once per experiment. Bounds are
about three binomial standard errors around the nominal rate, and the seeds
are fixed, so the outcomes are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from rollout.experiments.stats.cuped import cuped_effect
from rollout.experiments.stats.frequentist import ratio_effect, two_proportion_ztest, welch_ttest
from rollout.experiments.stats.power import sample_size_mean, sample_size_proportion
from rollout.experiments.stats.srm import srm_test
from rollout.experiments.stats.summary import EffectEstimate, MeanSummary, PairSummary

Array = npt.NDArray[np.float64]
N_SIMS = 2000
ALPHA = 0.05
# Acceptance band for a false-positive rate at alpha 0.05 over 2,000 runs:
# ±3 binomial standard errors is ±0.0146, rounded out to a fixed band.
FPR_BAND = (0.035, 0.065)


def mean_summaries(y: Array) -> list[MeanSummary]:
    """One summary per row of an (experiments, units) matrix."""
    n = y.shape[1]
    sums, squares = y.sum(axis=1), np.einsum("ij,ij->i", y, y)
    return [MeanSummary(n, float(s), float(q)) for s, q in zip(sums, squares, strict=True)]


def pair_summaries(y: Array, x: Array) -> list[PairSummary]:
    n = y.shape[1]
    columns = zip(
        y.sum(axis=1), np.einsum("ij,ij->i", y, y), x.sum(axis=1),
        np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", x, y), strict=True,
    )
    return [PairSummary(n, *map(float, c)) for c in columns]


def binary_summaries(successes: npt.NDArray[np.int64], n: int) -> list[MeanSummary]:
    return [MeanSummary(n, float(s), float(s)) for s in successes]


def rejection_rate(estimates: list[EffectEstimate]) -> float:
    assert all(e.error is None for e in estimates)
    return float(np.mean([e.p_value < ALPHA for e in estimates]))


def within_binomial_error(rate: float, expected: float, sims: int = N_SIMS) -> bool:
    return abs(rate - expected) <= 3.0 * math.sqrt(expected * (1 - expected) / sims)


# --- A/A false-positive rates ----------------------------------------------


def test_ztest_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(101)
    n_c, n_t, p = 3000, 5000, 0.08
    control = binary_summaries(rng.binomial(n_c, p, N_SIMS), n_c)
    treatment = binary_summaries(rng.binomial(n_t, p, N_SIMS), n_t)
    rate = rejection_rate([two_proportion_ztest(c, t) for c, t in
                           zip(control, treatment, strict=True)])
    assert FPR_BAND[0] <= rate <= FPR_BAND[1]


def test_welch_aa_false_positive_rate_on_skewed_data() -> None:
    rng = np.random.default_rng(202)
    control = mean_summaries(rng.lognormal(0.0, 0.75, (N_SIMS, 150)))
    treatment = mean_summaries(rng.lognormal(0.0, 0.75, (N_SIMS, 250)))
    rate = rejection_rate([welch_ttest(c, t) for c, t in zip(control, treatment, strict=True)])
    assert FPR_BAND[0] <= rate <= FPR_BAND[1]


def test_welch_keeps_its_level_with_unequal_variances() -> None:
    # Equal means, the small arm with the small variance: a pooled-variance
    # t-test would reject far too rarely here, Welch keeps the level.
    rng = np.random.default_rng(303)
    control = mean_summaries(rng.normal(5.0, 1.0, (N_SIMS, 40)))
    treatment = mean_summaries(rng.normal(5.0, 3.0, (N_SIMS, 240)))
    rate = rejection_rate([welch_ttest(c, t) for c, t in zip(control, treatment, strict=True)])
    assert FPR_BAND[0] <= rate <= FPR_BAND[1]


def test_ratio_metric_aa_false_positive_rate() -> None:
    # Clicks per view with a varying number of views per user: the views of
    # one user are not independent trials, the delta method accounts for it.
    rng = np.random.default_rng(404)

    def arm(n: int) -> list[PairSummary]:
        views = 1 + rng.poisson(3.0, (N_SIMS, n))
        user_rate = rng.beta(2.0, 6.0, (N_SIMS, n))
        clicks = rng.binomial(views, user_rate)
        return pair_summaries(clicks.astype(np.float64), views.astype(np.float64))

    control, treatment = arm(300), arm(200)
    rate = rejection_rate([ratio_effect(c, t) for c, t in zip(control, treatment, strict=True)])
    assert FPR_BAND[0] <= rate <= FPR_BAND[1]


def test_relative_ci_coverage_for_proportions() -> None:
    rng = np.random.default_rng(505)
    n, p_c, p_t = 5000, 0.10, 0.11
    control = binary_summaries(rng.binomial(n, p_c, N_SIMS), n)
    treatment = binary_summaries(rng.binomial(n, p_t, N_SIMS), n)
    true_rel = p_t / p_c - 1
    estimates = [two_proportion_ztest(c, t) for c, t in zip(control, treatment, strict=True)]
    covered = np.mean([e.rel_ci_low <= true_rel <= e.rel_ci_high for e in estimates])
    assert within_binomial_error(float(covered), 0.95)


# --- CUPED -------------------------------------------------------------------


def test_cuped_cuts_variance_with_correlated_covariate() -> None:
    rng = np.random.default_rng(606)
    n, effect, rho, sigma = 300, 0.1, 0.8, 2.0

    def arm(lift: float) -> tuple[Array, Array]:
        z = rng.standard_normal((N_SIMS, n))
        noise = rng.standard_normal((N_SIMS, n))
        x = 10.0 + sigma * z
        y = 5.0 + lift + sigma * (rho * z + math.sqrt(1 - rho**2) * noise)
        return y, x

    (y_c, x_c), (y_t, x_t) = arm(0.0), arm(effect)
    results = [
        cuped_effect(c, t)
        for c, t in zip(pair_summaries(y_c, x_c), pair_summaries(y_t, x_t), strict=True)
    ]
    assert all(r.estimate.error is None for r in results)
    adjusted = np.array([r.estimate.abs_effect for r in results])
    naive = y_t.mean(axis=1) - y_c.mean(axis=1)

    # Reported reduction is close to rho² = 0.64 in every experiment.
    reported = np.array([r.variance_reduction for r in results])
    assert reported.min() >= 0.4
    assert reported.mean() == pytest.approx(rho**2, abs=0.02)
    # And it is real: the adjusted estimates scatter much less across experiments.
    empirical = 1.0 - adjusted.var(ddof=1) / naive.var(ddof=1)
    assert empirical >= 0.4
    # Still unbiased for the planted effect, with honest intervals.
    assert abs(adjusted.mean() - effect) <= 4 * adjusted.std(ddof=1) / math.sqrt(N_SIMS)
    covered = np.mean([r.estimate.ci_low <= effect <= r.estimate.ci_high for r in results])
    assert within_binomial_error(float(covered), 0.95)


# --- power ---------------------------------------------------------------------


@pytest.mark.parametrize(("baseline", "mde", "relative"), [(0.10, 0.02, False),
                                                           (0.05, 0.15, True)])
def test_planted_proportion_effect_detected_at_planned_power(
    baseline: float, mde: float, relative: bool
) -> None:
    n = sample_size_proportion(baseline, mde, relative=relative, alpha=ALPHA, power=0.8)
    p_t = baseline * (1 + mde) if relative else baseline + mde
    rng = np.random.default_rng(707)
    control = binary_summaries(rng.binomial(n, baseline, N_SIMS), n)
    treatment = binary_summaries(rng.binomial(n, p_t, N_SIMS), n)
    rate = rejection_rate([two_proportion_ztest(c, t) for c, t in
                           zip(control, treatment, strict=True)])
    assert within_binomial_error(rate, 0.8)


def test_planted_mean_effect_detected_at_planned_power() -> None:
    std_dev, mde = 2.0, 0.4
    n = sample_size_mean(std_dev, mde, alpha=ALPHA, power=0.8)
    rng = np.random.default_rng(808)
    control = mean_summaries(rng.normal(10.0, std_dev, (N_SIMS, n)))
    treatment = mean_summaries(rng.normal(10.0 + mde, std_dev, (N_SIMS, n)))
    rate = rejection_rate([welch_ttest(c, t) for c, t in zip(control, treatment, strict=True)])
    assert within_binomial_error(rate, 0.8)


# --- SRM -----------------------------------------------------------------------


def test_srm_p_values_are_calibrated_and_detect_a_small_skew() -> None:
    rng = np.random.default_rng(909)
    weights = [0.5, 0.25, 0.25]
    balanced = rng.multinomial(10_000, weights, N_SIMS)
    p_values = np.array([srm_test(row.tolist(), weights).p_value for row in balanced])
    assert FPR_BAND[0] <= float(np.mean(p_values < ALPHA)) <= FPR_BAND[1]

    skewed = rng.multinomial(100_000, [0.49, 0.255, 0.255], 500)
    flagged = np.mean([srm_test(row.tolist(), weights).flag for row in skewed])
    assert flagged >= 0.95
