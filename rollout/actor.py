"""The single rollout controller of a Ray cluster: a detached, named actor
around :class:`RolloutService`, ticking the rollouts on its own thread.

Gateway replicas long-poll :meth:`ControllerActor.wait_for_snapshot` (each
keeps one call parked on one of the actor's threads); the admin API sends
typed commands to :meth:`ControllerActor.execute`.

The actor is *detached*: it belongs to the cluster, not to the process that
created it, so ``rampart serve --detach`` may exit and leave the gateway
running. Ray restarts it when it dies (``max_restarts``); a restarted actor
runs ``__init__`` again with the same arguments and so resumes every rollout
from the store, at the step it had reached. ``rampart stop`` ends it.

The actor also keeps the list of live replicas and their metrics endpoints
(each replica names its endpoint in its long-poll) and writes it as a
Prometheus ``file_sd`` file, so Prometheus scrapes every replica on every
node (see :meth:`scrape_targets`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import ray

from rollout.bandit_service import BanditService, BanditStore
from rollout.commands import execute
from rollout.core.plan import RolloutPlan, parse_plan
from rollout.metrics_source import (
    BuiltinMetricsSource,
    MetricsSource,
    MetricsUnavailable,
    PrometheusMetricsSource,
)
from rollout.scrape_targets import ScrapeTargets
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.commands import Command, CommandResult, CreateRollout, DescribeBandit
from serving.kernel.config import RampartConfig
from serving.kernel.errors import BanditNotFound, InvalidRollout
from serving.routing.snapshot import RoutingSnapshot

log = logging.getLogger(__name__)

CONTROLLER_NAME = "rampart-rollout-controller"
CONTROLLER_NAMESPACE = "rampart"
# Threads of the actor: one parked long-poll per replica, plus commands and ticks.
MAX_CONCURRENCY = 64
# Ray restarts a dead controller this many times; each restart resumes from the store.
MAX_RESTARTS = 100
# A replica not heard from for this long (beyond its parked call) is dropped
# from the scrape targets.
REPLICA_TTL_S = 75.0


def builtin_refusal(alive_nodes: int) -> str | None:
    """Why the builtin metrics source cannot serve a cluster of ``alive_nodes``."""
    if alive_nodes <= 1:
        return None
    return (f"the builtin metrics source reads the gateway's metrics files on one node, "
            f"and this Ray cluster has {alive_nodes} nodes: set the rollout's "
            "metrics_source to prometheus (with prometheus_url) so every node is counted")


class _RefusingSource:
    """Stands in for the builtin source on a multi-node cluster: the rollout holds
    and says why, instead of silently seeing one node's traffic."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def snapshot(self, rollout_id: str) -> Any:
        raise MetricsUnavailable(self.reason)

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        raise MetricsUnavailable(self.reason)


def _alive_nodes() -> int:
    try:
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        return sum(1 for node in nodes if node.get("Alive"))
    except Exception:  # not on Ray (a unit test), or the GCS is briefly away
        return 1


