"""CUPED with per-arm slopes (Lin 2013) never costs precision, whatever the split.

Batches of simulated experiments are drawn at once with a seeded numpy
Generator (experiments along the first axis, units along the second), each is
reduced to its per-arm sufficient statistics, and the statistics run once per
experiment. Every design has unequal arms and arms whose covariate slopes
differ, the case where one pooled slope can make the effect *noisier* than no
adjustment at all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from rollout.experiments.report import render_html
from rollout.experiments.results import cuped_text
from rollout.experiments.stats.cuped import cuped_effect
from rollout.experiments.stats.frequentist import welch_ttest
from rollout.experiments.stats.summary import PairSummary
from serving.cli.analyze import run_analysis, summary_text
from tests.unit.test_analysis import ANALYSIS, AS_OF, _config, write_experiment

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def arm_summaries(y: Array, x: Array, in_arm: Mask) -> list[PairSummary]:
    """One :class:`PairSummary` per row over the units ``in_arm`` marks."""
    w = in_arm.astype(np.float64)
    columns = zip(
        in_arm.sum(axis=1), (w * y).sum(axis=1), (w * y * y).sum(axis=1), (w * x).sum(axis=1),
        (w * x * x).sum(axis=1), (w * x * y).sum(axis=1), strict=True,
    )
    return [PairSummary(int(n), *map(float, sums)) for n, *sums in columns]


def pooled_slope_variance(control: PairSummary, treatment: PairSummary) -> float:
    """The estimated effect variance of classic CUPED (one within-arm slope for both
    arms): ``Σ_a (S_yy − 2θS_xy + θ²S_xx)_a / ((n_a − 1)·n_a)``, ``θ = ΣS_xy/ΣS_xx``."""
    def centered(a: PairSummary) -> tuple[float, float, float]:
        return (a.sum_yy - a.sum_y ** 2 / a.n, a.sum_xy - a.sum_x * a.sum_y / a.n,
                a.sum_xx - a.sum_x ** 2 / a.n)

    (yy_c, xy_c, xx_c), (yy_t, xy_t, xx_t) = centered(control), centered(treatment)
    theta = (xy_c + xy_t) / (xx_c + xx_t)
    return sum((yy - 2 * theta * xy + theta * theta * xx) / (a.n - 1) / a.n
               for a, yy, xy, xx in ((control, yy_c, xy_c, xx_c),
                                     (treatment, yy_t, xy_t, xx_t)))


def random_designs(rng: np.random.Generator, designs: int, units: int,
                   ) -> tuple[Array, Array, Mask, Array]:
    """``designs`` experiments of ``units`` units each: 5–50 % treatment, slopes drawn
    independently per arm in [−2, 2], per-arm noise, covariate scale and effect.

    Returns ``y``, ``x``, the treatment mask and the true (superpopulation) effects.
    """
    share = rng.uniform(0.05, 0.5, designs)
    treated = np.arange(units)[None, :] < np.round(share * units)[:, None]
    slope_c, slope_t = rng.uniform(-2.0, 2.0, (2, designs, 1))
    noise_c, noise_t = rng.uniform(0.2, 3.0, (2, designs, 1))
    scale = rng.uniform(0.5, 2.0, (designs, 1))
    effect = rng.normal(0.0, 0.3, designs)
    x = 5.0 + scale * rng.standard_normal((designs, units))
    e = rng.standard_normal((designs, units))
    centred = x - 5.0
    y = np.where(treated, 1.0 + effect[:, None] + slope_t * centred + noise_t * e,
                 1.0 + slope_c * centred + noise_c * e)
    return y, x, treated, effect


def test_adjusted_variance_never_exceeds_the_unadjusted_over_1000_designs() -> None:
    """Compared: each design's *estimated* variance of the effect from its own sample,
    ``std_error²`` of the adjusted estimate against Welch's ``s_t²/n_t + s_c²/n_c``,
    with 1,000 units (so 50–500 treated). The pooled-slope form fails the same check."""
    rng = np.random.default_rng(20_261_201)
    y, x, treated, _ = random_designs(rng, 1_000, 1_000)
    controls = arm_summaries(y, x, ~treated)
    treatments = arm_summaries(y, x, treated)
    adjusted, unadjusted, pooled, reductions = [], [], [], []
    for c, t in zip(controls, treatments, strict=True):
        result = cuped_effect(c, t)
        assert result.estimate.error is None and result.method == "lin_interacted"
        adjusted.append(result.estimate.std_error ** 2)
        unadjusted.append(welch_ttest(c.y(), t.y()).std_error ** 2)
        pooled.append(pooled_slope_variance(c, t))
        reductions.append(result.variance_reduction)
    ratio = np.array(adjusted) / np.array(unadjusted)
    assert ratio.max() <= 1.0 + 1e-12
    assert min(reductions) >= -1e-12
    assert np.allclose(1.0 - ratio, reductions, rtol=0.0, atol=1e-12)
    # The pooled slope, on the very same samples, is worse than no adjustment in
    # a good share of these designs, and by a wide margin in some.
    pooled_ratio = np.array(pooled) / np.array(unadjusted)
    assert (pooled_ratio > 1.0).mean() > 0.1
    assert pooled_ratio.max() > 1.5


def test_the_90_10_case_that_pooling_makes_worse() -> None:
    """90 % control with slope 1, 10 % treatment with slope 0.24, unit covariate and
    residual spread: the pooled slope (≈ 0.92) raises the variance by about 24 %
    (reduction −0.237); per-arm slopes lower it by about 9 %."""
    rng = np.random.default_rng(20_261_202)
    n_c, n_t = 90_000, 10_000
    x_c, x_t = rng.standard_normal(n_c), rng.standard_normal(n_t)
    y_c = 1.0 * x_c + rng.standard_normal(n_c)
    y_t = 0.02 + 0.24 * x_t + rng.standard_normal(n_t)

    def summary(y: Array, x: Array) -> PairSummary:
        return PairSummary(y.size, float(y.sum()), float(y @ y), float(x.sum()),
                           float(x @ x), float(x @ y))

    control, treatment = summary(y_c, x_c), summary(y_t, x_t)
    unadjusted = welch_ttest(control.y(), treatment.y()).std_error ** 2
    pooled_reduction = 1.0 - pooled_slope_variance(control, treatment) / unadjusted
    assert -0.28 < pooled_reduction < -0.2
    result = cuped_effect(control, treatment)
    assert result.estimate.error is None
    assert result.variance_reduction >= 0.0
    # Asymptotically σ_e²(1/n_t + 1/n_c) + (β_t − β_c)²σ_x²/N against
    # (σ_e² + β_t²)/n_t + (σ_e² + β_c²)/n_c: a reduction of 0.09.
    assert abs(result.variance_reduction - 0.09) < 0.02
    assert abs(result.slope_control - 1.0) < 0.02 and abs(result.slope_treatment - 0.24) < 0.04


def test_coverage_of_the_95_percent_interval_with_a_random_covariate() -> None:
    """4,000 experiments, each a new random design and a new draw of the covariate
    (superpopulation): the interval covers the true effect 95 % ± 1.5 % of the time.
    Without the covariate-mean term ``(β_t − β_c)²·v`` it would cover too rarely."""
    rng = np.random.default_rng(20_261_203)
    covered, conditional = [], []
    for _ in range(4):
        y, x, treated, effect = random_designs(rng, 1_000, 1_000)
        controls = arm_summaries(y, x, ~treated)
        treatments = arm_summaries(y, x, treated)
        for c, t, truth in zip(controls, treatments, effect, strict=True):
            result = cuped_effect(c, t)
            est = result.estimate
            covered.append(est.ci_low <= truth <= est.ci_high)
            # The same interval from the residual variances alone (x held fixed).
            spread = ((result.slope_treatment - result.slope_control) ** 2
                      * _covariate_term(c, t))
            half = (est.ci_high - est.ci_low) / 2.0
            narrow = half * math.sqrt(max(1.0 - spread / est.std_error ** 2, 0.0))
            conditional.append(abs(est.abs_effect - truth) <= narrow)
    rate = float(np.mean(covered))
    assert 0.935 <= rate <= 0.965, rate
    assert float(np.mean(conditional)) < 0.93


def _covariate_term(control: PairSummary, treatment: PairSummary) -> float:
    """``v = a_c·a_t/(a_c + a_t)``, ``a`` the squared standard error of each arm's x̄."""
    a_c = control.x().variance / control.n
    a_t = treatment.x().variance / treatment.n
    return a_c * a_t / (a_c + a_t)


