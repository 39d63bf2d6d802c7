"""Routing snapshots pushed to the replicas by long-poll, and how fast they arrive.

Each gateway replica keeps one call open: ``wait(known_version, ...)`` returns
as soon as a snapshot newer than ``known_version`` is published (or None when
the timeout passes first); the replica applies it and calls again with its new
version. This is the pattern of Ray Serve's own ``LongPollClient``: a change
reaches every replica in one round trip instead of up to a poll interval
later, and an idle replica costs one parked call, not ten calls a second.

The same calls measure propagation. A replica that calls with
``known_version=N`` serves N (it applied N before calling), so the board
records, per published version, when each replica that was following at
publication first came back with that version or a later one. The last such
arrival minus the publication time is the version's propagation time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.kernel.commands import ReplicaState, RoutingStatus, VersionPropagation
from serving.routing.snapshot import RoutingSnapshot

HISTORY = 64
"""Published versions whose propagation is kept."""


@dataclass
class _Replica:
    serving_version: int
    last_seen: float  # monotonic
    last_seen_at: float  # wall clock, for display
    waiting: int = 0
    timeout_s: float = 0.0


@dataclass
class _Publication:
    published: float  # monotonic
    published_at: float  # wall clock
    following: frozenset[str]
    served: dict[str, float] = field(default_factory=dict)  # replica -> monotonic arrival


class SnapshotBoard:
    """The latest routing snapshot, the replicas parked on it, and their acks.

    Thread-safe; :meth:`wait` blocks only on the board's own condition, never on
    the control plane's lock, so a slow rollout step delays no replica.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, grace_s: float = 5.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._grace_s = grace_s
        self._changed = threading.Condition()
        self._snapshot: RoutingSnapshot | None = None
        self._replicas: dict[str, _Replica] = {}
        self._publications: OrderedDict[int, _Publication] = OrderedDict()

    @property
    def snapshot(self) -> RoutingSnapshot | None:
        return self._snapshot

    def publish(self, snapshot: RoutingSnapshot) -> None:
        """Make ``snapshot`` current and wake every parked replica."""
        with self._changed:
            now = self._monotonic()
            self._snapshot = snapshot
            self._publications[snapshot.version] = _Publication(
                now, self._wall(), frozenset(self._following(now)))
            while len(self._publications) > HISTORY:
                self._publications.popitem(last=False)
            self._changed.notify_all()

    def wait(self, known_version: int, timeout_s: float, replica: str = ""
             ) -> RoutingSnapshot | None:
        """The current snapshot as soon as it is newer than ``known_version``;
        None if none is within ``timeout_s``. ``replica`` names the caller, whose
        call says it serves ``known_version``."""
        with self._changed:
            if replica:
                self._ack(replica, known_version, timeout_s)
            try:
                self._changed.wait_for(self._newer_than(known_version), timeout_s)
            finally:
                if replica:
                    self._replicas[replica].waiting -= 1
            snapshot = self._snapshot
            return snapshot if snapshot is not None and snapshot.version > known_version else None

    def _newer_than(self, version: int) -> Callable[[], bool]:
        return lambda: self._snapshot is not None and self._snapshot.version > version

    def _ack(self, replica: str, version: int, timeout_s: float) -> None:
        now = self._monotonic()
        state = self._replicas.get(replica)
        if state is None:
            state = self._replicas[replica] = _Replica(version, now, self._wall())
        state.serving_version = version
        state.last_seen, state.last_seen_at = now, self._wall()
        state.waiting += 1
        state.timeout_s = timeout_s
        for published_version, publication in self._publications.items():
            if published_version > version:
                break
            if replica in publication.following:
                publication.served.setdefault(replica, now)

    def _following(self, now: float) -> list[str]:
        """Replicas parked now or heard from within their timeout (plus grace)."""
        return [name for name, r in self._replicas.items()
                if r.waiting > 0 or now - r.last_seen <= r.timeout_s + self._grace_s]

    def status(self) -> RoutingStatus:
        """The version in force, the replicas, and each recent version's propagation."""
        with self._changed:
            now = self._monotonic()
            live = set(self._following(now))
            replicas = [ReplicaState(replica=name, serving_version=r.serving_version,
                                     last_seen_at=r.last_seen_at, waiting=r.waiting > 0)
                        for name, r in sorted(self._replicas.items()) if name in live]
            propagation = []
            for version, publication in self._publications.items():
                # A replica that stopped following since cannot hold the figure open.
                expected = publication.following & live | set(publication.served)
                done = set(publication.served) >= expected
                last = max(publication.served.values(), default=publication.published)
                propagation.append(VersionPropagation(
                    version=version, published_at=publication.published_at,
                    replicas=len(expected), serving=len(publication.served),
                    propagation_ms=((last - publication.published) * 1000.0
                                    if done and expected else None)))
            version = self._snapshot.version if self._snapshot is not None else 0
            return RoutingStatus(version=version, replicas=replicas, propagation=propagation)
