"""The bandit controller's I/O shell around the pure bandit core.

For every experiment of the config with ``bandit:`` set, :class:`BanditService`
keeps a :class:`~rollout.core.bandits.state.BanditState` and, every
``interval_s``:

1. reads the experiment's decisions and the reward metric's outcomes
   (:func:`settle_rewards`) and turns the exposures whose attribution window
   closed since the last update into per-arm sufficient statistics;
2. judges each arm's latency and error guardrails on the decisions since the
   last update (:func:`guardrail_failures`, with
   :func:`rollout.core.guardrails.evaluate`), and adds the arms an operator or
   an external check named; a failed arm is removed for the rest of the run,
   whatever its reward;
3. calls the pure :func:`~rollout.core.bandits.state.step`;
4. stores the new state and the update's audit record (weights before and
   after, posterior summaries, exposures settled, guardrail figures) in one
   transaction, in the rollout store's database (tables of their own,
   :class:`BanditStore`);
5. publishes the new bucket ranges through the rollout service's publication
   path (``RolloutService.publish_bandit_allocations``), which every running
   gateway long-polls.

Reward attribution
------------------
An *exposure* is a unit's first decision on an arm of the experiment (served,
not forced; role ``primary``). It is one trial of that arm. Its reward comes
from the unit's outcomes of the reward metric (rows naming no experiment or
this one) timed within ``window_s`` after it; an outcome goes to the unit's
latest exposure at or before its time, so a unit whose arm's range shrank
and that was moved to another arm earns for the new arm from then on.
Binary: the trial succeeds when any such outcome is positive. Continuous:
its reward is their sum (0 without any).

No double counting: an update at ``now`` settles exactly the exposures timed
in ``(cutoff_prev, now − window_s]`` — those whose window closed since the
previous update — and stores ``now − window_s`` as the new cutoff with the
state, in the same transaction. Each exposure is therefore merged into the
statistics once, after its whole window is visible. The decisions are re-read
whole each time (first exposures need the unit's history); the statistics
are not recomputed, they accumulate. Outcomes that reach the log after their
exposure was settled are not counted (a window with a margin for late
arrival is the remedy).

A restarted service loads each experiment's stored state and cutoff and
continues: update ``t`` draws its Monte Carlo from ``(seed, t)``, so the
weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.engine import Engine

from rollout.core.bandits.arms import (
    ArmStats,
    BinaryStats,
    GaussianStats,
    InvalidBanditInput,
    posterior,
)
from rollout.core.bandits.contextual import ContextualState, initial_state
from rollout.core.bandits.contextual import update as contextual_update
from rollout.core.bandits.state import (
    BanditConfig,
    BanditState,
    BanditUpdate,
    step,
)
from rollout.core.guardrails import ArmWindow, CheckResult, Window, evaluate
from rollout.core.plan import Guardrails
from rollout.store import RolloutStore
from serving.kernel.bandit import BanditSpec, RewardSpec
from serving.kernel.commands import DEFAULT_AUDIT_RECORDS, BanditArmReport, BanditReport
from serving.kernel.config import ExperimentSpec, RampartConfig
from serving.kernel.errors import BanditNotFound, RampartError, StoreUnavailable
from serving.routing.assignment import Allocation, allocate
from serving.routing.router import ContextualModel, contextual_config
from telemetry.decision_log import read_decisions
from telemetry.metrics import LATENCY_BUCKETS_S
from telemetry.outcomes_log import read_outcomes
from telemetry.verdict import Verdict

log = logging.getLogger(__name__)

US_PER_S = 1_000_000


# ---------------------------------------------------------------------- store

metadata = MetaData()

bandit_states = Table(
    "rampart_bandit_states", metadata,
    Column("experiment_id", String(64), primary_key=True),
    Column("state", Text, nullable=False),
    # Exposures timed at or before this (seconds) are in the statistics; None: none yet.
    Column("cutoff_s", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

bandit_audit = Table(
    "rampart_bandit_audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", String(64), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("update_index", Integer, nullable=False),
    Column("record", Text, nullable=False),
)


bandit_contextual = Table(
    "rampart_bandit_contextual", metadata,
    Column("experiment_id", String(64), primary_key=True),
    # A contextual bandit's per-arm linear statistics (ContextualState JSON).
    Column("state", Text, nullable=False),
)


class StoredBandit(NamedTuple):
    state: BanditState
    cutoff_s: float | None
    contextual: ContextualState | None = None


class BanditStore:
    """Bandit states and their audit trail, in the rollout store's database
    (its engine; tables of their own, so the rollout schema is untouched)."""

    def __init__(self, rollouts: RolloutStore) -> None:
        self._rollouts = rollouts
        self.engine: Engine = rollouts.engine
        with rollouts._reachable("preparing the bandit schema"), self.engine.begin() as conn:
            metadata.create_all(conn)

    def load(self, experiment_id: str) -> StoredBandit | None:
        """The stored state and cutoff, None before the first update. Raises
        :class:`InvalidBanditInput` for a stored state that does not read back."""
        with self._rollouts._reachable("reading a bandit"), self.engine.connect() as conn:
            row = conn.execute(select(bandit_states.c.state, bandit_states.c.cutoff_s)
                               .where(bandit_states.c.experiment_id == experiment_id)).first()
            linear = conn.execute(select(bandit_contextual.c.state).where(
                bandit_contextual.c.experiment_id == experiment_id)).first()
        if row is None:
            return None
        return StoredBandit(BanditState.from_json(row[0]), row[1],
                            None if linear is None else ContextualState.from_json(linear[0]))

    def save(self, experiment_id: str, state: BanditState, cutoff_s: float | None,
             record: Mapping[str, Any], contextual: ContextualState | None = None) -> None:
        """Write the state, its cutoff and the update's audit record atomically:
        a controller killed at any moment restarts from a state and a trail
        that agree, and never settles an exposure twice."""
        values = {"state": state.to_json(), "cutoff_s": cutoff_s,
                  "updated_at": state.last_update_at or 0.0}
        with self._rollouts._reachable("saving a bandit"), self.engine.begin() as conn:
            changed = conn.execute(update(bandit_states)
                                   .where(bandit_states.c.experiment_id == experiment_id)
                                   .values(**values)).rowcount
            if not changed:
                conn.execute(insert(bandit_states).values(experiment_id=experiment_id, **values))
            if contextual is not None:
                text = contextual.to_json()
                if not conn.execute(update(bandit_contextual)
                                    .where(bandit_contextual.c.experiment_id == experiment_id)
                                    .values(state=text)).rowcount:
                    conn.execute(insert(bandit_contextual).values(
                        experiment_id=experiment_id, state=text))
            conn.execute(insert(bandit_audit).values(
                experiment_id=experiment_id, at=float(record["at"]),
                update_index=int(record["update_index"]),
                record=json.dumps(record, default=str)))

    def audit_trail(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every update's audit record, oldest first."""
        with self._rollouts._reachable("reading a bandit audit trail"), \
                self.engine.connect() as conn:
            rows = conn.execute(select(bandit_audit.c.record)
                                .where(bandit_audit.c.experiment_id == experiment_id)
                                .order_by(bandit_audit.c.seq)).all()
        return [json.loads(r[0]) for r in rows]


