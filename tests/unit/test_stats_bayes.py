from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from rollout.experiments.stats.bayes import BayesResult, beta_binomial, normal_means
from rollout.experiments.stats.summary import MeanSummary


def binary(n: int, successes: int) -> MeanSummary:
    return MeanSummary(n, float(successes), float(successes))


def normal_arm(values: np.ndarray) -> MeanSummary:
    return MeanSummary(values.size, float(values.sum()), float((values * values).sum()))


def miller_prob_better(a_c: int, b_c: int, a_t: int, b_t: int) -> float:
    """P(p_t > p_c) for Beta posteriors with integer a_t, as an exact finite sum.

    Σ_{i<a_t} B(a_c + i, b_c + b_t) / ((b_t + i)·B(1 + i, b_t)·B(a_c, b_c)), each
    term in log space with betaln and summed with logsumexp.
    """
    i = np.arange(a_t)
    log_terms = (
        special.betaln(a_c + i, b_c + b_t)
        - np.log(b_t + i)
        - special.betaln(1 + i, b_t)
        - special.betaln(a_c, b_c)
    )
    return math.exp(float(special.logsumexp(log_terms)))


def miller_prob_better_by_recurrence(a_c: int, b_c: int, a_t: int, b_t: int) -> float:
    """The same sum with terms built by their ratio, for millions of trials.

    betaln of arguments in the millions is only good to ~1e-13 relative, which
    is ~1e-9 absolute on the log scale. Here the first term is
    ``B(a_c, b_c + b_t)/B(a_c, b_c) = Π_{j<b_t} (b_c + j)/(a_c + b_c + j)``, summed
    in log space with fsum, and each next term is the previous one times
    ``(a_c + i)(b_t + i) / ((a_c + b_c + b_t + i)(1 + i))``.
    """
    j = np.arange(b_t, dtype=np.float64)
    log_first = math.fsum(np.log1p(-a_c / (a_c + b_c + j)))
    i = np.arange(a_t - 1, dtype=np.float64)
    log_ratio = np.log(a_c + i) + np.log(b_t + i) - np.log(a_c + b_c + b_t + i) - np.log1p(i)
    log_terms = np.concatenate([[log_first], log_first + np.cumsum(log_ratio)])
    return math.exp(float(special.logsumexp(log_terms)))


def posterior_draws(
    arm: MeanSummary, rng: np.random.Generator, size: int, prior: tuple[float, float] = (1, 1)
) -> np.ndarray:
    return rng.beta(prior[0] + arm.sum, prior[1] + arm.n - arm.sum, size)


# --------------------------------------------------------------------------- Beta-Binomial


@pytest.mark.parametrize(
    ("control", "treatment", "prior"),
    [
        ((100, 10), (100, 15), (1, 1)),
        ((1000, 30), (1000, 20), (1, 1)),
        ((20, 0), (20, 3), (1, 1)),
        ((10, 1), (10, 9), (1, 1)),
        ((5000, 260), (4800, 240), (2, 38)),
        ((1, 1), (1, 0), (1, 1)),
    ],
)
def test_prob_better_matches_the_closed_form_sum(
    control: tuple[int, int], treatment: tuple[int, int], prior: tuple[int, int]
) -> None:
    result = beta_binomial(binary(*control), binary(*treatment), *prior)
    a_c, b_c = prior[0] + control[1], prior[1] + control[0] - control[1]
    a_t, b_t = prior[0] + treatment[1], prior[1] + treatment[0] - treatment[1]
    assert result.error is None
    assert result.prob_better == pytest.approx(miller_prob_better(a_c, b_c, a_t, b_t), abs=1e-9)


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        ((2_000_000, 2_000), (2_000_000, 2_100)),
        ((3_000_000, 3_000), (2_500_000, 2_600)),
        ((1_000_000, 10_000), (1_200_000, 12_200)),
    ],
)
def test_prob_better_is_exact_for_millions_of_trials(
    control: tuple[int, int], treatment: tuple[int, int]
) -> None:
    result = beta_binomial(binary(*control), binary(*treatment))
    a_c, b_c = 1 + control[1], 1 + control[0] - control[1]
    a_t, b_t = 1 + treatment[1], 1 + treatment[0] - treatment[1]
    exact = miller_prob_better_by_recurrence(a_c, b_c, a_t, b_t)
    assert result.prob_better == pytest.approx(exact, abs=1e-9)


