"""Rampart's own protocol, ``POST /v1/predict``, and what the three protocols share.

A body is one row ``{"unit_id"?, "features", "context"?, "request_id"?}`` or a
batch ``{"rows": [row, ...]}``. Feature values are kept as sent (an int stays
an int); whether they fit the model is checked per row once it is routed.

Shared by ``mlflow`` and ``v2``: reading JSON, the request id, where the unit
id comes from, and the problem list every refusal carries (one line per
problem, naming the field).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from models.outputs import Prediction
from serving.gateway.protocols import (
    Formatted,
    RowRequest,
    RowResult,
    ScoredRequest,
    ScoringRequest,
    UnitPolicy,
    UnitSource,
)
from serving.gateway.schemas import (
    INT64_MIN,
    MAX_BATCH_ROWS,
    MAX_REQUEST_ID_CHARS,
    REQUEST_ID_PATTERN,
    UINT64_MAX,
    PlainPredictRequest,
    PredictBatchRequest,
    PredictRequest,
    PredictRow,
    feature_problem,
)
from serving.kernel.errors import (
    InvalidJson,
    ModelFailed,
    PayloadTooLarge,
    RampartError,
    UnitMissing,
    ValidationFailed,
)
from serving.kernel.ids import HIDDEN_CHARACTER, MAX_BODY_BYTES, MAX_UNIT_ID_CHARS, Context

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_LISTED_PROBLEMS",
    "Problems",
    "answer_headers",
    "check_header_request_id",
    "column_order",
    "error_answer",
    "format",
    "format_error",
    "header_name",
    "load_json",
    "new_request_id",
    "parse",
    "request_unit",
    "request_unit_or_fallback",
    "row_request_id",
]

MAX_LISTED_PROBLEMS = 20
INVALID = "invalid request:"
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # a numpy scalar left in a prediction still writes


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


def header_name(lower: str) -> str:
    """A header as people write it (``x-rampart-unit`` -> ``X-Rampart-Unit``)."""
    return "-".join(part.capitalize() for part in lower.split("-"))


ModelT = TypeVar("ModelT", bound=BaseModel)


class Problems:
    """What is wrong with a request, one line per problem, naming the field."""

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"  {where}: {message}")

    def value(self, where: str, value: Any, *, finite: bool = True) -> None:
        """Note ``value`` if it cannot be a feature value."""
        problem = feature_problem(value, finite=finite)
        if problem is not None:
            self.add(where, problem)

    def pydantic(self, error: ValidationError, prefix: str = "") -> None:
        for item in error.errors():
            where = ".".join(str(p) for p in (*([prefix] if prefix else []), *item["loc"]))
            self.add(where or "(root)", item["msg"].removeprefix("Value error, "))

    def validate(self, model: type[ModelT], data: Any) -> ModelT:
        """``data`` as ``model``; ValidationFailed naming every problem."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self.pydantic(exc)
            raise self.error() from None

    def error(self, head: str = INVALID) -> ValidationFailed:
        lines = self.lines
        if len(lines) > MAX_LISTED_PROBLEMS:
            lines = [*lines[:MAX_LISTED_PROBLEMS],
                     f"  ... and {len(lines) - MAX_LISTED_PROBLEMS} more"]
        return ValidationFailed("\n".join([head, *lines]), self.request_id)

    def raise_any(self, head: str = INVALID) -> None:
        if self.lines:
            raise self.error(head)


