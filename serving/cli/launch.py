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
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from serving.gateway.ray_app import (
    ADMIN_TOKEN_ENV,
    ReplicaSettings,
    delete_gateway,
    deploy_gateway,
    resolve_outcomes_path,
    resolve_paths,
    set_ingress_env,
)
from serving.kernel.config import RampartConfig
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

    def stop(self) -> None:
        """Delete the app (replicas flush their logs), stop Serve, and Ray if ours. Idempotent."""
        from ray import serve

        if self.stopped:
            return
        self.stopped = True
        delete_gateway()
        if self.controller is not None:
            ray.get(self.controller.stop.remote(), timeout=30)
            ray.kill(self.controller)
        if self.fault_board is not None:
            ray.kill(self.fault_board)
        serve.shutdown()  # type: ignore[no-untyped-call]
        if self.owns_ray:
            ray.shutdown()


def start_gateway(
    config: RampartConfig,
    host: str | None = None,
    port: int | None = None,
    num_replicas: int | None = None,
    admin_token: str | None = None,
    ready_timeout_s: float = 120.0,
    chaos: bool = False,
) -> RunningGateway:
    """Start Ray (if needed), the rollout controller and the gateway app;
    return once the gateway answers /healthz.

    ``chaos=True`` also starts the fault board, wraps every replica's scorers
    in fault injectors and serves ``POST /v1/admin/faults`` (chaos testing;
    without it there is no such route and no fault code on the request path).
    """
    import httpx

    from rollout.actor import start_controller
    from rollout.experiments.data import register_config_plans

    host = host or config.server.host
    port = port or config.server.port
    replicas = num_replicas or config.server.num_replicas
    tracking_uri = config.resolved_tracking_uri()
    decision_dir, metrics_dir = resolve_paths(config)
    decision_dir.mkdir(parents=True, exist_ok=True)
    outcomes_dir = resolve_outcomes_path(config)  # created by the first write
    prepare_multiprocess_dir(metrics_dir)
    # Serving an experiment is when its analysis plan must already be fixed.
    for problem in register_config_plans(config, dt.datetime.now(dt.UTC)):
        log.warning("%s", problem)

    set_ingress_env()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        # ray.init replaces SIGINT/SIGTERM handlers with ones that abort the process;
        # keep the caller's (``rampart serve`` turns both into a clean, flushing stop).
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if callable(handler):
                    signal.signal(sig, handler)
    controller = start_controller(config, config.resolved_store_url(), tracking_uri, metrics_dir)
    fault_board = None
    if chaos:
        from serving.chaos import start_fault_board

        fault_board = start_fault_board()
    settings = ReplicaSettings(
        config=config, tracking_uri=tracking_uri, decision_dir=decision_dir,
        outcomes_dir=outcomes_dir,
        admin_token=admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
    )
    deploy_gateway(settings, controller, fault_board, replicas, metrics_dir, host, port)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + ready_timeout_s
    last_error = "no answer"
    # Ray's HAProxy may reload once more just after the first healthy answer;
    # call the gateway ready after several healthy answers in a row.
    healthy_in_a_row = 0
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                healthy_in_a_row += 1
                if healthy_in_a_row >= 4:
                    snapshot = ray.get(controller.wait_for_snapshot.remote(-1, 0.0))
                    return RunningGateway(url, snapshot.table, config, owns_ray, controller,
                                          fault_board)
            else:
                healthy_in_a_row = 0
        except httpx.HTTPError as exc:
            last_error = str(exc)
            healthy_in_a_row = 0
        time.sleep(0.25)
    raise TimeoutError(f"gateway did not answer {url}/healthz in {ready_timeout_s}s: {last_error}")
