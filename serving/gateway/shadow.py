"""Shadow serving: a copy of live traffic to candidate versions, off the hot path.

The request path only hashes the unit (to keep the mirrored sample stable)
and appends a job to a bounded buffer without waiting; when the buffer is full
the job is dropped and counted, so memory stays bounded whatever the shadow
does. A drain thread scores the shadow version in batches, logs a decision row
with the same ``request_id`` and ``role = shadow``, and feeds the online parity
tracker with the rows where both versions answered with one number (their
scores). A folded linear version given numbers scores the batch as one
matrix; any other checks each row against its own signature (a row it
rejects is its error row, not scored) and scores the rest in one
``predict_rows``. Shadow rows log the whole answer as primary rows do. It finds
the shadow version among the replica's loaded versions
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
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from models.outputs import Prediction, class_rows
from models.registry import NumericScorer, Scorer, score_rows
from serving.gateway.scorers import ScorerLookup
from serving.routing.router import ModelRef
from telemetry.decision_log import DecisionLogWriter
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
    primary_prediction: float | None  # the primary's score; None when not one number
    shadow: ModelRef
    features: Mapping[str, Any]  # as the client sent them (logged)
    model_features: Mapping[str, Any]  # after the online transforms (what is scored)
    unit_source: str | None = None


_NUMBER_TYPES = (int, float, np.integer, np.floating)
_BOOL_TYPES = (bool, np.bool_)


def numeric_matrix(scorer: Scorer, jobs: list[ShadowJob]) -> npt.NDArray[np.float64] | None:
    """The jobs' features as one float matrix in the scorer's ``feature_names``
    order, when the scorer is scored that way and every row holds each of
    those names as a number; None otherwise (a bool is not a number here: a
    matrix would turn it into 0 or 1 without a word).

    Only an ``inline`` scorer (a folded linear model) is: its ``predict_rows``
    is a Python loop per row, its ``predict_batch`` one matrix product. Other
    scorers may offer ``predict_batch`` too, but as replay's score-only path
    (refusing, say, a multi-class classifier); they build one DataFrame
    either way, so ``predict_rows`` costs them nothing more and answers in
    full.
    """
    names: tuple[str, ...] | None = getattr(scorer, "feature_names", None)
    if (names is None or not scorer.inline
            or not callable(getattr(scorer, "predict_batch", None))):
        return None
    try:
        flat = [job.model_features[f] for job in jobs for f in names]
    except KeyError:
        return None
    # One C-level pass for the types present, then a check per distinct type.
    if not all(issubclass(t, _NUMBER_TYPES) and not issubclass(t, _BOOL_TYPES)
               for t in set(map(type, flat))):
        return None
    return np.asarray(flat, dtype=np.float64).reshape(len(jobs), len(names))


def binary_answers(scorer: Scorer, scores: npt.NDArray[np.float64]
                   ) -> list[Prediction | None] | None:
    """A logistic scorer's whole answers from its scores (P of its second class),
    as its ``predict_rows`` gives them: label and class probabilities with the
    score. None for a linear one, whose score is its whole answer."""
    classes = getattr(scorer, "classes", ())
    if not getattr(scorer, "logistic", False) or len(classes) != 2:
        return None
    return list(class_rows(np.column_stack([1.0 - scores, scores]), classes))


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
    it with one ``predict_batch`` (numeric versions) or one ``predict_rows``
    (any other) per shadow version. A drain has a fixed cost (building the log
    batch, metrics) of about half a millisecond: every 20 ms that was 25 µs a
    mirrored request, every 250 ms it is a few µs.
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
        # Everything here is columnar: one matrix or one list of checked rows, one
        # predict call, one column batch for the decision log (turned into a table
        # by the log's own thread). Per-row Python work in this thread holds the
        # GIL against the request path, so it is kept to a few list builds.
        started = time.perf_counter()
        n = len(jobs)
        scores: npt.NDArray[np.float64] | None = None  # NaN: no score for that row
        outputs: list[Prediction | None] | None = None
        errors: list[str | None] | str | None = None
        scorer = self.scorers.lookup(name, version)
        try:
            if scorer is None:
                raise LookupError(f"shadow version {name}/{version} is not loaded")
            matrix = numeric_matrix(scorer, jobs)
            if matrix is not None:
                numeric = cast(NumericScorer, scorer)  # numeric_matrix checked it
                scores = np.asarray(numeric.predict_batch(matrix), dtype=np.float64).reshape(n)
                outputs = binary_answers(scorer, scores)
            else:
                outputs, errors = score_rows(scorer, [job.model_features for job in jobs])
                scores = np.fromiter((np.nan if p is None or p.score is None else p.score
                                      for p in outputs), np.float64, n)
        except Exception as exc:
            scores, outputs, errors = None, None, f"{type(exc).__name__}: {exc}"
        per_row_s = (time.perf_counter() - started) / n
        status: list[str] | str
        if isinstance(errors, list):
            status = ["ok" if e is None else "error" for e in errors]
            failed = status.count("error")
        else:
            status, failed = ("ok", 0) if errors is None else ("error", n)
        if self.decision_log is not None:
            self.decision_log.append_columns(n, {
                "request_id": [job.request_id for job in jobs],
                "unit_id": [job.unit_id for job in jobs],
                "unit_type": [job.unit_type for job in jobs],
                "experiment_id": [job.experiment_id for job in jobs],
                "arm": "shadow", "model_name": name, "model_version": version,
                "role": "shadow", "timestamp": time.time(),
                "features": [job.features for job in jobs],
                # NaN (no score for that row) is written as null
                "prediction": (None if scores is None
                               else pa.array(scores, type=pa.float64(), from_pandas=True)),
                "output": outputs,
                "latency_ms": per_row_s * 1000.0,
                "status": status, "error": errors,
                "unit_source": [job.unit_source for job in jobs],
            })
        self.metrics.observe_batch(name, version, n - failed, failed, per_row_s)
        if scores is None:
            return
        primary = np.fromiter((np.nan if job.primary_prediction is None
                               else job.primary_prediction for job in jobs), np.float64, n)
        paired = ~(np.isnan(primary) | np.isnan(scores))
        if not paired.any():
            return
        keys = [(job.primary.name, job.primary.version) for job in jobs]
        primaries = set(keys)
        for primary_name, primary_version in primaries:
            rows = paired if len(primaries) == 1 else paired & np.fromiter(
                (k == (primary_name, primary_version) for k in keys), bool, n)
            if rows.any():
                self.parity.add_many((primary_name, primary_version, version),
                                     primary[rows], scores[rows])

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
