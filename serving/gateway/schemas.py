"""HTTP request and response bodies of the gateway: ``/v1/predict`` (one row or
``{"rows": [...]}``), ``/v1/rank`` (candidates to interleave), the bodies of
MLflow's scoring protocol and of the Open Inference Protocol V2 as far as they
are declared, and the one error body.

``/v1/predict`` and V2 bodies are validated with these models; MLflow's
scoring bodies are read by hand (``protocols/mlflow.py``) because MLflow
ignores keys it does not know, and :class:`MlflowScoringRequest` only
documents them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from serving.kernel.ids import MAX_UNIT_ID_CHARS, UNIT_ID_PATTERN, Context

MAX_BATCH_ROWS = 1000
"""Rows in one scoring request, whatever its protocol; more is a 413."""
MAX_REQUEST_ID_CHARS = 128
# Printable ASCII without spaces: a request id goes into every log row, span
# and error, where a NUL, a newline or a right-to-left override would forge or
# hide lines.
REQUEST_ID_PATTERN = r"^[\x21-\x7e]+$"
MAX_TENSOR_DIMS = 32  # numpy's own limit is 64
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1

_EXPECTED = ("expected a finite number, a boolean, a string, null or a (nested) list of "
             "numbers, booleans or strings")
_NOT_A_NUMBER = "not a number"


def _number_problem(value: Any, finite: bool = True) -> str | None:
    """Why ``value`` is not a JSON number a model can take, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _NOT_A_NUMBER
    if isinstance(value, int):
        if not INT64_MIN <= value <= UINT64_MAX:
            return f"integer {value} does not fit in 64 bits"
        return None
    if finite and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"expected a finite number, got {shown} (send null for a missing value)"
    return None


def describe(value: Any) -> str:
    """What kind of JSON value ``value`` is, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _leaf_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int | float):
        return "numbers"
    if isinstance(value, str):
        return "strings"
    return describe(value)


def _tensor_problem(value: list[Any], finite: bool) -> str | None:
    """Why a list is not a tensor instance, or None: a rectangular (nested) list
    whose items are all numbers, all booleans or all strings.

    Walked level by level rather than recursively, so a deep list costs no
    Python stack and every level is checked for equal lengths in one pass.
    """
    level: list[list[Any]] = [value]
    depth = 0
    while True:
        lengths = sorted({len(item) for item in level})
        if len(lengths) > 1:
            return (f"a (nested) list must be rectangular: its lists at depth {depth} "
                    f"have lengths {lengths}")
        children = [child for item in level for child in item]
        if not children:
            return None
        nested = [isinstance(child, list) for child in children]
        if all(nested):
            level = children
            depth += 1
            continue
        if any(nested):
            return (f"a (nested) list must be rectangular: depth {depth + 1} mixes lists "
                    "and values")
        kinds = sorted({_leaf_kind(child) for child in children})
        if len(kinds) > 1 or kinds[0] not in ("numbers", "booleans", "strings"):
            return ("a list must hold only numbers, only booleans or only strings, "
                    f"got {' and '.join(kinds)}")
        if kinds[0] == "numbers":
            for child in children:
                problem = _number_problem(child, finite)
                if problem is not None:
                    return problem
        return None


def feature_problem(value: Any, *, finite: bool = True) -> str | None:
    """Why ``value`` cannot be a feature value, or None.

    A feature value is what a JSON request may carry for one column or one
    tensor instance: a number (int or float, as sent; finite unless
    ``finite`` is False), a boolean, a string, null, or a tensor instance (a
    rectangular, nested list of numbers, booleans or strings). Whether it fits
    the model is checked later, against the routed version's signature.
    """
    kind = type(value)  # exact types first: a batch checks tens of thousands of values
    if kind is float:
        return None if not finite or math.isfinite(value) else _number_problem(value, finite)
    if kind is str or kind is bool or value is None:
        return None
    if kind is int:
        return None if INT64_MIN <= value <= UINT64_MAX else _number_problem(value, finite)
    if kind is list:
        return _tensor_problem(value, finite)
    return f"{_EXPECTED}, got {describe(value)}"


def check_feature_value(value: Any) -> Any:
    """``value`` unchanged if it can be a feature value; else ``ValueError`` saying why."""
    problem = feature_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


FeatureValue = Annotated[
    Any,
    AfterValidator(check_feature_value),
    WithJsonSchema({
        "anyOf": [
            {"type": "number"}, {"type": "boolean"}, {"type": "string"}, {"type": "null"},
            {"type": "array", "items": {},
             "description": "a tensor instance: a rectangular (nested) list of numbers, "
                            "booleans or strings"},
        ],
    }),
]
"""A feature value as sent: never coerced (an int stays an int, a bool a bool)."""


# ----------------------------------------------------------------- /v1/predict

class PredictRow(BaseModel):
    """One row of ``POST /v1/predict``: the single form's body, or an item of ``rows``.

    ``unit_id`` may come from the header or a query parameter instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_UNIT_ID_CHARS,
                                      pattern=UNIT_ID_PATTERN)
    features: dict[str, FeatureValue]
    context: Context = Field(default_factory=dict)
    request_id: StrictStr | None = Field(default=None, min_length=1,
                                         max_length=MAX_REQUEST_ID_CHARS,
                                         pattern=REQUEST_ID_PATTERN)


