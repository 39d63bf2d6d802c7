"""The gateway: validate, assign, route, predict, respond; then log, count, trace.

:class:`GatewayCore` is plain Python over injected parts (routing table,
loaded scorers, decision log, metrics, tracer) so the whole request path runs
in-process in tests. :func:`build_app` puts a FastAPI app in front of it; the
same app is what each Ray Serve replica serves (``serving/gateway/ray_app.py``).

Everything a request needs is computed in one replica with no hop through Ray:
each hop costs milliseconds here, while scoring a small model costs
microseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.inputs import InputMismatch
from models.outputs import Prediction, ScoredBatch
from models.registry import Scorer
from rollout.core.plan import RolloutPlan
from serving.gateway.pool import ModelPool
from serving.gateway.protocols import (
    Formatted,
    RowRequest,
    RowResult,
    ScoredRequest,
    ScoringRequest,
    UnitPolicy,
)
from serving.gateway.protocols import mlflow as mlflow_protocol
from serving.gateway.protocols import rank as rank_protocol
from serving.gateway.protocols import v1 as v1_protocol
from serving.gateway.protocols import v2 as v2_protocol
from serving.gateway.recent_ids import RecentRequestIds
from serving.gateway.schemas import (
    ErrorResponse,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    RankRequest,
    RankResponse,
    V2ErrorResponse,
)
from serving.gateway.scorers import LoadedScorers, ModelKey
from serving.gateway.shadow import ShadowJob, ShadowRunner
from serving.kernel.commands import (
    DEFAULT_AUDIT_RECORDS,
    MAX_AUDIT_RECORDS,
    OPERATOR_ACTIONS,
    AlertWebhook,
    Command,
    CommandResult,
    CreateRollout,
    DescribeBandit,
    DescribeRollout,
    DescribeRouting,
    ListRollouts,
    OperatorAction,
    RolloutCommand,
    SetShadow,
)
from serving.kernel.config import ServerConfig, ShadowSpec, format_validation_error
from serving.kernel.errors import (
    DuplicateRequestId,
    InvalidJson,
    InvalidRollout,
    MethodNotAllowed,
    ModelFailed,
    NoControlPlane,
    OutcomesUnavailable,
    Overloaded,
    PayloadTooLarge,
    RampartError,
    RequestTimeout,
    RouteNotFound,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    ValidationFailed,
)
from serving.kernel.ids import MAX_BODY_BYTES
from serving.routing.forcing import ForcingPolicy, parse_force, resolve_force
from serving.routing.interleaving import Interleaving, interleave
from serving.routing.router import (
    Decision,
    RoutingTable,
    decision_factors,
    public_routing,
    route,
)
from serving.routing.snapshot import RoutingSnapshot
from telemetry.decision_log import RANKER_ROLE, DecisionLogWriter, DecisionRecord
from telemetry.drift_monitor import DriftMonitor
from telemetry.metrics import CONTENT_TYPE, RequestMetrics
from telemetry.outcome_events import (
    MAX_OUTCOME_BODY_BYTES,
    MAX_OUTCOME_EVENTS,
    OutcomeBatch,
    OutcomeEvent,
    OutcomesAccepted,
)
from telemetry.outcomes_log import OutcomesLogWriter, outcome_records
from telemetry.tracing import SPAN_NAME

JSON = "application/json"
NO_QUERY: Mapping[str, str] = MappingProxyType({})
# The V2 binary tensor extension's header: the JSON part's length, raw bytes after.
BINARY_HEADER = "inference-header-content-length"
REJECTED_LABELS = ("", "", "", "", "", "", "rejected")
TEAMS = ("a", "b")  # the two rankers of an interleaving experiment
DEFAULT_READ_TIMEOUT_S: float = ServerConfig.model_fields["request_read_timeout_s"].default


class ControlPlane(Protocol):
    """The rollout control plane as the admin API sees it: typed commands in,
    typed results out, refusals raised as RampartError subclasses."""

    async def execute(self, command: Command) -> CommandResult: ...


AdminGuard = Callable[[Request], None]
"""Raises Unauthorized unless the request carries the admin bearer token."""

AdminRoutes = Callable[[FastAPI, AdminGuard], None]
"""Adds more ``/v1/admin/*`` routes behind the same guard (e.g. chaos testing)."""


def error_body(error: RampartError) -> bytes:
    """The one JSON shape of every error answer."""
    return orjson.dumps(
        {"error": {"code": error.code, "message": error.message, "request_id": error.request_id}}
    )


def error_response(error: RampartError, request_id: str | None = None) -> Response:
    """Any RampartError as HTTP: its own status, the one error body."""
    if error.request_id is None:
        error.request_id = request_id
    return Response(error_body(error), status_code=error.status, media_type=JSON)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call produced: the HTTP answer."""

    status_code: int
    body: bytes
    headers: Mapping[str, str] | None = None

    @classmethod
    def of(cls, formatted: Formatted) -> Outcome:
        return cls(formatted.status, formatted.body, formatted.headers or None)


class ProtocolModule(Protocol):
    """A request protocol (``serving.gateway.protocols.v1``, ``.mlflow``, ``.v2``)."""

    def parse(self, body: bytes, *, unit: UnitPolicy, header_unit: str | None,
              query: Mapping[str, str], header_request_id: str | None,
              model_name: str | None = None) -> ScoringRequest: ...

    def format(self, scored: ScoredRequest) -> Formatted: ...

    def format_error(self, error: RampartError) -> Formatted: ...


class GatewayCore:
    """The request path over injected parts; one per replica."""

    def __init__(
        self,
        table: RoutingTable,
        scorers: LoadedScorers | Mapping[tuple[str, str], Scorer],
        metrics: RequestMetrics,
        tracer: Tracer | None,
        decision_log: DecisionLogWriter | None = None,
        shadow_runner: ShadowRunner | None = None,
        drift_monitor: DriftMonitor | None = None,
        outcomes_log: OutcomesLogWriter | None = None,
        pool: ModelPool | None = None,
        unit_policy: UnitPolicy | None = None,
        trace_key: bytes | None = None,
        forcing: ForcingPolicy | None = None,
    ) -> None:
        self.drift_monitor = drift_monitor
        # Spans leave the gateway (to any OTLP collector): they carry a keyed
        # hash of the unit id, which correlates a unit's spans without naming
        # it. Replicas of one gateway share the key (see ReplicaSettings).
        self._trace_key = trace_key or os.urandom(32)
        self.outcomes_log = outcomes_log
        self._table = table
        self._served_names = routed_names(table)
        self.shadow_runner = shadow_runner
        # Shared with the shadow runner; the request path reads the dicts directly.
        self.loaded = scorers if isinstance(scorers, LoadedScorers) else LoadedScorers(scorers)
        self.scorers = self.loaded.by_key
        self._awaited = self.loaded.awaited
        self.metrics = metrics
        self.tracer = tracer
        self.decision_log = decision_log
        self.pool = pool or ModelPool(threads=4, max_pending=4096)
        self.unit_policy = unit_policy or UnitPolicy()
        # None: forcing is off and its header is not even read.
        self.forcing = forcing
        self.answered_ids = RecentRequestIds()

    @property
    def table(self) -> RoutingTable:
        return self._table

    @property
    def served_names(self) -> frozenset[str]:
        """Names of the models the routing table in force can answer with."""
        return self._served_names

    def ready(self) -> bool:
        """Every version the table in force can route to is loaded."""
        table = self._table
        return all((r.name, r.version) in self.scorers for r in table.model_refs())

    def model_metadata(self, name: str) -> dict[str, Any]:
        """V2 metadata of a served model: its loaded versions and the inputs of
        the version it answers with by default (the routing default, or the
        newest loaded version when the default is another model)."""
        if name not in self._served_names:
            raise UnknownModel(f"this gateway serves no model {name!r}; it serves "
                               f"{sorted(self._served_names)}")
        table = self._table
        versions = sorted({r.version for r in table.model_refs() if r.name == name},
                          key=lambda v: (len(v), v))
        primary = table.default.version if table.default.name == name else versions[-1]
        schema = self.scorers[(name, primary)].schema
        metadata: dict[str, Any] = v2_protocol.model_metadata(name, versions, schema)
        return metadata

    def swap_table(self, table: RoutingTable) -> None:
        """Install a newer routing table; one reference swap, never a torn table."""
        missing = [r for r in table.model_refs() if (r.name, r.version) not in self.scorers]
        if missing:
            raise ValueError(f"routing table needs versions not loaded here: {missing}")
        if table.version <= self._table.version:
            return
        self._served_names = routed_names(table)
        self._table = table

    def apply_snapshot(self, snapshot: RoutingSnapshot, load: Callable[[str, str], Scorer]
                       ) -> None:
        """Load whatever versions the new table needs, then swap the table in.

        Loading happens before the swap, so no request is ever routed to a
        version this replica cannot score.
        """
        for ref in snapshot.table.model_refs():
            key = (ref.name, ref.version)
            if key not in self.loaded:
                self.loaded.add(key, load(ref.name, ref.version))
        self.swap_table(snapshot.table)
        self.metrics.set_rollouts(snapshot.rollouts)

    async def predict(self, body: bytes, header_request_id: str | None = None,
                      header_unit: str | None = None,
                      query: Mapping[str, str] | None = None) -> Outcome:
        """Answer one ``POST /v1/predict`` body (one row or ``{"rows": [...]}``)."""
        return await self.serve(v1_protocol, body, header_request_id=header_request_id,
                                header_unit=header_unit, query=query)

    async def serve(self, protocol: ProtocolModule, body: bytes, *,
                    header_request_id: str | None = None, header_unit: str | None = None,
                    query: Mapping[str, str] | None = None,
                    model_name: str | None = None, content_type: str | None = None,
                    header_force: str | None = None) -> Outcome:
        """Answer one scoring request of any protocol; never raises for bad input.

        The body is parsed into rows, every row is routed, checked against the
        signature of the version it is routed to, scored, logged and counted
        the same way whatever the protocol, and the protocol formats the answer.
        """
        started = time.perf_counter()
        try:
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}",
                    header_request_id)
            if model_name is not None and model_name not in self._served_names:
                raise UnknownModel(
                    f"this gateway serves no model {model_name!r}; it serves "
                    f"{sorted(self._served_names)}", header_request_id)
            # MLflow's protocol also takes CSV; the others are JSON only.
            extra = {"content_type": content_type} if protocol is mlflow_protocol else {}
            request = protocol.parse(
                body, unit=self.unit_policy, header_unit=header_unit, query=query or {},
                header_request_id=header_request_id, model_name=model_name, **extra)
            forced = (None if header_force is None or self.forcing is None
                      else self._forced(request, header_force))
            ids = (request.request_id, *(row.request_id for row in request.rows))
            if (again := self.answered_ids.first_seen(ids)) is not None:
                raise DuplicateRequestId(
                    f"request id {again!r} was already answered: send a new request "
                    "with a new id", again)
        except RampartError as error:
            self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
            if error.request_id is None:
                error.request_id = header_request_id
            return Outcome.of(protocol.format_error(error))
        scored = await self.score(request, header_request_id, started, forced)
        # Only an answer takes an id: a refused request may be corrected and sent again.
        if any(row.error is None for row in scored.rows):
            self.answered_ids.remember(ids)
        return Outcome.of(protocol.format(scored))

    async def score(self, request: ScoringRequest, header_request_id: str | None,
                    started: float, forced: Sequence[Decision] | None = None
                    ) -> ScoredRequest:
        """Route, check, score and record every row of ``request`` (``forced``:
        each row's decision, chosen by a forcing header instead of routing)."""
        table = self._table  # one snapshot for the whole request
        # One clock reading routes the request (a switchback experiment's window)
        # and is logged as its decisions' timestamp, so the window is recomputable.
        decided_at = time.time()
        first: Decision | None = None  # routed once, whichever path answers
        if len(request.rows) == 1 and not request.params:
            first = forced[0] if forced else route(
                table, request.rows[0].unit_id, request.rows[0].context, now=decided_at)
            inline = self._score_inline(request, table, first, header_request_id, started,
                                        decided_at)
            if inline is not None:
                return inline
        n = len(request.rows)
        # The protocols name every row; a fallback id only for a row without one.
        request_ids = [row.request_id or self._fallback_id(request, header_request_id, i)
                       for i, row in enumerate(request.rows)]
        decisions: list[Decision] = []
        model_rows: list[Mapping[str, Any] | None] = [None] * n
        errors: list[RampartError | None] = [None] * n
        groups: dict[ModelKey, list[tuple[int, dict[str, Any]]]] = {}
        for i, row in enumerate(request.rows):
            decision = forced[i] if forced else first if first is not None else route(
                table, row.unit_id, row.context, now=decided_at)
            decisions.append(decision)
            key = (decision.model.name, decision.model.version)
            try:
                model_row = table.transform(row.features)
                checked = self.scorers[key].check_row(model_row)
            except InputMismatch as mismatch:
                errors[i] = ValidationFailed(
                    f"{field_path(request, i, mismatch.field)}: {mismatch.message} "
                    f"(signature of {key[0]} version {key[1]})", request_ids[i])
                continue
            except ValidationFailed as refused:
                errors[i] = ValidationFailed(
                    f"{field_path(request, i, '')}{refused.message}", request_ids[i])
                continue
            model_rows[i] = model_row
            groups.setdefault(key, []).append((i, checked))

        if request.protocol != "v1" and any(e is not None for e in errors):
            # MLflow's and V2's answers have no place for a row's error: a request
            # with any row refused is refused whole, and none of its rows is scored.
            return self._refused(request, request_ids, decisions, errors, started)

        predictions: list[Prediction | None] = [None] * n
        failures: list[str | None] = [None] * n
        batches: dict[ModelKey, ScoredBatch] = {}
        for key, items in groups.items():
            rows = [checked for _, checked in items]
            try:
                batch = await self._predict(key, rows, request.params or None,
                                            request.protocol == "mlflow")
            except Overloaded as busy:
                for i, _ in items:
                    errors[i] = Overloaded(busy.message, request_ids[i])
                continue
            except Exception as exc:  # a broken model version is a server error, logged
                text = f"{type(exc).__name__}: {exc}"
                for i, _ in items:
                    failures[i] = text
                    errors[i] = ModelFailed(f"model version failed: {text}", request_ids[i])
                continue
            batches[key] = batch
            for (i, _), answer in zip(items, batch.rows, strict=True):
                predictions[i] = answer

        latency_s = time.perf_counter() - started
        results: list[RowResult] = []
        for i, row in enumerate(request.rows):
            decision = decisions[i]
            prediction = predictions[i]
            error = errors[i]
            if prediction is None and failures[i] is None and error is not None:
                # Refused before scoring (signature, overload): counted, not logged.
                self.metrics.observe(REJECTED_LABELS, latency_s)
            else:
                self._record(request_ids[i], row, decision, prediction, latency_s,
                             "ok" if prediction is not None else "error", failures[i],
                             decided_at)
            if prediction is not None:
                self._after(table, request_ids[i], row, decision, prediction, model_rows[i])
            results.append(RowResult(
                request_ids[i], decision.model.name, decision.model.version,
                decision.experiment_id, decision.arm, prediction, error,
                decision_factors(table, decision)))
        return ScoredRequest(request, tuple(results), batches)

    def _score_inline(self, request: ScoringRequest, table: RoutingTable, decision: Decision,
                      header_request_id: str | None, started: float,
                      decided_at: float) -> ScoredRequest | None:
        """One row routed to an inline version, answered without the batch
        bookkeeping (the fast path: microseconds count); None when the row
        needs more (another version, a refusal, a scorer that must be awaited)."""
        row = request.rows[0]
        key = (decision.model.name, decision.model.version)
        scorer = self.scorers[key]
        if not scorer.inline or key in self._awaited:
            return None
        try:
            model_row = table.transform(row.features)
            checked = scorer.check_row(model_row)
            prediction = scorer.predict_rows((checked,)).rows[0]
        except Exception:  # the general path words refusals and failures
            return None
        request_id = row.request_id or self._fallback_id(request, header_request_id, 0)
        self._record(request_id, row, decision, prediction, time.perf_counter() - started,
                     "ok", None, decided_at)
        self._after(table, request_id, row, decision, prediction, model_row)
        return ScoredRequest(request, (RowResult(
            request_id, decision.model.name, decision.model.version, decision.experiment_id,
            decision.arm, prediction, factors=decision_factors(table, decision)),))

    @staticmethod
    def _fallback_id(request: ScoringRequest, header_request_id: str | None, row: int) -> str:
        base = request.request_id or header_request_id or uuid.uuid4().hex
        return f"{base}-{row}" if request.batch else base

    def _forced(self, request: ScoringRequest, header_force: str) -> tuple[Decision, ...]:
        """Each row's decision as the forcing header sets it. Every row's unit
        must be allowed to force, else the whole request is refused
        (ForceRefused, 403): served unforced, a tester could not tell."""
        assert self.forcing is not None
        try:
            force = parse_force(header_force)
            table, now = self._table, time.time()
            return tuple(resolve_force(self.forcing, table, force, row.unit_id, row.context,
                                       now) for row in request.rows)
        except RampartError as refused:
            refused.request_id = refused.request_id or request.request_id
            raise

    def _refused(self, request: ScoringRequest, request_ids: list[str],
                 decisions: list[Decision], errors: list[RampartError | None],
                 started: float) -> ScoredRequest:
        """Every row of ``request`` unscored and unlogged, counted as rejected."""
        latency_s = time.perf_counter() - started
        results = []
        for i, decision in enumerate(decisions):
            self.metrics.observe(REJECTED_LABELS, latency_s)
            results.append(RowResult(
                request_ids[i], decision.model.name, decision.model.version,
                decision.experiment_id, decision.arm, None, errors[i]))
        return ScoredRequest(request, tuple(results))

    async def _predict(self, key: ModelKey, rows: list[dict[str, Any]],
                       params: Mapping[str, Any] | None, needs_raw: bool) -> ScoredBatch:
        """``needs_raw``: the answer is the model's own output for exactly these
        rows (MLflow's protocol), so they are not scored together with others'."""
        awaited = self._awaited.get(key)  # only scorers that must wait are here
        if awaited is not None:
            return await awaited(rows, params)
        scorer = self.scorers[key]
        if scorer.inline:
            return scorer.predict_rows(rows, params)
        if params:
            return await self.pool.score(
                key, rows, lambda batch: scorer.predict_rows(batch, params), alone=True)
        return await self.pool.score(key, rows, scorer.predict_rows, alone=needs_raw)

    def _after(self, table: RoutingTable, request_id: str, row: RowRequest, decision: Decision,
               prediction: Prediction, model_row: Mapping[str, Any] | None) -> None:
        """Off the answer's critical part: drift windows and shadow mirroring."""
        key = (decision.model.name, decision.model.version)
        if self.drift_monitor is not None:
            self.drift_monitor.observe(key, row.features)
        if table.shadows and self.shadow_runner is not None and model_row is not None:
            for shadow in table.shadows:
                if shadow.mirrors(decision.unit_id):
                    self.shadow_runner.submit(ShadowJob(
                        request_id, decision.unit_id,
                        "request_id" if row.unit_source == "request_id" else decision.unit_type,
                        decision.experiment_id, decision.model, prediction.score,
                        shadow.model, row.features, model_row, row.unit_source))

    def _record(
        self,
        request_id: str,
        row: RowRequest,
        decision: Decision,
        prediction: Prediction | None,
        latency_s: float,
        status: str,
        error: str | None,
        decided_at: float,
    ) -> None:
        labels = (
            decision.model.name,
            decision.model.version,
            decision.experiment_id or "",
            decision.arm,
            decision.rollout_id or "",
            decision.rollout_arm or "",
            status,
        )
        self.metrics.observe(labels, latency_s)
        now = decided_at  # the time the request was routed by
        # A unit hashed on the request id is no unit of the experiment's kind.
        unit_type = "request_id" if row.unit_source == "request_id" else decision.unit_type
        if self.decision_log is not None:
            self.decision_log.append(
                DecisionRecord(
                    request_id, decision.unit_id, unit_type, decision.experiment_id,
                    decision.layer, decision.arm, decision.model.name, decision.model.version,
                    "primary",
                    now, row.features, None if prediction is None else prediction.score,
                    latency_s * 1000.0, status, error, row.context or None,
                    prediction, row.unit_source, decision.arm_weights,
                    forced=decision.forced, propensity=decision.propensity,
                )
            )
        if self.tracer is None:  # tracing is off in the config
            return
        end_ns = time.time_ns()
        span = self.tracer.start_span(
            SPAN_NAME, start_time=end_ns - int(latency_s * 1e9)
        )
        span.set_attributes(
            {
                "rampart.request_id": request_id,
                "rampart.unit_hash": unit_hash(self._trace_key, decision.unit_id),
                "rampart.unit_type": unit_type,
                "rampart.experiment_id": decision.experiment_id or "",
                "rampart.arm": decision.arm,
                "rampart.layer": decision.layer,
                "rampart.forced": decision.forced,
                "rampart.model_name": decision.model.name,
                "rampart.model_version": decision.model.version,
                "rampart.status": status,
                "rampart.latency_ms": latency_s * 1000.0,
            }
        )
        span.end(end_time=end_ns)

    async def rank(self, body: bytes, header_request_id: str | None = None,
                   header_unit: str | None = None,
                   query: Mapping[str, str] | None = None) -> Outcome:
        """Answer one ``POST /v1/rank`` body; never raises for bad input.

        Both rankers of the interleaving experiment score every item (checked
        against each ranker's signature, on the same scorer path as
        ``/v1/predict``'s rows), each ranks the items by score, highest first
        (ties by item id, so a ranking is a function of the scores), and the
        two rankings are merged with coins drawn from the request id: another
        replica, or this one after a restart, answers the same id with the
        same list. A request refused before scoring is counted as rejected
        and not logged; an answered one is logged as two rows per item.
        """
        started = time.perf_counter()
        table = self._table  # one snapshot for the whole request
        try:
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}",
                    header_request_id)
            call = rank_protocol.parse(
                body, unit=self.unit_policy, header_unit=header_unit, query=query or {},
                header_request_id=header_request_id, table=table)
            if self.answered_ids.first_seen((call.request_id,)) is not None:
                raise DuplicateRequestId(
                    f"request id {call.request_id!r} was already answered: send a new "
                    "request with a new id", call.request_id)
            checked = self._rank_rows(call, table)
        except RampartError as error:
            self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
            if error.request_id is None:
                error.request_id = header_request_id
            return Outcome.of(rank_protocol.format_error(error))
        formatted = await self._rank_scored(call, checked, started)
        if formatted.status == 200:
            # Only an answer takes an id: a refused request may be corrected and sent again.
            self.answered_ids.remember((call.request_id,))
        return Outcome.of(formatted)

    def _rank_rows(self, call: rank_protocol.RankCall, table: RoutingTable
                   ) -> dict[str, list[dict[str, Any]]]:
        """Each ranker's checked rows of every item, in item order; ValidationFailed
        naming every item whose features do not fit a ranker (the whole request
        is refused: a ranking of part of the candidates is no ranking of them)."""
        spec = call.experiment
        problems = v1_protocol.Problems(call.request_id)
        checked: dict[str, list[dict[str, Any]]] = {team: [] for team in TEAMS}
        for i, features in enumerate(call.features):
            try:
                model_row = table.transform(features)
            except ValidationFailed as refused:
                problems.add(f"items.{i}.features.{refused.message.split(':', 1)[0]}",
                             refused.message.split(": ", 1)[-1])
                continue
            for team in TEAMS:
                ref = spec.ranker(team)
                try:
                    checked[team].append(self.scorers[(ref.name, ref.version)].check_row(
                        model_row))
                except InputMismatch as mismatch:
                    problems.add(f"items.{i}.features.{mismatch.field}",
                                 f"{mismatch.message} (signature of ranker {team!r}, "
                                 f"{ref.name} version {ref.version})")
                    break  # one problem per item: the other ranker likely says the same
                except ValidationFailed as refused:
                    problems.add(f"items.{i}.features", refused.message)
                    break
        problems.raise_any()
        return checked

    async def _rank_scored(self, call: rank_protocol.RankCall,
                           checked: Mapping[str, list[dict[str, Any]]], started: float
                           ) -> Formatted:
        """Score, rank, interleave, log and count one checked request; its answer.

        A ranker that is overloaded refuses the request (503, counted as
        rejected, not logged); one that fails, or answers an item no numeric
        score, fails it (500), logged with status ``error`` and counted so."""
        spec = call.experiment
        decided_at = time.time()
        keys = {team: (spec.ranker(team).name, spec.ranker(team).version) for team in TEAMS}
        # Both rankers at once: on the worker pool the two batches overlap.
        results = await asyncio.gather(
            *(self._predict(keys[team], checked[team], None, False) for team in TEAMS),
            return_exceptions=True)
        batches: dict[str, ScoredBatch] = {}
        failure: str | None = None
        for team, result in zip(TEAMS, results, strict=True):
            if isinstance(result, Overloaded):
                self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
                return rank_protocol.format_error(Overloaded(result.message, call.request_id))
            if isinstance(result, BaseException):
                failure = failure or f"ranker {team!r}: {type(result).__name__}: {result}"
                continue
            batches[team] = result
            missing = next((item for item, p in zip(call.item_ids, result.rows, strict=True)
                            if p.score is None), None)
            if missing is not None:
                failure = failure or (f"ranker {team!r} ({keys[team][0]} version "
                                      f"{keys[team][1]}) answered no numeric score for item "
                                      f"{missing!r}: a ranker must score each item with "
                                      "one number")
        if failure is not None:
            self._log_ranking(call, batches, None, decided_at, started, failure)
            return rank_protocol.format_error(
                ModelFailed(f"ranking failed: {failure}", call.request_id))
        rankings = {team: rank_by_score(call.item_ids, batches[team]) for team in TEAMS}
        try:
            merged = interleave(spec.method, rankings["a"], rankings["b"], key=call.request_id,
                                length=spec.length)
        except RampartError as refused:  # cannot happen: both rank the same items
            self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
            refused.request_id = call.request_id
            return rank_protocol.format_error(refused)
        self._log_ranking(call, batches, (rankings, merged), decided_at, started, None)
        return rank_protocol.format(call.request_id, spec, merged)

    def _log_ranking(self, call: rank_protocol.RankCall, batches: Mapping[str, ScoredBatch],
                     ranked: tuple[Mapping[str, tuple[str, ...]], Interleaving] | None,
                     decided_at: float, started: float, failure: str | None) -> None:
        """Count each ranker's part of the request, and log one row per item and
        ranker (``ranked``: the rankings and the merged list; None when the
        request failed, logged with status ``error``)."""
        spec = call.experiment
        latency_s = time.perf_counter() - started
        status = "ok" if failure is None else "error"
        for team in TEAMS:
            ref = spec.ranker(team)
            self.metrics.observe((ref.name, ref.version, spec.id, team, "", "", status),
                                 latency_s)
            if self.drift_monitor is not None and failure is None:
                for features in call.features:
                    self.drift_monitor.observe((ref.name, ref.version), features)
        n = len(call.item_ids)
        positions: list[int | None] = [None] * n
        shown_by: list[str | None] = [None] * n
        if ranked is not None:
            index = {item: i for i, item in enumerate(call.item_ids)}
            for position, (item, team) in enumerate(zip(ranked[1].items, ranked[1].teams,
                                                        strict=True)):
                positions[index[item]] = position
                shown_by[index[item]] = team
        if self.decision_log is not None:
            unit_type = "request_id" if call.unit_source == "request_id" else spec.unit_type
            for team in TEAMS:
                ref = spec.ranker(team)
                batch = batches.get(team)
                ranks: list[int | None] = [None] * n
                if ranked is not None:
                    rank_of = {item: r for r, item in enumerate(ranked[0][team], start=1)}
                    ranks = [rank_of[item] for item in call.item_ids]
                # One batch per ranker: its model name is one value, which is what
                # the decision log's feature allowlist applies by.
                self.decision_log.append_columns(n, {
                    "request_id": call.request_id, "unit_id": call.unit_id,
                    "unit_type": unit_type, "experiment_id": spec.id, "layer": spec.layer,
                    "arm": team, "model_name": ref.name, "model_version": ref.version,
                    "role": RANKER_ROLE, "timestamp": decided_at,
                    "features": list(call.features),
                    "prediction": None if batch is None else [p.score for p in batch.rows],
                    "output": None if batch is None else list(batch.rows),
                    "latency_ms": latency_s * 1000.0, "status": status, "error": failure,
                    "unit_source": call.unit_source, "forced": False,
                    "item_id": list(call.item_ids), "item_rank": ranks,
                    "position": positions, "team": shown_by,
                    "interleaving_method": spec.method,
                })
        if self.tracer is not None:
            end_ns = time.time_ns()
            span = self.tracer.start_span(SPAN_NAME, start_time=end_ns - int(latency_s * 1e9))
            span.set_attributes({
                "rampart.request_id": call.request_id,
                "rampart.unit_hash": unit_hash(self._trace_key, call.unit_id),
                "rampart.unit_type": spec.unit_type,
                "rampart.experiment_id": spec.id,
                "rampart.layer": spec.layer,
                "rampart.interleaving_method": spec.method,
                "rampart.items": n,
                "rampart.status": status,
                "rampart.latency_ms": latency_s * 1000.0,
            })
            span.end(end_time=end_ns)

    def record_outcomes(self, body: bytes, header_request_id: str | None = None) -> Outcome:
        """Answer one ``POST /v1/outcomes`` body: every event is validated first,
        then all of them are buffered for the outcomes log (or, on any error, none)."""
        received_at = time.time()
        try:
            if len(body) > MAX_OUTCOME_BODY_BYTES:
                raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is "
                                      f"{MAX_OUTCOME_BODY_BYTES}", header_request_id)
            if self.outcomes_log is None:
                raise OutcomesUnavailable("this gateway keeps no outcomes log", header_request_id)
            events = parse_outcomes(body, header_request_id)
        except RampartError as error:
            return Outcome(error.status, error_body(error))
        self.outcomes_log.append_many(outcome_records(events, received_at))
        return Outcome(202, orjson.dumps({"accepted": len(events)}))

    def close(self) -> None:
        self.pool.close()
        if self.shadow_runner is not None:
            self.shadow_runner.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.outcomes_log is not None:
            self.outcomes_log.close()


MAX_LISTED_PROBLEMS = 20


def parse_outcomes(body: bytes, request_id: str | None) -> list[OutcomeEvent]:
    """Validate an outcomes body (one event, or ``{"events": [...]}``); raise
    InvalidJson, PayloadTooLarge or ValidationFailed naming each bad event and field."""
    try:
        data = from_json(body)  # NaN/Infinity parse, so validation can name the field
    except ValueError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}", request_id) from None
    if not isinstance(data, dict):
        raise ValidationFailed('body must be a JSON object: one event or {"events": [...]}',
                               request_id)
    batch = "events" in data
    events = data.get("events")
    if isinstance(events, list) and len(events) > MAX_OUTCOME_EVENTS:
        raise PayloadTooLarge(f"{len(events)} events in one request; the limit is "
                              f"{MAX_OUTCOME_EVENTS}: send them in several requests", request_id)
    try:
        return OutcomeBatch.model_validate(data).events if batch else [
            OutcomeEvent.model_validate(data)]
    except ValidationError as exc:
        lines = format_validation_error(exc).splitlines()
        if len(lines) > MAX_LISTED_PROBLEMS:
            lines = [*lines[:MAX_LISTED_PROBLEMS],
                     f"  ... and {len(lines) - MAX_LISTED_PROBLEMS} more"]
        if batch and isinstance(events, list):
            bad = {e["loc"][1] for e in exc.errors()
                   if len(e["loc"]) > 1 and e["loc"][0] == "events"}
            head = f"{len(bad)} of {len(events)} events are invalid; none was recorded:"
        else:
            head = "invalid outcome event; it was not recorded:"
        raise ValidationFailed("\n".join([head, *lines]), request_id) from None


def rank_by_score(item_ids: Sequence[str], batch: ScoredBatch) -> tuple[str, ...]:
    """``item_ids`` ordered by their scores in ``batch``, highest first.

    Ties are broken by item id, so equal scores never leave the order to the
    order the client listed the items in. Every score must be a number (the
    caller checks)."""
    scored = sorted(zip(item_ids, batch.rows, strict=True),
                    key=lambda pair: (-(pair[1].score or 0.0), pair[0]))
    return tuple(item for item, _ in scored)


def unit_hash(key: bytes, unit_id: str) -> str:
    """The keyed hash of a unit id that spans carry (HMAC-SHA256, 16 hex digits)."""
    return hmac.new(key, unit_id.encode(), hashlib.sha256).hexdigest()[:16]


def require_json(request: Request) -> None:
    """Refuse a body that is not declared as JSON (415)."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"{declared!r}" if declared else "none"
        raise UnsupportedMediaType(f"Content-Type must be {JSON} (got {shown})")


def routed_names(table: RoutingTable) -> frozenset[str]:
    """Names of the models requests can be answered by: a model whose versions
    only shadow traffic answers nobody, so a path naming it is a 404."""
    mirrored_only = {s.model for s in table.shadows}
    # model_refs without rankers: a version only an interleaving experiment
    # ranks with answers no scoring request either.
    return frozenset(r.name for r in table.model_refs(rankers=False) if r not in mirrored_only)


def field_path(request: ScoringRequest, row: int, field: str) -> str:
    """Where a row's field is in the request as its protocol wrote it."""
    if request.protocol == "v1":
        prefix = f"rows.{row}.features" if request.batch else "features"
    else:
        prefix = f"rows.{row}"
    if not field:
        return f"{prefix}: " if request.batch or request.protocol != "v1" else ""
    return f"{prefix}.{field}"


async def read_body_limited(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ReadDeadline:
    """ASGI middleware: a deadline on receiving a request's whole body.

    Counted from when the request reaches the app (its headers are in). A
    read still waiting at the deadline raises :class:`RequestTimeout` in the
    route reading the body, which answers 408 in its protocol's error shape,
    with ``Connection: close`` so the server drops the slow client; the route
    and its slot (a replica's ``max_ongoing_requests``) are freed at once.
    Once the body is complete, ``receive`` is passed through untimed: a
    server waits on it for the client's disconnect, however long that takes.

    No timer per request: almost every body is in by the first ``receive``,
    and a timer armed and cancelled for each cost more than the rest of this
    middleware. One sweeper task, a few times per deadline, cancels the reads
    that are past theirs; a read that starts past its deadline fails at once.
    """

    def __init__(self, app: ASGIApp, timeout_s: float, on_timeout: Callable[[], None]
                 ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        # Tasks waiting in ``receive`` for more of their body -> their deadline.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_every_s = min(0.5, timeout_s / 4) if timeout_s > 0 else 0.0

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._sweep_every_s)
            now = loop.time()
            for task, deadline in list(self._waiting.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    def _timeout(self) -> RequestTimeout:
        self.on_timeout()
        return RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        task = asyncio.current_task()
        deadline = loop.time() + self.timeout_s
        waiting, expired = self._waiting, self._expired
        body_done = False
        timed_out = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done or task is None:
                return await receive()
            if loop.time() >= deadline:
                timed_out = True
                raise self._timeout()
            waiting[task] = deadline
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in expired:
                    raise  # cancelled by someone else: not ours to answer
                expired.discard(task)
                task.uncancel()
                timed_out = True
                raise self._timeout() from None
            finally:
                waiting.pop(task, None)
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            if timed_out and message["type"] == "http.response.start":
                message = {**message,
                           "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        finally:
            if task is not None and task in expired:
                # Swept just as its read ended: the cancellation it was sent
                # is not a timeout, and must not outlive the request.
                expired.discard(task)
                task.uncancel()


def build_app(
    core: GatewayCore, control: ControlPlane | None = None, admin_token: str | None = None,
    admin_routes: Sequence[AdminRoutes] = (), ingest_token: str | None = None,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S, instance_id: str = "",
) -> FastAPI:
    """FastAPI app over one :class:`GatewayCore` (used in-process and on Ray Serve).

    Admin routes need ``Authorization: Bearer <RAMPART_ADMIN_TOKEN>``; with no
    token configured they refuse every call. ``POST /v1/outcomes`` needs a
    credential of its own, ``Bearer <RAMPART_INGEST_TOKEN>`` (the systems that
    report outcomes are not operators), and is refused without one configured:
    open, anyone could write another unit's outcomes into an experiment.
    ``admin_routes`` add more of them behind the same guard. The inference
    route never changes routing.

    ``read_timeout_s`` bounds reading a request's body (0: unbounded; see
    :class:`ReadDeadline`); ``instance_id`` is the gateway start this app
    belongs to, answered by ``/healthz``.
    """
    app = FastAPI(
        title="Rampart gateway",
        version="0.1.0",
        description="Model-serving gateway with deterministic experiments and staged rollout.",
    )

    @app.exception_handler(RampartError)
    async def rampart_error(request: Request, error: RampartError) -> Response:
        # The one place a RampartError becomes HTTP, whichever layer raised it.
        return error_response(error, request.headers.get("x-request-id"))

    @app.exception_handler(StarletteHTTPException)
    async def framework_refusal(request: Request, refusal: StarletteHTTPException
                                ) -> Response:
        # No such path, or not this method: the one error shape too, not {"detail"}.
        route = f"{request.method} {request.url.path[:200]!r}"
        error: RampartError
        if refusal.status_code == 405:
            error = MethodNotAllowed(f"{route}: method not allowed here")
        elif refusal.status_code == 404:
            error = RouteNotFound(f"{route}: no such route (the API is at /docs)")
        else:
            error = RampartError(str(refusal.detail))
            error.status = refusal.status_code
        answer = error_response(error, request.headers.get("x-request-id"))
        answer.headers.update(refusal.headers or {})
        return answer

    def http(outcome: Outcome) -> Response:
        return Response(outcome.body, status_code=outcome.status_code, media_type=JSON,
                        headers=dict(outcome.headers) if outcome.headers else None)

    async def answer(protocol: ProtocolModule, request: Request,
                     model_name: str | None = None, json_only: bool = False) -> Response:
        header_id = request.headers.get("x-request-id")
        try:
            if json_only:
                require_json(request)
            body = await read_body_limited(request)
        except RampartError as error:
            error.request_id = header_id
            return http(Outcome.of(protocol.format_error(error)))
        outcome = await core.serve(
            protocol, body, header_request_id=header_id,
            header_unit=request.headers.get(core.unit_policy.header),
            # Read only when forcing is on: off, the header means nothing.
            header_force=(None if core.forcing is None
                          else request.headers.get(core.forcing.header)),
            # Parsed only when there is a query string: most requests have none.
            query=request.query_params if request.scope.get("query_string") else NO_QUERY,
            model_name=model_name,
            content_type=request.headers.get("content-type"))
        return http(outcome)

    scoring_errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse,
              "description": "Body is not JSON, names no unit, or a forcing header names "
                             "no experiment, arm or routed version"},
        403: {"model": ErrorResponse,
              "description": "A forcing header for a unit neither allowlisted nor signed"},
        404: {"model": ErrorResponse, "description": "No such model (named paths)"},
        408: {"model": ErrorResponse,
              "description": "The body did not arrive within server.request_read_timeout_s"},
        409: {"model": ErrorResponse,
              "description": "The request id was already answered by this replica"},
        415: {"model": ErrorResponse,
              "description": "Content-Type is not JSON (/v1/predict), or not one MLflow takes"},
        413: {"model": ErrorResponse, "description": "Body over 1 MiB or too many rows"},
        422: {"model": ErrorResponse,
              "description": "Body fails validation, or a row does not fit the signature "
                             "of the version it is routed to (the message names the field)"},
        503: {"model": ErrorResponse, "description": "Every model worker is busy"},
    }
    v2_errors = {status: {**answer, "model": V2ErrorResponse}
                 for status, answer in scoring_errors.items()}
    v2_unknown: dict[int | str, dict[str, Any]] = {
        404: {"model": V2ErrorResponse, "description": "No such model"}}

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=scoring_errors,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        """Score one row (``{"unit_id", "features", "context"?}``) or a batch
        (``{"rows": [...]}``, one answer per row, in order)."""
        return await answer(v1_protocol, request, json_only=True)

    rank_errors = {**scoring_errors,
                   404: {"model": ErrorResponse,
                         "description": "No such interleaving experiment (or none is "
                                        "configured)"},
                   413: {"model": ErrorResponse,
                         "description": "Body over 1 MiB, or more items than the "
                                        "experiment's max_items"},
                   422: {"model": ErrorResponse,
                         "description": "Body fails validation (duplicate item ids, no "
                                        "items...), or an item does not fit a ranker's "
                                        "signature (the message names the item and field)"}}

    @app.post(
        "/v1/rank",
        response_model=RankResponse,
        responses=rank_errors,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": RankRequest.model_json_schema()}},
            }
        },
    )
    async def rank(request: Request) -> Response:
        """Rank candidate items with an interleaving experiment's two rankers and
        answer one merged list, each position with the ranker that contributed it."""
        header_id = request.headers.get("x-request-id")
        try:
            require_json(request)
            body = await read_body_limited(request)
        except RampartError as error:
            error.request_id = header_id
            return http(Outcome.of(rank_protocol.format_error(error)))
        return http(await core.rank(
            body, header_request_id=header_id,
            header_unit=request.headers.get(core.unit_policy.header),
            query=request.query_params if request.scope.get("query_string") else NO_QUERY))

    @app.post("/invocations", responses=scoring_errors)
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``,
        ``instances``, ``inputs``), answered as ``mlflow models serve`` answers."""
        return await answer(mlflow_protocol, request)

    @app.post("/v1/models/{name}/invocations", responses=scoring_errors)
    async def named_invocations(name: str, request: Request) -> Response:
        """MLflow's scoring protocol for a model named in the path."""
        return await answer(mlflow_protocol, request, name)

    async def v2_answer(request: Request, name: str) -> Response:
        if BINARY_HEADER in request.headers:
            # The binary tensor extension puts raw bytes after a JSON header; say
            # so plainly rather than "not valid JSON" at the first raw byte.
            error = UnsupportedMediaType(
                "binary tensor data is not supported: send the data as JSON "
                "(tritonclient: set_data_from_numpy(..., binary_data=False) and "
                "InferRequestedOutput(..., binary_data=False))",
                request.headers.get("x-request-id"))
            return http(Outcome.of(v2_protocol.format_error(error)))
        return await answer(v2_protocol, request, name)

    @app.post("/v2/models/{name}/infer", responses=v2_errors)
    async def v2_infer(name: str, request: Request) -> Response:
        """Open Inference Protocol V2 inference (KServe, Triton clients)."""
        return await v2_answer(request, name)

    @app.post("/v2/models/{name}/versions/{version}/infer", responses=v2_errors)
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        """V2 with a version in the path: the version is chosen by routing, so the
        path's version is accepted and the answer names the version that served."""
        return await v2_answer(request, name)

    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> dict[str, Any]:
        return {"ready": core.ready()}

    @app.get("/v2")
    async def v2_server() -> dict[str, Any]:
        return {"name": "rampart", "version": app.version, "extensions": []}

    @app.get("/v2/models/{name}", responses=v2_unknown)
    async def v2_model(name: str, request: Request) -> Response:
        """The model's metadata: served versions and the inputs of the version
        units get by default."""
        try:
            metadata = core.model_metadata(name)
        except RampartError as error:
            error.request_id = request.headers.get("x-request-id")
            return http(Outcome.of(v2_protocol.format_error(error)))
        return Response(orjson.dumps(metadata), media_type=JSON)

    @app.get("/v2/models/{name}/ready", responses=v2_unknown)
    async def v2_model_ready(name: str, request: Request) -> Response:
        ready = name in core.served_names
        if not ready:
            error = UnknownModel(f"this gateway serves no model {name!r}",
                                 request.headers.get("x-request-id"))
            return http(Outcome.of(v2_protocol.format_error(error)))
        return Response(orjson.dumps({"name": name, "ready": True}), media_type=JSON)

    @app.get("/ping")
    async def ping() -> Response:
        # MLflow's scoring server answers these; its clients poll them.
        return Response(b"\n", media_type=JSON)

    @app.get("/health")
    async def health() -> Response:
        return Response(b"\n", media_type=JSON)

    event_schema = OutcomeEvent.model_json_schema()
    batch_schema = {
        "type": "object", "title": "OutcomeBatch", "additionalProperties": False,
        "required": ["events"],
        "properties": {"events": {"type": "array", "items": event_schema, "minItems": 1,
                                  "maxItems": MAX_OUTCOME_EVENTS}},
    }

    @app.post(
        "/v1/outcomes",
        status_code=202,
        response_model=OutcomesAccepted,
        responses={
            400: {"model": ErrorResponse, "description": "Body is not JSON"},
            401: {"model": ErrorResponse,
                  "description": "No ingest token, or a wrong one (Bearer RAMPART_INGEST_TOKEN)"},
            413: {"model": ErrorResponse,
                  "description": f"Body over {MAX_OUTCOME_BODY_BYTES >> 20} MiB or over "
                                 f"{MAX_OUTCOME_EVENTS} events"},
            415: {"model": ErrorResponse, "description": "Content-Type is not JSON"},
            422: {"model": ErrorResponse,
                  "description": "An event fails validation (nothing is recorded)"},
            503: {"model": ErrorResponse, "description": "No outcomes log"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"anyOf": [event_schema, batch_schema]}}},
            }
        },
    )
    async def outcomes(request: Request) -> Response:
        """Record outcome events: one event, or ``{"events": [...]}`` (all or none)."""
        header_id = request.headers.get("x-request-id")
        try:
            if not ingest_token:
                raise Unauthorized("outcome ingest is disabled: start the gateway with "
                                   "RAMPART_INGEST_TOKEN", header_id)
            if not bearer_matches(request, ingest_token):
                raise Unauthorized("missing or wrong ingest token", header_id)
            require_json(request)
            body = await read_body_limited(request, MAX_OUTCOME_BODY_BYTES)
        except RampartError as error:
            return error_response(error, header_id)
        outcome = core.record_outcomes(body, header_id)
        return Response(outcome.body, status_code=outcome.status_code, media_type=JSON)

    health_fields: dict[str, Any] = {"status": "ok"}
    if instance_id:
        health_fields["instance_id"] = instance_id

    @app.get("/healthz", responses={200: {"model": HealthResponse}})
    async def healthz() -> dict[str, Any]:
        return {**health_fields, "routing_version": core.table.version}

    @app.get("/v1/routing")
    async def routing(request: Request) -> dict[str, Any]:
        # Salts and bucket ranges let a client pick unit ids that land on the
        # arm it wants: only the admin sees them.
        description = core.table.describe()
        return description if is_admin(request, admin_token) else public_routing(description)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(core.metrics.render(), media_type=CONTENT_TYPE)

    add_admin_routes(app, control, admin_token, admin_routes)
    declare_security(app)
    if read_timeout_s > 0:
        app.add_middleware(ReadDeadline, timeout_s=read_timeout_s,
                           on_timeout=core.metrics.read_timeouts.inc)
    return app


ADMIN_SCHEME = "adminBearer"
INGEST_SCHEME = "ingestBearer"


def declare_security(app: FastAPI) -> None:
    """Declare in the OpenAPI document the bearer credentials the routes check
    themselves: the admin token on ``/v1/admin/*`` (optional on ``/v1/routing``,
    which shows more to the admin), the ingest token on ``POST /v1/outcomes``;
    and the parts of a rollout plan the admin body refers to."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(PLAN_PARTS)
            components["securitySchemes"] = {
                ADMIN_SCHEME: {"type": "http", "scheme": "bearer",
                               "description": "RAMPART_ADMIN_TOKEN"},
                INGEST_SCHEME: {"type": "http", "scheme": "bearer",
                                "description": "RAMPART_INGEST_TOKEN"},
            }
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if path.startswith("/v1/admin/"):
                        operation["security"] = [{ADMIN_SCHEME: []}]
                    elif path == "/v1/routing":
                        operation["security"] = [{}, {ADMIN_SCHEME: []}]
                    elif path == "/v1/outcomes" and method == "post":
                        operation["security"] = [{INGEST_SCHEME: []}]
        return app.openapi_schema or plain()

    app.openapi = openapi  # type: ignore[method-assign]


def bearer_matches(request: Request, token: str | None) -> bool:
    """Whether the request carries ``Bearer <token>`` (compared in constant time)."""
    if not token:
        return False
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def is_admin(request: Request, admin_token: str | None) -> bool:
    """Whether the request carries the admin bearer token."""
    return bearer_matches(request, admin_token)


def add_admin_routes(app: FastAPI, control: ControlPlane | None, admin_token: str | None,
                     extra: Sequence[AdminRoutes] = ()) -> None:
    """``/v1/admin/*``: rollouts, the Alertmanager webhook, shadows and routing.

    Each route turns its path and body into one typed command for the control
    plane and answers its result as JSON; any refusal is a RampartError, which
    the app's one handler answers (see :func:`build_app`).
    """

    def authorize(request: Request) -> None:
        if not admin_token:
            raise Unauthorized("admin API disabled: start the gateway with RAMPART_ADMIN_TOKEN")
        if not is_admin(request, admin_token):
            raise Unauthorized("missing or wrong bearer token")

    async def run(command: Command, status: int = 200) -> Response:
        if control is None:
            raise NoControlPlane("no rollout controller is running")
        result = await control.execute(command)
        return Response(result.model_dump_json(), status_code=status, media_type=JSON)

    admin_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "Body is not JSON"},
        401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        413: {"model": ErrorResponse, "description": "Body over 1 MiB"},
        422: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
    }

    @app.post("/v1/admin/rollouts", status_code=201, responses=admin_responses,
              openapi_extra=json_body(PLAN_SCHEMA))
    async def create_rollout(request: Request) -> Response:
        """Start a rollout from a plan (JSON); answers its status."""
        authorize(request)
        return await run(CreateRollout(plan=await read_json(request)), 201)

    @app.get("/v1/admin/rollouts", responses=admin_responses)
    async def list_rollouts(request: Request) -> Response:
        authorize(request)
        return await run(ListRollouts())

    @app.get("/v1/admin/rollouts/{rollout_id}", responses=admin_responses)
    async def describe_rollout(rollout_id: str, request: Request) -> Response:
        authorize(request)
        return await run(DescribeRollout(id=rollout_id))

    def command_route(kind: OperatorAction) -> Callable[[str, Request], Awaitable[Response]]:
        async def command(rollout_id: str, request: Request) -> Response:
            authorize(request)
            body = await read_json(request)
            reason = body.get("reason", "") if isinstance(body, dict) else ""
            return await run(RolloutCommand(id=rollout_id, kind=kind,
                                                     reason=str(reason)))

        return command

    for kind in OPERATOR_ACTIONS:
        app.add_api_route(f"/v1/admin/rollouts/{{rollout_id}}/{kind}", command_route(kind),
                          methods=["POST"], responses=admin_responses, name=f"{kind}_rollout",
                          openapi_extra=json_body(REASON_SCHEMA, required=False))

    @app.post("/v1/admin/alerts", responses=admin_responses,
              openapi_extra=json_body(ALERTMANAGER_SCHEMA))
    async def alerts(request: Request) -> Response:
        """Alertmanager webhook receiver: firing alerts with a ``rollout`` label roll it back."""
        authorize(request)
        return await run(AlertWebhook(payload=await read_json(request)))

    @app.post("/v1/admin/shadows", responses=admin_responses,
              openapi_extra=json_body(SHADOW_SCHEMA))
    async def shadows(request: Request) -> Response:
        """Attach ``{"model", "version", "sample_bp"?, "salt"?}`` as a shadow, or detach
        it with ``"enabled": false``."""
        authorize(request)
        return await run(shadow_command(await read_json(request)))

    @app.get("/v1/admin/bandits/{experiment_id}", responses=admin_responses,
             openapi_extra={"parameters": [{
                 "name": "audit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0,
                            "maximum": MAX_AUDIT_RECORDS,
                            "default": DEFAULT_AUDIT_RECORDS}}]})
    async def describe_bandit(experiment_id: str, request: Request) -> Response:
        """A bandit experiment's weights, posteriors and its last ``audit``
        updates' audit records (20 unless asked, at most 1000)."""
        authorize(request)
        raw = request.query_params.get("audit", str(DEFAULT_AUDIT_RECORDS))
        # Read here, not by FastAPI, so a bad value gets the one error shape.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or int(raw) > MAX_AUDIT_RECORDS:
            raise ValidationFailed(
                f"audit must be a whole number from 0 to {MAX_AUDIT_RECORDS}, not {raw[:20]!r}")
        return await run(DescribeBandit(id=experiment_id, audit=int(raw)))

    @app.get("/v1/admin/routing", responses=admin_responses)
    async def routing_status(request: Request) -> Response:
        """The routing version in force, the replicas following it, and how long
        recent versions took from publication to the last replica."""
        authorize(request)
        return await run(DescribeRouting())

    for add_routes in extra:
        add_routes(app, authorize)


def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (the route reads it itself)."""
    return {"requestBody": {"required": required, "content": {JSON: {"schema": schema}}}}


# The admin bodies as OpenAPI declares them; the routes validate them into typed
# commands (the control plane validates a plan and an Alertmanager payload).
PLAN_SCHEMA: dict[str, Any] = RolloutPlan.model_json_schema(
    ref_template="#/components/schemas/{model}")
# The plan's parts, referenced from PLAN_SCHEMA, go in the document's components.
PLAN_PARTS: dict[str, Any] = PLAN_SCHEMA.pop("$defs", {})
REASON_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "OperatorCommand",
    "properties": {"reason": {"type": "string", "description": "for the audit trail"}},
}
ALERTMANAGER_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "AlertmanagerWebhook", "required": ["alerts"],
    "description": "Alertmanager's webhook payload (version 4); firing alerts labelled "
                   "action=rollback roll back the rollout their 'rollout' label names.",
    "properties": {
        "version": {"type": "string"},
        "status": {"type": "string", "enum": ["firing", "resolved"]},
        "receiver": {"type": "string"},
        "groupKey": {"type": "string"},
        "alerts": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["firing", "resolved"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object",
                                "additionalProperties": {"type": "string"}},
                "startsAt": {"type": "string"},
                "endsAt": {"type": "string"},
                "fingerprint": {"type": "string"},
            },
        }},
    },
}
SHADOW_SCHEMA: dict[str, Any] = {
    **ShadowSpec.model_json_schema(), "title": "ShadowRequest",
    "properties": {**ShadowSpec.model_json_schema()["properties"],
                   "enabled": {"type": "boolean", "default": True,
                               "description": "false detaches the shadow"}},
}


async def read_json(request: Request) -> Any:
    """An admin body as JSON (an empty body is ``{}``); InvalidJson or PayloadTooLarge."""
    raw = await read_body_limited(request)
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}") from None


def shadow_command(body: Any) -> SetShadow:
    """``POST /v1/admin/shadows`` as a command; InvalidRollout names what is wrong."""
    fields = dict(body) if isinstance(body, dict) else {}
    enabled = fields.pop("enabled", True)
    try:
        return SetShadow(shadow=ShadowSpec.model_validate(fields), enabled=bool(enabled))
    except ValidationError as exc:
        raise InvalidRollout("invalid shadow:\n" + format_validation_error(exc)) from None