class ControllerActor:
    def __init__(self, config: RampartConfig, store_url: str, tracking_uri: str,
                 metrics_dir: str, scrape_targets_file: str | None = None) -> None:
        from models.registry import MlflowRegistry, bound_http_retries

        # This process is the controller's alone: a stopped or hung MLflow must
        # cost a tick seconds, not the minutes MLflow's client retries by default.
        bound_http_retries()
        builtin = BuiltinMetricsSource(Path(metrics_dir))

        def metrics_for(plan: RolloutPlan) -> MetricsSource:
            if plan.metrics_source == "prometheus" and plan.prometheus_url:
                return PrometheusMetricsSource(plan.prometheus_url)
            refusal = builtin_refusal(_alive_nodes())
            return builtin if refusal is None else _RefusingSource(refusal)

        self.digest = config_digest(config, store_url, tracking_uri)
        registry = MlflowRegistry(tracking_uri)
        self.service = RolloutService(config, RolloutStore(store_url), registry, metrics_for,
                                      registry_check=registry.check_reachable)
        # The bandits share the rollouts' store and publish through the same
        # path, so one routing table carries both and every replica gets it.
        self.bandits: BanditService | None = None
        if any(e.bandit is not None for e in config.experiments):
            self.bandits = BanditService(config, BanditStore(self.service.store),
                                         self.service.publish_bandit_allocations)
        self._targets_file = Path(scrape_targets_file) if scrape_targets_file else None
        self.targets = ScrapeTargets(REPLICA_TTL_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollout-ticks", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.service.tick()
            except Exception:  # one bad tick must not stop every rollout
                log.exception("rollout tick failed")
            if self.bandits is not None:
                try:
                    self.bandits.tick()
                except Exception:  # nor stop the bandits, or a bandit the rollouts
                    log.exception("bandit tick failed")
            try:
                if self._targets_file is not None:
                    self.targets.write(self._targets_file)
            except OSError:
                log.exception("cannot write the scrape-target file")
            due = self.service.next_due_in()
            if self.bandits is not None:
                due = min(due, self.bandits.next_due_in())
            self._stop.wait(min(0.2, due))

    def ready(self) -> str:
        """The digest of the config this controller runs (see :func:`config_digest`)."""
        return self.digest

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str = "",
                          metrics_endpoint: str = "", node: str = ""
                          ) -> RoutingSnapshot | None:
        """Long-poll: the routing snapshot once newer than ``known_version``, else
        None after ``timeout_s``; the call says ``replica`` serves ``known_version``
        and, when given, exposes its metrics at ``metrics_endpoint``."""
        if metrics_endpoint:
            self.targets.seen(replica, metrics_endpoint, node)
        try:
            return self.service.wait_for_snapshot(known_version, timeout_s, replica)
        finally:
            if metrics_endpoint:
                self.targets.seen(replica, metrics_endpoint, node)

    def scrape_targets(self) -> list[dict[str, Any]]:
        """Prometheus ``file_sd``/``http_sd`` groups: one per live replica."""
        return self.targets.groups()

    def execute(self, command: Command) -> CommandResult:
        """Run one admin command; a RampartError reaches the caller as itself."""
        if isinstance(command, DescribeBandit):
            if self.bandits is None:
                raise BanditNotFound(f"no bandit experiment {command.id!r}: the config has none")
            return self.bandits.describe(command.id, audit_records=command.audit)
        if isinstance(command, CreateRollout):
            plan = parse_plan(command.plan, source="plan")
            refusal = builtin_refusal(_alive_nodes()) if plan.metrics_source == "builtin" else None
            if refusal is not None:
                raise InvalidRollout(refusal)
        return execute(self.service, command)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.service.notifier is not None:
            self.service.notifier.close()
        self.service.store.close()


def config_digest(config: RampartConfig, store_url: str, tracking_uri: str) -> str:
    """Identifies what a controller runs: a gateway started with another config
    replaces the controller (which resumes its rollouts from the store)."""
    text = json.dumps([config.model_dump(mode="json"), store_url, tracking_uri], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_controller() -> Any | None:
    """The cluster's controller actor, or None."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)
    except ValueError:
        return None


def stop_controller(actor: Any, timeout_s: float = 30.0) -> None:
    """Stop the tick thread (closing the store), then end the actor for good."""
    try:
        ray.get(actor.stop.remote(), timeout=timeout_s)
    except Exception:  # already dead or unreachable: ending it is what matters
        log.warning("the rollout controller did not stop cleanly", exc_info=True)
    ray.kill(actor, no_restart=True)


def start_controller(config: RampartConfig, store_url: str, tracking_uri: str,
                     metrics_dir: Path, scrape_targets_file: Path | None = None) -> Any:
    """Create the cluster's controller actor, or reuse the running one when it runs
    the same config; wait until it is up."""
    digest = config_digest(config, store_url, tracking_uri)
    existing = find_controller()
    if existing is not None:
        try:
            if ray.get(existing.ready.remote(), timeout=60) == digest:
                return existing
        except Exception:
            log.warning("the running rollout controller does not answer; replacing it")
        stop_controller(existing)
        deadline = time.monotonic() + 30
        while find_controller() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    remote_cls: Any = ray.remote(  # type: ignore[call-overload]
        num_cpus=0, max_concurrency=MAX_CONCURRENCY, max_restarts=MAX_RESTARTS,
    )(ControllerActor)
    actor = remote_cls.options(
        name=CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE, get_if_exists=True,
        lifetime="detached",
    ).remote(config, store_url, tracking_uri, str(metrics_dir),
             str(scrape_targets_file) if scrape_targets_file else None)
    ray.get(actor.ready.remote(), timeout=120)
    return actor
