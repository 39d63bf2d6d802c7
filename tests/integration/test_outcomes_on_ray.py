"""Outcome events through the real gateway on Ray Serve, and ``rampart outcomes
import`` run as a user runs it (a subprocess)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from telemetry.outcomes_log import read_outcomes
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
JAN1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _config(mlflow_store: dict[str, Any], tmp: Path) -> Any:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data["tracking_uri"] = mlflow_store["uri"]
    data["data_dir"] = str(tmp)
    data["decision_log"] = {"path": str(tmp / "decisions")}
    # Neither size nor time flushes during the test: only the replica's shutdown writes.
    data["outcomes_log"] = {"path": str(tmp / "outcomes"), "batch_rows": 100_000,
                            "flush_interval_s": 600}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": 1}
    return parse_config(data)


INGEST = {"Authorization": "Bearer ingest-token"}


def test_outcomes_posted_to_the_gateway_land_in_the_outcomes_log(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAMPART_INGEST_TOKEN", "ingest-token")
    gateway = start_gateway(_config(mlflow_store, tmp_path))
    try:
        url = f"{gateway.url}/v1/outcomes"
        unauthorized = httpx.post(url, json={"unit_id": "user-1", "metric": "m", "value": 1})
        assert unauthorized.status_code == 401
        one = httpx.post(url, headers=INGEST, json={
            "unit_id": "user-1", "metric": "conversion", "value": 1,
            "timestamp": "2026-01-01T00:00:00Z", "experiment_id": "demo-champion-vs-challenger"})
        assert (one.status_code, one.json()) == (202, {"accepted": 1})
        events = [{"unit_id": f"user-{i}", "metric": "revenue", "value": i * 0.5,
                   "timestamp": 1_767_225_600 + i} for i in range(2, 1002)]
        batch = httpx.post(url, headers=INGEST, json={"events": events})
        assert (batch.status_code, batch.json()) == (202, {"accepted": 1000})
        json_type = {**INGEST, "content-type": "application/json"}
        text_type = {**INGEST, "content-type": "text/plain"}
        refused = [
            (httpx.post(url, headers=INGEST,
                        json={"events": [events[0], {**events[1], "value": "x"}]}), 422),
            (httpx.post(url, content=b"{nope", headers=json_type), 400),
            (httpx.post(url, content=b"unit_id=u", headers=text_type), 415),
        ]
        for response, status in refused:
            assert response.status_code == status, response.text
            assert response.json()["error"]["message"]
        assert "events.1.value" in refused[0][0].json()["error"]["message"]
    finally:
        gateway.stop()  # graceful: the replica closes its writers, which write what is left
    rows = {r["unit_id"]: r for r in read_outcomes(tmp_path / "outcomes").to_pylist()}
    assert len(rows) == 1001  # the refused batch recorded nothing
    assert rows["user-1"]["timestamp"] == JAN1
    assert rows["user-1"]["experiment_id"] == "demo-champion-vs-challenger"
    assert rows["user-7"]["value"] == 3.5 and rows["user-7"]["metric"] == "revenue"
    assert rows["user-7"]["timestamp"] == JAN1 + dt.timedelta(seconds=7)
    assert all(r["received_at"] > JAN1 for r in rows.values())


def test_outcomes_import_from_the_command_line(tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text("unit_id,metric,value,timestamp\n"
                      + "".join(f"user-{i},conversion,{i % 2},{1_767_225_600 + i}\n"
                                for i in range(5000)))
    log = tmp_path / "outcomes"
    result = subprocess.run([RAMPART, "outcomes", "import", str(source), "--outcomes", str(log)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "imported 5000 outcome events" in result.stdout
    assert read_outcomes(log).num_rows == 5000

    source.write_text("unit_id,metric,value\nu1,conversion,1\nu2,conversion,\n")
    bad = subprocess.run([RAMPART, "outcomes", "import", str(source), "--outcomes", str(log)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2
    assert "row 2: value is missing" in bad.stderr and "Traceback" not in bad.stderr
    assert read_outcomes(log).num_rows == 5000
    helped = subprocess.run([RAMPART, "outcomes", "import", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert helped.returncode == 0 and "usage: rampart outcomes import" in helped.stdout
