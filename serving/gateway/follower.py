"""How a replica receives routing snapshots: one long-poll loop, off the request path.

The replica calls ``source.wait_for_snapshot(version, timeout_s, replica)``;
the source answers as soon as a newer snapshot is published (None after the
timeout), the replica applies it (loading any new version first, then one
reference swap) and calls again with the version it now serves. That next
call is also the replica's acknowledgement: the control plane measures
propagation from it.

A snapshot the replica cannot apply (a new version that does not load: MLflow
unreachable, say) changes nothing: the replica keeps serving the table it
has, says so in its log and in :attr:`SnapshotFollower.apply_error`, and tries
again, less often the longer it fails, until the snapshot applies or a newer
one replaces it. Nothing that fails here ends the loop.

The gateway declares only the :class:`SnapshotSource` protocol; the
composition root passes in whatever implements it (on Ray, the controller
actor's handle behind a small adapter), so the request path never imports the
control plane.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from serving.routing.snapshot import RoutingSnapshot

log = logging.getLogger(__name__)


class SnapshotSource(Protocol):
    """Where routing snapshots come from."""

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str
                          ) -> RoutingSnapshot | None:
        """The snapshot as soon as one newer than ``known_version`` exists; None
        after ``timeout_s``. Calling says ``replica`` serves ``known_version``."""
        ...


class SnapshotFollower:
    """A daemon thread that keeps one replica on the newest routing snapshot."""

    def __init__(self, source: SnapshotSource, apply: Callable[[RoutingSnapshot], None],
                 known_version: int, replica: str, timeout_s: float = 30.0,
                 retry_s: float = 1.0, max_retry_s: float = 8.0) -> None:
        self.source = source
        self.apply = apply
        self.version = known_version
        self.replica = replica
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max(retry_s, max_retry_s)
        # Why the newest snapshot is not applied ("" once one applies), and
        # how many tries in a row have failed.
        self.apply_error = ""
        self.apply_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routing-follower", daemon=True)

    def start(self) -> SnapshotFollower:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 0.0) -> None:
        """Stop after the call in flight returns (or at once, for a daemon thread
        left parked on the source)."""
        self._stop.set()
        if timeout_s > 0:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                snapshot = self.source.wait_for_snapshot(self.version, self.timeout_s,
                                                         self.replica)
            except Exception:
                # The controller restarting, or a Ray hiccup: keep serving the last table.
                log.exception("routing long-poll failed; serving version %d", self.version)
                self._stop.wait(self.retry_s)
                continue
            if snapshot is None or self._stop.is_set():
                continue
            try:
                self.apply(snapshot)
            except Exception as exc:
                self._failed(snapshot, exc)
                continue
            if self.apply_failures:
                log.warning("routing version %d applied after %d failed tries",
                            snapshot.version, self.apply_failures)
            self.apply_error = ""
            self.apply_failures = 0
            self.version = snapshot.version

    def _failed(self, snapshot: RoutingSnapshot, exc: Exception) -> None:
        """Keep serving the current table; report, then wait before the next try."""
        error = f"routing version {snapshot.version}: {type(exc).__name__}: {exc}"
        if error != self.apply_error:
            # The traceback once per distinct failure; a retry that fails the
            # same way is one line, not a traceback a second.
            log.error("cannot apply %s; serving version %d", error, self.version,
                      exc_info=exc)
        else:
            log.warning("still cannot apply routing version %d (try %d); serving version %d",
                        snapshot.version, self.apply_failures + 1, self.version)
        self.apply_error = error
        self.apply_failures += 1
        self._stop.wait(min(self.max_retry_s, self.retry_s * 2 ** (self.apply_failures - 1)))
