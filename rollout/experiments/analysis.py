"""Experiment analysis, pure: exposures and outcomes as arrays in, a report out.

The shape follows Kohavi, Tang and Xu's trustworthy-experiment checklist:

1. **Exposure** is a unit's first decision in the experiment; its arm is the
   arm of that first decision (intention to treat, even if a ramp later moved
   the unit). Every exposed unit counts, with zeros where it has no outcome.
2. **Sample ratio mismatch** comes first, because a mismatch invalidates
   everything after it.
3. Per metric and treatment arm: a z-test (binary) or Welch's t-test (mean),
   a delta-method ratio test (ratio of sums), CUPED on the metric's own
   pre-period values, a Bayesian posterior, and the pre-registered sequential
   method for the primary metric. p-values are corrected across metrics and arms.
4. Segments per pre-registered attribute, corrected across segments, with a
   Simpson's-paradox warning; the primary metric post-stratified by the
   plan's strata, reported next to CUPED.
5. A ship / hold / rollback decision that lists every reason, computed from
   the typed results of :mod:`rollout.experiments.results`.

An experiment whose arms changed the versions they serve is analysed one
period at a time (:mod:`rollout.experiments.periods`): the exposures given
here are one period's, and a period in which two arms serve the same versions
holds the decision.

Everything here is vectorized numpy over per-unit arrays (integer unit codes,
not strings), so ten million decisions take seconds; reading Parquet into
those arrays lives in :mod:`rollout.experiments.data`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

# the inputs, re-exported: they are this module's vocabulary
from rollout.experiments.exposures import ARM_BITS as ARM_BITS
from rollout.experiments.exposures import MICROS as MICROS
from rollout.experiments.exposures import MISSING_SEGMENT as MISSING_SEGMENT
from rollout.experiments.exposures import Exposures as Exposures
from rollout.experiments.exposures import OutcomeRows as OutcomeRows
from rollout.experiments.exposures import first_exposures as first_exposures
from rollout.experiments.exposures import split_weights as split_weights
from rollout.experiments.factorial import factorial_summary
from rollout.experiments.kernels import NUMPY_KERNELS, AnalysisKernels
from rollout.experiments.results import (
    BayesSummary,
    ClusteredSummary,
    CupedSummary,
    Decision,
    Effect,
    ExperimentAnalysis,
    GroupSequentialLook,
    GroupSequentialSummary,
    GuardrailResult,
    LookArm,
    LookComparison,
    MetricResult,
    MsprtSummary,
    NoSequential,
    Outcome,
    Period,
    PeriodWarning,
    RecordedLook,
    SegmentCell,
    SegmentResult,
    SequentialLook,
    SequentialSummary,
    SrmCheck,
    SrmSplit,
    StratifiedSummary,
    StratumCell,
    TimelineArm,
    TimelinePoint,
)
from rollout.experiments.stats.bayes import (
    BayesResult,
    beta_binomial,
    normal_estimates,
    normal_means,
)
from rollout.experiments.stats.cluster import cluster_robust_effect
from rollout.experiments.stats.cuped import CupedResult, cuped_effect
from rollout.experiments.stats.factorial import Factor
from rollout.experiments.stats.frequentist import ratio_effect, two_proportion_ztest, welch_ttest
from rollout.experiments.stats.multiple import AdjustMethod, adjust_p_values
from rollout.experiments.stats.sequential import (
    group_sequential_test,
    mixing_variance_from_mde,
    msprt,
)
from rollout.experiments.stats.srm import combined_srm_test
from rollout.experiments.stats.stratified import Stratum, post_stratified_effect
from rollout.experiments.stats.summary import EffectEstimate, PairSummary
from rollout.experiments.stats.switchback import SwitchbackCells
from rollout.experiments.switchback import (
    SwitchbackMetricCells,
    cells_in_period,
    switchback_guardrails,
    switchback_metrics,
)
from serving.kernel.analysis_plan import AnalysisPlan, GuardrailSpec, MetricSpec
from telemetry.verdict import Verdict

# --------------------------------------------------------------------------- per-unit values


@dataclass(frozen=True)
class UnitValues:
    """Per exposed unit: the metric in its window (``y``) and in its pre-period
    (``x``, the CUPED covariate; for a ratio metric, the denominator)."""

    y: NDArray[np.float64]
    x: NDArray[np.float64]


@dataclass(frozen=True)
class OutcomePeriods:
    """Which outcome rows count, as known at one time: ``in_window`` (in-experiment)
    and ``in_pre`` (pre-period). The same for every metric of a plan, so an analysis
    computes it once per time instead of once per metric."""

    in_window: NDArray[np.bool_]
    in_pre: NDArray[np.bool_]


def outcome_periods(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                    as_of_us: int) -> OutcomePeriods:
    """In-experiment events fall in ``[exposure, exposure + outcome_window]``;
    pre-period events in ``[exposure - pre_period, exposure)``, and before the
    unit entered the experiment when ``entered_at`` says so; both known by
    ``as_of_us``: received by then, and not stamped after it."""
    window_us = int(plan.outcome_window_s * MICROS)
    pre_us = int(plan.pre_period_s * MICROS)
    offset = outcomes.at - exposures.exposed_at[outcomes.unit]
    known = outcomes.at <= as_of_us
    if outcomes.received is not None:
        known &= outcomes.received <= as_of_us
    in_window = known & (offset >= 0) & (offset <= window_us)
    in_pre = known & (offset < 0) & (offset >= -pre_us)
    if exposures.entered_at is not None:
        in_pre &= outcomes.at < exposures.entered_at[outcomes.unit]
    return OutcomePeriods(in_window, in_pre)


def unit_values(
    spec: MetricSpec,
    plan: AnalysisPlan,
    exposures: Exposures,
    outcomes: OutcomeRows,
    as_of_us: int,
    periods: OutcomePeriods | None = None,
    kernels: AnalysisKernels = NUMPY_KERNELS,
) -> UnitValues:
    """The metric per unit as known at ``as_of_us``.

    In-experiment events fall in ``[exposure, exposure + outcome_window]``;
    pre-period events in ``[exposure - pre_period, exposure)``. ``periods``, when
    given, must be :func:`outcome_periods` of the same plan, data and time. A
    binary metric is 1 for a unit with any event of positive value (a later
    negative one, a refund, does not undo a conversion).
    """
    if periods is None:
        periods = outcome_periods(plan, exposures, outcomes, as_of_us)
    in_window, in_pre = periods.in_window, periods.in_pre

    def per_unit(name: str, rows: NDArray[np.bool_]) -> NDArray[np.float64]:
        if name not in outcomes.metrics:
            return np.zeros(exposures.n_units)
        return kernels.unit_totals(outcomes.unit, outcomes.metric, outcomes.value, rows,
                                   outcomes.metrics.index(name), spec.type == "binary",
                                   exposures.n_units)

    if spec.type == "ratio":
        assert spec.denominator is not None
        return UnitValues(per_unit(spec.name, in_window), per_unit(spec.denominator, in_window))
    return UnitValues(per_unit(spec.name, in_window), per_unit(spec.name, in_pre))


def arm_summaries(
    arm: NDArray[np.int64], values: UnitValues, n_arms: int,
    units: NDArray[np.bool_] | None = None, kernels: AnalysisKernels = NUMPY_KERNELS,
) -> list[PairSummary]:
    """One :class:`PairSummary` per arm over the selected units (all by default)."""
    return kernels.arm_moments(arm, values.y, values.x, n_arms, units)


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class MetricEstimate:
    """One metric's estimate: ``estimate`` is CUPED-adjusted when ``cuped`` is set,
    and ``bayes`` is then built on that adjusted estimate too."""

    estimate: EffectEstimate
    unadjusted: EffectEstimate
    cuped_variance_reduction: float | None
    bayes: BayesResult | None
    cuped: CupedResult | None = None
    clustered: ClusteredSummary | None = None  # set when the estimate is cluster-robust

    def cuped_summary(self) -> CupedSummary | None:
        """Which adjustment ran, its per-arm slopes and its signed variance reduction."""
        if self.cuped is None:
            return None
        return CupedSummary(method=self.cuped.method, slope_control=self.cuped.slope_control,
                            slope_treatment=self.cuped.slope_treatment,
                            variance_reduction=self.cuped.variance_reduction)

    def bayes_summary(self) -> BayesSummary | None:
        """The posterior, labelled with the basis it shares with the p-value."""
        if self.bayes is None:
            return None
        return BayesSummary.of(self.bayes,
                               "cluster_robust" if self.clustered is not None else
                               "unadjusted" if self.cuped is None else "cuped_adjusted")


def estimate(spec: MetricSpec, plan: AnalysisPlan, control: PairSummary,
             treatment: PairSummary) -> MetricEstimate:
    """Treatment against control for one metric, CUPED-adjusted when the plan asks
    for it and the pre-period has data.

    When CUPED applies, P(better) and the expected losses come from a normal
    posterior (flat prior) on the adjusted effect and its standard error, so that
    they never contradict the adjusted p-value beside them; otherwise from the
    plain Beta-Binomial or normal-means model."""
    if spec.type == "ratio":
        effect = ratio_effect(control, treatment, plan.alpha)
        return MetricEstimate(effect, effect, None, None)
    binary = spec.type == "binary"
    plain = (two_proportion_ztest if binary else welch_ttest)(
        control.y(), treatment.y(), plan.alpha)
    has_pre = control.sum_xx + treatment.sum_xx > 0
    if plan.cuped and plan.pre_period_s > 0 and has_pre:
        adjusted = cuped_effect(control, treatment, plan.alpha, binary=binary)
        if adjusted.estimate.error in (None, "zero_control_mean"):
            est = adjusted.estimate
            bayes = normal_estimates(est.mean_control, est.mean_treatment,
                                     adjusted.var_mean_control, adjusted.var_mean_treatment,
                                     adjusted.covariance)
            return MetricEstimate(est, plain, adjusted.variance_reduction, bayes, adjusted)
    bayes = (beta_binomial(control.y(), treatment.y()) if binary
             else normal_means(control.y(), treatment.y()))
    return MetricEstimate(plain, plain, None, bayes)


# --------------------------------------------------------------------------- timeline


def look_times(exposures: Exposures, targets_per_arm: Sequence[int], as_of_us: int
               ) -> list[int | None]:
    """When every arm had reached each target unit count (None: not yet by ``as_of``)."""
    times: list[int | None] = []
    per_arm = [np.sort(exposures.exposed_at[exposures.arm == a])
               for a in range(len(exposures.arms)) if exposures.weights[a] > 0]
    for target in targets_per_arm:
        if any(len(times_) < target for times_ in per_arm):
            times.append(None)
            continue
        reached = max(int(times_[target - 1]) for times_ in per_arm)
        times.append(reached if reached <= as_of_us else None)
    return times


def estimate_at(spec: MetricSpec, plan: AnalysisPlan, exposures: Exposures,
                outcomes: OutcomeRows, at_us: int, treatment_arm: int,
                kernels: AnalysisKernels = NUMPY_KERNELS) -> MetricEstimate:
    """The estimate as it stood at ``at_us``: units exposed by then, outcomes known by then."""
    values = unit_values(spec, plan, exposures, outcomes, at_us, kernels=kernels)
    if exposures.clusters is not None:  # looks and timelines as the final test
        return clustered_estimate(spec, plan, exposures, values, treatment_arm,
                                  exposures.exposed_at <= at_us)
    summaries = arm_summaries(exposures.arm, values, len(exposures.arms),
                              exposures.exposed_at <= at_us, kernels)
    return estimate(spec, plan, summaries[0], summaries[treatment_arm])


def clustered_estimate(spec: MetricSpec, plan: AnalysisPlan, exposures: Exposures,
                       values: UnitValues, treatment_arm: int,
                       units: NDArray[np.bool_] | None = None) -> MetricEstimate:
    """Treatment against control in a cluster-randomized experiment: the
    cluster-robust test (:func:`~rollout.experiments.stats.cluster.cluster_robust_effect`)
    over the two arms' units (``units`` of them, all by default), with the
    unit-level one beside it in ``clustered``.

    CUPED is not applied: its per-unit regression would need cluster-robust
    slopes of its own, and the clusters, not the units, limit the precision.
    P(better) and the expected losses come from a normal posterior on the
    cluster-robust effect, so that they never contradict its p-value."""
    assert exposures.clusters is not None
    pair = (exposures.arm == 0) | (exposures.arm == treatment_arm)
    if units is not None:
        pair &= units
    result = cluster_robust_effect(
        values.y[pair], exposures.arm[pair] == treatment_arm, exposures.clusters[pair],
        plan.alpha, values.x[pair] if spec.type == "ratio" else None)
    effect = result.estimate
    summary = ClusteredSummary(
        attribute=exposures.cluster_attribute or "cluster",
        clusters_control=result.clusters_control,
        clusters_treatment=result.clusters_treatment,
        mean_cluster_size=result.mean_cluster_size, cluster_size_cv=result.cluster_size_cv,
        icc=result.icc, design_effect=result.design_effect,
        variance_ratio=result.variance_ratio, df=result.df,
        naive_p_value=result.naive.p_value, naive_std_error=result.naive.std_error,
        error=effect.error if effect.error != "zero_control_mean" else None)
    bayes = None
    if effect.error in (None, "zero_control_mean"):
        bayes = normal_estimates(effect.mean_control, effect.mean_treatment,
                                 result.var_mean_control, result.var_mean_treatment,
                                 result.covariance)
    return MetricEstimate(effect, effect, None, bayes, clustered=summary)


def clustered_estimates(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                        as_of_us: int, periods: OutcomePeriods | None = None,
                        kernels: AnalysisKernels = NUMPY_KERNELS
                        ) -> Callable[[str, MetricSpec, int], MetricEstimate] | None:
    """:func:`metric_results`' ``estimate_for`` of a cluster-randomized
    experiment (None for any other): each metric's :func:`clustered_estimate`,
    its per-unit values computed once for all treatment arms."""
    if exposures.clusters is None:
        return None
    values: dict[str, UnitValues] = {}

    def estimate_for(key: str, spec: MetricSpec, arm: int) -> MetricEstimate:
        if key not in values:
            values[key] = unit_values(spec, plan, exposures, outcomes, as_of_us, periods,
                                      kernels)
        return clustered_estimate(spec, plan, exposures, values[key], arm)

    return estimate_for


# --------------------------------------------------------------------------- sequential


def sequential_summary(spec: MetricSpec, plan: AnalysisPlan, exposures: Exposures,
                       outcomes: OutcomeRows, as_of_us: int, treatment_arm: int,
                       final: MetricEstimate, *, treatment_arms: int = 1,
                       periods: OutcomePeriods | None = None,
                       kernels: AnalysisKernels = NUMPY_KERNELS) -> SequentialSummary:
    """The primary metric's pre-registered sequential analysis of one treatment arm.

    Looks are reconstructed from the logs as they stood at each look's time:
    units exposed by then and outcomes known by then. With ``treatment_arms``
    arms compared with the control, the boundaries and the confidence sequence
    are at ``alpha / treatment_arms`` (Bonferroni), so that the arms together
    keep the family-wise error at alpha; the mSPRT's rejection is then decided
    across arms by :func:`msprt_across_arms`. ``periods``, when given, is
    :func:`outcome_periods` at ``as_of_us``.
    """
    looked_at = countable_rows(spec, plan, exposures, outcomes, as_of_us, periods)
    return sequential_of(
        plan, exposures, as_of_us, final, treatment_arms,
        lambda t: estimate_at(spec, plan, exposures, looked_at, t, treatment_arm, kernels))


def countable_rows(spec: MetricSpec, plan: AnalysisPlan, exposures: Exposures,
                   outcomes: OutcomeRows, as_of_us: int,
                   periods: OutcomePeriods | None = None) -> OutcomeRows:
    """The outcome rows that can count for ``spec`` at some time up to ``as_of_us``.

    A row known at an earlier look is known at ``as_of_us``, and whether it is
    in a unit's window or pre-period does not depend on the look, so every look
    before ``as_of_us`` gives the same values from these rows as from all: each
    look then reads the metric's rows alone."""
    names = [outcomes.metrics.index(n) for n in (spec.name, spec.denominator)
             if n is not None and n in outcomes.metrics]
    windows = periods or outcome_periods(plan, exposures, outcomes, as_of_us)
    keep = (windows.in_window | windows.in_pre) & np.isin(outcomes.metric, names)
    return OutcomeRows(outcomes.metrics, outcomes.unit[keep], outcomes.metric[keep],
                       outcomes.value[keep], outcomes.at[keep],
                       None if outcomes.received is None else outcomes.received[keep])


