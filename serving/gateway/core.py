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

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from pydantic_core import from_json

from models.registry import Scorer
from serving.gateway.schemas import ErrorResponse, PredictRequest, PredictResponse
from serving.gateway.scorers import LoadedScorers
from serving.gateway.shadow import ShadowJob, ShadowRunner
from serving.kernel.commands import (
    OPERATOR_ACTIONS,
    AlertWebhook,
    Command,
    CommandResult,
    CreateRollout,
    DescribeRollout,
    DescribeRouting,
    ListRollouts,
    OperatorAction,
    RolloutCommand,
    SetShadow,
)
from serving.kernel.config import ShadowSpec, format_validation_error
from serving.kernel.errors import (
    InvalidJson,
    InvalidRollout,
    ModelFailed,
    NoControlPlane,
    OutcomesUnavailable,
    PayloadTooLarge,
    RampartError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from serving.kernel.ids import MAX_BODY_BYTES
from serving.routing.router import Decision, RoutingTable, route
from serving.routing.snapshot import RoutingSnapshot
from telemetry.decision_log import DecisionLogWriter, DecisionRecord
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
REJECTED_LABELS = ("", "", "", "", "", "", "rejected")


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
    """What one predict call produced: the HTTP answer and what to record."""

    status_code: int
    body: bytes


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
    ) -> None:
        self.drift_monitor = drift_monitor
        self.outcomes_log = outcomes_log
        self._table = table
        self.shadow_runner = shadow_runner
        # Shared with the shadow runner; the request path reads the dicts directly.
        self.loaded = scorers if isinstance(scorers, LoadedScorers) else LoadedScorers(scorers)
        self.scorers = self.loaded.by_key
        self._feature_sets = self.loaded.features
        self._awaited = self.loaded.awaited
        self.metrics = metrics
        self.tracer = tracer
        self.decision_log = decision_log

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap_table(self, table: RoutingTable) -> None:
        """Install a newer routing table; one reference swap, never a torn table."""
        missing = [r for r in table.model_refs() if (r.name, r.version) not in self.scorers]
        if missing:
            raise ValueError(f"routing table needs versions not loaded here: {missing}")
        if table.version <= self._table.version:
            return
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

    async def predict(self, body: bytes, header_request_id: str | None = None) -> Outcome:
        """Answer one ``POST /v1/predict`` body; never raises for bad input."""
        started = time.perf_counter()
        request_id = header_request_id
        try:
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", request_id
                )
            request = parse_predict(body, request_id)
        except RampartError as error:
            self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
            return Outcome(error.status, error_body(error))
        request_id = request.request_id or request_id or uuid.uuid4().hex
        table = self._table  # one snapshot for the whole request
        decision = route(table, request.unit_id, request.context)
        key = (decision.model.name, decision.model.version)
        scorer = self.scorers[key]
        try:
            features = table.transform(request.features)
            values = feature_vector(features, scorer, self._feature_sets[key], request_id)
        except RampartError as error:
            self.metrics.observe(REJECTED_LABELS, time.perf_counter() - started)
            return Outcome(error.status, error_body(error))
        error_text: str | None = None
        prediction: float | None = None
        try:
            awaited = self._awaited.get(key)  # only scorers that must wait are here
            if awaited is None:
                prediction = scorer.predict_one(values)
            else:
                prediction = await awaited(values)
        except Exception as exc:  # a broken model version is a server error, logged
            error_text = f"{type(exc).__name__}: {exc}"
        if prediction is not None:
            status, status_code = "ok", 200
            body_out = orjson.dumps(
                {
                    "request_id": request_id,
                    "prediction": prediction,
                    "model_name": decision.model.name,
                    "model_version": decision.model.version,
                    "experiment_id": decision.experiment_id,
                    "arm": decision.arm,
                }
            )
        else:
            status, status_code = "error", 500
            body_out = error_body(ModelFailed(f"model version failed: {error_text}", request_id))
        latency_s = time.perf_counter() - started
        self._record(request_id, request, decision, prediction, latency_s, status, error_text)
        if prediction is not None and self.drift_monitor is not None:
            self.drift_monitor.observe(key, request.features)
        if prediction is not None and table.shadows and self.shadow_runner is not None:
            for shadow in table.shadows:
                if shadow.mirrors(decision.unit_id):
                    self.shadow_runner.submit(ShadowJob(
                        request_id, decision.unit_id, decision.unit_type,
                        decision.experiment_id, decision.model, prediction, shadow.model,
                        request.features, features))
        return Outcome(status_code, body_out)

    def _record(
        self,
        request_id: str,
        request: PredictRequest,
        decision: Decision,
        prediction: float | None,
        latency_s: float,
        status: str,
        error: str | None,
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
        now = time.time()
        if self.decision_log is not None:
            self.decision_log.append(
                DecisionRecord(
                    request_id, decision.unit_id, decision.unit_type, decision.experiment_id,
                    decision.layer, decision.arm, decision.model.name, decision.model.version,
                    "primary",
                    now, request.features, prediction, latency_s * 1000.0, status, error,
                    request.context or None,
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
                "rampart.unit_id": decision.unit_id,
                "rampart.unit_type": decision.unit_type,
                "rampart.experiment_id": decision.experiment_id or "",
                "rampart.arm": decision.arm,
                "rampart.layer": decision.layer,
                "rampart.model_name": decision.model.name,
                "rampart.model_version": decision.model.version,
                "rampart.status": status,
                "rampart.latency_ms": latency_s * 1000.0,
            }
        )
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
        if self.shadow_runner is not None:
            self.shadow_runner.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.outcomes_log is not None:
            self.outcomes_log.close()


def parse_predict(body: bytes, request_id: str | None) -> PredictRequest:
    """Validate a predict body; raise InvalidJson or ValidationFailed with the reason."""
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            message = exc.errors()[0]["msg"]
            raise InvalidJson(f"body is not valid JSON: {message}", request_id) from None
        if any(e["type"] in ("model_type", "model_attributes_type") for e in exc.errors()):
            raise ValidationFailed("body must be a JSON object", request_id) from None
        raise ValidationFailed(
            "invalid request:\n" + format_validation_error(exc), request_id
        ) from None


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


def require_json(request: Request) -> None:
    """Refuse a body that is not declared as JSON (415)."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"{declared!r}" if declared else "none"
        raise UnsupportedMediaType(f"Content-Type must be {JSON} (got {shown})")


def feature_vector(
    features: Mapping[str, float], scorer: Scorer, expected: frozenset[str], request_id: str
) -> list[float]:
    """Features in the model's signature order; names what is missing or extra."""
    if features.keys() != expected:
        missing = sorted(expected - features.keys())
        extra = sorted(features.keys() - expected)
        parts = []
        if missing:
            parts.append(f"missing features {missing}")
        if extra:
            parts.append(f"unexpected features {extra}")
        raise ValidationFailed(
            f"features do not match the signature of {scorer.name} version {scorer.version}: "
            + "; ".join(parts),
            request_id,
        )
    return [float(features[name]) for name in scorer.feature_names]


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


def build_app(
    core: GatewayCore, control: ControlPlane | None = None, admin_token: str | None = None,
    admin_routes: Sequence[AdminRoutes] = (),
) -> FastAPI:
    """FastAPI app over one :class:`GatewayCore` (used in-process and on Ray Serve).

    Admin routes need ``Authorization: Bearer <RAMPART_ADMIN_TOKEN>``; with no
    token configured they refuse every call. ``admin_routes`` add more of them
    behind the same guard. The inference route never changes routing.
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

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Body is not JSON"},
            413: {"model": ErrorResponse, "description": "Body over 1 MiB"},
            422: {"model": ErrorResponse, "description": "Body fails validation"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        header_id = request.headers.get("x-request-id")
        try:
            body = await read_body_limited(request)
        except RampartError as error:
            return error_response(error, header_id)
        outcome = await core.predict(body, header_id)
        return Response(outcome.body, status_code=outcome.status_code, media_type=JSON)

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
            require_json(request)
            body = await read_body_limited(request, MAX_OUTCOME_BODY_BYTES)
        except RampartError as error:
            return error_response(error, header_id)
        outcome = core.record_outcomes(body, header_id)
        return Response(outcome.body, status_code=outcome.status_code, media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "routing_version": core.table.version}

    @app.get("/v1/routing")
    async def routing() -> dict[str, Any]:
        return core.table.describe()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.render(), media_type=CONTENT_TYPE)

    add_admin_routes(app, control, admin_token, admin_routes)
    return app


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
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            raise Unauthorized("missing or wrong bearer token")

    async def run(command: Command, status: int = 200) -> Response:
        if control is None:
            raise NoControlPlane("no rollout controller is running")
        result = await control.execute(command)
        return Response(result.model_dump_json(), status_code=status, media_type=JSON)

    admin_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
        409: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    }

    @app.post("/v1/admin/rollouts", status_code=201, responses=admin_responses)
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
                          methods=["POST"], responses=admin_responses, name=f"{kind}_rollout")

    @app.post("/v1/admin/alerts", responses=admin_responses)
    async def alerts(request: Request) -> Response:
        """Alertmanager webhook receiver: firing alerts with a ``rollout`` label roll it back."""
        authorize(request)
        return await run(AlertWebhook(payload=await read_json(request)))

    @app.post("/v1/admin/shadows", responses=admin_responses)
    async def shadows(request: Request) -> Response:
        """Attach ``{"model", "version", "sample_bp"?, "salt"?}`` as a shadow, or detach
        it with ``"enabled": false``."""
        authorize(request)
        return await run(shadow_command(await read_json(request)))

    @app.get("/v1/admin/routing", responses=admin_responses)
    async def routing_status(request: Request) -> Response:
        """The routing version in force, the replicas following it, and how long
        recent versions took from publication to the last replica."""
        authorize(request)
        return await run(DescribeRouting())

    for add_routes in extra:
        add_routes(app, authorize)


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
