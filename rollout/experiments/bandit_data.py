"""Reading a bandit run's logs into the per-unit arrays its inverse-propensity
analysis needs (:mod:`rollout.experiments.bandit_report`).

Decisions: the experiment's primary decisions known by ``as_of``, without the
forced ones (QA traffic, not randomized) and without the rows the router logs
for units it does not expose (``ineligible``, ``holdout``), exactly as an
ordinary experiment's analysis reads them (:mod:`rollout.experiments.data`).
Each unit counts once, by its first decision: its arm, the time, and the
logged ``propensity`` (the share of buckets that arm owned when the unit was
routed, i.e. the probability the allocation gave the arm the unit got).

Rewards: the bandit's reward metric, from the outcome events known by
``as_of`` (received by then), that happened within ``window_s`` after the
unit's exposure (``exposure <= event time <= exposure + window_s``). A binary
reward is 1 when any such event has a positive value, else 0; a continuous
reward is the sum of their values. A unit without any event in its window has
reward 0 in both cases: for a continuous metric that reads the metric as an
amount that accrues by events (revenue, items bought), where no event means
none of it; a metric that is a measurement (a latency) is not a bandit reward
this reading supports.

A unit whose window had not closed by ``as_of`` is left out (and counted as
``pending``): its reward is not known yet, and since the policy moves traffic
over time the still-open windows are not spread evenly over the arms, so
counting them at their partial reward would bias the arms the policy favours
lately.

Refused with an :class:`~rollout.experiments.data.AnalysisInputError`: a
first decision with no propensity (null: logged before the column existed or
by an experiment that was not a bandit), or one outside (0, 1].
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from rollout.experiments.data import (
    DECISION_LOG,
    DICTIONARY_COLUMNS,
    AnalysisInputError,
    LogPlace,
    LogSpec,
    _as_of_scalar,
    _kept,
    _metric_codes,
    _or_null,
    _read,
    _read_outcomes,
    decision_rows,
    encode,
    not_forced,
)
from rollout.experiments.exposures import MICROS
from rollout.experiments.results import SkippedFile
from serving.kernel.config import ExperimentSpec
from telemetry.decision_log import DECISION_SCHEMA

PROPENSITY = "propensity"
RewardType = Literal["binary", "continuous"]


def _decision_spec() -> LogSpec:
    """The decision log as the bandit analysis reads it: its declared schema
    with the nullable float64 ``propensity`` column (declared by the writer's
    schema; added here only when that schema lacks it, so files written
    without the column read it as null and are refused by name)."""
    if PROPENSITY in DECISION_SCHEMA.names:
        return DECISION_LOG
    column = pa.field(PROPENSITY, pa.float64())
    return replace(DECISION_LOG, declared=DECISION_LOG.declared.append(column),
                   as_read=DECISION_LOG.as_read.append(column))


@dataclass(frozen=True, eq=False)
class BanditRun:
    """The exposed units of a bandit run whose reward window closed by ``as_of``,
    one entry per unit in the order of their first decision.

    ``arm`` indexes ``arms`` (the config's order; the first is the control),
    ``propensity`` is the logged probability of that arm at the unit's first
    decision, ``exposed_at`` its time in microseconds since the epoch,
    ``reward`` the reward (see the module docstring). ``pending`` counts the
    exposed units left out because their window was still open at ``as_of``.
    """

    experiment_id: str
    arms: tuple[str, ...]
    metric: str
    reward_type: RewardType
    window_s: float
    as_of: dt.datetime
    arm: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64]
    exposed_at: npt.NDArray[np.int64]
    reward: npt.NDArray[np.float64]
    pending: int
    skipped_files: tuple[SkippedFile, ...] = field(default=())

    @property
    def units(self) -> int:
        """Units analysed (exposed, with a closed reward window)."""
        return int(self.arm.size)


def _when(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _first_decisions(unit: npt.NDArray[np.int64], at: npt.NDArray[np.int64]
                     ) -> npt.NDArray[np.int64]:
    """Row index of each unit's first decision (the earliest; among equal times
    the first logged), in the order of those decisions' times."""
    order = np.lexsort((at, unit))  # by unit, then time; stable among ties
    first = np.ones(order.size, dtype=bool)
    first[1:] = unit[order[1:]] != unit[order[:-1]]
    rows = order[first]
    return np.asarray(rows[np.argsort(at[rows], kind="stable")], dtype=np.int64)


