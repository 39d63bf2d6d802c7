from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from rollout.experiments.stats import sequential
from rollout.experiments.stats.sequential import (
    group_sequential_design,
    group_sequential_test,
    mixing_variance_from_mde,
    mixture_log_likelihood_ratio,
    msprt,
    spent_alpha,
)

FIVE_LOOKS = [0.2, 0.4, 0.6, 0.8, 1.0]
# Lan-DeMets boundaries for five equally spaced looks, two-sided alpha = 0.05
# (alpha/2 spent on each tail), as tabulated for these spending functions.
OBF_FIVE = [4.877, 3.357, 2.680, 2.290, 2.031]
POCOCK_FIVE = [2.438, 2.427, 2.410, 2.397, 2.386]


def _brownian_z(rng: np.random.Generator, paths: int, fractions: list[float]) -> np.ndarray:
    """z statistics at the given fractions of standard Brownian motion (null paths)."""
    t = np.asarray(fractions)
    increments = rng.standard_normal((paths, t.size)) * np.sqrt(np.diff(t, prepend=0.0))
    return np.cumsum(increments, axis=1) / np.sqrt(t)


# --------------------------------------------------------------------------- spending


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_spent_alpha_runs_from_zero_to_alpha_and_increases(kind: str) -> None:
    t = np.linspace(0.0, 1.0, 101)
    spent = spent_alpha(t, 0.05, kind)  # type: ignore[arg-type]
    assert isinstance(spent, np.ndarray)
    assert spent[0] == 0.0
    assert spent[-1] == pytest.approx(0.05, abs=1e-15)
    assert np.all(np.diff(spent) > 0.0)
    scalar = spent_alpha(0.5, 0.05, kind)  # type: ignore[arg-type]
    assert isinstance(scalar, float)
    assert scalar == pytest.approx(spent[50], rel=1e-14)


def test_spent_alpha_matches_the_textbook_formulas() -> None:
    alpha = 0.05
    z_half = stats.norm.ppf(1 - alpha / 2)
    for t in (0.1, 0.25, 0.5, 0.9):
        obf = 2 - 2 * stats.norm.cdf(z_half / math.sqrt(t))
        assert spent_alpha(t, alpha, "obrien_fleming") == pytest.approx(obf, rel=1e-9)
        pocock = alpha * math.log(1 + (math.e - 1) * t)
        assert spent_alpha(t, alpha, "pocock") == pytest.approx(pocock, rel=1e-12)
    # O'Brien-Fleming spends almost nothing early; Pocock close to evenly.
    assert spent_alpha(0.2, alpha, "obrien_fleming") < 1e-4
    assert spent_alpha(0.2, alpha, "pocock") > 0.25 * alpha


def test_spent_alpha_rejects_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        spent_alpha(0.5, 0.0)
    with pytest.raises(ValueError, match="kind"):
        spent_alpha(0.5, 0.05, "haybittle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        spent_alpha(1.5, 0.05)


# --------------------------------------------------------------------------- design


def test_obrien_fleming_five_looks_match_the_published_boundaries() -> None:
    design = group_sequential_design(FIVE_LOOKS, 0.05, "obrien_fleming")
    assert design.boundaries == pytest.approx(OBF_FIVE, abs=5e-4)
    # Boundaries shrink towards (and end close to) the fixed-sample 1.96.
    assert np.all(np.diff(design.boundaries) < 0)


def test_pocock_five_looks_match_the_published_boundaries() -> None:
    design = group_sequential_design(FIVE_LOOKS, 0.05, "pocock")
    assert design.boundaries == pytest.approx(POCOCK_FIVE, abs=5e-4)


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_boundaries_are_exact_against_the_multivariate_normal_cdf(kind: str) -> None:
    # Independent oracle: the sequential z statistics are jointly normal with
    # corr(Z_j, Z_k) = sqrt(t_j / t_k); P(no crossing through look k) must be
    # 1 − (alpha spent through k). scipy's Genz integration is good to ~1e-5.
    design = group_sequential_design(FIVE_LOOKS, 0.05, kind)  # type: ignore[arg-type]
    t = np.asarray(FIVE_LOOKS)
    c = np.asarray(design.boundaries)
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, 6):
        mvn = stats.multivariate_normal(mean=np.zeros(k), cov=corr[:k, :k], seed=7)
        stay = mvn.cdf(c[:k], lower_limit=-c[:k])
        assert 1 - stay == pytest.approx(design.cumulative_alpha[k - 1], abs=2e-5)


