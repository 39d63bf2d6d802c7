"""Power analysis: sample size, minimum detectable effect and duration.

All sizes are for a two-sided test of two independent arms with a normal
reference distribution, solved exactly for the two-sided power

    power = Φ(δ√n_eff − z) + Φ(−δ√n_eff − z),   z = Φ⁻¹(1 − α/2),
    n_eff = 1/(1/n_1 + 1/n_2) = n_1·r/(1 + r),   n_2 = r·n_1,

where δ is the standardized effect size. This is the power equation of
``statsmodels.stats.power.NormalIndPower`` (``ddof=0``, two-sided), so
``*_exact`` sample sizes and the MDEs are the values its ``solve_power``
searches for. ``solve_power`` stops its root search at an absolute tolerance
of about 1e-5, so it agrees with these functions to that tolerance; plugging
the values here back into ``NormalIndPower().power`` returns the requested
power to machine precision. The second tail term (a rejection in the wrong
direction) is kept so the equation, not just its textbook approximation
``n_eff = ((z + z_β)/δ)²``, is solved.

Standardized effect sizes:

* means: Cohen's d, ``δ = mde/σ``;
* proportions: Cohen's h, ``δ = 2·asin√p₂ − 2·asin√p₁`` with
  ``p₂ = p₁ + mde`` (``statsmodels.stats.proportion.proportion_effectsize(p₂,
  p₁)``). The arcsine transform stabilizes the binomial variance, so one
  equation covers both arms' different variances and the MDE has a closed
  form given δ.

Invalid input raises ``ValueError`` with a message naming the parameter; the
``rampart plan`` CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

from scipy import optimize, special

MetricType = Literal["proportion", "mean"]

# Sizes are rounded up to whole units. A solution such as 392.0000000000001
# is 392 computed with rounding error, not a reason to ask for a 393rd unit.
_CEIL_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class PowerPlan:
    """Inputs and results of a power calculation, ready for JSON.

    ``mde`` is the MDE as given (relative or absolute according to
    ``relative``); ``mde_absolute``/``mde_relative`` are both scales
    (``mde_relative`` is None for a mean metric without a non-zero baseline).
    ``effect_size`` is the standardized effect (Cohen's h or d).
    ``n_per_arm_exact`` is the unrounded solution, ``n_per_arm`` its ceiling,
    ``total_units`` covers every arm (``treatment_arms`` treatments and one
    control), and ``days`` is None without ``daily_units``.

    ``alpha`` is the family-wise level; ``comparison_alpha`` the level each
    treatment-versus-control comparison is sized at (``alpha/treatment_arms``)
    and ``alpha_rule`` says why, in words.
    """

    metric_type: MetricType
    baseline: float | None
    mde: float
    relative: bool
    alpha: float
    power: float
    std_dev: float | None
    daily_units: float | None
    allocation: float
    mde_absolute: float
    mde_relative: float | None
    effect_size: float
    n_per_arm_exact: float
    n_per_arm: int
    total_units: int
    days: int | None
    treatment_arms: int
    comparison_alpha: float
    alpha_rule: str

    def to_dict(self) -> dict[str, Any]:
        """The plan as a flat dict of JSON-serializable values."""
        return dataclasses.asdict(self)


def sample_size_proportion_exact(
    baseline: float,
    mde: float,
    *,
    relative: bool,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Unrounded units in the first arm to detect ``baseline → baseline + mde``.

    ``mde`` is absolute (``p₂ − p₁``) or, with ``relative=True``, a fraction
    of ``baseline`` (``p₂ = p₁·(1 + mde)``). The second arm has ``ratio``
    times as many units. Equals ``NormalIndPower().solve_power(
    effect_size=proportion_effectsize(p₂, p₁), nobs1=None, alpha=alpha,
    power=power, ratio=ratio, alternative="two-sided")``.
    """
    _check_level(alpha, power)
    _check_positive("ratio", ratio)
    p1, p2 = _proportions(baseline, mde, relative)
    return _nobs1(_cohens_h(p1, p2), alpha, power, ratio)


def sample_size_proportion(
    baseline: float,
    mde: float,
    *,
    relative: bool,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> int:
    """:func:`sample_size_proportion_exact` rounded up to whole units."""
    return _ceil(sample_size_proportion_exact(
        baseline, mde, relative=relative, alpha=alpha, power=power, ratio=ratio))


def sample_size_mean_exact(
    std_dev: float,
    mde: float,
    *,
    baseline_mean: float | None = None,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Unrounded units in the first arm to detect a shift ``mde`` of a mean.

    ``std_dev`` is the per-unit standard deviation (assumed equal in both
    arms). With ``relative=True`` the absolute shift is
    ``mde·|baseline_mean|``. Equals ``NormalIndPower().solve_power(
    effect_size=mde_abs/std_dev, nobs1=None, alpha=alpha, power=power,
    ratio=ratio, alternative="two-sided")``.
    """
    _check_level(alpha, power)
    _check_positive("ratio", ratio)
    _check_positive("std_dev", std_dev)
    absolute = _absolute_mean_mde(mde, baseline_mean, relative)
    return _nobs1(absolute / std_dev, alpha, power, ratio)


def sample_size_mean(
    std_dev: float,
    mde: float,
    *,
    baseline_mean: float | None = None,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> int:
    """:func:`sample_size_mean_exact` rounded up to whole units."""
    return _ceil(sample_size_mean_exact(
        std_dev, mde, baseline_mean=baseline_mean, relative=relative,
        alpha=alpha, power=power, ratio=ratio))


def mde_proportion(
    n_per_arm: float,
    baseline: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    relative: bool = False,
    ratio: float = 1.0,
) -> float:
    """Smallest increase over ``baseline`` detected with ``power`` at ``n_per_arm``.

    Solves the power equation for Cohen's h, ``h = NormalIndPower().solve_power(
    effect_size=None, nobs1=n_per_arm, alpha=alpha, power=power, ratio=ratio)``,
    then inverts ``h = 2·asin√p₂ − 2·asin√p₁`` for ``p₂``. Returns
    ``p₂ − p₁``, or ``(p₂ − p₁)/p₁`` with ``relative=True``. Raises
    ``ValueError`` when even ``p₂ → 1`` would not be detectable.
    """
    _check_level(alpha, power)
    _check_positive("ratio", ratio)
    _check_positive("n_per_arm", n_per_arm)
    _check_baseline(baseline)
    h = _effect_size(n_per_arm, alpha, power, ratio)
    angle = math.asin(math.sqrt(baseline)) + h / 2.0
    if angle >= math.pi / 2.0:
        raise ValueError(
            f"n_per_arm={n_per_arm} is too small: no increase over baseline={baseline} "
            f"is detectable with power {power}"
        )
    delta = math.sin(angle) ** 2 - baseline
    return delta / baseline if relative else delta


def mde_mean(
    n_per_arm: float,
    std_dev: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Smallest absolute shift of a mean detected with ``power`` at ``n_per_arm``.

    Returns ``std_dev·d`` where ``d = NormalIndPower().solve_power(
    effect_size=None, nobs1=n_per_arm, alpha=alpha, power=power, ratio=ratio)``.
    """
    _check_level(alpha, power)
    _check_positive("ratio", ratio)
    _check_positive("n_per_arm", n_per_arm)
    _check_positive("std_dev", std_dev)
    return std_dev * _effect_size(n_per_arm, alpha, power, ratio)


def duration_days(
    n_per_arm: int, daily_units: float, allocation: float, arms: int = 2
) -> int:
    """Whole days until every arm has ``n_per_arm`` units.

    ``allocation`` is the share of the ``daily_units`` eligible units that
    enter the experiment, split evenly across ``arms``; each arm therefore
    gains ``daily_units·allocation/arms`` units a day. Assumes distinct units
    each day; with returning users the unique count grows more slowly and
    the real duration is longer.
    """
    _check_positive("n_per_arm", n_per_arm)
    _check_positive("daily_units", daily_units)
    _check_allocation(allocation)
    if arms < 1:
        raise ValueError(f"arms must be at least 1, got {arms}")
    return _ceil(n_per_arm * arms / daily_units / allocation)


def plan(
    metric_type: MetricType,
    baseline: float | None,
    mde: float,
    *,
    relative: bool,
    alpha: float = 0.05,
    power: float = 0.8,
    std_dev: float | None = None,
    daily_units: float | None = None,
    allocation: float = 1.0,
    treatment_arms: int = 1,
) -> PowerPlan:
    """An equal-split power plan for one metric: ``treatment_arms`` treatments,
    each compared with one control.

    ``"proportion"``: ``baseline`` is the control rate in (0, 1) and sizes
    come from :func:`sample_size_proportion_exact`. ``"mean"``: ``std_dev``
    is required, ``baseline`` is the control mean (required only when
    ``relative`` is true) and sizes come from :func:`sample_size_mean_exact`.

    With several treatment arms the analysis corrects the primary metric
    across arms, so each comparison is sized at :func:`comparison_alpha`
    (``alpha/treatment_arms``); every arm, the control included, gets
    ``n_per_arm`` units. ``days`` uses :func:`duration_days` over all
    ``treatment_arms + 1`` arms when ``daily_units`` is given.

    Returns a :class:`PowerPlan`; raises ``ValueError`` on invalid input.
    """
    _check_level(alpha, power)
    _check_allocation(allocation)
    per_comparison = comparison_alpha(alpha, treatment_arms)
    if metric_type == "proportion":
        if baseline is None:
            raise ValueError("baseline is required for a proportion metric")
        p1, p2 = _proportions(baseline, mde, relative)
        effect = _cohens_h(p1, p2)
        absolute = p2 - p1
        rel: float | None = absolute / p1
    elif metric_type == "mean":
        if std_dev is None:
            raise ValueError("std_dev is required for a mean metric")
        _check_positive("std_dev", std_dev)
        absolute = _absolute_mean_mde(mde, baseline, relative)
        effect = absolute / std_dev
        rel = absolute / abs(baseline) if baseline is not None and baseline != 0 else None
    else:
        raise ValueError(f"metric_type must be 'proportion' or 'mean', got {metric_type!r}")

    exact = _nobs1(effect, per_comparison, power, 1.0)
    n = _ceil(exact)
    arms = treatment_arms + 1
    days = (duration_days(n, daily_units, allocation, arms=arms)
            if daily_units is not None else None)
    return PowerPlan(
        metric_type=metric_type,
        baseline=baseline,
        mde=mde,
        relative=relative,
        alpha=alpha,
        power=power,
        std_dev=std_dev,
        daily_units=daily_units,
        allocation=allocation,
        mde_absolute=absolute,
        mde_relative=rel,
        effect_size=effect,
        n_per_arm_exact=exact,
        n_per_arm=n,
        total_units=arms * n,
        days=days,
        treatment_arms=treatment_arms,
        comparison_alpha=per_comparison,
        alpha_rule=alpha_rule(alpha, treatment_arms),
    )


def comparison_alpha(alpha: float, treatment_arms: int) -> float:
    """The level each treatment-versus-control comparison is planned at.

    ``alpha/treatment_arms``: Bonferroni, which is also the first (strictest)
    step of Holm. The analysis corrects the primary metric across treatment
    arms by the pre-registered correction; Holm's later steps and
    Benjamini-Hochberg are never stricter than this, so a sample size that
    gives the power at ``alpha/treatment_arms`` gives at least that power
    whichever of them the plan names.
    """
    if isinstance(treatment_arms, bool) or not isinstance(treatment_arms, int) or (
            treatment_arms < 1):
        raise ValueError(f"arms (treatment arms) must be a whole number >= 1, "
                         f"got {treatment_arms!r}")
    return alpha / treatment_arms


def alpha_rule(alpha: float, treatment_arms: int) -> str:
    """Why the comparison level is what it is, for ``rampart plan``'s output."""
    if treatment_arms == 1:
        return (f"{alpha:g} per comparison: one treatment arm against the control, so the "
                "primary metric is tested alone at alpha")
    return (f"{alpha / treatment_arms:.4g} per comparison = alpha {alpha:g} / "
            f"{treatment_arms} treatment arms (Bonferroni, the first step of Holm): the "
            "primary metric is corrected across treatment arms, and a plan sized for the "
            "strictest step holds for every step")


# --- the power equation -----------------------------------------------------


def _noncentrality(alpha: float, power: float) -> float:
    """``s = δ·√n_eff`` solving ``Φ(s − z) + Φ(−s − z) = power``.

    The left side rises from ``α`` at ``s = 0`` and exceeds ``power`` at the
    one-tail solution ``z + z_β``, so the root is bracketed by the two.
    """
    z = float(special.ndtri(1.0 - alpha / 2.0))
    upper = z + float(special.ndtri(power))

    def excess(s: float) -> float:
        return float(special.ndtr(s - z) + special.ndtr(-s - z)) - power

    root = optimize.brentq(excess, 0.0, upper, xtol=1e-15, rtol=4 * sys.float_info.epsilon)
    return float(root)


def _nobs1(effect_size: float, alpha: float, power: float, ratio: float) -> float:
    """First-arm size with ``n_2 = ratio·n_1`` reaching ``power`` at ``effect_size``."""
    if not effect_size > 0.0:
        # A positive mde can still vanish next to a huge std_dev, or next to
        # the baseline in floating point.
        raise ValueError("mde is too small relative to the metric's scale to plan for")
    root = _noncentrality(alpha, power) / effect_size
    nobs1 = root * root * (1.0 + 1.0 / ratio)
    if not math.isfinite(nobs1):
        raise ValueError(f"effect size {effect_size:g} is too small to plan for")
    return nobs1


def _effect_size(n_per_arm: float, alpha: float, power: float, ratio: float) -> float:
    """Standardized effect detected with ``power`` at ``n_1 = n_per_arm``."""
    n_eff = n_per_arm * ratio / (1.0 + ratio)
    if not n_eff > 0.0:
        raise ValueError("n_per_arm and ratio leave no effective sample size")
    return _noncentrality(alpha, power) / math.sqrt(n_eff)


def _cohens_h(p1: float, p2: float) -> float:
    return 2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1))


