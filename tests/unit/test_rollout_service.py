"""The rollout shell with a real SQLite store, an in-memory registry that
records aliases and tags, and a metrics source whose counts the test sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.registry import RegistryUnavailable
from rollout.commands import LocalControlPlane, execute
from rollout.core.controller import Phase
from rollout.core.guardrails import ArmWindow
from rollout.core.plan import RolloutPlan, parse_plan
from rollout.metrics_source import MetricsUnavailable, Snapshot
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.gateway.core import build_app
from serving.kernel.commands import (
    AlertWebhook,
    CreateRollout,
    DescribeRollout,
    DescribeRouting,
    ListRollouts,
    RolloutCommand,
)
from serving.kernel.errors import (
    InvalidRollout,
    PlanError,
    RampartError,
    RolloutConflict,
    RolloutNotFound,
)
from serving.routing.router import route
from telemetry.tracing import build_tracer_provider
from tests.unit.fakes import Clock, WritableRegistry, make_config, make_core

BOUNDS = (0.005, 0.01, 0.05, 0.1, 0.5, float("inf"))


class Counts:
    """Cumulative per-arm counts that the test grows like a live gateway would."""

    def __init__(self) -> None:
        self.arms: dict[str, list[Any]] = {}
        self.down = False

    def add(self, arm: str, n: int, errors: int = 0, latency_s: float = 0.003) -> None:
        req, err, buckets = self.arms.get(arm, [0, 0, dict.fromkeys(BOUNDS, 0.0)])
        for bound in BOUNDS:
            if latency_s <= bound:
                buckets[bound] += n
        self.arms[arm] = [req + n, err + errors, buckets]

    def snapshot(self, experiment_id: str) -> Snapshot:
        if self.down:
            raise MetricsUnavailable("connection refused")
        return {arm: ArmWindow(requests=r, errors=e, buckets=tuple(sorted(b.items())))
                for arm, (r, e, b) in self.arms.items()}

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        return {}


PLAN = {"id": "ro-1", "model_name": "clf", "baseline_version": "1", "candidate_version": "2",
        "steps": [1, 5, 25, 50, 100], "interval_s": 1, "min_requests": 20, "failure_limit": 2,
        "guardrails": {"p99_latency_delta_ms": 50, "error_rate_delta": 0.02,
                       "min_check_requests": 5}}


def make_service(tmp_path: Path, counts: Counts, clock: Clock,
                 registry: WritableRegistry | None = None) -> RolloutService:
    return RolloutService(make_config(experiments=[]), RolloutStore(
        f"sqlite:///{tmp_path / 'rollouts.db'}"), registry or WritableRegistry(),
        lambda plan: counts, clock)


def tick(service: RolloutService, counts: Counts, clock: Clock, *, candidate_latency: float =
         0.003, candidate_errors: int = 0, n: int = 30) -> None:
    clock.now += 1.0
    counts.add("baseline", n * 9)
    counts.add("candidate", n, errors=candidate_errors, latency_s=candidate_latency)
    service.tick()


def test_healthy_rollout_ramps_publishes_tables_and_moves_the_alias(tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), WritableRegistry()
    service = make_service(tmp_path, counts, clock, registry)
    state = service.create(parse_plan(PLAN))
    assert state.phase == Phase.PROGRESSING and state.weight_bp == 100
    table = service.snapshot().table
    assert table.experiments == ()
    (split,) = table.rollouts
    assert (split.rollout_id, split.baseline.version, split.candidate.version) == ("ro-1", "1", "2")
    versions = [table.version]
    for _ in range(12):
        tick(service, counts, clock)
        versions.append(service.snapshot().table.version)
    final = service.get("ro-1")
    assert final.phase == Phase.PROMOTED and final.weight_bp == 10_000
    assert versions == sorted(versions) and len(set(versions)) >= 5
    assert registry.aliases["champion"] == "2"
    assert '"outcome": "promoted"' in registry.tags[("clf", "2")]["rampart.rollout.ro-1"]
    trail = service.describe("ro-1").audit
    assert [r["weight_bp"] for r in trail] == [100, 500, 2500, 5000, 10_000, 10_000]
    assert [r["to_phase"] for r in trail][-2:] == ["progressing", "promoted"]
    assert all(r["reason"] for r in trail)


def test_latency_fault_rolls_back_and_tags_the_candidate(tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), WritableRegistry()
    service = make_service(tmp_path, counts, clock, registry)
    service.create(parse_plan(PLAN))
    tick(service, counts, clock)
    tick(service, counts, clock, candidate_latency=0.3)
    assert service.get("ro-1").phase == Phase.PROGRESSING
    tick(service, counts, clock, candidate_latency=0.3)
    state = service.get("ro-1")
    assert state.phase == Phase.ROLLED_BACK and state.weight_bp == 0
    assert registry.aliases["champion"] == "1"
    assert "p99_latency_delta" in registry.tags[("clf", "2")]["rampart.rolled_back_reason"]
    # traffic is back on the configured routing: no rollout split in the table
    assert service.snapshot().table.rollouts == ()


def test_metrics_source_down_holds_and_says_why(tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    service.create(parse_plan(PLAN))
    counts.down = True
    for _ in range(10):
        tick(service, counts, clock)
    state = service.get("ro-1")
    assert state.step_index == 0 and "connection refused" in state.hold_reason


def test_restart_resumes_at_the_same_step_with_the_same_assignments(tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    service.create(parse_plan(PLAN))
    for _ in range(4):
        tick(service, counts, clock)
    before = service.get("ro-1")
    table_before = service.snapshot().table
    trail_before = service.describe("ro-1").audit
    assert before.step_index >= 1

    restarted = make_service(tmp_path, counts, clock)  # same store, new process
    after = restarted.get("ro-1")
    assert (after.step_index, after.weight_bp, after.salt) == (
        before.step_index, before.weight_bp, before.salt)
    table_after = restarted.snapshot().table
    assert table_after.version > table_before.version  # never reuses a version
    for i in range(2000):
        assert route(table_after, f"user-{i}").arm == route(table_before, f"user-{i}").arm
    assert restarted.describe("ro-1").audit == trail_before


def test_a_restarted_controller_judges_only_traffic_after_its_start(tmp_path: Path) -> None:
    """The counters a restarted controller first reads hold the rollout's whole
    traffic, healthy before the restart: judged as one window, they would hide
    a candidate failing since. The first snapshot only starts a fresh window."""
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    service.create(parse_plan(PLAN))
    for _ in range(2):
        tick(service, counts, clock, n=3000)  # a lot of healthy traffic before
    before = service.get("ro-1")

    restarted = make_service(tmp_path, counts, clock)
    tick(restarted, counts, clock, candidate_errors=30)  # failing since the restart
    held = restarted.get("ro-1")
    assert (held.step_index, held.weight_bp) == (before.step_index, before.weight_bp)
    assert "fresh window" in held.hold_reason
    for _ in range(2):  # failure_limit 2: judged on fresh windows only, it rolls back
        tick(restarted, counts, clock, candidate_errors=30)
    assert restarted.get("ro-1").phase == Phase.ROLLED_BACK


def test_alertmanager_payload_rolls_back_the_labelled_rollout(tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    service.create(parse_plan(PLAN))
    payload = {"version": "4", "status": "firing", "alerts": [
        {"status": "resolved", "labels": {"alertname": "X", "rollout": "ro-1",
                                          "action": "rollback"}},
        {"status": "firing", "labels": {"alertname": "Other"}},
        # Named, but not a guardrail: notifies, never rolls back.
        {"status": "firing", "labels": {"alertname": "RampartRolloutStuck", "rollout": "ro-1",
                                        "action": "notify"}},
        {"status": "firing", "labels": {"alertname": "Unlabelled", "rollout": "ro-1"}},
        {"status": "firing", "labels": {"alertname": "RampartCandidateP99High",
                                        "rollout": "ro-1", "action": "rollback"},
         "annotations": {"summary": "p99 up"}},
    ]}
    result = service.alert(payload)
    assert (result.rolled_back, result.ignored) == (["ro-1"], 4)
    state = service.get("ro-1")
    assert state.phase == Phase.ROLLED_BACK
    assert "RampartCandidateP99High" in service.describe("ro-1").audit[-1]["reason"]


def test_a_rollout_held_at_a_manual_gate_is_not_rolled_back_by_a_stuck_alert(
        tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    service.create(parse_plan(PLAN))
    service.command("ro-1", "pause", "waiting for sign-off")
    stuck = {"alerts": [{"status": "firing", "labels": {
        "alertname": "RampartRolloutStuck", "rollout": "ro-1", "action": "notify"}}]}
    assert service.alert(stuck).rolled_back == []
    assert service.get("ro-1").phase == Phase.PAUSED
    with pytest.raises(InvalidRollout, match="labels"):
        service.alert({"alerts": [{"labels": "x"}]})


def test_commands_return_typed_results_or_raise_typed_errors(tmp_path: Path) -> None:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)

    def refused(command: Any) -> RampartError:
        with pytest.raises(RampartError) as caught:
            execute(service, command)
        return caught.value

    error = refused(CreateRollout(plan={**PLAN, "steps": [50, 10]}))
    assert isinstance(error, PlanError) and "strictly increase" in error.message
    assert isinstance(refused(CreateRollout(plan={**PLAN, "candidate_version": "9"})),
                      InvalidRollout)
    created = execute(service, CreateRollout(plan=PLAN))
    assert (created.id, created.phase, created.weight_bp) == ("ro-1", "progressing", 100)
    error = refused(CreateRollout(plan={**PLAN, "id": "ro-2"}))
    assert isinstance(error, RolloutConflict) and "still progressing" in error.message
    assert isinstance(refused(DescribeRollout(id="nope")), RolloutNotFound)
    aborted = execute(service, RolloutCommand(id="ro-1", kind="abort", reason="enough"))
    assert aborted.phase == "aborted" and aborted.audit[-1]["reason"]
    assert isinstance(refused(RolloutCommand(id="ro-1", kind="abort")), RolloutConflict)
    assert isinstance(refused(AlertWebhook(payload={"alerts": "x"})), InvalidRollout)
    assert isinstance(refused(AlertWebhook(payload=["not", "an", "object"])), InvalidRollout)
    assert [r.id for r in execute(service, ListRollouts()).rollouts] == ["ro-1"]
    assert execute(service, DescribeRouting()).version == service.snapshot().version


def test_every_refusal_is_answered_in_one_shape(admin: Any) -> None:
    client, _, _ = admin
    auth = {"Authorization": "Bearer s3cret", "x-request-id": "req-7"}
    cases = [
        (client.post("/v1/admin/rollouts", json={**PLAN, "steps": [50, 10]}, headers=auth),
         422, "invalid_plan"),
        (client.get("/v1/admin/rollouts/nope", headers=auth), 404, "rollout_not_found"),
        # this control plane runs no bandits (they run on the controller actor)
        (client.get("/v1/admin/bandits/nope", headers=auth), 404, "bandit_not_found"),
        (client.get("/v1/admin/bandits/nope", headers={"x-request-id": "req-7"}), 401,
         "unauthorized"),
        (client.get("/v1/admin/bandits/nope?audit=1001", headers=auth), 422,
         "validation_failed"),
        (client.get("/v1/admin/bandits/nope?audit=-1", headers=auth), 422, "validation_failed"),
        (client.get("/v1/admin/bandits/nope?audit=\u00b2", headers=auth), 422,
         "validation_failed"),
        (client.get(f"/v1/admin/bandits/nope?audit={'9' * 5000}", headers=auth), 422,
         "validation_failed"),
        (client.post("/v1/admin/rollouts", content=b"{", headers=auth), 400, "invalid_json"),
        (client.post("/v1/admin/alerts", json={"alerts": 1}, headers=auth), 422,
         "invalid_rollout"),
        (client.get("/v1/admin/rollouts", headers={"x-request-id": "req-7"}), 401,
         "unauthorized"),
    ]
    client.post("/v1/admin/rollouts", json=PLAN, headers=auth)
    cases.append((client.post("/v1/admin/rollouts", json={**PLAN, "id": "ro-2"}, headers=auth),
                  409, "rollout_conflict"))
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["request_id"]) == (code, "req-7") and error["message"]


def test_without_a_control_plane_admin_calls_answer_503() -> None:
    core, _ = make_core(build_tracer_provider().get_tracer("t"))
    with TestClient(build_app(core, None, "s3cret")) as client:
        r = client.get("/v1/admin/rollouts", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_control_plane"
        # Chaos testing is not installed: no fault route, no fault code.
        assert client.post("/v1/admin/faults", json={}).status_code == 404


@pytest.fixture
def admin(tmp_path: Path) -> Any:
    counts, clock = Counts(), Clock()
    service = make_service(tmp_path, counts, clock)
    core, _ = make_core(build_tracer_provider().get_tracer("t"))
    with TestClient(build_app(core, LocalControlPlane(service), "s3cret")) as client:
        yield client, service, core


def test_admin_api_needs_the_bearer_token(admin: Any) -> None:
    client, service, _ = admin
    assert client.post("/v1/admin/rollouts", json=PLAN).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/v1/admin/rollouts", json=PLAN, headers=wrong).status_code == 401
    assert client.post("/v1/admin/alerts", json={"alerts": []}).status_code == 401
    assert client.get("/v1/admin/rollouts/ro-1").status_code == 401
    assert service.summaries() == []
    auth = {"Authorization": "Bearer s3cret"}
    created = client.post("/v1/admin/rollouts", json=PLAN, headers=auth)
    assert created.status_code == 201 and created.json()["weight_bp"] == 100
    assert client.post("/v1/admin/rollouts/ro-1/pause", headers=auth).json()["phase"] == "paused"
    assert client.post("/v1/admin/rollouts/ro-1/resume", json={"reason": "ok"},
                       headers=auth).json()["phase"] == "progressing"
    assert client.post("/v1/admin/rollouts", content=b"{", headers=auth).status_code == 400
    listed = client.get("/v1/admin/rollouts", headers=auth).json()["rollouts"]
    assert [r["id"] for r in listed] == ["ro-1"]


def test_admin_api_is_closed_without_a_configured_token(tmp_path: Path) -> None:
    core, _ = make_core(build_tracer_provider().get_tracer("t"))
    service = make_service(tmp_path, Counts(), Clock())
    with TestClient(build_app(core, LocalControlPlane(service), None)) as client:
        r = client.post("/v1/admin/rollouts", json=PLAN,
                        headers={"Authorization": "Bearer "})
        assert r.status_code == 401 and "RAMPART_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_inference_never_changes_routing(admin: Any) -> None:
    client, service, _ = admin
    version = service.snapshot().table.version
    features = {f"f{i}": 0.0 for i in range(8)}
    for body in ({"unit_id": "u", "features": features},
                 {"unit_id": "u", "features": features, "context": {"rollout": "ro-1"}},
                 {"unit_id": "u", "features": features, "context": {"weight_bp": 10000}}):
        client.post("/v1/predict", json=body)
    assert service.snapshot().table.version == version and service.summaries() == []


def test_shadow_attach_and_detach_through_the_admin_api(admin: Any) -> None:
    client, service, _ = admin
    auth = {"Authorization": "Bearer s3cret"}
    r = client.post("/v1/admin/shadows", headers=auth,
                    json={"model": "clf", "version": "2", "sample_bp": 2500})
    assert r.status_code == 200
    assert r.json()["shadows"] == [{"model_name": "clf", "model_version": "2", "alias": None,
                                    "sample_bp": 2500, "salt": "shadow"}]
    assert service.snapshot().table.shadows[0].sample_bp == 2500
    r = client.post("/v1/admin/shadows", headers=auth,
                    json={"model": "clf", "version": "2", "enabled": False})
    assert r.json()["shadows"] == [] and service.snapshot().table.shadows == ()
    bad = client.post("/v1/admin/shadows", headers=auth, json={"model": "clf", "version": "9"})
    assert bad.status_code == 422
    assert client.post("/v1/admin/shadows", json={"model": "clf", "version": "2"}
                       ).status_code == 401


def test_routing_salts_and_buckets_are_for_the_admin_only() -> None:
    core, _ = make_core(build_tracer_provider().get_tracer("t"))
    with TestClient(build_app(core, None, "s3cret")) as client:
        public = client.get("/v1/routing").json()
        wrong = client.get("/v1/routing", headers={"Authorization": "Bearer nope"}).json()
        full = client.get("/v1/routing", headers={"Authorization": "Bearer s3cret"}).json()
    assert public == wrong
    assert public["experiments"] and full["experiments"]
    assert public.pop("redacted") == ["buckets", "candidate_buckets", "holdout_buckets",
                                      "layer_buckets", "salt"]
    text = json.dumps(public)
    assert '"salt"' not in text and '"buckets"' not in text
    # What an operator or a client may know stays: ids, weights and versions.
    assert [[a["weight_bp"] for a in e["arms"]] for e in public["experiments"]] == [
        [a["weight_bp"] for a in e["arms"]] for e in full["experiments"]]
    assert all(e["salt"] and all(a["buckets"] for a in e["arms"] if a["weight_bp"])
               for e in full["experiments"])


# --------------------------------------------------------------- MLflow unreachable


class FlakyRegistry(WritableRegistry):
    """The in-memory registry with a version 3 of ``clf`` and an MLflow that
    the test stops and starts: while down, every call is RegistryUnavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.scorers["3"] = self.scorers["2"]
        self.down = False
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.down:
            raise RegistryUnavailable("no MLflow tracking server answers at http://mlflow")

    def resolve(self, name: str, version_or_alias: str) -> str:
        self.check()
        return super().resolve(name, version_or_alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.check()
        super().set_alias(name, alias, version)


PLAN_TO_3 = {**PLAN, "baseline_version": "1", "candidate_version": "3"}


def flaky_service(tmp_path: Path, counts: Counts, clock: Clock, registry: FlakyRegistry
                  ) -> RolloutService:
    return RolloutService(make_config(experiments=[]), RolloutStore(
        f"sqlite:///{tmp_path / 'rollouts.db'}"), registry, lambda plan: counts, clock,
        registry_check=registry.check)


def served_versions(service: RolloutService) -> set[str]:
    return {ref.version for ref in service.snapshot().table.model_refs()}


def test_mlflow_down_holds_a_running_rollout_and_publishes_nothing(tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), FlakyRegistry()
    service = flaky_service(tmp_path, counts, clock, registry)
    service.create(parse_plan(PLAN_TO_3))
    assert service.get("ro-1").weight_bp == 100
    registry.down = True
    version = service.snapshot().version
    for _ in range(12):  # healthy traffic: it would have promoted by now
        tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.phase, state.step_index, state.weight_bp) == (Phase.PROGRESSING, 0, 100)
    assert "MLflow unreachable" in state.hold_reason
    assert "http://mlflow" in service.describe("ro-1").hold_reason
    assert service.snapshot().version == version  # no table published while held
    assert registry.aliases["champion"] == "1"

    registry.down = False
    for _ in range(12):
        tick(service, counts, clock)
    state = service.get("ro-1")
    assert state.phase == Phase.PROMOTED and registry.aliases["champion"] == "3"


