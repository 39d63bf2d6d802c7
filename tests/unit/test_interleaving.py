"""Team-draft and balanced interleaving: worked examples, the coins' contract,
input errors, and the merge's defining properties over generated rankings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from serving.kernel.errors import InvalidRanking, RampartError
from serving.routing.interleaving import (
    Coins,
    Interleaving,
    Method,
    balanced,
    interleave,
    team_draft,
)

pytestmark = pytest.mark.unit

METHODS: tuple[Method, ...] = ("team_draft", "balanced")


def _reference_hash(salt: str, unit: str) -> int:
    """Hash version 1 (64-bit, before the modulo), written from its specification."""
    h = 0xCBF29CE484222325
    for byte in salt.encode() + b"\x00" + unit.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) % 2**64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) % 2**64
    h ^= h >> 33
    return h


def _reference_coin(key: str, index: int) -> bool:
    """The documented coin: bit ``index % 64`` of the hash of ``key:block``."""
    return bool((_reference_hash("interleaving", f"{key}:{index // 64}") >> (index % 64)) & 1)


@st.composite
def ranking_pairs(draw: st.DrawFn, max_items: int = 30) -> tuple[list[str], list[str]]:
    items = draw(st.lists(st.text("abcdefghij", min_size=1, max_size=3), unique=True,
                          max_size=max_items))
    return items, draw(st.permutations(items))


KEYS = st.text(min_size=0, max_size=12)


# ----------------------------------------------------------------- worked examples

def test_team_draft_worked_example_follows_the_coins() -> None:
    a, b = ["x", "y", "z", "w"], ["y", "w", "x", "z"]
    # A picks first in both rounds: x (A), y (B), then A's best left is z, B's is w.
    assert team_draft(a, b, [True, True], 4) == Interleaving(
        ("x", "y", "z", "w"), ("a", "b", "a", "b"), "team_draft", "a")
    # B first in round 0, A first in round 1: y (B), x (A); z (A), w (B).
    assert team_draft(a, b, [False, True], 4) == Interleaving(
        ("y", "x", "z", "w"), ("b", "a", "a", "b"), "team_draft", "b")


def test_balanced_worked_example_skips_items_already_shown() -> None:
    a, b = ["a", "b", "c", "d"], ["b", "d", "a", "c"]
    # A leads: a (k_a=1), b (k_b=1), A's b is taken (k_a=2), d (k_b=2), c (k_a=3).
    assert balanced(a, b, True, 4) == Interleaving(
        ("a", "b", "d", "c"), ("a", "b", "b", "a"), "balanced", "a")
    # B leads: b, a, d; A's b and B's a are taken; then A's c.
    assert balanced(a, b, False, 4) == Interleaving(
        ("b", "a", "d", "c"), ("b", "a", "b", "a"), "balanced", "b")


def test_interleave_uses_the_request_coins() -> None:
    a, b = [f"i{n}" for n in range(10)], [f"i{n}" for n in reversed(range(10))]
    for key in ("req-1", "req-2", "req-3", "0f3a", ""):
        coins = [_reference_coin(key, r) for r in range(5)]
        assert interleave("team_draft", a, b, key) == team_draft(a, b, coins, 10)
        assert interleave("balanced", a, b, key) == balanced(a, b, coins[0], 10)
        assert interleave("team_draft", a, b, key).first == ("a" if coins[0] else "b")


# ----------------------------------------------------------------- the coins

def test_coins_match_the_documented_hash_across_blocks() -> None:
    for key in ("req-1", "ünï", "a:1", ""):
        coins = Coins(key)
        assert [coins(i) for i in range(200)] == [_reference_coin(key, i) for i in range(200)]


def test_coins_are_fair_and_independent_across_keys() -> None:
    keys = [f"request-{n}" for n in range(4000)]
    for index in (0, 1, 63, 64, 130):
        heads = sum(Coins(k)(index) for k in keys)
        assert stats.binomtest(heads, len(keys)).pvalue > 0.001
    # Two coins of one request agree half the time: they are not one coin read twice.
    agree = sum(Coins(k)(0) == Coins(k)(1) for k in keys)
    assert stats.binomtest(agree, len(keys)).pvalue > 0.001
    # The first-round coin splits requests evenly, so neither ranker leads more often.
    a = [str(n) for n in range(6)]
    leads = sum(interleave("team_draft", a, a[::-1], k).first == "a" for k in keys[:2000])
    assert stats.binomtest(leads, 2000).pvalue > 0.001


# ----------------------------------------------------------------- input errors

@pytest.mark.parametrize(("a", "b", "fragment"), [
    (["x", "y", "x"], ["x", "y"], "ranking_a repeats item 'x'"),
    (["x", "y"], ["y", "y"], "ranking_b repeats item 'y'"),
    (["x", "y"], ["x", "z"], "only in ranking_a: ['y'], only in ranking_b: ['z']"),
    (["x", "y"], ["x"], "only in ranking_a: ['y']"),
])
@pytest.mark.parametrize("method", METHODS)
def test_rankings_of_different_items_are_a_400(method: Method, a: list[str], b: list[str],
                                               fragment: str) -> None:
    with pytest.raises(InvalidRanking) as caught:
        interleave(method, a, b, "k")
    assert isinstance(caught.value, RampartError)
    assert (caught.value.code, caught.value.status) == ("invalid_ranking", 400)
    assert fragment in caught.value.message


def test_negative_length_and_unknown_method_are_refused() -> None:
    with pytest.raises(InvalidRanking, match="non-negative"):
        interleave("balanced", ["x"], ["x"], "k", length=-1)
    with pytest.raises(InvalidRanking, match="unknown interleaving method"):
        interleave("coin_flip", ["x"], ["x"], "k")  # type: ignore[arg-type]


def test_empty_rankings_and_zero_length_give_an_empty_list() -> None:
    for method in METHODS:
        assert interleave(method, [], [], "k").items == ()
        assert interleave(method, ["x", "y"], ["y", "x"], "k", length=0).teams == ()


# ----------------------------------------------------------------- properties

def _own_ranks(result: Interleaving, team: str, ranking: Sequence[str]) -> list[int]:
    return [ranking.index(item) for item, t in zip(result.items, result.teams, strict=True)
            if t == team]


@settings(max_examples=300, deadline=None)
@given(ranking_pairs(), KEYS)
def test_team_draft_properties(pair: tuple[list[str], list[str]], key: str) -> None:
    a, b = pair
    result = interleave("team_draft", a, b, key)
    # Every item exactly once.
    assert sorted(result.items) == sorted(a) and len(set(result.items)) == len(a)
    assert len(result.teams) == len(result.items) and set(result.teams) <= {"a", "b"}
    # Team sizes differ by at most one at every prefix, and each round opens level.
    picks_a = 0
    for n, team in enumerate(result.teams, start=1):
        picks_a += team == "a"
        assert abs(2 * picks_a - n) <= 1
    # Each team's items come in its own ranker's order, and each is the ranker's
    # best item not shown before it.
    for team, ranking in (("a", a), ("b", b)):
        ranks = _own_ranks(result, team, ranking)
        assert ranks == sorted(ranks)
    for i, (item, team) in enumerate(zip(result.items, result.teams, strict=True)):
        ranking = a if team == "a" else b
        assert item == next(x for x in ranking if x not in result.items[:i])
    if a:
        assert result.first == result.teams[0]


@settings(max_examples=300, deadline=None)
@given(ranking_pairs(), KEYS)
def test_balanced_properties(pair: tuple[list[str], list[str]], key: str) -> None:
    a, b = pair
    result = interleave("balanced", a, b, key)
    assert sorted(result.items) == sorted(a) and len(set(result.items)) == len(a)
    lead, other = (a, b) if result.first == "a" else (b, a)
    for k in range(len(a) + 1):
        top = set(result.items[:k])
        # The prefix property: the first k positions hold the leader's top
        # ceil(k/2) and the other ranking's top floor(k/2).
        assert set(lead[: math.ceil(k / 2)]) <= top
        assert set(other[: k // 2]) <= top
    for team, ranking in (("a", a), ("b", b)):
        ranks = _own_ranks(result, team, ranking)
        assert ranks == sorted(ranks)


@settings(max_examples=200, deadline=None)
@given(ranking_pairs(), KEYS, st.integers(min_value=0, max_value=40))
def test_same_key_same_list_and_length_truncates(pair: tuple[list[str], list[str]], key: str,
                                                 length: int) -> None:
    a, b = pair
    for method in METHODS:
        full = interleave(method, a, b, key)
        assert interleave(method, list(a), list(b), key) == full
        cut = interleave(method, a, b, key, length=length)
        assert cut.items == full.items[:length] and cut.teams == full.teams[:length]
        assert cut.first == full.first


@settings(max_examples=200, deadline=None)
@given(ranking_pairs(), KEYS)
def test_identical_rankings_give_the_ranking_itself(pair: tuple[list[str], list[str]],
                                                    key: str) -> None:
    a, _ = pair
    for method in METHODS:
        assert interleave(method, a, a, key).items == tuple(a)


def test_keys_reach_both_orders() -> None:
    a, b = ["x", "y"], ["y", "x"]
    seen = {interleave("team_draft", a, b, f"k{n}").items for n in range(64)}
    assert seen == {("x", "y"), ("y", "x")}
