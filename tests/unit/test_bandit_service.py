"""The bandit controller's shell with a real SQLite store, a real rollout
service publishing its tables, an injected clock and planted, seeded logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rollout.bandit_service import (
    BanditService,
    BanditStore,
    settle_rewards,
)
from rollout.core.bandits.arms import BinaryStats, InvalidBanditInput
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.bandit import RewardSpec
from serving.kernel.config import RampartConfig
from serving.kernel.errors import BanditNotFound
from serving.routing.router import RoutingTable, route_many
from telemetry.decision_log import DECISION_SCHEMA, batch_table
from telemetry.outcomes_log import OutcomeRecord
from telemetry.outcomes_log import records_to_table as outcome_table
from tests.unit.fakes import Clock, NoTraffic, WritableRegistry, make_config
from tests.unit.test_bandit_config import bandit_experiment

pytestmark = pytest.mark.unit

EXP = "bandit-a"
ARMS = ("control", "challenger")
# planted click rates: the challenger is much better
RATES = {"control": 0.05, "challenger": 0.30}
WINDOW_S = 100.0
START = 10_000.0


def bandit_config(**bandit: Any) -> RampartConfig:
    experiment = bandit_experiment()
    experiment["bandit"] = {**experiment["bandit"],
                            "reward": {"metric": "click", "type": "binary",
                                       "window_s": WINDOW_S},
                            "interval_s": 60, "seed": 7, **bandit}
    return make_config(experiments=[experiment])


class Logs:
    """The decision and outcomes logs, grown by :meth:`traffic` as gateways
    routing by the published table would grow them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.decisions: list[pa.Table] = []
        self.outcomes: list[pa.Table] = []

    def read_decisions(self) -> pa.Table:
        return pa.concat_tables(self.decisions) if self.decisions else DECISION_SCHEMA.empty_table()

    def read_outcomes(self) -> pa.Table:
        return pa.concat_tables(self.outcomes) if self.outcomes else outcome_table([])

    def traffic(self, table: RoutingTable, units: list[str], at: float,
                error_rate: dict[str, float] | None = None) -> np.ndarray[Any, Any]:
        """One request per unit at ``at`` .. ``at + 30`` s, routed by ``table``;
        each unit clicks 10 s later with its arm's planted rate. Returns the arms."""
        routed = route_many(table, units)
        arms = routed["arm"]
        n = len(units)
        times = at + self.rng.uniform(0, 30, n)
        errors = np.zeros(n, dtype=bool)
        for arm, rate in (error_rate or {}).items():
            errors |= (arms == arm) & (self.rng.random(n) < rate)
        self.decisions.append(batch_table(n, {
            "request_id": [f"{u}-{at}" for u in units], "unit_id": list(units),
            "unit_type": "user_id", "experiment_id": list(routed["experiment_id"]),
            "layer": list(routed["layer"]), "arm": list(arms), "role": "primary",
            "model_name": list(routed["model_name"]),
            "model_version": list(routed["model_version"]), "timestamp": times,
            "latency_ms": 2.0, "status": ["error" if e else "ok" for e in errors],
            "forced": False}))
        rates = np.array([RATES.get(a, 0.0) for a in arms])
        clicked = self.rng.random(n) < rates
        self.outcomes.append(outcome_table([
            OutcomeRecord(u, "click", 1.0, round((t + 10) * 1e6), None, round((t + 10) * 1e6))
            for u, t, c in zip(units, times, clicked, strict=True) if c]))
        return np.asarray(arms)


class Plant:
    """A rollout service and a bandit service over one SQLite database."""

    def __init__(self, tmp: Path, config: RampartConfig, logs: Logs, clock: Clock) -> None:
        self.store = RolloutStore(f"sqlite:///{tmp / 'rollouts.db'}")
        self.rollouts = RolloutService(config, self.store, WritableRegistry(),
                                       lambda plan: NoTraffic(), clock=clock, notifier=None)
        self.bandits = BanditService(config, BanditStore(self.store),
                                     self.rollouts.publish_bandit_allocations, clock=clock,
                                     decisions=logs.read_decisions, outcomes=logs.read_outcomes)

    @property
    def table(self) -> RoutingTable:
        snapshot = self.rollouts.snapshot()
        assert snapshot is not None
        return snapshot.table


def units(start: int, n: int) -> list[str]:
    return [f"user-{i}" for i in range(start, start + n)]


def run(tmp: Path, restart_between: bool) -> tuple[Plant, Logs, list[Any]]:
    """Two rounds of traffic and two updates; optionally a fresh service
    (same database) takes the second update."""
    clock, logs = Clock(START), Logs(seed=3)
    plant = Plant(tmp, bandit_config(), logs, clock)
    logs.traffic(plant.table, units(0, 1500), START)
    clock.now = START + 200
    first = plant.bandits.update(EXP)
    logs.traffic(plant.table, units(1500, 1500), START + 210)
    clock.now = START + 400
    if restart_between:
        plant = Plant(tmp, bandit_config(), logs, clock)
    second = plant.bandits.update(EXP)
    return plant, logs, [first, second]


