"""Shadow serving: a copy of live traffic to candidate versions, off the hot path.

The request path only hashes the unit (to keep the mirrored sample stable)
and puts a job on a bounded queue without waiting; when the queue is full the
job is dropped and counted, so memory stays bounded whatever the shadow does.
Worker threads score the shadow version, log a decision row with the same
``request_id`` and ``role = shadow``, and feed the online parity tracker.
A shadow that is slow, raises, or is not loaded changes neither the primary's
answer nor its latency: its failures are its own rows and counters.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from models.registry import Scorer
from serving.router import ModelRef
from telemetry.decision_log import DecisionLogWriter, DecisionRecord
from telemetry.metrics import ShadowMetrics
from telemetry.parity import agreement

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowJob:
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

    def add(self, key: tuple[str, str, str], primary: float, shadow: float) -> None:
        with self._lock:
            self._pairs.setdefault(key, deque(maxlen=self.window)).append((primary, shadow))

    def snapshot(self) -> dict[tuple[str, str, str], np.ndarray]:
        with self._lock:
            return {k: np.asarray(v, dtype=np.float64) for k, v in self._pairs.items()}


class ShadowRunner:
    """Bounded queue + worker threads that score shadow versions."""

    def __init__(
        self,
        scorer_for: Callable[[str, str], Scorer | None],
        metrics: ShadowMetrics,
        decision_log: DecisionLogWriter | None,
        queue_size: int = 10_000,
        workers: int = 2,
        publish_every: int = 200,
    ) -> None:
        self.scorer_for = scorer_for
        self.metrics = metrics
        self.decision_log = decision_log
        self.queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self.parity = ParityTracker()
        self.publish_every = publish_every
        self.completed = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"shadow-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job without waiting; a full queue drops it and counts the drop."""
        try:
            self.queue.put_nowait(job)
            return True
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
            self.metrics.observe(job.shadow.name, job.shadow.version, "dropped", None)
            return False

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # the worker must outlive any one job
                log.exception("shadow job failed")

    def _run(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        prediction: float | None = None
        error: str | None = None
        scorer = self.scorer_for(job.shadow.name, job.shadow.version)
        try:
            if scorer is None:
                raise LookupError(f"shadow version {job.shadow.name}/{job.shadow.version} "
                                  "is not loaded")
            values = [float(job.model_features[name]) for name in scorer.feature_names]
            prediction = float(scorer.predict_one(values))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency_s = time.perf_counter() - started
        status = "ok" if error is None else "error"
        self.metrics.observe(job.shadow.name, job.shadow.version, status, latency_s)
        if self.decision_log is not None:
            self.decision_log.append(DecisionRecord(
                job.request_id, job.unit_id, job.unit_type, job.experiment_id, None, "shadow",
                job.shadow.name, job.shadow.version, "shadow", time.time(), job.features,
                prediction, latency_s * 1000.0, status, error,
            ))
        if prediction is not None:
            key = (job.primary.name, job.primary.version, job.shadow.version)
            self.parity.add(key, job.primary_prediction, prediction)
        with self._count_lock:
            self.completed += 1
            publish = self.completed % self.publish_every == 0
        if publish:
            self.publish_parity()

    def publish_parity(self) -> None:
        """Set the agreement gauges from the recent pairs."""
        for (model, primary_version, shadow_version), pairs in self.parity.snapshot().items():
            if pairs.size == 0:
                continue
            result = agreement(pairs[:, 0], pairs[:, 1])
            self.metrics.set_agreement(model, primary_version, shadow_version, result)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the workers; a hung shadow cannot hold shutdown past ``timeout_s``."""
        for _ in self._threads:
            try:
                self.queue.put(None, timeout=timeout_s)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.publish_parity()
