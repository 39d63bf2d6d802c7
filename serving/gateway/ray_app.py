"""The gateway on Ray Serve.

Each replica of the ``RampartGateway`` deployment loads every model version
the routing table can reach and answers HTTP itself (Ray Serve direct
ingress); Ray's HAProxy ingress listens on the public port and balances
connections over the replicas. A request therefore crosses no Ray hop at all:
measured here, Ray Serve's default Python proxy adds about 10 ms a request,
direct ingress about nothing.

Routing reaches the replicas by push: each keeps one long-poll parked on the
rollout controller (:mod:`serving.gateway.follower`) and swaps in a newer
table as soon as it is published.

The composition root (``serving.cli.launch.start_gateway``, used by
``rampart serve``, the demo, the benchmarks and the integration tests) starts
the rollout controller (and, for chaos testing, the fault board) and hands
their handles to :func:`deploy_gateway`; the replicas never import the
control plane.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from pydantic import BaseModel, ConfigDict

from serving.gateway.ports import free_ports
from serving.kernel.commands import Command, CommandResult
from serving.kernel.config import RampartConfig, ServerConfig
from serving.kernel.errors import ControlPlaneUnavailable, RampartError
from serving.routing.snapshot import RoutingSnapshot
from telemetry.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from models.registry import Scorer
    from serving.gateway.core import GatewayCore
    from serving.gateway.pool import ModelPool
    from serving.gateway.protocols import UnitPolicy
    from serving.routing.forcing import ForcingPolicy
    from telemetry.decision_log import FeaturePolicy

log = logging.getLogger(__name__)

APP_NAME = "rampart"
ADMIN_TOKEN_ENV = "RAMPART_ADMIN_TOKEN"
INGEST_TOKEN_ENV = "RAMPART_INGEST_TOKEN"
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
    # A local directory, or a URI (s3://bucket/prefix...) the writers resolve.
    decision_dir: Path | str
    outcomes_dir: Path | str | None = None
    # The logs' spill journals: absolute local directories (see
    # resolve_spill_dirs); None runs that writer without a journal.
    decision_spill_dir: Path | None = None
    outcomes_spill_dir: Path | None = None
    admin_token: str | None = None
    # The credential of POST /v1/outcomes (None: outcome ingest refused).
    ingest_token: str | None = None
    # The key of the unit-id hash spans carry: one per gateway, so every
    # replica hashes a unit alike (RAMPART_TRACE_KEY keeps it across restarts).
    trace_key: str | None = None
    # The forcing header's signing key, read from the variable the config
    # names when the gateway starts (None: signed values are not accepted).
    force_signing_key: str | None = None
    # How long one routing long-poll stays parked before it is renewed.
    snapshot_timeout_s: float = 30.0
    # The controller actor's name, to find it again after Ray restarts it or
    # an operator replaces it.
    controller_name: str = "rampart-rollout-controller"
    controller_namespace: str = "rampart"
    # This start of the gateway, answered by /healthz: readiness trusts only
    # answers carrying it, not a killed predecessor still holding the port.
    instance_id: str = ""

    def __repr__(self) -> str:  # never print the token in Ray's logs
        return f"ReplicaSettings(tracking_uri={self.tracking_uri!r})"


# Ray's HAProxy takes fixed stats and metrics ports (8404, 9101) and fixed
# files under /tmp/haproxy-serve, and Serve's fallback proxy fixed ports
# (8500, 9500), unless told otherwise: a second gateway on the same host would
# fail to start, or share the first one's fallback proxy. Each gateway whose
# Ray we start gets free ports and a directory of its own.
HAPROXY_PORT_ENV = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
# Short: HAProxy refuses socket paths past 97 characters, and Ray adds a
# 56-character directory under this one.
HAPROXY_DIR_PREFIX = "rampart-hp-"


def haproxy_env(directory: Path, stats_port: int, metrics_port: int,
                fallback_ports: tuple[int, int] = (0, 0),
                server: ServerConfig | None = None) -> dict[str, str]:
    """The environment that gives one Ray node's HAProxy its own ports and files.

    ``fallback_ports`` (HTTP, gRPC) move Serve's fallback proxy, which HAProxy
    sends requests to while no replica is up, off its fixed 8500/9500: two
    gateways' fallback proxies on one port share it (SO_REUSEPORT), and one
    gateway's requests were answered, and logged, by the other.

    Ray runs HAProxy through ``rampart-haproxy``, which hardens the config Ray
    renders with ``server``'s read deadline and per-source connection limit
    (see :mod:`serving.gateway.haproxy_guard`)."""
    fallback = {}
    if all(fallback_ports):
        fallback = {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_ports[0]),
                    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_ports[1])}
    return {
        **fallback,
        **haproxy_guard_env(server or ServerConfig()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
    }


def haproxy_guard_env(server: ServerConfig) -> dict[str, str]:
    """What makes Ray start HAProxy hardened, with ``server``'s limits."""
    from serving.gateway import haproxy_guard

    # Installed beside this interpreter (pyproject's [project.scripts]); Ray
    # checks the path is an executable and refuses to start HAProxy otherwise.
    binary = Path(sys.executable).with_name(haproxy_guard.SCRIPT_NAME)
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(binary),
        haproxy_guard.READ_TIMEOUT_ENV: str(server.request_read_timeout_s),
        haproxy_guard.PER_SOURCE_ENV: str(server.max_connections_per_source),
    }


