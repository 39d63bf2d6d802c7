"""Hostile bodies and headers on every route that reads a body: each is a 4xx
JSON error naming what is wrong (or, where the input is legitimately
acceptable, a 200 that says so), never a 5xx, and the gateway serves normally
afterwards.

Already held in test_gateway.py and not repeated here: NaN and a body one byte
over the limit on /v1/predict, a prediction not declared JSON, control
characters and over-long request ids in a /v1/predict body and X-Request-Id, a
257-character unit id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rollout.commands import LocalControlPlane
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.gateway.core import GatewayCore, build_app
from serving.routing.router import route
from telemetry.outcomes_log import OutcomesLogWriter
from tests.unit.fakes import (
    FEATURES,
    Clock,
    NoTraffic,
    WritableRegistry,
    make_config,
    make_core,
)

ADMIN = "admin-s3cret"
INGEST = "ingest-s3cret"
GOOD_FEATURES = {name: 0.1 * i for i, name in enumerate(FEATURES)}
JSON_TYPE = {"content-type": "application/json"}
UNIT = {"x-rampart-unit": "user-7"}
# Every route that reads a body, with what it needs to get as far as reading it.
BODY_ROUTES: dict[str, dict[str, str]] = {
    "/v1/predict": JSON_TYPE,
    "/v1/outcomes": {**JSON_TYPE, "authorization": f"Bearer {INGEST}"},
    "/invocations": {**JSON_TYPE, **UNIT},
    "/v1/models/clf/invocations": {**JSON_TYPE, **UNIT},
    "/v2/models/clf/infer": {**JSON_TYPE, **UNIT},
    "/v1/admin/rollouts": {**JSON_TYPE, "authorization": f"Bearer {ADMIN}"},
    "/v1/admin/alerts": {**JSON_TYPE, "authorization": f"Bearer {ADMIN}"},
    "/v1/admin/shadows": {**JSON_TYPE, "authorization": f"Bearer {ADMIN}"},
    "/v1/admin/rollouts/ro-1/pause": {**JSON_TYPE, "authorization": f"Bearer {ADMIN}"},
}
DEPTH = 10_000
NESTED = {
    "arrays": b"[" * DEPTH + b"]" * DEPTH,
    "objects": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    "inside features": b'{"unit_id": "u", "features": {"f0": ' + b"[" * DEPTH + b"]" * DEPTH
                       + b"}}",
}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, GatewayCore]]:
    core, _ = make_core(None)
    core.outcomes_log = OutcomesLogWriter(tmp_path / "outcomes", "w", batch_rows=100_000,
                                          flush_interval_s=3600)
    service = RolloutService(
        make_config(experiments=[]), RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}"),
        WritableRegistry(), lambda plan: NoTraffic(), Clock(),
        notifier=None)  # no webhook is ever posted from here
    app = build_app(core, LocalControlPlane(service), ADMIN, ingest_token=INGEST)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, core
    core.close()


def message_of(response: Any) -> str:
    """The error's message, in Rampart's shape or (on /v2) V2's."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert isinstance(message, str) and message
    return message


