"""MLflow's scoring protocol: ``POST /invocations`` and
``POST /v1/models/{name}/invocations``, as ``mlflow models serve`` speaks it.

Read as MLflow 3's scoring server reads a body
(``mlflow/pyfunc/scoring_server``): a JSON object with exactly one of
``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs``,
other keys ignored, ``params`` passed to the model; or CSV with a header row.
Its unified LLM bodies (``messages``, ``prompt``, ``input``) are not served.
``NaN`` and ``Infinity`` are read as MLflow's server reads them (Python's
``json``), so whether a row may hold them is the routed version's check.

Every row of one request shares its unit (the header, ``params.unit_id`` or
the query parameter), so one request is one version's batch, and a
successful answer is byte for byte what ``mlflow models serve`` sends for that
version's ``predict`` output.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from models.inputs import UNNAMED_INPUT
from serving.gateway.protocols import (
    Formatted,
    RowRequest,
    ScoredRequest,
    ScoringRequest,
    UnitPolicy,
)
from serving.gateway.protocols.v1 import (
    MAX_BATCH_ROWS,
    Problems,
    answer_headers,
    check_context,
    check_header_request_id,
    column_order,
    load_json,
    new_request_id,
    request_unit_or_fallback,
    row_request_id,
    too_many_rows,
)
from serving.gateway.schemas import describe
from serving.kernel.errors import (
    ModelFailed,
    RampartError,
    UnsupportedMediaType,
    ValidationFailed,
)

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
PARAMS = "params"
CONTEXT = "context"
LLM_KEYS = ("messages", "prompt", "input")

JSON = "application/json"
CSV = "text/csv"
REQUIRED_FORMAT = ("body must be a JSON object with exactly one of "
                   + ", ".join(f'"{k}"' for k in FORMATS))

# MLflow's error codes (``mlflow.protos.databricks_pb2``) by HTTP status, so an
# MLflow client reading ``error_code`` sees the kind of failure it knows.
MLFLOW_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def media_type(content_type: str | None, request_id: str | None = None
               ) -> Literal["json", "csv"]:
    """JSON or CSV from a ``Content-Type``; UnsupportedMediaType otherwise.

    As MLflow: ``charset`` must be utf-8 and no other parameter may be given.
    No header at all is taken as JSON.
    """
    if content_type is None:
        return "json"
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    pairs = {key.strip().lower(): value.strip().strip('"').lower()
             for key, _, value in (p.partition("=") for p in parameters if p)}
    if pairs.get("charset", "utf-8") != "utf-8":
        raise UnsupportedMediaType(f"the body must be UTF-8 (got charset {pairs['charset']!r})",
                                   request_id)
    unknown = sorted(set(pairs) - {"charset"})
    if unknown:
        raise UnsupportedMediaType(f"unknown Content-Type parameters {unknown}: only charset "
                                   "is understood", request_id)
    kind = mime.lower()
    if kind == JSON or (kind.startswith("application/") and kind.endswith("+json")):
        return "json"
    if kind == CSV:
        return "csv"
    raise UnsupportedMediaType(f"Content-Type must be {JSON} or {CSV} (got {content_type!r})",
                               request_id)


def parse(
    body: bytes, *, unit: UnitPolicy, header_unit: str | None, query: Mapping[str, str],
    header_request_id: str | None, model_name: str | None = None,
    content_type: str | None = None,
) -> ScoringRequest:
    """An MLflow scoring body (JSON, or CSV by ``content_type``) as one batch.

    Each row is a dict of column -> value; a tensor model's row holds one
    instance per input name, or ``{"input": instance}`` for an unnamed
    tensor. ``params`` (less ``unit_id`` and ``context``) go to the model.
    """
    header_id = check_header_request_id(header_request_id)
    problems = Problems(header_id)
    param_unit: tuple[str, Any] | None = None
    params: dict[str, Any] = {}
    context: dict[str, Any] = {}
    if media_type(content_type, header_id) == "csv":
        columns, rows = _csv_rows(body, header_id)
    else:
        data = load_json(body, header_id)
        if not isinstance(data, dict):
            raise ValidationFailed(f"{REQUIRED_FORMAT} (got {describe(data)})", header_id)
        llm = [k for k in LLM_KEYS if k in data]
        if llm:
            raise ValidationFailed(f"MLflow's unified LLM input ({', '.join(llm)}) is not "
                                   f"served here: {REQUIRED_FORMAT}", header_id)
        present = [k for k in FORMATS if k in data]
        if len(present) != 1:
            raise ValidationFailed(f"{REQUIRED_FORMAT} (got {_keys(present or list(data))})",
                                   header_id)
        params, param_unit, context = _params(data.get(PARAMS), unit, problems)
        columns, rows = _rows(present[0], data[present[0]], problems)
    problems.raise_any()
    request_id = header_id or new_request_id()
    unit_id, source = request_unit_or_fallback(
        unit, header_unit, param_unit, query, request_id,
        f'"{PARAMS}": {{"{unit.param}": ...}} in the body')
    return ScoringRequest(
        protocol="mlflow",
        rows=tuple(RowRequest(unit_id, source, row, dict(context), row_request_id(request_id, i))
                   for i, row in enumerate(rows)),
        batch=True, model_name=model_name, params=params, columns_order=columns,
        request_id=request_id)


def _keys(keys: list[str], shown: int = 10) -> str:
    if not keys:
        return "no keys"
    listed = ", ".join(f'"{k}"' for k in keys[:shown])
    return listed + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _params(value: Any, unit: UnitPolicy, problems: Problems
            ) -> tuple[dict[str, Any], tuple[str, Any] | None, dict[str, Any]]:
    """The model's params, the unit id given among them, and the context."""
    if value is None:
        return {}, None, {}
    if not isinstance(value, dict):
        problems.add(PARAMS, "expected an object of parameter name -> value, got "
                             f"{describe(value)}")
        return {}, None, {}
    params = dict(value)
    param_unit = None
    if unit.param in params:
        param_unit = (f"{PARAMS}.{unit.param}", params.pop(unit.param))
    context = check_context(params.pop(CONTEXT, None), f"{PARAMS}.{CONTEXT}", problems)
    return params, param_unit, context


