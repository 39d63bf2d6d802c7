"""The rollout store on a real PostgreSQL (tests/postgres_server.py), and the
same store tests on SQLite: round trips, a restart between steps, two
controllers racing for one rollout, and the database restarting mid-rollout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.core.controller import AuditRecord, Phase, new_rollout
from rollout.core.plan import RolloutPlan, parse_plan
from rollout.metrics_source import Snapshot
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.errors import RolloutConflict, StaleRollout
from tests.postgres_server import PostgresServer
from tests.unit.fakes import Clock, WritableRegistry, make_config
from tests.unit.test_rollout_service import PLAN, Counts

# The audit trail of PLAN ramping healthily to promotion.
HEALTHY_WEIGHTS = [100, 500, 2500, 5000, 10_000, 10_000]


class CountingRegistry(WritableRegistry):
    """Counts alias moves and tags: side effects a step must carry out once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with self._lock:
            self.calls.append(("set_alias", name, alias, version))
        super().set_alias(name, alias, version)

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        with self._lock:
            self.calls.append(("tag_version", name, version, key))
        super().tag_version(name, version, key, value)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rollouts.db'}"
    server = request.getfixturevalue("postgres_server")
    assert isinstance(server, PostgresServer)
    return server.create_database("store")


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("race")


@pytest.fixture
def open_store() -> Iterator[Callable[[str], RolloutStore]]:
    """Stores the test opens, every one closed after it."""
    stores: list[RolloutStore] = []

    def open_(url: str) -> RolloutStore:
        stores.append(RolloutStore(url))
        return stores[-1]

    yield open_
    for store in stores:
        store.close()


def service_on(store: RolloutStore, counts: Any, clock: Clock,
               registry: WritableRegistry) -> RolloutService:
    return RolloutService(make_config(experiments=[]), store, registry,
                          lambda plan: counts, clock)


def grow(counts: Counts, clock: Clock, n: int = 30) -> None:
    clock.now += 1.0
    counts.add("baseline", n * 9)
    counts.add("candidate", n)


def signature(record: dict[str, Any] | AuditRecord) -> tuple[Any, ...]:
    r = record if isinstance(record, dict) else record.model_dump(mode="json")
    return (r["from_phase"], r["to_phase"], r["step_index"], r["weight_bp"], r["reason"])


# ---------------------------------------------------------------- the store alone


def test_state_audit_and_counter_round_trip(store_url: str,
                                            open_store: Callable[[str], RolloutStore]) -> None:
    store = open_store(store_url)
    plan = parse_plan(PLAN)
    state = new_rollout("ro-1", plan, 1_000.0)
    assert store.add(state) == 0
    with pytest.raises(RolloutConflict):
        store.add(state)
    record = AuditRecord(at=1_001.0, from_phase=Phase.PENDING, to_phase=Phase.PROGRESSING,
                         step_index=0, weight_bp=100, reason="entered 1%",
                         figures={"requests": 3, "ratio": 0.5})
    moved = state.model_copy(update={"phase": Phase.PROGRESSING, "step_index": 0,
                                     "weight_bp": 100, "updated_at": 1_001.0})
    with store.transition("ro-1", 0) as held:
        assert held.save(moved, [record]) == 1
    assert store.all() == [moved]
    assert store.load("ro-1") == (moved, 1)
    assert store.audit_trail("ro-1") == [record]
    assert [store.next_counter("routing_version") for _ in range(3)] == [1, 2, 3]
    assert store.next_counter("other") == 1

    # A second store on the same database sees all of it, and numbers go on.
    again = open_store(store_url)
    assert again.load_all() == [(moved, 1)]
    assert again.audit_trail("ro-1") == [record]
    assert again.next_counter("routing_version") == 4


def test_a_step_over_an_old_revision_is_refused_and_writes_nothing(
        store_url: str, open_store: Callable[[str], RolloutStore]) -> None:
    first, second = open_store(store_url), open_store(store_url)
    state = new_rollout("ro-1", parse_plan(PLAN), 1_000.0)
    first.add(state)
    paused = state.model_copy(update={"phase": Phase.PAUSED, "updated_at": 1_001.0})
    with first.transition("ro-1", 0) as held:
        held.save(paused)
    record = AuditRecord(at=1_002.0, from_phase=Phase.PENDING, to_phase=Phase.ABORTED,
                         step_index=-1, weight_bp=0, reason="stale")
    with pytest.raises(StaleRollout), second.transition("ro-1", 0) as held:
        held.save(state.model_copy(update={"phase": Phase.ABORTED}), [record])
    assert second.load("ro-1") == (paused, 1)
    assert second.audit_trail("ro-1") == []


# ---------------------------------------------------------------- the service on it


