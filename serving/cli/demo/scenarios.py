"""Rollout scenarios over a running gateway: healthy, latency fault, error fault.

Used by the demo, the integration tests and the rollback benchmark. Traffic
flows the whole time from a background client; a fault is injected into the
candidate (``POST /v1/admin/faults``, served by a gateway started with
``chaos=True``) once the rollout has passed its second step, and the result
says how long the candidate kept serving after that.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from serving.cli.demo.models import FEATURE_NAMES
from serving.cli.demo.traffic import platforms_of

Scenario = Literal["healthy", "latency-fault", "error-fault"]
SCENARIOS: tuple[Scenario, ...] = ("healthy", "latency-fault", "error-fault")
TERMINAL = ("promoted", "rolled_back", "aborted")


@dataclass
class Answer:
    at: float
    status: int
    model_version: str | None


@dataclass
class BackgroundTraffic:
    """Steady traffic from a population of users until stopped; keeps every answer."""

    url: str
    concurrency: int = 6
    users: int = 5_000
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BackgroundTraffic:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def _run(self) -> None:
        features = np.random.default_rng(3).normal(size=(self.users, len(FEATURE_NAMES)))
        ids = [f"user-{i:06d}" for i in range(self.users)]
        bodies = [
            {"unit_id": unit, "features": dict(zip(FEATURE_NAMES, row, strict=True)),
             "context": {"platform": platform}}
            for unit, row, platform in zip(ids, features.tolist(), platforms_of(ids), strict=True)
        ]
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:

            async def worker(offset: int) -> None:
                i = offset
                while not self._stop.is_set():
                    i = (i + 7919) % self.users
                    try:
                        r = await client.post("/v1/predict", json=bodies[i])
                        version = r.json().get("model_version") if r.status_code == 200 else None
                        self.answers.append(Answer(time.time(), r.status_code, version))
                    except (httpx.HTTPError, ValueError):
                        self.answers.append(Answer(time.time(), 599, None))

            await asyncio.gather(*(worker(k) for k in range(self.concurrency)))


@dataclass
class ScenarioResult:
    scenario: str
    rollout_id: str
    outcome: str
    interval_s: float
    baseline_version: str
    candidate_version: str
    fault_onset_s: float | None
    rollback_s: float | None
    last_candidate_answer_after_onset_s: float | None
    requests_to_candidate_after_onset: int | None
    requests_total: int
    ok_answers: int
    candidate_weight_at_onset_pct: float | None
    timeline: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AdminClient:
    """Admin API calls with the bearer token. Each call opens and closes its own
    connection, so no caller can leave a socket open."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as client:
            response = client.request(method, path, json=body)
        payload: dict[str, Any] = response.json()
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {payload}")
        return payload


def run_scenario(
    url: str,
    token: str,
    scenario: Scenario,
    model_name: str,
    baseline_version: str,
    candidate_version: str,
    interval_s: float = 1.0,
    failure_limit: int = 2,
    fault_after_step: int = 2,
    timeout_s: float = 180.0,
    on_event: Callable[[str], None] | None = None,
) -> ScenarioResult:
    """Run one rollout under steady traffic; inject the scenario's fault when the
    rollout enters step ``fault_after_step`` (0-based: 2 means after the second step)."""
    admin = AdminClient(url, token)
    say = on_event or (lambda _msg: None)
    traffic = BackgroundTraffic(url).start()
    rollout_id = f"ro-{scenario}-{int(time.time() * 1000) % 10_000_000}"
    plan = {
        "id": rollout_id, "model_name": model_name, "baseline_version": baseline_version,
        "candidate_version": candidate_version, "steps": [1, 5, 25, 50, 100],
        "interval_s": interval_s, "min_requests": 20, "failure_limit": failure_limit,
        "guardrails": {"p99_latency_delta_ms": 50, "error_rate_delta": 0.02,
                       "min_check_requests": 5},
    }
    onset: float | None = None
    weight_at_onset: float | None = None
    fault = {"model_name": model_name, "model_version": candidate_version}
    try:
        time.sleep(1.0)  # baseline traffic before the canary starts
        started = time.time()
        admin.call("POST", "/v1/admin/rollouts", plan)
        say(f"rollout {rollout_id}: v{baseline_version} -> v{candidate_version} started")
        deadline = time.monotonic() + timeout_s
        status = admin.call("GET", f"/v1/admin/rollouts/{rollout_id}")
        seen_steps = -1
        while status["phase"] not in TERMINAL and time.monotonic() < deadline:
            if status["step_index"] != seen_steps:
                seen_steps = status["step_index"]
                say(f"  step {seen_steps + 1}: candidate at {status['weight_bp'] / 100:g}%")
            if (scenario != "healthy" and onset is None
                    and status["step_index"] >= fault_after_step):
                if scenario == "latency-fault":
                    admin.call("POST", "/v1/admin/faults", {**fault, "latency_ms": 250})
                else:
                    admin.call("POST", "/v1/admin/faults", {**fault, "error_rate": 0.3})
                onset = time.time()
                weight_at_onset = status["weight_bp"] / 100
                say(f"  fault injected into v{candidate_version}: {scenario}")
            time.sleep(0.05)
            status = admin.call("GET", f"/v1/admin/rollouts/{rollout_id}")
        time.sleep(0.5)  # let answers in flight land
    finally:
        traffic.stop()
        if onset is not None:
            admin.call("POST", "/v1/admin/faults", fault)  # clear it
    say(f"  {status['phase']}: {status['audit'][-1]['reason'] if status['audit'] else ''}")
    audit = status["audit"]
    rollback_at = next((r["at"] for r in audit if r["to_phase"] in ("rolled_back", "aborted")),
                       None)
    after = [a for a in traffic.answers if onset is not None and a.at >= onset]
    to_candidate = [a for a in after if a.model_version == candidate_version
                    or (a.status >= 500 and a.model_version is None)]
    return ScenarioResult(
        scenario=scenario, rollout_id=rollout_id, outcome=status["phase"], interval_s=interval_s,
        baseline_version=baseline_version, candidate_version=candidate_version,
        fault_onset_s=None if onset is None else round(onset - started, 3),
        rollback_s=None if onset is None or rollback_at is None else round(rollback_at - onset, 3),
        last_candidate_answer_after_onset_s=(
            round(max(a.at for a in to_candidate) - onset, 3)
            if to_candidate and onset is not None else None),
        requests_to_candidate_after_onset=None if onset is None else len(to_candidate),
        requests_total=len(traffic.answers),
        ok_answers=sum(1 for a in traffic.answers if a.status == 200),
        candidate_weight_at_onset_pct=weight_at_onset,
        timeline=[{"t_s": round(r["at"] - started, 3), "from": r["from_phase"],
                   "to": r["to_phase"], "weight_pct": r["weight_bp"] / 100,
                   "reason": r["reason"]} for r in audit],
    )
