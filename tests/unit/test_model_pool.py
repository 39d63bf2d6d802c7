"""The worker pool on the request path: a version scored off the event loop
never holds up an inline one, the pool's cap refuses at once, and a version
that raises is a logged model error.

One in-process core serves two versions of a model: ``1`` a folded linear
scorer (inline, on the event loop), ``2`` a scorer that blocks on a
:class:`threading.Event` until the test releases it (worker pool). Requests
go through the FastAPI app on the test's own event loop (httpx's ASGI
transport), so several can be in flight at once; which version a request
gets is chosen by its unit, picked with ``route()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.inputs import InputSchema, columns_schema, row_checker
from models.outputs import Prediction, ScoredBatch
from models.registry import LinearScorer, Scorer
from serving.gateway.core import GatewayCore, build_app
from serving.gateway.pool import ModelPool
from serving.kernel.config import parse_config
from serving.routing.router import build_routing_table, route
from telemetry.decision_log import DecisionLogWriter, read_decisions
from telemetry.metrics import RequestMetrics

pytestmark = pytest.mark.unit

T = TypeVar("T")
FEATURES = ("a", "b")
ROW = {"a": 0.5, "b": -1.0}
FAST, SLOW = "1", "2"
SLOW_ANSWER = 0.25

CONFIG = {
    "models": [{"name": "m", "versions": [FAST, SLOW]}],
    "default": {"model": "m", "version": FAST},
    "experiments": [{"id": "speed", "salt": "pool", "unit": "user_id", "arms": [
        {"name": "fast", "model": "m", "version": FAST, "weight_bp": 5000},
        {"name": "slow", "model": "m", "version": SLOW, "weight_bp": 5000}]}],
}


class BlockingScorer:
    """A version scored in the worker pool that waits for the test's release.

    ``on_enter`` is called (on the worker) as a batch comes in; ``fail``
    makes it raise instead of answer. Scored on an event loop it refuses to
    block (that would hang the loop, and with it this test) and fails instead.
    """

    def __init__(self, fail: Exception | None = None) -> None:
        self.name = "m"
        self.version = SLOW
        self.schema: InputSchema = columns_schema(FEATURES)
        self.inline = False
        self.on_enter: Callable[[], object] = lambda: None
        self.release = threading.Event()
        self.fail = fail
        self.batch_sizes: list[int] = []  # rows of each call, in order
        self._check = row_checker(self.schema)

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._check(row)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # a worker thread: no loop here, as it should be
        else:
            raise RuntimeError("scored on the event loop")
        if self.fail is not None:
            raise self.fail
        self.batch_sizes.append(len(rows))
        self.on_enter()
        self.release.wait()
        return ScoredBatch(tuple(Prediction(SLOW_ANSWER, SLOW_ANSWER) for _ in rows),
                           np.full(len(rows), SLOW_ANSWER))


class Setup:
    """The core, its app's client, the slow scorer and the decision log."""

    def __init__(self, tmp_path: Path, slow: BlockingScorer, pool: ModelPool) -> None:
        config = parse_config(CONFIG)
        table = build_routing_table(config, lambda name, version: version)
        self.fast = LinearScorer("m", FAST, FEATURES, (1.0, 2.0), 0.5, logistic=False)
        self.slow = slow
        scorers: dict[tuple[str, str], Scorer] = {("m", FAST): self.fast, ("m", SLOW): slow}
        self.directory = tmp_path / "decisions"
        self.writer = DecisionLogWriter(self.directory, "pool", batch_rows=10_000,
                                        flush_interval_s=3600)
        self.core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()), None,
                                self.writer, pool=pool)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(self.core)),
                                      base_url="http://gateway")
        # Batches coming into the slow version, signalled from its worker thread.
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        slow.on_enter = lambda: loop.call_soon_threadsafe(self.arrivals.put_nowait, None)

    def units(self, version: str, count: int) -> list[str]:
        """``count`` unit ids the routing table sends to ``version``."""
        found = [u for u in (f"user-{i}" for i in range(10 * count + 50))
                 if route(self.core.table, u).model.version == version]
        assert len(found) >= count
        return found[:count]

    async def predict(self, unit: str, request_id: str) -> httpx.Response:
        return await self.http.post("/v1/predict",
                                    json={"features": ROW, "request_id": request_id},
                                    headers={"X-Rampart-Unit": unit})

    async def arrival_or_answer(self, requests: Sequence[asyncio.Task[httpx.Response]]
                                ) -> bool:
        """True when the next batch comes into the slow version, False when one
        of ``requests`` is answered first."""
        arrival = asyncio.ensure_future(self.arrivals.get())
        done, _ = await asyncio.wait({arrival, *requests},
                                     return_when=asyncio.FIRST_COMPLETED)
        if arrival in done:
            return True
        arrival.cancel()
        return False

    async def entered(self, requests: Sequence[asyncio.Task[httpx.Response]]) -> None:
        """Wait until the first of ``requests`` is blocked inside the slow version
        and the others wait in the pool for its next batch."""
        if not await self.arrival_or_answer(requests):
            answered = [t.result().text for t in requests if t.done()]
            pytest.fail(f"a request was answered before reaching the slow version: "
                        f"{answered}")
        while self.core.pool.pending < len(requests):
            assert not any(t.done() for t in requests)
            await asyncio.sleep(0)

    def decisions(self) -> dict[str, dict[str, Any]]:
        self.writer.flush()
        if not self.directory.exists():  # the writer makes it with its first file
            return {}
        return {r["request_id"]: r for r in read_decisions(self.directory).to_pylist()}

    async def close(self) -> None:
        self.slow.release.set()
        await self.http.aclose()
        self.core.close()


