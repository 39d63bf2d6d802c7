"""The three request protocols, parsed into one shape and answered from one
shape: ``/v1/predict``, MLflow's scoring protocol and the Open Inference
Protocol V2. Pure functions: no app, no Ray, no model."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.inputs import ColumnSpec, InputSchema, TensorSpec
from models.outputs import Prediction, ScoredBatch
from serving.gateway.protocols import (
    Protocol,
    RowResult,
    ScoredRequest,
    ScoringRequest,
    UnitPolicy,
    mlflow,
    v1,
    v2,
)
from serving.gateway.schemas import PredictRequest, feature_problem
from serving.kernel.errors import (
    InvalidJson,
    ModelFailed,
    PayloadTooLarge,
    RampartError,
    UnitMissing,
    UnsupportedMediaType,
    ValidationFailed,
)

pytestmark = pytest.mark.unit

UNIT = UnitPolicy()
HASHING = UnitPolicy(hash_request_id=True)
MODULES = {"v1": v1, "mlflow": mlflow, "v2": v2}

ROWS = [
    {"age": 31, "income": 52000.5, "member": True, "city": "Oslo"},
    {"age": 45, "income": 61000.25, "member": False, "city": "Bergen"},
]


def body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def parse(module: ModuleType, value: Any, *, unit: UnitPolicy = UNIT,
          header_unit: str | None = None, query: Mapping[str, str] | None = None,
          header_request_id: str | None = None, **extra: Any) -> ScoringRequest:
    result = module.parse(body(value), unit=unit, header_unit=header_unit, query=query or {},
                          header_request_id=header_request_id, **extra)
    assert isinstance(result, ScoringRequest)
    return result


def refused(module: ModuleType, value: Any, **kwargs: Any) -> RampartError:
    with pytest.raises(RampartError) as caught:
        parse(module, value, **kwargs)
    return caught.value


def typed(rows: Any) -> list[list[tuple[str, type, Any]]]:
    """Rows with each value's type, so 1 == 1.0 == True cannot pass for equal."""
    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        return (type(value).__name__, value)
    return [[(k, type(v), walk(v)) for k, v in row.items()] for row in rows]


def features(request: ScoringRequest) -> list[dict[str, Any]]:
    return [row.features for row in request.rows]


# ----------------------------------------------------------------- every form, the same rows


def v2_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inputs": [
        {"name": "age", "shape": [2], "datatype": "INT64", "data": [r["age"] for r in rows]},
        {"name": "income", "shape": [2], "datatype": "FP64",
         "data": [r["income"] for r in rows]},
        {"name": "member", "shape": [2, 1], "datatype": "BOOL",
         "data": [[r["member"]] for r in rows]},
        {"name": "city", "shape": [2], "datatype": "BYTES", "data": [r["city"] for r in rows]},
    ]}


COLUMN_FORMS: dict[str, tuple[ModuleType, Any, dict[str, Any]]] = {
    "v1 rows": (v1, {"rows": [{"features": r} for r in ROWS]}, {}),
    "mlflow dataframe_split": (mlflow, {"dataframe_split": {
        "columns": list(ROWS[0]), "data": [list(r.values()) for r in ROWS]}}, {}),
    "mlflow dataframe_split with index": (mlflow, {"dataframe_split": {
        "columns": list(ROWS[0]), "data": [list(r.values()) for r in ROWS],
        "index": [7, 8]}}, {}),
    "mlflow dataframe_records": (mlflow, {"dataframe_records": ROWS}, {}),
    "mlflow instances (records)": (mlflow, {"instances": ROWS}, {}),
    "mlflow inputs (records)": (mlflow, {"inputs": ROWS}, {}),
    "mlflow inputs (columns)": (mlflow, {"inputs": {k: [r[k] for r in ROWS] for k in ROWS[0]}},
                                {}),
    "mlflow instances (columns)": (mlflow, {"instances": {k: [r[k] for r in ROWS]
                                                          for k in ROWS[0]}}, {}),
    "mlflow csv": (mlflow, b"age,income,member,city\n31,52000.5,True,Oslo\n"
                           b"45,61000.25,False,Bergen\n", {"content_type": "text/csv"}),
    "v2 columns": (v2, v2_columns(ROWS), {}),
}


@pytest.mark.parametrize("form", sorted(COLUMN_FORMS))
def test_every_column_form_parses_to_the_same_typed_rows(form: str) -> None:
    module, value, extra = COLUMN_FORMS[form]
    request = parse(module, value, header_unit="user-1", **extra)
    assert typed(features(request)) == typed(ROWS)
    assert request.batch is True
    assert request.protocol == module.__name__.rsplit(".", 1)[1]
    assert [row.unit_id for row in request.rows] == ["user-1", "user-1"]
    if module is not v1:
        assert request.columns_order == tuple(ROWS[0])


def test_single_v1_form_is_not_a_batch_and_keeps_every_value_as_sent() -> None:
    sent = {"n": 3, "x": 3.0, "b": True, "s": "3", "none": None, "t": [[1, 2.5], [3, 4]],
            "flags": [True, False], "words": ["a", "b"]}
    request = parse(v1, {"unit_id": "u", "features": sent, "context": {"country": "NO"}})
    assert request.batch is False and len(request.rows) == 1
    assert typed(features(request)) == typed([sent])
    assert request.rows[0].context == {"country": "NO"}


TENSOR = [[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]]
TENSOR_FORMS: dict[str, tuple[ModuleType, Any]] = {
    "v1 rows": (v1, {"rows": [{"features": {"input": t}} for t in TENSOR]}),
    "mlflow inputs": (mlflow, {"inputs": TENSOR}),
    "mlflow instances": (mlflow, {"instances": TENSOR}),
    "v2": (v2, {"inputs": [{"name": "input", "shape": [2, 2, 2], "datatype": "FP64",
                            "data": [1, 2, 3, 4, 5, 6, 7, 8.5]}]}),
}


@pytest.mark.parametrize("form", sorted(TENSOR_FORMS))
def test_every_unnamed_tensor_form_gives_one_instance_per_row(form: str) -> None:
    module, value = TENSOR_FORMS[form]
    rows = features(parse(module, value, header_unit="u"))
    as_floats = [{"input": np.asarray(r["input"], dtype=float).tolist()} for r in rows]
    assert as_floats == [{"input": np.asarray(t, dtype=float).tolist()} for t in TENSOR]


