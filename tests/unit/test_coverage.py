"""Experiment coverage: an experiment takes a share of its eligible units,
chosen by a bucket of their own, before its arms split them. Raising coverage
only adds units and never moves a covered unit's arm."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.kernel.config import ConfigError, parse_config
from serving.routing.router import RoutingTable, build_routing_table, route, route_many
from tests.unit.fakes import CONFIG_YAML, InMemoryRegistry

UNITS = [f"user-{i}" for i in range(20_000)]


def table(coverage_bp: int, treatment_bp: int = 1000, targeted: bool = False) -> RoutingTable:
    data = yaml.safe_load(CONFIG_YAML)
    first = data["experiments"][0]
    first["coverage_bp"] = coverage_bp
    first["arms"][0]["weight_bp"] = 10_000 - treatment_bp
    first["arms"][1]["weight_bp"] = treatment_bp
    if not targeted:
        first["targeting"] = []
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


def test_coverage_takes_its_share_and_the_rest_goes_on_to_the_next_experiment() -> None:
    columns = route_many(table(2500), UNITS)
    taken = columns["experiment_id"] == "exp-a"
    # binomial: 5000 of 20000 expected, sd 61
    assert abs(int(taken.sum()) - 5000) < 300
    assert set(columns["experiment_id"][~taken]) == {"exp-b"}
    # the arms split the covered units as configured (10% challenger)
    share = np.mean(columns["arm"][taken] == "challenger")
    assert 0.08 < share < 0.12
    # the gateway's scalar path agrees unit for unit
    for i in range(0, len(UNITS), 97):
        decision = route(table(2500), UNITS[i])
        assert (decision.experiment_id, decision.arm) == (
            columns["experiment_id"][i], columns["arm"][i])


def test_no_coverage_takes_nobody_and_full_coverage_everybody() -> None:
    assert "exp-a" not in set(route_many(table(0), UNITS[:2000])["experiment_id"])
    assert set(route_many(table(10_000), UNITS[:2000])["experiment_id"]) == {"exp-a"}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 5_000))
def test_raising_coverage_only_adds_units_and_keeps_their_arms(
        low: int, high: int, treatment_bp: int) -> None:
    low, high = sorted((low, high))
    before = route_many(table(low, treatment_bp), UNITS[:3000])
    after = route_many(table(high, treatment_bp), UNITS[:3000])
    was_in = before["experiment_id"] == "exp-a"
    now_in = after["experiment_id"] == "exp-a"
    assert not (was_in & ~now_in).any()
    assert (before["arm"][was_in] == after["arm"][was_in]).all()
    assert (before["bucket"][was_in] == after["bucket"][was_in]).all()


def test_coverage_applies_to_eligible_units_and_is_shown() -> None:
    targeted = table(5000, targeted=True)
    french = route(targeted, "user-1", {"country": "FR"})
    assert french.experiment_id == "exp-b"  # not eligible, whatever its coverage bucket
    in_us = [route(targeted, u, {"country": "US"}).experiment_id for u in UNITS[:4000]]
    assert abs(in_us.count("exp-a") - 2000) < 200
    assert targeted.describe()["experiments"][0]["coverage_bp"] == 5000


@pytest.mark.parametrize("value", [-1, 10_001, "half"])
def test_a_bad_coverage_is_refused_with_its_path(value: Any) -> None:
    data = yaml.safe_load(CONFIG_YAML)
    data["experiments"][0]["coverage_bp"] = value
    with pytest.raises(ConfigError, match=r"experiments\.0\.coverage_bp"):
        parse_config(data)


def test_the_coverage_bucket_is_independent_of_the_arm_bucket() -> None:
    from scipy import stats

    from serving.routing.assignment import (
        bucket_from_state,
        buckets_vectorized,
        hash_from_state,
        salt_state,
        second_bucket,
        second_buckets_vectorized,
    )

    units = [f"u{i}" for i in range(200_000)]
    arm = buckets_vectorized("salt-a", units)
    coverage = second_buckets_vectorized("salt-a", units)
    state = salt_state("salt-a")
    for i in range(0, len(units), 997):  # the scalar path agrees
        mixed = hash_from_state(state, units[i])
        assert (mixed % 10_000, second_bucket(mixed)) == (arm[i], coverage[i])
        assert bucket_from_state(state, units[i]) == arm[i]
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (arm // 1000, coverage // 1000), 1)
    assert stats.chi2_contingency(counts).pvalue > 0.001
    assert abs(np.mean(coverage < 2500) - 0.25) < 0.005