def test_two_updates_move_weights_toward_the_better_arm(tmp_path: Path) -> None:
    plant, logs, (first, second) = run(tmp_path, restart_between=False)
    assert first.weights_before == (5000, 5000)
    assert first.weights_after[1] > 5000
    assert second.weights_after[1] >= first.weights_after[1]
    # the floor keeps the control producing data
    assert second.weights_after[0] >= 500 and sum(second.weights_after) == 10_000
    # the published table routes by the bandit's ranges, with its propensities
    exp = plant.table.experiments[0]
    state = plant.bandits.state(EXP)
    assert exp.allocation == state.allocation
    assert exp.propensities == tuple(w / 10_000 for w in state.weights_bp)
    # every exposure counted once: the trials are the distinct (unit, arm) first exposures
    decisions = logs.read_decisions()
    pairs = set(zip(decisions["unit_id"].to_pylist(), decisions["arm"].to_pylist(),
                    strict=True))
    assert sum(s.n for s in state.stats) == len(pairs)
    successes = [s.successes for s in state.stats if isinstance(s, BinaryStats)]
    rates = [k / s.n for k, s in zip(successes, state.stats, strict=True)]
    assert rates[1] > rates[0]
    trail = plant.bandits.store.audit_trail(EXP)
    assert [r["update_index"] for r in trail] == [0, 1]
    assert trail[0]["weights_before"] == [5000, 5000]
    assert trail[1]["weights_after"] == list(second.weights_after)
    assert {a["arm"] for a in trail[1]["arms"]} == set(ARMS)
    assert trail[1]["arms"][1]["prob_best"] > 0.9
    assert sum(trail[0]["exposures_settled"].values()) == 1500


def test_units_keep_their_arm_unless_their_arm_shrank(tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=4)
    plant = Plant(tmp_path, bandit_config(), logs, clock)
    before_table = plant.table
    people = units(0, 2000)
    logs.traffic(before_table, people, START)
    clock.now = START + 200
    record = plant.bandits.update(EXP)
    assert record.weights_after[0] < 5000  # the control shrank
    before = route_many(before_table, people)["arm"]
    after = route_many(plant.table, people)["arm"]
    assert (after[before == "challenger"] == "challenger").all()
    moved = int(((before == "control") & (after == "challenger")).sum())
    assert moved > 0 and (after[before == "control"] == "control").any()
    # exactly the buckets the control gave up changed arm
    assert record.buckets_moved == 5000 - record.weights_after[0]


