"""Frequentist two-arm comparisons: pooled z-test for proportions, Welch's t-test
for means, delta-method ratio-of-sums metrics, and the delta-method relative CI
that all of them share.

Every function reads sufficient statistics (``MeanSummary`` / ``PairSummary``)
and returns an :class:`~rollout.stats.summary.EffectEstimate` with the effect
as *treatment minus control*. None of them raises on data: degenerate input
sets ``error`` to a short code and leaves the numbers NaN.

Error codes:

``invalid_alpha``
    ``alpha`` outside (0, 1).
``invalid_input``
    negative or non-finite counts or sums, or a proportion sum outside [0, n].
``empty_arm``
    an arm with no units.
``too_few_units``
    an arm with a single unit (no variance estimate).
``zero_variance``
    the standard error of the difference is zero, so no test statistic exists.
``zero_denominator``
    a ratio metric whose denominator sums to zero in an arm.
``non_finite``
    an intermediate result overflowed (sums near the float limits).
``zero_control_mean``
    the relative effect is undefined. This one is partial: the absolute
    effect, its CI and the test are still reported, only the ``rel_*`` fields
    are NaN, because a control at exactly zero (say, no conversions yet) does
    not invalidate the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from rollout.experiments.stats.summary import EffectEstimate, MeanSummary, PairSummary

NAN = math.nan

# A centered sum of squares computed as Σy² − (Σy)²/n loses digits to
# cancellation. When what is left is below this fraction of Σy², fewer than
# about 12 significant digits survived and the remainder is rounding noise, so
# it is treated as exactly zero rather than as a tiny true variance that would
# blow a test statistic up.
_CANCELLATION_TOL = 1e-12


@dataclass(frozen=True, slots=True)
class RelativeEffect:
    """Relative effect ``treatment / control − 1`` with its delta-method CI.

    ``error`` is a short code (``"zero_control_mean"``, ``"invalid_input"``,
    ``"invalid_alpha"``, ``"non_finite"``) when the ratio or its interval is
    undefined; the numbers are then NaN.
    """

    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    error: str | None = None


def relative_effect(
    mean_control: float,
    mean_treatment: float,
    var_mean_control: float,
    var_mean_treatment: float,
    alpha: float = 0.05,
    *,
    covariance: float = 0.0,
) -> RelativeEffect:
    """Relative effect ``t/c − 1`` with a normal delta-method CI.

    ``var_mean_*`` are the variances of the two *estimators* (squared standard
    errors, not per-unit variances) and ``covariance`` their covariance (zero
    for independent arms). The first-order expansion of ``g(c, t) = t/c``
    gives ``Var ≈ V_t/c² + t²·V_c/c⁴ − 2·t·Cov/c³``; the CI is
    ``estimate ± z_{1−α/2}·se``. It is symmetric around the point estimate,
    which is fine when the control estimate is many standard errors away from
    zero and should not be trusted otherwise.

    Returns a :class:`RelativeEffect`; ``error="zero_control_mean"`` when the
    control mean is zero, ``"invalid_alpha"``/``"invalid_input"`` for a bad
    alpha or non-finite inputs, ``"non_finite"`` when the result overflows.
    """
    if not 0.0 < alpha < 1.0:
        return RelativeEffect(NAN, NAN, NAN, NAN, "invalid_alpha")
    values = (mean_control, mean_treatment, var_mean_control, var_mean_treatment, covariance)
    if not all(math.isfinite(v) for v in values) or min(var_mean_control, var_mean_treatment) < 0:
        return RelativeEffect(NAN, NAN, NAN, NAN, "invalid_input")
    if mean_control == 0.0:
        return RelativeEffect(NAN, NAN, NAN, NAN, "zero_control_mean")
    c = mean_control
    ratio = mean_treatment / c
    # Same expansion written with g = t/c, which needs no powers of c that
    # could overflow: (V_t + g²·V_c − 2g·Cov)/c².
    variance = (var_mean_treatment + ratio * ratio * var_mean_control
                - 2.0 * ratio * covariance) / c / c
    # A large positive covariance can push the first-order variance below
    # zero by rounding; a standard error cannot be negative.
    se = math.sqrt(max(variance, 0.0))
    estimate = ratio - 1.0
    half = normal_quantile(1.0 - alpha / 2.0) * se
    if not all(math.isfinite(v) for v in (estimate, se, half)):
        return RelativeEffect(NAN, NAN, NAN, NAN, "non_finite")
    return RelativeEffect(estimate, se, estimate - half, estimate + half)


def two_proportion_ztest(
    control: MeanSummary, treatment: MeanSummary, alpha: float = 0.05
) -> EffectEstimate:
    """Two-sided z-test for a difference in proportions (0/1 metric).

    ``statistic`` and ``p_value`` use the pooled variance
    ``p̄(1−p̄)(1/n_c + 1/n_t)`` with ``p̄ = (x_c + x_t)/(n_c + n_t)``, the
    variance under the null of equal proportions; they equal
    ``statsmodels.stats.proportion.proportions_ztest([x_t, x_c], [n_t, n_c])``.
    The CI for the absolute difference is the unpooled Wald interval
    (``std_error`` is its unpooled standard error): under the alternative the
    arms have different variances, and pooling them would make the interval
    too wide or too narrow. Only ``n`` and ``sum`` are read; ``sum_squares``
    is implied by the 0/1 values.

    Returns an :class:`EffectEstimate`. ``error="zero_variance"`` when both
    arms are all 0 or all 1 (pooled variance zero).
    """
    error = _check_alpha(alpha) or _check_mean_summaries(control, treatment)
    if error is None and not (
        0.0 <= control.sum <= control.n and 0.0 <= treatment.sum <= treatment.n
    ):
        error = "invalid_input"
    if error is not None:
        return failed_estimate(error)

    n_c, n_t = control.n, treatment.n
    p_c, p_t = control.sum / n_c, treatment.sum / n_t
    diff = p_t - p_c
    pooled = (control.sum + treatment.sum) / (n_c + n_t)
    pooled_var = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)
    if pooled_var <= 0.0:
        return failed_estimate("zero_variance")
    z = diff / math.sqrt(pooled_var)
    var_c = p_c * (1.0 - p_c) / n_c
    var_t = p_t * (1.0 - p_t) / n_t
    se = math.sqrt(var_c + var_t)
    half = normal_quantile(1.0 - alpha / 2.0) * se
    inference = (se, diff - half, diff + half, z, normal_two_sided_p(z))
    return estimate_from(p_c, p_t, inference, relative_effect(p_c, p_t, var_c, var_t, alpha))


def welch_ttest(
    control: MeanSummary, treatment: MeanSummary, alpha: float = 0.05
) -> EffectEstimate:
    """Welch's unequal-variance t-test for a difference in means.

    ``t = (ȳ_t − ȳ_c)/√(s_t²/n_t + s_c²/n_c)`` with sample variances
    (ddof 1) and Welch–Satterthwaite degrees of freedom; the p-value is
    two-sided and the CI is ``diff ± t_{1−α/2, df}·se``. These equal
    ``statsmodels.stats.weightstats.ttest_ind(t, c, usevar="unequal")`` and
    ``CompareMeans(DescrStatsW(t), DescrStatsW(c)).tconfint_diff(alpha,
    usevar="unequal")``. The relative effect uses the delta method with a
    normal quantile (its approximation error dwarfs the t correction).

    Returns an :class:`EffectEstimate`; ``error`` for empty or single-unit
    arms and for zero variance in both arms.
    """
    error = _check_alpha(alpha) or _check_mean_summaries(control, treatment)
    if error is not None:
        return failed_estimate(error)
    if control.n < 2 or treatment.n < 2:
        return failed_estimate("too_few_units")

    n_c, n_t = control.n, treatment.n
    m_c, m_t = control.sum / n_c, treatment.sum / n_t
    var_c = centered_sum_squares(n_c, control.sum, control.sum_squares) / (n_c - 1) / n_c
    var_t = centered_sum_squares(n_t, treatment.sum, treatment.sum_squares) / (n_t - 1) / n_t
    diff = m_t - m_c
    inference = t_inference(diff, var_c, var_t, n_c, n_t, alpha)
    if inference is None:
        return failed_estimate("zero_variance")
    return estimate_from(m_c, m_t, inference, relative_effect(m_c, m_t, var_c, var_t, alpha))


def ratio_effect(
    control: PairSummary, treatment: PairSummary, alpha: float = 0.05
) -> EffectEstimate:
    """Difference in a ratio-of-sums metric ``R = Σy/Σx`` (e.g. clicks per view).

    The unit of randomization is the unit, not the event, so the events of one
    unit are correlated and ``R`` cannot be treated as a proportion of events.
    The delta method linearizes ``R`` around the arm means:
    ``Var(R) ≈ (s_y² − 2R·s_xy + R²·s_x²) / (n·x̄²)`` with per-unit sample
    (co)variances (ddof 1). The arms are independent, so the difference has
    variance ``Var(R_t) + Var(R_c)`` and is tested with a two-sided z-test
    (normal CI); the relative effect ``R_t/R_c − 1`` goes through
    :func:`relative_effect`. ``mean_control``/``mean_treatment`` hold the
    ratios.

    Returns an :class:`EffectEstimate`; ``error="zero_denominator"`` when Σx
    is zero in an arm, ``"zero_variance"`` when both linearized variances are
    zero.
    """
    error = _check_alpha(alpha) or _check_pair_summaries(control, treatment)
    if error is not None:
        return failed_estimate(error)
    if control.n < 2 or treatment.n < 2:
        return failed_estimate("too_few_units")
    if control.sum_x == 0.0 or treatment.sum_x == 0.0:
        return failed_estimate("zero_denominator")

    r_c, var_c = _ratio_and_variance(control)
    r_t, var_t = _ratio_and_variance(treatment)
    diff = r_t - r_c
    inference = z_inference(diff, var_c + var_t, alpha)
    if inference is None:
        return failed_estimate("zero_variance")
    return estimate_from(r_c, r_t, inference, relative_effect(r_c, r_t, var_c, var_t, alpha))


# --- building blocks shared with the other frequentist modules -------------


def normal_quantile(q: float) -> float:
    """Standard normal quantile ``Φ⁻¹(q)``."""
    return float(special.ndtri(q))


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value ``2·Φ(−|z|)`` of a standard normal statistic."""
    return float(2.0 * special.ndtr(-abs(z)))


