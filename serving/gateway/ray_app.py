"""The gateway on Ray Serve.

Each replica of the ``RampartGateway`` deployment loads every model version
the routing table can reach and answers HTTP itself (Ray Serve direct
ingress); Ray's HAProxy ingress listens on the public port and balances
connections over the replicas. A request therefore crosses no Ray hop at all:
measured here, Ray Serve's default Python proxy adds about 10 ms a request,
direct ingress about nothing.

``start_gateway`` is the I/O shell used by ``rampart serve``, the demo, the
benchmarks and the integration tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict

from serving.kernel.config import RampartConfig
from serving.routing.router import RoutingTable
from telemetry.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

log = logging.getLogger(__name__)

APP_NAME = "rampart"
ADMIN_TOKEN_ENV = "RAMPART_ADMIN_TOKEN"
DEPLOYMENT_NAME = "RampartGateway"
INGRESS_ENV = {
    # Replicas serve HTTP themselves; HAProxy (shipped with Ray) fronts them.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A stopped replica's port is quarantined this long before reuse; locally
    # there is no remote HAProxy to drain, so a short hold is enough.
    "RAY_SERVE_PORT_QUARANTINE_S": "2",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


class ReplicaSettings(BaseModel):
    """What every replica needs to build its :class:`GatewayCore`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: RampartConfig
    tracking_uri: str
    decision_dir: Path
    outcomes_dir: Path | None = None
    admin_token: str | None = None
    poll_interval_s: float = 0.1

    def __repr__(self) -> str:  # never print the token in Ray's logs
        return f"ReplicaSettings(tracking_uri={self.tracking_uri!r})"


def set_ingress_env() -> None:
    """Ray reads these at start-up: call before ``ray.init``."""
    for key, value in INGRESS_ENV.items():
        os.environ.setdefault(key, value)


def _build_deployment(num_replicas: int, metrics_dir: Path) -> Any:
    from ray import serve

    from serving.gateway.core import GatewayCore, build_app

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=num_replicas,
        max_ongoing_requests=256,
        graceful_shutdown_timeout_s=10,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
        ray_actor_options={
            "num_cpus": 0,
            "runtime_env": {"env_vars": {MULTIPROC_ENV: str(metrics_dir)}},
        },
    )
    @serve.ingress()
    class RampartGateway:
        def __init__(self, settings: ReplicaSettings) -> None:
            from models.registry import MlflowRegistry
            from rollout.actor import get_controller

            self.settings = settings
            self.registry = MlflowRegistry(settings.tracking_uri)
            self.controller = get_controller()
            snapshot = ray.get(self.controller.snapshot.remote(-1), timeout=60)
            self.core: GatewayCore = build_core(settings, snapshot.table, self.registry)
            self.core.apply_snapshot(snapshot.table, active_faults(snapshot),
                                     self.registry.load, snapshot.rollouts)
            self._stop = threading.Event()
            self._references_loaded: set[tuple[str, str]] = set()
            self._load_references()
            self._poller = threading.Thread(target=self._poll, name="routing-poll", daemon=True)
            self._poller.start()

        def _load_references(self) -> None:
            monitor = self.core.drift_monitor
            for key in list(self.core.scorers):
                if key in self._references_loaded or monitor is None:
                    continue
                self._references_loaded.add(key)
                try:
                    reference = self.registry.reference_sample(*key)
                except Exception:
                    log.exception("no drift reference for %s", key)
                    continue
                if reference:
                    monitor.set_reference(key, reference)

        def _poll(self) -> None:
            # Off the request path: fetch newer routing tables from the controller,
            # load any new version, then swap in one reference assignment; now and
            # then, compare recent features with the training references.
            every = self.settings.config.parity.drift_every_s
            next_drift = time.monotonic() + every
            while not self._stop.wait(self.settings.poll_interval_s):
                try:
                    snapshot = ray.get(
                        self.controller.snapshot.remote(self.core.table.version), timeout=10)
                    if snapshot is not None:
                        self.core.apply_snapshot(snapshot.table, active_faults(snapshot),
                                                 self.registry.load, snapshot.rollouts)
                        self._load_references()
                    if time.monotonic() >= next_drift and self.core.drift_monitor is not None:
                        next_drift = time.monotonic() + every
                        self.core.drift_monitor.evaluate()
                except Exception:
                    log.exception("routing poll failed; serving the last table")

        def __serve_build_asgi_app__(self) -> Any:
            return build_app(self.core, RayControlPlane(self.controller),
                             self.settings.admin_token)

        def __del__(self) -> None:
            # Ray Serve calls __del__ on graceful replica shutdown: flush the log.
            stop = getattr(self, "_stop", None)
            if stop is not None:
                stop.set()
            core = getattr(self, "core", None)
            if core is not None:
                core.close()

    return RampartGateway


