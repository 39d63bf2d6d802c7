"""Credit and test for interleaving experiments: which of two rankers do users prefer?

Pure numpy/scipy. An interleaving experiment shows each session one list merged
from rankers A and B (``serving.routing.interleaving``); here its clicks become
a per-session preference, and the preferences a test.

Credit, vectorized over sessions. Inputs are ``(sessions, positions)`` arrays,
one row per session, padded with unclicked positions when lists differ in
length (:func:`impression_arrays` builds them from per-session records):

* **team draft** (Radlinski, Kurup & Joachims 2008): a click counts for the
  team that contributed the clicked position. The ranker with more credited
  clicks wins the session.
* **balanced** (Joachims 2002/2003; as restated by Chapelle et al. 2012): let
  ``l`` be the lowest (deepest) clicked position of the merged list, and
  ``k = min(rank_a(item_l), rank_b(item_l))`` the better of the two rankers'
  ranks of that item. Each ranker is credited with the clicked items among its
  own top ``k``; the ranker with more wins. Balanced interleaving shows the
  top ``floor(k/2)`` of both rankings within the first ``k`` positions, so a
  user scanning to ``l`` has seen comparable prefixes of both, and cutting at
  ``k`` compares them on those prefixes only.

A session without clicks, or with equal credit, is a tie.

Test: the exact two-sided sign (binomial) test of ``wins_a`` among the
sessions with a preference against one half, with a Clopper-Pearson (exact)
interval for A's share of those preferences: the interval that inverts the
same binomial test, so the two never disagree on which side of one half the
share lies. Alongside, ``Δ_AB = (wins_a + ties/2)/n − 1/2`` of Chapelle,
Joachims, Radlinski & Yue (2012), which counts ties (and so says how often the
preference shows at all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Status = Literal["ok", "no_sessions", "no_preferences", "invalid_counts", "invalid_alpha"]


@dataclass(frozen=True, slots=True)
class Impression:
    """One session of an interleaving experiment, as shown and as clicked.

    ``teams[i]`` is ``"a"`` or ``"b"``, the ranker that contributed shown
    position ``i``; ``clicks`` are the clicked positions (0-based, each at most
    once). For balanced credit ``rank_a[i]``/``rank_b[i]`` are the 1-based
    ranks of the item at position ``i`` in ranker A's and B's own lists; team
    draft credit does not need them. :meth:`from_lists` builds one from item
    ids.
    """

    teams: tuple[str, ...]
    clicks: tuple[int, ...]
    rank_a: tuple[int, ...] = ()
    rank_b: tuple[int, ...] = ()

    @classmethod
    def from_lists(cls, items: Sequence[str], teams: Sequence[str], ranking_a: Sequence[str],
                   ranking_b: Sequence[str], clicked_items: Sequence[str]) -> Impression:
        """The impression of a merged list ``items``, with clicks given by item id.

        Returns the positions of ``clicked_items`` in ``items`` (ids not shown
        are dropped: a click on an item the list did not show cannot be
        credited) and the ranks of every shown item in both rankings, which
        must rank every shown item (as ``interleave`` guarantees).
        """
        position = {item: i for i, item in enumerate(items)}
        clicks = tuple(sorted({position[c] for c in clicked_items if c in position}))
        rank_in_a = {item: r for r, item in enumerate(ranking_a, start=1)}
        rank_in_b = {item: r for r, item in enumerate(ranking_b, start=1)}
        return cls(tuple(teams), clicks, tuple(rank_in_a[i] for i in items),
                   tuple(rank_in_b[i] for i in items))


@dataclass(frozen=True, slots=True)
class ImpressionArrays:
    """Impressions padded into ``(sessions, positions)`` arrays.

    ``from_a`` is true where ranker A contributed the position, ``clicked``
    where the user clicked it; ``rank_a``/``rank_b`` are the 1-based ranks
    (0 where unknown or padded). Padded positions are never clicked.
    """

    from_a: BoolArray
    clicked: BoolArray
    rank_a: IntArray
    rank_b: IntArray


def impression_arrays(impressions: Sequence[Impression]) -> ImpressionArrays:
    """Pad per-session impressions into the arrays the credit functions take.

    Returns arrays with as many columns as the longest list. Clicks on
    positions outside a session's list are dropped for the same reason
    :meth:`Impression.from_lists` drops them.
    """
    sessions = len(impressions)
    width = max((len(i.teams) for i in impressions), default=0)
    from_a = np.zeros((sessions, width), dtype=np.bool_)
    clicked = np.zeros((sessions, width), dtype=np.bool_)
    rank_a = np.zeros((sessions, width), dtype=np.int64)
    rank_b = np.zeros((sessions, width), dtype=np.int64)
    for s, imp in enumerate(impressions):
        shown = len(imp.teams)
        from_a[s, :shown] = [t == "a" for t in imp.teams]
        clicks = [c for c in imp.clicks if 0 <= c < shown]
        clicked[s, clicks] = True
        rank_a[s, :len(imp.rank_a)] = imp.rank_a
        rank_b[s, :len(imp.rank_b)] = imp.rank_b
    return ImpressionArrays(from_a, clicked, rank_a, rank_b)


@dataclass(frozen=True, slots=True)
class Credit:
    """Per-session credit of an interleaving experiment.

    ``clicks_a``/``clicks_b`` are the clicks credited to each ranker in each
    session; ``preference`` is +1 where A won the session, −1 where B did,
    0 for a tie (including sessions without clicks). ``error`` is a short code
    (``"shape_mismatch"``, ``"invalid_ranks"``) when the input could not be
    credited; the arrays are then empty.
    """

    clicks_a: IntArray
    clicks_b: IntArray
    preference: npt.NDArray[np.int8]
    error: str | None = None

    def counts(self) -> PreferenceCounts:
        """Wins, ties and click-less sessions over all credited sessions."""
        return preference_counts(self.preference, self.clicks_a + self.clicks_b > 0)


@dataclass(frozen=True, slots=True)
class PreferenceCounts:
    """Sessions won by A, won by B, and tied; ``unclicked`` of the ties had no click."""

    wins_a: int
    wins_b: int
    ties: int
    unclicked: int = 0

    @property
    def sessions(self) -> int:
        return self.wins_a + self.wins_b + self.ties


def team_draft_credit(from_a: npt.ArrayLike, clicked: npt.ArrayLike) -> Credit:
    """Team-draft credit: each click counts for the team of its position.

    ``from_a`` and ``clicked`` are ``(sessions, positions)`` booleans. Returns
    a :class:`Credit`; ``error="shape_mismatch"`` when the two arrays are not
    the same 2-D shape.
    """
    team = np.asarray(from_a, dtype=np.bool_)
    click = np.asarray(clicked, dtype=np.bool_)
    if team.ndim != 2 or team.shape != click.shape:
        return _failed("shape_mismatch")
    clicks_a = np.count_nonzero(click & team, axis=1).astype(np.int64)
    clicks_b = np.count_nonzero(click & ~team, axis=1).astype(np.int64)
    return _credit(clicks_a, clicks_b)


def balanced_credit(rank_a: npt.ArrayLike, rank_b: npt.ArrayLike,
                    clicked: npt.ArrayLike) -> Credit:
    """Balanced-interleaving credit (Joachims), cut at the lowest click.

    ``rank_a``/``rank_b`` are ``(sessions, positions)`` 1-based ranks of each
    shown item in the two rankers' lists, ``clicked`` booleans of the same
    shape. With ``l`` a session's deepest click and
    ``k = min(rank_a[l], rank_b[l])``, A is credited with the clicks whose
    ``rank_a <= k`` and B with those whose ``rank_b <= k`` (a click can count
    for both: an item both rankers place in their top ``k`` is evidence for
    neither, and it cancels). Returns a :class:`Credit`;
    ``error="shape_mismatch"`` for unequal or non-2-D shapes and
    ``"invalid_ranks"`` when a clicked position has a rank below 1 (its ranks
    were not recorded).
    """
    ra = np.asarray(rank_a, dtype=np.int64)
    rb = np.asarray(rank_b, dtype=np.int64)
    click = np.asarray(clicked, dtype=np.bool_)
    if click.ndim != 2 or ra.shape != click.shape or rb.shape != click.shape:
        return _failed("shape_mismatch")
    if np.any(click & ((ra < 1) | (rb < 1))):
        return _failed("invalid_ranks")
    sessions, width = click.shape
    any_click = click.any(axis=1)
    if width == 0:
        zeros = np.zeros(sessions, dtype=np.int64)
        return _credit(zeros, zeros.copy())
    # The deepest click: the first True of the row read backwards. Rows without
    # a click get position 0 and a cut of 0, so nothing is credited.
    deepest = width - 1 - np.argmax(click[:, ::-1], axis=1)
    rows = np.arange(sessions)
    cut = np.where(any_click, np.minimum(ra[rows, deepest], rb[rows, deepest]), 0)
    clicks_a = np.count_nonzero(click & (ra <= cut[:, None]), axis=1).astype(np.int64)
    clicks_b = np.count_nonzero(click & (rb <= cut[:, None]), axis=1).astype(np.int64)
    return _credit(clicks_a, clicks_b)


def preference_counts(preference: npt.ArrayLike,
                      clicked_session: npt.ArrayLike | None = None) -> PreferenceCounts:
    """Count wins and ties in an array of per-session preferences (+1, −1, 0).

    ``clicked_session`` (booleans, one per session), when given, counts the
    ties that had no click at all into ``unclicked``.
    """
    pref = np.asarray(preference)
    wins_a = int(np.count_nonzero(pref > 0))
    wins_b = int(np.count_nonzero(pref < 0))
    unclicked = 0
    if clicked_session is not None:
        unclicked = int(np.count_nonzero(~np.asarray(clicked_session, dtype=np.bool_)))
    return PreferenceCounts(wins_a, wins_b, int(pref.size) - wins_a - wins_b, unclicked)


@dataclass(frozen=True, slots=True)
class InterleavingTest:
    """Sign test of an interleaving experiment's per-session preferences.

    ``share_a = wins_a / (wins_a + wins_b)`` is A's share of the sessions with
    a preference, ``[ci_low, ci_high]`` its Clopper-Pearson interval at level
    ``1 − alpha``, ``p_value`` the exact two-sided binomial test of
    ``share_a = 1/2``. ``delta_ab = (wins_a + ties/2)/sessions − 1/2``
    (Chapelle et al. 2012; positive when A is preferred). ``winner`` is the
    preferred ranker when ``p_value < alpha``, else ``None``.

    ``status`` is ``"ok"`` when the test ran. Otherwise the figures are the
    no-evidence values rather than NaN: ``share_a = 0.5``, interval
    ``[0, 1]``, ``p_value = 1``, no winner, and ``delta_ab = 0`` without
    sessions. ``"no_preferences"`` (sessions, but all tied) still reports the
    exact ``delta_ab = 0``; ``"no_sessions"``, ``"invalid_counts"`` (negative
    or non-integer counts) and ``"invalid_alpha"`` (outside (0, 1)) are the
    other statuses.
    """

    status: Status
    sessions: int
    wins_a: int
    wins_b: int
    ties: int
    share_a: float
    ci_low: float
    ci_high: float
    p_value: float
    delta_ab: float
    alpha: float
    winner: str | None

    @property
    def preferences(self) -> int:
        return self.wins_a + self.wins_b


def interleaving_test(counts: PreferenceCounts, alpha: float = 0.05) -> InterleavingTest:
    """Exact sign test, Clopper-Pearson interval and Δ_AB from preference counts.

    With ``m = wins_a + wins_b`` sessions that prefer a ranker and
    ``x = min(wins_a, wins_b)``, the two-sided p-value is
    ``min(1, 2·P(X ≤ x))`` for ``X ~ Binomial(m, 1/2)``: at one half the
    binomial is symmetric, so this is the total probability of outcomes no
    likelier than the one observed, the definition ``scipy.stats.binomtest``
    uses. Ties carry no information on which ranker is better and are left out
    of the test (the sign test's rule for zero differences); they only enter
    ``delta_ab``. The interval is ``[B(α/2; x, m−x+1), B(1−α/2; x+1, m−x)]``
    with ``B`` the beta quantile and ``x = wins_a`` here.

    Returns an :class:`InterleavingTest`; never raises on bad input.
    """
    raw = (counts.wins_a, counts.wins_b, counts.ties)
    if not all(_is_count(c) for c in raw):
        return _no_evidence("invalid_counts", 0, 0, 0, alpha)
    wins_a, wins_b, ties = (int(c) for c in raw)
    sessions = wins_a + wins_b + ties
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        return _no_evidence("invalid_alpha", wins_a, wins_b, ties, alpha)
    if sessions == 0:
        return _no_evidence("no_sessions", 0, 0, 0, alpha)
    if wins_a + wins_b == 0:
        return _no_evidence("no_preferences", 0, 0, ties, alpha)
    m = wins_a + wins_b
    p_value = min(1.0, 2.0 * float(special.bdtr(min(wins_a, wins_b), m, 0.5)))
    ci_low = 0.0 if wins_a == 0 else float(special.betaincinv(wins_a, m - wins_a + 1, alpha / 2))
    ci_high = 1.0 if wins_a == m else float(
        special.betaincinv(wins_a + 1, m - wins_a, 1.0 - alpha / 2))
    delta = (wins_a + ties / 2.0) / sessions - 0.5
    winner = None if p_value >= alpha else ("a" if wins_a > wins_b else "b")
    return InterleavingTest("ok", sessions, wins_a, wins_b, ties, wins_a / m, ci_low, ci_high,
                            p_value, delta, float(alpha), winner)


def _credit(clicks_a: IntArray, clicks_b: IntArray) -> Credit:
    return Credit(clicks_a, clicks_b, np.sign(clicks_a - clicks_b).astype(np.int8))


def _failed(error: str) -> Credit:
    empty = np.zeros(0, dtype=np.int64)
    return Credit(empty, empty.copy(), np.zeros(0, dtype=np.int8), error)


def _no_evidence(status: Status, wins_a: int, wins_b: int, ties: int,
                 alpha: float) -> InterleavingTest:
    # An invalid alpha is echoed back only if it is a finite number; NaN or
    # garbage would leak out of a result that promises none.
    shown_alpha = float(alpha) if isinstance(alpha, float | int) and math.isfinite(alpha) else 0.0
    return InterleavingTest(status, wins_a + wins_b + ties, wins_a, wins_b, ties, 0.5, 0.0, 1.0,
                            1.0, 0.0, shown_alpha, None)


def _is_count(value: object) -> bool:
    """A non-negative integer (Python or numpy); booleans are not counts."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | np.integer) and int(value) >= 0
