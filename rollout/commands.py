"""One table from control-plane errors to HTTP statuses, and the dispatcher the
admin API (in-process or through the controller actor) goes through.

Results cross the Ray boundary as ``(status, body)`` pairs, never as
exceptions, so every replica answers the same JSON for the same mistake.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rollout.core.plan import parse_plan
from rollout.service import Fault, RolloutService
from serving.kernel.config import ShadowSpec, format_validation_error
from serving.kernel.errors import InvalidRollout, PlanError, RolloutConflict, RolloutNotFound

ERROR_STATUS: dict[type[Exception], tuple[int, str]] = {
    PlanError: (422, "invalid_plan"),
    InvalidRollout: (422, "invalid_rollout"),
    RolloutNotFound: (404, "rollout_not_found"),
    RolloutConflict: (409, "rollout_conflict"),
}

COMMANDS = ("pause", "resume", "promote", "abort")
Result = tuple[int, dict[str, Any]]


def dispatch(service: RolloutService, op: str, args: dict[str, Any]) -> Result:
    """Run one admin operation; map known errors to 4xx bodies."""
    try:
        if op == "create":
            state = service.create(parse_plan(args.get("plan"), source="plan"))
            return 201, service.describe(state.id)
        if op == "describe":
            return 200, service.describe(str(args["id"]))
        if op == "list":
            return 200, {"rollouts": service.summaries()}
        if op in COMMANDS:
            state = service.command(str(args["id"]), op, str(args.get("reason", "")))
            return 200, service.describe(state.id)
        if op == "alert":
            return 200, service.alert(args.get("payload") or {})
        if op == "shadow":
            body = dict(args.get("shadow") or {})
            enabled = body.pop("enabled", True)
            try:
                spec = ShadowSpec.model_validate(body)
            except ValidationError as exc:
                raise InvalidRollout("invalid shadow:\n" + format_validation_error(exc)) from None
            snapshot = service.set_shadow(spec, enabled=bool(enabled))
            return 200, {"routing_version": snapshot.table.version,
                         "shadows": snapshot.table.describe()["shadows"]}
        if op == "fault":
            try:
                fault = Fault.model_validate(args.get("fault") or {})
            except ValidationError as exc:
                raise InvalidRollout("invalid fault:\n" + format_validation_error(exc)) from None
            snapshot = service.set_fault(fault)
            return 200, {"routing_version": snapshot.table.version,
                         "faults": [f.model_dump() for f in snapshot.faults]}
    except tuple(ERROR_STATUS) as exc:
        status, code = ERROR_STATUS[type(exc)]
        return status, {"error": {"code": code, "message": str(exc)}}
    return 404, {"error": {"code": "unknown_operation", "message": f"no operation {op!r}"}}


class LocalControlPlane:
    """The admin API's view of a service in the same process."""

    def __init__(self, service: RolloutService) -> None:
        self.service = service

    async def call(self, op: str, args: dict[str, Any]) -> Result:
        return dispatch(self.service, op, args)
