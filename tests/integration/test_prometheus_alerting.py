"""Prometheus rules checked by promtool, and a live loop: a real Prometheus
scrapes a running gateway, a real Alertmanager calls its webhook, and a slow
candidate is rolled back by the alert."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rollout.metrics_source import PrometheusMetricsSource
from serving.cli.demo.scenarios import AdminClient, BackgroundTraffic
from serving.cli.launch import start_gateway
from serving.kernel.config import parse_config
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOKEN = "prometheus-test-token"


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make system-deps` installs Debian's prometheus packages"
    return path


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _binary("promtool")
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    subprocess.run([promtool, "check", "rules", *rules], check=True, capture_output=True)
    subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                   check=True, capture_output=True)
    result = subprocess.run([promtool, "test", "rules", "rules_test.yml"],
                            cwd=DEPLOY / "prometheus" / "tests", capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_alertmanager_config_is_valid() -> None:
    result = subprocess.run([_binary("amtool"), "check-config",
                             str(DEPLOY / "alertmanager" / "alertmanager.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "receiver"), [
    (["action=rollback", "rollout=ro-1", "alertname=RampartCandidateP99High"],
     "rampart-gateway"),
    (["action=notify", "rollout=ro-1", "alertname=RampartRolloutStuck"], "operators"),
    (["rollout=ro-1", "alertname=SomethingElse"], "operators"),
    (["action=rollback", "alertname=NoRollout"], "operators"),
])
def test_only_rollback_alerts_reach_the_gateway(labels: list[str], receiver: str) -> None:
    done = subprocess.run(
        [_binary("amtool"), "config", "routes", "test",
         f"--config.file={DEPLOY / 'alertmanager' / 'alertmanager.yml'}", *labels],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [receiver]


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(url)


@dataclass(frozen=True)
class Ports:
    gateway: int
    prometheus: int
    alertmanager: int


@pytest.fixture
def ports() -> Ports:
    return Ports(*free_ports(3))


@pytest.fixture
def monitoring(tmp_path: Path, ports: Ports) -> Iterator[None]:
    """Prometheus and Alertmanager from deploy/, pointed at the test's ports."""
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    prom_cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom_cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in prom_cfg["rule_files"]]
    prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{ports.alertmanager}"]
    prom_cfg["scrape_configs"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{ports.gateway}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
    am_cfg = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    hook = am_cfg["receivers"][0]["webhook_configs"][0]
    hook["url"] = f"http://127.0.0.1:{ports.gateway}/v1/admin/alerts"
    (tmp_path / "token").write_text(TOKEN)
    hook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "token")
    am_cfg["route"]["group_wait"] = "0s"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg))
    procs = [
        subprocess.Popen([
            _binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([
            _binary("prometheus-alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
            "--cluster.listen-address=",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait_http(f"http://127.0.0.1:{ports.prometheus}/-/ready")
        _wait_http(f"http://127.0.0.1:{ports.alertmanager}/-/ready")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_a_prometheus_alert_rolls_the_slow_candidate_back(
    ray_session: None, mlflow_store: dict[str, Any], tmp_path: Path, ports: Ports,
    monitoring: None,
) -> None:
    data = yaml.safe_load((DEPLOY / "rampart.yaml").read_text())
    data.update(tracking_uri=mlflow_store["uri"], data_dir=str(tmp_path), experiments=[],
                rollout_store_url=f"sqlite:///{tmp_path / 'rollouts.db'}")
    data["decision_log"] = {"path": str(tmp_path / "decisions")}
    data["telemetry"] = {"metrics_dir": str(tmp_path / "metrics")}
    data["server"] = {"host": "127.0.0.1", "port": ports.gateway, "num_replicas": 1}
    gateway = start_gateway(parse_config(data), admin_token=TOKEN, chaos=True)
    traffic = BackgroundTraffic(gateway.url, concurrency=4).start()
    admin = AdminClient(gateway.url, TOKEN)
    try:
        # Guardrails so loose that only the alert can roll this back; a huge
        # min_requests keeps it at its first step.
        admin.call("POST", "/v1/admin/rollouts", {
            "id": "ro-prom", "model_name": "rampart-demo-classifier", "baseline_version": "1",
            "candidate_version": "2", "steps": [20, 100], "interval_s": 1,
            "min_requests": 10_000_000, "failure_limit": 100,
            "guardrails": {"p99_latency_delta_ms": 600_000, "error_rate_delta": 1.0}})
        time.sleep(4)
        source = PrometheusMetricsSource(f"http://127.0.0.1:{ports.prometheus}")
        seen = source.snapshot("ro-prom")
        assert seen["baseline"].requests > 0 and seen["candidate"].requests > 0
        admin.call("POST", "/v1/admin/faults", {"model_name": "rampart-demo-classifier",
                                                "model_version": "2", "latency_ms": 400})
        onset = time.monotonic()
        status = admin.call("GET", "/v1/admin/rollouts/ro-prom")
        while status["phase"] != "rolled_back" and time.monotonic() - onset < 90:
            time.sleep(0.5)
            status = admin.call("GET", "/v1/admin/rollouts/ro-prom")
        assert status["phase"] == "rolled_back", status
        assert status["weight_bp"] == 0
        assert "alert firing: RampartCandidateP99High" in status["audit"][-1]["reason"]
        alerts = httpx.get(f"http://127.0.0.1:{ports.prometheus}/api/v1/alerts").json()
        firing = {a["labels"]["alertname"]: a["labels"] for a in alerts["data"]["alerts"]}
        assert firing["RampartCandidateP99High"]["rollout"] == "ro-prom"
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'rampart_rollout_active{rollout="ro-prom"} 0.0' in metrics
    finally:
        traffic.stop()
        gateway.stop()