def run(tmp_path: Path, slow: BlockingScorer, pool: ModelPool,
        scenario: Callable[[Setup], Awaitable[T]]) -> tuple[Setup, T]:
    async def main() -> tuple[Setup, T]:
        setup = Setup(tmp_path, slow, pool)
        try:
            return setup, await scenario(setup)
        finally:
            await setup.close()

    return asyncio.run(main())


def test_a_blocked_slow_version_does_not_stall_the_inline_one(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        slow_units, fast_units = s.units(SLOW, 3), s.units(FAST, 5)
        slow = [asyncio.create_task(s.predict(u, f"slow-{i}")) for i, u in enumerate(slow_units)]
        await s.entered(slow)  # one slow request in the version, two waiting for it
        for i, unit in enumerate(fast_units):
            answer = await s.predict(unit, f"fast-{i}")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_version"] == FAST
            assert body["prediction"] == pytest.approx(s.fast.predict_one([0.5, -1.0]))
        # Every fast answer came while the slow ones were still held in the workers.
        assert not any(task.done() for task in slow)
        assert s.core.pool.pending == len(slow)
        s.slow.release.set()
        for answer in await asyncio.gather(*slow):
            assert answer.status_code == 200, answer.text
            assert (answer.json()["model_version"], answer.json()["prediction"]) == (
                SLOW, SLOW_ANSWER)
        assert s.core.pool.pending == 0
        # The two that waited went in one batch: one call for their two rows.
        assert s.slow.batch_sizes == [1, 2]

    setup, _ = run(tmp_path, BlockingScorer(), ModelPool(threads=4, max_pending=100), scenario)
    logged = setup.decisions()
    assert {i: r["model_version"] for i, r in logged.items()} == {
        **{f"slow-{i}": SLOW for i in range(3)}, **{f"fast-{i}": FAST for i in range(5)}}


def test_the_pools_cap_refuses_with_503_then_accepts_again(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        first, second, third, later = s.units(SLOW, 4)
        held = [asyncio.create_task(s.predict(first, "held-0")),
                asyncio.create_task(s.predict(second, "held-1"))]
        await s.entered(held)
        assert s.core.pool.pending == 2  # at the cap of two rows
        over = asyncio.create_task(s.predict(third, "refused"))
        assert not await s.arrival_or_answer([over]), "a request over the cap was scored"
        refused = over.result()
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "overloaded" and error["request_id"] == "refused"
        assert "limit 2" in error["message"]
        mlflow = await s.http.post("/invocations", json={"dataframe_records": [ROW]},
                                   headers={"X-Rampart-Unit": third})
        assert mlflow.status_code == 503, mlflow.text
        assert mlflow.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        v2 = await s.http.post("/v2/models/m/infer", headers={"X-Rampart-Unit": third}, json={
            "inputs": [{"name": n, "shape": [1], "datatype": "FP64", "data": [v]}
                       for n, v in ROW.items()]})
        assert v2.status_code == 503, v2.text
        assert v2.json()["code"] == "overloaded"
        # The inline version takes no place in the pool: it still answers.
        fast = await s.predict(s.units(FAST, 1)[0], "fast")
        assert fast.status_code == 200, fast.text
        s.slow.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert s.core.pool.pending == 0
        again = await s.predict(later, "again")
        assert again.status_code == 200, again.text
        assert again.json()["model_version"] == SLOW

    setup, _ = run(tmp_path, BlockingScorer(), ModelPool(threads=2, max_pending=2), scenario)
    # The refused requests were never scored: they are not decisions.
    assert sorted(setup.decisions()) == ["again", "fast", "held-0", "held-1"]


def test_a_version_that_raises_is_a_500_model_error_logged_as_an_error(
        tmp_path: Path) -> None:
    async def scenario(s: Setup) -> httpx.Response:
        return await s.predict(s.units(SLOW, 1)[0], "broken")

    setup, answer = run(tmp_path, BlockingScorer(fail=ValueError("weights went missing")),
                        ModelPool(threads=2, max_pending=10), scenario)
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["code"] == "model_error" and error["request_id"] == "broken"
    assert "ValueError: weights went missing" in error["message"]
    assert setup.core.pool.pending == 0
    [row] = setup.decisions().values()
    assert (row["request_id"], row["model_version"], row["status"], row["prediction"]) == (
        "broken", SLOW, "error", None)
    assert row["error"] == "ValueError: weights went missing"


class EchoingScorer(BlockingScorer):
    """The blocking version, answering each row's own ``a``: merged requests
    must each get the answers of their own rows."""

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        super().predict_rows(rows, params)
        values = [float(row["a"]) for row in rows]
        return ScoredBatch(tuple(Prediction(v, v) for v in values), np.asarray(values))


def test_waiting_requests_are_scored_together_each_getting_its_own_rows(
        tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        units = s.units(SLOW, 4)

        async def ask(i: int, unit: str) -> httpx.Response:
            return await s.http.post("/v1/predict", headers={"X-Rampart-Unit": unit}, json={
                "features": {"a": float(i), "b": 0.0}, "request_id": f"r-{i}"})

        tasks = [asyncio.create_task(ask(i, u)) for i, u in enumerate(units)]
        await s.entered(tasks)
        # MLflow's protocol answers the model's own output for its rows: never merged.
        mlflow = asyncio.create_task(s.http.post(
            "/invocations", headers={"X-Rampart-Unit": units[0]},
            json={"dataframe_records": [{"a": 7.0, "b": 0.0}, {"a": 8.0, "b": 0.0}]}))
        while s.core.pool.pending < len(tasks) + 2:
            await asyncio.sleep(0)
        s.slow.release.set()
        answers = await asyncio.gather(*tasks)
        assert [a.json()["prediction"] for a in answers] == [0.0, 1.0, 2.0, 3.0]
        assert (await mlflow).json() == {"predictions": [7.0, 8.0]}
        assert s.slow.batch_sizes == [1, 3, 2]

    run(tmp_path, EchoingScorer(), ModelPool(threads=1, max_pending=100), scenario)
