"""Column signatures and rows, fuzzed, through the gateway's three protocols.

Hypothesis draws a signature (names, every column type, required or not)
and a row that fits it, or the same row spoiled in one field: a value of the
wrong kind, a required column missing or null, an integer out of range, a
fraction for an integer, a float beyond float32, NaN or an infinity, nested
junk, a huge string. The row goes to an in-process gateway as ``/v1/predict``,
as MLflow's ``dataframe_records`` and ``dataframe_split``, and as V2 columns
typed as a V2 client would type them. A row that fits is answered 200 by
every protocol; a spoiled one is a 4xx naming the field in every protocol;
nothing is ever a 5xx.

The model is a scorer over the drawn signature that checks rows with
:func:`models.inputs.row_checker` and builds the model input with
:func:`models.inputs.build_input` (so a row the check lets through must also
build), answering the batch's row count. No MLflow.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from models.inputs import ColumnSpec, ColumnType, InputSchema, build_input, row_checker
from models.outputs import ScoredBatch, value_rows
from serving.gateway.core import GatewayCore, build_app
from serving.kernel.config import parse_config
from serving.routing.router import build_routing_table
from telemetry.metrics import RequestMetrics

pytestmark = pytest.mark.unit

COLUMN_TYPES: tuple[ColumnType, ...] = get_args(ColumnType)
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                "boolean": "BOOL", "string": "BYTES", "datetime": "BYTES", "binary": "BYTES"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
UNIT = {"X-Rampart-Unit": "fuzz-unit"}
# Few examples: each one is four HTTP requests, and the suite's time matters.
EXAMPLES = settings(max_examples=60)


class RowCountScorer:
    """A version over whatever signature the test sets: checks rows as every
    scorer does and answers each row with the number of rows in the batch's
    model input."""

    name = "fuzz"
    version = "1"
    inline = True

    def __init__(self) -> None:
        self.schema = InputSchema("columns", (ColumnSpec("x", "double"),))

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return row_checker(self.schema)(row)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        model_input = build_input(self.schema, rows)
        raw = np.full(len(rows), len(model_input), dtype=np.int64)
        return ScoredBatch(value_rows(raw, len(rows)), raw)


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[TestClient, RowCountScorer]]:
    """One app for every example; each example sets the scorer's signature."""
    config = parse_config({"models": [{"name": "fuzz", "versions": ["1"]}],
                           "default": {"model": "fuzz", "version": "1"}})
    scorer = RowCountScorer()
    core = GatewayCore(build_routing_table(config, lambda name, version: version),
                       {("fuzz", "1"): scorer}, RequestMetrics(CollectorRegistry()), None)
    with TestClient(build_app(core)) as client:
        yield client, scorer
    core.close()


# ----------------------------------------------------------------- signatures and rows

# Plain names, and any text: a name is a JSON key, a V2 input name, part of a message.
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True) | st.text(min_size=1,
                                                                        max_size=8)
SIGNATURES = st.lists(st.tuples(NAMES, st.sampled_from(COLUMN_TYPES), st.booleans()),
                      min_size=1, max_size=6, unique_by=lambda c: c[0]).map(
    lambda cols: InputSchema("columns", tuple(ColumnSpec(n, t, r) for n, t, r in cols)))

HUGE = st.builds(lambda char, n: char * n, st.sampled_from("xyz"),
                 st.integers(10_000, 100_000))
DATETIMES = st.datetimes(min_value=datetime(1677, 9, 22), max_value=datetime(2262, 4, 11))
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "double": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    "float": st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.integers(-(2**24), 2**24),
    "long": st.integers(-(2**63), 2**63 - 1),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "boolean": st.booleans(),
    "string": st.text(max_size=20) | HUGE,
    "datetime": DATETIMES.map(datetime.isoformat),
    "binary": st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode("ascii")),
}

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JUNK = st.sampled_from([
    {"nested": [1, {"deeper": None}]}, [1, [2, 3]], [[1.0, 2.0], [3.0]], [1, "two", True],
    {}, [], [[]], [{"a": 1}],
])
# Lists of two or more: V2 reads a tensor of shape [n, 1] as a column, so a
# one-item list is a scalar there.
NOT_A_NUMBER = st.text(max_size=10) | st.booleans() | HUGE | JUNK | st.lists(
    st.floats(allow_nan=False, allow_infinity=False), min_size=2, max_size=3)