def test_a_restarted_controller_resumes_at_the_same_step(
        store_url: str, open_store: Callable[[str], RolloutStore]) -> None:
    counts, clock, registry = Counts(), Clock(), CountingRegistry()
    service = service_on(open_store(store_url), counts, clock, registry)
    service.create(parse_plan(PLAN))
    for _ in range(3):
        grow(counts, clock)
        service.tick()
    before = service.get("ro-1")
    trail_before = service.describe("ro-1").audit
    assert before.phase == Phase.PROGRESSING and before.step_index >= 1
    service.store.close()

    restarted = service_on(open_store(store_url), counts, clock, registry)
    assert restarted.get("ro-1") == before
    assert restarted.describe("ro-1").audit == trail_before
    while not restarted.get("ro-1").terminal:
        grow(counts, clock)
        restarted.tick()
        assert clock.now < 1_100, "the rollout never finished"
    trail = restarted.describe("ro-1").audit
    assert trail[:len(trail_before)] == trail_before
    # The first step after the restart leaves the step the first controller reached.
    assert trail[len(trail_before)]["step_index"] == before.step_index + 1
    assert [r["weight_bp"] for r in trail] == HEALTHY_WEIGHTS
    assert restarted.get("ro-1").phase == Phase.PROMOTED


class Rendezvous:
    """A metrics source that lets a tick through only once the other
    controller's tick has fetched its metrics too: both then step the very
    same state, and race to write it."""

    def __init__(self, counts: Counts, barrier: threading.Barrier) -> None:
        self.counts = counts
        self.barrier = barrier

    def snapshot(self, experiment_id: str) -> Snapshot:
        self.barrier.wait(timeout=60)
        return self.counts.snapshot(experiment_id)

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        return {}


def test_two_controllers_racing_for_each_step_take_it_once(
        pg_url: str, open_store: Callable[[str], RolloutStore],
        caplog: pytest.LogCaptureFixture) -> None:
    counts, clock, registry = Counts(), Clock(), CountingRegistry()
    creator = service_on(open_store(pg_url), counts, clock, registry)
    creator.create(parse_plan(PLAN))
    barrier = threading.Barrier(2)
    controllers = [service_on(open_store(pg_url), Rendezvous(counts, barrier), clock, registry)
                   for _ in range(2)]
    errors: list[BaseException] = []

    def tick(service: RolloutService) -> None:
        try:
            service.tick()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            barrier.abort()

    rounds = 0
    with caplog.at_level(logging.INFO, logger="rollout.service"):
        while not all(c.get("ro-1").terminal for c in controllers):
            assert rounds < 40, "the rollout never finished"
            rounds += 1
            grow(counts, clock)
            threads = [threading.Thread(target=tick, args=(c,)) for c in controllers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
                assert not thread.is_alive(), "a tick hung"
            assert not errors, errors
    # Every round was a real race, and every round one of the two lost it.
    lost = [r for r in caplog.records if "left to another controller" in r.getMessage()]
    assert len(lost) == rounds
    stored = controllers[0].store.load("ro-1")
    assert stored is not None and stored.state.phase == Phase.PROMOTED
    assert [c.get("ro-1") for c in controllers] == [stored.state, stored.state]

    trail = controllers[0].store.audit_trail("ro-1")
    assert [r.weight_bp for r in trail] == HEALTHY_WEIGHTS
    assert len({signature(r) for r in trail}) == len(trail)
    assert registry.calls.count(("set_alias", "clf", "champion", "2")) == 1
    history = [c for c in registry.calls if c[0] == "tag_version"]
    assert sorted(history) == sorted(set(history)) and len(history) == 2
    assert registry.aliases["champion"] == "2"


def test_the_database_restarting_mid_rollout_holds_it_then_it_resumes(
        caplog: pytest.LogCaptureFixture,
        open_store: Callable[[str], RolloutStore]) -> None:
    server = PostgresServer()  # its own: stopping the session's would upset other tests
    try:
        server.start()
        url = server.create_database("restart")
        counts, clock, registry = Counts(), Clock(), CountingRegistry()
        service = service_on(open_store(url), counts, clock, registry)
        service.create(parse_plan(PLAN))
        for _ in range(2):
            grow(counts, clock)
            service.tick()
        before = service.get("ro-1")
        trail_before = service.describe("ro-1").audit
        assert before.phase == Phase.PROGRESSING and before.step_index >= 1

        server.stop()
        with caplog.at_level(logging.WARNING, logger="rollout.service"):
            for _ in range(6):  # healthy traffic enough to ramp to the end
                grow(counts, clock)
                service.tick()  # raises nothing
        assert service.get("ro-1") == before
        assert registry.calls == []
        assert any("holds" in r.getMessage() and "unavailable" in r.getMessage()
                   for r in caplog.records)

        server.start()
        server.wait_until_accepting()
        while not service.get("ro-1").terminal:
            grow(counts, clock)
            service.tick()
            assert clock.now < 1_100, "the rollout never finished"
        trail = service.describe("ro-1").audit
        assert trail[:len(trail_before)] == trail_before
        assert trail[len(trail_before)]["step_index"] == before.step_index + 1
        assert [r["weight_bp"] for r in trail] == HEALTHY_WEIGHTS
        assert len({signature(r) for r in trail}) == len(trail)
        assert service.get("ro-1").phase == Phase.PROMOTED
        assert registry.calls.count(("set_alias", "clf", "champion", "2")) == 1
    finally:
        server.destroy()
