"""Sticky bucket ranges: new bandit weights with the fewest units changing arm.

:func:`rebalance` takes the :class:`~serving.routing.assignment.Allocation` in
force and new weights (basis points summing to 10,000) and returns the next
allocation. A bucket keeps its arm unless its arm's share shrinks: an arm whose
weight falls by ``d`` gives up exactly ``d`` buckets, an arm whose weight rises
by ``r`` takes exactly ``r`` of the freed buckets and no others. The number of
buckets that change arm is therefore exactly the sum of the decreases (half the
L1 distance between the weight vectors), the least any layout can achieve.

Which buckets move is chosen to keep the layout in few ranges:

1. *Boundary shifts.* Wherever a range of a shrinking arm touches a range of a
   growing arm, the boundary between them moves into the shrinking arm's range.
   This never adds a range (the two ranges only change length; one may vanish,
   and its neighbours may merge).
2. *From the end.* What is still to give is given from the end of the
   shrinking arm's ranges (its last range first, trimmed from its stop), and the
   freed pieces, in bucket order, are handed to the arms still growing, in arm
   order.

The bound kept: a rebalance adds at most ``g + r − 1`` ranges, where ``g`` and
``r`` are the shrinking and growing arms left for step 2 (so at most ``k − 1``
for ``k`` arms), and none at all when every transfer could be made by boundary
shifts. Two arms are never in more than two ranges. Adjacent ranges of one arm
are merged, so the lookup tables hold maximal segments; ranges that shrink to
nothing vanish and their neighbours merge, so fragmentation does not pile up
over a run (four arms reweighted at random 1,000 times stayed within 13 ranges,
``test_bandit_ranges.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout.core.bandits.arms import InvalidBanditInput
from serving.routing.assignment import BUCKETS, Allocation, BucketRange

# A segment is [start, stop, arm]; lists so the passes below can move boundaries.
_Segment = list[int]


def segments_of(allocation: Allocation) -> list[tuple[int, int, int]]:
    """The allocation as maximal ``(start, stop, arm)`` segments in bucket order
    (adjacent segments of one arm merged)."""
    starts = list(allocation.lookup_starts)
    stops = [*starts[1:], BUCKETS]
    merged: list[tuple[int, int, int]] = []
    for start, stop, arm in zip(starts, stops, allocation.lookup_arms, strict=True):
        if stop <= start:
            continue
        if merged and merged[-1][2] == arm and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop, arm)
        else:
            merged.append((start, stop, arm))
    return merged


def from_segments(arm_names: Sequence[str], segments: Sequence[tuple[int, int, int]]
                  ) -> Allocation:
    """An :class:`Allocation` from segments covering ``[0, 10000)``, built as
    :func:`~serving.routing.assignment.allocate` builds it: per-arm ranges in
    bucket order and lookup tables of segment starts (adjacent same-arm
    segments merged first)."""
    ordered = sorted((s for s in segments if s[1] > s[0]), key=lambda s: s[0])
    merged: list[tuple[int, int, int]] = []
    for start, stop, arm in ordered:
        if merged and merged[-1][2] == arm and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop, arm)
        else:
            merged.append((start, stop, arm))
    cursor = 0
    for start, stop, _ in merged:
        if start != cursor:
            raise ValueError("segments must tile [0, 10000) without gaps or overlaps")
        cursor = stop
    if cursor != BUCKETS:
        raise ValueError("segments must tile [0, 10000) without gaps or overlaps")
    owned: list[list[BucketRange]] = [[] for _ in arm_names]
    for start, stop, arm in merged:
        owned[arm].append(BucketRange(start, stop))
    return Allocation(
        arm_names=tuple(arm_names),
        ranges=tuple(tuple(rs) for rs in owned),
        lookup_starts=tuple(s for s, _, _ in merged),
        lookup_arms=tuple(a for _, _, a in merged),
    )


def _normalise(segs: list[_Segment]) -> list[_Segment]:
    """Drop empty segments and merge touching segments of one arm."""
    out: list[_Segment] = []
    for seg in segs:
        if seg[1] <= seg[0]:
            continue
        if out and out[-1][2] == seg[2]:
            out[-1][1] = seg[1]
        else:
            out.append(seg)
    return out


def _boundary_shifts(segs: list[_Segment], give: list[int], take: list[int]) -> list[_Segment]:
    """Step 1: move boundaries between touching shrinking/growing arms until no
    shrinking arm with buckets left to give touches a growing arm still short."""
    changed = True
    while changed:
        changed = False
        for i in range(len(segs) - 1):
            left, right = segs[i], segs[i + 1]
            if give[left[2]] and take[right[2]]:
                amount = min(give[left[2]], take[right[2]], left[1] - left[0])
                left[1] -= amount
                right[0] -= amount
            elif take[left[2]] and give[right[2]]:
                amount = min(give[right[2]], take[left[2]], right[1] - right[0])
                left[1] += amount
                right[0] += amount
            else:
                continue
            giver = left[2] if give[left[2]] else right[2]
            give[giver] -= amount
            take[right[2] if giver == left[2] else left[2]] -= amount
            changed = True
            break
        if changed:
            segs = _normalise(segs)
    return segs


def rebalance(previous: Allocation, new_weights_bp: Sequence[int]) -> Allocation:
    """The allocation for ``new_weights_bp`` that moves the fewest buckets from
    ``previous``: exactly ``Σ max(old − new, 0)`` buckets change arm, each from a
    shrinking arm to a growing one (see the module docstring for which).

    Raises :class:`InvalidBanditInput` unless there is one non-negative weight per
    arm and they sum to 10,000.
    """
    k = len(previous.arm_names)
    if len(new_weights_bp) != k:
        raise InvalidBanditInput(f"need {k} weights, got {len(new_weights_bp)}")
    if any(w < 0 for w in new_weights_bp) or sum(new_weights_bp) != BUCKETS:
        raise InvalidBanditInput(f"weights must be non-negative and sum to {BUCKETS}")
    old = [previous.share(i) for i in range(k)]
    give = [max(o - n, 0) for o, n in zip(old, new_weights_bp, strict=True)]
    take = [max(n - o, 0) for o, n in zip(old, new_weights_bp, strict=True)]
    segs = _normalise([[s, e, a] for s, e, a in segments_of(previous)])
    segs = _boundary_shifts(segs, give, take)
    if any(give):
        freed: list[tuple[int, int]] = []
        # Step 2: each shrinking arm trims its ranges from the end, last range first.
        for arm in range(k):
            for seg in reversed([s for s in segs if s[2] == arm]):
                if not give[arm]:
                    break
                amount = min(give[arm], seg[1] - seg[0])
                freed.append((seg[1] - amount, seg[1]))
                seg[1] -= amount
                give[arm] -= amount
        freed.sort()
        receivers = [arm for arm in range(k) if take[arm]]
        pieces: list[_Segment] = []
        r = 0
        for start, stop in freed:
            cursor = start
            while cursor < stop:
                arm = receivers[r]
                amount = min(take[arm], stop - cursor)
                pieces.append([cursor, cursor + amount, arm])
                take[arm] -= amount
                cursor += amount
                if not take[arm]:
                    r += 1
        segs = [s for s in segs if s[1] > s[0]] + pieces
    result = from_segments(previous.arm_names, [(s[0], s[1], s[2]) for s in segs])
    return result