def centered_sum_squares(n: int, total: float, total_squares: float) -> float:
    """``Σ(y − ȳ)²`` from ``n``, ``Σy`` and ``Σy²``; zero when only rounding is left.

    Returns a non-negative float (0.0 for ``n == 0``).
    """
    if n <= 0:
        return 0.0
    centered = total_squares - total * total / n
    if centered <= _CANCELLATION_TOL * abs(total_squares):
        return 0.0
    return centered


def centered_cross_products(n: int, sum_a: float, sum_b: float, sum_ab: float,
                            scale: float) -> float:
    """``Σ(a − ā)(b − b̄)`` from sums; zero when below rounding noise.

    ``scale`` is the magnitude the cancellation is measured against
    (``√(Σa²·Σb²)``): a cross product can legitimately be zero or negative, so
    only its size relative to the raw second moments decides whether it is
    noise.
    """
    if n <= 0:
        return 0.0
    centered = sum_ab - sum_a * sum_b / n
    if abs(centered) <= _CANCELLATION_TOL * scale:
        return 0.0
    return centered


def combined_variance(s_yy: float, s_xy: float, s_xx: float, theta: float) -> float:
    """``Σ((y − ȳ) − θ(x − x̄))²`` from centered sums: ``S_yy − 2θS_xy + θ²S_xx``.

    This is the centered sum of squares of ``y − θ·x``. When ``y`` is close to
    linear in ``x`` the terms cancel; what is left below rounding noise of
    the two positive terms is returned as exactly zero, never negative.
    """
    combined = s_yy - 2.0 * theta * s_xy + theta * theta * s_xx
    if combined <= _CANCELLATION_TOL * (s_yy + theta * theta * s_xx):
        return 0.0
    return combined


