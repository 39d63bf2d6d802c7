"""Faults survived on a real gateway (Ray Serve, MLflow on SQLite), loopback only.

- Prometheus down (nothing listens at the plan's ``prometheus_url``), then
  hanging (a server that accepts and does not answer), during a rollout: the
  rollout holds at its first step, never advances or promotes, and its hold
  reason says why; once Prometheus answers, it proceeds.

(A replica or the whole gateway SIGKILLed under load: ``test_kills_on_ray.py``.)

Every wait is bounded; the bounds are for a broken implementation, not measurements.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import mlflow
import pytest

from serving.cli.common import default_config_document
from serving.cli.demo.models import DEMO_MODEL_NAME
from serving.cli.launch import RunningGateway, start_gateway
from serving.kernel.config import parse_config
from tests.faults import admin_call, wait_until
from tests.ports import free_port

TOKEN = "faults-token"
DEADLINE_S = 120.0


def _admin(gateway: RunningGateway, method: str, path: str, body: Any = None) -> Any:
    return admin_call(gateway.url, TOKEN, method, path, body)


def _until(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    return wait_until(condition, what, timeout_s)


def _config(mlflow_store: dict[str, Any], tmp_path: Path, **server: Any) -> Any:
    data = default_config_document()
    data.update(
        models=[{"name": DEMO_MODEL_NAME, "versions": ["champion", "challenger"]}],
        default={"model": DEMO_MODEL_NAME, "version": "champion"},
        experiments=[], shadows=[], feature_transforms=[],
        tracking_uri=str(mlflow_store["uri"]), data_dir=str(tmp_path),
        rollout_store_url=f"sqlite:///{tmp_path / 'rollouts.db'}",
        decision_log={"path": str(tmp_path / "decisions")},
        telemetry={"metrics_dir": str(tmp_path / "metrics")},
        server={"host": "127.0.0.1", "port": free_port(), **server})
    return parse_config(data)


@pytest.fixture
def gateway(ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path
            ) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(**server: Any) -> RunningGateway:
        started.append(start_gateway(_config(mlflow_store, tmp_path, **server),
                                     admin_token=TOKEN))
        return started[-1]

    yield start
    for running in started:
        running.stop()


# --------------------------------------------------------------------------- Prometheus


class FakePrometheus(ThreadingHTTPServer):
    """Prometheus' query API on a fixed port: ``hang`` accepts and never answers
    (until released), ``ok`` answers growing, healthy counts for both arms."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _PrometheusHandler)
        self.mode = "hang"
        self.release = threading.Event()
        self.started = time.monotonic()
        self.queries = 0

    def counts(self) -> int:
        return 50 + int(100 * (time.monotonic() - self.started))


class _PrometheusHandler(BaseHTTPRequestHandler):
    server: FakePrometheus

    def do_GET(self) -> None:
        self.server.queries += 1
        if self.server.mode == "hang":
            self.server.release.wait(60)
            return  # the connection closes without an answer
        query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
        n = str(self.server.counts())
        result: list[dict[str, Any]] = []
        for arm in ("baseline", "candidate"):
            if "le)" in query:
                result += [{"metric": {"rollout_arm": arm, "le": le}, "value": [0, n]}
                           for le in ("0.005", "0.01", "+Inf")]
            else:
                result.append({"metric": {"rollout_arm": arm, "status": "ok"}, "value": [0, n]})
        body = json.dumps({"status": "success",
                           "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_prometheus_down_or_hanging_holds_the_rollout_until_it_answers(
        gateway: Callable[..., RunningGateway], mlflow_store: dict[str, Any]) -> None:
    # One replica: the rollout's metrics come from the fake Prometheus, not traffic.
    running = gateway(num_replicas=1)
    port = free_port()
    plan = {"id": "ro-prom-down", "model_name": DEMO_MODEL_NAME, "baseline_version": "1",
            "candidate_version": "2", "steps": [1, 50, 100], "interval_s": 1,
            "min_requests": 10, "metrics_source": "prometheus",
            "prometheus_url": f"http://127.0.0.1:{port}",
            "guardrails": {"min_check_requests": 5}}
    created = _admin(running, "POST", "/v1/admin/rollouts", plan)
    assert created["weight_bp"] == 100  # the canary starts without metrics

    def held_at_canary(reason: str, seconds: float) -> dict[str, Any]:
        """Watch the rollout for ``seconds``: it must never leave 1%."""
        deadline = time.monotonic() + seconds
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = _admin(running, "GET", "/v1/admin/rollouts/ro-prom-down")
            assert (status["phase"], status["step_index"], status["weight_bp"]) == (
                "progressing", 0, 100), status["hold_reason"]
            time.sleep(0.25)
        assert "metrics unavailable" in status["hold_reason"], status["hold_reason"]
        assert reason in status["hold_reason"], status["hold_reason"]
        return status

    down = held_at_canary("Prometheus at http://127.0.0.1", 5.0)  # five intervals, port closed
    print(f"\nPrometheus down: {down['hold_reason']}")

    prometheus = FakePrometheus(port)
    thread = threading.Thread(target=prometheus.serve_forever, daemon=True)
    thread.start()
    try:
        # Each query now waits out the source's 5 s timeout: two checks and more.
        hung = held_at_canary("timed out", 12.0)
        assert prometheus.queries >= 2
        print(f"Prometheus hanging: {hung['hold_reason']}")
        prometheus.mode = "ok"
        prometheus.release.set()
        proceeded = _until(
            lambda: (s := _admin(running, "GET", "/v1/admin/rollouts/ro-prom-down"))
            ["step_index"] >= 1 and s, "the rollout proceeds once Prometheus answers")
        assert proceeded["weight_bp"] == 5000 and proceeded["phase"] == "progressing"
        # Ended here, before the last step: the session's MLflow keeps its aliases.
        _admin(running, "POST", "/v1/admin/rollouts/ro-prom-down/abort", {"reason": "done"})
    finally:
        prometheus.release.set()
        prometheus.shutdown()
        prometheus.server_close()
    store = str(mlflow_store["uri"])  # both URIs: none set globally by another test
    champion = mlflow.MlflowClient(tracking_uri=store, registry_uri=store
                                   ).get_model_version_by_alias(DEMO_MODEL_NAME, "champion")
    assert str(champion.version) == "1"
