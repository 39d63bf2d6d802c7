"""Where the controller reads per-arm counts: the gateway's own metrics or Prometheus.

Both sources return *cumulative* per-arm counts (requests, errors, latency
histogram buckets) of the traffic a rollout's split routed (the
``rollout_id``/``rollout_arm`` labels of ``rampart_requests_total``); the service differences two
snapshots into an analysis window, so the window is exactly the traffic
between two checks whatever the scrape or poll timing.

- :class:`BuiltinMetricsSource` reads the gateway replicas' shared
  multiprocess metrics directory directly (one machine; the default).
- :class:`PrometheusMetricsSource` asks a Prometheus server over its HTTP API
  (a cluster), and also runs the plan's custom PromQL checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from rollout.core.guardrails import ArmWindow, Window
from rollout.core.plan import PromQLCheck, RolloutPlan

Snapshot = dict[str, ArmWindow]  # arm name -> cumulative counts


class MetricsUnavailable(Exception):
    """The source could not deliver counts; the rollout holds and says why."""


class MetricsSource(Protocol):
    def snapshot(self, rollout_id: str) -> Snapshot:
        """Cumulative counts per rollout arm; raises MetricsUnavailable."""
        ...

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        """Values of the plan's custom checks (None where a query has no data)."""
        ...


def _add(snapshot: dict[str, dict[str, object]], arm: str) -> dict[str, object]:
    return snapshot.setdefault(arm, {"requests": 0.0, "errors": 0.0, "buckets": {}})


def _freeze(raw: dict[str, dict[str, object]]) -> Snapshot:
    out: Snapshot = {}
    for arm, counts in raw.items():
        buckets = counts["buckets"]
        assert isinstance(buckets, dict)
        out[arm] = ArmWindow(
            requests=int(float(str(counts["requests"]))),
            errors=int(float(str(counts["errors"]))),
            buckets=tuple(sorted(buckets.items())),
        )
    return out


class BuiltinMetricsSource:
    """Reads ``rampart_*`` samples from the replicas' multiprocess directory."""

    def __init__(self, metrics_dir: Path) -> None:
        self.metrics_dir = metrics_dir

    def snapshot(self, rollout_id: str) -> Snapshot:
        if not self.metrics_dir.is_dir():
            raise MetricsUnavailable(f"metrics directory {self.metrics_dir} does not exist")
        registry = CollectorRegistry()
        try:
            MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
            families = list(registry.collect())
        except Exception as exc:  # a half-written file must not stop the controller
            raise MetricsUnavailable(f"cannot read gateway metrics: {exc}") from exc
        raw: dict[str, dict[str, object]] = {}
        for family in families:
            for sample in family.samples:
                labels = sample.labels
                if labels.get("rollout_id") != rollout_id:
                    continue
                arm = _add(raw, labels["rollout_arm"])
                if sample.name == "rampart_requests_total":
                    arm["requests"] = float(str(arm["requests"])) + sample.value
                    if labels.get("status") == "error":
                        arm["errors"] = float(str(arm["errors"])) + sample.value
                elif sample.name == "rampart_request_latency_seconds_bucket":
                    buckets = arm["buckets"]
                    assert isinstance(buckets, dict)
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return _freeze(raw)

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        values: dict[str, float | None] = {check.name: None for check in plan.guardrails.promql}
        values.update(self._shadow(plan))
        return values

    def _shadow(self, plan: RolloutPlan) -> dict[str, float | None]:
        """The replicas' shadow agreement gauges for baseline -> candidate."""
        if (plan.guardrails.min_shadow_agreement is None
                and plan.guardrails.max_shadow_score_diff_p99 is None):
            return {}
        registry = CollectorRegistry()
        try:
            MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
            families = list(registry.collect())
        except Exception:
            return {}
        wanted = {"model_name": plan.model_name, "primary_version": plan.baseline_version,
                  "shadow_version": plan.candidate_version}
        out: dict[str, float | None] = {"shadow_label_agreement": None,
                                        "shadow_score_diff_p99": None}
        for family in families:
            for sample in family.samples:
                if any(sample.labels.get(k) != v for k, v in wanted.items()):
                    continue
                if sample.name == "rampart_shadow_label_agreement":
                    out["shadow_label_agreement"] = sample.value
                elif (sample.name == "rampart_shadow_score_abs_diff"
                      and sample.labels.get("quantile") == "p99"):
                    out["shadow_score_diff_p99"] = sample.value
        return out