def sequential_of(plan: AnalysisPlan, exposures: Exposures, as_of_us: int,
                  final: MetricEstimate, treatment_arms: int,
                  estimate_then: Callable[[int], MetricEstimate]) -> SequentialSummary:
    """The sequential method over the looks before ``as_of_us``: their times from
    ``exposures`` (all units, or :func:`exposure_sketch` of the earliest ones),
    each look's estimate from ``estimate_then(time)``, ``final`` at ``as_of_us``."""
    method = plan.sequential.method
    if method == "none":
        return NoSequential()
    level = plan.alpha / max(1, treatment_arms)
    if method == "group_sequential":
        fractions = plan.sequential.fractions()
        targets = look_targets(plan)
        looks = [(f, t) for f, t in zip(fractions, look_times(exposures, targets, as_of_us),
                                        strict=True) if t is not None]
        if not looks:
            return GroupSequentialSummary(
                kind=plan.sequential.kind, alpha=level, treatment_arms=treatment_arms,
                note=f"first look at {targets[0]} units per arm not reached")
        z = [estimate_then(t).estimate.statistic for _, t in looks]
        result = group_sequential_test(z, [f for f, _ in looks], level, plan.sequential.kind)
        return GroupSequentialSummary(
            kind=plan.sequential.kind, alpha=level, treatment_arms=treatment_arms,
            looks=tuple(GroupSequentialLook(fraction=f, at=_time(t), z=zk, boundary=b)
                        for (f, t), zk, b in zip(looks, z, result.boundaries, strict=True)),
            boundary=result.boundary, crossed=result.crossed,
            first_crossing_look=result.first_crossing_look, decision=result.decision,
            error=result.error)
    mde_abs = plan.mde_absolute()
    if mde_abs is None:  # relative MDE without a baseline: scale by the observed control
        mde_abs = plan.mde * abs(final.unadjusted.mean_control)
    tau2 = mixing_variance_from_mde(mde_abs) if mde_abs > 0 else 1.0
    points = [estimate_then(t).estimate
              for t in timeline_times(exposures, as_of_us, plan.sequential.looks)]
    points.append(final.estimate)
    always_valid = msprt([p.abs_effect for p in points], [p.std_error ** 2 for p in points],
                         level, mixing_variance=tau2)
    # Alone, the arm rejects where its always-valid p reaches alpha; with several
    # arms msprt_across_arms replaces this with the corrected p-values.
    alone = [k + 1 for k, p in enumerate(always_valid.p_values) if p <= plan.alpha]
    return MsprtSummary(
        looks=len(points), mixing_variance=tau2, always_valid_p_value=always_valid.p_value,
        adjusted_p_value=always_valid.p_value, alpha=level, treatment_arms=treatment_arms,
        look_p_values=always_valid.p_values,
        ci_low=always_valid.ci_low, ci_high=always_valid.ci_high,
        rejected=bool(alone), first_rejection_look=alone[0] if alone else None,
        error=always_valid.error)


