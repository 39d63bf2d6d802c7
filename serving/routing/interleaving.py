"""Interleaving of two rankers' lists into one list a user sees.

Pure functions, no I/O. An interleaving experiment compares rankers A and B
within each request: both rank the same candidate items, the user sees one
merged list, and each click is credited to the ranker that contributed (team
draft) or ranked higher (balanced) the clicked item. Because every user judges
both rankers side by side, the comparison needs far fewer requests than an A/B
test that shows each user one ranker only (the credit rules and the test live
in ``rollout.experiments.stats.interleaving``).

Two methods:

* **team draft** (Radlinski, Kurup & Joachims 2008): the two rankers are team
  captains picking players. At each step the team with fewer picks picks next;
  when both have picked as many, a coin (one per round) decides who picks first
  in this round. A team picks its ranker's highest-ranked item not yet in the
  list. ``teams`` records the team of every position, which is what credit
  reads later.
* **balanced** (Joachims 2002/2003): one coin decides which ranker goes first;
  then pointers ``k_a``/``k_b`` walk down both rankings, the one behind (or,
  when level, the one that won the coin) takes its next item, skipping items
  already in the list. ``teams`` records which ranking each item was taken
  from. The merged list's top ``k`` always holds each ranking's top
  ``floor(k/2)`` (the first mover's top ``ceil(k/2)``), which is what makes its
  credit rule fair.

The coins are deterministic functions of ``key`` (the request id), hashed with
the project's assignment hash under the salt ``"interleaving"``, so replaying a
request rebuilds the very list the user saw, and the coins are independent of
any experiment's arm buckets (those use the experiment's own salt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from serving.kernel.errors import InvalidRanking
from serving.routing.assignment import hash_from_state, salt_state

Method = Literal["team_draft", "balanced"]
Team = Literal["a", "b"]

SALT = "interleaving"
_STATE = salt_state(SALT)
# One 64-bit hash gives 64 independent coins (fmix64 spreads every input bit over
# every output bit), so a list of up to 128 items costs one hash per request.
_COINS_PER_HASH = 64


@dataclass(frozen=True, slots=True)
class Interleaving:
    """A merged list and who contributed each position.

    ``items`` is the merged list, best first; ``teams[i]`` is ``"a"`` or
    ``"b"``, the ranker that contributed ``items[i]``; ``first`` is the ranker
    that picked first (team draft: the first round's coin; balanced: the one
    coin).
    """

    items: tuple[str, ...]
    teams: tuple[str, ...]
    method: Method
    first: str


class Coins:
    """The coins of one request: ``coin(i)`` is true when ranker A wins coin ``i``.

    Coin ``i`` is bit ``i % 64`` of the hash of ``f"{key}:{i // 64}"`` under the
    salt ``"interleaving"``. The block number has no ``:``, so distinct
    ``(key, block)`` pairs hash distinct strings. Hashes are computed lazily and
    kept, so a request pays for one hash per 64 coins it actually uses.
    """

    __slots__ = ("_blocks", "_key")

    def __init__(self, key: str) -> None:
        self._key = key
        self._blocks: dict[int, int] = {}

    def __call__(self, index: int) -> bool:
        block, bit = divmod(index, _COINS_PER_HASH)
        mixed = self._blocks.get(block)
        if mixed is None:
            mixed = hash_from_state(_STATE, f"{self._key}:{block}")
            self._blocks[block] = mixed
        return bool((mixed >> bit) & 1)


def interleave(method: Method, ranking_a: Sequence[str], ranking_b: Sequence[str], key: str,
               length: int | None = None) -> Interleaving:
    """Merge two rankings of the same items with ``method``; coins from ``key``.

    Returns the :class:`Interleaving` the user is shown: ``length`` positions
    (default every item; a larger ``length`` is the same as the default). The
    same arguments always give the same list, so a request can be replayed.

    Raises :class:`~serving.kernel.errors.InvalidRanking` (HTTP 400) when a
    ranking repeats an id, when the two rankings do not hold the same ids (the
    credit rules compare ranks of one item in both lists, which needs every
    shown item to be ranked by both), when ``length`` is negative, or when
    ``method`` is not a known method.
    """
    a, b = tuple(ranking_a), tuple(ranking_b)
    _check_rankings(a, b)
    if length is not None and length < 0:
        raise InvalidRanking(f"length must be non-negative, got {length}")
    size = len(a) if length is None else min(length, len(a))
    coins = Coins(key)
    if method == "team_draft":
        return team_draft(a, b, coins, size)
    if method == "balanced":
        return balanced(a, b, coins(0), size)
    raise InvalidRanking(f"unknown interleaving method {method!r}; "
                         "expected 'team_draft' or 'balanced'")


def team_draft(ranking_a: Sequence[str], ranking_b: Sequence[str],
               coins: Coins | Sequence[bool], length: int) -> Interleaving:
    """Team-draft interleaving of two already-checked rankings with given coins.

    ``coins[r]`` (or ``coins(r)``) is true when A picks first in round ``r``
    (positions ``2r`` and ``2r + 1``). Returns the first ``length`` positions.
    Split out of :func:`interleave` so that a simulation drawing its own coins
    can check its vectorized merge against this one. Rankings must be
    permutations of each other (as :func:`interleave` checks).
    """
    coin = coins if isinstance(coins, Coins) else coins.__getitem__
    items: list[str] = []
    teams: list[str] = []
    taken: set[str] = set()
    # Each pointer only moves forward past items already taken, so the whole
    # merge is O(n) however the two rankings interleave.
    pointer = {"a": 0, "b": 0}
    ranking = {"a": ranking_a, "b": ranking_b}
    picks = {"a": 0, "b": 0}
    first: Team = "a" if coin(0) else "b"
    while len(items) < length:
        if picks["a"] == picks["b"]:
            # A new round: its coin decides who picks first. Round 0's coin is
            # ``first``; reading it again gives the same answer.
            team: Team = "a" if coin(len(items) // 2) else "b"
        else:
            team = "a" if picks["a"] < picks["b"] else "b"
        own = ranking[team]
        while own[pointer[team]] in taken:
            pointer[team] += 1
        item = own[pointer[team]]
        items.append(item)
        teams.append(team)
        taken.add(item)
        picks[team] += 1
    return Interleaving(tuple(items), tuple(teams), "team_draft", first)


def balanced(ranking_a: Sequence[str], ranking_b: Sequence[str], a_first: bool,
             length: int) -> Interleaving:
    """Balanced interleaving of two already-checked rankings; A leads if ``a_first``.

    Returns the first ``length`` positions. Pointer ``k_a`` (``k_b``) is how
    many of A's (B's) items have been walked past; the ranking whose pointer is
    behind moves next, and when they are level the coin's winner does. An item
    already in the list is skipped (the pointer still moves), so an item that
    both rankings place high shows up once, credited to the ranking it was
    taken from.
    """
    items: list[str] = []
    teams: list[str] = []
    taken: set[str] = set()
    k_a = k_b = 0
    # Both rankings hold the same items, so the walk places every item before
    # either pointer runs off its ranking.
    while len(items) < length:
        if k_a < k_b or (k_a == k_b and a_first):
            item, team, k_a = ranking_a[k_a], "a", k_a + 1
        else:
            item, team, k_b = ranking_b[k_b], "b", k_b + 1
        if item not in taken:
            items.append(item)
            teams.append(team)
            taken.add(item)
    return Interleaving(tuple(items), tuple(teams), "balanced", "a" if a_first else "b")


def _check_rankings(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    """Raise :class:`InvalidRanking` unless ``a`` and ``b`` order one same set of ids."""
    for name, ranking in (("ranking_a", a), ("ranking_b", b)):
        seen: set[str] = set()
        for item in ranking:
            if item in seen:
                raise InvalidRanking(f"{name} repeats item {item!r}")
            seen.add(item)
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise InvalidRanking(
            "ranking_a and ranking_b must rank the same items; "
            f"only in ranking_a: {only_a}, only in ranking_b: {only_b}")
