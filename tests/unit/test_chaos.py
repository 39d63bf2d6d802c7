"""Chaos testing as a scorer wrapper: a latency fault waits without blocking the
replica's event loop, an error fault fails requests as a broken model would,
and a gateway without chaos holds raw scorers."""

from __future__ import annotations

import asyncio
import threading

import orjson
from prometheus_client import CollectorRegistry

from serving.chaos import Fault, FaultBoard, Faults, FaultTable, FaultyScorer
from serving.gateway.core import GatewayCore
from serving.gateway.scorers import LoadedScorers
from serving.routing.router import build_routing_table, route
from telemetry.metrics import RequestMetrics
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import FEATURES, InMemoryRegistry, make_config, make_core

GOOD = {name: 0.1 * i for i, name in enumerate(FEATURES)}


def _core(faults: FaultTable) -> GatewayCore:
    registry = InMemoryRegistry()
    table = build_routing_table(make_config(), registry.resolve)
    scorers = {(r.name, r.version): FaultyScorer(registry.load(r.name, r.version), faults)
               for r in table.model_refs()}
    return GatewayCore(table, LoadedScorers(scorers), RequestMetrics(CollectorRegistry()),
                       build_tracer_provider().get_tracer("t"))


def _session_on(core: GatewayCore, version: str) -> bytes:
    """A request body that routing sends to ``version``."""
    for i in range(1000):
        context = {"session_id": f"s{i}"}
        if route(core.table, "u", context).model.version == version:
            return orjson.dumps({"unit_id": "u", "features": GOOD, "context": context})
    raise AssertionError(f"no session routed to version {version}")


def test_a_latency_fault_waits_without_blocking_other_requests() -> None:
    faults = FaultTable()
    faults.apply(Faults(version=1, faults=(
        Fault(model_name="clf", model_version="2", latency_ms=30_000),)))
    core = _core(faults)

    async def scenario() -> None:
        slow = asyncio.create_task(core.predict(_session_on(core, "2")))
        await asyncio.sleep(0)  # the slow request is now waiting on its fault
        fast = await core.predict(_session_on(core, "1"))
        assert fast.status_code == 200
        assert orjson.loads(fast.body)["model_version"] == "1"
        assert not slow.done()  # still held by its 30 s fault, yet the loop served others
        slow.cancel()

    asyncio.run(scenario())


def test_an_error_fault_fails_like_a_broken_model_and_clears() -> None:
    faults = FaultTable()
    faults.apply(Faults(version=1, faults=(
        Fault(model_name="clf", model_version="1", error_rate=1.0),)))
    core = _core(faults)
    body = _session_on(core, "1")
    failed = asyncio.run(core.predict(body))
    assert failed.status_code == 500
    assert "injected error fault" in orjson.loads(failed.body)["error"]["message"]
    faults.apply(Faults(version=2))
    assert asyncio.run(core.predict(body)).status_code == 200


def test_without_chaos_the_core_holds_raw_scorers() -> None:
    core, _ = make_core(build_tracer_provider().get_tracer("t"))
    assert core.loaded.awaited == {}
    assert not any(isinstance(s, FaultyScorer) for s in core.scorers.values())


def test_the_fault_board_is_a_long_poll_on_its_version() -> None:
    board = FaultBoard()
    assert board.wait(0, timeout_s=0.01) is None
    got: list[Faults | None] = []
    waiter = threading.Thread(target=lambda: got.append(board.wait(0, timeout_s=30)))
    waiter.start()
    board.set(Fault(model_name="clf", model_version="2", latency_ms=250))
    waiter.join(10)
    assert got and got[0] is not None and got[0].version == 1
    assert [f.latency_ms for f in got[0].faults] == [250]
    cleared = board.set(Fault(model_name="clf", model_version="2"))  # all zeros clears
    assert (cleared.version, cleared.faults) == (2, ())
