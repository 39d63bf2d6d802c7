"""Chaos testing: inject latency or errors into one model version.

Nothing here is on the request path unless a composition root asks for it
(``start_gateway(..., chaos=True)``: the demo, the rollback benchmark, the
tests). Then:

- :func:`start_fault_board` creates a small actor, :class:`FaultBoard`, that
  holds the faults in force under a version number;
- every replica builds a :class:`ChaosReplica` that wraps each scorer it loads
  in a :class:`FaultyScorer`, follows the board by long-poll (as replicas
  follow routing snapshots) and serves ``POST /v1/admin/faults``.

A latency fault is an ``asyncio.sleep`` in :meth:`FaultyScorer.predict_async`,
which the request path awaits: the replica's event loop keeps serving the
baseline while the faulty candidate waits, so the two arms' latencies stay
apart as they would with a truly slow model.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import ray
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.inputs import InputSchema
from models.outputs import ScoredBatch
from models.registry import Scorer
from serving.gateway.core import JSON, AdminGuard, read_json
from serving.kernel.config import format_validation_error
from serving.kernel.errors import ValidationFailed

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]


class Fault(BaseModel):
    """A fault on one model version; all zeros clears it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    model_version: str
    latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0, le=1)

    @property
    def key(self) -> ModelKey:
        return (self.model_name, self.model_version)

    @property
    def active(self) -> bool:
        return self.latency_ms > 0 or self.error_rate > 0


class Faults(BaseModel):
    """The faults in force, as of one version of the board."""

    model_config = ConfigDict(frozen=True)

    version: int
    faults: tuple[Fault, ...] = ()


class InjectedFault(RuntimeError):
    """Raised by an injected error fault, never by a real model."""


class FaultBoard:
    """The faults in force; :meth:`wait` is a long-poll on their version.

    Plain Python (tests use it directly); on Ray it is the chaos actor.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._faults: dict[ModelKey, Fault] = {}
        self._version = 0

    def ready(self) -> bool:
        return True

    def current(self) -> Faults:
        with self._changed:
            return Faults(version=self._version, faults=tuple(self._faults.values()))

    def set(self, fault: Fault) -> Faults:
        """Put ``fault`` in force on its version (or clear it, when all zeros)."""
        with self._changed:
            if fault.active:
                self._faults[fault.key] = fault
            else:
                self._faults.pop(fault.key, None)
            self._version += 1
            self._changed.notify_all()
        return self.current()

    def wait(self, known_version: int, timeout_s: float) -> Faults | None:
        """The faults as soon as their version is newer than ``known_version``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._version > known_version, timeout_s):
                return None
        return self.current()


class FaultTable:
    """One replica's faults in force; replaced whole, read without a lock."""

    def __init__(self) -> None:
        self.by_key: dict[ModelKey, Fault] = {}
        self.version = -1
        self.random = random.Random()

    def apply(self, faults: Faults) -> None:
        self.by_key = {f.key: f for f in faults.faults}
        self.version = faults.version


class FaultyScorer:
    """A real scorer with its version's faults in force applied."""

    def __init__(self, scorer: Scorer, faults: FaultTable) -> None:
        self.scorer = scorer
        self.faults = faults
        self.key: ModelKey = (scorer.name, scorer.version)

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def version(self) -> str:
        return self.scorer.version

    @property
    def schema(self) -> InputSchema:
        return self.scorer.schema

    @property
    def inline(self) -> bool:
        return self.scorer.inline

    def check_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.scorer.check_row(row)

    def _fails(self, fault: Fault) -> bool:
        return fault.error_rate > 0 and self.faults.random.random() < fault.error_rate

    async def predict_async(self, rows: Sequence[Mapping[str, Any]],
                            params: Mapping[str, Any] | None = None) -> ScoredBatch:
        """What the request path awaits: the delay yields the event loop."""
        fault = self.faults.by_key.get(self.key)
        if fault is not None:
            if fault.latency_ms > 0:
                await asyncio.sleep(fault.latency_ms / 1000.0)
            if self._fails(fault):
                raise InjectedFault("injected error fault")
        if self.scorer.inline:
            return self.scorer.predict_rows(rows, params)
        return await asyncio.to_thread(self.scorer.predict_rows, rows, params)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]],
                     params: Mapping[str, Any] | None = None) -> ScoredBatch:
        """For synchronous callers, which the delay blocks."""
        fault = self.faults.by_key.get(self.key)
        if fault is not None:
            if fault.latency_ms > 0:
                time.sleep(fault.latency_ms / 1000.0)
            if self._fails(fault):
                raise InjectedFault("injected error fault")
        return self.scorer.predict_rows(rows, params)

    def __getattr__(self, name: str) -> Any:
        # The numeric fast path's extras (feature_names, predict_batch), only when
        # the real scorer has them. Shadow scoring runs off the request path and
        # faults target what clients see, so these carry no fault.
        if name == "scorer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.scorer, name)


class ChaosReplica:
    """Chaos inside one replica: wraps scorers, follows the board, serves the route."""

    def __init__(self, board: Any, timeout_s: float = 30.0) -> None:
        self.board = board  # the FaultBoard actor's handle
        self.timeout_s = timeout_s
        self.table = FaultTable()
        self.table.apply(ray.get(board.current.remote(), timeout=60))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="chaos-follower", daemon=True)
        self._thread.start()

    def wrap(self, scorer: Scorer) -> Scorer:
        return FaultyScorer(scorer, self.table)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                faults = ray.get(self.board.wait.remote(self.table.version, self.timeout_s),
                                 timeout=self.timeout_s + 30)
            except Exception:
                log.exception("fault board unreachable; keeping the faults in force")
                self._stop.wait(1.0)
                continue
            if faults is not None:
                self.table.apply(faults)

    def add_routes(self, app: FastAPI, authorize: AdminGuard) -> None:
        @app.post("/v1/admin/faults")
        async def faults(request: Request) -> Response:
            """Inject latency or errors into one model version (all zeros clears it)."""
            authorize(request)
            try:
                fault = Fault.model_validate(await read_json(request))
            except ValidationError as exc:
                raise ValidationFailed("invalid fault:\n" + format_validation_error(exc)
                                       ) from None
            state: Faults = await self.board.set.remote(fault)
            body = {"fault_version": state.version,
                    "faults": [f.model_dump() for f in state.faults]}
            return Response(orjson.dumps(body), media_type=JSON)

    def close(self) -> None:
        self._stop.set()


def start_fault_board() -> Any:
    """Create the chaos actor (on the driver, once Ray is up) and wait until it answers."""
    remote_cls: Any = ray.remote(num_cpus=0, max_concurrency=64)(FaultBoard)  # type: ignore[call-overload]
    board = remote_cls.remote()
    ray.get(board.ready.remote(), timeout=60)
    return board