def msprt_across_arms(summaries: Sequence[MsprtSummary], alpha: float,
                      correction: AdjustMethod) -> list[MsprtSummary]:
    """The treatment arms' mSPRTs decided together: at every look, the arms'
    always-valid p-values are corrected by the plan's correction, and an arm is
    rejected from the first look where its corrected p-value reaches ``alpha``.

    Every arm is looked at at the same times, so look ``j`` of one arm is look
    ``j`` of every arm. Always-valid p-values are valid at any stopping time,
    so Bonferroni and Holm over them keep the family-wise error at ``alpha``
    however often the experiment is looked at. The corrected value reported is
    the running minimum over looks, as the always-valid p-value itself is.
    """
    if len(summaries) <= 1:
        return list(summaries)
    looks = max(len(s.look_p_values) for s in summaries)
    table = np.full((looks, len(summaries)), np.nan)
    for a, summary in enumerate(summaries):
        ps = [math.nan if p is None else p for p in summary.look_p_values]
        table[looks - len(ps):, a] = ps
    adjusted = np.vstack([adjust_p_values(row, correction) for row in table])
    # fmin keeps a look without a p-value (NaN) from hiding earlier evidence
    running = np.fmin.accumulate(adjusted, axis=0)
    out = []
    for a, summary in enumerate(summaries):
        column = running[:, a]
        hits = np.flatnonzero(column <= alpha)
        final = float(column[-1])
        out.append(summary.model_copy(update={
            "adjusted_p_value": final if math.isfinite(final) else None,
            "rejected": bool(hits.size),
            "first_rejection_look": int(hits[0]) + 1 if hits.size else None}))
    return out


