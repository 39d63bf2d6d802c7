"""The rollout control plane's I/O shell around the pure controller.

:class:`RolloutService` owns the store, the MLflow registry, the metrics
sources and the routing table the gateways serve. Every entry point (a new
plan, an operator command, an Alertmanager webhook, the periodic tick) ends
in the same place: feed the pure :func:`rollout.controller.step`, then carry
out its actions in order — publish the routing table first, then move or tag
MLflow aliases, then persist the state and the audit trail.

Every routing table goes to the replicas through a
:class:`~rollout.publication.SnapshotBoard` they long-poll, which takes no
lock of the service, so no rollout step delays a replica. The tick fetches
metrics outside the service lock, so a slow or hung Prometheus delays no
operator command, Alertmanager webhook or status read.

MLflow being unreachable stops no traffic: replicas keep serving what they
loaded. Before a rollout steps, the tick checks (outside the lock, as it
fetches metrics) that MLflow answers and resolves every version the next
routing table names; otherwise the rollout holds and says why, and no table
naming a version replicas cannot load is published, no alias moved. A
rollout created while MLflow is away is stored holding, and starts once its
versions resolve. A table published meanwhile (an operator's abort) reuses
the versions its aliases last resolved to, which replicas already serve.

Every step runs inside the store's hold on the rollout's row
(:meth:`RolloutStore.transition`): when two controllers share one database,
the one that loses a race for a step learns it before it has published or
touched MLflow, reloads the rollout and leaves the step to the winner. A step
that cannot reach the store changes nothing: the rollout holds where the
store has it, the tick goes on, and the step is taken again once the
database is back.

It is plain Python: tests drive it directly with a real SQLite store and a
real MLflow registry; on Ray one instance lives in the controller actor
(``rollout/actor.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from models.registry import RegistryUnavailable
from rollout.core.controller import (
    Audit,
    AuditRecord,
    Event,
    Phase,
    PromoteAlias,
    RolloutState,
    SetWeight,
    TagRolledBack,
    new_rollout,
    step,
)
from rollout.core.plan import RolloutPlan
from rollout.metrics_source import MetricsSource, MetricsUnavailable, Snapshot, window_between
from rollout.notify import ConfirmAnswer, Notifier, display_url, event_body, post_confirm
from rollout.publication import SnapshotBoard
from rollout.store import RolloutStore
from serving.kernel.commands import (
    AlertResult,
    OperatorAction,
    RolloutStatus,
    RolloutSummary,
    RoutingStatus,
)
from serving.kernel.config import ModelSpec, RampartConfig, ShadowSpec
from serving.kernel.errors import (
    InvalidRollout,
    ModelRegistryUnavailable,
    RolloutConflict,
    RolloutNotFound,
    StaleRollout,
    StoreUnavailable,
)
from serving.routing.assignment import Allocation
from serving.routing.router import ContextualModel, RolloutRoute, build_routing_table
from serving.routing.snapshot import RolloutGauge, RoutingSnapshot

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# An operator command or alert that loses a race to another controller is
# tried again on the reloaded rollout, this many times in all.
COMMAND_ATTEMPTS = 3
# For this long after MLflow was found unreachable, a table takes the versions
# last resolved without asking it again: under the lock, a hung MLflow would
# otherwise hold every command for its client's timeouts.
REGISTRY_RETRY_S = 10.0


def registry_hold(exc: BaseException) -> str:
    """The hold reason of a rollout waiting for MLflow."""
    return (f"holding: MLflow unreachable ({exc}); no routing table naming a new version is "
            "published until MLflow answers")


class WritableRegistry(Protocol):
    def resolve(self, name: str, version_or_alias: str) -> str: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def tag_version(self, name: str, version: str, key: str, value: str) -> None: ...


# The ``action`` label value of alerts that roll a rollout back (see
# deploy/prometheus/rules/alerts.yml); every other alert only notifies.
ROLLBACK_ACTION = "rollback"


@dataclass
class _Runtime:
    previous: Snapshot | None = None
    next_check_at: float = 0.0
    # Taken over from the store (this controller restarted or replaced
    # another): the counters hold the rollout's whole traffic so far, which an
    # earlier controller judged already. The first snapshot is only the start
    # of a fresh window; no step is taken on it.
    resumed: bool = False


@dataclass
class RolloutService:
    config: RampartConfig
    store: RolloutStore
    registry: WritableRegistry
    metrics_for: Callable[[RolloutPlan], MetricsSource]
    clock: Callable[[], float] = time.time
    # Posts each transition to the webhooks its plan names (none: no posts);
    # it only queues, so a down or slow receiver delays no step.
    notifier: Notifier | None = field(default_factory=Notifier)
    # Asks a plan's confirm hook; bounded by a short timeout, called outside _lock.
    confirm: Callable[[str, Mapping[str, Any]], ConfirmAnswer] = post_confirm
    # Raises RegistryUnavailable unless MLflow answers, within a short bound
    # (MLflow's own client would retry for minutes); called outside _lock.
    registry_check: Callable[[], None] | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _states: dict[str, RolloutState] = field(default_factory=dict)
    _runtime: dict[str, _Runtime] = field(default_factory=dict)
    _shadows: dict[tuple[str, str], ShadowSpec] = field(default_factory=dict)
    _snapshot: RoutingSnapshot | None = None
    # Replicas long-poll the board; it never takes _lock, so a slow step delays none.
    board: SnapshotBoard = field(default_factory=SnapshotBoard)
    # Promoted rollouts whose alias has not moved yet: their split stays at 100%.
    _alias_pending: set[str] = field(default_factory=set)
    # The store revision each in-memory state was read or written at.
    _revisions: dict[str, int] = field(default_factory=dict)
    # (model, version or alias) -> version, as MLflow last answered: what a
    # table published while MLflow is unreachable routes by.
    _resolved: dict[tuple[str, str], str] = field(default_factory=dict)
    # When MLflow was last found unreachable (None: it answered since).
    _registry_away_at: float | None = None
    # The bandit controller's current bucket ranges, by experiment id
    # (rollout/bandit_service.py): every table published carries them.
    _bandit_allocations: dict[str, Allocation] = field(default_factory=dict)
    # The contextual bandits' fitted models, by experiment id, likewise.
    _contextual_models: dict[str, ContextualModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A restarted controller resumes every rollout where the store left it.
        stored = self.store.load_all()
        self._states = {s.state.id: s.state for s in stored}
        self._revisions = {s.state.id: s.revision for s in stored}
        self._publish()

    # ------------------------------------------------------------------ routing

    def _compose_config(self) -> RampartConfig:
        """The base config with the shadows attached at run time.

        Rollouts are not experiments: they reach routing as splits of their
        baseline's traffic (:meth:`_rollout_routes`), so configured
        experiments keep their units while a rollout runs and after it ends.
        """
        served: dict[str, set[str]] = {m.name: set(m.versions) for m in self.config.models}
        for shadow in self._shadows.values():
            served.setdefault(shadow.model, set()).add(shadow.version)
        models = tuple(ModelSpec(name=name, versions=tuple(sorted(versions)))
                       for name, versions in served.items())
        shadows = {(s.model, s.version): s for s in self.config.shadows}
        shadows.update(self._shadows)
        return self.config.model_copy(update={"models": models,
                                              "shadows": tuple(shadows.values())})

    def _rollout_routes(self) -> tuple[RolloutRoute, ...]:
        """The rollouts whose split routes traffic: every unfinished one, and a
        promoted one until its alias has moved (so promotion never sends
        traffic back to the baseline in between). After that the alias carries
        the candidate and the split ends; rolled-back and aborted rollouts
        route nothing."""
        routes = []
        for state in self._states.values():
            promoting = state.phase == Phase.PROMOTED and state.id in self._alias_pending
            if state.terminal and not promoting:
                continue
            plan = state.plan
            routes.append(RolloutRoute(
                rollout_id=state.id, salt=state.salt, unit_type=plan.unit,
                model_name=plan.model_name, baseline_version=plan.baseline_version,
                candidate_version=plan.candidate_version, weight_bp=state.weight_bp))
        return tuple(routes)

    def set_shadow(self, shadow: ShadowSpec, enabled: bool = True) -> RoutingSnapshot:
        """Attach (or detach) a version as a shadow of all or a sample of traffic."""
        with self._lock:
            try:
                self.registry.resolve(shadow.model, shadow.version)
            except LookupError as exc:
                raise InvalidRollout(str(exc)) from None
            except RegistryUnavailable as exc:
                raise ModelRegistryUnavailable(
                    f"shadow {shadow.model}/{shadow.version} not attached: {exc}") from None
            key = (shadow.model, shadow.version)
            before = dict(self._shadows)
            if enabled:
                self._shadows[key] = shadow
            else:
                self._shadows.pop(key, None)
            try:
                self._publish()
            except StoreUnavailable:
                self._shadows = before  # not published: not attached
                raise
            assert self._snapshot is not None
            return self._snapshot

    def _publish(self) -> list[str]:
        """Build and publish the next routing table; return the experiments
        whose arms newly all serve one version (see :meth:`RoutingTable.shared_versions`)."""
        version = self.store.next_counter("routing_version")
        table = build_routing_table(self._compose_config(), self._resolve, version,
                                    self._rollout_routes(), self._bandit_allocations,
                                    self._contextual_models)
        before = set(self._snapshot.table.shared_versions()) if self._snapshot else set()
        gauges = tuple(
            RolloutGauge(s.id, not s.terminal, s.weight_bp, s.last_transition_at or s.created_at)
            for s in self._states.values())
        self._snapshot = RoutingSnapshot(table, gauges)
        self.board.publish(self._snapshot)  # parked replicas get it now
        collapsed = [line for line in table.shared_versions() if line not in before]
        for line in collapsed:
            log.warning("routing version %d: %s", version, line)
        return collapsed

    def publish_bandit_allocations(
            self, allocations: Mapping[str, Allocation],
            contextual: Mapping[str, ContextualModel] | None = None) -> RoutingSnapshot:
        """Route the bandit experiments named in ``allocations`` by those ranges
        (and the contextual bandits named in ``contextual`` by those models)
        from now on, and publish the table; returns the snapshot published.
        Experiments not named keep what they had. Raises
        :class:`StoreUnavailable` (nothing changed) when no routing version can
        be counted."""
        with self._lock:
            before = dict(self._bandit_allocations)
            models_before = dict(self._contextual_models)
            self._bandit_allocations.update(allocations)
            self._contextual_models.update(contextual or {})
            try:
                self._publish()
            except Exception:  # not published: not in force
                self._bandit_allocations = before
                self._contextual_models = models_before
                raise
            assert self._snapshot is not None
            return self._snapshot

    def _resolve(self, name: str, version_or_alias: str) -> str:
        """The registry's answer; while MLflow is unreachable, its last answer
        (a version replicas already loaded), so an abort still routes."""
        key = (name, version_or_alias)
        away = self._registry_away_at
        if away is not None and self.clock() - away < REGISTRY_RETRY_S and key in self._resolved:
            return self._resolved[key]
        try:
            version = self.registry.resolve(name, version_or_alias)
        except RegistryUnavailable as exc:
            self._registry_away_at = self.clock()
            if key not in self._resolved:
                raise
            log.warning("MLflow unreachable (%s); %s %s routes to version %s, as last resolved",
                        exc, name, version_or_alias, self._resolved[key])
            return self._resolved[key]
        self._resolved[key] = version
        return version

    def _table_versions(self, state: RolloutState) -> list[tuple[str, str]]:
        """Every (model, version or alias) the next routing table names with
        ``state`` routing: the served models and shadows, and its two versions."""
        refs = {(m.name, v) for m in self._compose_config().models for v in m.versions}
        refs.update((state.plan.model_name, v)
                    for v in (state.plan.baseline_version, state.plan.candidate_version))
        return sorted(refs)

    def _registry_problem(self, refs: list[tuple[str, str]]) -> str:
        """Why a table naming ``refs`` must not be published now ("" if it may):
        MLflow does not answer, or has no such version. Called outside _lock."""
        try:
            if self.registry_check is not None:
                self.registry_check()
            for name, version_or_alias in refs:
                self._resolved[(name, version_or_alias)] = self.registry.resolve(
                    name, version_or_alias)
        except RegistryUnavailable as exc:
            self._registry_away_at = self.clock()
            return registry_hold(exc)
        except LookupError as exc:
            self._registry_away_at = None
            return f"holding: {exc}"
        self._registry_away_at = None
        return ""

    def snapshot(self, known_version: int = -1) -> RoutingSnapshot | None:
        """The routing snapshot if newer than ``known_version``, else None.

        Lock-free (one reference read): a rollout step in progress, an MLflow
        call included, delays no reader.
        """
        snapshot = self._snapshot
        assert snapshot is not None
        return snapshot if snapshot.version > known_version else None

    def wait_for_snapshot(self, known_version: int, timeout_s: float, replica: str = ""
                          ) -> RoutingSnapshot | None:
        """Long-poll: the snapshot as soon as one newer than ``known_version`` is
        published, or None after ``timeout_s`` (see :class:`SnapshotBoard`)."""
        return self.board.wait(known_version, timeout_s, replica)

    def routing_status(self) -> RoutingStatus:
        """The routing version in force, the replicas following it, and propagation."""
        return self.board.status()

    # ------------------------------------------------------------------ entry points

    def create(self, plan: RolloutPlan) -> RolloutState:
        unreachable = ""
        if self.registry_check is not None:
            try:  # bounded, and before the lock: MLflow being away delays no one else
                self.registry_check()
                self._registry_away_at = None
            except RegistryUnavailable as exc:
                unreachable = registry_hold(exc)
                self._registry_away_at = self.clock()
        with self._lock:
            rollout_id = plan.id or f"ro-{uuid.uuid4().hex[:10]}"
            if rollout_id in self._states:
                raise RolloutConflict(f"rollout {rollout_id!r} already exists")
            for other in self._states.values():
                if not other.terminal and other.plan.model_name == plan.model_name:
                    raise RolloutConflict(
                        f"rollout {other.id!r} of {plan.model_name} is still {other.phase.value};"
                        " finish or abort it first")
            if not plan.candidate_version.isdigit() or not plan.baseline_version.isdigit():
                raise InvalidRollout("baseline_version and candidate_version must be version "
                                     "numbers, not aliases: a rollout pins what it compares")
            for version in (plan.baseline_version, plan.candidate_version):
                if unreachable:
                    break
                try:
                    self._resolve(plan.model_name, version)
                except RegistryUnavailable as exc:
                    unreachable = registry_hold(exc)
                except LookupError as exc:
                    raise InvalidRollout(str(exc)) from None
            now = self.clock()
            state = new_rollout(rollout_id, plan, now)
            gated = plan.confirm.before_start is not None
            if unreachable:
                # Its versions cannot be checked, nor loaded by replicas: stored
                # pending and unpublished; the tick starts it once they resolve.
                state = state.model_copy(update={"hold_reason": unreachable})
                self._revisions[rollout_id] = self.store.add(state)
                self._states[rollout_id] = state
                self._runtime[rollout_id] = _Runtime(next_check_at=now)
                return state
            if gated:
                # The hook is asked by the next tick, outside the lock, not here
                # under it: the rollout is stored pending until the hook agrees.
                state = state.model_copy(update={
                    "hold_reason": "waiting for the confirm hook before_start"})
            self._revisions[rollout_id] = self.store.add(state)  # conflict if another has it
            self._states[rollout_id] = state
            self._runtime[rollout_id] = _Runtime(
                next_check_at=now if gated else now + plan.interval_s)
            if gated:
                self._publish_if_reachable()
                return state
            try:
                self._advance(state, None, [], now)
            except (StaleRollout, StoreUnavailable) as exc:
                # Stored and pending: its first step is taken by a later tick.
                log.warning("rollout %s created; its first step waits: %s", rollout_id, exc)
            return self._states[rollout_id]

    def command(self, rollout_id: str, kind: OperatorAction, reason: str = "") -> RolloutState:
        """An operator's pause, resume, promote or abort.

        Applied to the rollout as the store has it: if another controller
        stepped it meanwhile, the command is tried again on the reloaded
        state. StoreUnavailable reaches the caller: the command did nothing.
        """
        with self._lock:
            for attempt in range(1, COMMAND_ATTEMPTS + 1):
                state = self.get(rollout_id)
                if state.terminal:
                    raise RolloutConflict(f"rollout {rollout_id!r} already {state.phase.value}")
                event = Event(kind=kind, reason=reason)
                try:
                    self._advance(state, None, [event], self.clock(),
                                  metrics_error="operator command")
                except StaleRollout:
                    if attempt == COMMAND_ATTEMPTS:
                        raise
                    continue
                break
            return self._states[rollout_id]

    def alert(self, payload: Any) -> AlertResult:
        """Alertmanager webhook: a firing alert labelled ``action: rollback`` rolls
        back the rollout its ``rollout`` label names. Any other alert (``notify``,
        or no action: ``RampartRolloutStuck`` on a rollout paused at a manual
        gate) is counted as ignored and leaves the rollout alone."""
        alerts = payload.get("alerts") if isinstance(payload, Mapping) else None
        if not isinstance(alerts, list):
            raise InvalidRollout("payload has no 'alerts' list (Alertmanager webhook format)")
        rolled_back: list[str] = []
        ignored = 0
        with self._lock:
            for alert in alerts:
                if not isinstance(alert, dict):
                    raise InvalidRollout("every alert must be an object")
                labels = alert.get("labels") or {}
                if not isinstance(labels, Mapping):
                    raise InvalidRollout("an alert's 'labels' must be an object")
                rollout_id = labels.get("rollout")
                state = self._states.get(rollout_id) if isinstance(rollout_id, str) else None
                if (alert.get("status", "firing") != "firing" or state is None or state.terminal
                        or labels.get("action") != ROLLBACK_ACTION):
                    ignored += 1
                    continue
                name = str(labels.get("alertname", "alert"))
                summary = (alert.get("annotations") or {}).get("summary", "")
                event = Event(kind="alert", reason=f"{name} {summary}".strip())
                if self._alert_one(state.id, event):
                    rolled_back.append(state.id)
                else:
                    ignored += 1
        return AlertResult(rolled_back=rolled_back, ignored=ignored)

    def _alert_one(self, rollout_id: str, event: Event) -> bool:
        """Roll one rollout back; False if it had finished (here or on another
        controller) before the alert could act."""
        for attempt in range(1, COMMAND_ATTEMPTS + 1):
            state = self._states[rollout_id]
            if state.terminal:
                return False
            try:
                self._advance(state, None, [event], self.clock(), metrics_error="alert")
            except StaleRollout:
                if attempt == COMMAND_ATTEMPTS:
                    raise
                continue
            return True
        return False

    def tick(self) -> None:
        """Run every rollout whose analysis interval has come.

        Three phases, so that a slow or hung metrics source (Prometheus over
        HTTP) holds no lock: pick the due rollouts under the lock; fetch their
        metrics without it; then, under the lock again, step each rollout only
        if nothing changed it meanwhile. An operator command or an alert that
        arrived during the fetch wins, and the fetched window is discarded.

        A step that finds the store unreachable holds its rollout (logged, and
        its window kept for the next step); one that another controller took
        first leaves the rollout as that controller wrote it. Neither raises.
        """
        now = self.clock()
        due: list[tuple[RolloutState, _Runtime]] = []
        refs: dict[str, list[tuple[str, str]]] = {}
        with self._lock:
            for state in self._states.values():
                if state.terminal or state.phase == Phase.PAUSED:
                    continue
                runtime = self._runtime.setdefault(state.id, _Runtime(resumed=True))
                if now < runtime.next_check_at:
                    continue
                runtime.next_check_at = now + state.plan.interval_s
                due.append((state, runtime))
                refs[state.id] = self._table_versions(state)
        for state, runtime in due:
            problem = self._registry_problem(refs[state.id])
            if problem:
                # Not stepped: no weight moves, no alias; the traffic of this
                # window is judged with the next one, once MLflow answers.
                with self._lock:
                    if not self._changed_since(state, runtime, None):
                        self._hold(state, problem, now)
                continue
            source = self.metrics_for(state.plan)
            current: Snapshot | None = None
            try:
                current = source.snapshot(state.id)
                custom = source.custom(state.plan, state.id)
                error = ""
            except MetricsUnavailable as exc:
                error = str(exc)
            with self._lock:
                if self._changed_since(state, runtime, current):
                    continue
                if runtime.resumed and current is not None and state.step_index >= 0:
                    runtime.resumed = False
                    runtime.previous = current
                    self._hold(state, "resumed by a new controller: measuring a fresh "
                               "window before the next step", now)
                    continue
                window = None if current is None else window_between(
                    runtime.previous, current, custom)
                gate = self._confirm_gate(state, window, now, error)
                if gate is None:
                    self._step_due(state, runtime, window, now, error, current)
                    continue
            # The confirm hook is asked outside the lock, as metrics are fetched:
            # a slow hook delays no command, alert or read, and its timeout
            # bounds how long it delays this tick.
            hook, url, body = gate
            answer = self.confirm(url, body)
            with self._lock:
                if self._changed_since(state, runtime, current):
                    continue
                if answer.ok:
                    self._step_due(state, runtime, window, now, error, current)
                else:
                    # Not a failed check: the rollout holds where it is, and this
                    # window is judged with the next one, when the hook is asked again.
                    self._hold(state, f"holding: confirm hook {hook} ({display_url(url)}) "
                                      f"{answer.detail}", now)

    def _changed_since(self, state: RolloutState, runtime: _Runtime,
                       current: Snapshot | None) -> bool:
        """True if a command, alert or another controller changed the rollout
        since the tick picked it: the window would judge a state that is gone,
        so counting restarts from here."""
        latest = self._states.get(state.id)
        if latest is not state and latest != state:
            if current is not None:
                runtime.previous = current
            return True
        return False

    def _step_due(self, state: RolloutState, runtime: _Runtime, window: Any, now: float,
                  error: str, current: Snapshot | None) -> None:
        try:
            self._advance(state, window, [], now, metrics_error=error)
        except StaleRollout as exc:
            log.info("rollout %s: step left to another controller: %s", state.id, exc)
        except StoreUnavailable as exc:
            # Nothing stored changed: the traffic of this window is
            # judged with the next one, once the store is back.
            log.warning("rollout %s holds: %s", state.id, exc)
            return
        if current is not None:
            runtime.previous = current

    def _confirm_gate(self, state: RolloutState, window: Any, now: float, error: str
                      ) -> tuple[str, str, dict[str, Any]] | None:
        """The confirm hook this step must pass, as (name, url, body), or None.

        The pure step is taken ahead to learn whether it starts the rollout or
        enters a further step; it is taken again, on the same inputs, once
        the hook agrees. Promotion and operator commands are not gated.
        """
        hooks = state.plan.confirm
        if hooks.before_start is None and hooks.before_step is None:
            return None
        new_state, actions = step(state, window, [], now, error)
        if new_state.phase != Phase.PROGRESSING or new_state.step_index == state.step_index:
            return None
        starting = state.step_index < 0
        url = hooks.before_start if starting else hooks.before_step
        if url is None:
            return None
        record = [a.record for a in actions if isinstance(a, Audit)][-1]
        event = "confirm-start" if starting else "confirm-step"
        return ("before_start" if starting else "before_step", url,
                event_body(state.id, event, record))

    def _hold(self, state: RolloutState, reason: str, now: float) -> None:
        """Store the rollout as it is, holding for ``reason`` (no transition)."""
        if state.hold_reason == reason:
            return
        held_state = state.model_copy(update={"hold_reason": reason, "updated_at": now})
        try:
            with self.store.transition(state.id, self._revisions.get(state.id, 0)) as held:
                revision = held.save(held_state)
        except StaleRollout as exc:
            log.info("rollout %s: left to another controller: %s", state.id, exc)
            self._reload(state.id)
            return
        except StoreUnavailable as exc:
            log.warning("rollout %s holds (%s); not stored: %s", state.id, reason, exc)
            return
        self._states[state.id] = held_state
        self._revisions[state.id] = revision

    def next_due_in(self) -> float:
        with self._lock:
            due = [self._runtime.get(s.id, _Runtime()).next_check_at
                   for s in self._states.values() if not s.terminal]
        return max(0.0, min(due) - self.clock()) if due else 1.0

    # ------------------------------------------------------------------ reading

    def get(self, rollout_id: str) -> RolloutState:
        """The rollout's state once any step in progress has finished acting."""
        with self._lock:
            state = self._states.get(rollout_id)
        if state is None:
            raise RolloutNotFound(f"no rollout {rollout_id!r}")
        return state

    def describe(self, rollout_id: str) -> RolloutStatus:
        """State, step, last checks and window, plan and audit trail of one rollout.

        Read under the lock: a step makes its new state visible before it has
        written its audit records, and a status must show both or neither.
        """
        with self._lock:
            state = self.get(rollout_id)
            audit = self.store.audit_trail(rollout_id)
        plan = state.plan
        return RolloutStatus(
            id=state.id,
            phase=state.phase.value,
            step_index=state.step_index,
            step_percent=plan.steps[state.step_index] if state.step_index >= 0 else 0,
            weight_bp=state.weight_bp,
            failed_checks=state.failed_checks,
            step_requests=state.step_requests,
            hold_reason=state.hold_reason,
            last_verdict=state.last_verdict,
            last_checks=[c.model_dump(mode="json") for c in state.last_checks],
            last_window=_window_json(state),
            plan=plan.model_dump(mode="json", by_alias=True),
            salt=state.salt,
            routing_version=self._snapshot.version if self._snapshot else None,
            audit=[r.model_dump(mode="json") for r in audit],
        )

    def summaries(self) -> list[RolloutSummary]:
        """One line per rollout, in creation order."""
        with self._lock:
            states = list(self._states.values())
        return [RolloutSummary(id=s.id, phase=s.phase.value, model_name=s.plan.model_name,
                               candidate_version=s.plan.candidate_version, weight_bp=s.weight_bp)
                for s in states]

    # ------------------------------------------------------------------ the shell

    def _advance(self, state: RolloutState, window: Any, events: list[Event], now: float,
                 metrics_error: str = "") -> None:
        """Take one step of the rollout and carry out its actions.

        The actions run while the store holds the rollout's row at the
        revision ``state`` was read at, and the new state and audit records
        are written in that same transaction. Raises :class:`StaleRollout`
        (before any action, the rollout reloaded from the store) if another
        controller stepped it first, and :class:`StoreUnavailable` if the
        store cannot be reached; either way nothing of this step is stored
        and the in-memory state is the stored one.
        """
        new_state, actions = step(state, window, events, now, metrics_error)
        if new_state == state and not actions:
            return
        was_pending = state.id in self._alias_pending
        snapshot = self._snapshot
        try:
            with self.store.transition(state.id, self._revisions.get(state.id, 0)) as held:
                records = self._act(state, new_state, actions, now)
                revision = held.save(new_state, records) if new_state != state else None
        except BaseException as exc:
            self._states[state.id] = state
            if was_pending:
                self._alias_pending.add(state.id)
            else:
                self._alias_pending.discard(state.id)
            if isinstance(exc, StaleRollout):
                self._reload(state.id)
            elif self._snapshot is not snapshot:
                # The step published before it failed: publish the stored state again.
                self._publish_if_reachable()
            raise
        if revision is not None:
            self._revisions[state.id] = revision
        if records and self.notifier is not None and new_state.plan.notify:
            try:  # stored by now: operators hear only of what happened
                self.notifier.publish(state.id, new_state.plan.notify, records)
            except Exception:
                log.exception("rollout %s: notifications not queued", state.id)

    def _act(self, state: RolloutState, new_state: RolloutState, actions: list[Any],
             now: float) -> list[AuditRecord]:
        """Carry out a step's actions in order; return the audit records to store."""
        records: list[AuditRecord] = []
        collapsed: list[str] = []
        published = False
        if new_state.phase == Phase.PROMOTED and state.phase != Phase.PROMOTED:
            # Until the alias has moved, the split keeps the candidate serving.
            self._alias_pending.add(state.id)
        for action in actions:
            if isinstance(action, SetWeight):
                self._states[state.id] = new_state
                self._publish()  # traffic moves before anything else
                published = True
            elif isinstance(action, PromoteAlias):
                promote = functools.partial(self._promote, new_state, action)
                if self._mlflow(promote, records, now, new_state):
                    # The alias now reaches the candidate: the rollout's split ends.
                    self._alias_pending.discard(state.id)
                    collapsed = self._publish()
            elif isinstance(action, TagRolledBack):
                tag = functools.partial(self._tag_rollback, new_state, action)
                self._mlflow(tag, records, now, new_state)
            elif isinstance(action, Audit):
                records.append(action.record)
        self._states[state.id] = new_state
        if records and not published:
            self._publish()  # a transition without a weight change still updates gauges
        if collapsed:
            # The alias move left an experiment comparing a version with itself.
            records.append(AuditRecord(
                at=now, from_phase=new_state.phase, to_phase=new_state.phase,
                step_index=new_state.step_index, weight_bp=new_state.weight_bp,
                reason="routing now compares a version with itself: " + "; ".join(collapsed),
                figures={"shared_versions": collapsed}))
        return records

    def _reload(self, rollout_id: str) -> None:
        """Take the rollout as another controller stored it, and route by it."""
        try:
            stored = self.store.load(rollout_id)
        except StoreUnavailable as exc:
            log.warning("rollout %s: cannot reload it: %s", rollout_id, exc)
            return
        if stored is None:
            return
        self._states[rollout_id] = stored.state
        self._revisions[rollout_id] = stored.revision
        # The winner moved the alias if the rollout was promoted.
        self._alias_pending.discard(rollout_id)
        self._publish_if_reachable()

    def _publish_if_reachable(self) -> None:
        try:
            self._publish()
        except StoreUnavailable as exc:
            log.warning("routing table not republished: %s", exc)

    def _promote(self, state: RolloutState, action: PromoteAlias) -> None:
        self.registry.set_alias(action.model_name, CHAMPION_ALIAS, action.version)
        self._tag_history(state, "promoted", "")

    def _tag_rollback(self, state: RolloutState, action: TagRolledBack) -> None:
        self.registry.tag_version(action.model_name, action.version,
                                  "rampart.rolled_back_reason", action.reason[:4000])
        self._tag_history(state, "rolled_back", action.reason)

    def _tag_history(self, state: RolloutState, outcome: str, reason: str) -> None:
        plan = state.plan
        for role, version in (("baseline", plan.baseline_version),
                              ("candidate", plan.candidate_version)):
            value = json.dumps({"role": role, "outcome": outcome, "reason": reason[:1000],
                                "at": state.updated_at, "steps": list(plan.steps)})
            self.registry.tag_version(plan.model_name, version, f"rampart.rollout.{state.id}",
                                      value)

    def _mlflow(self, call: Callable[[], None], records: list[AuditRecord], now: float,
                state: RolloutState) -> bool:
        """Run an MLflow update; True if it succeeded.

        MLflow being down must not stop traffic from moving; the trail says so.
        """
        try:
            call()
        except Exception as exc:
            log.exception("MLflow update failed")
            records.append(AuditRecord(
                at=now, from_phase=state.phase, to_phase=state.phase,
                step_index=state.step_index, weight_bp=state.weight_bp,
                reason=f"MLflow update failed: {exc}", figures={}))
            return False
        return True


def _window_json(state: RolloutState) -> dict[str, Any] | None:
    window = state.last_window
    if window is None:
        return None

    def arm(a: Any) -> dict[str, Any]:
        p99 = a.quantile(0.99)
        return {"requests": a.requests, "errors": a.errors, "error_rate": a.error_rate,
                "p99_ms": None if p99 is None else p99 * 1000}

    return {"baseline": arm(window.baseline), "candidate": arm(window.candidate)}