def refused(response: Any, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    assert needle in message_of(response), response.text


def assert_still_serves(client: TestClient, core: GatewayCore) -> None:
    r = client.post("/v1/predict", json={"unit_id": "user-7", "features": GOOD_FEATURES,
                                         "context": {"country": "US"}})
    assert r.status_code == 200, r.text
    expected = route(core.table, "user-7", {"country": "US"})
    assert r.json()["model_version"] == expected.model.version


def event(**fields: Any) -> dict[str, Any]:
    return {"unit_id": "user-7", "metric": "clicked", "value": 1, **fields}


# ----------------------------------------------------------------- nesting and size


@pytest.mark.parametrize("shape", sorted(NESTED))
@pytest.mark.parametrize("path", sorted(BODY_ROUTES))
def test_json_nested_ten_thousand_levels_deep_is_a_400(
    gateway: tuple[TestClient, GatewayCore], path: str, shape: str
) -> None:
    client, core = gateway
    r = client.post(path, content=NESTED[shape], headers=BODY_ROUTES[path])
    refused(r, 400, "not valid JSON")
    assert "limit exceeded" in message_of(r)
    assert_still_serves(client, core)


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
@pytest.mark.parametrize("path", sorted(BODY_ROUTES))
def test_a_ten_mebibyte_body_is_a_413(
    gateway: tuple[TestClient, GatewayCore], path: str, chunked: bool
) -> None:
    client, core = gateway
    body = b" " * (10 << 20)

    def pieces() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    r = client.post(path, content=pieces() if chunked else body, headers=BODY_ROUTES[path])
    refused(r, 413, "limit")
    assert_still_serves(client, core)


def test_thousands_of_features_beyond_the_signature_are_answered(
    gateway: tuple[TestClient, GatewayCore],
) -> None:
    """200: features the signature does not name are ignored, as one extra is."""
    client, _ = gateway
    extra = {f"x{i}": float(i) for i in range(5_000)}
    r = client.post("/v1/predict", json={"unit_id": "u", "features": {**GOOD_FEATURES, **extra}})
    plain = client.post("/v1/predict", json={"unit_id": "u", "features": GOOD_FEATURES})
    assert r.status_code == plain.status_code == 200, r.text
    assert r.json()["prediction"] == plain.json()["prediction"]
    records = client.post("/invocations", headers=UNIT,
                          json={"dataframe_records": [{**GOOD_FEATURES, **extra}]})
    assert records.status_code == 200, records.text


def test_thousands_of_features_missing_the_signature_are_a_422_naming_one(
    gateway: tuple[TestClient, GatewayCore],
) -> None:
    client, _ = gateway
    r = client.post("/v1/predict", json={"unit_id": "u",
                                         "features": {f"x{i}": 1.0 for i in range(5_000)}})
    refused(r, 422, "features.f0: required by the model signature but missing")


# ----------------------------------------------------------------- numbers


NOT_FINITE = ["Infinity", "-Infinity", "1e400", "-1e400", "NaN"]


@pytest.mark.parametrize("literal", NOT_FINITE)
def test_non_finite_numbers_in_features_are_a_422_naming_the_field(
    gateway: tuple[TestClient, GatewayCore], literal: str
) -> None:
    client, core = gateway
    features = json.dumps(GOOD_FEATURES)[:-1] + f', "f1": {literal}}}'
    r = client.post("/v1/predict", headers=JSON_TYPE,
                    content=f'{{"unit_id": "u", "features": {features}}}')
    refused(r, 422, "features.f1")
    assert "finite number" in message_of(r)
    r = client.post("/invocations", headers=BODY_ROUTES["/invocations"],
                    content=f'{{"dataframe_records": [{features}]}}')
    refused(r, 422, "rows.0.f1: expected a finite number")
    assert_still_serves(client, core)


@pytest.mark.parametrize("literal", NOT_FINITE)
def test_a_non_finite_outcome_value_is_a_422_and_nothing_is_recorded(
    gateway: tuple[TestClient, GatewayCore], literal: str
) -> None:
    client, core = gateway
    body = json.dumps(event(value=0))[:-1].replace('"value": 0', f'"value": {literal}') + "}"
    r = client.post("/v1/outcomes", headers=BODY_ROUTES["/v1/outcomes"], content=body)
    refused(r, 422, "value")
    assert core.outcomes_log is not None


@pytest.mark.parametrize("literal", NOT_FINITE)
@pytest.mark.parametrize("path", ["/v1/admin/rollouts", "/v1/admin/alerts", "/v1/admin/shadows"])
def test_a_non_finite_number_in_an_admin_body_is_a_400(
    gateway: tuple[TestClient, GatewayCore], path: str, literal: str
) -> None:
    client, _ = gateway
    r = client.post(path, headers=BODY_ROUTES[path], content=f'{{"interval_s": {literal}}}')
    refused(r, 400, "not valid JSON")


# ----------------------------------------------------------------- duplicate keys


def test_a_duplicate_key_takes_its_last_value(gateway: tuple[TestClient, GatewayCore]) -> None:
    """200: JSON leaves duplicate names to the parser; here, as in Python's json
    and orjson, the last one wins, on every protocol alike."""
    client, _ = gateway
    once = client.post("/v1/predict", json={"unit_id": "u",
                                            "features": {**GOOD_FEATURES, "f0": 2.0}})
    features = json.dumps({**GOOD_FEATURES, "f0": -5.0})[:-1] + ', "f0": 2.0}'
    twice = client.post("/v1/predict", headers=JSON_TYPE,
                        content=f'{{"unit_id": "v", "unit_id": "u", "features": {features}}}')
    assert once.status_code == twice.status_code == 200, twice.text
    assert twice.json()["prediction"] == once.json()["prediction"]
    outcome = client.post("/v1/outcomes", headers=BODY_ROUTES["/v1/outcomes"],
                          content='{"unit_id": "u", "metric": "a b", "metric": "clicked", '
                                  '"value": 1}')
    assert outcome.status_code == 202, outcome.text


# ----------------------------------------------------------------- ids


LONG = "x" * 10_000


@pytest.mark.parametrize(("body", "needle"), [
    ({"unit_id": LONG}, "unit_id"),
    ({"request_id": LONG}, "request_id"),
    ({"context": {"session_id": LONG}}, "context: session_id is 10000 characters"),
])
def test_ten_thousand_character_ids_in_a_prediction_are_a_422(
    gateway: tuple[TestClient, GatewayCore], body: dict[str, Any], needle: str
) -> None:
    client, _ = gateway
    r = client.post("/v1/predict", json={"unit_id": "u", "features": GOOD_FEATURES, **body})
    refused(r, 422, needle)


@pytest.mark.parametrize(("header", "value", "needle"), [
    ("x-rampart-unit", LONG, "X-Rampart-Unit"),
    ("x-request-id", LONG, "X-Request-Id"),
    ("x-request-id", "a\x7fb", "X-Request-Id: must be printable ASCII"),
])
def test_ten_thousand_character_or_unprintable_id_headers_are_a_422(
    gateway: tuple[TestClient, GatewayCore], header: str, value: str, needle: str
) -> None:
    client, _ = gateway
    headers = {**BODY_ROUTES["/invocations"], header: value}
    r = client.post("/invocations", headers=headers,
                    json={"dataframe_records": [GOOD_FEATURES]})
    refused(r, 422, needle)


@pytest.mark.parametrize("unit", ["user\x00", "user\nforged", "resu\u202e", "u\u200b"])
def test_a_unit_id_with_control_or_invisible_characters_is_a_422_from_every_source(
    gateway: tuple[TestClient, GatewayCore], unit: str,
) -> None:
    """A unit id is logged, exported hashed and shown by `rampart assign`: one
    holding NUL, a newline or a bidirectional override would read as another
    id (or forge a line) wherever it is displayed, so no source may carry one."""
    client, core = gateway
    body = client.post("/v1/predict", json={"unit_id": unit, "features": GOOD_FEATURES})
    refused(body, 422, "unit_id")
    context = client.post("/v1/predict", json={"unit_id": "u", "features": GOOD_FEATURES,
                                               "context": {"session_id": unit}})
    refused(context, 422, "control and invisible characters")
    mlflow = {"dataframe_records": [GOOD_FEATURES]}
    query = client.post("/invocations", params={"unit_id": unit}, headers=JSON_TYPE,
                        json=mlflow)
    refused(query, 422, "control or invisible characters")
    if unit.isascii() and "\n" not in unit:  # what a header can carry at all
        header = client.post("/invocations", json=mlflow,
                             headers={**BODY_ROUTES["/invocations"], "x-rampart-unit": unit})
        refused(header, 422, "control or invisible characters")
    outcome = client.post("/v1/outcomes", headers=BODY_ROUTES["/v1/outcomes"],
                          json=event(unit_id=unit))
    refused(outcome, 422, "unit_id")
    assert_still_serves(client, core)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"unit_id": LONG}, "unit_id"),
    ({"metric": LONG}, "metric"),
    ({"metric": "clicked\x00"}, "metric"),
    ({"experiment_id": "exp\r\nforged"}, "experiment_id"),
    ({"experiment_id": LONG}, "experiment_id"),
])
def test_long_or_unprintable_ids_in_an_outcome_are_a_422(
    gateway: tuple[TestClient, GatewayCore], fields: dict[str, Any], needle: str
) -> None:
    client, _ = gateway
    r = client.post("/v1/outcomes", headers=BODY_ROUTES["/v1/outcomes"], json=event(**fields))
    refused(r, 422, needle)


