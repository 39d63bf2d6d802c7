"""The one error hierarchy of Rampart.

Every error a user can cause has a stable ``code`` and an HTTP ``status``;
the HTTP layer turns any :class:`RampartError` into
``{"error": {"code", "message", "request_id"}}`` with that status (one table:
the class attributes below), and the CLI prints its message on one line and
exits 2. Errors are picklable, so they cross Ray's actor boundary intact.
"""

from __future__ import annotations

from typing import Any


class RampartError(Exception):
    """An error with a stable code and HTTP status, answered as JSON."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray
        return (type(self), (self.message, self.request_id))

    def body(self) -> dict[str, Any]:
        """The JSON error body every 4xx/5xx answer carries."""
        return {"error": {"code": self.code, "message": self.message,
                          "request_id": self.request_id}}


# ----------------------------------------------------------------- request input

class InvalidJson(RampartError):
    code, status = "invalid_json", 400


class ValidationFailed(RampartError):
    code, status = "validation_failed", 422


class PayloadTooLarge(RampartError):
    code, status = "payload_too_large", 413


class RequestTimeout(RampartError):
    """The client did not send its whole request within the read deadline."""

    code, status = "request_timeout", 408


class DuplicateRequestId(RampartError):
    """A request id this gateway replica has already answered: the decision log
    keys rows by request id and outcomes join on it, so a second answer under
    one id would make both ambiguous. A new request needs a new id."""

    code, status = "duplicate_request_id", 409


class UnsupportedMediaType(RampartError):
    code, status = "unsupported_media_type", 415


class Unauthorized(RampartError):
    code, status = "unauthorized", 401


class RouteNotFound(RampartError):
    """No route at this path (the framework's 404, in the one error shape)."""

    code, status = "route_not_found", 404


class MethodNotAllowed(RampartError):
    """The path has a route, but not for this method (the framework's 405)."""

    code, status = "method_not_allowed", 405


class UnitMissing(RampartError):
    """A scoring request names no unit to assign (body field, header or parameter)."""

    code, status = "unit_missing", 400


class ForceInvalid(RampartError):
    """A forcing header that does not parse, or names an experiment, arm or
    version the routing table does not have."""

    code, status = "force_invalid", 400


class ForceRefused(RampartError):
    """A forcing header for a unit that may not force: not on the allowlist and
    not correctly signed (or the signature has expired). Refused, not served
    unforced, so that a tester knows the force did not apply."""

    code, status = "force_refused", 403


class InvalidRanking(RampartError):
    """Rankings that cannot be interleaved: the two rankers did not order one
    same set of item ids, a ranking repeats an id, the requested length is
    negative, or the interleaving method is unknown."""

    code, status = "invalid_ranking", 400


# ----------------------------------------------------------------- serving

class ModelFailed(RampartError):
    code, status = "model_error", 500


class UnknownModel(RampartError):
    """A protocol path names a model this gateway does not serve."""

    code, status = "model_not_found", 404


class Overloaded(RampartError):
    """Every model worker is busy and the pending queue is full; retry later."""

    code, status = "overloaded", 503


class OutcomesUnavailable(RampartError):
    code, status = "outcomes_log_unavailable", 503


class LogStorageUnavailable(RampartError):
    """The decision or outcomes log's storage cannot be reached, read or written
    (no such bucket, no credentials, an endpoint that does not answer)."""

    code, status = "log_storage_unavailable", 503


class NoControlPlane(RampartError):
    code, status = "no_control_plane", 503


class BanditNotFound(RampartError):
    """No bandit experiment of that id runs on this control plane."""

    code, status = "bandit_not_found", 404


# ----------------------------------------------------------------- configuration

class ConfigError(RampartError):
    """A configuration that cannot be used; the message names every problem."""

    code, status = "invalid_config", 422


class PlanError(RampartError):
    """A rollout plan that cannot be used; the message names every problem."""

    code, status = "invalid_plan", 422


# ----------------------------------------------------------------- control plane

class InvalidRollout(RampartError):
    """A well-formed command the control plane cannot carry out as asked."""

    code, status = "invalid_rollout", 422


class RolloutNotFound(RampartError):
    code, status = "rollout_not_found", 404


class RolloutConflict(RampartError):
    """A command that contradicts the rollout's state (finished, or a second
    rollout of the same model)."""

    code, status = "rollout_conflict", 409


class ControlPlaneUnavailable(RampartError):
    code, status = "control_plane_unavailable", 503


class ModelRegistryUnavailable(RampartError):
    """MLflow did not answer: whether a version exists is unknown, so the
    command changed nothing; send it again once the registry is back."""

    code, status = "model_registry_unavailable", 503


class StaleRollout(RolloutConflict):
    """Another controller changed the rollout since this one read it: its step
    is refused, and the caller reloads the rollout before anything else."""

    code, status = "rollout_stale", 409


class StoreUnavailable(RampartError):
    """The rollout store (its database) cannot be read or written right now;
    nothing was changed, and the rollout holds until it is back."""

    code, status = "rollout_store_unavailable", 503
