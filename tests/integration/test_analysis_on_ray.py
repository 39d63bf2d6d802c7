"""The analysis loop as a user runs it: traffic through the real gateway on Ray
Serve, outcome events posted to ``POST /v1/outcomes``, then ``rampart analyze``
(a subprocess) on the logs the gateway wrote."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.cli.demo.traffic import Population, drive_traffic
from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
EXPERIMENT = "demo-champion-vs-challenger"


def _config_data(mlflow_store: dict[str, Any], tmp: Path) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=mlflow_store["uri"], data_dir=str(tmp))
    data["decision_log"] = {"path": str(tmp / "decisions")}
    data["outcomes_log"] = {"path": str(tmp / "outcomes")}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": free_port(), "num_replicas": 1}
    # This experiment alone, so it takes every unit (web users included).
    data["experiments"] = [e for e in data["experiments"] if e["id"] == EXPERIMENT]
    experiment = data["experiments"][0]
    experiment["arms"][0]["weight_bp"] = 5000
    experiment["arms"][1]["weight_bp"] = 5000
    # The gateway records the plan as it starts, before the experiment does.
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    experiment["analysis"]["start"] = start.isoformat()
    return data


def _analyze(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAMPART, "analyze", "--config", str(config), "--experiment",
                           EXPERIMENT, *extra], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_gateway_logs_and_posted_outcomes_are_analysed_end_to_end(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAMPART_INGEST_TOKEN", "ingest-token")
    data = _config_data(mlflow_store, tmp_path)
    config_file = tmp_path / "rampart.yaml"
    config_file.write_text(yaml.safe_dump(data))
    gateway = start_gateway(parse_config(data))
    try:
        traffic = drive_traffic(gateway.url, Population(size=3_000, seed=3), 6_000, 8, seed=9)
        assert traffic.ok == 6_000
        # The planted effect: challenger users convert three times as often.
        rng = np.random.default_rng(4)
        units = Population(size=3_000, seed=3).user_ids()
        arm_of: dict[str, str] = {}
        picks = np.random.default_rng(9).integers(0, 3_000, size=6_000)
        for body in traffic.bodies:  # answers arrive in any order; the id says which request
            i = int(str(body["request_id"]).rsplit("-", 1)[1])
            arm_of.setdefault(units[int(picks[i])], str(body["arm"]))
        events = []
        # In unit order, not answer order: the draws, and so the estimate, are
        # the same every run (a 95% interval misses the truth one run in 20).
        for unit, arm in sorted(arm_of.items()):
            rate = 0.3 if arm == "challenger" else 0.1
            if rng.random() < rate:
                events.append({"unit_id": unit, "metric": "converted", "value": 1,
                               "experiment_id": EXPERIMENT})
            events.append({"unit_id": unit, "metric": "revenue",
                           "value": float(rng.normal(10.0, 2.0))})
        for start in range(0, len(events), 2_000):
            answer = httpx.post(f"{gateway.url}/v1/outcomes",
                                headers={"Authorization": "Bearer ingest-token"},
                                json={"events": events[start:start + 2_000]}, timeout=30)
            assert answer.status_code == 202, answer.text
    finally:
        gateway.stop()

    html = tmp_path / "report.html"
    result = _analyze(config_file, "--json", "--html", str(html), "--segment", "country")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["units"] == len(arm_of) and report["crossovers"] == 0
    assert report["srm"]["flag"] is False
    assert sum(report["srm"]["observed"]) == len(arm_of)
    primary = next(m for m in report["metrics"] if m["role"] == "primary")
    assert primary["metric"] == "converted" and primary["arm"] == "challenger"
    assert primary["ci_low"] < 0.2 < primary["ci_high"] and primary["p_value"] < 1e-6
    assert primary["sequential"]["method"] == "msprt" and primary["sequential"]["rejected"]
    assert primary["bayes"]["prob_better"] > 0.999
    platform = next(s for s in report["segments"] if s["attribute"] == "platform")
    assert {r["segment"] for r in platform["segments"]} == {"android", "ios", "web"}
    assert platform["kind"] == "confirmatory"
    country = next(s for s in report["segments"] if s["attribute"] == "country")
    assert country["kind"] == "exploratory"
    assert report["decision"]["outcome"] == "ship" and report["decision"]["arm"] == "challenger"
    assert report["preregistration"]["registered_after_start"] is False
    # no alias moved while the traffic ran: one period, each arm on its own version
    (period,) = report["periods"]
    assert period == report["period"] and report["warnings"] == []
    assert all(len(v) == 1 for v in period["served"].values())
    assert len({v[0] for v in period["served"].values()}) == 2
    assert html.stat().st_size > 10_000 and "<img" in html.read_text()

    # The plan is fixed once the experiment has started.
    data["experiments"][0]["analysis"]["alpha"] = 0.1
    config_file.write_text(yaml.safe_dump(data))
    refused = _analyze(config_file)
    assert refused.returncode == 2
    assert "cannot change after the start" in refused.stderr and "alpha: 0.05 -> 0.1" in (
        refused.stderr)
    assert "Traceback" not in refused.stderr
