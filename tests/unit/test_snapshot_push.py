"""Routing snapshots pushed by long-poll: the board wakes parked replicas, counts
their acknowledgements, and two in-process replicas follow a real service."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.publication import SnapshotBoard
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.gateway.follower import SnapshotFollower
from serving.kernel.config import ShadowSpec
from serving.routing.router import build_routing_table
from serving.routing.snapshot import RoutingSnapshot
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import Clock, InMemoryRegistry, WritableRegistry, make_config, make_core

DEADLINE_S = 10.0  # a bound for a broken implementation, not a measurement


def _snapshot(version: int) -> RoutingSnapshot:
    registry = InMemoryRegistry()
    return RoutingSnapshot(build_routing_table(make_config(), registry.resolve, version))


def _until(condition: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_wait_answers_at_once_when_newer_and_none_on_timeout() -> None:
    board = SnapshotBoard()
    board.publish(_snapshot(3))
    snapshot = board.wait(2, timeout_s=10)
    assert snapshot is not None and snapshot.version == 3
    assert board.wait(3, timeout_s=0.01) is None


def test_a_parked_wait_returns_the_publication() -> None:
    board = SnapshotBoard()
    board.publish(_snapshot(1))
    got: list[RoutingSnapshot | None] = []
    waiter = threading.Thread(target=lambda: got.append(board.wait(1, 30, "r1")))
    waiter.start()
    _until(lambda: board.status().replicas and board.status().replicas[0].waiting)
    board.publish(_snapshot(2))
    waiter.join(DEADLINE_S)
    assert not waiter.is_alive() and got[0] is not None and got[0].version == 2


def test_propagation_is_publication_to_the_last_replica_back_on_the_new_version() -> None:
    clock = Clock(100.0)
    # The acks below return at once (timeout 0); the grace keeps both replicas following.
    board = SnapshotBoard(monotonic=clock, wall=clock, grace_s=3600)
    board.publish(_snapshot(1))
    for replica in ("a", "b"):
        assert board.wait(1, 0, replica) is None  # both follow, serving version 1
    clock.now = 200.0
    board.publish(_snapshot(2))
    clock.now = 200.004
    board.wait(2, 0, "a")
    pending = {p.version: p for p in board.status().propagation}[2]
    assert (pending.replicas, pending.serving, pending.propagation_ms) == (2, 1, None)
    clock.now = 200.010
    board.wait(2, 0, "b")
    done = {p.version: p for p in board.status().propagation}[2]
    assert (done.replicas, done.serving) == (2, 2)
    assert done.propagation_ms == pytest.approx(10.0)
    # A replica that skips a version (it received a newer one) acknowledges both.
    board.publish(_snapshot(3))
    board.publish(_snapshot(4))
    clock.now = 200.020
    board.wait(4, 0, "a")
    board.wait(4, 0, "b")
    figures = {p.version: p.propagation_ms for p in board.status().propagation}
    assert figures[3] == figures[4] == pytest.approx(10.0)


def test_a_replica_that_stops_following_holds_nothing_open() -> None:
    clock = Clock(100.0)
    board = SnapshotBoard(monotonic=clock, wall=clock, grace_s=1.0)
    board.publish(_snapshot(1))
    board.wait(1, 0, "a")
    board.wait(1, 0, "gone")
    board.publish(_snapshot(2))
    clock.now += 5.0  # "gone" has not called for longer than its timeout plus grace
    board.wait(2, 0, "a")
    status = board.status()
    assert [r.replica for r in status.replicas] == ["a"]
    figure = {p.version: p for p in status.propagation}[2]
    assert (figure.replicas, figure.serving) == (1, 1) and figure.propagation_ms is not None


class LocalSource:
    """The service's long-poll in-process, as the controller actor offers it on Ray."""

    def __init__(self, service: RolloutService) -> None:
        self.service = service

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str
                          ) -> RoutingSnapshot | None:
        return self.service.wait_for_snapshot(known_version, timeout_s, replica)


@pytest.fixture
def followed(tmp_path: Path) -> Iterator[tuple[RolloutService, list[Any]]]:
    registry = WritableRegistry()
    service = RolloutService(make_config(experiments=[]),
                             RolloutStore(f"sqlite:///{tmp_path / 'r.db'}"), registry,
                             lambda plan: None)
    tracer = build_tracer_provider().get_tracer("t")
    cores, followers = [], []
    for name in ("replica-a", "replica-b"):
        core, _ = make_core(tracer)
        first = service.wait_for_snapshot(-1, 0, name)
        assert first is not None
        core.apply_snapshot(first, registry.load)
        cores.append(core)
        followers.append(SnapshotFollower(
            LocalSource(service), lambda s, c=core: c.apply_snapshot(s, registry.load),
            first.version, name, timeout_s=30).start())
    _until(lambda: len(service.routing_status().replicas) == 2)
    yield service, cores
    for follower in followers:
        follower.stop()
    # Wake the parked calls so the followers see their stop now.
    current = service.snapshot()
    assert current is not None
    service.board.publish(RoutingSnapshot(dataclasses.replace(current.table,
                                                              version=current.version + 1)))


def test_every_replica_serves_a_change_and_says_so(
        followed: tuple[RolloutService, list[Any]]) -> None:
    service, cores = followed
    snapshot = service.set_shadow(ShadowSpec(model="clf", version="2"))
    version = snapshot.version

    def propagated() -> bool:
        figures = {p.version: p for p in service.routing_status().propagation}
        return version in figures and figures[version].propagation_ms is not None

    _until(propagated)
    figure = {p.version: p for p in service.routing_status().propagation}[version]
    assert (figure.replicas, figure.serving) == (2, 2)
    assert all(core.table.version == version for core in cores)
    assert all(core.table.shadows for core in cores)
    status = service.routing_status()
    assert {r.serving_version for r in status.replicas} == {version}


class ScriptedSource:
    """Hands out one newer snapshot for ever (as the board does until it is
    applied), then, once told, a newer one still."""

    def __init__(self) -> None:
        self.snapshot = _snapshot(2)

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str
                          ) -> RoutingSnapshot | None:
        if self.snapshot.version > known_version:
            return self.snapshot
        time.sleep(0.01)
        return None


def test_a_snapshot_that_cannot_be_loaded_leaves_the_replica_serving_and_following() -> None:
    source = ScriptedSource()
    applied: list[int] = []
    tries: list[int] = []
    loadable = threading.Event()

    def apply(snapshot: RoutingSnapshot) -> None:
        tries.append(snapshot.version)
        if not loadable.is_set():
            raise ConnectionError("MLflow unreachable")
        applied.append(snapshot.version)

    follower = SnapshotFollower(source, apply, 1, "replica-a", timeout_s=0.1,
                                retry_s=0.01, max_retry_s=0.05).start()
    try:
        _until(lambda: follower.apply_failures >= 3)
        assert follower.version == 1 and applied == []  # still serving version 1
        assert follower.apply_error == "routing version 2: ConnectionError: MLflow unreachable"
        loadable.set()  # MLflow is back
        _until(lambda: follower.version == 2)
        assert (follower.apply_error, follower.apply_failures) == ("", 0)
        source.snapshot = _snapshot(3)  # and the replica goes on following
        _until(lambda: follower.version == 3)
        assert applied == [2, 3]
    finally:
        follower.stop(timeout_s=1.0)
