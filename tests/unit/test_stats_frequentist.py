"""Frequentist statistics, SRM, CUPED and p-value adjustment against statsmodels
and scipy computed on the raw rows the summaries were built from."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import scipy.stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from rollout.experiments.stats.cuped import cuped_effect
from rollout.experiments.stats.frequentist import (
    ratio_effect,
    relative_effect,
    two_proportion_ztest,
    welch_ttest,
)
from rollout.experiments.stats.multiple import adjust_p_values
from rollout.experiments.stats.srm import srm_test
from rollout.experiments.stats.summary import EffectEstimate, MeanSummary, PairSummary

Array = npt.NDArray[np.float64]
REL = 1e-9
NUMERIC_FIELDS = (
    "mean_control", "mean_treatment", "abs_effect", "rel_effect", "std_error", "ci_low",
    "ci_high", "rel_ci_low", "rel_ci_high", "statistic", "p_value",
)


def mean_summary(y: Array) -> MeanSummary:
    return MeanSummary(int(y.size), float(y.sum()), float(np.dot(y, y)))


def pair_summary(y: Array, x: Array) -> PairSummary:
    return PairSummary(int(y.size), float(y.sum()), float(np.dot(y, y)), float(x.sum()),
                       float(np.dot(x, x)), float(np.dot(x, y)))


def binary_summary(successes: int, n: int) -> MeanSummary:
    return MeanSummary(n, float(successes), float(successes))


def assert_failed(estimate: EffectEstimate, code: str) -> None:
    assert estimate.error == code
    for name in NUMERIC_FIELDS:
        assert math.isnan(getattr(estimate, name)), name


def z_crit(alpha: float) -> float:
    return float(scipy.stats.norm.isf(alpha / 2))


# --- two-proportion z-test -------------------------------------------------

PROPORTION_CASES = [
    # (control successes, control n, treatment successes, treatment n, alpha)
    (120, 1000, 150, 1000, 0.05),
    (5, 40, 12, 55, 0.05),
    (3, 500, 0, 500, 0.10),
    (4990, 50_000, 5210, 51_000, 0.01),
    (999, 1000, 1000, 1000, 0.05),
    (1, 2, 2, 3, 0.2),
]


@pytest.mark.parametrize(("x_c", "n_c", "x_t", "n_t", "alpha"), PROPORTION_CASES)
def test_ztest_matches_statsmodels(x_c: int, n_c: int, x_t: int, n_t: int, alpha: float) -> None:
    est = two_proportion_ztest(binary_summary(x_c, n_c), binary_summary(x_t, n_t), alpha)
    assert est.error is None
    z, p = proportions_ztest(np.array([x_t, x_c]), np.array([n_t, n_c]))
    assert est.statistic == pytest.approx(z, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff",
                                           alpha=alpha)
    assert est.ci_low == pytest.approx(low, rel=REL)
    assert est.ci_high == pytest.approx(high, rel=REL)
    assert est.abs_effect == pytest.approx(x_t / n_t - x_c / n_c, rel=REL)
    assert est.mean_control == x_c / n_c
    assert est.mean_treatment == x_t / n_t


def test_ztest_relative_effect_uses_delta_method() -> None:
    est = two_proportion_ztest(binary_summary(100, 1000), binary_summary(130, 1200))
    p_c, p_t = 0.1, 130 / 1200
    v_c, v_t = p_c * (1 - p_c) / 1000, p_t * (1 - p_t) / 1200
    se = math.sqrt(v_t / p_c**2 + p_t**2 * v_c / p_c**4)
    assert est.rel_effect == pytest.approx(p_t / p_c - 1, rel=REL)
    assert est.rel_ci_low == pytest.approx(p_t / p_c - 1 - z_crit(0.05) * se, rel=REL)
    assert est.rel_ci_high == pytest.approx(p_t / p_c - 1 + z_crit(0.05) * se, rel=REL)


def test_ztest_degenerate_inputs() -> None:
    assert_failed(two_proportion_ztest(binary_summary(0, 0), binary_summary(3, 10)), "empty_arm")
    assert_failed(two_proportion_ztest(binary_summary(0, 100), binary_summary(0, 100)),
                  "zero_variance")
    assert_failed(two_proportion_ztest(binary_summary(50, 50), binary_summary(70, 70)),
                  "zero_variance")
    assert_failed(two_proportion_ztest(binary_summary(11, 10), binary_summary(3, 10)),
                  "invalid_input")
    assert_failed(two_proportion_ztest(binary_summary(1, 10), binary_summary(3, 10), alpha=1.0),
                  "invalid_alpha")
    bad = MeanSummary(10, math.nan, 0.0)
    assert_failed(two_proportion_ztest(bad, binary_summary(3, 10)), "invalid_input")


def test_ztest_zero_control_keeps_absolute_effect() -> None:
    est = two_proportion_ztest(binary_summary(0, 1000), binary_summary(6, 1000))
    assert est.error == "zero_control_mean"
    z, p = proportions_ztest(np.array([6, 0]), np.array([1000, 1000]))
    assert est.statistic == pytest.approx(z, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)
    assert est.abs_effect == pytest.approx(0.006, rel=REL)
    assert math.isnan(est.rel_effect) and math.isnan(est.rel_ci_low)
    assert math.isnan(est.rel_ci_high)


# --- Welch t-test ----------------------------------------------------------


def welch_samples(seed: int) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    n_c, n_t = rng.integers(5, 400, size=2)
    control = rng.lognormal(1.0, 0.8, size=n_c)
    treatment = rng.normal(3.5, rng.uniform(0.2, 6.0), size=n_t)
    return control, treatment


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_welch_matches_statsmodels(seed: int, alpha: float) -> None:
    control, treatment = welch_samples(seed)
    est = welch_ttest(mean_summary(control), mean_summary(treatment), alpha)
    assert est.error is None
    t, p, _ = ttest_ind(treatment, control, usevar="unequal")
    low, high = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(
        alpha=alpha, usevar="unequal")
    assert est.statistic == pytest.approx(t, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)
    assert est.ci_low == pytest.approx(low, rel=REL)
    assert est.ci_high == pytest.approx(high, rel=REL)
    assert est.abs_effect == pytest.approx(treatment.mean() - control.mean(), rel=REL)
    se = math.sqrt(control.var(ddof=1) / control.size + treatment.var(ddof=1) / treatment.size)
    assert est.std_error == pytest.approx(se, rel=REL)


def test_welch_relative_ci() -> None:
    control, treatment = welch_samples(42)
    est = welch_ttest(mean_summary(control), mean_summary(treatment))
    rel = relative_effect(control.mean(), treatment.mean(),
                          control.var(ddof=1) / control.size,
                          treatment.var(ddof=1) / treatment.size)
    assert est.rel_effect == pytest.approx(treatment.mean() / control.mean() - 1, rel=REL)
    assert (est.rel_ci_low, est.rel_ci_high) == pytest.approx((rel.ci_low, rel.ci_high), rel=REL)


def test_welch_one_arm_constant_is_fine() -> None:
    control = np.full(30, 2.0)
    treatment = np.random.default_rng(3).normal(2.5, 1.0, 40)
    est = welch_ttest(mean_summary(control), mean_summary(treatment))
    t, p, _ = ttest_ind(treatment, control, usevar="unequal")
    assert est.error is None
    assert est.statistic == pytest.approx(t, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)


def test_welch_degenerate_inputs() -> None:
    one = mean_summary(np.array([1.0]))
    some = mean_summary(np.array([1.0, 2.0, 4.0]))
    assert_failed(welch_ttest(MeanSummary(0, 0.0, 0.0), some), "empty_arm")
    assert_failed(welch_ttest(some, MeanSummary(0, 0.0, 0.0)), "empty_arm")
    assert_failed(welch_ttest(one, some), "too_few_units")
    # Constant arms (0.1 is not exact in binary: Σy² − (Σy)²/n is rounding noise).
    flat = mean_summary(np.full(1000, 0.1))
    assert_failed(welch_ttest(flat, flat), "zero_variance")
    assert_failed(welch_ttest(mean_summary(np.zeros(5)), mean_summary(np.ones(5))),
                  "zero_variance")
    assert_failed(welch_ttest(some, some, alpha=0.0), "invalid_alpha")
    assert_failed(welch_ttest(MeanSummary(3, math.inf, 1.0), some), "invalid_input")


def test_welch_zero_control_mean() -> None:
    control = np.array([-1.0, 1.0, -2.0, 2.0])
    treatment = np.array([0.5, 1.5, 1.0, 2.0])
    est = welch_ttest(mean_summary(control), mean_summary(treatment))
    assert est.error == "zero_control_mean"
    t, p, _ = ttest_ind(treatment, control, usevar="unequal")
    assert est.statistic == pytest.approx(t, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)
    assert math.isnan(est.rel_effect)


# --- relative-effect helper ------------------------------------------------


def test_relative_effect_formula_and_covariance() -> None:
    c, t, v_c, v_t, cov = 2.0, 2.5, 0.04, 0.09, 0.01
    rel = relative_effect(c, t, v_c, v_t, alpha=0.1, covariance=cov)
    # Gradient of t/c at (c, t) is (−t/c², 1/c).
    grad = np.array([-t / c**2, 1 / c])
    cov_matrix = np.array([[v_c, cov], [cov, v_t]])
    se = math.sqrt(float(grad @ cov_matrix @ grad))
    assert rel.error is None
    assert rel.estimate == pytest.approx(0.25, rel=REL)
    assert rel.std_error == pytest.approx(se, rel=REL)
    assert rel.ci_low == pytest.approx(0.25 - z_crit(0.1) * se, rel=REL)
    assert rel.ci_high == pytest.approx(0.25 + z_crit(0.1) * se, rel=REL)


def test_relative_effect_errors() -> None:
    assert relative_effect(0.0, 1.0, 0.1, 0.1).error == "zero_control_mean"
    assert relative_effect(1.0, 1.0, 0.1, 0.1, alpha=2.0).error == "invalid_alpha"
    assert relative_effect(1.0, math.nan, 0.1, 0.1).error == "invalid_input"
    assert relative_effect(1.0, 1.0, -0.1, 0.1).error == "invalid_input"
    assert math.isnan(relative_effect(0.0, 1.0, 0.1, 0.1).ci_low)
    assert relative_effect(1e-300, 1e300, 0.1, 0.1).error == "non_finite"


# --- ratio-of-sums metrics -------------------------------------------------


def ratio_samples(seed: int, n: int, rate: float) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    views = (1 + rng.poisson(4.0, size=n)).astype(np.float64)
    clicks = rng.binomial(views.astype(np.int64), rate).astype(np.float64)
    return clicks, views


def linearized_variance(y: Array, x: Array) -> float:
    ratio = y.sum() / x.sum()
    return float(np.var((y - ratio * x) / x.mean(), ddof=1) / y.size)


@pytest.mark.parametrize("seed", range(4))
def test_ratio_effect_matches_row_level_delta_method(seed: int) -> None:
    y_c, x_c = ratio_samples(seed, 300, 0.2)
    y_t, x_t = ratio_samples(seed + 100, 450, 0.23)
    est = ratio_effect(pair_summary(y_c, x_c), pair_summary(y_t, x_t), alpha=0.05)
    assert est.error is None
    r_c, r_t = y_c.sum() / x_c.sum(), y_t.sum() / x_t.sum()
    var_c, var_t = linearized_variance(y_c, x_c), linearized_variance(y_t, x_t)
    se = math.sqrt(var_c + var_t)
    z = (r_t - r_c) / se
    assert est.mean_control == pytest.approx(r_c, rel=REL)
    assert est.mean_treatment == pytest.approx(r_t, rel=REL)
    assert est.std_error == pytest.approx(se, rel=REL)
    assert est.statistic == pytest.approx(z, rel=REL)
    assert est.p_value == pytest.approx(2 * scipy.stats.norm.sf(abs(z)), rel=REL)
    assert est.ci_low == pytest.approx(r_t - r_c - z_crit(0.05) * se, rel=REL)
    rel = relative_effect(r_c, r_t, var_c, var_t)
    assert (est.rel_effect, est.rel_ci_low, est.rel_ci_high) == pytest.approx(
        (rel.estimate, rel.ci_low, rel.ci_high), rel=REL)


def test_ratio_with_unit_denominators_is_a_z_test_on_means() -> None:
    rng = np.random.default_rng(9)
    y_c, y_t = rng.exponential(2.0, 200), rng.exponential(2.3, 260)
    est = ratio_effect(pair_summary(y_c, np.ones(200)), pair_summary(y_t, np.ones(260)))
    z, p = CompareMeans(DescrStatsW(y_t), DescrStatsW(y_c)).ztest_ind(usevar="unequal")
    assert est.statistic == pytest.approx(z, rel=REL)
    assert est.p_value == pytest.approx(p, rel=REL)


def test_ratio_degenerate_inputs() -> None:
    y, x = ratio_samples(1, 20, 0.3)
    ok = pair_summary(y, x)
    assert_failed(ratio_effect(PairSummary(0, 0, 0, 0, 0, 0), ok), "empty_arm")
    assert_failed(ratio_effect(pair_summary(y[:1], x[:1]), ok), "too_few_units")
    zeros = np.zeros(20)
    assert_failed(ratio_effect(pair_summary(zeros, zeros), ok), "zero_denominator")
    # y exactly proportional to x in both arms: the linearized variance is zero.
    prop = pair_summary(0.3 * x, x)
    assert_failed(ratio_effect(prop, prop), "zero_variance")
    zero_rate = ratio_effect(pair_summary(zeros, x), ok)
    assert zero_rate.error == "zero_control_mean"
    assert math.isfinite(zero_rate.p_value)


# --- SRM -------------------------------------------------------------------

SRM_CASES = [
    ([5000, 5100], [0.5, 0.5]),
    ([5000, 5400], [1, 1]),
    ([10_000, 2_400, 2_600], [70, 15, 15]),
    ([300, 310, 290, 600], [0.2, 0.2, 0.2, 0.4]),
    ([1, 0], [0.5, 0.5]),
    ([100_000, 101_200], [0.5, 0.5]),
]


@pytest.mark.parametrize(("observed", "weights"), SRM_CASES)
def test_srm_matches_scipy_chisquare(observed: list[int], weights: list[float]) -> None:
    result = srm_test(observed, weights)
    w = np.asarray(weights, dtype=float)
    expected = sum(observed) * w / w.sum()
    stat, p = scipy.stats.chisquare(observed, expected)
    assert result.error is None
    assert result.statistic == pytest.approx(stat, rel=REL)
    assert result.p_value == pytest.approx(p, rel=REL)
    assert result.expected == pytest.approx(tuple(expected), rel=REL)
    assert result.observed == tuple(observed)
    assert result.flag == (p < 0.001)


def test_srm_flags_a_clear_mismatch_and_not_a_balanced_split() -> None:
    assert srm_test([50_000, 51_500], [0.5, 0.5]).flag
    assert not srm_test([50_000, 50_100], [0.5, 0.5]).flag
    assert srm_test([50_000, 50_300], [0.5, 0.5], threshold=0.5).flag


def test_srm_zero_weight_arms() -> None:
    # An empty zero-weight arm is left out of the test.
    with_empty = srm_test([5000, 5100, 0], [0.5, 0.5, 0.0])
    stat, p = scipy.stats.chisquare([5000, 5100])
    assert with_empty.error is None
    assert with_empty.statistic == pytest.approx(stat, rel=REL)
    assert with_empty.p_value == pytest.approx(p, rel=REL)
    # Units in a zero-weight arm are a certain mismatch.
    leaked = srm_test([5000, 5100, 3], [0.5, 0.5, 0.0])
    assert leaked.error is None and leaked.flag
    assert leaked.statistic == math.inf and leaked.p_value == 0.0


@pytest.mark.parametrize(
    ("observed", "weights", "code"),
    [
        ([10], [1.0], "too_few_arms"),
        ([10, 0], [1.0, 0.0], "too_few_arms"),
        ([10, 12], [0.5, 0.3, 0.2], "length_mismatch"),
        ([10, -1], [0.5, 0.5], "invalid_counts"),
        ([10, 2.5], [0.5, 0.5], "invalid_counts"),
        ([10, 12], [0.5, -0.5], "invalid_weights"),
        ([10, 12], [0.0, 0.0], "invalid_weights"),
        ([10, 12], [math.nan, 1.0], "invalid_weights"),
        ([0, 0], [0.5, 0.5], "no_units"),
    ],
)
def test_srm_errors(observed: list[float], weights: list[float], code: str) -> None:
    result = srm_test(observed, weights)  # type: ignore[arg-type]
    assert result.error == code
    assert math.isnan(result.statistic) and math.isnan(result.p_value)
    assert not result.flag


def test_srm_accepts_numpy_counts() -> None:
    result = srm_test(list(np.array([480, 520])), list(np.array([1.0, 1.0])))
    assert result.observed == (480, 520)
    assert srm_test([10, 12], [1, 1], threshold=0.0).error == "invalid_threshold"


# --- CUPED -----------------------------------------------------------------


def cuped_samples(seed: int, n_c: int, n_t: int, effect: float, binary: bool = False,
                  ) -> tuple[Array, Array, Array, Array]:
    rng = np.random.default_rng(seed)
    x_c = rng.gamma(2.0, 3.0, n_c)
    x_t = rng.gamma(2.0, 3.0, n_t)
    if binary:
        y_c = (rng.uniform(size=n_c) < 0.05 + 0.03 * (x_c > 6)).astype(float)
        y_t = (rng.uniform(size=n_t) < 0.05 + effect + 0.03 * (x_t > 6)).astype(float)
    else:
        y_c = 2.0 + 0.7 * x_c + rng.normal(0, 2.0, n_c)
        y_t = 2.0 + effect + 0.7 * x_t + rng.normal(0, 2.5, n_t)
    return y_c, x_c, y_t, x_t


@pytest.mark.parametrize(("seed", "n_c", "n_t"), [(0, 200, 200), (1, 150, 420), (2, 35, 18)])
def test_cuped_equals_interacted_regression(seed: int, n_c: int, n_t: int) -> None:
    y_c, x_c, y_t, x_t = cuped_samples(seed, n_c, n_t, effect=0.8)
    result = cuped_effect(pair_summary(y_c, x_c), pair_summary(y_t, x_t))
    assert result.estimate.error is None and result.method == "lin_interacted"

    y = np.concatenate([y_c, y_t])
    x = np.concatenate([x_c, x_t])
    treated = np.concatenate([np.zeros(n_c), np.ones(n_t)])
    centred = x - x.mean()
    fit = OLS(y, np.column_stack([np.ones_like(y), treated, centred, treated * centred])).fit()
    # Lin's regression: the treatment coefficient is the effect, the intercept the
    # adjusted control mean, and each arm has its own slope on the centred covariate.
    assert result.slope_control == pytest.approx(fit.params[2], rel=REL)
    assert result.slope_treatment == pytest.approx(fit.params[2] + fit.params[3], rel=REL)
    assert result.estimate.abs_effect == pytest.approx(fit.params[1], rel=REL)
    assert result.estimate.mean_control == pytest.approx(fit.params[0], rel=REL)
    assert result.estimate.mean_treatment == pytest.approx(fit.params[0] + fit.params[1],
                                                           rel=REL)


def test_cuped_variance_is_residuals_plus_the_covariate_mean_term() -> None:
    y_c, x_c, y_t, x_t = cuped_samples(5, 180, 240, effect=0.5)
    y_t = y_t + 0.6 * (x_t - 6.0)  # a steeper slope in treatment
    result = cuped_effect(pair_summary(y_c, x_c), pair_summary(y_t, x_t), alpha=0.1)
    beta_c, beta_t = result.slope_control, result.slope_treatment
    assert beta_c == pytest.approx(np.polyfit(x_c, y_c, 1)[0], rel=REL)
    assert beta_t == pytest.approx(np.polyfit(x_t, y_t, 1)[0], rel=REL)
    # Residual variance of each arm's mean (ddof 1), and the covariate mean's noise.
    resid = np.var(y_c - beta_c * x_c, ddof=1) / 180 + np.var(y_t - beta_t * x_t, ddof=1) / 240
    a_c, a_t = np.var(x_c, ddof=1) / 180, np.var(x_t, ddof=1) / 240
    variance = resid + (beta_t - beta_c) ** 2 * a_c * a_t / (a_c + a_t)
    var_raw = np.var(y_c, ddof=1) / 180 + np.var(y_t, ddof=1) / 240
    est = result.estimate
    assert est.std_error == pytest.approx(math.sqrt(variance), rel=REL)
    assert est.statistic == pytest.approx(est.abs_effect / math.sqrt(variance), rel=REL)
    assert result.variance_reduction == pytest.approx(1 - variance / var_raw, rel=REL)
    assert result.variance_reduction > 0.3
    assert (result.var_mean_control + result.var_mean_treatment - 2 * result.covariance
            == pytest.approx(variance, rel=REL))


def test_cuped_binary_uses_z_test() -> None:
    y_c, x_c, y_t, x_t = cuped_samples(6, 3000, 3000, effect=0.01, binary=True)
    result = cuped_effect(pair_summary(y_c, x_c), pair_summary(y_t, x_t), binary=True)
    est = result.estimate
    assert est.error is None
    z = est.abs_effect / est.std_error
    assert est.statistic == pytest.approx(z, rel=REL)
    assert est.p_value == pytest.approx(2 * scipy.stats.norm.sf(abs(z)), rel=REL)
    half = scipy.stats.norm.ppf(0.975) * est.std_error
    assert (est.ci_low, est.ci_high) == pytest.approx(
        (est.abs_effect - half, est.abs_effect + half), rel=REL)
    not_binary = cuped_effect(pair_summary(y_c * 2, x_c), pair_summary(y_t, x_t), binary=True)
    assert not_binary.estimate.error == "not_binary"


def test_cuped_constant_covariate_is_plain_welch() -> None:
    rng = np.random.default_rng(11)
    y_c, y_t = rng.normal(1, 1, 50), rng.normal(1.2, 1.5, 70)
    result = cuped_effect(pair_summary(y_c, np.full(50, 0.3)), pair_summary(y_t, np.full(70, 0.3)))
    assert result.slope_control == 0.0 and result.slope_treatment == 0.0
    assert result.variance_reduction == 0.0
    assert result.estimate.error is None
    plain = welch_ttest(mean_summary(y_c), mean_summary(y_t))
    assert result.estimate.statistic == pytest.approx(plain.statistic, rel=REL)
    assert result.estimate.p_value == pytest.approx(plain.p_value, rel=REL)


def test_cuped_degenerate_inputs() -> None:
    y_c, x_c, y_t, x_t = cuped_samples(7, 20, 20, effect=0.0)
    ok = pair_summary(y_t, x_t)
    empty = cuped_effect(PairSummary(0, 0, 0, 0, 0, 0), ok)
    assert_failed(empty.estimate, "empty_arm")
    assert math.isnan(empty.slope_control) and math.isnan(empty.variance_reduction)
    assert_failed(cuped_effect(pair_summary(y_c[:1], x_c[:1]), ok).estimate, "too_few_units")
    assert_failed(cuped_effect(ok, ok, alpha=-1).estimate, "invalid_alpha")
    # y constant: nothing to test, whatever x does.
    flat = cuped_effect(pair_summary(np.full(20, 3.0), x_c), pair_summary(np.full(20, 3.0), x_t))
    assert_failed(flat.estimate, "zero_variance")
    # y exactly linear in x: the adjustment removes all variance.
    linear = cuped_effect(pair_summary(2 * x_c + 1, x_c), pair_summary(2 * x_t + 1, x_t))
    assert_failed(linear.estimate, "zero_variance")
    assert linear.slope_control == pytest.approx(2.0, rel=REL)
    assert linear.slope_treatment == pytest.approx(2.0, rel=REL)
    assert linear.variance_reduction == pytest.approx(1.0, rel=REL)


# --- multiple testing ------------------------------------------------------

P_VALUE_CASES = [
    [0.01, 0.04, 0.03, 0.2, 0.5],
    [0.001, 0.001, 0.02, 0.02, 0.02, 0.9],
    [0.0, 1.0, 0.5],
    [0.04],
    [0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01],
    list(np.random.default_rng(4).uniform(0, 0.2, 40)),
]
SM_METHOD = {"bonferroni": "bonferroni", "holm": "holm", "bh": "fdr_bh"}


@pytest.mark.parametrize("p_values", P_VALUE_CASES)
@pytest.mark.parametrize("method", ["bonferroni", "holm", "bh"])
def test_adjust_matches_multipletests(p_values: list[float], method: str) -> None:
    ours = adjust_p_values(p_values, method)  # type: ignore[arg-type]
    theirs = multipletests(p_values, method=SM_METHOD[method])[1]
    np.testing.assert_allclose(ours, theirs, rtol=REL, atol=0)


@pytest.mark.parametrize("method", ["bonferroni", "holm", "bh"])
def test_adjust_skips_nan(method: str) -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    ours = adjust_p_values(p, method)  # type: ignore[arg-type]
    theirs = multipletests([0.01, 0.04, 0.03], method=SM_METHOD[method])[1]
    assert np.isnan(ours[[1, 4]]).all()
    np.testing.assert_allclose(ours[[0, 2, 3]], theirs, rtol=REL, atol=0)
    assert adjust_p_values([math.nan], method).tolist() != [0.0]  # type: ignore[arg-type]
    assert adjust_p_values([], method).shape == (0,)  # type: ignore[arg-type]


def test_adjust_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="method"):
        adjust_p_values([0.1], "sidak")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_p_values([0.1, 1.2], "holm")