def test_concentrated_posteriors_agree_with_the_normal_limit() -> None:
    control, treatment = binary(5_000_000, 1_000_000), binary(5_000_000, 1_001_500)
    result = beta_binomial(control, treatment)
    means = np.array(
        [(1 + s) / (2 + n) for n, s in ((5_000_000, 1_000_000), (5_000_000, 1_001_500))]
    )
    sd = math.sqrt(float(np.sum(means * (1 - means) / 5_000_002)))
    d = means[1] - means[0]
    assert result.prob_better == pytest.approx(stats.norm.cdf(d / sd), abs=1e-4)
    z = stats.norm.ppf(0.975)
    assert result.ci_low == pytest.approx(d - z * sd, rel=1e-3)
    assert result.ci_high == pytest.approx(d + z * sd, rel=1e-3)


@pytest.mark.parametrize(
    ("control", "treatment", "prior"),
    [
        ((100, 10), (100, 15), (1.0, 1.0)),
        ((20, 0), (20, 3), (0.5, 0.5)),
        ((10, 1), (10, 9), (1.0, 1.0)),
        ((400_000, 20_000), (400_000, 20_250), (1.0, 1.0)),
    ],
)
def test_beta_binomial_matches_monte_carlo(
    control: tuple[int, int], treatment: tuple[int, int], prior: tuple[float, float]
) -> None:
    c, t = binary(*control), binary(*treatment)
    result = beta_binomial(c, t, *prior)
    rng = np.random.default_rng(101)
    draws = 200_000
    p_c = posterior_draws(c, rng, draws, prior)
    p_t = posterior_draws(t, rng, draws, prior)
    diff = p_t - p_c

    mc_prob = float(np.mean(diff > 0))
    se_prob = math.sqrt(max(mc_prob * (1 - mc_prob), 1e-12) / draws)
    assert abs(result.prob_better - mc_prob) < 4 * se_prob + 1e-6

    for exact, sample in (
        (result.expected_loss_treatment, np.maximum(-diff, 0)),
        (result.expected_loss_control, np.maximum(diff, 0)),
    ):
        se = float(sample.std()) / math.sqrt(draws)
        assert abs(exact - float(sample.mean())) < 4 * se + 1e-12

    # Quantiles: compare the exact bounds' cdf level among the draws (binomial
    # error) rather than the noisy sample quantiles themselves.
    se_q = math.sqrt(0.025 * 0.975 / draws)
    assert abs(np.mean(diff <= result.ci_low) - 0.025) < 4 * se_q
    assert abs(np.mean(diff <= result.ci_high) - 0.975) < 4 * se_q
    lift = p_t / p_c - 1
    assert abs(np.mean(lift <= result.rel_ci_low) - 0.025) < 4 * se_q
    assert abs(np.mean(lift <= result.rel_ci_high) - 0.975) < 4 * se_q


def test_expected_losses_differ_by_the_difference_of_posterior_means() -> None:
    c, t = binary(3000, 120), binary(2900, 131)
    result = beta_binomial(c, t)
    mean_c, mean_t = 121 / 3002, 132 / 2902
    # E[max(D, 0)] − E[max(−D, 0)] = E[D].
    gap = result.expected_loss_control - result.expected_loss_treatment
    assert gap == pytest.approx(mean_t - mean_c, abs=1e-12)


def test_swapping_arms_mirrors_the_result() -> None:
    a, b = binary(800, 40), binary(700, 52)
    forward, backward = beta_binomial(a, b), beta_binomial(b, a)
    assert forward.prob_better + backward.prob_better == pytest.approx(1.0, abs=1e-12)
    assert forward.expected_loss_treatment == pytest.approx(
        backward.expected_loss_control, abs=1e-14
    )
    assert forward.ci_low == pytest.approx(-backward.ci_high, abs=1e-9)
    assert forward.ci_high == pytest.approx(-backward.ci_low, abs=1e-9)


