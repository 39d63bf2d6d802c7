"""Rollout events posted to a real webhook receiver on loopback, and confirm
hooks that gate a rollout's start and steps.

The receiver is a small ASGI app under uvicorn (``tests/http_server.py``). It
records every post and can be told to answer with given statuses or to block
each post until the test releases it, which shows by counting, not timing,
that the controller never waits for a receiver.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rollout.core.controller import AuditRecord, Phase
from rollout.core.plan import parse_plan
from rollout.notify import Notifier, event_kind
from rollout.service import RolloutService
from rollout.store import RolloutStore
from tests.http_server import serve_http
from tests.ports import free_port
from tests.unit.fakes import Clock, WritableRegistry, make_config
from tests.unit.test_rollout_service import PLAN, Counts, tick

WAIT_S = 30.0  # a bound for a broken test to fail by, never a threshold asserted


class Receiver:
    """Records posts per path; answers each path's queued statuses, then 200."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[tuple[str, Any, int]] = []
        self.statuses: dict[str, deque[int]] = {}
        self.default_status = 200
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Semaphore(0)
        self.in_handler = 0

    def answer(self, path: str, *statuses: int) -> None:
        with self.lock:
            self.statuses.setdefault(path, deque()).extend(statuses)

    def answered(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body, status in self.posts if p == path and status < 300]

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            body = await request.json()
            with self.lock:
                self.in_handler += 1
            self.arrived.release()
            # Blocks this request only (in a worker thread), not the server.
            await anyio.to_thread.run_sync(self.release.wait)
            path = request.url.path
            with self.lock:
                self.in_handler -= 1
                queued = self.statuses.get(path)
                status = queued.popleft() if queued else self.default_status
                self.posts.append((path, body, status))
            return JSONResponse({}, status_code=status)

        return Starlette(routes=[Route("/{name}", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    with serve_http(rec.app()) as served:
        try:
            yield rec, f"http://{served.host}:{served.port}"
        finally:
            rec.release.set()  # a blocked handler would hold the server's shutdown


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    sender = Notifier(attempts=3, timeout_s=5.0, backoff_s=0.01)
    yield sender
    sender.close()


def make_service(tmp_path: Path, counts: Counts, clock: Clock,
                 notifier: Notifier | None) -> RolloutService:
    return RolloutService(make_config(experiments=[]),
                          RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}"),
                          WritableRegistry(), lambda plan: counts, clock, notifier=notifier)


def trail_events(service: RolloutService, rollout_id: str) -> list[dict[str, Any]]:
    """The generic bodies the audit trail should have produced, in order."""
    bodies = []
    for row in service.describe(rollout_id).audit:
        record = AuditRecord.model_validate(row)
        kind = event_kind(record)
        if kind is not None:
            bodies.append({"rollout_id": rollout_id, "event": kind, **{
                k: row[k] for k in ("from_phase", "to_phase", "step_index", "weight_bp",
                                    "reason", "figures", "at")}})
    return bodies


def test_events_arrive_in_order_in_both_formats(tmp_path: Path, receiver: tuple[Receiver, str],
                                                notifier: Notifier) -> None:
    rec, base = receiver
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, notifier)
    plan = parse_plan({**PLAN, "notify": [
        {"url": f"{base}/generic"},
        {"url": f"{base}/slack", "format": "slack"},
        {"url": f"{base}/endings", "events": ["promoted", "rolled_back", "aborted"]}]})
    service.create(plan)
    for _ in range(12):
        tick(service, counts, clock)
    assert service.get("ro-1").phase == Phase.PROMOTED
    assert notifier.flush(WAIT_S)

    expected = trail_events(service, "ro-1")
    assert [b["event"] for b in expected] == ["started", "step", "step", "step", "step",
                                              "promoted"]
    assert rec.answered("/generic") == expected
    assert expected[-1]["figures"]["candidate"]["requests"] > 0
    texts = [body["text"] for body in rec.answered("/slack")]
    assert len(texts) == len(expected)
    assert texts[0] == ("Rampart rollout ro-1: started (pending -> progressing, candidate at "
                        "1%) - started: canary at 1.0%")
    assert texts[-1].startswith("Rampart rollout ro-1: promoted (progressing -> promoted, "
                                "candidate at 100%)")
    assert [b["event"] for b in rec.answered("/endings")] == ["promoted"]
    assert (notifier.delivered, notifier.failed, notifier.dropped) == (13, 0, 0)


def test_a_blocked_receiver_never_holds_up_the_ticks(tmp_path: Path,
                                                     receiver: tuple[Receiver, str],
                                                     notifier: Notifier) -> None:
    rec, base = receiver
    rec.release.clear()
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, notifier)
    service.create(parse_plan({**PLAN, "notify": [{"url": f"{base}/generic"}]}))
    # The "started" post is inside the receiver, which holds it until released.
    assert rec.arrived.acquire(timeout=WAIT_S)
    for _ in range(12):
        tick(service, counts, clock)

    # Every tick returned and the rollout finished while the receiver still
    # held the first post: nothing has been answered, the rest wait in the queue.
    assert service.get("ro-1").phase == Phase.PROMOTED
    assert not rec.release.is_set()
    assert rec.answered("/generic") == [] and rec.in_handler == 1
    assert notifier.queued == 5

    rec.release.set()
    assert notifier.flush(WAIT_S)
    assert rec.answered("/generic") == trail_events(service, "ro-1")


