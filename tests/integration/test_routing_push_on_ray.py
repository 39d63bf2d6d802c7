"""Routing changes reach every replica by push (Ray Serve, two replicas).

Each replica keeps a long-poll parked on the rollout controller and comes back
with the version it now serves; the controller's acknowledgement data
(``GET /v1/admin/routing``) must show both replicas on every new version.
No wall-clock bound here: the propagation benchmark measures the time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.cli.demo.models import DEMO_MODEL_NAME
from serving.cli.demo.scenarios import AdminClient
from serving.cli.launch import RunningGateway, start_gateway
from serving.kernel.config import parse_config
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "push-test-token"
REPLICAS = 2


@pytest.fixture(scope="module")
def gateway(ray_session: None, mlflow_store: dict[str, Any],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp_path = tmp_path_factory.mktemp("push")
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=mlflow_store["uri"], data_dir=str(tmp_path), experiments=[],
                rollout_store_url=f"sqlite:///{tmp_path / 'rollouts.db'}")
    data["decision_log"] = {"path": str(tmp_path / "decisions")}
    data["telemetry"] = {"metrics_dir": str(tmp_path / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": REPLICAS}
    running = start_gateway(parse_config(data), admin_token=TOKEN)
    yield running
    running.stop()


def _served_by_all(admin: AdminClient, version: int, timeout_s: float = 60) -> dict[str, Any]:
    """The routing status once every following replica is back on ``version``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = admin.call("GET", "/v1/admin/routing")
        figures = {p["version"]: p for p in status["propagation"]}
        if version in figures and figures[version]["propagation_ms"] is not None:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_every_change_reaches_every_replica(gateway: RunningGateway) -> None:
    admin = AdminClient(gateway.url, TOKEN)
    shadow = {"model": DEMO_MODEL_NAME, "version": "2"}
    for enabled in (True, False, True):
        version = admin.call("POST", "/v1/admin/shadows",
                             {**shadow, "enabled": enabled})["routing_version"]
        status = _served_by_all(admin, version)
        figure = next(p for p in status["propagation"] if p["version"] == version)
        assert (figure["replicas"], figure["serving"]) == (REPLICAS, REPLICAS), status
        assert len(status["replicas"]) == REPLICAS
        assert all(r["serving_version"] >= version for r in status["replicas"])
    # The request path serves the last table: the shadow is attached again.
    routing = httpx.get(f"{gateway.url}/v1/routing", timeout=10).json()
    assert routing["version"] >= version and routing["shadows"]


def test_without_chaos_there_is_no_fault_route(gateway: RunningGateway) -> None:
    response = httpx.post(f"{gateway.url}/v1/admin/faults", timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"model_name": DEMO_MODEL_NAME, "model_version": "2",
                                "latency_ms": 100})
    assert response.status_code == 404
