"""Two gateways on one host: two ``rampart serve`` processes, each with its own
port, data directory, local Ray and HAProxy (whose stats and metrics ports and
files would otherwise be fixed and shared), start, serve and stop side by side.
Each HAProxy listens on loopback only (its stats and metrics too, which Ray
binds to every interface) and keeps its admin socket to its owner (mode 600).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.cli.process_guard import processes_marked
from telemetry.decision_log import read_decisions
from tests.gateway_processes import haproxy_configs, healthy
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


def _listening(pid: int) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            # The kernel prints each 32-bit word of the address in host order.
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                           for i in range(0, len(address), 8))
            found.add((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _admin_socket(config_file: str) -> str:
    # The file on disk is Ray's latest rendering (hardened when HAProxy next
    # starts); the socket's path is the same in both.
    match = re.search(r"^\s*stats socket (\S+)", Path(config_file).read_text(), re.MULTILINE)
    assert match
    return match.group(1)


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
        while not all(healthy(url) for _, url in gateways):
            assert time.monotonic() < deadline, "both gateways did not come up"
            for process in processes:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.5)
        instances = [json.loads((config.parent / "serve.json").read_text())["instance"]
                     for config, _ in gateways]
        ports_seen: list[tuple[int, int]] = []
        for instance, (_, url) in zip(instances, gateways, strict=True):
            haproxies = haproxy_configs(instance)
            assert haproxies, "no HAProxy found for a gateway"
            listeners = {pid: _listening(pid) for pid in haproxies}
            # One HAProxy serves; any other is a predecessor draining after a
            # reload, its listeners closed.
            assert [pid for pid, listening in listeners.items() if listening], listeners
            for pid, config_file in haproxies.items():
                listening = listeners[pid]
                if not listening:
                    continue
                # Everything this HAProxy listens on is on loopback: the
                # gateway's port, its stats and its metrics; nothing on any
                # other interface.
                assert {address for address, _ in listening} == {"127.0.0.1"}, listening
                gateway_port = int(url.rsplit(":", 1)[1])
                own = sorted(port for _, port in listening if port != gateway_port)
                assert len(listening) == 3 and len(own) == 2, listening
                answers = {port: httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=5)
                           for port in own}
                [stats_port] = [p for p, a in answers.items() if "pxname" in a.text]
                [metrics_port] = [p for p in own if p != stats_port]
                assert "haproxy_" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                               timeout=5).text
                assert stat.S_IMODE(os.stat(_admin_socket(config_file)).st_mode) == 0o600
                ports_seen.append((stats_port, metrics_port))
        # Each gateway's HAProxy has stats and metrics ports of its own.
        assert len({port for pair in set(ports_seen) for port in pair}) == 2 * len(
            set(ports_seen)) == 4
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