def z_inference(
    diff: float, variance: float, alpha: float
) -> tuple[float, float, float, float, float] | None:
    """Normal inference on ``diff`` with estimator variance ``variance``.

    Returns ``(se, ci_low, ci_high, z, p_value)``, or ``None`` when the
    variance is zero (no finite statistic).
    """
    if not variance > 0.0:
        return None
    se = math.sqrt(variance)
    z = diff / se
    half = normal_quantile(1.0 - alpha / 2.0) * se
    return se, diff - half, diff + half, z, normal_two_sided_p(z)


def t_inference(
    diff: float, var_mean_c: float, var_mean_t: float, n_c: int, n_t: int, alpha: float
) -> tuple[float, float, float, float, float] | None:
    """Welch t inference on ``diff`` given each arm's squared standard error.

    Degrees of freedom are Welch–Satterthwaite:
    ``(V_c + V_t)² / (V_c²/(n_c−1) + V_t²/(n_t−1))``. Returns
    ``(se, ci_low, ci_high, t, p_value)``, or ``None`` when both variances
    are zero.
    """
    total = var_mean_c + var_mean_t
    if not total > 0.0:
        return None
    # The same formula with shares of the total, which lie in [0, 1] and sum
    # to one, so the denominator cannot underflow to zero for tiny variances.
    share_c, share_t = var_mean_c / total, var_mean_t / total
    df = 1.0 / (share_c * share_c / (n_c - 1) + share_t * share_t / (n_t - 1))
    se = math.sqrt(total)
    t = diff / se
    half = float(special.stdtrit(df, 1.0 - alpha / 2.0)) * se
    p = float(2.0 * special.stdtr(df, -abs(t)))
    return se, diff - half, diff + half, t, p


