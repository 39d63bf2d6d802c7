"""Interleaving credit (team draft, balanced) against worked examples and a
per-session reference written from the definitions, and the sign test,
interval and Δ_AB against scipy and statsmodels."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]

from rollout.experiments.stats.interleaving import (
    Impression,
    InterleavingTest,
    PreferenceCounts,
    balanced_credit,
    impression_arrays,
    interleaving_test,
    preference_counts,
    team_draft_credit,
)
from serving.routing.interleaving import interleave

pytestmark = pytest.mark.unit

# Joachims' example shape: A = a b c d, B = b d a c, A leads, so the merged list
# is a b d c (see test_interleaving.py); ranks of each shown item in A and in B.
SHOWN_RANK_A = [1, 2, 4, 3]
SHOWN_RANK_B = [3, 1, 2, 4]


# ----------------------------------------------------------------- credit

def test_team_draft_credit_counts_clicks_per_team() -> None:
    from_a = [[True, False, True, False]] * 4
    clicked = [[True, False, False, False],    # one click on A's item: A
               [False, True, False, True],     # two on B's: B
               [True, True, False, False],     # one each: tie
               [False, False, False, False]]   # none: tie
    credit = team_draft_credit(from_a, clicked)
    assert credit.error is None
    assert credit.clicks_a.tolist() == [1, 0, 1, 0]
    assert credit.clicks_b.tolist() == [0, 2, 1, 0]
    assert credit.preference.tolist() == [1, -1, 0, 0]
    assert credit.counts() == PreferenceCounts(wins_a=1, wins_b=1, ties=2, unclicked=1)


@pytest.mark.parametrize(("clicks", "credit_a", "credit_b", "preference"), [
    ([2], 0, 1, -1),        # d: cut k = min(4, 2) = 2; d is in B's top 2 only
    ([0], 1, 0, 1),         # a: k = min(1, 3) = 1; a is A's first
    ([0, 1], 1, 1, 0),      # deepest b: k = min(2, 1) = 1; a for A, b for B
    ([0, 2], 1, 1, 0),      # deepest d: k = 2; a in A's top 2, d in B's
    ([1], 0, 1, -1),        # b: k = min(2, 1) = 1; b is B's first, not A's
    # deepest c: k = min(3, 4) = 3; A's top 3 {a, b, c} and B's {b, d, a} hold 3 clicks each
    ([0, 1, 2, 3], 3, 3, 0),
    ([], 0, 0, 0),
])
def test_balanced_credit_worked_example(clicks: list[int], credit_a: int, credit_b: int,
                                        preference: int) -> None:
    clicked = np.zeros((1, 4), dtype=np.bool_)
    clicked[0, clicks] = True
    expected_a, expected_b = _reference_balanced(SHOWN_RANK_A, SHOWN_RANK_B, clicks)
    credit = balanced_credit([SHOWN_RANK_A], [SHOWN_RANK_B], clicked)
    assert credit.error is None
    assert (int(credit.clicks_a[0]), int(credit.clicks_b[0])) == (expected_a, expected_b)
    assert (expected_a, expected_b) == (credit_a, credit_b)
    assert int(credit.preference[0]) == preference


def _reference_balanced(rank_a: list[int], rank_b: list[int], clicks: list[int]
                        ) -> tuple[int, int]:
    """Joachims' rule, one session, written from the definition."""
    if not clicks:
        return 0, 0
    lowest = max(clicks)
    k = min(rank_a[lowest], rank_b[lowest])
    return (sum(1 for c in clicks if rank_a[c] <= k), sum(1 for c in clicks if rank_b[c] <= k))


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[list[int], list[int], list[int]]]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        n = draw(st.integers(1, 8))
        rank_a = draw(st.permutations(range(1, n + 1)))
        rank_b = draw(st.permutations(range(1, n + 1)))
        clicks = sorted(draw(st.sets(st.integers(0, n - 1))))
        out.append((list(rank_a), list(rank_b), clicks))
    return out


