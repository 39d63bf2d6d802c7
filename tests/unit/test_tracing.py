"""OTLP export over real HTTP to a collector stand-in on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from telemetry.tracing import SPAN_NAME, build_tracer_provider


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []  # noqa: RUF012 - one server per test

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.received.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _Collector.received
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_spans_go_to_otlp_when_the_endpoint_is_set(
    collector: tuple[str, list[tuple[str, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    provider = build_tracer_provider()
    span = provider.get_tracer("t").start_span(SPAN_NAME)
    span.set_attributes({"rampart.request_id": "req-otlp-1", "rampart.arm": "control"})
    span.end()
    assert provider.force_flush(10_000)
    provider.shutdown()
    assert [path for path, _ in received] == ["/v1/traces"]
    assert b"req-otlp-1" in received[0][1] and SPAN_NAME.encode() in received[0][1]


def test_no_endpoint_means_no_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    provider = build_tracer_provider()
    span = provider.get_tracer("t").start_span(SPAN_NAME)
    span.end()
    assert span.get_span_context().is_valid  # spans still made, simply not exported


def test_tracing_off_makes_no_span_on_the_request_path() -> None:
    from fastapi.testclient import TestClient

    from serving.gateway.core import build_app
    from telemetry.tracing import build_tracer
    from tests.unit.fakes import make_core

    assert build_tracer("off") is None
    core, prom = make_core(None)
    with TestClient(build_app(core)) as client:
        answer = client.post("/v1/predict", json={
            "unit_id": "u1", "features": {f"f{i}": 1.0 for i in range(8)}})
    assert answer.status_code == 200
    assert prom.get_sample_value("rampart_requests_total", {
        "model_name": "clf", "model_version": "1", "experiment_id": "exp-b",
        "arm": answer.json()["arm"], "rollout_id": "", "rollout_arm": "",
        "status": "ok"}) == 1.0