# ---------------------------------------------------------------------- rewards

@dataclass(frozen=True, slots=True)
class SettledRewards:
    """The rewards of the exposures settled by one update: per-arm statistics
    (only arms with a settled exposure), the exposure count per arm, and the
    cutoff (seconds) through which exposures are now settled."""

    stats: Mapping[str, ArmStats]
    exposures: Mapping[str, int]
    cutoff_s: float
    # Each settled exposure (columns unit_id, arm, ts_us, reward), for the
    # contextual bandits' per-exposure fits.
    rows: pd.DataFrame | None = None


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray[Any, np.dtype[np.int64]]:
    """A timestamp column as microseconds since the epoch."""
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def exposures_of(decisions: pa.Table, experiment_id: str, arms: Sequence[str]
                 ) -> pd.DataFrame:
    """The experiment's exposures: each unit's first decision on each arm.

    Returns a frame with columns ``unit_id``, ``arm``, ``ts_us`` (one row per
    unit and arm, sorted by time). Forced decisions, other roles and rows of
    arms outside ``arms`` (``ineligible``, ``holdout``) are not exposures.
    """
    mask = pc.and_(pc.equal(decisions["experiment_id"], experiment_id),
                   pc.equal(decisions["role"], "primary"))
    mask = pc.and_(mask, pc.invert(pc.fill_null(decisions["forced"], False)))
    mask = pc.and_(mask, pc.is_in(decisions["arm"], value_set=pa.array(list(arms))))
    mask = pc.and_(mask, pc.is_valid(decisions["unit_id"]))
    rows = decisions.filter(pc.fill_null(mask, False))
    frame = pd.DataFrame({
        "unit_id": rows["unit_id"].to_numpy(zero_copy_only=False),
        "arm": rows["arm"].to_numpy(zero_copy_only=False),
        "ts_us": _micros(rows["timestamp"]),
    })
    first = frame.groupby(["unit_id", "arm"], sort=False, as_index=False)["ts_us"].min()
    return first.sort_values(["ts_us", "unit_id", "arm"], kind="stable").reset_index(drop=True)