def load_json(body: bytes, request_id: str | None) -> Any:
    """The body as Python values; InvalidJson or PayloadTooLarge.

    ``NaN`` and ``Infinity`` are read (as Python's json does) so that the
    validation can name the field that holds them.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}",
                              request_id)
    try:
        return from_json(body)
    except ValueError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}", request_id) from None


_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def check_header_request_id(header_request_id: str | None) -> str | None:
    """The ``X-Request-Id`` header's id, None if absent or empty; over
    MAX_REQUEST_ID_CHARS characters is refused (it is logged with every row)."""
    if not header_request_id:
        return None
    if len(header_request_id) > MAX_REQUEST_ID_CHARS:
        raise ValidationFailed(
            f"{INVALID}\n  header X-Request-Id: is {len(header_request_id)} characters; "
            f"the limit is {MAX_REQUEST_ID_CHARS}")
    if not _REQUEST_ID.match(header_request_id):
        raise ValidationFailed(
            f"{INVALID}\n  header X-Request-Id: must be printable ASCII without spaces")
    return header_request_id


def row_request_id(request_id: str, index: int) -> str:
    """A batch row's own id, traceable to its request."""
    return f"{request_id}-{index}"


def too_many_rows(count: int, request_id: str | None) -> PayloadTooLarge:
    return PayloadTooLarge(f"{count} rows in one request; the limit is {MAX_BATCH_ROWS}: "
                           "send them in several requests", request_id)


def _unit_id(value: Any, where: str, request_id: str | None) -> str:
    if isinstance(value, str) and 1 <= len(value) <= MAX_UNIT_ID_CHARS:
        if HIDDEN_CHARACTER.search(value):
            raise ValidationFailed(f"{INVALID}\n  {where}: a unit id must not hold control "
                                   "or invisible characters", request_id)
        return value
    got = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    raise ValidationFailed(f"{INVALID}\n  {where}: a unit id must be a string of "
                           f"1-{MAX_UNIT_ID_CHARS} characters, got {got}", request_id)


def request_unit(
    unit: UnitPolicy, header_unit: str | None, param: tuple[str, Any] | None,
    query: Mapping[str, str], request_id: str | None,
) -> tuple[str, UnitSource] | None:
    """The unit id a request carries outside its rows, and where from: the header,
    then the body's parameter (``param``: where it sits, its value), then the query
    parameter; None if none. Only the one chosen is checked."""
    if header_unit is not None:
        return _unit_id(header_unit, f"header {header_name(unit.header)}", request_id), "header"
    if param is not None:
        return _unit_id(param[1], param[0], request_id), "param"
    if unit.param in query:
        return _unit_id(query[unit.param], f"query parameter {unit.param}", request_id), "param"
    return None


def unit_places(unit: UnitPolicy, body_place: str) -> str:
    return (f'{body_place}, the header "{header_name(unit.header)}" or the query parameter '
            f'"{unit.param}"')


def request_unit_or_fallback(
    unit: UnitPolicy, header_unit: str | None, param: tuple[str, Any] | None,
    query: Mapping[str, str], request_id: str, body_place: str,
) -> tuple[str, UnitSource]:
    """The one unit of a request whose rows carry none (MLflow, V2): as
    :func:`request_unit`, else the request id if the policy hashes it, else
    UnitMissing saying where to put one (``body_place`` for the body)."""
    found = request_unit(unit, header_unit, param, query, request_id)
    if found is not None:
        return found
    if unit.hash_request_id:
        return request_id, "request_id"
    raise UnitMissing(f"no unit id: send it as {unit_places(unit, body_place)}", request_id)


_CONTEXT: TypeAdapter[dict[str, Any]] = TypeAdapter(Context)


def check_context(value: Any, where: str, problems: Problems) -> dict[str, Any]:
    """A request-level context (``params.context``, ``parameters.context``)."""
    if value is None:
        return {}
    try:
        return _CONTEXT.validate_python(value)
    except ValidationError as exc:
        problems.pydantic(exc, where)
        return {}


# ----------------------------------------------------------------- parse


