"""A unit whose layer bucket falls in an experiment's range but whose context
fails that experiment's targeting gets the default route, is taken by no later
experiment, and is logged under the experiment with arm ``ineligible``; the
analysis counts only the eligible exposed units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rollout.experiments.data import load_experiment
from serving.kernel.config import ConfigError, parse_config
from serving.routing.assignment import buckets_vectorized
from serving.routing.router import (
    DEFAULT_ARM,
    INELIGIBLE_ARM,
    RoutingTable,
    build_routing_table,
    route,
    route_many,
)
from telemetry.decision_log import batch_table
from tests.unit.fakes import InMemoryRegistry
from tests.unit.test_analysis_inputs import (
    AS_OF,
    METRICS,
    config,
    decisions_table,
    first_seen,
    write_logs,
)

ARMS = [{"name": "control", "model": "clf", "version": "champion", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "challenger", "weight_bp": 5000}]
US_ONLY = [{"attribute": "country", "op": "eq", "value": "US"}]
UNITS = [f"user-{i}" for i in range(6000)]


def document(targeting: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Layer ``checkout`` (holdout [0, 1000)) with ``us-only`` on [1000, 6000)
    (``targeting``) and ``open`` on [6000, 8000), [8000, 10000) owned by none;
    then ``free``, outside any layer, which takes every unit that reaches it."""
    return {
        "models": [{"name": "clf", "versions": ["champion", "challenger"]}],
        "default": {"model": "clf", "version": "champion"},
        "layers": [{"id": "checkout", "salt": "layer-checkout", "holdout_bp": 1000}],
        "experiments": [
            {"id": "us-only", "salt": "us-1", "arms": [dict(a) for a in ARMS],
             "layer": "checkout", "layer_buckets": [1000, 6000],
             "targeting": US_ONLY if targeting is None else targeting},
            {"id": "open", "salt": "open-1", "arms": [dict(a) for a in ARMS],
             "layer": "checkout", "layer_buckets": [6000, 8000]},
            {"id": "free", "salt": "free-1", "arms": [dict(a) for a in ARMS]},
        ],
    }


def table(data: dict[str, Any]) -> RoutingTable:
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


def in_range(units: list[str]) -> np.ndarray:
    in_layer = buckets_vectorized("layer-checkout", units)
    return (in_layer >= 1000) & (in_layer < 6000)


def test_an_ineligible_unit_gets_the_default_and_no_later_experiment_takes_it() -> None:
    routing = table(document())
    mine = [u for u, m in zip(UNITS[:2000], in_range(UNITS[:2000]), strict=True) if m]
    assert len(mine) > 500
    for unit in mine:
        outside = route(routing, unit, {"country": "FR"})
        assert (outside.experiment_id, outside.arm, outside.layer) == (
            "us-only", INELIGIBLE_ARM, "layer:checkout")
        assert outside.model == routing.default
        assert outside.arm_weights is None  # no split applied to it
        inside = route(routing, unit, {"country": "US"})
        assert inside.experiment_id == "us-only" and inside.arm in ("control", "treatment")
    # before, the unit went on to "free", the next experiment in the config
    assert not any(route(routing, u, {"country": "FR"}).experiment_id == "free" for u in mine)


def test_outside_layers_an_ineligible_unit_still_goes_on_to_the_next_experiment() -> None:
    data = document()
    data["experiments"][2]["targeting"] = US_ONLY
    data["experiments"].append({"id": "last", "salt": "last-1",
                                "arms": [dict(a) for a in ARMS]})
    routing = table(data)
    reaching_free = [u for u, m in zip(UNITS[:500], in_range(UNITS[:500]), strict=True)
                     if not m and route(routing, u, {"country": "US"}).experiment_id == "free"]
    assert reaching_free
    for unit in reaching_free:
        assert route(routing, unit, {"country": "FR"}).experiment_id == "last"


