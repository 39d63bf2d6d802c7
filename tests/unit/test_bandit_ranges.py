"""Sticky bucket ranges: exactly the sum of the decreases changes arm, and the
layout stays in few ranges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.core.bandits.arms import InvalidBanditInput
from rollout.core.bandits.ranges import from_segments, rebalance, segments_of
from serving.routing.assignment import BUCKETS, Allocation, BucketRange, allocate

pytestmark = pytest.mark.unit

ALL_BUCKETS = np.arange(BUCKETS, dtype=np.int64)


def _weights(k: int) -> st.SearchStrategy[list[int]]:
    """k non-negative weights summing to 10,000 (zeros included), from k − 1 cuts."""
    return st.lists(st.integers(0, BUCKETS), min_size=k - 1, max_size=k - 1).map(
        lambda cuts: [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), BUCKETS],
                                            strict=True)])


@st.composite
def _weight_sequences(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    k = draw(st.integers(2, 6))
    steps = draw(st.lists(_weights(k), min_size=1, max_size=12))
    return k, steps


def _check_tables(alloc: Allocation) -> None:
    """The lookup tables are those ``allocate`` builds, with maximal segments."""
    starts, arms = alloc.lookup_starts, alloc.lookup_arms
    assert starts[0] == 0 and list(starts) == sorted(starts)
    assert all(a != b for a, b in itertools.pairwise(arms))
    for arm, ranges in enumerate(alloc.ranges):
        for r in ranges:
            assert alloc.arm_of(r.start) == arm and alloc.arm_of(r.stop - 1) == arm
    assert sum(alloc.share(i) for i in range(len(alloc.arm_names))) == BUCKETS


@settings(max_examples=300)
@given(_weight_sequences())
def test_only_the_sum_of_decreases_moves(case: tuple[int, list[list[int]]]) -> None:
    k, steps = case
    names = [f"v{i}" for i in range(k)]
    alloc = allocate(names, [BUCKETS - (k - 1) * (BUCKETS // k)] + [BUCKETS // k] * (k - 1))
    for weights in steps:
        before = alloc.arms_of(ALL_BUCKETS)
        old = [alloc.share(i) for i in range(k)]
        segments_before = len(segments_of(alloc))
        alloc = rebalance(alloc, weights)
        after = alloc.arms_of(ALL_BUCKETS)
        _check_tables(alloc)
        assert [alloc.share(i) for i in range(k)] == weights
        moved = before != after
        decreases = [max(o - n, 0) for o, n in zip(old, weights, strict=True)]
        assert int(moved.sum()) == sum(decreases)
        for arm in range(k):
            # An arm gives up exactly its decrease and takes only when it grows.
            assert int((moved & (before == arm)).sum()) == decreases[arm]
            if weights[arm] <= old[arm]:
                assert not np.any(moved & (after == arm))
        # The fragmentation bound: a rebalance adds at most k − 1 ranges, and two
        # arms never hold more than two.
        assert len(segments_of(alloc)) <= segments_before + k - 1
        if k == 2:
            assert len(segments_of(alloc)) <= 2


def test_two_arms_stay_in_two_ranges() -> None:
    rng = np.random.default_rng(0)
    alloc = allocate(["control", "canary"], [5_000, 5_000])
    for _ in range(300):
        w = int(rng.integers(0, BUCKETS + 1))
        alloc = rebalance(alloc, [BUCKETS - w, w])
        assert len(segments_of(alloc)) <= 2


def test_a_long_random_walk_stays_fragmented_little() -> None:
    """Ranges that shrink to nothing disappear and their neighbours merge, so
    fragmentation does not accumulate: over 1,000 random reweightings of four
    arms the layout stays within 4k = 16 ranges (13 at worst with this seed; the
    per-step bound is the property test above)."""
    rng = np.random.default_rng(2)
    k = 4
    alloc = allocate([f"v{i}" for i in range(k)], [2_500] * 4)
    worst = 0
    for _ in range(1_000):
        cuts = np.sort(rng.integers(0, BUCKETS + 1, k - 1))
        alloc = rebalance(alloc, list(np.diff(np.concatenate([[0], cuts, [BUCKETS]]))))
        worst = max(worst, len(segments_of(alloc)))
    assert worst <= 4 * k


def test_boundary_shift_and_from_the_end() -> None:
    # control [0, 6000), canary [6000, 10000): control shrinks at its touching edge.
    alloc = from_segments(["control", "canary"], [(0, 6_000, 0), (6_000, BUCKETS, 1)])
    nxt = rebalance(alloc, [5_000, 5_000])
    assert nxt.ranges == ((BucketRange(0, 5_000),), (BucketRange(5_000, BUCKETS),))
    # a [0, 4000) b [4000, 7000) c [7000, 10000): a gives 1000 to c, which it does not
    # touch, from the end of its range.
    alloc = from_segments(["a", "b", "c"], [(0, 4_000, 0), (4_000, 7_000, 1), (7_000, BUCKETS, 2)])
    nxt = rebalance(alloc, [3_000, 3_000, 4_000])
    assert nxt.ranges == ((BucketRange(0, 3_000),), (BucketRange(4_000, 7_000),),
                          (BucketRange(3_000, 4_000), BucketRange(7_000, BUCKETS)))
    assert nxt.lookup_starts == (0, 3_000, 4_000, 7_000)
    assert nxt.lookup_arms == (0, 2, 1, 2)
    # Unchanged weights change nothing.
    assert rebalance(nxt, [3_000, 3_000, 4_000]) == nxt


def test_invalid_weights_are_refused() -> None:
    alloc = allocate(["a", "b"], [5_000, 5_000])
    with pytest.raises(InvalidBanditInput):
        rebalance(alloc, [5_000, 4_000])
    with pytest.raises(InvalidBanditInput):
        rebalance(alloc, [10_001, -1])
    with pytest.raises(InvalidBanditInput):
        rebalance(alloc, [10_000])
    with pytest.raises(ValueError):
        from_segments(["a", "b"], [(0, 10, 0), (20, BUCKETS, 1)])
