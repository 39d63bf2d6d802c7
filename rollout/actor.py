"""The single rollout controller of a Ray cluster: a named actor around
:class:`RolloutService`, ticking the rollouts on its own thread.

Gateway replicas long-poll :meth:`ControllerActor.wait_for_snapshot` (each
keeps one call parked on one of the actor's threads); the admin API sends
typed commands to :meth:`ControllerActor.execute`. The process that starts the
gateway creates the actor and hands its handle to the replicas; the actor
shares that process's fate: kill the process and the actor goes with it; start
it again and the new actor resumes every rollout from the store.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import ray

from rollout.commands import execute
from rollout.core.plan import RolloutPlan
from rollout.metrics_source import BuiltinMetricsSource, MetricsSource, PrometheusMetricsSource
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.commands import Command, CommandResult
from serving.kernel.config import RampartConfig
from serving.routing.snapshot import RoutingSnapshot

log = logging.getLogger(__name__)

CONTROLLER_NAME = "rampart-rollout-controller"
CONTROLLER_NAMESPACE = "rampart"
# Threads of the actor: one parked long-poll per replica, plus commands and ticks.
MAX_CONCURRENCY = 64


class ControllerActor:
    def __init__(self, config: RampartConfig, store_url: str, tracking_uri: str,
                 metrics_dir: str) -> None:
        from models.registry import MlflowRegistry

        builtin = BuiltinMetricsSource(Path(metrics_dir))

        def metrics_for(plan: RolloutPlan) -> MetricsSource:
            if plan.metrics_source == "prometheus" and plan.prometheus_url:
                return PrometheusMetricsSource(plan.prometheus_url)
            return builtin

        self.service = RolloutService(config, RolloutStore(store_url),
                                      MlflowRegistry(tracking_uri), metrics_for)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollout-ticks", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.service.tick()
            except Exception:  # one bad tick must not stop every rollout
                log.exception("rollout tick failed")
            self._stop.wait(min(0.2, self.service.next_due_in()))

    def ready(self) -> bool:
        return True

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str = ""
                          ) -> RoutingSnapshot | None:
        """Long-poll: the routing snapshot once newer than ``known_version``, else
        None after ``timeout_s``; the call says ``replica`` serves ``known_version``."""
        return self.service.wait_for_snapshot(known_version, timeout_s, replica)

    def execute(self, command: Command) -> CommandResult:
        """Run one admin command; a RampartError reaches the caller as itself."""
        return execute(self.service, command)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.service.store.close()


def start_controller(config: RampartConfig, store_url: str, tracking_uri: str,
                     metrics_dir: Path) -> Any:
    """Create (or find) the cluster's controller actor and wait until it is up."""
    remote_cls: Any = ray.remote(num_cpus=0, max_concurrency=MAX_CONCURRENCY)(ControllerActor)  # type: ignore[call-overload]
    actor = remote_cls.options(
        name=CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE, get_if_exists=True,
    ).remote(config, store_url, tracking_uri, str(metrics_dir))
    ray.get(actor.ready.remote(), timeout=120)
    return actor
