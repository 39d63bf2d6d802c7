"""Layers: experiments of a layer own disjoint ranges of the layer's buckets
(a unit is in at most one of them), a layer's holdout is taken by none of
them and served the default route, and two layers allocate independently."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from serving.kernel.config import ConfigError, parse_config
from serving.routing.assignment import buckets_vectorized
from serving.routing.router import (
    HOLDOUT_ARM,
    RoutingTable,
    build_routing_table,
    layer_slots,
    public_routing,
    route,
    route_many,
)
from tests.unit.fakes import InMemoryRegistry

ARMS = [{"name": "control", "model": "clf", "version": "champion", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "challenger", "weight_bp": 5000}]


def arms() -> list[dict[str, Any]]:
    return [dict(arm) for arm in ARMS]


def document(holdout_bp: int = 1000, ranges: tuple[tuple[int, int], ...] = (
        (1000, 4000), (4000, 10_000))) -> dict[str, Any]:
    """Layer ``checkout`` (holdout ``[0, holdout_bp)``) with experiments ``a``,
    ``b``... on ``ranges``; layer ``search`` with ``s1`` on ``[0, 5000)`` and
    ``s2`` on ``[5000, 10000)``; and ``free``, outside any layer."""
    experiments = [{"id": f"exp-{chr(97 + i)}", "salt": f"exp-{i}", "arms": arms(),
                    "layer": "checkout", "layer_buckets": list(r)}
                   for i, r in enumerate(ranges)]
    experiments += [
        {"id": "s1", "salt": "s1", "arms": arms(), "layer": "search",
         "layer_buckets": [0, 5000]},
        {"id": "s2", "salt": "s2", "arms": arms(), "layer": "search",
         "layer_buckets": [5000, 10_000]},
        {"id": "free", "salt": "free", "arms": arms()}]
    return {
        "models": [{"name": "clf", "versions": ["champion", "challenger"]}],
        "default": {"model": "clf", "version": "champion"},
        "layers": [{"id": "checkout", "salt": "layer-checkout", "holdout_bp": holdout_bp},
                   {"id": "search", "salt": "layer-search"}],
        "experiments": experiments,
    }


def table(data: dict[str, Any]) -> RoutingTable:
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


UNITS = [f"user-{i}" for i in range(20_000)]


def test_a_unit_is_in_the_experiment_whose_range_holds_its_layer_bucket() -> None:
    routing = table(document())
    columns = route_many(routing, UNITS)
    in_layer = buckets_vectorized("layer-checkout", UNITS)
    expected = np.where(in_layer < 1000, None, np.where(in_layer < 4000, "exp-a", "exp-b"))
    assert (columns["experiment_id"] == expected).all()
    held = in_layer < 1000
    assert (columns["arm"][held] == HOLDOUT_ARM).all()
    assert (columns["model_version"][held] == "1").all()  # the default route
    assert set(columns["layer"]) == {"layer:checkout"}
    # the scalar path agrees, layer name and all
    for i in range(0, len(UNITS), 101):
        decision = route(routing, UNITS[i])
        assert (decision.experiment_id, decision.arm, decision.layer) == (
            columns["experiment_id"][i], columns["arm"][i], columns["layer"][i])
    held_decision = route(routing, UNITS[int(np.flatnonzero(held)[0])])
    assert held_decision.experiment_id is None and held_decision.arm == HOLDOUT_ARM


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3000), st.lists(st.integers(1, 9999), min_size=1, max_size=4, unique=True))
def test_experiments_of_a_layer_never_share_a_unit_and_the_holdout_is_never_taken(
        holdout_bp: int, cuts: list[int]) -> None:
    edges = sorted({holdout_bp, *[c for c in cuts if c > holdout_bp], 10_000})
    ranges = tuple(itertools.pairwise(edges))
    if not ranges:
        return
    routing = table(document(holdout_bp, ranges))
    slots = layer_slots(routing, UNITS[:3000])["checkout"]
    in_layer = buckets_vectorized("layer-checkout", UNITS[:3000])
    for index, (start, stop) in enumerate(ranges):
        mine = slots == f"exp-{chr(97 + index)}"
        assert (mine == ((in_layer >= start) & (in_layer < stop))).all()
    assert ((slots == HOLDOUT_ARM) == (in_layer < holdout_bp)).all()
    served = route_many(routing, UNITS[:3000])["experiment_id"]
    assert not np.isin(served[in_layer < holdout_bp], [f"exp-{chr(97 + i)}" for i in
                                                       range(len(ranges))]).any()


def test_two_layers_allocate_independently() -> None:
    units = np.char.add("u", np.arange(1_000_000).astype(str)).astype(object)
    slots = layer_slots(table(document()), list(units))
    checkout = np.asarray(slots["checkout"], dtype=str)
    search = np.asarray(slots["search"], dtype=str)
    labels_c, codes_c = np.unique(checkout, return_inverse=True)
    labels_s, codes_s = np.unique(search, return_inverse=True)
    counts = np.zeros((labels_c.size, labels_s.size), dtype=np.int64)
    np.add.at(counts, (codes_c, codes_s), 1)
    result = stats.chi2_contingency(counts)
    assert counts.shape == (3, 2)  # holdout, exp-a, exp-b against s1, s2
    assert result.pvalue > 0.001, (counts, result.pvalue)
    # and the shares are the ranges'
    assert abs(np.mean(checkout == "holdout") - 0.1) < 0.002
    assert abs(np.mean(search == "s1") - 0.5) < 0.002


def test_routing_shows_layers_and_hides_what_lets_a_client_choose() -> None:
    described = table(document()).describe()
    layers = {layer["id"]: layer for layer in described["layers"]}
    assert layers["checkout"]["holdout_bp"] == 1000
    assert layers["checkout"]["experiments"] == ["exp-a", "exp-b"]
    first = described["experiments"][0]
    assert (first["layer"], first["layer_buckets"]) == ("checkout", [1000, 4000])
    public = public_routing(described)
    text = repr({k: v for k, v in public.items() if k != "redacted"})
    assert "layer_buckets" not in text and "holdout_buckets" not in text
    assert "layer-checkout" not in text
    assert public["layers"][0]["holdout_bp"] == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["experiments"][1].update(layer_buckets=[3000, 10_000]),
         "experiments 'exp-a' and 'exp-b' share buckets [3000, 4000)"),
        (lambda d: d["experiments"][0].update(layer_buckets=[500, 4000]),
         "overlap layer 'checkout''s holdout [0, 1000)"),
        (lambda d: d["experiments"][0].update(layer="nope"), "no layer 'nope'"),
        (lambda d: d["experiments"][0].update(unit="session_id"),
         "is by session_id but its layer 'checkout' is by user_id"),
        (lambda d: d["experiments"][0].pop("layer_buckets"), "go together"),
        (lambda d: d["experiments"][0].update(layer_buckets=[4000, 4000]),
         "0 <= start < stop <= 10000"),
        (lambda d: d["layers"].append(d["layers"][0]), "layers listed twice"),
        (lambda d: d["layers"][0].update(holdout_bp=10_001), "layers.0.holdout_bp"),
    ],
)
def test_a_bad_layer_is_refused_with_its_reason(change: Any, message: str) -> None:
    data = document()
    change(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert message in str(caught.value), str(caught.value)


def test_a_layer_is_tried_where_its_first_experiment_is_in_the_config() -> None:
    data = document(holdout_bp=0, ranges=((0, 5000), (5000, 10_000)))
    a, b = data["experiments"][:2]
    free = data["experiments"][-1]
    data["experiments"] = [a, free, b]  # b comes after the unlayered one
    routing = table(data)
    columns = route_many(routing, UNITS[:4000])
    # every unit is the layer's (exp-a or exp-b): the layer is tried at exp-a's
    # place, before "free", whichever of its experiments the unit falls in
    assert set(columns["experiment_id"]) == {"exp-a", "exp-b"}
    assert [route(routing, u).experiment_id for u in UNITS[:400]] == list(
        columns["experiment_id"][:400])


def test_the_gateway_logs_each_decision_with_its_layer_and_holdouts_as_such(
        tmp_path: Any) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from serving.gateway.core import GatewayCore, build_app
    from telemetry.decision_log import DecisionLogWriter, read_decisions
    from telemetry.metrics import RequestMetrics
    from telemetry.tracing import build_tracer_provider
    from tests.unit.fakes import FEATURES

    data = document()
    data["models"][0]["versions"] = ["1", "2"]
    for exp in data["experiments"]:
        for arm, version in zip(exp["arms"], ("1", "2"), strict=True):
            arm["version"] = version
    data["default"]["version"] = "1"
    registry = InMemoryRegistry()
    routing = build_routing_table(parse_config(data), registry.resolve)
    scorers = {(r.name, r.version): registry.load(r.name, r.version)
               for r in routing.model_refs()}
    writer = DecisionLogWriter(tmp_path / "decisions", "test", batch_rows=1000,
                               flush_interval_s=3600)
    core = GatewayCore(routing, scorers, RequestMetrics(CollectorRegistry()),
                       build_tracer_provider().get_tracer("t"), writer)
    features = {name: 0.1 for name in FEATURES}
    with TestClient(build_app(core)) as client:
        answers = [client.post("/v1/predict", json={"unit_id": u, "features": features}).json()
                   for u in UNITS[:300]]
    writer.flush()
    core.close()
    rows = {r["request_id"]: r for r in read_decisions(tmp_path / "decisions").to_pylist()}
    assert len(rows) == 300
    held = 0
    for unit, answer in zip(UNITS[:300], answers, strict=True):
        row = rows[answer["request_id"]]
        expected = route(routing, unit)
        assert (row["experiment_id"], row["arm"], row["layer"]) == (
            expected.experiment_id, expected.arm, expected.layer)
        assert row["layer"] == "layer:checkout"
        held += row["arm"] == HOLDOUT_ARM
    assert 10 < held < 60  # about 10% of 300
