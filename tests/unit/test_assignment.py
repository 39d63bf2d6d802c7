from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from serving.routing.assignment import (
    BUCKETS,
    allocate,
    bucket,
    bucket_from_state,
    buckets_vectorized,
    salt_state,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "assignment_v1.csv"


def _reference_bucket(salt: str, unit: str) -> int:
    """Hash version 1 written straight from its specification, independently."""
    h = 0xCBF29CE484222325
    for byte in salt.encode() + b"\x00" + unit.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) % 2**64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) % 2**64
    h ^= h >> 33
    return h % 10_000


def _golden_rows() -> list[tuple[str, str, int]]:
    with GOLDEN.open(encoding="utf-8", newline="") as f:
        return [(r["salt"], r["unit_id"], int(r["bucket"])) for r in csv.DictReader(f)]


def test_golden_file_is_reproduced_by_scalar_reference_and_vectorized_paths() -> None:
    rows = _golden_rows()
    assert len(rows) >= 1000
    for salt, unit, expected in rows:
        assert bucket(salt, unit) == expected, (salt, unit)
        assert _reference_bucket(salt, unit) == expected
    by_salt: dict[str, list[tuple[str, int]]] = {}
    for salt, unit, expected in rows:
        by_salt.setdefault(salt, []).append((unit, expected))
    for salt, items in by_salt.items():
        got = buckets_vectorized(salt, [u for u, _ in items])
        assert got.tolist() == [b for _, b in items]


@settings(max_examples=200, deadline=None)
@given(
    salt=st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
    units=st.lists(st.text(min_size=0, max_size=60), min_size=1, max_size=50),
)
def test_vectorized_agrees_with_scalar_on_any_unicode(salt: str, units: list[str]) -> None:
    units = [u.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for u in units]
    state = salt_state(salt)
    assert buckets_vectorized(salt, units).tolist() == [bucket_from_state(state, u) for u in units]


def test_buckets_are_uniform_over_a_million_units() -> None:
    units = [f"user-{i}" for i in range(1_000_000)]
    counts = np.bincount(buckets_vectorized("uniformity", units), minlength=BUCKETS)
    assert counts.sum() == 1_000_000
    p_value = stats.chisquare(counts).pvalue
    assert p_value > 0.001, p_value


def test_two_salts_assign_independently() -> None:
    units = [f"u{i}" for i in range(200_000)]
    a = buckets_vectorized("salt-a", units) // 500  # 20 coarse cells each
    b = buckets_vectorized("salt-b", units) // 500
    table = np.zeros((20, 20))
    np.add.at(table, (a, b), 1)
    result = stats.chi2_contingency(table)
    assert result.pvalue > 0.001, result.pvalue
    # Being on a 10% canary in one experiment says nothing about another.
    in_a = buckets_vectorized("salt-a", units) < 1000
    in_b = buckets_vectorized("salt-b", units) < 1000
    assert abs(np.mean(in_b[in_a]) - 0.10) < 0.01


def test_allocation_covers_every_bucket_once_with_the_configured_shares() -> None:
    alloc = allocate(["control", "t1", "t2"], [6000, 2500, 1500])
    owners = [alloc.arm_of(b) for b in range(BUCKETS)]
    assert Counter(owners) == {0: 6000, 1: 2500, 2: 1500}
    assert [alloc.share(i) for i in range(3)] == [6000, 2500, 1500]
    assert alloc.arms_of(np.arange(BUCKETS)).tolist() == owners


def test_rollback_to_zero_empties_the_candidate_range() -> None:
    alloc = allocate(["control", "canary"], [10_000, 0])
    assert alloc.ranges[1] == ()
    assert {alloc.arm_of(b) for b in range(BUCKETS)} == {0}


@pytest.mark.parametrize("weights", [[9000, 500], [10_001, -1], [5000, 5000, 1]])
def test_invalid_weights_are_refused(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        allocate([f"a{i}" for i in range(len(weights))], weights)


@settings(max_examples=300, deadline=None)
@given(
    n_treatments=st.integers(1, 4),
    data=st.data(),
)
def test_ramping_one_arm_up_only_adds_buckets_to_it(n_treatments: int, data: st.DataObject) -> None:
    lane = BUCKETS // n_treatments
    before = [data.draw(st.integers(0, lane)) for _ in range(n_treatments)]
    if sum(before) > BUCKETS:
        return
    ramped = data.draw(st.integers(0, n_treatments - 1))
    bigger = data.draw(st.integers(before[ramped], lane))
    after = list(before)
    after[ramped] = bigger
    names = ["control"] + [f"t{i}" for i in range(n_treatments)]
    a1 = allocate(names, [BUCKETS - sum(before), *before])
    a2 = allocate(names, [BUCKETS - sum(after), *after])
    b = np.arange(BUCKETS)
    arm1, arm2 = a1.arms_of(b), a2.arms_of(b)
    for t in range(1, n_treatments + 1):
        if t == ramped + 1:
            # every unit on the ramped arm stays on it
            assert np.all(arm2[arm1 == t] == t)
        else:
            # other treatment arms keep exactly their units
            assert np.array_equal(arm1 == t, arm2 == t)
    # only control units moved, and only onto the ramped arm
    moved = arm1 != arm2
    assert np.all(arm1[moved] == 0) and np.all(arm2[moved] == ramped + 1)


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.integers(0, BUCKETS), min_size=2, max_size=6).map(sorted))
def test_canary_ramp_is_monotone_for_units(steps: list[int]) -> None:
    units = [f"user-{i}" for i in range(5000)]
    buckets = buckets_vectorized("ramp", units)
    previous: set[int] = set()
    for weight in steps:
        alloc = allocate(["baseline", "canary"], [BUCKETS - weight, weight])
        on_canary = set(np.nonzero(alloc.arms_of(buckets) == 1)[0].tolist())
        assert previous <= on_canary
        previous = on_canary