@settings(max_examples=200, deadline=None)
@given(sessions())
def test_balanced_credit_matches_the_definition_session_by_session(
        rows: list[tuple[list[int], list[int], list[int]]]) -> None:
    impressions = [Impression(("a",) * len(ra), tuple(c), tuple(ra), tuple(rb))
                   for ra, rb, c in rows]
    arrays = impression_arrays(impressions)
    credit = balanced_credit(arrays.rank_a, arrays.rank_b, arrays.clicked)
    assert credit.error is None
    for s, (ra, rb, clicks) in enumerate(rows):
        ref_a, ref_b = _reference_balanced(ra, rb, clicks)
        assert (int(credit.clicks_a[s]), int(credit.clicks_b[s])) == (ref_a, ref_b)
        assert int(credit.preference[s]) == (ref_a > ref_b) - (ref_a < ref_b)
    assert len(credit.preference) == len(rows)


def test_impressions_from_served_lists_credit_both_methods() -> None:
    a = ["p1", "p2", "p3", "p4", "p5", "p6"]
    b = ["p6", "p5", "p1", "p2", "p3", "p4"]
    for method in ("team_draft", "balanced"):
        served = interleave(method, a, b, "req-7", length=4)
        # Clicks by item id: two shown items, one the list did not show.
        clicked = [served.items[2], "not-shown", served.items[0]]
        imp = Impression.from_lists(served.items, served.teams, a, b, clicked)
        assert imp.clicks == (0, 2)
        assert list(imp.rank_a) == [a.index(i) + 1 for i in served.items]
        assert list(imp.rank_b) == [b.index(i) + 1 for i in served.items]
        arrays = impression_arrays([imp])
        if method == "team_draft":
            credit = team_draft_credit(arrays.from_a, arrays.clicked)
            teams = [served.teams[0], served.teams[2]]
            expected = (teams.count("a"), teams.count("b"))
        else:
            credit = balanced_credit(arrays.rank_a, arrays.rank_b, arrays.clicked)
            expected = _reference_balanced(list(imp.rank_a), list(imp.rank_b), [0, 2])
        assert (int(credit.clicks_a[0]), int(credit.clicks_b[0])) == expected


def test_impression_arrays_pad_and_drop_clicks_off_the_list() -> None:
    arrays = impression_arrays([Impression(("a", "b"), (1, 5), (1, 2), (2, 1)),
                                Impression(("b",), ())])
    assert arrays.from_a.tolist() == [[True, False], [False, False]]
    assert arrays.clicked.tolist() == [[False, True], [False, False]]
    assert arrays.rank_a.tolist() == [[1, 2], [0, 0]]
    empty = impression_arrays([])
    assert empty.clicked.shape == (0, 0)
    assert team_draft_credit(empty.from_a, empty.clicked).counts() == PreferenceCounts(0, 0, 0)
    assert balanced_credit(empty.rank_a, empty.rank_b, empty.clicked).error is None


def test_credit_errors_are_codes_not_exceptions() -> None:
    assert team_draft_credit([[True]], [[True, False]]).error == "shape_mismatch"
    assert team_draft_credit([True], [True]).error == "shape_mismatch"
    assert balanced_credit([[1, 2]], [[1]], [[True, False]]).error == "shape_mismatch"
    bad = balanced_credit([[0, 2]], [[1, 2]], [[True, False]])
    assert bad.error == "invalid_ranks" and bad.preference.size == 0
    # A rank of 0 where nobody clicked (padding) is fine.
    assert balanced_credit([[1, 0]], [[1, 0]], [[True, False]]).error is None
    # Sessions with no positions at all are click-less ties.
    none = balanced_credit(np.zeros((3, 0)), np.zeros((3, 0)), np.zeros((3, 0), dtype=bool))
    assert none.counts() == PreferenceCounts(0, 0, 3, 3)


def test_preference_counts() -> None:
    assert preference_counts([1, -1, 0, 1, 0]) == PreferenceCounts(2, 1, 2, 0)
    assert preference_counts([1, 0, 0], [True, True, False]) == PreferenceCounts(1, 0, 2, 1)
    assert PreferenceCounts(2, 1, 2).sessions == 5


