"""Start a whole Rampart gateway: the composition root of serving.

:func:`start_gateway` wires the parts that the product modules keep apart:
it starts Ray (if needed), fixes the configured experiments' analysis plans,
creates the rollout controller actor (``rollout.actor``) and, for chaos
testing, the fault board (``serving.chaos``), and deploys the gateway's
replicas with both handles (``serving.gateway.ray_app``), which therefore
never import the control plane. ``rampart serve``, the demo, the benchmarks
and the integration tests all start gateways here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from serving.gateway.forcing_key import forcing_signing_key
from serving.gateway.ray_app import (
    ADMIN_TOKEN_ENV,
    APP_NAME,
    INGEST_TOKEN_ENV,
    ReplicaSettings,
    clear_haproxy_env,
    delete_gateway,
    deploy_gateway,
    deployment_options,
    resolve_outcomes_path,
    resolve_paths,
    resolve_spill_dirs,
    set_ingress_env,
)
from serving.kernel.config import RampartConfig, ServerConfig
from serving.routing.router import RoutingTable
from telemetry.metrics import prepare_multiprocess_dir

log = logging.getLogger(__name__)


@dataclass
class RunningGateway:
    """A gateway started by :func:`start_gateway`; ``stop()`` flushes and tears down."""

    url: str
    table: RoutingTable
    config: RampartConfig
    owns_ray: bool
    controller: Any = None
    fault_board: Any = None  # the chaos actor, when started with chaos=True
    stopped: bool = False
    # Joined an existing cluster: stop() leaves Serve and Ray running there.
    joined: bool = False
    haproxy_dir: Path | None = None

    def stop(self) -> None:
        """Delete the app (replicas flush their logs), stop the controller and
        Serve, and Ray if ours. Idempotent."""
        from ray import serve

        from rollout.actor import stop_controller

        if self.stopped:
            return
        self.stopped = True
        delete_gateway()
        if self.controller is not None:
            stop_controller(self.controller)
        if self.fault_board is not None:
            ray.kill(self.fault_board)
        if not self.joined or not serve_applications():
            # On a cluster, Serve stays up for other applications; with none
            # left, it goes too, so the next gateway can take other HTTP options.
            serve.shutdown()  # type: ignore[no-untyped-call]
        self.disconnect()

    def disconnect(self) -> None:
        """Leave what runs on a cluster running; end this process's part."""
        if self.owns_ray or self.joined:
            ray.shutdown()
        if self.haproxy_dir is not None:
            shutil.rmtree(self.haproxy_dir, ignore_errors=True)
            self.haproxy_dir = None


@dataclass(frozen=True)
class GatewayParts:
    """Everything a gateway deployment needs, made on a running Ray."""

    settings: ReplicaSettings
    controller: Any
    fault_board: Any
    options: dict[str, Any]
    metrics_dir: Path


def prepare_gateway(config: RampartConfig, num_replicas: int | None = None,
                    admin_token: str | None = None, chaos: bool = False) -> GatewayParts:
    """Fix the experiments' analysis plans, start (or reuse) the rollout
    controller and build the replicas' settings; Ray must be connected.

    Shared by :func:`start_gateway` and the Serve application builder
    (``serving.app:build``), so ``rampart serve`` and ``serve deploy`` run the
    same gateway."""
    from rollout.actor import CONTROLLER_NAME, CONTROLLER_NAMESPACE, start_controller
    from rollout.experiments.data import register_config_plans

    tracking_uri = config.resolved_tracking_uri()
    decision_dir, metrics_dir = resolve_paths(config)
    # Each replica's writer creates a local log directory; a URI has none to create.
    outcomes_dir = resolve_outcomes_path(config)  # created by the first write
    decision_spill_dir, outcomes_spill_dir = resolve_spill_dirs(config)
    prepare_multiprocess_dir(metrics_dir)
    # Serving an experiment is when its analysis plan must already be fixed.
    for problem in register_config_plans(config, dt.datetime.now(dt.UTC)):
        log.warning("%s", problem)
    targets_file = config.resolved_scrape_targets_file()
    if not targets_file.is_absolute():
        targets_file = Path.cwd() / targets_file
    controller = start_controller(config, config.resolved_store_url(), tracking_uri,
                                  metrics_dir, targets_file)
    fault_board = None
    if chaos:
        from serving.chaos import start_fault_board

        fault_board = start_fault_board()
    settings = ReplicaSettings(
        config=config, tracking_uri=tracking_uri, decision_dir=decision_dir,
        outcomes_dir=outcomes_dir,
        decision_spill_dir=decision_spill_dir, outcomes_spill_dir=outcomes_spill_dir,
        admin_token=admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
        ingest_token=os.environ.get(INGEST_TOKEN_ENV) or None,
        trace_key=os.environ.get("RAMPART_TRACE_KEY") or secrets.token_hex(32),
        force_signing_key=forcing_signing_key(config, os.environ),
        controller_name=CONTROLLER_NAME, controller_namespace=CONTROLLER_NAMESPACE,
        instance_id=secrets.token_hex(8),
    )
    return GatewayParts(settings, controller, fault_board,
                        deployment_options(config, num_replicas), metrics_dir)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast when nothing answers at a ``HOST:PORT`` or ``ray://HOST:PORT``
    address: Ray itself retries an unreachable cluster for minutes."""
    import socket

    if address == "auto" or address == "local":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"{address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})"
                              ) from None


def _join(address: str, attempts: int = 3) -> None:
    """``ray.init`` on the cluster at ``address``. Through Ray Client the head's
    proxy starts a server for each client, and on a busy head that start can
    fail ("Starting Ray client server failed"); that is tried again after a
    pause, up to ``attempts`` times. Any other failure is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            return
        except ConnectionError as exc:
            if attempt == attempts or "client server failed" not in str(exc):
                raise
            log.warning("Ray Client could not start a server on %s (attempt %d of %d); "
                        "trying again", address, attempt, attempts)
            time.sleep(2.0 * attempt)


