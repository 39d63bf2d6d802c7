"""The gateway on real Ray Serve with two replicas, real MLflow, real HTTP."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.cli.demo.traffic import Population, drive_traffic
from serving.cli.launch import RunningGateway, start_gateway
from serving.kernel.config import parse_config
from telemetry.decision_log import read_decisions
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def _config(mlflow_store: dict[str, Any], tmp: Path, replicas: int) -> Any:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data["tracking_uri"] = mlflow_store["uri"]
    data["data_dir"] = str(tmp)
    data["decision_log"] = {"path": str(tmp / "decisions"), "batch_rows": 50,
                            "flush_interval_s": 0.5}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": replicas}
    return parse_config(data)


def _scrape_requests(url: str) -> dict[tuple[str, str], float]:
    totals: dict[tuple[str, str], float] = Counter()
    pattern = re.compile(r'^rampart_requests_total\{(.*)\} ([0-9.e+]+)$')
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            totals[(labels["model_version"], labels["status"])] += float(match.group(2))
    return totals


@pytest.fixture(scope="module")
def two_replicas(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    tmp = tmp_path_factory.mktemp("gateway")
    gateway = start_gateway(_config(mlflow_store, tmp, replicas=2))
    yield gateway, tmp
    gateway.stop()


def test_two_replicas_log_count_and_answer_every_request_exactly_once(
    two_replicas: tuple[RunningGateway, Path],
) -> None:
    gateway, tmp = two_replicas
    requests = 1500
    result = drive_traffic(gateway.url, Population(size=500), requests, concurrency=8, seed=11)
    assert result.ok == requests, Counter(result.status_codes)

    # One scrape of any replica counts every request of both, exactly once.
    counted = _scrape_requests(gateway.url)
    by_version = Counter(str(b["model_version"]) for b in result.bodies)
    for version, n in by_version.items():
        assert counted[(version, "ok")] == n
    assert sum(v for (_, status), v in counted.items() if status == "ok") == requests

    # The 90/10 split holds on the answers of that experiment (web users are in
    # the tree experiment, listed before it).
    main = [b for b in result.bodies if b["experiment_id"] == "demo-champion-vs-challenger"]
    share = sum(1 for b in main if b["arm"] == "challenger") / len(main)
    assert 0.07 < share < 0.13
    assert any(b["experiment_id"] == "demo-tree" and b["arm"] == "tree" for b in result.bodies)

    gateway.stop()  # graceful: every replica flushes its decision log
    table = read_decisions(tmp / "decisions")
    rows = table.to_pylist()
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert len(ok_rows) == result.ok
    assert sorted(r["request_id"] for r in ok_rows) == sorted(result.sent_request_ids)
    answers = {str(b["request_id"]): b for b in result.bodies}
    for row in ok_rows:
        answer = answers[row["request_id"]]
        assert (row["arm"], row["model_version"], row["prediction"]) == (
            answer["arm"], answer["model_version"], answer["prediction"])
    writers = {p.name.split("-")[1] for p in (tmp / "decisions").rglob("*.parquet")}
    assert len(writers) == 2, "both replicas should have served traffic"


def test_bad_input_over_http_is_a_4xx_not_a_500(ray_session: None, mlflow_store: dict[str, Any],
                                                 tmp_path: Path) -> None:
    gateway = start_gateway(_config(mlflow_store, tmp_path, replicas=1))
    try:
        url = f"{gateway.url}/v1/predict"
        declared = {"content-type": "application/json"}
        cases = [
            (httpx.post(url, content=b"{nope", headers=declared), 400),
            (httpx.post(url, json={"unit_id": "u", "features": {"f0": 1.0}}), 422),
            (httpx.post(url, json={"unit_id": "", "features": {}}), 422),
            (httpx.post(url, content=b"x" * (1024 * 1024 + 10), headers=declared), 413),
            (httpx.post(url, content=b'{"unit_id": "u"}', headers={"content-type": "text/plain"}),
             415),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.json()["error"]["message"]
        assert httpx.get(f"{gateway.url}/openapi.json").json()["paths"]["/v1/predict"]
        assert httpx.get(f"{gateway.url}/v1/routing").json()["version"] == 1
    finally:
        gateway.stop()
