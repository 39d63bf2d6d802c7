"""A layer's long-term holdout against everything its experiments shipped.

The units the layer's holdout kept on the default route are the control; every
other unit the layer logged (whichever experiment, arm or version served it)
is the treatment, ``shipped``. The statistics are an experiment's
(:func:`rollout.experiments.analysis.analyze` on two arms); only the sample
ratio differs, because the layer does not log every unit it allocates:

- a unit whose layer bucket falls in a range no experiment owns goes on to
  later steps and is not logged with the layer;
- a unit an experiment's coverage leaves out is not logged either (coverage is
  a hash bucket, so its share is known: ``coverage_bp``);
- how many units an experiment's targeting lets in depends on the traffic's
  context, which no config knows.

So the test counts the holdout against the units of the layer's experiments
without targeting only, expecting ``holdout_bp`` to the sum of their ranges
times their coverage, and only over the time all of them were logging (an
experiment added later did not log its range before it started). Units are
counted by their presence in that window, not by their first exposure: a
returning unit of a range that was not logged before is no new unit of it.
When no experiment qualifies the test is not run, and the reason says why: no
alarm is better than a false one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from rollout.experiments.analysis import (
    MICROS,
    Exposures,
    OutcomeRows,
    analyze,
    decide,
    srm_from_counts,
)
from rollout.experiments.kernels import NUMPY_KERNELS, AnalysisKernels
from rollout.experiments.results import ExperimentAnalysis, Frozen, Num, SrmCheck
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec, LayerSpec
from serving.kernel.ids import BUCKETS

HOLDOUT, SHIPPED = 0, 1  # the groups' indices (the holdout is the control)
# The sample-ratio check's error code when the layer's logging gives no split
# to expect (see the module's docstring).
SRM_NOT_TESTED = "not_tested"


class HoldoutSrmScope(Frozen):
    """What the holdout's sample-ratio test counted, or why it was not run.

    ``experiments``: the layer's experiments whose units it counted (those
    without targeting); ``expected_holdout_share``: the holdout's expected share
    of the counted units; ``window_start``/``window_end``: the time over which
    every counted experiment was logging."""

    tested: bool
    reason: str
    experiments: tuple[str, ...] = ()
    expected_holdout_share: Num = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None


class HoldoutSummary(Frozen):
    """The layer and its holdout, beside the comparison's figures.
    ``experiments``: those whose decisions are in the shipped group;
    ``unplaced_rows``: holdout decisions a rollout relabelled that could not be
    told to be this layer's (``warning`` says so), left out."""

    layer_id: str
    holdout_bp: int
    holdout_share: float
    experiments: tuple[str, ...]
    srm_scope: HoldoutSrmScope
    unplaced_rows: int = 0
    warning: str | None = None


class HoldoutAnalysis(Frozen):
    """``rampart analyze --holdout``'s result: the layer (``holdout``) and the
    analysis of shipped against holdout, an experiment's analysis in every
    figure (its arms ``holdout`` and ``shipped``)."""

    holdout: HoldoutSummary
    analysis: ExperimentAnalysis

    def to_json(self) -> dict[str, Any]:
        """An experiment's JSON document with the ``holdout`` object added."""
        body = self.analysis.to_json()
        body["holdout"] = self.holdout.model_dump(mode="json")
        return body