def parse(
    body: bytes, *, unit: UnitPolicy, header_unit: str | None, query: Mapping[str, str],
    header_request_id: str | None, model_name: str | None = None,
) -> ScoringRequest:
    """A ``POST /v1/predict`` body as a :class:`ScoringRequest`.

    The unit of a row: its own ``unit_id``, else the header, else the query
    parameter, else (if the policy allows) its request id. The request id of
    the single form: the body's, else the header's, else a new one; of a
    batch row: its own, else ``<header's or a new id>-<index>``.
    """
    header_id = check_header_request_id(header_request_id)
    data = load_json(body, header_id)
    if not isinstance(data, dict):
        raise ValidationFailed(
            'body must be a JSON object: one row {"features": ...} or {"rows": [...]}', header_id)
    if "rows" in data:
        return _parse_batch(data, unit, header_unit, query, header_id, model_name)
    problems = Problems(header_id)
    # Features that are all plain numbers need no per-value check (the common
    # case, and the inline path's budget is microseconds); any other value is
    # checked one by one, so the refusal names it.
    plain = _plain_numbers(data.get("features"))
    row = problems.validate(PlainPredictRequest if plain else PredictRequest, data)
    request_id = row.request_id or header_id or new_request_id()
    shared = request_unit(unit, header_unit, None, query, request_id)
    unit_id, source = _row_unit(row, shared, unit, request_id, 'the body field "unit_id"')
    return ScoringRequest(
        protocol="v1",
        rows=(RowRequest(unit_id, source, dict(row.features), dict(row.context), request_id),),
        batch=False, model_name=model_name, request_id=request_id)


def _plain_numbers(features: Any) -> bool:
    """Whether ``features`` is a mapping whose values are all finite floats or
    64-bit ints, which are feature values as they are."""
    if type(features) is not dict:
        return False
    for value in features.values():
        kind = type(value)
        if kind is float:
            if not -_HUGE < value < _HUGE:
                return False
        elif kind is not int or not INT64_MIN <= value <= UINT64_MAX:
            return False
    return True


_HUGE = float("inf")


def _row_unit(row: PredictRow, shared: tuple[str, UnitSource] | None, unit: UnitPolicy,
              request_id: str, body_place: str) -> tuple[str, UnitSource]:
    if row.unit_id is not None:
        return row.unit_id, "body"
    if shared is not None:
        return shared
    if unit.hash_request_id:
        return request_id, "request_id"
    where = unit_places(unit, body_place) if body_place else ""
    raise UnitMissing(f"no unit id: send it as {where}", request_id)


def _parse_batch(data: dict[str, Any], unit: UnitPolicy, header_unit: str | None,
                 query: Mapping[str, str], header_id: str | None,
                 model_name: str | None) -> ScoringRequest:
    rows = data["rows"]
    if isinstance(rows, list) and len(rows) > MAX_BATCH_ROWS:
        raise too_many_rows(len(rows), header_id)
    problems = Problems(header_id)
    batch = problems.validate(PredictBatchRequest, data)
    base = header_id or new_request_id()
    seen: dict[str, int] = {}
    for i, row in enumerate(batch.rows):
        if row.request_id is None:
            continue
        if row.request_id in seen:
            problems.add(f"rows.{i}.request_id",
                         f"{row.request_id!r} is also rows.{seen[row.request_id]}'s")
        seen.setdefault(row.request_id, i)
    problems.raise_any()
    shared = request_unit(unit, header_unit, None, query, base)
    ids = [row.request_id or row_request_id(base, i) for i, row in enumerate(batch.rows)]
    if shared is None and not unit.hash_request_id:
        missing = [f"rows.{i}" for i, row in enumerate(batch.rows) if row.unit_id is None]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED_PROBLEMS])
            more = len(missing) - MAX_LISTED_PROBLEMS
            listed += f" and {more} more" if more > 0 else ""
            raise UnitMissing(f"no unit id in {listed}: send each row's \"unit_id\" field, "
                              f"the header \"{header_name(unit.header)}\" or the query "
                              f"parameter \"{unit.param}\"", base)
    out = []
    for row, request_id in zip(batch.rows, ids, strict=True):
        unit_id, source = _row_unit(row, shared, unit, request_id, "")
        out.append(RowRequest(unit_id, source, dict(row.features), dict(row.context),
                              request_id))
    return ScoringRequest(protocol="v1", rows=tuple(out), batch=True, model_name=model_name,
                          request_id=base)