def test_rollout_created_while_mlflow_is_down_holds_unpublished_then_starts(
        tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), FlakyRegistry()
    service = flaky_service(tmp_path, counts, clock, registry)
    registry.down = True
    state = service.create(parse_plan(PLAN_TO_3))
    assert state.phase == Phase.PENDING and state.weight_bp == 0
    assert "MLflow unreachable" in state.hold_reason
    for _ in range(3):
        tick(service, counts, clock)
    # Replicas could not load version 3: no table names it.
    assert "3" not in served_versions(service)
    assert service.get("ro-1").phase == Phase.PENDING

    registry.down = False
    tick(service, counts, clock)
    state = service.get("ro-1")
    assert (state.phase, state.weight_bp, state.hold_reason) == (Phase.PROGRESSING, 100, "")
    assert "3" in served_versions(service)


def test_abort_while_mlflow_is_down_routes_by_the_versions_last_resolved(
        tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), FlakyRegistry()
    service = flaky_service(tmp_path, counts, clock, registry)
    service.create(parse_plan(PLAN_TO_3))
    registry.down = True
    state = service.command("ro-1", "abort", "MLflow is down")
    assert state.phase == Phase.ABORTED
    assert service.snapshot().table.rollouts == ()
    assert served_versions(service) == {"1"}  # the champion, as MLflow last said