def failed_estimate(error: str) -> EffectEstimate:
    """An :class:`EffectEstimate` with every number NaN and ``error`` set."""
    return EffectEstimate(NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, error)


def estimate_from(
    mean_control: float,
    mean_treatment: float,
    inference: tuple[float, float, float, float, float],
    relative: RelativeEffect,
) -> EffectEstimate:
    """Assemble an :class:`EffectEstimate` from ``(se, ci_low, ci_high, statistic,
    p_value)`` and a relative effect.

    Returns ``failed_estimate("non_finite")`` when any absolute figure
    overflowed; otherwise ``error`` is the relative effect's (None, or a
    partial code such as ``"zero_control_mean"``).
    """
    se, ci_low, ci_high, statistic, p_value = inference
    # Sums near the float limits can overflow on the way; such a result is an
    # error, not a number.
    numbers = (mean_control, mean_treatment, se, ci_low, ci_high, statistic, p_value)
    if not all(math.isfinite(v) for v in numbers):
        return failed_estimate("non_finite")
    return EffectEstimate(
        mean_control=mean_control,
        mean_treatment=mean_treatment,
        abs_effect=mean_treatment - mean_control,
        rel_effect=relative.estimate,
        std_error=se,
        ci_low=ci_low,
        ci_high=ci_high,
        rel_ci_low=relative.ci_low,
        rel_ci_high=relative.ci_high,
        statistic=statistic,
        p_value=p_value,
        error=relative.error,
    )


def _check_alpha(alpha: float) -> str | None:
    return None if 0.0 < alpha < 1.0 else "invalid_alpha"


def _check_mean_summaries(*arms: MeanSummary) -> str | None:
    for arm in arms:
        if arm.n < 0 or not (math.isfinite(arm.sum) and math.isfinite(arm.sum_squares)):
            return "invalid_input"
        if arm.sum_squares < 0:
            return "invalid_input"
    if any(arm.n == 0 for arm in arms):
        return "empty_arm"
    return None


def _check_pair_summaries(*arms: PairSummary) -> str | None:
    for arm in arms:
        sums = (arm.sum_y, arm.sum_yy, arm.sum_x, arm.sum_xx, arm.sum_xy)
        if arm.n < 0 or not all(math.isfinite(s) for s in sums):
            return "invalid_input"
        if arm.sum_yy < 0 or arm.sum_xx < 0:
            return "invalid_input"
    if any(arm.n == 0 for arm in arms):
        return "empty_arm"
    return None


def _ratio_and_variance(arm: PairSummary) -> tuple[float, float]:
    """``(R, Var(R))`` of one arm's ratio of sums by the delta method."""
    n = arm.n
    ratio = arm.sum_y / arm.sum_x
    s_yy = centered_sum_squares(n, arm.sum_y, arm.sum_yy)
    s_xx = centered_sum_squares(n, arm.sum_x, arm.sum_xx)
    s_xy = centered_cross_products(n, arm.sum_x, arm.sum_y, arm.sum_xy,
                                   math.sqrt(arm.sum_xx * arm.sum_yy))
    # Σ(y − R·x − (ȳ − R·x̄))² / (n − 1): the sample variance of the
    # linearized per-unit contributions.
    linearized = combined_variance(s_yy, s_xy, s_xx, ratio) / (n - 1)
    # linearized / (n·x̄²), written so that no intermediate can underflow to a
    # zero divisor (Σx itself is known to be non-zero).
    return ratio, linearized / arm.sum_x * n / arm.sum_x
