"""Rollouts compose with experiments: a rollout of M from B to C splits only the
traffic that routing would otherwise send to M/B; every other arm keeps its
units; promotion moves the alias and ends the split."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.core.controller import Phase
from rollout.core.guardrails import ArmWindow
from rollout.core.plan import RolloutPlan, parse_plan
from rollout.metrics_source import Snapshot
from rollout.service import RolloutService
from rollout.store import RolloutStore
from serving.kernel.config import RampartConfig, parse_config
from serving.routing.assignment import bucket
from serving.routing.router import (
    Decision,
    RolloutRoute,
    RoutingTable,
    build_routing_table,
    route,
    route_many,
)
from tests.unit.fakes import Clock

pytestmark = pytest.mark.unit

UNITS = [f"user-{i}" for i in range(3000)]
BOUNDS = (0.005, 0.05, float("inf"))


class Registry:
    """Versions 1-4 of ``clf``; ``champion`` -> 1, ``challenger`` -> 2; records alias moves."""

    def __init__(self, fail_alias_moves: bool = False) -> None:
        self.aliases = {"champion": "1", "challenger": "2"}
        self.tags: dict[tuple[str, str, str], str] = {}
        self.fail_alias_moves = fail_alias_moves

    def resolve(self, name: str, version_or_alias: str) -> str:
        version = self.aliases.get(version_or_alias, version_or_alias)
        if name != "clf" or version not in {"1", "2", "3", "4"}:
            raise LookupError(f"no model version {name}/{version_or_alias}")
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if self.fail_alias_moves:
            raise ConnectionError("MLflow is down")
        self.aliases[alias] = version

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        self.tags[(name, version, key)] = value


def config(arms: list[tuple[str, str, int]], default: str = "champion") -> RampartConfig:
    return parse_config({
        "models": [{"name": "clf", "versions": ["champion", "challenger", "1", "2", "3", "4"]}],
        "default": {"model": "clf", "version": default},
        "experiments": [{
            "id": "exp-a", "salt": "salt-a",
            "arms": [{"name": n, "model": "clf", "version": v, "weight_bp": w}
                     for n, v, w in arms],
        }],
    })


def split(weight_bp: int, baseline: str = "1", candidate: str = "4") -> RolloutRoute:
    return RolloutRoute("ro-1", "rollout-ro-1", "user_id", "clf", baseline, candidate, weight_bp)


def assignment(d: Decision) -> tuple[str | None, str, int | None]:
    return (d.experiment_id, d.arm, d.bucket)


# ------------------------------------------------------------------ pure routing

version_refs = st.sampled_from(["champion", "challenger", "1", "2", "3"])


@settings(max_examples=60, deadline=None)
@given(
    arm_versions=st.lists(version_refs, min_size=2, max_size=4),
    weight=st.integers(min_value=0, max_value=10_000),
    baseline=st.sampled_from(["1", "2", "3"]),
)
def test_a_rollout_moves_only_units_that_routing_sent_to_its_baseline(
    arm_versions: list[str], weight: int, baseline: str
) -> None:
    registry = Registry()
    treatments = len(arm_versions) - 1
    arms = [(f"arm{i}", v, 1000) for i, v in enumerate(arm_versions)]
    arms[0] = ("arm0", arm_versions[0], 10_000 - 1000 * treatments)
    cfg = config(arms)
    without = build_routing_table(cfg, registry.resolve)
    with_rollout = build_routing_table(cfg, registry.resolve, 2, [split(weight, baseline)])
    for unit in UNITS[:400]:
        before, during = route(without, unit), route(with_rollout, unit)
        assert assignment(before) == assignment(during)  # experiment units never move
        if before.model.version != baseline:
            assert during.model == before.model and during.rollout_id is None
            assert during.layer == "experiment:exp-a"
            continue
        on_candidate = bucket("rollout-ro-1", unit) < weight
        assert during.model.version == ("4" if on_candidate else baseline)
        assert during.rollout_arm == ("candidate" if on_candidate else "baseline")
        assert during.layer == "rollout:ro-1"


@settings(max_examples=40, deadline=None)
@given(low=st.integers(0, 10_000), high=st.integers(0, 10_000))
def test_ramping_a_rollout_only_adds_units_to_the_candidate(low: int, high: int) -> None:
    low, high = sorted((low, high))
    registry = Registry()
    cfg = config([("control", "champion", 5000), ("treatment", "challenger", 5000)])

    def on_candidate(weight: int) -> set[str]:
        table = build_routing_table(cfg, registry.resolve, 1, [split(weight)])
        return {u for u in UNITS[:1000] if route(table, u).rollout_arm == "candidate"}

    assert on_candidate(low) <= on_candidate(high)


def test_route_many_agrees_with_route_under_a_rollout() -> None:
    registry = Registry()
    cfg = config([("control", "champion", 5000), ("treatment", "challenger", 5000)])
    table = build_routing_table(cfg, registry.resolve, 1, [split(3000)])
    columns = route_many(table, UNITS)
    for i, unit in enumerate(UNITS):
        d = route(table, unit)
        assert (columns["arm"][i], columns["layer"][i], columns["model_version"][i]) == (
            d.arm, d.layer, d.model.version)


def test_two_rollouts_of_one_model_are_refused() -> None:
    registry = Registry()
    cfg = config([("control", "champion", 5000), ("treatment", "challenger", 5000)])
    with pytest.raises(ValueError, match="more than one rollout"):
        build_routing_table(cfg, registry.resolve, 1, [split(10), split(20, "2", "3")])


# ------------------------------------------------------------------ through the control plane


class Counts:
    """Cumulative per-rollout-arm counts, grown as a healthy gateway would."""

    def __init__(self) -> None:
        self.requests = {"baseline": 0, "candidate": 0}

    def grow(self) -> None:
        self.requests["baseline"] += 300
        self.requests["candidate"] += 60

    def snapshot(self, rollout_id: str) -> Snapshot:
        return {arm: ArmWindow(requests=n, errors=0,
                               buckets=tuple((b, float(n)) for b in BOUNDS))
                for arm, n in self.requests.items()}

    def custom(self, plan: RolloutPlan, rollout_id: str) -> dict[str, float | None]:
        return {}


PLAN = {"id": "ro-1", "model_name": "clf", "baseline_version": "1", "candidate_version": "3",
        "steps": [10, 50, 100], "interval_s": 1, "min_requests": 20,
        "guardrails": {"min_check_requests": 5}}


def service_for(tmp_path: Path, cfg: RampartConfig, registry: Registry,
                counts: Counts, clock: Clock) -> RolloutService:
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    return RolloutService(cfg, store, registry, lambda plan: counts, clock)


def run_until_terminal(service: RolloutService, counts: Counts, clock: Clock,
                       seen: list[RoutingTable]) -> Phase:
    for _ in range(20):
        clock.now += 1.0
        counts.grow()
        service.tick()
        seen.append(service.snapshot().table)
        if service.get("ro-1").terminal:
            break
    return service.get("ro-1").phase


def test_an_experiment_keeps_its_units_before_during_and_after_a_promotion(
    tmp_path: Path,
) -> None:
    registry, counts, clock = Registry(), Counts(), Clock()
    # champion (alias -> 1) vs a pinned version 2; the default also reaches 1 by alias.
    cfg = config([("control", "champion", 8000), ("treatment", "2", 2000)])
    service = service_for(tmp_path, cfg, registry, counts, clock)
    before = {u: route(service.snapshot().table, u) for u in UNITS}

    service.create(parse_plan(PLAN))
    seen = [service.snapshot().table]
    phase = run_until_terminal(service, counts, clock, seen)
    assert phase == Phase.PROMOTED and registry.aliases["champion"] == "3"

    during = {u: route(seen[1], u) for u in UNITS}  # a table at the 50% step
    assert seen[1].rollouts[0].weight_bp == 5000
    after_table = service.snapshot().table
    after = {u: route(after_table, u) for u in UNITS}
    assert after_table.rollouts == ()  # the split ended with the promotion
    for unit in UNITS:
        assert assignment(before[unit]) == assignment(during[unit]) == assignment(after[unit])
        b, d, a = before[unit], during[unit], after[unit]
        if b.arm == "treatment":  # pinned to version 2: untouched throughout
            assert b.model.version == d.model.version == a.model.version == "2"
        else:  # reached 1 through the alias: split during, on 3 after
            assert b.model.version == "1" and a.model.version == "3"
            assert d.model.version == ("3" if bucket("rollout-ro-1", unit) < 5000 else "1")
    moved = sum(d.model.version == "3" for d in during.values())
    assert 0 < moved < len(UNITS)
    # No published table sent alias traffic back to the baseline after the 100% step.
    full = next(i for i, t in enumerate(seen) if t.rollouts and t.rollouts[0].weight_bp == 10_000)
    for table in seen[full:]:
        assert route(table, before_unit_on("control", before)).model.version == "3"


def before_unit_on(arm: str, decisions: dict[str, Decision]) -> str:
    return next(u for u, d in decisions.items() if d.arm == arm)


def test_routes_pinned_to_the_baseline_return_to_it_after_promotion(tmp_path: Path) -> None:
    registry, counts, clock = Registry(), Counts(), Clock()
    cfg = config([("control", "champion", 5000), ("pinned", "1", 5000)])
    service = service_for(tmp_path, cfg, registry, counts, clock)
    service.create(parse_plan(PLAN))
    assert run_until_terminal(service, counts, clock, []) == Phase.PROMOTED
    table = service.snapshot().table
    versions = {route(table, u).arm: route(table, u).model.version for u in UNITS[:200]}
    assert versions == {"control": "3", "pinned": "1"}


def test_rollback_returns_every_unit_to_its_configured_version(tmp_path: Path) -> None:
    registry, counts, clock = Registry(), Counts(), Clock()
    cfg = config([("control", "champion", 5000), ("treatment", "2", 5000)])
    service = service_for(tmp_path, cfg, registry, counts, clock)
    before_table = service.snapshot().table
    service.create(parse_plan(PLAN))
    service.command("ro-1", "abort", "test")
    after_table = service.snapshot().table
    assert after_table.rollouts == ()
    for unit in UNITS[:500]:
        assert route(before_table, unit).model == route(after_table, unit).model


def test_a_promotion_that_makes_two_arms_serve_one_version_is_in_the_audit_trail(
    tmp_path: Path,
) -> None:
    registry, counts, clock = Registry(), Counts(), Clock()
    # champion (1) vs challenger (2); rolling 1 -> 2 out makes champion reach 2 as well.
    cfg = config([("control", "champion", 5000), ("treatment", "challenger", 5000)])
    service = service_for(tmp_path, cfg, registry, counts, clock)
    service.create(parse_plan({**PLAN, "candidate_version": "2"}))
    assert run_until_terminal(service, counts, clock, []) == Phase.PROMOTED
    table = service.snapshot().table
    assert table.shared_versions() == [
        "experiment 'exp-a': arms control, treatment all serve clf/2"]
    trail = service.describe("ro-1").audit
    assert any("compares a version with itself" in r["reason"] and "exp-a" in r["reason"]
               for r in trail)


def test_a_failed_alias_move_keeps_the_candidate_serving(tmp_path: Path) -> None:
    registry, counts, clock = Registry(fail_alias_moves=True), Counts(), Clock()
    cfg = config([("control", "champion", 5000), ("treatment", "2", 5000)])
    service = service_for(tmp_path, cfg, registry, counts, clock)
    service.create(parse_plan(PLAN))
    assert run_until_terminal(service, counts, clock, []) == Phase.PROMOTED
    assert registry.aliases["champion"] == "1"
    table = service.snapshot().table
    (remaining,) = table.rollouts
    assert remaining.weight_bp == 10_000  # traffic stays on the candidate, not back on 1
    control = [route(table, u) for u in UNITS[:300] if route(table, u).arm == "control"]
    assert control and {d.model.version for d in control} == {"3"}
    trail = service.describe("ro-1").audit
    assert any("MLflow update failed" in r["reason"] for r in trail)