# --------------------------------------------------------------------------- looks


def sequential_look(plan: AnalysisPlan, exposures: Exposures, at: dt.datetime,
                    estimates: Mapping[int, MetricEstimate],
                    sequential: Mapping[int, SequentialSummary | None],
                    period: Period | None = None) -> SequentialLook:
    """The primary metric at ``at`` as one look: units exposed per arm by then
    and, per treatment arm, the estimate with the pre-registered method's figures.

    ``estimates`` and ``sequential`` are by treatment arm index, as of ``at``,
    the sequential summaries already corrected across arms.
    """
    at_us = int(at.timestamp() * MICROS)  # as analyze() converts its as_of
    arms = sorted(estimates)
    fixed = _adjusted([estimates[a].estimate.p_value for a in arms], plan.correction)
    counts = np.bincount(exposures.arm[exposures.exposed_at <= at_us],
                         minlength=len(exposures.arms))
    out = []
    for a, adjusted in zip(arms, fixed, strict=True):
        effect = estimates[a].estimate
        summary = sequential.get(a)
        figures: dict[str, Any] = {"adjusted_p_value": adjusted,
                                   "significant": adjusted < plan.alpha}
        if isinstance(summary, MsprtSummary):
            figures = {"always_valid_p_value": summary.always_valid_p_value,
                       "adjusted_p_value": summary.adjusted_p_value,
                       "significant": summary.rejected}
        elif isinstance(summary, GroupSequentialSummary):
            figures = {"boundary": summary.boundary, "significant": summary.crossed}
        out.append(LookArm(arm=exposures.arms[a], abs_effect=effect.abs_effect,
                           std_error=effect.std_error, z=effect.statistic,
                           p_value=effect.p_value, **figures))
    return SequentialLook(at=at.astimezone(dt.UTC), method=plan.sequential.method,
                          metric=plan.primary.label, units=tuple(int(c) for c in counts),
                          arms=tuple(out), period=None if period is None else period.index)


def look_at(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
            at: dt.datetime, period: Period | None = None,
            kernels: AnalysisKernels = NUMPY_KERNELS) -> SequentialLook:
    """The look at ``at`` reconstructed from the logs: units exposed by then,
    outcomes known by then, and the sequential method run as of then."""
    at_us = int(at.timestamp() * MICROS)
    n_arms = len(exposures.arms)
    estimates = {a: estimate_at(plan.primary, plan, exposures, outcomes, at_us, a, kernels)
                 for a in range(1, n_arms)}
    entries = [{"sequential": sequential_summary(plan.primary, plan, exposures, outcomes,
                                                 at_us, a, estimates[a],
                                                 treatment_arms=n_arms - 1,
                                                 kernels=kernels)}
               for a in range(1, n_arms)]
    _sequential_across_arms(plan, entries)
    by_arm = {a: e["sequential"] for a, e in zip(range(1, n_arms), entries, strict=True)}
    return sequential_look(plan, exposures, at, estimates, by_arm, period)


LOOK_FIGURES = ("abs_effect", "std_error", "z", "p_value", "always_valid_p_value",
                "adjusted_p_value", "boundary")


def look_differences(recorded: SequentialLook, reconstructed: SequentialLook) -> tuple[str, ...]:
    """Every figure in which two looks at the same time disagree, named
    (``units``, ``t1.z``...). Numbers agree within 1e-9 relative: the same sums
    taken in another order differ in the last bits, a changed log by far more."""
    out: list[str] = []
    for name in ("method", "metric", "units"):
        if getattr(recorded, name) != getattr(reconstructed, name):
            out.append(name)
    now = {arm.arm: arm for arm in reconstructed.arms}
    for then in recorded.arms:
        other = now.pop(then.arm, None)
        if other is None:
            out.append(f"{then.arm} (no longer compared)")
            continue
        for name in LOOK_FIGURES:
            a, b = getattr(then, name), getattr(other, name)
            if (a is None) != (b is None) or (
                    a is not None and b is not None
                    and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)):
                out.append(f"{then.arm}.{name}")
        if then.significant != other.significant:
            out.append(f"{then.arm}.significant")
    out += [f"{arm} (not recorded)" for arm in now]
    return tuple(out)


def compare_looks(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                  as_of_us: int, recorded: Sequence[RecordedLook],
                  period: Period | None = None,
                  kernels: AnalysisKernels = NUMPY_KERNELS) -> tuple[LookComparison, ...]:
    """Each recorded look next to its reconstruction, in time order. A look of
    another period, or after ``as_of``, is listed without one (and says why)."""
    out = []
    for look in sorted(recorded, key=lambda r: (r.at, r.recorded_at)):
        at_us = int(look.at.timestamp() * MICROS)
        note = None
        if period is not None and look.period is not None and look.period != period.index:
            note = f"recorded in period {look.period}; this analysis is of period {period.index}"
        elif at_us > as_of_us:
            note = "taken after this analysis's as-of time"
        if note is not None:
            out.append(LookComparison(recorded=look, note=note))
            continue
        now = look_at(plan, exposures, outcomes, look.at, period, kernels)
        out.append(LookComparison(recorded=look, reconstructed=now,
                                  differences=look_differences(look, now)))
    return tuple(out)