def test_identical_arms_are_a_coin_flip() -> None:
    result = beta_binomial(binary(500, 50), binary(500, 50))
    assert result.prob_better == pytest.approx(0.5, abs=1e-12)
    assert result.expected_loss_treatment == pytest.approx(result.expected_loss_control, abs=1e-13)
    assert result.ci_low == pytest.approx(-result.ci_high, abs=1e-9)


def test_credible_level_widens_the_intervals() -> None:
    c, t = binary(1000, 100), binary(1000, 120)
    narrow, wide = beta_binomial(c, t, credible=0.8), beta_binomial(c, t, credible=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high
    assert wide.rel_ci_low < narrow.rel_ci_low < narrow.rel_ci_high < wide.rel_ci_high


def test_zero_and_all_successes_are_valid_posteriors() -> None:
    none = beta_binomial(binary(1000, 0), binary(1000, 4))
    assert none.error is None
    assert 0.9 < none.prob_better < 1.0
    assert all(math.isfinite(x) for x in (none.ci_low, none.ci_high, none.rel_ci_high))
    everything = beta_binomial(binary(50, 50), binary(50, 50))
    assert everything.prob_better == pytest.approx(0.5, abs=1e-12)


def _all_nan(result: BayesResult) -> bool:
    numbers = (
        result.prob_better,
        result.expected_loss_treatment,
        result.expected_loss_control,
        result.ci_low,
        result.ci_high,
        result.rel_ci_low,
        result.rel_ci_high,
    )
    return all(math.isnan(x) for x in numbers)


@pytest.mark.parametrize(
    ("control", "treatment", "error"),
    [
        (MeanSummary(0, 0.0, 0.0), binary(10, 1), "empty_arm"),
        (binary(10, 1), MeanSummary(0, 0.0, 0.0), "empty_arm"),
        (MeanSummary(10, 3.0, 7.0), binary(10, 1), "not_binary"),
        (binary(10, 11), binary(10, 1), "not_binary"),
        (MeanSummary(10, -1.0, -1.0), binary(10, 1), "not_binary"),
        (MeanSummary(10, math.nan, math.nan), binary(10, 1), "non_finite"),
    ],
)
def test_beta_binomial_degenerate_inputs_set_an_error(
    control: MeanSummary, treatment: MeanSummary, error: str
) -> None:
    result = beta_binomial(control, treatment)
    assert result.error == error
    assert _all_nan(result)


def test_beta_binomial_rejects_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="prior"):
        beta_binomial(binary(10, 1), binary(10, 2), prior_alpha=0.0)
    with pytest.raises(ValueError, match="credible"):
        beta_binomial(binary(10, 1), binary(10, 2), credible=1.0)


def test_extreme_inputs_emit_no_warnings_of_any_kind() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beta_binomial(binary(50, 49), binary(5_000_000, 1_000_000))
        beta_binomial(binary(3, 0), binary(3, 3), 0.5, 0.5)
        beta_binomial(binary(10_000_000, 1), binary(10_000_000, 0))
        normal_means(normal_arm(np.zeros(5)), normal_arm(np.ones(5)))
        normal_means(normal_arm(np.array([1e-300, -1e-300])), normal_arm(np.array([0.0, 1.0])))


# --------------------------------------------------------------------------- normal means


def _normal_arms(rng: np.random.Generator) -> tuple[MeanSummary, MeanSummary]:
    control = rng.normal(10.0, 3.0, 400)
    treatment = rng.normal(10.5, 4.0, 350)
    return normal_arm(control), normal_arm(treatment)


