"""Two gateways on one host: two ``rampart serve`` processes, each with its own
port, data directory, local Ray and HAProxy (whose stats and metrics ports and
files would otherwise be fixed and shared), start, serve and stop side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.cli.process_guard import processes_marked
from telemetry.decision_log import read_decisions
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = Path(sys.executable).with_name("rampart")


def _config(tmp: Path, tracking_uri: str) -> tuple[Path, str]:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=tracking_uri, data_dir=str(tmp))
    data["decision_log"] = {"path": str(tmp / "decisions"), "flush_interval_s": 0.5}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    port = free_port()
    data["server"] = {"host": "127.0.0.1", "port": port, "num_replicas": 1}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rampart.yaml").write_text(yaml.safe_dump(data))
    return tmp / "rampart.yaml", f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_gateways_on_one_host_start_serve_and_stop_side_by_side(
    mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS"))}
    gateways = [_config(tmp_path / name, str(mlflow_store["uri"])) for name in ("a", "b")]
    processes = [subprocess.Popen([str(RAMPART), "serve", "--config", str(config)], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
                 for config, _ in gateways]
    try:
        deadline = time.monotonic() + 240
        while not all(_healthy(url) for _, url in gateways):
            assert time.monotonic() < deadline, "both gateways did not come up"
            for process in processes:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.5)
        instances = [json.loads((config.parent / "serve.json").read_text())["instance"]
                     for config, _ in gateways]
        sent = []
        for _, url in gateways:
            with httpx.Client(base_url=url, timeout=30) as client:
                answers = [client.post("/v1/predict", json={
                    "unit_id": f"user-{i}", "features": {f"f{k}": 0.1 * k for k in range(8)}})
                    for i in range(50)]
            assert [a.status_code for a in answers] == [200] * 50
            sent.append({a.json()["request_id"] for a in answers})
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        assert "stopped" in output
    # Each gateway answered and logged its own requests, and only those.
    for (config, _), answered in zip(gateways, sent, strict=True):
        log = read_decisions(config.parent / "decisions")
        logged = [r for r, role in zip(log["request_id"].to_pylist(), log["role"].to_pylist(),
                                       strict=True) if role == "primary"]
        assert sorted(logged) == sorted(answered)
    # Each one ended everything it started, its HAProxy included.
    for instance in instances:
        assert processes_marked(instance) == []