@pytest.mark.parametrize("rollout_id", [LONG, "ro%00%1B", "ro%2F..%2F..", "ro\u202e1"])
def test_a_hostile_rollout_id_in_an_admin_path_is_a_404(
    gateway: tuple[TestClient, GatewayCore], rollout_id: str
) -> None:
    client, _ = gateway
    headers = BODY_ROUTES["/v1/admin/rollouts"]
    for method, suffix in (("GET", ""), ("POST", "/pause"), ("POST", "/abort")):
        r = client.request(method, f"/v1/admin/rollouts/{rollout_id}{suffix}",
                           headers=headers)
        assert r.status_code == 404, (method, suffix, r.text)
        assert message_of(r)


# ----------------------------------------------------------------- content types


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_an_outcome_not_declared_as_json_is_a_415(
    gateway: tuple[TestClient, GatewayCore], content_type: str | None
) -> None:
    client, _ = gateway
    headers = {"authorization": f"Bearer {INGEST}"}
    if content_type is not None:
        headers["content-type"] = content_type
    r = client.post("/v1/outcomes", headers=headers, content=json.dumps(event()))
    refused(r, 415, "Content-Type must be application/json")


@pytest.mark.parametrize("content_type", ["application/xml", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_an_mlflow_request_in_another_media_type_is_a_415(
    gateway: tuple[TestClient, GatewayCore], content_type: str
) -> None:
    client, _ = gateway
    r = client.post("/invocations", headers={**UNIT, "content-type": content_type},
                    content=json.dumps({"dataframe_records": [GOOD_FEATURES]}))
    refused(r, 415, "Content-Type")


@pytest.mark.parametrize("path", ["/v2/models/clf/infer", "/v1/admin/rollouts"])
def test_xml_where_json_is_read_is_a_400(
    gateway: tuple[TestClient, GatewayCore], path: str
) -> None:
    """V2 and the admin routes read any body as JSON: XML is then not JSON."""
    client, _ = gateway
    headers = {**BODY_ROUTES[path], "content-type": "application/xml"}
    r = client.post(path, headers=headers, content=b"<plan><id>ro-1</id></plan>")
    refused(r, 400, "not valid JSON")


# ----------------------------------------------------------------- chunked bodies


def chunks(body: bytes, size: int = 7) -> Iterator[bytes]:
    """The body as a generator: sent with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_chunked_body_is_read_whole_on_every_protocol(
    gateway: tuple[TestClient, GatewayCore],
) -> None:
    """200/202: chunked transfer is legitimate HTTP/1.1; the body is the same."""
    client, _ = gateway
    single = json.dumps({"unit_id": "u", "features": GOOD_FEATURES}).encode()
    sized = client.post("/v1/predict", headers=JSON_TYPE, content=single)
    chunked = client.post("/v1/predict", headers=JSON_TYPE, content=chunks(single))
    assert sized.status_code == chunked.status_code == 200, chunked.text
    assert chunked.json()["prediction"] == sized.json()["prediction"]
    mlflow = client.post("/invocations", headers=BODY_ROUTES["/invocations"], content=chunks(
        json.dumps({"dataframe_records": [GOOD_FEATURES]}).encode()))
    assert mlflow.status_code == 200, mlflow.text
    outcome = client.post("/v1/outcomes", headers=BODY_ROUTES["/v1/outcomes"],
                          content=chunks(json.dumps(event()).encode()))
    assert outcome.status_code == 202, outcome.text


def test_a_chunked_body_cut_into_bad_json_is_a_400(
    gateway: tuple[TestClient, GatewayCore],
) -> None:
    client, core = gateway
    body = json.dumps({"unit_id": "u", "features": GOOD_FEATURES}).encode()[:-3]
    r = client.post("/v1/predict", headers=JSON_TYPE, content=chunks(body))
    refused(r, 400, "not valid JSON")
    assert_still_serves(client, core)


# ----------------------------------------------------------------- no such route


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/no/such/route", 404, "route_not_found"),
    ("POST", "/v1/predict/../admin", 404, "route_not_found"),
    ("GET", "/v1/admin/rollouts/a%2Fb/pause", 404, "route_not_found"),
    ("GET", "/v1/predict", 405, "method_not_allowed"),
    ("DELETE", "/v1/admin/rollouts", 405, "method_not_allowed"),
])
def test_no_such_route_or_method_answers_the_one_error_shape(
    gateway: tuple[TestClient, GatewayCore], method: str, path: str, status: int, code: str
) -> None:
    """Regression: the framework answered these ``{"detail": "Not Found"}``, a 4xx
    without the error object every other refusal carries."""
    client, _ = gateway
    r = client.request(method, path, headers={"x-request-id": "hostile-1"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["request_id"]) == (code, "hostile-1")
    assert method in error["message"]
    if status == 405:
        assert r.headers["allow"]


def test_a_request_id_answered_once_is_a_409_when_sent_again(
    gateway: tuple[TestClient, GatewayCore],
) -> None:
    """Rows are keyed by request id and outcomes join on it: a second answer
    under one id would make both ambiguous. A refused request takes no id."""
    client, core = gateway
    refused(client.post("/v1/predict", json={"unit_id": "u", "request_id": "r-1",
                                             "features": {"f0": "not a number"}}), 422, "f0")
    first = client.post("/v1/predict", json={"unit_id": "u", "request_id": "r-1",
                                             "features": GOOD_FEATURES})
    assert first.status_code == 200, first.text
    again = client.post("/v1/predict", json={"unit_id": "u2", "request_id": "r-1",
                                             "features": GOOD_FEATURES})
    refused(again, 409, "request id 'r-1' was already answered")
    assert again.json()["error"]["code"] == "duplicate_request_id"
    header = client.post("/invocations", json={"dataframe_records": [GOOD_FEATURES]},
                         headers={**BODY_ROUTES["/invocations"], "x-request-id": "r-2"})
    assert header.status_code == 200, header.text
    refused(client.post("/invocations", json={"dataframe_records": [GOOD_FEATURES]},
                        headers={**BODY_ROUTES["/invocations"], "x-request-id": "r-2"}),
            409, "r-2")
    assert_still_serves(client, core)


def test_the_answered_ids_kept_are_bounded_and_the_oldest_forgotten() -> None:
    from serving.gateway.recent_ids import RecentRequestIds

    recent = RecentRequestIds(capacity=3)
    recent.remember(["a", "b", None, "c", "d"])
    assert len(recent) == 3
    assert recent.first_seen(["a"]) is None  # forgotten: the oldest went first
    assert recent.first_seen([None, "x", "c"]) == "c"