# ----------------------------------------------------------------- format


def _missing_answer(row: RowResult) -> RampartError:
    return ModelFailed("no prediction was made for this row", row.request_id)


def row_answer(row: RowResult) -> dict[str, Any]:
    """One row's answer object: the single form's body, or a batch item."""
    if row.error is not None or row.prediction is None:
        error = row.error or _missing_answer(row)
        return {"request_id": row.request_id,
                "error": {"code": error.code, "message": error.message}}
    return prediction_object(row, row.prediction)


def prediction_object(row: RowResult, prediction: Prediction) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": row.request_id,
        "prediction": prediction.value,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "experiment_id": row.experiment_id,
        "arm": row.arm,
    }
    if row.factors is not None:  # a factorial experiment's levels, read from the arm
        out["factors"] = row.factors
    if prediction.label is not None:
        out["label"] = prediction.label
    if prediction.probabilities is not None:
        out["probabilities"] = prediction.probabilities
    return out


def answer_headers(scored: ScoredRequest) -> dict[str, str]:
    """``X-Request-Id``, and the model, version, experiment and arm when every
    answered row shares them."""
    headers: dict[str, str] = {}
    if scored.request.request_id is not None:
        headers["X-Request-Id"] = scored.request.request_id
    answered = [r for r in scored.rows if r.error is None and r.prediction is not None]
    facts = {(r.model_name, r.model_version, r.experiment_id, r.arm) for r in answered}
    if len(facts) == 1:
        name, version, experiment_id, arm = facts.pop()
        for header, value in (("X-Rampart-Model", name), ("X-Rampart-Model-Version", version),
                              ("X-Rampart-Experiment-Id", experiment_id),
                              ("X-Rampart-Arm", arm)):
            if value is not None:
                headers[header] = value
    return headers


def error_answer(error: RampartError, request_id: str | None,
                 headers: dict[str, str] | None = None) -> Formatted:
    """The one error body, with ``request_id`` filled in if the error has none."""
    body = {"error": {"code": error.code, "message": error.message,
                      "request_id": error.request_id or request_id}}
    return Formatted(error.status, orjson.dumps(body), headers or {})


def format_error(error: RampartError) -> Formatted:
    """A request refused as a whole (bad body, unknown model, overload): the one
    error body with the error's status."""
    return error_answer(error, error.request_id)


def dumps(value: Any) -> bytes:
    """JSON as the gateway writes it; ModelFailed if a model's output cannot be written."""
    try:
        return orjson.dumps(value, option=JSON_OPTIONS)
    except TypeError as exc:
        raise ModelFailed(f"the model's output cannot be written as JSON: {exc}") from None


def format(scored: ScoredRequest) -> Formatted:
    """The answer to a ``POST /v1/predict``: the single form's object, or
    ``{"predictions": [...]}`` for a batch (a failed row answers its error in place).

    No ``X-Rampart-*`` headers: the body already names the request, version,
    experiment and arm of every row, and on the inline path the headers'
    encoding was a measurable share of a request's cost."""
    headers: dict[str, str] = {}
    if not scored.request.batch:
        row = scored.rows[0]
        if row.error is not None or row.prediction is None:
            return error_answer(row.error or _missing_answer(row), row.request_id, headers)
        try:
            return Formatted(200, dumps(prediction_object(row, row.prediction)), headers)
        except ModelFailed as error:
            return error_answer(error, row.request_id, headers)
    try:
        body = dumps({"predictions": [row_answer(row) for row in scored.rows]})
    except ModelFailed as error:
        return error_answer(error, scored.request.request_id, headers)
    return Formatted(200, body, headers)


def column_order(values: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """Column names in the order first seen across rows."""
    order: dict[str, None] = {}
    for row in values:
        for name in row:
            order.setdefault(name, None)
    return tuple(order)