def test_route_many_marks_the_range_of_a_targeted_layer_experiment_ineligible() -> None:
    routing = table(document())
    columns = route_many(routing, UNITS)
    mine = in_range(UNITS)
    assert (columns["experiment_id"][mine] == "us-only").all()
    assert (columns["arm"][mine] == INELIGIBLE_ARM).all()
    assert (columns["layer"][mine] == "layer:checkout").all()
    assert (columns["model_version"][mine] == routing.default.version).all()
    assert (columns["bucket"][mine] == buckets_vectorized("layer-checkout", UNITS)[mine]).all()
    # and agrees with route() for units without context, unit by unit
    for i in range(0, len(UNITS), 7):
        decision = route(routing, UNITS[i])
        assert (decision.experiment_id, decision.arm, decision.layer, decision.bucket,
                decision.model.version) == (
            columns["experiment_id"][i], columns["arm"][i], columns["layer"][i],
            None if columns["bucket"][i] < 0 else int(columns["bucket"][i]),
            columns["model_version"][i])


def test_route_many_takes_units_a_targeting_the_empty_context_satisfies() -> None:
    routing = table(document([{"attribute": "legacy", "op": "absent"}]))
    columns = route_many(routing, pa.array(UNITS[:3000]))
    mine = in_range(UNITS[:3000])
    assert set(columns["arm"][mine]) == {"control", "treatment"}
    assert DEFAULT_ARM not in set(columns["arm"][mine])


@pytest.mark.parametrize("name", ["ineligible", "holdout"])
def test_an_arm_may_not_take_a_name_the_log_uses_for_unexposed_units(name: str) -> None:
    data = document()
    data["experiments"][1]["arms"][1]["name"] = name
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert f"experiments.1.arms.1.name: arm name {name!r} is reserved" in str(caught.value)


def test_ineligible_and_holdout_rows_in_the_log_do_not_change_the_analysis(
        tmp_path: Path) -> None:
    clean, marked = tmp_path / "clean", tmp_path / "marked"
    write_logs(clean)
    extra = 300
    ids = [f"other-{i}" for i in range(extra)]
    unexposed = batch_table(extra, {
        "request_id": [f"x-{i}" for i in range(extra)], "unit_id": ids,
        "unit_type": "user_id", "experiment_id": "exp", "layer": "layer:checkout",
        "arm": [INELIGIBLE_ARM if i % 3 else "holdout" for i in range(extra)],
        "model_name": "clf", "model_version": "1", "role": "primary",
        "timestamp": first_seen(extra) + 10.0, "features": [{"f0": 1.0}] * extra,
        "prediction": 0.5, "latency_ms": 1.0, "status": "ok",
    })
    write_logs(marked, pa.concat_tables([decisions_table(), unexposed]))
    experiment = config(clean).experiments[0]
    before = load_experiment(clean / "decisions", clean / "outcomes", experiment, METRICS,
                             AS_OF)
    after = load_experiment(marked / "decisions", marked / "outcomes", experiment, METRICS,
                            AS_OF)
    assert after.exposures.n_units == before.exposures.n_units == 400
    assert np.array_equal(after.exposures.arm, before.exposures.arm)
    assert np.array_equal(after.exposures.exposed_at, before.exposures.exposed_at)
    assert after.units == before.units


def test_the_gateway_logs_an_ineligible_unit_under_the_experiment(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from serving.gateway.core import GatewayCore, build_app
    from telemetry.decision_log import DecisionLogWriter, read_decisions
    from telemetry.metrics import RequestMetrics
    from telemetry.tracing import build_tracer_provider
    from tests.unit.fakes import FEATURES

    registry = InMemoryRegistry()
    routing = build_routing_table(parse_config(document()), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version)
               for r in routing.model_refs()}
    writer = DecisionLogWriter(tmp_path / "decisions", "test", batch_rows=1000,
                               flush_interval_s=3600)
    core = GatewayCore(routing, scorers, RequestMetrics(CollectorRegistry()),
                       build_tracer_provider().get_tracer("t"), writer)
    features = {name: 0.1 for name in FEATURES}
    mine = [u for u, m in zip(UNITS[:200], in_range(UNITS[:200]), strict=True) if m]
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={
            "unit_id": u, "features": features, "context": {"country": "FR"}}).json()
            for u in mine]
    writer.flush()
    core.close()
    rows = {r["request_id"]: r for r in read_decisions(tmp_path / "decisions").to_pylist()}
    assert len(rows) == len(mine) > 50
    for answer in answers:
        row = rows[answer["request_id"]]
        assert (row["experiment_id"], row["arm"], row["layer"], row["model_version"]) == (
            "us-only", INELIGIBLE_ARM, "layer:checkout", routing.default.version)
        assert (answer["experiment_id"], answer["arm"]) == ("us-only", INELIGIBLE_ARM)
