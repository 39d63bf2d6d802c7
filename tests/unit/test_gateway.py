"""The request path in-process: FastAPI app over GatewayCore with a real
in-memory span exporter, a fresh Prometheus registry and a real decision log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving.gateway.core import GatewayCore, build_app, unit_hash
from serving.routing.router import route
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import FEATURES, make_core

GOOD_FEATURES = {name: 0.1 * i for i, name in enumerate(FEATURES)}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[dict[str, Any]]:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(exporter)
    writer = DecisionLogWriter(tmp_path / "decisions", "test", batch_rows=1000,
                               flush_interval_s=3600)
    core, prom = make_core(provider.get_tracer("test"), writer)
    with TestClient(build_app(core)) as client:
        yield {"client": client, "core": core, "prom": prom, "exporter": exporter,
               "provider": provider, "writer": writer, "dir": tmp_path / "decisions"}
    core.close()


def _post(client: TestClient, body: Any, **kwargs: Any) -> Any:
    if isinstance(body, bytes | str):
        kwargs["headers"] = {"content-type": "application/json", **kwargs.get("headers", {})}
        return client.post("/v1/predict", content=body, **kwargs)
    return client.post("/v1/predict", json=body, **kwargs)


def test_prediction_names_version_experiment_and_arm(gateway: dict[str, Any]) -> None:
    core: GatewayCore = gateway["core"]
    r = _post(gateway["client"], {"unit_id": "user-7", "features": GOOD_FEATURES,
                                  "context": {"session_id": "s1"}, "request_id": "abc"})
    assert r.status_code == 200
    body = r.json()
    expected = route(core.table, "user-7", {"session_id": "s1"})
    assert body["request_id"] == "abc"
    assert (body["experiment_id"], body["arm"], body["model_version"]) == (
        expected.experiment_id, expected.arm, expected.model.version)
    scorer = core.scorers[(expected.model.name, expected.model.version)]
    assert body["prediction"] == pytest.approx(scorer.predict_one(list(GOOD_FEATURES.values())))


def test_request_id_is_generated_when_absent(gateway: dict[str, Any]) -> None:
    r = _post(gateway["client"], {"unit_id": "u", "features": GOOD_FEATURES})
    assert r.status_code == 200 and len(r.json()["request_id"]) >= 16


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"unit_id": "u", "features": {k: v for k, v in GOOD_FEATURES.items() if k != "f3"}},
         422, "features.f3: required by the model signature but missing"),
        ({"unit_id": "u", "features": {**GOOD_FEATURES, "f0": "high"}}, 422, "features.f0"),
        ({"unit_id": "u", "features": {**GOOD_FEATURES, "f0": True}}, 422, "features.f0"),
        ({"unit_id": "u", "features": {**GOOD_FEATURES, "f0": None}}, 422, "features.f0"),
        ({"unit_id": "", "features": GOOD_FEATURES}, 422, "unit_id"),
        ({"unit_id": "x" * 257, "features": GOOD_FEATURES}, 422, "unit_id"),
        ({"unit_id": 12, "features": GOOD_FEATURES}, 422, "unit_id"),
        ({"features": GOOD_FEATURES}, 400, "X-Rampart-Unit"),
        ({"unit_id": "u", "features": GOOD_FEATURES, "colour": 1}, 422, "colour"),
        ("{not json", 400, "not valid JSON"),
        ("", 400, "not valid JSON"),
        ("[1, 2]", 422, "JSON object"),
        ('{"unit_id": "u", "features": {"f0": NaN}}', 422, "finite number"),
        ("x" * (1024 * 1024 + 1), 413, "limit"),
    ],
)
def test_bad_input_gets_a_named_4xx(
    gateway: dict[str, Any], body: Any, status: int, needle: str
) -> None:
    r = _post(gateway["client"], body, headers={"x-request-id": "bad-1"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert error["request_id"] == "bad-1"
    assert error["code"] in {"validation_failed", "invalid_json", "payload_too_large",
                             "unit_missing"}


def test_bad_input_is_counted_but_not_logged_as_a_decision(gateway: dict[str, Any]) -> None:
    _post(gateway["client"], "{bad")
    _post(gateway["client"], {"unit_id": "u", "features": GOOD_FEATURES})
    gateway["writer"].flush()
    assert read_decisions(gateway["dir"]).num_rows == 1
    rejected = gateway["prom"].get_sample_value(
        "rampart_requests_total",
        {"model_name": "", "model_version": "", "experiment_id": "", "arm": "", "rollout_id": "",
         "rollout_arm": "", "status": "rejected"},
    )
    assert rejected == 1.0


def test_every_request_is_counted_logged_and_traced_with_the_same_keys(
    gateway: dict[str, Any],
) -> None:
    client, core = gateway["client"], gateway["core"]
    answers = [
        _post(client, {"unit_id": f"user-{i}", "features": GOOD_FEATURES,
                       "context": {"country": "US"}}).json()
        for i in range(60)
    ]
    gateway["writer"].flush()
    gateway["provider"].force_flush()
    rows = {r["request_id"]: r for r in read_decisions(gateway["dir"]).to_pylist()}
    finished = gateway["exporter"].get_finished_spans()
    spans = {s.attributes["rampart.request_id"]: s for s in finished}
    assert len(rows) == len(spans) == 60
    for answer in answers:
        row, span = rows[answer["request_id"]], spans[answer["request_id"]]
        for key in ("experiment_id", "arm", "model_name", "model_version"):
            assert row[key] == answer[key] == span.attributes[f"rampart.{key}"]
        # The span names the unit only by its keyed hash: never the id itself.
        assert "rampart.unit_id" not in span.attributes
        assert span.attributes["rampart.unit_hash"] == unit_hash(core._trace_key, row["unit_id"])
        assert row["unit_id"] not in str(dict(span.attributes))
        assert row["layer"] == span.attributes["rampart.layer"] == "experiment:exp-a"
        assert row["status"] == "ok" and row["prediction"] == answer["prediction"]
        assert dict(row["features"]) == GOOD_FEATURES
    prom = gateway["prom"]
    for arm, version in (("control", "1"), ("challenger", "2")):
        labels = {"model_name": "clf", "model_version": version, "experiment_id": "exp-a",
                  "arm": arm, "rollout_id": "", "rollout_arm": "", "status": "ok"}
        n = sum(1 for a in answers if a["arm"] == arm)
        assert prom.get_sample_value("rampart_requests_total", labels) == (n or None)
        if n:
            assert prom.get_sample_value("rampart_request_latency_seconds_count", labels) == n
    assert core.table.version == 1


def test_metrics_routing_health_and_openapi(gateway: dict[str, Any]) -> None:
    client = gateway["client"]
    _post(client, {"unit_id": "u", "features": GOOD_FEATURES})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "rampart_requests_total{" in metrics.text
    assert "rampart_request_latency_seconds_bucket{" in metrics.text
    assert client.get("/healthz").json() == {"status": "ok", "routing_version": 1}
    routing = client.get("/v1/routing").json()
    assert routing["version"] == 1
    assert [e["id"] for e in routing["experiments"]] == ["exp-a", "exp-b"]
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"]
    body_schema = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "unit_id" in json.dumps(body_schema)


def test_swap_table_is_whole_and_only_forward(gateway: dict[str, Any]) -> None:
    core: GatewayCore = gateway["core"]
    import dataclasses

    newer = dataclasses.replace(core.table, version=5)
    core.swap_table(newer)
    assert core.table is newer
    core.swap_table(dataclasses.replace(core.table, version=3))
    assert core.table.version == 5


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_prediction_not_declared_as_json_is_refused(
    gateway: dict[str, Any], content_type: str | None
) -> None:
    body = json.dumps({"unit_id": "u", "features": GOOD_FEATURES})
    headers = {"content-type": content_type} if content_type else {}
    r = gateway["client"].post("/v1/predict", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert "Content-Type must be application/json" in r.json()["error"]["message"]
    ok = gateway["client"].post("/v1/predict", content=body,
                                headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.parametrize(("body", "header_id", "needle"), [
    ({"context": {f"k{i}": "v" for i in range(65)}}, None, "context: 65 keys; the limit is 64"),
    ({"context": {"user_id": "x" * 100_000}}, None, "context: user_id is 100000 characters"),
    ({"context": {"k" * 65: "v"}}, None, "keys are 1-64"),
    ({"request_id": "a\x00b"}, None, "request_id"),
    ({"request_id": "a\nforged log line"}, None, "request_id"),
    ({}, "a\x01b", "X-Request-Id: must be printable ASCII"),
    ({}, "a" * 129, "X-Request-Id: is 129 characters"),
])
def test_unbounded_or_unprintable_request_fields_are_refused(
    gateway: dict[str, Any], body: dict[str, Any], header_id: str | None, needle: str
) -> None:
    headers = {"content-type": "application/json"}
    if header_id is not None:
        headers["x-request-id"] = header_id
    r = gateway["client"].post("/v1/predict", headers=headers, content=json.dumps(
        {"unit_id": "u", "features": GOOD_FEATURES, **body}).encode())
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]