def settle_rewards(decisions: pa.Table, outcomes: pa.Table, *, experiment_id: str,
                   arms: Sequence[str], reward: RewardSpec, after_s: float | None,
                   now: float) -> SettledRewards:
    """The rewards of the exposures whose attribution window closed in
    ``(after_s + window, now]``, i.e. exposures timed in
    ``(after_s, now − window_s]`` (see the module docstring for the rules).

    Returns per-arm statistics of ``reward.type`` and the new cutoff
    ``now − window_s``; arms without a settled exposure are left out.
    """
    window_us = round(reward.window_s * US_PER_S)
    cutoff_s = now - reward.window_s
    cutoff_us = math.floor(cutoff_s * US_PER_S)
    after_us = None if after_s is None else math.floor(after_s * US_PER_S)
    exposures = exposures_of(decisions, experiment_id, arms)
    settle = exposures["ts_us"] <= cutoff_us
    if after_us is not None:
        settle &= exposures["ts_us"] > after_us
    exposures = exposures.assign(exposure=np.arange(len(exposures)))
    settled = exposures[settle.to_numpy()]
    if settled.empty:
        return SettledRewards({}, {}, cutoff_s, settled.assign(reward=[]))
    # the metric's outcomes of the settled units, for this experiment or none named
    units = pa.array(settled["unit_id"].unique(), type=pa.string())
    keep = pc.and_(pc.equal(outcomes["metric"], reward.metric),
                   pc.is_in(outcomes["unit_id"], value_set=units))
    keep = pc.and_(keep, pc.or_kleene(pc.is_null(outcomes["experiment_id"]),
                                pc.equal(outcomes["experiment_id"], experiment_id)))
    rows = outcomes.filter(pc.fill_null(keep, False))
    values = np.zeros(len(exposures), dtype=np.float64)
    hit = np.zeros(len(exposures), dtype=bool)
    if rows.num_rows:
        found = pd.DataFrame({
            "unit_id": rows["unit_id"].to_numpy(zero_copy_only=False),
            "at_us": _micros(rows["timestamp"]),
            "value": rows["value"].to_numpy(zero_copy_only=False).astype(np.float64),
        }).sort_values("at_us", kind="stable")
        # Each outcome to the unit's latest exposure at or before it (any arm,
        # settled or not: a later exposure takes the outcomes after it).
        joined = pd.merge_asof(found, exposures.sort_values("ts_us", kind="stable"),
                               left_on="at_us", right_on="ts_us", by="unit_id",
                               direction="backward")
        joined = joined[joined["exposure"].notna()]
        joined = joined[(joined["at_us"] - joined["ts_us"]) <= window_us]
        index = joined["exposure"].to_numpy().astype(np.int64)
        np.add.at(values, index, joined["value"].to_numpy())
        np.logical_or.at(hit, index, joined["value"].to_numpy() > 0)
    stats: dict[str, ArmStats] = {}
    counts: dict[str, int] = {}
    chosen = settled["exposure"].to_numpy()
    arm_of = settled["arm"].to_numpy()
    for arm in arms:
        rows_of = chosen[arm_of == arm]
        if rows_of.size == 0:
            continue
        counts[arm] = int(rows_of.size)
        if reward.type == "binary":
            stats[arm] = BinaryStats(int(hit[rows_of].sum()), int(rows_of.size))
        else:
            y = values[rows_of]
            stats[arm] = GaussianStats(int(y.size), float(y.sum()), float((y * y).sum()))
    reward_of = (hit.astype(np.float64) if reward.type == "binary" else values)[chosen]
    rows_out = settled[["unit_id", "arm", "ts_us"]].assign(reward=reward_of)
    return SettledRewards(stats, counts, cutoff_s, rows_out.reset_index(drop=True))