def test_a_receiver_that_is_down_costs_the_ticks_nothing(tmp_path: Path,
                                                          notifier: Notifier) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, notifier)
    # Nothing listens there: every post is refused, tried three times, given up.
    service.create(parse_plan({**PLAN, "notify": [
        {"url": f"http://127.0.0.1:{free_port()}/hook"}]}))
    for _ in range(12):
        tick(service, counts, clock)
    assert service.get("ro-1").phase == Phase.PROMOTED
    assert notifier.flush(WAIT_S)
    assert (notifier.delivered, notifier.failed, notifier.dropped) == (0, 6, 0)


def test_a_post_is_retried_until_the_receiver_takes_it(tmp_path: Path,
                                                       receiver: tuple[Receiver, str],
                                                       notifier: Notifier) -> None:
    rec, base = receiver
    rec.answer("/flaky", 503, 500)
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, notifier)
    service.create(parse_plan({**PLAN, "notify": [{"url": f"{base}/flaky"}]}))
    assert notifier.flush(WAIT_S)
    with rec.lock:
        tries = [(body["event"], status) for _, body, status in rec.posts]
    assert tries == [("started", 503), ("started", 500), ("started", 200)]
    assert (notifier.delivered, notifier.failed) == (1, 0)


def test_a_full_queue_drops_the_oldest_and_counts_them(receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.release.clear()
    sender = Notifier(max_queue=2, attempts=1, timeout_s=5.0)
    webhooks = parse_plan({**PLAN, "notify": [{"url": f"{base}/q"}]}).notify
    try:
        def record(index: int) -> AuditRecord:
            return AuditRecord(at=float(index), from_phase=Phase.PROGRESSING,
                               to_phase=Phase.PROGRESSING, step_index=index,
                               weight_bp=100 * index, reason=f"step {index}")

        sender.publish("ro-q", webhooks, [record(0)])
        assert rec.arrived.acquire(timeout=WAIT_S)  # in flight, held by the receiver
        sender.publish("ro-q", webhooks, [record(i) for i in range(1, 6)])
        assert (sender.queued, sender.dropped) == (2, 3)

        rec.release.set()
        assert sender.flush(WAIT_S)
        assert [b["step_index"] for b in rec.answered("/q")] == [0, 4, 5]
        assert (sender.delivered, sender.dropped) == (3, 3)
    finally:
        sender.close()


def test_a_confirm_hook_gates_each_step(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.default_status = 403
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, None)
    service.create(parse_plan({**PLAN, "confirm": {"before_step": f"{base}/confirm"}}))
    assert service.get("ro-1").step_index == 0  # no before_start hook: started at once

    for _ in range(3):
        tick(service, counts, clock)
        state = service.get("ro-1")
        assert (state.phase, state.step_index, state.weight_bp) == (Phase.PROGRESSING, 0, 100)
        assert state.hold_reason == (f"holding: confirm hook before_step ({base}/confirm) "
                                     "answered 403")
        assert state.failed_checks == 0
    with rec.lock:
        asked = [body for path, body, status in rec.posts if path == "/confirm"]
    assert len(asked) == 3
    assert {k: asked[0][k] for k in ("rollout_id", "event", "from_phase", "to_phase",
                                     "step_index", "weight_bp")} == {
        "rollout_id": "ro-1", "event": "confirm-step", "from_phase": "progressing",
        "to_phase": "progressing", "step_index": 1, "weight_bp": 500}
    assert asked[0]["reason"] == "step 1.0% passed; ramping to 5.0%"
    assert service.get("ro-1").phase != Phase.ROLLED_BACK

    rec.default_status = 200
    tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.step_index, state.weight_bp, state.hold_reason) == (1, 500, "")
    # The held windows were judged with the one that advanced: none was lost.
    assert state.last_window is not None and state.last_window.candidate.requests == 120
    assert [r["weight_bp"] for r in service.describe("ro-1").audit] == [100, 500]


def test_a_confirm_hook_gates_the_start(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.answer("/start", 403)
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, None)
    state = service.create(parse_plan({**PLAN, "confirm": {"before_start": f"{base}/start"}}))
    assert (state.phase, state.hold_reason) == (Phase.PENDING,
                                                "waiting for the confirm hook before_start")
    assert rec.posts == []  # asked by the tick, not under create's lock

    tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.phase, state.weight_bp) == (Phase.PENDING, 0)
    assert state.hold_reason == f"holding: confirm hook before_start ({base}/start) answered 403"

    tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.phase, state.step_index, state.weight_bp) == (Phase.PROGRESSING, 0, 100)
    with rec.lock:
        events = [(body["event"], body["to_phase"], status) for _, body, status in rec.posts]
    assert events == [("confirm-start", "progressing", 403), ("confirm-start", "progressing", 200)]


def test_an_unreachable_confirm_hook_holds_and_never_rolls_back(tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock, None)
    url = f"http://127.0.0.1:{free_port()}/confirm"
    service.create(parse_plan({**PLAN, "failure_limit": 1,
                               "confirm": {"before_step": url}}))
    for _ in range(4):
        tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.phase, state.step_index, state.failed_checks) == (Phase.PROGRESSING, 0, 0)
    assert state.hold_reason.startswith(f"holding: confirm hook before_step ({url}) "
                                        "unreachable (ConnectError")