class PredictRequest(PredictRow):
    """Body of ``POST /v1/predict`` for one row."""


class PlainPredictRequest(PredictRequest):
    """:class:`PredictRequest` for a body whose features are already known to
    be plain numbers (``protocols/v1.py`` looks first): the same fields and
    limits, without a check per feature value."""

    features: dict[str, Any]


class PredictBatchRequest(BaseModel):
    """Body of ``POST /v1/predict`` for several rows, answered in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: list[PredictRow] = Field(min_length=1, max_length=MAX_BATCH_ROWS)


class PredictResponse(BaseModel):
    """Body of a successful single-row ``POST /v1/predict``; also one item of a
    batch's ``predictions``. ``label`` and ``probabilities`` only for classifiers."""

    request_id: str
    prediction: Any
    model_name: str
    model_version: str
    experiment_id: str | None
    arm: str
    # In a factorial experiment, each factor's level (the arm is their cell).
    factors: dict[str, str] | None = None
    label: str | int | float | bool | None = None
    probabilities: dict[str, float] | None = None


class RowError(BaseModel):
    code: str
    message: str


class RowErrorResponse(BaseModel):
    """One item of a batch's ``predictions`` for a row that failed."""

    request_id: str
    error: RowError


class PredictBatchResponse(BaseModel):
    """Body of a batch ``POST /v1/predict``: every row's answer, in input order."""

    predictions: list[PredictResponse | RowErrorResponse]


# ----------------------------------------------------------------- /v1/rank

MAX_ITEM_ID_CHARS = 128


class RankItem(BaseModel):
    """One candidate item of ``POST /v1/rank``: its id and the feature row both
    rankers score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Logged with every row and joined with clicks: printable ASCII, like a request id.
    item_id: StrictStr = Field(min_length=1, max_length=MAX_ITEM_ID_CHARS,
                               pattern=REQUEST_ID_PATTERN)
    features: dict[str, FeatureValue]


class RankRequest(BaseModel):
    """Body of ``POST /v1/rank``: the candidates to rank for one unit.

    ``experiment`` names the interleaving experiment (optional when the config
    has exactly one); ``unit_id`` may come from the header or a query
    parameter instead, as for ``/v1/predict``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    unit_id: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_UNIT_ID_CHARS,
                                      pattern=UNIT_ID_PATTERN)
    request_id: StrictStr | None = Field(default=None, min_length=1,
                                         max_length=MAX_REQUEST_ID_CHARS,
                                         pattern=REQUEST_ID_PATTERN)
    items: list[RankItem] = Field(min_length=1, max_length=MAX_BATCH_ROWS)


class RankedItem(BaseModel):
    """One position of the merged list: the item, the ranker that contributed
    it (``a`` or ``b``) and its 0-based position (0 is the top)."""

    item_id: str
    ranker: Literal["a", "b"]
    position: int


class RankResponse(BaseModel):
    """Body of a successful ``POST /v1/rank``: the list to show, best first."""

    request_id: str
    experiment: str
    method: Literal["team_draft", "balanced"]
    ranking: list[RankedItem]


class HealthResponse(BaseModel):
    """``GET /healthz``: this replica answers, with the routing version it
    serves and the id of the gateway start it belongs to."""

    status: Literal["ok"]
    routing_version: int
    # Differs on each start: a restarted gateway's readiness check tells its
    # own replicas from a killed predecessor's still holding the port. Absent
    # from an app no gateway start built (in-process use).
    instance_id: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code", "message", "request_id"}}``."""

    error: ErrorBody


# ----------------------------------------------------------------- MLflow scoring

class DataframeSplit(BaseModel):
    """pandas' ``split`` orientation."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = None
    data: list[Any]
    index: list[Any] | None = None


class MlflowScoringRequest(BaseModel):
    """Body of ``POST /invocations`` (JSON): exactly one of the four input keys,
    and optional ``params`` (``params.unit_id`` and ``params.context`` are read by
    the gateway and not passed to the model). Documentation only."""

    dataframe_split: DataframeSplit | None = None
    dataframe_records: list[dict[str, FeatureValue]] | None = None
    instances: list[Any] | dict[str, list[Any]] | None = None
    inputs: list[Any] | dict[str, Any] | None = None
    params: dict[str, Any] | None = None


class MlflowScoringResponse(BaseModel):
    """What ``mlflow models serve`` answers: the model's output as JSON."""

    predictions: Any


# ----------------------------------------------------------------- Open Inference Protocol V2

V2Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                     "INT64", "FP16", "FP32", "FP64", "BYTES"]


class V2RequestInput(BaseModel):
    """One input tensor; ``data`` flat or nested, in row-major order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(min_length=1)
    shape: list[Annotated[StrictInt, Field(ge=0, le=UINT64_MAX)]] = Field(
        min_length=1, max_length=MAX_TENSOR_DIMS)
    datatype: V2Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    """Body of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2RequestInput] = Field(min_length=1)
    outputs: list[V2RequestOutput] | None = None


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: V2Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2ResponseOutput]


class V2ErrorResponse(BaseModel):
    """V2's error body, with Rampart's stable error code beside it."""

    error: str
    code: str | None = None
