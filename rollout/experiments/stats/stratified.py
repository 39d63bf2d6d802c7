"""Post-stratification: the effect within strata, weighted by the strata's shares.

Units are grouped into strata by attributes fixed before assignment (platform,
country, acquisition source). Randomization balances the strata only on
average; in a given experiment one arm may hold a few more iOS users than the
other, and when iOS users convert more that imbalance is noise in the plain
difference in means. Post-stratification (Miratrix, Sekhon & Yu 2013,
"Adjusting treatment effect estimates by post-stratification in randomized
experiments", JRSS-B 75(2)) compares the arms within each stratum and weights
the comparisons by the stratum's share of all units:

    τ̂_ps = Σ_s w_s (ȳ_t,s − ȳ_c,s),   w_s = N_s / N,

with ``N_s = n_t,s + n_c,s`` counted over both compared arms. It is the
treatment coefficient of the regression of y on the treatment, the centred
stratum dummies and their interactions (Lin 2013 with dummies as covariates),
so it removes the between-strata part of the noise and, like CUPED's per-arm
slopes, cannot be asymptotically less precise than the plain difference.

Everything is computed from per-(stratum, arm) sufficient statistics
(``n``, ``Σy``, ``Σy²``), which one pass over the units gives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rollout.experiments.stats.frequentist import (
    NAN,
    centered_sum_squares,
    estimate_from,
    failed_estimate,
    relative_effect,
    z_inference,
)
from rollout.experiments.stats.summary import EffectEstimate, MeanSummary

SMALL_STRATA = "(small strata)"
# A stratum needs two units in each arm for a within-stratum variance.
MIN_UNITS_PER_ARM = 2


@dataclass(frozen=True, slots=True)
class Stratum:
    """One stratum's sufficient statistics in the two compared arms."""

    label: str
    control: MeanSummary
    treatment: MeanSummary

    @property
    def n(self) -> int:
        return self.control.n + self.treatment.n

    @property
    def small(self) -> bool:
        return min(self.control.n, self.treatment.n) < MIN_UNITS_PER_ARM


@dataclass(frozen=True, slots=True)
class StratumEstimate:
    """A stratum as the estimate used it: its units per arm, its weight
    ``w_s = N_s / N`` and its own effect ``ȳ_t,s − ȳ_c,s``."""

    label: str
    n_control: int
    n_treatment: int
    weight: float
    abs_effect: float


@dataclass(frozen=True, slots=True)
class StratifiedResult:
    """A post-stratified effect.

    ``estimate`` compares the post-stratified means ``Σ_s w_s ȳ_a,s`` (its
    ``abs_effect`` is ``τ̂_ps``), with a normal interval and p-value.
    ``unadjusted_std_error`` is the plain difference in means' standard error,
    ``√(s_t²/n_t + s_c²/n_c)`` (ddof 1, as the strata's), and
    ``variance_reduction = 1 − Var_ps / Var_unadjusted``, signed: positive
    when the strata narrowed the interval. ``strata`` are the strata the
    estimate used, after ``collapsed`` (the labels of strata too small to
    estimate) were pooled into one (see :func:`post_stratified_effect`).

    On error ``estimate.error`` is set and the numbers that could not be
    computed are NaN.
    """

    estimate: EffectEstimate
    unadjusted_std_error: float
    variance_reduction: float
    strata: tuple[StratumEstimate, ...] = ()
    collapsed: tuple[str, ...] = ()