def _rows(key: str, value: Any, problems: Problems
          ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The rows of one input key, and the column order as sent."""
    if key == DF_SPLIT:
        return _split(value, problems)
    if key == DF_RECORDS:
        if not isinstance(value, list):
            problems.add(key, "expected a list of records (objects of column -> value), got "
                              f"{describe(value)}")
            return (), []
        return _records(key, value, problems)
    return _tensors(key, value, problems)


def _check_count(where: str, count: int, problems: Problems) -> bool:
    if count > MAX_BATCH_ROWS:
        raise too_many_rows(count, problems.request_id)
    if count == 0:
        problems.add(where, "no rows")
        return False
    return True


def _split(value: Any, problems: Problems) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    if not isinstance(value, dict):
        problems.add(DF_SPLIT, 'expected an object with "data" and optionally "columns" and '
                               f'"index", got {describe(value)}')
        return (), []
    extra = sorted(set(value) - {"columns", "data", "index"})
    if extra:
        problems.add(DF_SPLIT, f'unexpected keys {extra}: only "columns", "data" and "index" '
                               "are allowed")
    if "data" not in value:
        problems.add(f"{DF_SPLIT}.data", "field required")
        return (), []
    data = value["data"]
    if not isinstance(data, list):
        problems.add(f"{DF_SPLIT}.data", f"expected a list of rows, got {describe(data)}")
        return (), []
    if not _check_count(f"{DF_SPLIT}.data", len(data), problems):
        return (), []
    index = value.get("index")
    if index is not None and not (isinstance(index, list) and len(index) == len(data)):
        problems.add(f"{DF_SPLIT}.index", f"expected a list of {len(data)} labels, one per row")
    columns = _split_columns(value.get("columns"), data, problems)
    if columns is None:
        return (), []
    rows: list[dict[str, Any]] = []
    width = len(columns)
    for i, row in enumerate(data):
        where = f"{DF_SPLIT}.data.{i}"
        if width == 1 and not isinstance(row, list):
            cells = [row]  # one column: 1-D data, as pandas reads it
        elif isinstance(row, list) and len(row) == width:
            cells = row
        else:
            got = f"{len(row)} values" if isinstance(row, list) else describe(row)
            problems.add(where, f"expected a list of {width} values (one per column), got {got}")
            continue
        for j, cell in enumerate(cells):
            problems.value(f"{where}.{j}", cell, finite=False)
        rows.append(dict(zip(columns, cells, strict=True)))
    return columns, rows


def _split_columns(value: Any, data: list[Any], problems: Problems) -> tuple[str, ...] | None:
    """The split's column names; pandas' 0, 1, ... (as strings) when none are given."""
    where = f"{DF_SPLIT}.columns"
    if value is None:
        first = data[0]
        return tuple(str(j) for j in range(len(first) if isinstance(first, list) else 1))
    if not isinstance(value, list) or not value:
        problems.add(where, "expected a non-empty list of column names")
        return None
    bad = False
    seen: set[str] = set()
    for j, name in enumerate(value):
        if not isinstance(name, str):
            problems.add(f"{where}.{j}", f"expected a string, got {describe(name)}")
            bad = True
        elif name in seen:
            problems.add(f"{where}.{j}", f"column {name!r} is named twice")
            bad = True
        else:
            seen.add(name)
    return None if bad else tuple(value)


def _records(where: str, items: list[Any], problems: Problems
             ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    if not _check_count(where, len(items), problems):
        return (), []
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.add(f"{where}.{i}", f"expected an object of column -> value, got "
                                         f"{describe(item)}")
            continue
        for name, cell in item.items():
            problems.value(f"{where}.{i}.{name}", cell, finite=False)
        rows.append(dict(item))
    return column_order(rows), rows


def _tensors(key: str, value: Any, problems: Problems
             ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """``instances`` / ``inputs``: rows (a list of objects), instances of one
    unnamed tensor (a list of values), or columns / named tensors (an object
    of name -> one value per row)."""
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return _records(key, value, problems)
        if not _check_count(key, len(value), problems):
            return (), []
        rows = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                problems.add(f"{key}.{i}", "expected a value like the other items (an "
                                           "object mixes rows with tensor instances)")
                continue
            problems.value(f"{key}.{i}", item, finite=False)
            rows.append({UNNAMED_INPUT: item})
        return (UNNAMED_INPUT,), rows
    if isinstance(value, dict):
        return _columns(key, value, problems)
    problems.add(key, "expected a list of rows or instances, or an object of name -> values, "
                      f"got {describe(value)}")
    return (), []


def _columns(key: str, value: dict[str, Any], problems: Problems
             ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    if not value:
        problems.add(key, "no inputs")
        return (), []
    names = tuple(value)
    lists = [name for name in names if isinstance(value[name], list)]
    if not lists:  # every input a single value: one row, as MLflow reads it
        for name in names:
            problems.value(f"{key}.{name}", value[name], finite=False)
        return names, [dict(value)]
    first = lists[0]
    count = len(value[first])
    if not _check_count(f"{key}.{first}", count, problems):
        return (), []
    bad = False
    for name in names:
        column = value[name]
        if not isinstance(column, list) or len(column) != count:
            got = f"{len(column)} values" if isinstance(column, list) else describe(column)
            problems.add(f"{key}.{name}", f"expected a list of {count} values, one per row "
                                          f"like {key}.{first}, got {got}")
            bad = True
            continue
        for i, cell in enumerate(column):
            problems.value(f"{key}.{name}.{i}", cell, finite=False)
    if bad:
        return (), []
    return names, [{name: value[name][i] for name in names} for i in range(count)]


def _csv_rows(body: bytes, request_id: str | None
              ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """A CSV body with a header row, read by pandas as MLflow reads it; each
    cell as a Python value (a missing one as None)."""
    import pandas as pd  # only CSV needs pandas on this path

    problems = Problems(request_id)
    try:
        frame = pd.read_csv(io.StringIO(body.decode("utf-8")))
    except Exception as exc:  # pandas' parse errors are many classes; each is the body's fault
        raise ValidationFailed(f"body is not valid CSV: {exc}".splitlines()[0],
                               request_id) from None
    _check_count("body", len(frame), problems)
    problems.raise_any()
    columns = tuple(str(c) for c in frame.columns)
    cells = {name: [_plain(v) for v in frame[c].tolist()]
             for name, c in zip(columns, frame.columns, strict=True)}
    rows = [{name: cells[name][i] for name in columns} for i in range(len(frame))]
    for i, row in enumerate(rows):
        for name, cell in row.items():
            problems.value(f"body.{i}.{name}", cell, finite=False)
    problems.raise_any()
    return columns, rows


def _plain(value: Any) -> Any:
    """A pandas cell as JSON would carry it: NaN (a missing cell) as None."""
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, float) and math.isnan(item):
        return None
    return item


# ----------------------------------------------------------------- format


def mlflow_json(raw: Any) -> bytes:
    """``raw`` serialized exactly as ``mlflow models serve`` answers it."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = io.StringIO()
    predictions_to_json(raw, out)  # type: ignore[no-untyped-call]
    return out.getvalue().encode("utf-8")


def error_answer(error: RampartError, request_id: str | None,
                 headers: dict[str, str]) -> Formatted:
    """Rampart's error object, and MLflow's ``error_code`` and ``message`` beside it."""
    body = {
        "error": {"code": error.code, "message": error.message,
                  "request_id": error.request_id or request_id},
        "error_code": MLFLOW_ERROR_CODES.get(error.status, "INTERNAL_ERROR"),
        "message": error.message,
    }
    return Formatted(error.status, orjson.dumps(body), headers)


def format_error(error: RampartError) -> Formatted:
    """A request refused as a whole, as MLflow's clients read an error."""
    return error_answer(error, error.request_id, {})


def format(scored: ScoredRequest) -> Formatted:
    """The answer to an MLflow scoring request.

    All rows answered by one version: MLflow's own serialization of that
    version's output for the batch. Rows split across versions (never for one
    unit) or a batch output missing: ``{"predictions": [each row's value]}``.
    Any row failed: the first failure's status and error body.
    """
    headers = answer_headers(scored)
    request_id = scored.request.request_id
    # The first refused row answers for the request (its other rows are unscored).
    for row in scored.rows:
        if row.error is not None:
            return error_answer(row.error, row.request_id, headers)
    for row in scored.rows:
        if row.prediction is None:
            return error_answer(ModelFailed("no prediction was made for a row"),
                                row.request_id, headers)
    keys = {(row.model_name, row.model_version) for row in scored.rows}
    batch = None
    if len(keys) == 1:
        name, version = keys.pop()
        if name is not None and version is not None:
            batch = scored.batches.get((name, version))
    try:
        if batch is not None and len(batch.rows) == len(scored.rows):
            body = mlflow_json(batch.mlflow_raw)
        else:
            body = mlflow_json([row.prediction.value for row in scored.rows
                                if row.prediction is not None])
    except Exception as exc:  # a model's output is arbitrary: failing to write it is its fault
        error = exc if isinstance(exc, ModelFailed) else ModelFailed(
            f"the model's output cannot be written as JSON: {exc}")
        return error_answer(error, request_id, headers)
    return Formatted(200, body, headers)
