"""Prometheus metrics for the request path.

Every gateway replica is its own process. So that one scrape counts each
request of every replica exactly once, the replicas use prometheus_client's
multiprocess mode: each process writes its samples to memory-mapped files in
a shared directory (``PROMETHEUS_MULTIPROC_DIR``, set by ``rampart serve``
before the replicas start) and ``GET /metrics`` on any replica aggregates
the directory. Without that variable (in-process tests, a plain uvicorn run)
the metrics live in the registry passed in.

Labels are bounded: model, version, experiment, arm, status. Never a request
or unit id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_wsgi_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# ``rollout_id``/``rollout_arm`` are set where a rollout's split decided the
# version (baseline or candidate), empty elsewhere: the rollout controller and
# its alert rules read exactly the traffic its split routed, while
# ``experiment_id``/``arm`` keep the experiment's assignment of the same request.
REQUEST_LABELS = ("model_name", "model_version", "experiment_id", "arm", "rollout_id",
                  "rollout_arm", "status")
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RolloutFigures(Protocol):
    @property
    def rollout_id(self) -> str: ...

    @property
    def active(self) -> bool: ...

    @property
    def weight_bp(self) -> int: ...

    @property
    def last_transition_at(self) -> float: ...


class RequestMetrics:
    """``rampart_requests_total``, ``rampart_request_latency_seconds`` and
    ``rampart_request_read_timeouts_total``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        # No labels: a client too slow to send its request has not yet named
        # a model, and its address is no bounded label.
        self.read_timeouts = Counter(
            "rampart_request_read_timeouts",
            "Requests cut off (408) because their body did not arrive within the "
            "read deadline.",
            registry=registry,
        )
        self.requests = Counter(
            "rampart_requests",
            "Prediction requests by model version, experiment, arm and status.",
            REQUEST_LABELS,
            registry=registry,
        )
        self.latency = Histogram(
            "rampart_request_latency_seconds",
            "Time from request received to response ready, in seconds.",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

        # Every replica holds the same rollout figures; the most recent write wins.
        self.rollout_active = Gauge(
            "rampart_rollout_active", "1 while a rollout is pending, progressing or paused.",
            ("rollout",), registry=registry, multiprocess_mode="mostrecent")
        self.rollout_weight = Gauge(
            "rampart_rollout_candidate_weight_bp",
            "Candidate traffic share of a rollout, in basis points.",
            ("rollout",), registry=registry, multiprocess_mode="mostrecent")
        self.rollout_transition = Gauge(
            "rampart_rollout_last_transition_timestamp_seconds",
            "When a rollout last changed phase or step (Unix time).",
            ("rollout",), registry=registry, multiprocess_mode="mostrecent")

    def set_rollouts(self, rollouts: Iterable[RolloutFigures]) -> None:
        """Export the rollouts of the routing snapshot in force."""
        for r in rollouts:
            self.rollout_active.labels(r.rollout_id).set(1 if r.active else 0)
            self.rollout_weight.labels(r.rollout_id).set(r.weight_bp)
            self.rollout_transition.labels(r.rollout_id).set(r.last_transition_at)

    def observe(self, labels: tuple[str, str, str, str, str, str, str], latency_s: float) -> None:
        """Count one request and its latency."""
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(latency_s)

    def render(self) -> bytes:
        """Prometheus text exposition of every replica (multiprocess) or this one."""
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        if self.registry is None:
            return b""
        return bytes(generate_latest(self.registry))


def prepare_multiprocess_dir(path: Path) -> Path:
    """Empty (or create) the shared directory before replicas start.

    Files left by a previous run would otherwise be summed into this one.
    """
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


class LogWriterMetrics:
    """A log writer's failures: ``rampart_<log>_write_errors_total`` (failed
    writes, retried), ``rampart_<log>_dropped_total`` (rows given up when
    what a failing store left passed the writer's bound) and
    ``rampart_<log>_spill_errors_total`` (failed writes of the local spill
    journal: those rows would not survive a crash). Serving goes on either
    way; these, and the alert on them, are how anyone finds out.
    ``rampart_<log>_replayed_total`` counts rows a writer took over from the
    spill journal of a writer that stopped without writing them."""

    def __init__(self, log_name: str, registry: CollectorRegistry | None) -> None:
        self.errors = Counter(f"rampart_{log_name}_write_errors",
                              f"Failed writes of the {log_name.replace('_', ' ')} "
                              "(the rows are kept and written again).", registry=registry)
        self.dropped = Counter(f"rampart_{log_name}_dropped",
                               f"Rows of the {log_name.replace('_', ' ')} dropped after "
                               "failed writes (beyond what a writer keeps).",
                               registry=registry)
        self.spill_errors = Counter(f"rampart_{log_name}_spill_errors",
                                    f"Failed writes of the {log_name.replace('_', ' ')}'s local "
                                    "spill journal (rows kept in memory only).",
                                    registry=registry)
        self.replayed = Counter(f"rampart_{log_name}_replayed",
                                f"Rows of the {log_name.replace('_', ' ')} replayed from the "
                                "spill journal of a writer that stopped.", registry=registry)

    def write_failed(self) -> None:
        self.errors.inc()

    def rows_dropped(self, rows: int) -> None:
        self.dropped.inc(rows)

    def spill_failed(self) -> None:
        self.spill_errors.inc()

    def rows_replayed(self, rows: int) -> None:
        self.replayed.inc(rows)


class ProcessMetricsCollector:
    """One process's own samples from the multiprocess directory.

    ``GET /metrics`` through the ingress aggregates every replica of a node;
    on a cluster Prometheus scrapes each replica instead (its own endpoint,
    listed by the controller's scrape-target file), so each replica must
    expose only its own process: otherwise the replicas of one node would be
    counted once per replica. prometheus_client names the files it writes
    ``<kind>_<pid>.db`` (gauges ``gauge_<mode>_<pid>.db``).
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.suffix = f"_{pid}.db"

    def collect(self) -> Iterable[Metric]:
        files = [str(f) for f in sorted(self.directory.glob("*.db"))
                 if f.name.endswith(self.suffix)]
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


class ReplicaMetricsServer:
    """This replica's metrics on a port of its own, for Prometheus to scrape."""

    def __init__(self, host: str, directory: Path | None) -> None:
        registry = CollectorRegistry()
        if directory is not None:
            registry.register(ProcessMetricsCollector(directory, os.getpid()))
        self._server, self._thread = start_wsgi_server(0, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_port)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ShadowMetrics:
    """Shadow calls and online shadow/primary agreement."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.calls = Counter(
            "rampart_shadow_requests",
            "Shadow calls by model version and status (ok, error, dropped).",
            ("model_name", "model_version", "status"), registry=registry)
        self.latency = Histogram(
            "rampart_shadow_latency_seconds", "Time to score one shadow call, in seconds.",
            ("model_name", "model_version"), buckets=LATENCY_BUCKETS_S, registry=registry)
        labels = ("model_name", "primary_version", "shadow_version")
        self.label_agreement = Gauge(
            "rampart_shadow_label_agreement",
            "Share of recent mirrored requests where shadow and primary give the same label.",
            labels, registry=registry, multiprocess_mode="mostrecent")
        self.abs_diff = Gauge(
            "rampart_shadow_score_abs_diff",
            "Quantiles of |shadow - primary| score over recent mirrored requests.",
            (*labels, "quantile"), registry=registry, multiprocess_mode="mostrecent")
        self.pairs = Gauge(
            "rampart_shadow_pairs", "Mirrored requests behind the agreement figures.",
            labels, registry=registry, multiprocess_mode="mostrecent")

    def observe(self, model: str, version: str, status: str, latency_s: float | None) -> None:
        self.calls.labels(model, version, status).inc()
        if latency_s is not None:
            self.latency.labels(model, version).observe(latency_s)

    def observe_batch(self, model: str, version: str, ok: int, errors: int,
                      per_row_s: float) -> None:
        """One drained batch: counts by status, and one latency observation (the
        batch's scoring time per row)."""
        if ok:
            self.calls.labels(model, version, "ok").inc(ok)
        if errors:
            self.calls.labels(model, version, "error").inc(errors)
        self.latency.labels(model, version).observe(per_row_s)

    def set_agreement(self, model: str, primary: str, shadow: str, result: AgreementFigures
                      ) -> None:
        self.pairs.labels(model, primary, shadow).set(result.n)
        if result.label_agreement is not None:
            self.label_agreement.labels(model, primary, shadow).set(result.label_agreement)
        for quantile, value in result.abs_diff_quantiles.items():
            self.abs_diff.labels(model, primary, shadow, quantile).set(value)


class AgreementFigures(Protocol):
    @property
    def n(self) -> int: ...

    @property
    def label_agreement(self) -> float | None: ...

    @property
    def abs_diff_quantiles(self) -> dict[str, float]: ...


class DriftMetrics:
    """Per-feature drift of live requests against a version's training reference."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ("model_name", "model_version", "feature")
        self.psi = Gauge("rampart_feature_psi",
                         "Population stability index of recent requests vs the training data.",
                         labels, registry=registry, multiprocess_mode="mostrecent")
        self.ks_pvalue = Gauge("rampart_feature_ks_pvalue",
                               "Two-sample KS p-value of recent requests vs the training data.",
                               labels, registry=registry, multiprocess_mode="mostrecent")

    def set(self, model: str, version: str, result: DriftFigures) -> None:
        self.psi.labels(model, version, result.feature).set(result.psi)
        self.ks_pvalue.labels(model, version, result.feature).set(result.ks_p_value)


class DriftFigures(Protocol):
    @property
    def feature(self) -> str: ...

    @property
    def psi(self) -> float: ...

    @property
    def ks_p_value(self) -> float: ...