def test_named_tensors_split_on_their_first_dimension() -> None:
    a, b = [[1.5, 2.5], [3.5, 4.5]], [[True], [False]]
    from_mlflow = features(parse(mlflow, {"inputs": {"a": a, "b": b}}, header_unit="u"))
    from_v2 = features(parse(v2, {"inputs": [
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1.5, 2.5], [3.5, 4.5]]},
        {"name": "b", "shape": [2, 1, 1], "datatype": "BOOL", "data": [True, False]},
    ]}, header_unit="u"))
    expected = [{"a": [1.5, 2.5], "b": [True]}, {"a": [3.5, 4.5], "b": [False]}]
    assert from_mlflow == expected
    assert from_v2 == [{"a": [1.5, 2.5], "b": [[True]]}, {"a": [3.5, 4.5], "b": [[False]]}]


def test_mlflow_inputs_of_single_values_are_one_row() -> None:
    request = parse(mlflow, {"inputs": {"a": 1, "b": "x"}}, header_unit="u")
    assert features(request) == [{"a": 1, "b": "x"}]


def test_dataframe_split_without_columns_names_them_by_position() -> None:
    request = parse(mlflow, {"dataframe_split": {"data": [[1, 2], [3, 4]]}}, header_unit="u")
    assert features(request) == [{"0": 1, "1": 2}, {"0": 3, "1": 4}]
    one = parse(mlflow, {"dataframe_split": {"columns": ["x"], "data": [1, 2]}}, header_unit="u")
    assert features(one) == [{"x": 1}, {"x": 2}]


def test_mlflow_reads_nan_and_infinity_as_its_server_does() -> None:
    request = parse(mlflow, b'{"dataframe_records": [{"a": NaN, "b": -Infinity}]}',
                    header_unit="u")
    row = features(request)[0]
    assert np.isnan(row["a"]) and row["b"] == float("-inf")


def test_csv_missing_cells_are_null() -> None:
    request = parse(mlflow, b"a,b\n1,x\n2,\n", header_unit="u", content_type="text/csv")
    assert features(request) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]


def test_mlflow_params_reach_the_model_without_unit_and_context() -> None:
    request = parse(mlflow, {"inputs": [[1]], "params": {
        "unit_id": "u-9", "context": {"country": "NO", "tier": 2}, "temperature": 0.5}})
    assert request.params == {"temperature": 0.5}
    assert [(r.unit_id, r.unit_source, r.context) for r in request.rows] == [
        ("u-9", "param", {"country": "NO", "tier": 2})]


def test_v2_parameters_echo_and_requested_outputs() -> None:
    value = {"id": "req-42", "inputs": v2_columns(ROWS)["inputs"],
             "parameters": {"unit_id": "u-1", "context": {"country": "SE"}, "content_type": "pd",
                            "threshold": 0.3},
             "outputs": [{"name": "label"}, {"name": "predict_proba"}]}
    request = parse(v2, value, model_name="churn")
    assert request.echo_id == "req-42" and request.model_name == "churn"
    assert request.params == {"threshold": 0.3}
    assert request.requested_outputs == ("label", "predict_proba")
    assert {(r.unit_id, r.unit_source) for r in request.rows} == {("u-1", "param")}
    assert all(r.context == {"country": "SE"} for r in request.rows)


def test_v2_float_datatypes_give_floats_and_integers_stay_integers() -> None:
    request = parse(v2, {"inputs": [
        {"name": "f", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "i", "shape": [2], "datatype": "UINT8", "data": [1, 255]},
    ]}, header_unit="u")
    assert typed(features(request)) == typed([{"f": 1.0, "i": 1}, {"f": 2.0, "i": 255}])


# ----------------------------------------------------------------- units and request ids


def one_row_body(protocol: str, *, in_body: str | None = None) -> Any:
    if protocol == "v1":
        return {"features": {"a": 1}, **({"unit_id": in_body} if in_body else {})}
    if protocol == "mlflow":
        return {"inputs": [[1]], **({"params": {"unit_id": in_body}} if in_body else {})}
    return {"inputs": [{"name": "a", "shape": [1], "datatype": "INT64", "data": [1]}],
            **({"parameters": {"unit_id": in_body}} if in_body else {})}


# Which source wins, given the others: v1's own body field beats the header,
# MLflow's and V2's body parameter comes after it.
ORDER = {
    "v1": [("body", "body"), ("header", "header"), ("query", "param")],
    "mlflow": [("header", "header"), ("body", "param"), ("query", "param")],
    "v2": [("header", "header"), ("body", "param"), ("query", "param")],
}


@pytest.mark.parametrize("protocol", sorted(MODULES))
def test_unit_resolution_order(protocol: str) -> None:
    module = MODULES[protocol]
    given_sources = ["body", "header", "query"]
    for i, (winner, source) in enumerate(ORDER[protocol]):
        present = [s for s in given_sources if s not in [w for w, _ in ORDER[protocol][:i]]]
        request = parse(module, one_row_body(protocol, in_body="from-body" if "body" in present
                                             else None),
                        header_unit="from-header" if "header" in present else None,
                        query={"unit_id": "from-query"} if "query" in present else {})
        assert [(r.unit_id, r.unit_source) for r in request.rows] == [(f"from-{winner}",
                                                                       source)]
    hashed = parse(module, one_row_body(protocol), unit=HASHING, header_request_id="rid-1")
    assert hashed.rows[0].unit_source == "request_id"
    assert hashed.rows[0].unit_id == "rid-1" == hashed.request_id


@pytest.mark.parametrize("protocol", sorted(MODULES))
def test_hashing_on_a_generated_request_id(protocol: str) -> None:
    request = parse(MODULES[protocol], one_row_body(protocol), unit=HASHING)
    assert request.request_id is not None and len(request.request_id) == 32
    assert request.rows[0].unit_id == request.request_id


UNIT_MISSING = {
    "v1": 'no unit id: send it as the body field "unit_id", the header "X-Rampart-Unit" or '
          'the query parameter "unit_id"',
    "mlflow": 'no unit id: send it as "params": {"unit_id": ...} in the body, the header '
              '"X-Rampart-Unit" or the query parameter "unit_id"',
    "v2": 'no unit id: send it as "parameters": {"unit_id": ...} in the body, the header '
          '"X-Rampart-Unit" or the query parameter "unit_id"',
}