def test_boundaries_are_converged_in_the_integration_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    coarse = group_sequential_design(FIVE_LOOKS, 0.05, "pocock").boundaries
    monkeypatch.setattr(sequential, "_GRID_DIVISIONS", 64)
    fine = group_sequential_design(FIVE_LOOKS, 0.05, "pocock").boundaries
    assert coarse == pytest.approx(fine, abs=1e-6)


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_spent_alpha_adds_up_and_nominal_levels_match_boundaries(kind: str) -> None:
    design = group_sequential_design(FIVE_LOOKS, 0.05, kind)  # type: ignore[arg-type]
    cumulative = np.asarray(design.cumulative_alpha)
    assert cumulative[-1] == pytest.approx(0.05, abs=1e-15)
    assert np.sum(np.diff(cumulative, prepend=0.0)) == pytest.approx(0.05, abs=1e-15)
    per_tail = spent_alpha(np.asarray(FIVE_LOOKS), 0.025, kind)  # type: ignore[arg-type]
    assert cumulative == pytest.approx(2 * per_tail, rel=1e-12)
    nominal = 2 * stats.norm.sf(design.boundaries)
    assert design.nominal_alpha == pytest.approx(nominal, rel=1e-9)
    # Each look's nominal level is below the alpha spent through it: later
    # looks pay for the earlier ones.
    assert np.all(np.asarray(design.nominal_alpha) <= cumulative + 1e-15)


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_monte_carlo_type_one_error_equals_alpha(kind: str) -> None:
    rng = np.random.default_rng(20240611)
    paths = 400_000
    design = group_sequential_design(FIVE_LOOKS, 0.05, kind)  # type: ignore[arg-type]
    z = _brownian_z(rng, paths, FIVE_LOOKS)
    crossed = np.abs(z) >= np.asarray(design.boundaries)
    rate = crossed.any(axis=1).mean()
    se = math.sqrt(0.05 * 0.95 / paths)
    assert abs(rate - 0.05) < 3 * se, f"type-I error {rate:.5f}, expected 0.05 ± {3 * se:.5f}"
    # The first crossings are distributed as the spending function says.
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    spent = np.diff(design.cumulative_alpha, prepend=0.0)
    for k in range(5):
        share = (first == k).mean()
        tol = 4 * math.sqrt(spent[k] * (1 - spent[k]) / paths) + 1e-5
        assert abs(share - spent[k]) < tol, (k, share, spent[k])


def test_single_look_is_the_fixed_sample_test() -> None:
    for kind in ("obrien_fleming", "pocock"):
        design = group_sequential_design([1.0], 0.05, kind)  # type: ignore[arg-type]
        assert design.boundaries[0] == pytest.approx(stats.norm.ppf(0.975), abs=1e-12)


def test_one_sided_design_spends_alpha_on_the_upper_tail() -> None:
    one = group_sequential_design(FIVE_LOOKS, 0.025, "obrien_fleming", two_sided=False)
    two = group_sequential_design(FIVE_LOOKS, 0.05, "obrien_fleming")
    # With alpha/2 per tail the two designs differ only by paths that could
    # cross both tails, a negligible probability.
    assert one.boundaries == pytest.approx(two.boundaries, abs=1e-4)
    assert one.cumulative_alpha[-1] == pytest.approx(0.025)
    assert one.nominal_alpha == pytest.approx(stats.norm.sf(one.boundaries), rel=1e-9)
    rng = np.random.default_rng(5)
    z = _brownian_z(rng, 200_000, FIVE_LOOKS)
    rate = (z >= np.asarray(one.boundaries)).any(axis=1).mean()
    assert abs(rate - 0.025) < 3 * math.sqrt(0.025 * 0.975 / 200_000), rate


def test_a_look_too_early_to_spend_anything_has_an_infinite_boundary() -> None:
    design = group_sequential_design([0.001, 1.0], 0.05, "obrien_fleming")
    assert design.boundaries[0] == math.inf
    assert design.nominal_alpha[0] == 0.0
    # Nothing was spent, so the final look is the fixed-sample test.
    assert design.boundaries[1] == pytest.approx(stats.norm.ppf(0.975), abs=1e-6)


def test_unplanned_fractions_keep_the_error_rate_and_the_past_boundaries() -> None:
    observed = [0.23, 0.51, 0.74, 1.0]
    design = group_sequential_design(observed, 0.05, "pocock")
    prefix = group_sequential_design(observed[:2], 0.05, "pocock")
    # Later looks do not change earlier boundaries: a test re-run at every
    # look is consistent with what it said before.
    assert prefix.boundaries == pytest.approx(design.boundaries[:2], abs=1e-12)
    rng = np.random.default_rng(11)
    z = _brownian_z(rng, 300_000, observed)
    rate = (np.abs(z) >= np.asarray(design.boundaries)).any(axis=1).mean()
    assert abs(rate - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 300_000), rate


