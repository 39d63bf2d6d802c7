"""A contextual bandit end to end without Ray: its config, the router's
per-request choice with the propensity it logs, and the controller fitting the
per-arm linear models from the decision and outcome logs (a real SQLite store
and a real rollout service publishing the tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollout.core.bandits.contextual import context_vector, policy_probabilities, update
from serving.kernel.config import RampartConfig
from serving.kernel.errors import ConfigError, ValidationFailed
from serving.routing.router import (
    ContextualModel,
    RoutingTable,
    build_routing_table,
    contextual_config,
    route,
    route_many,
)
from telemetry.decision_log import DECISION_SCHEMA, batch_table
from telemetry.outcomes_log import OutcomeRecord
from telemetry.outcomes_log import records_to_table as outcome_table
from tests.unit.fakes import Clock, make_config
from tests.unit.test_bandit_config import bandit_experiment
from tests.unit.test_bandit_service import Plant

pytestmark = pytest.mark.unit

EXP = "bandit-a"
START = 10_000.0
WINDOW_S = 100.0


def contextual_experiment(**contextual: Any) -> dict[str, Any]:
    experiment = bandit_experiment()
    experiment["bandit"] = {
        "reward": {"metric": "click", "type": "binary", "window_s": WINDOW_S},
        "interval_s": 60, "seed": 5,
        "contextual": {"policy": "linucb", "attributes": ["tenure"], "alpha": 0.5,
                       **contextual}}
    return experiment


def config_of(**contextual: Any) -> RampartConfig:
    return make_config(experiments=[contextual_experiment(**contextual)])


def resolve(name: str, version: str) -> str:
    return version


# ----------------------------------------------------------------------------- config


def test_a_contextual_bandit_needs_no_policy_and_bad_ones_are_refused_by_path() -> None:
    config = config_of()
    spec = config.experiments[0].bandit
    assert spec is not None and spec.contextual is not None and spec.policy is None
    # its arms are summarised by Thompson sampling of the reward's kind
    assert spec.effective_policy().policy == "thompson_beta"
    experiment = bandit_experiment()
    del experiment["bandit"]["policy"]
    with pytest.raises(ConfigError, match="needs a policy, or contextual"):
        make_config(experiments=[experiment])
    with pytest.raises(ConfigError, match=r"bandit\.contextual\.attributes"):
        config_of(attributes=[])
    with pytest.raises(ConfigError, match="listed twice"):
        config_of(attributes=["tenure", "tenure"])
    with pytest.raises(ConfigError, match=r"bandit\.contextual\.policy"):
        config_of(policy="ucb1")


# ----------------------------------------------------------------------------- routing


def fitted_table(config: RampartConfig) -> RoutingTable:
    """The challenger earns on long tenure, the control on short: one batch of
    rewards fitted into each arm's ridge statistics."""
    exp = config.experiments[0]
    cfg = contextual_config(exp)
    from rollout.core.bandits.contextual import initial_state

    state = initial_state(cfg)
    tenure = np.linspace(-2, 2, 200)
    x = np.column_stack([np.ones_like(tenure), tenure])
    state = update(cfg, state, "control", x, 0.5 - 0.2 * tenure)
    state = update(cfg, state, "challenger", x, 0.5 + 0.2 * tenure)
    return build_routing_table(config, resolve, contextual_models={EXP: ContextualModel(state)})


def test_the_router_chooses_by_context_and_logs_the_choice_probability() -> None:
    config = config_of(alpha=0.0)
    table = fitted_table(config)
    exp = config.experiments[0]
    cfg = contextual_config(exp)
    (compiled,) = table.experiments
    assert compiled.contextual is not None
    for tenure, best in ((1.5, "challenger"), (-1.5, "control")):
        x = context_vector({"tenure": tenure}, cfg.attributes)
        expected = policy_probabilities(cfg, compiled.contextual.model.state, x)
        decisions = [route(table, f"user-{i}", {"tenure": tenure}) for i in range(4000)]
        arms = [d.arm for d in decisions]
        share = arms.count(best) / len(arms)
        # LinUCB without exploration: the better arm's probability is 1 − floor
        p_best = expected[[a.name for a in exp.arms].index(best)]
        assert p_best == pytest.approx(0.95)
        assert abs(share - p_best) < 4 * np.sqrt(p_best * (1 - p_best) / len(arms))
        for d in decisions:
            assert d.propensity == pytest.approx(0.95 if d.arm == best else 0.05)
            assert d.experiment_id == EXP and d.model.version in ("champion", "challenger")
    # the same unit and context: the same arm, on any replica holding the table
    again = fitted_table(config)
    assert [route(again, f"user-{i}", {"tenure": 0.3}).arm for i in range(300)] == [
        route(table, f"user-{i}", {"tenure": 0.3}).arm for i in range(300)]
    # a missing attribute reads as 0; one that is not a number is the request's fault
    assert route(table, "user-1", {}).propensity is not None
    with pytest.raises(ValidationFailed, match="tenure"):
        route(table, "user-1", {"tenure": "long"})
    # replay has no context to choose by: the experiment takes no unit there
    assert set(route_many(table, [f"user-{i}" for i in range(100)])["arm"]) == {"default"}
    described = table.describe()["experiments"][0]
    assert described["contextual"]["attributes"] == ["tenure"]
    assert described["contextual"]["rewards_seen"] == {"control": 200, "challenger": 200}
    # no arm owns a share or a range of buckets: the context chooses
    assert [(a["weight_bp"], a["buckets"]) for a in described["arms"]] == [(None, None)] * 2