@pytest.mark.parametrize("protocol", sorted(MODULES))
def test_unit_missing_says_where_to_put_it(protocol: str) -> None:
    error = refused(MODULES[protocol], one_row_body(protocol), header_request_id="rid")
    assert isinstance(error, UnitMissing) and error.status == 400
    assert error.message == UNIT_MISSING[protocol]
    assert error.request_id == "rid"


def test_unit_missing_with_a_custom_policy_names_its_header_and_parameter() -> None:
    policy = UnitPolicy(header="x-user-key", param="user")
    error = refused(mlflow, {"inputs": [[1]]}, unit=policy)
    assert '"X-User-Key"' in error.message and '{"user": ...}' in error.message
    request = parse(mlflow, {"inputs": [[1]], "params": {"user": "u"}}, unit=policy)
    assert request.rows[0].unit_id == "u" and request.params == {}


def test_unit_missing_in_a_batch_names_the_rows() -> None:
    error = refused(v1, {"rows": [{"features": {}}, {"unit_id": "u", "features": {}},
                                  {"features": {}}]})
    assert isinstance(error, UnitMissing)
    assert error.message.startswith("no unit id in rows.0, rows.2: ")


@pytest.mark.parametrize(("protocol", "kwargs", "where"), [
    ("v1", {"header_unit": ""}, "header X-Rampart-Unit"),
    ("v1", {"query": {"unit_id": "x" * 257}}, "query parameter unit_id"),
    ("mlflow", {"header_unit": "x" * 257}, "header X-Rampart-Unit"),
    ("v2", {"query": {"unit_id": ""}}, "query parameter unit_id"),
])
def test_a_bad_unit_id_names_where_it_came_from(protocol: str, kwargs: dict[str, Any],
                                                where: str) -> None:
    error = refused(MODULES[protocol], one_row_body(protocol), **kwargs)
    assert isinstance(error, ValidationFailed)
    assert f"\n  {where}: a unit id must be a string of 1-256 characters" in error.message


@pytest.mark.parametrize(("protocol", "value", "where"), [
    ("mlflow", {"inputs": [[1]], "params": {"unit_id": 7}}, "params.unit_id"),
    ("v2", {**one_row_body("v2"), "parameters": {"unit_id": ["u"]}}, "parameters.unit_id"),
    ("v1", {"unit_id": "", "features": {}}, "unit_id"),
])
def test_a_bad_unit_id_in_the_body_is_named(protocol: str, value: Any, where: str) -> None:
    error = refused(MODULES[protocol], value)
    assert isinstance(error, ValidationFailed) and f"\n  {where}: " in error.message


def test_v1_request_ids() -> None:
    own = parse(v1, {"unit_id": "u", "features": {}, "request_id": "mine"},
                header_request_id="header")
    assert own.rows[0].request_id == "mine" == own.request_id
    header = parse(v1, {"unit_id": "u", "features": {}}, header_request_id="header")
    assert header.rows[0].request_id == "header"
    fresh = parse(v1, {"unit_id": "u", "features": {}})
    assert fresh.rows[0].request_id is not None and len(fresh.rows[0].request_id) == 32
    batch = parse(v1, {"rows": [{"unit_id": "u", "features": {}},
                                {"unit_id": "u", "features": {}, "request_id": "own"}]},
                  header_request_id="h")
    assert [r.request_id for r in batch.rows] == ["h-0", "own"] and batch.request_id == "h"


@pytest.mark.parametrize("protocol", ["mlflow", "v2"])
def test_batch_rows_get_ids_traceable_to_the_request(protocol: str) -> None:
    request = parse(MODULES[protocol], COLUMN_FORMS["v2 columns"][1] if protocol == "v2"
                    else {"dataframe_records": ROWS}, header_unit="u", header_request_id="r")
    assert [row.request_id for row in request.rows] == ["r-0", "r-1"]


def test_duplicate_request_ids_in_a_batch_are_refused() -> None:
    error = refused(v1, {"rows": [{"unit_id": "u", "features": {}, "request_id": "a"},
                                  {"unit_id": "u", "features": {}, "request_id": "a"}]})
    assert "rows.1.request_id: 'a' is also rows.0's" in error.message


def test_a_request_id_header_over_128_characters_is_refused() -> None:
    error = refused(v1, one_row_body("v1", in_body="u"), header_request_id="x" * 129)
    assert isinstance(error, ValidationFailed) and "header X-Request-Id" in error.message


# ----------------------------------------------------------------- malformed bodies