def _checked_propensities(values: pa.ChunkedArray, experiment_id: str
                          ) -> npt.NDArray[np.float64]:
    """The propensities of the units' first decisions as float64; an
    AnalysisInputError when one is missing or not a probability."""
    missing = values.null_count
    if missing:
        raise AnalysisInputError(
            f"{missing} of {len(values)} exposed units of bandit experiment "
            f"{experiment_id!r} have no propensity in the decision log (the column is null "
            "or absent: logged before it existed, or while the experiment was not a "
            "bandit); inverse-propensity weighting needs every exposure's propensity")
    p = np.asarray(values.to_numpy(), dtype=np.float64) if len(values) else np.zeros(0)
    bad = ~((p > 0.0) & (p <= 1.0))  # NaN fails both comparisons
    if bad.any():
        first = p[np.flatnonzero(bad)[0]]
        raise AnalysisInputError(
            f"{int(bad.sum())} exposed units of bandit experiment {experiment_id!r} have a "
            f"logged propensity outside (0, 1] (the first: {first}); a propensity is the "
            "share of buckets the unit's arm owned when it was routed")
    return p


def load_bandit_run(decisions: LogPlace, outcomes: LogPlace, experiment: ExperimentSpec,
                    as_of: dt.datetime, skip_bad_files: bool = False) -> BanditRun:
    """The units of ``experiment`` (a bandit one) with their first decision's
    arm and propensity and their reward, from the logs as they stood at
    ``as_of``. AnalysisInputError for an experiment that is not a bandit, a
    missing or bad propensity, or unreadable logs (see :mod:`rollout.experiments.data`)."""
    spec = getattr(experiment, "bandit", None)
    if spec is None:
        raise AnalysisInputError(f"experiment {experiment.id!r} is not a bandit experiment")
    reward = spec.reward
    metric, reward_type, window_s = str(reward.metric), reward.type, float(reward.window_s)
    arms = tuple(a.name for a in experiment.arms)

    read = _read(decisions, _decision_spec(),
                 ["unit_id", "timestamp", *DICTIONARY_COLUMNS, PROPENSITY],
                 (pc.field("experiment_id") == experiment.id)
                 & _or_null("role", pc.field("role") == "primary")
                 & _or_null("timestamp", pc.field("timestamp") <= _as_of_scalar(as_of))
                 & not_forced(), skip_bad_files)
    rows = decision_rows(read.table, experiment)  # ineligible/holdout rows left out
    if rows.table.num_rows == 0:
        raise AnalysisInputError(f"no unit of experiment {experiment.id!r} was exposed by "
                                 f"{_when(as_of)} in the decision log")
    unit_code, unit_dictionary = encode(rows.table["unit_id"])
    first = _first_decisions(unit_code, rows.at)
    exposed_at = rows.at[first]
    window_us = round(window_s * MICROS)
    closed = exposed_at + window_us <= int(as_of.timestamp() * MICROS)
    pending = int((~closed).sum())
    first = first[closed]
    if first.size == 0:
        raise AnalysisInputError(
            f"none of the {pending} units of experiment {experiment.id!r} exposed by "
            f"{_when(as_of)} has a closed reward window ({window_s:g} s after its exposure)")
    propensity = _checked_propensities(rows.table[PROPENSITY].take(pa.array(first)),
                                       experiment.id)
    exposed_at = rows.at[first]
    # position of each analysed unit by its unit code (-1: not analysed)
    slot = np.full(len(unit_dictionary), -1, dtype=np.int64)
    slot[unit_code[first]] = np.arange(first.size)

    events = _read_outcomes(outcomes, (metric,), experiment.id, as_of, skip_bad_files)
    table = events.table
    values = np.zeros(first.size, dtype=np.float64)
    if table.num_rows:
        position = np.asarray(pc.fill_null(pc.index_in(table["unit_id"],
                                                       value_set=unit_dictionary), -1
                                           ).to_numpy(zero_copy_only=False), dtype=np.int64)
        who = np.where(position >= 0, slot[np.maximum(position, 0)], -1)
        keep = (who >= 0) & (np.asarray(_metric_codes(table, (metric,))) == 0)
        who = who[keep]
        happened = _kept(table["timestamp"], keep, np.int64)
        value = _kept(table["value"], keep, np.float64)
        start = exposed_at[who]
        inside = (happened >= start) & (happened <= start + window_us)
        who, value = who[inside], value[inside]
        if reward_type == "binary":
            values = (np.bincount(who, weights=(value > 0.0).astype(np.float64),
                                  minlength=first.size) > 0).astype(np.float64)
        else:
            values = np.bincount(who, weights=value, minlength=first.size).astype(np.float64)
    return BanditRun(experiment.id, arms, metric, reward_type, window_s, as_of,
                     np.asarray(rows.arm[first], dtype=np.int64), propensity, exposed_at,
                     values, pending, (*read.skipped, *events.skipped))