def test_many_looks_give_finite_increasing_pocock_level() -> None:
    fractions = (np.arange(1, 51) / 50).tolist()
    design = group_sequential_design(fractions, 0.05, "pocock")
    assert all(math.isfinite(b) for b in design.boundaries)
    assert 2.5 < design.boundaries[-1] < design.boundaries[0] < 3.3


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ([], "non-empty"),
        ([0.5, 0.5, 1.0], "strictly increasing"),
        ([0.6, 0.4, 1.0], "strictly increasing"),
        ([0.0, 1.0], r"\(0, 1\]"),
        ([0.5, 1.2], r"\(0, 1\]"),
        ([0.5, float("nan")], "finite"),
    ],
)
def test_invalid_fractions_are_rejected_with_a_clear_message(
    fractions: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        group_sequential_design(fractions)


# --------------------------------------------------------------------------- test


def test_group_sequential_test_reports_the_first_crossing() -> None:
    result = group_sequential_test([1.0, 2.0, 3.0], FIVE_LOOKS[:3], 0.05, "obrien_fleming")
    assert result.error is None
    assert result.boundaries == pytest.approx(OBF_FIVE[:3], abs=5e-4)
    assert result.boundary == result.boundaries[-1]
    assert result.crossed
    assert result.first_crossing_look == 3
    assert result.decision == "reject"


def test_group_sequential_test_continues_below_the_boundary() -> None:
    result = group_sequential_test([1.0, 3.0], FIVE_LOOKS[:2], 0.05, "obrien_fleming")
    # 3.0 would reject a fixed-sample test but not at 40% information.
    assert not result.crossed
    assert result.first_crossing_look is None
    assert result.decision == "continue"


def test_two_sided_test_rejects_on_either_tail_and_one_sided_only_upper() -> None:
    z = [0.5, -2.6]
    fractions = [0.5, 1.0]
    assert group_sequential_test(z, fractions, 0.05, "pocock").decision == "reject"
    one_sided = group_sequential_test(z, fractions, 0.025, "pocock", two_sided=False)
    assert one_sided.decision == "continue"


def test_the_first_crossing_stops_the_test_even_if_later_looks_fall_back() -> None:
    result = group_sequential_test([2.6, 0.1, float("nan")], [0.3, 0.6, 1.0], 0.05, "pocock")
    assert result.first_crossing_look == 1
    assert result.decision == "reject"
    assert result.error is None


def test_non_finite_statistic_sets_an_error_without_raising() -> None:
    result = group_sequential_test([0.3, float("nan")], [0.5, 1.0])
    assert result.error == "non_finite_statistic"
    assert math.isnan(result.boundary)
    assert result.decision == "continue"


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="one z statistic per look"):
        group_sequential_test([1.0, 2.0], [0.5])


def test_vectorized_boundaries_agree_with_the_per_experiment_test() -> None:
    rng = np.random.default_rng(3)
    fractions = [0.25, 0.5, 0.75, 1.0]
    z = _brownian_z(rng, 40, fractions) * 1.4  # inflated so some cross
    design = group_sequential_design(fractions, 0.05, "obrien_fleming")
    vectorized = (np.abs(z) >= np.asarray(design.boundaries)).any(axis=1)
    for row, expected in zip(z, vectorized, strict=True):
        result = group_sequential_test(row.tolist(), fractions, 0.05, "obrien_fleming")
        assert result.crossed == bool(expected)
    assert 0 < vectorized.sum() < 40


# --------------------------------------------------------------------------- mSPRT


@pytest.mark.parametrize(
    ("theta", "v", "tau2"), [(0.0, 1.0, 1.0), (0.3, 0.01, 0.04), (-2.0, 0.5, 0.1)]
)
def test_mixture_likelihood_ratio_equals_the_integral_over_the_mixing_prior(
    theta: float, v: float, tau2: float
) -> None:
    def integrand(effect: float) -> float:
        ratio = stats.norm.pdf(theta, effect, math.sqrt(v)) / stats.norm.pdf(theta, 0, math.sqrt(v))
        return float(ratio * stats.norm.pdf(effect, 0, math.sqrt(tau2)))

    spread = 12 * math.sqrt(tau2)
    expected, _ = integrate.quad(integrand, -spread, spread, epsabs=1e-13, epsrel=1e-12)
    log_lr = mixture_log_likelihood_ratio(theta, v, tau2)
    assert float(np.exp(log_lr)) == pytest.approx(expected, rel=1e-8)