def test_a_version_mlflow_no_longer_has_holds_the_rollout(tmp_path: Path) -> None:
    counts, clock, registry = Counts(), Clock(), FlakyRegistry()
    service = flaky_service(tmp_path, counts, clock, registry)
    service.create(parse_plan(PLAN_TO_3))
    del registry.scorers["3"]  # deleted from MLflow under the rollout
    for _ in range(3):
        tick(service, counts, clock)
    state = service.get("ro-1")
    assert state.step_index == 0 and state.hold_reason == "holding: clf/3"


def test_a_shadow_set_while_mlflow_is_down_is_a_503_and_attaches_nothing(
        tmp_path: Path) -> None:
    from serving.kernel.config import ShadowSpec
    from serving.kernel.errors import ModelRegistryUnavailable

    counts, clock, registry = Counts(), Clock(), FlakyRegistry()
    service = flaky_service(tmp_path, counts, clock, registry)
    version = service.snapshot().version
    registry.down = True
    with pytest.raises(ModelRegistryUnavailable) as refused:
        service.set_shadow(ShadowSpec(model="clf", version="3"))
    assert refused.value.status == 503 and "http://mlflow" in refused.value.message
    assert service.snapshot().version == version
    registry.down = False
    assert "3" in {ref.version for ref in service.set_shadow(
        ShadowSpec(model="clf", version="3")).table.model_refs()}
