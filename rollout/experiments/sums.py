"""The analysis split across machines, as sums.

Each part of the units (every decision and outcome event of a unit in the same
part) gives :func:`partial_stats`; the parts are added (:func:`combine_stats`);
and :func:`analyze_stats` runs the same estimates, corrections and decision on
the sums as :func:`rollout.experiments.analysis.analyze` runs on the units (one
metrics core, one sequential core). Only sums leave a part, plus each arm's
earliest exposure times when the sequential looks depend on them. Pure code:
:mod:`rollout.experiments.ray_engine` moves the parts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from rollout.experiments.analysis import (
    MICROS,
    Exposures,
    MetricEstimate,
    OutcomeRows,
    SplitKey,
    arm_summaries,
    decide,
    estimate,
    look_targets,
    look_times,
    metric_results,
    metric_specs,
    outcome_periods,
    sequential_look,
    sequential_of,
    split_counts,
    srm_from_counts,
    timeline_times,
    unit_values,
)
from rollout.experiments.results import ExperimentAnalysis, Period, SequentialSummary
from rollout.experiments.stats.summary import PairSummary
from serving.kernel.analysis_plan import AnalysisPlan


@dataclass(frozen=True)
class UnitStats:
    """What a set of units contributes to an analysis, as sums that add up.

    ``units`` per arm (exposed by ``as_of``); ``srm`` per split in force at
    exposure (its weights, None where none was logged): units per arm and the
    earliest exposure; ``summaries`` per (metric key of :func:`metric_specs`,
    time) the per-arm :class:`PairSummary` as known then, over the units exposed
    by then; ``earliest`` per arm its earliest exposure times, sorted (as many as
    the sequential looks need: ``kept``, or all of the arm's when fewer).
    """

    units: tuple[int, ...]
    crossovers: int
    srm: Mapping[SplitKey, tuple[tuple[int, ...], int]]
    summaries: Mapping[tuple[str, int], tuple[PairSummary, ...]]
    earliest: tuple[NDArray[np.int64], ...] = ()
    kept: int = 0


def earliest_exposures(exposures: Exposures, k: int) -> tuple[NDArray[np.int64], ...]:
    """Per arm its ``k`` earliest exposure times, sorted: the k-th earliest of all
    parts is among the parts' k earliest, so look times need no more."""
    out = []
    for a in range(len(exposures.arms)):
        times = exposures.exposed_at[exposures.arm == a]
        if times.size > k:
            times = np.partition(times, k - 1)[:k]
        out.append(np.sort(times))
    return tuple(out)


def partial_stats(plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                  as_of_us: int, times: Sequence[int] = (), earliest: int = 0) -> UnitStats:
    """The sums of one part of the units: every metric at ``as_of_us`` and the
    primary at each of ``times`` (units exposed by then, outcomes known by then,
    as :func:`estimate_at` takes them), SRM counts, and each arm's ``earliest``
    exposure times."""
    n_arms = len(exposures.arms)
    windows = outcome_periods(plan, exposures, outcomes, as_of_us)
    summaries: dict[tuple[str, int], tuple[PairSummary, ...]] = {}
    for key, _, spec in metric_specs(plan):
        values = unit_values(spec, plan, exposures, outcomes, as_of_us, windows)
        summaries[key, as_of_us] = tuple(arm_summaries(exposures.arm, values, n_arms))
    for t in times:
        values = unit_values(plan.primary, plan, exposures, outcomes, t)
        summaries["primary", t] = tuple(arm_summaries(exposures.arm, values, n_arms,
                                                      exposures.exposed_at <= t))
    return UnitStats(
        units=tuple(int(c) for c in np.bincount(exposures.arm, minlength=n_arms)),
        crossovers=exposures.crossovers, srm=split_counts(exposures), summaries=summaries,
        earliest=earliest_exposures(exposures, earliest) if earliest > 0 else (),
        kept=earliest)


def add_summaries(a: PairSummary, b: PairSummary) -> PairSummary:
    return PairSummary(a.n + b.n, a.sum_y + b.sum_y, a.sum_yy + b.sum_yy, a.sum_x + b.sum_x,
                       a.sum_xx + b.sum_xx, a.sum_xy + b.sum_xy)


def combine_stats(parts: Sequence[UnitStats], n_arms: int) -> UnitStats:
    """The sums of disjoint sets of units added: those of their union."""
    srm: dict[SplitKey, tuple[tuple[int, ...], int]] = {}
    summaries: dict[tuple[str, int], tuple[PairSummary, ...]] = {}
    units = [0] * n_arms
    earliest: list[list[NDArray[np.int64]]] = [[] for _ in range(n_arms)]
    for part in parts:
        units = [u + v for u, v in zip(units, part.units, strict=True)]
        for key, (counts, first) in part.srm.items():
            if key in srm:
                old, old_first = srm[key]
                counts = tuple(u + v for u, v in zip(old, counts, strict=True))
                first = min(first, old_first)
            srm[key] = (counts, first)
        for where, arms in part.summaries.items():
            old_arms = summaries.get(where)
            summaries[where] = arms if old_arms is None else tuple(
                add_summaries(u, v) for u, v in zip(old_arms, arms, strict=True))
        for a, times in enumerate(part.earliest):
            earliest[a].append(times)
    k = max((p.kept for p in parts), default=0)
    merged = tuple(np.sort(np.concatenate(ts))[:k] if ts else np.zeros(0, dtype=np.int64)
                   for ts in earliest) if k else ()
    return UnitStats(tuple(units), sum(p.crossovers for p in parts), srm, summaries, merged, k)


def earliest_needed(plan: AnalysisPlan) -> int:
    """How many earliest exposure times per arm the looks need: the group-sequential
    look sizes, else one (the first exposure, where the mSPRT's looks start)."""
    if plan.sequential.method == "group_sequential":
        return max(look_targets(plan))
    return 1


def exposure_sketch(arms: tuple[str, ...], weights: tuple[float, ...],
                    earliest: Sequence[NDArray[np.int64]]) -> Exposures:
    """Exposures holding only each arm's earliest exposure times: all that
    :func:`look_times` and :func:`timeline_times` read of the units."""
    parts = [np.asarray(t, dtype=np.int64) for t in earliest]
    arm = (np.concatenate([np.full(t.size, a, dtype=np.int64) for a, t in enumerate(parts)])
           if parts else np.zeros(0, dtype=np.int64))
    at = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return Exposures(arms, weights, arm, at)


def sequential_times(plan: AnalysisPlan, sketch: Exposures, as_of_us: int) -> list[int]:
    """The times before ``as_of_us`` at which the primary's sequential method looks
    (``sketch`` from :func:`exposure_sketch`, with :func:`earliest_needed` times)."""
    if plan.sequential.method == "group_sequential":
        return [t for t in look_times(sketch, look_targets(plan), as_of_us) if t is not None]
    if plan.sequential.method == "msprt":
        return timeline_times(sketch, as_of_us, plan.sequential.looks)
    return []


def analyze_stats(experiment_id: str, plan: AnalysisPlan, arms: tuple[str, ...],
                  weights: tuple[float, ...], stats: UnitStats, as_of: dt.datetime, *,
                  period: Period | None = None, periods: Sequence[Period] = ()
                  ) -> ExperimentAnalysis:
    """:func:`analyze` from the sums of every unit (:func:`combine_stats` of
    :func:`partial_stats` at the same ``as_of`` and :func:`sequential_times`):
    SRM, metrics, guardrails, the sequential method, corrections, the look and
    the decision, computed as :func:`analyze` computes them. Segments, the
    timeline and recorded looks need the units and are not part of it."""
    as_of_us = int(as_of.timestamp() * MICROS)
    n_arms = len(arms)
    sketch = exposure_sketch(arms, weights, stats.earliest)
    srm = srm_from_counts(arms, weights, stats.srm)

    def sequential_for(arm: int, result: MetricEstimate) -> SequentialSummary:
        def estimate_then(t: int) -> MetricEstimate:
            then = stats.summaries["primary", t]
            return estimate(plan.primary, plan, then[0], then[arm])

        return sequential_of(plan, sketch, as_of_us, result, n_arms - 1, estimate_then)

    metrics, guardrails, primary = metric_results(
        plan, arms, lambda key, _: stats.summaries[key, as_of_us], sequential_for)
    warnings = () if period is None else period.warnings
    # The look counts units exposed by as_of: every unit summed here.
    none = np.zeros(0, dtype=np.int64)
    look = sequential_look(plan, Exposures(arms, weights, none, none), as_of, primary,
                           {arms.index(m.arm): m.sequential
                            for m in metrics if m.role == "primary"}, period)
    return ExperimentAnalysis(
        experiment_id=experiment_id, as_of=as_of.astimezone(dt.UTC), arms=arms,
        units=sum(stats.units), crossovers=stats.crossovers, srm=srm,
        correction=plan.correction, metrics=metrics, guardrails=guardrails,
        segments=(), decision=decide(plan, srm, metrics, guardrails, warnings,
                                     period=period, n_periods=len(periods)),
        period=period, periods=tuple(periods), warnings=warnings,
        look=look.model_copy(update={"units": stats.units}))
