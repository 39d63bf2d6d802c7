"""CUPED: variance reduction with a pre-experiment covariate.

Each unit contributes ``y`` (the metric during the experiment) and ``x`` (the
same or a related metric before the experiment). Because ``x`` was measured
before assignment it is independent of the treatment, so subtracting
``θ·(x − x̄)`` from ``y`` removes the part of ``y``'s noise that ``x`` predicts
without changing what the difference in means estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rollout.experiments.stats.frequentist import (
    NAN,
    centered_cross_products,
    centered_sum_squares,
    combined_variance,
    estimate_from,
    failed_estimate,
    relative_effect,
    t_inference,
    z_inference,
)
from rollout.experiments.stats.summary import EffectEstimate, PairSummary

# Tolerance on Σy² − Σy for the 0/1 check of ``binary=True``: sums of 0/1
# values are integers, so only float accumulation noise is allowed.
_BINARY_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class CupedResult:
    """A CUPED-adjusted effect.

    ``estimate`` compares the adjusted arm means; ``theta`` is the regression
    coefficient used for both arms; ``variance_reduction`` is
    ``1 − Var(adjusted effect)/Var(unadjusted effect)`` (0 when ``x`` carries
    no information, close to ``corr(x, y)²`` for a good covariate). On error
    ``estimate.error`` is set; ``theta``/``variance_reduction`` are still
    reported when they could be computed, NaN otherwise.
    """

    estimate: EffectEstimate
    theta: float
    variance_reduction: float


def cuped_effect(
    control: PairSummary,
    treatment: PairSummary,
    alpha: float = 0.05,
    *,
    binary: bool = False,
) -> CupedResult:
    """Treatment minus control on CUPED-adjusted means.

    ``θ = Σ_arms S_xy / Σ_arms S_xx`` with ``S`` the *within-arm* centered
    (cross-)sums, i.e. the pooled within-arm covariance over the pooled
    within-arm variance of ``x``, shared by both arms. With this θ the effect
    equals the treatment coefficient of the OLS fit ``y ~ 1 + T + (x − x̄)``,
    θ its ``x`` coefficient and the adjusted control mean its intercept.

    Adjusted arm means are ``ȳ_a − θ(x̄_a − x̄)`` with ``x̄`` the pooled mean
    of ``x``; adjusted per-unit variances are
    ``s_y² − 2θ·s_xy + θ²·s_x²`` (ddof 1), the sample variance of ``y − θx``
    in each arm. The uncertainty in θ itself is ignored (it is
    ``O(1/n)`` relative).

    Inference: with ``binary=False`` Welch's t on the adjusted figures
    (adjusted variances, Welch–Satterthwaite df, t quantile for the CI); with
    ``binary=True`` the metric must be 0/1 (``Σy² == Σy``) and a z-test with
    normal CI is used, as for proportions. The relative effect is
    ``adj_t/adj_c − 1`` by the delta method.

    Zero variance of ``x`` gives ``θ = 0`` and ``variance_reduction = 0``
    (the unadjusted comparison), not an error. Errors: ``invalid_alpha``,
    ``invalid_input``, ``empty_arm``, ``too_few_units``, ``not_binary``,
    ``zero_variance``, ``non_finite``, ``zero_control_mean`` (partial, see
    :mod:`rollout.stats.frequentist`).
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

    stats_c = _centered(control)
    stats_t = _centered(treatment)
    # θ is pooled over both arms so that it does not depend on which units
    # were assigned where: the same θ adjusts both arms, and since x̄_t − x̄_c
    # has mean zero before treatment, subtracting θ(x̄_t − x̄_c) leaves the
    # effect estimate unbiased. Within-arm centering keeps the treatment's
    # shift of ȳ out of the covariance.
    s_xx = stats_c[2] + stats_t[2]
    # Zero variance of x: x explains nothing, and θ = 0 reduces CUPED to the
    # plain difference in means.
    theta = (stats_c[1] + stats_t[1]) / s_xx if s_xx > 0.0 else 0.0

    n_c, n_t = control.n, treatment.n
    x_pooled = (control.sum_x + treatment.sum_x) / (n_c + n_t)
    adj_c = control.sum_y / n_c - theta * (control.sum_x / n_c - x_pooled)
    adj_t = treatment.sum_y / n_t - theta * (treatment.sum_x / n_t - x_pooled)

    # Squared standard errors of each arm's mean, adjusted and unadjusted.
    var_c = combined_variance(*stats_c, theta) / (n_c - 1) / n_c
    var_t = combined_variance(*stats_t, theta) / (n_t - 1) / n_t
    raw_var = stats_c[0] / (n_c - 1) / n_c + stats_t[0] / (n_t - 1) / n_t
    if not raw_var > 0.0:
        return CupedResult(failed_estimate("zero_variance"), theta, NAN)
    reduction = 1.0 - (var_c + var_t) / raw_var

    diff = adj_t - adj_c
    inference = (
        z_inference(diff, var_c + var_t, alpha)
        if binary
        else t_inference(diff, var_c, var_t, n_c, n_t, alpha)
    )
    if inference is None:
        # y is an exact linear function of x: nothing is left to test.
        return CupedResult(failed_estimate("zero_variance"), theta, reduction)
    relative = relative_effect(adj_c, adj_t, var_c, var_t, alpha)
    return CupedResult(estimate_from(adj_c, adj_t, inference, relative), theta, reduction)


def _failed(error: str) -> CupedResult:
    return CupedResult(failed_estimate(error), NAN, NAN)


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
