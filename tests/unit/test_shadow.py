"""Shadow mode: the primary answers whatever the shadow does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from models.registry import LinearScorer
from serving.gateway.core import GatewayCore, build_app
from serving.gateway.scorers import LoadedScorers
from serving.gateway.shadow import ShadowRunner
from serving.routing.router import build_routing_table
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics, ShadowMetrics
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import FEATURES, InMemoryRegistry, make_config

GOOD = {name: 0.1 * i for i, name in enumerate(FEATURES)}


class BlockedScorer:
    """A shadow that hangs until released (a slow shadow, deterministically)."""

    name, version, feature_names = "clf", "2", FEATURES

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def predict_one(self, values: Any) -> float:
        return float(self.predict_batch([values])[0])

    def predict_batch(self, matrix: Any) -> Any:
        self.calls += len(matrix)
        self.release.wait(30)
        return [0.5] * len(matrix)


class RaisingScorer(BlockedScorer):
    def predict_batch(self, matrix: Any) -> Any:
        raise RuntimeError("shadow exploded")


def _build(tmp_path: Path, shadow_scorer: Any, sample_bp: int = 10_000,
           queue_size: int = 10_000) -> tuple[GatewayCore, CollectorRegistry, DecisionLogWriter]:
    registry = InMemoryRegistry()
    config = make_config(experiments=[], shadows=[
        {"model": "clf", "version": "challenger", "sample_bp": sample_bp, "salt": "sh"}])
    table = build_routing_table(config, registry.resolve)
    scorers = LoadedScorers({("clf", "1"): registry.load("clf", "1")})
    if shadow_scorer is not None:
        scorers.add(("clf", "2"), shadow_scorer)
    prom = CollectorRegistry()
    writer = DecisionLogWriter(tmp_path / "d", "t", batch_rows=100_000, flush_interval_s=3600)
    runner = ShadowRunner(scorers, ShadowMetrics(prom), writer, queue_size=queue_size,
                          publish_every=10, publish_interval_s=0.0)
    core = GatewayCore(table, scorers, RequestMetrics(prom),
                       build_tracer_provider().get_tracer("t"), writer, shadow_runner=runner)
    return core, prom, writer


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[TestClient, BlockedScorer, Any]]:
    shadow = BlockedScorer()
    core, prom, writer = _build(tmp_path, shadow)
    with TestClient(build_app(core)) as client:
        yield client, shadow, (core, prom, writer, tmp_path)
    shadow.release.set()
    core.close()


def test_a_hung_shadow_neither_fails_nor_delays_the_primary(blocked: Any) -> None:
    client, shadow, (core, prom, writer, tmp) = blocked
    answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
               for i in range(50)]
    # Every primary answer came back while the shadow was still hung on its first call.
    assert [a.status_code for a in answers] == [200] * 50
    assert not shadow.release.is_set()
    assert {a.json()["model_version"] for a in answers} == {"1"}
    shadow.release.set()
    deadline = time.monotonic() + 10
    while core.shadow_runner.completed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.flush()
    core.shadow_runner.publish_parity()
    rows = read_decisions(tmp / "d").to_pylist()
    primary = {r["request_id"]: r for r in rows if r["role"] == "primary"}
    mirrored = {r["request_id"]: r for r in rows if r["role"] == "shadow"}
    assert set(primary) == set(mirrored) == {a.json()["request_id"] for a in answers}
    for request_id, row in mirrored.items():
        assert row["model_version"] == "2" and row["status"] == "ok"
        assert row["unit_id"] == primary[request_id]["unit_id"]
        assert row["features"] == primary[request_id]["features"]
    assert prom.get_sample_value("rampart_shadow_requests_total", {
        "model_name": "clf", "model_version": "2", "status": "ok"}) == 50
    assert prom.get_sample_value("rampart_shadow_pairs", {
        "model_name": "clf", "primary_version": "1", "shadow_version": "2"}) == 50


@pytest.mark.parametrize("kind", ["raises", "down"])
def test_a_failing_or_missing_shadow_is_logged_and_counted_not_felt(
    tmp_path: Path, kind: str
) -> None:
    core, prom, _ = _build(tmp_path, RaisingScorer() if kind == "raises" else None)
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    core.close()
    rows = [r for r in read_decisions(tmp_path / "d").to_pylist() if r["role"] == "shadow"]
    assert len(rows) == 20 and {r["status"] for r in rows} == {"error"}
    needle = "shadow exploded" if kind == "raises" else "not loaded"
    assert all(needle in r["error"] for r in rows)
    assert prom.get_sample_value("rampart_requests_total", {
        "model_name": "clf", "model_version": "1", "experiment_id": "", "arm": "default",
        "rollout_id": "", "rollout_arm": "",
        "status": "ok"}) == 20


def test_a_full_queue_drops_and_counts_never_grows(tmp_path: Path) -> None:
    shadow = BlockedScorer()
    core, prom, _ = _build(tmp_path, shadow, queue_size=5)
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(40)]
    assert [a.status_code for a in answers] == [200] * 40
    runner = core.shadow_runner
    assert runner is not None and len(runner.pending) <= 5
    # the drain thread holds one hung batch, at most 5 wait, the rest were dropped
    assert runner.dropped == 40 - len(runner.pending) - shadow.calls
    assert runner.dropped >= 40 - 5 - 5
    assert prom.get_sample_value("rampart_shadow_requests_total", {
        "model_name": "clf", "model_version": "2", "status": "dropped"}) == runner.dropped
    shadow.release.set()
    core.close()


def test_sampled_shadow_mirrors_the_same_units_every_time(tmp_path: Path) -> None:
    shadow = LinearScorer("clf", "2", FEATURES, tuple([0.25] * 8), 0.2, True)
    core, _, _ = _build(tmp_path, shadow, sample_bp=2000)
    with TestClient(build_app(core)) as client:
        for _ in range(2):
            for i in range(300):
                client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
    core.close()
    rows = read_decisions(tmp_path / "d").to_pylist()
    mirrored = [r["unit_id"] for r in rows if r["role"] == "shadow"]
    units = set(mirrored)
    assert 0.12 < len(units) / 300 < 0.28
    assert sorted(mirrored) == sorted(list(units) * 2)  # each mirrored unit, both rounds
    table = core.table
    assert units == {f"u{i}" for i in range(300) if table.shadows[0].mirrors(f"u{i}")}


def test_the_runner_scores_versions_the_core_loads_later(tmp_path: Path) -> None:
    import dataclasses

    from serving.routing.snapshot import RoutingSnapshot

    core, _, _ = _build(tmp_path, None)  # the shadow version is not loaded yet
    registry = InMemoryRegistry()
    newer = RoutingSnapshot(dataclasses.replace(core.table, version=core.table.version + 1))
    core.apply_snapshot(newer, registry.load)  # loads v2 into the set the runner shares
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": f"u{i}", "features": GOOD})
                   for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    core.close()
    rows = [r for r in read_decisions(tmp_path / "d").to_pylist() if r["role"] == "shadow"]
    assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"}
