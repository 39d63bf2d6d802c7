"""Bayesian comparison of two arms: Beta-Binomial and normal-means models.

Every number is computed in closed form or by deterministic one-dimensional
quadrature, never by sampling, so results are reproducible to the last digit
and accurate for posteriors from a handful of units to many millions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import integrate, optimize, special

from rollout.experiments.stats.summary import MeanSummary

# Each Beta posterior is integrated over its central 1 − 2·_TAIL quantile
# range: the truncation changes any probability by at most 2e-15 while the
# window follows the posterior however concentrated it is (a posterior from
# millions of trials has a width of ~1e-4; quadrature on all of [0, 1] would
# not even see it).
_TAIL = 1e-15
# Quadrature tolerances: far below any decision-relevant difference, and met
# comfortably by adaptive Gauss–Kronrod on these smooth integrands.
_EPSABS = 1e-14
_EPSREL = 1e-12
_QUAD_LIMIT = 200


@dataclass(frozen=True, slots=True)
class BayesResult:
    """Posterior comparison of treatment against control.

    ``prob_better`` is ``P(treatment mean > control mean | data)``.
    ``expected_loss_treatment`` is ``E[max(control − treatment, 0)]``, what is
    lost on average by shipping treatment; ``expected_loss_control`` is
    ``E[max(treatment − control, 0)]``, the loss of keeping control.
    ``ci_low``/``ci_high`` is an equal-tailed credible interval for the
    absolute difference treatment − control, ``rel_ci_low``/``rel_ci_high`` for
    the relative lift treatment/control − 1 (``±inf`` when the credible set of
    the ratio is unbounded). ``error`` is a short code when the inputs cannot
    be used; the numbers are then NaN.
    """

    prob_better: float
    expected_loss_treatment: float
    expected_loss_control: float
    ci_low: float
    ci_high: float
    rel_ci_low: float
    rel_ci_high: float
    error: str | None = None


def _failed(error: str) -> BayesResult:
    nan = math.nan
    return BayesResult(nan, nan, nan, nan, nan, nan, nan, error=error)


def _check_credible(credible: float) -> None:
    if not (0.0 < credible < 1.0):
        raise ValueError(f"credible must be in (0, 1), got {credible!r}")


# --------------------------------------------------------------------------- Beta


# From this parameter size on, the Beta density uses Stirling's series: its
# truncation error 1/(1188·x⁹) is then below 2e-15.
_STIRLING_FROM = 20.0


def _stirling_remainder(x: float) -> float:
    """``ln Γ(x) − [(x − ½)·ln x − x + ½·ln 2π]`` for ``x ≥ 20``, by Stirling's series."""
    inv = 1.0 / x
    inv2 = inv * inv
    return inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))


