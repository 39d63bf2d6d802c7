"""Targeting rules on the request context: each operator, semantic-version
precedence, ``all``/``any``/``not`` composition, refusal at config load with
the rule's path, and routing by composed rules."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from serving.kernel.config import ConfigError, parse_config
from serving.kernel.targeting import (
    AllOf,
    AnyOf,
    NotOf,
    Targeting,
    TargetingRule,
    compile_targeting,
    describe_targeting,
    semver_key,
    targeting_matches,
    targeting_text,
)
from serving.routing.router import build_routing_table, route, route_many
from tests.unit.fakes import CONFIG_YAML, InMemoryRegistry

NODES = TypeAdapter(tuple[Targeting, ...])


def nodes(document: Any) -> tuple[Targeting, ...]:
    return NODES.validate_python(document)


def test_semantic_versions_sort_as_semver_org_says() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0",
               "1.10.0", "2.0.0"]
    keys = [semver_key(v) for v in ordered]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys)
    # a leading v and missing parts read as zeros; build metadata does not count
    assert semver_key("v2.3") == semver_key("2.3.0") == semver_key("2.3.0+build.7")
    for bad in ("", "2.x", "01.2.3", "1.2.3.4", "1.2.3-", "latest", "1..2"):
        assert semver_key(bad) is None, bad


@pytest.mark.parametrize(
    ("rule", "context", "expected"),
    [
        ({"attribute": "country", "op": "in", "values": ["US", "CA"]}, {"country": "CA"}, True),
        ({"attribute": "country", "op": "not_in", "values": ["US"]}, {"country": "US"}, False),
        ({"attribute": "country", "op": "not_in", "values": ["US"]}, {}, False),
        ({"attribute": "tier", "op": "eq", "value": 2}, {"tier": 2}, True),
        ({"attribute": "beta", "op": "ne", "value": True}, {"beta": False}, True),
        ({"attribute": "age", "op": "gte", "value": 30}, {"age": 30}, True),
        ({"attribute": "age", "op": "gt", "value": 30}, {"age": 30.5}, True),
        ({"attribute": "age", "op": "lt", "value": 30}, {"age": 30}, False),
        ({"attribute": "age", "op": "lte", "value": 30}, {"age": "29"}, False),  # a string
        ({"attribute": "age", "op": "gt", "value": 0}, {"age": True}, False),  # a bool
        ({"attribute": "email", "op": "matches", "value": r"@example\.com$"},
         {"email": "ann@example.com"}, True),
        ({"attribute": "email", "op": "matches", "value": r"^ann@"}, {"email": "joann@x"}, False),
        ({"attribute": "email", "op": "matches", "value": "1"}, {"email": 1}, False),
        ({"attribute": "app", "op": "semver_gte", "value": "2.3.0"}, {"app": "2.10.1"}, True),
        ({"attribute": "app", "op": "semver_gte", "value": "2.3.0"},
         {"app": "2.3.0-rc.1"}, False),
        ({"attribute": "app", "op": "semver_lt", "value": "2.3"}, {"app": "v2.2.9"}, True),
        ({"attribute": "app", "op": "semver_eq", "value": "2.3.0"}, {"app": "2.3+7"}, True),
        ({"attribute": "app", "op": "semver_gt", "value": "1.0.0"}, {"app": "newest"}, False),
        ({"attribute": "app", "op": "semver_lte", "value": "1.0.0"}, {"app": 1}, False),
        ({"attribute": "plan", "op": "present"}, {"plan": ""}, True),
        ({"attribute": "plan", "op": "present"}, {}, False),
        ({"attribute": "plan", "op": "absent"}, {}, True),
        ({"attribute": "plan", "op": "absent"}, {"plan": False}, False),
    ],
)
def test_each_operator(rule: dict[str, Any], context: dict[str, Any], expected: bool) -> None:
    parsed = TargetingRule.model_validate(rule)
    assert parsed.matches(context) is expected
    # the routing table's compiled form answers the same, and so after a pickle
    compiled = compile_targeting((parsed,))
    assert compiled(context) is expected
    assert pickle.loads(pickle.dumps(compiled))(context) is expected


def test_nodes_compose() -> None:
    targeting = nodes([
        {"attribute": "country", "op": "in", "values": ["US", "CA"]},
        {"any": [{"attribute": "app", "op": "semver_gte", "value": "2.3.0"},
                 {"not": {"attribute": "legacy", "op": "present"}}]},
    ])
    assert targeting_matches(targeting, {"country": "US", "app": "3.0.0", "legacy": 1})
    assert targeting_matches(targeting, {"country": "US", "app": "1.0.0"})
    assert not targeting_matches(targeting, {"country": "US", "app": "1.0.0", "legacy": 1})
    assert not targeting_matches(targeting, {"country": "FR", "app": "3.0.0"})
    assert targeting_matches((), {})  # no targeting: everyone
    assert nodes([{"all": []}])[0].matches({})
    assert targeting_text(targeting) == (
        "country in [US, CA] and (app semver_gte '2.3.0' or not legacy present)")
    # what GET /v1/routing shows is the config's own form, and reads back the same
    assert nodes(describe_targeting(targeting)) == targeting


_leaf = st.sampled_from([
    {"attribute": "a", "op": "present"},
    {"attribute": "a", "op": "eq", "value": 1},
    {"attribute": "b", "op": "gte", "value": 2},
    {"attribute": "c", "op": "matches", "value": "^x"},
    {"attribute": "d", "op": "semver_lt", "value": "1.5.0"},
])
_tree = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda xs: {"all": xs}),
    st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
    inner.map(lambda x: {"not": x})), max_leaves=8)
_contexts = st.fixed_dictionaries({}, optional={
    "a": st.sampled_from([1, 2, "1"]), "b": st.sampled_from([1, 2, 3.5, "x"]),
    "c": st.sampled_from(["x1", "yx", ""]), "d": st.sampled_from(["1.4.9", "1.5.0", "v2", "?"])})


@settings(max_examples=300, deadline=None)
@given(_tree, _tree, _contexts)
def test_composition_obeys_boolean_algebra(a: Any, b: Any, context: dict[str, Any]) -> None:
    x, y = nodes([a, b])
    holds = {k: n.matches(context) for k, n in (("x", x), ("y", y))}
    assert compile_targeting((x, y))(context) is (holds["x"] and holds["y"])
    assert nodes([{"not": {"not": a}}])[0].matches(context) is holds["x"]
    assert nodes([{"all": [a, b]}])[0].matches(context) is (holds["x"] and holds["y"])
    assert nodes([{"any": [a, b]}])[0].matches(context) is (holds["x"] or holds["y"])
    # De Morgan
    assert nodes([{"not": {"any": [a, b]}}])[0].matches(context) is nodes(
        [{"all": [{"not": a}, {"not": b}]}])[0].matches(context)
    assert isinstance(x, TargetingRule | AllOf | AnyOf | NotOf)


def _config(targeting: Any) -> Any:
    data = yaml.safe_load(CONFIG_YAML)
    data["experiments"][0]["targeting"] = targeting
    return parse_config(data)


@pytest.mark.parametrize(
    ("targeting", "message"),
    [
        ([{"attribute": "email", "op": "matches", "value": "(unclosed"}],
         "experiments.0.targeting.0: pattern '(unclosed' does not compile"),
        ([{"any": [{"attribute": "app", "op": "semver_gte", "value": "2.x"}]}],
         "experiments.0.targeting.0.any.0: op 'semver_gte' needs a semantic version"),
        ([{"not": {"attribute": "a", "op": "regex", "value": "x"}}],
         "experiments.0.targeting.0.not.op: Input should be 'in', 'not_in'"),
        ([{"any": []}], "experiments.0.targeting.0: an 'any' node needs at least one node"),
        ([{"all": [], "any": []}], "experiments.0.targeting.0.any: Extra inputs"),
        ([{"attribute": "a", "op": "present", "value": 1}], "op 'present' takes no 'value'"),
        ([{"attribute": "a", "op": "in", "value": 1}], "needs a non-empty 'values' list"),
        ([{"attribute": "a", "op": "gt", "value": "x"}], "op 'gt' needs a numeric 'value'"),
        ([{"attribute": "a", "op": "matches", "value": "x" * 300}], "at most 256 characters"),
        ([{"attribute": "a", "op": "present"}] * 65, "65 targeting rules; the limit is 64"),
    ],
)
def test_a_bad_rule_is_refused_at_load_with_its_path(targeting: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(targeting)
    assert message in str(caught.value), str(caught.value)
    assert "<" not in str(caught.value)  # no union tag in a path


def test_routing_follows_composed_targeting() -> None:
    config = _config([{"any": [{"attribute": "country", "op": "in", "values": ["US"]},
                               {"attribute": "app", "op": "semver_gte", "value": "3.0.0"}]},
                      {"not": {"attribute": "email", "op": "matches",
                               "value": r"@rampart\.test$"}}])
    table = build_routing_table(config, InMemoryRegistry().resolve)
    assert route(table, "u1", {"country": "FR", "app": "3.1.0"}).experiment_id == "exp-a"
    assert route(table, "u1", {"country": "US"}).experiment_id == "exp-a"
    # staff are excluded, and fall to the next experiment (by session)
    staff = {"country": "US", "email": "qa@rampart.test", "session_id": "s1"}
    assert route(table, "u1", staff).experiment_id == "exp-b"
    assert route(table, "u1", {"country": "FR", "app": "2.9.9"}).experiment_id == "exp-b"
    described = table.describe()["experiments"][0]["targeting"]
    assert described[1] == {"not": {"attribute": "email", "op": "matches",
                                    "value": r"@rampart\.test$"}}


def test_replay_without_context_takes_only_what_an_empty_context_satisfies() -> None:
    # "absent" holds for a unit without context: offline replay routes it as
    # the gateway would
    only_absent = build_routing_table(
        _config([{"attribute": "country", "op": "absent"}]), InMemoryRegistry().resolve)
    units = [f"user-{i}" for i in range(50)]
    columns = route_many(only_absent, units)
    assert set(columns["experiment_id"]) == {"exp-a"}
    assert [route(only_absent, u).arm for u in units] == list(columns["arm"])
    present = build_routing_table(
        _config([{"attribute": "country", "op": "present"}]), InMemoryRegistry().resolve)
    assert set(route_many(present, units)["experiment_id"]) == {"exp-b"}
    assert route(present, "user-1").experiment_id == "exp-b"


def test_a_config_with_composed_targeting_survives_a_round_trip() -> None:
    config = _config([{"not": {"any": [{"attribute": "a", "op": "present"}]}}])
    assert pickle.loads(pickle.dumps(config)) == config  # as replicas receive it
    for by_alias in (False, True):
        assert parse_config(config.model_dump(mode="json", by_alias=by_alias)) == config
