"""The rollout store on SQLite, and the service when its store is stale or
unreachable. PostgreSQL itself: tests/integration/test_rollout_store_sql.py."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rollout.core.controller import Phase, new_rollout
from rollout.core.plan import parse_plan
from rollout.service import RolloutService
from rollout.store import RolloutStore, Transition, normalise_url
from serving.kernel.errors import RolloutConflict, StaleRollout, StoreUnavailable
from tests.unit.fakes import Clock, WritableRegistry, make_config
from tests.unit.test_rollout_service import PLAN, Counts, tick

# The schema as it was before rollouts had a revision.
LEGACY_SCHEMA = """
CREATE TABLE rampart_rollouts (
    id VARCHAR(64) NOT NULL PRIMARY KEY, model_name VARCHAR(256) NOT NULL,
    phase VARCHAR(32) NOT NULL, state TEXT NOT NULL,
    created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL);
CREATE TABLE rampart_rollout_audit (
    seq INTEGER NOT NULL PRIMARY KEY, rollout_id VARCHAR(64) NOT NULL,
    at FLOAT NOT NULL, from_phase VARCHAR(32) NOT NULL, to_phase VARCHAR(32) NOT NULL,
    step_index INTEGER NOT NULL, weight_bp INTEGER NOT NULL, reason TEXT NOT NULL,
    figures TEXT NOT NULL);
CREATE TABLE rampart_counters (name VARCHAR(64) NOT NULL PRIMARY KEY,
                               value INTEGER NOT NULL);
"""


class FlakyStore(RolloutStore):
    """A SQLite store whose database the test can take away."""

    down = False

    @contextmanager
    def transition(self, rollout_id: str, revision: int) -> Iterator[Transition]:
        if self.down:
            raise StoreUnavailable("rollout store unavailable: connection refused")
        with super().transition(rollout_id, revision) as held:
            yield held

    def next_counter(self, name: str) -> int:
        if self.down:
            raise StoreUnavailable("rollout store unavailable: connection refused")
        return super().next_counter(name)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[RolloutStore]]:
    opened: list[RolloutStore] = []
    yield opened
    for store in opened:
        store.close()


def service_on(store: RolloutStore, counts: Counts, clock: Clock,
               registry: WritableRegistry | None = None) -> RolloutService:
    return RolloutService(make_config(experiments=[]), store, registry or WritableRegistry(),
                          lambda plan: counts, clock)


def test_postgresql_urls_go_through_psycopg() -> None:
    assert normalise_url("postgresql://u:p@db:5432/r") == "postgresql+psycopg://u:p@db:5432/r"
    assert normalise_url("postgres://db/r") == "postgresql+psycopg://db/r"
    assert normalise_url("postgresql+psycopg://db/r") == "postgresql+psycopg://db/r"
    assert normalise_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_a_database_from_before_revisions_opens_and_steps(
        tmp_path: Path, stores: list[RolloutStore]) -> None:
    path = tmp_path / "old.db"
    state = new_rollout("ro-1", parse_plan(PLAN), 1_000.0)
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SCHEMA)
        conn.execute("INSERT INTO rampart_rollouts VALUES (?, ?, ?, ?, ?, ?)",
                     ("ro-1", "clf", "pending", state.model_dump_json(), 1_000.0, 1_000.0))
        conn.execute("INSERT INTO rampart_counters VALUES ('routing_version', 7)")
    conn.close()
    stores.append(RolloutStore(f"sqlite:///{path}"))
    store = stores[-1]
    assert store.load("ro-1") == (state, 0)
    assert store.next_counter("routing_version") == 8
    counts, clock = Counts(), Clock()
    service = service_on(store, counts, clock)
    tick(service, counts, clock)
    assert service.get("ro-1").phase == Phase.PROGRESSING
    assert store.load("ro-1") == (service.get("ro-1"), 1)
    stores.append(RolloutStore(f"sqlite:///{path}"))  # opening it again changes nothing
    assert stores[-1].load("ro-1") == (service.get("ro-1"), 1)


def test_a_rollout_id_is_added_once(tmp_path: Path, stores: list[RolloutStore]) -> None:
    stores.append(RolloutStore(f"sqlite:///{tmp_path / 'r.db'}"))
    state = new_rollout("ro-1", parse_plan(PLAN), 1_000.0)
    stores[0].add(state)
    with pytest.raises(RolloutConflict):
        stores[0].add(state)


def test_an_unreachable_store_holds_the_rollout_and_loses_nothing(
        tmp_path: Path, stores: list[RolloutStore], caplog: pytest.LogCaptureFixture) -> None:
    stores.append(FlakyStore(f"sqlite:///{tmp_path / 'r.db'}"))
    store = stores[0]
    assert isinstance(store, FlakyStore)
    counts, clock, registry = Counts(), Clock(), WritableRegistry()
    service = service_on(store, counts, clock, registry)
    service.create(parse_plan(PLAN))
    tick(service, counts, clock)
    before, trail = service.get("ro-1"), store.audit_trail("ro-1")
    snapshot = service.snapshot()
    assert snapshot is not None

    store.down = True
    with caplog.at_level(logging.WARNING, logger="rollout.service"):
        for _ in range(8):
            tick(service, counts, clock)  # enough to promote, had the store been there
    assert service.get("ro-1") == before and store.audit_trail("ro-1") == trail
    assert service.snapshot() is snapshot and registry.aliases["champion"] == "1"
    assert any("ro-1 holds" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreUnavailable):
        service.command("ro-1", "pause", "by hand")
    assert service.get("ro-1") == before

    store.down = False
    while not service.get("ro-1").terminal:
        tick(service, counts, clock)
        assert clock.now < 1_100
    weights = [r.weight_bp for r in store.audit_trail("ro-1")]
    assert weights == [100, 500, 2500, 5000, 10_000, 10_000]
    assert registry.aliases["champion"] == "2"


def test_a_command_on_a_stale_rollout_applies_to_the_stored_one(
        tmp_path: Path, stores: list[RolloutStore]) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    stores.extend([RolloutStore(url), RolloutStore(url)])
    counts, clock = Counts(), Clock()
    first = service_on(stores[0], counts, clock)
    first.create(parse_plan(PLAN))
    second = service_on(stores[1], counts, clock)  # reads the rollout as created
    first.command("ro-1", "pause", "look first")
    aborted = second.command("ro-1", "abort", "enough")
    assert aborted.phase == Phase.ABORTED
    trail = [(r.from_phase, r.to_phase) for r in stores[0].audit_trail("ro-1")]
    assert trail == [(Phase.PENDING, Phase.PROGRESSING), (Phase.PROGRESSING, Phase.PAUSED),
                     (Phase.PAUSED, Phase.ABORTED)]
    # The first controller still has it paused: its resume finds it aborted.
    with pytest.raises(RolloutConflict, match="already aborted"):
        first.command("ro-1", "resume")
    assert first.get("ro-1") == stores[0].all()[0]
    assert len(stores[0].audit_trail("ro-1")) == 3


def test_a_stale_step_raises_before_it_acts(tmp_path: Path,
                                            stores: list[RolloutStore]) -> None:
    stores.append(RolloutStore(f"sqlite:///{tmp_path / 'r.db'}"))
    state = new_rollout("ro-1", parse_plan(PLAN), 1_000.0)
    stores[0].add(state)
    acted = []
    with pytest.raises(StaleRollout), stores[0].transition("ro-1", 3):
        acted.append(True)
    assert acted == []