@dataclass(frozen=True, slots=True)
class _Beta:
    """A Beta(a, b) posterior with the few functions the quadratures need."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def sd(self) -> float:
        s = self.a + self.b
        return math.sqrt(self.a * self.b / (s * s * (s + 1.0)))

    def plus_one_success(self) -> _Beta:
        return _Beta(self.a + 1.0, self.b)

    def pdf(self, x: float) -> float:
        a, b = self.a, self.b
        if min(a, b) < _STIRLING_FROM:
            # Small parameters: every term of the log density is modest, so the
            # textbook form keeps full relative accuracy.
            log_pdf = (
                special.xlogy(a - 1.0, x) + special.xlog1py(b - 1.0, -x) - special.betaln(a, b)
            )
            return math.exp(float(log_pdf))
        # Large parameters: (a−1)·ln x and ln B(a, b) are each ~1e5–1e7 and
        # cancel to O(1), so their rounding (and ln B's own ~1e-14 relative
        # error) would bias the density by ~1e-9. Centering at p = a/(a+b)
        # with Stirling's series for ln B instead gives
        #   ln f(x) = (a−1)·ln(x/p) + (b−1)·ln((1−x)/q) + ½·ln((a+b)/(2πpq)) − Δμ
        # with q = 1 − p and Δμ = μ(a) + μ(b) − μ(a+b) the Stirling remainders;
        # every term is small near the bulk of the posterior.
        s = a + b
        p, q = a / s, b / s
        log_pdf = (
            (a - 1.0) * math.log1p((x - p) / p)
            + (b - 1.0) * math.log1p((p - x) / q)
            + 0.5 * math.log(s / (2.0 * math.pi * p * q))
            - (_stirling_remainder(a) + _stirling_remainder(b) - _stirling_remainder(s))
        )
        return math.exp(log_pdf)

    def cdf(self, x: float) -> float:
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        return float(special.betainc(self.a, self.b, x))

    def sf(self, x: float) -> float:
        # The complemented function keeps relative accuracy where the cdf is ~1.
        if x <= 0.0:
            return 1.0
        if x >= 1.0:
            return 0.0
        return float(special.betaincc(self.a, self.b, x))

    def window(self) -> tuple[float, float]:
        return (
            float(special.betaincinv(self.a, self.b, _TAIL)),
            float(special.betainccinv(self.a, self.b, _TAIL)),
        )


def _quad(
    func: Callable[[float], float], window: tuple[float, float], points: Sequence[float]
) -> float:
    """Adaptive quadrature of ``func`` over ``window`` with optional breakpoints.

    ``points`` are places where the integrand has a kink or its mass is
    concentrated; those inside the window are handed to the integrator so it
    subdivides there first. ``full_output`` keeps scipy from emitting an
    IntegrationWarning; the tolerances are met on these integrands.
    """
    lo, hi = window
    inside = sorted({p for p in points if lo < p < hi})
    result = integrate.quad(
        func,
        lo,
        hi,
        points=inside or None,
        epsabs=_EPSABS,
        epsrel=_EPSREL,
        limit=_QUAD_LIMIT,
        full_output=1,
    )
    return float(result[0])


def _prob_greater(x: _Beta, y: _Beta) -> float:
    """``P(X > Y)`` for independent Beta variables, by one-dimensional quadrature.

    ``P(X > Y) = ∫ f_X(u) F_Y(u) du = ∫ f_Y(u) S_X(u) du``. The integral runs
    against the density of the *narrower* posterior, over its own quantile
    window, so the other factor (a cdf) varies slowly there and the
    integrand is smooth at the integrator's scale whatever the two widths.
    """
    if x.sd <= y.sd:
        return _quad(lambda u: x.pdf(u) * y.cdf(u), x.window(), (x.mean, y.mean))
    return _quad(lambda u: y.pdf(u) * x.sf(u), y.window(), (y.mean, x.mean))


def _expected_shortfall(x: _Beta, y: _Beta) -> float:
    """``E[max(X − Y, 0)]`` for independent Beta variables.

    Since ``u·f_{a,b}(u) = a/(a+b) · f_{a+1,b}(u)``,
    ``E[X·1{X>Y}] = E[X]·P(X⁺ > Y)`` with ``X⁺ ~ Beta(a_X + 1, b_X)``, hence
    ``E[max(X − Y, 0)] = E[X]·P(X⁺ > Y) − E[Y]·P(X > Y⁺)``: two more calls of
    the same quadrature. The difference is accurate to ~1e-13 absolute,
    so it is clipped at 0 where the true loss is smaller than that.
    """
    value = x.mean * _prob_greater(x.plus_one_success(), y) - y.mean * _prob_greater(
        x, y.plus_one_success()
    )
    return max(value, 0.0)


def _difference_cdf(control: _Beta, treatment: _Beta, d: float) -> float:
    """``P(T − C ≤ d)`` by quadrature against the narrower posterior's density."""
    if control.sd <= treatment.sd:
        # ∫ f_C(u) F_T(u + d) du; F_T(u + d) has kinks where u + d leaves [0, 1].
        return _quad(
            lambda u: control.pdf(u) * treatment.cdf(u + d),
            control.window(),
            (control.mean, treatment.mean - d, -d, 1.0 - d),
        )
    # ∫ f_T(u) S_C(u − d) du.
    return _quad(
        lambda u: treatment.pdf(u) * control.sf(u - d),
        treatment.window(),
        (treatment.mean, control.mean + d, d, 1.0 + d),
    )


