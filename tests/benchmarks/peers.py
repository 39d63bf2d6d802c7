"""The servers the serving benchmark compares, and their process handling.

Two model rows: the demo's champion (a logistic regression, which Rampart
folds into its inline fast path) behind four servers, and its ``tree``
version (a gradient-boosted ensemble, which Rampart scores in its worker
pool) behind three, the ``tree_`` ones.

Each server runs in its own session (``start_new_session=True``). Stopping one
first asks its leader to stop (SIGTERM: Ray-based servers shut Serve and Ray
down themselves), then terminates and finally kills whatever is left of the
process family recorded just before: the session's members plus every
descendant (Ray worker processes and HAProxy included, whatever session they
ended up in).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODEL_NAME = "rampart-demo-classifier"
FEATURE_NAMES = tuple(f"f{i}" for i in range(8))
# Must match the values in wrk_post.lua.
FEATURE_VALUES = (0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.8, 0.05)
SERVER_NAMES = ("fastapi", "ray_serve_proxy", "mlflow_serve", "rampart",
                "tree_fastapi", "tree_mlflow_serve", "tree_rampart")
RAY_INGRESS_VARS = ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY")
HAPROXY_STATS_OFFSET, HAPROXY_METRICS_OFFSET = 10, 11  # 18011, 18012 by default


class PeerError(RuntimeError):
    """A server could not be started, did not answer, or answered wrongly."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    port: int
    path: str  # the endpoint wrk drives
    lua_mode: str  # "predict" or "mlflow" (see wrk_post.lua)
    argv: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    start_timeout_s: float = 60.0
    stop_grace_s: float = 15.0
    note: str = ""
    extra_ports: tuple[int, ...] = ()  # other listeners the server opens
    # The demo alias of the version served (Rampart: its default, or control arm).
    alias: str = "champion"
    # What one answer holds: P(class 1) ("proba"), the class label pyfunc
    # predicts ("label"), or Rampart's answer naming the version it routed to.
    answers: Literal["proba", "label", "routed"] = "proba"
    # Rampart with an experiment: the share of units its challenger must get.
    challenger_share: tuple[float, float] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def body(self, unit_id: str) -> bytes:
        if self.lua_mode == "mlflow":
            payload: dict[str, Any] = {
                "dataframe_split": {"columns": list(FEATURE_NAMES), "data": [list(FEATURE_VALUES)]}
            }
        else:
            features = dict(zip(FEATURE_NAMES, FEATURE_VALUES, strict=True))
            payload = {"unit_id": unit_id, "features": features}
        return json.dumps(payload).encode()


def peer_specs(tracking_uri: str, work_dir: Path, port_base: int) -> dict[str, PeerSpec]:
    """Every server, on ports ``port_base .. port_base + len(SERVER_NAMES) - 1``; writes
    the tree row's Rampart config under ``work_dir``."""
    python = sys.executable
    mlflow_bin = str(Path(python).with_name("mlflow"))
    model_uri = f"models:/{MODEL_NAME}/1"
    tree_uri = f"models:/{MODEL_NAME}@tree"
    base_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base_env.update(MLFLOW_TRACKING_URI=tracking_uri, BENCH_MODEL_URI=model_uri,
                    PYTHONUNBUFFERED="1")
    # As with an activated venv: `mlflow models serve` runs `uvicorn` from PATH.
    base_env["PATH"] = os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])
    tree_env = dict(base_env, BENCH_MODEL_URI=tree_uri, BENCH_MODEL_VERSION="tree")
    default_proxy_env = {k: v for k, v in base_env.items() if k not in RAY_INGRESS_VARS}
    # Rampart's start_gateway calls ray.init() without an address: make sure that
    # starts a fresh local Ray instead of joining a cluster someone else started.
    # HAProxy's own stats and metrics listeners default to 8404 and 9101, shared
    # by every HAProxy-fronted Serve on this machine: give this one its own.
    rampart_env = dict(
        base_env, RAY_ADDRESS="local",
        RAY_SERVE_HAPROXY_STATS_PORT=str(port_base + HAPROXY_STATS_OFFSET),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(port_base + HAPROXY_METRICS_OFFSET),
    )
    haproxy_ports = (port_base + HAPROXY_STATS_OFFSET, port_base + HAPROXY_METRICS_OFFSET)
    ports = {name: port_base + i for i, name in enumerate(SERVER_NAMES)}
    tree_config = write_tree_config(work_dir / "rampart-tree.yaml")

    def plain_fastapi(name: str, env: dict[str, str], note: str, alias: str) -> PeerSpec:
        return PeerSpec(
            name, ports[name], "/v1/predict", "predict",
            (python, "-m", "uvicorn", "plain_fastapi_app:app", "--app-dir", str(HERE),
             "--host", "127.0.0.1", "--port", str(ports[name]), "--workers", "1",
             "--no-access-log"),
            env, start_timeout_s=60.0, stop_grace_s=10.0, note=note, alias=alias,
        )

    def mlflow_serve(name: str, uri: str, env: dict[str, str], alias: str) -> PeerSpec:
        return PeerSpec(
            name, ports[name], "/invocations", "mlflow",
            (mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local",
             "-p", str(ports[name]), "-h", "127.0.0.1"),
            env, start_timeout_s=120.0, stop_grace_s=10.0,
            note=f"{uri}: pyfunc predict (class label, as the model is logged), "
                 "1 uvicorn worker",
            alias=alias, answers="label",
        )

    def rampart(name: str, config: tuple[str, ...], note: str, alias: str,
                challenger_share: tuple[float, float] | None) -> PeerSpec:
        return PeerSpec(
            name, ports[name], "/v1/predict", "predict",
            (python, str(HERE / "rampart_server.py"), tracking_uri,
             str(work_dir / name), str(ports[name]), *config),
            rampart_env, start_timeout_s=180.0, stop_grace_s=45.0, extra_ports=haproxy_ports,
            note=note, alias=alias, answers="routed", challenger_share=challenger_share,
        )

    return {
        "fastapi": plain_fastapi(
            "fastapi", base_env, "uvicorn, 1 worker, async handler, predict_proba on a "
            "1-row DataFrame", "champion"),
        "ray_serve_proxy": PeerSpec(
            "ray_serve_proxy", ports["ray_serve_proxy"], "/v1/predict", "predict",
            (python, str(HERE / "plain_ray_serve.py"), str(ports["ray_serve_proxy"])),
            default_proxy_env, start_timeout_s=120.0, stop_grace_s=45.0,
            note="same handler in a @serve.ingress deployment behind Ray Serve's default proxy",
        ),
        "mlflow_serve": mlflow_serve("mlflow_serve", model_uri, base_env, "champion"),
        "rampart": rampart(
            "rampart", (),
            "deploy/rampart.yaml, 1 replica, champion/challenger 90/10 (its demo-tree "
            "experiment takes platform=web units only; these requests carry no context), "
            "decision log + metrics + spans on", "champion", (0.03, 0.2)),
        "tree_fastapi": plain_fastapi(
            "tree_fastapi", tree_env, f"{tree_uri}: uvicorn, 1 worker, async handler, "
            "predict_proba on a 1-row DataFrame", "tree"),
        "tree_mlflow_serve": mlflow_serve("tree_mlflow_serve", tree_uri, tree_env, "tree"),
        "tree_rampart": rampart(
            "tree_rampart", (str(tree_config),),
            "deploy/rampart.yaml with the tree version alone as default, no experiments, "
            "1 replica (scored in the worker pool), decision log + metrics + spans on",
            "tree", None),
    }


