"""MLflow's tracking server unavailable, at start and while serving.

At start, every command that reads the registry answers one line naming the
store and exits 2, whether nothing listens at the URI or a server accepts and
never answers (MLflow's own client would retry either for minutes). The bound
is the subprocess timeout, not an assertion of speed.

While serving, a real MLflow tracking server (``mlflow server`` on a copy of
the session's SQLite store, a free loopback port) is the gateway's registry.
Stopped under traffic, the loaded versions keep answering; a rollout to a
version no replica has loaded holds, says why, and publishes no routing table;
once MLflow is back on the same port the rollout starts and the replica loads
the version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import yaml

from serving.cli.common import default_config_document
from serving.cli.demo.models import DEMO_MODEL_NAME
from serving.cli.launch import RunningGateway, start_gateway
from serving.kernel.config import parse_config
from tests.faults import Traffic, admin_call, wait_until
from tests.ports import free_port, free_ports

BIN = Path(sys.executable).parent
RAMPART = str(BIN / "rampart")
TOKEN = "mlflow-faults-token"
CLI_TIMEOUT_S = 90.0  # a bound for a broken implementation, not a measurement
DEADLINE_S = 120.0


def _admin(gateway: RunningGateway, method: str, path: str, body: Any = None) -> Any:
    return admin_call(gateway.url, TOKEN, method, path, body)


def _until(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    return wait_until(condition, what, timeout_s)


def _rampart(*args: str, cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "RAY_", "RAMPART_"))}
    environ.update(env or {})
    return subprocess.run([RAMPART, *args], capture_output=True, text=True, cwd=cwd,
                          env=environ, timeout=CLI_TIMEOUT_S)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers (a hung server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _config_with(uri: str, tmp_path: Path) -> Path:
    data = default_config_document()
    data.update(tracking_uri=uri, data_dir=str(tmp_path / "data"))
    path = tmp_path / "rampart.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("server", ["closed", "hung"])
def test_every_registry_command_fails_with_one_line_when_mlflow_is_away(
        server: str, silent_server: str, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}" if server == "closed" else silent_server
    config = _config_with(uri, tmp_path)
    port = str(free_port())
    commands: dict[str, Callable[[], subprocess.CompletedProcess[str]]] = {
        "serve --tracking-uri": lambda: _rampart(
            "serve", "--tracking-uri", uri, "--port", port, cwd=tmp_path),
        "serve --model, MLFLOW_TRACKING_URI": lambda: _rampart(
            "serve", "--model", f"models:/{DEMO_MODEL_NAME}@champion", "--port", port,
            cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}),
        "serve, config tracking_uri": lambda: _rampart(
            "serve", "--config", str(config), "--port", port, cwd=tmp_path),
        "assign": lambda: _rampart(
            "assign", "--config", str(config), "--unit-id", "u-1", cwd=tmp_path),
        "parity replay": lambda: _rampart(
            "parity", "replay", "--decisions", str(tmp_path), "--model",
            f"models:/{DEMO_MODEL_NAME}/1", "--config", str(config), cwd=tmp_path),
        "parity report": lambda: _rampart(
            "parity", "report", "--decisions", str(tmp_path), "--model",
            f"models:/{DEMO_MODEL_NAME}/1", "--tracking-uri", uri, cwd=tmp_path),
    }
    # All at once: each waits on the same away server, and one after another
    # they would spend most of a minute waiting.
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {name: pool.submit(run) for name, run in commands.items()}
        runs = {name: future.result() for name, future in futures.items()}
    for name, result in runs.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("rampart: error: "), (name, lines)
        assert uri in lines[0], (name, lines)
        assert ("did not answer" if server == "hung" else "no MLflow tracking server answers"
                ) in lines[0], (name, lines)
        assert "Traceback" not in result.stderr and "seed-demo" not in lines[0]


# --------------------------------------------------------------------------- while serving


class MlflowServer:
    """``mlflow server`` on a SQLite store, stopped and started again on one port."""

    def __init__(self, backend: Path, port: int, log: Path) -> None:
        self.backend = backend
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri",
                 f"sqlite:///{self.backend}", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        # Its own session: the server and the workers it started go together.
        with_pgid = self.process.pid
        try:
            os.killpg(with_pgid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(with_pgid, signal.SIGKILL)
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        self.process = None
        deadline = time.monotonic() + 30
        while _listening(self.port):  # a worker still holding the port
            assert time.monotonic() < deadline, "mlflow server did not let go of its port"
            time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def mlflow_server(mlflow_store: dict[str, Any], tmp_path: Path) -> Iterator[MlflowServer]:
    # A copy: nothing this test does reaches the session's store.
    # SQLite's backup, not a file copy: what other tests wrote lately may still
    # be in the source's journal, and a copied file alone can miss it.
    backend = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(Path(mlflow_store["root"]) / "mlflow.db")) as source, \
            contextlib.closing(sqlite3.connect(backend)) as copy:
        source.backup(copy)
    server = MlflowServer(backend, free_port(), tmp_path / "mlflow-server.log")
    server.start()
    yield server
    server.stop()


def test_mlflow_stopped_while_serving_keeps_versions_serving_and_holds_the_rollout(
        ray_session: None, mlflow_server: MlflowServer, tmp_path: Path) -> None:
    data = default_config_document()
    data.update(
        models=[{"name": DEMO_MODEL_NAME, "versions": ["champion"]}],  # version 1 only
        default={"model": DEMO_MODEL_NAME, "version": "champion"},
        experiments=[], shadows=[], feature_transforms=[],
        tracking_uri=mlflow_server.url, data_dir=str(tmp_path),
        rollout_store_url=f"sqlite:///{tmp_path / 'rollouts.db'}",
        decision_log={"path": str(tmp_path / "decisions")},
        telemetry={"metrics_dir": str(tmp_path / "metrics")},
        # One replica: this test is about MLflow, and a second costs start-up time.
        server={"host": "127.0.0.1", "port": free_ports(1)[0], "num_replicas": 1})
    gateway = start_gateway(parse_config(data), admin_token=TOKEN)
    try:
        with Traffic(gateway.url) as traffic:
            _until(lambda: len(traffic.codes) >= 20, "traffic answered")
            mlflow_server.stop()
            stopped_at = len(traffic.codes)
            time.sleep(2.0)
            routing = _admin(gateway, "GET", "/v1/admin/routing")["version"]
            plan = {"id": "ro-mlflow-down", "model_name": DEMO_MODEL_NAME,
                    "baseline_version": "1", "candidate_version": "3", "steps": [1, 100],
                    "interval_s": 1, "min_requests": 1_000_000}
            created = _admin(gateway, "POST", "/v1/admin/rollouts", plan)
            assert created["phase"] == "pending" and created["weight_bp"] == 0
            assert "MLflow unreachable" in created["hold_reason"]
            time.sleep(4.0)  # four analysis intervals
            status = _admin(gateway, "GET", "/v1/admin/rollouts/ro-mlflow-down")
            assert (status["phase"], status["weight_bp"]) == ("pending", 0)
            assert "MLflow unreachable" in status["hold_reason"]
            assert mlflow_server.url in status["hold_reason"]
            assert _admin(gateway, "GET", "/v1/admin/routing")["version"] == routing
            cli = _rampart("rollout", "status", "ro-mlflow-down", "--json", "--url",
                           gateway.url, "--token", TOKEN, cwd=tmp_path)
            assert cli.returncode == 0, cli.stderr
            assert "MLflow unreachable" in cli.stdout
            served_while_down = traffic.codes[stopped_at:]
            assert len(served_while_down) >= 50 and set(served_while_down) == {200}

            mlflow_server.start()
            status = _until(lambda: (s := _admin(gateway, "GET",
                                                 "/v1/admin/rollouts/ro-mlflow-down"))
                            ["phase"] == "progressing" and s, "the rollout starts")
            assert status["weight_bp"] == 100 and "MLflow" not in status["hold_reason"]
            published = status["routing_version"]
            assert published > routing

            def applied() -> bool:
                replicas = _admin(gateway, "GET", "/v1/admin/routing")["replicas"]
                return bool(replicas) and all(r["serving_version"] >= published
                                              for r in replicas)

            _until(applied, "the replica loads version 3 and serves the new table")
            time.sleep(1.0)
        assert traffic.failures() == 0, sorted(set(traffic.codes))
        print(f"\nMLflow down then back: {len(traffic.codes)} requests, "
              f"{len(served_while_down)} while MLflow was stopped, "
              f"{traffic.failures()} failed")
    finally:
        gateway.stop()
    # Both URIs named: a client given only the tracking URI takes the registry
    # URI another test of this process may have set globally.
    store = f"sqlite:///{mlflow_server.backend}"
    champion = mlflow.MlflowClient(tracking_uri=store, registry_uri=store
                                   ).get_model_version_by_alias(DEMO_MODEL_NAME, "champion")
    assert str(champion.version) == "1"  # no alias moved