def _ratio_cdf(control: _Beta, treatment: _Beta, r: float) -> float:
    """``P(T / C ≤ r)`` for ``r > 0``, i.e. ``P(T ≤ r·C)`` (C > 0 almost surely).

    The narrower posterior on the relative scale (coefficient of variation)
    carries the integral: ``F_T(r·u)`` varies on the scale ``sd_T / r ≈ sd_T·m_C/m_T``
    near the quantiles of interest.
    """
    if control.sd / control.mean <= treatment.sd / treatment.mean:
        return _quad(
            lambda u: control.pdf(u) * treatment.cdf(r * u),
            control.window(),
            (control.mean, treatment.mean / r, 1.0 / r),
        )
    return _quad(
        lambda u: treatment.pdf(u) * control.sf(u / r),
        treatment.window(),
        (treatment.mean, control.mean * r, r),
    )


def _quantile(
    cdf: Callable[[float], float],
    q: float,
    center: float,
    scale: float,
    lower_limit: float,
    upper_limit: float,
) -> float:
    """Root of ``cdf(x) = q`` by Brent's method, bracketed around ``center``.

    The bracket starts at ``center ± 8·scale`` (clipped to the support) and
    doubles its half-width until it holds the root, so heavy-tailed posteriors
    (few units) cost a few more evaluations, never a failure. Returns NaN only
    if no bracket is found within the limits, which a proper cdf cannot cause.
    """
    half = 8.0 * scale
    for _ in range(64):
        lo = max(lower_limit, center - half)
        hi = min(upper_limit, center + half)
        f_lo = cdf(lo) - q
        f_hi = cdf(hi) - q
        if f_lo <= 0.0 <= f_hi:
            if f_lo == 0.0:
                return lo
            if f_hi == 0.0:
                return hi
            root = optimize.brentq(
                lambda x: cdf(x) - q, lo, hi, xtol=scale * 1e-10, rtol=1e-12, full_output=False
            )
            return float(root)
        if lo == lower_limit and hi == upper_limit:
            break
        half *= 2.0
    return math.nan


def _beta_posterior(arm: MeanSummary, prior_alpha: float, prior_beta: float) -> _Beta | str:
    """The arm's Beta posterior, or the error code describing why there is none."""
    if not (math.isfinite(arm.sum) and math.isfinite(arm.sum_squares)):
        return "non_finite"
    if arm.n <= 0:
        return "empty_arm"
    # 0/1 outcomes have Σy² = Σy and 0 ≤ Σy ≤ n; anything else is not a count.
    tolerance = 1e-9 * max(1.0, abs(arm.sum))
    if arm.sum < 0.0 or arm.sum > arm.n or abs(arm.sum_squares - arm.sum) > tolerance:
        return "not_binary"
    return _Beta(prior_alpha + arm.sum, prior_beta + arm.n - arm.sum)


