from __future__ import annotations

import numpy as np
import pytest

from serving.kernel.config import TargetingRule
from serving.routing.assignment import bucket
from serving.routing.router import build_routing_table, route, route_many, rule_matches
from tests.unit.fakes import InMemoryRegistry, make_config


@pytest.fixture
def table():  # type: ignore[no-untyped-def]
    return build_routing_table(make_config(), InMemoryRegistry().resolve)


def test_aliases_are_resolved_once_into_the_table(table) -> None:  # type: ignore[no-untyped-def]
    refs = {(r.version, r.alias) for r in table.model_refs()}
    assert refs == {("1", "champion"), ("2", "challenger")}
    described = table.describe()
    assert described["version"] == 1
    assert described["experiments"][0]["arms"][1]["buckets"] == [[0, 1000]]


def test_targeted_unit_is_bucketed_by_its_experiment_salt(table) -> None:  # type: ignore[no-untyped-def]
    d = route(table, "user-1", {"country": "US"})
    assert d.experiment_id == "exp-a"
    assert d.bucket == bucket("salt-a", "user-1")
    assert d.arm == ("challenger" if d.bucket < 1000 else "control")


def test_untargeted_unit_falls_to_the_next_experiment_by_session(table) -> None:  # type: ignore[no-untyped-def]
    d = route(table, "user-1", {"country": "FR", "session_id": "s-9"})
    assert (d.experiment_id, d.unit_type, d.unit_id) == ("exp-b", "session_id", "s-9")
    assert d.bucket == bucket("salt-b", "s-9")


def test_unit_no_experiment_takes_gets_the_default(table) -> None:  # type: ignore[no-untyped-def]
    only_targeted = build_routing_table(
        make_config(experiments=[make_config().experiments[0].model_dump()]),
        InMemoryRegistry().resolve,
    )
    d = route(only_targeted, "user-1", {"country": "FR"})
    assert (d.experiment_id, d.arm, d.model.version) == (None, "default", "1")


def test_assignment_is_sticky(table) -> None:  # type: ignore[no-untyped-def]
    first = [route(table, f"u{i}", {"country": "CA"}).arm for i in range(500)]
    again = [route(table, f"u{i}", {"country": "CA"}).arm for i in range(500)]
    assert first == again


def test_route_many_agrees_with_route(table) -> None:  # type: ignore[no-untyped-def]
    units = [f"user-{i}" for i in range(3000)]
    cols = route_many(table, units)
    for i in range(0, 3000, 7):
        d = route(table, units[i])
        assert cols["experiment_id"][i] == d.experiment_id == "exp-b"
        assert cols["arm"][i] == d.arm and cols["bucket"][i] == d.bucket
        assert cols["model_version"][i] == d.model.version
    share = np.mean(cols["arm"] == "treatment")
    assert 0.47 < share < 0.53


@pytest.mark.parametrize(
    ("rule", "context", "expected"),
    [
        (dict(attribute="country", op="in", values=["US"]), {"country": "US"}, True),
        (dict(attribute="country", op="not_in", values=["US"]), {"country": "US"}, False),
        (dict(attribute="country", op="eq", value="US"), {}, False),
        (dict(attribute="age", op="gte", value=30), {"age": 30}, True),
        (dict(attribute="age", op="lt", value=30), {"age": 30}, False),
        (dict(attribute="age", op="gt", value=30), {"age": "old"}, False),
        (dict(attribute="beta", op="ne", value=True), {"beta": False}, True),
    ],
)
def test_targeting_rules(rule, context, expected) -> None:  # type: ignore[no-untyped-def]
    assert rule_matches(TargetingRule(**rule), context) is expected