SPLIT = "dataframe_split"
MALFORMED: list[tuple[str, Any, type[RampartError], str]] = [
    # v1: today's messages kept
    ("v1", b"{not json", InvalidJson, "body is not valid JSON: "),
    ("v1", b"", InvalidJson, "body is not valid JSON: "),
    ("v1", b"\xff\xfe", InvalidJson, "body is not valid JSON: "),
    ("v1", b"[1, 2]", ValidationFailed, "body must be a JSON object"),
    ("v1", b'"x"', ValidationFailed, "body must be a JSON object"),
    ("v1", {"unit_id": "u"}, ValidationFailed, "invalid request:\n  features: Field required"),
    ("v1", {"unit_id": "u", "features": {}, "colour": 1}, ValidationFailed,
     "\n  colour: Extra inputs are not permitted"),
    ("v1", {"unit_id": 12, "features": {}}, ValidationFailed, "\n  unit_id: "),
    ("v1", {"unit_id": "x" * 257, "features": {}}, ValidationFailed, "\n  unit_id: "),
    ("v1", b'{"unit_id": "u", "features": {"f0": NaN}}', ValidationFailed,
     "\n  features.f0: expected a finite number, got NaN"),
    ("v1", b'{"unit_id": "u", "features": {"f0": [1, Infinity]}}', ValidationFailed,
     "\n  features.f0: expected a finite number, got Infinity"),
    ("v1", {"unit_id": "u", "features": {"f0": {"a": 1}}}, ValidationFailed,
     "\n  features.f0: expected a finite number, a boolean, a string, null or a (nested) list"),
    ("v1", {"unit_id": "u", "features": {"f0": [[1, 2], [3]]}}, ValidationFailed,
     "\n  features.f0: a (nested) list must be rectangular"),
    ("v1", {"unit_id": "u", "features": {"f0": [1, [2]]}}, ValidationFailed,
     "\n  features.f0: a (nested) list must be rectangular: depth 1 mixes lists and values"),
    ("v1", {"unit_id": "u", "features": {"f0": [1, "2"]}}, ValidationFailed,
     "\n  features.f0: a list must hold only numbers, only booleans or only strings"),
    ("v1", {"unit_id": "u", "features": {"f0": [None]}}, ValidationFailed,
     "\n  features.f0: a list must hold only"),
    ("v1", b'{"unit_id": "u", "features": {"f0": 123456789012345678901234567890}}',
     ValidationFailed, "\n  features.f0: integer 123456789012345678901234567890 does not fit"),
    ("v1", {"unit_id": "u", "features": {}, "context": {"c": [1]}}, ValidationFailed,
     "\n  context.c."),
    ("v1", {"unit_id": "u", "features": {}, "request_id": ""}, ValidationFailed,
     "\n  request_id: "),
    ("v1", {"rows": []}, ValidationFailed, "\n  rows: List should have at least 1 item"),
    ("v1", {"rows": {}}, ValidationFailed, "\n  rows: Input should be a valid list"),
    ("v1", {"rows": [{"unit_id": "u", "features": {}}], "features": {}}, ValidationFailed,
     "\n  features: Extra inputs are not permitted"),
    ("v1", {"rows": [{"unit_id": "u", "features": {}}, {"unit_id": "u", "features": {
        "age": "x", "height": {}}}]}, ValidationFailed,
     "\n  rows.1.features.height: expected a finite number"),
    ("v1", {"rows": [{"unit_id": "u", "features": {}}, 3]}, ValidationFailed,
     "\n  rows.1: Input should be a valid dictionary"),
    # mlflow: the keys, as MLflow's server reads them
    ("mlflow", b"nope", InvalidJson, "body is not valid JSON: "),
    ("mlflow", [1], ValidationFailed, 'body must be a JSON object with exactly one of '
                                      '"dataframe_split", "dataframe_records", "instances", '
                                      '"inputs" (got a list)'),
    ("mlflow", {"inputs": [[1]], "instances": [[1]]}, ValidationFailed,
     '(got "instances", "inputs")'),
    ("mlflow", {"data": [[1]]}, ValidationFailed, '(got "data")'),
    ("mlflow", {}, ValidationFailed, "(got no keys)"),
    ("mlflow", {"messages": [{"role": "user", "content": "hi"}]}, ValidationFailed,
     "unified LLM input (messages) is not served here"),
    ("mlflow", {SPLIT: [[1]]}, ValidationFailed, f"\n  {SPLIT}: expected an object"),
    ("mlflow", {SPLIT: {"columns": ["a"]}}, ValidationFailed,
     f"\n  {SPLIT}.data: field required"),
    ("mlflow", {SPLIT: {"columns": ["a"], "data": [[1]], "orient": "x"}}, ValidationFailed,
     f"\n  {SPLIT}: unexpected keys ['orient']"),
    ("mlflow", {SPLIT: {"columns": ["a", "b"], "data": [[1, 2], [3]]}}, ValidationFailed,
     f"\n  {SPLIT}.data.1: expected a list of 2 values (one per column), got 1 values"),
    ("mlflow", {SPLIT: {"columns": ["a", "a"], "data": [[1, 2]]}}, ValidationFailed,
     f"\n  {SPLIT}.columns.1: column 'a' is named twice"),
    ("mlflow", {SPLIT: {"columns": ["a", 1], "data": [[1, 2]]}}, ValidationFailed,
     f"\n  {SPLIT}.columns.1: expected a string"),
    ("mlflow", {SPLIT: {"columns": ["a"], "data": [[1]], "index": [0, 1]}}, ValidationFailed,
     f"\n  {SPLIT}.index: expected a list of 1 labels"),
    ("mlflow", {SPLIT: {"columns": ["a"], "data": []}}, ValidationFailed,
     f"\n  {SPLIT}.data: no rows"),
    ("mlflow", {SPLIT: {"columns": ["a"], "data": [[{"x": 1}]]}}, ValidationFailed,
     f"\n  {SPLIT}.data.0.0: expected a finite number"),
    ("mlflow", {"dataframe_records": {"a": [1]}}, ValidationFailed,
     "\n  dataframe_records: expected a list of records"),
    ("mlflow", {"dataframe_records": [{"a": 1}, [1]]}, ValidationFailed,
     "\n  dataframe_records.1: expected an object of column -> value, got a list"),
    ("mlflow", {"dataframe_records": [{"a": {"b": 1}}]}, ValidationFailed,
     "\n  dataframe_records.0.a: expected"),
    ("mlflow", {"inputs": []}, ValidationFailed, "\n  inputs: no rows"),
    ("mlflow", {"inputs": 3}, ValidationFailed, "\n  inputs: expected a list of rows"),
    ("mlflow", {"instances": [[1], {"a": 1}]}, ValidationFailed,
     "\n  instances.1: expected a value like the other items"),
    ("mlflow", {"inputs": {}}, ValidationFailed, "\n  inputs: no inputs"),
    ("mlflow", {"inputs": {"a": [1, 2], "b": [1]}}, ValidationFailed,
     "\n  inputs.b: expected a list of 2 values, one per row like inputs.a, got 1 values"),
    ("mlflow", {"inputs": [[1]], "params": [1]}, ValidationFailed,
     "\n  params: expected an object"),
    ("mlflow", {"inputs": [[1]], "params": {"context": {"c": {}}}}, ValidationFailed,
     "\n  params.context.c."),
    # v2
    ("v2", b"{", InvalidJson, "body is not valid JSON: "),
    ("v2", [], ValidationFailed, 'body must be a JSON object {"inputs": [...]} (got a list)'),
    ("v2", {}, ValidationFailed, "\n  inputs: Field required"),
    ("v2", {"inputs": []}, ValidationFailed, "\n  inputs: List should have at least 1 item"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP99", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.datatype: Input should be 'BOOL'"),
    ("v2", {"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.shape.0: Input should be greater than or equal to 0"),
    ("v2", {"inputs": [{"name": "a", "shape": [], "datatype": "FP32", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.shape: List should have at least 1 item"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": 1}]},
     ValidationFailed, "\n  inputs.0.data: Input should be a valid list"),
    ("v2", {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.name: Field required"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            "extra": 1}, ValidationFailed, "\n  extra: Extra inputs are not permitted"),
    ("v2", {"id": 5, "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]},
     ValidationFailed, "\n  id: Input should be a valid string"),
    ("v2", {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]},
     ValidationFailed, "\n  inputs.0.data: holds 3 elements; shape [2, 2] needs 4"),
    ("v2", {"inputs": [{"name": "a", "shape": [2], "datatype": "UINT8", "data": [1, 256]}]},
     ValidationFailed, "\n  inputs.0.data: element 1: 256 is out of UINT8's range [0, 255]"),
    ("v2", {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]},
     ValidationFailed, "\n  inputs.0.data: element 1: expected an integer (INT32), got a number"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "INT64", "data": [True]}]},
     ValidationFailed, "\n  inputs.0.data: element 0: expected an integer (INT64), got a bool"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "BOOL", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.data: element 0: expected true or false, got a number"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]},
     ValidationFailed, "\n  inputs.0.data: element 0: expected a string, got a number"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP16", "data": [1e6]}]},
     ValidationFailed, "\n  inputs.0.data: element 0: 1000000.0 is out of FP16's range"),
    ("v2", b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [NaN]}]}',
     ValidationFailed, "\n  inputs.0.data: element 0: expected a finite number (FP64)"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                       {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]},
     ValidationFailed, "\n  inputs.1.name: 'a' is also inputs.0's name"),
    ("v2", {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                       {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]},
     ValidationFailed, "\n  inputs.1.shape: first dimension 3 differs from inputs.0's 2"),
    ("v2", {"inputs": [{"name": "a", "shape": [0], "datatype": "FP32", "data": []}]},
     ValidationFailed, "\n  inputs.0.shape: no rows"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1],
                        "parameters": {"binary_data_size": 4}}]},
     ValidationFailed, "\n  inputs.0.parameters.binary_data_size: binary tensor data"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "p"}, {"name": "p"}]},
     ValidationFailed, "\n  outputs.1.name: 'p' is requested twice"),
    ("v2", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            "parameters": {"context": "x"}},
     ValidationFailed, "\n  parameters.context: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("protocol", "value", "error", "text"), MALFORMED,
                         ids=[f"{p}-{i}" for i, (p, *_) in enumerate(MALFORMED)])
