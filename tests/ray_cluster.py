"""A real two-node Ray cluster on this machine, for the cluster tests.

``ray start --head`` plus ``ray start --address``: two raylets, each with its
own CPU, object store and (for Serve) its own HAProxy on ports and files of
its own, so the cluster runs beside any other Ray on the machine. Token
authentication is on (as Ray 2.60 wants for a second node), with a token made
for this cluster.

Every process the cluster starts inherits a marker in its environment
(``RAMPART_TEST_CLUSTER``, and ``RAMPART_TEST_NODE`` naming the node); the
cluster is stopped by ending exactly those processes, never with ``ray stop``,
which would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.cli.process_guard import processes_with_env
from serving.gateway.ray_app import INGRESS_ENV, haproxy_env
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
RAMPART = Path(sys.executable).with_name("rampart")
REPLICA_CLASS = "ServeReplica:rampart:RampartGateway"
CLUSTER_MARKER = "RAMPART_TEST_CLUSTER"
NODE_MARKER = "RAMPART_TEST_NODE"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class LocalRayCluster:
    """Start with :meth:`start`; ``address`` and :meth:`client_env` connect to it."""

    extra_env: Mapping[str, str] = field(default_factory=dict)
    cluster_id: str = field(default_factory=lambda: secrets.token_hex(6))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc-")))
    address: str = ""
    _worker: tuple[list[str], dict[str, str]] = field(default=([], {}), repr=False)
    dashboard_url: str = ""  # what `serve deploy --address` takes
    client_address: str = ""  # Ray Client: ray://HOST:PORT
    worker_proxy_port: int = 0

    def client_env(self) -> dict[str, str]:
        """What a process needs to join the cluster as a driver."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_ADDRESS=self.address,
                   RAY_DEDUP_LOGS="0")
        env.update(self.extra_env)
        return env

    def _node_env(self, node: str, haproxy_dir: Path, stats: int, metrics: int,
                  fallback: tuple[int, int]) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS"))]:
            del env[key]
        env.update(INGRESS_ENV)
        env.update(haproxy_env(haproxy_dir, stats, metrics, fallback))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   **{CLUSTER_MARKER: self.cluster_id, NODE_MARKER: node})
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 180.0) -> LocalRayCluster:
        (gcs, client, head_agent, worker_agent, head_stats, head_metrics, worker_stats,
         worker_metrics, self.worker_proxy_port, dashboard, *fallback) = free_ports(14)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        self.client_address = f"ray://127.0.0.1:{client}"
        head_dir, worker_dir = self.root / "hh", self.root / "hw"
        head_dir.mkdir()
        worker_dir.mkdir()
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
        head = [str(RAY), "start", "--head", "--port", str(gcs), "--temp-dir",
                str(self.root / "ray"), "--ray-client-server-port", str(client),
                "--dashboard-agent-listen-port", str(head_agent),
                # The dashboard serves Ray's state API (where actors run).
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard), *common]
        self._run(head, self._node_env("head", head_dir, head_stats, head_metrics,
                                                (fallback[0], fallback[1])), timeout_s)
        worker_env = self._node_env("worker", worker_dir, worker_stats, worker_metrics,
                                    (fallback[2], fallback[3]))
        # Both nodes' ingress proxies share this machine: the worker's takes another port.
        worker_env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(self.worker_proxy_port)
        worker = [str(RAY), "start", "--address", self.address,
                  "--dashboard-agent-listen-port", str(worker_agent), *common]
        self._worker = (worker, worker_env)
        self._run(worker, worker_env, timeout_s)
        return self

    def restart_worker(self, timeout_s: float = 180.0) -> None:
        """Start the worker node again (after :meth:`kill_node`), with what it had,
        once every process of the lost one has ended."""
        for pid in self.node_pids("worker"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_running(p) for p in self.node_pids("worker")) and (
                time.monotonic() < deadline):
            time.sleep(0.1)
        argv, env = self._worker
        self._run(argv, env, timeout_s)

    def _run(self, argv: list[str], env: dict[str, str], timeout_s: float) -> None:
        try:
            done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise RuntimeError(f"{' '.join(argv[:3])} did not finish in {timeout_s}s") from exc
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")

    def query(self, code: str, timeout_s: float = 120) -> Any:
        """Run ``code`` in a driver on the cluster; it prints one JSON value."""
        script = "import json, ray\nray.init(log_to_driver=False)\n" + textwrap.dedent(code)
        done = subprocess.run([sys.executable, "-c", script], env=self.client_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"cluster query failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def replica_nodes(self) -> list[str]:
        """Node ids of the gateway's live replicas, from Ray's state API."""
        nodes: list[str] = self.query(f"""
            from ray.util.state import list_actors
            actors = list_actors(filters=[("class_name", "=", "{REPLICA_CLASS}"),
                                          ("state", "=", "ALIVE")])
            print(json.dumps(sorted(a.node_id for a in actors)))
        """)
        return nodes

    def rampart(self, *args: str, env: Mapping[str, str] | None = None,
                timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """The ``rampart`` CLI as a driver of this cluster (RAY_ADDRESS set)."""
        return subprocess.run([str(RAMPART), *args], env={**self.client_env(), **(env or {})},
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)

    def node_pids(self, node: str) -> list[int]:
        return processes_with_env(NODE_MARKER, node)

    def raylet_pid(self, node: str) -> int:
        pids = [p for p in self.node_pids(node) if _comm(p) == "raylet"]
        assert len(pids) == 1, f"{node} raylets: {pids}"
        return pids[0]

    def kill_node(self, node: str) -> None:
        """SIGKILL the node's raylet, as a lost machine would look to the cluster."""
        os.kill(self.raylet_pid(node), signal.SIGKILL)

    def stop(self) -> None:
        """End every process of this cluster (and nothing else), then its files."""
        for _ in range(3):
            pids = [p for p in processes_with_env(CLUSTER_MARKER, self.cluster_id) if _running(p)]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(_running(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
