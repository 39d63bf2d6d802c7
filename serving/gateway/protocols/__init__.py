"""The request protocols the gateway speaks, parsed into one shape and
answered from one shape.

- ``v1``: Rampart's own ``POST /v1/predict`` (one row, or ``{"rows": [...]}``);
- ``mlflow``: MLflow's scoring protocol, ``POST /invocations`` and
  ``POST /v1/models/{name}/invocations`` (``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``; optional ``params``);
- ``v2``: the Open Inference Protocol V2 (KServe, Triton), ``POST
  /v2/models/{name}/infer``.

Each parser turns a body into a :class:`ScoringRequest`: rows of JSON
values with the unit each is assigned by. The gateway routes, checks against
the routed version's signature, scores and logs every row the same way
whatever the protocol, then hands :class:`RowResult` s back to the
protocol's formatter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from models.outputs import Prediction, ScoredBatch
from serving.kernel.errors import RampartError

Protocol = Literal["v1", "mlflow", "v2"]
UnitSource = Literal["body", "header", "param", "request_id"]
"""Where a row's unit id came from; ``request_id`` when the config lets a
request without one be hashed on its request id (logged as such)."""


@dataclass(frozen=True, slots=True)
class UnitPolicy:
    """Where the unit id is read from, and what a request without one gets."""

    header: str = "x-rampart-unit"  # lower case, as ASGI headers are
    param: str = "unit_id"
    hash_request_id: bool = False  # False: refuse with a message saying where to put it


@dataclass(frozen=True, slots=True)
class RowRequest:
    """One row to assign and score. ``features`` are the JSON values as sent
    (a tensor model's row holds one instance per input name)."""

    unit_id: str
    unit_source: UnitSource
    features: dict[str, Any]
    context: dict[str, str | int | float | bool] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScoringRequest:
    """A parsed request: its rows, in order, and what its protocol echoes back."""

    protocol: Protocol
    rows: tuple[RowRequest, ...]
    batch: bool  # False: a single-row form, answered without a list around it
    model_name: str | None = None  # the name in the path, if the protocol has one
    params: dict[str, Any] = field(default_factory=dict)  # MLflow params for predict
    echo_id: str | None = None  # V2's request "id"
    requested_outputs: tuple[str, ...] = ()  # V2's "outputs" names, if any
    columns_order: tuple[str, ...] = ()  # MLflow/V2 column order as sent
    request_id: str | None = None  # the request's own id (a batch's rows get "<id>-<i>")


@dataclass(frozen=True, slots=True)
class RowResult:
    """What one row got: a prediction from a version, or an error."""

    request_id: str
    model_name: str | None
    model_version: str | None
    experiment_id: str | None
    arm: str | None
    prediction: Prediction | None = None
    error: RampartError | None = None
    # each factor's level, in a factorial experiment (its arm is their cell)
    factors: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ScoredRequest:
    """Every row's result in input order, and the batches' raw model outputs by
    ``(name, version)`` (MLflow's protocol serializes them as MLflow does)."""

    request: ScoringRequest
    rows: tuple[RowResult, ...]
    batches: dict[tuple[str, str], ScoredBatch] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Formatted:
    """A protocol's HTTP answer: status, JSON body and any extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