def test_a_malformed_body_is_refused_naming_the_field(
    protocol: str, value: Any, error: type[RampartError], text: str,
) -> None:
    found = refused(MODULES[protocol], value, header_unit="u", header_request_id="rid")
    assert type(found) is error, found.message
    assert text in found.message
    assert found.request_id == "rid"
    if error is ValidationFailed and text.startswith("\n"):
        assert found.message.startswith("invalid request:\n")


def test_many_problems_are_listed_one_per_line_up_to_twenty() -> None:
    rows = [{"unit_id": "u", "features": {"a": {}}} for _ in range(30)]
    message = refused(v1, {"rows": rows}).message
    lines = message.splitlines()
    assert lines[0] == "invalid request:" and len(lines) == 22
    assert lines[1] == ("  rows.0.features.a: expected a finite number, a boolean, a string, "
                        "null or a (nested) list of numbers, booleans or strings, got an object")
    assert lines[-1] == "  ... and 10 more"


BATCH_BODIES = {
    "v1": lambda n: {"rows": [{"unit_id": "u", "features": {"a": 1}}] * n},
    "mlflow": lambda n: {"dataframe_records": [{"a": 1}] * n},
    "mlflow columns": lambda n: {"inputs": {"a": [1] * n}},
    "v2": lambda n: {"inputs": [{"name": "a", "shape": [n], "datatype": "INT8",
                                 "data": [1] * n}]},
}


@pytest.mark.parametrize("form", sorted(BATCH_BODIES))
def test_batches_hold_up_to_max_batch_rows(form: str) -> None:
    module = MODULES[form.split()[0]]
    assert len(parse(module, BATCH_BODIES[form](v1.MAX_BATCH_ROWS), header_unit="u").rows) \
        == v1.MAX_BATCH_ROWS == 1000
    error = refused(module, BATCH_BODIES[form](v1.MAX_BATCH_ROWS + 1), header_unit="u")
    assert isinstance(error, PayloadTooLarge) and error.status == 413
    assert error.message.startswith("1001 rows in one request; the limit is 1000")


def test_a_body_over_the_size_limit_is_refused() -> None:
    error = refused(v2, b" " * ((1 << 20) + 1))
    assert isinstance(error, PayloadTooLarge)


@pytest.mark.parametrize(("content_type", "ok"), [
    (None, True), ("application/json", True), ("application/json; charset=utf-8", True),
    ("Application/JSON; charset=UTF-8", True), ("text/csv", True),
    ("application/json; charset=latin-1", False), ("application/json; format=pandas-split",
                                                    False),
    ("text/plain", False), ("application/vnd.apache.parquet", False),
])
def test_mlflow_media_types(content_type: str | None, ok: bool) -> None:
    value = b"a\n1\n" if content_type and "csv" in content_type else b'{"inputs": [[1]]}'
    if ok:
        parse(mlflow, value, header_unit="u", content_type=content_type)
    else:
        error = refused(mlflow, value, header_unit="u", content_type=content_type)
        assert isinstance(error, UnsupportedMediaType) and error.status == 415


@pytest.mark.parametrize("value", [b"", b"a,b\n", b"\xff\xfe,\n1,2"])
def test_bad_csv_is_refused(value: bytes) -> None:
    error = refused(mlflow, value, header_unit="u", content_type="text/csv")
    assert isinstance(error, ValidationFailed)


# ----------------------------------------------------------------- garbage never escapes