def _context_numbers(values: pa.Array) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Logged context values (the log keeps them as strings) as numbers, read as
    the router reads a request's: absent is 0, ``true``/``false`` are 1/0, any
    other text must be a finite number. Returns the numbers and which read."""
    text = pd.Series(values.to_pandas(), dtype=object)
    absent = text.isna().to_numpy()
    lowered = text.fillna("").str.strip().str.lower()
    numbers = pd.to_numeric(lowered.mask(lowered.isin(("true", "false"))), errors="coerce")
    out = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    out[(lowered == "true").to_numpy()] = 1.0
    out[(lowered == "false").to_numpy()] = 0.0
    out[absent] = 0.0
    ok = np.isfinite(out)
    return np.where(ok, out, 0.0), ok


def exposure_contexts(decisions: pa.Table, exposures: pd.DataFrame, experiment_id: str,
                      attributes: Sequence[str]) -> tuple[np.ndarray[Any, Any],
                                                          np.ndarray[Any, Any]]:
    """The context vectors ``[1, attributes...]`` of ``exposures`` (rows with
    ``unit_id``, ``arm``, ``ts_us``) from their decisions' logged context, and
    a mask of the rows whose context read as numbers (the router refused the
    others, so such a row can only come from a context it did not check)."""
    n = len(exposures)
    vectors = np.zeros((n, 1 + len(attributes)))
    vectors[:, 0] = 1.0
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return vectors, ok
    mask = pc.and_(pc.equal(decisions["experiment_id"], experiment_id),
                   pc.equal(decisions["role"], "primary"))
    mask = pc.and_(mask, pc.is_in(decisions["unit_id"],
                                  value_set=pa.array(exposures["unit_id"].unique(), pa.string())))
    rows = decisions.filter(pc.fill_null(mask, False))
    logged = pd.DataFrame({
        "unit_id": rows["unit_id"].to_numpy(zero_copy_only=False),
        "arm": rows["arm"].to_numpy(zero_copy_only=False),
        "ts_us": _micros(rows["timestamp"]),
        "row": np.arange(rows.num_rows),
    }).drop_duplicates(["unit_id", "arm", "ts_us"])
    joined = exposures[["unit_id", "arm", "ts_us"]].merge(
        logged, on=["unit_id", "arm", "ts_us"], how="left")
    found = joined["row"].notna().to_numpy()
    # An exposure without its logged context reads as the router reads a
    # request without one: every attribute absent, so 0.
    ok[:] = True
    if not found.any():
        return vectors, ok
    contexts = rows["context"].combine_chunks().take(
        pa.array(joined["row"].to_numpy()[found].astype(np.int64)))
    for column, name in enumerate(attributes, start=1):
        numbers, read = _context_numbers(pc.map_lookup(contexts, pa.scalar(name), "first"))
        vectors[found, column] = numbers
        ok[found] &= read
    vectors[~ok, 1:] = 0.0
    return vectors, ok


def arm_windows(decisions: pa.Table, experiment_id: str, arms: Sequence[str],
                since_s: float | None, until_s: float) -> dict[str, ArmWindow]:
    """Per arm, the request and error counts and the latency histogram of its
    decisions timed in ``(since_s, until_s]`` (every served one, forced
    included: a guardrail is about the version, not the analysis)."""
    mask = pc.and_(pc.equal(decisions["experiment_id"], experiment_id),
                   pc.equal(decisions["role"], "primary"))
    rows = decisions.filter(pc.fill_null(mask, False))
    ts = _micros(rows["timestamp"])
    arm_col = np.asarray(rows["arm"].to_numpy(zero_copy_only=False), dtype=object)
    status = np.asarray(rows["status"].to_numpy(zero_copy_only=False), dtype=object)
    latency_s = np.nan_to_num(
        rows["latency_ms"].to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0) / 1000.0
    in_window = ts <= math.floor(until_s * US_PER_S)
    if since_s is not None:
        in_window &= ts > math.floor(since_s * US_PER_S)
    bounds = (*LATENCY_BUCKETS_S, math.inf)
    out: dict[str, ArmWindow] = {}
    for arm in arms:
        sel = in_window & (arm_col == arm)
        lat = latency_s[sel]
        out[arm] = ArmWindow(
            requests=int(sel.sum()), errors=int((status[sel] != "ok").sum()),
            buckets=tuple((float(b), float((lat <= b).sum())) for b in bounds))
    return out


def guardrail_limits(spec: BanditSpec) -> Guardrails | None:
    """A bandit's configured guardrails as the rollout checks take them."""
    if spec.guardrails is None:
        return None
    return Guardrails(**spec.guardrails.model_dump())


