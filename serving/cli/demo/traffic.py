"""Synthetic traffic from a simulated population of users, over real HTTP.

Used by the demo and by the integration tests: a fixed population of users,
each with stable features, sends requests with bounded concurrency; the
client keeps every answer so callers can compare what the client saw with
what the gateway logged and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from serving.cli.demo.models import FEATURE_NAMES
from serving.kernel.ids import ContextValue
from serving.routing.assignment import buckets_vectorized

# A user's request context, from its id (stable: the same user, the same context).
ContextOf = Callable[[str], dict[str, ContextValue]]


@dataclass(frozen=True)
class Population:
    """``size`` users with stable ids and feature vectors (seeded)."""

    size: int
    seed: int = 7
    shift_f0: float = 0.0  # move f0's distribution (a drifting population)

    def user_ids(self) -> list[str]:
        return [f"user-{i:06d}" for i in range(self.size)]

    def features(self) -> np.ndarray:
        x = np.random.default_rng(self.seed).normal(size=(self.size, len(FEATURE_NAMES)))
        x[:, 0] += self.shift_f0
        return x

    def platforms(self) -> list[str]:
        """Each user's platform, sent as request context (a segment to analyse by)."""
        return platforms_of(self.user_ids())


def platforms_of(user_ids: list[str]) -> list[str]:
    """A stable platform per user id (the same in every simulated population)."""
    buckets = buckets_vectorized("simulated-platform", user_ids)
    labels = np.where(buckets < 4_500, "android", np.where(buckets < 8_000, "ios", "web"))
    return [str(label) for label in labels]


@dataclass
class ClientResult:
    """Every answer one traffic run received."""

    status_codes: list[int] = field(default_factory=list)
    bodies: list[dict[str, object]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    sent_request_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(1 for c in self.status_codes if c == 200)


async def _drive(
    url: str,
    population: Population,
    requests: int,
    concurrency: int,
    seed: int,
    on_progress: Callable[[int], None] | None,
    context_of: ContextOf | None = None,
    spread_s: float | None = None,
) -> ClientResult:
    rng = np.random.default_rng(seed)
    users = population.user_ids()
    features = population.features()
    platforms = population.platforms()
    picks = rng.integers(0, population.size, size=requests)
    result = ClientResult()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                user = int(picks[i])
                request_id = f"req-{seed}-{i:08d}"
                if spread_s is not None:  # request i is due i/requests of the way through
                    due = started + spread_s * i / requests
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                payload = {
                    "unit_id": users[user],
                    "features": dict(zip(FEATURE_NAMES, features[user].tolist(), strict=True)),
                    "request_id": request_id,
                    "context": ({"platform": platforms[user]} if context_of is None
                                else context_of(users[user])),
                }
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", json=payload)
                    code, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    code, body = 599, {"error": {"code": "client", "message": str(exc)}}
                result.latencies_s.append(time.perf_counter() - sent)
                result.status_codes.append(code)
                result.bodies.append(body)
                result.sent_request_ids.append(request_id)
                if on_progress is not None:
                    on_progress(1)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


def drive_traffic(
    url: str,
    population: Population,
    requests: int,
    concurrency: int = 8,
    seed: int = 1,
    on_progress: Callable[[int], None] | None = None,
    context_of: ContextOf | None = None,
    spread_s: float | None = None,
) -> ClientResult:
    """Send ``requests`` predictions from ``population`` to ``url``; keep every answer.

    ``context_of`` gives each user's request context (default: its platform);
    ``spread_s`` spreads the requests evenly over that many seconds instead of
    sending them as fast as the gateway answers (a design over time windows
    needs traffic in every window)."""
    return asyncio.run(_drive(url, population, requests, concurrency, seed, on_progress,
                              context_of, spread_s))


@dataclass(frozen=True)
class VersionRow:
    model_name: str
    model_version: str
    experiment: str  # "-" for the default route
    arm: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    share: float


def summarize(result: ClientResult) -> list[VersionRow]:
    """Per model version, experiment and arm: requests, errors, client-side
    p50/p99, share of traffic. Two experiments may serve one version under the
    same arm name (each its ``control``), so the experiment is part of the key."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    for code, body, latency in zip(
        result.status_codes, result.bodies, result.latencies_s, strict=True
    ):
        key = (
            str(body.get("model_name", "-")),
            str(body.get("model_version", "-")),
            str(body.get("experiment_id") or "-"),
            str(body.get("arm", "-")),
        )
        groups.setdefault(key, []).append((code, latency))
    total = max(1, len(result.status_codes))
    rows = []
    for (name, version, experiment, arm), items in sorted(groups.items()):
        lat_ms = np.array([lat for _, lat in items]) * 1000.0
        rows.append(
            VersionRow(
                name, version, experiment, arm, len(items),
                sum(1 for c, _ in items if c != 200),
                float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99)),
                len(items) / total,
            )
        )
    return rows