def beta_binomial(
    control: MeanSummary,
    treatment: MeanSummary,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
    credible: float = 0.95,
) -> BayesResult:
    """Beta-Binomial comparison of two conversion rates.

    Each arm's rate has posterior ``Beta(prior_alpha + successes,
    prior_beta + failures)`` (``sum`` successes out of ``n`` 0/1 units).
    Returns a :class:`BayesResult` where

    * ``prob_better = P(p_t > p_c)`` is one adaptive quadrature over the
      narrower posterior's quantile window (exact to ~1e-12);
    * the expected losses use ``E[max(X − Y, 0)] = E[X]P(X⁺ > Y) − E[Y]P(X > Y⁺)``
      (see :func:`_expected_shortfall`), again exact quadrature;
    * the credible intervals are equal-tailed quantiles of ``p_t − p_c`` and of
      ``p_t / p_c − 1``, always from the exact distribution of the difference
      (ratio), whose cdf is a quadrature, inverted by Brent's method. A normal
      approximation is never substituted: it misplaces the tails for small or
      extreme counts (skewed posteriors), and the windowed quadrature already
      costs the same for concentrated posteriors.

    Errors: ``"empty_arm"`` (``n ≤ 0``), ``"not_binary"`` (counts outside
    ``[0, n]`` or ``sum_squares ≠ sum``), ``"non_finite"``. Raises
    ``ValueError`` for non-positive priors or ``credible`` outside (0, 1).
    """
    _check_credible(credible)
    if not (
        math.isfinite(prior_alpha)
        and math.isfinite(prior_beta)
        and prior_alpha > 0
        and prior_beta > 0
    ):
        raise ValueError(
            f"Beta prior parameters must be positive, got ({prior_alpha}, {prior_beta})"
        )
    post_c = _beta_posterior(control, prior_alpha, prior_beta)
    if isinstance(post_c, str):
        return _failed(post_c)
    post_t = _beta_posterior(treatment, prior_alpha, prior_beta)
    if isinstance(post_t, str):
        return _failed(post_t)

    prob_better = _prob_greater(post_t, post_c)
    loss_treatment = _expected_shortfall(post_c, post_t)
    loss_control = _expected_shortfall(post_t, post_c)

    tail = (1.0 - credible) / 2.0
    diff_center = post_t.mean - post_c.mean
    diff_scale = math.hypot(post_t.sd, post_c.sd)

    def diff_cdf(d: float) -> float:
        return _difference_cdf(post_c, post_t, d)

    ci = [_quantile(diff_cdf, q, diff_center, diff_scale, -1.0, 1.0) for q in (tail, 1.0 - tail)]

    # The ratio is searched on the log scale, where its posterior is close to
    # symmetric and the delta-method scale √(cv_t² + cv_c²) fits both tails.
    log_center = math.log(post_t.mean / post_c.mean)
    log_scale = math.hypot(post_t.sd / post_t.mean, post_c.sd / post_c.mean)

    def log_ratio_cdf(v: float) -> float:
        return _ratio_cdf(post_c, post_t, math.exp(v))

    # exp(±700) is the widest ratio a double can hold without overflowing.
    rel = [
        math.expm1(_quantile(log_ratio_cdf, q, log_center, log_scale, -700.0, 700.0))
        for q in (tail, 1.0 - tail)
    ]
    if any(math.isnan(x) for x in (*ci, *rel)):
        return _failed("quantile_not_found")
    return BayesResult(
        prob_better=prob_better,
        expected_loss_treatment=loss_treatment,
        expected_loss_control=loss_control,
        ci_low=ci[0],
        ci_high=ci[1],
        rel_ci_low=rel[0],
        rel_ci_high=rel[1],
    )


# --------------------------------------------------------------------------- normal


def normal_means(
    control: MeanSummary, treatment: MeanSummary, credible: float = 0.95
) -> BayesResult:
    """Normal-model comparison of two means under a flat prior, in closed form.

    Each arm's mean has posterior ``N(ȳ, s²/n)`` (flat prior, variance plugged
    in — accurate once an arm has more than a few dozen units), so the
    difference ``D = μ_t − μ_c ~ N(d, σ²)`` with ``d = ȳ_t − ȳ_c`` and
    ``σ² = s_t²/n_t + s_c²/n_c``. Returns a :class:`BayesResult` with

    * ``prob_better = Φ(d/σ)``;
    * ``expected_loss_treatment = E[max(−D, 0)] = σφ(d/σ) − d·Φ(−d/σ)`` and
      ``expected_loss_control = E[max(D, 0)] = σφ(d/σ) + d·Φ(d/σ)``;
    * ``d ± z·σ`` as the credible interval;
    * the relative interval from Fieller's construction: for a control mean
      bounded away from zero, ``P(μ_t/μ_c ≤ r) = P(μ_t − r·μ_c ≤ 0)`` is normal,
      so the quantiles solve a quadratic exactly. When the control mean's
      posterior reaches zero at this credibility (``ȳ_c² ≤ z²·s_c²/n_c``) the
      credible set of the ratio is unbounded and the bounds are ``-inf, inf``.

    Errors: ``"empty_arm"`` (``n = 0``), ``"too_few_units"`` (``n < 2``, no
    variance), ``"zero_variance"`` (both arms constant), ``"non_finite"``.
    Raises ``ValueError`` for ``credible`` outside (0, 1).
    """
    _check_credible(credible)
    for arm in (control, treatment):
        if not (math.isfinite(arm.sum) and math.isfinite(arm.sum_squares)):
            return _failed("non_finite")
        if arm.n <= 0:
            return _failed("empty_arm")
        if arm.n < 2:
            return _failed("too_few_units")
    return normal_estimates(control.mean, treatment.mean, control.variance / control.n,
                            treatment.variance / treatment.n, credible=credible)


