"""Shadow serving: a copy of live traffic to candidate versions, off the hot path.

The request path only hashes the unit (to keep the mirrored sample stable)
and appends a job to a bounded buffer without waiting; when the buffer is full
the job is dropped and counted, so memory stays bounded whatever the shadow
does. A drain thread scores the shadow version in batches, logs a decision row
with the same ``request_id`` and ``role = shadow``, and feeds the online parity
tracker. It finds the shadow version among the replica's loaded versions
(:class:`~serving.gateway.scorers.ScorerLookup`), the same object its core reads.
A shadow that is slow, raises, or is not loaded changes neither the primary's
answer nor its latency: its failures are its own rows and counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from serving.gateway.scorers import ScorerLookup
from serving.routing.router import ModelRef
from telemetry.decision_log import DecisionLogWriter, batch_table
from telemetry.metrics import ShadowMetrics
from telemetry.parity import agreement

log = logging.getLogger(__name__)


class ShadowJob(NamedTuple):
    """One mirrored request; a tuple because it is built on the request path."""

    request_id: str
    unit_id: str
    unit_type: str
    experiment_id: str | None
    primary: ModelRef
    primary_prediction: float
    shadow: ModelRef
    features: Mapping[str, float]  # as the client sent them (logged)
    model_features: Mapping[str, float]  # after the online transforms (scored)


class ParityTracker:
    """Recent (primary, shadow) score pairs per model pair; agreement on demand."""

    def __init__(self, window: int = 5_000) -> None:
        self.window = window
        self._pairs: dict[tuple[str, str, str], deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add_many(self, key: tuple[str, str, str], primary: np.ndarray, shadow: np.ndarray
                 ) -> None:
        with self._lock:
            self._pairs.setdefault(key, deque(maxlen=self.window)).extend(
                zip(primary.tolist(), shadow.tolist(), strict=True))

    def snapshot(self) -> dict[tuple[str, str, str], np.ndarray]:
        with self._lock:
            return {k: np.asarray(v, dtype=np.float64) for k, v in self._pairs.items()}


class ShadowRunner:
    """A bounded buffer and one drain thread that scores shadow versions in batches.

    Measured here: waking a worker for every mirrored request (a ``queue.Queue``
    per job) cost the primary a quarter of its throughput in GIL hand-offs. So
    the request path appends to a deque (no lock, no wake-up) and the drain
    thread wakes every ``drain_interval_s``, takes everything pending and scores
    it with one ``predict_batch`` per shadow version. A drain has a fixed cost
    (building the log batch, metrics) of about half a millisecond: every 20 ms
    that was 25 µs a mirrored request, every 250 ms it is a few µs.
    """

    def __init__(
        self,
        scorers: ScorerLookup,
        metrics: ShadowMetrics,
        decision_log: DecisionLogWriter | None,
        queue_size: int = 10_000,
        drain_interval_s: float = 0.25,
        publish_every: int = 200,
        publish_interval_s: float = 1.0,
    ) -> None:
        self.scorers = scorers  # the replica's loaded versions, shared with its core
        self.metrics = metrics
        self.decision_log = decision_log
        self.queue_size = queue_size
        self.drain_interval_s = drain_interval_s
        self.pending: deque[ShadowJob] = deque()
        self.parity = ParityTracker()
        self.publish_every = publish_every
        self.publish_interval_s = publish_interval_s
        self._published_at = 0.0
        self.completed = 0
        self.dropped = 0
        self._since_publish = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="shadow-drain", daemon=True)
        self._thread.start()

    def submit(self, job: ShadowJob) -> bool:
        """Buffer a job without waiting; a full buffer drops it and counts the drop."""
        if len(self.pending) >= self.queue_size:
            self.dropped += 1  # only the request path writes this counter
            self.metrics.observe(job.shadow.name, job.shadow.version, "dropped", None)
            return False
        self.pending.append(job)  # deque.append is atomic: no lock on the hot path
        return True

    def _work(self) -> None:
        while not self._stop.wait(self.drain_interval_s):
            self.drain()
        self.drain()

    def drain(self) -> int:
        """Score everything pending now; returns the jobs handled."""
        batch: list[ShadowJob] = []
        while self.pending:
            try:
                batch.append(self.pending.popleft())
            except IndexError:
                break
        if not batch:
            return 0
        groups: dict[tuple[str, str], list[ShadowJob]] = {}
        for job in batch:
            groups.setdefault((job.shadow.name, job.shadow.version), []).append(job)
        for (name, version), jobs in groups.items():
            try:
                self._run(name, version, jobs)
            except Exception:  # the drain thread must outlive any one batch
                log.exception("shadow batch failed")
        self.completed += len(batch)
        self._since_publish += len(batch)
        # Agreement is recomputed over the whole window (quantiles of thousands of
        # pairs): after enough new pairs and at most once per publish_interval_s.
        now = time.monotonic()
        if (self._since_publish >= self.publish_every
                and now - self._published_at >= self.publish_interval_s):
            self._since_publish = 0
            self._published_at = now
            self.publish_parity()
        return len(batch)

    def _run(self, name: str, version: str, jobs: list[ShadowJob]) -> None:
        # Everything here is columnar: one matrix, one predict_batch, one table
        # for the decision log. Per-row Python work in this thread holds the GIL
        # against the request path, so it is kept to a few list builds.
        started = time.perf_counter()
        n = len(jobs)
        predictions: np.ndarray | None = None
        error: str | None = None
        scorer = self.scorers.lookup(name, version)
        try:
            if scorer is None:
                raise LookupError(f"shadow version {name}/{version} is not loaded")
            names = scorer.feature_names
            matrix = np.asarray([[job.model_features[f] for f in names] for job in jobs],
                                dtype=np.float64)
            predictions = np.asarray(scorer.predict_batch(matrix), dtype=np.float64)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        per_row_s = (time.perf_counter() - started) / n
        if self.decision_log is not None:
            self.decision_log.append_table(batch_table(n, {
                "request_id": [job.request_id for job in jobs],
                "unit_id": [job.unit_id for job in jobs],
                "unit_type": [job.unit_type for job in jobs],
                "experiment_id": [job.experiment_id for job in jobs],
                "arm": "shadow", "model_name": name, "model_version": version,
                "role": "shadow", "timestamp": time.time(),
                "features": [job.features for job in jobs],
                "prediction": predictions, "latency_ms": per_row_s * 1000.0,
                "status": "ok" if error is None else "error", "error": error,
            }))
        if predictions is None:
            self.metrics.observe_batch(name, version, 0, n, per_row_s)
            return
        self.metrics.observe_batch(name, version, n, 0, per_row_s)
        primary = np.fromiter((job.primary_prediction for job in jobs), np.float64, n)
        primaries = {(job.primary.name, job.primary.version) for job in jobs}
        for primary_name, primary_version in primaries:
            key = (primary_name, primary_version, version)
            if len(primaries) == 1:
                self.parity.add_many(key, primary, predictions)
                continue
            rows = np.fromiter(((job.primary.name, job.primary.version)
                                == (primary_name, primary_version) for job in jobs), bool, n)
            self.parity.add_many(key, primary[rows], predictions[rows])

    def publish_parity(self) -> None:
        """Set the agreement gauges from the recent pairs."""
        for (model, primary_version, shadow_version), pairs in self.parity.snapshot().items():
            if pairs.size == 0:
                continue
            result = agreement(pairs[:, 0], pairs[:, 1])
            self.metrics.set_agreement(model, primary_version, shadow_version, result)

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain what is pending and stop; a hung shadow cannot hold shutdown past
        ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.publish_parity()
