from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from telemetry.drift_monitor import DriftMonitor
from telemetry.metrics import DriftMetrics


def test_online_drift_sets_gauges_once_enough_rows_arrive() -> None:
    rng = np.random.default_rng(4)
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftMetrics(registry), window=1000, min_rows=200)
    monitor.set_reference(("m", "1"), {"a": rng.normal(size=5000), "b": rng.normal(size=5000)})
    monitor.observe(("m", "2"), {"a": 1.0})  # no reference: ignored
    for _ in range(100):
        monitor.observe(("m", "1"), {"a": float(rng.normal()), "b": float(rng.normal(2.0))})
    assert monitor.evaluate() == {}  # too few rows to judge
    for _ in range(900):
        monitor.observe(("m", "1"), {"a": float(rng.normal()), "b": float(rng.normal(2.0))})
    result = {d.feature: d for d in monitor.evaluate()[("m", "1")]}
    assert result["b"].drifted and not result["a"].drifted
    labels = {"model_name": "m", "model_version": "1", "feature": "b"}
    assert registry.get_sample_value("rampart_feature_psi", labels) == result["b"].psi
    assert registry.get_sample_value("rampart_feature_ks_pvalue", labels) < 0.001