def guardrail_failures(windows: Mapping[str, ArmWindow], active: Sequence[str],
                       guardrails: Guardrails
                       ) -> tuple[tuple[str, ...], dict[str, list[dict[str, Any]]]]:
    """The active arms whose latency or error guardrail fails, and every
    arm's check results (for the audit trail).

    Each arm is judged as the candidate against the pooled other active arms
    as the baseline, so the control is judged like the rest. A check short of
    ``min_check_requests`` cannot judge (insufficient data), which removes no
    arm; with a single active arm there is nothing to compare against.
    """
    failed: list[str] = []
    figures: dict[str, list[dict[str, Any]]] = {}
    if len(active) < 2:
        return (), figures
    for arm in active:
        others = [windows[a] for a in active if a != arm]
        baseline = others[0]
        for extra in others[1:]:
            baseline = baseline + extra
        verdict, results = evaluate(guardrails, Window(baseline=baseline,
                                                       candidate=windows[arm]))
        figures[arm] = [_check_json(r) for r in results]
        if verdict == Verdict.FAIL:
            failed.append(arm)
    return tuple(failed), figures


def _check_json(result: CheckResult) -> dict[str, Any]:
    return {"name": result.name, "verdict": result.verdict.value, "observed": result.observed,
            "threshold": result.threshold, "detail": result.detail}


# ---------------------------------------------------------------------- service

def bandit_config(experiment: ExperimentSpec, spec: BanditSpec) -> BanditConfig:
    """The pure core's config of a bandit experiment: its arms in config order,
    its policy with the bandit's floor, its seed."""
    return BanditConfig(arms=tuple(a.name for a in experiment.arms),
                        policy=spec.effective_policy(), seed=spec.seed)