KEYS = ["unit_id", "features", "rows", "context", "request_id", "dataframe_split",
        "dataframe_records", "instances", "inputs", "params", "columns", "data", "index",
        "name", "shape", "datatype", "parameters", "outputs", "id", "FP32", "BYTES", "a"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats() | st.text(max_size=5) | st.sampled_from(["FP32", "BOOL", "BYTES",
                                                                    "INT8", "UINT64", "a"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=5),
    max_leaves=40)


def _dump(value: Any) -> bytes:
    # Python's json writes NaN and Infinity, as MLflow's own clients may
    return json.dumps(value).encode()


@settings(max_examples=300)
@given(value=json_values, protocol=st.sampled_from(sorted(MODULES)),
       hashing=st.booleans())
def test_any_json_is_parsed_or_refused_with_a_rampart_error(
    value: Any, protocol: str, hashing: bool,
) -> None:
    try:
        request = parse(MODULES[protocol], _dump(value), unit=HASHING if hashing else UNIT)
    except RampartError as error:
        assert error.status in (400, 413, 422) and error.message
        return
    assert 1 <= len(request.rows) <= v1.MAX_BATCH_ROWS
    for row in request.rows:
        assert row.unit_id and row.request_id
        for name, feature in row.features.items():
            assert isinstance(name, str)
            assert feature_problem(feature, finite=protocol != "mlflow") is None


@settings(max_examples=200)
@given(raw=st.binary(max_size=64), protocol=st.sampled_from(sorted(MODULES)),
       csv=st.booleans())
def test_any_bytes_are_parsed_or_refused_with_a_rampart_error(
    raw: bytes, protocol: str, csv: bool,
) -> None:
    extra = {"content_type": "text/csv"} if csv and protocol == "mlflow" else {}
    with contextlib.suppress(RampartError):
        parse(MODULES[protocol], raw, header_unit="u", **extra)


names = st.text(max_size=2) | st.sampled_from(["a", "b", "input"])
clean = (st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3)
         | st.floats(allow_nan=False, allow_infinity=False)
         | st.lists(st.integers(-5, 5), max_size=3))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the field should hold, sometimes any JSON."""
    return st.one_of(strategy, strategy, strategy, json_values)


v1_rows = st.fixed_dictionaries({}, optional={
    "unit_id": maybe(st.text(max_size=3)), "request_id": maybe(st.sampled_from(["x", "y"])),
    "features": maybe(st.dictionaries(names, maybe(clean), max_size=4)),
    "context": maybe(st.dictionaries(names, scalars, max_size=2))})
V1_BODIES = v1_rows | st.fixed_dictionaries({"rows": maybe(st.lists(v1_rows, max_size=4))})
MLFLOW_BODIES = st.fixed_dictionaries({}, optional={
    "dataframe_split": maybe(st.fixed_dictionaries({}, optional={
        "columns": maybe(st.lists(names, max_size=3)), "index": json_values,
        "data": maybe(st.lists(maybe(st.lists(maybe(clean), max_size=3)), max_size=3))})),
    "dataframe_records": maybe(st.lists(st.dictionaries(names, maybe(clean), max_size=3),
                                        max_size=3)),
    "instances": maybe(st.lists(maybe(clean), max_size=3)),
    "inputs": maybe(st.dictionaries(names, maybe(st.lists(maybe(clean), max_size=3)),
                                    max_size=3)),
    "params": maybe(st.dictionaries(st.sampled_from(["unit_id", "context", "k"]),
                                    json_values, max_size=3)),
})
V2_DATATYPES = ["BOOL", "UINT8", "UINT64", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64",
                "BYTES"]
v2_inputs = st.fixed_dictionaries({
    "name": maybe(names), "datatype": maybe(st.sampled_from(V2_DATATYPES)),
    "shape": maybe(st.lists(st.integers(-1, 3), min_size=1, max_size=3)),
    "data": maybe(st.lists(maybe(st.lists(scalars, max_size=3)), max_size=6)),
}, optional={"parameters": json_values})
V2_BODIES = st.fixed_dictionaries({"inputs": maybe(st.lists(v2_inputs, max_size=3))}, optional={
    "id": maybe(st.text(max_size=3)),
    "parameters": maybe(st.dictionaries(st.sampled_from(["unit_id", "context", "k"]),
                                        json_values, max_size=3)),
    "outputs": maybe(st.lists(st.fixed_dictionaries({"name": maybe(names)}), max_size=2)),
})
BODIES = {"v1": V1_BODIES, "mlflow": MLFLOW_BODIES, "v2": V2_BODIES}


V2_ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(), "INT8": st.integers(-128, 127), "UINT64": st.integers(0, 2**64 - 1),
    "FP32": st.floats(-1e30, 1e30), "BYTES": st.text(max_size=3)}


@st.composite
def valid_v2(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    """A V2 body that must parse, and its row count."""
    n = draw(st.integers(1, 4))
    inputs = []
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3,
                              unique=True)):
        dims = draw(st.lists(st.integers(0, 2), max_size=2))
        datatype = draw(st.sampled_from(sorted(V2_ELEMENTS)))
        size = n * int(np.prod(dims))
        data = draw(st.lists(V2_ELEMENTS[datatype], min_size=size, max_size=size))
        inputs.append({"name": name, "shape": [n, *dims], "datatype": datatype, "data": data})
    return n, {"inputs": inputs}


@given(case=valid_v2())
def test_valid_v2_tensors_parse_to_one_instance_per_row(case: tuple[int, dict[str, Any]]) -> None:
    n, value = case
    request = parse(v2, value, header_unit="u")
    assert len(request.rows) == n
    for tensor in value["inputs"]:
        dims = tensor["shape"][1:]
        column = [row.features[tensor["name"]] for row in request.rows]
        expected = np.asarray(tensor["data"], dtype=object).reshape([n, *dims])
        if dims in ([], [1]):
            expected = expected.reshape(n)
        assert np.array_equal(np.asarray(column, dtype=object).reshape(expected.shape), expected)
        if dims not in ([], [1]):
            assert all(len(instance) == dims[0] for instance in column)


@settings(max_examples=400)
@given(data=st.data(), protocol=st.sampled_from(sorted(MODULES)), hashing=st.booleans())
def test_near_valid_bodies_are_parsed_or_refused_with_a_rampart_error(
    data: st.DataObject, protocol: str, hashing: bool,
) -> None:
    value = data.draw(BODIES[protocol])
    try:
        request = parse(MODULES[protocol], _dump(value), unit=HASHING if hashing else UNIT)
    except RampartError as error:
        assert error.status in (400, 413, 422) and error.message
        return
    assert 1 <= len(request.rows) <= v1.MAX_BATCH_ROWS
    for row in request.rows:
        assert row.unit_id and row.request_id
        for feature in row.features.values():
            assert feature_problem(feature, finite=protocol != "mlflow") is None


# ----------------------------------------------------------------- formatting


def result(prediction: Prediction | None = None, *, request_id: str = "r-0",
           version: str = "3", arm: str = "treatment",
           error: RampartError | None = None) -> RowResult:
    return RowResult(request_id, "churn", version, "exp-1", arm, prediction, error)


def scored(protocol: Protocol, rows: list[RowResult], *, batch: bool = True,
           batches: dict[tuple[str, str], ScoredBatch] | None = None,
           **request: Any) -> ScoredRequest:
    requests = ScoringRequest(protocol, (), batch, request_id="r", **request)
    return ScoredRequest(requests, tuple(rows), batches or {})


REGRESSION = Prediction(0.25, 0.25)
BINARY = Prediction(0.8, 0.8, "yes", {"no": 0.2, "yes": 0.8})
MULTI = Prediction([0.1, 0.7, 0.2], None, 1, {"0": 0.1, "1": 0.7, "2": 0.2})
VECTOR = Prediction([1.0, 2.0, 3.0])
NAMED = Prediction({"score": 0.5, "segment": "b"})
TEXT = Prediction("spam")


def loads(data: bytes) -> Any:
    return orjson.loads(data)


@pytest.mark.parametrize("prediction", [REGRESSION, BINARY, MULTI, VECTOR, NAMED, TEXT],
                         ids=["regression", "binary", "multiclass", "vector", "named", "text"])
def test_v1_single_answer_of_each_prediction_kind(prediction: Prediction) -> None:
    answer = v1.format(scored("v1", [result(prediction, request_id="r")], batch=False))
    assert answer.status == 200
    expected: dict[str, Any] = {"request_id": "r", "prediction": prediction.value,
                                "model_name": "churn", "model_version": "3",
                                "experiment_id": "exp-1", "arm": "treatment"}
    if prediction.label is not None:
        expected["label"] = prediction.label
        expected["probabilities"] = prediction.probabilities
    assert loads(answer.body) == expected
    assert answer.headers == {}  # the body names all of it


def test_v1_single_error_answers_its_status_and_the_error_body() -> None:
    failed = result(error=ValidationFailed("age: expected a number (double), got \"x\""),
                    request_id="r")
    answer = v1.format(scored("v1", [failed], batch=False))
    assert answer.status == 422
    assert loads(answer.body) == {"error": {"code": "validation_failed", "request_id": "r",
                                            "message": "age: expected a number (double), "
                                                       "got \"x\""}}
    assert "X-Rampart-Model-Version" not in answer.headers


def test_v1_batch_answers_every_row_in_order_with_failures_in_place() -> None:
    rows = [result(REGRESSION, request_id="r-0"),
            result(error=ModelFailed("model version failed: boom"), request_id="r-1"),
            result(BINARY, request_id="r-2", version="4", arm="control")]
    answer = v1.format(scored("v1", rows))
    assert answer.status == 200
    predictions = loads(answer.body)["predictions"]
    assert [p["request_id"] for p in predictions] == ["r-0", "r-1", "r-2"]
    assert predictions[1] == {"request_id": "r-1", "error": {
        "code": "model_error", "message": "model version failed: boom"}}
    assert predictions[0]["prediction"] == 0.25 and "label" not in predictions[0]
    assert predictions[2]["label"] == "yes" and predictions[2]["model_version"] == "4"
    assert answer.headers == {}


def test_v1_writes_numpy_scalars_left_in_a_prediction() -> None:
    answer = v1.format(scored("v1", [result(Prediction(np.float32(0.5)))], batch=False))
    assert loads(answer.body)["prediction"] == 0.5


def mlflow_bytes(raw: Any) -> bytes:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = io.StringIO()
    predictions_to_json(raw, out)
    return out.getvalue().encode()


RAW_OUTPUTS = {
    "ndarray": np.array([0.25, 0.75]),
    "ndarray 2d": np.array([[0.1, 0.9], [0.6, 0.4]], dtype=np.float32),
    "ndarray of strings": np.array(["a", "é"]),
    "DataFrame": pd.DataFrame({"score": [0.25, 0.75], "segment": ["a", "b"]}),
    "Series": pd.Series([1, 2], name="p"),
    "dict": {"score": np.array([0.25, 0.75]), "n": 2},
    "list": [0.25, float("nan")],
}


@pytest.mark.parametrize("kind", sorted(RAW_OUTPUTS))
def test_mlflow_answer_is_byte_equal_to_mlflow_serve(kind: str) -> None:
    raw = RAW_OUTPUTS[kind]
    rows = [result(Prediction(0.25), request_id="r-0"), result(Prediction(0.75),
                                                               request_id="r-1")]
    batch = ScoredBatch((Prediction(0.25), Prediction(0.75)), raw)
    answer = mlflow.format(scored("mlflow", rows, batches={("churn", "3"): batch}))
    assert answer.status == 200
    assert answer.body == mlflow_bytes(raw)
    assert answer.body.startswith(b'{"predictions": ')
    assert answer.headers["X-Rampart-Model-Version"] == "3"
    assert answer.headers["X-Rampart-Arm"] == "treatment"


def test_mlflow_answer_without_one_version_batch_lists_the_row_values() -> None:
    rows = [result(Prediction(0.25)), result(Prediction([1, 2]), version="4")]
    answer = mlflow.format(scored("mlflow", rows))
    assert answer.status == 200 and answer.body == mlflow_bytes([0.25, [1, 2]])
    assert loads(answer.body) == {"predictions": [0.25, [1, 2]]}


def test_mlflow_error_carries_mlflow_keys_and_ours() -> None:
    rows = [result(REGRESSION), result(error=ValidationFailed("f3: expected a number"),
                                       request_id="r-1")]
    answer = mlflow.format(scored("mlflow", rows))
    assert answer.status == 422
    assert loads(answer.body) == {
        "error": {"code": "validation_failed", "message": "f3: expected a number",
                  "request_id": "r-1"},
        "error_code": "INVALID_PARAMETER_VALUE", "message": "f3: expected a number"}


def test_mlflow_output_that_cannot_be_written_is_a_model_error() -> None:
    batch = ScoredBatch((REGRESSION,), object())
    answer = mlflow.format(scored("mlflow", [result(REGRESSION)],
                                  batches={("churn", "3"): batch}))
    assert answer.status == 500 and loads(answer.body)["error_code"] == "INTERNAL_ERROR"


def v2_answer(predictions: list[Prediction], **request: Any) -> tuple[int, Any]:
    rows = [result(p, request_id=f"r-{i}") for i, p in enumerate(predictions)]
    answer = v2.format(scored("v2", rows, model_name="churn", **request))
    return answer.status, loads(answer.body)


@pytest.mark.parametrize(("values", "datatype", "shape", "data"), [
    ([0.25, 1], "FP64", [2], [0.25, 1.0]),
    ([1, 2], "INT64", [2], [1, 2]),
    ([True, False], "BOOL", [2], [True, False]),
    (["a", "b"], "BYTES", [2], ["a", "b"]),
    ([[1.0, 2.0], [3.0, 4.5]], "FP64", [2, 2], [1.0, 2.0, 3.0, 4.5]),
    ([[[1], [2]], [[3], [4]]], "INT64", [2, 2, 1], [1, 2, 3, 4]),
    ([1, "a"], "BYTES", [2], ["1", '"a"']),
    ([[1], [1, 2]], "BYTES", [2], ["[1]", "[1,2]"]),
])
def test_v2_outputs_for_values(values: list[Any], datatype: str, shape: list[int],
                               data: list[Any]) -> None:
    status, answer = v2_answer([Prediction(v) for v in values])
    assert status == 200
    assert answer["outputs"] == [{"name": "predict", "shape": shape, "datatype": datatype,
                                  "data": data}]
    assert answer["model_name"] == "churn" and answer["model_version"] == "3"
    assert answer["parameters"] == {"rampart_arm": "treatment",
                                    "rampart_experiment_id": "exp-1"}
    assert "id" not in answer


def test_v2_outputs_for_a_classifier() -> None:
    other = Prediction([0.5, 0.3, 0.2], None, 0, {"0": 0.5, "1": 0.3, "2": 0.2})
    status, answer = v2_answer([MULTI, other], echo_id="req-7")
    assert status == 200 and answer["id"] == "req-7"
    assert answer["outputs"] == [
        {"name": "predict_proba", "shape": [2, 3], "datatype": "FP64",
         "data": [0.1, 0.7, 0.2, 0.5, 0.3, 0.2], "parameters": {"classes": ["0", "1", "2"]}},
        {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
    ]
    _, binary = v2_answer([BINARY])
    assert [o["name"] for o in binary["outputs"]] == ["predict_proba", "label"]
    assert binary["outputs"][1]["datatype"] == "BYTES"


def test_v2_outputs_for_named_values() -> None:
    status, answer = v2_answer([NAMED, Prediction({"score": 0.1, "segment": "c"})])
    assert status == 200
    assert answer["outputs"] == [
        {"name": "score", "shape": [2], "datatype": "FP64", "data": [0.5, 0.1]},
        {"name": "segment", "shape": [2], "datatype": "BYTES", "data": ["b", "c"]},
    ]


def test_v2_requested_outputs_are_answered_in_the_order_asked() -> None:
    status, answer = v2_answer([BINARY], requested_outputs=("label", "predict_proba"))
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["label",
                                                                       "predict_proba"]
    status, answer = v2_answer([BINARY], requested_outputs=("label", "embedding"))
    assert status == 422
    assert answer == {"code": "validation_failed", "error": (
        'invalid request:\n  outputs.1.name: the model has no output "embedding"; it has '
        '"predict_proba", "label"')}


def test_v2_error_body_is_v2s_with_our_code() -> None:
    rows = [result(error=ModelFailed("model version failed: boom"))]
    answer = v2.format(scored("v2", rows))
    assert answer.status == 500
    assert loads(answer.body) == {"error": "model version failed: boom", "code": "model_error"}


@pytest.mark.parametrize("protocol", sorted(MODULES))
def test_a_request_refused_as_a_whole_in_each_protocol(protocol: str) -> None:
    error = refused(MODULES[protocol], b"{", header_request_id="rid")
    answer = MODULES[protocol].format_error(error)
    assert answer.status == 400
    message = error.message
    ours = {"code": "invalid_json", "message": message, "request_id": "rid"}
    assert loads(answer.body) == {
        "v1": {"error": ours},
        "mlflow": {"error": ours, "error_code": "BAD_REQUEST", "message": message},
        "v2": {"error": message, "code": "invalid_json"},
    }[protocol]


def test_v2_model_metadata_maps_mlflow_types() -> None:
    columns = InputSchema("columns", (
        ColumnSpec("age", "long"), ColumnSpec("income", "double"), ColumnSpec("ratio", "float"),
        ColumnSpec("n", "integer"), ColumnSpec("member", "boolean"), ColumnSpec("city", "string"),
        ColumnSpec("photo", "binary"), ColumnSpec("seen", "datetime", required=False)))
    outputs = InputSchema("tensors", tensors=(TensorSpec(None, "float64", (-1,)),))
    assert v2.model_metadata("churn", ["3", "4"], columns, outputs) == {
        "name": "churn", "versions": ["3", "4"], "platform": "mlflow",
        "inputs": [
            {"name": "age", "datatype": "INT64", "shape": [-1]},
            {"name": "income", "datatype": "FP64", "shape": [-1]},
            {"name": "ratio", "datatype": "FP32", "shape": [-1]},
            {"name": "n", "datatype": "INT32", "shape": [-1]},
            {"name": "member", "datatype": "BOOL", "shape": [-1]},
            {"name": "city", "datatype": "BYTES", "shape": [-1]},
            {"name": "photo", "datatype": "BYTES", "shape": [-1]},
            {"name": "seen", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    }
    tensors = InputSchema("tensors", tensors=(
        TensorSpec("image", "uint8", (-1, 28, 28)), TensorSpec("mask", "bool", (-1, 28)),
        TensorSpec("scale", "float16", (-1,)), TensorSpec("ids", "int32", (-1, 4)),
        TensorSpec("text", "str", (-1,)), TensorSpec("blob", "object", (-1,))))
    assert v2.model_metadata("digits", ["1"], tensors)["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, 28]},
        {"name": "scale", "datatype": "FP16", "shape": [-1]},
        {"name": "ids", "datatype": "INT32", "shape": [-1, 4]},
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "blob", "datatype": "BYTES", "shape": [-1]},
    ]
    unnamed = InputSchema("tensors", tensors=(TensorSpec(None, "float32", (-1, 4)),))
    assert v2.model_metadata("m", [], unnamed)["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert v2.model_metadata("m", ["1"], InputSchema("none"))["inputs"] == []


def test_the_v1_request_schema_documents_typed_values() -> None:
    schema = PredictRequest.model_json_schema()
    feature = schema["properties"]["features"]["additionalProperties"]
    assert {"type": "boolean"} in feature["anyOf"] and {"type": "string"} in feature["anyOf"]
    assert "unit_id" not in schema.get("required", [])
