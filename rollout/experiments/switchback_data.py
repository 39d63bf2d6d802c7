"""Reading a switchback experiment's logs into window cells
(:class:`~rollout.experiments.stats.switchback.SwitchbackCells`).

Decisions give the requests: each in the window of its logged timestamp (the
clock reading the gateway routed it by, so the window is the one that chose
its arm) and in the region its context names. Outcome events fall in the
window of their own timestamp and in the region of their unit's latest
decision (the events carry no context). The metric of a cell is a metric's
event values per request (a ratio metric's numerator): a window has requests,
not users. Every metric of the plan gets cells of the same windows, regions,
arms and burn-in, from one reading of the logs.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollout.experiments.data import (
    AnalysisInputError,
    LogPlace,
    _kept,
    _metric_codes,
    _micros,
    _read_decisions,
    _read_outcomes,
    decision_rows,
)
from rollout.experiments.stats.switchback import SwitchbackCells, switchback_cells
from rollout.experiments.switchback import SwitchbackMetricCells
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec
from serving.routing.assignment import allocate
from serving.routing.switchback import window_arm_buckets

NO_REGION = "(missing)"


def load_switchback_cells(decisions: LogPlace, outcomes: LogPlace, experiment: ExperimentSpec,
                          metric: str, as_of: dt.datetime, skip_bad_files: bool = False
                          ) -> SwitchbackCells:
    """The window cells of ``experiment`` (a switchback one) for ``metric``,
    from the decisions and outcome events known by ``as_of``."""
    return load_switchback_cells_by_metric(decisions, outcomes, experiment, (metric,), as_of,
                                           skip_bad_files)[metric]


def load_switchback_cells_by_metric(decisions: LogPlace, outcomes: LogPlace,
                                    experiment: ExperimentSpec, metrics: tuple[str, ...],
                                    as_of: dt.datetime, skip_bad_files: bool = False
                                    ) -> dict[str, SwitchbackCells]:
    """:func:`load_switchback_cells` for each of ``metrics`` (outcome metric
    names), the logs read once."""
    design = experiment.switchback
    if design is None:
        raise AnalysisInputError(f"experiment {experiment.id!r} is not a switchback experiment")
    region_key = design.region
    read = _read_decisions(decisions, experiment, as_of, (region_key,) if region_key else (),
                           skip_bad_files)
    rows = decision_rows(read.table, experiment)
    table = rows.table
    if region_key is not None and table.num_rows:
        # A request without the region was not routed by the experiment, so a
        # row lacking it is not expected; it gets a region of its own, not dropped.
        regions_column = pc.fill_null(pc.map_lookup(table["context"], region_key, "first"),
                                      NO_REGION).combine_chunks().dictionary_encode()
        decision_region = np.asarray(regions_column.indices.to_numpy(zero_copy_only=False),
                                     dtype=np.int64)
        regions = tuple(str(v) for v in regions_column.dictionary.to_pylist())
    else:
        decision_region = np.zeros(table.num_rows, dtype=np.int64)
        regions = ("",)

    events = _read_outcomes(outcomes, metrics, experiment.id, as_of, skip_bad_files).table
    codes = np.asarray(_metric_codes(events, metrics), dtype=np.int64)
    keep = codes >= 0
    events = events.filter(pa.array(keep))
    codes = codes[keep]
    # each unit's region: the one of its latest decision
    units = table["unit_id"].combine_chunks() if table.num_rows else pa.array([], pa.string())
    latest = pa.table({"unit_id": units, "at": pa.array(rows.at),
                       "region": pa.array(decision_region)}).sort_by(
        [("unit_id", "ascending"), ("at", "descending")])
    first_of_unit = np.ones(latest.num_rows, dtype=bool)
    if latest.num_rows > 1:
        ids = latest["unit_id"]
        first_of_unit[1:] = pc.not_equal(ids.slice(1), ids.slice(0, latest.num_rows - 1)
                                         ).to_numpy(zero_copy_only=False)
    unit_regions = latest.filter(pa.array(first_of_unit))
    position = np.asarray(pc.fill_null(pc.index_in(events["unit_id"],
                                                   value_set=unit_regions["unit_id"]), -1
                                       ).to_numpy(zero_copy_only=False), dtype=np.int64)
    matched = position >= 0
    region_of_unit = np.asarray(unit_regions["region"].to_numpy(), dtype=np.int64)
    event_region = region_of_unit[position[matched]]
    event_at = _micros(events["timestamp"])[matched] if events.num_rows else np.zeros(
        0, dtype=np.int64)
    event_value = _kept(events["value"], matched, np.float64) if events.num_rows else np.zeros(
        0, dtype=np.float64)
    event_metric = codes[matched]

    allocation = allocate([a.name for a in experiment.arms], [a.weight_bp for a in experiment.arms])

    def arm_of(windows: np.ndarray, region_codes: np.ndarray) -> np.ndarray:
        labels = (None if region_key is None else
                  np.asarray(regions, dtype=object)[region_codes])
        return allocation.arms_of(window_arm_buckets(experiment.salt, windows, labels))

    def cells_of(code: int) -> SwitchbackCells:
        mine = event_metric == code
        return switchback_cells(design.window_s, design.burn_in_s, rows.at, decision_region,
                                rows.arm, event_at[mine], event_region[mine], event_value[mine],
                                regions, arm_of, region_key)

    return {name: cells_of(code) for code, name in enumerate(metrics)}


def switchback_metric_names(plan: AnalysisPlan) -> tuple[str, ...]:
    """The outcome metrics a switchback analysis of ``plan`` cuts into cells:
    every metric's name (a ratio's numerator; its denominator is not read)."""
    specs = (plan.primary, *plan.secondary, *plan.guardrails)
    return tuple(dict.fromkeys(spec.name for spec in specs))


def switchback_cells_of(experiment: ExperimentSpec, paths: tuple[LogPlace, LogPlace],
                        plan: AnalysisPlan, as_of: dt.datetime, skip_bad_files: bool = False
                        ) -> SwitchbackMetricCells | None:
    """The window cells of every metric of ``plan``
    (:func:`load_switchback_cells_by_metric`) for a switchback experiment;
    None for any other."""
    if experiment.switchback is None:
        return None
    return load_switchback_cells_by_metric(*paths, experiment, switchback_metric_names(plan),
                                           as_of, skip_bad_files)