def timeline_times(exposures: Exposures, as_of_us: int, points: int) -> list[int]:
    """``points`` evenly spaced times from the first exposure to ``as_of`` (exclusive)."""
    if exposures.n_units == 0:
        return []
    start = int(exposures.exposed_at.min())
    if as_of_us <= start:
        return []
    return [start + (as_of_us - start) * (k + 1) // (points + 1) for k in range(points)]


def timeline(spec: MetricSpec, plan: AnalysisPlan, exposures: Exposures,
             outcomes: OutcomeRows, as_of_us: int, points: int,
             kernels: AnalysisKernels = NUMPY_KERNELS) -> tuple[TimelinePoint, ...]:
    """Cumulative lift with its interval and the sample ratio over time, for the plots:
    ``points`` times before ``as_of`` and ``as_of`` itself."""
    series = []
    for t in [*timeline_times(exposures, as_of_us, points), as_of_us]:
        counts = np.bincount(exposures.arm[exposures.exposed_at <= t],
                             minlength=len(exposures.arms))
        arms = {}
        for arm in range(1, len(exposures.arms)):
            effect = estimate_at(spec, plan, exposures, outcomes, t, arm, kernels).estimate
            arms[exposures.arms[arm]] = TimelineArm(
                abs_effect=effect.abs_effect, ci_low=effect.ci_low, ci_high=effect.ci_high,
                rel_effect=effect.rel_effect, z=effect.statistic)
        series.append(TimelinePoint(at=_time(t), units=tuple(int(c) for c in counts), arms=arms))
    return tuple(series)


def _time(at_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at_us / MICROS, tz=dt.UTC)


# --------------------------------------------------------------------------- guardrails


def guardrail_verdict(spec: GuardrailSpec, effect: EffectEstimate) -> tuple[Verdict, str]:
    """``PASS`` when the interval rules out harm beyond the tolerance, ``FAIL`` when
    the estimate itself is beyond it, else ``INSUFFICIENT_DATA``; with a reason."""
    if effect.error is not None and not (spec.relative is False
                                         and effect.error == "zero_control_mean"):
        return Verdict.INSUFFICIENT_DATA, f"guardrail {spec.label}: {effect.error}"
    sign = 1.0 if spec.harm == "increase" else -1.0
    if spec.relative:
        point, worst = sign * effect.rel_effect, max(sign * effect.rel_ci_low,
                                                     sign * effect.rel_ci_high)
        unit = "relative"
    else:
        point, worst = sign * effect.abs_effect, max(sign * effect.ci_low, sign * effect.ci_high)
        unit = "absolute"
    if not math.isfinite(point):
        return Verdict.INSUFFICIENT_DATA, f"guardrail {spec.label}: no estimate"
    if point > spec.tolerance:
        return Verdict.FAIL, (f"guardrail {spec.label} harmed: {spec.harm} of {point:.4g} "
                              f"({unit}) exceeds the tolerated {spec.tolerance:g}")
    if worst <= spec.tolerance:
        return Verdict.PASS, f"guardrail {spec.label} within tolerance"
    return Verdict.INSUFFICIENT_DATA, (
        f"guardrail {spec.label}: the interval still allows a {spec.harm} of {worst:.4g} "
        f"({unit}), beyond {spec.tolerance:g}")


# --------------------------------------------------------------------------- analysis


def srm_check(exposures: Exposures) -> SrmCheck:
    """The sample-ratio test of the exposed units against the split each unit was
    exposed under (:func:`~rollout.experiments.stats.srm.combined_srm_test`):
    one χ² per split, summed. Units without a logged split are tested against
    the configured weights."""
    return srm_from_counts(exposures.arms, exposures.weights, split_counts(exposures))


SplitKey = tuple[float, ...] | None  # a logged split's weights; None: none logged


def window_srm(exposures: Exposures, cells: SwitchbackCells, period: Period | None) -> SrmCheck:
    """A switchback's sample-ratio test: window cells per arm against the
    configured weights. The design randomizes windows; a user is exposed in
    as many windows as they send requests in, so users per arm (their first
    exposure's arm) say nothing about the assignment."""
    used = cells_in_period(cells, period)
    counts = np.bincount(used.arm, minlength=len(exposures.arms))
    first = int(exposures.exposed_at.min()) if exposures.n_units else 0
    return srm_from_counts(exposures.arms, exposures.weights,
                           {None: (tuple(int(c) for c in counts), first)})


def split_counts(exposures: Exposures) -> dict[SplitKey, tuple[tuple[int, ...], int]]:
    """Units per arm under each split (its weights; None: the configured ones,
    for units without a logged split) and the split's earliest exposure."""
    n_arms = len(exposures.arms)
    split = exposures.split
    if split is None or split.size == 0:
        split = np.full(exposures.n_units, -1, dtype=np.int64)
    # One counting pass over (split + 1) * arms + arm; -1 (configured) first.
    n_splits = len(exposures.splits) + 1
    counts = np.bincount((split + 1) * n_arms + exposures.arm,
                         minlength=n_splits * n_arms).reshape(n_splits, n_arms)
    out: dict[SplitKey, tuple[tuple[int, ...], int]] = {}
    for c in range(n_splits):
        if not counts[c].sum():
            continue
        key = None if c == 0 else tuple(exposures.splits[c - 1])
        first = int(exposures.exposed_at[split == c - 1].min())
        if key in out:  # two labels of the same weights: one split
            old, old_first = out[key]
            out[key] = (tuple(a + int(b) for a, b in zip(old, counts[c], strict=True)),
                        min(first, old_first))
        else:
            out[key] = (tuple(int(v) for v in counts[c]), first)
    return out


def _rounded(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def _adjusted(p_values: Sequence[float | None], correction: AdjustMethod) -> list[float]:
    """Corrected p-values; a missing p-value stays missing (NaN, stored as None)."""
    raw = [math.nan if p is None else p for p in p_values]
    return [float(p) for p in adjust_p_values(raw, correction)]


ArmSummaries = Sequence[PairSummary]  # per arm, the control first


def metric_results(plan: AnalysisPlan, arms: tuple[str, ...],
                   summaries_of: Callable[[str, MetricSpec], ArmSummaries],
                   sequential_for: Callable[[int, MetricEstimate], SequentialSummary],
                   *, estimate_for: Callable[[str, MetricSpec, int], MetricEstimate] | None = None
                   ) -> tuple[tuple[MetricResult, ...], tuple[GuardrailResult, ...],
                              dict[int, MetricEstimate]]:
    """Every metric (primary, secondary, guardrails) against control for each
    treatment arm, from each metric's per-arm sums (``summaries_of(key, spec)``,
    keys of :func:`metric_specs`), with the primary's sequential method
    (``sequential_for(arm, estimate)``); and the primary's estimates by arm.

    Multiple testing by design: the primary metric is tested alone at alpha,
    corrected only across the treatment arms (by the plan's correction), so the
    power ``rampart plan`` promised is the power the analysis has; the
    secondary metrics are corrected as one family (every secondary metric and
    arm). The primary's sequential method corrects across arms too
    (:func:`sequential_summary`, :func:`msprt_across_arms`). Guardrails are
    judged by :func:`guardrail_verdict`, uncorrected. ``estimate_for(key, spec,
    arm)``, when given, replaces the estimate from the sums (a cluster-randomized
    experiment's cluster-robust test); the counts still come from the sums.
    """
    n_arms = len(arms)
    pending: list[dict[str, Any]] = []
    guardrails: list[GuardrailResult] = []
    primary: dict[int, MetricEstimate] = {}
    for key, role, spec in metric_specs(plan):
        summaries = summaries_of(key, spec)
        for arm in range(1, n_arms):
            result = (estimate(spec, plan, summaries[0], summaries[arm]) if estimate_for is None
                      else estimate_for(key, spec, arm))
            if role == "guardrail":
                assert isinstance(spec, GuardrailSpec)
                verdict, reason = guardrail_verdict(spec, result.estimate)
                guardrails.append(GuardrailResult(
                    **Effect.fields_of(result.estimate), metric=spec.label, arm=arms[arm],
                    harm=spec.harm, tolerance=spec.tolerance, relative=spec.relative,
                    verdict=verdict, reason=reason, clustered=result.clustered))
                continue
            sequential: SequentialSummary | None = None
            if role == "primary":
                primary[arm] = result
                sequential = sequential_for(arm, result)
            pending.append({
                **Effect.fields_of(result.estimate),
                "metric": spec.label, "role": role, "type": spec.type,
                "arm": arms[arm], "control_arm": arms[0],
                "n_control": summaries[0].n, "n_treatment": summaries[arm].n,
                "cuped_variance_reduction": result.cuped_variance_reduction,
                "cuped": result.cuped_summary(),
                "unadjusted": Effect.of(result.unadjusted),
                "bayes": result.bayes_summary(),
                "sequential": sequential,
                "clustered": result.clustered,
            })
    _sequential_across_arms(plan, [e for e in pending if e["role"] == "primary"])
    for role in ("primary", "secondary"):
        family = [e for e in pending if e["role"] == role]
        adjusted = _adjusted([e["p_value"] for e in family], plan.correction)
        for entry, p in zip(family, adjusted, strict=True):
            entry.update(adjusted_p_value=p, family_size=len(family))
    return tuple(MetricResult(**entry) for entry in pending), tuple(guardrails), primary


def _sequential_across_arms(plan: AnalysisPlan, entries: Sequence[dict[str, Any]]) -> None:
    """Replace the primary's per-arm mSPRT summaries (in ``entries``) with the arms'
    joint decision (:func:`msprt_across_arms`)."""
    found = [(e, e["sequential"]) for e in entries if isinstance(e["sequential"], MsprtSummary)]
    joint = msprt_across_arms([s for _, s in found], plan.alpha, plan.correction)
    for (entry, _), summary in zip(found, joint, strict=True):
        entry["sequential"] = summary


def analyze(
    experiment_id: str,
    plan: AnalysisPlan,
    exposures: Exposures,
    outcomes: OutcomeRows,
    as_of: dt.datetime,
    *,
    exploratory_segments: Sequence[str] = (),
    timeline_points: int = 0,
    period: Period | None = None,
    periods: Sequence[Period] = (),
    recorded_looks: Sequence[RecordedLook] = (),
    kernels: AnalysisKernels = NUMPY_KERNELS,
    switchback: SwitchbackMetricCells | None = None,
    factors: Sequence[Factor] = (),
) -> ExperimentAnalysis:
    """The whole analysis of one experiment (of one ``period`` of it, when given).

    SRM, every metric and guardrail, segments, the decision, and a timeline of
    ``timeline_points`` points before ``as_of`` when asked (for the HTML report's
    plots). A period whose arms serve the same versions holds the decision.
    The analysis is also one sequential look (``look``), and each of
    ``recorded_looks`` is set next to its reconstruction from these logs.
    ``kernels`` do the passes over every row and unit (:mod:`rollout.experiments.kernels`).
    ``switchback``, a switchback experiment's window cells of every metric
    (by outcome metric name), replaces each metric's test and each
    guardrail's verdict by the window-level ones
    (:func:`~rollout.experiments.switchback.switchback_metrics`,
    :func:`~rollout.experiments.switchback.switchback_guardrails`).
    ``factors``, a factorial experiment's (its arms are their cells), add the
    primary metric's main effects and interactions (``factorial``).
    """
    as_of_us = int(as_of.timestamp() * MICROS)
    srm = srm_check(exposures)
    windows = outcome_periods(plan, exposures, outcomes, as_of_us)
    n_arms = len(exposures.arms)

    def summaries_of(_: str, spec: MetricSpec) -> ArmSummaries:
        values = unit_values(spec, plan, exposures, outcomes, as_of_us, windows, kernels)
        return arm_summaries(exposures.arm, values, n_arms, kernels=kernels)

    def sequential_for(arm: int, result: MetricEstimate) -> SequentialSummary:
        return sequential_summary(plan.primary, plan, exposures, outcomes, as_of_us, arm,
                                  result, treatment_arms=n_arms - 1, periods=windows,
                                  kernels=kernels)

    metrics, guardrails, primary = metric_results(
        plan, exposures.arms, summaries_of, sequential_for,
        estimate_for=clustered_estimates(plan, exposures, outcomes, as_of_us, windows, kernels))
    stratified = stratified_results(plan, exposures, outcomes, as_of_us, periods=windows,
                                    kernels=kernels)
    if stratified:  # reported beside the primary's estimate; the decision never reads it
        metrics = tuple(
            m.model_copy(update={"stratified": stratified[exposures.arms.index(m.arm)]})
            if m.role == "primary" else m for m in metrics)
    if switchback is not None:  # the windows are the units: their test decides
        metrics = switchback_metrics(plan, exposures.arms, metrics, switchback, period)
        guardrails = switchback_guardrails(plan, exposures.arms, guardrails, switchback,
                                           guardrail_verdict, period)
        srm = window_srm(exposures, switchback[plan.primary.name], period)
    # A factorial experiment's cells are its arms; its factors' effects are read
    # from the same units, beside the per-cell results (they do not decide).
    factorial = factorial_summary(
        plan.primary, exposures.arms, exposures.arm,
        unit_values(plan.primary, plan, exposures, outcomes, as_of_us, windows, kernels).y,
        factors, plan.alpha) if factors else None
    warnings = () if period is None else period.warnings
    return ExperimentAnalysis(
        experiment_id=experiment_id, as_of=as_of.astimezone(dt.UTC), arms=exposures.arms,
        units=exposures.n_units, crossovers=exposures.crossovers, srm=srm,
        correction=plan.correction, metrics=metrics, guardrails=guardrails,
        segments=segment_results(plan, exposures, outcomes, as_of_us, primary,
                                 exploratory_segments, periods=windows, kernels=kernels),
        decision=decide(plan, srm, metrics, guardrails, warnings,
                        period=period, n_periods=len(periods)),
        timeline=(timeline(plan.primary, plan, exposures, outcomes, as_of_us, timeline_points,
                           kernels) if timeline_points > 0 else None),
        period=period, periods=tuple(periods), warnings=warnings,
        look=sequential_look(plan, exposures, as_of, primary,
                             {exposures.arms.index(m.arm): m.sequential
                              for m in metrics if m.role == "primary"}, period),
        recorded_looks=compare_looks(plan, exposures, outcomes, as_of_us, recorded_looks,
                                     period, kernels),
        factorial=factorial,
    )


def stratum_codes(exposures: Exposures, attributes: Sequence[str]
                  ) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Each unit's stratum (an index into the labels) and the labels: the
    crossed values of ``attributes`` (``ios / US``), only those some unit has.
    Every attribute must be in ``exposures.segments``; a unit without it is in
    its ``(missing)`` value, as for segments."""
    codes = np.zeros(exposures.n_units, dtype=np.int64)
    labels: list[tuple[str, ...]] = [()]
    for attribute in attributes:
        values, names = exposures.segments[attribute]
        size = len(names)
        # Renumbered after every attribute, so the crossed code stays below
        # units × values and cannot overflow whatever the attributes' cardinality.
        present, inverse = np.unique(codes * size + values, return_inverse=True)
        codes = inverse.reshape(-1).astype(np.int64, copy=False)
        labels = [(*labels[c // size], names[c % size]) for c in present.tolist()]
    return codes, tuple(" / ".join(label) for label in labels)


def stratified_results(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                       as_of_us: int, *, periods: OutcomePeriods | None = None,
                       kernels: AnalysisKernels = NUMPY_KERNELS
                       ) -> dict[int, StratifiedSummary]:
    """The primary metric post-stratified by the plan's strata, by treatment arm
    index (empty without strata). The sums of every (stratum, arm) cell come
    from one pass of the kernels, the cell standing in for the arm."""
    if not plan.strata:
        return {}
    n_arms = len(exposures.arms)
    if any(a not in exposures.segments for a in plan.strata):
        return {arm: StratifiedSummary(attributes=plan.strata, error="strata_not_loaded")
                for arm in range(1, n_arms)}
    codes, labels = stratum_codes(exposures, plan.strata)
    values = unit_values(plan.primary, plan, exposures, outcomes, as_of_us, periods, kernels)
    cells = kernels.arm_moments(codes * n_arms + exposures.arm, values.y, values.x,
                                len(labels) * n_arms)
    out = {}
    for arm in range(1, n_arms):
        result = post_stratified_effect(
            [Stratum(label, cells[s * n_arms].y(), cells[s * n_arms + arm].y())
             for s, label in enumerate(labels)], plan.alpha)
        out[arm] = StratifiedSummary(
            **Effect.fields_of(result.estimate), attributes=plan.strata,
            strata=tuple(StratumCell(stratum=r.label, n_control=r.n_control,
                                     n_treatment=r.n_treatment, weight=r.weight,
                                     abs_effect=r.abs_effect) for r in result.strata),
            collapsed=result.collapsed, unadjusted_std_error=result.unadjusted_std_error,
            variance_reduction=result.variance_reduction)
    return out


def segment_results(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                    as_of_us: int, pooled: dict[int, MetricEstimate],
                    exploratory: Sequence[str], *, periods: OutcomePeriods | None = None,
                    kernels: AnalysisKernels = NUMPY_KERNELS) -> tuple[SegmentResult, ...]:
    """The primary metric per segment value of each attribute, corrected across
    the attribute's segments; pre-registered attributes are confirmatory, and a
    pooled effect whose sign disagrees with every segment's is flagged (Simpson)."""
    out: list[SegmentResult] = []
    n_arms = len(exposures.arms)
    attributes: list[tuple[str, Literal["confirmatory", "exploratory"]]] = [
        (a, "confirmatory") for a in plan.segments]
    attributes += [(a, "exploratory") for a in exploratory if a not in plan.segments]
    attributes = [(a, kind) for a, kind in attributes if a in exposures.segments]
    if not attributes:
        return ()
    values = unit_values(plan.primary, plan, exposures, outcomes, as_of_us, periods, kernels)
    for attribute, kind in attributes:
        codes, labels = exposures.segments[attribute]
        for arm in range(1, n_arms):
            cells: list[tuple[str, PairSummary, PairSummary, EffectEstimate]] = []
            for code, label in enumerate(labels):
                summaries = arm_summaries(exposures.arm, values, n_arms, codes == code, kernels)
                effect = estimate(plan.primary, plan, summaries[0], summaries[arm]).estimate
                cells.append((label, summaries[0], summaries[arm], effect))
            adjusted = _adjusted([c[3].p_value for c in cells], plan.correction)
            rows = tuple(SegmentCell(**Effect.fields_of(effect), segment=label,
                                     n_control=control.n, n_treatment=treatment.n,
                                     adjusted_p_value=p)
                         for (label, control, treatment, effect), p
                         in zip(cells, adjusted, strict=True))
            pooled_effect = pooled[arm].estimate.abs_effect if arm in pooled else math.nan
            signs = {np.sign(r.abs_effect) for r in rows
                     if r.abs_effect is not None and r.abs_effect != 0}
            simpson = (len(rows) > 1 and len(signs) == 1 and math.isfinite(pooled_effect)
                       and pooled_effect != 0 and signs != {np.sign(pooled_effect)})
            out.append(SegmentResult(
                attribute=attribute, kind=kind, metric=plan.primary.label,
                arm=exposures.arms[arm], segments=rows, simpsons_paradox=bool(simpson),
                warning=("the pooled effect's sign disagrees with every segment's: "
                         "Simpson's paradox, check the mix of segments across arms"
                         if simpson else None)))
    return tuple(out)


# --------------------------------------------------------------------------- decision


def split_label(split: SrmSplit) -> str:
    """A split as people read it: ``9000/1000 (logged) from 2026-11-02T10:00:00Z``."""
    weights = "/".join(f"{w:g}" for w in split.weights)
    since = ("" if split.first_exposure is None else
             " from " + split.first_exposure.isoformat(timespec="seconds").replace("+00:00", "Z"))
    return f"{weights} ({split.source}){since}"


def decide(plan: AnalysisPlan, srm: SrmCheck, metrics: Sequence[MetricResult],
           guardrails: Sequence[GuardrailResult], warnings: Sequence[PeriodWarning] = (),
           *, period: Period | None = None, n_periods: int = 1) -> Decision:
    """``ship``, ``hold`` or ``rollback`` with every reason.

    - Arms that serve the same versions in the analysed period: hold (the
      period compares nothing), and so for SRM (no number can be trusted).
    - A guardrail harmed beyond tolerance, or the primary significantly worse:
      rollback.
    - Ship when the primary is significantly better (by the pre-registered
      sequential method when there is one, else the corrected p-value) and every
      guardrail is shown within tolerance; otherwise hold.
    """
    same = [w for w in warnings if w.kind == "same_versions"]
    reasons: list[str] = [w.message for w in same]
    if period is not None and n_periods > 1:
        reasons.append(f"period {period.index} of {n_periods} (from "
                       f"{period.start.isoformat().replace('+00:00', 'Z')}): an arm's served "
                       "versions changed during the experiment; other periods are not pooled in")
    reasons += [w.message for w in warnings if w.kind != "same_versions"]
    if srm.flag:
        alone = [s for s in srm.splits if s.flag]
        where = (f"p = {srm.p_value or 0.0:.3g} < 0.001" if not alone or (
            srm.p_value or 0.0) < 0.001 else
            f"p = {alone[0].p_value or 0.0:.3g} < 0.001/{len(srm.splits)} in the split "
            f"{split_label(alone[0])}")
        reasons.append(f"sample ratio mismatch ({where}): "
                       "the assignment or logging is broken; no effect can be trusted")
    elif srm.p_value is not None:
        reasons.append(f"no sample ratio mismatch (p = {srm.p_value:.3g})")
    failed = [g for g in guardrails if g.verdict == Verdict.FAIL]
    unsure = [g for g in guardrails if g.verdict == Verdict.INSUFFICIENT_DATA]
    reasons += [g.reason for g in guardrails]
    best: MetricResult | None = None
    any_better = any_worse = False
    for entry in (m for m in metrics if m.role == "primary"):
        effect = entry.abs_effect
        if effect is None:
            reasons.append(f"{entry.name}: no estimate ({entry.error})")
            continue
        significant = primary_significant(plan, entry)
        if significant and effect > 0:
            any_better = True
            if best is None or effect > (best.abs_effect or 0.0):
                best = entry
            verdict = "significantly better"
        elif significant and effect < 0:
            any_worse = True
            verdict = "significantly worse"
        else:
            verdict = "not significant"
        reasons.append(f"{entry.name}: {verdict} {_by(entry, plan)}, {_lift(entry)}")
    outcome: Outcome
    if same or srm.flag:
        outcome = "hold"
    elif failed or (any_worse and not any_better):
        outcome = "rollback"
    elif any_better and not unsure:
        outcome = "ship"
    else:
        outcome = "hold"
    return Decision(outcome=outcome,
                    arm=best.arm if outcome == "ship" and best is not None else None,
                    reasons=tuple(reasons))


def primary_significant(plan: AnalysisPlan, entry: MetricResult) -> bool:
    """Significance by the pre-registered method: the group-sequential boundary
    crossed, the mSPRT rejected, or else the corrected fixed-horizon p-value."""
    sequential = entry.sequential
    if isinstance(sequential, GroupSequentialSummary):
        return sequential.crossed
    if isinstance(sequential, MsprtSummary):
        return sequential.rejected
    p = entry.adjusted_p_value
    return p is not None and p < plan.alpha


def _by(entry: MetricResult, plan: AnalysisPlan) -> str:
    """Which pre-registered test the significance verdict comes from, and how it
    was corrected across treatment arms."""
    sequential = entry.sequential
    if isinstance(sequential, GroupSequentialSummary):
        arms = sequential.treatment_arms
        across = (f" at alpha {plan.alpha:g}/{arms} = {plan.alpha / arms:.3g}, adjusted "
                  f"across {arms} treatment arms (Bonferroni)" if arms > 1 else "")
        return (f"by the {sequential.kind} group-sequential boundary{across} "
                f"({sequential.decision})")
    if isinstance(sequential, MsprtSummary):
        p, adjusted = sequential.always_valid_p_value, sequential.adjusted_p_value
        arms = sequential.treatment_arms
        detail = "" if p is None else f"always-valid p = {p:.3g}"
        if arms > 1 and adjusted is not None:
            detail += (f"; {adjusted:.3g} adjusted across {arms} treatment arms "
                       f"by {plan.correction}")
        return "by the mSPRT" + (f" ({detail})" if detail else "")
    arms = entry.family_size or 1
    return "at the fixed horizon" + (
        f" (p adjusted across {arms} treatment arms by {plan.correction})" if arms > 1 else
        f" (the primary metric tested alone at alpha {plan.alpha:g})")


def _lift(entry: MetricResult) -> str:
    text = f"effect {entry.abs_effect:.4g}"
    if entry.rel_effect is not None:
        text += f" ({entry.rel_effect:+.2%})"
    if entry.ci_low is not None and entry.ci_high is not None:
        text += f", CI [{entry.ci_low:.4g}, {entry.ci_high:.4g}]"
    p = entry.adjusted_p_value
    return text + (f", adjusted p = {p:.3g}" if p is not None else "")


# --------------------------------------------------------------------------- shared with sums


def metric_specs(plan: AnalysisPlan
                 ) -> list[tuple[str, Literal["primary", "secondary", "guardrail"], MetricSpec]]:
    """Every metric of the plan with a key naming its place: ``primary``,
    ``secondary:i``, ``guardrail:i`` (one name may be several metrics)."""
    out: list[tuple[str, Literal["primary", "secondary", "guardrail"], MetricSpec]] = [
        ("primary", "primary", plan.primary)]
    out += [(f"secondary:{i}", "secondary", m) for i, m in enumerate(plan.secondary)]
    out += [(f"guardrail:{i}", "guardrail", g) for i, g in enumerate(plan.guardrails)]
    return out


def look_targets(plan: AnalysisPlan) -> list[int]:
    """Units per arm at each group-sequential look, as :func:`sequential_summary` sets them."""
    max_units = plan.sequential.max_units_per_arm
    assert max_units is not None
    return [max(2, math.ceil(f * max_units)) for f in plan.sequential.fractions()]


def srm_from_counts(arms: tuple[str, ...], weights: tuple[float, ...],
                    counts: Mapping[SplitKey, tuple[tuple[int, ...], int]]) -> SrmCheck:
    """:func:`srm_check` from units counted per split and arm (``counts`` as in
    :class:`UnitStats`): the same test, splits in the order units first met them."""
    present: list[SplitKey] = sorted(
        (k for k, (c, _) in counts.items() if any(c)),
        key=lambda k: (counts[k][1], k is not None, k or ()))
    if not present:  # nobody exposed: the configured split, and the test says no_units
        present = [None]
    rows = [counts[k][0] if k in counts else (0,) * len(arms) for k in present]
    split_weights_ = [weights if k is None else k for k in present]
    srm = combined_srm_test([list(r) for r in rows], split_weights_)
    splits = tuple(
        SrmSplit(weights=tuple(w), source="configured" if k is None else "logged",
                 first_exposure=_time(counts[k][1]) if k in counts and any(counts[k][0])
                 else None,
                 observed=r.observed, expected=tuple(_rounded(e, 4) for e in r.expected),
                 statistic=r.statistic, p_value=r.p_value, flag=i in srm.flagged_splits,
                 error=r.error)
        for i, (k, w, r) in enumerate(zip(present, split_weights_, srm.splits, strict=True)))
    used = {s.source for s in splits if s.observed and sum(s.observed)}
    weights_source: Literal["logged", "configured", "mixed"] = (
        "mixed" if len(used) > 1 else "logged" if used == {"logged"} else "configured")
    return SrmCheck(p_value=srm.p_value, statistic=srm.statistic, observed=srm.observed,
                    expected=tuple(_rounded(e, 4) for e in srm.expected), flag=srm.flag,
                    error=srm.error, df=srm.df if srm.error is None else None,
                    weights_source=weights_source, splits=splits)