def test_before_any_reward_the_choice_is_even() -> None:
    table = build_routing_table(config_of(), resolve)
    arms = [route(table, f"user-{i}", {"tenure": 1.0}).arm for i in range(4000)]
    # the prior ties every arm; ties go to the lower index under LinUCB, then
    # the floor: 95% / 5%; linear Thompson splits a tie evenly instead.
    assert arms.count("control") / 4000 == pytest.approx(0.95, abs=0.02)
    table = build_routing_table(config_of(policy="linear_thompson"), resolve)
    arms = [route(table, f"user-{i}", {"tenure": 1.0}).arm for i in range(4000)]
    assert arms.count("control") / 4000 == pytest.approx(0.5, abs=0.04)


# ----------------------------------------------------------------------------- controller


class Logs:
    """Decisions routed one request at a time (the context decides) and the
    clicks of a planted world: the challenger is better for tenure > 0."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.decisions: list[Any] = []
        self.outcomes: list[Any] = []

    def read_decisions(self) -> Any:
        import pyarrow as pa

        return pa.concat_tables(self.decisions) if self.decisions else DECISION_SCHEMA.empty_table()

    def read_outcomes(self) -> Any:
        import pyarrow as pa

        return pa.concat_tables(self.outcomes) if self.outcomes else outcome_table([])

    @staticmethod
    def rate(arm: str, tenure: float) -> float:
        lift = 0.25 if (arm == "challenger") == (tenure > 0) else 0.0
        return 0.1 + lift

    def traffic(self, table: RoutingTable, first: int, n: int, at: float) -> list[Any]:
        tenure = self.rng.choice([-1.0, 1.0], size=n)
        ids = [f"user-{i}" for i in range(first, first + n)]
        decisions = [route(table, u, {"tenure": float(t)}) for u, t in zip(ids, tenure,
                                                                        strict=True)]
        times = at + self.rng.uniform(0, 30, n)
        self.decisions.append(batch_table(n, {
            "request_id": [f"{u}-{at}" for u in ids], "unit_id": ids,
            "unit_type": "user_id", "experiment_id": [d.experiment_id for d in decisions],
            "layer": [d.layer for d in decisions], "arm": [d.arm for d in decisions],
            "role": "primary", "model_name": [d.model.name for d in decisions],
            "model_version": [d.model.version for d in decisions], "timestamp": times,
            "latency_ms": 2.0, "status": "ok", "forced": False,
            # as the gateway logs a context: values as text
            "context": [{"tenure": str(float(t))} for t in tenure],
            "propensity": [d.propensity for d in decisions]}))
        clicked = self.rng.random(n) < np.array(
            [self.rate(d.arm, float(t)) for d, t in zip(decisions, tenure, strict=True)])
        self.outcomes.append(outcome_table([
            OutcomeRecord(u, "click", 1.0, round((t + 10) * 1e6), None, round((t + 10) * 1e6))
            for u, t, c in zip(ids, times, clicked, strict=True) if c]))
        return decisions


def right_arm_share(table: RoutingTable, n: int = 2000) -> float:
    right = 0
    for i in range(n):
        tenure = 1.0 if i % 2 else -1.0
        arm = route(table, f"probe-{i}", {"tenure": tenure}).arm
        right += arm == ("challenger" if tenure > 0 else "control")
    return right / n


def test_the_controller_fits_each_arm_on_its_contexts_and_routing_follows(
        tmp_path: Path) -> None:
    clock, logs = Clock(START), Logs(seed=11)
    config = config_of(alpha=0.2)
    plant = Plant(tmp_path, config, logs, clock)
    before = right_arm_share(plant.table)
    unit = 0
    for round_ in range(4):
        at = START + round_ * 200
        logs.traffic(plant.table, unit, 1500, at)
        unit += 1500
        clock.now = at + 200
        plant.bandits.update(EXP)
    after = right_arm_share(plant.table)
    # the prior sends 95% to the control whatever the tenure: half are right;
    # after four updates 0.95 were (this seed), the floor sending the rest away
    assert before == pytest.approx(0.5, abs=0.03)
    assert after > 0.85, after
    trail = plant.bandits.store.audit_trail(EXP)
    fitted = sum(sum(r["contextual"]["fitted"].values()) for r in trail)
    assert fitted == unit and all(r["contextual"]["unreadable_contexts"] == 0 for r in trail)
    # a restarted controller routes by the stored models at once
    again = Plant(tmp_path, config, logs, clock)
    assert again.table.experiments[0].contextual == plant.table.experiments[0].contextual
    assert right_arm_share(again.table) == after
    # the status reports the policy, not the Thompson weights that route nothing
    report = plant.bandits.describe(EXP)
    assert report.contextual_policy == "linucb" and report.updates == 4
    assert [a.weight_bp for a in report.arms] == [None, None]
    assert sum(a.rewards_seen for a in report.arms) == unit


def test_over_http_a_context_the_model_cannot_read_is_a_422_naming_it() -> None:
    from fastapi.testclient import TestClient

    from serving.gateway.core import GatewayCore, build_app
    from telemetry.metrics import RequestMetrics
    from telemetry.tracing import build_tracer_provider
    from tests.unit.fakes import FEATURES, InMemoryRegistry

    registry = InMemoryRegistry()
    table = build_routing_table(config_of(), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version) for r in table.model_refs()}
    from prometheus_client import CollectorRegistry

    core = GatewayCore(table, scorers, RequestMetrics(CollectorRegistry()),
                       build_tracer_provider().get_tracer("t"))
    row = {name: 0.5 for name in FEATURES}
    with TestClient(build_app(core, None, None)) as client:
        ok = client.post("/v1/predict", json={"unit_id": "u-1", "features": row,
                                               "context": {"tenure": 2.5}})
        bad = client.post("/v1/predict", json={"unit_id": "u-1", "features": row,
                                                "context": {"tenure": "long"}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["arm"] in ("control", "challenger")
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["code"] == "validation_failed"
    assert "tenure" in bad.json()["error"]["message"]


def test_logged_contexts_read_as_the_router_reads_a_request() -> None:
    """Each exposure's vector from its decision's logged context (strings), one
    value at a time against a plain reading: absent 0, true/false 1/0, text
    that is not a finite number not readable (the row is left out)."""
    import math

    import pandas as pd
    import pyarrow as pa

    from rollout.bandit_service import exposure_contexts

    def plain(value: str | None) -> float | None:
        if value is None:
            return 0.0
        if value.strip().lower() in ("true", "false"):
            return float(value.strip().lower() == "true")
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None

    rng = np.random.default_rng(5)
    values = ["1.5", " 2 ", "TRUE", "false", "x", "nan", "1e400", "-3", "", None]
    n = 600
    contexts: list[list[tuple[str, str]] | None] = []
    for _ in range(n):
        pairs = [(k, v) for k in ("a", "b") if rng.random() < 0.8
                 for v in [values[rng.integers(len(values))]] if v is not None]
        contexts.append(None if rng.random() < 0.05 else pairs)
    ts_us = np.arange(n, dtype=np.int64) + 1_800_000_000_000_000
    decisions = pa.table({
        "experiment_id": [EXP] * n, "role": ["primary"] * n,
        "unit_id": [f"u{i % 150}" for i in range(n)],
        "arm": [("control", "challenger")[i % 2] for i in range(n)],
        "timestamp": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
        "context": pa.array(contexts, pa.map_(pa.string(), pa.string()))})
    chosen = rng.choice(n, 250, replace=False)
    exposures = pd.DataFrame({"unit_id": [f"u{i % 150}" for i in chosen],
                              "arm": [("control", "challenger")[i % 2] for i in chosen],
                              "ts_us": ts_us[chosen]})
    vectors, ok = exposure_contexts(decisions, exposures, EXP, ["a", "b", "missing"])
    for row, i in enumerate(chosen):
        found = dict(contexts[i] or [])
        numbers = [plain(found.get(name)) for name in ("a", "b", "missing")]
        assert ok[row] == all(v is not None for v in numbers)
        if ok[row]:
            assert vectors[row].tolist() == [1.0, *numbers]
    assert 0 < ok.sum() < len(chosen)  # both kinds were drawn
