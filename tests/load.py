"""Load for reliability tests: a closed loop to measure capacity, an open loop
at a fixed rate, and the gateway replicas' memory.

Both loops send the demo model's requests (stable users and features) over
keep-alive connections of their own, and keep each answer's send time,
latency, status and request id, so a test can compare what clients were
told with what the gateway logged, and one minute's p99 with another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

from serving.cli.demo.traffic import Population
from telemetry.decision_log import read_decisions
from tests.ray_cluster import REPLICA_CLASS

# A row answered more than this before a SIGKILL is never lost. The journal
# writes every 50 ms, so on an idle machine nothing older than ~100 ms is lost;
# under load the journal thread and its fsync wait for the CPU and the disk (a
# CI run on a loaded machine lost one row answered 423 ms before the kill), so
# the tests hold the bound a loaded two-core machine keeps and print the age
# of the oldest row lost, the measured figure.
LOSS_BOUND_S = 1.0


@dataclass
class Answers:
    """Every request a load run sent, in send order."""

    sent_at: list[float] = field(default_factory=list)  # seconds from the run's start
    latency_s: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok_ids(self) -> list[str]:
        return [r for r, s in zip(self.request_ids, self.status, strict=True) if s == 200]

    @property
    def failed(self) -> int:
        return sum(1 for s in self.status if s != 200)

    def throughput(self) -> float:
        return len(self.status) / self.elapsed_s if self.elapsed_s else 0.0

    def p99_ms(self, start_s: float = 0.0, end_s: float = float("inf")) -> float:
        """p99 of the requests sent in ``[start_s, end_s)``."""
        window = [lat for at, lat in zip(self.sent_at, self.latency_s, strict=True)
                  if start_s <= at < end_s]
        return float(np.percentile(window, 99) * 1000) if window else float("nan")


class _Requests:
    """The demo model's request bodies for a fixed population."""

    def __init__(self, tag: str, population: int = 500, seed: int = 3) -> None:
        people = Population(size=population, seed=seed)
        self.users = people.user_ids()
        self.features = people.features().tolist()
        self.platforms = people.platforms()
        self.tag = tag

    def body(self, i: int) -> tuple[str, dict[str, object]]:
        user = i % len(self.users)
        request_id = f"{self.tag}-{i:08d}"
        return request_id, {
            "unit_id": self.users[user], "request_id": request_id,
            "features": {f"f{k}": v for k, v in enumerate(self.features[user])},
            "context": {"platform": self.platforms[user]},
        }


class _Connection:
    """One keep-alive HTTP/1.1 connection written and read by hand: a request
    costs the client tens of microseconds, not the millisecond of a full
    client library, so on a two-core machine the load generator does not
    compete with the gateway for the CPU it is measuring."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(head.encode() + body)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before answering")
                status = int(status_line.split()[1])
                length, close = 0, False
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and value.strip().lower() == "close":
                        close = True
                await self.reader.readexactly(length)
                if close:
                    self.close()
                return status
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # An idle keep-alive connection the server closed just before
                # this request: nothing of it was read, so send it once more
                # on a new connection. Closed twice is a failed request.
                self.close()
                if attempt == 2 or not isinstance(exc, ConnectionResetError):
                    return 599
        return 599

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _send(connection: _Connection, requests: _Requests, i: int, started: float,
                answers: Answers, due: float | None = None) -> None:
    """One request; its latency runs from ``due`` (an open loop's schedule: time
    spent waiting for a free connection counts) or from when it is sent."""
    request_id, body = requests.body(i)
    sent = time.perf_counter() if due is None else due
    try:
        status = await asyncio.wait_for(connection.post("/v1/predict", orjson.dumps(body)), 30)
    except (OSError, TimeoutError):
        connection.close()
        status = 599  # no answer: the connection failed or timed out
    answers.sent_at.append(sent - started)
    answers.latency_s.append(time.perf_counter() - sent)
    answers.status.append(status)
    answers.request_ids.append(request_id)


def _address(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """The test process's objects (a whole suite's modules and fixtures) moved out
    of the garbage collector's reach while a load runs: a full collection of a
    large test-runner heap stalls the client's event loop for hundreds of
    milliseconds, which the open loop would count as the gateway's latency."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def closed_loop(url: str, duration_s: float, concurrency: int = 16, tag: str = "cap"
                ) -> Answers:
    """As many requests as ``concurrency`` clients get answered in ``duration_s``."""

    async def run() -> Answers:
        answers = Answers()
        requests = _Requests(tag)
        counter = iter(range(10**9))
        connections = [_Connection(*_address(url)) for _ in range(concurrency)]
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker(connection: _Connection) -> None:
            while time.perf_counter() < deadline:
                await _send(connection, requests, next(counter), started, answers)

        await asyncio.gather(*(worker(c) for c in connections))
        answers.elapsed_s = time.perf_counter() - started
        for connection in connections:
            connection.close()
        return answers

    with _heap_frozen():
        return asyncio.run(run())


