"""The gateway's deadline on reading a request body: a client sending its body
a byte at a time is answered 408 (in the protocol's error shape), cut off and
counted; one that finishes in time is served; a finished body is never timed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serving.gateway.core import GatewayCore, ReadDeadline, build_app
from serving.kernel.errors import RequestTimeout
from telemetry.tracing import build_tracer_provider
from tests.http_server import Served, serve_http
from tests.unit.fakes import FEATURES, make_core

BODY = json.dumps({"unit_id": "u-1", "features": {name: 0.5 for name in FEATURES}}).encode()


@pytest.fixture
def served() -> Iterator[tuple[Served, GatewayCore, CollectorRegistry]]:
    core, prom = make_core(build_tracer_provider().get_tracer("test"))
    with serve_http(build_app(core, read_timeout_s=0.5)) as server:
        yield server, core, prom
    core.close()


def _trickle(server: Served, path: str, body: bytes, every_s: float,
             content_type: str = "application/json") -> tuple[bytes, int]:
    """Send the headers, then the body a byte every ``every_s`` while the
    server listens; return all the server sent and how many body bytes were
    sent before it answered or closed."""
    sent = 0
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        sock.settimeout(every_s)
        received = b""
        for byte in body:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                # The server closed after its answer while this byte was on its
                # way: the kernel answers that byte with a reset. What the server
                # sent before is already in ``received``.
                break
            if chunk == b"":
                break
            if chunk:
                received += chunk
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
        sock.settimeout(5)
        while chunk := _recv(sock):
            received += chunk
    return received, sent


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


def _timeouts(prom: CollectorRegistry) -> float:
    return prom.get_sample_value("rampart_request_read_timeouts_total") or 0.0


def test_a_body_sent_a_byte_at_a_time_is_answered_408_cut_off_and_counted(
    served: tuple[Served, GatewayCore, CollectorRegistry],
) -> None:
    server, _, prom = served
    received, sent = _trickle(server, "/v1/predict", BODY, every_s=0.05)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    # Cut off at the deadline (0.5 s, about 10 bytes in), not after the whole body.
    assert sent < len(BODY) // 2, (sent, len(BODY))
    assert _timeouts(prom) == 1


def test_protocols_answer_the_timeout_in_their_own_error_shape(
    served: tuple[Served, GatewayCore, CollectorRegistry],
) -> None:
    server, _, prom = served
    received, _ = _trickle(server, "/v2/models/demo/infer", b"{" + b" " * 200 + b"}",
                           every_s=0.05)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received[:200]
    assert "did not arrive within 0.5 s" in json.loads(body)["error"]
    assert _timeouts(prom) == 1


def test_a_body_finished_in_time_is_served_and_the_connection_kept(
    served: tuple[Served, GatewayCore, CollectorRegistry],
) -> None:
    server, _, prom = served
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        for _ in range(2):  # keep-alive: the same connection serves the next request
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(len(BODY)).encode()
                         + b"\r\n\r\n")
            for part in (BODY[:20], BODY[20:]):
                sock.sendall(part)
                time.sleep(0.1)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert _timeouts(prom) == 0


def test_a_finished_body_is_never_timed() -> None:
    # After the body, a server's receive waits for the disconnect: the
    # deadline must not turn that wait into an error.
    counted: list[int] = []
    waited: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"{}"
        waited.append(await receive())

    async def receive() -> dict[str, Any]:
        if not waited and not counted and not hasattr(receive, "sent"):
            receive.sent = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    deadline = ReadDeadline(app, timeout_s=0.1, on_timeout=lambda: counted.append(1))
    asyncio.run(deadline({"type": "http"}, receive, send))
    assert waited == [{"type": "http.disconnect"}] and counted == []


def test_a_body_still_coming_at_the_deadline_raises_request_timeout() -> None:
    counted: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.04)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message: Any) -> None:
        pass

    deadline = ReadDeadline(app, timeout_s=0.2, on_timeout=lambda: counted.append(1))
    with pytest.raises(RequestTimeout):
        asyncio.run(deadline({"type": "http"}, receive, send))
    assert counted == [1]


def test_a_read_cancelled_by_someone_else_stays_a_cancellation() -> None:
    """Only the sweeper's cancellation of a read past its deadline is a 408;
    a server cancelling a request (client gone, shutdown) keeps its own."""
    counted: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def cancelled_early() -> None:
        deadline = ReadDeadline(app, timeout_s=5.0, on_timeout=lambda: counted.append(1))
        request = asyncio.ensure_future(deadline({"type": "http"}, receive, send))
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert deadline._waiting == {}

    asyncio.run(cancelled_early())
    assert counted == []