def test_a_restart_continues_from_the_stored_statistics(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, _, updates_a = run(tmp_path / "a", restart_between=False)
    restarted, _, updates_b = run(tmp_path / "b", restart_between=True)
    assert updates_a == updates_b
    assert straight.bandits.state(EXP) == restarted.bandits.state(EXP)
    assert restarted.bandits.store.audit_trail(EXP)[-1]["cutoff_before_s"] == (
        START + 200 - WINDOW_S)
    # a fresh instance publishes the stored ranges as soon as it starts
    clock = Clock(START + 500)
    again = Plant(tmp_path / "b", bandit_config(), Logs(seed=0), clock)
    assert again.table.experiments[0].allocation == restarted.bandits.state(EXP).allocation


def test_an_update_with_nothing_new_settles_nothing_twice(tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=5)
    plant = Plant(tmp_path, bandit_config(), logs, clock)
    logs.traffic(plant.table, units(0, 500), START)
    clock.now = START + 40  # the window has not closed for any exposure
    early = plant.bandits.update(EXP)
    assert all(a.n == 0 for a in early.arms)
    clock.now = START + 200
    plant.bandits.update(EXP)
    counted = plant.bandits.state(EXP).stats
    plant.bandits.update(EXP)  # same logs, later: nothing new to settle
    assert plant.bandits.state(EXP).stats == counted
    assert sum(s.n for s in counted) == 500


def test_describe_gives_the_weights_posteriors_and_the_audit_trail(tmp_path: Path) -> None:
    plant, _, updates = run(tmp_path, restart_between=False)
    report = plant.bandits.describe(EXP, audit_records=1)
    assert report.experiment_id == EXP and report.updates == 2
    status = plant.bandits.status(EXP)
    assert [(a.arm, a.weight_bp, a.rewards_seen, a.removed) for a in report.arms] == [
        (a.arm, a.weight_bp, a.n, a.removed) for a in status.arms]
    # the last update's record, as stored: weights before and after, exposures settled
    (record,) = report.audit
    assert record == plant.bandits.store.audit_trail(EXP)[-1]
    assert tuple(record["weights_after"]) == updates[-1].weights_after
    assert sum(record["exposures_settled"].values()) == 1500
    # it crosses Ray's actor boundary as JSON
    assert type(report).model_validate_json(report.model_dump_json()) == report
    with pytest.raises(BanditNotFound):
        plant.bandits.describe("exp-a")


def test_a_removed_arm_gets_nothing(tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=6)
    plant = Plant(tmp_path, bandit_config(), logs, clock)
    logs.traffic(plant.table, units(0, 800), START)
    clock.now = START + 200
    record = plant.bandits.update(EXP, failing={"challenger"})
    # removed whatever its reward: the challenger is the better arm
    assert record.weights_after == (10_000, 0)
    assert record.newly_removed == ("challenger",)
    assert set(route_many(plant.table, units(0, 800))["arm"]) == {"control"}
    # it never returns within the run
    clock.now = START + 400
    assert plant.bandits.update(EXP).weights_after == (10_000, 0)
    with pytest.raises(InvalidBanditInput):
        plant.bandits.update(EXP, failing={"nope"})
    with pytest.raises(BanditNotFound):
        plant.bandits.update("exp-a")


def test_a_failing_error_guardrail_removes_the_arm(tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=8)
    plant = Plant(tmp_path, bandit_config(), logs, clock)
    logs.traffic(plant.table, units(0, 1000), START, error_rate={"challenger": 0.2})
    clock.now = START + 200
    record = plant.bandits.update(EXP)
    assert record.weights_after == (10_000, 0)
    trail = plant.bandits.store.audit_trail(EXP)[-1]
    assert trail["guardrail_failed"] == ["challenger"]
    verdicts = {c["name"]: c["verdict"] for c in trail["guardrail_checks"]["challenger"]}
    assert verdicts["error_rate"] == "FAIL"


def test_guardrails_come_from_the_config_and_null_turns_them_off(tmp_path: Path) -> None:
    # Too few requests in the window for the configured minimum: no verdict.
    clock, logs = Clock(START), Logs(seed=8)
    plant = Plant(tmp_path / "few", bandit_config(guardrails={"min_check_requests": 5000}),
                  logs, clock)
    logs.traffic(plant.table, units(0, 1000), START, error_rate={"challenger": 0.2})
    clock.now = START + 200
    assert plant.bandits.update(EXP).newly_removed == ()
    verdicts = {c["verdict"] for c in
                plant.bandits.store.audit_trail(EXP)[-1]["guardrail_checks"]["challenger"]}
    assert verdicts == {"INSUFFICIENT_DATA"}
    # No built-in checks at all: the erring arm stays, judged by its reward alone.
    clock, logs = Clock(START), Logs(seed=8)
    plant = Plant(tmp_path / "off", bandit_config(guardrails=None), logs, clock)
    logs.traffic(plant.table, units(0, 1000), START, error_rate={"challenger": 0.2})
    clock.now = START + 200
    assert plant.bandits.update(EXP).newly_removed == ()
    assert plant.bandits.store.audit_trail(EXP)[-1]["guardrail_checks"] == {}


def test_the_tick_updates_when_the_interval_has_passed(tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=9)
    plant = Plant(tmp_path, bandit_config(), logs, clock)
    clock.now = START + 30
    assert plant.bandits.tick() == []
    assert plant.bandits.next_due_in() == pytest.approx(30.0)
    clock.now = START + 61
    assert len(plant.bandits.tick()) == 1
    assert plant.bandits.tick() == []
    status = plant.bandits.status(EXP)
    # No reward settled yet: the starting weights stand (a redraw would move
    # units on Monte Carlo noise alone).
    assert status.updates == 1 and [a.weight_bp for a in status.arms] == [5000, 5000]


def test_outcomes_go_to_the_units_latest_exposure_within_the_window() -> None:
    decisions = batch_table(4, {
        "request_id": ["r1", "r2", "r3", "r4"], "unit_id": ["a", "a", "b", "c"],
        "experiment_id": EXP, "arm": ["control", "challenger", "control", "control"],
        "role": "primary", "timestamp": [100.0, 150.0, 100.0, 100.0], "status": "ok",
        "forced": [False, False, False, True]})
    outcomes = outcome_table([
        OutcomeRecord("a", "click", 1.0, 120_000_000, None, 0),  # a's control exposure
        OutcomeRecord("a", "click", 1.0, 160_000_000, None, 0),  # a's challenger exposure
        OutcomeRecord("b", "click", 1.0, 250_000_000, None, 0),  # after b's window
        OutcomeRecord("b", "view", 1.0, 110_000_000, None, 0),  # another metric
        OutcomeRecord("c", "click", 1.0, 110_000_000, None, 0),  # a forced unit
    ])
    reward = RewardSpec(metric="click", type="binary", window_s=100)
    settled = settle_rewards(decisions, outcomes, experiment_id=EXP, arms=ARMS,
                             reward=reward, after_s=None, now=300.0)
    assert settled.stats == {"control": BinaryStats(1, 2), "challenger": BinaryStats(1, 1)}
    assert settled.cutoff_s == 200.0
    # exposures up to the previous cutoff are not settled again
    again = settle_rewards(decisions, outcomes, experiment_id=EXP, arms=ARMS, reward=reward,
                           after_s=200.0, now=400.0)
    assert again.stats == {}
    continuous = settle_rewards(decisions, outcomes, experiment_id=EXP, arms=ARMS,
                                reward=RewardSpec(metric="click", type="continuous",
                                                  window_s=100),
                                after_s=None, now=300.0)
    control = continuous.stats["control"]
    assert (control.n, getattr(control, "sum", None)) == (2, 1.0)