def test_msprt_p_values_run_down_and_agree_with_the_confidence_sequence() -> None:
    rng = np.random.default_rng(17)
    # One experiment with unit-variance outcomes and a true effect of 0.15,
    # looked at every 100 units per arm.
    n = np.arange(100, 3001, 100)
    yc = rng.standard_normal(n[-1])
    yt = rng.standard_normal(n[-1]) + 0.15
    effects = (np.cumsum(yt) - np.cumsum(yc))[n - 1] / n
    variances = 2.0 / n
    result = msprt(effects, variances, 0.05, mixing_variance=mixing_variance_from_mde(0.1))
    p = np.asarray(result.p_values)
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p) <= 0)
    low, high = np.asarray(result.cs_low), np.asarray(result.cs_high)
    assert np.all(np.diff(low) >= 0) and np.all(np.diff(high) <= 0)
    # 0 is outside the confidence sequence exactly when the p-value is ≤ alpha.
    assert np.array_equal(p <= 0.05, (low > 0) | (high < 0))
    assert result.rejected and result.first_rejection_look is not None
    assert result.p_value == p[-1] and result.ci_low == low[-1] and result.ci_high == high[-1]
    assert result.ci_low < 0.15 < result.ci_high


def test_msprt_interval_matches_the_closed_form() -> None:
    theta, v, tau2, alpha = 0.2, 0.004, 0.01, 0.05
    result = msprt([theta], [v], alpha, mixing_variance=tau2)
    half = math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) - 2 * math.log(alpha)))
    assert result.ci_low == pytest.approx(theta - half, rel=1e-12)
    assert result.ci_high == pytest.approx(theta + half, rel=1e-12)
    lam = math.sqrt(v / (v + tau2)) * math.exp(tau2 * theta**2 / (2 * v * (v + tau2)))
    assert result.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-12)


def test_msprt_confidence_sequence_covers_the_effect_at_all_looks() -> None:
    rng = np.random.default_rng(23)
    experiments, units, step, theta = 1000, 1500, 50, 0.2
    yc = rng.standard_normal((experiments, units))
    yt = rng.standard_normal((experiments, units)) + theta
    looks = np.arange(step, units + 1, step)
    effects = (np.cumsum(yt, axis=1) - np.cumsum(yc, axis=1))[:, looks - 1] / looks
    variances = np.broadcast_to(2.0 / looks, effects.shape)
    covered = 0
    for row in range(experiments):
        result = msprt(effects[row], variances[row], 0.05, mixing_variance=0.04)
        covered += result.ci_low <= theta <= result.ci_high
    coverage = covered / experiments
    floor = 0.95 - 2 * math.sqrt(0.05 * 0.95 / experiments)
    assert coverage >= floor, f"running coverage {coverage:.3f} < {floor:.3f}"


def test_msprt_skips_uninformative_looks_and_flags_when_none_is_informative() -> None:
    result = msprt([0.0, 0.5, 0.4], [0.0, 0.01, 0.005], mixing_variance=0.01)
    assert result.error is None
    assert result.p_values[0] == 1.0
    assert result.cs_low[0] == -math.inf and result.cs_high[0] == math.inf
    assert math.isfinite(result.ci_low)

    zero = msprt([0.0, 0.0], [0.0, 0.0], mixing_variance=0.01)
    assert zero.error == "zero_variance"
    assert math.isnan(zero.p_value) and math.isnan(zero.ci_low) and not zero.rejected

    assert msprt([], [], mixing_variance=0.01).error == "no_looks"
    assert msprt([float("nan")], [0.1], mixing_variance=0.01).error == "non_finite"


def test_msprt_overwhelming_evidence_gives_p_zero_without_overflow() -> None:
    result = msprt([1.0, 1.0], [1e-300, 1e-320], mixing_variance=1.0)
    assert result.p_value == 0.0
    assert result.rejected and result.first_rejection_look == 1


def test_msprt_and_mde_helper_validate_arguments() -> None:
    assert mixing_variance_from_mde(0.02) == pytest.approx(4e-4)
    assert mixing_variance_from_mde(-0.1) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="mde"):
        mixing_variance_from_mde(0.0)
    with pytest.raises(ValueError, match="mixing_variance"):
        msprt([0.1], [0.01], mixing_variance=0.0)
    with pytest.raises(ValueError, match="same length"):
        msprt([0.1, 0.2], [0.01], mixing_variance=0.01)
    with pytest.raises(ValueError, match="alpha"):
        msprt([0.1], [0.01], 1.5, mixing_variance=0.01)