HAPROXY_OWNER_FILE = "owner.pid"


def remove_stale_haproxy_dirs(temp_dir: Path, grace_s: float = 3.0) -> list[Path]:
    """Remove HAProxy directories that gateways killed before they could clean
    up left behind: those whose owner process is gone.

    An HAProxy still running on such a directory (HAProxy names its config
    file on its command line) belongs to a killed gateway and would keep
    answering on that gateway's port: it is ended first (SIGTERM, then SIGKILL
    after ``grace_s``). A directory with no readable owner that a running
    process still uses is left alone (it may be one being set up)."""
    candidates = sorted(temp_dir.glob(f"{HAPROXY_DIR_PREFIX}*"))
    if not candidates:
        return []
    command_lines = _command_lines()
    removed = []
    for directory in candidates:
        try:
            owner = int((directory / HAPROXY_OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and pid_alive(owner):
            continue
        users = [pid for pid, line in command_lines.items() if _names_dir(line, directory)]
        orphans = [pid for pid in users if _is_haproxy(command_lines[pid])]
        if users and (not owner or len(orphans) < len(users)):
            continue
        if orphans:
            log.warning("ending HAProxy %s left running by a killed gateway (%s)",
                        orphans, directory)
            end_processes(orphans, functools.partial(_still_names, directory=directory),
                          grace_s)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def end_processes(pids: list[int], still_ours: Callable[[int], bool],
                  grace_s: float) -> None:
    """SIGTERM ``pids``, then SIGKILL those left after ``grace_s``; a pid is
    signalled only while ``still_ours`` holds (it may have been reused)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = [pid for pid in pids if still_ours(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if still_ours(pid)]
            if left:
                time.sleep(0.05)
        if not left:
            return


def _names_dir(command_line: list[str], directory: Path) -> bool:
    prefix = f"{directory}/"
    return any(arg == str(directory) or arg.startswith(prefix) for arg in command_line)


def _is_haproxy(command_line: list[str]) -> bool:
    return bool(command_line) and Path(command_line[0]).name in ("haproxy", "rampart-haproxy")


def _still_names(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is still a live (not zombie) HAProxy on ``directory``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    arguments = [part.decode(errors="replace") for part in line if part]
    return state != "Z" and _is_haproxy(arguments) and _names_dir(arguments, directory)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_lines() -> dict[int, list[str]]:
    """Every running process's arguments, by pid."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            lines[int(entry.name)] = [part.decode(errors="replace")
                                      for part in raw.split(b"\0") if part]
    return lines


def clear_haproxy_env() -> None:
    """Forget this process's HAProxy settings once Ray has started with them
    (Ray's processes keep their copy), so a gateway this process starts later
    in a child process picks ports and files of its own."""
    for key in haproxy_env(Path("."), 0, 0, (1, 1)):
        os.environ.pop(key, None)


def set_ingress_env(server: ServerConfig | None = None) -> Path | None:
    """Ray reads these at start-up: call before ``ray.init`` starts a local Ray.

    ``server`` sets HAProxy's read deadline and per-source connection limit
    (its defaults when None). Returns the HAProxy directory made for this
    gateway (the caller removes it after), or None when the environment
    already names one."""
    import tempfile

    for key, value in INGRESS_ENV.items():
        os.environ.setdefault(key, value)
    if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in os.environ:
        return None
    remove_stale_haproxy_dirs(Path(tempfile.gettempdir()))
    directory = Path(tempfile.mkdtemp(prefix=HAPROXY_DIR_PREFIX))
    (directory / HAPROXY_OWNER_FILE).write_text(str(os.getpid()))
    ports = free_ports(4)
    for key, value in haproxy_env(directory, ports[0], ports[1], (ports[2], ports[3]),
                                  server).items():
        os.environ.setdefault(key, value)
    return directory


# Replicas when neither the config nor ``--replicas`` says: with two, one
# replica's death (a crash, an OOM kill) is not an outage while Ray replaces it.
DEFAULT_REPLICAS = 2


def default_replicas() -> int:
    """:data:`DEFAULT_REPLICAS`, or fewer where there are fewer CPUs (the Ray
    cluster's when connected, else this machine's): two replicas on one CPU
    would only contend for it."""
    cpus = float(os.cpu_count() or 1)
    if ray.is_initialized():
        with contextlib.suppress(Exception):  # a GCS briefly away: this machine's count
            cpus = float(ray.cluster_resources().get("CPU", cpus))  # type: ignore[no-untyped-call]
    return max(1, min(DEFAULT_REPLICAS, int(cpus)))


def deployment_options(config: RampartConfig, num_replicas: int | None = None
                       ) -> dict[str, Any]:
    """Replica count or autoscaling, as Ray Serve takes them, from the config
    (no count there: :func:`default_replicas`)."""
    server = config.server
    count = num_replicas if num_replicas is not None else server.num_replicas
    options: dict[str, Any] = {"num_replicas": count if count is not None else default_replicas()}
    if server.autoscaling is not None and num_replicas is None:
        options = {"num_replicas": "auto",
                   "autoscaling_config": server.autoscaling.serve_options()}
    if server.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = server.max_replicas_per_node
    return options


def _build_deployment(options: dict[str, Any], metrics_dir: Path) -> Any:
    from ray import serve

    from serving.gateway.core import build_app
    from serving.gateway.follower import SnapshotFollower

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        **options,
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
        def __init__(self, settings: ReplicaSettings, controller: Any = None,
                     fault_board: Any = None) -> None:
            """``controller`` is the control plane's actor handle, or None to find
            it by the name in ``settings``; ``fault_board`` the chaos actor's
            (None: no chaos). Both come from the composition root; the replica
            never imports the control plane."""
            from models.registry import MlflowRegistry
            from telemetry.metrics import ReplicaMetricsServer

            if controller is None:
                controller = ray.get_actor(settings.controller_name,
                                           namespace=settings.controller_namespace)
            self.settings = settings
            self.registry = MlflowRegistry(settings.tracking_uri)
            self.controller = controller
            self.replica = _replica_name()
            # Each replica serves its own samples for Prometheus; the
            # controller lists the endpoint in its scrape-target file.
            directory = os.environ.get(MULTIPROC_ENV)
            if directory:
                Path(directory).mkdir(parents=True, exist_ok=True)  # on a node of its own
            self.metrics_server = ReplicaMetricsServer(
                metrics_bind_host(settings.config.server.host),
                Path(directory) if directory else None)
            source = ActorSnapshotSource(
                controller, settings.controller_name, settings.controller_namespace,
                metrics_endpoint=self.metrics_server.endpoint,
                node=ray.get_runtime_context().get_node_id())
            snapshot = source.wait_for_snapshot(-1, 0.0, self.replica)
            if snapshot is None:
                raise RuntimeError("the rollout controller has no routing table")
            self.chaos: Any = None
            if fault_board is not None:
                from serving.chaos import ChaosReplica

                self.chaos = ChaosReplica(fault_board)
            self.core: GatewayCore = build_core(settings, snapshot, self._load)
            self._stop = threading.Event()
            self._references_loaded: set[tuple[str, str]] = set()
            self._load_references()
            self.follower = SnapshotFollower(
                source, self._apply, snapshot.version, self.replica,
                timeout_s=settings.snapshot_timeout_s).start()
            self._drift = threading.Thread(target=self._drift_loop, name="drift", daemon=True)
            self._drift.start()
            # Everything loaded so far (Ray, MLflow, scikit-learn, pandas, the
            # models: millions of objects) lives as long as the replica. Moved
            # out of the collector's reach, a full collection no longer walks
            # them all, which showed as request stalls of a hundred ms and more.
            gc.freeze()

        def _load(self, name: str, version: str) -> Any:
            # A stopped or hung MLflow fails a load in seconds, not the minutes
            # its client retries by default: the follower then retries, and
            # keeps serving the table it has meanwhile.
            from models.registry import bound_http_retries

            bound_http_retries()
            output = self.settings.config.model_outputs().get(name, "auto")
            scorer = self.registry.load(name, version, output=output)
            return scorer if self.chaos is None else self.chaos.wrap(scorer)

        def _apply(self, snapshot: RoutingSnapshot) -> None:
            # On the follower's thread: load new versions, then one reference swap.
            # Drift references (an MLflow read) wait for the drift thread: the
            # follower's next call is the replica's acknowledgement, not held up.
            loaded = len(self.core.loaded)
            self.core.apply_snapshot(snapshot, self._load)
            if len(self.core.loaded) > loaded:
                gc.freeze()  # the new versions live as long as the replica too

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

        def _drift_loop(self) -> None:
            # Off the request path: now and then, compare recent features with
            # the training references.
            monitor = self.core.drift_monitor
            while monitor is not None and not self._stop.wait(
                    self.settings.config.parity.drift_every_s):
                try:
                    self._load_references()  # of versions loaded since
                    monitor.evaluate()
                except Exception:
                    log.exception("drift evaluation failed")

        def __serve_build_asgi_app__(self) -> Any:
            extra = [] if self.chaos is None else [self.chaos.add_routes]
            server = self.settings.config.server
            return build_app(self.core, RayControlPlane(self.controller),
                             self.settings.admin_token, admin_routes=extra,
                             ingest_token=self.settings.ingest_token,
                             read_timeout_s=server.request_read_timeout_s,
                             instance_id=self.settings.instance_id)

        def __del__(self) -> None:
            # Ray Serve calls __del__ on graceful replica shutdown: flush the log.
            stop = getattr(self, "_stop", None)
            if stop is not None:
                stop.set()
            follower = getattr(self, "follower", None)
            if follower is not None:
                follower.stop()
            chaos = getattr(self, "chaos", None)
            if chaos is not None:
                chaos.close()
            core = getattr(self, "core", None)
            if core is not None:
                core.close()
            metrics_server = getattr(self, "metrics_server", None)
            if metrics_server is not None:
                metrics_server.close()

    return RampartGateway


def metrics_bind_host(gateway_host: str) -> str:
    """Where a replica serves its metrics: loopback when the gateway itself
    listens only there (nothing of it is exposed beyond the machine), else the
    node's address, which Prometheus on another machine can reach."""
    import ipaddress

    if gateway_host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(gateway_host).is_loopback:
            return "127.0.0.1"
    except ValueError:
        pass  # a host name: the node's address
    node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return node_ip


def _replica_name() -> str:
    """This replica's Serve id (unique in the cluster), or a process-unique name."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ActorSnapshotSource:
    """The controller actor's long-poll as a :class:`SnapshotSource`.

    Each call also tells the controller where this replica's metrics are. If
    the actor is gone for good (replaced by a controller with a new config),
    the next call looks it up again by name."""

    def __init__(self, actor: Any, name: str = "", namespace: str = "",
                 metrics_endpoint: str = "", node: str = "") -> None:
        self.actor = actor
        self.name = name
        self.namespace = namespace
        self.metrics_endpoint = metrics_endpoint
        self.node = node

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str
                          ) -> RoutingSnapshot | None:
        from ray.exceptions import RayActorError

        ref = self.actor.wait_for_snapshot.remote(known_version, timeout_s, replica,
                                                  self.metrics_endpoint, self.node)
        try:
            # Beyond the parked time, allow for a busy actor before giving up on the call.
            snapshot: RoutingSnapshot | None = ray.get(ref, timeout=timeout_s + 60)
        except RayActorError:
            if self.name:
                # Not back yet (ValueError): the follower retries.
                with contextlib.suppress(ValueError):
                    self.actor = ray.get_actor(self.name, namespace=self.namespace)
            raise
        return snapshot


class RayControlPlane:
    """The admin API's view of the controller actor (one Ray hop, admin only)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def execute(self, command: Command) -> CommandResult:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            result: CommandResult = await self.actor.execute.remote(command)
        except RayTaskError as exc:
            # The control plane refused: answer its own error, not Ray's wrapper.
            if isinstance(exc.cause, RampartError):
                raise exc.cause from None
            raise
        except RayActorError as exc:
            raise ControlPlaneUnavailable(f"the rollout controller is not running: {exc}"
                                          ) from None
        return result


def build_core(settings: ReplicaSettings, snapshot: RoutingSnapshot,
               load: Callable[[str, str], Scorer]) -> GatewayCore:
    """Load every reachable version and build the request path of one replica.

    Every part is built first and handed to the constructor; the shadow runner
    and the core share one :class:`LoadedScorers`.
    """
    from serving.gateway.core import GatewayCore
    from serving.gateway.scorers import LoadedScorers
    from serving.gateway.shadow import ShadowRunner
    from telemetry.decision_log import DecisionLogWriter
    from telemetry.drift_monitor import DriftMonitor
    from telemetry.metrics import DriftMetrics, LogWriterMetrics, RequestMetrics, ShadowMetrics
    from telemetry.tracing import build_tracer_provider

    table = snapshot.table
    scorers = LoadedScorers({(r.name, r.version): load(r.name, r.version)
                             for r in table.model_refs()})
    cfg = settings.config.decision_log
    writer = DecisionLogWriter(
        settings.decision_dir,
        writer_id=f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
        batch_rows=cfg.batch_rows,
        flush_interval_s=cfg.flush_interval_s,
        max_buffered_rows=cfg.max_buffered_rows,
        events=LogWriterMetrics("decision_log", registry=None),
        feature_policy=feature_policy(settings),
        spill_dir=settings.decision_spill_dir,
        spill_interval_s=cfg.spill_interval_s,
        spill_fsync=cfg.spill_fsync,
    )
    outcomes_log = None
    if settings.outcomes_dir is not None:
        from telemetry.outcomes_log import OutcomesLogWriter

        outcomes = settings.config.outcomes_log
        outcomes_log = OutcomesLogWriter(
            settings.outcomes_dir, writer_id=writer.writer_id,
            batch_rows=outcomes.batch_rows, flush_interval_s=outcomes.flush_interval_s,
            max_buffered_rows=outcomes.max_buffered_rows,
            events=LogWriterMetrics("outcomes_log", registry=None),
            spill_dir=settings.outcomes_spill_dir, spill_interval_s=outcomes.spill_interval_s,
            spill_fsync=outcomes.spill_fsync)
    parity = settings.config.parity
    drift_monitor = DriftMonitor(DriftMetrics(registry=None), psi_threshold=parity.psi_threshold,
                                 ks_alpha=parity.ks_alpha)
    shadow_runner = ShadowRunner(scorers, ShadowMetrics(registry=None), writer,
                                 queue_size=settings.config.shadow.queue_size)
    core = GatewayCore(table, scorers, RequestMetrics(registry=None),
                       build_tracer_provider().get_tracer("rampart.gateway"), writer,
                       shadow_runner=shadow_runner, drift_monitor=drift_monitor,
                       outcomes_log=outcomes_log, pool=model_pool(settings.config),
                       unit_policy=unit_policy(settings.config),
                       forcing=forcing_policy(settings),
                       trace_key=settings.trace_key.encode() if settings.trace_key else None)
    core.metrics.set_rollouts(snapshot.rollouts)
    return core


def feature_policy(settings: ReplicaSettings) -> FeaturePolicy | None:
    """The decision log's feature allowlist, when any model has one."""
    from telemetry.decision_log import FeaturePolicy

    allowed = settings.config.logged_features()
    if not allowed:
        return None
    return FeaturePolicy({name: frozenset(names) for name, names in allowed.items()},
                         settings.config.decision_log.unlisted_features,
                         (settings.trace_key or "").encode())


def model_pool(config: RampartConfig) -> ModelPool:
    """The replica's worker pool for versions scored off the event loop."""
    from serving.gateway.pool import ModelPool

    requests = config.requests
    return ModelPool(requests.worker_threads, requests.max_pending_rows,
                     requests.max_batch_rows)


def forcing_policy(settings: ReplicaSettings) -> ForcingPolicy | None:
    """Who may force an arm or a version by header; None when forcing is off."""
    from serving.routing.forcing import ForcingPolicy

    forcing = settings.config.requests.forced_assignment
    if forcing is None:
        return None
    key = settings.force_signing_key
    return ForcingPolicy.from_config(forcing, None if key is None else key.encode())


def unit_policy(config: RampartConfig) -> UnitPolicy:
    """Where requests name their unit, from the config."""
    from serving.gateway.protocols import UnitPolicy

    requests = config.requests
    return UnitPolicy(header=requests.unit_header.lower(), param=requests.unit_param,
                      hash_request_id=requests.missing_unit == "hash_request_id")


def resolve_paths(config: RampartConfig) -> tuple[Path | str, Path]:
    """The decision log's place and the metrics directory: a local path made
    absolute (relative ones are from the cwd), a URI as it is."""

    def absolute(path: Path) -> Path:
        return (path if path.is_absolute() else Path.cwd() / path).resolve()

    decisions = config.decision_log.path
    return (decisions if isinstance(decisions, str) else absolute(decisions),
            absolute(config.telemetry.metrics_dir))


def resolve_outcomes_path(config: RampartConfig) -> Path | str:
    """The outcomes log's place: a local path made absolute (a relative one is
    from the cwd), a URI as it is."""
    path = config.outcomes_log.path
    if isinstance(path, str):
        return path
    return (path if path.is_absolute() else Path.cwd() / path).resolve()


def resolve_spill_dirs(config: RampartConfig) -> tuple[Path | None, Path | None]:
    """The decision and outcomes logs' spill journal directories, made absolute
    (relative ones are from the cwd, as for the metrics directory), or None
    where the config turns the journal off. Always local disk: a journal on an
    object store could not be fsynced every few milliseconds."""

    def absolute(path: Path | None) -> Path | None:
        if path is None:
            return None
        return (path if path.is_absolute() else Path.cwd() / path).resolve()

    return (absolute(config.decision_log.spill_dir),
            absolute(config.outcomes_log.spill_dir))


def gateway_application(settings: ReplicaSettings, controller: Any, fault_board: Any,
                        options: dict[str, Any], metrics_dir: Path) -> Any:
    """The gateway as a Serve application (what ``serve.run`` and a Serve
    config's ``import_path`` builder both deploy).

    ``controller`` (the rollout controller's actor handle) and ``fault_board``
    (the chaos actor's, or None) come from the composition root; every replica
    receives both, never imports the control plane, and loads the chaos
    wrapper only when it is given a fault board.
    """
    # A handle made by a Ray Client driver (``ray://``) means nothing inside the
    # cluster: the replicas then find the controller by name instead.
    if ray.util.client.ray.is_connected():  # type: ignore[no-untyped-call]
        controller = None
    return _build_deployment(options, metrics_dir).bind(settings, controller, fault_board)


def deploy_gateway(
    settings: ReplicaSettings,
    controller: Any,
    fault_board: Any,
    options: dict[str, Any],
    metrics_dir: Path,
    host: str,
    port: int,
    proxy_location: str = "EveryNode",
) -> None:
    """Start Serve on ``host:port`` and deploy the gateway's replicas."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location,
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(gateway_application(settings, controller, fault_board, options, metrics_dir),
              name=APP_NAME, route_prefix="/", blocking=False)


def delete_gateway() -> None:
    """Delete the app (replicas flush their logs on the way out)."""
    from ray import serve

    serve.delete(APP_NAME)