class PrometheusMetricsSource:
    """Reads the same counts from a Prometheus server's HTTP API."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _query(self, promql: str) -> list[dict[str, object]]:
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql},
                                 timeout=self.timeout_s)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} unreachable: {exc}") from exc
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus query failed: {body.get('error', response.text)}")
        result = body["data"]["result"]
        assert isinstance(result, list)
        return result

    def snapshot(self, rollout_id: str) -> Snapshot:
        selector = f'{{rollout_id="{rollout_id}"}}'
        raw: dict[str, dict[str, object]] = {}
        for item in self._query(f"sum by (rollout_arm, status) (rampart_requests_total{selector})"):
            labels, value = _sample(item)
            arm = _add(raw, labels["rollout_arm"])
            arm["requests"] = float(str(arm["requests"])) + value
            if labels.get("status") == "error":
                arm["errors"] = float(str(arm["errors"])) + value
        for item in self._query(
            f"sum by (rollout_arm, le) (rampart_request_latency_seconds_bucket{selector})"
        ):
            labels, value = _sample(item)
            buckets = _add(raw, labels["rollout_arm"])["buckets"]
            assert isinstance(buckets, dict)
            buckets[float(labels["le"])] = value
        return _freeze(raw)

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for check in plan.guardrails.promql:
            values[check.name] = self._scalar(check, plan, rollout_id)
        selector = (f'{{model_name="{plan.model_name}",primary_version="{plan.baseline_version}",'
                    f'shadow_version="{plan.candidate_version}"')
        if plan.guardrails.min_shadow_agreement is not None:
            result = self._query(f"max(rampart_shadow_label_agreement{selector}}})")
            values["shadow_label_agreement"] = _sample(result[0])[1] if result else None
        if plan.guardrails.max_shadow_score_diff_p99 is not None:
            result = self._query(f'max(rampart_shadow_score_abs_diff{selector},quantile="p99"}})')
            values["shadow_score_diff_p99"] = _sample(result[0])[1] if result else None
        return values

    def _scalar(self, check: PromQLCheck, plan: RolloutPlan, rollout_id: str) -> float | None:
        query = (check.query.replace("{rollout_id}", rollout_id)
                 .replace("{model_name}", plan.model_name)
                 .replace("{baseline_version}", plan.baseline_version)
                 .replace("{candidate_version}", plan.candidate_version))
        result = self._query(query)
        if not result:
            return None
        _, value = _sample(result[0])
        return None if math.isnan(value) else value


def _sample(item: Mapping[str, object]) -> tuple[dict[str, str], float]:
    metric = item.get("metric", {})
    value = item.get("value", [0, "nan"])
    assert isinstance(metric, dict) and isinstance(value, list)
    return {str(k): str(v) for k, v in metric.items()}, float(value[1])


def window_between(previous: Snapshot | None, current: Snapshot,
                   custom: Mapping[str, float | None] | None = None) -> Window:
    """Counts between two cumulative snapshots (a counter reset counts from 0)."""

    def delta(arm: str) -> ArmWindow:
        now = current.get(arm, ArmWindow())
        before = (previous or {}).get(arm, ArmWindow())
        if now.requests < before.requests:  # a replica restarted: its counters reset
            before = ArmWindow()
        old = dict(before.buckets)
        return ArmWindow(
            requests=now.requests - before.requests,
            errors=max(0, now.errors - before.errors),
            buckets=tuple((b, max(0.0, c - old.get(b, 0.0))) for b, c in now.buckets),
        )

    return Window(baseline=delta("baseline"), candidate=delta("candidate"),
                  custom=dict(custom or {}))