# ----------------------------------------------------------------- the test

@pytest.mark.parametrize(("wins_a", "wins_b"), [
    (1, 0), (0, 1), (5, 5), (7, 3), (3, 7), (0, 12), (12, 0), (18, 30), (60, 41),
    (500, 450), (1234, 1100), (9, 10), (0, 1000),
])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_sign_test_and_interval_match_scipy_and_statsmodels(wins_a: int, wins_b: int,
                                                            alpha: float) -> None:
    ties = 17
    result = interleaving_test(PreferenceCounts(wins_a, wins_b, ties), alpha)
    m = wins_a + wins_b
    reference = scipy.stats.binomtest(wins_a, m, 0.5, alternative="two-sided")
    assert result.status == "ok"
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
    scipy_ci = reference.proportion_ci(confidence_level=1 - alpha, method="exact")
    sm_low, sm_high = proportion_confint(wins_a, m, alpha=alpha, method="beta")
    for ours, theirs in ((result.ci_low, scipy_ci.low), (result.ci_high, scipy_ci.high),
                         (result.ci_low, sm_low), (result.ci_high, sm_high)):
        assert ours == pytest.approx(float(theirs), rel=1e-9, abs=1e-12)
    assert result.share_a == pytest.approx(wins_a / m)
    assert result.delta_ab == pytest.approx((wins_a + ties / 2) / (m + ties) - 0.5)
    assert result.sessions == m + ties and result.preferences == m
    assert result.winner == (None if reference.pvalue >= alpha
                             else ("a" if wins_a > wins_b else "b"))
    # The exact interval inverts the exact test: one half lies outside the
    # interval exactly when the test rejects.
    assert (not result.ci_low <= 0.5 <= result.ci_high) == (result.p_value < alpha)


def test_delta_ab_worked_example() -> None:
    # 30 wins for A, 10 for B, 60 ties: (30 + 30)/100 - 0.5 = 0.1.
    result = interleaving_test(PreferenceCounts(30, 10, 60))
    assert result.delta_ab == pytest.approx(0.1)
    assert result.winner == "a"
    assert interleaving_test(PreferenceCounts(10, 30, 60)).delta_ab == pytest.approx(-0.1)


def _finite(result: InterleavingTest) -> bool:
    return all(math.isfinite(v) for v in dataclasses.astuple(result)
               if isinstance(v, float))


@pytest.mark.parametrize(("counts", "alpha", "status"), [
    (PreferenceCounts(0, 0, 0), 0.05, "no_sessions"),
    (PreferenceCounts(0, 0, 25, 25), 0.05, "no_preferences"),
    (PreferenceCounts(-1, 3, 0), 0.05, "invalid_counts"),
    (PreferenceCounts(2.5, 3, 0), 0.05, "invalid_counts"),  # type: ignore[arg-type]
    (PreferenceCounts(True, 3, 0), 0.05, "invalid_counts"),  # type: ignore[arg-type]
    (PreferenceCounts(4, 3, 0), 0.0, "invalid_alpha"),
    (PreferenceCounts(4, 3, 0), 1.0, "invalid_alpha"),
    (PreferenceCounts(4, 3, 0), math.nan, "invalid_alpha"),
])
def test_degenerate_inputs_give_a_status_and_no_evidence(counts: PreferenceCounts, alpha: float,
                                                         status: str) -> None:
    result = interleaving_test(counts, alpha)
    assert result.status == status
    assert _finite(result)
    assert (result.share_a, result.ci_low, result.ci_high, result.p_value) == (0.5, 0.0, 1.0, 1.0)
    assert result.winner is None and result.delta_ab == 0.0


def test_numpy_counts_are_accepted() -> None:
    counts = preference_counts(np.array([1, 1, 1, 1, 1, 1, -1, 0], dtype=np.int8))
    result = interleaving_test(counts)
    assert result.status == "ok" and (result.wins_a, result.wins_b, result.ties) == (6, 1, 1)
    assert result.p_value == pytest.approx(scipy.stats.binomtest(6, 7).pvalue)