def _time(at_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at_us / MICROS, tz=dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def holdout_srm(layer: LayerSpec, configured: Sequence[ExperimentSpec],
                logged: Sequence[str], row_unit: NDArray[np.int64],
                row_group: NDArray[np.int64], row_experiment: NDArray[np.int64],
                row_at: NDArray[np.int64]) -> tuple[SrmCheck, HoldoutSrmScope]:
    """The holdout's sample-ratio test (see the module's docstring) over the
    layer's decision rows: ``row_experiment`` indexes ``logged`` (-1: none);
    ``configured`` are the config's experiments. The check, and its scope."""
    ours = [e for e in configured if e.layer == layer.id and e.layer_buckets is not None]
    targeted = [e.id for e in ours if e.targeting]
    counted = [e for e in ours if not e.targeting and e.coverage_bp > 0 and e.id in logged]
    if not counted:
        why = ("every experiment of the layer has targeting: how many of its units are "
               f"eligible depends on the traffic ({', '.join(targeted)})" if targeted else
               "no experiment of the layer without targeting has decisions in the log")
        return _not_tested(f"sample ratio not tested: {why}, so no split of the logged "
                           "units can be expected")
    firsts, lasts = [], []
    for exp in counted:
        at = row_at[row_experiment == logged.index(exp.id)]
        firsts.append(int(at.min()))
        lasts.append(int(at.max()))
    start, end = max(firsts), min(lasts)
    names = [e.id for e in counted]
    if start > end:
        return _not_tested(f"sample ratio not tested: the experiments {names} never logged "
                           "at the same time")
    codes = np.flatnonzero(np.isin(np.asarray(logged, dtype=object), names))
    kept = (row_at >= start) & (row_at <= end) & (
        (row_group == HOLDOUT) | np.isin(row_experiment, codes))
    counts = _units_by_first_group(row_unit[kept], row_group[kept], row_at[kept])
    shipped_bp = sum((e.layer_buckets[1] - e.layer_buckets[0]) * e.coverage_bp / BUCKETS
                     for e in counted if e.layer_buckets is not None)
    weights = (float(layer.holdout_bp), float(shipped_bp))
    srm = srm_from_counts(("holdout", "shipped"), weights, {None: (counts, start)})
    share = weights[0] / (weights[0] + weights[1])
    left_out = (f"; units of the experiments with targeting ({', '.join(targeted)}) are in "
                "the effects, not in this test" if targeted else "")
    reason = (f"sample ratio counted over {_iso(_time(start))} to {_iso(_time(end))}, while "
              f"{', '.join(names)} logged: the holdout's {layer.holdout_bp} buckets against "
              f"their {shipped_bp:g} (ranges times coverage), an expected holdout share of "
              f"{share:.2%}{left_out}")
    return srm, HoldoutSrmScope(tested=True, reason=reason, experiments=tuple(names),
                                expected_holdout_share=share, window_start=_time(start),
                                window_end=_time(end))


def _not_tested(reason: str) -> tuple[SrmCheck, HoldoutSrmScope]:
    return SrmCheck(error=SRM_NOT_TESTED), HoldoutSrmScope(tested=False, reason=reason)


def _units_by_first_group(unit: NDArray[np.int64], group: NDArray[np.int64],
                          at: NDArray[np.int64]) -> tuple[int, int]:
    """Distinct units per group, each in the group of its earliest row."""
    order = np.lexsort((group, at))
    _, first = np.unique(unit[order], return_index=True)
    counts = np.bincount(group[order][first], minlength=2)
    return int(counts[HOLDOUT]), int(counts[SHIPPED])


def analyze_holdout(layer: LayerSpec, configured: Sequence[ExperimentSpec],
                    plan: AnalysisPlan, exposures: Exposures, outcomes: OutcomeRows,
                    as_of: dt.datetime, *, logged: Sequence[str],
                    row_unit: NDArray[np.int64], row_group: NDArray[np.int64],
                    row_experiment: NDArray[np.int64], row_at: NDArray[np.int64],
                    unplaced_rows: int = 0, exploratory_segments: Sequence[str] = (),
                    timeline_points: int = 0,
                    kernels: AnalysisKernels = NUMPY_KERNELS) -> HoldoutAnalysis:
    """Shipped against holdout by ``plan``: the experiment analysis of the two
    groups, with the holdout's own sample-ratio test (:func:`holdout_srm`)
    and the decision made with it, its scope the first reason."""
    analysis = analyze(f"holdout:{layer.id}", plan, exposures, outcomes, as_of,
                       exploratory_segments=exploratory_segments,
                       timeline_points=timeline_points, kernels=kernels)
    srm, scope = holdout_srm(layer, configured, logged, row_unit, row_group, row_experiment,
                             row_at)
    decision = decide(plan, srm, analysis.metrics, analysis.guardrails)
    decision = decision.model_copy(update={"reasons": (scope.reason, *decision.reasons)})
    warning = (f"{unplaced_rows} holdout decisions served through a rollout may be this "
               "layer's but are left out: a layer routed before it holds out by another "
               "unit type, which the decision log does not record" if unplaced_rows else None)
    summary = HoldoutSummary(layer_id=layer.id, holdout_bp=layer.holdout_bp,
                             holdout_share=layer.holdout_bp / BUCKETS,
                             experiments=tuple(logged), srm_scope=scope,
                             unplaced_rows=unplaced_rows, warning=warning)
    return HoldoutAnalysis(holdout=summary, analysis=analysis.model_copy(
        update={"srm": srm, "decision": decision}))