FRACTIONS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: not f.is_integer())
BAD: dict[str, st.SearchStrategy[Any]] = {
    "double": NOT_A_NUMBER | NON_FINITE | st.integers(2**64, 2**70) | st.integers(
        -(2**70), -(2**63) - 1),
    "float": NOT_A_NUMBER | NON_FINITE | st.floats(min_value=FLOAT32_MAX * 2,
                                                   allow_infinity=False)
    | st.floats(max_value=-FLOAT32_MAX * 2, allow_infinity=False),
    "long": NOT_A_NUMBER | NON_FINITE | FRACTIONS | st.integers(2**63, 2**70)
    | st.integers(-(2**70), -(2**63) - 1),
    "integer": NOT_A_NUMBER | NON_FINITE | FRACTIONS | st.integers(2**31, 2**63)
    | st.integers(-(2**63), -(2**31) - 1),
    "boolean": st.integers() | st.floats() | st.sampled_from(["true", "false", "1"]) | JUNK
    | HUGE,
    "string": st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.booleans()
    | JUNK,
    "datetime": st.integers() | st.booleans() | JUNK | HUGE | st.sampled_from([
        "yesterday", "2024-13-01", "2024-02-30T00:00:00", "1600-01-01T00:00:00",
        "2300-01-01T00:00:00", "2024-05-01T10:00:00+02:00", "2024-05-01T10:00:00Z"]),
    "binary": st.integers() | st.booleans() | JUNK | st.sampled_from(["!!!!", "abc", "a b!"])
    | HUGE.map(lambda s: "!" + s),
}


@st.composite
def fitting(draw: st.DrawFn) -> tuple[InputSchema, dict[str, Any]]:
    """A signature and a row that fits it (an optional column missing or null
    at times)."""
    schema = draw(SIGNATURES)
    row: dict[str, Any] = {}
    for col in schema.columns:
        presence = "value" if col.required else draw(st.sampled_from(["value", "null",
                                                                      "missing"]))
        if presence == "value":
            row[col.name] = draw(GOOD[col.type])
        elif presence == "null":
            row[col.name] = None
    return schema, row


@st.composite
def spoiled(draw: st.DrawFn) -> tuple[InputSchema, dict[str, Any], ColumnSpec]:
    """A signature, a row that fits it but for one field, and that field's column."""
    schema, row = draw(fitting())
    col = draw(st.sampled_from(schema.columns))
    how = draw(st.sampled_from(["value", "missing", "null"] if col.required else ["value"]))
    if how == "missing":
        row.pop(col.name, None)
    elif how == "null":
        row[col.name] = None
    else:
        row[col.name] = draw(BAD[col.type])
    return schema, row, col


# ----------------------------------------------------------------- the row in each protocol


def v2_datatype(column: str, value: Any) -> str:
    """The datatype a V2 client gives a value: the column's, when the value is
    of a kind that datatype carries, else the value's own kind's."""
    own = V2_DATATYPES[column]
    leaves = value if isinstance(value, list) else [value]
    while leaves and all(isinstance(v, list) for v in leaves):
        leaves = [item for v in leaves for item in v]
    kinds = {type(v) for v in leaves} or {float}
    if kinds == {bool}:
        return "BOOL"
    if kinds == {str}:
        return "BYTES"
    if kinds <= {int, float}:
        if own.startswith("INT") and kinds == {int}:
            return own
        if own.startswith("FP"):
            return own
        return "INT64" if kinds == {int} else "FP64"
    return "BYTES"  # objects or mixed kinds: sent as they are, for the server to refuse


