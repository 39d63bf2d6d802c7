"""How many sessions does an interleaving experiment need, next to an A/B test?

A seeded, vectorized simulation. Every session is a query with ``items``
candidates of planted graded relevance 0 to 4: ``Binomial(4, q)`` with the
query's richness ``q ~ Beta(*query_beta)`` (queries differ: some have many
relevant candidates, most few). Ranker A scores an item as
its relevance plus Gaussian noise of scale ``noise_a``; ranker B is the same
with the larger ``noise_b``, so A ranks better. A user clicks under one of two
models:

* ``"position"`` (position-based): position ``i`` (0-based) is examined with
  probability ``1/(i+1)``, and an examined item is clicked with its
  attractiveness ``0.05 + 0.9·(2^rel − 1)/15``, independently across positions;
* ``"cascade"`` (dependent click model with abandonment): the user reads
  top-down and clicks an item with its attractiveness; after a click they stop
  reading with probability ``0.5``, after an item they pass over with
  probability ``0.1``.

Each run draws two independent streams of sessions from one seed:

* **interleaving**: every session sees the two rankings merged (team draft or
  balanced; the merges here are vectorized copies of
  ``serving.routing.interleaving.team_draft``/``balanced``, with coins from the
  run's generator); its clicks are credited by
  ``rollout.experiments.stats.interleaving`` and the sessions with a
  preference go to the exact sign test;
* **A/B**: sessions alternate between a session that sees only A's ranking and
  one that sees only B's; the test is Welch's two-sample t-test on a per-session
  metric, ``ab_metric``: clicks per session, or the reciprocal rank of the
  first click (0 without one), which is more sensitive to the order of a list
  when the number of clicks hardly depends on it (as under the cascade).

For each design and run, the sessions needed are the smallest point ``n`` of a
geometric grid at which the test rejects at ``alpha`` and keeps rejecting at
every larger grid point up to the design's horizon: a run whose p-value dips
under ``alpha`` once and comes back up has not reached significance yet. A
run that does not get there within the horizon is *censored* and counted at
the horizon. That undercounts the sessions its design needed: a censored A/B
run makes the reported ratio of A/B to interleaving sessions smaller (a lower
bound), a censored interleaving run makes it larger, so the result counts
both and ``status`` says when either happened. The 80%-power sample sizes
(``*_power80``) are the other reading of the same runs, the classical one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator
from scipy import special

from rollout.experiments.stats.interleaving import balanced_credit, team_draft_credit

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_MAX_GRADE = 4
# Attractiveness of an examined item by grade: 0.05 + 0.9·(2^rel − 1)/15.
_ATTRACT = (0.05 + 0.9 * (2.0 ** np.arange(_MAX_GRADE + 1) - 1.0)
            / (2.0 ** _MAX_GRADE - 1.0)).astype(np.float32)
_CASCADE_STOP = 0.5
_CASCADE_ABANDON = 0.1
# Runs are simulated a few at a time so that memory stays at a few hundred MB
# whatever the number of runs (one block is (runs, sessions, items) wide).
_CELLS_PER_BLOCK = 4_000_000


class SimulationSettings(BaseModel):
    """Parameters of :func:`simulate_sessions_needed` (defaults: the measured setup)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: int = Field(default=200, ge=1)
    items: int = Field(default=10, ge=2, le=64)
    query_beta: tuple[PositiveFloat, PositiveFloat] = (0.6, 1.6)
    noise_a: float = Field(default=1.0, ge=0.0)
    noise_b: float = Field(default=2.0, ge=0.0)
    method: Literal["team_draft", "balanced"] = "team_draft"
    click_model: Literal["position", "cascade"] = "position"
    ab_metric: Literal["clicks", "reciprocal_rank"] = "clicks"
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    interleaving_horizon: int = Field(default=4_000, ge=10)
    ab_horizon: int = Field(default=24_000, ge=10)
    grid_points: int = Field(default=48, ge=2)
    seed: int = 0

    @model_validator(mode="after")
    def _even_ab_horizon(self) -> SimulationSettings:
        # A/B grid points split their sessions evenly between the two arms.
        if self.ab_horizon % 2:
            raise ValueError("ab_horizon must be even")
        return self


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Sessions each design needed, per run, and their ratio.

    ``interleaving_needed[r]``/``ab_needed[r]`` are run ``r``'s sessions needed
    (the horizon when censored); ``ratios[r]`` is ``ab_needed[r] /
    interleaving_needed[r]``. ``median_ratio`` and ``ratio_quartiles`` summarise
    the ratios; ``power_ratio`` is the ratio of the smallest grid sizes at which
    80% of runs reject (the classical sample-size comparison), 0 if a design
    never gets there within its horizon. ``status`` is ``"ok"``, or
    ``"censored"`` when some run of either design never got to significance.
    ``*_grid``/``*_power`` are each design's sample sizes and the share of runs
    whose test rejects there (its power curve; the false-positive rate when
    the two rankers are equally good).
    """

    settings: SimulationSettings
    interleaving_needed: tuple[int, ...]
    ab_needed: tuple[int, ...]
    ratios: tuple[float, ...]
    median_ratio: float
    ratio_quartiles: tuple[float, float]
    median_interleaving: float
    median_ab: float
    interleaving_power80: int
    ab_power80: int
    power_ratio: float
    censored_interleaving: int
    censored_ab: int
    status: Literal["ok", "censored"]
    interleaving_grid: tuple[int, ...]
    interleaving_power: tuple[float, ...]
    ab_grid: tuple[int, ...]
    ab_power: tuple[float, ...]

    def summary(self) -> str:
        """One line for a report: the median ratio, its quartiles and both 80%-power sizes."""
        return (f"{self.settings.method} vs A/B ({self.settings.click_model} clicks, A/B on "
                f"{self.settings.ab_metric}, {self.settings.runs} runs): A/B needs "
                f"{self.median_ratio:.1f}x the sessions (median per run; quartiles "
                f"{self.ratio_quartiles[0]:.1f}-{self.ratio_quartiles[1]:.1f}); 80% power at "
                f"{self.interleaving_power80} vs {self.ab_power80} sessions; censored runs "
                f"{self.censored_interleaving} interleaving, {self.censored_ab} A/B")


def simulate_sessions_needed(settings: SimulationSettings | None = None) -> SimulationResult:
    """Run the simulation; returns per-run sessions needed and their ratio.

    Deterministic for given settings (one ``numpy`` generator seeded with
    ``settings.seed``).
    """
    s = settings or SimulationSettings()
    rng = np.random.default_rng(s.seed)
    il_grid = _grid(s.interleaving_horizon, s.grid_points, step=1)
    ab_grid = _grid(s.ab_horizon, s.grid_points, step=2)
    il_reject = np.zeros((s.runs, il_grid.size), dtype=np.bool_)
    ab_reject = np.zeros((s.runs, ab_grid.size), dtype=np.bool_)
    for start, stop in _blocks(s.runs, s.interleaving_horizon * s.items):
        il_reject[start:stop] = _interleaving_rejections(rng, s, stop - start, il_grid)
    for start, stop in _blocks(s.runs, s.ab_horizon * s.items):
        ab_reject[start:stop] = _ab_rejections(rng, s, stop - start, ab_grid)
    il_needed, il_censored = sessions_needed(il_reject, il_grid)
    ab_needed, ab_censored = sessions_needed(ab_reject, ab_grid)
    ratios = ab_needed / il_needed
    il_power = _power80(il_reject, il_grid)
    ab_power = _power80(ab_reject, ab_grid)
    q25, q75 = np.quantile(ratios, [0.25, 0.75])
    return SimulationResult(
        settings=s,
        interleaving_needed=tuple(int(v) for v in il_needed),
        ab_needed=tuple(int(v) for v in ab_needed),
        ratios=tuple(float(v) for v in ratios),
        median_ratio=float(np.median(ratios)),
        ratio_quartiles=(float(q25), float(q75)),
        median_interleaving=float(np.median(il_needed)),
        median_ab=float(np.median(ab_needed)),
        interleaving_power80=il_power,
        ab_power80=ab_power,
        power_ratio=ab_power / il_power if il_power and ab_power else 0.0,
        censored_interleaving=il_censored,
        censored_ab=ab_censored,
        status="censored" if il_censored or ab_censored else "ok",
        interleaving_grid=tuple(int(n) for n in il_grid),
        interleaving_power=tuple(float(p) for p in il_reject.mean(axis=0)),
        ab_grid=tuple(int(n) for n in ab_grid),
        ab_power=tuple(float(p) for p in ab_reject.mean(axis=0)),
    )


# ----------------------------------------------------------------- the two designs

def _interleaving_rejections(rng: np.random.Generator, s: SimulationSettings, runs: int,
                             grid: IntArray) -> BoolArray:
    """Sign-test rejections at each grid size, ``(runs, grid)``."""
    sessions = runs * s.interleaving_horizon
    relevance = _relevance(rng, sessions, s.items, s.query_beta)
    order_a = _ranking(rng, relevance, s.noise_a)
    order_b = _ranking(rng, relevance, s.noise_b)
    if s.method == "team_draft":
        coins = rng.random((sessions, (s.items + 1) // 2)) < 0.5
        shown, from_a = team_draft_batch(order_a, order_b, coins)
        clicked = _clicks(rng, s.click_model, _shown_relevance(relevance, shown))
        preference = team_draft_credit(from_a, clicked).preference
    else:
        a_first = rng.random(sessions) < 0.5
        shown, _ = balanced_batch(order_a, order_b, a_first)
        clicked = _clicks(rng, s.click_model, _shown_relevance(relevance, shown))
        rows = np.arange(sessions)[:, None]
        rank_a, rank_b = _inverse(order_a) + 1, _inverse(order_b) + 1
        preference = balanced_credit(rank_a[rows, shown], rank_b[rows, shown],
                                     clicked).preference
    preference = preference.reshape(runs, s.interleaving_horizon)
    wins_a = np.cumsum(preference > 0, axis=1)[:, grid - 1]
    wins_b = np.cumsum(preference < 0, axis=1)[:, grid - 1]
    return sign_test_p(wins_a, wins_b) < s.alpha


def _ab_rejections(rng: np.random.Generator, s: SimulationSettings, runs: int,
                   grid: IntArray) -> BoolArray:
    """Welch t-test rejections on the per-session A/B metric at each grid size."""
    per_arm = s.ab_horizon // 2
    clicks = []
    for noise in (s.noise_a, s.noise_b):
        relevance = _relevance(rng, runs * per_arm, s.items, s.query_beta)
        order = _ranking(rng, relevance, noise)
        clicked = _clicks(rng, s.click_model, _shown_relevance(relevance, order))
        clicks.append(_ab_metric(s.ab_metric, clicked).reshape(runs, per_arm))
    half = grid // 2
    return welch_p(clicks[0], clicks[1], half) < s.alpha


# ----------------------------------------------------------------- vectorized merges

def team_draft_batch(order_a: IntArray, order_b: IntArray, coins: BoolArray
                     ) -> tuple[IntArray, BoolArray]:
    """Team draft of many sessions at once; returns ``(shown, from_a)``.

    ``order_a[s]``/``order_b[s]`` are session ``s``'s two rankings (item
    indices, best first), ``coins[s, r]`` true when A picks first in round
    ``r``. Agrees position by position with
    ``serving.routing.interleaving.team_draft`` given the same coins.
    """
    sessions, items = order_a.shape
    rows = np.arange(sessions)
    taken = np.zeros((sessions, items), dtype=np.bool_)
    shown = np.empty((sessions, items), dtype=np.int64)
    from_a = np.empty((sessions, items), dtype=np.bool_)
    picks_a = np.zeros(sessions, dtype=np.int64)
    pointer = {"a": np.zeros(sessions, dtype=np.int64), "b": np.zeros(sessions, dtype=np.int64)}
    for position in range(items):
        picks_b = position - picks_a
        team_a = np.where(picks_a == picks_b, coins[:, position // 2], picks_a < picks_b)
        # Move both pointers past taken items; each moves at most ``items``
        # times over the whole merge, so these loops are short.
        for name, order in (("a", order_a), ("b", order_b)):
            ptr = pointer[name]
            while True:
                behind = (ptr < items) & taken[rows, order[rows, np.minimum(ptr, items - 1)]]
                if not behind.any():
                    break
                ptr += behind
        pick = np.where(team_a, order_a[rows, np.minimum(pointer["a"], items - 1)],
                        order_b[rows, np.minimum(pointer["b"], items - 1)])
        shown[:, position] = pick
        from_a[:, position] = team_a
        taken[rows, pick] = True
        picks_a += team_a
    return shown, from_a


def balanced_batch(order_a: IntArray, order_b: IntArray, a_first: BoolArray
                   ) -> tuple[IntArray, BoolArray]:
    """Balanced interleaving of many sessions at once; returns ``(shown, from_a)``.

    Agrees with ``serving.routing.interleaving.balanced``: the pointer behind
    (or, when level, the coin's winner) takes its next item, skipping items
    already shown. Each step moves one pointer, and both rankings hold every
    item, so ``2·items`` steps place every item.
    """
    sessions, items = order_a.shape
    rows = np.arange(sessions)
    taken = np.zeros((sessions, items), dtype=np.bool_)
    shown = np.empty((sessions, items), dtype=np.int64)
    from_a = np.empty((sessions, items), dtype=np.bool_)
    filled = np.zeros(sessions, dtype=np.int64)
    k_a = np.zeros(sessions, dtype=np.int64)
    k_b = np.zeros(sessions, dtype=np.int64)
    for _ in range(2 * items):
        use_a = (k_a < k_b) | ((k_a == k_b) & a_first)
        item = np.where(use_a, order_a[rows, np.minimum(k_a, items - 1)],
                        order_b[rows, np.minimum(k_b, items - 1)])
        new = (filled < items) & ~taken[rows, item]
        shown[rows[new], filled[new]] = item[new]
        from_a[rows[new], filled[new]] = use_a[new]
        taken[rows[new], item[new]] = True
        filled += new
        k_a += use_a
        k_b += ~use_a
    return shown, from_a


# ----------------------------------------------------------------- vectorized tests

def sign_test_p(wins_a: npt.ArrayLike, wins_b: npt.ArrayLike) -> FloatArray:
    """Exact two-sided sign-test p-values, elementwise; 1 where nobody has a preference.

    The vectorized form of ``interleaving_test``'s p-value:
    ``min(1, 2·P(X ≤ min(wins_a, wins_b)))`` with ``X ~ Binomial(wins_a + wins_b, 1/2)``.
    """
    # Integer arrays: scipy deprecates non-integer binomial counts.
    a = np.asarray(wins_a, dtype=np.int64)
    b = np.asarray(wins_b, dtype=np.int64)
    m = a + b
    p = 2.0 * special.bdtr(np.minimum(a, b), np.maximum(m, 1), 0.5)
    return np.asarray(np.where(m > 0, np.minimum(p, 1.0), 1.0), dtype=np.float64)


def welch_p(values_a: FloatArray, values_b: FloatArray, sizes: IntArray) -> FloatArray:
    """Two-sided Welch t-test p-values of mean(a) − mean(b) on each run's first ``n`` values.

    ``values_*`` are ``(runs, sessions)``; ``sizes`` the per-arm sizes (at
    least 2) to test at. Returns ``(runs, len(sizes))``: the p-value of
    ``t = (ȳ_a − ȳ_b)/√(s_a²/n + s_b²/n)`` (ddof 1) under Student's t with
    Welch-Satterthwaite degrees of freedom, as ``welch_ttest`` computes it one
    pair of arms at a time; 1 where both arms have zero variance. The t
    reference, not the normal one, keeps the smallest grid sizes at their
    nominal false-positive rate.
    """
    def moments(v: FloatArray) -> tuple[FloatArray, FloatArray]:
        total = np.cumsum(v, axis=1)[:, sizes - 1]
        squares = np.cumsum(v * v, axis=1)[:, sizes - 1]
        mean = total / sizes
        var = np.maximum(squares - total * mean, 0.0) / (sizes - 1)
        return mean, var / sizes

    mean_a, se2_a = moments(values_a)
    mean_b, se2_b = moments(values_b)
    se2 = se2_a + se2_b
    live = se2 > 0
    safe = np.where(live, se2, 1.0)
    t = np.where(live, (mean_a - mean_b) / np.sqrt(safe), 0.0)
    df = safe**2 / np.maximum((se2_a**2 + se2_b**2) / (sizes - 1), np.finfo(np.float64).tiny)
    p = 2.0 * special.stdtr(np.where(live, df, 1.0), -np.abs(t))
    return np.asarray(np.where(live, p, 1.0), dtype=np.float64)


# ----------------------------------------------------------------- the world

def _relevance(rng: np.random.Generator, sessions: int, items: int,
               query_beta: tuple[float, float]) -> IntArray:
    """Graded relevances ``(sessions, items)``, beta-binomial per query.

    Queries differ in how many good candidates they have, as real ones do; that
    variation is common to both rankers within a session, so interleaving
    cancels it, while an A/B test carries it as noise.
    """
    richness = rng.beta(*query_beta, size=sessions)
    # Inverse-CDF sampling with one float32 uniform per item: the grade is the
    # number of binomial CDF levels the uniform exceeds. Several times faster
    # than numpy's binomial sampler with a per-row probability.
    uniform = rng.random((sessions, items), dtype=np.float32)
    grade = np.zeros((sessions, items), dtype=np.int8)
    for k in range(_MAX_GRADE):
        grade += uniform > special.bdtr(k, _MAX_GRADE, richness).astype(np.float32)[:, None]
    return grade.astype(np.int64)


def _ranking(rng: np.random.Generator, relevance: IntArray, noise: float) -> IntArray:
    """Item indices by decreasing noisy score: a ranker of accuracy set by ``noise``."""
    # float32 scores: ties are as improbable as in float64 for this purpose,
    # and sorting short float32 rows is about three times faster.
    scores = relevance.astype(np.float32) + np.float32(noise) * rng.standard_normal(
        relevance.shape, dtype=np.float32)
    return np.argsort(-scores, axis=1).astype(np.int64)


def _shown_relevance(relevance: IntArray, shown: IntArray) -> IntArray:
    return np.take_along_axis(relevance, shown, axis=1)


def _clicks(rng: np.random.Generator, model: str, relevance: IntArray) -> BoolArray:
    """Clicks on a shown list of relevances, ``(sessions, positions)``."""
    attract = _ATTRACT[relevance]
    if model == "position":
        examine = (1.0 / np.arange(1, relevance.shape[1] + 1)).astype(np.float32)
        return rng.random(relevance.shape, dtype=np.float32) < examine * attract
    draws = rng.random(relevance.shape, dtype=np.float32) < attract
    leave = rng.random(relevance.shape, dtype=np.float32)
    clicked = np.zeros(relevance.shape, dtype=np.bool_)
    reading = np.ones(relevance.shape[0], dtype=np.bool_)
    for position in range(relevance.shape[1]):
        click = reading & draws[:, position]
        clicked[:, position] = click
        # One uniform decides leaving either way: after a click with the stop
        # probability, after an item passed over with the abandonment one.
        reading &= leave[:, position] >= np.where(click, _CASCADE_STOP, _CASCADE_ABANDON)
    return clicked


def _ab_metric(metric: str, clicked: BoolArray) -> FloatArray:
    """Per-session A/B metric: clicks, or the reciprocal rank of the first click (0 if none)."""
    if metric == "clicks":
        return np.asarray(clicked.sum(axis=1), dtype=np.float64)
    first = np.argmax(clicked, axis=1)
    return np.asarray(np.where(clicked.any(axis=1), 1.0 / (first + 1.0), 0.0), dtype=np.float64)


def _inverse(order: IntArray) -> IntArray:
    """0-based rank of each item given the items in rank order."""
    inverse = np.empty_like(order)
    np.put_along_axis(inverse, order, np.arange(order.shape[1])[None, :], axis=1)
    return inverse


# ----------------------------------------------------------------- reading the runs

def _grid(horizon: int, points: int, step: int) -> IntArray:
    """Geometric grid of sample sizes up to ``horizon``, multiples of ``step``."""
    raw = np.geomspace(max(10, step), horizon, points)
    return np.unique(np.maximum(step, (np.round(raw / step) * step).astype(np.int64)))


def _blocks(runs: int, cells_per_run: int) -> list[tuple[int, int]]:
    size = max(1, _CELLS_PER_BLOCK // max(cells_per_run, 1))
    return [(start, min(start + size, runs)) for start in range(0, runs, size)]


def sessions_needed(reject: BoolArray, grid: IntArray) -> tuple[IntArray, int]:
    """Per run, the first grid size from which the test keeps rejecting; censored count.

    ``reject`` is ``(runs, len(grid))``: whether run ``r``'s test rejects after
    ``grid[j]`` sessions. Returns the sessions needed per run and the number of
    runs that never got there, which are counted at the horizon ``grid[-1]``.
    """
    # keeps[r, j]: rejects at j and at every later grid point.
    keeps = np.flip(np.logical_and.accumulate(np.flip(reject, axis=1), axis=1), axis=1)
    reached = keeps[:, -1]
    first = np.argmax(keeps, axis=1)
    needed = np.where(reached, grid[first], grid[-1])
    return needed.astype(np.int64), int(np.count_nonzero(~reached))


def _power80(reject: BoolArray, grid: IntArray) -> int:
    """Smallest grid size at which at least 80% of runs reject; 0 if none."""
    power = reject.mean(axis=0)
    hits = np.flatnonzero(power >= 0.8)
    return int(grid[hits[0]]) if hits.size else 0