def starting_state(experiment: ExperimentSpec, spec: BanditSpec) -> BanditState:
    """The state before the first update: empty statistics and the config's
    weights, laid out as the plain config lays them out, so a bandit moves
    no unit until its first update."""
    names = tuple(a.name for a in experiment.arms)
    weights = tuple(a.weight_bp for a in experiment.arms)
    empty: ArmStats = BinaryStats() if spec.reward.type == "binary" else GaussianStats()
    return BanditState(names, tuple(empty for _ in names), weights, allocate(names, weights))


def update_record(update_: BanditUpdate, settled: SettledRewards, cutoff_before: float | None,
                  failing: Collection[str], guardrail_checks: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The audit record of one update: the core's record (weights before and
    after, per-arm posterior summaries, buckets moved, arms newly removed) and
    what it was computed from (exposures settled, the cutoffs, guardrails)."""
    record = dataclasses.asdict(update_)
    record.update({
        "exposures_settled": dict(settled.exposures),
        "cutoff_before_s": cutoff_before,
        "cutoff_s": settled.cutoff_s,
        "guardrail_failed": sorted(failing),
        "guardrail_checks": dict(guardrail_checks),
    })
    return record


@dataclass(frozen=True, slots=True)
class BanditArmStatus:
    """One arm now: its weight, rewards seen, posterior mean and 95% interval."""

    arm: str
    weight_bp: int
    n: int
    mean: float
    ci_low: float
    ci_high: float
    prob_best: float | None
    removed: bool


@dataclass(frozen=True, slots=True)
class BanditStatus:
    """A bandit experiment now: its updates so far, when the last was, and its arms."""

    experiment_id: str
    updates: int
    last_update_at: float | None
    arms: tuple[BanditArmStatus, ...]


@dataclass
class BanditService:
    """Runs every bandit experiment of ``config``; see the module docstring.

    ``publish`` routes by new ranges (``RolloutService.publish_bandit_allocations``);
    ``decisions``/``outcomes`` read the logs (the configured ones by default);
    Each bandit's arms are held to its config's ``guardrails``
    (:func:`guardrail_limits`; none when it sets them to null); ``failing``
    arms given to :meth:`update` count as failed either way.
    """

    config: RampartConfig
    store: BanditStore
    publish: Callable[[Mapping[str, Allocation], Mapping[str, ContextualModel]], Any]
    clock: Callable[[], float] = time.time
    decisions: Callable[[], pa.Table] | None = None
    outcomes: Callable[[], pa.Table] | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _states: dict[str, BanditState] = field(default_factory=dict)
    _cutoffs: dict[str, float | None] = field(default_factory=dict)
    _contextual: dict[str, ContextualState] = field(default_factory=dict)
    _started_at: float = 0.0

    def __post_init__(self) -> None:
        # A restarted controller continues every bandit from its stored state
        # and publishes its ranges before anything else moves.
        self._started_at = self.clock()
        for exp, spec in self._bandits():
            stored = self.store.load(exp.id)
            if spec.contextual is not None:
                self._contextual[exp.id] = (
                    stored.contextual if stored is not None and stored.contextual is not None
                    else initial_state(contextual_config(exp)))
            if stored is None:
                self._states[exp.id] = starting_state(exp, spec)
                self._cutoffs[exp.id] = None
                continue
            if stored.state.arms != tuple(a.name for a in exp.arms):
                raise InvalidBanditInput(
                    f"bandit {exp.id!r}: the stored state's arms {list(stored.state.arms)} "
                    f"differ from the config's; a bandit's arms cannot change mid-run")
            self._states[exp.id] = stored.state
            self._cutoffs[exp.id] = stored.cutoff_s
        if self._states:
            self.publish({k: s.allocation for k, s in self._states.items()},
                         self._contextual_models())

    def _contextual_models(self, only: str | None = None) -> dict[str, ContextualModel]:
        """The contextual bandits' models as routing takes them (one, or all)."""
        return {k: ContextualModel(linear, self._states[k].removed)
                for k, linear in self._contextual.items() if only in (None, k)}

    def _bandits(self) -> list[tuple[ExperimentSpec, BanditSpec]]:
        return [(e, e.bandit) for e in self.config.experiments if e.bandit is not None]

    def _bandit(self, experiment_id: str) -> tuple[ExperimentSpec, BanditSpec]:
        for exp, spec in self._bandits():
            if exp.id == experiment_id:
                return exp, spec
        raise BanditNotFound(f"no bandit experiment {experiment_id!r}")

    def _read_decisions(self) -> pa.Table:
        return (self.decisions() if self.decisions is not None
                else read_decisions(self.config.decision_log.path))

    def _read_outcomes(self) -> pa.Table:
        return (self.outcomes() if self.outcomes is not None
                else read_outcomes(self.config.outcomes_log.path))

    def state(self, experiment_id: str) -> BanditState:
        """The bandit's current state."""
        self._bandit(experiment_id)
        with self._lock:
            return self._states[experiment_id]

    def allocations(self) -> dict[str, Allocation]:
        """Every bandit's current ranges, by experiment id."""
        with self._lock:
            return {k: s.allocation for k, s in self._states.items()}

    def next_due_in(self) -> float:
        """Seconds until the next bandit update is due (1 s without bandits)."""
        now = self.clock()
        with self._lock:
            due = [(s.last_update_at or self._started_at) + spec.interval_s - now
                   for exp, spec in self._bandits()
                   for s in (self._states[exp.id],)]
        return max(0.0, min(due)) if due else 1.0

    def tick(self) -> list[BanditUpdate]:
        """Update every bandit whose interval has passed since its last update
        (or since this service started); returns the updates made. A bandit
        whose logs or store cannot be read is skipped (logged) and tried at
        the next tick; nothing it stored changes."""
        now = self.clock()
        done: list[BanditUpdate] = []
        for exp, spec in self._bandits():
            with self._lock:
                last = self._states[exp.id].last_update_at
            if now - (last if last is not None else self._started_at) < spec.interval_s:
                continue
            try:
                done.append(self.update(exp.id))
            except (StoreUnavailable, OSError) as exc:
                log.warning("bandit %s not updated: %s", exp.id, exc)
            except RampartError as exc:
                log.warning("bandit %s not updated: %s", exp.id, exc)
        return done

    def update(self, experiment_id: str, failing: Collection[str] = ()) -> BanditUpdate:
        """One update of the bandit now: settle rewards, judge guardrails,
        step, store, publish. ``failing`` names arms an outside check failed
        (removed like a failed built-in guardrail). Returns the audit record's
        core part; raises :class:`BanditNotFound` for an unknown experiment,
        :class:`InvalidBanditInput` for unknown arms, :class:`StoreUnavailable`
        when the state cannot be stored (nothing changes then)."""
        exp, spec = self._bandit(experiment_id)
        config = bandit_config(exp, spec)
        unknown = set(failing) - set(config.arms)
        if unknown:
            raise InvalidBanditInput(f"bandit {experiment_id!r} has no arms {sorted(unknown)}")
        with self._lock:
            now = self.clock()
            state = self._states[experiment_id]
            cutoff = self._cutoffs[experiment_id]
            decisions = self._read_decisions()
            settled = settle_rewards(decisions, self._read_outcomes(),
                                     experiment_id=experiment_id, arms=config.arms,
                                     reward=spec.reward, after_s=cutoff, now=now)
            checks: dict[str, list[dict[str, Any]]] = {}
            failed = set(failing)
            active = [a for a in config.arms if a not in state.removed]
            limits = guardrail_limits(spec)
            if limits is not None:
                windows = arm_windows(decisions, experiment_id, config.arms,
                                      state.last_update_at, now)
                built_in, checks = guardrail_failures(windows, active, limits)
                failed.update(built_in)
            new_state, record = step(state, settled.stats, sorted(failed), now, config)
            audit = update_record(record, settled, cutoff, failed, checks)
            linear = None
            if spec.contextual is not None:
                linear, audit["contextual"] = self._fit_contextual(
                    exp, decisions, settled, self._contextual[experiment_id])
            self.store.save(experiment_id, new_state, settled.cutoff_s, audit, linear)
            self._states[experiment_id] = new_state
            self._cutoffs[experiment_id] = settled.cutoff_s
            if linear is not None:
                self._contextual[experiment_id] = linear
        try:
            self.publish({experiment_id: new_state.allocation},
                         self._contextual_models(experiment_id))
        except StoreUnavailable as exc:
            # Stored but not routed yet: the next publication of any table
            # (this bandit's next update, a rollout step) carries nothing
            # older than the store, and a restart publishes the stored ranges.
            log.warning("bandit %s updated but not published: %s", experiment_id, exc)
        return record

    def _fit_contextual(self, exp: ExperimentSpec, decisions: pa.Table,
                        settled: SettledRewards, linear: ContextualState
                        ) -> tuple[ContextualState, dict[str, Any]]:
        """The contextual model after the settled exposures (each arm's ridge
        statistics grown by its exposures' context vectors and rewards), and
        the audit's account of it."""
        assert exp.bandit is not None and exp.bandit.contextual is not None
        config = contextual_config(exp)
        rows = settled.rows if settled.rows is not None else pd.DataFrame(
            columns=["unit_id", "arm", "ts_us", "reward"])
        vectors, ok = exposure_contexts(decisions, rows, exp.id, config.attributes)
        arms = rows["arm"].to_numpy()
        rewards = rows["reward"].to_numpy(dtype=np.float64)
        for arm in config.arms:
            sel = ok & (arms == arm)
            if sel.any():
                linear = contextual_update(config, linear, arm, vectors[sel], rewards[sel])
        return linear, {"fitted": {a: int((ok & (arms == a)).sum()) for a in config.arms},
                        "unreadable_contexts": int((~ok).sum()),
                        "rewards_seen": {a: s.n for a, s in zip(linear.arms, linear.linear,
                                                                strict=True)}}

    def describe(self, experiment_id: str,
                 audit_records: int = DEFAULT_AUDIT_RECORDS) -> BanditReport:
        """The bandit now and its last ``audit_records`` updates, as the admin
        API answers them. BanditNotFound for an unknown experiment."""
        status = self.status(experiment_id)
        _exp, spec = self._bandit(experiment_id)
        # A contextual bandit's step still judges guardrails and keeps the
        # posteriors, but its weights route nothing: they are not reported.
        policy = None if spec.contextual is None else spec.contextual.policy
        trail = self.store.audit_trail(experiment_id)[-audit_records:]
        return BanditReport(
            experiment_id=experiment_id, updates=status.updates,
            last_update_at=status.last_update_at, contextual_policy=policy,
            arms=[BanditArmReport(arm=a.arm,
                                  weight_bp=a.weight_bp if policy is None else None,
                                  rewards_seen=a.n,
                                  mean=a.mean, ci_low=a.ci_low, ci_high=a.ci_high,
                                  prob_best=a.prob_best, removed=a.removed)
                  for a in status.arms],
            audit=trail)

    def status(self, experiment_id: str) -> BanditStatus:
        """The bandit's weights and posterior summaries now (probability best
        as of its last update; None before the first)."""
        _exp, spec = self._bandit(experiment_id)
        with self._lock:
            state = self._states[experiment_id]
        last = self.store.audit_trail(experiment_id)[-1:] if state.update_count else []
        prob_best = {a["arm"]: a["prob_best"] for a in last[0]["arms"]} if last else {}
        prior = spec.effective_policy().normal_prior()
        arms = []
        for i, name in enumerate(state.arms):
            post = posterior(state.stats[i], prior)
            lo, hi = post.interval(0.95)
            arms.append(BanditArmStatus(name, state.weights_bp[i], state.stats[i].n, post.mean,
                                        lo, hi, prob_best.get(name), name in state.removed))
        return BanditStatus(experiment_id, state.update_count, state.last_update_at,
                            tuple(arms))