def connect_ray(address: str | None, server: ServerConfig | None = None
                ) -> tuple[bool, bool, Path | None]:
    """Connect this process to Ray: the one already connected, the cluster at
    ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or a new local
    one, whose HAProxy takes ``server``'s read deadline and per-source
    connection limit. Returns (owns_ray, joined, haproxy_dir)."""
    if ray.is_initialized():
        return False, False, None
    # ray.init replaces SIGINT/SIGTERM handlers with ones that abort the process;
    # keep the caller's (``rampart serve`` turns both into a clean, flushing stop).
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    haproxy_dir = None
    if address:
        check_reachable(address)
        _join(address)
    else:
        haproxy_dir = set_ingress_env(server)
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        if haproxy_dir is not None:
            clear_haproxy_env()
    if threading.current_thread() is threading.main_thread():
        for sig, handler in saved.items():
            if callable(handler):
                signal.signal(sig, handler)
    return not address, bool(address), haproxy_dir


def start_gateway(
    config: RampartConfig,
    host: str | None = None,
    port: int | None = None,
    num_replicas: int | None = None,
    admin_token: str | None = None,
    ready_timeout_s: float = 120.0,
    chaos: bool = False,
    address: str | None = None,
) -> RunningGateway:
    """Connect to Ray (or start a local one), start the rollout controller and
    the gateway app; return once the gateway answers /healthz.

    ``address`` joins an existing cluster (its nodes must run with the ingress
    environment, see ``INGRESS_ENV``). ``chaos=True`` also starts the fault
    board, wraps every replica's scorers in fault injectors and serves
    ``POST /v1/admin/faults`` (chaos testing; without it there is no such
    route and no fault code on the request path).
    """
    host = host or config.server.host
    port = port or config.server.port
    forcing_signing_key(config, os.environ)  # a missing key refuses the start before Ray
    owns_ray, joined, haproxy_dir = connect_ray(address, config.server)
    try:
        parts = prepare_gateway(config, num_replicas, admin_token, chaos)
        deploy_gateway(parts.settings, parts.controller, parts.fault_board, parts.options,
                       parts.metrics_dir, host, port, config.server.proxy_location)
    except BaseException:
        if owns_ray or joined:
            ray.shutdown()
        if haproxy_dir is not None:
            shutil.rmtree(haproxy_dir, ignore_errors=True)
        raise
    gateway = RunningGateway(f"http://{host}:{port}", _table(parts.controller), config,
                             owns_ray, parts.controller, parts.fault_board, joined=joined,
                             haproxy_dir=haproxy_dir)
    wait_healthy(gateway.url, ready_timeout_s, parts.settings.instance_id)
    return gateway


def _table(controller: Any) -> RoutingTable:
    snapshot = ray.get(controller.wait_for_snapshot.remote(-1, 0.0))
    table: RoutingTable = snapshot.table
    return table


def wait_healthy(url: str, timeout_s: float, instance_id: str = "") -> None:
    """Return once ``url`` answers /healthz several times in a row, each time
    (given ``instance_id``) from a replica of this start of the gateway: a
    killed predecessor's HAProxy and replicas may still hold the port."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    # Ray's HAProxy may reload once more just after the first healthy answer;
    # call the gateway ready after several healthy answers in a row.
    healthy_in_a_row = 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/healthz", timeout=2.0)
            if answer.status_code == 200 and _answered_by(answer, instance_id):
                healthy_in_a_row += 1
                if healthy_in_a_row >= 4:
                    return
            else:
                healthy_in_a_row = 0
                last_error = f"/healthz answered {answer.status_code}: {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last_error = str(exc)
            healthy_in_a_row = 0
        time.sleep(0.25)
    raise TimeoutError(f"gateway did not answer {url}/healthz in {timeout_s}s: {last_error}")


def _answered_by(answer: Any, instance_id: str) -> bool:
    if not instance_id:
        return True
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("instance_id") == instance_id


def stop_cluster_gateway(address: str | None) -> list[str]:
    """``rampart stop``: remove the gateway app and the rollout controller from
    the cluster at ``address``; returns what was removed."""
    from ray import serve

    from rollout.actor import find_controller, stop_controller

    check_reachable(address or "auto")
    ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False)
    removed = []
    try:
        if APP_NAME in serve_applications():
            delete_gateway()
            removed.append(f"app {APP_NAME}")
        controller = find_controller()
        if controller is not None:
            stop_controller(controller)
            removed.append("rollout controller")
        if removed and not serve_applications():
            serve.shutdown()  # type: ignore[no-untyped-call]
            removed.append("Ray Serve (no application left)")
    finally:
        ray.shutdown()
    return removed


def serve_applications() -> list[str]:
    """Names of the applications Serve runs on the connected cluster ([] when
    Serve does not run there)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return list(serve.status().applications)
    except RayServeException:
        return []