# --- validation -------------------------------------------------------------


def _ceil(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError("the inputs give an infinite sample size or duration")
    return math.ceil(value - _CEIL_SLACK * max(1.0, abs(value)))


def _check_level(alpha: float, power: float) -> None:
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not (math.isfinite(power) and 0.0 < power < 1.0):
        raise ValueError(f"power must be in (0, 1), got {power}")
    if power <= alpha:
        # A two-sided test rejects with probability alpha even at no effect.
        raise ValueError(f"power must exceed alpha ({alpha}), got {power}")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")


def _check_allocation(allocation: float) -> None:
    if not (math.isfinite(allocation) and 0.0 < allocation <= 1.0):
        raise ValueError(f"allocation must be in (0, 1], got {allocation}")


def _check_baseline(baseline: float) -> None:
    if not (math.isfinite(baseline) and 0.0 < baseline < 1.0):
        raise ValueError(f"baseline must be a proportion in (0, 1), got {baseline}")


def _proportions(baseline: float, mde: float, relative: bool) -> tuple[float, float]:
    """``(p₁, p₂)`` for a proportion MDE, validated."""
    _check_baseline(baseline)
    _check_positive("mde", mde)
    p2 = baseline * (1.0 + mde) if relative else baseline + mde
    if not p2 < 1.0:
        raise ValueError(
            f"baseline {baseline} plus the effect ({p2 - baseline:g}) reaches or exceeds 1"
        )
    return baseline, p2


def _absolute_mean_mde(mde: float, baseline_mean: float | None, relative: bool) -> float:
    _check_positive("mde", mde)
    if not relative:
        return mde
    if baseline_mean is None or not math.isfinite(baseline_mean) or baseline_mean == 0:
        raise ValueError("a relative mde needs a finite, non-zero baseline mean")
    return mde * abs(baseline_mean)


# --- cluster-randomized experiments -----------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """A power plan scaled to a cluster-randomized experiment.

    ``design_effect = 1 + (cluster_size − 1)·icc`` (clusters of equal mean
    size; unequal sizes make it larger, see
    :mod:`rollout.experiments.stats.cluster`); ``units_per_arm`` is the
    unit-level plan's exact size times it, rounded up, and
    ``clusters_per_arm`` the clusters that hold them, rounded up and then
    raised, if needed, until the analysis's t test with ``2·clusters − 1``
    degrees of freedom (:func:`~rollout.experiments.stats.cluster.cluster_robust_effect`)
    has the planned power (the normal approximation would promise it with one
    or two clusters fewer when clusters are few). ``total_*`` cover every arm;
    ``days`` is from ``units_per_arm`` as for a unit-level plan.
    """

    cluster_size: float
    icc: float
    design_effect: float
    units_per_arm: int
    clusters_per_arm: int
    total_units: int
    total_clusters: int
    days: int | None

    def to_dict(self) -> dict[str, Any]:
        """The plan as a flat dict of JSON-serializable values."""
        return dataclasses.asdict(self)


def cluster_plan(base: PowerPlan, cluster_size: float, icc: float) -> ClusterPlan:
    """``base`` (a unit-level :func:`plan`) for clusters of ``cluster_size``
    units on average with intra-cluster correlation ``icc``; raises
    ``ValueError`` on a size below 1 or an ICC outside [0, 1]."""
    if not (math.isfinite(cluster_size) and cluster_size >= 1.0):
        raise ValueError(f"cluster_size must be a mean number of units per cluster >= 1, "
                         f"got {cluster_size}")
    if not (math.isfinite(icc) and 0.0 <= icc <= 1.0):
        raise ValueError(f"icc must be an intra-cluster correlation in [0, 1], got {icc}")
    design = 1.0 + (cluster_size - 1.0) * icc
    units_exact = base.n_per_arm_exact * design
    units = _ceil(units_exact)
    clusters = max(2, _ceil(units_exact / cluster_size))
    z = float(special.ndtri(1.0 - base.comparison_alpha / 2.0) + special.ndtri(base.power))
    # The t quantiles shrink as clusters are added, so the size settles.
    for _ in range(100):
        df = 2 * clusters - 1
        t = float(special.stdtrit(df, 1.0 - base.comparison_alpha / 2.0)
                  + special.stdtrit(df, base.power))
        needed = max(2, _ceil(units_exact / cluster_size * (t / z) ** 2))
        if needed <= clusters:
            break
        clusters = needed
    arms = base.treatment_arms + 1
    days = (duration_days(units, base.daily_units, base.allocation, arms=arms)
            if base.daily_units is not None else None)
    return ClusterPlan(cluster_size=cluster_size, icc=icc, design_effect=design,
                       units_per_arm=units, clusters_per_arm=clusters,
                       total_units=arms * units, total_clusters=arms * clusters, days=days)