class RayControlPlane:
    """The admin API's view of the controller actor (one Ray hop, admin only)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def call(self, op: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        result: tuple[int, dict[str, Any]] = await self.actor.call.remote(op, args)
        return result


def active_faults(snapshot: Any) -> dict[tuple[str, str], Any]:
    from serving.gateway.core import ActiveFault

    return {(f.model_name, f.model_version): ActiveFault(f.latency_ms / 1000.0, f.error_rate)
            for f in snapshot.faults}


def build_core(settings: ReplicaSettings, table: RoutingTable, registry: Any) -> Any:
    """Load every reachable version and wire the request path for one replica."""
    from serving.gateway.core import GatewayCore
    from serving.gateway.shadow import ShadowRunner
    from telemetry.decision_log import DecisionLogWriter
    from telemetry.drift_monitor import DriftMonitor
    from telemetry.metrics import DriftMetrics, RequestMetrics, ShadowMetrics
    from telemetry.tracing import build_tracer_provider

    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    cfg = settings.config.decision_log
    writer = DecisionLogWriter(
        settings.decision_dir,
        writer_id=f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
        batch_rows=cfg.batch_rows,
        flush_interval_s=cfg.flush_interval_s,
    )
    tracer = build_tracer_provider().get_tracer("rampart.gateway")
    core = GatewayCore(table, scorers, RequestMetrics(registry=None), tracer, writer)
    if settings.outcomes_dir is not None:
        from telemetry.outcomes_log import OutcomesLogWriter

        outcomes = settings.config.outcomes_log
        core.outcomes_log = OutcomesLogWriter(
            settings.outcomes_dir, writer_id=writer.writer_id,
            batch_rows=outcomes.batch_rows, flush_interval_s=outcomes.flush_interval_s)
    parity = settings.config.parity
    core.drift_monitor = DriftMonitor(DriftMetrics(registry=None),
                                      psi_threshold=parity.psi_threshold,
                                      ks_alpha=parity.ks_alpha)
    core.shadow_runner = ShadowRunner(
        lambda name, version: core.scorers.get((name, version)), ShadowMetrics(registry=None),
        writer, queue_size=settings.config.shadow.queue_size)
    return core


@dataclass
class RunningGateway:
    """A gateway started by :func:`start_gateway`; ``stop()`` flushes and tears down."""

    url: str
    table: RoutingTable
    config: RampartConfig
    owns_ray: bool
    controller: Any = None
    stopped: bool = False

    def stop(self) -> None:
        """Delete the app (replicas flush their logs), stop Serve, and Ray if ours. Idempotent."""
        from ray import serve

        if self.stopped:
            return
        self.stopped = True
        serve.delete(APP_NAME)
        if self.controller is not None:
            ray.get(self.controller.stop.remote(), timeout=30)
            ray.kill(self.controller)
        serve.shutdown()  # type: ignore[no-untyped-call]
        if self.owns_ray:
            ray.shutdown()


def resolve_paths(config: RampartConfig) -> tuple[Path, Path]:
    """Absolute decision-log and metrics directories (relative ones are from the cwd)."""

    def absolute(path: Path) -> Path:
        return (path if path.is_absolute() else Path.cwd() / path).resolve()

    return absolute(config.decision_log.path), absolute(config.telemetry.metrics_dir)


def resolve_outcomes_path(config: RampartConfig) -> Path:
    """Absolute outcomes-log directory (a relative one is from the cwd)."""
    path = config.outcomes_log.path
    return (path if path.is_absolute() else Path.cwd() / path).resolve()


def start_gateway(
    config: RampartConfig,
    host: str | None = None,
    port: int | None = None,
    num_replicas: int | None = None,
    admin_token: str | None = None,
    ready_timeout_s: float = 120.0,
) -> RunningGateway:
    """Start Ray (if needed), the rollout controller and the gateway app;
    return once the gateway answers /healthz."""
    import httpx
    from ray import serve

    from rollout.actor import start_controller

    host = host or config.server.host
    port = port or config.server.port
    replicas = num_replicas or config.server.num_replicas
    tracking_uri = config.resolved_tracking_uri()
    decision_dir, metrics_dir = resolve_paths(config)
    decision_dir.mkdir(parents=True, exist_ok=True)
    outcomes_dir = resolve_outcomes_path(config)  # created by the first write
    prepare_multiprocess_dir(metrics_dir)
    # Serving an experiment is when its analysis plan must already be fixed.
    from rollout.experiments.data import register_config_plans

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
    serve.start(http_options={"host": host, "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    deployment = _build_deployment(replicas, metrics_dir)
    settings = ReplicaSettings(
        config=config, tracking_uri=tracking_uri, decision_dir=decision_dir,
        outcomes_dir=outcomes_dir,
        admin_token=admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
    )
    serve.run(deployment.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
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
                    table = ray.get(controller.snapshot.remote(-1)).table
                    return RunningGateway(url, table, config, owns_ray, controller)
            else:
                healthy_in_a_row = 0
        except httpx.HTTPError as exc:
            last_error = str(exc)
            healthy_in_a_row = 0
        time.sleep(0.25)
    raise TimeoutError(f"gateway did not answer {url}/healthz in {ready_timeout_s}s: {last_error}")