def v2_body(schema: InputSchema, row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The row as V2 inputs (one per value sent; a V2 tensor has no null, so a
    missing or null value is no input), and the inputs' names in order."""
    types = {c.name: c.type for c in schema.columns}
    inputs: list[dict[str, Any]] = []
    for name, value in row.items():
        if value is None:
            continue
        shape = [1]
        if isinstance(value, list):
            shape += list(np.shape(value)) if _rectangular(value) else [len(value)]
        inputs.append({"name": name, "shape": shape, "datatype": v2_datatype(types[name], value),
                       "data": [value]})
    return {"inputs": inputs}, [i["name"] for i in inputs]


def _rectangular(value: list[Any]) -> bool:
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        return False
    return array.dtype != object


def send(client: TestClient, schema: InputSchema, row: dict[str, Any]
         ) -> dict[str, tuple[int, str]]:
    """The row through each protocol form: the status, and the error message
    (or the body, on a 200)."""
    columns = list(row)
    v2, v2_names = v2_body(schema, row)
    requests: dict[str, tuple[str, Any]] = {
        "v1": ("/v1/predict", {"features": row}),
        "dataframe_records": ("/invocations", {"dataframe_records": [row]}),
    }
    if columns:  # neither a split nor V2 can carry a row with no value at all
        requests["dataframe_split"] = ("/invocations", {"dataframe_split": {
            "columns": columns, "data": [[row[c] for c in columns]]}})
    if v2_names:
        requests["v2"] = ("/v2/models/fuzz/infer", v2)
    out = {}
    for form, (path, body) in requests.items():
        # Python's json writes NaN and Infinity, as MLflow's client does.
        response = client.post(path, content=json.dumps(body), headers={
            **UNIT, "Content-Type": "application/json"})
        data = response.json()
        if response.status_code == 200:
            out[form] = (200, json.dumps(data))
            continue
        message = data["error"] if form == "v2" else data["error"]["message"]
        out[form] = (response.status_code, message)
    return out


def field_named(form: str, message: str, name: str, columns: list[str],
                v2_names: list[str]) -> bool:
    """Whether ``message`` names the field ``name`` as ``form`` sent it: by name
    (``features.x``, ``rows.0.x``, ``dataframe_records.0.x``), or where the
    protocol puts it by position (a split's column, a V2 input)."""
    if re.search(rf"(^|[\s.]){re.escape(name)}: ", message, re.MULTILINE):
        return True
    if form == "dataframe_split" and name in columns:
        return f"dataframe_split.data.0.{columns.index(name)}: " in message
    if form == "v2" and name in v2_names:
        return re.search(rf"\binputs\.{v2_names.index(name)}\.", message) is not None
    return False


def taken_by(form: str, col: ColumnSpec, value: Any) -> bool:
    """Whether ``form`` takes a value the others refuse, by its own rules.

    MLflow's scoring protocol reads NaN and infinities into a float column, as
    MLflow's server does (/v1 and V2 carry finite numbers only). A V2 FP64
    tensor's elements are floats: an integer beyond 64 bits there is a float
    in range, where /v1 and MLflow's protocol refuse an integer that does not
    fit in 64 bits.
    """
    if form.startswith("dataframe"):
        return (col.type in ("double", "float") and isinstance(value, float)
                and not math.isfinite(value))
    if form == "v2":
        return col.type == "double" and type(value) is int and not (
            -(2**63) <= value < 2**64)
    return False


# ----------------------------------------------------------------- the properties


@EXAMPLES
@given(fitting())
def test_a_row_that_fits_its_signature_is_answered_by_every_protocol(
        gateway: tuple[TestClient, RowCountScorer],
        case: tuple[InputSchema, dict[str, Any]]) -> None:
    client, scorer = gateway
    schema, row = case
    scorer.schema = schema
    answers = send(client, schema, row)
    for form, (status, text) in answers.items():
        assert status == 200, (form, text)
    assert json.loads(answers["v1"][1])["prediction"] == 1
    assert json.loads(answers["dataframe_records"][1]) == {"predictions": [1]}


@EXAMPLES
@given(spoiled())
def test_a_row_that_does_not_fit_is_a_4xx_naming_the_field_never_a_5xx(
        gateway: tuple[TestClient, RowCountScorer],
        case: tuple[InputSchema, dict[str, Any], ColumnSpec]) -> None:
    client, scorer = gateway
    schema, row, col = case
    scorer.schema = schema
    columns = list(row)
    _, v2_names = v2_body(schema, row)
    for form, (status, message) in send(client, schema, row).items():
        assert status < 500, (form, status, message)
        if taken_by(form, col, row.get(col.name)):
            assert status == 200, (form, message)
            continue
        assert 400 <= status < 500, (form, status, message)
        assert field_named(form, message, col.name, columns, v2_names), (form, col, message)
