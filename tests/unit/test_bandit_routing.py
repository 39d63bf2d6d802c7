"""Routing a bandit experiment: the controller's ranges override the config's
weights, decisions carry their arm's propensity, and the decision log keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from rollout.core.bandits.ranges import rebalance
from serving.gateway.core import GatewayCore, build_app
from serving.kernel.config import RampartConfig
from serving.routing.assignment import BUCKETS, Allocation, allocate
from serving.routing.router import build_routing_table, route
from telemetry.decision_log import (
    DECISION_SCHEMA,
    DecisionLogWriter,
    read_decisions,
    records_to_table,
)
from telemetry.metrics import RequestMetrics
from tests.unit.fakes import FEATURES, InMemoryRegistry, make_config
from tests.unit.test_bandit_config import bandit_experiment

pytestmark = pytest.mark.unit

ARMS = ("control", "challenger")
UNITS = [f"user-{i}" for i in range(600)]


def bandit_config(**changes: Any) -> RampartConfig:
    return make_config(experiments=[bandit_experiment(**changes)])


def moved() -> Allocation:
    """The starting 50/50 moved to 20/80 with sticky ranges: the control gives
    up 3,000 of its buckets to the challenger, which keeps all of its own."""
    return rebalance(allocate(ARMS, (5000, 5000)), (2000, 8000))


def test_without_an_override_a_bandit_routes_by_its_starting_weights() -> None:
    table = build_routing_table(bandit_config(), InMemoryRegistry().resolve)
    exp = table.experiments[0]
    assert exp.allocation == allocate(ARMS, (5000, 5000))
    assert exp.propensities == (0.5, 0.5)
    assert exp.arm_weights == "control:5000,challenger:5000"


def test_the_controllers_allocation_overrides_the_config() -> None:
    allocation = moved()
    table = build_routing_table(bandit_config(), InMemoryRegistry().resolve,
                                bandit_allocations={"bandit-a": allocation})
    exp = table.experiments[0]
    assert exp.allocation is allocation
    assert exp.arm_weights == "control:2000,challenger:8000"
    assert exp.propensities == (0.2, 0.8)
    seen = {"control": 0, "challenger": 0}
    for unit in UNITS:
        decision = route(table, unit)
        assert decision.bucket is not None
        # the unit's arm is the one owning its bucket in the overridden ranges
        assert decision.arm == ARMS[allocation.arm_of(decision.bucket)]
        assert decision.propensity == (0.2 if decision.arm == "control" else 0.8)
        assert decision.model.version == ("1" if decision.arm == "control" else "2")
        seen[decision.arm] += 1
    assert seen["challenger"] > 3 * seen["control"] > 0


def test_units_keep_their_arm_unless_their_arm_shrank() -> None:
    resolve = InMemoryRegistry().resolve
    before = build_routing_table(bandit_config(), resolve)
    after = build_routing_table(bandit_config(), resolve,
                                bandit_allocations={"bandit-a": moved()})
    pairs = [(route(before, u).arm, route(after, u).arm) for u in UNITS]
    # the challenger grew: none of its units left it; some control units moved
    assert all(new == "challenger" for old, new in pairs if old == "challenger")
    assert any(old == "control" and new == "challenger" for old, new in pairs)
    assert any(old == new == "control" for old, new in pairs)


def test_coverage_scales_the_propensity() -> None:
    table = build_routing_table(bandit_config(coverage_bp=5000), InMemoryRegistry().resolve,
                                bandit_allocations={"bandit-a": moved()})
    assert table.experiments[0].propensities == (0.1, 0.4)
    covered = [d for d in (route(table, u) for u in UNITS) if d.experiment_id == "bandit-a"]
    assert covered and {d.propensity for d in covered} <= {0.1, 0.4}


def test_other_experiments_ignore_overrides_and_log_no_propensity() -> None:
    plain = bandit_experiment(id="plain", salt="plain-salt")
    del plain["bandit"]
    config = make_config(experiments=[plain])
    table = build_routing_table(config, InMemoryRegistry().resolve,
                                bandit_allocations={"plain": moved()})
    assert table.experiments[0].allocation == allocate(ARMS, (5000, 5000))
    assert table.experiments[0].propensities is None
    assert all(route(table, u).propensity is None for u in UNITS[:50])


def test_an_allocation_over_other_arms_is_refused() -> None:
    with pytest.raises(ValueError, match="bandit allocation of 'bandit-a' has arms"):
        build_routing_table(bandit_config(), InMemoryRegistry().resolve,
                            bandit_allocations={"bandit-a": allocate(("a", "b"), (1, 9999))})


def test_the_decision_log_holds_propensities_equal_to_the_arms_shares(tmp_path: Path) -> None:
    allocation = moved()
    registry = InMemoryRegistry()
    table = build_routing_table(bandit_config(), registry.resolve,
                                bandit_allocations={"bandit-a": allocation})
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    writer = DecisionLogWriter(tmp_path, "w", batch_rows=10_000, flush_interval_s=3600)
    core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None, writer)
    features = {name: 0.1 for name in FEATURES}
    with TestClient(build_app(core)) as client:
        for unit in UNITS[:200]:
            response = client.post("/v1/predict", json={"unit_id": unit, "features": features})
            assert response.status_code == 200
    core.close()
    rows = read_decisions(tmp_path).to_pylist()
    shares = {name: allocation.share(i) / BUCKETS for i, name in enumerate(ARMS)}
    bandit_rows = [r for r in rows if r["experiment_id"] == "bandit-a" and not r["forced"]]
    assert len(bandit_rows) == 200
    for row in bandit_rows:
        assert row["propensity"] == shares[row["arm"]]
    # the logged propensities are the shares the analysis weighs by
    arms = np.array([r["arm"] for r in bandit_rows])
    assert set(arms) == set(ARMS)


def test_files_written_before_the_propensity_column_still_read(tmp_path: Path) -> None:
    old_schema = pa.schema([f for f in DECISION_SCHEMA if f.name != "propensity"])
    record = records_to_table([]).select(old_schema.names)
    assert record.schema == old_schema
    directory = tmp_path / "date=2024-01-01" / "experiment=bandit-a"
    directory.mkdir(parents=True)
    old = pa.Table.from_pylist([{
        "request_id": "r1", "unit_id": "u1", "experiment_id": "bandit-a", "arm": "control",
        "role": "primary", "timestamp": 1_700_000_000_000_000, "status": "ok"}],
        schema=old_schema)
    pq.write_table(old, directory / "part-old.parquet")
    writer = DecisionLogWriter(tmp_path, "w2", batch_rows=1000, flush_interval_s=3600)
    writer.append_columns(1, {"request_id": "r2", "unit_id": "u2", "experiment_id": "bandit-a",
                              "arm": "challenger", "role": "primary", "timestamp": 1.7e9,
                              "status": "ok", "propensity": 0.8})
    writer.close()
    table = read_decisions(tmp_path)
    assert table.schema == DECISION_SCHEMA
    by_id = {r["request_id"]: r["propensity"] for r in table.to_pylist()}
    assert by_id == {"r1": None, "r2": 0.8}