def open_loop(url: str, rate_per_s: float, duration_s: float, tag: str,
              connections: int = 64, on_tick: Callable[[float], None] | None = None
              ) -> Answers:
    """Requests due at ``rate_per_s`` for ``duration_s`` whatever the answers'
    speed (an open loop: a slow gateway meets a queue, and each request's
    latency runs from when it was due, so queueing shows in the p99), sent over
    at most ``connections`` connections. ``on_tick`` (a callable of the
    elapsed seconds) runs about once a second in a thread of its own."""

    async def run() -> Answers:
        answers = Answers()
        requests = _Requests(tag)
        due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        pool = [_Connection(*_address(url)) for _ in range(connections)]
        started = time.perf_counter()

        async def worker(connection: _Connection) -> None:
            while (job := await due.get()) is not None:
                await _send(connection, requests, job[0], started, answers, due=job[1])

        workers = [asyncio.create_task(worker(c)) for c in pool]
        total = int(rate_per_s * duration_s)
        next_tick = 1.0
        ticks: list[asyncio.Future[None]] = []
        for i in range(total):
            when = started + i / rate_per_s
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due.put_nowait((i, when))
            if on_tick is not None and time.perf_counter() - started >= next_tick:
                next_tick += 1.0
                ticks.append(asyncio.ensure_future(
                    asyncio.to_thread(on_tick, time.perf_counter() - started)))
        for _ in pool:
            due.put_nowait(None)
        await asyncio.gather(*workers, *ticks)
        answers.elapsed_s = time.perf_counter() - started
        for connection in pool:
            connection.close()
        return answers

    with _heap_frozen():
        return asyncio.run(run())


def answered_at(answers: Answers) -> dict[str, float]:
    """When each 200 answer arrived, in the load run's seconds."""
    return {request_id: sent + latency for request_id, sent, latency, status in zip(
        answers.request_ids, answers.sent_at, answers.latency_s, answers.status, strict=True)
        if status == 200}


@dataclass(frozen=True)
class RowLoss:
    """What a kill cost the decision log, for the test's printed figures."""

    lost: int  # answered 200 but not logged (all within the bound)
    logged: int  # answered 200 and logged once
    oldest_lost_s: float | None  # how long before the kill the oldest lost row was answered

    def describe(self) -> str:
        if self.oldest_lost_s is None:
            oldest = ""
        elif self.oldest_lost_s < 0:  # a replica answers until it learns its driver died
            oldest = ", all answered after the kill"
        else:
            oldest = f", the oldest answered {self.oldest_lost_s * 1000:.0f} ms before the kill"
        return f"{self.logged} rows logged, {self.lost} answered rows lost{oldest}"


def check_rows(decisions: Path, answers: Answers, killed_at: float) -> RowLoss:
    """Every 200 answered before ``killed_at - LOSS_BOUND_S`` is logged exactly once."""
    logged = read_decisions(decisions)
    ok_rows = Counter(r for r, s in zip(logged["request_id"].to_pylist(),
                                        logged["status"].to_pylist(), strict=True)
                      if s == "ok")
    twice = [r for r, n in ok_rows.items() if n > 1]
    assert not twice, f"{len(twice)} rows logged twice, e.g. {twice[:3]}"
    answered = answered_at(answers)
    missing = {r: at for r, at in answered.items() if r not in ok_rows}
    late = {r: round(killed_at - at, 3) for r, at in missing.items()
            if at < killed_at - LOSS_BOUND_S}
    assert not late, (f"{len(late)} rows answered before the bound were lost, "
                      f"seconds before the kill: {list(late.items())[:5]}")
    # No row of this load that it did not send (other clients may share the log).
    tag = answers.request_ids[0].rsplit("-", 1)[0] + "-"
    assert not {r for r in ok_rows if r.startswith(tag)} - set(answers.request_ids)
    oldest = max((killed_at - at for at in missing.values()), default=None)
    return RowLoss(lost=len(missing), logged=len(answered) - len(missing), oldest_lost_s=oldest)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def replica_pids(root_pid: int | None = None) -> list[int]:
    """The gateway replicas among the descendants of ``root_pid`` (this process:
    the local Ray it started), never another run's on the machine."""
    pending = [root_pid or os.getpid()]
    replicas = []
    while pending:
        pid = pending.pop()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if REPLICA_CLASS.encode() in command:
            replicas.append(pid)
        pending += _children(pid)
    return sorted(replicas)


def rss_mb(pids: list[int]) -> float:
    """The summed resident memory of ``pids``, in MB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024