# --- labelling: the summary, the HTML and the JSON say what is adjusted -----------


def test_variance_change_is_signed_and_labelled() -> None:
    assert cuped_text("lin_interacted", 0.37) == (
        "CUPED (per-arm slopes): variance 37% lower than unadjusted")
    assert cuped_text("lin_interacted", -0.06) == (
        "CUPED (per-arm slopes): variance 6% higher than unadjusted")
    assert cuped_text("lin_interacted", 1e-4).endswith("variance about the same as unadjusted")
    assert cuped_text("lin_interacted", None).endswith("variance change unknown")


def test_report_says_which_numbers_are_adjusted(tmp_path: Path) -> None:
    write_experiment(tmp_path, units=4_000)
    report = run_analysis(_config(tmp_path), "exp", as_of=AS_OF, now=AS_OF)
    (primary,) = report.primary()
    cuped = primary.cuped
    assert cuped is not None and cuped.method == "lin_interacted"
    assert cuped.slope_control is not None and cuped.slope_treatment is not None
    assert cuped.variance_reduction == primary.cuped_variance_reduction > 0.0
    # P(better) is on the basis of the adjusted p-value: a flat-prior normal posterior
    # on the adjusted effect, so with z inference P(better) = 1 − p/2 for a gain.
    assert primary.bayes is not None and primary.bayes.basis == "cuped_adjusted"
    assert primary.abs_effect is not None and primary.abs_effect > 0
    assert primary.p_value is not None and primary.std_error is not None
    assert primary.bayes.prob_better == pytest.approx(1.0 - primary.p_value / 2.0, rel=1e-12)

    text = summary_text(report)
    line = next(t for t in text.splitlines() if t.startswith("primary"))
    assert ": CUPED-adjusted " in line and "CUPED -" not in text
    assert "CUPED (per-arm slopes): variance " in text and "% lower than unadjusted" in text
    assert "P(better) = " in text and "(CUPED-adjusted, normal approximation)" in text
    page = render_html(report)
    assert "CUPED-adjusted" in page and "% lower than unadjusted" in page
    body = report.to_json()["metrics"][0]
    assert body["cuped"]["method"] == "lin_interacted" and body["bayes"]["basis"] == (
        "cuped_adjusted")
    assert body["unadjusted"]["p_value"] is not None


def test_without_cuped_nothing_is_labelled_adjusted(tmp_path: Path) -> None:
    write_experiment(tmp_path, units=2_000)
    config = _config(tmp_path, {**ANALYSIS, "cuped": False})
    report = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF)
    (primary,) = report.primary()
    assert primary.cuped is None and primary.bayes is not None
    assert primary.bayes.basis == "unadjusted"
    text = summary_text(report)
    assert "CUPED" not in text and "P(better) = " in text
