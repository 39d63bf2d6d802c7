from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def test_values_that_are_not_numbers_are_skipped_not_errors() -> None:
    """Typed requests: a string, bool, null or list under a feature is left out of
    its window; the numbers beside it still count."""
    rng = np.random.default_rng(5)
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftMetrics(registry), window=1000, min_rows=200)
    monitor.set_reference(("m", "1"), {"a": rng.normal(size=5000), "b": rng.normal(size=5000),
                                       "c": rng.normal(size=5000)})
    odd: list[Any] = ["x", True, None, [1.0, 2.0], {"k": 1}]
    for i in range(1000):
        monitor.observe(("m", "1"), {
            "a": odd[i % len(odd)] if i % 2 else float(rng.normal()),  # half numbers
            "b": int(rng.integers(-2, 3)),  # ints are numbers
            "c": "category",  # never a number: no figures for it
            "country": "FR"})
    result = {d.feature: d for d in monitor.evaluate()[("m", "1")]}
    assert set(result) == {"a", "b"}
    assert result["a"].n_live == 500 and not result["a"].drifted
    assert result["b"].n_live == 1000
    assert registry.get_sample_value("rampart_feature_psi", {
        "model_name": "m", "model_version": "1", "feature": "c"}) is None


def test_numeric_values_keeps_ints_and_floats_only() -> None:
    from telemetry.drift_monitor import numeric_values

    rows: list[Mapping[str, Any]] = [{"a": 1}, {"a": 2.5}, {"a": True}, {"a": "3"}, {"a": None},
                                     {"a": float("nan")}, {"b": 1.0}, {"a": np.float64(4.0)}]
    assert numeric_values(rows, "a").tolist() == [1.0, 2.5, 4.0]
    assert numeric_values([], "a").size == 0