def test_normal_means_closed_forms() -> None:
    c, t = _normal_arms(np.random.default_rng(2))
    result = normal_means(c, t)
    sigma = math.sqrt(c.variance / c.n + t.variance / t.n)
    d = t.mean - c.mean
    assert result.error is None
    assert result.prob_better == pytest.approx(stats.norm.cdf(d / sigma), rel=1e-12)
    z = stats.norm.ppf(0.975)
    assert (result.ci_low, result.ci_high) == pytest.approx((d - z * sigma, d + z * sigma))
    gap = result.expected_loss_control - result.expected_loss_treatment
    assert gap == pytest.approx(d, rel=1e-10)


def test_normal_means_matches_monte_carlo() -> None:
    c, t = _normal_arms(np.random.default_rng(2))
    result = normal_means(c, t)
    rng = np.random.default_rng(8)
    draws = 200_000
    mu_c = rng.normal(c.mean, math.sqrt(c.variance / c.n), draws)
    mu_t = rng.normal(t.mean, math.sqrt(t.variance / t.n), draws)
    diff = mu_t - mu_c
    mc_prob = float(np.mean(diff > 0))
    assert abs(result.prob_better - mc_prob) < 4 * math.sqrt(mc_prob * (1 - mc_prob) / draws)
    for exact, sample in (
        (result.expected_loss_treatment, np.maximum(-diff, 0)),
        (result.expected_loss_control, np.maximum(diff, 0)),
    ):
        assert abs(exact - float(sample.mean())) < 4 * float(sample.std()) / math.sqrt(draws)
    se_q = math.sqrt(0.025 * 0.975 / draws)
    lift = mu_t / mu_c - 1
    assert abs(np.mean(lift <= result.rel_ci_low) - 0.025) < 4 * se_q
    assert abs(np.mean(lift <= result.rel_ci_high) - 0.975) < 4 * se_q


def test_normal_means_relative_interval_with_a_negative_control_mean() -> None:
    rng = np.random.default_rng(4)
    c = normal_arm(rng.normal(-5.0, 1.0, 200))
    t = normal_arm(rng.normal(-6.0, 1.0, 200))
    result = normal_means(c, t)
    # Treatment is 20% more negative: the ratio is ~1.2 whatever the sign.
    assert result.rel_ci_low < 0.2 < result.rel_ci_high
    assert result.rel_ci_low > 0.1


def test_normal_means_relative_interval_is_unbounded_when_control_can_be_zero() -> None:
    rng = np.random.default_rng(6)
    result = normal_means(normal_arm(rng.normal(0.0, 1.0, 50)), normal_arm(rng.normal(1, 1, 50)))
    assert result.error is None
    assert (result.rel_ci_low, result.rel_ci_high) == (-math.inf, math.inf)
    assert math.isfinite(result.ci_low)


def test_normal_means_one_constant_arm_is_fine() -> None:
    result = normal_means(normal_arm(np.full(20, 3.0)), normal_arm(np.arange(20.0)))
    assert result.error is None
    assert math.isfinite(result.prob_better)


def test_normal_and_beta_models_agree_for_large_binary_samples() -> None:
    c, t = binary(200_000, 10_000), binary(200_000, 10_300)
    beta, normal = beta_binomial(c, t), normal_means(c, t)
    assert beta.prob_better == pytest.approx(normal.prob_better, abs=2e-3)
    assert beta.ci_low == pytest.approx(normal.ci_low, rel=1e-2)
    assert beta.expected_loss_treatment == pytest.approx(normal.expected_loss_treatment, rel=2e-2)


@pytest.mark.parametrize(
    ("control", "treatment", "error"),
    [
        (MeanSummary(0, 0.0, 0.0), MeanSummary(10, 5.0, 30.0), "empty_arm"),
        (MeanSummary(1, 2.0, 4.0), MeanSummary(10, 5.0, 30.0), "too_few_units"),
        (MeanSummary(10, 20.0, 40.0), MeanSummary(10, 30.0, 90.0), "zero_variance"),
        (MeanSummary(10, math.inf, 40.0), MeanSummary(10, 30.0, 90.0), "non_finite"),
    ],
)
def test_normal_means_degenerate_inputs_set_an_error(
    control: MeanSummary, treatment: MeanSummary, error: str
) -> None:
    result = normal_means(control, treatment)
    assert result.error == error
    assert _all_nan(result)
