"""CUPED: variance reduction with a pre-experiment covariate.

Each unit contributes ``y`` (the metric during the experiment) and ``x`` (the
same or a related metric before the experiment). Because ``x`` was measured
before assignment it is independent of the treatment, so adjusting each arm's
mean of ``y`` for where its mean of ``x`` fell removes the part of ``y``'s
noise that ``x`` predicts without changing what the difference estimates.

The adjustment is Lin's (2013) regression with a treatment-by-covariate
interaction: each arm gets its own slope, and the covariate is centred on the
pooled mean of the two arms. Unlike one slope pooled over both arms (classic
CUPED), this form is never asymptotically less precise than the plain
difference in means, whatever the split and however different the arms'
slopes are; with unequal arms and different slopes the pooled form can be
worse than no adjustment at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import special

from rollout.experiments.stats.frequentist import (
    NAN,
    centered_cross_products,
    centered_sum_squares,
    combined_variance,
    estimate_from,
    failed_estimate,
    relative_effect,
    z_inference,
)
from rollout.experiments.stats.summary import EffectEstimate, PairSummary

# Tolerance on Σy² − Σy for the 0/1 check of ``binary=True``: sums of 0/1
# values are integers, so only float accumulation noise is allowed.
_BINARY_TOL = 1e-9
# Slopes are ratios of centered sums that keep about 12 significant digits, so
# two slopes closer than this (relative) are the same slope up to rounding;
# their difference would otherwise leave a ~1e-30 variance behind when y is
# exactly linear in x, and a test statistic made of rounding noise.
_SLOPE_TOL = 1e-9

CupedMethod = Literal["lin_interacted"]


@dataclass(frozen=True, slots=True)
class CupedResult:
    """A CUPED-adjusted effect.

    ``estimate`` compares the adjusted arm means; ``method`` names the
    adjustment (``"lin_interacted"``: per-arm slopes on the covariate centred
    on the pooled mean); ``slope_control``/``slope_treatment`` are the arms'
    slopes ``β_c``/``β_t``. ``variance_reduction`` is
    ``1 − Var(adjusted effect)/Var(unadjusted effect)`` with both variances
    the estimates from the sample (0 when ``x`` carries no information, close
    to ``corr(x, y)²`` for a good covariate, never below 0 up to rounding).

    ``var_mean_control``/``var_mean_treatment`` are the estimated variances of
    the two adjusted means and ``covariance`` their covariance (they share
    the pooled covariate mean), so that a posterior or a ratio can be built on
    the same basis; ``var_mean_control + var_mean_treatment − 2·covariance``
    is ``estimate.std_error²``.

    On error ``estimate.error`` is set; the slopes and ``variance_reduction``
    are still reported when they could be computed, NaN otherwise.
    """

    estimate: EffectEstimate
    slope_control: float
    slope_treatment: float
    variance_reduction: float
    var_mean_control: float = NAN
    var_mean_treatment: float = NAN
    covariance: float = NAN
    method: CupedMethod = "lin_interacted"


def cuped_effect(
    control: PairSummary,
    treatment: PairSummary,
    alpha: float = 0.05,
    *,
    binary: bool = False,
) -> CupedResult:
    """Treatment minus control on regression-adjusted means, per-arm slopes (Lin 2013).

    From each arm's sufficient statistics (``n_a``, ``ȳ_a``, ``x̄_a`` and the
    *within-arm* centered sums ``S_yy,a``, ``S_xy,a``, ``S_xx,a``), with
    ``x̄ = (n_c·x̄_c + n_t·x̄_t)/N`` the pooled mean and ``N = n_c + n_t``:

    * slopes ``β_a = S_xy,a / S_xx,a`` (0 when ``S_xx,a = 0``);
    * adjusted means ``m_a = ȳ_a − β_a(x̄_a − x̄)`` and effect ``m_t − m_c``.
      These are the intercepts of the per-arm OLS fits ``y ~ 1 + (x − x̄)``,
      equivalently the treatment coefficient of ``y ~ 1 + T + (x − x̄) +
      T·(x − x̄)``;
    * residual variance of each arm's mean ``R_a = (S_yy,a − β_a·S_xy,a) /
      ((n_a − 1)·n_a)``, the sample variance (ddof 1) of ``y − β_a·x`` over
      ``n_a``;
    * the covariate mean's own noise ``v = a_c·a_t/(a_c + a_t)`` with
      ``a_a = S_xx,a/((n_a − 1)·n_a)`` the squared standard error of ``x̄_a``:
      the variance of the precision-weighted mean of ``x``, an estimate of
      ``σ_x²/N`` (exactly ``s_x²/N`` when the arms' ``s_x²`` are equal);
    * ``Var(effect) = R_c + R_t + (β_t − β_c)²·v``. The last term is the
      sampling noise of ``x̄`` itself, which moves the two adjusted means by
      ``β_a(x̄ − μ_x)``: without it the interval would be conditional on the
      observed covariate and too narrow for the superpopulation effect when
      the slopes differ.

    Why this never exceeds the unadjusted variance ``V_u = Σ_a S_yy,a /
    ((n_a − 1)·n_a)``: ``V_u − Var(effect) = β_c²a_c + β_t²a_t − (β_t −
    β_c)²·v = (β_c·a_c + β_t·a_t)²/(a_c + a_t) ≥ 0``, in every sample, not
    only asymptotically. With ``a_a = σ_x²/n_a`` and ``p = n_t/N`` this is
    Lin's identity ``σ_x²/N·[β_t²/p + β_c²/(1−p) − (β_t−β_c)²] =
    σ_x²/N·(β_t√((1−p)/p) + β_c√(p/(1−p)))²``. The small-sample choices serve
    it: ddof 1 for the residuals (``n_a − 2`` would add a positive
    ``O(1/n²)`` term that can outweigh the gain of a useless covariate) and
    the slopes' own estimation error ignored (``O(1/n)`` relative), as
    classic CUPED does.

    Inference: with ``binary=False`` a t test whose degrees of freedom are
    Welch–Satterthwaite over the three parts, ``Var² / (R_c²/(n_c − 1) +
    R_t²/(n_t − 1) + X²/(N − 2))`` with ``X = (β_t − β_c)²·v``, and a t
    quantile for the CI; with ``binary=True`` the metric must be 0/1
    (``Σy² == Σy``) and a z-test with normal CI is used, as for proportions.
    The relative effect is ``m_t/m_c − 1`` by the delta method with the
    adjusted means' variances ``R_a + β_a²·v`` and covariance ``β_c·β_t·v``.

    Zero variance of ``x`` in an arm gives that arm the slope 0; in both,
    the plain difference in means (``variance_reduction = 0``), not an error.
    Errors: ``invalid_alpha``, ``invalid_input``, ``empty_arm``,
    ``too_few_units``, ``not_binary``, ``zero_variance``, ``non_finite``,
    ``zero_control_mean`` (partial, see :mod:`rollout.stats.frequentist`).
    """
    if not 0.0 < alpha < 1.0:
        return _failed("invalid_alpha")
    for arm in (control, treatment):
        sums = (arm.sum_y, arm.sum_yy, arm.sum_x, arm.sum_xx, arm.sum_xy)
        if arm.n < 0 or not all(math.isfinite(s) for s in sums):
            return _failed("invalid_input")
        if arm.sum_yy < 0 or arm.sum_xx < 0:
            return _failed("invalid_input")
    if control.n == 0 or treatment.n == 0:
        return _failed("empty_arm")
    if control.n < 2 or treatment.n < 2:
        return _failed("too_few_units")
    if binary and not all(_is_binary(arm) for arm in (control, treatment)):
        return _failed("not_binary")

    n_c, n_t = control.n, treatment.n
    s_yy_c, s_xy_c, s_xx_c = _centered(control)
    s_yy_t, s_xy_t, s_xx_t = _centered(treatment)
    # Each arm its own slope: a pooled slope is mostly the larger arm's, and
    # applied to a small arm whose slope differs it adds variance there.
    beta_c = s_xy_c / s_xx_c if s_xx_c > 0.0 else 0.0
    beta_t = s_xy_t / s_xx_t if s_xx_t > 0.0 else 0.0

    x_pooled = (control.sum_x + treatment.sum_x) / (n_c + n_t)
    adj_c = control.sum_y / n_c - beta_c * (control.sum_x / n_c - x_pooled)
    adj_t = treatment.sum_y / n_t - beta_t * (treatment.sum_x / n_t - x_pooled)

    # Squared standard errors: residual part of each arm's mean, the arms'
    # covariate means, and the unadjusted means.
    resid_c = combined_variance(s_yy_c, s_xy_c, s_xx_c, beta_c) / (n_c - 1) / n_c
    resid_t = combined_variance(s_yy_t, s_xy_t, s_xx_t, beta_t) / (n_t - 1) / n_t
    a_c = s_xx_c / (n_c - 1) / n_c
    a_t = s_xx_t / (n_t - 1) / n_t
    # The precision-weighted combination, written so that an arm with a
    # constant covariate (a = 0, β = 0) gives 0 rather than 0/0.
    covariate = a_c * a_t / (a_c + a_t) if a_c + a_t > 0.0 else 0.0
    slope_gap = beta_t - beta_c
    if abs(slope_gap) <= _SLOPE_TOL * max(abs(beta_c), abs(beta_t)):
        slope_gap = 0.0
    spread = slope_gap * slope_gap * covariate
    variance = resid_c + resid_t + spread
    raw_var = s_yy_c / (n_c - 1) / n_c + s_yy_t / (n_t - 1) / n_t
    if not raw_var > 0.0:
        return CupedResult(failed_estimate("zero_variance"), beta_c, beta_t, NAN)
    reduction = 1.0 - variance / raw_var

    diff = adj_t - adj_c
    inference = (
        z_inference(diff, variance, alpha)
        if binary
        else _t_inference(diff, ((resid_c, n_c - 1), (resid_t, n_t - 1),
                                 (spread, n_c + n_t - 2)), alpha)
    )
    if inference is None:
        # y is an exact linear function of x with one slope: nothing is left to test.
        return CupedResult(failed_estimate("zero_variance"), beta_c, beta_t, reduction)
    var_mean_c = resid_c + beta_c * beta_c * covariate
    var_mean_t = resid_t + beta_t * beta_t * covariate
    covariance = beta_c * beta_t * covariate
    relative = relative_effect(adj_c, adj_t, var_mean_c, var_mean_t, alpha,
                               covariance=covariance)
    return CupedResult(estimate_from(adj_c, adj_t, inference, relative), beta_c, beta_t,
                       reduction, var_mean_c, var_mean_t, covariance)


def _t_inference(
    diff: float, parts: tuple[tuple[float, int], ...], alpha: float
) -> tuple[float, float, float, float, float] | None:
    """t inference on ``diff`` whose variance is the sum of independent estimated parts.

    ``parts`` are ``(variance, degrees of freedom)``; the test's degrees of
    freedom are Welch–Satterthwaite, ``(Σ V_i)² / Σ V_i²/df_i``. Returns
    ``(se, ci_low, ci_high, t, p_value)``, or ``None`` when the total is zero.
    """
    total = sum(v for v, _ in parts)
    if not total > 0.0:
        return None
    # Shares of the total lie in [0, 1], so the denominator cannot underflow.
    df = 1.0 / sum((v / total) ** 2 / dof for v, dof in parts if v > 0.0)
    se = math.sqrt(total)
    t = diff / se
    half = float(special.stdtrit(df, 1.0 - alpha / 2.0)) * se
    p = float(2.0 * special.stdtr(df, -abs(t)))
    return se, diff - half, diff + half, t, p


def _failed(error: str) -> CupedResult:
    return CupedResult(failed_estimate(error), NAN, NAN, NAN)


def _centered(arm: PairSummary) -> tuple[float, float, float]:
    """``(S_yy, S_xy, S_xx)``: one arm's centered sums of squares and cross-products."""
    s_yy = centered_sum_squares(arm.n, arm.sum_y, arm.sum_yy)
    s_xx = centered_sum_squares(arm.n, arm.sum_x, arm.sum_xx)
    s_xy = centered_cross_products(arm.n, arm.sum_x, arm.sum_y, arm.sum_xy,
                                   math.sqrt(arm.sum_xx * arm.sum_yy))
    return s_yy, s_xy, s_xx


def _is_binary(arm: PairSummary) -> bool:
    return (
        0.0 <= arm.sum_y <= arm.n
        and abs(arm.sum_yy - arm.sum_y) <= _BINARY_TOL * max(arm.sum_y, 1.0)
    )