def post_stratified_effect(strata: Sequence[Stratum], alpha: float = 0.05) -> StratifiedResult:
    """Treatment minus control, post-stratified (Miratrix, Sekhon & Yu 2013).

    With ``w_s = N_s/N`` the strata's shares of the two arms' units:

    * post-stratified means ``m_a = Σ_s w_s ȳ_a,s`` and effect ``m_t − m_c``;
    * variance ``Σ_s w_s² (s²_t,s/n_t,s + s²_c,s/n_c,s)``, ``s²`` the sample
      variance (ddof 1) of the stratum's units in the arm.

    The variance is the one *conditional on the stratum sizes* and their split
    between the arms, estimated by plug-in. Why that one: the sizes are known
    once the experiment has run and carry no information about the effect, so
    the precision of the estimate is the precision given the allocation that
    happened (an unlucky split into a small arm of a stratum shows up as a
    wider interval, which averaging over allocations that did not happen
    would hide). Miratrix et al.'s unconditional variance averages over the
    stratum splits a complete randomization could have made; it differs by
    terms of order ``1/N²`` and needs the strata's population shares, which an
    online experiment never knows better than ``N_s/N``. The estimand is the
    effect at the experiment's own stratum mix, ``Σ_s w_s τ_s``; when the effect
    differs between strata, a population whose mix differs by sampling noise
    would add ``(1/N)·Σ_s w_s (τ_s − τ)²``, not included here. Like every
    Neyman-style variance it omits the unidentifiable spread of unit-level
    effects, so it is conservative for the experiment's units.

    The test is a z test (normal interval and p-value): the variance is a sum
    over strata of many units each, and a stratum small enough for a t
    correction to matter is pooled first.

    **Small strata.** A stratum in which an arm has fewer than
    :data:`MIN_UNITS_PER_ARM` units has no within-stratum variance. Such strata
    are pooled into one stratum labelled :data:`SMALL_STRATA` (their labels
    listed in ``collapsed``), rather than failing the whole estimate because a
    rare attribute value met few units. If the pooled stratum is itself still
    too small, it joins the largest stratum (``"<label> + (small strata)"``).
    Post-stratification stays unbiased with coarser strata; it only loses the
    precision those strata would have given. Strata without any unit are
    left out. Only when no stratum at all can be formed (an arm with fewer
    than two units) is there no estimate.

    Errors: ``invalid_alpha``, ``invalid_input``, ``empty_arm``,
    ``too_few_units``, ``zero_variance`` (the variance reduction is still
    reported when the unadjusted variance is positive), ``non_finite``;
    ``zero_control_mean`` is partial (only the relative effect is missing).
    """
    if not 0.0 < alpha < 1.0:
        return _failed("invalid_alpha")
    for stratum in strata:
        for arm in (stratum.control, stratum.treatment):
            if arm.n < 0 or not (math.isfinite(arm.sum) and math.isfinite(arm.sum_squares)
                                 ) or arm.sum_squares < 0:
                return _failed("invalid_input")
    control = _total(s.control for s in strata)
    treatment = _total(s.treatment for s in strata)
    if control.n == 0 or treatment.n == 0:
        return _failed("empty_arm")
    if min(control.n, treatment.n) < MIN_UNITS_PER_ARM:
        return _failed("too_few_units")

    used, collapsed = _collapse_small([s for s in strata if s.n > 0])
    total = control.n + treatment.n
    mean_c = mean_t = var_c = var_t = 0.0
    rows = []
    for stratum in used:
        weight = stratum.n / total
        y_c, y_t = stratum.control.mean, stratum.treatment.mean
        mean_c += weight * y_c
        mean_t += weight * y_t
        var_c += weight * weight * _variance_of_mean(stratum.control)
        var_t += weight * weight * _variance_of_mean(stratum.treatment)
        rows.append(StratumEstimate(stratum.label, stratum.control.n, stratum.treatment.n,
                                    weight, y_t - y_c))
    unadjusted = _variance_of_mean(control) + _variance_of_mean(treatment)
    shown = tuple(rows)
    if not unadjusted > 0.0:
        return StratifiedResult(failed_estimate("zero_variance"), 0.0, NAN, shown, collapsed)
    variance = var_c + var_t
    reduction = 1.0 - variance / unadjusted
    unadjusted_se = math.sqrt(unadjusted)
    inference = z_inference(mean_t - mean_c, variance, alpha)
    if inference is None:  # every stratum constant within each arm: nothing left to test
        return StratifiedResult(failed_estimate("zero_variance"), unadjusted_se, reduction,
                                shown, collapsed)
    relative = relative_effect(mean_c, mean_t, var_c, var_t, alpha)
    return StratifiedResult(estimate_from(mean_c, mean_t, inference, relative),
                            unadjusted_se, reduction, shown, collapsed)


def _collapse_small(strata: Sequence[Stratum]) -> tuple[list[Stratum], tuple[str, ...]]:
    """The strata to estimate from, with every small stratum pooled into one
    (joined to the largest stratum if still small); the labels pooled.
    The arms together have at least two units each, so something estimable
    always remains."""
    small = [s for s in strata if s.small]
    kept = [s for s in strata if not s.small]
    if not small:
        return kept, ()
    pooled = Stratum(SMALL_STRATA, _total(s.control for s in small),
                     _total(s.treatment for s in small))
    collapsed = tuple(s.label for s in small)
    if not pooled.small:
        return [*kept, pooled], collapsed
    # With no large stratum the pool is every unit, which is not small.
    largest = max(range(len(kept)), key=lambda i: kept[i].n)
    joined = kept[largest]
    kept[largest] = Stratum(f"{joined.label} + {SMALL_STRATA}",
                            _total((joined.control, pooled.control)),
                            _total((joined.treatment, pooled.treatment)))
    return kept, collapsed


def _total(arms: Iterable[MeanSummary]) -> MeanSummary:
    parts = list(arms)
    return MeanSummary(sum(a.n for a in parts), math.fsum(a.sum for a in parts),
                       math.fsum(a.sum_squares for a in parts))


def _variance_of_mean(arm: MeanSummary) -> float:
    """``s²/n`` with ``s²`` the sample variance (ddof 1); 0 for a constant arm."""
    return centered_sum_squares(arm.n, arm.sum, arm.sum_squares) / (arm.n - 1) / arm.n


def _failed(error: str) -> StratifiedResult:
    return StratifiedResult(failed_estimate(error), NAN, NAN)
