"""A Prometheus that hangs delays nothing but the rollout check that asked it.

A real HTTP server on a free loopback port answers every query after 30 s
(the wait ends early when the test releases it). A real RolloutService with
the Prometheus metrics source ticks into it on a thread; while that tick
waits, an operator command, the Alertmanager webhook (which rolls the rollout
back) and a snapshot read each finish within 100 ms, and the window the tick
finally gets is discarded because the rollout changed meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rollout.commands import execute
from rollout.core.plan import parse_plan
from rollout.metrics_source import PrometheusMetricsSource
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.commands import AlertWebhook, RolloutCommand
from tests.unit.fakes import Clock, WritableRegistry, make_config

HANG_S = 30.0
LOCK_BOUND_S = 0.1  # how long a hung Prometheus may delay anything else


class SlowPrometheus(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.queried = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: SlowPrometheus

    def do_GET(self) -> None:
        self.server.queried.set()
        self.server.release.wait(HANG_S)  # the hang, cut short when the test ends
        body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                         "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def test_a_hung_prometheus_delays_no_command_webhook_or_snapshot(
    prometheus: SlowPrometheus, tmp_path: Path
) -> None:
    clock = Clock()
    service = RolloutService(
        make_config(experiments=[]), RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}"),
        WritableRegistry(), lambda plan: PrometheusMetricsSource(str(plan.prometheus_url)), clock)
    service.create(parse_plan({
        "id": "ro-slow", "model_name": "clf", "baseline_version": "1",
        "candidate_version": "2", "interval_s": 1, "metrics_source": "prometheus",
        "prometheus_url": prometheus.url}))
    clock.now += 2  # the first check is due
    tick = threading.Thread(target=service.tick, daemon=True)
    tick.start()
    assert prometheus.queried.wait(10), "the tick never queried Prometheus"

    paused, command_s = _timed(lambda: execute(
        service, RolloutCommand(id="ro-slow", kind="pause", reason="look first")))
    alert = {"alerts": [{"status": "firing", "labels": {
        "alertname": "RampartCandidateP99High", "rollout": "ro-slow", "action": "rollback"}}]}
    rolled, webhook_s = _timed(lambda: execute(service, AlertWebhook(payload=alert)))
    snapshot, snapshot_s = _timed(service.snapshot)

    assert tick.is_alive(), "the tick should still be waiting on Prometheus"
    assert paused.phase == "paused" and rolled.rolled_back == ["ro-slow"]
    assert snapshot is not None and snapshot.table.rollout_for("clf") is None
    assert command_s < LOCK_BOUND_S, f"operator command took {command_s:.3f} s"
    assert webhook_s < LOCK_BOUND_S, f"Alertmanager webhook took {webhook_s:.3f} s"
    assert snapshot_s < LOCK_BOUND_S, f"snapshot took {snapshot_s:.3f} s"

    trail_before = service.describe("ro-slow").audit
    prometheus.release.set()
    tick.join(10)
    assert not tick.is_alive()
    # The late window judged a rollout that had since been rolled back: discarded.
    after = service.describe("ro-slow")
    assert after.phase == "rolled_back" and after.audit == trail_before