def normal_estimates(
    mean_control: float,
    mean_treatment: float,
    var_mean_control: float,
    var_mean_treatment: float,
    covariance: float = 0.0,
    credible: float = 0.95,
) -> BayesResult:
    """Normal-model comparison of two estimated means under a flat prior.

    The same closed forms as :func:`normal_means`, for any pair of
    approximately normal mean estimates with their variances and covariance:
    the posterior of ``D = μ_t − μ_c`` is ``N(d, σ²)`` with ``d = m_t − m_c``
    and ``σ² = V_c + V_t − 2·Cov``. It puts P(better) on the same basis as a
    frequentist estimate that is not a plain difference of arm means (CUPED's
    adjusted means share the pooled covariate mean, hence the covariance);
    Fieller's relative interval takes the covariance into account.

    Errors: ``"zero_variance"`` (``σ² ≤ 0``), ``"non_finite"`` (an input is
    not finite). Raises ``ValueError`` for ``credible`` outside (0, 1).
    """
    _check_credible(credible)
    m_c, m_t, v_c, v_t = mean_control, mean_treatment, var_mean_control, var_mean_treatment
    if not all(math.isfinite(v) for v in (m_c, m_t, v_c, v_t, covariance)):
        return _failed("non_finite")
    var_d = v_c + v_t - 2.0 * covariance
    if not var_d > 0.0:
        return _failed("zero_variance")
    sigma = math.sqrt(var_d)
    d = m_t - m_c
    ratio = d / sigma
    density = math.exp(-0.5 * ratio * ratio) / math.sqrt(2.0 * math.pi)
    prob_better = float(special.ndtr(ratio))
    loss_treatment = sigma * density - d * float(special.ndtr(-ratio))
    loss_control = sigma * density + d * prob_better
    z = float(special.ndtri(1.0 - (1.0 - credible) / 2.0))
    rel_low, rel_high = _fieller(m_c, v_c, m_t, v_t, z, covariance)
    return BayesResult(
        prob_better=prob_better,
        # Both losses are non-negative by definition; the closed forms can round
        # a few ulps below zero when |d| ≫ σ.
        expected_loss_treatment=max(loss_treatment, 0.0),
        expected_loss_control=max(loss_control, 0.0),
        ci_low=d - z * sigma,
        ci_high=d + z * sigma,
        rel_ci_low=rel_low,
        rel_ci_high=rel_high,
    )


def _fieller(m_c: float, v_c: float, m_t: float, v_t: float, z: float,
             cov: float = 0.0) -> tuple[float, float]:
    """Equal-tailed bounds of ``μ_t/μ_c − 1`` for normal posteriors with covariance ``cov``.

    The ratio bound ``r`` at level ``±z`` solves
    ``(r·m_c − m_t)² = z²(v_t + r²v_c − 2r·cov)``:
    ``A r² − 2(m_c m_t − z² cov) r + (m_t² − z² v_t) = 0`` with ``A = m_c² − z² v_c``.
    For ``A > 0`` both roots are real (the discriminant over ``z²`` is
    ``m_t² v_c + A v_t − 2 m_c m_t cov + z² cov²``, at least
    ``(v_c v_t − cov²)·A/v_c ≥ 0``) and
    they are the lower and upper bounds. A negative control mean is handled by
    flipping both signs, which leaves the ratio and the covariance unchanged.
    """
    if m_c < 0.0:
        m_c, m_t = -m_c, -m_t
    a = m_c * m_c - z * z * v_c
    if not a > 0.0:
        return -math.inf, math.inf
    # With cov = 0 the extra terms are exact zeros, so independent arms get
    # the same digits as the plain formula.
    root = z * math.sqrt(max(m_t * m_t * v_c + a * v_t - 2.0 * m_c * m_t * cov
                             + z * z * cov * cov, 0.0))
    center = m_c * m_t - z * z * cov
    low = (center - root) / a
    high = (center + root) / a
    return low - 1.0, high - 1.0