def write_tree_config(path: Path) -> Path:
    """deploy/rampart.yaml serving only the ``tree`` version, as the default and
    without experiments: logging and telemetry stay as the linear row has them."""
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data["models"] = [{"name": MODEL_NAME, "versions": ["tree"]}]
    data["default"] = {"model": MODEL_NAME, "version": "tree"}
    data["experiments"] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ensure_port_free(port: int) -> None:
    """Raise PeerError naming the port if something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
            raise PeerError(
                f"port {port} {reason}; stop whatever listens there "
                f"(e.g. `ss -ltnp 'sport = :{port}'`) or pass --port-base"
            ) from exc


# --- processes -------------------------------------------------------------------------


ProcKey = tuple[int, int]  # (pid, start time in clock ticks): robust against pid reuse


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, session id, start time) for every live process."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state; zombies are already gone for our purposes.
        if fields[0] == "Z":
            continue
        table[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def process_family(leader: int) -> set[ProcKey]:
    """The leader's session members and all its descendants."""
    table = _proc_table()
    family = {pid for pid, (_, sid, _) in table.items() if sid == leader}
    if leader in table:
        family.add(leader)
    frontier = set(family)
    while frontier:
        children = {pid for pid, (ppid, _, _) in table.items()
                    if ppid in frontier and pid not in family}
        family |= children
        frontier = children
    return {(pid, table[pid][2]) for pid in family}


def _alive(keys: Iterable[ProcKey]) -> set[ProcKey]:
    table = _proc_table()
    return {(pid, start) for pid, start in keys if pid in table and table[pid][2] == start}


def _signal_all(keys: Iterable[ProcKey], sig: signal.Signals) -> None:
    for pid, _ in keys:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(keys: set[ProcKey], timeout_s: float) -> set[ProcKey]:
    deadline = time.monotonic() + timeout_s
    alive = _alive(keys)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _alive(alive)
    return alive


def _describe(keys: Iterable[ProcKey]) -> list[str]:
    out = []
    for pid, _ in sorted(keys):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd[:120]}")
    return out


class RunningPeer:
    """One started server; always call :meth:`stop` (it is idempotent)."""

    def __init__(self, spec: PeerSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            spec.argv, cwd=ROOT, env=spec.env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._stopped = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def post(self, body: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.spec.url, data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self) -> None:
        """Poll the endpoint until it answers 200, the process dies, or time runs out."""
        deadline = time.monotonic() + self.spec.start_timeout_s
        last = "no answer yet"
        body = self.spec.body("readiness-probe")
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise PeerError(
                    f"{self.spec.name} exited with code {code} before answering; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                status, payload = self.post(body, timeout_s=2.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {payload[:200]!r}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise PeerError(
            f"{self.spec.name} did not answer {self.spec.url} within "
            f"{self.spec.start_timeout_s:.0f}s ({last}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> list[str]:
        """Stop the server and everything it started; return any survivors (should be [])."""
        if self._stopped:
            return []
        self._stopped = True
        try:
            family = process_family(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=self.spec.stop_grace_s)
            # Processes started while shutting down are still in the session.
            family |= process_family(self.proc.pid)
            alive = _wait_gone(family, 3.0)
            if alive:
                _signal_all(alive, signal.SIGTERM)
                alive = _wait_gone(alive, 5.0)
            if alive:
                _signal_all(alive, signal.SIGKILL)
                alive = _wait_gone(alive, 5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)
            return _describe(alive)
        finally:
            self._log.close()


def serving_benchmark() -> Any:
    """The serving benchmark's module (its wrk helpers), loaded by path: its file
    name, ``serving.py``, would otherwise shadow Rampart's ``serving`` package."""
    spec = importlib.util.spec_from_file_location("serving_benchmark", HERE / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_benchmark"] = module
    spec.loader.exec_module(module)
    return module
